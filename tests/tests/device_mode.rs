//! `--device-mode in-process`: the devices as threads of the core, over the
//! same links, protocol and code, without a jail; supervised all the same.

use papervisor_tests::{kvm_usable, Vm};
use serde_json::json;

const KINDS: [&str; 3] = ["rtas-server", "hotplug-controller", "event-log"];

/// The name a thread of `kind` carries (Linux keeps 15 bytes of it).
fn thread_name(kind: &str) -> &str {
    &kind[..kind.len().min(15)]
}

fn thread_of_core(core: u32, tid: u64) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{core}/task/{tid}/comm"))
        .ok()
        .map(|name| name.trim_end().to_string())
}

#[test]
fn in_process_devices_are_threads_that_serve_and_come_back_after_a_cut_off() {
    if !kvm_usable("in_process_devices_are_threads_that_serve_and_come_back_after_a_cut_off") {
        return;
    }
    let mut vm = Vm::start(&["--smp", "cpus=1,maxcpus=4", "--device-mode", "in-process"]);
    vm.boot();
    assert_eq!(vm.children(), [], "no device process");
    for process in vm.device_processes() {
        let kind = process["kind"].as_str().unwrap();
        assert_eq!(process["mode"], "in-process", "{process}");
        let tid = process["pid"].as_u64().unwrap();
        assert_eq!(
            thread_of_core(vm.pid(), tid).as_deref(),
            Some(thread_name(kind)),
            "{process}"
        );
    }
    // They serve: the RTAS server alone, with the controller and the event log.
    assert!(vm.console.command("time")[0].starts_with("time: 20"));
    vm.plug_core(1, "c1");

    // A device thread that sends garbage is cut off as a process is: its
    // links shut down, it returns, and a new thread takes its place.
    for kind in KINDS {
        let old = vm.device_process(kind);
        let (outcome, exited) = vm.inject_and_await_restart(kind, "garbage");
        assert!(outcome.contains("cut off"), "{kind}: {outcome}");
        assert_eq!(exited["process"], kind);
        assert_eq!(exited["reason"], "returned", "{kind}");
        let new = vm.device_process(kind);
        assert_eq!(new["restarts"], 1, "{new}");
        assert_ne!(new["pid"], old["pid"], "{kind}: a new thread");
        assert_eq!(
            thread_of_core(vm.pid(), old["pid"].as_u64().unwrap()),
            None,
            "{kind}: the old thread is gone"
        );
    }
    // The successors serve, from the state their predecessors left.
    assert_eq!(vm.console.command("cpus"), ["cpu 0 online", "cpu 1 online"]);
    let replies = vm.qmp(&[r#"device_del={"id": "c1"}"#, "wait-event:DEVICE_DELETED"]);
    assert_eq!(replies[0], json!({"return": {}}));
    vm.console.expect_async(
        "dlpar: cpu remove 0x10000001: ok",
        std::time::Duration::from_secs(30),
    );

    // What would end or hang a process would end or hang the core: refused.
    let replies = vm.qmp(&[
        r#"x-inject-fault={"process": "event-log", "fault": "panic"}"#,
        r#"x-inject-fault={"process": "rtas-server", "point": "received", "action": "crash"}"#,
        r#"x-inject-fault={"process": "hotplug-controller", "fault": "open-host-file"}"#,
        r#"x-upgrade-device-process={"process": "event-log", "path": "/bin/true"}"#,
    ]);
    for reply in &replies[..3] {
        let desc = reply["error"]["desc"].as_str().unwrap_or_default();
        assert!(desc.contains("would end or hang the core"), "{reply}");
    }
    let desc = replies[3]["error"]["desc"].as_str().unwrap_or_default();
    assert!(desc.contains("threads of the core"), "{}", replies[3]);
    for process in vm.device_processes() {
        assert_eq!(process["state"], "running", "{process}");
    }
    assert!(vm.console.command("time")[0].starts_with("time: 20"));
}

#[test]
fn an_in_process_vm_cannot_be_jailed() {
    let output = std::process::Command::new(papervisor_tests::binary("papervisor"))
        .args(["--device-mode", "in-process", "--jail", "on"])
        .output()
        .expect("run papervisor");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--jail on") && stderr.contains("cannot be jailed"),
        "{stderr}"
    );
}

/// The hardened core (built without default features) does not link the
/// device code: its devices run as processes, and it refuses
/// `--device-mode in-process` at start, saying why.
#[test]
fn a_core_built_without_in_process_devices_runs_them_as_processes() {
    if !papervisor_tests::root_and_kvm(
        "a_core_built_without_in_process_devices_runs_them_as_processes",
    ) {
        return;
    }
    let core = papervisor_tests::hardened_binary("papervisor");
    let mut child = std::process::Command::new(&core)
        .args(["--device-mode", "in-process"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A core that links the device code would boot a VM and run on: it
    // gets 10 s to refuse.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the hardened core ran with in-process devices");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let refused = child.wait_with_output().unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("this core was built without in-process devices"),
        "{stderr}"
    );
    let mut vm = Vm::start_program(
        &core,
        &[
            "--smp",
            "cpus=1,maxcpus=2",
            "--device-mode",
            "out-of-process",
        ],
    );
    vm.boot();
    let children: Vec<u64> = vm
        .children()
        .iter()
        .map(|(pid, _)| u64::from(*pid))
        .collect();
    for process in vm.device_processes() {
        assert_eq!(process["mode"], "out-of-process", "{process}");
        let pid = process["pid"].as_u64().unwrap();
        assert!(
            children.contains(&pid),
            "{process} is not a child: {children:?}"
        );
    }
    vm.plug_core(1, "c1");
    assert_eq!(vm.console.command("cpus"), ["cpu 0 online", "cpu 1 online"]);
}
