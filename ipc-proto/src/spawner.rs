//! The link between the core and its spawner: the small privileged process
//! that starts the VM's device processes (through the jailer) and signals
//! them, so that no thread of the core needs a capability. Two sockets: on
//! the first the core asks and the spawner answers, one request at a time;
//! on the second the spawner reports, unasked, that a process it started
//! has ended (it is their parent).
//!
//! What a request can name is narrow on purpose: a kind of device process
//! and a generation, never a uid, a limit or a jail — those the spawner fixed
//! at its own start. Every message is validated before it is acted on.

use crate::channel::no_descriptors;
use crate::control::MAX_TEXT;
use crate::protocol::Message;
use crate::ProcessKind;
use serde::{Deserialize, Serialize};

/// The longest program path an upgrade may name (Linux's PATH_MAX).
pub const MAX_PROGRAM_PATH: usize = 4096;

/// Which process of the VM: a generation of a device process, or the reaper.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Started {
    /// Generation `generation` of a device process of `kind`.
    Device {
        /// Its kind.
        kind: ProcessKind,
        /// Which start of the VM's device processes it is.
        generation: u64,
    },
    /// The reaper (`generation`: which start of it).
    Reaper {
        /// Which start of the reaper it is.
        generation: u64,
    },
}

/// What the core asks of its spawner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpawnRequest {
    /// Start generation `generation` of a device process of `kind`, with the
    /// descriptors that come with the request: its links in the order of
    /// [`ProcessKind::links`], then its extra descriptors. `resume`: its
    /// state region was formatted by an earlier incarnation. `upgrade`: the
    /// binary to run instead of the kind's own (x-upgrade-device-process),
    /// which the spawner checks too.
    Start {
        /// The kind.
        kind: ProcessKind,
        /// A generation greater than any the spawner started.
        generation: u64,
        /// Resume the state region.
        resume: bool,
        /// Another binary of the kind's, by absolute path.
        upgrade: Option<String>,
    },
    /// Start the VM's reaper on the one descriptor that comes with the
    /// request (its end of the core's socket).
    StartReaper {
        /// A generation greater than any reaper the spawner started.
        generation: u64,
    },
    /// SIGKILL a process this spawner started (nothing if it ended).
    Kill(Started),
}

/// The spawner's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpawnReply {
    /// It runs as `pid`; a pidfd of it comes with the reply.
    Started {
        /// Its pid (in the core's namespace).
        pid: u32,
    },
    /// Done (a kill: sent, or nothing left to kill).
    Done,
    /// Not done, and why.
    Refused(String),
}

/// What the spawner reports unasked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpawnEvent {
    /// A process it started ended; how, in words ("killed by SIGSYS").
    Exited {
        /// Which.
        process: Started,
        /// How.
        how: String,
    },
}

/// What the spawner hands a standby device process (one started ahead of
/// time, jailed, waiting) that takes over as a device: its descriptors come
/// with it, in the order of a start's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Takeover {
    /// It resumes the state region an earlier incarnation formatted.
    pub resume: bool,
}

impl Message for Takeover {
    fn validate(&self, fds: usize) -> Result<(), String> {
        let most = ProcessKind::ALL
            .into_iter()
            .map(descriptors_of)
            .max()
            .unwrap_or(0);
        match fds {
            0 => Err("a takeover without descriptors".into()),
            n if n > most => Err(format!("{n} descriptors, more than any kind takes")),
            _ => Ok(()),
        }
    }
}

/// How many descriptors a device process of `kind` is started with.
pub fn descriptors_of(kind: ProcessKind) -> usize {
    kind.links().len() + kind.extra_descriptors()
}

