//! Every device process runs jailed and filtered, and the supervisor reports
//! and restarts one that dies, is killed by its filter, stops answering or
//! sends garbage — while the guest keeps running. These need root (the jail
//! mounts and changes ids) and /dev/kvm; they say so when skipped.

use papervisor_tests::{root_and_kvm, Vm};
use serde_json::{json, Value};

const KINDS: [&str; 3] = ["rtas-server", "hotplug-controller", "event-log"];

fn root(test: &str) -> bool {
    root_and_kvm(test)
}

fn processes(vm: &Vm) -> Vec<Value> {
    vm.device_processes()
}

fn process(vm: &Vm, kind: &str) -> Value {
    vm.device_process(kind)
}

fn status_field(pid: u64, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} for {pid}"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn namespace(pid: u32, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn every_device_process_is_jailed_and_filtered() {
    if papervisor_tests::skip_in_process(
        "every_device_process_is_jailed_and_filtered",
        "it checks the jail of each device process",
    ) {
        return;
    }
    if !root("every_device_process_is_jailed_and_filtered") {
        return;
    }
    let mut vm = Vm::start(&["--smp", "cpus=1,maxcpus=2"]);
    vm.boot();
    let listed = processes(&vm);
    assert_eq!(listed.len(), 3);
    // No jailer stays behind: the device processes are the spawner's
    // children (beside the reaper, and the standbys that wait to be the
    // next of their kind).
    let children = vm.children();
    assert!(
        children.iter().all(|(_, name)| name != "jailer"),
        "{children:?}"
    );
    for process in &listed {
        let pid = process["pid"].as_u64().unwrap() as u32;
        assert!(
            children.iter().any(|(child, _)| *child == pid),
            "{children:?}"
        );
    }
    let mut uids = Vec::new();
    for p in listed {
        let pid = p["pid"].as_u64().unwrap();
        let kind = p["kind"].as_str().unwrap();
        assert_eq!(p["state"], "running", "{kind}");
        assert_eq!(status_field(pid, "Seccomp"), "2", "{kind}");
        assert_eq!(status_field(pid, "NoNewPrivs"), "1", "{kind}");
        // The VM's own ids, from the documented range, the same for all four.
        let uid = status_field(pid, "Uid");
        let ids: Vec<u64> = uid.split(' ').map(|id| id.parse().unwrap()).collect();
        assert!(ids.iter().all(|&id| id == ids[0]), "{kind}: {uid}");
        assert!(
            (1_900_000_000..1_900_065_536).contains(&ids[0]),
            "{kind}: {uid}"
        );
        assert_eq!(status_field(pid, "Gid"), uid, "{kind}");
        uids.push(uid);
        assert_eq!(status_field(pid, "Groups"), "", "{kind}");
        assert_eq!(status_field(pid, "CapEff"), "0000000000000000", "{kind}");
        assert_eq!(status_field(pid, "CapPrm"), "0000000000000000", "{kind}");
        assert_eq!(status_field(pid, "CapBnd"), "0000000000000000", "{kind}");
        for ns in ["mnt", "pid", "net", "ipc", "uts"] {
            assert_ne!(
                namespace(pid as u32, ns),
                namespace(vm.pid(), ns),
                "{kind} shares the core's {ns} namespace"
            );
        }
        let root: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/root"))
            .unwrap()
            .collect();
        assert!(
            root.is_empty(),
            "{kind} sees {} entries in its root",
            root.len()
        );
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let limit = |name: &str| {
            limits
                .lines()
                .find(|l| l.starts_with(name))
                .map(|l| l.split_whitespace().rev().nth(1).unwrap_or("").to_string())
                .unwrap_or_default()
        };
        assert_eq!(limit("Max processes"), "0", "{kind}: {limits}");
        assert_eq!(limit("Max core file size"), "0", "{kind}");
    }
    assert!(uids.iter().all(|uid| *uid == uids[0]), "{uids:?}");
    // Jailed, the platform still works: a core comes and goes.
    vm.plug_core(1, "c1");
}

