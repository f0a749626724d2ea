//! A disk as the guest uses it: its virtio-blk driver, through the PCI
//! host bridge's configuration calls and BARs, starts the queue; requests
//! then go guest → KVM (ioeventfd) → block process → KVM (irqfd) → guest.
//! What the guest writes is in the image on the host, what the host wrote
//! the guest reads; a busy disk is removed all the same; a reset starts
//! the disk again. Need /dev/kvm.

use papervisor_tests::disks::{image, ok, sectors_of_pattern, wait_until, SECTOR};
use papervisor_tests::{in_process, kvm_usable, QmpClient, Vm};
use serde_json::json;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

const MIB: u64 = 1 << 20;
const SECTORS_64MIB: u64 = 64 * MIB / SECTOR;
const ADDED: &str = "dlpar: pci add 0x40000018: ok";

/// Spots across a 64 MiB disk, the last ending at its last sector.
fn spots() -> Vec<u64> {
    (0..8)
        .map(|k| k * (SECTORS_64MIB / 8) + k * 3)
        .chain([SECTORS_64MIB - 16])
        .collect()
}

fn add_disk(vm: &mut Vm, qmp: &mut QmpClient, path: &Path, read_only: bool) {
    assert_eq!(
        qmp.execute(
            "blockdev-add",
            json!({"driver": "file", "node-name": "disk0", "filename": path, "read-only": read_only}),
        ),
        ok()
    );
    assert_eq!(
        qmp.execute(
            "device_add",
            json!({"driver": "virtio-blk-pci", "id": "vd0", "drive": "disk0", "addr": "3"}),
        ),
        ok()
    );
    vm.console.expect_async(ADDED, Duration::from_secs(60));
}

/// Runs `command` on the guest's console: its one line of output must be
/// `expected`.
fn answers(vm: &mut Vm, command: &str, expected: &str) {
    assert_eq!(vm.console.command(command), [expected], "{command}");
}

/// A VM with `count` 64 MiB disks present at boot (`vd<n>` in slot 3 + n,
/// on node `disk<n>`), booted.
fn boot_with_disks(scratch: &Path, count: u8) -> Vm {
    let slots: Vec<u8> = (0..count).map(|n| 3 + n).collect();
    let args = papervisor_tests::disks::cold_plugged_disks(scratch, &slots);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut vm = Vm::start(&args);
    vm.boot();
    vm
}

/// A booted VM whose runtime directories are under `run`, with a 64 MiB
/// disk hot-added (vd0 in slot 3) and taken by the guest: the VM, its QMP
/// client, the disk's image.
fn hot_added_disk(scratch: &Path, run: &Path) -> (Vm, QmpClient, std::path::PathBuf) {
    let run_arg = run.display().to_string();
    let mut vm = Vm::start(&["--jail-dir", &run_arg]);
    vm.boot();
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    let path = image(scratch, "disk0.raw", 64 * MIB);
    add_disk(&mut vm, &mut qmp, &path, false);
    (vm, qmp, path)
}

fn block_pids(qmp: &mut QmpClient) -> Vec<u64> {
    qmp.execute("x-query-device-processes", json!({}))["return"]
        .as_array()
        .expect("a process list")
        .iter()
        .filter(|row| row["kind"] == "block")
        .filter_map(|row| row["pid"].as_u64())
        .collect()
}

