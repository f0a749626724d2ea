//! The fault matrix: every fault point of every device process (and the
//! core's end of its links) × every action, against a CPU-core plug and
//! unplug, a DIMM plug and unplug and a disk's (a virtio-blk PCI function)
//! plug and unplug, each cell in a VM of its own with the guest running.
//! Each cell asserts: the operation completes (or fails with a clear error
//! that a retry fixes); the DRC table and the guest agree; DEVICE_DELETED
//! comes exactly once; the fault really fired (a restart, unless it was a
//! delay); the guest stays healthy (a normal hotplug cycle afterwards); the
//! core is still serving. `scripts/fault-matrix` prints the table. Needs
//! root, /dev/kvm and the fault-injection build; says so when skipped.

use papervisor_tests::disks::Stress;
use papervisor_tests::{binary, root_and_kvm, scratch_dir, QmpClient, Vm};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const CORE1: u32 = 0x1000_0001;
const ADD_DONE: &str = "dlpar: cpu add 0x10000001: ok";
const REMOVE_DONE: &str = "dlpar: cpu remove 0x10000001: ok";
const GUEST_TIMEOUT: Duration = Duration::from_secs(40);
/// Long enough for a duplicate DEVICE_DELETED to show up.
const QUIET: Duration = Duration::from_millis(500);
/// Cells run at once: most of a cell's time is spent waiting (timeouts,
/// backoff, the guest), not computing.
const PARALLEL_CELLS: usize = 2;

const ACTIONS: [&str; 6] = [
    "crash",
    "hang",
    "delay",
    "drop-reply",
    "corrupt-reply",
    "close-link",
];
/// The core neither crashes nor hangs on purpose.
const CORE_ACTIONS: [&str; 4] = ["delay", "drop-reply", "corrupt-reply", "close-link"];

/// The points a CPU-core plug and unplug pass in each process.
fn points(process: &str) -> &'static [&'static str] {
    match process {
        "rtas-server" => &[
            "received",
            "peer-answered",
            "replying",
            "core-sending",
            "core-received",
        ],
        "hotplug-controller" => &[
            "received",
            "committed",
            "delivered",
            "replying",
            "core-sending",
            "core-received",
        ],
        _ => &["received", "committed", "replying"],
    }
}

/// The steps of each protocol a fault at `point` is aimed at, besides the
/// first request that passes the point (`-`): the guest's side of a plug
/// and an unplug in the controller, and the guest's fetch in the event log.
/// A step that does not pass the point is not a cell: during a plug the
/// guest's sensor read commits nothing, and none of its requests owes
/// anyone anything (the add event went with the core's request).
fn requests(process: &str, operation: Operation, point: &str) -> &'static [&'static str] {
    let plugs = operation.plugs();
    if operation.disk() {
        // A disk's add passes the guest's PCI calls and the driver's BAR
        // accesses too; they are not transitions (nothing passes
        // `committed` for them).
        return match (process, plugs, point) {
            ("hotplug-controller", true, "received" | "replying") => &[
                "-",
                "ConfigureStep",
                "WritePciConfig",
                "ChangeMsi",
                "BarAccess",
            ],
            ("hotplug-controller", true, "committed") => &["-", "ConfigureStep"],
            ("hotplug-controller", false, _) => &["-", "SetIndicator"],
            ("event-log", _, _) => &["-", "CheckException"],
            _ => &["-"],
        };
    }
    match (process, plugs, point) {
        ("hotplug-controller", true, "received" | "replying") => &[
            "-",
            "GetSensorState",
            "SetIndicator",
            "ConfigureStep",
            "ConfigureDone",
        ],
        ("hotplug-controller", true, "committed") => {
            &["-", "SetIndicator", "ConfigureStep", "ConfigureDone"]
        }
        ("hotplug-controller", false, _) => &["-", "SetIndicator"],
        ("event-log", _, _) => &["-", "CheckException"],
        _ => &["-"],
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operation {
    Plug,
    Unplug,
    PlugDimm,
    UnplugDimm,
    PlugDisk,
    UnplugDisk,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Operation::Plug => "plug",
            Operation::Unplug => "unplug",
            Operation::PlugDimm => "DIMM plug",
            Operation::UnplugDimm => "DIMM unplug",
            Operation::PlugDisk => "disk plug",
            Operation::UnplugDisk => "disk unplug",
        }
    }

    fn plugs(self) -> bool {
        matches!(
            self,
            Operation::Plug | Operation::PlugDimm | Operation::PlugDisk
        )
    }

    fn dimm(self) -> bool {
        matches!(self, Operation::PlugDimm | Operation::UnplugDimm)
    }

    fn disk(self) -> bool {
        matches!(self, Operation::PlugDisk | Operation::UnplugDisk)
    }
}

