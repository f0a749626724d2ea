//! The VM boots the test guest from its device tree and obeys its console.

use papervisor_tests::{kvm_usable, Vm, COMMAND_TIMEOUT};
use std::time::Duration;

const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn banner_reports_what_the_device_tree_describes() {
    if !kvm_usable("banner_reports_what_the_device_tree_describes") {
        return;
    }
    let mut vm = Vm::start(&[
        "--smp",
        "cpus=2,maxcpus=4",
        "--memory",
        "size=512M,maxmem=2G,slots=4",
    ]);
    let banner = vm.boot();
    assert!(
        banner.contains("Papervisor test guest on cpu 0\n"),
        "{banner}"
    );
    assert!(
        banner.contains("cpus: 2 present, 1 threads per core: 0 1\n"),
        "{banner}"
    );
    assert!(banner.contains("memory: 512 MiB\n"), "{banner}");
    // Device memory 1 GiB .. 2.5 GiB: six 256 MiB LMBs; four possible cores.
    assert!(banner.contains("drcs: 4 cpu, 6 lmb\n"), "{banner}");
    assert!(banner.contains("rtas: 14 calls: "), "{banner}");
    assert!(banner.contains(" power-off=0x2003 "), "{banner}");
    assert!(banner.contains(" set-indicator=0x201a "), "{banner}");
    assert!(banner.contains("smp: 2 of 2 cpus online\n"), "{banner}");

    assert_eq!(vm.console.command("cpus"), ["cpu 0 online", "cpu 1 online"]);
    assert_eq!(
        vm.console.command("frobnicate"),
        ["unknown command: frobnicate (try help)"]
    );
    let help = vm.console.command("help");
    for command in ["help", "cpus", "poweroff", "reboot"] {
        assert!(
            help.iter().any(|l| l.trim_start().starts_with(command)),
            "help lacks {command}: {help:?}"
        );
    }
}

#[test]
fn smt_topology_lists_every_thread() {
    if !kvm_usable("smt_topology_lists_every_thread") {
        return;
    }
    let mut vm = Vm::start(&["--smp", "cpus=4,maxcpus=8,threads=2"]);
    let banner = vm.boot();
    assert!(
        banner.contains("cpus: 4 present, 2 threads per core: 0 1 2 3\n"),
        "{banner}"
    );
    assert!(banner.contains("drcs: 4 cpu, 0 lmb\n"), "{banner}");
    assert_eq!(
        vm.console.command("cpus"),
        [
            "cpu 0 online",
            "cpu 1 online",
            "cpu 2 online",
            "cpu 3 online"
        ]
    );
}

#[test]
fn poweroff_ends_the_process_with_status_zero() {
    if !kvm_usable("poweroff_ends_the_process_with_status_zero") {
        return;
    }
    let mut vm = Vm::start(&[]);
    vm.boot();
    vm.console.send_line("poweroff");
    vm.console.read_until("powering off\n", COMMAND_TIMEOUT);
    let status = vm.wait_exit(EXIT_TIMEOUT);
    assert_eq!(status.code(), Some(0));
}

#[test]
fn reboot_boots_the_guest_again() {
    if !kvm_usable("reboot_boots_the_guest_again") {
        return;
    }
    let mut vm = Vm::start(&["--smp", "cpus=2"]);
    vm.boot();
    vm.console.send_line("reboot");
    vm.console.read_until("rebooting\n", COMMAND_TIMEOUT);
    let banner = vm.boot();
    assert!(
        banner.contains("Papervisor test guest on cpu 0\n"),
        "{banner}"
    );
    assert_eq!(vm.console.command("cpus"), ["cpu 0 online", "cpu 1 online"]);
    vm.console.send_line("poweroff");
    assert_eq!(vm.wait_exit(EXIT_TIMEOUT).code(), Some(0));
}

#[test]
fn stdio_console_carries_commands_and_output() {
    if !kvm_usable("stdio_console_carries_commands_and_output") {
        return;
    }
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;
    let mut child = papervisor_tests::papervisor_command()
        .args(["--smp", "cpus=2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start papervisor");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut seen = Vec::new();
    // Wait for the banner's last line before typing, as a person would.
    loop {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "stdout closed: {seen:?}"
        );
        let done = line.starts_with("smp: ");
        seen.push(line);
        if done {
            break;
        }
    }
    stdin.write_all(b"cpus\npoweroff\n").unwrap();
    let rest: Vec<String> = stdout.lines().map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(rest.iter().any(|l| l.ends_with("cpu 0 online")), "{rest:?}");
    assert!(rest.iter().any(|l| l == "cpu 1 online"), "{rest:?}");
    assert!(rest.iter().any(|l| l.contains("powering off")), "{rest:?}");
}
