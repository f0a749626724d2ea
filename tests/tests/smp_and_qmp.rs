//! CPUs brought up and down by the guest through the RTAS server, and the VM
//! managed over QMP with the unmodified `qemu.qmp` client.

use papervisor_tests::{kvm_usable, send_signal, QmpClient, Vm};
use std::time::Duration;

const SMP: [&str; 2] = ["--smp", "cpus=2,maxcpus=4"];

#[test]
fn cpus_go_offline_and_online_including_cpu0_but_never_the_last() {
    if !kvm_usable("cpus_go_offline_and_online_including_cpu0_but_never_the_last") {
        return;
    }
    let mut vm = Vm::start(&SMP);
    let banner = vm.boot();
    assert!(banner.contains("smp: 2 of 2 cpus online\n"), "{banner}");
    let console = &mut vm.console;
    assert_eq!(console.command("cpus"), ["cpu 0 online", "cpu 1 online"]);

    assert_eq!(console.command("cpu offline 1"), ["cpu 1 offline"]);
    assert_eq!(console.command("cpus"), ["cpu 0 online", "cpu 1 offline"]);
    assert_eq!(
        console.command("cpu offline 1"),
        ["cpu 1 is already offline"]
    );
    assert_eq!(console.command("cpu online 1"), ["cpu 1 online"]);
    assert_eq!(console.command("cpu online 1"), ["cpu 1 is already online"]);

    // The shell runs on CPU 0; offlining it moves the shell (and the console
    // interrupt) to CPU 1, as pseries Linux allows.
    assert_eq!(console.command("cpu offline 0"), ["cpu 0 offline"]);
    assert_eq!(console.command("cpus"), ["cpu 0 offline", "cpu 1 online"]);
    assert_eq!(
        console.command("cpu offline 1"),
        ["cpu 1: cannot offline the last online CPU"]
    );
    assert_eq!(console.command("cpus"), ["cpu 0 offline", "cpu 1 online"]);
    assert_eq!(console.command("cpu online 0"), ["cpu 0 online"]);
    assert_eq!(console.command("cpu offline 1"), ["cpu 1 offline"]);
    assert_eq!(console.command("cpus"), ["cpu 0 online", "cpu 1 offline"]);
    assert_eq!(console.command("cpu online 7"), ["cpu 7: no such CPU"]);
}

#[test]
fn qmp_queries_resets_and_quits_through_the_qemu_qmp_client() {
    if !kvm_usable("qmp_queries_resets_and_quits_through_the_qemu_qmp_client") {
        return;
    }
    let mut vm = Vm::start(&SMP);
    vm.boot();
    let replies = vm.qmp(&["query-status", "query-cpus-fast", "no-such-command"]);
    assert_eq!(replies[0]["return"]["status"], "running");
    assert_eq!(replies[0]["return"]["running"], true);
    let cpus = replies[1]["return"].as_array().expect("a list of CPUs");
    assert_eq!(cpus.len(), 2);
    for (index, cpu) in cpus.iter().enumerate() {
        assert_eq!(cpu["cpu-index"], index);
        assert_eq!(cpu["props"]["core-id"], index);
        assert!(cpu["thread-id"].as_i64().unwrap() > 0, "{cpu}");
    }
    assert_eq!(replies[2]["error"]["class"], "CommandNotFound");

    // Offline a CPU, then reset: the guest boots again with both online.
    assert_eq!(vm.console.command("cpu offline 1"), ["cpu 1 offline"]);
    let replies = vm.qmp(&["system_reset", "wait-event:RESET"]);
    assert_eq!(replies[0]["return"], serde_json::json!({}));
    assert_eq!(replies[1]["data"]["guest"], false);
    let banner = vm.boot();
    assert!(banner.contains("smp: 2 of 2 cpus online\n"), "{banner}");
    assert_eq!(vm.console.command("cpus"), ["cpu 0 online", "cpu 1 online"]);

    let replies = vm.qmp(&["quit"]);
    assert_eq!(replies[0]["return"], serde_json::json!({}));
    assert_eq!(vm.wait_exit(Duration::from_secs(30)).code(), Some(0));
}

