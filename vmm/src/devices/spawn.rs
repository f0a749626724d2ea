//! Starting a device process (through the jailer, or directly for
//! debugging) and holding it: through pidfds only, so that a process that is
//! gone can never be confused with a later one that got its pid. With
//! `--device-mode in-process`, a device runs instead as a thread of the
//! core, on the same descriptors and the same code, and is held through its
//! channels: shut down, they end it as a core that hangs up ends a process.

use crate::control::ControlMessage;
use ipc_proto::channel::{Channel, ChannelError};
use ipc_proto::ProcessKind;
use rustix::process::{pidfd_open, pidfd_send_signal, waitid, Pid, PidfdFlags, Signal};
use rustix::process::{WaitId, WaitIdOptions};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Sender};
use std::sync::OnceLock;
use std::time::Duration;
use thiserror::Error;

/// How long the jailer has to report the program it started.
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// The ids the device processes run as.
    pub uid: u32,
    /// The gid the device processes run as.
    pub gid: u32,
    /// The level passed to each process (`--log-level`).
    pub log_level: log::LevelFilter,
    /// Their stderr, when the core logs to a file.
    pub log_file: Option<std::sync::Arc<std::fs::File>>,
}

impl Sandbox {
    /// `resume`: the process resumes from the state region an earlier
    /// incarnation formatted.
    fn program_args(&self, resume: bool) -> [String; 6] {
        [
            "--seccomp".to_string(),
            self.seccomp.clone(),
            "--log-level".to_string(),
            self.log_level.to_string().to_lowercase(),
            "--state".to_string(),
            if resume { "resume" } else { "fresh" }.to_string(),
        ]
    }
}

