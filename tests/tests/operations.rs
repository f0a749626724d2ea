//! What an operator relies on: QEMU's human monitor through `qmp-shell -H`
//! (QEMU's own client, unmodified).

use papervisor_tests::{kvm_usable, Vm};
use std::io::Write;
use std::process::{Command, Stdio};

#[test]
fn qmp_shell_in_human_monitor_mode_answers_info_commands() {
    if !kvm_usable("qmp_shell_in_human_monitor_mode_answers_info_commands") {
        return;
    }
    let mut vm = Vm::start(&["--smp", "cpus=1,maxcpus=2"]);
    vm.boot();
    let mut shell = Command::new("python3")
        .args(["-m", "qemu.qmp.qmp_shell", "-H"])
        .arg(vm.qmp_socket())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with qemu.qmp (pip install qemu.qmp)");
    shell
        .stdin
        .take()
        .unwrap()
        .write_all(b"info status\ninfo hotpluggable-cpus\ninfo bogus\n")
        .unwrap();
    let output = shell.wait_with_output().unwrap();
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{shown}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(shown.contains("VM status: running"), "{shown}");
    assert!(shown.contains("type: \"host-spapr-cpu-core\""), "{shown}");
    assert_eq!(shown.matches("core-id:").count(), 2, "{shown}");
    assert!(shown.contains("unknown command: 'info bogus'"), "{shown}");
}