#[test]
fn the_rtas_server_is_another_process_and_its_death_fails_calls_cleanly() {
    if papervisor_tests::skip_in_process(
        "the_rtas_server_is_another_process_and_its_death_fails_calls_cleanly",
        "it SIGKILLs the RTAS server",
    ) {
        return;
    }
    if !kvm_usable("the_rtas_server_is_another_process_and_its_death_fails_calls_cleanly") {
        return;
    }
    let mut vm = Vm::start(&SMP);
    vm.boot();
    let processes = vm.qmp(&["x-query-device-processes"]);
    let server = processes[0]["return"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["kind"] == "rtas-server")
        .and_then(|p| p["pid"].as_u64())
        .expect("an RTAS server") as u32;
    assert_ne!(server, vm.pid());
    let status = std::fs::read_to_string(format!("/proc/{server}/status")).unwrap();
    assert!(status.starts_with("Name:\tpapervisor-rtas"), "{status}");
    assert!(vm.console.command("time")[0].starts_with("time: 20"));

    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    send_signal(u64::from(server), nix::sys::signal::Signal::SIGKILL);
    // A call made while the server is down waits for its successor: the
    // guest sees a slower call; nothing hangs, nothing crashes.
    let during = vm.console.command("time");
    assert!(during[0].starts_with("time: 20"), "{during:?}");
    let exited = qmp.wait_event("X_DEVICE_PROCESS_EXITED");
    assert_eq!(exited["data"]["reason"], "killed by SIGKILL");
    assert_eq!(exited["data"]["pid"], server);
    let restarted = qmp.wait_event("X_DEVICE_PROCESS_RESTARTED");
    assert_ne!(restarted["data"]["pid"], server);
    // The core and QMP are unharmed, and RTAS works again.
    assert_eq!(vm.console.command("cpus"), ["cpu 0 online", "cpu 1 online"]);
    assert!(vm.console.command("time")[0].starts_with("time: 20"));
    let replies = vm.qmp(&["query-status", "quit"]);
    assert_eq!(replies[0]["return"]["status"], "running");
    assert_eq!(vm.wait_exit(Duration::from_secs(30)).code(), Some(0));
}

#[test]
fn bad_rtas_arguments_get_errors_and_the_guest_keeps_running() {
    if !kvm_usable("bad_rtas_arguments_get_errors_and_the_guest_keeps_running") {
        return;
    }
    let mut vm = Vm::start(&["--memory", "size=512M"]);
    vm.boot();
    let console = &mut vm.console;
    let cases = [
        // Unknown token: RTAS status -3.
        ("rtas-raw 0x2000000 0x2fff 0 1", "rtas-raw: status -3"),
        // Known call with the wrong counts: -3.
        ("rtas-raw 0x2000000 0x2001 1 8 5", "rtas-raw: status -3"),
        ("rtas-raw 0x2000000 0x2006 2 1 1 2", "rtas-raw: status -3"),
        // start-cpu of a CPU that does not exist: -3.
        (
            "rtas-raw 0x2000000 0x2006 3 1 9 0x100000 0",
            "rtas-raw: status -3",
        ),
        // nargs/nret beyond rtas_args, or no return cell: the hcall fails.
        (
            "rtas-raw 0x2000000 0x2001 20 1",
            "rtas-raw: hcall status -4",
        ),
        (
            "rtas-raw 0x2000000 0x2001 0 17",
            "rtas-raw: hcall status -4",
        ),
        ("rtas-raw 0x2000000 0x2001 0 0", "rtas-raw: hcall status -4"),
        // The block outside guest memory (512 MiB of RAM), or wrapping around.
        (
            "rtas-raw 0x20000000 0x2001 0 8",
            "rtas-raw: hcall status -4",
        ),
        (
            "rtas-raw 0xfffffffffffffffc 0x2001 0 8",
            "rtas-raw: hcall status -4",
        ),
    ];
    for (command, expected) in cases {
        assert_eq!(console.command(command), [expected], "{command}");
    }
    assert!(console.command("time")[0].starts_with("time: 20"));
}