struct Cell<'a> {
    process: &'a str,
    point: &'a str,
    action: &'a str,
    /// `-`: the first request that passes the point.
    request: &'a str,
    operation: Operation,
}

/// What a cell saw, for the table.
struct Outcome {
    seconds: f64,
    restarts: u64,
    retried: bool,
}

fn plug_request() -> Value {
    json!({"driver": "host-spapr-cpu-core", "core-id": 1, "id": "core1"})
}

/// Runs `command`; a failure must say what failed, and the same command
/// sent again must then succeed. Returns whether it took a retry.
fn execute_with_retry(qmp: &mut QmpClient, command: &str, arguments: Value) -> bool {
    let reply = qmp.execute(command, arguments.clone());
    if reply == json!({"return": {}}) {
        return false;
    }
    let desc = reply["error"]["desc"].as_str().unwrap_or_default();
    assert!(
        !desc.is_empty(),
        "{command} failed without a reason: {reply}"
    );
    let again = qmp.execute(command, arguments);
    assert_eq!(
        again,
        json!({"return": {}}),
        "{command} retried after {desc}"
    );
    true
}

fn restarts(vm: &Vm) -> u64 {
    vm.device_processes()
        .iter()
        .map(|p| p["restarts"].as_u64().unwrap_or(0))
        .sum()
}

