//! The disks plugged into the PCI host bridge (`device_add virtio-blk-pci`):
//! which slot each takes, which node it serves, and the block device
//! process and vhost-user frontend behind it. The table decides; the
//! machine (`machine/pci_hotplug.rs`) carries out.

use super::frontend::{BlockFrontend, Inflight};
use crate::devices::spawn::ProcessHandle;
use crate::request::QmpError;
use ipc_proto::link::core_hotplug::QueueStart;
use ipc_proto::papr::DrcIndex;
use ipc_proto::pci::{Phb, DEVFNS_PER_BUS, VIRTIO_BLK_PCI};
use serde_json::{json, Value};

/// The driver QMP names for a disk on a block node (its backend ours).
pub const VIRTIO_BLK_DRIVER: &str = "virtio-blk-pci";
/// The driver QMP names for a disk whose backend another program runs.
pub const VHOST_USER_BLK_DRIVER: &str = "vhost-user-blk-pci";
/// The PCI host bridge's name as QMP's `bus` gives it.
pub const BUS_NAME: &str = "pci.0";
/// Slots on the bridge's root bus.
pub const SLOTS: u8 = (DEVFNS_PER_BUS / 8) as u8;

/// A disk on the bridge.
pub struct Disk {
    /// Its QMP id.
    pub id: String,

    /// Its slot (function 0).
    pub slot: u8,
    /// Its DRC.
    pub drc: DrcIndex,
    /// Which disk of the VM: names its block process.
    pub serial: u64,
    /// A device_del asked it back.
    pub unplug_asked: bool,
    /// Who serves its queues.
    pub backend: Backend,
    /// The core's vhost-user link to it, until the backend is cut off.
    pub frontend: Option<BlockFrontend>,
    /// Why its backend ended or was cut off, while no successor serves.
    pub exit: Option<String>,
    /// How the backend before the current one ended.
    pub last_exit: Option<String>,
    /// Its block processes that ended and were replaced.
    pub restarts: u32,
    /// When the recent ones ended (for the restart budget).
    pub recent_exits: Vec<std::time::Instant>,
    /// Failed for good: no backend serves it until it is removed.
    pub failed: bool,
    /// The queues its driver started, with the kicks KVM signals.
    pub queues: Vec<RunningQueue>,
    /// What the driver started them with: its features and the queues,
    /// for a backend that takes over.
    pub started: Option<(u64, Vec<QueueStart>)>,
    /// The region its backend records requests in flight in, for the
    /// backend's successor; from the driver's start to its reset.
    pub inflight: Option<Inflight>,
    /// What its current backend did with the queue since it took it.
    pub progress: Option<Progress>,
    /// The block program it was upgraded to (x-upgrade-device-process),
    /// which its successors run too.
    pub program: Option<std::path::PathBuf>,
}

/// Whether a disk's backend completes requests: its first queue's used
/// index when the backend took the queue, and when it last moved.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// The used index the backend started from.
    pub started_used: u16,
    /// When it started.
    pub started_at: std::time::Instant,
    /// The used index last seen.
    pub last_used: u16,
    /// Since when it has not moved while requests waited.
    pub stalled_since: Option<std::time::Instant>,
}

impl Progress {
    /// A backend starting from used index `used`.
    pub fn new(used: u16) -> Progress {
        Progress {
            started_used: used,
            started_at: std::time::Instant::now(),
            last_used: used,
            stalled_since: None,
        }
    }
}

/// A queue the backend serves: the guest's notifications reach it through
/// `kick`, an ioeventfd at `notify`.
pub struct RunningQueue {
    /// What KVM signals.
    pub kick: vmm_sys_util::eventfd::EventFd,
    /// The CPU address it is registered at.
    pub notify: u64,
}

/// Who serves a disk's queues.
pub enum Backend {
    /// A block device process (or thread) of ours, on a block node.
    Process {
        /// The node.
        node: String,
        /// The process.
        process: ProcessHandle,
    },
    /// Another program, at the socket of a character device.
    External {
        /// The character device.
        chardev: String,
        /// Its socket.
        path: std::path::PathBuf,
        /// How long to wait before connecting again after it hung up
        /// (`None`: the disk fails instead).
        reconnect: Option<std::time::Duration>,
    },
}

impl Backend {
    /// Whether it is connected to again when it hangs up.
    pub fn reconnects(&self) -> bool {
        matches!(
            self,
            Backend::External {
                reconnect: Some(_),
                ..
            }
        )
    }

    /// Ends it, if it is ours.
    pub fn kill(&self) {
        if let Backend::Process { process, .. } = self {
            process.kill();
        }
    }
}

