//! The core's side of the spawner process (`jailer::spawner`), which starts
//! the device processes (through the jailer) and signals them, so that the
//! core itself holds no privilege: [`start_spawner`] starts it before the
//! core gives up its capabilities; then device processes are asked of it
//! and held as it answers — through pidfds only, so that a process that is
//! gone can never be confused with a later one that got its pid — and their
//! exits come back from it (it is their parent). With `--device-mode
//! in-process`, a device runs instead as a thread of the core, on the same
//! descriptors and the same code, and is held through its channels: shut
//! down, they end it as a core that hangs up ends a process.

use crate::control::ControlMessage;
use ipc_proto::channel::{decode, Channel, ChannelError, Envelope};
use ipc_proto::protocol::Message;
use ipc_proto::spawner::{DeviceStart, SpawnEvent, SpawnReply, SpawnRequest, Started};
use ipc_proto::ProcessKind;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use thiserror::Error;

/// How long the spawner has to answer: a start waits for the jailer's
/// report (10 s at most), and a little more.
const SPAWNER_TIMEOUT: Duration = Duration::from_secs(15);
/// Exits reported before anyone waited for them, kept at most.
const MAX_UNCLAIMED_EXITS: usize = 64;

/// Where the devices run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceMode {
    /// Each in a process of its own (the default).
    OutOfProcess,
    /// As threads of the core, unjailed, to measure what isolation costs.
    InProcess,
}

impl DeviceMode {
    /// The `--device-mode` value.
    pub const fn name(self) -> &'static str {
        match self {
            DeviceMode::OutOfProcess => "out-of-process",
            DeviceMode::InProcess => "in-process",
        }
    }
}

/// How device processes are started.
#[derive(Clone, Debug)]
pub struct Sandbox {
    /// Through the jailer (the default); off for debugging, and in-process.
    pub jail: bool,
    /// Where the devices run.
    pub device_mode: DeviceMode,
    /// `kill`, `log` or `off`, passed to each process.
    pub seccomp: String,
    /// Where the jails' roots are made.
    pub jail_dir: PathBuf,
    /// The uid the device processes run as.
    pub uid: u32,
    /// The gid the device processes run as.
    pub gid: u32,
    /// The level passed to each process (`--log-level`).
    pub log_level: log::LevelFilter,
    /// Their stderr, when the core logs to a file.
    pub log_file: Option<std::sync::Arc<std::fs::File>>,
}

