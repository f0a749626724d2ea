//! The core's side of the device processes, in one place: starting them
//! ([`spawn`]), handing out their links ([`wiring`]), talking to each through
//! one generic [`proxy`], and supervising them ([`supervisor`]): a process
//! that dies, or that the core (or a peer) finds misbehaving, is reported and
//! restarted with bounded backoff, with fresh links to the core and to its
//! peers; one that keeps dying is failed, and what it served answers with
//! errors while the VM runs on.

pub mod faults;
pub mod proxy;
pub mod spawn;
pub mod supervisor;
pub mod wiring;

use crate::control::ControlMessage;
use crate::memory::GuestRam;
use ipc_proto::channel::{Channel, ChannelError};
use ipc_proto::link::core_eventlog::CoreEventLog;
use ipc_proto::link::core_hotplug::{self, CoreHotplug, DrcRange};
use ipc_proto::link::core_rtas::{self, CoreRtas, MemoryRegion};
use ipc_proto::link::hotplug_notify::HotplugNotify;
use ipc_proto::protocol::decode_request;
use ipc_proto::{Link, ProcessKind};
use proxy::{DeviceFailure, Proxy, Supervised};
use serde_json::{json, Value};
use spawn::{ProcessHandle, SpawnError};
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use supervisor::{AfterExit, State, Supervision};
use thiserror::Error;
use wiring::Holder;

pub use spawn::{DeviceMode, Sandbox};

