//! Messages to the VM's control loop, from vCPU threads, from the hotplug
//! controller's notifications and from QMP. The control loop is the one
//! owner of the machine's state.

use crate::request::{MachineRequest, QmpError};
use ipc_proto::link::hotplug_notify::Notification;
use serde_json::Value;
use std::sync::mpsc::Sender;

/// What the control loop is asked to do.
#[derive(Debug)]
pub enum ControlMessage {
    /// The guest powered off (RTAS power-off).
    PowerOff,
    /// A machine reset: the guest's (RTAS system-reboot) or QMP's system_reset.
    Reset {
        /// The guest asked (RTAS system-reboot), not QMP.
        by_guest: bool,
    },
    /// QMP quit.
    Quit,
    /// `Ctrl-a x` on the stdio console: the VM ends as for quit.
    ConsoleQuit,
    /// SIGTERM, SIGINT or SIGHUP: the VM ends as for quit.
    HostSignal(nix::sys::signal::Signal),
    /// The guest can no longer run: the reason, for the log.
    GuestCrashed(String),
    /// The hotplug controller reports a release, a refusal, or the end of a
    /// reset, numbered: a successor sends again what its predecessor may
    /// have sent, and the core drops a number it has seen.
    Hotplug {
        /// The notification's number.
        id: u64,
        /// What it says.
        notification: Notification,
    },
    /// A device process found generation `generation` of `peer` silent or
    /// misbehaving while it answered the core.
    PeerFailed {
        /// The process found failing.
        peer: ipc_proto::ProcessKind,
        /// Its generation then.
        generation: u64,
        /// The process that found it.
        reported_by: ipc_proto::ProcessKind,
    },
    /// A device process ended (its watcher saw it).
    DeviceExited {
        /// Its kind.
        kind: ipc_proto::ProcessKind,
        /// Which start of the kind it was.
        generation: u64,
        /// How it ended, in words ("killed by SIGSYS").
        reason: String,
    },
    /// Time to start a fresh device process in place of a dead one.
    RestartDevice(ipc_proto::ProcessKind),
    /// The reaper ended (how): a new one must hold the device processes.
    ReaperExited(String),
    /// The block device process of disk `serial` ended.
    BlockExited {
        /// Which disk's (each of its processes has its own)
        serial: u64,
        /// How it ended, in words.
        how: String,
    },
    /// A driver's write to a PCI function asks the device's server to
    /// start or stop its queues (a vCPU waits for the answer, as QEMU's
    /// vCPU carries out a virtio status write before it runs on).
    Function {
        /// What the write asks.
        effect: ipc_proto::link::core_hotplug::FunctionEffect,
        /// Where the outcome goes.
        done: std::sync::mpsc::SyncSender<Result<(), String>>,
    },
    /// The external backend of disk `serial` hung up.
    BackendHungUp {
        /// Which disk's.
        serial: u64,
    },
    /// Time to look whether each disk's block process makes progress.
    WatchDisks,
    /// Time to append the stats to `--metrics-path`.
    WriteMetrics,
    /// Time to take the device processes' trace records (the trace is on).
    CollectTrace,
    /// Time to connect to disk `serial`'s backend again.
    ReconnectBackend {
        /// Which disk's.
        serial: u64,
    },
    /// A QMP command that needs the machine.
    Qmp {
        /// The command, its arguments parsed.
        request: MachineRequest,
        /// Where its answer goes.
        reply: Sender<Result<Value, QmpError>>,
    },
}

impl PartialEq for ControlMessage {
    fn eq(&self, other: &Self) -> bool {
        use ControlMessage::*;
        match (self, other) {
            (PowerOff, PowerOff) | (Quit, Quit) => true,
            (Reset { by_guest: a }, Reset { by_guest: b }) => a == b,
            (GuestCrashed(a), GuestCrashed(b)) => a == b,
            (
                Hotplug {
                    id: a,
                    notification: m,
                },
                Hotplug {
                    id: b,
                    notification: n,
                },
            ) => (a, m) == (b, n),
            (
                PeerFailed {
                    peer: a,
                    generation: g,
                    reported_by: r,
                },
                PeerFailed {
                    peer: b,
                    generation: h,
                    reported_by: s,
                },
            ) => (a, g, r) == (b, h, s),
            _ => false,
        }
    }
}

/// Sends `message()` to the control loop every `every`, from a thread
/// named `name`, until the loop ends (its channel closes).
pub fn tick(
    control: Sender<ControlMessage>,
    name: &str,
    every: std::time::Duration,
    message: fn() -> ControlMessage,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || loop {
            std::thread::sleep(every);
            if control.send(message()).is_err() {
                return;
            }
        })
        .map(drop)
}
