//! What confines a VM on its host: an identity of its own for its device
//! processes, memory no other process of that identity can read, sealed guest
//! RAM, and nothing left behind however the VM ends. These need root (the
//! jail, switching to a VM's uid) and /dev/kvm; they say so when skipped.

use papervisor_tests::{root_and_kvm, runs, send_signal, Vm};
use serde_json::json;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Where the VMs' runtime directories are (the default `--jail-dir`).
const RUN_BASE: &str = "/run/papervisor";

fn ids(pid: u64) -> (u32, u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let id = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|id| id.parse().ok())
            .unwrap()
    };
    (id("Uid:"), id("Gid:"))
}

/// Starts a VM with `args` that must be refused before anything starts:
/// its stderr. One still running after 20 s is killed, and the test fails
/// with `started`.
fn refused_at_start(args: &[&str], started: &str) -> String {
    let mut vm = Command::new(papervisor_tests::binary("papervisor"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = vm.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = vm.kill();
            let _ = vm.wait();
            panic!("{started}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut vm.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{started}");
    stderr
}

/// Whether a shell running as `uid`/`gid` can open `path` for reading.
fn can_open_as(uid: u32, gid: u32, path: &str) -> bool {
    let output = Command::new("sh")
        .args(["-c", &format!("exec 3< {path} && echo opened")])
        .uid(uid)
        .gid(gid)
        .output()
        .expect("run sh");
    String::from_utf8_lossy(&output.stdout).contains("opened")
}

#[test]
fn two_vms_have_ids_of_their_own_and_nobody_reads_a_device_processs_memory() {
    if papervisor_tests::skip_in_process(
        "two_vms_have_ids_of_their_own_and_nobody_reads_a_device_processs_memory",
        "it checks the device processes' uids and memory",
    ) {
        return;
    }
    if !root_and_kvm("two_vms_have_ids_of_their_own_and_nobody_reads_a_device_processs_memory") {
        return;
    }
    let mut a = Vm::start(&[]);
    let mut b = Vm::start(&[]);
    a.boot();
    b.boot();
    let rtas = |vm: &Vm| vm.device_process("rtas-server")["pid"].as_u64().unwrap();
    let (uid_a, gid_a) = ids(rtas(&a));
    let (uid_b, _) = ids(rtas(&b));
    assert_ne!(uid_a, uid_b, "two VMs share a device uid");
    assert_ne!(uid_a, 0);
    // The method works: a process of that uid opens its own memory...
    assert!(can_open_as(uid_a, gid_a, "/proc/self/mem"));
    // ...but not the other VM's device processes', nor its own VM's: they
    // are non-dumpable. (The RTAS server maps the guest's RAM.)
    assert!(!can_open_as(
        uid_a,
        gid_a,
        &format!("/proc/{}/mem", rtas(&b))
    ));
    for kind in ["rtas-server", "hotplug-controller", "event-log"] {
        let pid = a.device_process(kind)["pid"].as_u64().unwrap();
        assert!(
            !can_open_as(uid_a, gid_a, &format!("/proc/{pid}/mem")),
            "VM A's uid reads its own {kind}'s memory"
        );
    }
    // Nor the core's.
    assert!(!can_open_as(
        uid_a,
        gid_a,
        &format!("/proc/{}/mem", a.pid())
    ));
    // A uid in use is refused to the next VM, before anything starts.
    let taken = uid_a.to_string();
    let console = std::env::temp_dir().join(format!("pv-uid-{}.sock", std::process::id()));
    let stderr = refused_at_start(
        &["--uid", &taken, "--console", &console.display().to_string()],
        &format!("a VM started with uid {taken}, which another VM holds"),
    );
    assert!(
        stderr.contains(&format!("uid {taken} is in use")),
        "{stderr}"
    );
}

#[test]
fn guest_ram_cannot_be_grown_through_its_memfd() {
    if !root_and_kvm("guest_ram_cannot_be_grown_through_its_memfd") {
        return;
    }
    let mut vm = Vm::start(&["--memory", "size=512M"]);
    vm.boot();
    // The RTAS server's mapping of guest RAM: the memfd it was handed.
    let rtas = vm.device_process("rtas-server")["pid"].as_u64().unwrap();
    let fd = std::fs::read_dir(format!("/proc/{rtas}/fd"))
        .unwrap()
        .flatten()
        .find(|entry| {
            std::fs::read_link(entry.path())
                .is_ok_and(|target| target.to_string_lossy().contains("memfd:papervisor-ram"))
        })
        .expect("the RTAS server holds the guest RAM memfd");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(fd.path())
        .unwrap();
    use std::os::unix::fs::FileExt;
    assert!(
        file.write_at(b"x", 512 << 20).is_err(),
        "a write grew guest RAM"
    );
    assert!(file.set_len(768 << 20).is_err(), "guest RAM grew");
    assert!(file.set_len(256 << 20).is_err(), "guest RAM shrank");
    assert_eq!(file.metadata().unwrap().len(), 512 << 20);
    assert_eq!(vm.console.command("cpus"), ["cpu 0 online"]);
}

#[test]
fn sigterm_ends_the_vm_like_quit_and_leaves_nothing_behind() {
    ends_like_quit(
        "sigterm_ends_the_vm_like_quit_and_leaves_nothing_behind",
        nix::sys::signal::Signal::SIGTERM,
    );
}

/// SIGHUP is what a closed terminal sends to a VM on a stdio console: the
/// VM ends cleanly, as QEMU does. SIGUSR1, SIGUSR2 and SIGALRM, whose
/// default would end the core outright, are ignored.
#[test]
fn sighup_ends_the_vm_like_quit_and_usr1_usr2_alrm_are_ignored() {
    ends_like_quit(
        "sighup_ends_the_vm_like_quit_and_usr1_usr2_alrm_are_ignored",
        nix::sys::signal::Signal::SIGHUP,
    );
}

fn ends_like_quit(test: &str, signal: nix::sys::signal::Signal) {
    if papervisor_tests::skip_in_process(
        test,
        "it checks the jails' runtime directory, which an unjailed VM has not",
    ) {
        return;
    }
    if !root_and_kvm(test) {
        return;
    }
    let mut vm = Vm::start(&[]);
    vm.boot();
    let core = vm.pid();
    use nix::sys::signal::Signal::{SIGALRM, SIGUSR1, SIGUSR2};
    for ignored in [SIGUSR1, SIGUSR2, SIGALRM] {
        send_signal(u64::from(core), ignored);
    }
    assert_eq!(vm.console.command("cpus"), ["cpu 0 online"]);
    assert_eq!(vm.qmp(&["query-status"])[0]["return"]["status"], "running");
    let run_dir = Path::new(RUN_BASE).join(format!("vm-{core}"));
    assert!(
        run_dir.join("jails").exists(),
        "{} missing",
        run_dir.display()
    );
    let devices = vm.device_pids();
    let signaller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        send_signal(u64::from(core), signal);
    });
    let replies = vm.qmp(&["query-status", "wait-event:SHUTDOWN"]);
    signaller.join().unwrap();
    assert_eq!(
        replies[1]["data"],
        json!({"guest": false, "reason": "host-signal"})
    );
    assert!(vm.wait_exit(Duration::from_secs(30)).success());
    assert!(!run_dir.exists(), "{} stayed", run_dir.display());
    assert!(!vm.qmp_socket().exists(), "the QMP socket stayed");
    // Killed, then reaped (by init once the core is gone).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for pid in devices {
        while Path::new(&format!("/proc/{pid}")).exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "device process {pid} outlived its VM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn a_killed_vms_directory_is_removed_when_the_next_vm_starts() {
    if papervisor_tests::skip_in_process(
        "a_killed_vms_directory_is_removed_when_the_next_vm_starts",
        "it checks the jails' runtime directory, which an unjailed VM has not",
    ) {
        return;
    }
    if !root_and_kvm("a_killed_vms_directory_is_removed_when_the_next_vm_starts") {
        return;
    }
    // A base of their own: the other tests' VMs, which start meanwhile,
    // remove the dead VMs' directories of theirs.
    let scratch = papervisor_tests::scratch_dir();
    let base = scratch.join("run").display().to_string();
    let mut first = Vm::start(&["--jail-dir", &base]);
    first.boot();
    let run_dir = Path::new(&base).join(format!("vm-{}", first.pid()));
    send_signal(u64::from(first.pid()), nix::sys::signal::Signal::SIGKILL);
    first.wait_exit(Duration::from_secs(10));
    assert!(run_dir.exists(), "nothing could remove it yet");
    let mut next = Vm::start(&["--jail-dir", &base]);
    next.boot();
    assert!(
        !run_dir.exists(),
        "{} outlived the next start",
        run_dir.display()
    );
    drop(next);
    let _ = std::fs::remove_dir_all(scratch);
}

