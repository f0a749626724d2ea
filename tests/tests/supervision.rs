//! The supervisor blames the process that is really at fault, holds
//! processes only through pidfds, and fault injection exists only in builds
//! that ask for it. These need root (the jail) and /dev/kvm; they say so
//! when skipped.

use papervisor_tests::{plain_binary, root_and_kvm, send_signal, Vm};
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn a_hung_event_log_is_blamed_not_the_controller_that_waited_for_it() {
    if papervisor_tests::skip_in_process(
        "a_hung_event_log_is_blamed_not_the_controller_that_waited_for_it",
        "it kills, stops or hangs a device process",
    ) {
        return;
    }
    if !root_and_kvm("a_hung_event_log_is_blamed_not_the_controller_that_waited_for_it") {
        return;
    }
    let mut vm = Vm::start(&["--smp", "cpus=1,maxcpus=2"]);
    vm.boot();
    let hung = vm.device_process("event-log")["pid"].as_u64().unwrap();
    send_signal(hung, nix::sys::signal::Signal::SIGSTOP);
    // The controller must forward the add event to the stopped event log.
    let replies = vm.qmp(&[
        r#"device_add={"driver": "host-spapr-cpu-core", "core-id": 1, "id": "core1"}"#,
        "wait-event:X_DEVICE_PROCESS_EXITED",
        "wait-event:X_DEVICE_PROCESS_RESTARTED",
    ]);
    assert_eq!(replies[0], json!({"return": {}}));
    let exited = &replies[1]["data"];
    assert_eq!(exited["process"], "event-log", "{exited}");
    assert_eq!(exited["pid"], hung);
    assert_eq!(exited["reason"], "killed by SIGKILL");
    assert_eq!(replies[2]["data"]["process"], "event-log");
    for kind in ["hotplug-controller", "rtas-server"] {
        let process = vm.device_process(kind);
        assert_eq!(process["state"], "running", "{process}");
        assert_eq!(process["restarts"], 0, "{process}");
    }
    let eventlog = vm.device_process("event-log");
    assert_eq!(eventlog["state"], "running");
    assert_eq!(eventlog["restarts"], 1);
    assert_ne!(eventlog["pid"], hung);
    // The add event the stopped log never took reaches its successor, and
    // the guest takes the core.
    let line = vm
        .console
        .expect_async("dlpar: cpu add 0x10000001: ", Duration::from_secs(60));
    assert_eq!(line, "dlpar: cpu add 0x10000001: ok, cpus 1 (1 online)");
    assert_eq!(vm.console.command("cpus"), ["cpu 0 online", "cpu 1 online"]);
}

/// Starts `sleep` as pid `target` (pids are handed out in order after
/// ns_last_pid), retrying while other processes take it first.
fn process_with_pid(target: u64) -> Option<std::process::Child> {
    for _ in 0..50 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (target - 1).to_string()).ok()?;
        let mut child = Command::new("sleep")
            .arg("60")
            .stdin(Stdio::null())
            .spawn()
            .expect("run sleep");
        if u64::from(child.id()) == target {
            return Some(child);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    None
}

#[test]
fn a_failed_processs_pid_reused_by_another_process_is_never_signalled() {
    if papervisor_tests::skip_in_process(
        "a_failed_processs_pid_reused_by_another_process_is_never_signalled",
        "it kills, stops or hangs a device process",
    ) {
        return;
    }
    if !root_and_kvm("a_failed_processs_pid_reused_by_another_process_is_never_signalled") {
        return;
    }
    let mut vm = Vm::start(&["--smp", "cpus=1,maxcpus=2"]);
    vm.boot();
    assert_eq!(vm.make_fail("event-log")["action"], "failed");
    let gone = vm.device_process("event-log")["pid"].as_u64().unwrap();
    assert!(!std::path::Path::new(&format!("/proc/{gone}")).exists());
    // An unrelated process now has the failed process's pid.
    let mut bystander = process_with_pid(gone).expect("could not start a process with the old pid");
    assert_eq!(
        vm.qmp(&["quit"])[0],
        json!({"return": {}}),
        "quit was refused"
    );
    assert!(vm.wait_exit(Duration::from_secs(30)).success());
    std::thread::sleep(Duration::from_millis(200));
    let alive = bystander.try_wait().unwrap().is_none();
    let _ = bystander.kill();
    let _ = bystander.wait();
    assert!(
        alive,
        "the core signalled pid {gone}, which is no longer its process"
    );
}

