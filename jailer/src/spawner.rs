//! The spawner: the one privileged process of a VM besides what it starts
//! (crosvm's jail warden, Chrome's zygote). The core starts it first, then
//! gives up every capability of its own; from then on, device processes are
//! started (through the jailer) and signalled here, on the core's typed
//! requests (`ipc_proto::spawner`).
//!
//! A request names only a kind of device process and a generation. Which
//! binary, which uid and gid, which jail directory and which limits are
//! this process's own, fixed by its command line at its start: a
//! compromised core can ask it for another incarnation of its VM's device
//! processes and for nothing else (an upgrade may name another binary,
//! which must be one only root and the VM's user could have written). It
//! is the parent of what it starts, so it reports each exit to the core;
//! when the core's socket closes (the core ended or died) it kills every
//! process it started and exits.
//!
//! It keeps only the capabilities the jailer needs
//! ([`crate::privileges::SPAWNER_CAPABILITIES`]), sets no_new_privs, is
//! non-dumpable, in a session of its own, and installs a seccomp filter of
//! what it, the jailer, the reaper and the device processes call before
//! they install their own (a filter is inherited across exec: its children
//! run under it too).

use ipc_proto::channel::{decode, encode, Channel, ChannelError, Envelope, Frame};
use ipc_proto::protocol::Message;
use ipc_proto::spawner::{
    descriptors_of, BlockStart, DeviceStart, SpawnEvent, SpawnReply, SpawnRequest, Started,
    Takeover,
};
use ipc_proto::{ProcessKind, FIRST_CHANNEL_FD};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use rustix::process::{pidfd_open, pidfd_send_signal, waitid, Pid, PidfdFlags, Signal};
use rustix::process::{WaitId, WaitIdOptions};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// The socket the core asks on.
pub const REQUESTS_FD: RawFd = 3;
/// The socket the spawner reports exits on.
pub const EVENTS_FD: RawFd = 4;
/// Processes the spawner holds at once, at most: a VM's three device
/// processes, an upgrade's overlap and the reaper, with room to spare.
pub const MAX_CHILDREN: usize = 16;
/// How long a jailer has to report the program it started.
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// The address space of a device process that maps no guest memory.
const DEVICE_ADDRESS_SPACE: u64 = 1 << 30;
/// How long the spawner must have had no request before it starts a
/// standby or removes ended jails: the starts of a group (the VM's boot,
/// processes that died together, a restart right after its exit report)
/// come close together and must not wait for either.
const QUIET: u16 = 20;
/// Ended jails kept for a quiet moment, at most: past that, they are
/// removed at once (a core that never lets the spawner rest cannot make it
/// hold an unbounded list).
const MAX_JAILS_TO_REMOVE: usize = MAX_CHILDREN;

/// What the spawner starts, fixed at its own start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpawnerConfig {
    /// Where the binaries are: the device processes', the jailer's and the reaper's.
    pub bin_dir: PathBuf,
    /// Start device processes through the jailer (else directly).
    pub jail: bool,
    /// The device processes' uid and gid.
    pub uid: u32,
    /// See `uid`.
    pub gid: u32,
    /// Where jails are made.
    pub jail_dir: PathBuf,
    /// Guest RAM and every DIMM, in bytes: the RTAS server maps them.
    pub guest_memory: u64,
    /// The device processes' `--seccomp` (and the spawner's own mode).
    pub seccomp: String,
    /// The device processes' `--log-level`.
    pub log_level: String,
    /// The device processes' `--trace` (`on` while the core traces).
    pub trace: bool,
    /// The user the VM runs as, who besides root may own an upgrade's binary.
    pub owner: u32,
    /// The core's pid, which names the jails.
    pub core_pid: u32,
}

