//! What every device process does around its own logic, once: take the
//! descriptors the core handed it (or, as a standby, the ones a takeover
//! brings), its options, its log; then run its kind, whose links
//! ([`crate::links`]) install its filter, handshake and serve.

use crate::seccomp::{self, SeccompError};
use ipc_proto::channel::{Channel, ChannelError};
use ipc_proto::{Link, ProcessKind, FIRST_CHANNEL_FD};
use nix::sys::socket::{getsockopt, sockopt, SockType};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;
use thiserror::Error;

/// How long peers have to answer the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a device process stops.
#[derive(Debug, Error)]
pub enum ProcessError {
    /// A descriptor the core should have passed is not a SOCK_SEQPACKET socket.
    #[error("descriptor {0} is not a SOCK_SEQPACKET socket")]
    NotASocket(RawFd),
    /// An extra descriptor the core should have passed is not open.
    #[error("descriptor {0} is not open")]
    NotOpen(RawFd),
    /// Not as many descriptors as the kind takes were handed over.
    #[error("{got} descriptors handed over, {wanted} expected")]
    Count {
        /// The kind's links and extra descriptors.
        wanted: usize,
        /// What was handed over.
        got: usize,
    },
    /// A descriptor the device needs was not handed over.
    #[error("no descriptor for {0}")]
    Missing(&'static str),
    /// The seccomp filter could not be installed.
    #[error("cannot install the seccomp filter")]
    Seccomp(#[from] SeccompError),
    /// A link's handshake failed.
    #[error("{link:?}: handshake failed")]
    Handshake {
        /// The link.
        link: Link,
        /// What went wrong.
        #[source]
        source: ChannelError,
    },
    /// The link to the core failed.
    #[error("the link to the core failed")]
    Core(#[source] ChannelError),
    /// Waiting for the links failed.
    #[error("cannot wait for requests")]
    Poll(#[source] nix::Error),
    /// The state region the core passed cannot be used.
    #[error("the state region cannot be used")]
    State(#[source] crate::state::StateError),
    /// The state region cannot record a transition: the device's memory is
    /// ahead of the region, so it ends (its successor resumes from the
    /// region), without answering the request that made the transition.
    #[error("the state region cannot record a transition")]
    LostState(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A standby's takeover did not come whole.
    #[error("the takeover of a standby failed")]
    Standby(#[source] ChannelError),
}

/// `fd` as a channel, once it is known to be a SOCK_SEQPACKET socket.
fn channel_of(fd: OwnedFd) -> Result<Channel, ProcessError> {
    match getsockopt(&fd, sockopt::SockType) {
        Ok(SockType::SeqPacket) => Ok(Channel::from_fd(fd)),
        _ => Err(ProcessError::NotASocket(fd.as_raw_fd())),
    }
}

/// Takes an extra descriptor (after the channels) of any type.
///
/// # Safety
/// The core must have passed descriptor `fd` to this process for this use.
unsafe fn take_fd(fd: RawFd) -> Result<OwnedFd, ProcessError> {
    // SAFETY: only inspected until ownership is taken below.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    if nix::fcntl::fcntl(borrowed, nix::fcntl::FcntlArg::F_GETFD).is_err() {
        return Err(ProcessError::NotOpen(fd));
    }
    // SAFETY: open (checked above) and ours by the caller's promise.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What a device starts with: its channels, in the order of
/// [`ProcessKind::links`], then its [`ProcessKind::extra_descriptors`], in
/// the order that documents. A device process takes them from the
/// descriptors the core passed it ([`Descriptors::inherited`]); whoever runs
/// a device otherwise hands them over.
pub struct Descriptors {
    /// The channels.
    pub channels: Vec<Channel>,
    /// The extra descriptors, taken in order with [`Descriptors::next_extra`].
    pub extra: std::collections::VecDeque<OwnedFd>,
}

impl Descriptors {
    /// Takes this process's inherited descriptors: the channels of `kind`
    /// from [`FIRST_CHANNEL_FD`] on, then its extra descriptors.
    pub fn inherited(kind: ProcessKind) -> Result<Descriptors, ProcessError> {
        let count = (kind.links().len() + kind.extra_descriptors()) as RawFd;
        let fds = (FIRST_CHANNEL_FD..FIRST_CHANNEL_FD + count)
            // SAFETY: the core passes these, the channels then the extra
            // descriptors, to this process for this use.
            .map(|fd| unsafe { take_fd(fd) })
            .collect::<Result<Vec<_>, _>>()?;
        Descriptors::of(kind, fds)
    }

    /// `fds`, in the order the core passes them to a process of `kind`:
    /// its channels, each checked to be one, then its extra descriptors.
    pub fn of(kind: ProcessKind, fds: Vec<OwnedFd>) -> Result<Descriptors, ProcessError> {
        let links = kind.links().len();
        let wanted = links + kind.extra_descriptors();
        if fds.len() != wanted {
            return Err(ProcessError::Count {
                wanted,
                got: fds.len(),
            });
        }
        let mut fds = fds.into_iter();
        let channels = fds
            .by_ref()
            .take(links)
            .map(channel_of)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Descriptors {
            channels,
            extra: fds.collect(),
        })
    }

    /// The next extra descriptor.
    pub fn next_extra(&mut self, what: &'static str) -> Result<OwnedFd, ProcessError> {
        self.extra.pop_front().ok_or(ProcessError::Missing(what))
    }
}

/// What a device process starts with, from its command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Startup {
    /// `--seccomp kill|log|off`.
    pub seccomp: seccomp::Mode,
    /// `--state resume`: an earlier incarnation formatted the state region,
    /// which must validate; `--state fresh` (the default): format it.
    pub resume: bool,
    /// `--trace on`: the core traces, so the device records its points.
    pub trace: bool,
}

/// What a device process's command line says.
#[derive(Debug, PartialEq, Eq)]
struct Options {
    startup: Startup,
    log_level: Option<log::LevelFilter>,
    /// `--state standby`: its descriptors (and whether to resume) come later,
    /// on its standby socket.
    standby: bool,
}

/// Parses `--seccomp kill|log|off`, `--log-level LEVEL` and `--state
/// fresh|resume|standby`, each at most once.
fn parse_options(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        startup: Startup {
            seccomp: seccomp::Mode::Kill,
            resume: false,
            trace: false,
        },
        log_level: None,
        standby: false,
    };
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--seccomp" => options.startup.seccomp = seccomp_option(value)?,
            "--state" => match value.as_str() {
                "fresh" => options.startup.resume = false,
                "resume" => options.startup.resume = true,
                "standby" => options.standby = true,
                _ => {
                    return Err(format!(
                        "--state {value}: expected fresh, resume or standby"
                    ))
                }
            },
            "--log-level" => options.log_level = Some(log_level_option(value)?),
            "--trace" => {
                options.startup.trace = match value.as_str() {
                    "on" => true,
                    "off" => false,
                    _ => return Err(format!("--trace {value}: expected on or off")),
                }
            }
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(options)
}

/// The value of `--seccomp`, as every device process takes it.
pub(crate) fn seccomp_option(value: &str) -> Result<seccomp::Mode, String> {
    seccomp::Mode::parse(value)
        .ok_or_else(|| format!("--seccomp {value}: expected kill, log or off"))
}

/// The value of `--log-level`, as every device process takes it.
pub(crate) fn log_level_option(value: &str) -> Result<log::LevelFilter, String> {
    value.parse().map_err(|_| {
        format!(
            "--log-level {value}: expected one of {:?}",
            common::LOG_LEVELS
        )
    })
}

/// A device's body: serves from its descriptors until the core hangs up.
pub type Run = fn(Startup, Descriptors) -> Result<(), ProcessError>;

/// The status a device process ends with when it panics.
pub const PANIC_STATUS: i32 = 101;

/// Makes a panic end the process with its message in the log. The default
/// hook names the thread by its id, and aborting signals the process: both
/// are system calls the seccomp filter forbids, so a panic would end in
/// SIGSYS with its message lost.
pub(crate) fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        log::error!("panicked: {info}");
        // SAFETY: _exit ends the process at once; nothing after it runs.
        unsafe { nix::libc::_exit(PANIC_STATUS) }
    }));
}

