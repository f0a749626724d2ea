//! The price of isolation: every row measured with the devices in processes
//! of their own (`--device-mode out-of-process`, jailed) and as threads of
//! the core (`--device-mode in-process`), in the same run, as one table of
//! medians, 99th percentiles (of a rate: its first percentile, the worst
//! 1 % either way) and the ratio out-of-process / in-process (of times;
//! in-process / out-of-process for a rate, so that a ratio above 1 is
//! always what isolation costs).
//! Run with `cargo bench -p papervisor-tests --bench isolation [-- ROUNDS]`
//! (ROUNDS, 15 by default, scales the hot-plug, boot, per-VM and restart
//! rows); `PAPERVISOR_BENCH_ROWS=restart,per-vm` runs only those groups
//! (of `boot`, `calls`, `per-vm`, `floor`, `restart`, `block`, `trace`).
//! It runs the README's build (no fault injection), optimised, from
//! target/plain. Needs /dev/kvm; the restart rows need root (the jail).
//!
//! The guest times its own calls with the time-stamp counter (`bench`,
//! `rtas-time`). KVM gives the guest the host's counter (plus an offset):
//! its rate is measured on the host against the host's clock, and each
//! guest run is checked not to count more cycles than the host saw pass.

use papervisor_tests::bench::{count_arg, guest_call, median, percentile, pss_kib, status_kib};
use papervisor_tests::{kvm_usable, plain_binary, send_signal, QmpClient, Vm};
use serde_json::{json, Value};
use std::os::fd::AsFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const MODES: [&str; 2] = ["out-of-process", "in-process"];
/// One machine for every row: SMT-less cores, 16 382 LMB DRCs.
const MACHINE: [&str; 4] = [
    "--smp",
    "cpus=1,maxcpus=4",
    "--memory",
    "size=512M,maxmem=4T,slots=8",
];
const CORE1_DRC: &str = "0x10000001";
/// Calls per guest `bench` run: the first 4096 are timed one by one.
const CALLS: u32 = 4000;
/// How long the guest idles while the devices' CPU time is measured.
const IDLE: Duration = Duration::from_secs(10);
/// device_del requests in the storm, timed in batches.
const STORM: u32 = 2000;
const STORM_BATCHES: u32 = 10;
/// Between two boots.
const BOOT_PAUSE: Duration = Duration::from_millis(500);
/// The unit of the request rate.
const RATE_UNIT: &str = "requests/s";

/// A row where more is better: a rate.
fn is_rate(unit: &str) -> bool {
    unit.ends_with("/s")
}

/// One measured quantity: samples per mode (none where it does not apply).
struct Row {
    name: String,
    unit: &'static str,
    samples: [Vec<f64>; 2],
}

impl Row {
    fn new(name: impl Into<String>, unit: &'static str) -> Row {
        Row {
            name: name.into(),
            unit,
            samples: [Vec::new(), Vec::new()],
        }
    }
}

/// The rows, in the order they print.
#[derive(Default)]
struct Table {
    rows: Vec<Row>,
}

impl Table {
    fn row(&mut self, name: &str, unit: &'static str) -> &mut Row {
        if let Some(at) = self.rows.iter().position(|row| row.name == name) {
            return &mut self.rows[at];
        }
        self.rows.push(Row::new(name, unit));
        self.rows.last_mut().expect("just pushed")
    }

    fn add(&mut self, mode: usize, name: &str, unit: &'static str, values: &[f64]) {
        self.row(name, unit).samples[mode].extend_from_slice(values);
    }

    fn print(&mut self) {
        println!("| row | unit | out-of-process median | p99 | in-process median | p99 | cost of isolation (ratio of medians) |");
        println!("|---|---|---|---|---|---|---|");
        for row in &mut self.rows {
            let mut cells = Vec::new();
            let mut medians = [None, None];
            for (mode, samples) in row.samples.iter_mut().enumerate() {
                if samples.is_empty() {
                    cells.push("—".to_string());
                    cells.push("—".to_string());
                    continue;
                }
                let middle = median(samples);
                medians[mode] = Some(middle);
                cells.push(shown(middle));
                // The worst 1 %: the slowest rates, the longest times.
                let worst = match is_rate(row.unit) {
                    true => percentile(samples, 1.0),
                    false => percentile(samples, 99.0),
                };
                cells.push(shown(worst));
            }
            let ratio = match (medians, is_rate(row.unit)) {
                ([Some(out), Some(inside)], false) if inside > 0.0 => {
                    format!("{:.2}", out / inside)
                }
                ([Some(out), Some(inside)], true) if out > 0.0 => format!("{:.2}", inside / out),
                _ => "—".to_string(),
            };
            println!(
                "| {} | {} | {} | {ratio} |",
                row.name,
                row.unit,
                cells.join(" | ")
            );
        }
    }
}