/// Waits until every device process runs (a restart may be under way).
fn await_all_running(vm: &Vm) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let processes = vm.device_processes();
        if processes.iter().all(|p| p["state"] == "running") {
            return;
        }
        assert!(Instant::now() < deadline, "not all running: {processes:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// DRC `drc` is in `state`, holding `device`, and not being unplugged.
fn assert_drc(vm: &Vm, drc: u32, state: &str, device: Option<&str>) {
    let row = vm.drc(drc);
    assert_eq!(
        (&row["state"], &row["device"], &row["unplug-requested"]),
        (&json!(state), &json!(device), &json!(false)),
        "{row}"
    );
}

fn assert_plugged(vm: &mut Vm) {
    assert_drc(vm, CORE1, "configured", Some("core1"));
    assert_eq!(vm.console.command("cpus"), ["cpu 0 online", "cpu 1 online"]);
}

fn assert_unplugged(vm: &mut Vm) {
    assert_drc(vm, CORE1, "unusable", None);
    assert_eq!(vm.console.command("cpus"), ["cpu 0 online"]);
}

/// `device_add` of `request` (sent again once if it failed with a reason),
/// then the guest's line `done`. Whether it took a retry.
fn add(vm: &mut Vm, qmp: &mut QmpClient, request: Value, done: &str) -> bool {
    let retried = execute_with_retry(qmp, "device_add", request);
    vm.console.expect_async(done, GUEST_TIMEOUT);
    retried
}

/// `device_del` of `id`: one DEVICE_DELETED, then the guest's line `done`.
/// Whether it took a retry.
fn delete(vm: &mut Vm, qmp: &mut QmpClient, id: &str, done: &str) -> bool {
    let retried = execute_with_retry(qmp, "device_del", json!({ "id": id }));
    assert_eq!(qmp.wait_event("DEVICE_DELETED")["data"]["device"], id);
    let later = qmp.events_within(QUIET);
    assert!(
        !later.iter().any(|e| e["event"] == "DEVICE_DELETED"),
        "a second DEVICE_DELETED: {later:?}"
    );
    vm.console.expect_async(done, GUEST_TIMEOUT);
    retried
}

fn plug(vm: &mut Vm, qmp: &mut QmpClient) -> bool {
    let retried = add(vm, qmp, plug_request(), ADD_DONE);
    assert_plugged(vm);
    retried
}

const DIMM_ADD_DONE: &str = "dlpar: memory add count 2 from 0x80000004: ok";
const DIMM_REMOVE_DONE: &str = "dlpar: memory remove count 2 from 0x80000004: ok";

/// The DIMM's two LMB DRCs, as QMP and the guest see them.
fn assert_dimm(vm: &mut Vm, plugged: bool) {
    for drc in [0x8000_0004u32, 0x8000_0005] {
        match plugged {
            true => assert_drc(vm, drc, "configured", Some("dimm0")),
            false => assert_drc(vm, drc, "unusable", None),
        }
    }
    let state = if plugged { "assigned online" } else { "free" };
    assert_eq!(
        &vm.console.command("mem")[..2],
        [
            format!("lmb 0x80000004 at 0x40000000: {state}"),
            format!("lmb 0x80000005 at 0x50000000: {state}")
        ]
    );
}

fn plug_dimm(vm: &mut Vm, qmp: &mut QmpClient) -> bool {
    let request = json!({"driver": "pc-dimm", "id": "dimm0", "memdev": "mem0"});
    let retried = add(vm, qmp, request, DIMM_ADD_DONE);
    assert_dimm(vm, true);
    retried
}

fn unplug_dimm(vm: &mut Vm, qmp: &mut QmpClient) -> bool {
    let retried = delete(vm, qmp, "dimm0", DIMM_REMOVE_DONE);
    assert_dimm(vm, false);
    retried
}

fn unplug(vm: &mut Vm, qmp: &mut QmpClient) -> bool {
    let retried = delete(vm, qmp, "core1", REMOVE_DONE);
    assert_unplugged(vm);
    retried
}

const DISK_DRC: u32 = 0x4000_0018;
const DISK_ADD_DONE: &str = "dlpar: pci add 0x40000018: ok";
const DISK_REMOVE_DONE: &str = "dlpar: pci remove 0x40000018: ok";

/// The disk's DRC as QMP sees it, and the guest's disks.
fn assert_disk(vm: &mut Vm, plugged: bool) {
    // A PCI connector is physical: empty, it is powered on.
    match plugged {
        true => assert_drc(vm, DISK_DRC, "physical-configured", Some("vd0")),
        false => assert_drc(vm, DISK_DRC, "power-on", None),
    }
    if plugged {
        // The guest's driver runs the disk: a pattern goes and comes back.
        assert_eq!(
            vm.console.command("blk write 0 64 8 7"),
            ["blk write: 8 sectors"]
        );
        assert_eq!(
            vm.console.command("blk check 0 64 8 7"),
            ["blk check: 8 sectors, ok"]
        );
    } else {
        assert_eq!(vm.console.command("blk"), ["blk: no disks"]);
    }
}

fn plug_disk(vm: &mut Vm, qmp: &mut QmpClient) -> bool {
    let request = json!({"driver": "virtio-blk-pci", "id": "vd0", "drive": "disk0", "addr": "3"});
    let retried = add(vm, qmp, request, DISK_ADD_DONE);
    assert_disk(vm, true);
    retried
}

fn unplug_disk(vm: &mut Vm, qmp: &mut QmpClient) -> bool {
    let retried = delete(vm, qmp, "vd0", DISK_REMOVE_DONE);
    assert_disk(vm, false);
    retried
}

fn run(cell: &Cell<'_>, log: &std::path::Path) -> Outcome {
    // The VM's own directory goes with it; the log, beside it, stays for
    // the report of a failed cell.
    let dir = log.parent().expect("a scratch directory").join("vm");
    std::fs::create_dir_all(&dir).expect("the VM's directory");
    let log_arg = log.display().to_string();
    let mut vm = Vm::start_in(
        &binary("papervisor"),
        dir,
        &[
            "--smp",
            "cpus=1,maxcpus=2",
            "--memory",
            "size=512M,maxmem=2G,slots=2",
            "--log-file",
            &log_arg,
        ],
    );
    vm.boot();
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    if cell.operation.dimm() {
        let backend =
            json!({"qom-type": "memory-backend-memfd", "id": "mem0", "size": 512u64 << 20});
        assert_eq!(qmp.execute("object-add", backend), json!({"return": {}}));
    }
    if cell.operation.disk() {
        let image = log.with_file_name("disk0.raw");
        std::fs::File::create(&image)
            .and_then(|file| file.set_len(16 << 20))
            .expect("an image");
        let node = json!({"driver": "file", "node-name": "disk0", "filename": image});
        assert_eq!(qmp.execute("blockdev-add", node), json!({"return": {}}));
    }
    match cell.operation {
        Operation::Unplug => {
            plug(&mut vm, &mut qmp);
        }
        Operation::UnplugDimm => {
            plug_dimm(&mut vm, &mut qmp);
        }
        Operation::UnplugDisk => {
            plug_disk(&mut vm, &mut qmp);
        }
        Operation::Plug | Operation::PlugDimm | Operation::PlugDisk => {}
    }
    let mut fault = json!({"process": cell.process, "point": cell.point, "action": cell.action});
    if cell.request != "-" {
        fault["request"] = json!(cell.request);
    }
    let armed = qmp.execute("x-inject-fault", fault);
    assert_eq!(armed, json!({"return": {"armed": true}}));
    let started = Instant::now();
    let retried = match cell.operation {
        Operation::Plug => plug(&mut vm, &mut qmp),
        Operation::Unplug => unplug(&mut vm, &mut qmp),
        Operation::PlugDimm => plug_dimm(&mut vm, &mut qmp),
        Operation::UnplugDimm => unplug_dimm(&mut vm, &mut qmp),
        Operation::PlugDisk => plug_disk(&mut vm, &mut qmp),
        Operation::UnplugDisk => unplug_disk(&mut vm, &mut qmp),
    };
    let seconds = started.elapsed().as_secs_f64();
    await_all_running(&vm);
    let restarts = restarts(&vm);
    if cell.action == "delay" {
        assert_eq!(restarts, 0, "a delay restarted a process");
    } else {
        assert!(restarts >= 1, "the fault never fired (no restart)");
    }
    // Where the fault's holder lived on (a delay; the core's end of a
    // link), it says the fault fired; a process it ended took it along.
    let faults = qmp.execute("x-query-faults", json!({}));
    if cell.action == "delay" || cell.point.starts_with("core-") {
        assert_eq!(faults["return"]["faults"][0]["fired"], 1, "{faults}");
    }
    assert_eq!(
        qmp.execute("x-clear-faults", json!({})),
        json!({"return": {}})
    );
    // The guest is healthy and the platform consistent: the operation
    // that undoes this one works as usual.
    match cell.operation {
        Operation::Plug => unplug(&mut vm, &mut qmp),
        Operation::Unplug => plug(&mut vm, &mut qmp),
        Operation::PlugDimm => unplug_dimm(&mut vm, &mut qmp),
        Operation::UnplugDimm => plug_dimm(&mut vm, &mut qmp),
        Operation::PlugDisk => unplug_disk(&mut vm, &mut qmp),
        Operation::UnplugDisk => plug_disk(&mut vm, &mut qmp),
    };
    assert!(vm.console.command("time")[0].starts_with("time: 20"));
    assert_eq!(
        qmp.execute("query-status", json!({}))["return"]["status"],
        "running"
    );
    Outcome {
        seconds,
        restarts,
        retried,
    }
}

/// Runs one cell in a VM of its own: its table row, and whether it failed
/// (then the reason and the VM's last log lines go to stderr).
fn run_cell(cell: &Cell<'_>) -> (String, bool) {
    let log = scratch_dir().join("vm.log");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(cell, &log)));
    let row = format!(
        "| {} | {} | {} | {} | {} |",
        cell.process,
        cell.point,
        cell.request,
        cell.action,
        cell.operation.name()
    );
    match result {
        Ok(outcome) => (
            format!(
                "{row} ok | {:.2} s | {} | {} |",
                outcome.seconds,
                outcome.restarts,
                if outcome.retried { "retried" } else { "-" }
            ),
            false,
        ),
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
            eprintln!("{row}: {why}\nlast log lines:\n{tail}");
            (
                format!("{row} FAILED | {} |", why.lines().next().unwrap_or("")),
                true,
            )
        }
    }
}

