//! A user with access to /dev/kvm and no other privilege runs a VM whose
//! device processes are jailed (in user namespaces) and filtered, and whose
//! core holds no capability. These run only as a user other than root (CI
//! runs them so, see .ci/run); as root they say loudly that they are skipped.

use papervisor_tests::{kvm_usable, Vm};

fn unprivileged(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        papervisor_tests::say_skipped(&format!(
            "SKIPPED {test}: runs only as a user other than root (see .ci/run)"
        ));
        return false;
    }
    kvm_usable(test)
}

fn field(pid: u32, task: Option<&str>, name: &str) -> String {
    let path = match task {
        Some(tid) => format!("/proc/{pid}/task/{tid}/status"),
        None => format!("/proc/{pid}/status"),
    };
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{path}: {error}"))
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("{path} has no {name}"))
}

#[test]
fn a_user_with_kvm_access_runs_a_vm_with_jailed_device_processes() {
    if !unprivileged("a_user_with_kvm_access_runs_a_vm_with_jailed_device_processes") {
        return;
    }
    let mut vm = Vm::start(&["--smp", "cpus=2"]);
    let banner = vm.boot();
    assert!(banner.contains("smp: 2 of 2 cpus online"), "{banner}");
    // RTAS goes through the jailed RTAS server.
    assert!(vm.console.command("time")[0].starts_with("time: 20"));
    assert_eq!(vm.console.command("cpu offline 1"), ["cpu 1 offline"]);
    assert_eq!(vm.console.command("cpu online 1"), ["cpu 1 online"]);
    let core = vm.pid();
    let me = nix::unistd::geteuid().as_raw().to_string();
    let (reapers, children): (Vec<_>, Vec<_>) = vm
        .children()
        .into_iter()
        .partition(|(_, name)| papervisor_tests::is_reaper(name));
    // The device processes, and standbys that wait to be the next of their
    // kind: each jailed alike. (This user has no QMP client to ask which
    // is which: each of the three kinds runs.)
    for name in ["papervisor-rtas", "papervisor-hotp", "papervisor-even"] {
        assert!(
            children.iter().any(|(_, child)| child == name),
            "no {name} in {children:?}"
        );
    }
    // The reaper: this user's, filtered, without privileges.
    assert_eq!(reapers.len(), 1, "{reapers:?}");
    for (pid, name) in &reapers {
        assert_eq!(field(*pid, None, "Seccomp"), "2", "{name}");
        assert_eq!(field(*pid, None, "NoNewPrivs"), "1", "{name}");
        assert_eq!(field(*pid, None, "CapEff"), "0000000000000000", "{name}");
    }
    for (pid, name) in &children {
        assert!(name.starts_with("papervisor-"), "{name}");
        assert_eq!(field(*pid, None, "Seccomp"), "2", "{name}");
        assert_eq!(field(*pid, None, "NoNewPrivs"), "1", "{name}");
        assert_eq!(field(*pid, None, "CapEff"), "0000000000000000", "{name}");
        // This user's uid outside, 65534 inside a user namespace of its own,
        // and pid 1 of a PID namespace of its own, with an empty root.
        assert_eq!(
            field(*pid, None, "Uid").split_whitespace().next(),
            Some(me.as_str())
        );
        let uid_map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
        let uid_map: Vec<&str> = uid_map.split_whitespace().collect();
        assert_eq!(uid_map, ["65534", me.as_str(), "1"], "{name}");
        let nspid = field(*pid, None, "NSpid");
        assert_eq!(
            nspid.split_whitespace().last(),
            Some("1"),
            "{name}: {nspid}"
        );
        let root: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/root"))
            .unwrap()
            .collect();
        assert!(root.is_empty(), "{name} sees its host's files");
        // Non-dumpable: not even this user reads its memory.
        assert!(
            std::fs::File::open(format!("/proc/{pid}/mem")).is_err(),
            "{name}: this user reads its memory"
        );
    }
    // Without root the spawner is this user's too, unprivileged, filtered.
    let spawner = vm.spawner().expect("a spawner process");
    assert_eq!(field(spawner, None, "Seccomp"), "2");
    assert_eq!(field(spawner, None, "NoNewPrivs"), "1");
    assert_eq!(field(spawner, None, "CapEff"), "0000000000000000");
    assert_eq!(
        field(spawner, None, "Uid").split_whitespace().next(),
        Some(me.as_str())
    );
    // The core: no capability anywhere, every thread filtered.
    for task in std::fs::read_dir(format!("/proc/{core}/task"))
        .unwrap()
        .flatten()
    {
        let tid = task.file_name().to_string_lossy().into_owned();
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let name = status.lines().next().unwrap_or_default().to_string();
        assert_eq!(
            field(core, Some(&tid), "CapEff"),
            "0000000000000000",
            "{name}"
        );
        assert_eq!(field(core, Some(&tid), "NoNewPrivs"), "1", "{name}");
        assert_eq!(field(core, Some(&tid), "Seccomp"), "2", "{name}");
    }
    vm.console.send_line("poweroff");
    vm.console
        .read_until("powering off\n", papervisor_tests::COMMAND_TIMEOUT);
    assert!(vm.wait_exit(std::time::Duration::from_secs(30)).success());
}
