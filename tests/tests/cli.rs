//! Bad command lines are refused before anything starts: one line naming the
//! bad value, exit status 2. None of these needs /dev/kvm.

use papervisor_tests::{binary, scratch_dir};
use std::process::{Command, Stdio};

/// How long a refusal may take: one that is not coming (the command runs
/// a VM, or waits) fails the test instead of hanging it.
const REFUSAL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(20);

/// What `papervisor args` printed and how it ended, within
/// [`REFUSAL_DEADLINE`].
fn run_briefly(args: &[&str]) -> std::process::Output {
    let mut child = Command::new(binary("papervisor"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run papervisor");
    let deadline = std::time::Instant::now() + REFUSAL_DEADLINE;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!("{args:?} still runs after {REFUSAL_DEADLINE:?}: {output:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn refused(args: &[&str]) -> String {
    let output = run_briefly(args);
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
        (
            &["--trace", "ring", "--trace-filter", "rtas,hotplgu"],
            "--trace-filter hotplgu: no trace point",
        ),
        (
            &["--trace", "ring", "--trace-filter", ","],
            "--trace-filter",
        ),
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
        let stderr = refused(&[option, fifo]);
        assert!(
            stderr.contains(&format!("{option} {fifo}: a FIFO that nobody reads")),
            "{stderr}"
        );
    }
}

/// A pid file is locked while its VM runs: a second VM given the same one
/// is refused, naming the holder, and does not overwrite it (the first
/// VM's end would then remove the second's); it goes with its VM.
#[test]
fn a_pid_file_in_use_is_refused() {
    let dir = scratch_dir();
    let pid_file = dir.join("vm.pid");
    let mut first = papervisor_tests::KilledOnDrop(
        Command::new(binary("papervisor"))
            .arg("--no-machine")
            .arg("--qmp")
            .arg(dir.join("qmp.sock"))
            .arg("--pidfile")
            .arg(&pid_file)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run papervisor"),
    );
    let first_pid = first.0.id();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::read_to_string(&pid_file).unwrap_or_default() != format!("{first_pid}\n") {
        assert!(std::time::Instant::now() < deadline, "no pid file");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let second_socket = dir.join("second.sock");
    let message = refused(&[
        "--no-machine",
        "--qmp",
        second_socket.to_str().unwrap(),
        "--pidfile",
        pid_file.to_str().unwrap(),
    ]);
    assert!(
        message.contains(&format!(
            "--pidfile {}: in use by a running process (pid {})",
            pid_file.display(),
            first_pid
        )),
        "{message}"
    );
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap(),
        format!("{first_pid}\n")
    );
    papervisor_tests::send_signal(u64::from(first_pid), nix::sys::signal::Signal::SIGTERM);
    assert!(first.0.wait().unwrap().success());
    assert!(!pid_file.exists(), "the pid file outlived its VM");
    let _ = std::fs::remove_dir_all(dir);
}