/// Why a device (or a helper) did not start, or could not be signalled.
#[derive(Debug, Error)]
pub enum SpawnError {
    /// The spawner process cannot be started.
    #[error("cannot start {path}")]
    Exec {
        /// Its binary.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// There is no spawner (it did not start, or this is a test).
    #[error("no spawner process runs")]
    NoSpawner,
    /// The link to the spawner failed (it died, or answered garbage).
    #[error("the spawner's link failed")]
    Link(#[source] ChannelError),
    /// The spawner ended: nothing can start a device process any more.
    #[error("the spawner is gone")]
    SpawnerGone,
    /// A pidfd the core watches cannot be duplicated.
    #[error("cannot duplicate a pidfd")]
    Duplicate(#[source] std::io::Error),
    /// The spawner refused, and why.
    #[error("the spawner refused: {0}")]
    Refused(String),
    /// A thread of the core cannot be started.
    #[error("cannot start a thread of the core")]
    Thread(#[source] std::io::Error),
    /// A device thread cannot be started.
    #[error("cannot start the device thread")]
    DeviceThread(#[source] std::io::Error),
    /// In-process devices were asked of a core built without them.
    #[error("this core was built without in-process devices (cargo feature `in-process`)")]
    NoInProcess,
}

/// `--helper-dir`, once set at start.
static HELPER_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Sets where the jailer, the spawner, the reaper and the device programs
/// are (`--helper-dir`); call it once, before anything starts.
pub fn set_helper_dir(dir: PathBuf) {
    let _ = HELPER_DIR.set(dir);
}

/// Where the helpers are: `--helper-dir`, else the directory the build
/// named (`PAPERVISOR_HELPER_DIR` when the core was built, as
/// `scripts/install` does: a libexec directory), else beside the core's
/// own executable.
pub fn helper_dir() -> PathBuf {
    if let Some(dir) = HELPER_DIR.get() {
        return dir.clone();
    }
    if let Some(dir) = option_env!("PAPERVISOR_HELPER_DIR") {
        return PathBuf::from(dir);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .unwrap_or_default()
}

/// The binary of a helper or a device process, in [`helper_dir`].
pub fn helper_binary(name: &str) -> PathBuf {
    helper_dir().join(name)
}

/// The core's link to its spawner: requests one at a time, and the exits
/// it reports.
struct SpawnerLink {
    requests: Mutex<(Channel, u64)>,
    exits: Mutex<Exits>,
}

/// Reported exits and who waits for them.
#[derive(Default)]
struct Exits {
    waiting: HashMap<Started, Watched>,
    /// Exits reported before their process was watched (the report and the
    /// start's answer travel on different sockets).
    unclaimed: Vec<(Started, String)>,
}

/// Who waits for a process's exit, and a pidfd of it: the core watches
/// that itself once the spawner, which reports exits, is gone.
struct Watched {
    on_exit: Box<dyn FnOnce(String) + Send>,
    pidfd: Option<OwnedFd>,
}

static SPAWNER: OnceLock<SpawnerLink> = OnceLock::new();

/// The spawner ended: nothing can be started or signalled any more.
static SPAWNER_GONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// How often the core looks at the pidfds of its device processes once
/// the spawner is gone (and the pidfds to look at change as they exit).
const WATCH_WITHOUT_SPAWNER_MS: u8 = 100;

/// How an exit is described when the spawner, the parent that would have
/// said how, is gone.
const ENDED_WITHOUT_SPAWNER: &str = "ended (how is not known: the spawner is gone)";

/// Whether the spawner ended (or was killed): no device process can be
/// started any more, and a restart is not worth trying.
pub fn spawner_gone() -> bool {
    SPAWNER_GONE.load(Ordering::SeqCst)
}

/// The reaper's last generation.
static REAPER_GENERATION: AtomicU64 = AtomicU64::new(0);

/// What the spawner is started with (its command line): fixed for the VM.
pub struct SpawnerArgs<'a> {
    /// How device processes are started.
    pub sandbox: &'a Sandbox,
    /// Guest RAM and every DIMM the machine can take, in bytes.
    pub guest_memory: u64,
    /// The user the core runs as.
    pub owner: u32,
}

/// Starts the spawner process — call it before the core gives up its
/// capabilities: it keeps those the jailer needs — and the thread that
/// takes its reports. Its stderr is the log.
pub fn start_spawner(args: &SpawnerArgs<'_>) -> Result<(), SpawnError> {
    let sandbox = args.sandbox;
    let (requests, its_requests) = Channel::pair().map_err(SpawnError::Link)?;
    let (events, its_events) = Channel::pair().map_err(SpawnError::Link)?;
    let program = helper_binary("papervisor-spawner");
    let bin_dir = program.parent().map(Path::to_path_buf).unwrap_or_default();
    let command_line: Vec<std::ffi::OsString> = vec![
        "--bin-dir".into(),
        bin_dir.into(),
        "--jail".into(),
        if sandbox.jail { "on" } else { "off" }.into(),
        "--uid".into(),
        sandbox.uid.to_string().into(),
        "--gid".into(),
        sandbox.gid.to_string().into(),
        "--jail-dir".into(),
        sandbox.jail_dir.clone().into(),
        "--guest-memory".into(),
        args.guest_memory.to_string().into(),
        "--seccomp".into(),
        sandbox.seccomp.clone().into(),
        "--log-level".into(),
        sandbox.log_level.to_string().to_lowercase().into(),
        "--trace".into(),
        if crate::trace::enabled() { "on" } else { "off" }.into(),
        "--owner".into(),
        args.owner.to_string().into(),
    ];
    let fds = [
        its_requests.as_fd().as_raw_fd(),
        its_events.as_fd().as_raw_fd(),
    ];
    let log = sandbox.log_file.as_ref().map(|file| file.as_raw_fd());
    jailer::spawn::spawn_with_descriptors(
        &program,
        &command_line,
        &fds,
        ipc_proto::FIRST_CHANNEL_FD,
        log,
    )
    .map_err(|source| SpawnError::Exec {
        path: program.clone(),
        source,
    })?;
    let link = SpawnerLink {
        requests: Mutex::new((requests, 1)),
        exits: Mutex::new(Exits::default()),
    };
    if SPAWNER.set(link).is_err() {
        return Err(SpawnError::Refused("a spawner runs already".into()));
    }
    std::thread::Builder::new()
        .name("spawner-reports".into())
        .spawn(move || {
            // Started before the core gives up its capabilities, which are
            // per thread: it gives up its own.
            if let Err(error) = jailer::privileges::drop_all() {
                log::error!(
                    "the spawner's reports go unread: {}",
                    common::describe(&error)
                );
                return;
            }
            // Reads messages off a socket and hands them on, as the hotplug
            // notifications' reader does.
            crate::seccomp::confine_or_exit(crate::seccomp::ThreadKind::Notifications);
            read_reports(&events);
        })
        .map_err(SpawnError::Thread)?;
    Ok(())
}

/// Asks the spawner; its answer and the descriptors that came with it.
fn ask(
    request: SpawnRequest,
    fds: &[BorrowedFd<'_>],
) -> Result<(SpawnReply, Vec<OwnedFd>), SpawnError> {
    let link = SPAWNER.get().ok_or(SpawnError::NoSpawner)?;
    let mut guard = common::lock(&link.requests);
    let (channel, next_id) = &mut *guard;
    let id = *next_id;
    *next_id += 1;
    let failed = |error| match error {
        ChannelError::HungUp => SpawnError::SpawnerGone,
        error => SpawnError::Link(error),
    };
    if spawner_gone() {
        return Err(SpawnError::SpawnerGone);
    }
    channel
        .send(&Envelope { id, body: request }, fds)
        .map_err(failed)?;
    let frame = channel.recv_frame(Some(SPAWNER_TIMEOUT)).map_err(failed)?;
    let reply = decode::<SpawnReply>(&frame.bytes).map_err(SpawnError::Link)?;
    if reply.id != id {
        return Err(SpawnError::Link(ChannelError::Invalid(format!(
            "the answer to {} for request {id}",
            reply.id
        ))));
    }
    reply
        .body
        .validate(frame.fds.len())
        .map_err(|why| SpawnError::Link(ChannelError::Invalid(why)))?;
    match reply.body {
        SpawnReply::Refused(why) => Err(SpawnError::Refused(why)),
        body => Ok((body, frame.fds)),
    }
}

/// Reads the spawner's reports of exits until it goes, and tells whoever
/// waits for each.
fn read_reports(events: &Channel) {
    loop {
        let frame = match events.recv_frame(None) {
            Ok(frame) => frame,
            Err(ChannelError::HungUp) => {
                SPAWNER_GONE.store(true, Ordering::SeqCst);
                log::error!(
                    "the spawner ended: device processes can no longer be started or signalled; the core watches their exits itself"
                );
                watch_without_spawner();
                return;
            }
            Err(error) => {
                log::error!("a bad report from the spawner: {error}");
                continue;
            }
        };
        let event = match decode::<SpawnEvent>(&frame.bytes) {
            Ok(envelope) => envelope.body,
            Err(error) => {
                log::error!("a bad report from the spawner: {error}");
                continue;
            }
        };
        if let Err(why) = event.validate(frame.fds.len()) {
            log::error!("a bad report from the spawner: {why}");
            continue;
        }
        let SpawnEvent::Exited { process, how } = event;
        exited(process, how);
    }
}

/// Once the spawner is gone: tells whoever waits for a process that it
/// ended when its pidfd says so, for the rest of the core's life.
fn watch_without_spawner() {
    let Some(link) = SPAWNER.get() else { return };
    loop {
        let ended: Vec<Started> = {
            let exits = common::lock(&link.exits);
            let watched: Vec<(Started, BorrowedFd<'_>)> = exits
                .waiting
                .iter()
                .filter_map(|(process, watched)| Some((*process, watched.pidfd.as_ref()?.as_fd())))
                .collect();
            let mut fds: Vec<PollFd<'_>> = watched
                .iter()
                .map(|(_, pidfd)| PollFd::new(*pidfd, PollFlags::POLLIN))
                .collect();
            // Held briefly: a new watcher waits at most one look.
            match poll(&mut fds, PollTimeout::ZERO) {
                Ok(_) => watched
                    .iter()
                    .zip(&fds)
                    .filter(|(_, fd)| fd.revents().is_some_and(|r| !r.is_empty()))
                    .map(|((process, _), _)| *process)
                    .collect(),
                Err(errno) => {
                    log::error!("cannot watch the device processes: {errno}");
                    return;
                }
            }
        };
        for process in ended {
            exited(process, ENDED_WITHOUT_SPAWNER.to_string());
        }
        let _ = poll(&mut [], PollTimeout::from(WATCH_WITHOUT_SPAWNER_MS));
    }
}

/// `process` ended (`how`): whoever waits for it is told, or the exit is
/// kept for whoever will.
fn exited(process: Started, how: String) {
    let Some(link) = SPAWNER.get() else { return };
    let waiting = {
        let mut exits = common::lock(&link.exits);
        match exits.waiting.remove(&process) {
            Some(watched) => Some(watched.on_exit),
            None => {
                if exits.unclaimed.len() >= MAX_UNCLAIMED_EXITS {
                    exits.unclaimed.remove(0);
                }
                exits.unclaimed.push((process, how.clone()));
                None
            }
        }
    };
    if let Some(on_exit) = waiting {
        on_exit(how);
    }
}

/// Calls `on_exit` once `process` ended (at once if it has); `pidfd`, a
/// pidfd of it, lets the core see the exit once the spawner is gone.
fn on_exit_of(process: Started, pidfd: Option<OwnedFd>, on_exit: Box<dyn FnOnce(String) + Send>) {
    let Some(link) = SPAWNER.get() else { return };
    let ended = {
        let mut exits = common::lock(&link.exits);
        match exits.unclaimed.iter().position(|(p, _)| *p == process) {
            Some(at) => Some(exits.unclaimed.remove(at).1),
            None => {
                exits.waiting.insert(process, Watched { on_exit, pidfd });
                return;
            }
        }
    };
    if let Some(how) = ended {
        on_exit(how);
    }
}

/// A started device: a process (a child of the spawner, which removes
/// its jail once it ended) or a thread of the core.
#[derive(Debug)]
pub struct ProcessHandle {
    /// For reports only; never used to signal (a thread's id in-process).
    pub pid: u32,
    held: Held,
}

/// What a device is held and ended through.
#[derive(Debug)]
enum Held {
    /// A process the spawner started, and a pidfd of it (for the reaper).
    Process { process: Started, pidfd: OwnedFd },
    /// A device thread's channels (copies of its descriptors): shut down,
    /// the thread sees the core hang up and returns.
    Thread(Vec<OwnedFd>),
}

impl ProcessHandle {
    /// A device thread, `tid`, ended by shutting `sockets` down (copies of
    /// its channels).
    pub fn of_thread(tid: u32, sockets: Vec<OwnedFd>) -> ProcessHandle {
        ProcessHandle {
            pid: tid,
            held: Held::Thread(sockets),
        }
    }

    /// SIGKILLs the process (through the spawner: it runs under another
    /// uid, and the core has no capability), or shuts a device thread's
    /// channels down. A process that is gone already is not signalled (the
    /// spawner holds it by pidfd). A device thread ends once it sees the
    /// hang-up: one stuck elsewhere (a fault injected to hang it) cannot be
    /// ended, as nothing in-process can.
    pub fn kill(&self) {
        match &self.held {
            Held::Process { process, .. } => {
                if let Err(error) = ask(SpawnRequest::Kill(*process), &[]) {
                    log::warn!("cannot end pid {}: {}", self.pid, common::describe(&error));
                }
            }
            Held::Thread(sockets) => shut_down(sockets),
        }
    }

    /// Waits up to `timeout` for the process to be gone (its pidfd
    /// readable); whether it is. A device thread counts as gone once told.
    pub fn wait_gone(&self, timeout: std::time::Duration) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let Held::Process { pidfd, .. } = &self.held else {
            return true;
        };
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let wait = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, wait) {
                Ok(0) => return false,
                Ok(_) => return true,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return false,
            }
        }
    }

    /// The pidfd of a process (none for a device thread).
    pub fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        match &self.held {
            Held::Process { pidfd, .. } => Some(pidfd.as_fd()),
            Held::Thread(_) => None,
        }
    }

    /// A handle of nothing, for tests of what uses one.
    #[cfg(test)]
    pub fn of_this_test() -> ProcessHandle {
        ProcessHandle::of_thread(0, Vec::new())
    }
}

/// Shuts sockets down, both ways.
fn shut_down(sockets: &[OwnedFd]) {
    for socket in sockets {
        let _ = nix::sys::socket::shutdown(socket.as_raw_fd(), nix::sys::socket::Shutdown::Both);
    }
}

/// The device to wait for: a process the spawner started (it reports the
/// exit), or a thread of the core that returns how it ended.
pub enum Waiter {
    /// A process of the spawner's, and a pidfd of it.
    Process(Started, OwnedFd),
    /// A device thread.
    Thread {
        /// It returns how it ended.
        thread: std::thread::JoinHandle<String>,
        /// Copies of its channels, shut down once it ended: other copies
        /// (its handle's) keep them open, and the core must see the hang-up
        /// at once, as it does when a process dies.
        sockets: Vec<OwnedFd>,
    },
}

/// A device to start: generation `generation` of `kind` with `fds` as its
/// descriptors (links, then extra descriptors), resuming its state region
/// or not; `program`, when the kind was upgraded to another binary.
pub struct Launch {
    /// How it is started.
    pub sandbox: Sandbox,
    /// Its kind.
    pub kind: ProcessKind,
    /// Which start of the VM's device processes this is.
    pub generation: u64,
    /// Held open by the caller until the start returns.
    pub fds: Vec<RawFd>,
    /// An earlier incarnation formatted the process's state region.
    pub resume: bool,
    /// Another binary than the kind's own (not run in-process).
    pub program: Option<PathBuf>,
}

/// A started device and the waiter on it, or why it did not start.
pub type Spawned = Result<(ProcessHandle, Waiter), SpawnError>;

/// Starts `launches` as processes, through the spawner, in one request
/// (their jails are set up at once): one result each, in order.
pub fn spawn(launches: Vec<Launch>) -> Vec<Spawned> {
    let fds: Vec<BorrowedFd<'_>> = launches
        .iter()
        .flat_map(|launch| &launch.fds)
        // SAFETY: the caller holds `fds` open until the start returns.
        .map(|&fd| unsafe { BorrowedFd::borrow_raw(fd) })
        .collect();
    let request = SpawnRequest::Start(
        launches
            .iter()
            .map(|launch| DeviceStart {
                kind: launch.kind,
                generation: launch.generation,
                resume: launch.resume,
                upgrade: launch
                    .program
                    .as_ref()
                    .map(|program| program.display().to_string()),
            })
            .collect(),
    );
    let (outcomes, pidfds) = match ask(request, &fds) {
        Ok((SpawnReply::Devices(outcomes), pidfds)) if outcomes.len() == launches.len() => {
            (outcomes, pidfds)
        }
        Ok((other, _)) => {
            let error = format!("{other:?} for a start of {} processes", launches.len());
            return launches
                .iter()
                .map(|_| Err(SpawnError::Link(ChannelError::Invalid(error.clone()))))
                .collect();
        }
        Err(error) => {
            // One error for all: each gets its description, the cause kept
            // for the first (host resources are recognised by it).
            let why = common::describe(&error);
            let mut first = Some(error);
            return launches
                .iter()
                .map(|_| {
                    Err(first
                        .take()
                        .unwrap_or_else(|| SpawnError::Refused(why.clone())))
                })
                .collect();
        }
    };
    let mut pidfds = pidfds.into_iter();
    launches
        .iter()
        .zip(outcomes)
        .map(|(launch, outcome)| {
            let pid = outcome.map_err(SpawnError::Refused)?;
            // The reply was validated: a pidfd comes with each that runs.
            let pidfd = pidfds.next().ok_or_else(|| {
                SpawnError::Link(ChannelError::Invalid("a start without its pidfd".into()))
            })?;
            let process = Started::Device {
                kind: launch.kind,
                generation: launch.generation,
            };
            let watched = pidfd.try_clone().map_err(SpawnError::Duplicate)?;
            let handle = ProcessHandle {
                pid,
                held: Held::Process { process, pidfd },
            };
            Ok((handle, Waiter::Process(process, watched)))
        })
        .collect()
}

/// The pid and pidfd of what the spawner started.
fn started((reply, fds): (SpawnReply, Vec<OwnedFd>)) -> Result<(u32, OwnedFd), SpawnError> {
    match (reply, fds.into_iter().next()) {
        (SpawnReply::Started { pid }, Some(pidfd)) => Ok((pid, pidfd)),
        (other, _) => Err(SpawnError::Link(ChannelError::Invalid(format!(
            "{other:?} for a start"
        )))),
    }
}

/// Starts the block device process of a disk, through the spawner (or, in
/// `--device-mode in-process`, as a thread of the core), on its listening
/// vhost-user socket and its image; `frontend` is a copy of the core's end
/// of the socket (shut down, it ends a device thread). `on_exit` is told
/// how it ended.
pub fn start_block(
    block: ipc_proto::spawner::BlockStart,
    mode: DeviceMode,
    listener: OwnedFd,
    image: OwnedFd,
    frontend: OwnedFd,
    on_exit: Box<dyn FnOnce(String) + Send>,
) -> Result<ProcessHandle, SpawnError> {
    if mode == DeviceMode::InProcess {
        return block_thread(block, listener, image, frontend, on_exit);
    }
    let serial = block.serial;
    let (pid, pidfd) = started(ask(
        SpawnRequest::StartBlock(block),
        &[listener.as_fd(), image.as_fd()],
    )?)?;
    let watched = pidfd.try_clone().map_err(SpawnError::Duplicate)?;
    let process = Started::Block { serial };
    on_exit_of(process, Some(watched), on_exit);
    Ok(ProcessHandle {
        pid,
        held: Held::Process { process, pidfd },
    })
}

/// The block device as a thread of the core: the same `serve`, unjailed.
#[cfg(feature = "in-process")]
fn block_thread(
    block: ipc_proto::spawner::BlockStart,
    listener: OwnedFd,
    image: OwnedFd,
    frontend: OwnedFd,
    on_exit: Box<dyn FnOnce(String) + Send>,
) -> Result<ProcessHandle, SpawnError> {
    use device_procs::block::process::{serve, Options};
    let options = Options {
        seccomp: common::seccomp::Mode::Off,
        log_level: None,
        read_only: block.read_only,
        id: block.node,
    };
    let (tid_sender, tid) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(format!("block-{}", block.serial))
        .spawn(move || {
            let _ = tid_sender.send(nix::unistd::gettid().as_raw() as u32);
            let how = match serve(listener, image, &options, || Ok(())) {
                Ok(()) => "exited with status 0".to_string(),
                Err(error) => format!("failed: {}", common::describe(&error)),
            };
            on_exit(how);
        })
        .map_err(SpawnError::DeviceThread)?;
    let tid = tid.recv().unwrap_or(0);
    Ok(ProcessHandle::of_thread(tid, vec![frontend]))
}

#[cfg(not(feature = "in-process"))]
fn block_thread(
    _: ipc_proto::spawner::BlockStart,
    _: OwnedFd,
    _: OwnedFd,
    _: OwnedFd,
    _: Box<dyn FnOnce(String) + Send>,
) -> Result<ProcessHandle, SpawnError> {
    Err(SpawnError::NoInProcess)
}

/// Starts the VM's reaper (`jailer::reaper`), through the spawner, on one
/// end of a new socket; the core keeps the other. Its exit reaches the
/// control loop.
pub fn start_reaper(control: &Sender<ControlMessage>) -> Result<OwnedFd, SpawnError> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    let (ours, its) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|errno| SpawnError::Link(ChannelError::Io(errno.into())))?;
    let generation = REAPER_GENERATION.fetch_add(1, Ordering::Relaxed) + 1;
    let (_, pidfd) = started(ask(
        SpawnRequest::StartReaper { generation },
        &[its.as_fd()],
    )?)?;
    let control = control.clone();
    on_exit_of(
        Started::Reaper { generation },
        Some(pidfd),
        Box::new(move |reason| {
            let _ = control.send(ControlMessage::ReaperExited(reason));
        }),
    );
    Ok(ours)
}

impl Waiter {
    /// Calls `on_exit` with the exit in words ("killed by SIGSYS") once the
    /// device ended: a process's as the spawner reports it, a thread's on a
    /// thread that waits for it.
    pub fn watch(
        self,
        kind: ProcessKind,
        on_exit: impl FnOnce(String) + Send + 'static,
    ) -> std::io::Result<()> {
        match self {
            Waiter::Process(process, pidfd) => {
                on_exit_of(process, Some(pidfd), Box::new(on_exit));
                Ok(())
            }
            Waiter::Thread { thread, sockets } => std::thread::Builder::new()
                .name(format!("watch-{}", kind.name()))
                .spawn(move || {
                    crate::seccomp::confine_or_exit(crate::seccomp::ThreadKind::Watcher);
                    let ended = thread.join().unwrap_or_else(|_| "panicked".to_string());
                    shut_down(&sockets);
                    on_exit(ended);
                })
                .map(drop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(generation: u64) -> Started {
        Started::Device {
            kind: ProcessKind::EventLog,
            generation,
        }
    }

    #[test]
    fn an_exit_reaches_its_watcher_whether_it_comes_before_or_after() {
        let _ = SPAWNER.set(SpawnerLink {
            requests: Mutex::new((Channel::pair().unwrap().0, 1)),
            exits: Mutex::new(Exits::default()),
        });
        let (sender, receiver) = std::sync::mpsc::channel();
        // Watched first, then reported.
        let tell = sender.clone();
        on_exit_of(
            device(101),
            None,
            Box::new(move |how| tell.send((101, how)).unwrap()),
        );
        exited(device(101), "killed by SIGKILL".into());
        // Reported first (the start's answer was slower), then watched.
        exited(device(102), "exited with status 1".into());
        on_exit_of(
            device(102),
            None,
            Box::new(move |how| sender.send((102, how)).unwrap()),
        );
        let got: Vec<(u64, String)> = receiver.try_iter().collect();
        assert_eq!(
            got,
            [
                (101, "killed by SIGKILL".to_string()),
                (102, "exited with status 1".to_string())
            ]
        );
        // Nothing is kept once claimed.
        let exits = common::lock(&SPAWNER.get().unwrap().exits);
        assert!(!exits.waiting.contains_key(&device(101)));
        assert!(exits.unclaimed.iter().all(|(p, _)| *p != device(102)));
    }
}
