//! The boundary between QMP and the machine: what a checked QMP command asks
//! of the machine, as typed values (the QMP thread parses the JSON; the
//! control loop never sees it), and the one error a command answers with.
//!
//! This module depends on no other module of the core, so that the QMP
//! server, the control loop's messages and the machine can all use it
//! without importing each other.

use ipc_proto::control::{ArmedFault, Fault};
use ipc_proto::ProcessKind;
use std::path::PathBuf;

/// QEMU's rule for ids: a letter, then letters, digits, '-', '.', '_'.
pub fn valid_id(id: &str) -> bool {
    id.len() <= 128
        && id.starts_with(|c: char| c.is_ascii_alphabetic())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// A QMP error: QEMU's class and a message. Every domain's error becomes
/// one of these (`From`), once, where it reaches QMP.
#[derive(Debug, PartialEq, Eq)]
pub struct QmpError {
    /// QEMU's error class (`GenericError`, `DeviceNotFound`, ...).
    pub class: &'static str,
    /// The message for the client.
    pub desc: String,
}

impl QmpError {
    /// A `GenericError`, QEMU's class for nearly everything.
    pub fn generic(desc: impl Into<String>) -> QmpError {
        QmpError {
            class: "GenericError",
            desc: desc.into(),
        }
    }

    /// A `DeviceNotFound`: the device named does not exist.
    pub fn device_not_found(desc: impl Into<String>) -> QmpError {
        QmpError {
            class: "DeviceNotFound",
            desc: desc.into(),
        }
    }

    /// A `CommandNotFound`: the command does not exist, or is not allowed yet.
    pub fn command_not_found(desc: impl Into<String>) -> QmpError {
        QmpError {
            class: "CommandNotFound",
            desc: desc.into(),
        }
    }
}

impl std::fmt::Display for QmpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.class, self.desc)
    }
}

impl std::error::Error for QmpError {}

/// device_add.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceAdd {
    /// A CPU core.
    Core {
        /// QEMU's core-id (checked against the machine later).
        core_id: i64,
        /// The QMP id, if any.
        id: Option<String>,
    },
    /// A DIMM.
    Dimm {
        /// The QMP id.
        id: String,
        /// The memory backend's id.
        memdev: String,
        /// Where it goes, if the client says.
        addr: Option<u64>,
        /// Its slot, if the client says.
        slot: Option<u32>,
    },
    /// A virtio-blk-pci disk.
    VirtioBlk {
        /// The QMP id.
        id: String,
        /// The block node it serves.
        drive: String,
        /// Its slot on the bridge, if the client says.
        slot: Option<u8>,
    },
    /// A vhost-user-blk-pci disk: its backend is another program's, at
    /// the socket of a character device.
    VhostUserBlk {
        /// The QMP id.
        id: String,
        /// The character device of the backend's socket.
        chardev: String,
        /// Its slot on the bridge, if the client says.
        slot: Option<u8>,
    },
}

/// chardev-add of a Unix client socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChardevAdd {
    /// Its id.
    pub id: String,
    /// The socket's path.
    pub path: PathBuf,
    /// How long to wait between reconnection attempts (0: never).
    pub reconnect_ms: u64,
}

/// object-add of a memory backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendAdd {
    /// One of the backend types the machine has.
    pub qom_type: String,
    /// Its id.
    pub id: String,
    /// Its size in bytes (checked against device memory later).
    pub size: u64,
    /// Its memory is allocated now, not as the guest touches it.
    pub prealloc: bool,
    /// QEMU's `share`: reported back only (a backend's memory is always
    /// shared with the device processes that map it; the guest sees no
    /// difference).
    pub share: bool,
}

/// blockdev-add of a raw image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockdevAdd {
    /// The node's name (checked: QEMU's rule).
    pub node_name: String,
    /// The image's path (driver `file`).
    pub filename: PathBuf,
    /// Whether the node is read-only.
    pub read_only: bool,
    /// Driver `raw`: the file node it is layered over (`filename` is
    /// then empty).
    pub over: Option<String>,
    /// `auto-read-only`: read-only if the image cannot be opened for
    /// writing.
    pub auto_read_only: bool,
}

/// x-inject-fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultInjection {
    /// A fault the process commits at once.
    Now(Fault),
    /// A fault armed at a point of a request's path.
    Armed(ArmedFault),
}

/// What the machine reports about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Query {
    /// query-memory-devices.
    MemoryDevices,
    /// query-memory-size-summary.
    MemorySizeSummary,
    /// query-hotpluggable-cpus.
    HotpluggableCpus,
    /// query-cpus-fast.
    CpusFast,
    /// x-query-drcs.
    Drcs,
    /// x-query-event-log.
    EventLog,
    /// x-query-startup.
    Startup,
    /// x-query-device-processes.
    DeviceProcesses,
    /// query-block.
    Block,
    /// query-pci.
    Pci,
    /// query-chardev.
    Chardev,
    /// query-memdev.
    Memdev,
    /// query-named-block-nodes.
    NamedBlockNodes,
    /// query-stats of the VM.
    StatsVm,
    /// query-stats of every vCPU.
    StatsVcpus,
}

/// A QMP command that needs the machine, its arguments parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MachineRequest {
    /// device_add.
    DeviceAdd(DeviceAdd),
    /// device_del of the device with this id or QOM path.
    DeviceDel(String),
    /// object-add of a memory backend.
    ObjectAdd(BackendAdd),
    /// object-del of the backend with this id.
    ObjectDel(String),
    /// blockdev-add.
    BlockdevAdd(BlockdevAdd),
    /// blockdev-del of the node with this name.
    BlockdevDel(String),
    /// chardev-add.
    ChardevAdd(ChardevAdd),
    /// chardev-remove of the character device with this id.
    ChardevRemove(String),
    /// A query.
    Query(Query),
    /// system_powerdown.
    PowerDown,
    /// stop (`true`) and cont (`false`).
    Pause(bool),
    /// x-inject-fault.
    InjectFault {
        /// The process it is aimed at.
        process: ProcessKind,
        /// What it does.
        fault: FaultInjection,
    },
    /// x-query-faults.
    QueryFaults,
    /// x-clear-faults.
    ClearFaults,
    /// Take the device processes' trace records into the core's trace
    /// (before x-query-trace reads it, and periodically).
    CollectTrace,
    /// x-upgrade-device-process.
    Upgrade {
        /// The process replaced.
        process: ProcessKind,
        /// The binary that replaces it.
        program: PathBuf,
    },
    /// x-upgrade-device-process of a disk's block process.
    UpgradeBlock {
        /// The disk's id.
        id: String,
        /// The binary that replaces its block process.
        program: PathBuf,
    },
    /// x-restart-device-process.
    Restart(ProcessKind),
}