/// A clean end (quit, or SIGTERM as a service manager sends it) logs no
/// warning from any process, and a signal once.
#[test]
fn a_clean_end_logs_no_warning_and_a_signal_once() {
    if !kvm_usable("a_clean_end_logs_no_warning_and_a_signal_once") {
        return;
    }
    for how in ["quit", "SIGTERM"] {
        let dir = papervisor_tests::scratch_dir();
        let log_path = dir.join("vm.log");
        let log_file = format!("--log-file={}", log_path.display());
        let mut vm = Vm::start(&[&log_file]);
        vm.boot();
        if how == "quit" {
            vm.qmp(&["quit"]);
        } else {
            papervisor_tests::send_signal(u64::from(vm.pid()), nix::sys::signal::Signal::SIGTERM);
        }
        assert!(vm.wait_exit(std::time::Duration::from_secs(10)).success());
        let log = std::fs::read_to_string(&log_path).unwrap();
        let warnings: Vec<&str> = log
            .lines()
            .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
            .collect();
        assert!(warnings.is_empty(), "{how}: {warnings:#?}");
        if how == "SIGTERM" {
            assert_eq!(log.matches("SIGTERM").count(), 1, "{log}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// systemd's `Type=notify`: `READY=1` comes once QMP is served, the guest
/// started; the variable is not passed on to the device processes.
#[test]
fn ready_is_notified_once_qmp_is_served() {
    if !kvm_usable("ready_is_notified_once_qmp_is_served") {
        return;
    }
    let dir = papervisor_tests::scratch_dir();
    let notify = std::os::unix::net::UnixDatagram::bind(dir.join("notify")).unwrap();
    notify
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let address = dir.join("notify");
    let vm = Vm::start_with_env(
        &papervisor_tests::binary("papervisor"),
        papervisor_tests::scratch_dir(),
        &[],
        Stdio::inherit(),
        &[("NOTIFY_SOCKET", address.as_os_str())],
    );
    let mut message = [0u8; 256];
    let n = notify.recv(&mut message).expect("READY=1 within 20 s");
    let message = String::from_utf8_lossy(&message[..n]).into_owned();
    assert_eq!(message, format!("READY=1\nMAINPID={}", vm.pid()));
    // Served by then: a client is answered at once.
    assert_eq!(vm.qmp(&["query-status"])[0]["return"]["status"], "running");
    // (Device threads share the core's environment block.)
    let processes = if papervisor_tests::in_process() {
        Vec::new()
    } else {
        vm.device_pids()
    };
    for pid in processes {
        let environment = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&environment).contains("NOTIFY_SOCKET"),
            "device process {pid} inherited NOTIFY_SOCKET"
        );
    }
}

/// Every record of every process names the VM (its name, or its pid).
#[test]
fn every_log_line_of_every_process_names_the_vm() {
    if !kvm_usable("every_log_line_of_every_process_names_the_vm") {
        return;
    }
    let dir = papervisor_tests::scratch_dir();
    let log_path = dir.join("vm.log");
    let log_file = format!("--log-file={}", log_path.display());
    let mut vm = Vm::start(&["--name", "web 7", "--log-level", "debug", &log_file]);
    vm.boot();
    vm.console.command("time");
    vm.qmp(&["quit"]);
    assert!(vm.wait_exit(std::time::Duration::from_secs(10)).success());
    let log = std::fs::read_to_string(&log_path).unwrap();
    let records: Vec<&str> = log.lines().filter(|l| l.starts_with('[')).collect();
    assert!(records.len() > 10, "{log}");
    for record in &records {
        assert!(record.starts_with("[web 7 "), "{record}");
    }
    for process in ["core", "rtas-server", "hotplug-controller", "event-log"] {
        assert!(
            records.iter().any(|r| r.contains(&format!(" {process}] "))),
            "no line of {process}"
        );
    }
}

/// `scripts/install` into a fresh prefix gives a set that boots a VM: the
/// core in bin, the helpers in libexec (where the build told the core to
/// look), the man page from the command-line definition.
#[test]
fn an_installed_set_in_a_fresh_prefix_boots_a_vm() {
    if !kvm_usable("an_installed_set_in_a_fresh_prefix_boots_a_vm") {
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let prefix = papervisor_tests::scratch_dir().join("prefix");
    let status = Command::new(root.join("scripts/install"))
        .arg(&prefix)
        .arg("--debug")
        .env("CARGO_TARGET_DIR", root.join("target/install"))
        .status()
        .expect("scripts/install");
    assert!(status.success());
    let libexec = prefix.join("libexec/papervisor");
    for helper in [
        "jailer",
        "papervisor-spawner",
        "papervisor-reaper",
        "papervisor-rtas",
    ] {
        assert!(libexec.join(helper).is_file(), "{helper}");
        assert!(!prefix.join("bin").join(helper).exists(), "{helper} in bin");
    }
    let man = std::fs::read_to_string(prefix.join("share/man/man1/papervisor.1")).unwrap();
    assert!(man.contains(".TH papervisor 1") && man.contains(r"\-\-helper\-dir"));
    let mut vm = Vm::start_program(&prefix.join("bin/papervisor"), &[]);
    vm.boot();
    assert_eq!(vm.console.command("cpus"), ["cpu 0 online"]);
    if !papervisor_tests::in_process() {
        let rtas = vm.device_process("rtas-server");
        let binary = libexec.join("papervisor-rtas");
        assert_eq!(rtas["binary"], binary.display().to_string(), "{rtas}");
    }
    drop(vm);
    let _ = std::fs::remove_dir_all(prefix.parent().unwrap());
}

/// query-stats counts what was done: N RTAS calls of one token, M
/// hot-plugs; the metrics file gets the same, a JSON line at a time.
#[test]
fn stats_count_a_known_workload_and_reach_the_metrics_file() {
    if !kvm_usable("stats_count_a_known_workload_and_reach_the_metrics_file") {
        return;
    }
    let dir = papervisor_tests::scratch_dir();
    let metrics = dir.join("metrics.json");
    let metrics_path = format!("--metrics-path={}", metrics.display());
    let mut vm = Vm::start(&[
        "--smp",
        "cpus=1,maxcpus=2",
        &metrics_path,
        "--metrics-interval",
        "200",
    ]);
    vm.boot();
    let mut qmp = papervisor_tests::QmpClient::connect(&vm.qmp_socket());
    let stat = |qmp: &mut papervisor_tests::QmpClient, name: &str| -> serde_json::Value {
        let answer = qmp.execute("query-stats", serde_json::json!({"target": "vm"}));
        answer["return"][0]["stats"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| s["value"].clone())
            .unwrap_or(serde_json::json!(0))
    };
    let calls = "rtas-calls-query-cpu-stopped-state";
    let before = stat(&mut qmp, calls).as_u64().unwrap();
    let hypercalls = stat(&mut qmp, "exits-hypercall").as_u64().unwrap();
    let bench = vm.console.command("bench rtas 300");
    assert!(bench[0].starts_with("bench: 300 calls"), "{bench:?}");
    assert_eq!(stat(&mut qmp, calls).as_u64().unwrap() - before, 300);
    assert!(stat(&mut qmp, "exits-hypercall").as_u64().unwrap() >= hypercalls + 300);
    let histogram = stat(&mut qmp, "rtas-call-time");
    let timed: u64 = histogram
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b.as_u64())
        .sum();
    assert_eq!(timed, stat(&mut qmp, "rtas-calls").as_u64().unwrap());

    vm.plug_core(1, "core1");
    assert_eq!(stat(&mut qmp, "hotplug-core-add"), 1);
    assert_eq!(
        qmp.execute("device_del", serde_json::json!({"id": "core1"})),
        serde_json::json!({"return": {}})
    );
    qmp.wait_event("DEVICE_DELETED");
    assert_eq!(stat(&mut qmp, "hotplug-core-del"), 1);
    assert_eq!(stat(&mut qmp, "hotplug-deleted"), 1);
    assert_eq!(stat(&mut qmp, "restarts-rtas-server"), 0);

    let vcpus = qmp.execute("query-stats", serde_json::json!({"target": "vcpu"}));
    let vcpu0 = &vcpus["return"][0];
    assert_eq!(vcpu0["provider"], "papervisor");
    assert!(
        vcpu0["qom-path"].as_str().unwrap().ends_with("thread[0]"),
        "{vcpus}"
    );
    let schemas = qmp.execute("query-stats-schemas", serde_json::json!({}));
    assert_eq!(schemas["return"].as_array().unwrap().len(), 2, "{schemas}");

    // Quiet now (the guest's start of the plugged CPU made calls of its
    // own): the file's last line says what query-stats says.
    let now = stat(&mut qmp, calls).as_u64().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let lines = std::fs::read_to_string(&metrics).unwrap();
    let last: serde_json::Value = serde_json::from_str(lines.lines().last().unwrap()).unwrap();
    assert!(lines.lines().count() >= 2, "{lines}");
    let written = last["vm"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == calls)
        .unwrap()["value"]
        .as_u64()
        .unwrap();
    assert_eq!(written, now);
}

/// A metrics collector on a FIFO that stops reading costs lines, never
/// the VM: the control loop, which makes the lines, goes on answering; the
/// lines that were written are whole.
#[test]
fn a_metrics_fifo_that_is_not_read_stalls_nothing() {
    if !kvm_usable("a_metrics_fifo_that_is_not_read_stalls_nothing") {
        return;
    }
    use std::io::BufRead;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = papervisor_tests::scratch_dir();
    let fifo = dir.join("metrics");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    // The collector: there, but reading nothing, its pipe one page.
    let collector = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    nix::fcntl::fcntl(&collector, nix::fcntl::FcntlArg::F_SETPIPE_SZ(4096)).unwrap();
    let metrics_path = format!("--metrics-path={}", fifo.display());
    let mut vm = Vm::start(&[&metrics_path, "--metrics-interval", "100"]);
    vm.boot();
    let mut qmp = papervisor_tests::QmpClient::connect(&vm.qmp_socket());
    // Long enough for the pipe to fill several times over.
    std::thread::sleep(std::time::Duration::from_secs(2));
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let stats = qmp.execute("query-stats", serde_json::json!({"target": "vm"}));
        assert!(stats["return"].is_array(), "{stats}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "the control loop waited for the metrics FIFO"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    nix::fcntl::fcntl(
        &collector,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
    )
    .unwrap();
    let mut lines = std::io::BufReader::new(collector).lines();
    for _ in 0..3 {
        let line = lines.next().unwrap().unwrap();
        let sample: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert!(sample["vm"].is_array(), "{line}");
    }
}

/// With the trace on, every RTAS call is a record (no rate limit), with
/// its name and status, in the ring and in the streamed file.
#[test]
fn a_thousand_rtas_calls_give_a_thousand_trace_records() {
    if !kvm_usable("a_thousand_rtas_calls_give_a_thousand_trace_records") {
        return;
    }
    let dir = papervisor_tests::scratch_dir();
    let trace = dir.join("trace.jsonl");
    let trace_option = format!("--trace={}", trace.display());
    let log_path = dir.join("vm.log");
    let log_option = format!("--log-file={}", log_path.display());
    let mut vm = Vm::start(&[
        &trace_option,
        "--trace-filter",
        "rtas,hotplug",
        "--log-level",
        "debug",
        &log_option,
    ]);
    vm.boot();
    let bench = vm.console.command("bench rtas 1000");
    assert!(bench[0].starts_with("bench: 1000 calls"), "{bench:?}");
    let mut qmp = papervisor_tests::QmpClient::connect(&vm.qmp_socket());
    let answer = qmp.execute("x-query-trace", serde_json::json!({"filter": "rtas-call"}));
    let records = answer["return"]["records"].as_array().unwrap();
    let calls: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["call"] == "query-cpu-stopped-state")
        .collect();
    assert_eq!(calls.len(), 1000, "{}", answer["return"]["dropped"]);
    for call in &calls {
        assert_eq!(call["status"], 0, "{call}");
        assert_eq!(call["vcpu"], 0, "{call}");
        assert!(call["took-us"].is_u64(), "{call}");
    }
    assert_eq!(answer["return"]["dropped"], 0);
    // And a debug line per call: debug lines are not rate-limited.
    let log = papervisor_tests::log_once(&log_path, |log| {
        log.matches("query-cpu-stopped-state(0x0) -> status 0")
            .count()
            >= 1000
    });
    assert_eq!(
        log.matches("query-cpu-stopped-state(0x0) -> status 0")
            .count(),
        1000
    );
    // The filter left the QMP events out.
    let events = qmp.execute("x-query-trace", serde_json::json!({"filter": "qmp-event"}));
    assert_eq!(events["return"]["records"], serde_json::json!([]));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let streamed = std::fs::read_to_string(&trace).unwrap_or_default();
        let lines = streamed
            .lines()
            .filter(|l| l.contains("\"call\":\"query-cpu-stopped-state\""))
            .count();
        if lines == 1000 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{lines} lines streamed"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Armed faults can be listed, with how often each fired, and cleared: a
/// test can tell a fault that fired from one that never met its request.
#[test]
fn armed_faults_are_listed_with_how_often_they_fired_and_cleared() {
    if !kvm_usable("armed_faults_are_listed_with_how_often_they_fired_and_cleared") {
        return;
    }
    let mut vm = Vm::start(&["--smp", "cpus=1,maxcpus=2"]);
    vm.boot();
    let mut qmp = papervisor_tests::QmpClient::connect(&vm.qmp_socket());
    let arm = |qmp: &mut papervisor_tests::QmpClient, fault: serde_json::Value| {
        assert_eq!(
            qmp.execute("x-inject-fault", fault),
            serde_json::json!({"return": {"armed": true}})
        );
    };
    // In the process: the guest's first set-indicator of a plug.
    arm(
        &mut qmp,
        serde_json::json!({"process": "hotplug-controller", "point": "received",
                           "action": "delay", "request": "SetIndicator"}),
    );
    // At the core's end of the event log's link: x-query-event-log's request.
    arm(
        &mut qmp,
        serde_json::json!({"process": "event-log", "point": "core-sending",
                           "action": "delay", "request": "List"}),
    );
    let listed = |qmp: &mut papervisor_tests::QmpClient| {
        let answer = qmp.execute("x-query-faults", serde_json::json!({}));
        assert_eq!(
            answer["return"]["unreachable"],
            serde_json::json!([]),
            "{answer}"
        );
        answer["return"]["faults"].clone()
    };
    let fired = |faults: &serde_json::Value, process: &str| {
        let fault = faults
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["process"] == process)
            .unwrap_or_else(|| panic!("no fault of the {process} in {faults}"));
        fault["fired"].as_u64().unwrap()
    };
    let faults = listed(&mut qmp);
    assert_eq!(faults.as_array().unwrap().len(), 2, "{faults}");
    assert_eq!(fired(&faults, "hotplug-controller"), 0);
    assert_eq!(fired(&faults, "event-log"), 0);
    let hotplug = faults
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["process"] == "hotplug-controller")
        .unwrap();
    assert_eq!(hotplug["point"], "received");
    assert_eq!(hotplug["action"], "delay");
    assert_eq!(hotplug["request"], "SetIndicator");

    vm.plug_core(1, "core1");
    let after_plug = listed(&mut qmp);
    assert_eq!(fired(&after_plug, "hotplug-controller"), 1, "{after_plug}");
    assert_eq!(fired(&after_plug, "event-log"), 0, "{after_plug}");
    let log = qmp.execute("x-query-event-log", serde_json::json!({}));
    assert!(log.get("return").is_some(), "{log}");
    assert_eq!(fired(&listed(&mut qmp), "event-log"), 1);

    assert_eq!(
        qmp.execute("x-clear-faults", serde_json::json!({})),
        serde_json::json!({"return": {}})
    );
    assert_eq!(listed(&mut qmp), serde_json::json!([]));
}

