//! CPU core hotplug end to end: QMP through the `qemu.qmp` client, the guest
//! through its console, the DRC table through x-query-drcs. The seed scenario
//! is here: a refused unplug must reach the management client and a later
//! device_del must reach the guest again, without a reboot.

use papervisor_tests::{assert_one_error_per_refusal, kvm_usable, Vm};
use serde_json::{json, Value};
use std::time::Duration;

const HOTPLUG_TIMEOUT: Duration = Duration::from_secs(60);
const CORE1_DRC: u64 = 0x1000_0001;

fn add_core1() -> &'static str {
    r#"device_add={"driver": "host-spapr-cpu-core", "core-id": 1, "id": "core1"}"#
}

fn drc(vm: &Vm, index: u64) -> Value {
    let replies = vm.qmp(&["x-query-drcs"]);
    replies[0]["return"]
        .as_array()
        .expect("a DRC list")
        .iter()
        .find(|row| row["index"] == index)
        .cloned()
        .unwrap_or_else(|| panic!("no DRC {index:#x}"))
}

fn vcpu_count(vm: &Vm) -> usize {
    vm.qmp(&["query-cpus-fast"])[0]["return"]
        .as_array()
        .expect("a CPU list")
        .len()
}

fn hot_add_core1(vm: &mut Vm) {
    assert_eq!(vm.qmp(&[add_core1()])[0], json!({"return": {}}));
    let line = vm
        .console
        .expect_async("dlpar: cpu add 0x10000001: ", HOTPLUG_TIMEOUT);
    assert_eq!(line, "dlpar: cpu add 0x10000001: ok, cpus 1 (1 online)");
}

