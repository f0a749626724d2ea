//! The hotplug controller keeps its state in a region the core holds: killed
//! (SIGKILL) in the middle of a plug or an unplug, its successor resumes it,
//! and the guest and QMP see each outcome exactly once. These need root (the
//! jail) and /dev/kvm; they say so when skipped.

use papervisor_tests::{binary, copy_binary, root_and_kvm, QmpClient, Vm};
use serde_json::json;
use std::time::Duration;

const CORE1: u32 = 0x1000_0001;
/// Long enough for a duplicate event to show up after the first.
const QUIET: Duration = Duration::from_secs(2);

/// A VM with core 1 plugged and the guest's hot-plug handling paused, so
/// that a request stays pending while the controller is killed.
fn vm_with_core1_and_dlpar_off() -> Vm {
    let mut vm = Vm::start(&["--smp", "cpus=1,maxcpus=2"]);
    vm.boot();
    vm.plug_core(1, "core1");
    assert_eq!(vm.console.command("dlpar off"), ["dlpar: off"]);
    vm
}

/// [`vm_with_core1_and_dlpar_off`], and core 1's unplug requested: it waits
/// for the guest. The QMP client sees the events that follow.
fn vm_with_core1_unplug_pending() -> (Vm, QmpClient) {
    let vm = vm_with_core1_and_dlpar_off();
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    assert_eq!(
        qmp.execute("device_del", json!({"id": "core1"})),
        json!({"return": {}})
    );
    (vm, qmp)
}

/// Turned back on, the guest handles the waiting remove event at once;
/// DEVICE_DELETED comes, once.
fn complete_the_pending_unplug(vm: &mut Vm, qmp: &mut QmpClient) {
    assert_eq!(
        vm.console.command("dlpar on"),
        ["dlpar: on", "dlpar: cpu remove 0x10000001: ok"]
    );
    assert_eq!(qmp.wait_event("DEVICE_DELETED")["data"]["device"], "core1");
    assert_eq!(count(&qmp.events_within(QUIET), "DEVICE_DELETED"), 0);
}

fn count(events: &[serde_json::Value], name: &str) -> usize {
    events.iter().filter(|e| e["event"] == name).count()
}

#[test]
fn a_controller_killed_with_an_unplug_pending_completes_it_once() {
    if papervisor_tests::skip_in_process(
        "a_controller_killed_with_an_unplug_pending_completes_it_once",
        "it SIGKILLs or upgrades a device process",
    ) {
        return;
    }
    if !root_and_kvm("a_controller_killed_with_an_unplug_pending_completes_it_once") {
        return;
    }
    let (mut vm, mut qmp) = vm_with_core1_unplug_pending();
    assert_eq!(vm.drc(CORE1)["unplug-requested"], true);
    vm.kill_and_await_restart("hotplug-controller");
    // The successor knows the unplug is pending: before, a fresh table said
    // "unplug-requested: false" while QMP still listed the core.
    let row = vm.drc(CORE1);
    assert_eq!(
        (&row["device"], &row["unplug-requested"], &row["state"]),
        (&json!("core1"), &json!(true), &json!("configured")),
        "{row}"
    );
    complete_the_pending_unplug(&mut vm, &mut qmp);
    assert_eq!(vm.console.command("cpus"), ["cpu 0 online"]);
    assert_eq!(vm.device_process("hotplug-controller")["restarts"], 1);
}

