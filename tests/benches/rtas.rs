//! The cost of one RTAS round trip through the RTAS server process, beside a
//! bare hypercall exit that the core answers itself, and the memory of each
//! process. Prints a table; run with
//! `cargo bench -p papervisor-tests --bench rtas [-- BATCHES]`.
//!
//! The guest times nothing (it has no calibrated clock); the host times a
//! console command that makes N calls in a row, and divides. Each batch
//! includes one console round trip, which the large N makes negligible.

use papervisor_tests::bench::{count_arg, median, status_kib};
use papervisor_tests::{binary, kvm_usable, QmpClient, Vm};
use std::time::{Duration, Instant};

const CALLS_PER_BATCH: u32 = 2000;

fn per_call_micros(vm: &mut Vm, kind: &str) -> f64 {
    let started = Instant::now();
    let output = vm
        .console
        .command(&format!("bench {kind} {CALLS_PER_BATCH}"));
    assert_eq!(output, [format!("bench: {CALLS_PER_BATCH} calls")]);
    started.elapsed().as_secs_f64() * 1e6 / f64::from(CALLS_PER_BATCH)
}

fn rss_mib(pid: u32) -> f64 {
    status_kib(pid, "VmRSS:") as f64 / 1024.0
}

fn main() {
    if !kvm_usable("rtas benchmark") {
        return;
    }
    let batches = count_arg(9);
    binary("papervisor");
    let mut vm = Vm::start(&["--smp", "cpus=2"]);
    vm.boot();
    let (mut hcall, mut rtas) = (Vec::new(), Vec::new());
    for _ in 0..batches {
        hcall.push(per_call_micros(&mut vm, "hcall"));
        rtas.push(per_call_micros(&mut vm, "rtas"));
    }
    let hcall = median(&mut hcall);
    let rtas = median(&mut rtas);
    println!("| per call ({batches} batches of {CALLS_PER_BATCH}, median) | µs | ratio |");
    println!("|---|---|---|");
    println!("| null hcall: port-I/O exit answered by the core | {hcall:.1} | 1.0 |");
    println!(
        "| RTAS query-cpu-stopped-state through the RTAS server | {rtas:.1} | {:.1} |",
        rtas / hcall
    );
    println!();
    println!("| process | RSS |");
    println!("|---|---|");
    println!("| core (papervisor) | {:.1} MiB |", rss_mib(vm.pid()));
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    let processes = qmp.execute("x-query-device-processes", serde_json::json!({}));
    for process in processes["return"].as_array().expect("a process list") {
        let pid = process["pid"].as_u64().expect("a pid") as u32;
        println!(
            "| {} (jailed) | {:.1} MiB |",
            process["kind"].as_str().unwrap_or("?"),
            rss_mib(pid)
        );
    }
    // No jailer stays behind: the core's children are the device processes.
    let others: Vec<_> = vm
        .children()
        .into_iter()
        .filter(|(pid, _)| {
            !processes["return"]
                .as_array()
                .is_some_and(|listed| listed.iter().any(|p| p["pid"] == u64::from(*pid)))
        })
        .collect();
    println!("| other children of the core | {} |", others.len());
    vm.console.send_line("poweroff");
    vm.wait_exit(Duration::from_secs(30));
}
