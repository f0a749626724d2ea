//! The fault matrix: every fault point of every device process (and the
//! core's end of its links) × every action, against a CPU-core plug and
//! unplug and a DIMM plug and unplug, each cell in a VM of its own with the guest running.
//! Each cell asserts: the operation completes (or fails with a clear error
//! that a retry fixes); the DRC table and the guest agree; DEVICE_DELETED
//! comes exactly once; the fault really fired (a restart, unless it was a
//! delay); the guest stays healthy (a normal hotplug cycle afterwards); the
//! core is still serving. `scripts/fault-matrix` prints the table. Needs
//! root, /dev/kvm and the fault-injection build; says so when skipped.

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
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Operation::Plug => "plug",
            Operation::Unplug => "unplug",
            Operation::PlugDimm => "DIMM plug",
            Operation::UnplugDimm => "DIMM unplug",
        }
    }

    fn plugs(self) -> bool {
        matches!(self, Operation::Plug | Operation::PlugDimm)
    }

    fn dimm(self) -> bool {
        matches!(self, Operation::PlugDimm | Operation::UnplugDimm)
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

fn assert_plugged(vm: &mut Vm) {
    let row = vm.drc(CORE1);
    assert_eq!(
        (&row["state"], &row["device"], &row["unplug-requested"]),
        (&json!("configured"), &json!("core1"), &json!(false)),
        "{row}"
    );
    assert_eq!(vm.console.command("cpus"), ["cpu 0 online", "cpu 1 online"]);
}

fn assert_unplugged(vm: &mut Vm) {
    let row = vm.drc(CORE1);
    assert_eq!(
        (&row["state"], &row["device"], &row["unplug-requested"]),
        (&json!("unusable"), &json!(null), &json!(false)),
        "{row}"
    );
    assert_eq!(vm.console.command("cpus"), ["cpu 0 online"]);
}

fn plug(vm: &mut Vm, qmp: &mut QmpClient) -> bool {
    let retried = execute_with_retry(qmp, "device_add", plug_request());
    vm.console.expect_async(ADD_DONE, GUEST_TIMEOUT);
    assert_plugged(vm);
    retried
}

const DIMM_ADD_DONE: &str = "dlpar: memory add count 2 from 0x80000004: ok";
const DIMM_REMOVE_DONE: &str = "dlpar: memory remove count 2 from 0x80000004: ok";

/// The DIMM's two LMB DRCs, as QMP and the guest see them.
fn assert_dimm(vm: &mut Vm, plugged: bool) {
    for drc in [0x8000_0004u32, 0x8000_0005] {
        let row = vm.drc(drc);
        let expected = match plugged {
            true => (json!("configured"), json!("dimm0")),
            false => (json!("unusable"), json!(null)),
        };
        assert_eq!(
            (row["state"].clone(), row["device"].clone()),
            expected,
            "{row}"
        );
        assert_eq!(row["unplug-requested"], false, "{row}");
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
    let retried = execute_with_retry(qmp, "device_add", request);
    vm.console.expect_async(DIMM_ADD_DONE, GUEST_TIMEOUT);
    assert_dimm(vm, true);
    retried
}

fn unplug_dimm(vm: &mut Vm, qmp: &mut QmpClient) -> bool {
    let retried = execute_with_retry(qmp, "device_del", json!({"id": "dimm0"}));
    assert_eq!(qmp.wait_event("DEVICE_DELETED")["data"]["device"], "dimm0");
    let later = qmp.events_within(QUIET);
    assert!(
        !later.iter().any(|e| e["event"] == "DEVICE_DELETED"),
        "a second DEVICE_DELETED: {later:?}"
    );
    vm.console.expect_async(DIMM_REMOVE_DONE, GUEST_TIMEOUT);
    assert_dimm(vm, false);
    retried
}

fn unplug(vm: &mut Vm, qmp: &mut QmpClient) -> bool {
    let retried = execute_with_retry(qmp, "device_del", json!({"id": "core1"}));
    assert_eq!(qmp.wait_event("DEVICE_DELETED")["data"]["device"], "core1");
    let later = qmp.events_within(QUIET);
    assert!(
        !later.iter().any(|e| e["event"] == "DEVICE_DELETED"),
        "a second DEVICE_DELETED: {later:?}"
    );
    vm.console.expect_async(REMOVE_DONE, GUEST_TIMEOUT);
    assert_unplugged(vm);
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
    match cell.operation {
        Operation::Unplug => {
            plug(&mut vm, &mut qmp);
        }
        Operation::UnplugDimm => {
            plug_dimm(&mut vm, &mut qmp);
        }
        Operation::Plug | Operation::PlugDimm => {}
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
    };
    let seconds = started.elapsed().as_secs_f64();
    await_all_running(&vm);
    let restarts = restarts(&vm);
    if cell.action == "delay" {
        assert_eq!(restarts, 0, "a delay restarted a process");
    } else {
        assert!(restarts >= 1, "the fault never fired (no restart)");
    }
    // The guest is healthy and the platform consistent: the operation
    // that undoes this one works as usual.
    match cell.operation {
        Operation::Plug => unplug(&mut vm, &mut qmp),
        Operation::Unplug => plug(&mut vm, &mut qmp),
        Operation::PlugDimm => unplug_dimm(&mut vm, &mut qmp),
        Operation::UnplugDimm => plug_dimm(&mut vm, &mut qmp),
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