/// Reapers started after the first, at most: one that keeps dying is
/// given up on (and says so) rather than restarted in a loop.
const MAX_REAPER_RESTARTS: u32 = 5;
/// How long a new process has for its handshakes.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an RTAS call waits for a restarting RTAS server: the guest
/// sees a slower call, not a failed one.
pub const RTAS_RESTART_WAIT: Duration = Duration::from_secs(10);
/// How often a call that needs a restarting peer of the RTAS server asks
/// again: the core learns of the restart only through the supervisor.
const PEER_RESTART_POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Error)]
pub enum DeviceError {
    #[error("cannot create the {0:?} channel")]
    Channel(Link, #[source] ChannelError),
    #[error("cannot start the {kind}")]
    Spawn {
        kind: &'static str,
        #[source]
        source: SpawnError,
    },
    #[error("the {kind} did not complete its handshake")]
    Handshake {
        kind: &'static str,
        #[source]
        source: ChannelError,
    },
    #[error("the {kind} refused its set-up")]
    Setup {
        kind: &'static str,
        #[source]
        source: DeviceFailure,
    },
    #[error("cannot duplicate a descriptor")]
    Dup(#[source] std::io::Error),
    #[error("cannot start the thread that watches the {kind}")]
    Watch {
        kind: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the hotplug controller's state region")]
    StateRegion(#[source] crate::memory::MemoryError),
    #[error("cannot upgrade the {kind}: {why}")]
    Upgrade { kind: &'static str, why: String },
    #[error("cannot start the reaper")]
    Reaper(#[source] SpawnError),
}

/// What a (re)started process is given besides its links.
pub struct Resources {
    /// Boot RAM, for the RTAS server.
    pub memory: Vec<(MemoryRegion, OwnedFd)>,
    /// The plugged DIMMs' memory, for the RTAS server too.
    pub dimm_memory: Mutex<Vec<(MemoryRegion, OwnedFd)>>,
    pub guest_ram_bytes: u64,
    pub threads_per_core: u32,
    pub drcs: Vec<DrcRange>,
    /// The event log's interrupts: hot-plug, then EPOW.
    pub event_log_interrupts: [OwnedFd; 2],
    /// The state regions of the hotplug controller and the event log.
    pub state_regions: HashMap<ProcessKind, StateRegion>,
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

pub struct DeviceProcesses {
    sandbox: Sandbox,
    resources: Resources,
    control: Sender<ControlMessage>,
    pub rtas: Proxy<CoreRtas>,
    pub hotplug: Proxy<CoreHotplug>,
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

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn duplicate(fd: BorrowedFd<'_>) -> Result<OwnedFd, DeviceError> {
    fd.try_clone_to_owned().map_err(DeviceError::Dup)
}

impl DeviceProcesses {
    /// Starts every device process, wires them together, and sets each up.
    /// `max_memory`: boot RAM and every DIMM the machine can take.
    pub fn start(
        ram: &GuestRam,
        max_memory: u64,
        event_log_interrupts: [OwnedFd; 2],
        threads_per_core: u32,
        drcs: Vec<DrcRange>,
        sandbox: Sandbox,
        control: Sender<ControlMessage>,
    ) -> Result<DeviceProcesses, DeviceError> {
        if sandbox.jail {
            spawn::become_subreaper().map_err(|source| DeviceError::Spawn {
                kind: "jailer",
                source,
            })?;
        }
        let memory = ram
            .regions()
            .into_iter()
            .map(|(region, fd)| Ok((region, duplicate(fd)?)))
            .collect::<Result<Vec<_>, DeviceError>>()?;
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
        let reaper = match sandbox.device_mode {
            DeviceMode::OutOfProcess => Some(start_reaper(&sandbox, &control, owner == 0)?),
            DeviceMode::InProcess => None,
        };
        let devices = DeviceProcesses {
            reaper: Mutex::new(reaper),
            reaper_restarts: Mutex::new(0),
            sandbox,
            resources: Resources {
                memory,
                dimm_memory: Mutex::new(Vec::new()),
                guest_ram_bytes: max_memory,
                threads_per_core,
                drcs,
                event_log_interrupts,
                state_regions,
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

    /// Starts the processes of `kinds` (all, or those being restarted) with
    /// fresh links: to the core, to each other, and — by re-link — to the
    /// peers that keep running.
    fn wire(&self, kinds: &[ProcessKind]) -> Result<(), DeviceError> {
        let began = Instant::now();
        let mut descriptors: HashMap<ProcessKind, HashMap<Link, Channel>> = HashMap::new();
        let mut core_ends: Vec<(Link, Channel)> = Vec::new();
        let mut relinks: Vec<(ProcessKind, Link, Channel)> = Vec::new();
        for plan in wiring::plan(kinds) {
            let (requester_end, server_end) =
                Channel::pair().map_err(|error| DeviceError::Channel(plan.link, error))?;
            for (holder, end) in [(plan.requester, requester_end), (plan.server, server_end)] {
                match holder {
                    Holder::Core => core_ends.push((plan.link, end)),
                    Holder::Starting(kind) => {
                        descriptors.entry(kind).or_default().insert(plan.link, end);
                    }
                    Holder::Running(kind) => relinks.push((kind, plan.link, end)),
                }
            }
        }

        let launches = kinds
            .iter()
            .map(|&kind| {
                let ends = descriptors.get(&kind);
                let mut fds: Vec<RawFd> = kind
                    .links()
                    .iter()
                    .filter_map(|link| ends?.get(link).map(|end| end.as_fd().as_raw_fd()))
                    .collect();
                fds.extend(self.extra_fds(kind));
                (kind, fds, None)
            })
            .collect();
        let started: HashMap<ProcessKind, (u64, Arc<ProcessHandle>)> = kinds
            .iter()
            .copied()
            .zip(self.spawn(launches))
            .map(|(kind, process)| Ok((kind, process?)))
            .collect::<Result<_, DeviceError>>()?;
        // The processes' ends are theirs alone now.
        drop(descriptors);
        let spawned = began.elapsed();

        // Peers first: a new process waits for their hellos before it
        // answers anything of the core's.
        for (peer, link, channel) in relinks {
            let Some(new) = [link.requester(), link.server()]
                .into_iter()
                .flatten()
                .find(|kind| kinds.contains(kind))
            else {
                continue;
            };
            let generation = started[&new].0;
            if let Err(error) = self.proxy(peer).relink(link, channel.as_fd(), generation) {
                log::error!(
                    "{}: cannot hand over the new {link:?}: {error}",
                    peer.name()
                );
            }
        }
        for (link, channel) in &core_ends {
            channel
                .send_hello(*link)
                .map_err(|source| handshake_failed(*link, source))?;
        }
        for (link, channel) in &core_ends {
            channel
                .expect_hello(*link, SETUP_TIMEOUT)
                .map_err(|source| handshake_failed(*link, source))?;
        }
        for (link, channel) in core_ends {
            match link.server() {
                Some(kind) => {
                    let (_, process) = &started[&kind];
                    let peers = self.peer_generations(kind, &started);
                    self.proxy(kind)
                        .connect(channel, Arc::clone(process), peers);
                }
                None => spawn_notification_reader(channel, self.control.clone()),
            }
        }
        let linked = began.elapsed();
        for &kind in kinds {
            let setting_up = Instant::now();
            self.set_up(kind).map_err(|source| DeviceError::Setup {
                kind: kind.name(),
                source,
            })?;
            if let Some(region) = self.resources.state_regions.get(&kind) {
                region.formatted.store(true, Ordering::SeqCst);
            }
            self.proxy(kind).mark_ready();
            log::debug!("{} set up in {:?}", kind.name(), setting_up.elapsed());
        }
        log::debug!(
            "{kinds:?}: started in {spawned:?}, linked and handshaken by {linked:?}, set up by {:?}",
            began.elapsed()
        );
        Ok(())
    }

    /// What a process of `kind` gets after its links: the event log its
    /// interrupts (hot-plug, EPOW), then a stateful process its state region
    /// (`ProcessKind::extra_descriptors` of them).
    fn extra_fds(&self, kind: ProcessKind) -> Vec<RawFd> {
        let mut fds = Vec::new();
        if kind == ProcessKind::EventLog {
            fds.extend(
                self.resources
                    .event_log_interrupts
                    .iter()
                    .map(AsRawFd::as_raw_fd),
            );
        }
        if let Some(region) = self.resources.state_regions.get(&kind) {
            fds.push(region.memfd.as_raw_fd());
        }
        debug_assert_eq!(fds.len(), kind.extra_descriptors());
        fds
    }

    /// The generations of the peers `kind` is linked to once started.
    fn peer_generations(
        &self,
        kind: ProcessKind,
        started: &HashMap<ProcessKind, (u64, Arc<ProcessHandle>)>,
    ) -> HashMap<ProcessKind, u64> {
        ProcessKind::ALL
            .into_iter()
            .filter(|&peer| peer != kind)
            .filter_map(|peer| {
                let generation = match started.get(&peer) {
                    Some((generation, _)) => Some(*generation),
                    None => self.generation(peer),
                };
                Some((peer, generation?))
            })
            .collect()
    }

    /// Starts processes together, each `(kind, descriptors, program)` (the
    /// kind's binary unless another is named), and records and watches each
    /// as a new generation: one result each, in order.
    fn spawn(
        &self,
        launches: Vec<(ProcessKind, Vec<RawFd>, Option<PathBuf>)>,
    ) -> Vec<Result<(u64, Arc<ProcessHandle>), DeviceError>> {
        let launches: Vec<spawn::Launch> = launches
            .into_iter()
            .map(|(kind, fds, program)| self.launch(kind, fds, program))
            .collect();
        let started: Vec<(ProcessKind, u64)> = launches
            .iter()
            .map(|launch| (launch.kind, launch.generation))
            .collect();
        spawn::spawn(launches)
            .into_iter()
            .zip(started)
            .map(|(spawned, (kind, generation))| {
                let (handle, waiter) = spawned.map_err(|source| DeviceError::Spawn {
                    kind: kind.name(),
                    source,
                })?;
                self.record(kind, generation, handle, waiter)
            })
            .collect()
    }

    /// How a new generation of `kind` is started.
    fn launch(
        &self,
        kind: ProcessKind,
        fds: Vec<RawFd>,
        program: Option<PathBuf>,
    ) -> spawn::Launch {
        let generation = {
            let mut next = lock(&self.next_generation);
            *next += 1;
            *next
        };
        let address_space = match kind {
            // Guest RAM, DIMMs included, is mapped besides the process's own memory.
            ProcessKind::RtasServer => self.resources.guest_ram_bytes + (1 << 30),
            _ => 1 << 30,
        };
        let resume = self
            .resources
            .state_regions
            .get(&kind)
            .is_some_and(|region| region.formatted.load(Ordering::SeqCst));
        let program = program.unwrap_or_else(|| self.program(kind));
        spawn::Launch {
            sandbox: self.sandbox.clone(),
            kind,
            id: format!("{}-{generation}", std::process::id()),
            generation,
            fds,
            address_space,
            resume,
            program,
        }
    }

    /// Records a started process as the running generation of `kind`, and
    /// watches it.
    fn record(
        &self,
        kind: ProcessKind,
        generation: u64,
        handle: ProcessHandle,
        waiter: spawn::Waiter,
    ) -> Result<(u64, Arc<ProcessHandle>), DeviceError> {
        let handle = Arc::new(handle);
        let running_as = match self.sandbox.device_mode {
            DeviceMode::OutOfProcess => "pid",
            DeviceMode::InProcess => "a thread of the core, tid",
        };
        log::info!(
            "{} running as {running_as} {} (generation {generation})",
            kind.name(),
            handle.pid
        );
        self.tell_reaper(&handle);
        {
            let mut records = lock(&self.records);
            let record = records.entry(kind).or_insert_with(|| Record {
                supervision: Supervision::new(generation),
                pid: handle.pid,
                process: None,
            });
            record.supervision.started(generation);
            record.pid = handle.pid;
            record.process = Some(Arc::clone(&handle));
        }
        let control = self.control.clone();
        waiter
            .watch(kind, move |reason| {
                let _ = control.send(ControlMessage::DeviceExited {
                    kind,
                    generation,
                    reason,
                });
            })
            .map_err(|source| {
                handle.kill();
                DeviceError::Watch {
                    kind: kind.name(),
                    source,
                }
            })?;
        Ok((generation, handle))
    }

    /// The reaper ended (`reason`): a new one takes every running device
    /// process, unless reapers keep dying.
    pub fn reaper_exited(&self, reason: &str) {
        let mut restarts = lock(&self.reaper_restarts);
        if *restarts >= MAX_REAPER_RESTARTS {
            log::error!("the reaper {reason}, again: given up; device processes would outlive a core that dies");
            *lock(&self.reaper) = None;
            return;
        }
        *restarts += 1;
        drop(restarts);
        match start_reaper(&self.sandbox, &self.control, self.owner == 0) {
            Ok(socket) => {
                log::error!("the reaper {reason}; a new one holds the device processes");
                *lock(&self.reaper) = Some(socket);
                let records = lock(&self.records);
                for process in records.values().filter_map(|r| r.process.as_ref()) {
                    self.tell_reaper(process);
                }
            }
            Err(error) => {
                log::error!(
                    "the reaper {reason}, and no new one starts ({}): device processes would outlive a core that dies",
                    common::describe(&error)
                );
                *lock(&self.reaper) = None;
            }
        }
    }

    /// Hands the reaper a pidfd of a new device process.
    fn tell_reaper(&self, handle: &ProcessHandle) {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        let reaper = lock(&self.reaper);
        let (Some(reaper), Some(pidfd)) = (reaper.as_ref(), handle.pidfd()) else {
            return;
        };
        let fds = [pidfd.as_raw_fd()];
        let sent = sendmsg::<()>(
            reaper.as_raw_fd(),
            &[std::io::IoSlice::new(&[1])],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
            None,
        );
        if let Err(error) = sent {
            log::error!(
                "the reaper did not take pid {}: it would outlive a core that dies ({error})",
                handle.pid
            );
        }
    }

    /// What a new process is told before it serves the guest.
    fn set_up(&self, kind: ProcessKind) -> Result<(), DeviceFailure> {
        match kind {
            ProcessKind::RtasServer => {
                self.send_memory_table()?;
                let threads_per_core = self.resources.threads_per_core;
                self.rtas
                    .command(core_rtas::Request::SetTopology { threads_per_core })
            }
            ProcessKind::HotplugController => {
                self.hotplug.command(core_hotplug::Request::DefineDrcs {
                    ranges: self.resources.drcs.clone(),
                })
            }
            ProcessKind::EventLog => Ok(()),
        }
    }

    /// The RTAS server's memory table: boot RAM and every plugged DIMM.
    fn send_memory_table(&self) -> Result<(), DeviceFailure> {
        let dimms = lock(&self.resources.dimm_memory);
        let (regions, fds): (Vec<MemoryRegion>, Vec<BorrowedFd<'_>>) = self
            .resources
            .memory
            .iter()
            .chain(dimms.iter())
            .map(|(region, fd)| (*region, fd.as_fd()))
            .unzip();
        self.rtas
            .command_with(core_rtas::Request::SetMemoryTable { regions }, &fds)
    }

    /// The plugged DIMMs changed: the RTAS server maps `dimms` besides boot
    /// RAM. One that is down, or dies taking the table, is replaced by a
    /// successor that gets the table at its set-up (and guest calls wait
    /// for it): only a refusal, or a server failed for good, is an error.
    pub fn set_dimm_memory(
        &self,
        mut dimms: Vec<(MemoryRegion, OwnedFd)>,
    ) -> Result<(), DeviceFailure> {
        // Kept in address order: what every successor is handed too.
        dimms.sort_by_key(|(region, _)| region.guest_address);
        *lock(&self.resources.dimm_memory) = dimms;
        match self.send_memory_table() {
            Err(
                failure @ (DeviceFailure::Restarting(_)
                | DeviceFailure::Died(_)
                | DeviceFailure::CutOff { .. }),
            ) => {
                log::info!("the RTAS server's successor maps the DIMMs at its set-up ({failure})");
                Ok(())
            }
            other => other,
        }
    }

    /// One H_RTAS call. While the RTAS server, or a peer the call needs,
    /// restarts, the call waits for the successor (up to
    /// [`RTAS_RESTART_WAIT`], or until `abort`) and is made again, under the
    /// same id: the guest sees a slower call, never a status for a call that
    /// did not run (a `stop-self` that "returned" busy would be fatal to it,
    /// and Linux zeroes the return cells before a call). A call that did run
    /// before its server died is recognised by its id where it changed
    /// something (the hotplug controller's state region) and not applied
    /// twice. Only a process failed for good fails the call.
    pub fn rtas_call(
        &self,
        request: core_rtas::Request,
        abort: &dyn Fn() -> bool,
    ) -> Result<core_rtas::Reply, DeviceFailure> {
        let deadline = Instant::now() + RTAS_RESTART_WAIT;
        let id = self.rtas.new_id();
        loop {
            // A server just restarted serves the guest once it is set up.
            if !self.rtas.wait_for_process(deadline, abort) {
                return self.rtas.query_as(id, request);
            }
            match self.rtas.query_as(id, request.clone()) {
                Err(
                    failure @ (DeviceFailure::Restarting(_)
                    | DeviceFailure::Died(_)
                    | DeviceFailure::CutOff { .. }),
                ) => {
                    log::info!("RTAS call waits for the RTAS server: {failure}");
                }
                Ok(core_rtas::Reply::CallRefused(core_rtas::CallRefusal::PeerDown { peer })) => {
                    if self.proxy(peer).is_failed() {
                        return Err(DeviceFailure::Failed(peer));
                    }
                    if Instant::now() >= deadline || abort() {
                        return Err(DeviceFailure::Restarting(peer));
                    }
                    log::debug!("RTAS call waits for the {}", peer.name());
                    std::thread::sleep(PEER_RESTART_POLL);
                }
                answer => return answer,
            }
        }
    }

    /// Kills a process the core no longer trusts; its watcher reports it.
    pub fn cut_off(&self, kind: ProcessKind, why: &str) {
        self.proxy(kind).cut_off(why);
    }

    /// A process reported that generation `generation` of `peer` failed it:
    /// the supervisor acts on that peer, unless it was replaced meanwhile.
    pub fn peer_failed(&self, peer: ProcessKind, generation: u64, reported_by: ProcessKind) {
        if self.generation(peer) != Some(generation) {
            log::info!(
                "the {} reported generation {generation} of the {}, which is gone already",
                reported_by.name(),
                peer.name()
            );
            return;
        }
        let why = format!("the {} found it silent or misbehaving", reported_by.name());
        self.cut_off(peer, &why);
    }

    pub fn state(&self, kind: ProcessKind) -> Option<State> {
        lock(&self.records)
            .get(&kind)
            .map(|record| record.supervision.state)
    }

    /// Records an exit and decides what follows.
    pub fn exited(&self, kind: ProcessKind, generation: u64, reason: &str) -> AfterExit {
        let after = {
            let mut records = lock(&self.records);
            let Some(record) = records.get_mut(&kind) else {
                return AfterExit::Ignore;
            };
            let after = record
                .supervision
                .exited(generation, reason, Instant::now());
            if after != AfterExit::Ignore {
                if let Some(process) = record.process.take() {
                    // Its jailer ended with it; the jail's directory goes too.
                    process.remove_jail_dir();
                }
            }
            after
        };
        if after != AfterExit::Ignore {
            let proxy = self.proxy(kind);
            proxy.disconnect();
            proxy.set_failed(after == AfterExit::Failed);
        }
        after
    }

    /// x-restart-device-process: a failed `kind` (or one waiting out its
    /// backoff) is to be restarted now, its crash history forgotten; the
    /// caller restarts it. A running one is refused.
    pub fn revive(&self, kind: ProcessKind) -> Result<(), String> {
        let revived = lock(&self.records)
            .get_mut(&kind)
            .is_some_and(|record| record.supervision.revive());
        if !revived {
            return Err(format!(
                "the {} is running (x-upgrade-device-process replaces a running one)",
                kind.name()
            ));
        }
        self.proxy(kind).set_failed(false);
        Ok(())
    }

    /// A restart that lacked host resources: what it started goes, and
    /// the process waits to be restarted again, no death counted.
    pub fn restart_postponed(&self, kind: ProcessKind, reason: &str) {
        self.abandon_restart(kind, reason, |supervision| {
            supervision.postponed(reason);
            AfterExit::Ignore
        });
    }

    /// A restart that did not come up (`reason`) counts as another exit.
    pub fn restart_failed(&self, kind: ProcessKind, reason: &str) -> AfterExit {
        let after = self.abandon_restart(kind, reason, |supervision| {
            supervision.restart_failed(reason, Instant::now())
        });
        self.proxy(kind).set_failed(after == AfterExit::Failed);
        after
    }

    /// What a restart of `kind` that did not come up started goes (cut off,
    /// killed, its jail removed); `settle` records it in its supervision.
    fn abandon_restart(
        &self,
        kind: ProcessKind,
        reason: &str,
        settle: impl FnOnce(&mut Supervision) -> AfterExit,
    ) -> AfterExit {
        let proxy = self.proxy(kind);
        proxy.cut_off(reason);
        let mut records = lock(&self.records);
        let Some(record) = records.get_mut(&kind) else {
            return AfterExit::Ignore;
        };
        if let Some(process) = record.process.take() {
            process.end();
        }
        let after = settle(&mut record.supervision);
        drop(records);
        proxy.disconnect();
        after
    }

    /// Starts a fresh `kind` in place of the dead one, together with every
    /// other process that is down (processes that died together come back
    /// together, linked to each other). Returns the processes restarted; an
    /// exit of `kind` already handled (it runs again) restarts nothing.
    pub fn restart(
        &self,
        kind: ProcessKind,
    ) -> Result<Vec<ProcessKind>, (Vec<ProcessKind>, DeviceError)> {
        if self.state(kind) != Some(State::Restarting) {
            return Ok(vec![]);
        }
        let group: Vec<ProcessKind> = ProcessKind::ALL
            .into_iter()
            .filter(|&k| self.state(k) == Some(State::Restarting))
            .collect();
        self.wire(&group).map_err(|error| (group.clone(), error))?;
        let mut records = lock(&self.records);
        for kind in &group {
            if let Some(record) = records.get_mut(kind) {
                record.supervision.restarted();
            }
        }
        Ok(group)
    }

    /// x-upgrade-device-process: starts `program` as the `kind` on the same
    /// state region beside the one that serves, which must be quiet (the
    /// caller pauses the vCPUs; the control loop sends nothing meanwhile).
    /// Only once the new process has completed its handshake (same protocol
    /// version) and its set-up (it validated the region: same layout) does
    /// it take over: the old one is killed and the peers are re-linked to
    /// the new one. Otherwise the new one is killed and the old one keeps
    /// serving, untouched. Returns the new pid.
    pub fn upgrade(&self, kind: ProcessKind, program: PathBuf) -> Result<u32, DeviceError> {
        let refused = |why: String| DeviceError::Upgrade {
            kind: kind.name(),
            why,
        };
        if self.state(kind) != Some(State::Running) {
            return Err(refused(
                "it is not running (x-restart-device-process brings back a failed one)".into(),
            ));
        }
        if self.sandbox.device_mode == DeviceMode::InProcess {
            return Err(refused(
                "the devices are threads of the core (--device-mode in-process): there is no program to replace".into(),
            ));
        }
        let executable = std::fs::metadata(&program)
            .map(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
            .unwrap_or(false);
        if !program.is_absolute() || !executable {
            return Err(refused(format!(
                "{} is not the absolute path of an executable file",
                program.display()
            )));
        }
        let program = trusted_program(&program, self.owner).map_err(refused)?;
        // Its links: to the core, live; to its peers, dead for now (it
        // starts without them, and is re-linked to them once it is in).
        let mut core_ends = Vec::new();
        let mut fds = Vec::new();
        let mut held = Vec::new();
        for &link in kind.links() {
            let (ours, its) = Channel::pair().map_err(|error| DeviceError::Channel(link, error))?;
            fds.push(its.as_fd().as_raw_fd());
            held.push(its);
            if link.touches_core() {
                core_ends.push((link, ours));
            }
        }
        fds.extend(self.extra_fds(kind));
        let old = {
            let records = lock(&self.records);
            let record = records
                .get(&kind)
                .ok_or_else(|| refused("never started".into()))?;
            (
                record.supervision.generation,
                record.pid,
                record.process.clone(),
            )
        };
        let (generation, process) = self
            .spawn(vec![(kind, fds, Some(program.clone()))])
            .pop()
            .expect("one result per launch")?;
        drop(held);
        let restore = || {
            process.end();
            let mut records = lock(&self.records);
            if let Some(record) = records.get_mut(&kind) {
                record.supervision.started(old.0);
                record.pid = old.1;
                record.process = old.2.clone();
            }
        };
        let handshake = core_ends.iter().try_for_each(|(link, channel)| {
            channel.send_hello(*link)?;
            channel.expect_hello(*link, SETUP_TIMEOUT)
        });
        if let Err(error) = handshake {
            restore();
            return Err(refused(format!(
                "the new process failed its handshake: {error}"
            )));
        }
        let peers = self.peer_generations(kind, &HashMap::new());
        let mut notify = None;
        for (link, channel) in core_ends {
            match link.server() {
                Some(_) => self
                    .proxy(kind)
                    .stage(channel, Arc::clone(&process), peers.clone()),
                None => notify = Some(channel),
            }
        }
        if let Err(failure) = self.set_up(kind) {
            self.proxy(kind).finish_stage(false);
            restore();
            return Err(refused(format!(
                "the new process refused its set-up: {failure}"
            )));
        }
        self.proxy(kind).finish_stage(true);
        if let Some(replaced) = &old.2 {
            replaced.remove_jail_dir();
        }
        lock(&self.upgraded).insert(kind, program);
        if let Some(notify) = notify {
            spawn_notification_reader(notify, self.control.clone());
        }
        log::info!(
            "{} upgraded: pid {} (generation {generation}) replaces pid {}",
            kind.name(),
            process.pid,
            old.1
        );
        self.relink_peers(kind, generation, &peers);
        Ok(process.pid)
    }

    /// Links `kind` (generation `generation`) and each running peer with a
    /// fresh channel: both are told at once, as each waits for the other's
    /// hello.
    fn relink_peers(&self, kind: ProcessKind, generation: u64, peers: &HashMap<ProcessKind, u64>) {
        for &link in kind.links().iter().filter(|link| !link.touches_core()) {
            let Some(peer) = [link.requester(), link.server()]
                .into_iter()
                .flatten()
                .find(|&other| other != kind)
            else {
                continue;
            };
            let Some(&peer_generation) = peers.get(&peer) else {
                continue;
            };
            let (ours, theirs) = match Channel::pair() {
                Ok(pair) => pair,
                Err(error) => {
                    log::error!("{link:?}: cannot make a channel: {error}");
                    continue;
                }
            };
            std::thread::scope(|scope| {
                let new =
                    scope.spawn(|| self.proxy(kind).relink(link, ours.as_fd(), peer_generation));
                let old = self.proxy(peer).relink(link, theirs.as_fd(), generation);
                for (who, result) in [
                    (kind, new.join().unwrap_or(Err(DeviceFailure::Died(kind)))),
                    (peer, old),
                ] {
                    if let Err(error) = result {
                        log::error!("{}: cannot take the new {link:?}: {error}", who.name());
                    }
                }
            });
        }
    }

    pub fn device_mode(&self) -> DeviceMode {
        self.sandbox.device_mode
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
            .unwrap_or_else(|| spawn::sibling_binary(kind.binary()))
    }

    /// Why the process of `kind` last ended.
    pub fn last_exit(&self, kind: ProcessKind) -> Option<String> {
        lock(&self.records)
            .get(&kind)
            .and_then(|record| record.supervision.last_exit.clone())
    }

    pub fn restarts(&self, kind: ProcessKind) -> u32 {
        lock(&self.records)
            .get(&kind)
            .map(|record| record.supervision.restarts)
            .unwrap_or(0)
    }

    /// x-query-device-processes.
    pub fn info(&self) -> Value {
        let records = lock(&self.records);
        let rows: Vec<Value> = ProcessKind::ALL
            .into_iter()
            .filter_map(|kind| {
                let record = records.get(&kind)?;
                let binary = match self.sandbox.device_mode {
                    DeviceMode::OutOfProcess => Some(self.program(kind)),
                    DeviceMode::InProcess => None,
                };
                Some(json!({
                    "kind": kind.name(),
                    "pid": record.pid,
                    "state": record.supervision.state.name(),
                    "mode": self.sandbox.device_mode.name(),
                    "binary": binary,
                    "restarts": record.supervision.restarts,
                    "last-exit": record.supervision.last_exit,
                }))
            })
            .collect();
        Value::Array(rows)
    }

    /// x-inject-fault at a point: armed at the core's end of the link to
    /// `kind`, or in the process.
    pub fn arm_fault(
        &self,
        kind: ProcessKind,
        fault: ipc_proto::control::ArmedFault,
    ) -> Result<(), String> {
        use ipc_proto::control::{ControlRequest, FaultAction};
        if fault.point.at_core() {
            if matches!(fault.action, FaultAction::Crash | FaultAction::Hang) {
                return Err(format!(
                    "the core does not {:?} on purpose: {:?} is for device processes",
                    fault.action, fault.action
                ));
            }
            match kind {
                ProcessKind::RtasServer => self.rtas.arm(fault),
                ProcessKind::HotplugController => self.hotplug.arm(fault),
                ProcessKind::EventLog => self.eventlog.arm(fault),
            }
            return Ok(());
        }
        if matches!(fault.action, FaultAction::Crash | FaultAction::Hang) {
            self.refuse_in_process(format_args!("{:?}", fault.action))?;
        }
        match self
            .proxy(kind)
            .control(ControlRequest::ArmFaultPoint(fault), &[])
        {
            Ok(None) => Ok(()),
            Ok(Some(outcome)) => Err(format!("it answered {outcome}")),
            Err(error) => Err(error.to_string()),
        }
    }

    /// In-process a device is a thread of the core: a fault that ends or
    /// hangs it, or makes it break its seccomp filter, would do so to the core.
    pub fn refuse_in_process(&self, fault: impl std::fmt::Display) -> Result<(), String> {
        match self.sandbox.device_mode {
            DeviceMode::OutOfProcess => Ok(()),
            DeviceMode::InProcess => Err(format!(
                "'{fault}' would end or hang the core itself: the devices are its threads (--device-mode in-process)"
            )),
        }
    }

    /// x-inject-fault: the process's answer if it lived, or what became of it.
    pub fn inject(&self, kind: ProcessKind, fault: ipc_proto::Fault) -> Result<String, String> {
        use ipc_proto::control::ControlRequest;
        match self
            .proxy(kind)
            .control(ControlRequest::ArmFault(fault), &[])
        {
            Ok(Some(outcome)) => Ok(outcome),
            Ok(None) => {
                let why = format!("an acknowledgement after {fault:?}");
                self.cut_off(kind, &why);
                Err(format!("it answered {why} and was cut off"))
            }
            // Dead already: its watcher reports how it died.
            Err(DeviceFailure::Died(_)) => Err("it died".into()),
            Err(error) => Err(error.to_string()),
        }
    }
}

/// Starts the VM's reaper (`jailer::reaper`) on one end of a new socket;
/// the core keeps the other. As root with jails it takes the VM's device
/// uid, which may signal the device processes and nothing else.
fn start_reaper(
    sandbox: &Sandbox,
    control: &Sender<ControlMessage>,
    as_root: bool,
) -> Result<OwnedFd, DeviceError> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    let (ours, its) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|errno| DeviceError::Reaper(SpawnError::ReportSocket(errno.into())))?;
    let mut args = vec!["--seccomp".to_string(), sandbox.seccomp.clone()];
    if sandbox.jail && as_root {
        args.extend([
            "--uid".to_string(),
            sandbox.uid.to_string(),
            "--gid".to_string(),
            sandbox.gid.to_string(),
        ]);
    }
    let program = spawn::sibling_binary("papervisor-reaper");
    let reaper = spawn::start_helper(program, args, vec![its.as_raw_fd()], sandbox)
        .map_err(DeviceError::Reaper)?;
    let control = control.clone();
    spawn::Waiter::Process(reaper)
        .watch_named("reaper", move |reason| {
            let _ = control.send(ControlMessage::ReaperExited(reason));
        })
        .map_err(|source| DeviceError::Watch {
            kind: "reaper",
            source,
        })?;
    Ok(ours)
}

/// `program`, resolved, if nobody but root and `owner` (the user the VM
/// runs as) can change it: neither the file nor any directory on its way
/// may be owned by another user, or be writable by group or others (a
/// root-owned directory with the sticky bit, such as /tmp, lets nobody
/// else replace what is ours). A device process runs with guest RAM
/// mapped: whoever can replace its binary runs code there.
pub fn trusted_program(program: &std::path::Path, owner: u32) -> Result<PathBuf, String> {
    use std::os::unix::fs::MetadataExt;
    let resolved = std::fs::canonicalize(program)
        .map_err(|error| format!("{}: {error}", program.display()))?;
    for path in resolved.ancestors() {
        let metadata =
            std::fs::metadata(path).map_err(|error| format!("{}: {error}", path.display()))?;
        let mode = metadata.mode();
        let sticky_root_dir = metadata.is_dir() && mode & 0o1000 != 0 && metadata.uid() == 0;
        let why = if metadata.uid() != 0 && metadata.uid() != owner {
            format!("is owned by uid {}", metadata.uid())
        } else if mode & 0o022 != 0 && !sticky_root_dir {
            format!(
                "is writable by {}",
                if mode & 0o002 != 0 {
                    "anyone"
                } else {
                    "its group"
                }
            )
        } else {
            continue;
        };
        return Err(format!(
            "{} {why}: only root and uid {owner} may control a device process's binary and the directories above it",
            path.display()
        ));
    }
    Ok(resolved)
}

fn handshake_failed(link: Link, source: ChannelError) -> DeviceError {
    let kind = link
        .server()
        .or(link.requester())
        .map_or("device process", ProcessKind::name);
    DeviceError::Handshake { kind, source }
}

impl Drop for DeviceProcesses {
    fn drop(&mut self) {
        for record in lock(&self.records).values() {
            if let Some(process) = &record.process {
                process.end();
            }
        }
    }
}

/// Reads the hotplug controller's notifications and hands them, validated,
/// to the control loop. Ends when that controller goes.
fn spawn_notification_reader(notify: Channel, control: Sender<ControlMessage>) {
    let spawned = std::thread::Builder::new()
        .name("hotplug-notify".into())
        .spawn(move || {
            crate::seccomp::confine_or_exit(crate::seccomp::ThreadKind::Notifications);
            notification_loop(&notify, &control)
        });
    if let Err(error) = spawned {
        log::error!("cannot read hotplug notifications: {error}");
    }
}

fn notification_loop(notify: &Channel, control: &Sender<ControlMessage>) {
    loop {
        let frame = match notify.recv_frame(None) {
            Ok(frame) => frame,
            Err(ChannelError::HungUp) => return,
            Err(error) => {
                log::error!("bad notification from the hotplug controller: {error}");
                continue;
            }
        };
        match decode_request::<HotplugNotify>(frame).map(|incoming| (incoming.id, incoming.request))
        {
            Ok((id, ipc_proto::control::Request::Link(notification))) => {
                if control
                    .send(ControlMessage::Hotplug { id, notification })
                    .is_err()
                {
                    return;
                }
            }
            Ok((_, request)) => {
                log::error!("the hotplug controller sent {request:?} as a notification");
            }
            Err(unacceptable) => log::error!(
                "dropping a notification from the hotplug controller: {}",
                unacceptable.refusal
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn set_mode(path: &std::path::Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_binary_others_could_replace_is_not_trusted() {
        let me = nix::unistd::geteuid().as_raw();
        let dir = std::env::temp_dir().join(format!("pv-trust-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        set_mode(&dir, 0o755);
        let program = dir.join("papervisor-rtas");
        std::fs::write(&program, b"#!/bin/true\n").unwrap();
        set_mode(&program, 0o755);
        assert_eq!(trusted_program(&program, me), Ok(program.clone()));
        // Through a symbolic link: the file it names is checked.
        let link = dir.join("link");
        std::os::unix::fs::symlink(&program, &link).unwrap();
        assert_eq!(trusted_program(&link, me), Ok(program.clone()));
        for (mode, why) in [
            (0o757, "writable by anyone"),
            (0o775, "writable by its group"),
        ] {
            set_mode(&program, mode);
            let error = trusted_program(&program, me).unwrap_err();
            assert!(error.contains(why), "{error}");
        }
        set_mode(&program, 0o755);
        // A directory on the way that others may write to.
        set_mode(&dir, 0o777);
        let error = trusted_program(&program, me).unwrap_err();
        assert!(
            error.contains(&format!("{} is writable by anyone", dir.display())),
            "{error}"
        );
        set_mode(&dir, 0o755);
        if me == 0 {
            // Owned by another user.
            std::os::unix::fs::chown(&program, Some(4242), None).unwrap();
            let error = trusted_program(&program, me).unwrap_err();
            assert!(error.contains("owned by uid 4242"), "{error}");
            // A root-owned directory with the sticky bit (as /tmp) is fine.
            std::os::unix::fs::chown(&program, Some(0), None).unwrap();
            set_mode(&dir, 0o1777);
            assert!(trusted_program(&program, me).is_ok());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
