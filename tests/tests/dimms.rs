//! Memory backends and DIMMs: object-add, device_add pc-dimm, the DRCs, the
//! KVM slot and the memfd, QEMU's query shapes, clear errors; the guest
//! onlining a DIMM's LMBs, keeping data in them, giving them back, refusing
//! pinned memory (once, or silently as Linux does when the first LMB is
//! pinned) and a retry after unpinning; a pending unplug completing at
//! reset. Need /dev/kvm.

use papervisor_tests::{assert_one_error_per_refusal, kvm_usable, QmpClient, Vm};
use serde_json::{json, Value};
use std::time::Duration;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// The memfds backing DIMMs that the core holds (each may be open more than
/// once: its own, its mapping's, the RTAS server's table's).
fn dimm_memfds(vm: &Vm) -> usize {
    use std::os::unix::fs::MetadataExt;
    let inodes: std::collections::BTreeSet<u64> =
        std::fs::read_dir(format!("/proc/{}/fd", vm.pid()))
            .expect("the core's descriptors")
            .flatten()
            .filter(|entry| {
                std::fs::read_link(entry.path())
                    .is_ok_and(|target| target.to_string_lossy().contains("papervisor-dimm"))
            })
            .filter_map(|entry| std::fs::metadata(entry.path()).ok())
            .map(|meta| meta.ino())
            .collect();
    inodes.len()
}