#[test]
fn a_controller_killed_after_the_guest_isolated_the_drc_releases_it_once() {
    if papervisor_tests::skip_in_process(
        "a_controller_killed_after_the_guest_isolated_the_drc_releases_it_once",
        "it SIGKILLs or upgrades a device process",
    ) {
        return;
    }
    if !root_and_kvm("a_controller_killed_after_the_guest_isolated_the_drc_releases_it_once") {
        return;
    }
    let (mut vm, mut qmp) = vm_with_core1_unplug_pending();
    // The guest's removal, by hand, up to the isolation (set-indicator
    // 0x201a, isolation-state 9001 = isolate).
    assert_eq!(vm.console.command("cpu offline 1"), ["cpu 1 offline"]);
    assert_eq!(
        vm.console
            .command("rtas-raw 0x2000000 0x201a 3 1 9001 0x10000001 0"),
        ["rtas-raw: status 0"]
    );
    vm.kill_and_await_restart("hotplug-controller");
    let row = vm.drc(CORE1);
    assert_eq!(
        (&row["state"], &row["unplug-requested"]),
        (&json!("available"), &json!(true)),
        "{row}"
    );
    // The rest of the removal, against the successor: allocation unusable.
    assert_eq!(
        vm.console
            .command("rtas-raw 0x2000000 0x201a 3 1 9003 0x10000001 0"),
        ["rtas-raw: status 0"]
    );
    assert_eq!(qmp.wait_event("DEVICE_DELETED")["data"]["device"], "core1");
    assert_eq!(count(&qmp.events_within(QUIET), "DEVICE_DELETED"), 0);
    let row = vm.drc(CORE1);
    assert_eq!(
        (&row["state"], &row["device"]),
        (&json!("unusable"), &json!(null))
    );
    // The slot is free: the core plugs again.
    assert_eq!(
        qmp.execute(
            "device_add",
            json!({"driver": "host-spapr-cpu-core", "core-id": 1, "id": "core1"})
        ),
        json!({"return": {}})
    );
}

