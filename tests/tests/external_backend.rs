//! A disk whose backend another program runs: qemu-storage-daemon's
//! vhost-user-blk export, reached through `chardev-add` and `device_add
//! vhost-user-blk-pci`, as QEMU users attach it. The guest writes and
//! checks a pattern; the image holds it. Need /dev/kvm and
//! qemu-storage-daemon (the distribution's qemu-utils).

use papervisor_tests::disks::{image, ok, sectors_of_pattern, wait_until, SECTOR};
use papervisor_tests::{kvm_usable, say_skipped, KilledOnDrop, QmpClient, Vm};
use serde_json::json;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const MIB: u64 = 1 << 20;
const DAEMON: &str = "qemu-storage-daemon";

/// qemu-storage-daemon exporting `image` as vhost-user-blk at `socket`.
fn storage_daemon(image: &Path, socket: &Path) -> KilledOnDrop {
    let child = Command::new(DAEMON)
        .arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=file0,filename={}",
            image.display()
        ))
        .arg("--export")
        .arg(format!(
            "type=vhost-user-blk,id=export0,node-name=file0,addr.type=unix,addr.path={},writable=on",
            socket.display()
        ))
        .stdin(Stdio::null())
        .spawn()
        .expect("qemu-storage-daemon starts");
    let daemon = KilledOnDrop(child);
    wait_until("the daemon's socket", || socket.exists());
    daemon
}

/// Adds chardev `char0` for `socket` (reconnecting every `reconnect_ms`,
/// if not 0) and a vhost-user-blk-pci disk vd0 in slot 3 on it, which the
/// guest takes.
fn attach(vm: &mut Vm, qmp: &mut QmpClient, socket: &Path, reconnect_ms: u64) {
    let chardev = json!({
        "id": "char0",
        "backend": {"type": "socket", "data": {
            "addr": {"type": "unix", "data": {"path": socket}},
            "server": false,
            "reconnect-ms": reconnect_ms,
        }},
    });
    assert_eq!(qmp.execute("chardev-add", chardev.clone()), ok());
    let duplicate = qmp.execute("chardev-add", chardev);
    assert!(duplicate["error"]["desc"]
        .as_str()
        .unwrap_or_default()
        .contains("duplicate"));
    assert_eq!(
        qmp.execute(
            "device_add",
            json!({"driver": "vhost-user-blk-pci", "id": "vd0", "chardev": "char0", "addr": "3"})
        ),
        ok()
    );
    vm.console
        .expect_async("dlpar: pci add 0x40000018: ok", Duration::from_secs(60));
}

fn daemon_installed(test: &str) -> bool {
    let found = Command::new(DAEMON)
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !found {
        say_skipped(&format!(
            "SKIPPED {test}: {DAEMON} is not installed (apt-get install qemu-utils)"
        ));
    }
    found
}

