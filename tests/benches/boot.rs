//! Boot time (process start to the guest's first prompt) and the core's
//! memory, over several boots. Prints a table; run with
//! `cargo bench -p papervisor-tests --bench boot [-- RUNS]`.

use papervisor_tests::bench::{count_arg, median, status_kib};
use papervisor_tests::{binary, kvm_usable, Vm};
use std::time::{Duration, Instant};

fn main() {
    if !kvm_usable("boot benchmark") {
        return;
    }
    let runs = count_arg(9);
    let args = [
        "--smp",
        "cpus=2,maxcpus=4",
        "--memory",
        "size=512M,maxmem=4G,slots=8",
    ];
    // Build (or find) the binaries before the clock starts.
    binary("papervisor");
    let mut boot_ms = Vec::new();
    let mut rss_kib = Vec::new();
    let mut hwm_kib = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let mut vm = Vm::start(&args);
        vm.boot();
        boot_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        rss_kib.push(status_kib(vm.pid(), "VmRSS:") as f64);
        hwm_kib.push(status_kib(vm.pid(), "VmHWM:") as f64);
        vm.console.send_line("poweroff");
        vm.wait_exit(Duration::from_secs(30));
    }
    let min = boot_ms.iter().copied().fold(f64::INFINITY, f64::min);
    let max = boot_ms.iter().copied().fold(0.0, f64::max);
    println!("papervisor {}", args.join(" "));
    println!("| measure ({runs} boots) | median | min | max |");
    println!("|---|---|---|---|");
    println!(
        "| process start to guest prompt | {:.1} ms | {min:.1} ms | {max:.1} ms |",
        median(&mut boot_ms)
    );
    println!(
        "| core RSS at the prompt | {:.1} MiB | | |",
        median(&mut rss_kib) / 1024.0
    );
    println!(
        "| core peak RSS (VmHWM) | {:.1} MiB | | |",
        median(&mut hwm_kib) / 1024.0
    );
}