/// Runs every cell of `process` for `operation`, prints its rows, and fails
/// with every failing cell named.
fn rows(process: &str, operation: Operation) {
    if papervisor_tests::skip_in_process(
        &format!("fault_matrix {process} {operation:?}"),
        "its faults crash, hang or kill device processes",
    ) {
        return;
    }
    let test = format!("fault matrix {process} {}", operation.name());
    if !root_and_kvm(&test) {
        return;
    }
    let cells: Vec<(&str, &str, &str)> = points(process)
        .iter()
        .flat_map(|point| {
            // The core's end sees only the core's requests.
            let (actions, requests): (&[&str], &[&str]) = if point.starts_with("core-") {
                (&CORE_ACTIONS, &["-"])
            } else {
                (&ACTIONS, requests(process, operation, point))
            };
            requests.iter().flat_map(move |request| {
                actions
                    .iter()
                    .map(move |action| (*point, *request, *action))
            })
        })
        .collect();
    let next = AtomicUsize::new(0);
    let rows = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..PARALLEL_CELLS {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, Ordering::SeqCst);
                let Some(&(point, request, action)) = cells.get(index) else {
                    return;
                };
                let cell = Cell {
                    process,
                    point,
                    action,
                    request,
                    operation,
                };
                let row = run_cell(&cell);
                rows.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((index, row));
            });
        }
    });
    let mut rows = rows.into_inner().unwrap_or_else(|p| p.into_inner());
    rows.sort_by_key(|(index, _)| *index);
    let mut failures = Vec::new();
    for (_, (row, failed)) in rows {
        println!("{row}");
        if failed {
            failures.push(row);
        }
    }
    assert!(
        failures.is_empty(),
        "failed cells:\n{}",
        failures.join("\n")
    );
}