#[test]
fn a_disk_served_by_qemu_storage_daemon_carries_the_guests_pattern() {
    let test = "a_disk_served_by_qemu_storage_daemon_carries_the_guests_pattern";
    if !kvm_usable(test) || !daemon_installed(test) {
        return;
    }
    let scratch = papervisor_tests::scratch_dir();
    let path = image(&scratch, "disk0.raw", 64 * MIB);
    let socket = scratch.join("export0.sock");
    let mut daemon = storage_daemon(&path, &socket);
    let mut vm = Vm::start(&[]);
    vm.boot();
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    // A socket nobody listens on: a clear error, nothing held.
    let nobody = json!({
        "id": "char1",
        "backend": {"type": "socket", "data": {
            "addr": {"type": "unix", "data": {"path": scratch.join("nobody.sock")}},
        }},
    });
    assert_eq!(qmp.execute("chardev-add", nobody), ok());
    let refused = qmp.execute(
        "device_add",
        json!({"driver": "vhost-user-blk-pci", "id": "vd1", "chardev": "char1"}),
    );
    assert!(
        refused["error"]["desc"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot connect to the vhost-user backend"),
        "{refused}"
    );
    assert_eq!(qmp.execute("chardev-remove", json!({"id": "char1"})), ok());
    attach(&mut vm, &mut qmp, &socket, 0);
    assert_eq!(vm.console.command("blk"), ["blk 0: 131072 sectors"]);
    assert_eq!(
        vm.console.command("blk write 0 4096 16 11"),
        ["blk write: 16 sectors"]
    );
    assert_eq!(
        vm.console.command("blk check 0 4096 16 11"),
        ["blk check: 16 sectors, ok"]
    );
    // The image holds the guest's pattern, as the guest computes it.
    let mut written = vec![0u8; 16 * SECTOR as usize];
    std::fs::File::open(&path)
        .and_then(|file| file.read_exact_at(&mut written, 4096 * SECTOR))
        .expect("the image");
    assert!(
        written == sectors_of_pattern(4096, 16, 11),
        "the daemon's image holds the pattern"
    );

    let chardevs = qmp.execute("query-chardev", json!({}));
    // The console first (QEMU lists its character devices by creation),
    // then the backend's socket.
    assert_eq!(chardevs["return"][0]["label"], "console", "{chardevs}");
    assert!(chardevs["return"][0]["filename"]
        .as_str()
        .unwrap()
        .ends_with("console.sock,server=on"));
    assert_eq!(chardev(&chardevs, "char0")["frontend-open"], true);
    let busy = qmp.execute("chardev-remove", json!({"id": "char0"}));
    assert!(busy["error"]["desc"]
        .as_str()
        .unwrap_or_default()
        .contains("busy"));
    assert_eq!(qmp.execute("device_del", json!({"id": "vd0"})), ok());
    vm.console
        .expect_async("dlpar: pci remove 0x40000018: ok", Duration::from_secs(60));
    assert_eq!(qmp.wait_event("DEVICE_DELETED")["data"]["device"], "vd0");
    assert_eq!(qmp.execute("chardev-remove", json!({"id": "char0"})), ok());
    // The daemon outlives the disk: it was never the VM's.
    assert!(daemon.0.try_wait().expect("the daemon's state").is_none());
    drop(qmp);
    drop(vm);
    let _ = std::fs::remove_dir_all(scratch);
}

#[test]
fn the_guests_io_completes_after_a_killed_storage_daemon_comes_back() {
    let test = "the_guests_io_completes_after_a_killed_storage_daemon_comes_back";
    if !kvm_usable(test) || !daemon_installed(test) {
        return;
    }
    let scratch = papervisor_tests::scratch_dir();
    let path = image(&scratch, "disk0.raw", 64 * MIB);
    let socket = scratch.join("export0.sock");
    let daemon = storage_daemon(&path, &socket);
    let mut vm = Vm::start(&[]);
    vm.boot();
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    attach(&mut vm, &mut qmp, &socket, 200);
    assert_eq!(
        vm.console.command("blk write 0 0 64 5"),
        ["blk write: 64 sectors"]
    );
    // Reading in the background when the daemon is killed; 2 s later a
    // new one serves the same image at the same socket.
    assert_eq!(vm.console.command("blk hold 0"), ["blk hold: 0"]);
    std::thread::sleep(Duration::from_millis(300));
    drop(daemon);
    std::thread::sleep(Duration::from_secs(2));
    let _ = std::fs::remove_file(&socket);
    let _daemon = storage_daemon(&path, &socket);
    // The request in flight completes (again) and the next ones too.
    assert_eq!(
        vm.console.command("blk check 0 0 64 5"),
        ["blk check: 64 sectors, ok"]
    );
    let unheld = vm.console.command("blk unhold 0");
    assert!(unheld[0].ends_with(" reads, 0 errors"), "{unheld:?}");
    assert_eq!(
        vm.console.command("blk write 0 1000 8 6"),
        ["blk write: 8 sectors"]
    );
    assert_eq!(
        vm.console.command("blk check 0 1000 8 6"),
        ["blk check: 8 sectors, ok"]
    );
    let chardevs = qmp.execute("query-chardev", json!({}));
    assert_eq!(chardev(&chardevs, "char0")["frontend-open"], true);
    drop(qmp);
    drop(vm);
    let _ = std::fs::remove_dir_all(scratch);
}

/// The entry of query-chardev's answer `chardevs` labelled `label`.
fn chardev<'a>(chardevs: &'a serde_json::Value, label: &str) -> &'a serde_json::Value {
    chardevs["return"]
        .as_array()
        .and_then(|list| list.iter().find(|c| c["label"] == label))
        .unwrap_or_else(|| panic!("no chardev {label}: {chardevs}"))
}
