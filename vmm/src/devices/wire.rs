//! Starting device processes and wiring them: fresh links to the core and
//! to each other (and, by re-link, to the peers that keep running), the
//! handshakes, each process's set-up, and the reader of the hotplug
//! controller's notifications.

use super::proxy::DeviceFailure;
use super::spawn::{self, DeviceMode, ProcessHandle};
use super::supervisor::Supervision;
use super::wiring::{self, Holder};
use super::{lock, DeviceError, DeviceProcesses, Record};
use crate::control::ControlMessage;
use ipc_proto::channel::{Channel, ChannelError};
use ipc_proto::link::core_hotplug;
use ipc_proto::link::core_rtas;
use ipc_proto::link::hotplug_notify::HotplugNotify;
use ipc_proto::protocol::decode_request;
use ipc_proto::{Link, ProcessKind};
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a new process has for its handshakes.
pub(super) const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

impl DeviceProcesses {
    /// Starts the processes of `kinds` (all, or those being restarted) with
    /// fresh links: to the core, to each other, and — by re-link — to the
    /// peers that keep running.
    pub(super) fn wire(&self, kinds: &[ProcessKind]) -> Result<(), DeviceError> {
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

        let launches: Vec<spawn::Launch> = kinds
            .iter()
            .map(|&kind| {
                let ends = descriptors.get(&kind);
                let mut fds: Vec<RawFd> = kind
                    .links()
                    .iter()
                    .filter_map(|link| ends?.get(link).map(|end| end.as_fd().as_raw_fd()))
                    .collect();
                fds.extend(self.extra_fds(kind));
                self.launch(kind, fds, None)
            })
            .collect();
        // Peers first, and while the new processes start: each new one
        // finds its peers' hellos waiting, and waits for nothing else
        // before it answers the core. (If it does not come up, its peers
        // see its ends close, as if it had died.)
        for (peer, link, channel) in relinks {
            let Some(new) = link.peer_of(peer) else {
                continue;
            };
            let Some(launch) = launches.iter().find(|launch| launch.kind == new) else {
                continue;
            };
            if let Err(error) = self
                .proxy(peer)
                .relink(link, channel.as_fd(), launch.generation)
            {
                log::error!(
                    "{}: cannot hand over the new {link:?}: {error}",
                    peer.name()
                );
            }
        }
        let started: HashMap<ProcessKind, (u64, Arc<ProcessHandle>)> = kinds
            .iter()
            .copied()
            .zip(self.start_launches(launches))
            .map(|(kind, process)| Ok((kind, process?)))
            .collect::<Result<_, DeviceError>>()?;
        // The processes' ends are theirs alone now.
        drop(descriptors);
        let spawned = began.elapsed();

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
            self.served(kind, started[&kind].0);
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
    pub(super) fn extra_fds(&self, kind: ProcessKind) -> Vec<RawFd> {
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
    pub(super) fn peer_generations(
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
    pub(super) fn spawn(
        &self,
        launches: Vec<(ProcessKind, Vec<RawFd>, Option<PathBuf>)>,
    ) -> Vec<Result<(u64, Arc<ProcessHandle>), DeviceError>> {
        let launches = launches
            .into_iter()
            .map(|(kind, fds, program)| self.launch(kind, fds, program))
            .collect();
        self.start_launches(launches)
    }

    /// Starts `launches` together, and records and watches each as a new
    /// generation: one result each, in order.
    fn start_launches(
        &self,
        launches: Vec<spawn::Launch>,
    ) -> Vec<Result<(u64, Arc<ProcessHandle>), DeviceError>> {
        let started: Vec<(ProcessKind, u64)> = launches
            .iter()
            .map(|launch| (launch.kind, launch.generation))
            .collect();
        self.starter
            .start(launches)
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
        let resume = self
            .resources
            .state_regions
            .get(&kind)
            .is_some_and(|region| region.formatted.load(Ordering::SeqCst));
        // The kind's own binary is the spawner's to find.
        let program = program.or_else(|| lock(&self.upgraded).get(&kind).cloned());
        spawn::Launch {
            sandbox: self.sandbox.clone(),
            kind,
            generation,
            fds,
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
        let running_as = match self.starter.mode() {
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
                supervision: Supervision::new(generation, Instant::now()),
                pid: handle.pid,
                process: None,
            });
            record.supervision.started(generation, Instant::now());
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

    /// Generation `generation` of `kind` completed its set-up: it serves.
    pub(super) fn served(&self, kind: ProcessKind, generation: u64) {
        if let Some(record) = lock(&self.records).get_mut(&kind) {
            record.supervision.serving(generation);
        }
    }

    /// What a new process is told before it serves the guest.
    pub(super) fn set_up(&self, kind: ProcessKind) -> Result<(), DeviceFailure> {
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
                })?;
                let models = lock(&self.resources.function_models).clone();
                for (drc, model) in models {
                    self.hotplug
                        .command(core_hotplug::Request::DescribeFunction { drc, model })?;
                }
                Ok(())
            }
            ProcessKind::EventLog => Ok(()),
        }
    }
}

fn handshake_failed(link: Link, source: ChannelError) -> DeviceError {
    let kind = link
        .server()
        .or(link.requester())
        .map_or("device process", ProcessKind::name);
    DeviceError::Handshake { kind, source }
}

/// Reads the hotplug controller's notifications and hands them, validated,
/// to the control loop. Ends when that controller goes.
pub(super) fn spawn_notification_reader(notify: Channel, control: Sender<ControlMessage>) {
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