/// Why a device (or a helper) did not start.
#[derive(Debug, Error)]
pub enum SpawnError {
    /// The program cannot be started.
    #[error("cannot start {path}")]
    Exec {
        /// The program.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The jailer's report socket cannot be made.
    #[error("cannot create the jailer's report socket")]
    ReportSocket(#[source] ChannelError),
    /// The jailer did not report.
    #[error("the jailer did not report its program")]
    NoReport(#[source] ChannelError),
    /// The jailer reported something else than a pid.
    #[error("the jailer's report is malformed ({0} bytes, {1} descriptors)")]
    BadReport(usize, usize),
    /// The jailer failed, as it says.
    #[error("the jailer did not end cleanly after starting its program: {0}")]
    Jailer(String),
    /// The core cannot become the device processes' subreaper.
    #[error("cannot become the child subreaper of the device processes")]
    Subreaper(#[source] std::io::Error),
    /// A thread of the core cannot be started (or the spawner is gone).
    #[error("cannot start the spawner thread")]
    Thread(#[source] std::io::Error),
    /// The spawner thread cannot drop its privileges.
    #[error("cannot confine the spawner thread: {0}")]
    Confine(String),
    /// A device thread cannot be started.
    #[error("cannot start the device thread")]
    DeviceThread(#[source] std::io::Error),
    /// In-process devices were asked of a core built without them.
    #[error("this core was built without in-process devices (cargo feature `in-process`)")]
    NoInProcess,
    /// No pidfd of a started process.
    #[error("cannot open a pidfd of pid {pid}")]
    Pidfd {
        /// The process.
        pid: u32,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The binary of a device process: beside the core's own executable.
pub fn sibling_binary(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .unwrap_or_default()
        .join(name)
}

/// Makes this process the parent of the programs its jailers start: a
/// jailer exits once its program runs, and the program is reparented here.
pub fn become_subreaper() -> Result<(), SpawnError> {
    nix::sys::prctl::set_child_subreaper(true).map_err(|errno| SpawnError::Subreaper(errno.into()))
}

/// A started device: a process (a child of the core) or a thread of the core.
#[derive(Debug)]
pub struct ProcessHandle {
    /// For reports only; never used to signal (a thread's id in-process).
    pub pid: u32,
    held: Held,
    /// The jail's directory, removed when the process is gone.
    pub jail_dir: Option<PathBuf>,
}

/// What a device is held and ended through.
#[derive(Debug)]
enum Held {
    /// A process's pidfd.
    Process(OwnedFd),
    /// A device thread's channels (copies of its descriptors): shut down,
    /// the thread sees the core hang up and returns.
    Thread(Vec<OwnedFd>),
}

/// What [`kill`] ends, by descriptor number: the requester holds them open
/// until it has the answer.
enum KillTarget {
    Pidfd(RawFd),
    Sockets(Vec<RawFd>),
}

impl ProcessHandle {
    /// A device thread, `tid`, ended by shutting `sockets` down (copies of
    /// its channels).
    pub fn of_thread(tid: u32, sockets: Vec<OwnedFd>) -> ProcessHandle {
        ProcessHandle {
            pid: tid,
            held: Held::Thread(sockets),
            jail_dir: None,
        }
    }

    /// SIGKILLs the process, or shuts a device thread's channels down (on
    /// the spawner thread when there is one: it runs under another uid, and
    /// no other thread's filter allows either). A process that is gone
    /// already is not signalled (the pidfd refers to it alone). A device
    /// thread ends once it sees the hang-up: one stuck elsewhere (a fault
    /// injected to hang it) cannot be ended, as nothing in-process can.
    pub fn kill(&self) {
        let target = match &self.held {
            Held::Process(pidfd) => KillTarget::Pidfd(pidfd.as_raw_fd()),
            Held::Thread(sockets) => {
                KillTarget::Sockets(sockets.iter().map(AsRawFd::as_raw_fd).collect())
            }
        };
        let sent = match SPAWNER.get() {
            None => kill(&target),
            Some(spawner) => {
                let (reply, answer) = channel();
                match spawner.send(Request::Kill { target, reply }) {
                    Ok(()) => answer.recv().unwrap_or(Err(rustix::io::Errno::PIPE)),
                    Err(_) => Err(rustix::io::Errno::PIPE),
                }
            }
        };
        match sent {
            Ok(()) | Err(rustix::io::Errno::SRCH) => {}
            Err(errno) => log::warn!("cannot end pid {}: {errno}", self.pid),
        }
    }

    /// The pidfd of a process (none for a device thread).
    pub fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        match &self.held {
            Held::Process(pidfd) => Some(pidfd.as_fd()),
            Held::Thread(_) => None,
        }
    }

    /// Removes the jail's directory (nothing in-process or unjailed): once
    /// the process is gone, or is being killed.
    pub fn remove_jail_dir(&self) {
        if let Some(dir) = &self.jail_dir {
            remove_jail_dir(dir);
        }
    }

    /// Kills the process (see [`ProcessHandle::kill`]) and removes its jail.
    pub fn end(&self) {
        self.kill();
        self.remove_jail_dir();
    }

    /// A handle of nothing, for tests of what uses one.
    #[cfg(test)]
    pub fn of_this_test() -> ProcessHandle {
        ProcessHandle {
            pid: 0,
            // A pidfd of a child that has exited: signalling it does nothing.
            held: Held::Process(exited_child_pidfd()),
            jail_dir: None,
        }
    }
}

/// Removes a jail's directory. Its root is a mount in the jail's own mount
/// namespace only: here it is an empty directory, removable while its
/// program still runs.
fn remove_jail_dir(dir: &Path) {
    if let Err(error) = std::fs::remove_dir_all(dir) {
        if error.kind() != std::io::ErrorKind::NotFound {
            log::warn!("cannot remove {}: {error}", dir.display());
        }
    }
}

/// Ends what `target` names.
fn kill(target: &KillTarget) -> rustix::io::Result<()> {
    match target {
        KillTarget::Pidfd(pidfd) => {
            // SAFETY: the requester keeps the pidfd open until it has the answer.
            let pidfd = unsafe { BorrowedFd::borrow_raw(*pidfd) };
            pidfd_send_signal(pidfd, Signal::KILL)
        }
        KillTarget::Sockets(sockets) => {
            for &socket in sockets {
                // A socket whose peer is gone already: nothing to end.
                let _ = nix::sys::socket::shutdown(socket, nix::sys::socket::Shutdown::Both);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
fn exited_child_pidfd() -> OwnedFd {
    use std::process::Command;
    let mut child = Command::new("true").spawn().expect("run true");
    let pidfd = pidfd_of(child.id()).expect("pidfd of a child");
    child.wait().expect("wait for true");
    pidfd
}

/// The device to wait for: a child of the core, or a thread of it that
/// returns how it ended.
pub enum Waiter {
    /// A process's pidfd.
    Process(OwnedFd),
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

fn pidfd_of(pid: u32) -> Result<OwnedFd, SpawnError> {
    let failed = |source| SpawnError::Pidfd { pid, source };
    let raw =
        Pid::from_raw(pid as i32).ok_or_else(|| failed(std::io::ErrorKind::InvalidInput.into()))?;
    pidfd_open(raw, PidfdFlags::empty()).map_err(|errno| failed(errno.into()))
}

/// A device to start: a process of `kind` with `fds` as its descriptors
/// 3.., jailed as `id` unless the sandbox is off, with an address-space
/// limit of `address_space` bytes; or in-process a thread on copies of `fds`.
pub struct Launch {
    /// How it is started.
    pub sandbox: Sandbox,
    /// Its kind.
    pub kind: ProcessKind,
    /// Its jail's name.
    pub id: String,
    /// Which start of the kind this is.
    pub generation: u64,
    /// Held open by the caller until [`spawn`] returns.
    pub fds: Vec<RawFd>,
    /// Its address-space limit, in bytes.
    pub address_space: u64,
    /// An earlier incarnation formatted the process's state region.
    pub resume: bool,
    /// The binary (not run in-process).
    pub program: PathBuf,
}

/// What the spawner thread is asked to do.
enum Request {
    /// Work that needs the spawner: starting devices (jails need its
    /// privileges; a thread it starts inherits no seccomp filter).
    Run(Box<dyn FnOnce() + Send>),
    Helper {
        program: PathBuf,
        args: Vec<String>,
        fds: Vec<RawFd>,
        sandbox: Box<Sandbox>,
        reply: Sender<Result<OwnedFd, SpawnError>>,
    },
    Kill {
        target: KillTarget,
        reply: Sender<rustix::io::Result<()>>,
    },
}

/// A started device and the waiter on it, or why it did not start.
pub type Spawned = Result<(ProcessHandle, Waiter), SpawnError>;

/// The spawner thread, once started: the only thread of the core with
/// privileges (see `confine::SPAWNER_CAPABILITIES`).
static SPAWNER: OnceLock<Sender<Request>> = OnceLock::new();

/// Starts the spawner thread, which keeps only what starting jails and
/// killing their programs needs. Call it before anything else makes threads,
/// and drop every privilege of the calling thread afterwards.
pub fn start_spawner() -> Result<(), SpawnError> {
    let (requests, inbox) = channel::<Request>();
    let (ready, confined) = channel();
    std::thread::Builder::new()
        .name("spawner".into())
        .spawn(move || {
            let result = crate::confine::keep_only(&crate::confine::SPAWNER_CAPABILITIES);
            let ok = result.is_ok();
            let _ = ready.send(result);
            if !ok {
                return;
            }
            while let Ok(request) = inbox.recv() {
                serve(request);
            }
        })
        .map_err(SpawnError::Thread)?;
    confined
        .recv()
        .map_err(|_| SpawnError::Thread(std::io::ErrorKind::BrokenPipe.into()))?
        .map_err(|error| SpawnError::Confine(error.to_string()))?;
    let _ = SPAWNER.set(requests);
    Ok(())
}

fn serve(request: Request) {
    match request {
        Request::Run(work) => work(),
        Request::Kill { target, reply } => {
            let _ = reply.send(kill(&target));
        }
        Request::Helper {
            program,
            args,
            fds,
            sandbox,
            reply,
        } => {
            let _ = reply.send(start_helper_here(&program, &args, &fds, &sandbox));
        }
    }
}

fn start_helper_here(
    program: &Path,
    args: &[String],
    fds: &[RawFd],
    sandbox: &Sandbox,
) -> Result<OwnedFd, SpawnError> {
    // Not yet waited for, so the pid is still this child's.
    start_program(program, args, sandbox, fds).and_then(pidfd_of)
}

/// Starts a helper of the VM (`program` with `args`, `fds` as its
/// descriptors 3..), unjailed, with the spawner's privileges for it to
/// drop (the reaper takes the VM's uid); a pidfd of it.
pub fn start_helper(
    program: PathBuf,
    args: Vec<String>,
    fds: Vec<RawFd>,
    sandbox: &Sandbox,
) -> Result<OwnedFd, SpawnError> {
    let Some(spawner) = SPAWNER.get() else {
        return start_helper_here(&program, &args, &fds, sandbox);
    };
    let (reply, answer) = channel();
    let request = Request::Helper {
        program,
        args,
        fds,
        sandbox: Box::new(sandbox.clone()),
        reply,
    };
    if spawner.send(request).is_err() {
        return Err(SpawnError::Thread(std::io::ErrorKind::BrokenPipe.into()));
    }
    answer
        .recv()
        .unwrap_or_else(|_| Err(SpawnError::Thread(std::io::ErrorKind::BrokenPipe.into())))
}

/// Runs `work` on the spawner thread when there is one, else here; `None`
/// if the spawner is gone.
pub fn on_spawner<R: Send + 'static>(work: impl FnOnce() -> R + Send + 'static) -> Option<R> {
    let Some(spawner) = SPAWNER.get() else {
        return Some(work());
    };
    let (reply, answer) = channel();
    let run = Box::new(move || {
        let _ = reply.send(work());
    });
    spawner.send(Request::Run(run)).ok()?;
    answer.recv().ok()
}

/// Starts the VM's reaper (`jailer::reaper`) on one end of a new socket;
/// the core keeps the other. As root with jails it takes the VM's device
/// uid, which may signal the device processes and nothing else.
pub fn start_reaper(
    sandbox: &Sandbox,
    control: &Sender<ControlMessage>,
    as_root: bool,
) -> Result<OwnedFd, SpawnError> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    let (ours, its) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|errno| SpawnError::ReportSocket(errno.into()))?;
    let mut args = vec!["--seccomp".to_string(), sandbox.seccomp.clone()];
    if sandbox.jail && as_root {
        args.extend([
            "--uid".to_string(),
            sandbox.uid.to_string(),
            "--gid".to_string(),
            sandbox.gid.to_string(),
        ]);
    }
    let program = sibling_binary("papervisor-reaper");
    let reaper = start_helper(program, args, vec![its.as_raw_fd()], sandbox)?;
    let control = control.clone();
    Waiter::Process(reaper)
        .watch_named("reaper", move |reason| {
            let _ = control.send(ControlMessage::ReaperExited(reason));
        })
        .map_err(SpawnError::Thread)?;
    Ok(ours)
}

/// Starts `launches` as processes together (their jails are set up at the
/// same time), on the spawner thread when there is one: one result each,
/// in order.
pub fn spawn(launches: Vec<Launch>) -> Vec<Spawned> {
    let count = launches.len();
    on_spawner(move || spawn_here(&launches)).unwrap_or_else(|| spawner_gone(count))
}

/// The results of `count` launches the spawner did not take.
pub fn spawner_gone(count: usize) -> Vec<Spawned> {
    (0..count)
        .map(|_| Err(SpawnError::Thread(std::io::ErrorKind::BrokenPipe.into())))
        .collect()
}

/// A device on its way up: running, or a jailer that has yet to report the
/// program it started.
enum Starting {
    Ready(Spawned),
    Jailing {
        report: Channel,
        jailer: OwnedFd,
        jail_dir: PathBuf,
    },
}

fn spawn_here(launches: &[Launch]) -> Vec<Spawned> {
    let starting: Vec<Starting> = launches.iter().map(start).collect();
    starting.into_iter().map(finish).collect()
}

/// Starts the device, or its jailer, without waiting for it.
fn start(launch: &Launch) -> Starting {
    let Launch {
        sandbox,
        id,
        fds,
        address_space,
        resume,
        program,
        ..
    } = launch;
    let args = sandbox.program_args(*resume);
    if !sandbox.jail {
        let spawned = start_program(program, &args, sandbox, fds)
            // Not yet waited for, so the pid is still this child's.
            .and_then(|pid| watched(pid, pidfd_of(pid)?, None));
        return Starting::Ready(spawned);
    }
    let (ours, jailers) = match Channel::pair() {
        Ok(pair) => pair,
        Err(error) => return Starting::Ready(Err(SpawnError::ReportSocket(error))),
    };
    let config = jailer::JailConfig {
        id: id.to_string(),
        exec_file: program.clone(),
        uid: sandbox.uid,
        gid: sandbox.gid,
        chroot_base: sandbox.jail_dir.clone(),
        limits: vec![jailer::Limit::AddressSpace(*address_space)],
        cgroup: vec![],
        keep_fds: fds.len() as u32,
        report_fd: Some(ipc_proto::FIRST_CHANNEL_FD + fds.len() as i32),
        args: args.iter().map(Into::into).collect(),
    };
    let jail_dir = config.jail_dir();
    let mut passed = fds.to_vec();
    passed.push(jailers.as_fd().as_raw_fd());
    let jailer = start_program(
        &sibling_binary("jailer"),
        &config.to_args(),
        sandbox,
        &passed,
    )
    .and_then(pidfd_of);
    match jailer {
        Ok(jailer) => Starting::Jailing {
            report: ours,
            jailer,
            jail_dir,
        },
        Err(error) => Starting::Ready(Err(error)),
    }
}

/// Waits for a jailer's report of the program it started, and for the
/// jailer to end: then the program is the core's child.
fn finish(starting: Starting) -> Spawned {
    let (report, jailer, jail_dir) = match starting {
        Starting::Ready(spawned) => return spawned,
        Starting::Jailing {
            report,
            jailer,
            jail_dir,
        } => (report, jailer, jail_dir),
    };
    let reported = report
        .recv_frame(Some(REPORT_TIMEOUT))
        .map_err(SpawnError::NoReport)
        .and_then(|frame| {
            let pid: [u8; 4] = frame
                .bytes
                .as_slice()
                .try_into()
                .map_err(|_| SpawnError::BadReport(frame.bytes.len(), frame.fds.len()))?;
            let count = frame.fds.len();
            let process = frame
                .fds
                .into_iter()
                .next()
                .filter(|_| count == 1)
                .ok_or(SpawnError::BadReport(4, count))?;
            Ok((u32::from_le_bytes(pid), process))
        });
    let (pid, process) = match reported {
        Ok(report) => report,
        Err(error) => {
            let _ = pidfd_send_signal(&jailer, Signal::KILL);
            let _ = waitid(WaitId::PidFd(jailer.as_fd()), WaitIdOptions::EXITED);
            remove_jail_dir(&jail_dir);
            return Err(error);
        }
    };
    match waitid(WaitId::PidFd(jailer.as_fd()), WaitIdOptions::EXITED) {
        Ok(Some(status)) if status.exit_status() == Some(0) => {}
        other => {
            let _ = pidfd_send_signal(&process, Signal::KILL);
            remove_jail_dir(&jail_dir);
            return Err(SpawnError::Jailer(format!("{other:?}")));
        }
    }
    watched(pid, process, Some(jail_dir))
}

/// Starts `path` with `args` and `fds` as its descriptors 3.., its stderr
/// the log (`jailer::spawn::spawn_with_descriptors`); its pid.
fn start_program(
    path: &Path,
    args: &[impl AsRef<std::ffi::OsStr>],
    sandbox: &Sandbox,
    fds: &[RawFd],
) -> Result<u32, SpawnError> {
    let log = sandbox.log_file.as_ref().map(|file| file.as_raw_fd());
    jailer::spawn::spawn_with_descriptors(path, args, fds, ipc_proto::FIRST_CHANNEL_FD, log)
        .map_err(|source| SpawnError::Exec {
            path: path.to_path_buf(),
            source,
        })
}

/// The handle of a started process and the waiter on the same pidfd.
fn watched(
    pid: u32,
    process: OwnedFd,
    jail_dir: Option<PathBuf>,
) -> Result<(ProcessHandle, Waiter), SpawnError> {
    let waiter = process
        .try_clone()
        .map_err(|source| SpawnError::Pidfd { pid, source })?;
    let handle = ProcessHandle {
        pid,
        held: Held::Process(process),
        jail_dir,
    };
    Ok((handle, Waiter::Process(waiter)))
}

impl Waiter {
    /// Waits, on a thread of its own, for the device to end, then
    /// calls `on_exit` with the exit in words ("killed by SIGSYS").
    pub fn watch(
        self,
        kind: ProcessKind,
        on_exit: impl FnOnce(String) + Send + 'static,
    ) -> std::io::Result<()> {
        self.watch_named(kind.name(), on_exit)
    }

    /// [`Waiter::watch`] for what is not a device (the reaper).
    pub fn watch_named(
        self,
        name: &str,
        on_exit: impl FnOnce(String) + Send + 'static,
    ) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name(format!("watch-{name}"))
            .spawn(move || {
                crate::seccomp::confine_or_exit(crate::seccomp::ThreadKind::Watcher);
                on_exit(self.wait());
            })
            .map(drop)
    }

    fn wait(self) -> String {
        let pidfd = match self {
            Waiter::Process(pidfd) => pidfd,
            Waiter::Thread { thread, sockets } => {
                let ended = thread.join().unwrap_or_else(|_| "panicked".to_string());
                for socket in sockets {
                    let _ = nix::sys::socket::shutdown(
                        socket.as_raw_fd(),
                        nix::sys::socket::Shutdown::Both,
                    );
                }
                return ended;
            }
        };
        loop {
            match waitid(WaitId::PidFd(pidfd.as_fd()), WaitIdOptions::EXITED) {
                Ok(Some(status)) => return describe_exit(&status),
                Ok(None) | Err(rustix::io::Errno::INTR) => continue,
                Err(errno) => return format!("cannot be waited for: {errno}"),
            }
        }
    }
}

/// The exit, in words: "exited with status 1", "killed by SIGSYS".
fn describe_exit(status: &rustix::process::WaitIdStatus) -> String {
    match (status.exit_status(), status.terminating_signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("killed by {}", jailer::signal_name(signal)),
        _ => "ended".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    // The child is reaped through its pidfd, which clippy cannot see.
    #[allow(clippy::zombie_processes)]
    fn exits_are_described_through_the_pidfd() {
        let child = Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
        let waiter = Waiter::Process(pidfd_of(child.id()).unwrap());
        let (sender, receiver) = std::sync::mpsc::channel();
        waiter
            .watch(ProcessKind::EventLog, move |reason| {
                sender.send(reason).unwrap()
            })
            .unwrap();
        assert_eq!(
            receiver.recv_timeout(Duration::from_secs(10)).unwrap(),
            "exited with status 3"
        );
    }

    #[test]
    fn a_handle_of_a_process_that_is_gone_signals_nothing() {
        // The pid of an exited, reaped child may be reused by anyone; its
        // pidfd still names the old process, so the kill goes nowhere.
        let handle = ProcessHandle::of_this_test();
        handle.kill();
        let Held::Process(pidfd) = &handle.held else {
            unreachable!("a test handle is a process's");
        };
        assert!(matches!(
            pidfd_send_signal(pidfd, Signal::KILL),
            Err(rustix::io::Errno::SRCH)
        ));
    }
}
