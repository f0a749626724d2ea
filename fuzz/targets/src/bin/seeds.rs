//! `seeds NAME DIR`: writes target NAME's seeds into DIR (for an engine's
//! first inputs). `seeds --list`: the targets' names.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args == ["--list"] {
        println!("{}", papervisor_fuzz::names().join("\n"));
        return;
    }
    let [name, dir] = args.as_slice() else {
        eprintln!("usage: seeds NAME DIR");
        std::process::exit(2);
    };
    if papervisor_fuzz::target(name).is_none() {
        eprintln!("no target {name}: {}", papervisor_fuzz::names().join(" "));
        std::process::exit(2);
    }
    std::fs::create_dir_all(dir).expect("create the seed directory");
    for (i, seed) in papervisor_fuzz::seeds::seeds(name).iter().enumerate() {
        std::fs::write(format!("{dir}/seed-{i}"), seed).expect("write a seed");
    }
}
