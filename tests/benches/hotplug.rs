//! Hotplug latency: a CPU core (device_add → the guest reports it online,
//! device_del → DEVICE_DELETED), then a 16 GiB DIMM at maxmem=4T with the
//! RTAS calls the guest made. Prints a table; run
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
    dimm_rounds(rounds.min(5));
}

fn rtas_calls(vm: &mut Vm) -> u64 {
    vm.console.command("rtas-calls")[0]
        .strip_prefix("rtas-calls: ")
        .and_then(|n| n.parse().ok())
        .expect("a count")
}

/// A 16 GiB DIMM (64 LMBs) at maxmem=4T (16 382 LMB DRCs): device_add →
/// the guest reports every LMB online, device_del → DEVICE_DELETED; and the
/// RTAS calls the guest made for each.
fn dimm_rounds(rounds: usize) {
    let mut vm = Vm::start(&["--memory", "size=512M,maxmem=4T,slots=8"]);
    vm.boot();
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    let backend = json!({"qom-type": "memory-backend-memfd", "id": "big", "size": 16u64 << 30});
    assert_eq!(qmp.execute("object-add", backend)["return"], json!({}));
    let (mut add, mut del, mut add_calls, mut del_calls) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        let before = rtas_calls(&mut vm);
        let started = Instant::now();
        let plug = json!({"driver": "pc-dimm", "id": "dimm0", "memdev": "big"});
        assert_eq!(qmp.execute("device_add", plug)["return"], json!({}));
        vm.console.expect_async(
            "dlpar: memory add count 64 from 0x80000010: ok",
            Duration::from_secs(120),
        );
        add.push(started.elapsed().as_secs_f64() * 1000.0);
        let after_add = rtas_calls(&mut vm);
        add_calls.push((after_add - before) as f64);
        let started = Instant::now();
        assert_eq!(
            qmp.execute("device_del", json!({"id": "dimm0"}))["return"],
            json!({})
        );
        qmp.wait_event("DEVICE_DELETED");
        del.push(started.elapsed().as_secs_f64() * 1000.0);
        vm.console.expect_async(
            "dlpar: memory remove count 64 from 0x80000010: ok",
            Duration::from_secs(120),
        );
        del_calls.push((rtas_calls(&mut vm) - after_add) as f64);
    }
    println!();
    println!("| 16 GiB DIMM (64 LMBs), maxmem=4T, {rounds} rounds | median | min | max | the guest's RTAS calls |");
    println!("|---|---|---|---|---|");
    for (name, values, calls) in [
        (
            "device_add → the guest reports every LMB online",
            &mut add,
            &mut add_calls,
        ),
        ("device_del → DEVICE_DELETED", &mut del, &mut del_calls),
    ] {
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(0.0, f64::max);
        println!(
            "| {name} | {:.1} ms | {min:.1} ms | {max:.1} ms | {:.0} |",
            median(values),
            median(calls)
        );
    }
    vm.console.send_line("poweroff");
    vm.wait_exit(Duration::from_secs(30));
}