/// Why the spawner cannot serve.
#[derive(Debug, Error)]
pub enum SpawnerError {
    /// Confining itself failed.
    #[error("cannot {0}")]
    Setup(&'static str, #[source] nix::Error),
    /// Its capabilities.
    #[error("cannot keep only the jailer's capabilities")]
    Privileges(#[source] crate::privileges::ConfineError),
    /// Its filter.
    #[error("cannot install its seccomp filter")]
    Seccomp(#[source] common::seccomp::SeccompError),
    /// Its sockets.
    #[error("its socket to the core failed")]
    Socket(#[source] ChannelError),
}

/// A process the spawner started and holds.
struct Child {
    process: Started,
    pidfd: OwnedFd,
    /// Its jail's directory, removed once it ended.
    jail_dir: Option<PathBuf>,
}

/// A device process as it runs: its pid, a pidfd of it, its jail.
type Running = (u32, OwnedFd, Option<PathBuf>);

/// A device process's start, half done.
enum Begun {
    /// It runs (a standby took over, or it runs without a jail).
    Running(Running),
    /// Its jailer sets the jail up.
    Jailing(Jailing),
}

/// A jailer at work, whose report is still to come.
struct Jailing {
    report: Channel,
    jailer: OwnedFd,
    jail_dir: PathBuf,
}

impl Begun {
    /// Waits for the jail, if any: the process runs.
    fn finish(self) -> Result<Running, String> {
        match self {
            Begun::Running(running) => Ok(running),
            Begun::Jailing(jail) => jail.finish(),
        }
    }
}

impl Jailing {
    /// Waits for the jailer's report: the process runs in its jail.
    fn finish(self) -> Result<Running, String> {
        let (pid, pidfd) = finish_jail(&self.report, &self.jailer, &self.jail_dir)?;
        Ok((pid, pidfd, Some(self.jail_dir)))
    }
}

/// A device process started ahead of time, jailed, that waits on its
/// standby socket to become the next process of its kind: a restart then
/// waits for no jail.
struct Standby {
    kind: ProcessKind,
    program: PathBuf,
    pid: u32,
    pidfd: OwnedFd,
    socket: Channel,
    jail_dir: Option<PathBuf>,
}

/// The spawner's state: its sockets, its configuration, what it started.
pub struct Spawner {
    config: SpawnerConfig,
    requests: Channel,
    events: Channel,
    children: Vec<Child>,
    /// A standby per kind, once the kind was started.
    standbys: Vec<Standby>,
    /// The standbys to start when no request waits.
    wanted: Vec<(ProcessKind, PathBuf)>,
    /// Jails of ended processes, removed when no request waits: removing
    /// one takes longer than the rest of an exit report together.
    jails_to_remove: Vec<PathBuf>,
    /// Standbys started, to name their jails.
    standbys_started: u64,
    /// The last generation started, of device processes and of reapers:
    /// a request must name a later one.
    last_device: u64,
    last_reaper: u64,
    last_block: u64,
}

/// The calls the spawner makes, and those of what it starts until each
/// installs its own filter (the jailer, the program it sets up in the
/// jail, the reaper, the device processes' start-up): it is inherited.
pub fn rules() -> common::seccomp::Rules {
    use nix::libc::*;
    let calls: &[i64] = &[
        // Its own work: requests, children, reports.
        SYS_poll,
        SYS_ppoll,
        SYS_recvmsg,
        SYS_sendmsg,
        SYS_socketpair,
        SYS_pidfd_open,
        SYS_pidfd_send_signal,
        SYS_waitid,
        SYS_wait4,
        SYS_clone,
        SYS_clone3,
        SYS_vfork,
        SYS_execve,
        SYS_execveat,
        SYS_getpid,
        SYS_getppid,
        SYS_gettid,
        SYS_getuid,
        SYS_geteuid,
        SYS_getgid,
        SYS_getegid,
        SYS_getrandom,
        SYS_write,
        SYS_read,
        SYS_openat,
        SYS_lseek,
        SYS_fcntl,
        SYS_dup,
        SYS_dup2,
        SYS_dup3,
        SYS_pipe2,
        SYS_close_range,
        SYS_newfstatat,
        SYS_fstat,
        SYS_statx,
        SYS_readlink,
        SYS_readlinkat,
        SYS_getdents64,
        SYS_mmap,
        SYS_mprotect,
        SYS_rt_sigaction,
        SYS_sched_getaffinity,
        SYS_sched_yield,
        SYS_set_robust_list,
        SYS_set_tid_address,
        SYS_rseq,
        SYS_arch_prctl,
        SYS_prlimit64,
        SYS_getsockopt,
        SYS_tgkill,
        // A jail's directory removed once its program ended.
        SYS_unlinkat,
        SYS_unlink,
        // The jailer and the jail it sets up.
        SYS_unshare,
        SYS_mount,
        SYS_umount2,
        SYS_pivot_root,
        SYS_chdir,
        SYS_mkdir,
        SYS_mkdirat,
        SYS_rmdir,
        SYS_sethostname,
        SYS_setgroups,
        SYS_setresuid,
        SYS_setresgid,
        SYS_setsid,
        SYS_capget,
        SYS_capset,
        SYS_prctl,
        SYS_seccomp,
        // What a block device process does under its own filter besides
        // (device_procs::seccomp::block_rules; a test holds the two
        // together): its socket, its image, guest memory's rings and
        // eventfds, its library's threads, its inflight-tracking region.
        SYS_accept,
        SYS_accept4,
        SYS_shutdown,
        SYS_pread64,
        SYS_pwrite64,
        SYS_fdatasync,
        SYS_fsync,
        SYS_fallocate,
        SYS_epoll_create1,
        SYS_epoll_ctl,
        SYS_epoll_wait,
        SYS_epoll_pwait,
        SYS_eventfd2,
        SYS_memfd_create,
        SYS_ftruncate,
    ];
    common::seccomp::PROCESS_BASICS
        .iter()
        .chain(calls)
        .map(|&call| (call, vec![]))
        .collect()
}

/// Becomes what the spawner runs as: a session of its own (a terminal's
/// signals do not reach it), only the jailer's capabilities (none when
/// not root), no_new_privs, non-dumpable, under its filter (`mode`).
pub fn confine(mode: common::seccomp::Mode) -> Result<(), SpawnerError> {
    nix::unistd::setsid().map_err(|e| SpawnerError::Setup("start a session", e))?;
    crate::privileges::keep_only(&crate::privileges::SPAWNER_CAPABILITIES)
        .map_err(SpawnerError::Privileges)?;
    nix::sys::prctl::set_dumpable(false).map_err(|e| SpawnerError::Setup("be non-dumpable", e))?;
    // It is the parent of what its jailers start.
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| SpawnerError::Setup("become a subreaper", e))?;
    let program = common::seccomp::compile(rules(), mode).map_err(SpawnerError::Seccomp)?;
    common::seccomp::install(program.as_ref()).map_err(SpawnerError::Seccomp)
}

impl Spawner {
    /// A spawner of `config`, on the sockets the core handed over.
    pub fn new(config: SpawnerConfig, requests: Channel, events: Channel) -> Spawner {
        Spawner {
            config,
            requests,
            events,
            children: Vec::new(),
            standbys: Vec::new(),
            wanted: Vec::new(),
            jails_to_remove: Vec::new(),
            standbys_started: 0,
            last_device: 0,
            last_reaper: 0,
            last_block: 0,
        }
    }

    /// Serves the core until its socket closes; then kills every process
    /// it started.
    pub fn serve(mut self) -> Result<(), SpawnerError> {
        let result = self.serve_until_hang_up();
        let standbys = std::mem::take(&mut self.standbys);
        let ended: Vec<(OwnedFd, Option<PathBuf>)> = std::mem::take(&mut self.children)
            .into_iter()
            .map(|child| (child.pidfd, child.jail_dir))
            .chain(standbys.into_iter().map(|s| (s.pidfd, s.jail_dir)))
            .collect();
        for (pidfd, _) in &ended {
            let _ = pidfd_send_signal(pidfd, Signal::KILL);
        }
        // Killed, they end at once; their jails go with them.
        for (pidfd, jail_dir) in ended {
            let _ = waitid(WaitId::PidFd(pidfd.as_fd()), WaitIdOptions::EXITED);
            self.jails_to_remove.extend(jail_dir);
        }
        self.remove_ended_jails();
        result
    }

    fn serve_until_hang_up(&mut self) -> Result<(), SpawnerError> {
        loop {
            // Standbys are started, and jails removed, when nothing else waits.
            let timeout = match self.wanted.is_empty() && self.jails_to_remove.is_empty() {
                true => PollTimeout::NONE,
                false => PollTimeout::from(QUIET),
            };
            let (request_ready, ended, standbys_ended, idle) = {
                let mut fds: Vec<PollFd> = std::iter::once(self.requests.as_fd())
                    .chain(self.children.iter().map(|child| child.pidfd.as_fd()))
                    .chain(self.standbys.iter().map(|standby| standby.pidfd.as_fd()))
                    .map(|fd| PollFd::new(fd, PollFlags::POLLIN))
                    .collect();
                let ready_count = match poll(&mut fds, timeout) {
                    Ok(n) => n,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(errno) => return Err(SpawnerError::Setup("wait for requests", errno)),
                };
                let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
                let children = self.children.len();
                let ended = |fds: &[PollFd]| -> Vec<usize> {
                    fds.iter()
                        .enumerate()
                        .filter(|(_, fd)| ready(fd))
                        .map(|(i, _)| i)
                        .collect()
                };
                (
                    ready(&fds[0]),
                    ended(&fds[1..1 + children]),
                    ended(&fds[1 + children..]),
                    ready_count == 0,
                )
            };
            // Highest first: removing one leaves the others' indexes valid.
            for i in ended.into_iter().rev() {
                let child = self.children.swap_remove(i);
                self.report_exit(child);
            }
            for i in standbys_ended.into_iter().rev() {
                let standby = self.standbys.swap_remove(i);
                let _ = waitid(WaitId::PidFd(standby.pidfd.as_fd()), WaitIdOptions::EXITED);
                self.jails_to_remove.extend(standby.jail_dir);
                log::warn!(
                    "the standby {} (pid {}) ended",
                    standby.kind.name(),
                    standby.pid
                );
            }
            if idle || self.jails_to_remove.len() > MAX_JAILS_TO_REMOVE {
                self.remove_ended_jails();
            }
            if idle {
                if let Some((kind, program)) = self.wanted.pop() {
                    self.start_standby(kind, program);
                }
            }
            if request_ready {
                match self.requests.recv_frame(Some(Duration::ZERO)) {
                    Ok(frame) => self.answer(frame)?,
                    Err(ChannelError::HungUp) => return Ok(()),
                    Err(ChannelError::Timeout(_)) => {}
                    Err(error) => log::warn!("a request that is no frame: {error}"),
                }
            }
        }
    }

    /// Reaps an ended child and tells the core how it ended; its jail is
    /// removed later, when no request waits (the core restarts what
    /// served at once).
    fn report_exit(&mut self, child: Child) {
        let how = match waitid(WaitId::PidFd(child.pidfd.as_fd()), WaitIdOptions::EXITED) {
            Ok(Some(status)) => describe_exit(&status),
            Ok(None) => "ended".to_string(),
            Err(errno) => format!("cannot be waited for: {errno}"),
        };
        self.jails_to_remove.extend(child.jail_dir);
        let event = Envelope {
            id: 0,
            body: SpawnEvent::Exited {
                process: child.process,
                how,
            },
        };
        if let Err(error) = encode(&event).and_then(|bytes| self.events.send_frame(&bytes, &[])) {
            log::warn!("cannot report an exit to the core: {error}");
        }
    }

    /// Decodes, validates and carries out one request; answers it.
    fn answer(&mut self, frame: Frame) -> Result<(), SpawnerError> {
        let Frame { bytes, fds } = frame;
        let (id, reply, pidfds) = match parse_request(&bytes, fds.len()) {
            Err((id, why)) => (id, SpawnReply::Refused(why), vec![]),
            Ok((id, request)) => match self.carry_out(request, fds) {
                Ok((reply, pidfds)) => (id, reply, pidfds),
                Err(why) => (id, SpawnReply::Refused(truncated(why)), vec![]),
            },
        };
        if let SpawnReply::Refused(why) = &reply {
            log::warn!("refused a request of the core: {why}");
        }
        let bytes = encode(&Envelope { id, body: reply }).map_err(SpawnerError::Socket)?;
        let fds: Vec<BorrowedFd<'_>> = pidfds.iter().map(AsFd::as_fd).collect();
        match self.requests.send_frame(&bytes, &fds) {
            Ok(()) | Err(ChannelError::HungUp) => Ok(()),
            Err(error) => Err(SpawnerError::Socket(error)),
        }
    }

    /// Carries out a validated request: the reply, and the pidfds that
    /// go with it.
    fn carry_out(
        &mut self,
        request: SpawnRequest,
        fds: Vec<OwnedFd>,
    ) -> Result<(SpawnReply, Vec<OwnedFd>), String> {
        match request {
            SpawnRequest::Start(devices) => self.start_devices(devices, fds),
            SpawnRequest::StartReaper { generation } => {
                if generation <= self.last_reaper {
                    return Err(format!(
                        "reaper generation {generation} is not after {}",
                        self.last_reaper
                    ));
                }
                self.room(1)?;
                self.last_reaper = generation;
                let (pid, pidfd) = self.start_reaper(&fds)?;
                let copy = self.hold(Started::Reaper { generation }, pidfd, None)?;
                Ok((SpawnReply::Started { pid }, vec![copy]))
            }
            SpawnRequest::StartBlock(block) => {
                if block.serial <= self.last_block {
                    return Err(format!(
                        "disk serial {} is not after {}",
                        block.serial, self.last_block
                    ));
                }
                self.room(1)?;
                self.last_block = block.serial;
                let (pid, pidfd, jail_dir) = self.start_block(&block, &fds)?;
                let copy = self.hold(
                    Started::Block {
                        serial: block.serial,
                    },
                    pidfd,
                    jail_dir,
                )?;
                Ok((SpawnReply::Started { pid }, vec![copy]))
            }
            SpawnRequest::Kill(process) => {
                if let Some(child) = self.children.iter().find(|c| c.process == process) {
                    match pidfd_send_signal(&child.pidfd, Signal::KILL) {
                        Ok(()) | Err(rustix::io::Errno::SRCH) => {}
                        Err(errno) => return Err(format!("cannot kill {process:?}: {errno}")),
                    }
                }
                Ok((SpawnReply::Done, vec![]))
            }
        }
    }

    /// Starts `devices` together, each on its share of `fds`: a standby
    /// takes over where one waits, and the other jails are set up at once
    /// (each jailer started, then each awaited). One outcome each.
    fn start_devices(
        &mut self,
        devices: Vec<DeviceStart>,
        fds: Vec<OwnedFd>,
    ) -> Result<(SpawnReply, Vec<OwnedFd>), String> {
        if let Some(first) = devices.first() {
            if first.generation <= self.last_device {
                return Err(format!(
                    "generation {} is not after {}",
                    first.generation, self.last_device
                ));
            }
        }
        self.room(devices.len())?;
        self.last_device = devices.last().map_or(self.last_device, |d| d.generation);
        let mut fds = fds.into_iter();
        let mut begun = Vec::with_capacity(devices.len());
        for device in &devices {
            let own: Vec<OwnedFd> = fds.by_ref().take(descriptors_of(device.kind)).collect();
            begun.push(
                check_descriptors(device.kind, &own).and_then(|()| self.begin_device(device, &own)),
            );
        }
        let mut outcomes = Vec::with_capacity(devices.len());
        let mut pidfds = Vec::new();
        for (device, begun) in devices.into_iter().zip(begun) {
            let started = begun.and_then(|(program, start)| {
                let (pid, pidfd, jail_dir) = start.finish()?;
                // The next of its kind gets a standby of the same binary.
                self.wanted.retain(|(wanted, _)| *wanted != device.kind);
                self.wanted.push((device.kind, program));
                let process = Started::Device {
                    kind: device.kind,
                    generation: device.generation,
                };
                Ok((pid, self.hold(process, pidfd, jail_dir)?))
            });
            match started {
                Ok((pid, copy)) => {
                    outcomes.push(Ok(pid));
                    pidfds.push(copy);
                }
                Err(why) => {
                    log::warn!("cannot start the {}: {why}", device.kind.name());
                    outcomes.push(Err(truncated(why)));
                }
            }
        }
        Ok((SpawnReply::Devices(outcomes), pidfds))
    }

    /// The first half of a device's start: its program, and a standby that
    /// took over or a jail being set up.
    fn begin_device(
        &mut self,
        device: &DeviceStart,
        fds: &[OwnedFd],
    ) -> Result<(PathBuf, Begun), String> {
        let kind = device.kind;
        let program = match &device.upgrade {
            Some(path) => crate::trusted_program(Path::new(path), self.config.owner)?,
            None => self.config.bin_dir.join(kind.binary()),
        };
        if let Some(running) = self.take_standby(kind, &program, device.resume, fds) {
            return Ok((program, Begun::Running(running)));
        }
        let args = self.device_args(if device.resume { "resume" } else { "fresh" });
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let id = format!("{}-{}", self.config.core_pid, device.generation);
        let begun = self.begin_jailed(
            &id,
            &program,
            &args,
            &raw,
            device_limits(kind, &self.config),
        )?;
        Ok((program, begun))
    }

    /// A standby of `kind` running `program` becomes the device (its
    /// descriptors `fds`, resuming or not): its pid, pidfd and jail. A
    /// standby of another binary (the kind was upgraded) goes.
    fn take_standby(
        &mut self,
        kind: ProcessKind,
        program: &Path,
        resume: bool,
        fds: &[OwnedFd],
    ) -> Option<Running> {
        let at = self.standbys.iter().position(|s| s.kind == kind)?;
        let standby = self.standbys.swap_remove(at);
        let takeover = encode(&Envelope {
            id: 0,
            body: Takeover { resume },
        });
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
        let handed = standby.program == program
            && takeover
                .and_then(|bytes| standby.socket.send_frame(&bytes, &borrowed))
                .is_ok();
        if !handed {
            let _ = pidfd_send_signal(&standby.pidfd, Signal::KILL);
            let _ = waitid(WaitId::PidFd(standby.pidfd.as_fd()), WaitIdOptions::EXITED);
            self.jails_to_remove.extend(standby.jail_dir);
            return None;
        }
        Some((standby.pid, standby.pidfd, standby.jail_dir))
    }

    /// Starts a standby of `kind` running `program`, if there is room.
    fn start_standby(&mut self, kind: ProcessKind, program: PathBuf) {
        if self.room(1).is_err() || self.standbys.iter().any(|s| s.kind == kind) {
            return;
        }
        self.standbys_started += 1;
        let id = format!("{}-standby{}", self.config.core_pid, self.standbys_started);
        let started = Channel::pair()
            .map_err(|error| format!("no standby socket: {error}"))
            .and_then(|(ours, its)| {
                let args = self.device_args("standby");
                let (pid, pidfd, jail_dir) = self
                    .begin_jailed(
                        &id,
                        &program,
                        &args,
                        &[its.as_fd().as_raw_fd()],
                        device_limits(kind, &self.config),
                    )?
                    .finish()?;
                Ok(Standby {
                    kind,
                    program,
                    pid,
                    pidfd,
                    socket: ours,
                    jail_dir,
                })
            });
        match started {
            Ok(standby) => self.standbys.push(standby),
            Err(why) => log::warn!("no standby of the {}: {why}", kind.name()),
        }
    }

    /// Removes the jails of the processes that ended.
    fn remove_ended_jails(&mut self) {
        for dir in std::mem::take(&mut self.jails_to_remove) {
            remove_jail_dir(&dir);
        }
    }

    /// Refuses a start of `more` processes past [`MAX_CHILDREN`] (standbys
    /// included).
    fn room(&self, more: usize) -> Result<(), String> {
        match self.children.len() + self.standbys.len() {
            n if n + more > MAX_CHILDREN => Err(format!(
                "{n} processes already run, no room for {more} more"
            )),
            _ => Ok(()),
        }
    }

    /// Holds a started process (its pidfd); a copy for the core.
    fn hold(
        &mut self,
        process: Started,
        pidfd: OwnedFd,
        jail_dir: Option<PathBuf>,
    ) -> Result<OwnedFd, String> {
        let copy = pidfd
            .try_clone()
            .map_err(|error| format!("cannot duplicate a pidfd: {error}"))?;
        self.children.push(Child {
            process,
            pidfd,
            jail_dir,
        });
        Ok(copy)
    }

    /// The arguments of a device process: `state` is `fresh`, `resume`
    /// or `standby`.
    fn device_args(&self, state: &str) -> Vec<String> {
        let mut args = vec![
            "--seccomp".to_string(),
            self.config.seccomp.clone(),
            "--log-level".to_string(),
            self.config.log_level.clone(),
            "--state".to_string(),
            state.to_string(),
        ];
        // Only when on: a binary from before the trace (an upgrade's)
        // still starts while the VM does not trace.
        if self.config.trace {
            args.extend(["--trace".to_string(), "on".to_string()]);
        }
        args
    }

    /// Starts `program` as a device process of `kind` with `args` and
    /// descriptors `fds`: through the jailer (jail `id`), whose report is
    /// awaited later, or directly when the VM runs without jails.
    fn begin_jailed(
        &self,
        id: &str,
        program: &Path,
        args: &[String],
        fds: &[RawFd],
        limits: Vec<crate::Limit>,
    ) -> Result<Begun, String> {
        let config = &self.config;
        if !config.jail {
            let pid = start_program(program, args, fds)?;
            // Not yet waited for, so the pid is still this child's.
            return Ok(Begun::Running((pid, pidfd_of(pid)?, None)));
        }
        let (ours, jailers) = Channel::pair().map_err(|e| format!("no report socket: {e}"))?;
        let jail = crate::JailConfig {
            id: id.to_string(),
            exec_file: program.to_path_buf(),
            uid: config.uid,
            gid: config.gid,
            chroot_base: config.jail_dir.clone(),
            limits,
            cgroup: vec![],
            keep_fds: fds.len() as u32,
            report_fd: Some(FIRST_CHANNEL_FD + fds.len() as i32),
            args: args.iter().map(Into::into).collect(),
        };
        let mut passed = fds.to_vec();
        passed.push(jailers.as_fd().as_raw_fd());
        let jailer = start_program(&config.bin_dir.join("jailer"), &jail.to_args(), &passed)
            .and_then(pidfd_of)?;
        Ok(Begun::Jailing(Jailing {
            report: ours,
            jailer,
            jail_dir: jail.jail_dir(),
        }))
    }

    /// Starts the block device process of `block` on `fds` (its listening
    /// socket, its image), jailed like a device process: it maps guest
    /// memory, so its address space has room for it.
    fn start_block(&self, block: &BlockStart, fds: &[OwnedFd]) -> Result<Running, String> {
        check_block_descriptors(fds)?;
        let config = &self.config;
        let mut args = vec![
            "--seccomp".to_string(),
            config.seccomp.clone(),
            "--log-level".to_string(),
            config.log_level.clone(),
            "--id".to_string(),
            block.node.clone(),
        ];
        if block.read_only {
            args.push("--read-only".to_string());
        }
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let id = format!("{}-block{}", config.core_pid, block.serial);
        let program = match &block.program {
            Some(path) => crate::trusted_program(Path::new(path), config.owner)?,
            None => config.bin_dir.join(BLOCK_BINARY),
        };
        self.begin_jailed(
            &id,
            &program,
            &args,
            &raw,
            vec![
                crate::Limit::AddressSpace(config.guest_memory + DEVICE_ADDRESS_SPACE),
                crate::Limit::Tasks(BLOCK_TASKS),
            ],
        )?
        .finish()
    }

    /// Starts the reaper on `fds` (its socket); as root with jails it takes
    /// the device processes' ids.
    fn start_reaper(&self, fds: &[OwnedFd]) -> Result<(u32, OwnedFd), String> {
        let config = &self.config;
        let mut args = vec!["--seccomp".to_string(), config.seccomp.clone()];
        if config.jail && nix::unistd::geteuid().is_root() {
            args.extend([
                "--uid".to_string(),
                config.uid.to_string(),
                "--gid".to_string(),
                config.gid.to_string(),
            ]);
        }
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let pid = start_program(&config.bin_dir.join("papervisor-reaper"), &args, &raw)?;
        Ok((pid, pidfd_of(pid)?))
    }
}

/// Whether `fds` are what a device process of `kind` is started with: its
/// links sockets, and nothing that leads into the file system or to a
/// device (a directory handed into a jail leads out of it; a device node
/// is what the jail keeps out). The process checks the rest itself.
fn check_descriptors(kind: ProcessKind, fds: &[OwnedFd]) -> Result<(), String> {
    use nix::sys::stat::{fstat, SFlag};
    for (i, fd) in fds.iter().enumerate() {
        let mode = fstat(fd)
            .map_err(|errno| format!("descriptor {i} of the {}: {errno}", kind.name()))?
            .st_mode;
        let file_type = SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits());
        let link = i < kind.links().len();
        let refused = match file_type {
            SFlag::S_IFSOCK => None,
            _ if link => Some("not a socket"),
            SFlag::S_IFDIR => Some("a directory"),
            SFlag::S_IFCHR | SFlag::S_IFBLK => Some("a device node"),
            SFlag::S_IFLNK => Some("a symbolic link"),
            _ => None,
        };
        if let Some(what) = refused {
            return Err(format!("descriptor {i} of the {} is {what}", kind.name()));
        }
    }
    Ok(())
}

/// The limits of a device process of `kind`: its address space (the RTAS
/// server maps guest memory); no task may it make.
fn device_limits(kind: ProcessKind, config: &SpawnerConfig) -> Vec<crate::Limit> {
    let address_space = match kind {
        ProcessKind::RtasServer => config.guest_memory + DEVICE_ADDRESS_SPACE,
        _ => DEVICE_ADDRESS_SPACE,
    };
    vec![crate::Limit::AddressSpace(address_space)]
}

/// The tasks of the jail's uid (the VM's device processes, their standbys
/// and its block processes' threads: three each) past which a block
/// process may not make a thread. Its filter lets it make threads only,
/// never processes; this bounds how many.
const BLOCK_TASKS: u64 = 256;

/// The block device process's binary, beside the others.
const BLOCK_BINARY: &str = "papervisor-block";

/// Whether `fds` are what a block device process is started with: a
/// socket, then an image (a regular file or a block device, opened by the
/// core from a path QMP named); nothing that leads out of a jail.
fn check_block_descriptors(fds: &[OwnedFd]) -> Result<(), String> {
    use nix::sys::stat::{fstat, SFlag};
    let type_of = |i: usize| {
        fstat(&fds[i])
            .map(|stat| SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()))
            .map_err(|errno| format!("descriptor {i} of a block device: {errno}"))
    };
    if fds.len() != 2 {
        return Err(format!("{} descriptors for a block device", fds.len()));
    }
    if type_of(0)? != SFlag::S_IFSOCK {
        return Err("the block device's socket is not a socket".into());
    }
    match type_of(1)? {
        SFlag::S_IFREG | SFlag::S_IFBLK => Ok(()),
        _ => Err("the block device's image is neither a regular file nor a block device".into()),
    }
}

/// A request as the spawner reads it: its id and the request, decoded and
/// validated against the `fds` descriptors that came with it; or the id
/// (0 if none could be read) and why it is refused.
pub fn parse_request(bytes: &[u8], fds: usize) -> Result<(u64, SpawnRequest), (u64, String)> {
    let Envelope { id, body } = decode::<SpawnRequest>(bytes)
        .map_err(|error| (0, format!("an undecodable request: {error}")))?;
    body.validate(fds).map_err(|why| (id, why))?;
    Ok((id, body))
}

/// Waits for a jailer's report of the program it started, and for the
/// jailer to end (the program is then this process's child); the
/// program's pid and pidfd. A jail that does not come up is killed and its
/// directory removed.
fn finish_jail(
    report: &Channel,
    jailer: &OwnedFd,
    jail_dir: &Path,
) -> Result<(u32, OwnedFd), String> {
    let reported = report
        .recv_frame(Some(REPORT_TIMEOUT))
        .map_err(|error| format!("the jailer did not report: {error}"))
        .and_then(|frame| {
            let count = frame.fds.len();
            let pid: [u8; 4] = frame.bytes.as_slice().try_into().map_err(|_| {
                format!(
                    "the jailer reported {} bytes and {count} descriptors",
                    frame.bytes.len()
                )
            })?;
            let process = frame
                .fds
                .into_iter()
                .next()
                .filter(|_| count == 1)
                .ok_or_else(|| format!("the jailer reported {count} descriptors"))?;
            Ok((u32::from_le_bytes(pid), process))
        });
    let (pid, process) = match reported {
        Ok(report) => report,
        Err(error) => {
            let _ = pidfd_send_signal(jailer, Signal::KILL);
            let _ = waitid(WaitId::PidFd(jailer.as_fd()), WaitIdOptions::EXITED);
            remove_jail_dir(jail_dir);
            return Err(error);
        }
    };
    match waitid(WaitId::PidFd(jailer.as_fd()), WaitIdOptions::EXITED) {
        Ok(Some(status)) if status.exit_status() == Some(0) => Ok((pid, process)),
        other => {
            let _ = pidfd_send_signal(&process, Signal::KILL);
            remove_jail_dir(jail_dir);
            Err(format!("the jailer failed: {other:?}"))
        }
    }
}

/// Removes a jail's directory (empty here: its root is a mount of the
/// jail's own namespace).
fn remove_jail_dir(dir: &Path) {
    if let Err(error) = std::fs::remove_dir_all(dir) {
        if error.kind() != std::io::ErrorKind::NotFound {
            log::warn!("cannot remove {}: {error}", dir.display());
        }
    }
}

/// Starts `program` with `args` and `fds` as its descriptors 3..; its pid.
fn start_program(
    program: &Path,
    args: &[impl AsRef<std::ffi::OsStr>],
    fds: &[RawFd],
) -> Result<u32, String> {
    crate::spawn::spawn_with_descriptors(program, args, fds, FIRST_CHANNEL_FD, None)
        .map_err(|error| format!("cannot start {}: {error}", program.display()))
}

fn pidfd_of(pid: u32) -> Result<OwnedFd, String> {
    Pid::from_raw(pid as i32)
        .ok_or(rustix::io::Errno::INVAL)
        .and_then(|pid| pidfd_open(pid, PidfdFlags::empty()))
        .map_err(|errno| format!("no pidfd of pid {pid}: {errno}"))
}

/// The exit, in words: "exited with status 1", "killed by SIGSYS".
pub fn describe_exit(status: &rustix::process::WaitIdStatus) -> String {
    match (status.exit_status(), status.terminating_signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("killed by {}", crate::signal_name(signal)),
        _ => "ended".to_string(),
    }
}

/// A refusal's reason, cut to what a message carries.
fn truncated(mut why: String) -> String {
    why.truncate(ipc_proto::control::cut_text(&why, ipc_proto::control::MAX_TEXT).len());
    why
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    // The child is reaped through its pidfd, which clippy cannot see.
    #[allow(clippy::zombie_processes)]
    fn exits_are_described_through_the_pidfd() {
        let child = std::process::Command::new("sh")
            .args(["-c", "exit 3"])
            .spawn()
            .unwrap();
        let pidfd = pidfd_of(child.id()).unwrap();
        let status = waitid(WaitId::PidFd(pidfd.as_fd()), WaitIdOptions::EXITED)
            .unwrap()
            .unwrap();
        assert_eq!(describe_exit(&status), "exited with status 3");
    }

    #[test]
    fn a_refusal_is_cut_at_a_character_boundary() {
        let long = "é".repeat(ipc_proto::control::MAX_TEXT);
        let cut = truncated(long);
        assert!(cut.len() <= ipc_proto::control::MAX_TEXT);
        assert!(cut.chars().all(|c| c == 'é'));
    }

    #[test]
    fn requests_are_decoded_and_validated_before_anything_is_done() {
        let request = SpawnRequest::Kill(Started::Reaper { generation: 1 });
        let bytes = encode(&Envelope {
            id: 9,
            body: request.clone(),
        })
        .unwrap();
        assert_eq!(parse_request(&bytes, 0), Ok((9, request)));
        // The same with a descriptor it does not take: refused, by id.
        assert!(matches!(parse_request(&bytes, 1), Err((9, _))));
        assert!(matches!(parse_request(&bytes[..3], 0), Err((0, _))));
        assert!(matches!(parse_request(&[0xff; 40], 0), Err((0, _))));
    }
}
