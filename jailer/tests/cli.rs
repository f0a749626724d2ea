//! The jailer binary's command line and one jailed run.

use std::process::Command;

fn jailer(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_jailer"))
        .args(args)
        .output()
        .expect("run the jailer")
}

fn refused(args: &[&str], named: &str) {
    let output = jailer(args);
    assert_eq!(output.status.code(), Some(2), "{args:?}: {output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("jailer: ") && stderr.contains(named),
        "{args:?}: {stderr}"
    );
}

#[test]
fn bad_arguments_are_refused_before_anything_is_done() {
    let exe = env!("CARGO_BIN_EXE_jailer");
    refused(
        &["--id", "bad/id", "--exec-file", exe],
        "invalid --id 'bad/id'",
    );
    refused(&["--id", "", "--exec-file", exe], "invalid --id");
    refused(
        &["--id", "a", "--exec-file", "/no/such/program"],
        "--exec-file /no/such/program",
    );
    refused(
        &["--id", "a", "--exec-file", exe, "--uid", "0"],
        "invalid --uid 0",
    );
    refused(
        &["--id", "a", "--exec-file", exe, "--uid", "nobody"],
        "nobody",
    );
    refused(&["--id", "a", "--exec-file", exe, "--gid", "-5"], "-5");
    refused(
        &[
            "--id",
            "a",
            "--exec-file",
            exe,
            "--resource-limit",
            "as=lots",
        ],
        "as=lots",
    );
    refused(
        &["--id", "a", "--exec-file", exe, "--cgroup", "../../etc=1"],
        "--cgroup",
    );
    refused(
        &["--id", "a", "--exec-file", exe, "--chroot-base-dir", "rel"],
        "absolute",
    );
    refused(&["--exec-file", exe], "--id");
    if !std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        // No cgroup v2 here: asking for cgroup settings is a clear error.
        refused(
            &["--id", "a", "--exec-file", exe, "--cgroup", "pids.max=1"],
            "cgroup v2",
        );
    }
}

#[test]
fn a_static_program_runs_jailed_is_reported_and_the_jailer_does_not_stay() {
    use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    if !nix_is_root() {
        eprintln!("SKIPPED a_static_program_runs_jailed_is_reported_and_the_jailer_does_not_stay: needs root");
        return;
    }
    // The program is reparented to this test when the jailer exits.
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let (ours, theirs) = nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::SeqPacket,
        None,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    // This test binary is itself static: `--list` prints and exits 0.
    let me = std::env::current_exe().unwrap();
    let me = me.to_str().unwrap();
    let base = std::env::temp_dir().join(format!("jailer-cli-{}", std::process::id()));
    let base = base.to_str().unwrap();
    let report = theirs.as_fd().as_raw_fd();
    let mut command = Command::new(env!("CARGO_BIN_EXE_jailer"));
    command.args([
        "--id",
        "cli-test",
        "--exec-file",
        me,
        "--chroot-base-dir",
        base,
        "--report-fd",
        "3",
        "--",
        "--list",
    ]);
    // SAFETY: dup2 is async-signal-safe and touches only the child's table.
    unsafe {
        command.pre_exec(move || match nix::libc::dup2(report, 3) {
            -1 => Err(std::io::Error::last_os_error()),
            _ => Ok(()),
        });
    }
    let output = command.output().expect("run the jailer");
    drop(theirs);
    // The jailer ended once the program ran; the output is the program's.
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("bad_arguments_are_refused"));
    // The report: the program's pid and a pidfd, through which it is waited for.
    let mut bytes = [0u8; 4];
    let mut control = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let mut iov = [std::io::IoSliceMut::new(&mut bytes)];
    let message = nix::sys::socket::recvmsg::<()>(
        ours.as_raw_fd(),
        &mut iov,
        Some(&mut control),
        nix::sys::socket::MsgFlags::empty(),
    )
    .unwrap();
    let pidfd = message
        .cmsgs()
        .unwrap()
        .find_map(|cmsg| match cmsg {
            nix::sys::socket::ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
            _ => None,
        })
        .expect("a pidfd in the report");
    assert_eq!(message.bytes, 4);
    // SAFETY: the kernel just installed this descriptor for us.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let pid = u32::from_le_bytes(bytes);
    let status = rustix::process::waitid(
        rustix::process::WaitId::PidFd(pidfd.as_fd()),
        rustix::process::WaitIdOptions::EXITED,
    )
    .unwrap()
    .expect("a status");
    assert_eq!(status.exit_status(), Some(0), "program {pid}");

    // A program that needs a dynamic loader cannot run in the empty root.
    let output = jailer(&[
        "--id",
        "cli-test-2",
        "--exec-file",
        "/bin/true",
        "--chroot-base-dir",
        base,
    ]);
    assert_eq!(output.status.code(), Some(127), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("exec the program"));
    let _ = std::fs::remove_dir_all(base);
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}