#[test]
fn fault_matrix_hotplug_controller_plug() {
    rows("hotplug-controller", Operation::Plug);
}

#[test]
fn fault_matrix_hotplug_controller_unplug() {
    rows("hotplug-controller", Operation::Unplug);
}

#[test]
fn fault_matrix_rtas_server_plug() {
    rows("rtas-server", Operation::Plug);
}

#[test]
fn fault_matrix_rtas_server_unplug() {
    rows("rtas-server", Operation::Unplug);
}

#[test]
fn fault_matrix_event_log_plug() {
    rows("event-log", Operation::Plug);
}

#[test]
fn fault_matrix_event_log_unplug() {
    rows("event-log", Operation::Unplug);
}

#[test]
fn fault_matrix_hotplug_controller_dimm_plug() {
    rows("hotplug-controller", Operation::PlugDimm);
}

#[test]
fn fault_matrix_hotplug_controller_dimm_unplug() {
    rows("hotplug-controller", Operation::UnplugDimm);
}

#[test]
fn fault_matrix_rtas_server_dimm_plug() {
    rows("rtas-server", Operation::PlugDimm);
}

#[test]
fn fault_matrix_rtas_server_dimm_unplug() {
    rows("rtas-server", Operation::UnplugDimm);
}

#[test]
fn fault_matrix_event_log_dimm_plug() {
    rows("event-log", Operation::PlugDimm);
}