/// A committed fault whose effect is still to come (a `lose-state` of the
/// next transition, a `lie` to the next calls) is listed as `pending`,
/// and x-clear-faults cancels it: the plug that would have lost its
/// transition then restarts nothing.
#[test]
fn committed_faults_still_to_act_are_listed_and_cancelled() {
    if !kvm_usable("committed_faults_still_to_act_are_listed_and_cancelled") {
        return;
    }
    use serde_json::json;
    let mut vm = Vm::start(&["--smp", "cpus=1,maxcpus=2"]);
    vm.boot();
    let mut qmp = papervisor_tests::QmpClient::connect(&vm.qmp_socket());
    // The lie first: the RTAS server's lies include requests to the
    // controller, whose recorded replies are transitions too.
    for (process, fault) in [("rtas-server", "lie"), ("hotplug-controller", "lose-state")] {
        let injected = qmp.execute(
            "x-inject-fault",
            json!({"process": process, "fault": fault}),
        );
        assert_eq!(injected["return"]["survived"], true, "{injected}");
    }
    let answer = qmp.execute("x-query-faults", json!({}));
    assert_eq!(answer["return"]["faults"], json!([]), "{answer}");
    let pending = answer["return"]["pending"].as_array().unwrap();
    assert_eq!(pending.len(), 2, "{answer}");
    assert!(
        pending
            .contains(&json!({"process": "hotplug-controller", "fault": "lose-state", "left": 1})),
        "{answer}"
    );
    let lie = pending
        .iter()
        .find(|p| p["process"] == "rtas-server")
        .unwrap_or_else(|| panic!("no pending lie in {answer}"));
    assert_eq!(lie["fault"], "lie");
    // Eight calls are to be lied to; an idle guest makes none.
    assert_eq!(lie["left"], 8, "{answer}");

    assert_eq!(
        qmp.execute("x-clear-faults", json!({})),
        json!({"return": {}})
    );
    let answer = qmp.execute("x-query-faults", json!({}));
    assert_eq!(answer["return"]["pending"], json!([]), "{answer}");
    // Cancelled, not only unlisted: the plug's transitions are recorded,
    // and its calls answered truly.
    vm.plug_core(1, "core1");
    for process in vm.device_processes() {
        assert_eq!(process["restarts"], 0, "{process}");
    }
    assert_eq!(vm.console.command("cpus"), ["cpu 0 online", "cpu 1 online"]);
}