#[test]
fn only_the_fault_injection_build_accepts_x_inject_fault() {
    if !root_and_kvm("only_the_fault_injection_build_accepts_x_inject_fault") {
        return;
    }
    let inject = r#"x-inject-fault={"process": "event-log", "fault": "open-host-file"}"#;
    let mut plain = Vm::start_program(&plain_binary("papervisor"), &[]);
    plain.boot();
    let replies = plain.qmp(&[inject, "x-query-device-processes"]);
    assert_eq!(
        replies[0]["error"]["class"], "GenericError",
        "{}",
        replies[0]
    );
    assert!(
        replies[0]["error"]["desc"]
            .as_str()
            .unwrap()
            .contains("no fault injection"),
        "{}",
        replies[0]
    );
    // Nothing was committed: every process still runs as started.
    for process in replies[1]["return"].as_array().unwrap() {
        assert_eq!(process["restarts"], 0, "{process}");
    }
    drop(plain);

    let mut built = Vm::start(&[]);
    built.boot();
    if papervisor_tests::in_process() {
        // The forbidden call would kill the core with its device threads.
        let replies = built.qmp(&[inject]);
        let desc = replies[0]["error"]["desc"].as_str().unwrap_or_default();
        assert!(
            desc.contains("would end or hang the core"),
            "{}",
            replies[0]
        );
        return;
    }
    let replies = built.qmp(&[inject, "wait-event:X_DEVICE_PROCESS_EXITED"]);
    assert_eq!(replies[0]["return"]["survived"], false, "{}", replies[0]);
    assert_eq!(replies[1]["data"]["reason"], "killed by SIGSYS");
}

#[test]
fn sigstop_then_sigcont_restarts_nothing() {
    if papervisor_tests::skip_in_process(
        "sigstop_then_sigcont_restarts_nothing",
        "it kills, stops or hangs a device process",
    ) {
        return;
    }
    if !root_and_kvm("sigstop_then_sigcont_restarts_nothing") {
        return;
    }
    let mut vm = Vm::start(&["--smp", "cpus=1,maxcpus=2"]);
    vm.boot();
    let pids = vm.device_pids();
    // Each device process, and the core itself, stopped and continued (as a
    // debugger, strace or a cgroup freeze would).
    for pid in pids.iter().copied().chain([u64::from(vm.pid())]) {
        send_signal(pid, nix::sys::signal::Signal::SIGSTOP);
        std::thread::sleep(Duration::from_millis(300));
        send_signal(pid, nix::sys::signal::Signal::SIGCONT);
        std::thread::sleep(Duration::from_millis(300));
    }
    for process in vm.device_processes() {
        assert_eq!(process["state"], "running", "{process}");
        assert_eq!(process["restarts"], 0, "{process}");
    }
    assert!(vm.console.command("time")[0].starts_with("time: 20"));
    vm.plug_core(1, "core1");
}

#[test]
fn the_rtas_server_killed_while_a_cpu_goes_offline_is_only_a_slower_call() {
    if papervisor_tests::skip_in_process(
        "the_rtas_server_killed_while_a_cpu_goes_offline_is_only_a_slower_call",
        "it kills, stops or hangs a device process",
    ) {
        return;
    }
    if !root_and_kvm("the_rtas_server_killed_while_a_cpu_goes_offline_is_only_a_slower_call") {
        return;
    }
    let mut vm = Vm::start(&["--smp", "cpus=2"]);
    vm.boot();
    let rtas = vm.device_process("rtas-server")["pid"].as_u64().unwrap();
    // set-xive and stop-self reach a dead server: they wait for its successor.
    send_signal(rtas, nix::sys::signal::Signal::SIGKILL);
    assert_eq!(vm.console.command("cpu offline 1"), ["cpu 1 offline"]);
    assert_eq!(
        vm.console.command("cpus"),
        ["cpu 0 online", "cpu 1 offline"]
    );
    let server = vm.device_process("rtas-server");
    assert_eq!(server["state"], "running");
    assert_eq!(server["restarts"], 1);
    assert_eq!(vm.console.command("cpu online 1"), ["cpu 1 online"]);
}