#[test]
fn hot_add_unplug_and_replug_a_core() {
    if !kvm_usable("hot_add_unplug_and_replug_a_core") {
        return;
    }
    let mut vm = Vm::start(&["--smp", "cpus=1,maxcpus=4"]);
    vm.boot();
    hot_add_core1(&mut vm);
    assert_eq!(vm.console.command("cpus"), ["cpu 0 online", "cpu 1 online"]);
    assert_eq!(vcpu_count(&vm), 2);
    let row = drc(&vm, CORE1_DRC);
    assert_eq!(row["state"], "configured");
    assert_eq!(row["device"], "core1");
    let hotpluggable = vm.qmp(&["query-hotpluggable-cpus"]);
    let cores = hotpluggable[0]["return"].as_array().unwrap();
    assert_eq!(cores.len(), 4);
    let core1 = cores.iter().find(|c| c["props"]["core-id"] == 1).unwrap();
    assert_eq!(core1["qom-path"], "/machine/peripheral/core1");
    assert_eq!(core1["vcpus-count"], 1);
    assert!(cores.iter().find(|c| c["props"]["core-id"] == 2).unwrap()["qom-path"].is_null());

    let replies = vm.qmp(&[r#"device_del={"id": "core1"}"#, "wait-event:DEVICE_DELETED"]);
    assert_eq!(replies[0], json!({"return": {}}));
    assert_eq!(
        replies[1]["data"],
        json!({"device": "core1", "path": "/machine/peripheral/core1"})
    );
    vm.console
        .expect_async("dlpar: cpu remove 0x10000001: ok", HOTPLUG_TIMEOUT);
    assert_eq!(vm.console.command("cpus"), ["cpu 0 online"]);
    assert_eq!(vcpu_count(&vm), 1);
    let row = drc(&vm, CORE1_DRC);
    assert_eq!(
        (row["state"].as_str(), row["device"].is_null()),
        (Some("unusable"), true)
    );

    // The same core-id again: the parked vCPU comes back.
    hot_add_core1(&mut vm);
    assert_eq!(vm.console.command("cpus"), ["cpu 0 online", "cpu 1 online"]);
    let events = vm.console.command("events");
    assert_eq!(
        events,
        [
            "event 1: add cpu index 0x10000001",
            "event 2: remove cpu index 0x10000001",
            "event 3: add cpu index 0x10000001"
        ]
    );
}

#[test]
fn a_refused_unplug_is_reported_and_a_retry_reaches_the_guest() {
    if !kvm_usable("a_refused_unplug_is_reported_and_a_retry_reaches_the_guest") {
        return;
    }
    let mut vm = Vm::start(&["--smp", "cpus=1,maxcpus=4"]);
    vm.boot();
    hot_add_core1(&mut vm);
    // CPU 0 goes: CPU 1, in the core to be removed, is the last online CPU.
    assert_eq!(vm.console.command("cpu offline 0"), ["cpu 0 offline"]);

    let replies = vm.qmp(&[
        r#"device_del={"id": "core1"}"#,
        "wait-event:DEVICE_UNPLUG_GUEST_ERROR",
    ]);
    assert_eq!(replies[0], json!({"return": {}}));
    assert_eq!(
        replies[1]["data"],
        json!({"device": "core1", "path": "/machine/peripheral/core1"})
    );
    let refusal = vm
        .console
        .expect_async("dlpar: cpu remove 0x10000001: ", HOTPLUG_TIMEOUT);
    assert_eq!(
        refusal,
        "dlpar: cpu remove 0x10000001: refused: Unable to remove last online CPU 1"
    );
    // Still there, and no longer unplug-requested.
    assert_eq!(
        vm.console.command("cpus"),
        ["cpu 0 offline", "cpu 1 online"]
    );
    assert_eq!(vcpu_count(&vm), 2);
    let row = drc(&vm, CORE1_DRC);
    assert_eq!(row["state"], "configured");
    assert_eq!(row["unplug-requested"], false);

    // Retry after bringing CPU 0 back: the event reaches the guest again.
    assert_eq!(vm.console.command("cpu online 0"), ["cpu 0 online"]);
    let replies = vm.qmp(&[r#"device_del={"id": "core1"}"#, "wait-event:DEVICE_DELETED"]);
    assert_eq!(replies[0], json!({"return": {}}));
    assert_eq!(replies[1]["data"]["device"], "core1");
    vm.console
        .expect_async("dlpar: cpu remove 0x10000001: ok", HOTPLUG_TIMEOUT);
    // The shell ran on CPU 1 and moved to CPU 0 before its core went.
    assert_eq!(vm.console.command("cpus"), ["cpu 0 online"]);
    assert_eq!(vcpu_count(&vm), 1);
}

#[test]
fn a_device_del_storm_queues_at_most_one_event_and_each_refusal_is_reported_once() {
    if !kvm_usable("a_device_del_storm_queues_at_most_one_event_and_each_refusal_is_reported_once")
    {
        return;
    }
    let mut vm = Vm::start(&["--smp", "cpus=1,maxcpus=4"]);
    vm.boot();
    hot_add_core1(&mut vm);
    assert_eq!(vm.console.command("cpu offline 0"), ["cpu 0 offline"]);

    let storm = format!("repeat:1000:device_del={}", r#"{"id": "core1"}"#);
    let replies = vm.qmp(&[&storm, "x-query-event-log", "events-for:5"]);
    assert_eq!(
        replies[0]["errors"],
        json!([]),
        "every device_del is accepted"
    );
    let queued: Vec<&Value> = replies[1]["return"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["drc"] == CORE1_DRC && e["action"] == "remove")
        .collect();
    assert!(queued.len() <= 1, "queued: {queued:?}");
    // The guest has drained (5 s): one report per refusal the guest made.
    let refusals = assert_one_error_per_refusal(
        &mut vm,
        &replies[2]["events"],
        "dlpar: cpu remove 0x10000001: refused",
    );
    // Coalesced: the guest handled fewer remove events than there were requests.
    assert!(refusals < 1000, "{refusals} refusals for 1000 requests");
    assert_eq!(
        vm.console.command("cpus"),
        ["cpu 0 offline", "cpu 1 online"]
    );
    let events_after = vm.qmp(&["x-query-event-log"]);
    assert!(events_after[0]["return"].as_array().unwrap().len() <= 1);
    assert_eq!(drc(&vm, CORE1_DRC)["state"], "configured");
}

#[test]
fn a_pending_unplug_completes_at_system_reset() {
    if !kvm_usable("a_pending_unplug_completes_at_system_reset") {
        return;
    }
    let mut vm = Vm::start(&["--smp", "cpus=1,maxcpus=4"]);
    vm.boot();
    hot_add_core1(&mut vm);
    // A guest that does not get to the event: the unplug stays pending.
    assert_eq!(vm.console.command("dlpar off"), ["dlpar: off"]);
    assert_eq!(
        vm.qmp(&[r#"device_del={"id": "core1"}"#])[0],
        json!({"return": {}})
    );
    let row = drc(&vm, CORE1_DRC);
    assert_eq!(
        (row["state"].as_str(), row["unplug-requested"].as_bool()),
        (Some("configured"), Some(true))
    );
    let queued = vm.qmp(&["x-query-event-log"]);
    assert_eq!(
        queued[0]["return"],
        json!([{"action": "remove", "resource": "cpu", "drc": CORE1_DRC}])
    );

    let replies = vm.qmp(&[
        "system_reset",
        "wait-event:DEVICE_DELETED",
        "wait-event:RESET",
    ]);
    assert_eq!(replies[1]["data"]["device"], "core1");
    let banner = vm.boot();
    assert!(banner.contains("cpus: 1 present"), "{banner}");
    assert_eq!(vm.console.command("cpus"), ["cpu 0 online"]);
    assert_eq!(vcpu_count(&vm), 1);
    assert_eq!(vm.qmp(&["x-query-event-log"])[0]["return"], json!([]));
    let row = drc(&vm, CORE1_DRC);
    assert_eq!(
        (row["state"].as_str(), row["device"].is_null()),
        (Some("unusable"), true)
    );
    // And the slot can be used again.
    hot_add_core1(&mut vm);
}

#[test]
fn qmp_hotplug_errors_say_what_is_wrong() {
    if !kvm_usable("qmp_hotplug_errors_say_what_is_wrong") {
        return;
    }
    let mut vm = Vm::start(&["--smp", "cpus=2,maxcpus=4,threads=2"]);
    vm.boot();
    let replies = vm.qmp(&[
        r#"device_add={"driver": "host-spapr-cpu-core", "core-id": 0, "id": "x"}"#,
        r#"device_add={"driver": "host-spapr-cpu-core", "core-id": 1, "id": "x"}"#,
        r#"device_add={"driver": "host-spapr-cpu-core", "core-id": 4, "id": "x"}"#,
        r#"device_add={"driver": "virtio-net-pci", "id": "x"}"#,
        r#"device_add={"driver": "host-spapr-cpu-core", "id": "x"}"#,
        r#"device_add={"driver": "host-spapr-cpu-core", "core-id": 2, "id": "x", "speed": 3}"#,
        r#"device_add={"driver": "host-spapr-cpu-core", "core-id": 2, "id": "two"}"#,
        r#"device_add={"driver": "host-spapr-cpu-core", "core-id": 2, "id": "again"}"#,
        r#"device_del={"id": "nope"}"#,
        r#"device_del={"id": "/machine/unattached/device[0]"}"#,
    ]);
    let error = |i: usize| {
        (
            replies[i]["error"]["class"]
                .as_str()
                .unwrap_or("none")
                .to_string(),
            replies[i]["error"]["desc"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        )
    };
    assert!(
        error(0).1.contains("core 0 already populated"),
        "{:?}",
        error(0)
    );
    assert!(error(1).1.contains("invalid core id 1"), "{:?}", error(1));
    assert!(error(2).1.contains("out of range"), "{:?}", error(2));
    assert!(error(3).1.contains("virtio-net-pci"), "{:?}", error(3));
    assert!(error(4).1.contains("core-id"), "{:?}", error(4));
    assert!(error(5).1.contains("speed"), "{:?}", error(5));
    assert_eq!(replies[6], json!({"return": {}}));
    assert!(
        error(7).1.contains("core 2 already populated"),
        "{:?}",
        error(7)
    );
    assert_eq!(
        error(8),
        ("DeviceNotFound".into(), "Device 'nope' not found".into())
    );
    assert!(
        error(9).1.contains("Boot CPU core may not be unplugged"),
        "{:?}",
        error(9)
    );
    // The two-thread core came up whole.
    vm.console
        .expect_async("dlpar: cpu add 0x10000002: ok, cpus 2 3", HOTPLUG_TIMEOUT);
    assert_eq!(
        vm.console.command("cpus"),
        [
            "cpu 0 online",
            "cpu 1 online",
            "cpu 2 online",
            "cpu 3 online"
        ]
    );
}

#[test]
fn drc_rtas_calls_with_bad_arguments_get_papr_status_codes() {
    if !kvm_usable("drc_rtas_calls_with_bad_arguments_get_papr_status_codes") {
        return;
    }
    let mut vm = Vm::start(&["--smp", "cpus=1,maxcpus=2", "--memory", "size=512M"]);
    vm.boot();
    let console = &mut vm.console;
    let cases = [
        // set-indicator (0x201a): unknown DRC, DR indicator on a logical DRC,
        // a value out of range, allocation usable on an empty DRC.
        (
            "rtas-raw 0x2000000 0x201a 3 1 9001 0x10000007 1",
            "rtas-raw: status -3",
        ),
        (
            "rtas-raw 0x2000000 0x201a 3 1 9002 0x10000000 1",
            "rtas-raw: status -3",
        ),
        (
            "rtas-raw 0x2000000 0x201a 3 1 9001 0x10000000 7",
            "rtas-raw: status -3",
        ),
        (
            "rtas-raw 0x2000000 0x201a 3 1 9003 0x10000001 1",
            "rtas-raw: status -3",
        ),
        (
            "rtas-raw 0x2000000 0x201a 3 1 4242 0x10000000 1",
            "rtas-raw: status -3",
        ),
        // get-sensor-state (0x201d): unknown DRC, unknown sensor.
        (
            "rtas-raw 0x2000000 0x201d 2 2 9003 0x10000007",
            "rtas-raw: status -3",
        ),
        (
            "rtas-raw 0x2000000 0x201d 2 2 9001 0x10000000",
            "rtas-raw: status -3",
        ),
        // configure-connector (0x201e): a work area outside guest memory,
        // or crossing its end; a DRC not being configured (wa[0] is 0 here).
        (
            "rtas-raw 0x2000000 0x201e 2 1 0x30000000 0",
            "rtas-raw: status -3",
        ),
        (
            "rtas-raw 0x2000000 0x201e 2 1 0x1ffff800 0",
            "rtas-raw: status -3",
        ),
        (
            "rtas-raw 0x2000000 0x201e 2 1 0x2100000 0",
            "rtas-raw: status -3",
        ),
        // check-exception (0x200e) with its buffer outside memory.
        (
            "rtas-raw 0x2000000 0x200e 6 1 0x500 0x1001 0x10000000 0 0x30000000 2048",
            "rtas-raw: status -3",
        ),
        // Nothing queued: "no errors found".
        (
            "rtas-raw 0x2000000 0x200e 6 1 0x500 0x1001 0x10000000 0 0x2100000 2048",
            "rtas-raw: status 1",
        ),
        (
            "rtas-raw 0x2000000 0x200f 4 1 0xffffffff 0 0x2100000 2048",
            "rtas-raw: status 1",
        ),
    ];
    for (command, expected) in cases {
        assert_eq!(console.command(command), [expected], "{command}");
    }
    // The boot core's DRC, unharmed: configured, entity sense "present".
    assert_eq!(
        console.command("rtas-raw 0x2000000 0x201d 2 2 9003 0x10000000"),
        ["rtas-raw: status 0"]
    );
    assert_eq!(drc(&vm, 0x1000_0000)["state"], "configured");
    assert_eq!(vm.console.command("cpus"), ["cpu 0 online"]);
}
