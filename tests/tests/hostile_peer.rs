//! Device processes that lie (`x-inject-fault {"fault": "lie"}`, the
//! fault-injection build): each speaks the protocol perfectly and sends the
//! core and its peers well-formed but wrong messages. Every receiver refuses
//! with a logged reason and stays consistent: the DRC table, QMP and the
//! guest are unchanged, no process is restarted, the boot core runs, no
//! core or DIMM the core did not ask back goes, and afterwards a normal
//! hotplug cycle works. Needs /dev/kvm.

use papervisor_tests::{kvm_usable, scratch_dir, QmpClient, Vm, HOTPLUG_MACHINE};
use serde_json::{json, Value};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(60);

fn lie(qmp: &mut QmpClient, process: &str) -> String {
    let reply = qmp.execute(
        "x-inject-fault",
        json!({"process": process, "fault": "lie"}),
    );
    assert_eq!(reply["return"]["survived"], true, "{reply}");
    reply["return"]["outcome"]
        .as_str()
        .expect("an outcome")
        .to_string()
}

/// What the machine looks like from QMP and from the guest.
fn snapshot(vm: &mut Vm, qmp: &mut QmpClient) -> Value {
    json!({
        "drcs": qmp.execute("x-query-drcs", json!({}))["return"],
        "cores": qmp.execute("query-hotpluggable-cpus", json!({}))["return"],
        "dimms": qmp.execute("query-memory-devices", json!({}))["return"],
        "status": qmp.execute("query-status", json!({}))["return"],
        "guest cpus": vm.console.command("cpus"),
        "guest memory": vm.console.command("mem check 0x4ff00000 0x200000 5"),
    })
}

/// Every device process runs, none was restarted.
fn all_serving_first_incarnations(qmp: &mut QmpClient) {
    let processes = qmp.execute("x-query-device-processes", json!({}));
    for process in processes["return"].as_array().expect("processes") {
        assert_eq!(process["state"], "running", "{process}");
        assert_eq!(process["restarts"], 0, "{process}");
    }
}

/// The lines of `log` that contain `text`.
fn logged(log: &str, text: &str) -> usize {
    log.lines().filter(|line| line.contains(text)).count()
}

