//! The contract between Papervisor's processes.
//!
//! - [`channel`]: the transport — one bincode message per SOCK_SEQPACKET
//!   packet, inside an [`Envelope`](channel::Envelope) with a request id, file
//!   descriptors beside it, total decoding with size limits, and the version
//!   handshake that opens every channel.
//! - [`rtas`]: the messages between the core and the RTAS server.
//! - [`papr`]: the platform vocabulary every process shares (DRC indices,
//!   RTAS tokens, interrupt sources).
//!
//! This crate depends on no other crate of Papervisor's.
#![deny(missing_docs)]

pub mod channel;
pub mod eventlog;
pub mod hotplug;
pub mod papr;
pub mod rtas;

/// Bumped whenever a message changes shape; both ends must agree.
pub const PROTOCOL_VERSION: u32 = 1;

/// The device processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ProcessKind {
    /// Serves RTAS calls; the only device process that maps guest memory.
    RtasServer,
    /// Owns the DRC table and its state machines.
    HotplugController,
    /// Owns the RTAS event queue and raises the hot-plug interrupt.
    EventLog,
}

impl ProcessKind {
    /// Every kind, in the order the core starts them.
    pub const ALL: [ProcessKind; 3] = [
        ProcessKind::EventLog,
        ProcessKind::HotplugController,
        ProcessKind::RtasServer,
    ];

    /// A short name for logs and QMP.
    pub const fn name(self) -> &'static str {
        match self {
            ProcessKind::RtasServer => "rtas-server",
            ProcessKind::HotplugController => "hotplug-controller",
            ProcessKind::EventLog => "event-log",
        }
    }

    /// The executable, found beside the core's.
    pub const fn binary(self) -> &'static str {
        match self {
            ProcessKind::RtasServer => "papervisor-rtas",
            ProcessKind::HotplugController => "papervisor-hotplug",
            ProcessKind::EventLog => "papervisor-eventlog",
        }
    }

    /// The links this process has, in the order of the descriptors it is
    /// started with (the first is descriptor [`FIRST_CHANNEL_FD`]).
    pub const fn links(self) -> &'static [Link] {
        match self {
            ProcessKind::RtasServer => &[Link::CoreRtas, Link::RtasHotplug, Link::RtasEventLog],
            ProcessKind::HotplugController => &[
                Link::CoreHotplug,
                Link::HotplugNotify,
                Link::RtasHotplug,
                Link::HotplugEventLog,
            ],
            ProcessKind::EventLog => &[
                Link::CoreEventLog,
                Link::HotplugEventLog,
                Link::RtasEventLog,
            ],
        }
    }
}

/// A misbehaviour a device process is told to commit, to prove its jail
/// (`x-inject-fault`). Each is forbidden by the process's seccomp filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Fault {
    /// open("/etc/passwd").
    OpenHostFile,
    /// socket(AF_INET, SOCK_STREAM).
    OpenSocket,
    /// fork().
    Fork,
    /// execve("/bin/sh").
    Exec,
    /// Stops answering (the core must cut it off).
    Hang,
    /// Sends random and truncated frames on every link to the core, then
    /// goes on serving (the core must survive and cut it off).
    Garbage,
}

impl Fault {
    /// The QMP names.
    pub const ALL: [(&'static str, Fault); 6] = [
        ("open-host-file", Fault::OpenHostFile),
        ("open-socket", Fault::OpenSocket),
        ("fork", Fault::Fork),
        ("exec", Fault::Exec),
        ("hang", Fault::Hang),
        ("garbage", Fault::Garbage),
    ];
}

/// Device processes find their channels from this descriptor number on, in
/// the order of [`ProcessKind::links`]; extra descriptors (the event log's
/// interrupt eventfd) follow them.
pub const FIRST_CHANNEL_FD: i32 = 3;

/// One channel between two processes; both ends name it in their handshake.
/// The first process named sends the requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Link {
    /// Core → RTAS server: memory table, H_RTAS calls.
    CoreRtas,
    /// Core → hotplug controller: plug, unplug request, reset, queries.
    CoreHotplug,
    /// Hotplug controller → core: released devices and refused unplugs.
    HotplugNotify,
    /// RTAS server → hotplug controller: indicators, sensors, configure-connector.
    RtasHotplug,
    /// Hotplug controller → event log: events to queue.
    HotplugEventLog,
    /// RTAS server → event log: check-exception, event-scan.
    RtasEventLog,
    /// Core → event log: reset, queries.
    CoreEventLog,
}

/// Makes `command` start with `fds` as descriptors [`FIRST_CHANNEL_FD`],
/// [`FIRST_CHANNEL_FD`] + 1, ... and no others besides stdio (the rest are
/// close-on-exec). This is how a device process receives its channels.
pub fn pass_fds(command: &mut std::process::Command, fds: &[std::os::fd::RawFd]) {
    use std::os::unix::process::CommandExt;
    /// Descriptors are first moved above this, so that placing them at 3..
    /// cannot overwrite one not yet placed.
    const SCRATCH_FD_BASE: i32 = 64;
    const MAX_PASSED: usize = 16;
    let sources: Vec<std::os::fd::RawFd> = fds.to_vec();
    // SAFETY: fcntl, dup2 and close are async-signal-safe, the closure
    // allocates nothing and touches only the child's descriptor table; every
    // result is checked.
    unsafe {
        command.pre_exec(move || {
            let mut moved = [0; MAX_PASSED];
            if sources.len() > MAX_PASSED {
                return Err(std::io::Error::from_raw_os_error(nix::libc::EMFILE));
            }
            for (slot, &fd) in moved.iter_mut().zip(&sources) {
                *slot = nix::libc::fcntl(fd, nix::libc::F_DUPFD_CLOEXEC, SCRATCH_FD_BASE);
                if *slot < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, &fd) in moved[..sources.len()].iter().enumerate() {
                // dup2 leaves the new descriptor without close-on-exec.
                if nix::libc::dup2(fd, FIRST_CHANNEL_FD + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                nix::libc::close(fd);
            }
            Ok(())
        });
    }
}
