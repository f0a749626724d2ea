//! CPU core hotplug latency: from device_add to the guest reporting the new
//! core online, and from device_del to DEVICE_DELETED. Prints a table; run
//! with `cargo bench -p papervisor-tests --bench hotplug [-- ROUNDS]`.

use papervisor_tests::bench::{count_arg, median};
use papervisor_tests::{binary, kvm_usable, QmpClient, Vm};
use serde_json::json;
use std::time::{Duration, Instant};

fn main() {
    if !kvm_usable("hotplug benchmark") {
        return;
    }
    let rounds = count_arg(15);
    binary("papervisor");
    let mut vm = Vm::start(&["--smp", "cpus=1,maxcpus=2"]);
    vm.boot();
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    let (mut add, mut del) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let started = Instant::now();
        let reply = qmp.execute(
            "device_add",
            json!({"driver": "host-spapr-cpu-core", "core-id": 1, "id": "core1"}),
        );
        assert_eq!(reply["return"], json!({}), "{reply}");
        vm.console
            .expect_async("dlpar: cpu add 0x10000001: ok", Duration::from_secs(60));
        add.push(started.elapsed().as_secs_f64() * 1000.0);

        let started = Instant::now();
        let reply = qmp.execute("device_del", json!({"id": "core1"}));
        assert_eq!(reply["return"], json!({}), "{reply}");
        qmp.wait_event("DEVICE_DELETED");
        del.push(started.elapsed().as_secs_f64() * 1000.0);
        vm.console
            .expect_async("dlpar: cpu remove 0x10000001: ok", Duration::from_secs(60));
    }
    println!("| {rounds} rounds, 1 thread per core | median | min | max |");
    println!("|---|---|---|---|");
    for (name, values) in [
        ("device_add → guest reports the core online", &mut add),
        ("device_del → DEVICE_DELETED", &mut del),
    ] {
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(0.0, f64::max);
        println!(
            "| {name} | {:.1} ms | {min:.1} ms | {max:.1} ms |",
            median(values)
        );
    }
    vm.console.send_line("poweroff");
    vm.wait_exit(Duration::from_secs(30));
}