#[test]
fn lying_device_processes_are_refused_and_the_machine_stays_consistent() {
    if !kvm_usable("lying_device_processes_are_refused_and_the_machine_stays_consistent") {
        return;
    }
    let log_dir = scratch_dir();
    let log_path = log_dir.join("papervisor.log");
    let log_file = log_path.to_str().expect("a UTF-8 path").to_string();
    let mut vm = Vm::start(&[&HOTPLUG_MACHINE[..], &["--log-file", &log_file]].concat());
    vm.boot();
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    // Core 1 and DIMM 0 plugged and taken by the guest, with data in it.
    let add_core = json!({"driver": "host-spapr-cpu-core", "core-id": 1, "id": "core1"});
    assert_eq!(qmp.execute("device_add", add_core), json!({"return": {}}));
    vm.console
        .expect_async("dlpar: cpu add 0x10000001: ok", TIMEOUT);
    let backend = json!({"qom-type": "memory-backend-memfd", "id": "mem0", "size": 512u64 << 20});
    assert_eq!(qmp.execute("object-add", backend), json!({"return": {}}));
    let add_dimm = json!({"driver": "pc-dimm", "id": "dimm0", "memdev": "mem0"});
    assert_eq!(qmp.execute("device_add", add_dimm), json!({"return": {}}));
    vm.console
        .expect_async("dlpar: memory add count 2 from 0x80000004: ok", TIMEOUT);
    assert_eq!(
        vm.console.command("mem fill 0x4ff00000 0x200000 5"),
        ["mem fill: 513 words"]
    );
    let before = snapshot(&mut vm, &mut qmp);
    assert_eq!(
        before["guest cpus"],
        json!(["cpu 0 online", "cpu 1 online"])
    );

    // The hotplug controller releases the boot core, core 1 and dimm0
    // (none asked back), a device never plugged, refuses unplugs nobody
    // asked for, floods 10 000 releases, and queues impossible events.
    let told = lie(&mut qmp, "hotplug-controller");
    assert_eq!(told.matches("refused (Invalid").count(), 3, "{told}");
    assert!(told.contains("a flood of 10000 releases"), "{told}");
    // The core refuses all 6 lies and the 10 000 of the flood.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let processes = qmp.execute("x-query-device-processes", json!({}));
        let controller = processes["return"]
            .as_array()
            .and_then(|list| list.iter().find(|p| p["kind"] == "hotplug-controller"))
            .cloned()
            .expect("the controller");
        if controller["rejected-notifications"] == 10_006 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{controller}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let events = qmp.events_within(Duration::from_secs(2));
    assert!(
        events
            .iter()
            .all(|e| e["event"] != "DEVICE_DELETED" && e["event"] != "DEVICE_UNPLUG_GUEST_ERROR"),
        "{events:?}"
    );
    assert_eq!(snapshot(&mut vm, &mut qmp), before);
    all_serving_first_incarnations(&mut qmp);

    // The RTAS server asks the controller about connectors that do not
    // exist, gives the boot core back, and answers the guest's next 8 calls
    // with requests they did not make: stop the caller (the boot CPU), start
    // vCPUs, power off, reset, os-term, reroute an interrupt, print.
    let told = lie(&mut qmp, "rtas-server");
    assert_eq!(
        told.matches("Status { status: ParameterError").count(),
        4,
        "{told}"
    );
    assert!(
        told.contains("ConfigureStep: Status { status: NotConfigurable"),
        "{told}"
    );
    // Completing a configuration that is complete changes nothing (below).
    assert!(
        told.contains("ConfigureDone: Status { status: Success"),
        "{told}"
    );
    assert!(told.contains("CheckException: NoEvent"), "{told}");
    for _ in 0..8 {
        let time = vm.console.command("time");
        assert!(time[0].starts_with("time: "), "{time:?}");
    }
    let events = qmp.events_within(Duration::from_secs(1));
    assert_eq!(
        events,
        Vec::<Value>::new(),
        "no SHUTDOWN, RESET, STOP or GUEST_PANICKED"
    );
    assert_eq!(snapshot(&mut vm, &mut qmp), before);

    // The event log answers ids nobody asked.
    let told = lie(&mut qmp, "event-log");
    assert_eq!(told.matches(": sent").count(), 3, "{told}");
    assert_eq!(snapshot(&mut vm, &mut qmp), before);
    all_serving_first_incarnations(&mut qmp);

    // Each receiver said why it refused.
    let log = papervisor_tests::log_once(&log_path, |log| {
        logged(log, "which the call does not ask for: ignored") == 8
    });
    assert!(
        logged(&log, "it names the boot core") >= 1,
        "the core refuses the boot core's release"
    );
    assert!(logged(&log, "which no device_del asked back") >= 3);
    assert!(logged(&log, "it names an unknown device") >= 2);
    assert!(logged(&log, "HotplugEventLog: refused a request") >= 3);
    assert!(logged(&log, "which the call does not ask for: ignored") == 8);

    // A normal cycle works afterwards.
    assert_eq!(
        qmp.execute("device_del", json!({"id": "core1"})),
        json!({"return": {}})
    );
    assert_eq!(qmp.wait_event("DEVICE_DELETED")["data"]["device"], "core1");
    vm.console
        .expect_async("dlpar: cpu remove 0x10000001: ok", TIMEOUT);
    assert_eq!(
        qmp.execute("device_del", json!({"id": "dimm0"})),
        json!({"return": {}})
    );
    assert_eq!(qmp.wait_event("DEVICE_DELETED")["data"]["device"], "dimm0");
    let add_core = json!({"driver": "host-spapr-cpu-core", "core-id": 2, "id": "core2"});
    assert_eq!(qmp.execute("device_add", add_core), json!({"return": {}}));
    vm.console
        .expect_async("dlpar: cpu add 0x10000002: ok", TIMEOUT);
    assert_eq!(vm.console.command("cpus"), ["cpu 0 online", "cpu 2 online"]);
    drop(vm);
    let _ = std::fs::remove_dir_all(log_dir);
}