/// Three significant decimals for small values (the idle CPU), two otherwise.
fn shown(value: f64) -> String {
    match value.abs() < 1.0 {
        true => format!("{value:.3}"),
        false => format!("{value:.2}"),
    }
}

/// The README's build (no fault injection), optimised.
fn start(mode: &str) -> Vm {
    let mut args = MACHINE.to_vec();
    args.extend(["--device-mode", mode]);
    Vm::start_program(&plain_binary("papervisor"), &args)
}

/// A guest `bench` run: per-call cycles (median, p99) and the total.
struct GuestBench {
    total: f64,
    median: f64,
    p99: f64,
    elapsed: Duration,
}

fn guest_bench(vm: &mut Vm, kind: &str) -> GuestBench {
    let started = Instant::now();
    let line = vm.console.command(&format!("bench {kind} {CALLS}"));
    let elapsed = started.elapsed();
    let words: Vec<&str> = line[0].split_whitespace().collect();
    let number = |after: &str| -> f64 {
        let at = words.iter().position(|w| *w == after).expect(after);
        words[at + 1].parse().expect("a number")
    };
    assert_eq!(
        words[..3],
        ["bench:", &CALLS.to_string(), "calls,"],
        "{line:?}"
    );
    GuestBench {
        total: number("total"),
        median: number("median"),
        p99: number("p99"),
        elapsed,
    }
}

/// The time-stamp counter's cycles per microsecond, against the host's clock.
fn cycles_per_micro() -> f64 {
    let started = Instant::now();
    // SAFETY: rdtsc reads a counter and has no side effects.
    let first = unsafe { std::arch::x86_64::_rdtsc() };
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: as above.
    let last = unsafe { std::arch::x86_64::_rdtsc() };
    (last - first) as f64 / (started.elapsed().as_secs_f64() * 1e6)
}

fn rtas_time(vm: &mut Vm) -> (u64, f64) {
    let line = vm.console.command("rtas-time");
    let words: Vec<&str> = line[0].split_whitespace().collect();
    assert_eq!((words[0], words[2]), ("rtas-time:", "calls,"), "{line:?}");
    (
        words[1].parse().expect("a count"),
        words[4].parse().expect("cycles"),
    )
}

