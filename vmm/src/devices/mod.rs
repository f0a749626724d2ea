//! The core's side of the device processes, in one place: starting them
//! ([`spawn`]), handing out their links ([`wiring`]), talking to each through
//! one generic [`proxy`], and supervising them ([`supervisor`]): a process
//! that dies, or that the core (or a peer) finds misbehaving, is reported and
//! restarted with bounded backoff, with fresh links to the core and to its
//! peers; one that keeps dying is failed, and what it served answers with
//! errors while the VM runs on.

mod bars;
pub mod fault_hook;
mod faults;
pub mod proxy;
mod reaper;
pub mod reports;
mod restarts;
mod rtas;
pub mod spawn;
pub mod starter;
pub mod supervisor;
#[cfg(all(test, feature = "in-process"))]
mod testing;
#[cfg(feature = "in-process")]
pub mod threads;
mod traces;
mod upgrade;
mod wire;
pub mod wiring;

use crate::control::ControlMessage;
use crate::memory::GuestRam;
use ipc_proto::channel::ChannelError;
use ipc_proto::link::core_eventlog::CoreEventLog;
use ipc_proto::link::core_hotplug::{self, CoreHotplug, DeviceModel, DrcRange};
use ipc_proto::link::core_rtas::{CoreRtas, MemoryRegion};
use ipc_proto::papr::DrcIndex;
use ipc_proto::{Link, ProcessKind};
use proxy::{DeviceFailure, Proxy, Supervised};
use spawn::{ProcessHandle, SpawnError};
use starter::Starter;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use supervisor::{State, Supervision};
use thiserror::Error;

use common::lock;
pub use spawn::{DeviceMode, Sandbox};

