//! What a management stack relies on, without the stack: the front end's
//! refusals, a core that only answers the probe (`--no-machine`) and
//! detaches once it serves (`--daemonize`, `--pidfile`), QMP on a handed-
//! over descriptor (`--qmp-fd`), a guest held until `cont` (`--paused`),
//! a power-off that stops instead of ending (`--no-shutdown`), and the
//! console on a pseudo-terminal that query-chardev names.

use papervisor_tests::{binary, kvm_usable, scratch_dir, QmpClient, Vm};
use serde_json::json;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{what} never happened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_front_end_refuses_what_it_does_not_support_in_one_line() {
    for (line, named) in [
        (&["-netdev", "user,id=n0"][..], "-netdev"),
        (&["-machine", "q35"][..], "-machine q35"),
        (&["-device", "e1000"][..], "-device e1000"),
        (&["-cpu", "POWER9"][..], "-cpu POWER9"),
    ] {
        let output = Command::new(binary("papervisor-qemu"))
            .args(line)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1), "{line:?}");
        let said = String::from_utf8_lossy(&output.stderr);
        assert_eq!(said.lines().count(), 1, "{said}");
        assert!(said.contains(named), "{said}");
    }
    let version = Command::new(binary("papervisor-qemu"))
        .arg("-version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("QEMU emulator version"));
}

/// libvirt's probe, as it runs it: the command returns once QMP is
/// served, the pid file names the detached core, the probe's questions
/// are answered, `quit` ends it and its pid file goes.
#[test]
fn the_probe_core_detaches_answers_and_quits() {
    let dir = scratch_dir();
    let qmp = dir.join("qmp.monitor");
    let pid_file = dir.join("qmp.pid");
    let status = Command::new(binary("papervisor-qemu"))
        .args(["-S", "-no-user-config", "-nodefaults", "-nographic"])
        .args(["-machine", "none,accel=kvm:tcg", "-qmp"])
        .arg(format!("unix:{},server=on,wait=off", qmp.display()))
        .arg("-pidfile")
        .arg(&pid_file)
        .arg("-daemonize")
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("the pid file is written before the command returns")
        .trim()
        .parse()
        .unwrap();
    let mut client = QmpClient::connect(&qmp);
    assert_eq!(
        client.execute("query-target", json!({})),
        json!({"return": {"arch": "ppc64"}})
    );
    assert_eq!(
        client.execute("query-status", json!({}))["return"]["status"],
        "prelaunch"
    );
    assert_eq!(
        client.execute("query-kvm", json!({}))["return"]["enabled"],
        false
    );
    let machines = client.execute("query-machines", json!({}));
    assert!(machines["return"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == "pseries" && m["hotpluggable-cpus"] == true));
    let add = client.execute(
        "device_add",
        json!({"driver": "host-spapr-cpu-core", "core-id": 1}),
    );
    let refusal = add["error"]["desc"].as_str().unwrap();
    assert!(refusal.contains("needs a machine"), "{add}");
    assert_eq!(client.execute("quit", json!({})), json!({"return": {}}));
    let gone = || !std::path::Path::new(&format!("/proc/{pid}")).exists();
    wait_for("the probe core's exit", gone);
    assert!(!pid_file.exists(), "the pid file outlived its process");
    let _ = std::fs::remove_dir_all(dir);
}

/// A VM that cannot start makes `--daemonize` fail, not return 0.
#[test]
fn a_detached_core_that_cannot_start_fails_the_command() {
    let dir = scratch_dir();
    let status = Command::new(binary("papervisor"))
        .args(["--daemonize", "--no-machine", "--qmp-fd", "99"])
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
    let _ = std::fs::remove_dir_all(dir);
}