fn millis(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn event_seconds(event: &Value) -> f64 {
    let stamp = &event["timestamp"];
    stamp["seconds"].as_f64().unwrap_or(0.0) + stamp["microseconds"].as_f64().unwrap_or(0.0) / 1e6
}

/// Process start → prompt, and the core's own account of it.
fn boot_rows(table: &mut Table, mode: usize, boots: usize) {
    for _ in 0..boots {
        // The kernel tears the last VM's jails (their namespaces) down
        // after it exits: each boot starts on a machine at rest.
        std::thread::sleep(BOOT_PAUSE);
        let started = Instant::now();
        let mut vm = start(MODES[mode]);
        vm.boot();
        let total = millis(started);
        let mut qmp = QmpClient::connect(&vm.qmp_socket());
        let times = qmp.execute("x-query-startup", json!({}))["return"].clone();
        let ms = |name: &str| times[name].as_f64().expect(name);
        table.add(mode, "boot: process start → prompt", "ms", &[total]);
        table.add(
            mode,
            "boot: device processes started and ready",
            "ms",
            &[ms("devices-ms")],
        );
        table.add(mode, "boot: KVM set-up", "ms", &[ms("kvm-ms")]);
        table.add(
            mode,
            "boot: guest start → prompt",
            "ms",
            &[total - ms("vcpu0-started-ms")],
        );
        drop(qmp);
        vm.console.send_line("poweroff");
        vm.wait_exit(Duration::from_secs(30));
    }
}

/// The per-call rows, from the guest's own timing.
fn call_rows(table: &mut Table, mode: usize, vm: &mut Vm, rate: f64) {
    for (kind, name) in [
        ("hcall", "floor: bare port-I/O exit round trip (null hcall)"),
        ("rtas", "RTAS call answered by the RTAS server alone"),
        (
            "sensor",
            "RTAS get-sensor-state (needs the hotplug controller)",
        ),
    ] {
        guest_call_row(table, mode, vm, rate, kind, name);
    }
}

/// Row `name`: three guest runs of `bench KIND`, timed per call.
fn guest_call_row(table: &mut Table, mode: usize, vm: &mut Vm, rate: f64, kind: &str, name: &str) {
    let mut medians = Vec::new();
    let mut p99s = Vec::new();
    for _ in 0..3 {
        let run = guest_bench(vm, kind);
        let counted = run.total / rate;
        let passed = run.elapsed.as_secs_f64() * 1e6;
        assert!(
            counted <= passed,
            "the guest counted {counted:.0} µs in {passed:.0} µs: its counter is not the host's"
        );
        medians.push(run.median / rate);
        p99s.push(run.p99 / rate);
    }
    // Each run gives a median and a p99 of CALLS calls: the row keeps
    // the runs' medians (its median) and their p99s (its p99).
    let row = table.row(name, "µs");
    row.samples[mode].extend(medians);
    let worst = p99s.iter().copied().fold(0.0, f64::max);
    row.samples[mode].push(worst);
}

/// The trace's cost on the busiest point, an RTAS call: the same call in
/// a VM with the trace off (the default), on into the ring, and on into
/// the ring and a file.
fn trace_rows(table: &mut Table, mode: usize) {
    let dir = papervisor_tests::scratch_dir();
    let file = format!("--trace={}", dir.join("trace.jsonl").display());
    for (trace, name) in [
        (None, "RTAS call (the RTAS server alone), trace off"),
        (
            Some("--trace=ring"),
            "RTAS call (the RTAS server alone), --trace ring",
        ),
        (
            Some(file.as_str()),
            "RTAS call (the RTAS server alone), --trace FILE",
        ),
    ] {
        let mut args = MACHINE.to_vec();
        args.extend(["--device-mode", MODES[mode]]);
        args.extend(trace);
        let mut vm = Vm::start_program(&plain_binary("papervisor"), &args);
        vm.boot();
        guest_call_row(table, mode, &mut vm, cycles_per_micro(), "rtas", name);
        vm.console.send_line("poweroff");
        vm.wait_exit(Duration::from_secs(30));
    }
}

/// Core hot-add and hot-unplug, and the RTAS calls of each unplug.
fn core_rows(table: &mut Table, mode: usize, vm: &mut Vm, rate: f64, rounds: usize) {
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    for _ in 0..rounds {
        let started = Instant::now();
        let reply = qmp.execute(
            "device_add",
            json!({"driver": "host-spapr-cpu-core", "core-id": 1, "id": "core1"}),
        );
        assert_eq!(reply["return"], json!({}), "{reply}");
        vm.console.expect_async(
            &format!("dlpar: cpu add {CORE1_DRC}: ok"),
            Duration::from_secs(60),
        );
        table.add(
            mode,
            "core hot-add: device_add → the guest reports its thread online",
            "ms",
            &[millis(started)],
        );
        let (calls_before, cycles_before) = rtas_time(vm);
        let started = Instant::now();
        let reply = qmp.execute("device_del", json!({"id": "core1"}));
        assert_eq!(reply["return"], json!({}), "{reply}");
        qmp.wait_event("DEVICE_DELETED");
        table.add(
            mode,
            "core hot-unplug: device_del → DEVICE_DELETED",
            "ms",
            &[millis(started)],
        );
        vm.console.expect_async(
            &format!("dlpar: cpu remove {CORE1_DRC}: ok"),
            Duration::from_secs(60),
        );
        let (calls_after, cycles_after) = rtas_time(vm);
        // The rtas-time command itself is not among them: it makes no call.
        table.add(
            mode,
            "CPU unplug's RTAS burst: the guest's time in its calls",
            "µs",
            &[(cycles_after - cycles_before) / rate],
        );
        table.add(
            mode,
            "CPU unplug's RTAS burst: calls (stop-self not counted: it does not return)",
            "calls",
            &[(calls_after - calls_before) as f64],
        );
    }
}

/// A 16 GiB DIMM (64 LMBs) plugged and unplugged.
fn dimm_rows(table: &mut Table, mode: usize, vm: &mut Vm, rounds: usize) {
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    let backend = json!({"qom-type": "memory-backend-memfd", "id": "big", "size": 16u64 << 30});
    assert_eq!(qmp.execute("object-add", backend)["return"], json!({}));
    for _ in 0..rounds {
        let started = Instant::now();
        let plug = json!({"driver": "pc-dimm", "id": "dimm0", "memdev": "big"});
        assert_eq!(qmp.execute("device_add", plug)["return"], json!({}));
        vm.console.expect_async(
            "dlpar: memory add count 64 from 0x80000010: ok",
            Duration::from_secs(120),
        );
        table.add(
            mode,
            "16 GiB DIMM plug: device_add → every LMB online",
            "ms",
            &[millis(started)],
        );
        let started = Instant::now();
        let reply = qmp.execute("device_del", json!({"id": "dimm0"}));
        assert_eq!(reply["return"], json!({}), "{reply}");
        qmp.wait_event("DEVICE_DELETED");
        table.add(
            mode,
            "16 GiB DIMM unplug: device_del → DEVICE_DELETED",
            "ms",
            &[millis(started)],
        );
        vm.console.expect_async(
            "dlpar: memory remove count 64 from 0x80000010: ok",
            Duration::from_secs(120),
        );
    }
    assert_eq!(
        qmp.execute("object-del", json!({"id": "big"}))["return"],
        json!({})
    );
}

/// device_del requests accepted per second while the guest refuses each
/// unplug (the core's thread is its last online CPU); the queue stays at
/// one event.
fn storm_row(table: &mut Table, mode: usize, vm: &mut Vm) {
    vm.plug_core(1, "core1");
    assert_eq!(vm.console.command("cpu offline 0"), ["cpu 0 offline"]);
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    let mut rates = Vec::new();
    for _ in 0..STORM_BATCHES {
        let started = Instant::now();
        for _ in 0..STORM / STORM_BATCHES {
            let reply = qmp.execute("device_del", json!({"id": "core1"}));
            assert_eq!(reply["return"], json!({}), "{reply}");
        }
        rates.push(f64::from(STORM / STORM_BATCHES) / started.elapsed().as_secs_f64());
    }
    let queued = qmp.execute("x-query-event-log", json!({}))["return"]
        .as_array()
        .map_or(0, Vec::len);
    assert!(queued <= 1, "{queued} events queued after the storm");
    table.add(
        mode,
        &format!(
            "device_del storm on a refusing guest ({STORM} requests in {STORM_BATCHES} batches, ≤ 1 event queued)"
        ),
        RATE_UNIT,
        &rates,
    );
    // Back to one online CPU outside the core, the core unplugged.
    assert_eq!(vm.console.command("cpu online 0"), ["cpu 0 online"]);
    let reply = qmp.execute("device_del", json!({"id": "core1"}));
    assert_eq!(reply["return"], json!({}), "{reply}");
    qmp.wait_event("DEVICE_DELETED");
    vm.console.expect_async(
        &format!("dlpar: cpu remove {CORE1_DRC}: ok"),
        Duration::from_secs(60),
    );
}

/// The time a task ran on a CPU, in nanoseconds (schedstat's first field).
fn cpu_nanos(schedstat: &str) -> u64 {
    std::fs::read_to_string(schedstat)
        .unwrap_or_else(|e| panic!("{schedstat}: {e}"))
        .split_whitespace()
        .next()
        .and_then(|ns| ns.parse().ok())
        .unwrap_or_else(|| panic!("{schedstat}: no run time"))
}

/// The CPU the devices use while the guest sits at its prompt.
fn idle_row(table: &mut Table, mode: usize, vm: &mut Vm) {
    let core = vm.pid();
    // A device process has one thread; a device thread is a task of the core.
    let stats: Vec<String> = vm
        .device_pids()
        .into_iter()
        .map(|pid| match mode {
            0 => format!("/proc/{pid}/task/{pid}/schedstat"),
            _ => format!("/proc/{core}/task/{pid}/schedstat"),
        })
        .collect();
    let ran = || stats.iter().map(|path| cpu_nanos(path)).sum::<u64>();
    let before = ran();
    std::thread::sleep(IDLE);
    let used = ran() - before;
    let percent = used as f64 / IDLE.as_nanos() as f64 * 100.0;
    table.add(
        mode,
        "device processes' CPU while the guest idles 10 s",
        "% of a CPU",
        &[percent],
    );
}

/// The machine of the restart rows: the controller's state region at
/// maxmem=4G, as most VMs have it (the 16 382-DRC one is in the restart
/// benchmark).
const RESTART_MACHINE: [&str; 4] = [
    "--smp",
    "cpus=1,maxcpus=4",
    "--memory",
    "size=512M,maxmem=4G,slots=8",
];
/// Deaths of each kind per VM in the restart rows: the first, then more
/// 1.5 s apart (a sixth within a minute would mark it failed).
const DEATHS: usize = 5;
const DEATH_SPACING: Duration = Duration::from_millis(1500);

/// SIGKILL → the successor serves, per process (out-of-process only: a
/// thread cannot be killed alone), for a first death and for deaths 1.5 s
/// apart, and the guest's call made right after each kill (it waits for
/// the successor) against the same call made normally; and the
/// controller's footprint at 16 382 LMB DRCs.
fn restart_rows(table: &mut Table, rounds: usize) {
    let mut vm = start(MODES[0]);
    vm.boot();
    let controller = vm.device_process("hotplug-controller")["pid"]
        .as_u64()
        .expect("a pid") as u32;
    table.add(
        0,
        "hotplug controller RSS at 16 382 LMB DRCs",
        "MiB",
        &[status_kib(controller, "VmRSS:") as f64 / 1024.0],
    );
    vm.console.send_line("poweroff");
    vm.wait_exit(Duration::from_secs(30));
    for _ in 0..rounds {
        let mut vm = Vm::start_program(
            &plain_binary("papervisor"),
            &[&RESTART_MACHINE[..], &["--device-mode", MODES[0]]].concat(),
        );
        vm.boot();
        let mut qmp = QmpClient::connect(&vm.qmp_socket());
        for kind in ["rtas-server", "hotplug-controller", "event-log"] {
            let call = guest_call(kind);
            let started = Instant::now();
            vm.console.command(call);
            table.add(
                0,
                &format!("the guest's call needing the {kind}: normal"),
                "ms",
                &[millis(started)],
            );
            for death in 0..DEATHS {
                let pid = vm.device_process(kind)["pid"].as_u64().expect("a pid");
                let killed = now_seconds();
                send_signal(pid, nix::sys::signal::Signal::SIGKILL);
                let started = Instant::now();
                vm.console.command(call);
                let call_ms = millis(started);
                let restarted = qmp.wait_event("X_DEVICE_PROCESS_RESTARTED");
                assert_eq!(restarted["data"]["process"], kind, "{restarted}");
                let which = if death == 0 {
                    "a first death"
                } else {
                    "deaths 1.5 s apart"
                };
                table.add(
                    0,
                    &format!("SIGKILL {kind} → serving again: {which}"),
                    "ms",
                    &[(event_seconds(&restarted) - killed) * 1000.0],
                );
                table.add(
                    0,
                    &format!("the guest's call needing the {kind}: right after a kill"),
                    "ms",
                    &[call_ms],
                );
                if death + 1 < DEATHS {
                    std::thread::sleep(DEATH_SPACING);
                }
            }
        }
        vm.console.send_line("poweroff");
        vm.wait_exit(Duration::from_secs(30));
    }
}

/// The machine of the per-VM rows: a small VM, as a host packs them.
const SMALL_MACHINE: [&str; 4] = ["--smp", "cpus=1,maxcpus=2", "--memory", "size=256M"];
/// VMs running at once for the marginal memory and the start rate.
const MANY_VMS: usize = 20;

/// The PSS of every process of `vms`, in MiB.
fn pss_mib(vms: &[Vm]) -> f64 {
    vms.iter().flat_map(Vm::processes).map(pss_kib).sum::<u64>() as f64 / 1024.0
}

/// What one VM costs the host: the PSS of all its processes, alone and
/// (marginally) among 20, and how many VMs start to the guest's prompt
/// per second when 20 start at once.
fn per_vm_rows(table: &mut Table, mode: usize, rounds: usize) {
    let args = [&SMALL_MACHINE[..], &["--device-mode", MODES[mode]]].concat();
    let program = plain_binary("papervisor");
    for _ in 0..rounds {
        std::thread::sleep(BOOT_PAUSE);
        let mut one = Vm::start_program(&program, &args);
        one.boot();
        let alone = pss_mib(std::slice::from_ref(&one));
        table.add(
            mode,
            "memory of one VM: PSS of all its processes",
            "MiB",
            &[alone],
        );
        let started = Instant::now();
        let mut vms: Vec<Vm> = (1..MANY_VMS)
            .map(|_| Vm::start_program(&program, &args))
            .collect();
        for vm in &mut vms {
            vm.boot();
        }
        let rate = (MANY_VMS - 1) as f64 / started.elapsed().as_secs_f64();
        table.add(
            mode,
            &format!(
                "VMs started to the guest's prompt, {} at once",
                MANY_VMS - 1
            ),
            "VMs/s",
            &[rate],
        );
        vms.push(one);
        let all = pss_mib(&vms);
        table.add(
            mode,
            &format!("memory per VM, marginal, {MANY_VMS} VMs running (PSS)"),
            "MiB",
            &[(all - alone) / (MANY_VMS - 1) as f64],
        );
        for mut vm in vms {
            vm.console.send_line("poweroff");
            vm.wait_exit(Duration::from_secs(30));
        }
    }
}

/// A bare SEQPACKET request/response: between two processes, and between
/// two threads of one process.
/// Requests per block round.
const BLOCK_REQUESTS: usize = 2048;
/// The image the block rows read and write: 64 MiB, in 4 KiB blocks.
const BLOCK_IMAGE: u64 = 64 << 20;

/// A disk's data path without a guest: a host-side driver (the test's
/// virtqueue in a memfd, the core's vhost-user frontend) against the block
/// backend as its jail-less process under its seccomp filter
/// (out-of-process) or the same code on a thread (in-process). 4 KiB reads
/// and writes at random 4 KiB-aligned places at queue depth 1 and 32, and
/// the null-request floor (get-id: answered from memory, the image never
/// touched). A request's latency at depth 32 is its batch's: posted
/// together, one kick, done when the last is used.
fn block_rows(table: &mut Table, mode: usize, rounds: usize) {
    use papervisor_tests::vhost_driver::{
        connect, guest_memory, start_backend, Driver, Request, Where, GET_ID, READ, VERSION_1,
        WRITE_REQUEST,
    };
    let place = [Where::Process, Where::Thread][mode];
    let dir = papervisor_tests::scratch_dir();
    let image = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join("block.raw"))
        .expect("an image");
    // Written once, so that reads find blocks, not holes.
    let block = vec![0x5a; 1 << 20];
    for offset in (0..BLOCK_IMAGE).step_by(block.len()) {
        std::os::unix::fs::FileExt::write_all_at(&image, &block, offset).expect("filled");
    }
    let (child, stream) = start_backend(
        place,
        &plain_binary("papervisor-block"),
        &dir,
        &image,
        &["--id", "bench"],
    );
    let (memory, memfd) = guest_memory();
    let mut frontend = connect(stream, &memory, &memfd);
    let mut driver = Driver::new(&memory, 128);
    frontend
        .start(VERSION_1, &[driver.setup()])
        .expect("the queue starts");
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut random_sector = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % (BLOCK_IMAGE / 4096)) * 8
    };
    let name = MODES[mode];
    eprintln!("isolation: block rows, {name}");
    let rounds = rounds.min(5);
    for (label, kind, data, to_guest) in [
        ("null request (get-id)", GET_ID, 20, true),
        ("4 KiB random read", READ, 4096, true),
        ("4 KiB random write", WRITE_REQUEST, 4096, false),
    ] {
        for depth in [1usize, 32] {
            if kind == GET_ID && depth > 1 {
                continue;
            }
            let row = format!("block: {label}, queue depth {depth} (host-side driver)");
            let mut latencies = Vec::new();
            let mut rates = Vec::new();
            for _ in 0..rounds {
                let started = Instant::now();
                for _ in 0..BLOCK_REQUESTS / depth {
                    let batch: Vec<Request> = (0..depth)
                        .map(|_| Request {
                            kind,
                            sector: random_sector(),
                            data,
                            to_guest,
                        })
                        .collect();
                    let posted = Instant::now();
                    let statuses = driver.run(&batch);
                    let took = posted.elapsed().as_secs_f64() * 1e6;
                    assert!(statuses.iter().all(|&s| s == 0), "{statuses:?}");
                    latencies.extend(std::iter::repeat_n(took, depth));
                }
                let elapsed = started.elapsed().as_secs_f64();
                rates.push((BLOCK_REQUESTS / depth * depth) as f64 / elapsed);
            }
            table.add(mode, &format!("{row}: latency"), "µs", &latencies);
            table.add(mode, &format!("{row}: IOPS"), "requests/s", &rates);
        }
    }
    drop(frontend);
    if let Some(mut child) = child {
        let _ = child.wait();
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A disk as the guest's own driver uses it: requests on a 64 MiB disk
/// at queue depth 1 through the whole path (the kick an MMIO write KVM
/// turns into an eventfd signal, the backend, the used ring the guest
/// polls), timed by the guest's time-stamp counter.
fn guest_block_rows(table: &mut Table, mode: usize) {
    let dir = papervisor_tests::scratch_dir();
    let image = dir.join("guest-block.raw");
    let file = std::fs::File::create(&image).expect("an image");
    let block = vec![0x5a; 1 << 20];
    for offset in (0..BLOCK_IMAGE).step_by(block.len()) {
        std::os::unix::fs::FileExt::write_all_at(&file, &block, offset).expect("filled");
    }
    let node = format!("driver=file,node-name=bench,filename={}", image.display());
    let mut args = MACHINE.to_vec();
    args.extend(["--device-mode", MODES[mode], "--blockdev", &node]);
    args.extend(["--device", "virtio-blk-pci,id=vd0,drive=bench,addr=3"]);
    let mut vm = Vm::start_program(&plain_binary("papervisor"), &args);
    vm.boot();
    let rate = cycles_per_micro();
    for (kind, label) in [
        ("blk-null", "null request (get-id)"),
        ("blk-read", "4 KiB random read"),
        ("blk-write", "4 KiB random write"),
    ] {
        let row = format!("block: {label}, queue depth 1 (the guest's driver, through KVM)");
        let mut medians = Vec::new();
        let mut worst: f64 = 0.0;
        for _ in 0..3 {
            let run = guest_bench(&mut vm, kind);
            medians.push(run.median / rate);
            worst = worst.max(run.p99 / rate);
        }
        let row = table.row(&row, "µs");
        row.samples[mode].extend(medians);
        row.samples[mode].push(worst);
    }
    if mode == 0 {
        block_restart_rows(table, &mut vm, rate);
    }
    vm.console.send_line("poweroff");
    vm.wait_exit(Duration::from_secs(30));
    let _ = std::fs::remove_dir_all(dir);
}

/// The pid of the VM's (one) block process.
fn block_pid(qmp: &mut QmpClient) -> u64 {
    qmp.execute("x-query-device-processes", json!({}))["return"]
        .as_array()
        .and_then(|rows| rows.iter().find(|row| row["kind"] == "block"))
        .and_then(|row| row["pid"].as_u64())
        .expect("a block process")
}

/// A block process killed (out-of-process only): how long the guest's
/// next request takes, its successor started and handed the queue; and
/// the IOPS of 4 KiB reads while it is killed once a second (3 times: with
/// the first, 4 ends, within the restart budget of 5 a minute).
fn block_restart_rows(table: &mut Table, vm: &mut Vm, rate: f64) {
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    assert_eq!(
        vm.console.command("blk write 0 0 8 1"),
        ["blk write: 8 sectors"]
    );
    let mut plain = Vec::new();
    let mut killed = Vec::new();
    for _ in 0..1 {
        let started = Instant::now();
        assert_eq!(
            vm.console.command("blk check 0 0 8 1"),
            ["blk check: 8 sectors, ok"]
        );
        plain.push(millis(started));
        send_signal(block_pid(&mut qmp), nix::sys::signal::Signal::SIGKILL);
        let started = Instant::now();
        assert_eq!(
            vm.console.command("blk check 0 0 8 1"),
            ["blk check: 8 sectors, ok"]
        );
        killed.push(millis(started));
        std::thread::sleep(Duration::from_millis(500));
    }
    table.add(
        0,
        "block: the guest's next request (a console command), its block process running",
        "ms",
        &plain,
    );
    table.add(
        0,
        "block: the guest's next request (a console command), its block process just SIGKILLed",
        "ms",
        &killed,
    );
    let socket = vm.qmp_socket();
    let killer = std::thread::spawn(move || {
        let mut qmp = QmpClient::connect(&socket);
        for _ in 0..3 {
            std::thread::sleep(Duration::from_secs(1));
            send_signal(block_pid(&mut qmp), nix::sys::signal::Signal::SIGKILL);
        }
    });
    let started = Instant::now();
    let mut requests = 0u64;
    let mut cycles = 0.0;
    while started.elapsed() < Duration::from_secs(5) {
        let run = guest_bench(vm, "blk-read");
        requests += u64::from(CALLS);
        cycles += run.total;
    }
    killer.join().expect("the killer");
    let seconds = cycles / rate / 1e6;
    table.add(
        0,
        "block: 4 KiB random read, depth 1, through the guest, its block process SIGKILLed once a second: IOPS",
        RATE_UNIT,
        &[requests as f64 / seconds],
    );
}

fn seqpacket_floor(table: &mut Table) {
    use nix::sys::socket::{recv, send, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
    let trips = 20_000;
    let round_trips = |ours: &std::os::fd::OwnedFd| -> Vec<f64> {
        let mut buffer = [0u8; 64];
        (0..trips)
            .map(|_| {
                let started = Instant::now();
                send(ours.as_fd().as_raw_fd(), &buffer[..32], MsgFlags::empty()).expect("send");
                recv(ours.as_fd().as_raw_fd(), &mut buffer, MsgFlags::empty()).expect("recv");
                started.elapsed().as_secs_f64() * 1e6
            })
            .collect()
    };
    let echo = |theirs: &std::os::fd::OwnedFd| {
        let mut buffer = [0u8; 64];
        while let Ok(n @ 1..) = recv(theirs.as_fd().as_raw_fd(), &mut buffer, MsgFlags::empty()) {
            if send(theirs.as_fd().as_raw_fd(), &buffer[..n], MsgFlags::empty()).is_err() {
                break;
            }
        }
    };
    use std::os::fd::AsRawFd;
    let pair = || {
        socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .expect("socketpair")
    };
    let name = "floor: bare SEQPACKET round trip (processes out-of-process, threads in-process)";
    // Two processes.
    let (ours, theirs) = pair();
    // SAFETY: the child only echoes on its socket with recv/send, which are
    // async-signal-safe, then _exits without running anything of ours.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Child => {
            drop(ours);
            echo(&theirs);
            // SAFETY: ends the child at once.
            unsafe { nix::libc::_exit(0) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(theirs);
            table.add(0, name, "µs", &round_trips(&ours));
            drop(ours);
            let _ = nix::sys::wait::waitpid(child, None);
        }
    }
    // Two threads.
    let (ours, theirs) = pair();
    let echoer = std::thread::spawn(move || echo(&theirs));
    table.add(1, name, "µs", &round_trips(&ours));
    drop(ours);
    let _ = echoer.join();
}

/// Whether the row group `group` runs (`PAPERVISOR_BENCH_ROWS`, all when unset).
fn runs(group: &str) -> bool {
    std::env::var("PAPERVISOR_BENCH_ROWS")
        .map(|groups| groups.split(',').any(|g| g == group))
        .unwrap_or(true)
}

fn main() {
    if !kvm_usable("isolation benchmark") {
        return;
    }
    let rounds = count_arg(15);
    plain_binary("papervisor");
    let mut table = Table::default();
    for (mode, name) in MODES.iter().enumerate() {
        eprintln!("isolation: {name}");
        if runs("boot") {
            boot_rows(&mut table, mode, rounds.min(9));
        }
        if runs("calls") {
            let mut vm = start(name);
            vm.boot();
            let rate = cycles_per_micro();
            call_rows(&mut table, mode, &mut vm, rate);
            core_rows(&mut table, mode, &mut vm, rate, rounds);
            dimm_rows(&mut table, mode, &mut vm, rounds.min(5));
            storm_row(&mut table, mode, &mut vm);
            idle_row(&mut table, mode, &mut vm);
            vm.console.send_line("poweroff");
            vm.wait_exit(Duration::from_secs(30));
        }
        if runs("per-vm") {
            per_vm_rows(&mut table, mode, rounds.min(3));
        }
        if runs("trace") {
            trace_rows(&mut table, mode);
        }
    }
    if runs("floor") {
        seqpacket_floor(&mut table);
    }
    if runs("block") {
        for mode in 0..MODES.len() {
            block_rows(&mut table, mode, rounds);
            guest_block_rows(&mut table, mode);
        }
    }
    if runs("restart") {
        if nix::unistd::geteuid().is_root() {
            restart_rows(&mut table, rounds.min(3));
        } else {
            eprintln!("SKIPPED the restart rows: they need root (the jail)");
        }
    }
    println!(
        "papervisor {} (out-of-process: jailed device processes; in-process: device threads of the core)",
        MACHINE.join(" ")
    );
    table.print();
}