#[test]
fn a_controller_killed_during_a_core_add_lets_the_guest_take_the_core() {
    if papervisor_tests::skip_in_process(
        "a_controller_killed_during_a_core_add_lets_the_guest_take_the_core",
        "it SIGKILLs or upgrades a device process",
    ) {
        return;
    }
    if !root_and_kvm("a_controller_killed_during_a_core_add_lets_the_guest_take_the_core") {
        return;
    }
    let mut vm = Vm::start(&["--smp", "cpus=1,maxcpus=2"]);
    vm.boot();
    assert_eq!(vm.console.command("dlpar off"), ["dlpar: off"]);
    let replies =
        vm.qmp(&[r#"device_add={"driver": "host-spapr-cpu-core", "core-id": 1, "id": "core1"}"#]);
    assert_eq!(replies[0], json!({"return": {}}));
    vm.kill_and_await_restart("hotplug-controller");
    let row = vm.drc(CORE1);
    assert_eq!(
        (&row["device"], &row["state"]),
        (&json!("core1"), &json!("unusable")),
        "{row}"
    );
    // The add event waited for the guest: it acquires the core from the
    // successor (before, it failed to, and the DRC was stuck until a reset).
    assert_eq!(
        vm.console.command("dlpar on"),
        [
            "dlpar: on",
            "dlpar: cpu add 0x10000001: ok, cpus 1 (1 online)"
        ]
    );
    assert_eq!(vm.console.command("cpus"), ["cpu 0 online", "cpu 1 online"]);
    assert_eq!(vm.drc(CORE1)["state"], "configured");
    let replies = vm.qmp(&[r#"device_del={"id": "core1"}"#, "wait-event:DEVICE_DELETED"]);
    assert_eq!(replies[0], json!({"return": {}}));
}

#[test]
fn an_event_log_killed_with_events_queued_loses_none_and_repeats_none() {
    if papervisor_tests::skip_in_process(
        "an_event_log_killed_with_events_queued_loses_none_and_repeats_none",
        "it SIGKILLs or upgrades a device process",
    ) {
        return;
    }
    if !root_and_kvm("an_event_log_killed_with_events_queued_loses_none_and_repeats_none") {
        return;
    }
    let mut vm = Vm::start(&["--smp", "cpus=1,maxcpus=3"]);
    vm.boot();
    assert_eq!(vm.console.command("dlpar off"), ["dlpar: off"]);
    let replies = vm.qmp(&[
        r#"device_add={"driver": "host-spapr-cpu-core", "core-id": 1, "id": "core1"}"#,
        r#"device_add={"driver": "host-spapr-cpu-core", "core-id": 2, "id": "core2"}"#,
        "x-query-event-log",
    ]);
    assert_eq!(replies[0], json!({"return": {}}));
    assert_eq!(replies[1], json!({"return": {}}));
    let queued = replies[2]["return"].clone();
    assert_eq!(queued.as_array().map(Vec::len), Some(2), "{queued}");
    vm.kill_and_await_restart("event-log");
    assert_eq!(vm.qmp(&["x-query-event-log"])[0]["return"], queued);
    // The guest fetches both, each once, from the successor.
    assert_eq!(
        vm.console.command("dlpar on"),
        [
            "dlpar: on",
            "dlpar: cpu add 0x10000001: ok, cpus 1 (1 online)",
            "dlpar: cpu add 0x10000002: ok, cpus 2 (1 online)"
        ]
    );
    assert_eq!(
        vm.console.command("events"),
        [
            "event 1: add cpu index 0x10000001",
            "event 2: add cpu index 0x10000002"
        ]
    );
    assert_eq!(vm.qmp(&["x-query-event-log"])[0]["return"], json!([]));
}

#[test]
fn an_upgrade_to_the_same_binary_keeps_a_pending_unplug() {
    if papervisor_tests::skip_in_process(
        "an_upgrade_to_the_same_binary_keeps_a_pending_unplug",
        "it SIGKILLs or upgrades a device process",
    ) {
        return;
    }
    if !root_and_kvm("an_upgrade_to_the_same_binary_keeps_a_pending_unplug") {
        return;
    }
    let (mut vm, mut qmp) = vm_with_core1_unplug_pending();
    let before = vm.device_processes();
    // Every process, one after the other, replaced by the same binary.
    for (kind, binary_name) in [
        ("hotplug-controller", "papervisor-hotplug"),
        ("event-log", "papervisor-eventlog"),
        ("rtas-server", "papervisor-rtas"),
    ] {
        let path = binary(binary_name).display().to_string();
        let reply = qmp.execute(
            "x-upgrade-device-process",
            json!({"process": kind, "path": path}),
        );
        let pid = reply["return"]["pid"]
            .as_u64()
            .unwrap_or_else(|| panic!("{reply}"));
        let old = before.iter().find(|p| p["kind"] == kind).unwrap();
        assert_ne!(old["pid"], pid);
        let now = vm.device_process(kind);
        assert_eq!(
            (&now["pid"], &now["restarts"]),
            (&json!(pid), &json!(0)),
            "{now}"
        );
        assert_eq!(
            qmp.wait_event("X_DEVICE_PROCESS_UPGRADED")["data"]["pid"],
            pid
        );
    }
    let row = vm.drc(CORE1);
    assert_eq!(
        (&row["device"], &row["unplug-requested"]),
        (&json!("core1"), &json!(true)),
        "{row}"
    );
    // The new processes, linked to each other, complete it.
    complete_the_pending_unplug(&mut vm, &mut qmp);
    // Nothing exited: an upgrade is not a restart.
    assert_eq!(
        count(
            &qmp.events_within(Duration::ZERO),
            "X_DEVICE_PROCESS_EXITED"
        ),
        0
    );
    for process in vm.device_processes() {
        assert_eq!(
            (&process["state"], &process["restarts"]),
            (&json!("running"), &json!(0))
        );
    }
}

#[test]
fn an_upgrade_the_new_binary_cannot_serve_is_refused_and_the_old_one_serves_on() {
    if papervisor_tests::skip_in_process(
        "an_upgrade_the_new_binary_cannot_serve_is_refused_and_the_old_one_serves_on",
        "it SIGKILLs or upgrades a device process",
    ) {
        return;
    }
    if !root_and_kvm("an_upgrade_the_new_binary_cannot_serve_is_refused_and_the_old_one_serves_on")
    {
        return;
    }
    let mut vm = Vm::start(&["--smp", "cpus=1,maxcpus=2"]);
    vm.boot();
    let before = vm.device_process("hotplug-controller");
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    // Another kind's binary: it fails the handshake of the controller's links.
    let wrong = binary("papervisor-eventlog").display().to_string();
    let reply = qmp.execute(
        "x-upgrade-device-process",
        json!({"process": "hotplug-controller", "path": wrong}),
    );
    let desc = reply["error"]["desc"].as_str().unwrap_or_default();
    assert!(desc.contains("keeps serving"), "{reply}");
    for path in ["papervisor-hotplug", "/nonexistent/papervisor-hotplug"] {
        let reply = qmp.execute(
            "x-upgrade-device-process",
            json!({"process": "hotplug-controller", "path": path}),
        );
        let desc = reply["error"]["desc"].as_str().unwrap_or_default();
        assert!(desc.contains("absolute path of an executable"), "{reply}");
    }
    let after = vm.device_process("hotplug-controller");
    assert_eq!(
        (&after["pid"], &after["restarts"]),
        (&before["pid"], &json!(0))
    );
    // The old controller, and its links to its peers, serve on.
    vm.plug_core(1, "core1");
    let replies = vm.qmp(&[r#"device_del={"id": "core1"}"#, "wait-event:DEVICE_DELETED"]);
    assert_eq!(replies[0], json!({"return": {}}));
}

#[test]
fn a_damaged_state_region_is_refused_and_the_controller_ends_failed() {
    if papervisor_tests::skip_in_process(
        "a_damaged_state_region_is_refused_and_the_controller_ends_failed",
        "it SIGKILLs or upgrades a device process",
    ) {
        return;
    }
    if !root_and_kvm("a_damaged_state_region_is_refused_and_the_controller_ends_failed") {
        return;
    }
    let mut vm = Vm::start(&["--smp", "cpus=1,maxcpus=2"]);
    vm.boot();
    vm.plug_core(1, "core1");
    // The region the core keeps, damaged from outside (as a bit flip, or a
    // compromised controller scribbling over its own records, would).
    let region = std::fs::read_dir(format!("/proc/{}/fd", vm.pid()))
        .expect("the core's descriptors")
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            std::fs::read_link(path).is_ok_and(|target| {
                target
                    .to_string_lossy()
                    .contains("papervisor-hotplug-state")
            })
        })
        .expect("the controller's state region");
    let mut bytes = std::fs::read(&region).expect("read the region");
    // Every byte after the header page: the journal and every record.
    for byte in &mut bytes[4096..] {
        *byte ^= 0x5a;
    }
    std::os::unix::fs::FileExt::write_all_at(
        &std::fs::OpenOptions::new()
            .write(true)
            .open(&region)
            .expect("open the region"),
        &bytes,
        0,
    )
    .expect("write the region");
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    let pid = vm.device_process("hotplug-controller")["pid"]
        .as_u64()
        .unwrap();
    papervisor_tests::send_signal(pid, nix::sys::signal::Signal::SIGKILL);
    // Every successor refuses the region (it never guesses), until the
    // supervisor gives up; the VM runs on, and QMP says why hotplug fails.
    loop {
        let exited = qmp.wait_event("X_DEVICE_PROCESS_EXITED");
        if exited["data"]["action"] == "failed" {
            break;
        }
    }
    let process = vm.device_process("hotplug-controller");
    assert_eq!(process["state"], "failed", "{process}");
    let last_exit = process["last-exit"].as_str().unwrap_or_default();
    assert!(last_exit.contains("fails its checksum"), "{process}");
    let reply = qmp.execute("device_del", json!({"id": "core1"}));
    let desc = reply["error"]["desc"].as_str().unwrap_or_default();
    assert!(desc.contains("hotplug-controller has failed"), "{reply}");
    assert!(vm.console.command("time")[0].starts_with("time: 20"));
}

#[test]
fn a_controller_killed_in_a_dimm_unplug_after_some_lmbs_went_completes_it_once() {
    if papervisor_tests::skip_in_process(
        "a_controller_killed_in_a_dimm_unplug_after_some_lmbs_went_completes_it_once",
        "it SIGKILLs or upgrades a device process",
    ) {
        return;
    }
    if !root_and_kvm("a_controller_killed_in_a_dimm_unplug_after_some_lmbs_went_completes_it_once")
    {
        return;
    }
    let mut vm = Vm::start(&["--memory", "size=512M,maxmem=2G,slots=2"]);
    vm.boot();
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    let backend = json!({"qom-type": "memory-backend-memfd", "id": "mem0", "size": 512u64 << 20});
    assert_eq!(qmp.execute("object-add", backend), json!({"return": {}}));
    let plug = json!({"driver": "pc-dimm", "id": "dimm0", "memdev": "mem0"});
    assert_eq!(qmp.execute("device_add", plug), json!({"return": {}}));
    vm.console.expect_async(
        "dlpar: memory add count 2 from 0x80000004: ok",
        Duration::from_secs(30),
    );
    assert_eq!(vm.console.command("dlpar off"), ["dlpar: off"]);
    assert_eq!(
        qmp.execute("device_del", json!({"id": "dimm0"})),
        json!({"return": {}})
    );
    // The guest's release of the first LMB, by hand: isolate, unusable.
    let release = |vm: &mut Vm, lmb: &str| {
        for (indicator, value) in [(9001, 0), (9003, 0)] {
            let call = format!("rtas-raw 0x2000000 0x201a 3 1 {indicator} {lmb} {value}");
            assert_eq!(vm.console.command(&call), ["rtas-raw: status 0"], "{call}");
        }
    };
    release(&mut vm, "0x80000004");
    vm.kill_and_await_restart("hotplug-controller");
    // Given back, and still the DIMM's until the DIMM goes as a whole.
    let first = vm.drc(0x8000_0004);
    assert_eq!(
        (
            &first["state"],
            &first["device"],
            &first["unplug-requested"]
        ),
        (&json!("unusable"), &json!("dimm0"), &json!(true)),
        "{first}"
    );
    let second = vm.drc(0x8000_0005);
    assert_eq!(
        (&second["device"], &second["unplug-requested"]),
        (&json!("dimm0"), &json!(true)),
        "{second}"
    );
    // The rest of the release, against the successor: the DIMM goes, once.
    release(&mut vm, "0x80000005");
    assert_eq!(qmp.wait_event("DEVICE_DELETED")["data"]["device"], "dimm0");
    assert_eq!(count(&qmp.events_within(QUIET), "DEVICE_DELETED"), 0);
    assert_eq!(
        qmp.execute("query-memory-devices", json!({}))["return"],
        json!([])
    );
    for lmb in [0x8000_0004, 0x8000_0005] {
        assert_eq!(vm.drc(lmb)["device"], json!(null));
    }
}

/// The jails' directories of a VM (`<run dir>/jails/<binary>/<id>`).
fn jail_dirs(vm: &Vm) -> Vec<std::path::PathBuf> {
    let jails = std::path::Path::new("/run/papervisor")
        .join(format!("vm-{}", vm.pid()))
        .join("jails");
    let mut dirs = Vec::new();
    for program in std::fs::read_dir(&jails)
        .expect("the jails' directory")
        .flatten()
    {
        for jail in std::fs::read_dir(program.path())
            .expect("a program's jails")
            .flatten()
        {
            dirs.push(jail.path());
        }
    }
    dirs
}

/// No jail is left behind: one per jailed process of the VM (its device
/// processes and the standbys that wait to be the next of their kind;
/// the reaper has none). Standbys come and go, so this waits for the two
/// to agree (a moment after a change).
fn assert_a_jail_per_process(vm: &Vm) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let dirs = jail_dirs(vm);
        let jailed: Vec<(u32, String)> = vm
            .children()
            .into_iter()
            .filter(|(_, name)| !papervisor_tests::is_reaper(name))
            .collect();
        if dirs.len() == jailed.len() && jailed.len() >= 3 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "jails {dirs:?} for processes {jailed:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn upgrade(qmp: &mut QmpClient, kind: &str, path: &std::path::Path) -> serde_json::Value {
    qmp.execute(
        "x-upgrade-device-process",
        json!({"process": kind, "path": path.display().to_string()}),
    )
}

#[test]
fn a_restart_runs_the_binary_last_upgraded_to_and_no_jail_is_left_behind() {
    if papervisor_tests::skip_in_process(
        "a_restart_runs_the_binary_last_upgraded_to_and_no_jail_is_left_behind",
        "it SIGKILLs or upgrades a device process",
    ) {
        return;
    }
    if !root_and_kvm("a_restart_runs_the_binary_last_upgraded_to_and_no_jail_is_left_behind") {
        return;
    }
    let mut vm = Vm::start(&["--smp", "cpus=1,maxcpus=2"]);
    vm.boot();
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    assert_a_jail_per_process(&vm);
    let original = vm.device_process("rtas-server")["binary"].clone();
    assert_eq!(
        original,
        json!(binary("papervisor-rtas").display().to_string())
    );
    let dir = papervisor_tests::scratch_dir();
    let next = copy_binary("papervisor-rtas", &dir, "papervisor-rtas-next");
    let reply = upgrade(&mut qmp, "rtas-server", &next);
    let pid = reply["return"]["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("{reply}"));
    let shown = vm.device_process("rtas-server");
    assert_eq!(
        shown["binary"],
        json!(next.display().to_string()),
        "{shown}"
    );
    // Its successor after a SIGKILL runs the same binary, and says so.
    vm.kill_and_await_restart("rtas-server");
    let successor = vm.device_process("rtas-server");
    assert_ne!(successor["pid"], pid);
    assert_eq!(successor["binary"], json!(next.display().to_string()));
    let exe = std::fs::read_link(format!("/proc/{}/exe", successor["pid"])).unwrap();
    assert_eq!(exe, next);
    assert!(vm.console.command("time")[0].starts_with("time: "));
    // Upgrades refused at the handshake leave no jail either.
    let wrong = copy_binary("papervisor-eventlog", &dir, "papervisor-wrong");
    for _ in 0..3 {
        let reply = upgrade(&mut qmp, "rtas-server", &wrong);
        assert!(
            reply["error"]["desc"]
                .as_str()
                .unwrap_or_default()
                .contains("keeps serving"),
            "{reply}"
        );
    }
    // Every replaced, killed and refused process's jail went: one per process.
    assert_a_jail_per_process(&vm);
    let _ = std::fs::remove_dir_all(dir);
}

/// Another local user who can replace a device binary would run code with
/// the VM's guest RAM mapped: such a binary is refused.
#[test]
fn an_upgrade_to_a_binary_other_users_control_is_refused() {
    if papervisor_tests::skip_in_process(
        "an_upgrade_to_a_binary_other_users_control_is_refused",
        "it SIGKILLs or upgrades a device process",
    ) {
        return;
    }
    if !root_and_kvm("an_upgrade_to_a_binary_other_users_control_is_refused") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let mut vm = Vm::start(&["--smp", "cpus=1,maxcpus=2"]);
    vm.boot();
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    let before = vm.device_process("rtas-server");
    let dir = papervisor_tests::scratch_dir();
    let copy = copy_binary("papervisor-rtas", &dir, "papervisor-rtas");
    let mode = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    let refusal = |qmp: &mut QmpClient| {
        let reply = upgrade(qmp, "rtas-server", &copy);
        reply["error"]["desc"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    std::os::unix::fs::chown(&copy, Some(4242), None).unwrap();
    assert!(refusal(&mut qmp).contains("owned by uid 4242"));
    std::os::unix::fs::chown(&copy, Some(0), None).unwrap();
    mode(&copy, 0o777);
    assert!(refusal(&mut qmp).contains("writable by anyone"));
    mode(&copy, 0o755);
    mode(&dir, 0o777);
    assert!(refusal(&mut qmp).contains("writable by anyone"));
    let after = vm.device_process("rtas-server");
    assert_eq!(
        (&after["pid"], &after["binary"]),
        (&before["pid"], &before["binary"])
    );
    assert_a_jail_per_process(&vm);
    // Made safe, the same copy is accepted.
    mode(&dir, 0o755);
    let reply = upgrade(&mut qmp, "rtas-server", &copy);
    assert!(reply["return"]["pid"].is_u64(), "{reply}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A state region that fails to record a transition ends the device that
/// made it, and nothing else: with the devices as threads of the core the
/// VM runs on and the supervisor restarts the thread; as processes, the
/// process. The successor resumes from the region, so the request whose
/// transition was lost is carried out once, by it.
#[test]
fn a_device_whose_state_region_fails_ends_alone_and_is_restarted() {
    if !root_and_kvm("a_device_whose_state_region_fails_ends_alone_and_is_restarted") {
        return;
    }
    let mut vm = Vm::start(&["--smp", "cpus=1,maxcpus=3"]);
    vm.boot();
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    let core = vm.pid();
    for (kind, core_id) in [("hotplug-controller", 1), ("event-log", 2)] {
        let before = vm.device_process(kind);
        let injected = qmp.execute(
            "x-inject-fault",
            json!({"process": kind, "fault": "lose-state"}),
        );
        assert_eq!(injected["return"]["survived"], true, "{injected}");
        // The plug's transitions: the controller's, then the event log's.
        let id = format!("core{core_id}");
        let add = qmp.execute(
            "device_add",
            json!({"driver": "host-spapr-cpu-core", "core-id": core_id, "id": id}),
        );
        assert_eq!(add, json!({"return": {}}), "{kind}");
        let exited = qmp.wait_event("X_DEVICE_PROCESS_EXITED");
        assert_eq!(exited["data"]["process"], kind, "{exited}");
        assert_eq!(exited["data"]["action"], "restart", "{exited}");
        let restarted = qmp.wait_event("X_DEVICE_PROCESS_RESTARTED");
        assert_eq!(restarted["data"]["process"], kind, "{restarted}");
        let after = vm.device_process(kind);
        assert_eq!(after["state"], "running", "{after}");
        assert_eq!(after["restarts"], 1, "{after}");
        let why = after["last-exit"].as_str().unwrap_or_default();
        if papervisor_tests::in_process() {
            assert!(
                why.contains("the state region cannot record a transition"),
                "{after}"
            );
        } else {
            // It exits with status 1; the core, which saw it hang up, may
            // cut it off (SIGKILL) before it is gone.
            assert!(
                ["exited with status 1", "killed by SIGKILL"].contains(&why),
                "{after}"
            );
            assert_ne!(after["pid"], before["pid"]);
        }
        // The guest took the core, once, and runs on; so does the core.
        vm.console.expect_async(
            &format!("dlpar: cpu add {:#010x}: ok", CORE1 - 1 + core_id),
            Duration::from_secs(60),
        );
        assert_eq!(vm.pid(), core);
        assert!(vm.console.command("time")[0].starts_with("time: "));
    }
    assert_eq!(
        vm.console.command("cpus"),
        ["cpu 0 online", "cpu 1 online", "cpu 2 online"]
    );
    // Nothing else restarted.
    assert_eq!(vm.device_process("rtas-server")["restarts"], 0);
}
