//! Disks on the PCI host bridge, as far as the host sees them: block nodes
//! (blockdev-add, blockdev-del, query-block), `device_add virtio-blk-pci`
//! starting a jailed block device process the core talks vhost-user to,
//! its PCI DRC plugged and the add event queued, query-pci, clear errors
//! with nothing left behind, and a disk the guest never configured removed
//! at once (`DEVICE_DELETED`, the process gone, its node free). Need
//! /dev/kvm.

use papervisor_tests::disks::{image, ok, wait_until};
use papervisor_tests::{in_process, kvm_usable, runs, QmpClient, Vm};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
/// Slot 3's DRC on PHB 0: type PCI, devfn 0x18.
const SLOT3_DRC: u64 = 0x4000_0018;

fn error(reply: &Value) -> String {
    reply["error"]["desc"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn blockdev_add(qmp: &mut QmpClient, node: &str, path: &Path, read_only: bool) -> Value {
    qmp.execute(
        "blockdev-add",
        json!({"driver": "file", "node-name": node, "filename": path, "read-only": read_only}),
    )
}

fn disk_add(qmp: &mut QmpClient, arguments: Value) -> Value {
    let mut arguments = arguments;
    arguments["driver"] = json!("virtio-blk-pci");
    qmp.execute("device_add", arguments)
}

fn block_rows(qmp: &mut QmpClient) -> Vec<Value> {
    qmp.execute("x-query-device-processes", json!({}))["return"]
        .as_array()
        .expect("a process list")
        .iter()
        .filter(|row| row["kind"] == "block")
        .cloned()
        .collect()
}

/// A booted VM (`machine`'s options) with a 1 MiB disk hot-added (vd0 on
/// node disk0, in slot 0) and taken by the guest, and its QMP client.
fn taken_disk(scratch: &Path, machine: &[&str]) -> (Vm, QmpClient) {
    let mut vm = Vm::start(machine);
    vm.boot();
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    let path = image(scratch, "disk0.raw", MIB);
    assert_eq!(blockdev_add(&mut qmp, "disk0", &path, false), ok());
    assert_eq!(
        disk_add(&mut qmp, json!({"id": "vd0", "drive": "disk0"})),
        ok()
    );
    vm.console
        .expect_async("dlpar: pci add 0x40000000: ok", Duration::from_secs(60));
    (vm, qmp)
}

fn status_field(pid: u64, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("a status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .map(|value| value.trim().to_string())
        .unwrap_or_default()
}

#[test]
fn a_disk_plugs_behind_a_jailed_block_process_and_goes_at_once_if_never_configured() {
    if !kvm_usable(
        "a_disk_plugs_behind_a_jailed_block_process_and_goes_at_once_if_never_configured",
    ) {
        return;
    }
    let scratch = papervisor_tests::scratch_dir();
    let base = scratch.join("run");
    let base_arg = base.display().to_string();
    let mut vm = Vm::start(&["--jail-dir", &base_arg]);
    vm.boot();
    // The guest leaves the add event alone: the disk is never configured.
    assert_eq!(vm.console.command("dlpar off"), ["dlpar: off"]);
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    let path = image(&scratch, "disk0.raw", 64 * MIB);
    assert_eq!(blockdev_add(&mut qmp, "disk0", &path, false), ok());
    let blocks = qmp.execute("query-block", json!({}));
    assert_eq!(blocks["return"][0]["inserted"]["node-name"], "disk0");
    assert_eq!(
        blocks["return"][0]["inserted"]["image"]["virtual-size"],
        64 * MIB
    );
    assert_eq!(blocks["return"][0]["qdev"], "");

    assert_eq!(
        disk_add(
            &mut qmp,
            json!({"id": "vd0", "drive": "disk0", "addr": "3"})
        ),
        ok()
    );
    let rows = block_rows(&mut qmp);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["disk"], "vd0");
    assert_eq!(rows[0]["node"], "disk0");
    assert_eq!(rows[0]["restarts"], 0);
    let pid = rows[0]["pid"].as_u64().expect("a pid");
    if !in_process() {
        assert_eq!(rows[0]["seccomp"], "kill");
        let uid = rows[0]["uid"].as_u64().expect("a jailed uid");
        assert_ne!(uid, 0);
        assert_eq!(
            status_field(pid, "Uid").split_whitespace().next(),
            Some(uid.to_string().as_str())
        );
        assert_eq!(status_field(pid, "Seccomp"), "2");
        assert_eq!(status_field(pid, "NoNewPrivs"), "1");
        assert_eq!(status_field(pid, "CapEff"), "0000000000000000");
        // Its root is an empty jail: no file of the host to read.
        let root: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/root"))
            .expect("its root")
            .flatten()
            .map(|entry| entry.file_name())
            .collect();
        assert!(root.is_empty(), "the jail holds {root:?}");
        // Its descriptors past stdio (the log): nothing of the host but the
        // image.
        for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("its descriptors")
            .flatten()
            .filter(|entry| {
                entry
                    .file_name()
                    .to_string_lossy()
                    .parse::<u32>()
                    .is_ok_and(|fd| fd > 2)
            })
        {
            let target = std::fs::read_link(entry.path()).unwrap_or_default();
            let target = target.to_string_lossy();
            assert!(
                !target.starts_with('/')
                    || target == path.to_string_lossy()
                    || target.starts_with("/memfd:")
                    || target == "/dev/null",
                "the block process holds {target}"
            );
        }
    }
    let drc = vm.drc(SLOT3_DRC as u32);
    assert_eq!(drc["device"], "vd0", "{drc}");
    assert_eq!(drc["path"], "/machine/peripheral/vd0", "{drc}");
    assert_eq!(drc["state"], "power-on", "{drc}");
    assert_eq!(
        qmp.execute("x-query-event-log", json!({}))["return"],
        json!([{"action": "add", "resource": "pci", "drc": SLOT3_DRC}])
    );
    let pci = qmp.execute("query-pci", json!({}));
    assert_eq!(pci["return"][0]["devices"][0]["slot"], 3);
    assert_eq!(pci["return"][0]["devices"][0]["qdev_id"], "vd0");
    assert_eq!(pci["return"][0]["devices"][0]["id"]["device"], 0x1042);
    assert_eq!(
        qmp.execute("query-block", json!({}))["return"][0]["qdev"],
        "/machine/peripheral/vd0/virtio-backend"
    );

    // Clear errors, nothing left behind.
    assert!(error(&blockdev_add(&mut qmp, "disk0", &path, true)).contains("Duplicate nodes"));
    assert!(error(&qmp.execute("blockdev-del", json!({"node-name": "disk0"}))).contains("busy"));
    assert!(error(&disk_add(&mut qmp, json!({"id": "vd1", "drive": "disk0"}))).contains("busy"));
    assert!(error(&disk_add(
        &mut qmp,
        json!({"id": "vd1", "drive": "nothing"})
    ))
    .contains("no block node 'nothing'"));
    let other = image(&scratch, "disk1.raw", MIB);
    assert_eq!(blockdev_add(&mut qmp, "disk1", &other, true), ok());
    assert!(
        error(&disk_add(&mut qmp, json!({"id": "vd0", "drive": "disk1"})))
            .contains("Duplicate device ID")
    );
    assert!(error(&disk_add(
        &mut qmp,
        json!({"id": "vd1", "drive": "disk1", "addr": "3"})
    ))
    .contains("in use by vd0"));
    assert!(error(&disk_add(
        &mut qmp,
        json!({"id": "vd1", "drive": "disk1", "addr": "40"})
    ))
    .contains("PCI address"));
    assert!(error(&disk_add(
        &mut qmp,
        json!({"id": "vd1", "drive": "disk1", "addr": "4.2"})
    ))
    .contains("function 2"));
    assert!(error(&disk_add(
        &mut qmp,
        json!({"id": "vd1", "drive": "disk1", "bus": "pci.7"})
    ))
    .contains("Bus 'pci.7' not found"));
    assert!(error(&disk_add(
        &mut qmp,
        json!({"id": "vd1", "drive": "disk1", "serial": "x"})
    ))
    .contains("virtio-blk-pci.serial"));
    assert!(error(&blockdev_add(
        &mut qmp,
        "bad",
        Path::new("/nonexistent/x.raw"),
        false
    ))
    .contains("Could not open"));
    assert!(error(&blockdev_add(&mut qmp, "9bad", &other, false)).contains("Invalid node-name"));
    assert!(error(&qmp.execute(
        "blockdev-add",
        json!({"driver": "qcow2", "node-name": "q", "filename": other})
    ))
    .contains("'qcow2'"));
    assert_eq!(block_rows(&mut qmp).len(), 1);
    assert_eq!(
        qmp.execute("query-block", json!({}))["return"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );

    // Never configured by the guest: released at once.
    assert_eq!(qmp.execute("device_del", json!({"id": "vd0"})), ok());
    let deleted = qmp.wait_event("DEVICE_DELETED");
    assert_eq!(
        deleted["data"],
        json!({"device": "vd0", "path": "/machine/peripheral/vd0"})
    );
    if !in_process() {
        wait_until("the block process ends", || !runs(pid));
        let jails = base.join(format!("vm-{}", vm.pid())).join("jails");
        wait_until("its jail is removed", || {
            std::fs::read_dir(jails.join("papervisor-block"))
                .map(|entries| entries.count() == 0)
                .unwrap_or(true)
        });
        let leftovers: Vec<_> = std::fs::read_dir(base.join(format!("vm-{}", vm.pid())))
            .expect("the runtime directory")
            .flatten()
            .map(|entry| entry.file_name())
            .filter(|name| name.to_string_lossy().starts_with("block-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
    assert!(block_rows(&mut qmp).is_empty());
    assert_eq!(vm.drc(SLOT3_DRC as u32)["device"], Value::Null);
    assert_eq!(
        qmp.execute("blockdev-del", json!({"node-name": "disk0"})),
        ok()
    );
    assert!(error(&qmp.execute("device_del", json!({"id": "vd0"}))).contains("not found"));
    // The slot and the node's name are free again.
    assert_eq!(blockdev_add(&mut qmp, "disk0", &path, false), ok());
    assert_eq!(
        disk_add(
            &mut qmp,
            json!({"id": "vd0", "drive": "disk0", "addr": "3"})
        ),
        ok()
    );
    assert_eq!(block_rows(&mut qmp).len(), 1);
    drop(qmp);
    drop(vm);
    let _ = std::fs::remove_dir_all(scratch);
}

fn maps_dimm(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_default()
        .contains("papervisor-dimm")
}

#[test]
fn a_dimm_reaches_every_disks_backend_and_leaves_it_when_unplugged() {
    let test = "a_dimm_reaches_every_disks_backend_and_leaves_it_when_unplugged";
    if papervisor_tests::skip_in_process(test, "it reads the block process's mappings")
        || !kvm_usable(test)
    {
        return;
    }
    let scratch = papervisor_tests::scratch_dir();
    let mut vm = Vm::start(&papervisor_tests::HOTPLUG_MACHINE);
    vm.boot();
    assert_eq!(vm.console.command("dlpar off"), ["dlpar: off"]);
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    let path = image(&scratch, "disk0.raw", MIB);
    assert_eq!(blockdev_add(&mut qmp, "disk0", &path, false), ok());
    assert_eq!(
        disk_add(&mut qmp, json!({"id": "vd0", "drive": "disk0"})),
        ok()
    );
    let pid = block_rows(&mut qmp)[0]["pid"].as_u64().expect("a pid");
    assert!(!maps_dimm(pid), "no DIMM yet");
    // An id names one device, whatever its family.
    let core = json!({"driver": "host-spapr-cpu-core", "core-id": 1, "id": "vd0"});
    assert!(error(&qmp.execute("device_add", core)).contains("Duplicate device ID 'vd0'"));
    let backend = json!({"qom-type": "memory-backend-memfd", "id": "mem0", "size": 256 * MIB});
    assert_eq!(qmp.execute("object-add", backend), ok());
    let named_as_the_disk = json!({"driver": "pc-dimm", "id": "vd0", "memdev": "mem0"});
    assert!(error(&qmp.execute("device_add", named_as_the_disk)).contains("Duplicate device ID"));
    let dimm = json!({"driver": "pc-dimm", "id": "dimm0", "memdev": "mem0"});
    assert_eq!(qmp.execute("device_add", dimm), ok());
    assert!(maps_dimm(pid), "the block process maps the DIMM");
    let disk_named_as_the_dimm = json!({"id": "dimm0", "drive": "disk0"});
    assert!(error(&disk_add(&mut qmp, disk_named_as_the_dimm)).contains("Duplicate device ID"));
    // A reset completes the pending unplug: the DIMM leaves the backend.
    assert_eq!(qmp.execute("device_del", json!({"id": "dimm0"})), ok());
    assert_eq!(qmp.execute("system_reset", json!({})), ok());
    assert_eq!(qmp.wait_event("DEVICE_DELETED")["data"]["device"], "dimm0");
    wait_until("the block process unmaps the DIMM", || !maps_dimm(pid));
    drop(qmp);
    drop(vm);
    let _ = std::fs::remove_dir_all(scratch);
}

/// The guest's RTAS calls of its last PCI add or remove (`pci calls`).
fn pci_calls(vm: &mut Vm) -> Vec<String> {
    vm.console
        .command("pci calls")
        .into_iter()
        .filter(|line| line.starts_with("call "))
        .collect()
}

#[test]
fn the_guest_adds_and_removes_a_disk_with_drmgrs_calls_and_a_pending_unplug_is_asked_again() {
    let test =
        "the_guest_adds_and_removes_a_disk_with_drmgrs_calls_and_a_pending_unplug_is_asked_again";
    if !kvm_usable(test) {
        return;
    }
    let scratch = papervisor_tests::scratch_dir();
    let mut vm = Vm::start(&[]);
    vm.boot();
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    let path = image(&scratch, "disk0.raw", 64 * MIB);
    assert_eq!(blockdev_add(&mut qmp, "disk0", &path, false), ok());
    assert_eq!(
        disk_add(
            &mut qmp,
            json!({"id": "vd0", "drive": "disk0", "addr": "3.0"})
        ),
        ok()
    );
    vm.console
        .expect_async("dlpar: pci add 0x40000018: ok", Duration::from_secs(60));
    // drmgr's add, in order and in status (PCI reference §8).
    assert_eq!(
        pci_calls(&mut vm),
        [
            "call set-indicator(9001, 1073741848, 0) -> 0",
            "call set-power-level(-1, 0) -> 0, 100",
            "call set-indicator(9002, 1073741848, 1) -> 0",
            "call get-sensor-state(9003, 1073741848) -> 0, 1",
            "call set-power-level(-1, 100) -> 0, 100",
            "call set-indicator(9001, 1073741848, 1) -> 0",
            "call ibm,configure-connector(1073741848) x17 -> 2 x1, 3 x15, 0",
            // The kernel's rescan and the driver's probe (PCI reference §4,
            // §8): no EEH, MSI refused, nothing to release, MSI-X granted.
            "call ibm,get-config-addr-info2(0) -> -3",
            "call ibm,change-msi(3, 0) -> -3",
            "call ibm,change-msi(1, 0) -> -1",
            "call ibm,change-msi(4, 2) -> 0, 2, 1",
            "call ibm,query-interrupt-source-number(0) -> 0, 4112, 1",
            "call ibm,query-interrupt-source-number(1) -> 0, 4113, 1",
            "call ibm,read-pci-config() x41 -> 0",
            "call ibm,write-pci-config() x11 -> 0",
        ]
    );
    assert_eq!(
        vm.console.command("pci"),
        ["pci 0x40000018 00:03.0 1af4:1042 virtio-blk"]
    );
    assert_eq!(vm.drc(SLOT3_DRC as u32)["state"], "physical-configured");

    // A pending unplug while the DR agent is stopped: every device_del asks
    // again, and at most one remove event waits.
    assert_eq!(vm.console.command("dlpar off"), ["dlpar: off"]);
    for _ in 0..21 {
        assert_eq!(qmp.execute("device_del", json!({"id": "vd0"})), ok());
    }
    let queued = qmp.execute("x-query-event-log", json!({}))["return"].clone();
    assert_eq!(
        queued,
        json!([{"action": "remove", "resource": "pci", "drc": SLOT3_DRC}]),
        "{queued}"
    );
    assert!(qmp
        .events_within(Duration::from_millis(300))
        .iter()
        .all(|e| e["event"] != "DEVICE_DELETED"));
    assert_eq!(vm.drc(SLOT3_DRC as u32)["unplug-requested"], true);
    // The agent runs again: the waiting event is handled (perhaps before
    // the shell's prompt comes back).
    let removed = "dlpar: pci remove 0x40000018: ok";
    let lines = vm.console.command("dlpar on");
    assert_eq!(lines[0], "dlpar: on");
    if !lines.iter().any(|line| line == removed) {
        vm.console.expect_async(removed, Duration::from_secs(60));
    }
    assert_eq!(
        qmp.wait_event("DEVICE_DELETED")["data"],
        json!({"device": "vd0", "path": "/machine/peripheral/vd0"})
    );
    // drmgr's remove: the platform completed the unplug at the isolate.
    assert_eq!(
        pci_calls(&mut vm),
        [
            "call set-indicator(9002, 1073741848, 1) -> 0",
            // The driver lets the device go: its vectors freed (MSI first,
            // then the legacy function), decoding off.
            "call ibm,change-msi(3, 0) -> -3",
            "call ibm,change-msi(1, 0) -> 0, 0, 1",
            "call ibm,read-pci-config() x1 -> 0",
            "call ibm,write-pci-config() x1 -> 0",
            "call set-indicator(9001, 1073741848, 0) -> 0",
            "call set-power-level(-1, 0) -> 0, 100",
        ]
    );
    assert_eq!(vm.console.command("pci"), ["pci: no functions"]);
    assert!(block_rows(&mut qmp).is_empty());
    assert_eq!(vm.drc(SLOT3_DRC as u32)["device"], Value::Null);
    assert_eq!(vm.drc(SLOT3_DRC as u32)["state"], "power-on");
    assert_eq!(
        qmp.execute("blockdev-del", json!({"node-name": "disk0"})),
        ok()
    );
    drop(qmp);
    drop(vm);
    let _ = std::fs::remove_dir_all(scratch);
}

#[test]
fn two_disks_plug_together_and_a_reset_completes_a_pending_unplug() {
    let test = "two_disks_plug_together_and_a_reset_completes_a_pending_unplug";
    if !kvm_usable(test) {
        return;
    }
    let scratch = papervisor_tests::scratch_dir();
    let mut vm = Vm::start(&[]);
    vm.boot();
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    for (node, id) in [("disk0", "vd0"), ("disk1", "vd1")] {
        let path = image(&scratch, &format!("{node}.raw"), MIB);
        assert_eq!(blockdev_add(&mut qmp, node, &path, false), ok());
        assert_eq!(disk_add(&mut qmp, json!({"id": id, "drive": node})), ok());
    }
    // First free slots: 0 and 1.
    // Both events are handled in one go, then the prompt comes back.
    let seen = vm
        .console
        .read_until("dlpar: pci add 0x40000008: ok", Duration::from_secs(60));
    assert!(seen.contains("dlpar: pci add 0x40000000: ok"), "{seen}");
    vm.console
        .read_until(papervisor_tests::PROMPT, Duration::from_secs(30));
    let listed = vm.console.command("pci");
    assert_eq!(
        listed,
        [
            "pci 0x40000000 00:00.0 1af4:1042 virtio-blk",
            "pci 0x40000008 00:01.0 1af4:1042 virtio-blk"
        ]
    );
    assert_eq!(block_rows(&mut qmp).len(), 2);
    assert_eq!(vm.console.command("dlpar off"), ["dlpar: off"]);
    assert_eq!(qmp.execute("device_del", json!({"id": "vd0"})), ok());
    assert_eq!(qmp.execute("system_reset", json!({})), ok());
    assert_eq!(qmp.wait_event("DEVICE_DELETED")["data"]["device"], "vd0");
    let rows = block_rows(&mut qmp);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["disk"], "vd1");
    let pci = qmp.execute("query-pci", json!({}));
    let devices = pci["return"][0]["devices"]
        .as_array()
        .expect("devices")
        .clone();
    assert_eq!(devices.len(), 1, "{pci}");
    assert_eq!(devices[0]["qdev_id"], "vd1");
    assert_eq!(vm.drc(0x4000_0008)["state"], "physical-configured");
    assert_eq!(vm.drc(0x4000_0000)["device"], Value::Null);
    drop(qmp);
    drop(vm);
    let _ = std::fs::remove_dir_all(scratch);
}

#[test]
fn a_killed_block_process_is_replaced_and_the_disk_still_goes() {
    let test = "a_killed_block_process_is_replaced_and_the_disk_still_goes";
    if papervisor_tests::skip_in_process(test, "it kills the block process") || !kvm_usable(test) {
        return;
    }
    let scratch = papervisor_tests::scratch_dir();
    let (mut vm, mut qmp) = taken_disk(&scratch, &[]);
    let pid = block_rows(&mut qmp)[0]["pid"].as_u64().expect("a pid");
    papervisor_tests::send_signal(pid, nix::sys::signal::Signal::SIGKILL);
    wait_until("a successor serves the disk", || {
        let row = &block_rows(&mut qmp)[0];
        row["restarts"] == 1 && row["state"] == "running"
    });
    let row = block_rows(&mut qmp)[0].clone();
    assert_eq!(row["last-exit"], "killed by SIGKILL");
    assert_ne!(row["pid"], pid, "{row}");
    // The VM and the other devices run on.
    assert_eq!(
        vm.console.command("pci"),
        ["pci 0x40000000 00:00.0 1af4:1042 virtio-blk"]
    );
    assert_eq!(
        qmp.execute("query-status", json!({}))["return"]["status"],
        "running"
    );
    // The disk is removed as any other.
    assert_eq!(qmp.execute("device_del", json!({"id": "vd0"})), ok());
    assert_eq!(qmp.wait_event("DEVICE_DELETED")["data"]["device"], "vd0");
    assert!(block_rows(&mut qmp).is_empty());
    assert_eq!(
        qmp.execute("blockdev-del", json!({"node-name": "disk0"})),
        ok()
    );
    drop(qmp);
    drop(vm);
    let _ = std::fs::remove_dir_all(scratch);
}

#[test]
fn a_disk_on_the_command_line_is_there_at_boot_and_goes_as_a_hot_plugged_one() {
    let test = "a_disk_on_the_command_line_is_there_at_boot_and_goes_as_a_hot_plugged_one";
    if !kvm_usable(test) {
        return;
    }
    let scratch = papervisor_tests::scratch_dir();
    let path = image(&scratch, "boot.raw", MIB);
    let blockdev = format!(
        "driver=file,node-name=boot,filename={},read-only=on",
        path.display()
    );
    let mut vm = Vm::start(&[
        "--blockdev",
        &blockdev,
        "--device",
        "virtio-blk-pci,id=vd0,drive=boot,addr=5",
    ]);
    vm.boot();
    // The guest found it in the device tree: no event, no add.
    assert_eq!(
        vm.console.command("pci"),
        ["pci 0x40000028 00:05.0 1af4:1042 virtio-blk"]
    );
    let drc = vm.drc(0x4000_0028);
    assert_eq!(drc["state"], "physical-configured", "{drc}");
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    assert_eq!(
        qmp.execute("x-query-event-log", json!({}))["return"],
        json!([])
    );
    let blocks = qmp.execute("query-block", json!({}));
    assert_eq!(blocks["return"][0]["inserted"]["ro"], true);
    assert_eq!(block_rows(&mut qmp).len(), 1);
    // Removed as any disk: drmgr's remove, then DEVICE_DELETED.
    assert_eq!(qmp.execute("device_del", json!({"id": "vd0"})), ok());
    vm.console
        .expect_async("dlpar: pci remove 0x40000028: ok", Duration::from_secs(60));
    assert_eq!(qmp.wait_event("DEVICE_DELETED")["data"]["device"], "vd0");
    assert!(block_rows(&mut qmp).is_empty());
    drop(qmp);
    drop(vm);
    let _ = std::fs::remove_dir_all(scratch);
}

#[test]
fn a_bad_disk_on_the_command_line_is_refused_before_anything_starts() {
    let output = papervisor_tests::papervisor_command()
        .args(["--device", "virtio-blk-pci,id=vd0,drive=nothing,addr=3.4"])
        .output()
        .expect("papervisor runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("function 4"), "{stderr}");
}

#[test]
fn a_stopped_block_process_is_cut_off_and_memory_hot_plug_goes_on() {
    let test = "a_stopped_block_process_is_cut_off_and_memory_hot_plug_goes_on";
    if papervisor_tests::skip_in_process(test, "it stops the block process") || !kvm_usable(test) {
        return;
    }
    let scratch = papervisor_tests::scratch_dir();
    let (mut vm, mut qmp) = taken_disk(&scratch, &papervisor_tests::HOTPLUG_MACHINE);
    let pid = block_rows(&mut qmp)[0]["pid"].as_u64().expect("a pid");
    papervisor_tests::send_signal(pid, nix::sys::signal::Signal::SIGSTOP);
    // The DIMM's region cannot reach the stopped backend: after its bounded
    // wait the core cuts it off, and the DIMM is plugged all the same.
    let backend = json!({"qom-type": "memory-backend-memfd", "id": "mem0", "size": 256 * MIB});
    assert_eq!(qmp.execute("object-add", backend), ok());
    let started = Instant::now();
    let dimm = json!({"driver": "pc-dimm", "id": "dimm0", "memdev": "mem0"});
    assert_eq!(qmp.execute("device_add", dimm), ok());
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    wait_until("the stopped block process is killed", || !runs(pid));
    // Its successor serves the disk, the DIMM in its memory table.
    wait_until("a successor serves the disk", || {
        let row = &block_rows(&mut qmp)[0];
        row["restarts"] == 1 && row["state"] == "running"
    });
    let row = block_rows(&mut qmp)[0].clone();
    let exit = row["last-exit"].as_str().unwrap_or_default();
    assert!(
        exit.starts_with("cut off: its backend did not take DIMM dimm0"),
        "{exit}"
    );
    // The disk is still removed as any other.
    assert_eq!(qmp.execute("device_del", json!({"id": "vd0"})), ok());
    vm.console
        .expect_async("dlpar: pci remove 0x40000000: ok", Duration::from_secs(60));
    assert_eq!(qmp.wait_event("DEVICE_DELETED")["data"]["device"], "vd0");
    drop(qmp);
    drop(vm);
    let _ = std::fs::remove_dir_all(scratch);
}

#[test]
fn two_vms_disks_run_under_their_own_vms_uids() {
    let test = "two_vms_disks_run_under_their_own_vms_uids";
    if papervisor_tests::skip_in_process(test, "it checks the jailed processes' uids")
        || !papervisor_tests::root_and_kvm(test)
    {
        return;
    }
    let scratch = papervisor_tests::scratch_dir();
    let mut pids_and_uids = Vec::new();
    let mut vms = Vec::new();
    for n in 0..2 {
        let mut vm = Vm::start(&[]);
        vm.boot();
        let mut qmp = QmpClient::connect(&vm.qmp_socket());
        let path = image(&scratch, &format!("disk{n}.raw"), MIB);
        assert_eq!(blockdev_add(&mut qmp, "disk0", &path, false), ok());
        assert_eq!(
            disk_add(&mut qmp, json!({"id": "vd0", "drive": "disk0"})),
            ok()
        );
        let row = block_rows(&mut qmp)[0].clone();
        let pid = row["pid"].as_u64().expect("a pid");
        let uid = row["uid"].as_u64().expect("a uid");
        assert_eq!(
            status_field(pid, "Uid").split_whitespace().next(),
            Some(uid.to_string().as_str())
        );
        pids_and_uids.push((pid, uid));
        vms.push((vm, qmp));
    }
    // Each VM's disk is served under that VM's uid: one VM's block process
    // cannot signal or trace the other's.
    assert_ne!(pids_and_uids[0].1, pids_and_uids[1].1, "{pids_and_uids:?}");
    drop(vms);
    let _ = std::fs::remove_dir_all(scratch);
}

#[test]
fn a_disk_survives_a_killed_hotplug_controller_and_still_goes() {
    let test = "a_disk_survives_a_killed_hotplug_controller_and_still_goes";
    if papervisor_tests::skip_in_process(test, "it kills the hotplug controller")
        || !kvm_usable(test)
    {
        return;
    }
    let scratch = papervisor_tests::scratch_dir();
    let (mut vm, mut qmp) = taken_disk(&scratch, &[]);
    vm.kill_and_await_restart("hotplug-controller");
    // The successor resumed the physical DRC from the state region.
    let drc = vm.drc(0x4000_0000);
    assert_eq!(drc["state"], "physical-configured", "{drc}");
    assert_eq!(drc["device"], "vd0", "{drc}");
    assert_eq!(qmp.execute("device_del", json!({"id": "vd0"})), ok());
    vm.console
        .expect_async("dlpar: pci remove 0x40000000: ok", Duration::from_secs(60));
    assert_eq!(qmp.wait_event("DEVICE_DELETED")["data"]["device"], "vd0");
    assert!(block_rows(&mut qmp).is_empty());
    drop(qmp);
    drop(vm);
    let _ = std::fs::remove_dir_all(scratch);
}