#[test]
fn a_stopped_rtas_server_is_cut_off_and_the_cpu_still_goes_offline() {
    if papervisor_tests::skip_in_process(
        "a_stopped_rtas_server_is_cut_off_and_the_cpu_still_goes_offline",
        "it kills, stops or hangs a device process",
    ) {
        return;
    }
    if !root_and_kvm("a_stopped_rtas_server_is_cut_off_and_the_cpu_still_goes_offline") {
        return;
    }
    let mut vm = Vm::start(&["--smp", "cpus=2"]);
    vm.boot();
    let rtas = vm.device_process("rtas-server")["pid"].as_u64().unwrap();
    // A server that never answers (SIGSTOP: a debugger, a freeze) is a
    // silent one: the call times out, the server is replaced, and the
    // guest's call is answered by the successor.
    send_signal(rtas, nix::sys::signal::Signal::SIGSTOP);
    assert_eq!(vm.console.command("cpu offline 1"), ["cpu 1 offline"]);
    let server = vm.device_process("rtas-server");
    assert_ne!(server["pid"], rtas);
    assert_eq!(server["state"], "running");
    assert_eq!(server["restarts"], 1);
    assert_eq!(vm.console.command("cpu online 1"), ["cpu 1 online"]);
    assert!(
        !std::path::Path::new(&format!("/proc/{rtas}")).exists(),
        "the stopped server is still there"
    );
}