/// A standby (started ahead of time, jailed: a restart waits for no jail)
/// waits on its socket, descriptor [`FIRST_CHANNEL_FD`], for the
/// descriptors of the process it becomes and whether it resumes.
fn await_takeover(kind: ProcessKind) -> Result<(Descriptors, bool), ProcessError> {
    use ipc_proto::protocol::Message;
    // SAFETY: the spawner hands a standby its socket as this descriptor.
    let socket = Channel::from_fd(unsafe { take_fd(FIRST_CHANNEL_FD) }?);
    // It may wait long: what its start-up freed goes back to the host.
    common::release_free_memory();
    let frame = socket.recv_frame(None).map_err(ProcessError::Standby)?;
    let takeover = ipc_proto::channel::decode::<ipc_proto::spawner::Takeover>(&frame.bytes)
        .map_err(ProcessError::Standby)?
        .body;
    takeover
        .validate(frame.fds.len())
        .map_err(|why| ProcessError::Standby(ChannelError::Invalid(why)))?;
    Ok((Descriptors::of(kind, frame.fds)?, takeover.resume))
}

/// The `main` of every device process: logging, then `run` until the core
/// hangs up (status 0) or something fails (status 1, with the reason logged).
/// Options: `--seccomp kill|log|off` (kill when absent), `--log-level LEVEL`
/// (the jailer clears the environment, so `RUST_LOG` cannot reach a jailed
/// process: the core passes its level) and `--state fresh|resume` (see
/// [`Startup`]). The log is stderr, which the core points at its own log.
pub fn main(kind: ProcessKind) -> std::process::ExitCode {
    let run = crate::run_fn(kind);
    let name = kind.name();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = parse_options(&args);
    common::init_logging(name, options.as_ref().ok().and_then(|o| o.log_level), None);
    log_panics();
    let (mut startup, standby) = match options {
        Ok(options) => (options.startup, options.standby),
        Err(error) => {
            log::error!(
                "{error}; {name} takes --seccomp kill|log|off, --log-level LEVEL, --trace on|off and --state fresh|resume|standby; its channels are descriptors {FIRST_CHANNEL_FD}.."
            );
            return std::process::ExitCode::from(common::EXIT_USAGE);
        }
    };
    // No other process of the same uid may read this one's memory.
    if let Err(error) = nix::sys::prctl::set_dumpable(false) {
        log::error!("cannot make the process non-dumpable: {error}");
        return std::process::ExitCode::FAILURE;
    }
    let descriptors = match standby {
        false => Descriptors::inherited(kind),
        true => await_takeover(kind).map(|(descriptors, resume)| {
            startup.resume = resume;
            descriptors
        }),
    };
    exit_status(descriptors.and_then(|descriptors| run(startup, descriptors)))
}