/// One field of a thread's status, e.g. `CapEff`.
fn task_field(status: &str, field: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {field}"))
}

/// The capabilities the spawner process keeps (README): CAP_KILL (5),
/// CAP_SETGID (6), CAP_SETUID (7), CAP_SETPCAP (8), CAP_SYS_ADMIN (21).
const SPAWNER_CAPS: &str = "00000000002001e0";

/// No thread of the core holds a capability, and every one runs under a
/// filter, while a core and a DIMM are hot-plugged; what starting jails
/// needs is the spawner's, a process of its own, filtered too.
#[test]
fn every_thread_of_the_core_is_filtered_and_unprivileged() {
    if !root_and_kvm("every_thread_of_the_core_is_filtered_and_unprivileged") {
        return;
    }
    let mut vm = Vm::start(&[
        "--smp",
        "cpus=1,maxcpus=4",
        "--memory",
        "size=512M,maxmem=2G,slots=2",
    ]);
    vm.boot();
    // A core and a DIMM are being hot-plugged: their vCPU thread, the
    // proxies and the control loop are busy.
    let qmp_path = vm.qmp_socket();
    let plugging = std::thread::spawn(move || {
        let mut qmp = papervisor_tests::QmpClient::connect(&qmp_path);
        let backend = json!({"qom-type": "memory-backend-memfd", "id": "m0", "size": 268435456});
        assert_eq!(qmp.execute("object-add", backend), json!({"return": {}}));
        let dimm = json!({"driver": "pc-dimm", "id": "d0", "memdev": "m0"});
        assert_eq!(qmp.execute("device_add", dimm), json!({"return": {}}));
    });
    vm.plug_core(1, "c1");
    plugging.join().unwrap();
    let core = vm.pid();
    let mut seen = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{core}/task"))
        .unwrap()
        .flatten()
    {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue; // a thread that just ended
        };
        let name = task_field(&status, "Name");
        for set in ["CapEff", "CapPrm", "CapBnd"] {
            assert_eq!(
                task_field(&status, set),
                "0000000000000000",
                "{name}: {set}"
            );
        }
        assert_eq!(task_field(&status, "CapInh"), "0000000000000000", "{name}");
        assert_eq!(task_field(&status, "CapAmb"), "0000000000000000", "{name}");
        assert_eq!(task_field(&status, "NoNewPrivs"), "1", "{name}");
        assert_eq!(task_field(&status, "Seccomp"), "2", "{name}");
        // Children are waited for through pidfds; a stray SIGCHLD must
        // never interrupt a thread's timed read.
        assert!(
            blocks(&status, nix::sys::signal::Signal::SIGCHLD),
            "{name}: SigBlk {}",
            task_field(&status, "SigBlk")
        );
        seen.push(name);
    }
    for name in [
        "vcpu0",
        "vcpu1",
        "qmp-accept",
        "console-accept",
        "hotplug-notify",
    ] {
        assert!(
            seen.iter().any(|s| s == name),
            "no {name} thread in {seen:?}"
        );
    }
    assert!(
        !seen.iter().any(|s| s == "spawner"),
        "a spawner thread in {seen:?}"
    );
    let children = vm.children();
    if papervisor_tests::in_process() {
        // The devices are threads, checked above like every other: each
        // under its filter, without a capability.
        for name in [
            "rtas-server",
            "hotplug-control",
            "event-log",
            "device-starter",
        ] {
            assert!(seen.iter().any(|s| s == name), "no {name} in {seen:?}");
        }
        assert_eq!(vm.spawner(), None, "no spawner in-process");
        assert_eq!(children, [], "no device process in-process");
        return;
    }
    // The spawner: the jailer's capabilities only, its own filter.
    let spawner = vm.spawner().expect("a spawner process");
    let status = std::fs::read_to_string(format!("/proc/{spawner}/status")).unwrap();
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(task_field(&status, set), SPAWNER_CAPS, "spawner: {set}");
    }
    assert_eq!(task_field(&status, "CapAmb"), "0000000000000000");
    assert_eq!(task_field(&status, "NoNewPrivs"), "1");
    assert_eq!(task_field(&status, "Seccomp"), "2");
    // The rest of the tree, the spawner's children: the three device
    // processes, the reaper and the standbys (each waits, jailed, to be the
    // next of its kind), none privileged, each filtered.
    for pid in vm.device_pids() {
        assert!(
            children.iter().any(|(child, _)| u64::from(*child) == pid),
            "{children:?}"
        );
    }
    let reapers = children
        .iter()
        .filter(|(_, name)| papervisor_tests::is_reaper(name));
    assert_eq!(reapers.count(), 1, "{children:?}");
    for (pid, name) in children {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert_eq!(task_field(&status, "Seccomp"), "2", "{name}");
        assert_eq!(task_field(&status, "NoNewPrivs"), "1", "{name}");
        assert_ne!(
            task_field(&status, "Uid").split_whitespace().next(),
            Some("0"),
            "{name}"
        );
        assert_eq!(task_field(&status, "CapEff"), "0000000000000000", "{name}");
        assert_eq!(task_field(&status, "CapBnd"), "0000000000000000", "{name}");
        // The core's blocked signals are not passed on.
        assert_eq!(task_field(&status, "SigBlk"), "0000000000000000", "{name}");
    }
}

