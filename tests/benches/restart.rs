//! What a device process's death costs: SIGKILL → the supervisor sees the
//! exit, SIGKILL → the successor serves (it resumed its state region; a
//! process that served restarts at once), and what the guest sees — one
//! RTAS call that needs the dead process, made right after the kill,
//! against the same call made normally. Then the hotplug controller at
//! `maxmem=4G` and `maxmem=4T` (16 382 LMB DRCs): its state region (size the
//! core creates, memory actually used) and its SIGKILL → serving time.
//! Prints a table; `cargo bench -p papervisor-tests --bench restart [-- ROUNDS]`.
//! Needs root (the jail) and /dev/kvm.

use papervisor_tests::bench::{count_arg, guest_call, median};
use papervisor_tests::{binary, root_and_kvm, send_signal, QmpClient, Vm};
use serde_json::Value;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn event_seconds(event: &Value) -> f64 {
    let stamp = &event["timestamp"];
    stamp["seconds"].as_f64().unwrap_or(0.0) + stamp["microseconds"].as_f64().unwrap_or(0.0) / 1e6
}

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

struct Round {
    exit_seen_ms: f64,
    serving_ms: f64,
    call_normal_ms: f64,
    call_during_ms: f64,
}

fn kill_round(kind: &str, memory: &str) -> Round {
    let mut vm = Vm::start(&["--smp", "cpus=1,maxcpus=2", "--memory", memory]);
    vm.boot();
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    let call = guest_call(kind);
    let started = Instant::now();
    let normal = vm.console.command(call);
    let call_normal_ms = started.elapsed().as_secs_f64() * 1000.0;
    let pid = vm.device_process(kind)["pid"].as_u64().expect("a pid");
    let killed = now_seconds();
    send_signal(pid, nix::sys::signal::Signal::SIGKILL);
    let started = Instant::now();
    let during = vm.console.command(call);
    let call_during_ms = started.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(normal.len(), during.len(), "{normal:?} then {during:?}");
    let exited = qmp.wait_event("X_DEVICE_PROCESS_EXITED");
    let restarted = qmp.wait_event("X_DEVICE_PROCESS_RESTARTED");
    vm.console.send_line("poweroff");
    vm.wait_exit(Duration::from_secs(30));
    Round {
        exit_seen_ms: (event_seconds(&exited) - killed) * 1000.0,
        serving_ms: (event_seconds(&restarted) - killed) * 1000.0,
        call_normal_ms,
        call_during_ms,
    }
}

/// The controller's state region in the core: the memfd's size and the
/// memory it holds (blocks allocated), in KiB.
fn region_kib(vm: &Vm) -> (u64, u64) {
    let dir = format!("/proc/{}/fd", vm.pid());
    for entry in std::fs::read_dir(&dir)
        .expect("the core's descriptors")
        .flatten()
    {
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        if target
            .to_string_lossy()
            .contains("papervisor-hotplug-state")
        {
            let meta = std::fs::metadata(entry.path()).expect("the region's size");
            use std::os::unix::fs::MetadataExt;
            return (meta.size() / 1024, meta.blocks() * 512 / 1024);
        }
    }
    panic!("no state region among the core's descriptors");
}

fn main() {
    if !root_and_kvm("restart benchmark") {
        return;
    }
    let rounds = count_arg(5);
    binary("papervisor");
    println!("| {rounds} rounds, medians | exit seen | serving again | the guest's call: normal | right after the kill |");
    println!("|---|---|---|---|---|");
    for kind in ["rtas-server", "hotplug-controller", "event-log"] {
        let all: Vec<Round> = (0..rounds).map(|_| kill_round(kind, "size=512M")).collect();
        let pick = |f: fn(&Round) -> f64| median(&mut all.iter().map(f).collect::<Vec<_>>());
        println!(
            "| SIGKILL {kind} (`{}`) | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
            guest_call(kind),
            pick(|r| r.exit_seen_ms),
            pick(|r| r.serving_ms),
            pick(|r| r.call_normal_ms),
            pick(|r| r.call_during_ms),
        );
    }
    println!();
    println!("| hotplug controller, {rounds} rounds | LMB DRCs | region (memfd size) | region (memory used) | controller RSS | SIGKILL → serving again |");
    println!("|---|---|---|---|---|---|");
    for maxmem in ["4G", "4T"] {
        let memory = format!("size=512M,maxmem={maxmem},slots=8");
        let (drcs, (size, used), rss) = {
            let mut vm = Vm::start(&["--smp", "cpus=1,maxcpus=2", "--memory", &memory]);
            let banner = vm.boot();
            let drcs = banner
                .lines()
                .find_map(|l| l.strip_prefix("drcs: "))
                .and_then(|l| l.split(", ").nth(1))
                .and_then(|l| l.strip_suffix(" lmb"))
                .unwrap_or("?")
                .to_string();
            let region = region_kib(&vm);
            let pid = vm.device_process("hotplug-controller")["pid"]
                .as_u64()
                .expect("a pid");
            let rss = papervisor_tests::bench::status_kib(pid as u32, "VmRSS:");
            vm.console.send_line("poweroff");
            vm.wait_exit(Duration::from_secs(30));
            (drcs, region, rss)
        };
        let mut serving: Vec<f64> = (0..rounds)
            .map(|_| kill_round("hotplug-controller", &memory).serving_ms)
            .collect();
        println!(
            "| maxmem={maxmem} | {drcs} | {size} KiB | {used} KiB | {rss} KiB | {:.1} ms |",
            median(&mut serving)
        );
    }
}
