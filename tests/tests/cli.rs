//! Bad command lines are refused before anything starts: one line naming the
//! bad value, exit status 2. None of these needs /dev/kvm.

use papervisor_tests::{binary, scratch_dir};
use std::process::{Command, Stdio};

fn refused(args: &[&str]) -> String {
    let output = Command::new(binary("papervisor"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run papervisor");
    assert_eq!(
        output.status.code(),
        Some(2),
        "{args:?} was not refused: {output:?}"
    );
    let stderr = String::from_utf8(output.stderr).expect("utf-8 stderr");
    assert_eq!(
        stderr.lines().count(),
        1,
        "{args:?}: not one line: {stderr}"
    );
    assert!(stderr.starts_with("papervisor: "), "{stderr}");
    assert!(output.stdout.is_empty(), "{args:?} printed on stdout");
    stderr
}

#[test]
fn bad_values_are_named() {
    let cases: &[(&[&str], &str)] = &[
        (&["--smp", "cpus=0"], "cpus=0"),
        (&["--smp", "cpus=4,maxcpus=2"], "maxcpus=2"),
        (&["--smp", "cpus=2,threads=9"], "threads=9"),
        (&["--smp", "cpus=3,threads=2"], "cpus=3"),
        (&["--smp", "cpus=two"], "cpus=two"),
        (&["--smp", "sockets=1"], "sockets"),
        (&["--memory", "size=300M"], "size=300M"),
        (&["--memory", "size=512M,maxmem=256M"], "maxmem=256M"),
        (&["--memory", "size=512M,maxmem=4G"], "slots=0"),
        (&["--memory", "size=512M,maxmem=4G,slots=99"], "slots=99"),
        (&["--memory", "size=8G"], "size=8G"),
        (&["--console", ""], "console"),
        (&["--console", "/no/such/dir/console.sock"], "/no/such/dir"),
        (&["--qmp", "/no/such/dir/qmp.sock"], "/no/such/dir"),
        (&["--guest", "/no/such/guest.elf"], "/no/such/guest.elf"),
        (&["--frobnicate"], "--frobnicate"),
        (
            &["--jail-dir", "/proc/nope", "--console", "/tmp/pv-cli.sock"],
            "--jail-dir /proc/nope",
        ),
        (&["--jail-dir", "relative"], "--jail-dir relative"),
        (
            &[
                "--pidfile",
                "/proc/nope/pid",
                "--console",
                "/tmp/pv-cli.sock",
            ],
            "--pidfile /proc/nope/pid",
        ),
        (&["--helper-dir", "/nope"], "--helper-dir /nope"),
        (
            &["--qmp-fd", "77", "--console", "/tmp/pv-cli.sock"],
            "--qmp-fd 77",
        ),
        (&["--qmp-fd", "1"], "--qmp-fd"),
        (&["--uuid", "not-a-uuid"], "not-a-uuid"),
        (&["--console-id", "9x"], "--console-id 9x"),
        (
            &["--object", "qom-type=memory-backend-ram,id=m,size=x"],
            "size=x",
        ),
    ];
    for (args, named) in cases {
        let message = refused(args);
        assert!(message.contains(named), "{args:?}: {message}");
    }
}

#[test]
fn a_guest_that_is_not_an_x86_64_elf_is_refused() {
    let dir = scratch_dir();
    let not_elf = dir.join("guest.txt");
    std::fs::write(&not_elf, "not a kernel").unwrap();
    let message = refused(&["--guest", not_elf.to_str().unwrap()]);
    assert!(message.contains("not an ELF file"), "{message}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn an_existing_socket_path_is_refused_unless_it_is_a_stale_socket() {
    let dir = scratch_dir();
    let taken = dir.join("taken");
    std::fs::write(&taken, "").unwrap();
    let message = refused(&["--console", taken.to_str().unwrap()]);
    assert!(message.contains("already exists"), "{message}");
    // A socket that something serves is refused...
    let live = dir.join("live.sock");
    let listener = std::os::unix::net::UnixListener::bind(&live).unwrap();
    let message = refused(&["--console", live.to_str().unwrap()]);
    assert!(message.contains("serves this socket"), "{message}");
    drop(listener);
    // ...ones left behind by a process that is gone are replaced.
    let vm_dir = scratch_dir();
    for name in ["console.sock", "qmp.sock"] {
        drop(std::os::unix::net::UnixListener::bind(vm_dir.join(name)).unwrap());
    }
    if papervisor_tests::kvm_usable(
        "an_existing_socket_path_is_refused_unless_it_is_a_stale_socket",
    ) {
        let mut vm = papervisor_tests::Vm::start_in(&binary("papervisor"), vm_dir, &[]);
        vm.boot();
        assert_eq!(vm.qmp(&["query-status"])[0]["return"]["status"], "running");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn help_describes_the_options() {
    let output = Command::new(binary("papervisor"))
        .arg("--help")
        .output()
        .expect("run papervisor");
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8(output.stdout).unwrap();
    for option in ["--smp", "--memory", "--qmp", "--console", "--guest"] {
        assert!(help.contains(option), "--help lacks {option}");
    }
}

/// `--metrics-path`, `--trace` and `--log-file` take a FIFO (a collector
/// reads it), but one that nobody reads yet is refused at once, naming the
/// option: opening it for writing would wait for a reader before the VM
/// even starts.
#[test]
fn a_fifo_that_nobody_reads_is_refused_not_waited_for() {
    let dir = scratch_dir();
    let fifo = dir.join("collector");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let fifo = fifo.to_str().unwrap();
    for option in ["--metrics-path", "--trace", "--log-file"] {
        let mut child = Command::new(binary("papervisor"))
            .args([option, fifo])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run papervisor");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{option} {fifo}: still waiting for a reader after 20 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert_eq!(status.code(), Some(2), "{option}: {stderr}");
        assert!(
            stderr.contains(&format!("{option} {fifo}: a FIFO that nobody reads")),
            "{stderr}"
        );
    }
}