#[test]
fn processes_killed_together_come_back_together() {
    if papervisor_tests::skip_in_process(
        "processes_killed_together_come_back_together",
        "it kills, stops or hangs a device process",
    ) {
        return;
    }
    if !root_and_kvm("processes_killed_together_come_back_together") {
        return;
    }
    let mut vm = Vm::start(&["--smp", "cpus=1,maxcpus=2"]);
    vm.boot();
    let pids = vm.device_pids();
    for pid in pids {
        send_signal(pid, nix::sys::signal::Signal::SIGKILL);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let processes = vm.device_processes();
        if processes.iter().all(|p| p["state"] == "running") {
            for process in &processes {
                assert_eq!(process["restarts"], 1, "{process}");
            }
            break;
        }
        assert!(
            processes.iter().all(|p| p["state"] != "failed"),
            "{processes:?}"
        );
        assert!(std::time::Instant::now() < deadline, "{processes:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The three are linked to each other again: a hotplug cycle works.
    vm.plug_core(1, "core1");
    let replies = vm.qmp(&[r#"device_del={"id": "core1"}"#, "wait-event:DEVICE_DELETED"]);
    assert_eq!(replies[1]["data"]["device"], "core1");
    assert!(vm.console.command("time")[0].starts_with("time: 20"));
}

#[test]
fn a_hotplug_command_for_a_restarting_controller_restarts_it_and_goes_through() {
    if papervisor_tests::skip_in_process(
        "a_hotplug_command_for_a_restarting_controller_restarts_it_and_goes_through",
        "it kills, stops or hangs a device process",
    ) {
        return;
    }
    if !root_and_kvm("a_hotplug_command_for_a_restarting_controller_restarts_it_and_goes_through") {
        return;
    }
    let mut vm = Vm::start(&["--smp", "cpus=1,maxcpus=2"]);
    vm.boot();
    let mut qmp = papervisor_tests::QmpClient::connect(&vm.qmp_socket());
    let controller = |vm: &Vm| {
        vm.device_process("hotplug-controller")["pid"]
            .as_u64()
            .unwrap()
    };
    // Four deaths in a row: the fifth restart waits 1.6 s.
    for _ in 0..4 {
        send_signal(controller(&vm), nix::sys::signal::Signal::SIGKILL);
        qmp.wait_event("X_DEVICE_PROCESS_EXITED");
        qmp.wait_event("X_DEVICE_PROCESS_RESTARTED");
    }
    send_signal(controller(&vm), nix::sys::signal::Signal::SIGKILL);
    let exited = qmp.wait_event("X_DEVICE_PROCESS_EXITED");
    assert_eq!(exited["data"]["action"], "restart");
    // Asked meanwhile, the command restarts it now and goes through.
    let reply = qmp.execute(
        "device_add",
        json!({"driver": "host-spapr-cpu-core", "core-id": 1, "id": "core1"}),
    );
    assert_eq!(reply, json!({"return": {}}));
    qmp.wait_event("X_DEVICE_PROCESS_RESTARTED");
    vm.console
        .expect_async("dlpar: cpu add 0x10000001: ok", Duration::from_secs(60));
    // The backoff timer that fires later restarts nothing.
    std::thread::sleep(Duration::from_secs(2));
    let process = vm.device_process("hotplug-controller");
    assert_eq!(process["state"], "running");
    assert_eq!(process["restarts"], 5, "{process}");
}

#[test]
fn a_device_del_that_finds_the_controller_stopped_waits_for_its_successor() {
    if papervisor_tests::skip_in_process(
        "a_device_del_that_finds_the_controller_stopped_waits_for_its_successor",
        "it kills, stops or hangs a device process",
    ) {
        return;
    }
    if !root_and_kvm("a_device_del_that_finds_the_controller_stopped_waits_for_its_successor") {
        return;
    }
    let mut vm = Vm::start(&["--smp", "cpus=1,maxcpus=2"]);
    vm.boot();
    vm.plug_core(1, "core1");
    let stopped = vm.device_process("hotplug-controller")["pid"]
        .as_u64()
        .unwrap();
    send_signal(stopped, nix::sys::signal::Signal::SIGSTOP);
    // The controller never answers: once the core's link times out it is
    // cut off and replaced, and the same request goes to the successor.
    let replies = vm.qmp(&[
        r#"device_del={"id": "core1"}"#,
        "wait-event:DEVICE_DELETED",
        "events-for:2",
    ]);
    assert_eq!(replies[0], json!({"return": {}}));
    assert_eq!(replies[1]["data"]["device"], "core1");
    let later = replies[2]["events"].as_array().unwrap();
    assert!(
        !later.iter().any(|e| e["event"] == "DEVICE_DELETED"),
        "{later:?}"
    );
    let controller = vm.device_process("hotplug-controller");
    assert_ne!(controller["pid"], stopped);
    assert_eq!(controller["restarts"], 1, "{controller}");
    assert_eq!(vm.console.command("cpus"), ["cpu 0 online"]);
}

#[test]
fn a_device_process_that_panics_logs_why_and_is_restarted() {
    if papervisor_tests::skip_in_process(
        "a_device_process_that_panics_logs_why_and_is_restarted",
        "it kills, stops or hangs a device process",
    ) {
        return;
    }
    if !root_and_kvm("a_device_process_that_panics_logs_why_and_is_restarted") {
        return;
    }
    let dir = papervisor_tests::scratch_dir();
    let log_path = dir.join("papervisor.log");
    let log_file = log_path.to_str().expect("a UTF-8 path").to_string();
    let mut vm = Vm::start(&["--log-file", &log_file]);
    vm.boot();
    let (_, exited) = vm.inject_and_await_restart("rtas-server", "panic");
    assert_eq!(exited["process"], "rtas-server", "{exited}");
    // Not SIGSYS: the panic hook ends the process itself, under seccomp.
    assert_eq!(exited["reason"], "exited with status 101", "{exited}");
    let log = papervisor_tests::log_once(&log_path, |log| log.contains("rtas-server] panicked: "));
    let panic = log
        .split_once("rtas-server] panicked: ")
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("no panic in the log:\n{log}"));
    // Where it panicked, then the message (on the next line).
    assert!(
        panic.starts_with("panicked at device-procs/src/fault.rs"),
        "{panic}"
    );
    assert!(
        panic
            .lines()
            .take(2)
            .any(|line| line.contains("panicking as asked")),
        "{panic}"
    );
    assert!(vm.console.command("time")[0].starts_with("time: "));
    drop(vm);
    let _ = std::fs::remove_dir_all(dir);
}

/// SIGKILLs the `kind` until the supervisor gives up on it (a kill loop);
/// returns the last exit event's data.
fn kill_until_failed(
    vm: &Vm,
    qmp: &mut papervisor_tests::QmpClient,
    kind: &str,
) -> serde_json::Value {
    for _ in 0..10 {
        let pid = vm.device_process(kind)["pid"].as_u64().expect("a pid");
        send_signal(pid, nix::sys::signal::Signal::SIGKILL);
        let exited = qmp.wait_event("X_DEVICE_PROCESS_EXITED");
        if exited["data"]["action"] == "failed" {
            return exited["data"].clone();
        }
        assert_eq!(
            qmp.wait_event("X_DEVICE_PROCESS_RESTARTED")["data"]["process"],
            kind
        );
    }
    panic!("the {kind} never ended failed");
}

#[test]
fn an_operator_brings_failed_processes_back_after_kill_loops() {
    if papervisor_tests::skip_in_process(
        "an_operator_brings_failed_processes_back_after_kill_loops",
        "it kills, stops or hangs a device process",
    ) {
        return;
    }
    if !root_and_kvm("an_operator_brings_failed_processes_back_after_kill_loops") {
        return;
    }
    let mut vm = Vm::start(&["--smp", "cpus=1,maxcpus=2"]);
    vm.boot();
    let mut qmp = papervisor_tests::QmpClient::connect(&vm.qmp_socket());
    for kind in ["rtas-server", "hotplug-controller"] {
        let last = kill_until_failed(&vm, &mut qmp, kind);
        assert_eq!(last["process"], kind);
        assert_eq!(vm.device_process(kind)["state"], "failed");
        let reply = qmp.execute("x-restart-device-process", json!({"process": kind}));
        let pid = reply["return"]["pid"]
            .as_u64()
            .unwrap_or_else(|| panic!("{reply}"));
        assert_eq!(
            qmp.wait_event("X_DEVICE_PROCESS_RESTARTED")["data"]["pid"],
            pid
        );
        let now = vm.device_process(kind);
        assert_eq!(
            (&now["state"], &now["pid"]),
            (&json!("running"), &json!(pid))
        );
        // A running process is not restarted by this command.
        let refused = qmp.execute("x-restart-device-process", json!({"process": kind}));
        let desc = refused["error"]["desc"].as_str().unwrap_or_default();
        assert!(desc.contains("is running"), "{refused}");
    }
    // The guest has RTAS and hotplug again.
    assert!(vm.console.command("time")[0].starts_with("time: "));
    vm.plug_core(1, "core1");
    // Its crash history starts over: one more death is a restart.
    let pid = vm.device_process("rtas-server")["pid"].as_u64().unwrap();
    send_signal(pid, nix::sys::signal::Signal::SIGKILL);
    assert_eq!(
        qmp.wait_event("X_DEVICE_PROCESS_EXITED")["data"]["action"],
        "restart"
    );
    let unknown = qmp.execute("x-restart-device-process", json!({"process": "nothing"}));
    assert_eq!(unknown["error"]["class"], "GenericError", "{unknown}");
}

/// The next event `name` about the process `kind`.
fn event_of(qmp: &mut papervisor_tests::QmpClient, name: &str, kind: &str) -> serde_json::Value {
    loop {
        let event = qmp.wait_event(name);
        if event["data"]["process"] == kind {
            return event;
        }
    }
}

/// The descriptors the core has open.
fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the core's descriptors")
        .count()
}

/// The core's soft and hard limits of open descriptors.
fn descriptor_limit(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("the core's limits");
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .expect("a descriptor limit");
    let values: Vec<u64> = line
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect();
    (values[0], values[1])
}

/// Sets the core's soft limit of open descriptors (as an operator's
/// `prlimit` would, or a host that ran out).
fn set_descriptor_limit(pid: u32, soft: u64) {
    let (_, hard) = descriptor_limit(pid);
    let status = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={soft}:{hard}"))
        .status()
        .expect("prlimit (util-linux)");
    assert!(status.success());
}

/// What a QMP client can make the core hold is bounded (memory backends),
/// and a restart that fails because the host has no descriptor left is
/// not the process's fault: it is tried again, never counted towards
/// `failed`, and succeeds once descriptors are back.
#[test]
fn backends_are_bounded_and_a_restart_short_of_descriptors_waits_without_failing() {
    if papervisor_tests::skip_in_process(
        "backends_are_bounded_and_a_restart_short_of_descriptors_waits_without_failing",
        "it kills, stops or hangs a device process",
    ) {
        return;
    }
    if !root_and_kvm(
        "backends_are_bounded_and_a_restart_short_of_descriptors_waits_without_failing",
    ) {
        return;
    }
    let mut vm = Vm::start(&[
        "--smp",
        "cpus=1,maxcpus=2",
        "--memory",
        "size=512M,maxmem=4G,slots=4",
    ]);
    vm.boot();
    let mut qmp = papervisor_tests::QmpClient::connect(&vm.qmp_socket());
    let mut added = 0;
    let refusal = loop {
        let reply = qmp.execute(
            "object-add",
            json!({"qom-type": "memory-backend-memfd", "id": format!("m{added}"), "size": 256u64 << 20}),
        );
        match reply["error"]["desc"].as_str() {
            Some(desc) => break desc.to_string(),
            None => added += 1,
        }
        assert!(added <= 1000, "object-add is unbounded");
    };
    assert_eq!(added, 64, "{refusal}");
    assert!(refusal.contains("at most 64 memory backends"), "{refusal}");
    // With every backend held, a device process still restarts.
    vm.kill_and_await_restart("rtas-server");
    for n in 0..added {
        let reply = qmp.execute("object-del", json!({"id": format!("m{n}")}));
        assert_eq!(reply, json!({"return": {}}));
    }
    // No descriptor to spare: the controller's restart cannot come up.
    let core = vm.pid();
    let (soft, hard) = descriptor_limit(core);
    assert_eq!(
        soft, hard,
        "the core takes every descriptor its hard limit allows"
    );
    let controller = vm.device_process("hotplug-controller");
    // Not one descriptor to spare (a QMP connection the query above made
    // is closed by then): the controller's death frees its links' and
    // pidfds' (4), fewer than its successor's links take (8).
    std::thread::sleep(Duration::from_millis(300));
    set_descriptor_limit(core, open_descriptors(core) as u64);
    send_signal(
        controller["pid"].as_u64().unwrap(),
        nix::sys::signal::Signal::SIGKILL,
    );
    let exited = event_of(&mut qmp, "X_DEVICE_PROCESS_EXITED", "hotplug-controller");
    assert_eq!(exited["data"]["action"], "restart");
    // Longer than the backoffs of five counted deaths (3.1 s).
    std::thread::sleep(Duration::from_secs(5));
    let waiting = vm.device_process("hotplug-controller");
    assert_eq!(waiting["state"], "restarting", "{waiting}");
    let why = waiting["last-exit"].as_str().unwrap_or_default();
    assert!(why.contains("host resources"), "{waiting}");
    // Descriptors back: it comes up by itself.
    set_descriptor_limit(core, soft);
    event_of(&mut qmp, "X_DEVICE_PROCESS_RESTARTED", "hotplug-controller");
    let back = vm.device_process("hotplug-controller");
    assert_eq!(
        (&back["state"], &back["restarts"]),
        (&json!("running"), &json!(1))
    );
    vm.plug_core(1, "core1");
}

/// A log reader that stops reading (a stuck journal, a paused pager) must
/// not stall the VM: with every process logging at debug level into a
/// pipe nobody drains, hot-plug cycles go on, QMP answers, the guest's
/// RTAS calls are served, and no device process is cut off.
#[test]
fn a_log_reader_that_stops_reading_stalls_nothing() {
    if !papervisor_tests::kvm_usable("a_log_reader_that_stops_reading_stalls_nothing") {
        return;
    }
    // The smallest pipe the kernel makes (a page): full after a few lines.
    let (_unread, log) = nix::unistd::pipe().unwrap();
    nix::fcntl::fcntl(&log, nix::fcntl::FcntlArg::F_SETPIPE_SZ(4096)).unwrap();
    let mut vm = Vm::start_with_stderr(
        &papervisor_tests::binary("papervisor"),
        papervisor_tests::scratch_dir(),
        &[
            "--smp",
            "cpus=1,maxcpus=2",
            "--log-file",
            "stderr",
            "--log-level",
            "debug",
        ],
        Stdio::from(log),
    );
    vm.boot();
    let mut qmp = papervisor_tests::QmpClient::connect(&vm.qmp_socket());
    let before = vm.device_pids();
    for round in 0..40 {
        let add = qmp.execute(
            "device_add",
            json!({"driver": "host-spapr-cpu-core", "core-id": 1, "id": "core1"}),
        );
        assert_eq!(add, json!({"return": {}}), "round {round}");
        vm.console
            .expect_async("dlpar: cpu add 0x10000001: ok", Duration::from_secs(60));
        let del = qmp.execute("device_del", json!({"id": "core1"}));
        assert_eq!(del, json!({"return": {}}), "round {round}");
        assert_eq!(qmp.wait_event("DEVICE_DELETED")["data"]["device"], "core1");
        vm.console
            .expect_async("dlpar: cpu remove 0x10000001: ok", Duration::from_secs(60));
    }
    assert!(vm.console.command("time")[0].starts_with("time: "));
    // Nobody was cut off for not answering: the same processes serve.
    assert_eq!(vm.device_pids(), before);
    assert!(qmp
        .events_within(Duration::ZERO)
        .iter()
        .all(|e| e["event"] != "X_DEVICE_PROCESS_EXITED"));
}

#[test]
fn without_its_spawner_the_vm_runs_on_and_sees_its_devices_exit() {
    let name = "without_its_spawner_the_vm_runs_on_and_sees_its_devices_exit";
    if papervisor_tests::skip_in_process(name, "it kills, stops or hangs a device process") {
        return;
    }
    if !root_and_kvm(name) {
        return;
    }
    let mut vm = Vm::start(&[]);
    vm.boot();
    let mut qmp = papervisor_tests::QmpClient::connect(&vm.qmp_socket());
    let spawner = vm.spawner().expect("the spawner runs");
    let survivors: Vec<u64> = ["hotplug-controller", "event-log"]
        .iter()
        .map(|kind| vm.device_process(kind)["pid"].as_u64().expect("a pid"))
        .collect();
    send_signal(u64::from(spawner), nix::sys::signal::Signal::SIGKILL);
    // Its exit reporter is gone: the core sees the device's exit itself,
    // and, with nothing left to start a successor, fails it at once.
    let pid = vm.device_process("rtas-server")["pid"]
        .as_u64()
        .expect("a pid");
    send_signal(pid, nix::sys::signal::Signal::SIGKILL);
    let failed = loop {
        let exited = event_of(&mut qmp, "X_DEVICE_PROCESS_EXITED", "rtas-server");
        if exited["data"]["action"] == "failed" {
            break exited["data"].clone();
        }
    };
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("the spawner is gone"), "{failed}");
    let now = vm.device_process("rtas-server");
    assert_eq!(now["state"], "failed", "{now}");
    // The VM and its other devices run on.
    assert_eq!(
        qmp.execute("query-status", json!({}))["return"]["status"],
        "running"
    );
    assert_eq!(vm.device_process("hotplug-controller")["state"], "running");
    // And it ends cleanly: its reaper ends what the spawner started.
    assert_eq!(
        qmp.execute("quit", json!({}))["return"],
        json!({}),
        "quit is answered"
    );
    assert!(vm.wait_exit(Duration::from_secs(10)).success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while survivors.iter().any(|&pid| papervisor_tests::runs(pid)) {
        assert!(
            std::time::Instant::now() < deadline,
            "device processes {survivors:?} outlived their VM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