/// Whether the `SigBlk` mask of a status file holds `signal`.
fn blocks(status: &str, signal: nix::sys::signal::Signal) -> bool {
    let mask = u64::from_str_radix(&task_field(status, "SigBlk"), 16).expect("a hex mask");
    mask & (1 << (signal as i32 - 1)) != 0
}

/// Ids are claimed in one place of the host: VMs with runtime directories
/// of their own, started together, never share a uid or a gid, and another
/// VM's gid is refused as `--gid`.
#[test]
fn vms_with_other_jail_dirs_never_share_a_uid_or_a_gid() {
    if papervisor_tests::skip_in_process(
        "vms_with_other_jail_dirs_never_share_a_uid_or_a_gid",
        "it checks the device processes' uids",
    ) {
        return;
    }
    if !root_and_kvm("vms_with_other_jail_dirs_never_share_a_uid_or_a_gid") {
        return;
    }
    let base = papervisor_tests::scratch_dir();
    let jail_dir = |name: &str| base.join(name).display().to_string();
    let (dir_a, dir_b, dir_c) = (jail_dir("a"), jail_dir("b"), jail_dir("c"));
    let mut a = Vm::start(&["--jail-dir", &dir_a]);
    let mut b = Vm::start(&["--jail-dir", &dir_b]);
    a.boot();
    b.boot();
    let rtas = |vm: &Vm| vm.device_process("rtas-server")["pid"].as_u64().unwrap();
    let (uid_a, gid_a) = ids(rtas(&a));
    let (uid_b, gid_b) = ids(rtas(&b));
    assert_ne!(uid_a, uid_b, "two VMs share a device uid");
    assert_ne!(gid_a, gid_b, "two VMs share a device gid");
    // Another VM's gid, under a uid nobody holds: refused before anything starts.
    let console = base.join("c.sock");
    let stderr = refused_at_start(
        &[
            "--uid",
            "1900065000",
            "--gid",
            &gid_a.to_string(),
            "--jail-dir",
            &dir_c,
            "--console",
            &console.display().to_string(),
        ],
        &format!("a VM started with VM A's gid {gid_a}"),
    );
    assert!(
        stderr.contains(&format!("gid {gid_a} is in use")),
        "{stderr}"
    );
    drop(a);
    drop(b);
    let _ = std::fs::remove_dir_all(base);
}