#[test]
fn fault_matrix_event_log_dimm_unplug() {
    rows("event-log", Operation::UnplugDimm);
}

#[test]
fn fault_matrix_hotplug_controller_disk_plug() {
    rows("hotplug-controller", Operation::PlugDisk);
}

#[test]
fn fault_matrix_hotplug_controller_disk_unplug() {
    rows("hotplug-controller", Operation::UnplugDisk);
}

#[test]
fn fault_matrix_rtas_server_disk_plug() {
    rows("rtas-server", Operation::PlugDisk);
}

#[test]
fn fault_matrix_rtas_server_disk_unplug() {
    rows("rtas-server", Operation::UnplugDisk);
}

#[test]
fn fault_matrix_event_log_disk_plug() {
    rows("event-log", Operation::PlugDisk);
}

#[test]
fn fault_matrix_event_log_disk_unplug() {
    rows("event-log", Operation::UnplugDisk);
}

/// A disk's block process killed (`crash`) or stopped (`hang`, found out
/// by the core's watch of its progress) while the guest keeps 16 requests
/// in flight: every request completes once, and the patterns are whole.
fn block_row(action: &str) {
    let test = format!("fault matrix block {action}");
    if papervisor_tests::skip_in_process(&test, "kills or stops the block process")
        || !root_and_kvm(&test)
    {
        return;
    }
    let row = format!("| block | - | - | {action} | disk I/O |");
    let log = scratch_dir().join("vm.log");
    let result = std::panic::catch_unwind(|| {
        let dir = log.parent().expect("a scratch directory").to_path_buf();
        let image = dir.join("disk0.raw");
        std::fs::File::create(&image)
            .and_then(|file| file.set_len(16 << 20))
            .expect("an image");
        let blockdev = format!("driver=file,node-name=disk0,filename={}", image.display());
        let log_arg = log.display().to_string();
        std::fs::create_dir_all(dir.join("vm")).expect("the VM's directory");
        let mut vm = Vm::start_in(
            &binary("papervisor"),
            dir.join("vm"),
            &[
                "--blockdev",
                &blockdev,
                "--device",
                "virtio-blk-pci,id=vd0,drive=disk0,addr=3",
                "--block-stall-timeout",
                "1000",
                "--log-file",
                &log_arg,
            ],
        );
        vm.boot();
        assert_eq!(
            vm.console.command("blk write 0 512 512 31"),
            ["blk write: 512 sectors"]
        );
        Stress::start(&mut vm.console, "0 0 64 3000 31 32");
        let started = Instant::now();
        let pid = vm.device_process("block")["pid"].as_u64().expect("a pid");
        let signal = match action {
            "crash" => nix::sys::signal::Signal::SIGKILL,
            _ => nix::sys::signal::Signal::SIGSTOP,
        };
        papervisor_tests::send_signal(pid, signal);
        let stress = Stress::report(&mut vm.console, GUEST_TIMEOUT);
        let seconds = started.elapsed().as_secs_f64();
        stress.assert_whole(3000, "blk stress");
        assert_eq!(
            vm.console.command("blk tagged 0 0 512 32"),
            ["blk tagged: 512 sectors, ok"]
        );
        assert_eq!(
            vm.console.command("blk check 0 512 512 31"),
            ["blk check: 512 sectors, ok"]
        );
        let restarts = vm.device_process("block")["restarts"].as_u64().unwrap_or(0);
        assert_eq!(restarts, 1);
        (seconds, restarts)
    });
    match result {
        Ok((seconds, restarts)) => println!("{row} ok | {seconds:.2} s | {restarts} | - |"),
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            println!("{row} FAILED | {} |", why.lines().next().unwrap_or(""));
            panic!("{row}: {why}");
        }
    }
}

#[test]
fn fault_matrix_block_process_killed_during_io() {
    block_row("crash");
}

#[test]
fn fault_matrix_block_process_hung_during_io() {
    block_row("hang");
}
