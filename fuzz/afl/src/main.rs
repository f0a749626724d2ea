//! `fuzz-target NAME`: runs target NAME of `papervisor_fuzz::TARGETS` under
//! AFL++ in persistent mode (started by `cargo afl fuzz`, see scripts/fuzz).

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    let Some(target) = papervisor_fuzz::target(&name) else {
        eprintln!(
            "usage: fuzz-target NAME, NAME one of: {}",
            papervisor_fuzz::names().join(" ")
        );
        std::process::exit(2);
    };
    afl::fuzz!(|data: &[u8]| target(data));
}