/// QMP on a listening socket the starter hands over (libvirt's way).
#[test]
fn qmp_is_served_on_a_handed_over_descriptor() {
    let dir = scratch_dir();
    let listener = std::os::unix::net::UnixListener::bind(dir.join("monitor")).unwrap();
    let fd = listener.as_raw_fd();
    let mut command = Command::new(binary("papervisor"));
    command.args(["--no-machine", "--qmp-fd", "10"]);
    // SAFETY: dup2 is async-signal-safe; `fd` is open in the parent, so
    // in the child, until exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
            if nix::libc::dup2(fd, 10) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
    drop(listener);
    let mut client = QmpClient::connect(&dir.join("monitor"));
    assert_eq!(
        client.execute("query-target", json!({}))["return"]["arch"],
        "ppc64"
    );
    client.execute("quit", json!({}));
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_paused_start_runs_the_guest_only_at_cont() {
    if !kvm_usable("a_paused_start_runs_the_guest_only_at_cont") {
        return;
    }
    let mut vm = Vm::start(&["--paused"]);
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    assert_eq!(
        qmp.execute("query-status", json!({}))["return"],
        json!({"status": "prelaunch", "running": false, "singlestep": false})
    );
    assert!(
        vm.console
            .read_until_or_timeout("guest>", Duration::from_millis(500))
            .is_none(),
        "the guest ran before cont"
    );
    assert_eq!(qmp.execute("cont", json!({})), json!({"return": {}}));
    vm.boot();
    assert_eq!(
        qmp.execute("query-status", json!({}))["return"]["status"],
        "running"
    );
}

#[test]
fn with_no_shutdown_a_power_off_stops_the_vm_until_reset() {
    if !kvm_usable("with_no_shutdown_a_power_off_stops_the_vm_until_reset") {
        return;
    }
    let mut vm = Vm::start(&["--no-shutdown"]);
    vm.boot();
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    vm.console.send_line("poweroff");
    let shutdown = qmp.wait_event("SHUTDOWN");
    assert_eq!(
        shutdown["data"],
        json!({"guest": true, "reason": "guest-shutdown"})
    );
    qmp.wait_event("STOP");
    assert_eq!(
        qmp.execute("query-status", json!({}))["return"]["status"],
        "shutdown"
    );
    assert!(
        qmp.execute("cont", json!({}))["error"]["desc"]
            .as_str()
            .unwrap()
            .contains("Resetting"),
        "cont without a reset"
    );
    assert_eq!(
        qmp.execute("system_reset", json!({})),
        json!({"return": {}})
    );
    qmp.wait_event("RESET");
    assert_eq!(
        qmp.execute("query-status", json!({}))["return"]["status"],
        "prelaunch"
    );
    assert_eq!(qmp.execute("cont", json!({})), json!({"return": {}}));
    vm.boot();
    assert_eq!(vm.console.command("cpus"), ["cpu 0 online"]);
}

#[test]
fn the_console_on_a_pty_is_named_by_query_chardev() {
    if !kvm_usable("the_console_on_a_pty_is_named_by_query_chardev") {
        return;
    }
    let dir = scratch_dir();
    let mut child = papervisor_tests::papervisor_command()
        .args(["--console", "pty", "--console-id", "charserial0", "--qmp"])
        .arg(dir.join("qmp.sock"))
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the QMP socket", || dir.join("qmp.sock").exists());
    let mut qmp = QmpClient::connect(&dir.join("qmp.sock"));
    let chardevs = qmp.execute("query-chardev", json!({}));
    let console = &chardevs["return"][0];
    assert_eq!(console["label"], "charserial0", "{chardevs}");
    let pty = console["filename"]
        .as_str()
        .unwrap()
        .strip_prefix("pty:")
        .expect("a pty")
        .to_string();
    let mut terminal = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&pty)
        .unwrap();
    terminal.write_all(b"cpus\r").unwrap();
    let mut seen = String::new();
    let mut buffer = [0u8; 1024];
    while !seen.contains("cpu 0 online\r\n") {
        let n = terminal.read(&mut buffer).unwrap();
        assert!(n > 0, "the pty closed: {seen:?}");
        seen.push_str(&String::from_utf8_lossy(&buffer[..n]));
    }
    // A terminal: every line feed comes with its carriage return.
    assert!(!seen.replace("\r\n", "").contains('\n'), "{seen:?}");
    qmp.execute("quit", json!({}));
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(dir);
}

/// Cores and DIMMs on the command line (libvirt's `-device` for boot-time
/// vCPUs and DIMMs) are present at boot, with no hot-plug event, and go as
/// hot-plugged ones do.
#[test]
fn cores_and_dimms_of_the_command_line_are_there_at_boot() {
    if !kvm_usable("cores_and_dimms_of_the_command_line_are_there_at_boot") {
        return;
    }
    let mut vm = Vm::start(&[
        "--smp",
        "cpus=1,maxcpus=4",
        "--memory",
        "size=512M,maxmem=2G,slots=4",
        "--object",
        "qom-type=memory-backend-ram,id=m0,size=268435456",
        "--device",
        "pc-dimm,id=dimm0,memdev=m0,slot=2",
        "--device",
        "host-spapr-cpu-core,core-id=1,id=vcpu1",
    ]);
    let banner = vm.boot();
    assert!(
        !banner.contains("dlpar:"),
        "an event for a cold plug: {banner}"
    );
    assert_eq!(vm.console.command("cpus"), ["cpu 0 online", "cpu 1 online"]);
    assert_eq!(
        vm.console.command("mem")[0],
        "lmb 0x80000004 at 0x40000000: assigned online"
    );
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    let dimms = qmp.execute("query-memory-devices", json!({}));
    assert_eq!(dimms["return"][0]["data"]["slot"], 2, "{dimms}");
    assert_eq!(
        qmp.execute("device_del", json!({"id": "dimm0"})),
        json!({"return": {}})
    );
    assert_eq!(qmp.wait_event("DEVICE_DELETED")["data"]["device"], "dimm0");
    assert_eq!(
        qmp.execute("device_del", json!({"id": "vcpu1"})),
        json!({"return": {}})
    );
    assert_eq!(qmp.wait_event("DEVICE_DELETED")["data"]["device"], "vcpu1");
    assert_eq!(vm.console.command("cpus"), ["cpu 0 online"]);
}