/// When the core dies (SIGKILL), every process of its VM goes with it: a
/// stopped RTAS server (which maps guest RAM) and a hung event log too.
#[test]
fn stopped_and_hung_device_processes_do_not_outlive_a_killed_core() {
    if papervisor_tests::skip_in_process(
        "stopped_and_hung_device_processes_do_not_outlive_a_killed_core",
        "it stops and hangs device processes",
    ) {
        return;
    }
    if !root_and_kvm("stopped_and_hung_device_processes_do_not_outlive_a_killed_core") {
        return;
    }
    let mut vm = Vm::start(&[]);
    vm.boot();
    let reapers = |vm: &Vm| -> Vec<u64> { vm.reapers().into_iter().map(u64::from).collect() };
    // A reaper that dies (an operator's kill) is replaced, and the new one
    // holds the processes already running.
    let first = reapers(&vm);
    if let [reaper] = first[..] {
        send_signal(reaper, nix::sys::signal::Signal::SIGKILL);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while reapers(&vm).iter().all(|pid| *pid == reaper) {
            assert!(std::time::Instant::now() < deadline, "no new reaper");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let pids = vm.device_pids();
    let rtas = vm.device_process("rtas-server")["pid"].as_u64().unwrap();
    send_signal(rtas, nix::sys::signal::Signal::SIGSTOP);
    let hang = vm.qmp(&[
        r#"x-inject-fault={"process": "event-log", "point": "received", "action": "hang"}"#,
    ]);
    assert_eq!(hang[0]["return"], json!({"armed": true}));
    // A request the event log receives, and hangs in.
    let qmp_path = vm.qmp_socket();
    let _asking = std::thread::spawn(move || {
        let mut qmp = papervisor_tests::QmpClient::connect(&qmp_path);
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            qmp.execute("x-query-event-log", json!({}))
        }));
    });
    std::thread::sleep(Duration::from_millis(500));
    let helpers = reapers(&vm);
    let spawner = u64::from(vm.spawner().expect("a spawner"));
    // Everything the spawner started: device processes, reaper, standbys.
    let started: Vec<u64> = vm
        .children()
        .iter()
        .map(|(pid, _)| u64::from(*pid))
        .collect();
    send_signal(u64::from(vm.pid()), nix::sys::signal::Signal::SIGKILL);
    assert!(!vm.wait_exit(Duration::from_secs(10)).success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for pid in pids
        .iter()
        .chain(&helpers)
        .chain(&started)
        .chain([&spawner])
    {
        while runs(*pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "process {pid} of a killed VM still runs"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Its (second) reaper did it, and went too.
    assert_eq!((first.len(), helpers.len()), (1, 1), "one reaper at a time");
    // The next VM starts on a host with nothing of the old one running.
    let mut next = Vm::start(&[]);
    next.boot();
    assert!(pids.iter().all(|pid| !runs(*pid)));
}

/// With `--jail off` (debugging) the device processes run as root, so the
/// reaper stays root to signal them, with CAP_KILL alone, under its filter.
#[test]
fn an_unjailed_vms_reaper_keeps_only_cap_kill() {
    if papervisor_tests::skip_in_process(
        "an_unjailed_vms_reaper_keeps_only_cap_kill",
        "there is no device process to reap",
    ) {
        return;
    }
    if !root_and_kvm("an_unjailed_vms_reaper_keeps_only_cap_kill") {
        return;
    }
    let mut vm = Vm::start(&["--jail", "off"]);
    vm.boot();
    let reapers = vm.reapers();
    assert_eq!(reapers.len(), 1, "{:?}", vm.children());
    let status = std::fs::read_to_string(format!("/proc/{}/status", reapers[0])).unwrap();
    // CAP_KILL is capability 5.
    let cap_kill = format!("{:016x}", 1u64 << 5);
    assert_eq!(task_field(&status, "CapEff"), cap_kill);
    assert_eq!(task_field(&status, "CapPrm"), cap_kill);
    assert_eq!(task_field(&status, "CapBnd"), "0000000000000000");
    assert_eq!(task_field(&status, "Seccomp"), "2");
    assert_eq!(task_field(&status, "NoNewPrivs"), "1");
}

/// What each descriptor of `pid` is (`socket:[N]`, a path, ...).
fn descriptor_targets(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| std::fs::read_link(entry.path()).ok())
                .map(|target| target.display().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn only_the_spawner_holds_its_end_of_the_cores_link() {
    let name = "only_the_spawner_holds_its_end_of_the_cores_link";
    if papervisor_tests::skip_in_process(name, "in-process devices have no spawner") {
        return;
    }
    if !root_and_kvm(name) {
        return;
    }
    let mut vm = Vm::start(&[]);
    vm.boot();
    let spawner = vm.spawner().expect("the spawner runs");
    // Its requests and events sockets (descriptors 3 and 4): a process
    // holding either could answer or report in the spawner's name.
    let ends: Vec<String> = [3, 4]
        .iter()
        .map(|fd| {
            std::fs::read_link(format!("/proc/{spawner}/fd/{fd}"))
                .expect("the spawner's sockets")
                .display()
                .to_string()
        })
        .collect();
    assert!(
        ends.iter().all(|end| end.starts_with("socket:")),
        "{ends:?}"
    );
    // Every process the spawner started: device processes, standbys
    // (they come a moment after the boot), the reaper.
    std::thread::sleep(Duration::from_millis(300));
    let started = vm.children();
    assert!(started.len() >= 4, "{started:?}");
    for (pid, process) in started {
        let held: Vec<String> = descriptor_targets(pid)
            .into_iter()
            .filter(|target| ends.contains(target))
            .collect();
        assert!(held.is_empty(), "{process} (pid {pid}) holds {held:?}");
    }
    vm.console.send_line("poweroff");
    vm.wait_exit(Duration::from_secs(30));
}
