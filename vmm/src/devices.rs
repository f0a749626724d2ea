//! The device processes and their supervisor. The core creates every link
//! (one socketpair each) and shared descriptor and hands them out when it
//! starts a process, through the jailer, vhost-user style. It watches each
//! process; one that dies, or that the core cuts off (garbage, silence), is
//! reported and restarted with bounded backoff, with fresh links to the core
//! and to its peers; one that keeps dying is marked failed and what it served
//! answers with errors while the VM runs on.

use crate::control::ControlMessage;
use crate::memory::GuestRam;
use crate::rtas_client::RtasService;
use ipc_proto::channel::{Channel, ChannelError, Client};
use ipc_proto::eventlog::{CoreToEventLog, EventLogToCore};
use ipc_proto::hotplug::{
    CoreToHotplug, DrcRange, HotplugNotification, HotplugToCore, MAX_DEVICE_ID,
};
use ipc_proto::rtas::{CoreToRtas, MemoryRegion, RtasToCore};
use ipc_proto::{Fault, Link, ProcessKind};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Sender;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use thiserror::Error;

/// How long a device process has to answer the core.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Restarts allowed within [`RESTART_WINDOW`] before a process is failed.
const MAX_RESTARTS: usize = 5;
const RESTART_WINDOW: Duration = Duration::from_secs(60);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Debug, Error)]
pub enum DeviceError {
    #[error("cannot create the {0:?} channel")]
    Channel(Link, #[source] ChannelError),
    #[error("cannot start {path}")]
    Exec {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{kind} did not set up")]
    Setup {
        kind: &'static str,
        #[source]
        source: ChannelError,
    },
    #[error("{kind} refused its set-up: {reason}")]
    Refused { kind: &'static str, reason: String },
    #[error("cannot duplicate a descriptor")]
    Dup(#[source] std::io::Error),
}

/// How device processes are started.
#[derive(Clone, Debug)]
pub struct Sandbox {
    /// Through the jailer (the default); off only for debugging.
    pub jail: bool,
    /// `kill`, `log` or `off`, passed to each process.
    pub seccomp: String,
    /// Where the jails' roots are made.
    pub jail_dir: PathBuf,
}

/// What a (re)started process is given besides its links.
pub struct Resources {
    pub memory: Vec<(MemoryRegion, OwnedFd)>,
    pub guest_ram_bytes: u64,
    pub threads_per_core: u32,
    pub drcs: Vec<DrcRange>,
    pub hotplug_interrupt: OwnedFd,
}

/// The binary of a device process: beside the core's own executable.
pub fn sibling_binary(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .unwrap_or_default()
        .join(name)
}

/// The device process that holds the first end of a device-to-device link
/// (the requester, or the notify link's sender); `None` for the core's links.
fn link_owner(link: Link) -> Option<ProcessKind> {
    match link {
        Link::RtasHotplug | Link::RtasEventLog => Some(ProcessKind::RtasServer),
        Link::HotplugEventLog | Link::HotplugNotify => Some(ProcessKind::HotplugController),
        Link::CoreRtas | Link::CoreHotplug | Link::CoreEventLog => None,
    }
}

/// The other device process on a device-to-device link of `kind`.
fn peer_of(link: Link, kind: ProcessKind) -> Option<ProcessKind> {
    ProcessKind::ALL
        .into_iter()
        .find(|&other| other != kind && other.links().contains(&link))
}

/// Whether the core holds an end of `link`.
fn core_link(link: Link) -> bool {
    matches!(
        link,
        Link::CoreRtas | Link::CoreHotplug | Link::CoreEventLog | Link::HotplugNotify
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Running,
    Restarting,
    Failed,
}

struct Record {
    /// The process the core started (the jailer, or the program itself).
    child_pid: u32,
    /// The device process itself.
    pid: u32,
    generation: u64,
    state: State,
    restarts: u32,
    recent_exits: VecDeque<Instant>,
    last_exit: Option<String>,
    jail_dir: Option<PathBuf>,
}

impl Record {
    /// The process itself, then the jailer that watches it.
    fn kill(&self) {
        for pid in [self.pid, self.child_pid] {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// What the supervisor decided about an exit.
pub enum AfterExit {
    /// An exit of an older generation, or while shutting down.
    Ignore,
    RestartAfter(Duration),
    Failed,
}

pub struct DeviceProcesses {
    sandbox: Sandbox,
    resources: Resources,
    control: Sender<ControlMessage>,
    pub rtas: RtasService,
    hotplug: Mutex<Option<Client>>,
    eventlog: Mutex<Option<Client>>,
    records: Mutex<HashMap<ProcessKind, Record>>,
    next_generation: Mutex<u64>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn duplicate(fd: BorrowedFd<'_>) -> Result<OwnedFd, DeviceError> {
    fd.try_clone_to_owned().map_err(DeviceError::Dup)
}

/// The exit, in words: "exited with status 1", "killed by SIGSYS".
pub fn describe_exit(status: std::process::ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("killed by {}", jailer::signal_name(signal)),
        _ => "ended".to_string(),
    }
}

impl DeviceProcesses {
    /// Starts every device process, wires them together, and sets each up.
    pub fn start(
        ram: &GuestRam,
        resources_hotplug_interrupt: OwnedFd,
        threads_per_core: u32,
        drcs: Vec<DrcRange>,
        sandbox: Sandbox,
        control: Sender<ControlMessage>,
    ) -> Result<DeviceProcesses, DeviceError> {
        let memory = ram
            .regions()
            .into_iter()
            .map(|(region, fd)| Ok((region, duplicate(fd)?)))
            .collect::<Result<Vec<_>, DeviceError>>()?;
        let devices = DeviceProcesses {
            sandbox,
            resources: Resources {
                memory,
                guest_ram_bytes: ram.size(),
                threads_per_core,
                drcs,
                hotplug_interrupt: resources_hotplug_interrupt,
            },
            control,
            rtas: RtasService::unavailable(),
            hotplug: Mutex::new(None),
            eventlog: Mutex::new(None),
            records: Mutex::new(HashMap::new()),
            next_generation: Mutex::new(0),
        };
        devices.wire(&ProcessKind::ALL)?;
        Ok(devices)
    }

    /// Starts the processes of `kinds` (all, or one being restarted) with
    /// fresh links: to the core, to each other, and — through ReplaceLink —
    /// to the peers that keep running.
    fn wire(&self, kinds: &[ProcessKind]) -> Result<(), DeviceError> {
        // Every link touching a process being started gets a new pair.
        let mut ends: HashMap<Link, (Option<Channel>, Option<Channel>)> = HashMap::new();
        for kind in kinds {
            for &link in kind.links() {
                if let std::collections::hash_map::Entry::Vacant(slot) = ends.entry(link) {
                    let (a, b) =
                        Channel::pair().map_err(|error| DeviceError::Channel(link, error))?;
                    slot.insert((Some(a), Some(b)));
                }
            }
        }
        let mut started = Vec::new();
        for &kind in kinds {
            let mut fds: Vec<RawFd> = Vec::new();
            let mut handed = Vec::new();
            for &link in kind.links() {
                let (first, second) = ends.get_mut(&link).expect("a pair per link");
                let end = if link_owner(link) == Some(kind) {
                    first.take()
                } else {
                    second.take()
                };
                let end = end.expect("each end is handed out once");
                fds.push(end.as_fd().as_raw_fd());
                handed.push(end);
            }
            if kind == ProcessKind::EventLog {
                fds.push(self.resources.hotplug_interrupt.as_raw_fd());
            }
            let generation = {
                let mut next = lock(&self.next_generation);
                *next += 1;
                *next
            };
            let child = self.spawn(kind, generation, &fds)?;
            drop(handed);
            started.push((kind, child, generation));
        }

        // The core's ends, and the ends for peers that keep running.
        let mut ours: Vec<(Link, ProcessKind, Channel)> = Vec::new();
        let mut for_peers: Vec<(Link, ProcessKind, Channel)> = Vec::new();
        for (link, (first, second)) in ends {
            for end in [first, second].into_iter().flatten() {
                if core_link(link) {
                    let kind = ProcessKind::ALL
                        .into_iter()
                        .find(|k| k.links().contains(&link))
                        .expect("a process on every core link");
                    ours.push((link, kind, end));
                } else {
                    let starting = kinds.iter().find(|k| k.links().contains(&link)).copied();
                    let peer = starting.and_then(|k| peer_of(link, k));
                    if let Some(peer) = peer.filter(|p| !kinds.contains(p)) {
                        for_peers.push((link, peer, end));
                    }
                }
            }
        }
        // Peers first: the new process waits for their hellos before it
        // answers anything of the core's.
        for (link, peer, channel) in for_peers {
            if let Err(error) = self.replace_link(peer, link, channel) {
                log::error!(
                    "{}: cannot hand over the new {link:?}: {error}",
                    peer.name()
                );
            }
        }
        for (link, kind, channel) in &ours {
            channel
                .send_hello(*link)
                .map_err(|source| DeviceError::Setup {
                    kind: kind.name(),
                    source,
                })?;
        }
        for (link, kind, channel) in &ours {
            channel
                .expect_hello(*link, SETUP_TIMEOUT)
                .map_err(|source| DeviceError::Setup {
                    kind: kind.name(),
                    source,
                })?;
        }
        let mut notify = None;
        for (link, _, channel) in ours {
            match link {
                Link::CoreRtas => self.setup_rtas(Client::new(channel))?,
                Link::CoreHotplug => self.setup_hotplug(Client::new(channel))?,
                Link::CoreEventLog => *lock(&self.eventlog) = Some(Client::new(channel)),
                Link::HotplugNotify => notify = Some(channel),
                _ => {}
            }
        }
        if let Some(notify) = notify {
            spawn_notification_reader(notify, self.control.clone());
        }
        for (kind, child, generation) in started {
            self.watch(kind, child, generation);
        }
        Ok(())
    }

    fn spawn(
        &self,
        kind: ProcessKind,
        generation: u64,
        fds: &[RawFd],
    ) -> Result<Child, DeviceError> {
        let program = sibling_binary(kind.binary());
        let args = ["--seccomp".to_string(), self.sandbox.seccomp.clone()];
        let mut command;
        let mut jail_dir = None;
        if self.sandbox.jail {
            let id = format!("{}-{}", std::process::id(), generation);
            let address_space = match kind {
                // Guest RAM is mapped besides the process's own memory.
                ProcessKind::RtasServer => self.resources.guest_ram_bytes + (1 << 30),
                _ => 1 << 30,
            };
            let config = jailer::JailConfig {
                id: id.clone(),
                exec_file: program.clone(),
                uid: jailer::DEFAULT_ID,
                gid: jailer::DEFAULT_ID,
                chroot_base: self.sandbox.jail_dir.clone(),
                limits: vec![jailer::Limit::AddressSpace(address_space)],
                cgroup: vec![],
                keep_fds: fds.len() as u32,
                args: args.iter().map(Into::into).collect(),
            };
            jail_dir = Some(self.sandbox.jail_dir.join(kind.binary()).join(&id));
            command = Command::new(sibling_binary("jailer"));
            command.args(config.to_args());
        } else {
            command = Command::new(&program);
            command.args(args);
        }
        command.stdin(Stdio::null());
        ipc_proto::pass_fds(&mut command, fds);
        let child = command.spawn().map_err(|source| DeviceError::Exec {
            path: program.clone(),
            source,
        })?;
        let child_pid = child.id();
        let pid = if self.sandbox.jail {
            jailed_child(child_pid)
        } else {
            child_pid
        };
        log::info!(
            "{} running as pid {pid} (generation {generation})",
            kind.name()
        );
        let mut records = lock(&self.records);
        let record = records.entry(kind).or_insert(Record {
            child_pid,
            pid,
            generation,
            state: State::Running,
            restarts: 0,
            recent_exits: VecDeque::new(),
            last_exit: None,
            jail_dir: None,
        });
        record.child_pid = child_pid;
        record.pid = pid;
        record.generation = generation;
        record.state = State::Running;
        if let Some(old) = std::mem::replace(&mut record.jail_dir, jail_dir) {
            let _ = std::fs::remove_dir_all(old);
        }
        Ok(child)
    }

    /// A thread that waits for the process and tells the control loop.
    fn watch(&self, kind: ProcessKind, mut child: Child, generation: u64) {
        let control = self.control.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("watch-{}", kind.name()))
            .spawn(move || {
                let reason = match child.wait() {
                    Ok(status) => describe_exit(status),
                    Err(error) => format!("cannot be waited for: {error}"),
                };
                let _ = control.send(ControlMessage::DeviceExited {
                    kind,
                    generation,
                    reason,
                });
            });
        if let Err(error) = spawned {
            log::error!("cannot watch {}: {error}", kind.name());
        }
    }

    fn setup_rtas(&self, mut client: Client) -> Result<(), DeviceError> {
        let (regions, fds): (Vec<MemoryRegion>, Vec<BorrowedFd<'_>>) = self
            .resources
            .memory
            .iter()
            .map(|(region, fd)| (*region, fd.as_fd()))
            .unzip();
        let threads_per_core = self.resources.threads_per_core;
        for (request, fds) in [
            (CoreToRtas::SetMemoryTable { regions }, fds),
            (CoreToRtas::SetTopology { threads_per_core }, vec![]),
        ] {
            let answer: RtasToCore =
                client
                    .request(request, &fds, SETUP_TIMEOUT)
                    .map_err(|source| DeviceError::Setup {
                        kind: ProcessKind::RtasServer.name(),
                        source,
                    })?;
            if answer != RtasToCore::MemoryTableSet {
                return Err(DeviceError::Refused {
                    kind: ProcessKind::RtasServer.name(),
                    reason: format!("{answer:?}"),
                });
            }
        }
        let pid = lock(&self.records)
            .get(&ProcessKind::RtasServer)
            .map(|r| r.child_pid)
            .unwrap_or(0);
        self.rtas.connect(client, pid);
        Ok(())
    }

    fn setup_hotplug(&self, mut client: Client) -> Result<(), DeviceError> {
        let request = CoreToHotplug::DefineDrcs {
            ranges: self.resources.drcs.clone(),
        };
        let answer: HotplugToCore =
            client
                .request(request, &[], SETUP_TIMEOUT)
                .map_err(|source| DeviceError::Setup {
                    kind: ProcessKind::HotplugController.name(),
                    source,
                })?;
        if let HotplugToCore::Refused { reason } = answer {
            return Err(DeviceError::Refused {
                kind: ProcessKind::HotplugController.name(),
                reason,
            });
        }
        *lock(&self.hotplug) = Some(client);
        Ok(())
    }

    /// Hands `channel`, the new end of `link`, to the running process `peer`.
    fn replace_link(&self, peer: ProcessKind, link: Link, channel: Channel) -> Result<(), String> {
        let fds = [channel.as_fd()];
        let failed = |error: ChannelError| error.to_string();
        match peer {
            ProcessKind::RtasServer => self.rtas.replace_link(link, &fds),
            ProcessKind::HotplugController => {
                let mut guard = lock(&self.hotplug);
                let client = guard.as_mut().ok_or("not running")?;
                match client.request::<_, HotplugToCore>(
                    CoreToHotplug::ReplaceLink(link),
                    &fds,
                    SETUP_TIMEOUT,
                ) {
                    Ok(HotplugToCore::Done { .. }) => Ok(()),
                    Ok(other) => Err(format!("{other:?}")),
                    Err(error) => Err(failed(error)),
                }
            }
            ProcessKind::EventLog => {
                let mut guard = lock(&self.eventlog);
                let client = guard.as_mut().ok_or("not running")?;
                match client.request::<_, EventLogToCore>(
                    CoreToEventLog::ReplaceLink(link),
                    &fds,
                    SETUP_TIMEOUT,
                ) {
                    Ok(EventLogToCore::Done) => Ok(()),
                    Ok(other) => Err(format!("{other:?}")),
                    Err(error) => Err(failed(error)),
                }
            }
        }
    }

    /// Kills a process the core no longer trusts; its watcher reports it.
    pub fn cut_off(&self, kind: ProcessKind, why: &str) {
        log::error!("cutting off {}: {why}", kind.name());
        match kind {
            ProcessKind::RtasServer => self.rtas.disconnect(),
            ProcessKind::HotplugController => *lock(&self.hotplug) = None,
            ProcessKind::EventLog => *lock(&self.eventlog) = None,
        }
        if let Some(record) = lock(&self.records).get(&kind) {
            record.kill();
        }
    }

    /// A request to the hotplug controller.
    pub fn hotplug(&self, request: CoreToHotplug) -> Result<HotplugToCore, String> {
        let result = {
            let mut guard = lock(&self.hotplug);
            let Some(client) = guard.as_mut() else {
                return Err(self.unavailable(ProcessKind::HotplugController));
            };
            client.request(request, &[], REQUEST_TIMEOUT)
        };
        result.map_err(|error| {
            self.cut_off(ProcessKind::HotplugController, &error.to_string());
            format!("the hotplug controller failed: {error}")
        })
    }

    /// A request to the event log.
    pub fn eventlog(&self, request: CoreToEventLog) -> Result<EventLogToCore, String> {
        let result = {
            let mut guard = lock(&self.eventlog);
            let Some(client) = guard.as_mut() else {
                return Err(self.unavailable(ProcessKind::EventLog));
            };
            client.request(request, &[], REQUEST_TIMEOUT)
        };
        result.map_err(|error| {
            self.cut_off(ProcessKind::EventLog, &error.to_string());
            format!("the event log failed: {error}")
        })
    }

    fn unavailable(&self, kind: ProcessKind) -> String {
        match self.state(kind) {
            Some(State::Failed) => format!("the {} has failed", kind.name()),
            _ => format!("the {} is restarting; try again", kind.name()),
        }
    }

    pub fn state(&self, kind: ProcessKind) -> Option<State> {
        lock(&self.records).get(&kind).map(|r| r.state)
    }

    /// Records an exit and decides what follows.
    pub fn exited(&self, kind: ProcessKind, generation: u64, reason: &str) -> AfterExit {
        let mut records = lock(&self.records);
        let Some(record) = records.get_mut(&kind) else {
            return AfterExit::Ignore;
        };
        if record.generation != generation || record.state != State::Running {
            return AfterExit::Ignore;
        }
        record.last_exit = Some(reason.to_string());
        let now = Instant::now();
        record.recent_exits.push_back(now);
        while record
            .recent_exits
            .front()
            .is_some_and(|t| now.duration_since(*t) > RESTART_WINDOW)
        {
            record.recent_exits.pop_front();
        }
        drop(records);
        match kind {
            ProcessKind::RtasServer => self.rtas.disconnect(),
            ProcessKind::HotplugController => *lock(&self.hotplug) = None,
            ProcessKind::EventLog => *lock(&self.eventlog) = None,
        }
        let mut records = lock(&self.records);
        let Some(record) = records.get_mut(&kind) else {
            return AfterExit::Ignore;
        };
        if record.recent_exits.len() > MAX_RESTARTS {
            record.state = State::Failed;
            self.rtas.set_failed(kind == ProcessKind::RtasServer);
            return AfterExit::Failed;
        }
        record.state = State::Restarting;
        let backoff = FIRST_BACKOFF * (1 << (record.recent_exits.len() - 1).min(6));
        AfterExit::RestartAfter(backoff)
    }

    /// A restart that did not come up counts as another exit.
    pub fn restart_failed(&self, kind: ProcessKind) -> AfterExit {
        let generation = {
            let mut records = lock(&self.records);
            let Some(record) = records.get_mut(&kind) else {
                return AfterExit::Ignore;
            };
            record.state = State::Running;
            record.generation
        };
        self.cut_off(kind, "its restart did not come up");
        self.exited(kind, generation, "its restart did not come up")
    }

    /// Starts a fresh `kind` in place of the dead one.
    pub fn restart(&self, kind: ProcessKind) -> Result<(), DeviceError> {
        if self.state(kind) != Some(State::Restarting) {
            return Ok(());
        }
        self.wire(&[kind])?;
        if let Some(record) = lock(&self.records).get_mut(&kind) {
            record.restarts += 1;
        }
        Ok(())
    }

    pub fn pid(&self, kind: ProcessKind) -> u32 {
        lock(&self.records).get(&kind).map(|r| r.pid).unwrap_or(0)
    }

    pub fn restarts(&self, kind: ProcessKind) -> u32 {
        lock(&self.records)
            .get(&kind)
            .map(|r| r.restarts)
            .unwrap_or(0)
    }

    /// x-query-device-processes.
    pub fn info(&self) -> Value {
        let records = lock(&self.records);
        let rows: Vec<Value> = ProcessKind::ALL
            .into_iter()
            .filter_map(|kind| {
                let record = records.get(&kind)?;
                let state = match record.state {
                    State::Running => "running",
                    State::Restarting => "restarting",
                    State::Failed => "failed",
                };
                Some(json!({
                    "kind": kind.name(),
                    "pid": record.pid,
                    "state": state,
                    "restarts": record.restarts,
                    "last-exit": record.last_exit,
                }))
            })
            .collect();
        Value::Array(rows)
    }

    /// x-inject-fault: the process's answer if it lived, or what became of it.
    pub fn inject(&self, kind: ProcessKind, fault: Fault) -> Result<String, String> {
        // A short wait: a process that commits a forbidden call is killed.
        let timeout = Duration::from_secs(2);
        let answer: Result<Option<String>, ChannelError> = match kind {
            ProcessKind::RtasServer => {
                self.rtas.inject(fault, timeout).map(|answer| match answer {
                    RtasToCore::FaultSurvived { outcome } => Some(outcome),
                    _ => None,
                })
            }
            ProcessKind::HotplugController => {
                let mut guard = lock(&self.hotplug);
                let client = guard.as_mut().ok_or("not running")?;
                client
                    .request::<_, HotplugToCore>(CoreToHotplug::InjectFault(fault), &[], timeout)
                    .map(|answer| match answer {
                        HotplugToCore::FaultSurvived { outcome } => Some(outcome),
                        _ => None,
                    })
            }
            ProcessKind::EventLog => {
                let mut guard = lock(&self.eventlog);
                let client = guard.as_mut().ok_or("not running")?;
                client
                    .request::<_, EventLogToCore>(CoreToEventLog::InjectFault(fault), &[], timeout)
                    .map(|answer| match answer {
                        EventLogToCore::FaultSurvived { outcome } => Some(outcome),
                        _ => None,
                    })
            }
        };
        match answer {
            Ok(Some(outcome)) => Ok(outcome),
            // Dead already: its watcher reports how it died.
            Err(ChannelError::HungUp) => Err("it died".into()),
            Ok(None) => {
                self.cut_off(kind, &format!("a wrong answer after {fault:?}"));
                Err("it answered nonsense and was cut off".into())
            }
            Err(error) => {
                self.cut_off(kind, &format!("no answer after {fault:?}: {error}"));
                Err(format!("it stopped answering ({error}) and was cut off"))
            }
        }
    }
}

impl Drop for DeviceProcesses {
    fn drop(&mut self) {
        for record in lock(&self.records).values() {
            record.kill();
            if let Some(dir) = &record.jail_dir {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

/// The jailed program: the jailer's only child, found through /proc.
fn jailed_child(jailer_pid: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if parent == Some(jailer_pid) {
                return pid;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    jailer_pid
}

/// Reads the hotplug controller's notifications and hands them, checked, to
/// the control loop. Ends when that controller goes.
fn spawn_notification_reader(notify: Channel, control: Sender<ControlMessage>) {
    let spawned = std::thread::Builder::new()
        .name("hotplug-notify".into())
        .spawn(move || loop {
            match notify.recv::<HotplugNotification>(None) {
                Ok((message, fds)) => {
                    let valid = fds.is_empty()
                        && match &message.body {
                            HotplugNotification::Released(r) => r.device.len() <= MAX_DEVICE_ID,
                            HotplugNotification::UnplugRefused { device } => {
                                device.len() <= MAX_DEVICE_ID
                            }
                        };
                    if !valid {
                        log::error!("dropping an invalid notification from the hotplug controller");
                        continue;
                    }
                    if control.send(ControlMessage::Hotplug(message.body)).is_err() {
                        return;
                    }
                }
                Err(ChannelError::HungUp) => return,
                Err(error) => {
                    log::error!("bad notification from the hotplug controller: {error}");
                }
            }
        });
    if let Err(error) = spawned {
        log::error!("cannot read hotplug notifications: {error}");
    }
}
