//! A disk whose block process dies, hangs or is replaced while the guest
//! keeps 16 requests in flight (8 writers, 8 readers: `blk stress`): every
//! request completes, once; reads find what was written before; what the
//! writers wrote last is in the guest's disk and in the image on the host. The
//! successor learns what was in flight from the inflight region the core
//! kept (vhost-user's INFLIGHT_SHMFD), not from the used ring; an upgraded
//! one takes over only once its predecessor is gone. Need /dev/kvm.

use papervisor_tests::disks::{cold_plugged_disks, pattern, sectors_of_pattern, Stress, SECTOR};
use papervisor_tests::{copy_binary, kvm_usable, skip_in_process, QmpClient, Vm};
use serde_json::json;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Sectors each writer and each reader of `blk stress` covers.
const AREA: u64 = 1024;
/// The readers' areas start here (the writers' at 0).
const READ_AREAS: u64 = 8 * AREA;
const READ_SEED: u64 = 21;
const WRITE_SEED: u64 = 22;
/// Requests of one `blk stress`: enough that a kill lands among them.
const REQUESTS: u64 = 8_000;
const ROUNDS: usize = 20;

/// A VM with one 64 MiB disk (vd0), booted, its readers' areas written.
fn boot(scratch: &Path, extra: &[&str]) -> Vm {
    let mut args = cold_plugged_disks(scratch, &[3]);
    args.extend(extra.iter().map(|arg| arg.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut vm = Vm::start(&args);
    vm.boot();
    let wrote = vm.console.command(&format!(
        "blk write 0 {READ_AREAS} {} {READ_SEED}",
        8 * AREA
    ));
    assert_eq!(wrote, [format!("blk write: {} sectors", 8 * AREA)]);
    vm
}

/// Starts a `blk stress` over vd0, lets requests get in flight, does
/// `fault` to the block process while they are, and checks the outcome:
/// every request completed once, every read found its pattern.
fn stress_through(vm: &mut Vm, round: usize, fault: &mut dyn FnMut(&Vm)) {
    let args = format!("0 0 {AREA} {REQUESTS} {READ_SEED} {WRITE_SEED}");
    Stress::start(&mut vm.console, &args);
    fault(vm);
    Stress::report(&mut vm.console, Duration::from_secs(120))
        .assert_whole(REQUESTS, &format!("round {round}"));
}

/// The block process's row, once its successor runs after `restarts`.
fn await_restarts(vm: &Vm, restarts: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row = vm.device_process("block");
        if row["state"] == "running" && row["restarts"] == restarts {
            return row;
        }
        assert!(Instant::now() < deadline, "no successor: {row}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What `blk stress`'s writers put in `count` sectors from `first`: each
/// sector's first word its tag, the other 63 `!seed`.
fn tagged_sectors(first: u64, count: u64, seed: u64) -> Vec<u8> {
    (first..first + count)
        .flat_map(|sector| {
            let mut words = vec![!seed; (SECTOR / 8) as usize];
            words[0] = pattern(sector * SECTOR, seed);
            words.into_iter().flat_map(u64::to_le_bytes)
        })
        .collect()
}

/// The guest and the host find the writers' and the readers' patterns.
fn check_patterns(vm: &mut Vm, scratch: &Path) {
    let areas = 8 * AREA;
    assert_eq!(
        vm.console
            .command(&format!("blk tagged 0 0 {areas} {WRITE_SEED}")),
        [format!("blk tagged: {areas} sectors, ok")]
    );
    assert_eq!(
        vm.console
            .command(&format!("blk check 0 {READ_AREAS} {areas} {READ_SEED}")),
        [format!("blk check: {areas} sectors, ok")]
    );
    let image = std::fs::File::open(scratch.join("disk0.raw")).expect("the image");
    let mut bytes = vec![0; (2 * areas * SECTOR) as usize];
    image
        .read_exact_at(&mut bytes, 0)
        .expect("the image's start");
    let mut expected = tagged_sectors(0, areas, WRITE_SEED);
    expected.extend(sectors_of_pattern(READ_AREAS, areas, READ_SEED));
    assert!(bytes == expected, "the image holds what the guest wrote");
}

#[test]
fn every_request_completes_once_across_twenty_kills_of_the_block_process() {
    let test = "every_request_completes_once_across_twenty_kills_of_the_block_process";
    if !kvm_usable(test) || skip_in_process(test, "kills the block process") {
        return;
    }
    let scratch = papervisor_tests::scratch_dir();
    let mut vm = boot(&scratch, &[]);
    for round in 0..ROUNDS {
        stress_through(&mut vm, round, &mut |vm| {
            let row = vm.device_process("block");
            let pid = row["pid"].as_u64().expect("a pid");
            papervisor_tests::send_signal(pid, nix::sys::signal::Signal::SIGKILL);
            await_restarts(vm, round as u64 + 1);
        });
    }
    // Each process completed requests before it died: none counted as a
    // crash loop.
    assert_eq!(vm.device_process("block")["state"], "running");
    check_patterns(&mut vm, &scratch);
    drop(vm);
    let _ = std::fs::remove_dir_all(scratch);
}

#[test]
fn every_request_completes_once_across_twenty_hangs_of_the_block_process() {
    let test = "every_request_completes_once_across_twenty_hangs_of_the_block_process";
    if !kvm_usable(test) || skip_in_process(test, "stops the block process") {
        return;
    }
    let scratch = papervisor_tests::scratch_dir();
    let mut vm = boot(&scratch, &["--block-stall-timeout", "1000"]);
    for round in 0..ROUNDS {
        stress_through(&mut vm, round, &mut |vm| {
            let row = vm.device_process("block");
            let pid = row["pid"].as_u64().expect("a pid");
            // Stopped, it holds its socket open and answers nothing: only
            // the core's watch of its progress finds it out.
            papervisor_tests::send_signal(pid, nix::sys::signal::Signal::SIGSTOP);
            let row = await_restarts(vm, round as u64 + 1);
            assert!(
                row["last-exit"]
                    .as_str()
                    .is_some_and(|why| why.contains("taken for hung")),
                "{row}"
            );
        });
    }
    check_patterns(&mut vm, &scratch);
    drop(vm);
    let _ = std::fs::remove_dir_all(scratch);
}

#[test]
fn every_request_completes_once_across_twenty_upgrades_of_the_block_process() {
    let test = "every_request_completes_once_across_twenty_upgrades_of_the_block_process";
    if !kvm_usable(test) || skip_in_process(test, "upgrades the block process") {
        return;
    }
    let scratch = papervisor_tests::scratch_dir();
    // Two binaries, taken in turns: a copy, and the block program itself.
    let copy = copy_binary("papervisor-block", &scratch, "papervisor-block-next");
    let programs = [copy, papervisor_tests::binary("papervisor-block")];
    let mut vm = boot(&scratch, &[]);
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    for round in 0..ROUNDS {
        let program = &programs[round % 2];
        stress_through(&mut vm, round, &mut |vm| {
            let before = vm.device_process("block");
            let answer = qmp.execute(
                "x-upgrade-device-process",
                json!({"process": "block", "id": "vd0", "path": program}),
            );
            let pid = answer["return"]["pid"].as_u64().expect("the new pid");
            assert_ne!(Some(pid), before["pid"].as_u64());
            let after = vm.device_process("block");
            assert_eq!(after["pid"], pid);
            assert_eq!(after["binary"], json!(program));
            assert_eq!(after["restarts"], 0, "an upgrade is no restart");
            assert!(!papervisor_tests::runs(before["pid"].as_u64().unwrap()));
        });
        let event = qmp.wait_event("X_DEVICE_PROCESS_UPGRADED");
        assert_eq!(event["data"]["disk"], "vd0");
    }
    // A binary that is not there, or not trusted: refused, and the running
    // process keeps serving.
    let pid = vm.device_process("block")["pid"].clone();
    for path in ["/nonexistent/papervisor-block", "papervisor-block"] {
        let answer = qmp.execute(
            "x-upgrade-device-process",
            json!({"process": "block", "id": "vd0", "path": path}),
        );
        assert_eq!(answer["error"]["class"], "GenericError", "{answer}");
        assert_eq!(vm.device_process("block")["pid"], pid);
    }
    let answer = qmp.execute(
        "x-upgrade-device-process",
        json!({"process": "block", "id": "nope", "path": programs[1]}),
    );
    assert_eq!(answer["error"]["class"], "DeviceNotFound", "{answer}");
    check_patterns(&mut vm, &scratch);
    drop(qmp);
    drop(vm);
    let _ = std::fs::remove_dir_all(scratch);
}

#[test]
fn the_process_serving_the_disks_function_is_upgraded_and_killed_under_io() {
    let test = "the_process_serving_the_disks_function_is_upgraded_and_killed_under_io";
    if !kvm_usable(test) || skip_in_process(test, "upgrades and kills a device process") {
        return;
    }
    let scratch = papervisor_tests::scratch_dir();
    let mut vm = boot(&scratch, &[]);
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    let copy = copy_binary("papervisor-hotplug", &scratch, "papervisor-hotplug-next");
    // The requests do not pass through the hotplug controller, but the
    // function's state does: its successor must see the device running.
    for round in 0..4 {
        stress_through(&mut vm, round, &mut |vm| {
            if round % 2 == 0 {
                let answer = qmp.execute(
                    "x-upgrade-device-process",
                    json!({"process": "hotplug-controller", "path": copy}),
                );
                assert!(answer["return"]["pid"].is_u64(), "{answer}");
            } else {
                vm.kill_and_await_restart("hotplug-controller");
            }
        });
        assert_eq!(vm.console.command("blk status 0"), ["blk status: 0xf"]);
    }
    check_patterns(&mut vm, &scratch);
    drop(qmp);
    drop(vm);
    let _ = std::fs::remove_dir_all(scratch);
}

#[test]
fn a_hung_block_process_is_upgraded_away_with_its_requests_served_once() {
    let test = "a_hung_block_process_is_upgraded_away_with_its_requests_served_once";
    if !kvm_usable(test) || skip_in_process(test, "stops and upgrades the block process") {
        return;
    }
    let scratch = papervisor_tests::scratch_dir();
    let copy = copy_binary("papervisor-block", &scratch, "papervisor-block-next");
    // The core's watch would find it out only after the default 30 s: the
    // operator's upgrade comes first.
    let mut vm = boot(&scratch, &[]);
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    stress_through(&mut vm, 0, &mut |vm| {
        let pid = vm.device_process("block")["pid"].as_u64().expect("a pid");
        papervisor_tests::send_signal(pid, nix::sys::signal::Signal::SIGSTOP);
        std::thread::sleep(Duration::from_millis(200));
        let answer = qmp.execute(
            "x-upgrade-device-process",
            json!({"process": "block", "id": "vd0", "path": copy}),
        );
        assert!(answer["return"]["pid"].is_u64(), "{answer}");
        assert!(!papervisor_tests::runs(pid), "the stopped one is gone");
    });
    check_patterns(&mut vm, &scratch);
    drop(qmp);
    drop(vm);
    let _ = std::fs::remove_dir_all(scratch);
}
