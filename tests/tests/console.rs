//! The guest console as an operator uses it: the stdio console on a real
//! terminal (a pseudo-terminal here) in raw mode, restored at exit, with
//! QEMU's `Ctrl-a x` to quit and the logs kept off it; the socket console
//! serving one client at a time; and the log level reaching every process.

use nix::sys::termios::{tcgetattr, LocalFlags};
use papervisor_tests::{kvm_usable, scratch_dir, Vm};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Reads the terminal until `pattern` (or panics after 30 s).
fn read_until(master: &mut std::fs::File, seen: &mut String, pattern: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(at) = seen.find(pattern) {
            let rest = seen.split_off(at + pattern.len());
            return std::mem::replace(seen, rest);
        }
        assert!(
            Instant::now() < deadline,
            "{pattern:?} never came; got {seen:?}"
        );
        let mut buf = [0u8; 4096];
        match master.read(&mut buf) {
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(error) => panic!("terminal read failed: {error}"),
        }
    }
}

fn echoing(terminal: &OwnedFd) -> bool {
    let attributes = tcgetattr(terminal).unwrap();
    attributes
        .local_flags
        .contains(LocalFlags::ECHO | LocalFlags::ICANON)
}

#[test]
fn the_stdio_console_is_a_raw_terminal_with_ctrl_a_x_and_no_logs() {
    if !kvm_usable("the_stdio_console_is_a_raw_terminal_with_ctrl_a_x_and_no_logs") {
        return;
    }
    // The log made for a terminal console goes with a VM that ends well,
    // unless kept.
    for keep in [false, true] {
        let pty = nix::pty::openpty(None, None).unwrap();
        let dir = scratch_dir();
        let slave = pty.slave;
        assert!(echoing(&slave), "a fresh terminal echoes");
        let mut child = papervisor_tests::papervisor_command()
            .args(keep.then_some("--keep-log"))
            .args(["--smp", "cpus=2", "--jail-dir"])
            .arg(dir.join("run"))
            .arg("--qmp")
            .arg(dir.join("qmp.sock"))
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave.try_clone().unwrap()))
            .spawn()
            .unwrap();
        let mut master = std::fs::File::from(pty.master);
        nix::fcntl::fcntl(
            &master,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
        let mut seen = String::new();
        let before_prompt = read_until(&mut master, &mut seen, "guest> ");
        // One line says where the logs go; none of them comes here.
        assert!(before_prompt.contains("logs go to"), "{before_prompt}");
        assert!(!before_prompt.contains(" INFO "), "{before_prompt}");
        assert!(!echoing(&slave), "the terminal is not in raw mode");
        // Typed once, echoed once (by the guest, not by the terminal too).
        master.write_all(b"cpus\r").unwrap();
        let answer = read_until(&mut master, &mut seen, "cpu 1 online\r\n");
        assert_eq!(answer.matches("cpus").count(), 1, "{answer:?}");
        // Ctrl-C is the guest's byte, not a signal that ends the VM.
        master.write_all(b"\x03").unwrap();
        std::thread::sleep(Duration::from_millis(500));
        assert!(child.try_wait().unwrap().is_none(), "Ctrl-C ended the VM");
        // Ctrl-a x ends it, cleanly, and the terminal gets its settings back.
        master.write_all(b"\x01x").unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "Ctrl-a x did not end the VM");
            let mut buf = [0u8; 4096];
            let _ = master.read(&mut buf);
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(0));
        assert!(echoing(&slave), "the terminal was left in raw mode");
        let log = std::fs::read_dir(dir.join("run"))
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().ends_with(".log"));
        match log {
            Some(log) if keep => {
                let log = std::fs::read_to_string(log.path()).unwrap();
                assert!(log.contains("core] Ctrl-a x"), "{log}");
            }
            None if !keep => {}
            log => panic!("keep {keep}: {log:?}"),
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn the_socket_console_serves_one_client_and_a_new_one_replaces_it() {
    if !kvm_usable("the_socket_console_serves_one_client_and_a_new_one_replaces_it") {
        return;
    }
    let mut vm = Vm::start(&[]);
    vm.boot();
    let mut second = std::os::unix::net::UnixStream::connect(vm.console_socket()).unwrap();
    assert!(
        vm.console.is_closed(Duration::from_secs(10)),
        "the first client stayed"
    );
    second
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    second.write_all(b"cpus\r").unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains("cpu 0 online") {
        let n = second.read(&mut buf).unwrap();
        assert!(n > 0, "the console closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

#[test]
fn the_log_level_reaches_every_device_process() {
    if !kvm_usable("the_log_level_reaches_every_device_process") {
        return;
    }
    let dir = scratch_dir();
    let debug_log = dir.join("debug.log");
    let log_file = format!("--log-file={}", debug_log.display());
    let mut vm = Vm::start(&["--log-level", "debug", &log_file]);
    vm.boot();
    assert!(vm.console.command("time")[0].starts_with("time: "));
    quit(&mut vm);
    let log = std::fs::read_to_string(&debug_log).unwrap();
    for process in ["core", "rtas-server", "hotplug-controller", "event-log"] {
        assert!(
            log.contains(&format!("{process}] ")),
            "no line of {process}"
        );
    }
    assert!(log.contains("DEBUG rtas-server]"), "{log}");
    // A call's debug line names it, its arguments and its status.
    assert!(log.contains(": get-time-of-day() -> status 0"), "{log}");

    let info_log = dir.join("info.log");
    let log_file = format!("--log-file={}", info_log.display());
    let mut vm = Vm::start(&["--log-level", "info", &log_file]);
    vm.boot();
    assert!(vm.console.command("time")[0].starts_with("time: "));
    quit(&mut vm);
    let log = std::fs::read_to_string(&info_log).unwrap();
    assert!(log.contains("INFO  rtas-server]"), "{log}");
    assert!(!log.contains("DEBUG"), "{log}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Ends the VM as an operator does, so its last log lines are flushed
/// (a SIGKILL may lose what the log pipe still holds).
fn quit(vm: &mut Vm) {
    assert_eq!(vm.qmp(&["quit"])[0]["return"], serde_json::json!({}));
    assert!(vm.wait_exit(Duration::from_secs(10)).success());
}

/// A second VM started on a running VM's console path is refused, and
/// finds that out without connecting: the first VM's console user stays.
#[test]
fn refusing_a_second_vm_keeps_the_first_vms_console_user() {
    if !kvm_usable("refusing_a_second_vm_keeps_the_first_vms_console_user") {
        return;
    }
    let mut vm = Vm::start(&[]);
    vm.boot();
    let other = scratch_dir();
    let output = papervisor_tests::papervisor_command()
        .arg("--console")
        .arg(vm.console_socket())
        .arg("--qmp")
        .arg(other.join("qmp.sock"))
        .arg("--jail-dir")
        .arg(other.join("run"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("another VM serves this socket"), "{stderr}");
    // The console client was not replaced: it still talks to the guest.
    assert_eq!(vm.console.command("cpus"), ["cpu 0 online"]);
    assert!(vm.console_socket().exists());
    assert!(
        !other.join("qmp.sock").exists(),
        "the refused VM left a socket"
    );
    let _ = std::fs::remove_dir_all(other);
}

/// Two VMs started at the same moment on the same --qmp and --console
/// paths: one serves both, the other is refused and removes nothing.
#[test]
fn of_two_vms_started_at_once_on_the_same_sockets_the_loser_removes_nothing() {
    if !kvm_usable("of_two_vms_started_at_once_on_the_same_sockets_the_loser_removes_nothing") {
        return;
    }
    for _ in 0..5 {
        let dir = scratch_dir();
        let start = |run: &str| {
            papervisor_tests::papervisor_command()
                .arg("--console")
                .arg(dir.join("console.sock"))
                .arg("--qmp")
                .arg(dir.join("qmp.sock"))
                .arg("--jail-dir")
                .arg(dir.join(run))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let mut both = [start("run-a"), start("run-b")];
        // The loser ends; the winner runs on.
        let deadline = Instant::now() + Duration::from_secs(20);
        let loser = loop {
            if let Some(at) = both
                .iter_mut()
                .position(|c| c.try_wait().unwrap().is_some())
            {
                break at;
            }
            assert!(Instant::now() < deadline, "neither VM was refused");
            std::thread::sleep(Duration::from_millis(20));
        };
        // Read on the side: a refused VM that left processes behind would
        // keep its stderr open.
        let mut loser_stderr = both[loser].stderr.take().unwrap();
        let (said, output) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = loser_stderr.read_to_string(&mut text);
            let _ = said.send(text);
        });
        let loser_output = output
            .recv_timeout(Duration::from_secs(10))
            .expect("the refused VM's stderr closes: nothing of it stays behind");
        assert_eq!(
            both[loser].wait().unwrap().code(),
            Some(2),
            "{loser_output}"
        );
        assert!(
            loser_output.contains("another VM serves this socket"),
            "{loser_output}"
        );
        let winner = &mut both[1 - loser];
        assert!(winner.try_wait().unwrap().is_none(), "the winner ended too");
        // Both of the winner's sockets serve (the winner may have its locks
        // and not yet have bound, or have bound and not yet listened: the
        // loser can be quicker).
        let deadline = Instant::now() + Duration::from_secs(10);
        let qmp_serves = || std::os::unix::net::UnixStream::connect(dir.join("qmp.sock")).is_ok();
        let mut console = loop {
            match std::os::unix::net::UnixStream::connect(dir.join("console.sock")) {
                Ok(console) if qmp_serves() => break console,
                Ok(_) | Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(_) => panic!("the winner's QMP socket never appeared"),
                Err(error) => panic!("the winner's console: {error}"),
            }
        };
        console
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut qmp = papervisor_tests::QmpClient::connect(&dir.join("qmp.sock"));
        assert_eq!(
            qmp.execute("query-status", serde_json::json!({}))["return"]["status"],
            "running"
        );
        console.write_all(b"cpus\r").unwrap();
        let mut seen = String::new();
        let mut buf = [0u8; 4096];
        while !seen.contains("cpu 0 online") {
            let n = console.read(&mut buf).unwrap();
            assert!(n > 0, "the console closed: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        qmp.execute("quit", serde_json::json!({}));
        assert!(winner.wait().unwrap().success());
        // The winner removed its own sockets, and their locks, on its way out.
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .filter(|name| name.to_string_lossy().contains("sock"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