/// How a device process ends: status 0 when it was served until the core
/// hung up, else 1 with the reason logged.
pub(crate) fn exit_status(ended: Result<(), impl std::error::Error>) -> std::process::ExitCode {
    match ended {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            log::error!("{}", common::describe(&error));
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn parse(args: &[&str]) -> Result<Options, String> {
        parse_options(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn descriptors_handed_to_a_thread_are_counted_and_checked() {
        let kind = ProcessKind::HotplugController;
        let sockets = || {
            (0..kind.links().len()).map(|_| {
                let (ours, _theirs) = Channel::pair().unwrap();
                ours.as_fd().try_clone_to_owned().unwrap()
            })
        };
        let region = || OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let mut fds: Vec<OwnedFd> = sockets().collect();
        fds.push(region());
        let descriptors = Descriptors::of(kind, fds).unwrap();
        assert_eq!(descriptors.channels.len(), kind.links().len());
        assert_eq!(descriptors.extra.len(), 1);
        // One missing, or a file where a channel belongs: refused.
        let short: Vec<OwnedFd> = sockets().collect();
        assert!(matches!(
            Descriptors::of(kind, short),
            Err(ProcessError::Count { wanted, got }) if got + 1 == wanted
        ));
        let mut swapped: Vec<OwnedFd> = vec![region()];
        swapped.extend(sockets().skip(1));
        swapped.push(region());
        assert!(matches!(
            Descriptors::of(kind, swapped),
            Err(ProcessError::NotASocket(_))
        ));
    }

    #[test]
    fn options_parse_in_any_order_and_bad_ones_are_named() {
        assert_eq!(
            parse(&[]).unwrap(),
            Options {
                startup: Startup {
                    seccomp: seccomp::Mode::Kill,
                    resume: false,
                    trace: false,
                },
                log_level: None,
                standby: false,
            }
        );
        assert_eq!(
            parse(&[
                "--log-level",
                "debug",
                "--state",
                "resume",
                "--trace",
                "on",
                "--seccomp",
                "log"
            ])
            .unwrap(),
            Options {
                startup: Startup {
                    seccomp: seccomp::Mode::Log,
                    resume: true,
                    trace: true,
                },
                log_level: Some(log::LevelFilter::Debug),
                standby: false,
            }
        );
        assert!(parse(&["--state", "standby"]).unwrap().standby);
        assert!(parse(&["--state", "maybe"]).unwrap_err().contains("maybe"));
        assert!(parse(&["--log-level", "loud"])
            .unwrap_err()
            .contains("loud"));
        assert!(parse(&["--seccomp"]).unwrap_err().contains("needs a value"));
        assert!(parse(&["--trace", "yes"]).unwrap_err().contains("yes"));
        assert!(parse(&["--verbose", "1"])
            .unwrap_err()
            .contains("--verbose"));
    }
}