/// Why device processes cannot be started, wired or upgraded.
#[derive(Debug, Error)]
pub enum DeviceError {
    /// A link's socket pair cannot be made.
    #[error("cannot create the {0:?} channel")]
    Channel(Link, #[source] ChannelError),
    /// A process (or its jailer) cannot be started.
    #[error("cannot start the {kind}")]
    Spawn {
        /// Its kind.
        kind: &'static str,
        /// Why.
        #[source]
        source: SpawnError,
    },
    /// A process did not complete its handshake.
    #[error("the {kind} did not complete its handshake")]
    Handshake {
        /// Its kind.
        kind: &'static str,
        /// What went wrong.
        #[source]
        source: ChannelError,
    },
    /// A process refused its set-up.
    #[error("the {kind} refused its set-up")]
    Setup {
        /// Its kind.
        kind: &'static str,
        /// Its refusal.
        #[source]
        source: DeviceFailure,
    },
    /// A descriptor cannot be duplicated.
    #[error("cannot duplicate a descriptor")]
    Dup(#[source] std::io::Error),
    /// The thread that waits for a process cannot be started.
    #[error("cannot start the thread that watches the {kind}")]
    Watch {
        /// Its kind.
        kind: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A state region cannot be created.
    #[error("cannot create the hotplug controller's state region")]
    StateRegion(#[source] crate::memory::MemoryError),
    /// An upgrade that did not take place.
    #[error("cannot upgrade the {kind}: {why}")]
    Upgrade {
        /// The kind of the process.
        kind: &'static str,
        /// Why the running one keeps serving.
        why: String,
    },
    /// The reaper cannot be started.
    #[error("cannot start the reaper")]
    Reaper(#[source] SpawnError),
}

/// What a (re)started process is given besides its links.
pub struct Resources {
    /// Boot RAM, for the RTAS server.
    pub memory: Vec<(MemoryRegion, OwnedFd)>,
    /// The plugged DIMMs' memory, for the RTAS server too.
    pub dimm_memory: Mutex<Vec<(MemoryRegion, OwnedFd)>>,
    /// Threads per CPU core.
    pub threads_per_core: u32,
    /// The machine's DRCs.
    pub drcs: Vec<DrcRange>,
    /// The event log's interrupts: hot-plug, then EPOW.
    pub event_log_interrupts: [OwnedFd; 2],
    /// The state regions of the hotplug controller and the event log.
    pub state_regions: HashMap<ProcessKind, StateRegion>,
    /// What each plugged PCI function's device offers a driver: told to
    /// the hotplug controller before the plug, and again to a successor.
    pub function_models: Mutex<BTreeMap<DrcIndex, DeviceModel>>,
}

/// A process kind's state region: created once, handed to every
/// incarnation (as its last descriptor), kept by the core, so a successor
/// resumes where its predecessor stopped.
pub struct StateRegion {
    memfd: File,
    /// An incarnation formatted it: the next ones resume from it.
    formatted: AtomicBool,
}

impl StateRegion {
    fn new(name: &'static str, size: u64) -> Result<StateRegion, DeviceError> {
        Ok(StateRegion {
            memfd: crate::memory::sealed_memfd(name, size).map_err(DeviceError::StateRegion)?,
            formatted: AtomicBool::new(false),
        })
    }
}

/// One process kind: how it is supervised and the process it runs now.
struct Record {
    supervision: Supervision,
    /// The pid last started, for reports only: never signalled.
    pid: u32,
    /// `None` once the process is gone: nothing is ever signalled through
    /// the record of a process that exited.
    process: Option<Arc<ProcessHandle>>,
}

/// What the devices serve: the machine's side of their set-up.
pub struct Platform {
    /// Boot RAM, for the RTAS server.
    pub memory: Vec<(MemoryRegion, OwnedFd)>,
    /// Threads per CPU core.
    pub threads_per_core: u32,
    /// The machine's DRCs.
    pub drcs: Vec<DrcRange>,
    /// The event log's interrupts: hot-plug, then EPOW.
    pub event_log_interrupts: [OwnedFd; 2],
}

impl Platform {
    /// The platform of a machine with `ram` as boot RAM.
    pub fn new(
        ram: &GuestRam,
        event_log_interrupts: [OwnedFd; 2],
        threads_per_core: u32,
        drcs: Vec<DrcRange>,
    ) -> Result<Platform, DeviceError> {
        let memory = ram
            .regions()
            .into_iter()
            .map(|(region, fd)| Ok((region, duplicate(fd)?)))
            .collect::<Result<Vec<_>, DeviceError>>()?;
        Ok(Platform {
            memory,
            threads_per_core,
            drcs,
            event_log_interrupts,
        })
    }
}

/// The starter of `mode`; in-process is refused by a core built without it.
fn starter_for(mode: DeviceMode) -> Result<Box<dyn Starter>, SpawnError> {
    match mode {
        DeviceMode::OutOfProcess => Ok(Box::new(starter::Processes)),
        #[cfg(feature = "in-process")]
        DeviceMode::InProcess => Ok(Box::new(threads::Threads)),
        #[cfg(not(feature = "in-process"))]
        DeviceMode::InProcess => Err(SpawnError::NoInProcess),
    }
}

/// The core's device processes (or threads), supervised.
pub struct DeviceProcesses {
    sandbox: Sandbox,
    /// How devices start: processes or threads.
    starter: Box<dyn Starter>,
    resources: Resources,
    control: Sender<ControlMessage>,
    /// The RTAS server.
    pub rtas: Proxy<CoreRtas>,
    /// The hotplug controller.
    pub hotplug: Proxy<CoreHotplug>,
    /// The event log.
    pub eventlog: Proxy<CoreEventLog>,
    records: Mutex<HashMap<ProcessKind, Record>>,
    next_generation: Mutex<u64>,
    /// The binary each upgraded kind was last upgraded to: every restart
    /// runs that one (the others run theirs beside the core's own).
    upgraded: Mutex<HashMap<ProcessKind, PathBuf>>,
    /// The reaper's socket: it holds a pidfd of every device process and
    /// kills each when this closes (the core ended or died).
    reaper: Mutex<Option<OwnedFd>>,
    /// Reapers started after the first (one that keeps dying is given up).
    reaper_restarts: Mutex<u32>,
    /// The user the core runs as: besides root, the only one who may
    /// control a binary the VM runs (read once: no thread's filter allows
    /// asking later).
    owner: u32,
}

fn duplicate(fd: BorrowedFd<'_>) -> Result<OwnedFd, DeviceError> {
    fd.try_clone_to_owned().map_err(DeviceError::Dup)
}

impl DeviceProcesses {
    /// How devices are started.
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// Starts every device, as `sandbox` says (processes or threads),
    /// wires them together, and sets each up.
    pub fn start(
        platform: Platform,
        sandbox: Sandbox,
        control: Sender<ControlMessage>,
    ) -> Result<DeviceProcesses, DeviceError> {
        let starter = starter_for(sandbox.device_mode).map_err(|source| DeviceError::Spawn {
            kind: "device",
            source,
        })?;
        Self::start_with(platform, sandbox, starter, control)
    }

    /// [`DeviceProcesses::start`] through `starter`.
    pub fn start_with(
        platform: Platform,
        sandbox: Sandbox,
        starter: Box<dyn Starter>,
        control: Sender<ControlMessage>,
    ) -> Result<DeviceProcesses, DeviceError> {
        let Platform {
            memory,
            threads_per_core,
            drcs,
            event_log_interrupts,
        } = platform;
        let drc_count: usize = drcs.iter().map(|range| range.count as usize).sum();
        let state_regions = HashMap::from([
            (
                ProcessKind::HotplugController,
                StateRegion::new(
                    "papervisor-hotplug-state",
                    core_hotplug::state_region_bytes(drc_count),
                )?,
            ),
            (
                ProcessKind::EventLog,
                StateRegion::new(
                    "papervisor-eventlog-state",
                    ipc_proto::link::core_eventlog::STATE_REGION_BYTES,
                )?,
            ),
        ]);
        // Read now: no thread's filter allows asking once the VM runs.
        let owner = nix::unistd::geteuid().as_raw();
        let reaper = match starter.mode() {
            DeviceMode::OutOfProcess => {
                Some(spawn::start_reaper(&control).map_err(DeviceError::Reaper)?)
            }
            DeviceMode::InProcess => None,
        };
        let devices = DeviceProcesses {
            reaper: Mutex::new(reaper),
            reaper_restarts: Mutex::new(0),
            sandbox,
            starter,
            resources: Resources {
                memory,
                dimm_memory: Mutex::new(Vec::new()),
                threads_per_core,
                drcs,
                event_log_interrupts,
                state_regions,
                function_models: Mutex::new(BTreeMap::new()),
            },
            rtas: Proxy::new(ProcessKind::RtasServer, control.clone()),
            hotplug: Proxy::new(ProcessKind::HotplugController, control.clone()),
            eventlog: Proxy::new(ProcessKind::EventLog, control.clone()),
            control,
            records: Mutex::new(HashMap::new()),
            next_generation: Mutex::new(0),
            owner,
            upgraded: Mutex::new(HashMap::new()),
        };
        devices.wire(&ProcessKind::ALL)?;
        Ok(devices)
    }

    /// The proxy of `kind`, for what is done to every kind alike.
    fn proxy(&self, kind: ProcessKind) -> &dyn Supervised {
        match kind {
            ProcessKind::RtasServer => &self.rtas,
            ProcessKind::HotplugController => &self.hotplug,
            ProcessKind::EventLog => &self.eventlog,
        }
    }

    fn generation(&self, kind: ProcessKind) -> Option<u64> {
        lock(&self.records)
            .get(&kind)
            .filter(|record| record.supervision.state == State::Running)
            .map(|record| record.supervision.generation)
    }

    /// How the process of `kind` is doing, once started.
    pub fn state(&self, kind: ProcessKind) -> Option<State> {
        lock(&self.records)
            .get(&kind)
            .map(|record| record.supervision.state)
    }

    /// Where the devices run.
    pub fn device_mode(&self) -> DeviceMode {
        self.starter.mode()
    }

    /// The pid of the process of `kind`, as last started (for reports).
    pub fn pid(&self, kind: ProcessKind) -> u32 {
        lock(&self.records)
            .get(&kind)
            .map_or(0, |record| record.pid)
    }

    /// The binary a process of `kind` runs.
    fn program(&self, kind: ProcessKind) -> PathBuf {
        lock(&self.upgraded)
            .get(&kind)
            .cloned()
            .unwrap_or_else(|| spawn::helper_binary(kind.binary()))
    }

    /// Why the process of `kind` last ended.
    pub fn last_exit(&self, kind: ProcessKind) -> Option<String> {
        lock(&self.records)
            .get(&kind)
            .and_then(|record| record.supervision.last_exit.clone())
    }

    /// How many times the process of `kind` was restarted.
    pub fn restarts(&self, kind: ProcessKind) -> u32 {
        lock(&self.records)
            .get(&kind)
            .map(|record| record.supervision.restarts)
            .unwrap_or(0)
    }
}

impl Drop for DeviceProcesses {
    fn drop(&mut self) {
        for record in lock(&self.records).values() {
            if let Some(process) = &record.process {
                process.kill();
            }
        }
    }
}
