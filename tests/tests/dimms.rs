//! Memory backends and DIMMs from the host's side: object-add, device_add
//! pc-dimm, the DRCs, the KVM slot and the memfd, QEMU's query shapes, clear
//! errors, and a pending DIMM unplug completing at reset. The test guest
//! does not take memory yet (it reports the events and ignores them), so
//! these are the unplugs a silent guest leaves pending. Need /dev/kvm.

use papervisor_tests::{kvm_usable, QmpClient, Vm};
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
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    assert_eq!(backend(&mut qmp, "mem0", 512 * MIB), json!({"return": {}}));
    assert_eq!(dimm(&mut qmp, "dimm0", "mem0"), json!({"return": {}}));
    // One count-indexed add event for its two LMBs reaches the guest.
    vm.console.expect_async(
        "dlpar: ignored event add memory count 2 from 0x80000004",
        Duration::from_secs(30),
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
