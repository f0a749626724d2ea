//! Replays every target over its seeds, its corpus (fuzz/corpus/NAME) and
//! its regressions (fuzz/regressions/NAME: inputs that once crashed it).

use std::path::Path;

fn replay(name: &str) -> usize {
    let target = papervisor_fuzz::target(name).expect("a target");
    let mut inputs = papervisor_fuzz::seeds::seeds(name);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else {
            continue;
        };
        for entry in entries.flatten() {
            inputs.push(std::fs::read(entry.path()).expect("read an input"));
        }
    }
    for input in &inputs {
        target(input);
    }
    inputs.len()
}

#[test]
fn every_target_has_seeds_and_replays_its_inputs() {
    for name in papervisor_fuzz::names() {
        let replayed = replay(name);
        assert!(replayed > 0, "{name} has no input");
        println!("{name}: {replayed} inputs replayed");
    }
}