#[test]
fn forbidden_calls_kill_the_process_which_is_reported_and_restarted() {
    if papervisor_tests::skip_in_process(
        "forbidden_calls_kill_the_process_which_is_reported_and_restarted",
        "a forbidden call would kill the core with its device threads",
    ) {
        return;
    }
    if !root("forbidden_calls_kill_the_process_which_is_reported_and_restarted") {
        return;
    }
    let mut vm = Vm::start(&["--smp", "cpus=1,maxcpus=2"]);
    vm.boot();
    for kind in KINDS {
        for (n, fault) in [
            "open-host-file",
            "open-socket",
            "fork",
            "exec",
            "write-other-fd",
        ]
        .iter()
        .enumerate()
        {
            let before = process(&vm, kind)["pid"].clone();
            let (_, exited) = vm.inject_and_await_restart(kind, fault);
            assert_eq!(exited["process"], kind);
            assert_eq!(exited["pid"], before);
            assert_eq!(exited["reason"], "killed by SIGSYS", "{kind} {fault}");
            assert_eq!(exited["action"], "restart");
            let now = process(&vm, kind);
            assert_ne!(now["pid"], before, "{kind} was not replaced");
            assert_eq!(now["state"], "running");
            assert_eq!(now["restarts"], n as u64 + 1);
            assert_eq!(now["last-exit"], "killed by SIGSYS");
        }
    }
    // Every process was replaced four times; the machine still works end to end.
    assert_eq!(vm.console.command("cpus"), ["cpu 0 online"]);
    assert!(vm.console.command("time")[0].starts_with("time: 20"));
    vm.plug_core(1, "c1");
    assert_eq!(vm.console.command("cpus"), ["cpu 0 online", "cpu 1 online"]);
}

#[test]
fn garbage_and_silence_from_a_device_process_are_cut_off_and_the_guest_runs_on() {
    if papervisor_tests::skip_in_process(
        "garbage_and_silence_from_a_device_process_are_cut_off_and_the_guest_runs_on",
        "a device thread that hangs cannot be ended",
    ) {
        return;
    }
    if !root("garbage_and_silence_from_a_device_process_are_cut_off_and_the_guest_runs_on") {
        return;
    }
    let mut vm = Vm::start(&["--smp", "cpus=2,maxcpus=4"]);
    vm.boot();
    for kind in KINDS {
        for fault in ["garbage", "hang"] {
            let (outcome, exited) = vm.inject_and_await_restart(kind, fault);
            assert!(outcome.contains("cut off"), "{kind} {fault}: {outcome}");
            assert_eq!(exited["reason"], "killed by SIGKILL");
            // The guest kept running all along.
            assert_eq!(vm.console.command("cpus"), ["cpu 0 online", "cpu 1 online"]);
        }
    }
    assert!(vm.console.command("time")[0].starts_with("time: 20"));
    assert_eq!(vm.console.command("cpu offline 1"), ["cpu 1 offline"]);
    assert_eq!(vm.console.command("cpu online 1"), ["cpu 1 online"]);
}

#[test]
fn a_machine_reset_without_a_hotplug_controller_still_resets() {
    if papervisor_tests::skip_in_process(
        "a_machine_reset_without_a_hotplug_controller_still_resets",
        "it SIGKILLs a device process",
    ) {
        return;
    }
    if !root("a_machine_reset_without_a_hotplug_controller_still_resets") {
        return;
    }
    let mut vm = Vm::start(&["--smp", "cpus=2,maxcpus=4"]);
    vm.boot();
    assert_eq!(vm.make_fail("hotplug-controller")["action"], "failed");
    let replies = vm.qmp(&[
        "system_reset",
        "wait-event:RESET",
        r#"device_add={"driver": "host-spapr-cpu-core", "core-id": 2, "id": "c2"}"#,
    ]);
    assert_eq!(replies[0], json!({"return": {}}));
    assert!(
        replies[2]["error"]["desc"]
            .as_str()
            .unwrap()
            .contains("hotplug-controller has failed"),
        "{}",
        replies[2]
    );
    let banner = vm.boot();
    assert!(banner.contains("smp: 2 of 2 cpus online"), "{banner}");
    assert_eq!(vm.console.command("cpus"), ["cpu 0 online", "cpu 1 online"]);
}

#[test]
fn a_process_that_keeps_dying_is_marked_failed_and_the_vm_runs_on() {
    if papervisor_tests::skip_in_process(
        "a_process_that_keeps_dying_is_marked_failed_and_the_vm_runs_on",
        "it SIGKILLs a device process",
    ) {
        return;
    }
    if !root("a_process_that_keeps_dying_is_marked_failed_and_the_vm_runs_on") {
        return;
    }
    let mut vm = Vm::start(&["--smp", "cpus=1,maxcpus=2"]);
    vm.boot();
    let last = vm.make_fail("rtas-server");
    assert_eq!(last["action"], "failed", "{last}");
    let rtas = process(&vm, "rtas-server");
    assert_eq!(rtas["state"], "failed");
    assert_eq!(rtas["last-exit"], "killed by SIGSYS");
    // RTAS calls now fail cleanly; everything else goes on.
    assert_eq!(vm.console.command("time"), ["time failed: hcall status -1"]);
    assert_eq!(vm.console.command("cpus"), ["cpu 0 online"]);
    assert_eq!(process(&vm, "hotplug-controller")["state"], "running");
    assert_eq!(vm.qmp(&["query-status"])[0]["return"]["status"], "running");
}
