//! A guest that lies: thousands of random and malformed RTAS calls (the
//! test guest's `hostile` command: PCI configuration and MSI calls, writes
//! over a disk's BARs and ring among them) while QMP plugs and unplugs.
//! Every call gets a PAPR status or is refused outright, no empty DRC
//! leaves `unusable`, every device process serves on, and afterwards a
//! normal hotplug cycle works, a new disk's I/O included. Needs /dev/kvm.

use papervisor_tests::disks::{cold_plugged_disks, image, ok};
use papervisor_tests::{kvm_usable, QmpClient, Vm, HOTPLUG_MACHINE};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// RTAS statuses the platform may answer (PAPR's, and configure-connector's
/// step codes); -2 (busy) is not among them: nothing restarts here.
const PAPR_STATUSES: [i64; 8] = [-9003, -3, -1, 0, 1, 2, 3, 4];

#[test]
fn a_hostile_guest_gets_a_papr_status_for_every_call_and_hotplug_still_works() {
    if !kvm_usable("a_hostile_guest_gets_a_papr_status_for_every_call_and_hotplug_still_works") {
        return;
    }
    let scratch = papervisor_tests::scratch_dir();
    let disks = cold_plugged_disks(&scratch, &[3, 4]);
    let args: Vec<&str> = HOTPLUG_MACHINE
        .into_iter()
        .chain(disks.iter().map(String::as_str))
        .collect();
    let mut vm = Vm::start(&args);
    vm.boot();
    // QMP plugs and unplugs core 2 meanwhile (errors are fine: the guest
    // may have moved its DRC).
    let stop = Arc::new(AtomicBool::new(false));
    let plugger = {
        let socket = vm.qmp_socket();
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut qmp = QmpClient::connect(&socket);
            let mut cycles = 0;
            while !stop.load(Ordering::SeqCst) {
                qmp.execute(
                    "device_add",
                    json!({"driver": "host-spapr-cpu-core", "core-id": 2, "id": "c2"}),
                );
                qmp.execute("device_del", json!({"id": "c2"}));
                cycles += 1;
            }
            cycles
        })
    };
    let tally = vm.console.command("hostile 7 3000");
    stop.store(true, Ordering::SeqCst);
    let cycles = plugger.join().expect("the QMP thread");
    assert!(cycles > 0);
    println!("{} while QMP made {cycles} plug/unplug cycles", tally[0]);
    let line = tally[0]
        .strip_prefix("hostile: 3000 calls:")
        .unwrap_or_else(|| panic!("{tally:?}"));
    let mut answered = 0;
    for item in line.split_whitespace() {
        let (key, count) = item.split_once('=').expect("key=count");
        let count: u64 = count.parse().expect("a count");
        match key {
            "other" => assert_eq!(
                count, 0,
                "calls that ran without writing their status: {line}"
            ),
            "refused" | "unread" => {}
            status => {
                let status: i64 = status.parse().expect("a status");
                assert!(PAPR_STATUSES.contains(&status), "status {status}: {line}");
                answered += count;
            }
        }
    }
    assert!(answered > 1000, "{line}");
    // Every process served it all: none died or was cut off.
    for process in vm.device_processes() {
        assert_eq!(
            (&process["state"], &process["restarts"]),
            (&json!("running"), &json!(0)),
            "{process}"
        );
    }
    // An empty DRC cannot be moved by the guest: it stays in its empty
    // state (a PCI slot's, a physical DRC, is power-on).
    let rows = vm.qmp(&["x-query-drcs"])[0]["return"].clone();
    for row in rows.as_array().expect("rows") {
        if row["path"].is_null() {
            let empty = match row["type"].as_str() {
                Some("28") => "power-on",
                _ => "unusable",
            };
            assert_eq!(row["state"], empty, "{row}");
        }
    }
    // A normal hotplug cycle works: a core and a DIMM.
    vm.plug_core(3, "c3");
    let replies = vm.qmp(&[r#"device_del={"id": "c3"}"#, "wait-event:DEVICE_DELETED"]);
    assert_eq!(replies[1]["data"]["device"], "c3");
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    let backend = json!({"qom-type": "memory-backend-memfd", "id": "m", "size": 256u64 << 20});
    assert_eq!(qmp.execute("object-add", backend), json!({"return": {}}));
    let dimm = json!({"driver": "pc-dimm", "id": "d", "memdev": "m"});
    assert_eq!(qmp.execute("device_add", dimm), json!({"return": {}}));
    vm.console.expect_async(
        "dlpar: memory add count 1 from 0x80000004: ok",
        Duration::from_secs(30),
    );
    assert_eq!(
        qmp.execute("device_del", json!({"id": "d"})),
        json!({"return": {}})
    );
    assert_eq!(qmp.wait_event("DEVICE_DELETED")["data"]["device"], "d");
    // And a disk: plugged, driven, its pattern kept.
    let path = image(&scratch, "disk2.raw", 64 << 20);
    let node = json!({"driver": "file", "node-name": "disk2", "filename": path});
    assert_eq!(qmp.execute("blockdev-add", node), ok());
    let disk = json!({"driver": "virtio-blk-pci", "id": "vd2", "drive": "disk2", "addr": "6"});
    assert_eq!(qmp.execute("device_add", disk), ok());
    vm.console
        .expect_async("dlpar: pci add 0x40000030: ok", Duration::from_secs(60));
    assert_eq!(
        vm.console.command("blk write 2 8 8 3"),
        ["blk write: 8 sectors"]
    );
    assert_eq!(
        vm.console.command("blk check 2 8 8 3"),
        ["blk check: 8 sectors, ok"]
    );
    drop(qmp);
    drop(vm);
    let _ = std::fs::remove_dir_all(scratch);
}