impl Disk {
    /// Cuts the backend off after it failed a request of the frontend (a
    /// late answer would be taken for the next request's): the link is
    /// dropped and the process killed (`why`); its end brings a successor
    /// (a block process of ours), or the disk is failed until it is removed
    /// (another program's).
    pub fn cut_off(&mut self, why: String) {
        log::error!("disk {}: {why}", self.id);
        self.frontend = None;
        self.backend.kill();
        self.exit.get_or_insert(why);
        if matches!(self.backend, Backend::External { .. }) {
            self.failed = true;
        }
    }

    /// A new block process (`serial`, connected as `frontend`) serves it
    /// from now on: the one before is returned, for the caller to end.
    /// The queues are the caller's to hand over.
    pub fn take_over(
        &mut self,
        process: ProcessHandle,
        frontend: BlockFrontend,
        serial: u64,
    ) -> ProcessHandle {
        let Backend::Process { process: old, .. } = &mut self.backend else {
            unreachable!("only a block process is taken over from");
        };
        let old = std::mem::replace(old, process);
        self.frontend = Some(frontend);
        self.serial = serial;
        old
    }

    /// What x-query-device-processes says of its block process: `running`,
    /// `restarting` (it ended; its successor is on the way) or `failed`.
    pub fn state(&self) -> &'static str {
        match (self.failed, &self.exit) {
            (true, _) => "failed",
            (false, Some(_)) => "restarting",
            (false, None) => "running",
        }
    }

    /// Its QOM path.
    pub fn path(&self) -> String {
        format!("/machine/peripheral/{}", self.id)
    }

    /// Whether QMP's `name` (an id or a QOM path) names it.
    fn is_named(&self, name: &str) -> bool {
        self.id == name || self.path() == name
    }
}

/// The disks, by slot.
#[derive(Default)]
pub struct Disks {
    disks: Vec<Disk>,
    last_serial: u64,
    /// How long a block process may complete nothing while requests wait
    /// before it is taken for hung (`None`: the default).
    pub stall_timeout: Option<std::time::Duration>,
    /// Whether the ticks that look at every disk's progress run.
    pub watched: bool,
}

/// The DRC of `slot` (function 0) on the bridge.
pub fn slot_drc(slot: u8) -> Result<DrcIndex, QmpError> {
    slot.checked_mul(8)
        .and_then(|devfn| Phb::new(0).drc(devfn))
        .ok_or_else(|| QmpError::generic(format!("PCI slot {slot} has no connector")))
}

/// Parses QMP's `addr`: QEMU's `"slot"` or `"slot.function"` (hex), or an
/// integer devfn; function 0 only (no multi-function devices).
pub fn parse_addr(addr: &Value) -> Result<u8, QmpError> {
    let bad = || {
        QmpError::generic(format!(
            "Parameter 'addr' expects a PCI address \"slot[.function]\" (slot 00 to {:02x}), not {addr}",
            SLOTS - 1
        ))
    };
    let (slot, function) = match addr {
        Value::String(text) => {
            let (slot, function) = match text.split_once('.') {
                Some((slot, function)) => (slot, function),
                None => (text.as_str(), "0"),
            };
            let hex = |digits: &str| {
                let digits = digits.trim_start_matches("0x");
                (!digits.is_empty() && digits.len() <= 2)
                    .then(|| u8::from_str_radix(digits, 16).ok())
                    .flatten()
            };
            (hex(slot).ok_or_else(bad)?, hex(function).ok_or_else(bad)?)
        }
        Value::Number(number) => {
            let devfn = number.as_u64().filter(|&d| d < 256).ok_or_else(bad)? as u8;
            (devfn >> 3, devfn & 7)
        }
        _ => return Err(bad()),
    };
    if slot >= SLOTS || function > 7 {
        return Err(bad());
    }
    if function != 0 {
        return Err(QmpError::generic(format!(
            "PCI function {function} of slot {slot:02x}: this machine plugs single-function devices at function 0"
        )));
    }
    Ok(slot)
}

impl Disks {
    /// No disks yet; block processes taken for hung after `stall_timeout`
    /// (`None`: the default).
    pub fn with_stall_timeout(stall_timeout: Option<std::time::Duration>) -> Disks {
        Disks {
            stall_timeout,
            ..Default::default()
        }
    }