/// With the trace on, what happens inside the device processes reaches
/// the trace: every DRC transition of a plug, the event queued and the
/// event fetched, each named with its process.
#[test]
fn device_processes_trace_drc_transitions_and_events() {
    if !kvm_usable("device_processes_trace_drc_transitions_and_events") {
        return;
    }
    let mut vm = Vm::start(&["--smp", "cpus=1,maxcpus=2", "--trace", "ring"]);
    vm.boot();
    let mut qmp = papervisor_tests::QmpClient::connect(&vm.qmp_socket());
    vm.plug_core(1, "core1");
    let trace = |qmp: &mut papervisor_tests::QmpClient, point: &str| {
        let answer = qmp.execute("x-query-trace", serde_json::json!({"filter": point}));
        assert_eq!(answer["return"]["process-dropped"], serde_json::json!({}));
        answer["return"]["records"].as_array().unwrap().clone()
    };
    let transitions: Vec<serde_json::Value> = trace(&mut qmp, "drc-transition")
        .into_iter()
        .filter(|r| r["drc"] == "0x10000001")
        .collect();
    assert!(transitions.len() >= 2, "{transitions:?}");
    for pair in transitions.windows(2) {
        assert_eq!(pair[0]["to"], pair[1]["from"], "{transitions:?}");
    }
    let last = transitions.last().unwrap();
    assert_eq!(last["to"], "Configured", "{transitions:?}");
    assert_eq!(last["process"], "hotplug-controller");
    assert_eq!(last["device"], "/machine/peripheral/core1");

    let queued = trace(&mut qmp, "event-queued");
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(queued[0]["process"], "event-log");
    assert_eq!(queued[0]["action"], "Add");
    assert_eq!(queued[0]["kind"], "cpu");
    assert_eq!(queued[0]["drc"], "0x10000001");
    assert_eq!(queued[0]["outcome"], "queued");
    let fetched = trace(&mut qmp, "event-fetched");
    assert_eq!(fetched.len(), 1, "{fetched:?}");
    assert_eq!(fetched[0]["process"], "event-log");
    assert!(
        fetched[0]["bytes"]
            .as_str()
            .unwrap()
            .parse::<u32>()
            .unwrap()
            > 0
    );
    assert_eq!(fetched[0]["depth"], "0");

    // The guest's set-indicator crossed the RTAS server to the controller:
    // the server's peer request names the core's request id.
    let calls = trace(&mut qmp, "rtas-call");
    let call = calls
        .iter()
        .find(|r| r["call"] == "set-indicator")
        .unwrap_or_else(|| panic!("no set-indicator in {calls:?}"));
    assert_eq!(call["args"].as_array().unwrap().len(), 3, "{call}");
    let id = call["request"].as_u64().unwrap().to_string();
    let crossed = trace(&mut qmp, "peer-request");
    let peer_request = crossed
        .iter()
        .find(|r| r["for"] == id.as_str())
        .unwrap_or_else(|| panic!("no peer request for call {id} in {crossed:?}"));
    assert_eq!(peer_request["process"], "rtas-server");
    assert_eq!(peer_request["peer"], "hotplug-controller");
    assert_eq!(peer_request["request"], "SetIndicator");
    assert_eq!(peer_request["answer"], "answered");
    // And the controller's own requests to the event log.
    assert!(
        crossed
            .iter()
            .any(|r| r["process"] == "hotplug-controller" && r["peer"] == "event-log"),
        "{crossed:?}"
    );
}