impl Message for SpawnRequest {
    fn validate(&self, fds: usize) -> Result<(), String> {
        match self {
            SpawnRequest::Start {
                kind,
                generation,
                upgrade,
                ..
            } => {
                if *generation == 0 {
                    return Err("generation 0".into());
                }
                if fds != descriptors_of(*kind) {
                    return Err(format!(
                        "{fds} descriptors for the {}, which takes {}",
                        kind.name(),
                        descriptors_of(*kind)
                    ));
                }
                match upgrade {
                    Some(path) if path.len() > MAX_PROGRAM_PATH => {
                        Err(format!("a program path of {} bytes", path.len()))
                    }
                    Some(path) if !path.starts_with('/') || path.contains('\0') => {
                        Err("a program path that is not absolute".into())
                    }
                    _ => Ok(()),
                }
            }
            SpawnRequest::StartReaper { generation } => match (generation, fds) {
                (0, _) => Err("generation 0".into()),
                (_, 1) => Ok(()),
                (_, n) => Err(format!("{n} descriptors with the reaper's start, not 1")),
            },
            SpawnRequest::Kill(_) => no_descriptors(fds, "a kill"),
        }
    }
}

impl Message for SpawnReply {
    fn validate(&self, fds: usize) -> Result<(), String> {
        match self {
            SpawnReply::Started { pid } => match (pid, fds) {
                (0, _) => Err("pid 0".into()),
                (_, 1) => Ok(()),
                (_, n) => Err(format!("{n} descriptors with a start, not its pidfd")),
            },
            SpawnReply::Done => no_descriptors(fds, "an acknowledgement"),
            SpawnReply::Refused(why) if why.len() > MAX_TEXT => {
                Err(format!("a reason of {} bytes", why.len()))
            }
            SpawnReply::Refused(_) => no_descriptors(fds, "a refusal"),
        }
    }
}

impl Message for SpawnEvent {
    fn validate(&self, fds: usize) -> Result<(), String> {
        match self {
            SpawnEvent::Exited { how, .. } if how.len() > MAX_TEXT => {
                Err(format!("an exit described in {} bytes", how.len()))
            }
            SpawnEvent::Exited { .. } => no_descriptors(fds, "an exit"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_takes_exactly_the_kinds_descriptors_and_an_absolute_program() {
        for kind in ProcessKind::ALL {
            let start = |upgrade: Option<&str>| SpawnRequest::Start {
                kind,
                generation: 4,
                resume: false,
                upgrade: upgrade.map(String::from),
            };
            let n = descriptors_of(kind);
            assert_eq!(start(None).validate(n), Ok(()));
            assert!(start(None).validate(n + 1).is_err());
            assert!(start(None).validate(n - 1).is_err());
            assert_eq!(start(Some("/opt/papervisor-rtas")).validate(n), Ok(()));
            assert!(start(Some("papervisor-rtas")).validate(n).is_err());
            assert!(start(Some("/a\0b")).validate(n).is_err());
            let long = format!("/{}", "x".repeat(MAX_PROGRAM_PATH));
            assert!(start(Some(&long)).validate(n).is_err());
        }
        let zero = SpawnRequest::Start {
            kind: ProcessKind::EventLog,
            generation: 0,
            resume: false,
            upgrade: None,
        };
        assert!(zero
            .validate(descriptors_of(ProcessKind::EventLog))
            .is_err());
    }

    #[test]
    fn kills_reapers_replies_and_events_carry_what_they_must() {
        let kill = SpawnRequest::Kill(Started::Reaper { generation: 1 });
        assert_eq!(kill.validate(0), Ok(()));
        assert!(kill.validate(1).is_err());
        let reaper = SpawnRequest::StartReaper { generation: 2 };
        assert_eq!(reaper.validate(1), Ok(()));
        assert!(reaper.validate(0).is_err());
        assert_eq!(SpawnReply::Started { pid: 7 }.validate(1), Ok(()));
        assert!(SpawnReply::Started { pid: 7 }.validate(0).is_err());
        assert!(SpawnReply::Started { pid: 0 }.validate(1).is_err());
        assert!(SpawnReply::Refused("x".repeat(MAX_TEXT + 1))
            .validate(0)
            .is_err());
        let exited = |how: String| SpawnEvent::Exited {
            process: Started::Device {
                kind: ProcessKind::RtasServer,
                generation: 3,
            },
            how,
        };
        assert_eq!(exited("killed by SIGKILL".into()).validate(0), Ok(()));
        assert!(exited("x".repeat(MAX_TEXT + 1)).validate(0).is_err());
        assert!(exited("x".into()).validate(1).is_err());
    }
}