fn error(reply: &Value) -> String {
    reply["error"]["desc"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn backend(qmp: &mut QmpClient, id: &str, size: u64) -> Value {
    qmp.execute(
        "object-add",
        json!({"qom-type": "memory-backend-memfd", "id": id, "size": size}),
    )
}

fn dimm(qmp: &mut QmpClient, id: &str, memdev: &str) -> Value {
    qmp.execute(
        "device_add",
        json!({"driver": "pc-dimm", "id": id, "memdev": memdev}),
    )
}

fn device_del(qmp: &mut QmpClient, id: &str) {
    assert_eq!(
        qmp.execute("device_del", json!({"id": id})),
        json!({"return": {}})
    );
}

/// device_del of dimm0, then DEVICE_DELETED and the guest's `done` line.
fn remove_dimm0(vm: &mut Vm, qmp: &mut QmpClient, done: &str) {
    device_del(qmp, "dimm0");
    assert_eq!(qmp.wait_event("DEVICE_DELETED")["data"]["device"], "dimm0");
    vm.console.expect_async(done, Duration::from_secs(120));
}

fn lmb_rows(vm: &Vm) -> Vec<Value> {
    vm.qmp(&["x-query-drcs"])[0]["return"]
        .as_array()
        .expect("DRC rows")
        .iter()
        .filter(|row| row["type"] == "MEM")
        .cloned()
        .collect()
}

#[test]
fn dimms_plug_and_a_pending_unplug_completes_at_reset() {
    if !kvm_usable("dimms_plug_and_a_pending_unplug_completes_at_reset") {
        return;
    }
    let mut vm = Vm::start(&["--memory", "size=512M,maxmem=2G,slots=2"]);
    vm.boot();
    // The guest leaves hot-plug events alone: nothing it does interferes.
    assert_eq!(vm.console.command("dlpar off"), ["dlpar: off"]);
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    assert_eq!(backend(&mut qmp, "mem0", 512 * MIB), json!({"return": {}}));
    assert_eq!(dimm(&mut qmp, "dimm0", "mem0"), json!({"return": {}}));
    // One count-indexed add event for its two LMBs waits for the guest.
    assert_eq!(
        qmp.execute("x-query-event-log", json!({}))["return"],
        json!([{"action": "add", "resource": "memory", "drc": 0x8000_0004u32, "count": 2}])
    );
    let rows = lmb_rows(&vm);
    let taken: Vec<&Value> = rows.iter().filter(|r| r["device"] == "dimm0").collect();
    assert_eq!(taken.len(), 2, "{rows:?}");
    assert_eq!(taken[0]["index"], 0x8000_0004u32);
    assert_eq!(
        qmp.execute("query-memory-devices", json!({}))["return"],
        json!([{"type": "dimm", "data": {
            "id": "dimm0", "addr": GIB, "size": 512 * MIB, "slot": 0, "node": 0,
            "memdev": "/objects/mem0", "hotplugged": true, "hotpluggable": true}}])
    );
    assert_eq!(
        qmp.execute("query-memory-size-summary", json!({}))["return"],
        json!({"base-memory": 512 * MIB, "plugged-memory": 512 * MIB})
    );
    assert_eq!(dimm_memfds(&vm), 1);

    // Clear errors.
    assert!(error(&qmp.execute("object-del", json!({"id": "mem0"}))).contains("uses it"));
    assert!(error(&dimm(&mut qmp, "dimm0", "mem0")).contains("Duplicate device ID"));
    assert!(error(&dimm(&mut qmp, "dimm9", "nothing")).contains("can't find value 'nothing'"));
    assert!(error(&dimm(&mut qmp, "dimm9", "mem0")).contains("busy memdev"));
    assert_eq!(backend(&mut qmp, "odd", 100 * MIB), json!({"return": {}}));
    assert!(error(&dimm(&mut qmp, "dimm9", "odd")).contains("multiple of 256 MB"));
    assert_eq!(backend(&mut qmp, "mem1", 256 * MIB), json!({"return": {}}));
    assert_eq!(backend(&mut qmp, "mem2", 256 * MIB), json!({"return": {}}));
    assert_eq!(dimm(&mut qmp, "dimm1", "mem1"), json!({"return": {}}));
    assert!(error(&dimm(&mut qmp, "dimm2", "mem2")).contains("memory slots are in use"));
    assert!(error(&backend(&mut qmp, "mem1", 256 * MIB)).contains("duplicate"));
    let huge = backend(&mut qmp, "huge", 64 * GIB);
    assert!(error(&huge).contains("must be between"), "{huge}");
    let typed = qmp.execute(
        "object-add",
        json!({"qom-type": "memory-backend-file", "id": "f", "size": GIB}),
    );
    assert!(error(&typed).contains("invalid object type"), "{typed}");

    // A DIMM the guest never took goes at once.
    assert_eq!(
        qmp.execute("device_del", json!({"id": "dimm1"})),
        json!({"return": {}})
    );
    assert_eq!(qmp.wait_event("DEVICE_DELETED")["data"]["device"], "dimm1");
    // The guest takes dimm0's LMBs by hand (allocation usable, unisolate),
    // then stays silent: the unplug waits, and every device_del asks again.
    for lmb in ["0x80000004", "0x80000005"] {
        for (indicator, value) in [(9003, 1), (9001, 1)] {
            let call = format!("rtas-raw 0x2000000 0x201a 3 1 {indicator} {lmb} {value}");
            assert_eq!(vm.console.command(&call), ["rtas-raw: status 0"], "{call}");
        }
    }
    for _ in 0..2 {
        assert_eq!(
            qmp.execute("device_del", json!({"id": "dimm0"})),
            json!({"return": {}})
        );
    }
    let pending: Vec<Value> = lmb_rows(&vm)
        .into_iter()
        .filter(|r| r["device"] == "dimm0")
        .collect();
    assert!(
        pending.iter().all(|r| r["unplug-requested"] == true),
        "{pending:?}"
    );
    // A reset completes it: the DIMM, its KVM slot and its mapping go, its
    // backend is free, and its id can be used again.
    assert_eq!(
        qmp.execute("system_reset", json!({})),
        json!({"return": {}})
    );
    let deleted = qmp.wait_event("DEVICE_DELETED");
    assert_eq!(
        deleted["data"],
        json!({"device": "dimm0", "path": "/machine/peripheral/dimm0"})
    );
    vm.boot();
    assert_eq!(
        qmp.execute("query-memory-devices", json!({}))["return"],
        json!([])
    );
    assert_eq!(
        qmp.execute("object-del", json!({"id": "mem0"})),
        json!({"return": {}})
    );
    assert_eq!(dimm_memfds(&vm), 3, "mem1, mem2 and odd are left");
    assert_eq!(dimm(&mut qmp, "dimm0", "mem2"), json!({"return": {}}));
    assert_eq!(
        qmp.execute("query-memory-size-summary", json!({}))["return"],
        json!({"base-memory": 512 * MIB, "plugged-memory": 256 * MIB})
    );
}

/// A VM with a 512 MiB DIMM (LMBs 0x80000004 and 0x80000005, at 1 GiB) that
/// the guest took.
fn vm_with_dimm0() -> (Vm, QmpClient) {
    vm_with_a_dimm("size=512M,maxmem=2G,slots=2", "mem0", "dimm0", 0x8000_0004)
}

/// A VM with `--memory memory` and a 512 MiB DIMM `id` on backend `memdev`
/// that the guest took (its LMBs from `first_lmb`).
fn vm_with_a_dimm(memory: &str, memdev: &str, id: &str, first_lmb: u32) -> (Vm, QmpClient) {
    let mut vm = Vm::start(&["--memory", memory]);
    vm.boot();
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    assert_eq!(backend(&mut qmp, memdev, 512 * MIB), json!({"return": {}}));
    assert_eq!(dimm(&mut qmp, id, memdev), json!({"return": {}}));
    vm.console.expect_async(
        &format!("dlpar: memory add count 2 from {first_lmb:#010x}: ok"),
        Duration::from_secs(30),
    );
    (vm, qmp)
}

const FILL: &str = "mem fill 0x4ff00000 0x200000 7";
const CHECK: &str = "mem check 0x4ff00000 0x200000 7";

#[test]
fn a_dimm_is_onlined_holds_data_and_goes_when_asked() {
    if !kvm_usable("a_dimm_is_onlined_holds_data_and_goes_when_asked") {
        return;
    }
    let (mut vm, mut qmp) = vm_with_dimm0();
    let lmbs = vm.console.command("mem");
    assert_eq!(
        &lmbs[..3],
        [
            "lmb 0x80000004 at 0x40000000: assigned online",
            "lmb 0x80000005 at 0x50000000: assigned online",
            "lmb 0x80000006 at 0x60000000: free",
        ]
    );
    // A pattern across the boundary of the two LMBs.
    assert_eq!(vm.console.command(FILL), ["mem fill: 513 words"]);
    assert_eq!(vm.console.command(CHECK), ["mem check: 513 words, ok"]);
    assert_eq!(
        vm.console.command("mem check 0x4ff00000 0x200000 8")[0],
        "mem check: mismatch at 0x4ff00000"
    );
    // The guest cannot give memory back on its own: boot memory has no DRC
    // (-3), and a DIMM's LMB the host did not ask for cannot be isolated (-1).
    for (lmb, status) in [("0x80000000", "-3"), ("0x80000004", "-1")] {
        assert_eq!(
            vm.console
                .command(&format!("rtas-raw 0x2000000 0x201a 3 1 9001 {lmb} 0")),
            [format!("rtas-raw: status {status}")]
        );
    }
    remove_dimm0(
        &mut vm,
        &mut qmp,
        "dlpar: memory remove count 2 from 0x80000004: ok",
    );
    assert_eq!(dimm_memfds(&vm), 1, "only the backend's own memfd is left");
    assert_eq!(
        qmp.execute("query-memory-devices", json!({}))["return"],
        json!([])
    );
    // The id, the backend and the place can be used again.
    assert_eq!(dimm(&mut qmp, "dimm0", "mem0"), json!({"return": {}}));
    vm.console.expect_async(
        "dlpar: memory add count 2 from 0x80000004: ok",
        Duration::from_secs(30),
    );
}

#[test]
fn pinned_memory_refuses_an_unplug_once_and_a_retry_after_unpinning_works() {
    if !kvm_usable("pinned_memory_refuses_an_unplug_once_and_a_retry_after_unpinning_works") {
        return;
    }
    let (mut vm, mut qmp) = vm_with_dimm0();
    assert_eq!(vm.console.command(FILL), ["mem fill: 513 words"]);
    // Pinned in the second LMB: the first goes offline, the second cannot;
    // the first is added back, re-unisolated: one refusal reaches QMP.
    assert_eq!(
        vm.console.command("mem pin 0x50000000"),
        ["mem: lmb 0x80000005 pinned"]
    );
    device_del(&mut qmp, "dimm0");
    vm.console.expect_async(
        "dlpar: memory remove count 2 from 0x80000004: refused: memory is not movable",
        Duration::from_secs(30),
    );
    assert_eq!(
        qmp.wait_event("DEVICE_UNPLUG_GUEST_ERROR")["data"]["device"],
        "dimm0"
    );
    let later = qmp.events_within(Duration::from_millis(500));
    assert!(
        !later
            .iter()
            .any(|e| e["event"] == "DEVICE_UNPLUG_GUEST_ERROR"),
        "{later:?}"
    );
    assert_eq!(vm.console.command(CHECK), ["mem check: 513 words, ok"]);
    let devices = qmp.execute("query-memory-devices", json!({}))["return"].clone();
    assert_eq!(devices.as_array().map(Vec::len), Some(1));
    let rows = lmb_rows(&vm);
    assert!(rows
        .iter()
        .filter(|r| r["device"] == "dimm0")
        .all(|r| r["unplug-requested"] == false && r["state"] == "configured"));
    // Unpinned, a new device_del removes it.
    assert_eq!(
        vm.console.command("mem unpin 0x50000000"),
        ["mem: lmb 0x80000005 unpinned"]
    );
    device_del(&mut qmp, "dimm0");
    assert_eq!(qmp.wait_event("DEVICE_DELETED")["data"]["device"], "dimm0");
}

#[test]
fn a_dimm_whose_first_lmb_is_pinned_is_refused_silently_and_removed_after_unpinning() {
    if !kvm_usable(
        "a_dimm_whose_first_lmb_is_pinned_is_refused_silently_and_removed_after_unpinning",
    ) {
        return;
    }
    let (mut vm, mut qmp) = vm_with_dimm0();
    assert_eq!(
        vm.console.command("mem pin 0x40000000"),
        ["mem: lmb 0x80000004 pinned"]
    );
    device_del(&mut qmp, "dimm0");
    vm.console.expect_async(
        "dlpar: memory remove count 2 from 0x80000004: refused: memory is not movable",
        Duration::from_secs(30),
    );
    // Linux makes no RTAS call when the first LMB fails: the host never
    // hears, and the unplug stays pending.
    let later = qmp.events_within(Duration::from_millis(500));
    assert!(
        !later
            .iter()
            .any(|e| e["event"] == "DEVICE_UNPLUG_GUEST_ERROR"),
        "{later:?}"
    );
    assert!(lmb_rows(&vm)
        .iter()
        .filter(|r| r["device"] == "dimm0")
        .all(|r| r["unplug-requested"] == true));
    // A second device_del is not an error: it asks again, and after the
    // unpin the guest gives the DIMM back, without a reboot.
    assert_eq!(
        vm.console.command("mem unpin 0x40000000"),
        ["mem: lmb 0x80000004 unpinned"]
    );
    remove_dimm0(
        &mut vm,
        &mut qmp,
        "dlpar: memory remove count 2 from 0x80000004: ok",
    );
}

#[test]
fn a_16gib_dimm_plugs_and_unplugs_with_16382_lmb_drcs() {
    if !kvm_usable("a_16gib_dimm_plugs_and_unplugs_with_16382_lmb_drcs") {
        return;
    }
    let mut vm = Vm::start(&["--memory", "size=512M,maxmem=4T,slots=8"]);
    let banner = vm.boot();
    assert!(banner.contains("drcs: 1 cpu, 16382 lmb\n"), "{banner}");
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    assert_eq!(backend(&mut qmp, "big", 16 * GIB), json!({"return": {}}));
    assert_eq!(dimm(&mut qmp, "dimm0", "big"), json!({"return": {}}));
    // Device memory starts at 4 GiB here (it would cross 3..4 GiB from 1 GiB).
    vm.console.expect_async(
        "dlpar: memory add count 64 from 0x80000010: ok",
        Duration::from_secs(120),
    );
    let devices = qmp.execute("query-memory-devices", json!({}))["return"].clone();
    assert_eq!(devices[0]["data"]["addr"], 4 * GIB);
    // Data at both ends of the DIMM.
    for (at, words) in [
        ("0x100000000", "mem fill: 2 words"),
        ("0x4fffff000", "mem fill: 2 words"),
    ] {
        assert_eq!(
            vm.console.command(&format!("mem fill {at} 0x1000 3")),
            [words]
        );
    }
    assert_eq!(
        vm.console.command("mem check 0x4fffff000 0x1000 3"),
        ["mem check: 2 words, ok"]
    );
    remove_dimm0(
        &mut vm,
        &mut qmp,
        "dlpar: memory remove count 64 from 0x80000010: ok",
    );
}

#[test]
fn twenty_device_dels_of_a_dimm_the_guest_refuses_give_one_error_per_refusal() {
    if !kvm_usable("twenty_device_dels_of_a_dimm_the_guest_refuses_give_one_error_per_refusal") {
        return;
    }
    let (mut vm, _qmp) = vm_with_dimm0();
    assert_eq!(
        vm.console.command("mem pin 0x50000000"),
        ["mem: lmb 0x80000005 pinned"]
    );
    // The guest fetches remove events as Linux does (before it handles the
    // one before, and before it refuses it): several may be fetched before
    // the first refusal; each fetched and refused one is reported once.
    let storm = format!("repeat:20:device_del={}", r#"{"id": "dimm0"}"#);
    let replies = vm.qmp(&[&storm, "events-for:5"]);
    assert_eq!(
        replies[0]["errors"],
        json!([]),
        "every device_del is accepted"
    );
    assert_one_error_per_refusal(
        &mut vm,
        &replies[1]["events"],
        "dlpar: memory remove count 2 from 0x80000004: refused",
    );
    // Nothing is left half-done: the DIMM is whole, its unplug is over.
    assert!(lmb_rows(&vm)
        .iter()
        .filter(|r| r["device"] == "dimm0")
        .all(|r| r["state"] == "configured" && r["unplug-requested"] == false));
    assert_eq!(
        &vm.console.command("mem")[..2],
        [
            "lmb 0x80000004 at 0x40000000: assigned online",
            "lmb 0x80000005 at 0x50000000: assigned online pinned",
        ]
    );
}

/// What the DRC table, QMP and the guest say of the LMBs at `lmbs`: each
/// row's state, device and unplug request; the DIMMs QMP lists; the
/// guest's own line for each LMB.
fn views(vm: &mut Vm, qmp: &mut QmpClient, lmbs: &[u32]) -> (Vec<Value>, Vec<Value>, Vec<String>) {
    let rows = lmb_rows(vm)
        .into_iter()
        .filter(|row| lmbs.contains(&(row["index"].as_u64().unwrap_or(0) as u32)))
        .map(|row| json!([row["state"], row["device"], row["unplug-requested"]]))
        .collect();
    let devices = qmp.execute("query-memory-devices", json!({}))["return"]
        .as_array()
        .expect("a device list")
        .iter()
        .map(|device| device["data"]["id"].clone())
        .collect();
    let guest = vm
        .console
        .command("mem")
        .into_iter()
        .filter(|line| {
            lmbs.iter()
                .any(|lmb| line.starts_with(&format!("lmb {lmb:#x} ")))
        })
        .collect();
    (rows, devices, guest)
}

fn rtas_raw(vm: &mut Vm, indicator: u32, lmb: u32, value: u32) {
    let call = format!("rtas-raw 0x2000000 0x201a 3 1 {indicator} {lmb:#x} {value}");
    assert_eq!(vm.console.command(&call), ["rtas-raw: status 0"], "{call}");
}

/// A 512 MiB DIMM `d1` (LMBs 0x80000010 and 0x80000011) the guest took; the
/// guest's agent then stops, and a device_del waits.
fn dimm_d1_asked_back() -> (Vm, QmpClient) {
    let (mut vm, mut qmp) = vm_with_a_dimm("size=512M,maxmem=4G,slots=4", "m1", "d1", LMBS[0]);
    let online = (
        vec![json!(["configured", "d1", false]); 2],
        vec![json!("d1")],
        vec![
            "lmb 0x80000010 at 0x100000000: assigned online".to_string(),
            "lmb 0x80000011 at 0x110000000: assigned online".to_string(),
        ],
    );
    assert_eq!(views(&mut vm, &mut qmp, &LMBS), online);
    assert_eq!(vm.console.command("dlpar off"), ["dlpar: off"]);
    device_del(&mut qmp, "d1");
    let asked = (
        vec![json!(["configured", "d1", true]); 2],
        online.1,
        online.2,
    );
    assert_eq!(views(&mut vm, &mut qmp, &LMBS), asked);
    (vm, qmp)
}

const LMBS: [u32; 2] = [0x8000_0010, 0x8000_0011];

/// The guest (by hand, as a hostile one would) gives the first LMB back,
/// then refuses the unplug by re-unisolating the second. Each step keeps
/// the DIMM whole to the platform, and device_del keeps reaching the guest.
fn release_one_lmb_then_refuse(vm: &mut Vm, qmp: &mut QmpClient) {
    // Its own view is of no RTAS call it made by hand: the LMBs stay
    // "assigned online" to it throughout.
    let guest = vec![
        "lmb 0x80000010 at 0x100000000: assigned online".to_string(),
        "lmb 0x80000011 at 0x110000000: assigned online".to_string(),
    ];
    rtas_raw(vm, 9001, LMBS[0], 0);
    rtas_raw(vm, 9003, LMBS[0], 0);
    let given_back = (
        vec![
            json!(["unusable", "d1", true]),
            json!(["configured", "d1", true]),
        ],
        vec![json!("d1")],
        guest.clone(),
    );
    assert_eq!(views(vm, qmp, &LMBS), given_back);
    // A repeated device_del still reaches the DIMM (it failed with "DRC
    // 0x80000010 has no device").
    device_del(qmp, "d1");
    assert_eq!(views(vm, qmp, &LMBS), given_back);
    rtas_raw(vm, 9001, LMBS[1], 1);
    assert_eq!(
        qmp.wait_event("DEVICE_UNPLUG_GUEST_ERROR")["data"]["device"],
        "d1"
    );
    // The LMB it gave back is attached again (for the guest to take back).
    let refused = (
        vec![
            json!(["unusable", "d1", false]),
            json!(["configured", "d1", false]),
        ],
        vec![json!("d1")],
        guest,
    );
    assert_eq!(views(vm, qmp, &LMBS), refused);
}

#[test]
fn a_dimm_partly_given_back_then_refused_can_still_be_unplugged() {
    if !kvm_usable("a_dimm_partly_given_back_then_refused_can_still_be_unplugged") {
        return;
    }
    let (mut vm, mut qmp) = dimm_d1_asked_back();
    release_one_lmb_then_refuse(&mut vm, &mut qmp);
    // Asked again: the LMB the guest does not hold is given back at once,
    // and once the agent runs the guest gives the other one.
    device_del(&mut qmp, "d1");
    assert_eq!(
        views(&mut vm, &mut qmp, &LMBS).0,
        [
            json!(["unusable", "d1", true]),
            json!(["configured", "d1", true])
        ]
    );
    let removed = "dlpar: memory remove count 2 from 0x80000010: ok";
    let lines = vm.console.command("dlpar on");
    assert_eq!(lines[0], "dlpar: on");
    assert_eq!(qmp.wait_event("DEVICE_DELETED")["data"]["device"], "d1");
    if !lines.iter().any(|line| line == removed) {
        vm.console.expect_async(removed, Duration::from_secs(30));
    }
    let gone = (
        vec![json!(["unusable", null, false]); 2],
        vec![],
        vec![
            "lmb 0x80000010 at 0x100000000: free".to_string(),
            "lmb 0x80000011 at 0x110000000: free".to_string(),
        ],
    );
    assert_eq!(views(&mut vm, &mut qmp, &LMBS), gone);
    // Nothing is left of it: the backend is free.
    assert_eq!(
        qmp.execute("object-del", json!({"id": "m1"})),
        json!({"return": {}})
    );
}

#[test]
fn a_dimm_partly_given_back_then_refused_is_whole_after_a_reset_and_unplugs() {
    if !kvm_usable("a_dimm_partly_given_back_then_refused_is_whole_after_a_reset_and_unplugs") {
        return;
    }
    let (mut vm, mut qmp) = dimm_d1_asked_back();
    release_one_lmb_then_refuse(&mut vm, &mut qmp);
    assert_eq!(
        qmp.execute("system_reset", json!({})),
        json!({"return": {}})
    );
    vm.boot();
    // The DIMM is whole in all three views: no unplug was pending.
    let whole = (
        vec![json!(["configured", "d1", false]); 2],
        vec![json!("d1")],
        vec![
            "lmb 0x80000010 at 0x100000000: assigned online".to_string(),
            "lmb 0x80000011 at 0x110000000: assigned online".to_string(),
        ],
    );
    assert_eq!(views(&mut vm, &mut qmp, &LMBS), whole);
    remove_dimm_d1(&mut vm, &mut qmp);
}

fn remove_dimm_d1(vm: &mut Vm, qmp: &mut QmpClient) {
    device_del(qmp, "d1");
    assert_eq!(qmp.wait_event("DEVICE_DELETED")["data"]["device"], "d1");
    vm.console.expect_async(
        "dlpar: memory remove count 2 from 0x80000010: ok",
        Duration::from_secs(30),
    );
    assert_eq!(
        views(vm, qmp, &LMBS),
        (
            vec![json!(["unusable", null, false]); 2],
            vec![],
            vec![
                "lmb 0x80000010 at 0x100000000: free".to_string(),
                "lmb 0x80000011 at 0x110000000: free".to_string(),
            ],
        )
    );
}

/// A DIMM plugged below one plugged before it (the default lowest-free
/// placement fills a hole so): the RTAS server's memory table is in guest
/// address order whatever the order of plugs, for it and every successor.
#[test]
fn a_dimm_below_a_plugged_dimm_plugs_and_survives_rtas_server_restarts() {
    if !kvm_usable("a_dimm_below_a_plugged_dimm_plugs_and_survives_rtas_server_restarts") {
        return;
    }
    let mut vm = Vm::start(&["--memory", "size=512M,maxmem=4G,slots=4"]);
    vm.boot();
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    for id in ["lo", "hi", "mid"] {
        assert_eq!(backend(&mut qmp, id, 256 * MIB), json!({"return": {}}));
    }
    let hi = qmp.execute(
        "device_add",
        json!({"driver": "pc-dimm", "id": "dhi", "memdev": "hi", "addr": 5 * GIB}),
    );
    assert_eq!(hi, json!({"return": {}}));
    vm.console.expect_async(
        "dlpar: memory add count 1 from 0x80000014: ok",
        Duration::from_secs(30),
    );
    assert_eq!(dimm(&mut qmp, "dlo", "lo"), json!({"return": {}}));
    vm.console.expect_async(
        "dlpar: memory add count 1 from 0x80000010: ok",
        Duration::from_secs(30),
    );
    let fill = "mem fill 0x100000000 0x1000 5";
    assert_eq!(vm.console.command(fill), ["mem fill: 2 words"]);
    let in_process = papervisor_tests::in_process();
    if !in_process {
        // Every successor gets the table and serves: the guest's calls work.
        for _ in 0..2 {
            vm.kill_and_await_restart("rtas-server");
            assert!(vm.console.command("time")[0].starts_with("time: "));
        }
        // A DIMM plugged while the RTAS server restarts is mapped by the
        // successor, and the next successor too.
        let server = vm.device_process("rtas-server");
        papervisor_tests::send_signal(
            server["pid"].as_u64().expect("a pid"),
            nix::sys::signal::Signal::SIGKILL,
        );
        assert_eq!(
            qmp.execute(
                "device_add",
                json!({"driver": "pc-dimm", "id": "dmid", "memdev": "mid", "addr": 4 * GIB + 256 * MIB}),
            ),
            json!({"return": {}})
        );
        vm.console.expect_async(
            "dlpar: memory add count 1 from 0x80000011: ok",
            Duration::from_secs(30),
        );
        vm.kill_and_await_restart("rtas-server");
        assert_eq!(vm.device_process("rtas-server")["state"], "running");
        assert!(vm.console.command("time")[0].starts_with("time: "));
    }
    assert_eq!(
        vm.console.command("mem check 0x100000000 0x1000 5"),
        ["mem check: 2 words, ok"]
    );
    let addresses: Vec<u64> = qmp.execute("query-memory-devices", json!({}))["return"]
        .as_array()
        .expect("a device list")
        .iter()
        .map(|d| d["data"]["addr"].as_u64().expect("an address"))
        .collect();
    let expected = if in_process {
        vec![4 * GIB, 5 * GIB]
    } else {
        vec![4 * GIB, 4 * GIB + 256 * MIB, 5 * GIB]
    };
    assert_eq!(addresses, expected);
}
