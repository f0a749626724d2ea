//! The price of the jail: starting a static program through the jailer
//! (namespaces, empty root, ids, limits) against starting it directly. Both
//! run `papervisor --version` to completion. Prints a table; run with
//! `cargo bench -p papervisor-tests --bench jail [-- RUNS]`. Needs root.

use papervisor_tests::bench::{count_arg, median};
use papervisor_tests::binary;
use std::process::{Command, Stdio};
use std::time::Instant;

fn time(command: &mut Command) -> f64 {
    let started = Instant::now();
    let status = command.stdout(Stdio::null()).status().expect("run");
    assert!(status.success(), "{command:?} failed: {status}");
    started.elapsed().as_secs_f64() * 1000.0
}

fn main() {
    let runs = count_arg(21);
    let program = binary("papervisor");
    let jailer = binary("jailer");
    let base = std::env::temp_dir().join(format!("jail-bench-{}", std::process::id()));
    let (mut direct, mut jailed) = (Vec::new(), Vec::new());
    for run in 0..runs {
        direct.push(time(Command::new(&program).arg("--version")));
        jailed.push(time(
            Command::new(&jailer)
                .args(["--id", &format!("bench-{run}"), "--exec-file"])
                .arg(&program)
                .arg("--chroot-base-dir")
                .arg(&base)
                .args(["--", "--version"]),
        ));
    }
    let _ = std::fs::remove_dir_all(&base);
    let (direct, jailed) = (median(&mut direct), median(&mut jailed));
    println!("| start and run to exit ({runs} runs) | median | ratio |");
    println!("|---|---|---|");
    println!("| directly | {direct:.2} ms | 1.0 |");
    println!(
        "| through the jailer | {jailed:.2} ms | {:.1} |",
        jailed / direct
    );
}