/// Removes vd0 with the guest's agent running: `DEVICE_DELETED`, its block
/// process gone, nothing of it left in the runtime directory.
fn remove_disk(vm: &mut Vm, qmp: &mut QmpClient, run: &Path, removed: &str) {
    let pids = block_pids(qmp);
    assert_eq!(pids.len(), 1);
    assert_eq!(qmp.execute("device_del", json!({"id": "vd0"})), ok());
    vm.console.expect_async(removed, Duration::from_secs(60));
    assert_eq!(
        qmp.wait_event("DEVICE_DELETED")["data"],
        json!({"device": "vd0", "path": "/machine/peripheral/vd0"})
    );
    assert!(block_pids(qmp).is_empty());
    if !in_process() {
        wait_until("the block process ends", || {
            !Path::new(&format!("/proc/{}", pids[0])).exists()
        });
    }
    let leftovers: Vec<_> = std::fs::read_dir(run.join(format!("vm-{}", vm.pid())))
        .expect("the runtime directory")
        .flatten()
        .map(|entry| entry.file_name())
        .filter(|name| name.to_string_lossy().starts_with("block-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn the_guest_writes_a_pattern_across_a_hot_added_disk_that_the_image_holds_and_reads_the_hosts() {
    if !kvm_usable("the_guest_writes_a_pattern_across_a_hot_added_disk_that_the_image_holds_and_reads_the_hosts") {
        return;
    }
    let scratch = papervisor_tests::scratch_dir();
    let run = scratch.join("run");
    let (mut vm, mut qmp, path) = hot_added_disk(&scratch, &run);
    assert_eq!(
        vm.console.command("blk"),
        [format!("blk 0: {SECTORS_64MIB} sectors")]
    );
    answers(
        &mut vm,
        "pci",
        "pci 0x40000018 00:03.0 1af4:1042 virtio-blk",
    );

    // The benchmark's requests (the isolation bench's guest rows), before
    // the pattern: the writes land anywhere.
    for kind in ["blk-null", "blk-read", "blk-write"] {
        let bench = vm.console.command(&format!("bench {kind} 20"));
        assert!(
            bench[0].starts_with("bench: 20 calls, tsc total "),
            "{bench:?}"
        );
    }
    for &sector in &spots() {
        answers(
            &mut vm,
            &format!("blk write 0 {sector} 16 7"),
            "blk write: 16 sectors",
        );
    }
    for &sector in &spots() {
        answers(
            &mut vm,
            &format!("blk check 0 {sector} 16 7"),
            "blk check: 16 sectors, ok",
        );
    }
    // Another seed is another pattern: the check can fail.
    answers(
        &mut vm,
        "blk check 0 0 4 8",
        "blk check: mismatch at sector 0",
    );
    assert_eq!(
        vm.console
            .command(&format!("blk write 0 {} 1 7", SECTORS_64MIB)),
        ["blk write: past the end of the disk"]
    );
    // The completions came as interrupts, through the queue's irqfd.
    let irqs = vm.console.command("blk irqs 0");
    let count: u64 = irqs[0]
        .strip_prefix("blk irqs: ")
        .and_then(|n| n.parse().ok())
        .expect("a count");
    assert!(count > 0, "{irqs:?}");

    // The image holds what the guest wrote, where it wrote it.
    let file = std::fs::File::open(&path).expect("the image");
    for &sector in &spots() {
        let mut bytes = vec![0; 16 * SECTOR as usize];
        file.read_exact_at(&mut bytes, sector * SECTOR)
            .expect("the sectors");
        assert!(
            bytes == sectors_of_pattern(sector, 16, 7),
            "sector {sector} of the image holds the guest's pattern"
        );
    }
    // And the guest reads what the host writes.
    let writer = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("the image");
    writer
        .write_all_at(&sectors_of_pattern(1000, 8, 99), 1000 * SECTOR)
        .expect("the host's sectors");
    answers(&mut vm, "blk check 0 1000 8 99", "blk check: 8 sectors, ok");

    remove_disk(&mut vm, &mut qmp, &run, "dlpar: pci remove 0x40000018: ok");
    answers(&mut vm, "blk", "blk: no disks");
    answers(&mut vm, "blk check 0 0 1 7", "blk check: no disk 0");
    drop(qmp);
    drop(vm);
    let _ = std::fs::remove_dir_all(scratch);
}

#[test]
fn a_read_only_node_refuses_the_guests_writes_with_the_virtio_status() {
    if !kvm_usable("a_read_only_node_refuses_the_guests_writes_with_the_virtio_status") {
        return;
    }
    let scratch = papervisor_tests::scratch_dir();
    let mut vm = Vm::start(&[]);
    vm.boot();
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    let path = image(&scratch, "disk0.raw", 64 * MIB);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|file| file.write_all_at(&sectors_of_pattern(5, 2, 3), 5 * SECTOR))
        .expect("the host's sectors");
    add_disk(&mut vm, &mut qmp, &path, true);
    assert_eq!(
        vm.console.command("blk"),
        [format!("blk 0: {SECTORS_64MIB} sectors, read-only")]
    );
    answers(
        &mut vm,
        "blk write 0 5 2 4",
        "blk write: error at sector 5: I/O error",
    );
    answers(&mut vm, "blk check 0 5 2 3", "blk check: 2 sectors, ok");
    drop(qmp);
    drop(vm);
    let _ = std::fs::remove_dir_all(scratch);
}

#[test]
fn a_disk_the_guest_holds_and_reads_is_removed_anyway_and_the_guest_runs_on() {
    if !kvm_usable("a_disk_the_guest_holds_and_reads_is_removed_anyway_and_the_guest_runs_on") {
        return;
    }
    let scratch = papervisor_tests::scratch_dir();
    let run = scratch.join("run");
    let (mut vm, mut qmp, _) = hot_added_disk(&scratch, &run);
    answers(&mut vm, "blk hold 0", "blk hold: 0");
    // The shell reads in the background while it waits for input.
    let reads = |line: &str| -> u64 {
        line.split(|c: char| !c.is_ascii_digit())
            .find(|word| !word.is_empty())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    std::thread::sleep(Duration::from_millis(300));
    let unheld = vm.console.command("blk unhold 0");
    assert!(unheld[0].ends_with(" reads, 0 errors"), "{unheld:?}");
    assert!(reads(&unheld[0]) > 0, "{unheld:?}");
    answers(&mut vm, "blk hold 0", "blk hold: 0");
    std::thread::sleep(Duration::from_millis(300));

    // Removed while held, as Linux removes a busy disk: the guest's driver
    // lets it go, the platform completes the unplug at the isolate.
    remove_disk(
        &mut vm,
        &mut qmp,
        &run,
        "dlpar: pci remove 0x40000018: ok (the disk was busy)",
    );
    // Its I/O now fails, and the guest goes on.
    answers(&mut vm, "blk check 0 0 1 7", "blk check: no disk 0");
    answers(&mut vm, "blk hold 0", "blk: no disk 0");
    answers(&mut vm, "pci", "pci: no functions");
    let cpus = vm.console.command("cpus");
    assert!(!cpus.is_empty(), "the guest answers");
    drop(qmp);
    drop(vm);
    let _ = std::fs::remove_dir_all(scratch);
}

#[test]
fn after_a_reset_the_guest_drives_its_boot_disk_again_and_finds_what_it_wrote() {
    if !kvm_usable("after_a_reset_the_guest_drives_its_boot_disk_again_and_finds_what_it_wrote") {
        return;
    }
    let scratch = papervisor_tests::scratch_dir();
    let mut vm = boot_with_disks(&scratch, 1);
    assert_eq!(
        vm.console.command("blk"),
        [format!("blk 0: {SECTORS_64MIB} sectors")]
    );
    answers(&mut vm, "blk write 0 77 8 5", "blk write: 8 sectors");
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    assert_eq!(qmp.execute("system_reset", json!({})), ok());
    vm.boot();
    // The bridge's function was reset and its driver started it again.
    answers(&mut vm, "blk check 0 77 8 5", "blk check: 8 sectors, ok");
    answers(&mut vm, "blk write 0 99 8 6", "blk write: 8 sectors");
    answers(&mut vm, "blk check 0 99 8 6", "blk check: 8 sectors, ok");
    drop(qmp);
    drop(vm);
    let _ = std::fs::remove_dir_all(scratch);
}

#[test]
fn a_hostile_driver_fails_its_own_device_only() {
    if !kvm_usable("a_hostile_driver_fails_its_own_device_only") {
        return;
    }
    let scratch = papervisor_tests::scratch_dir();
    let mut vm = boot_with_disks(&scratch, 2);
    assert_eq!(vm.console.command("blk").len(), 2);

    // A queue rung before DRIVER_OK: the device needs a reset, and the
    // driver that resets it has it back.
    assert_eq!(
        vm.console.command("blk hostile 0 early-kick"),
        ["blk hostile: status 0x43", "blk hostile: set up again"]
    );
    answers(&mut vm, "blk write 0 10 4 1", "blk write: 4 sectors");
    answers(&mut vm, "blk check 0 10 4 1", "blk check: 4 sectors, ok");
    // Data outside guest memory: that request fails, the next ones do not.
    let wild = vm.console.command("blk hostile 0 wild-descriptor");
    assert_eq!(wild.len(), 1, "{wild:?}");
    assert!(
        wild[0].starts_with("blk hostile: wild descriptor: ") && !wild[0].ends_with("served"),
        "{wild:?}"
    );
    answers(&mut vm, "blk check 0 10 4 1", "blk check: 4 sectors, ok");
    // Garbage over the function's configuration header: its BARs are gone,
    // its I/O fails; the other disk and the machine are untouched.
    answers(
        &mut vm,
        "blk hostile 0 garbage-config",
        "blk hostile: garbage written",
    );
    answers(
        &mut vm,
        "blk check 0 10 4 1",
        "blk check: error at sector 10: the device needs a reset",
    );
    answers(&mut vm, "blk write 1 20 4 2", "blk write: 4 sectors");
    answers(&mut vm, "blk check 1 20 4 2", "blk check: 4 sectors, ok");
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    let pci = qmp.execute("query-pci", json!({}));
    assert_eq!(
        pci["return"][0]["devices"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(block_pids(&mut qmp).len(), 2);
    drop(qmp);
    drop(vm);
    let _ = std::fs::remove_dir_all(scratch);
}

#[test]
fn a_disks_requests_go_on_while_the_process_serving_its_function_restarts() {
    let test = "a_disks_requests_go_on_while_the_process_serving_its_function_restarts";
    if !kvm_usable(test) || papervisor_tests::skip_in_process(test, "kills a device process") {
        return;
    }
    let scratch = papervisor_tests::scratch_dir();
    let mut vm = boot_with_disks(&scratch, 1);
    answers(&mut vm, "blk write 0 100 8 3", "blk write: 8 sectors");
    // The hotplug controller serves the bridge's functions, not their I/O:
    // requests go guest -> KVM -> block process -> KVM -> guest meanwhile.
    vm.kill_and_await_restart("hotplug-controller");
    answers(&mut vm, "blk check 0 100 8 3", "blk check: 8 sectors, ok");
    answers(&mut vm, "blk write 0 200 8 4", "blk write: 8 sectors");
    // Its successor knows the device again: after a reset the guest's
    // driver finds it whole (its capacity from the core's description).
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    assert_eq!(qmp.execute("system_reset", json!({})), ok());
    vm.boot();
    assert_eq!(
        vm.console.command("blk"),
        [format!("blk 0: {SECTORS_64MIB} sectors")]
    );
    answers(&mut vm, "blk check 0 200 8 4", "blk check: 8 sectors, ok");
    drop(qmp);
    drop(vm);
    let _ = std::fs::remove_dir_all(scratch);
}

#[test]
fn a_driver_finishes_its_set_up_across_a_restart_of_the_process_serving_its_function() {
    let test = "a_driver_finishes_its_set_up_across_a_restart_of_the_process_serving_its_function";
    if !kvm_usable(test) || papervisor_tests::skip_in_process(test, "kills a device process") {
        return;
    }
    let scratch = papervisor_tests::scratch_dir();
    let mut vm = boot_with_disks(&scratch, 1);
    // Killed between the driver's feature negotiation and DRIVER_OK: its
    // successor resumes the function from the state region (features
    // accepted, the vectors granted, the BARs), and the driver goes on.
    answers(&mut vm, "blk setup 0 features", "blk setup features: ok");
    vm.kill_and_await_restart("hotplug-controller");
    answers(&mut vm, "blk setup 0 finish", "blk setup finish: ok");
    answers(&mut vm, "blk write 0 300 8 6", "blk write: 8 sectors");
    answers(&mut vm, "blk check 0 300 8 6", "blk check: 8 sectors, ok");
    // And once more after DRIVER_OK: the running device stays as it is.
    vm.kill_and_await_restart("hotplug-controller");
    answers(&mut vm, "blk check 0 300 8 6", "blk check: 8 sectors, ok");
    drop(vm);
    let _ = std::fs::remove_dir_all(scratch);
}

#[test]
fn a_killed_block_process_is_replaced_and_the_guests_io_goes_on() {
    let test = "a_killed_block_process_is_replaced_and_the_guests_io_goes_on";
    if !kvm_usable(test) || papervisor_tests::skip_in_process(test, "kills a block process") {
        return;
    }
    let scratch = papervisor_tests::scratch_dir();
    let mut vm = boot_with_disks(&scratch, 1);
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    answers(&mut vm, "blk write 0 0 64 9", "blk write: 64 sectors");
    answers(&mut vm, "blk hold 0", "blk hold: 0");
    std::thread::sleep(Duration::from_millis(300));
    let row = |qmp: &mut QmpClient| -> serde_json::Value {
        qmp.execute("x-query-device-processes", json!({}))["return"]
            .as_array()
            .and_then(|rows| rows.iter().find(|row| row["kind"] == "block").cloned())
            .expect("a block row")
    };
    // Killed mid-read: a successor, jailed on the same image, takes the
    // queue over; the guest sees a slower request.
    let first = row(&mut qmp)["pid"].as_u64().expect("a pid");
    papervisor_tests::send_signal(first, nix::sys::signal::Signal::SIGKILL);
    wait_until("a successor serves the disk", || {
        let now = row(&mut qmp);
        now["restarts"] == 1 && now["state"] == "running"
    });
    answers(&mut vm, "blk check 0 0 64 9", "blk check: 64 sectors, ok");
    let unheld = vm.console.command("blk unhold 0");
    assert!(unheld[0].ends_with(" reads, 0 errors"), "{unheld:?}");
    answers(&mut vm, "blk write 0 500 8 10", "blk write: 8 sectors");
    answers(&mut vm, "blk check 0 500 8 10", "blk check: 8 sectors, ok");
    // One that keeps dying without completing a request is given up: more
    // than 5 ends in a minute with none completed between them. The end of
    // the process that served the requests above starts the count.
    let mut kills = 0;
    while row(&mut qmp)["state"] != "failed" {
        assert!(kills < 10, "still not failed after {kills} kills");
        let before = row(&mut qmp);
        let pid = before["pid"].as_u64().expect("a pid");
        papervisor_tests::send_signal(pid, nix::sys::signal::Signal::SIGKILL);
        kills += 1;
        wait_until("the block process's end is seen", || {
            let now = row(&mut qmp);
            now["state"] == "failed"
                || (now["state"] == "running" && now["restarts"] != before["restarts"])
        });
    }
    assert_eq!(kills, 6, "the end after progress, then five without");
    // The disk is still removed as any other.
    assert_eq!(qmp.execute("device_del", json!({"id": "vd0"})), ok());
    vm.console
        .expect_async("dlpar: pci remove 0x40000018: ok", Duration::from_secs(60));
    drop(qmp);
    drop(vm);
    let _ = std::fs::remove_dir_all(scratch);
}