    /// The slot a new disk `id` takes: `wanted`, if free, else the first
    /// free one; and its serial. Nothing is held until [`Disks::plugged`].
    pub fn prepare(&mut self, id: &str, wanted: Option<u8>) -> Result<(u8, u64), QmpError> {
        if self.find(id).is_some() {
            return Err(QmpError::generic(format!("Duplicate device ID '{id}'")));
        }
        let taken = |slot: u8| self.disks.iter().any(|disk| disk.slot == slot);
        let slot = match wanted {
            Some(slot) if taken(slot) => {
                let user = self.disks.iter().find(|disk| disk.slot == slot);
                return Err(QmpError::generic(format!(
                    "PCI: slot {slot} function 0 not available for {VIRTIO_BLK_DRIVER}, in use by {}",
                    user.map_or("", |disk| disk.id.as_str())
                )));
            }
            Some(slot) => slot,
            None => (0..SLOTS).find(|&slot| !taken(slot)).ok_or_else(|| {
                QmpError::generic(format!(
                    "PCI: no slot free for {VIRTIO_BLK_DRIVER}: the bridge's {SLOTS} slots are in use"
                ))
            })?,
        };
        Ok((slot, self.next_serial()))
    }

    /// A number no block process of the VM had: each process's own (the
    /// spawner takes them in increasing order only), which names its
    /// socket and its end.
    pub fn next_serial(&mut self) -> u64 {
        self.last_serial += 1;
        self.last_serial
    }

    /// Holds a disk whose plug succeeded.
    pub fn plugged(&mut self, disk: Disk) {
        self.disks.push(disk);
    }

    /// The disk with QMP id or QOM path `name`.
    pub fn find(&self, name: &str) -> Option<&Disk> {
        self.disks.iter().find(|disk| disk.is_named(name))
    }

    /// The disk `name`, to change.
    pub fn find_mut(&mut self, name: &str) -> Option<&mut Disk> {
        self.disks.iter_mut().find(|disk| disk.is_named(name))
    }

    /// The disk served by block process `serial`.
    pub fn by_drc(&mut self, drc: DrcIndex) -> Option<&mut Disk> {
        self.disks.iter_mut().find(|disk| disk.drc == drc)
    }

    /// The disk of block process `serial`.
    pub fn by_serial(&mut self, serial: u64) -> Option<&mut Disk> {
        self.disks.iter_mut().find(|disk| disk.serial == serial)
    }

    /// Takes `name` out of the table.
    pub fn remove(&mut self, name: &str) -> Option<Disk> {
        let at = self.disks.iter().position(|disk| disk.is_named(name))?;
        Some(self.disks.remove(at))
    }

    /// Every disk.
    pub fn all(&self) -> &[Disk] {
        &self.disks
    }

    /// Every disk, to change.
    pub fn all_mut(&mut self) -> &mut [Disk] {
        &mut self.disks
    }

    /// query-pci, in QEMU's shape: the bridge's bus and its functions, each
    /// as its description (the device tree's and its configuration space's)
    /// says.
    pub fn query_pci(&self) -> Value {
        let function = VIRTIO_BLK_PCI;
        let devices: Vec<Value> = self
            .disks
            .iter()
            .map(|disk| {
                json!({
                    "bus": 0, "slot": disk.slot, "function": 0,
                    "class_info": {"desc": "SCSI controller", "class": function.class >> 8},
                    "id": {"vendor": function.vendor, "device": function.device,
                           "subsystem-vendor": function.subsystem_vendor,
                           "subsystem": function.subsystem},
                    "qdev_id": disk.id,
                    "regions": [],
                })
            })
            .collect();
        json!([{"bus": 0, "devices": devices}])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_as_qemu_writes_them_and_only_function_zero_plugs() {
        assert_eq!(parse_addr(&json!("3")).unwrap(), 3);
        assert_eq!(parse_addr(&json!("1f.0")).unwrap(), 31);
        assert_eq!(parse_addr(&json!("0x04")).unwrap(), 4);
        assert_eq!(parse_addr(&json!(0x28)).unwrap(), 5);
        assert!(parse_addr(&json!("20"))
            .unwrap_err()
            .desc
            .contains("slot 00 to 1f"));
        assert!(parse_addr(&json!("3.1"))
            .unwrap_err()
            .desc
            .contains("function 1"));
        assert!(parse_addr(&json!("3.8")).is_err());
        assert!(parse_addr(&json!("x")).is_err());
        assert!(parse_addr(&json!("")).is_err());
        assert!(parse_addr(&json!("123")).is_err());
        assert!(parse_addr(&json!(256)).is_err());
        assert!(parse_addr(&json!(true)).is_err());
    }

    #[test]
    fn slots_are_taken_as_asked_or_first_free_and_serials_never_repeat() {
        let mut disks = Disks::default();
        assert_eq!(disks.prepare("vd0", None).unwrap(), (0, 1));
        assert_eq!(disks.prepare("vd1", Some(5)).unwrap(), (5, 2));
        // Nothing held until plugged: slot 0 is still free.
        assert_eq!(disks.prepare("vd2", None).unwrap(), (0, 3));
    }
}
