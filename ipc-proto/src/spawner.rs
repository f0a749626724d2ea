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
    /// The block device process of one disk (`serial`: which disk of the
    /// VM, never reused).
    Block {
        /// Which disk.
        serial: u64,
    },
}

/// What the core asks of its spawner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpawnRequest {
    /// Start device processes together (the VM's boot, processes that
    /// died together: their jails are set up at once), at most one of each
    /// kind, in increasing generations. The descriptors that come with the
    /// request are each one's in turn: its links in the order of
    /// [`ProcessKind::links`], then its extra descriptors.
    Start(Vec<DeviceStart>),
    /// Start the VM's reaper on the one descriptor that comes with the
    /// request (its end of the core's socket).
    StartReaper {
        /// A generation greater than any reaper the spawner started.
        generation: u64,
    },
    /// Start the block device process of a disk on the two descriptors
    /// that come with the request: its listening vhost-user socket, then
    /// its image.
    StartBlock(BlockStart),
    /// SIGKILL a process this spawner started (nothing if it ended).
    Kill(Started),
}

/// The block device process of a [`SpawnRequest::StartBlock`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockStart {
    /// Which disk: greater than any the spawner started.
    pub serial: u64,
    /// The block node's name, which get-id answers.
    pub node: String,
    /// Writes fail.
    pub read_only: bool,
    /// The binary to run instead of the block program beside the spawner
    /// (x-upgrade-device-process), as a device's upgrade names it.
    pub program: Option<String>,
}

/// The descriptors a block device process is started with: its listening
/// vhost-user socket, its image.
pub const BLOCK_DESCRIPTORS: usize = 2;
/// The longest node name a block start carries.
pub const MAX_NODE_NAME: usize = 31;

impl BlockStart {
    fn validate(&self, fds: usize) -> Result<(), String> {
        if self.serial == 0 {
            return Err("disk serial 0".into());
        }
        let name_ok = !self.node.is_empty()
            && self.node.len() <= MAX_NODE_NAME
            && self
                .node
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
        if !name_ok {
            return Err(format!(
                "a block node name of {} bytes or odd characters",
                self.node.len()
            ));
        }
        validate_program(self.program.as_deref())?;
        match fds {
            BLOCK_DESCRIPTORS => Ok(()),
            n => Err(format!(
                "{n} descriptors with a block start, not {BLOCK_DESCRIPTORS}"
            )),
        }
    }
}

/// One device process of a [`SpawnRequest::Start`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStart {
    /// The kind.
    pub kind: ProcessKind,
    /// A generation greater than any the spawner started.
    pub generation: u64,
    /// Its state region was formatted by an earlier incarnation: resume it.
    pub resume: bool,
    /// The binary to run instead of the kind's own
    /// (x-upgrade-device-process), by absolute path, which the spawner
    /// checks too.
    pub upgrade: Option<String>,
}

/// The spawner's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpawnReply {
    /// The reaper runs as `pid`; a pidfd of it comes with the reply.
    Started {
        /// Its pid (in the core's namespace).
        pid: u32,
    },
    /// What became of each device process of a start, in order: its pid
    /// (a pidfd of each that runs comes with the reply, in order), or why
    /// it did not start.
    Devices(Vec<Result<u32, String>>),
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

/// An upgrade's program: an absolute path of at most [`MAX_PROGRAM_PATH`]
/// bytes, if any.
fn validate_program(program: Option<&str>) -> Result<(), String> {
    match program {
        Some(path) if path.len() > MAX_PROGRAM_PATH => {
            Err(format!("a program path of {} bytes", path.len()))
        }
        Some(path) if !path.starts_with('/') || path.contains('\0') => {
            Err("a program path that is not absolute".into())
        }
        _ => Ok(()),
    }
}

/// A start: one to three device processes of distinct kinds, generations
/// increasing from 1, each with its kind's descriptors, and any program
/// named by an absolute path of at most [`MAX_PROGRAM_PATH`] bytes.
fn validate_start(devices: &[DeviceStart], fds: usize) -> Result<(), String> {
    if devices.is_empty() || devices.len() > ProcessKind::ALL.len() {
        return Err(format!("a start of {} device processes", devices.len()));
    }
    let mut previous = 0;
    for (i, device) in devices.iter().enumerate() {
        if device.generation <= previous {
            return Err(format!(
                "generation {} after {previous} in a start",
                device.generation
            ));
        }
        previous = device.generation;
        if devices[..i].iter().any(|other| other.kind == device.kind) {
            return Err(format!("two of the {} in one start", device.kind.name()));
        }
        validate_program(device.upgrade.as_deref())?;
    }
    let wanted: usize = devices
        .iter()
        .map(|device| descriptors_of(device.kind))
        .sum();
    match fds == wanted {
        true => Ok(()),
        false => Err(format!(
            "{fds} descriptors for a start whose processes take {wanted}"
        )),
    }
}

impl Message for SpawnRequest {
    fn validate(&self, fds: usize) -> Result<(), String> {
        match self {
            SpawnRequest::Start(devices) => validate_start(devices, fds),
            SpawnRequest::StartReaper { generation } => match (generation, fds) {
                (0, _) => Err("generation 0".into()),
                (_, 1) => Ok(()),
                (_, n) => Err(format!("{n} descriptors with the reaper's start, not 1")),
            },
            SpawnRequest::StartBlock(block) => block.validate(fds),
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
            SpawnReply::Devices(outcomes) => {
                if outcomes.is_empty() || outcomes.len() > ProcessKind::ALL.len() {
                    return Err(format!("{} outcomes of a start", outcomes.len()));
                }
                let mut running = 0;
                for outcome in outcomes {
                    match outcome {
                        Ok(0) => return Err("pid 0".into()),
                        Ok(_) => running += 1,
                        Err(why) if why.len() > MAX_TEXT => {
                            return Err(format!("a reason of {} bytes", why.len()))
                        }
                        Err(_) => {}
                    }
                }
                match fds == running {
                    true => Ok(()),
                    false => Err(format!(
                        "{fds} descriptors with {running} started processes, not a pidfd each"
                    )),
                }
            }
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

    fn device(kind: ProcessKind, generation: u64, upgrade: Option<&str>) -> DeviceStart {
        DeviceStart {
            kind,
            generation,
            resume: false,
            upgrade: upgrade.map(String::from),
        }
    }

    #[test]
    fn a_start_takes_exactly_the_kinds_descriptors_and_an_absolute_program() {
        for kind in ProcessKind::ALL {
            let start = |upgrade: Option<&str>| SpawnRequest::Start(vec![device(kind, 4, upgrade)]);
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
        let zero = SpawnRequest::Start(vec![device(ProcessKind::EventLog, 0, None)]);
        assert!(zero
            .validate(descriptors_of(ProcessKind::EventLog))
            .is_err());
    }

    #[test]
    fn a_group_start_names_each_kind_once_in_increasing_generations() {
        let all: usize = ProcessKind::ALL.into_iter().map(descriptors_of).sum();
        let group = |generations: [u64; 3], kinds: [ProcessKind; 3]| {
            SpawnRequest::Start(
                kinds
                    .into_iter()
                    .zip(generations)
                    .map(|(kind, generation)| device(kind, generation, None))
                    .collect(),
            )
        };
        assert_eq!(group([1, 2, 3], ProcessKind::ALL).validate(all), Ok(()));
        assert!(group([1, 2, 3], ProcessKind::ALL)
            .validate(all - 1)
            .is_err());
        assert!(group([2, 1, 3], ProcessKind::ALL).validate(all).is_err());
        assert!(group([1, 1, 3], ProcessKind::ALL).validate(all).is_err());
        let [rtas, _, log] = ProcessKind::ALL;
        let twice = [rtas, rtas, log];
        let twice_fds: usize = twice.into_iter().map(descriptors_of).sum();
        assert!(group([1, 2, 3], twice).validate(twice_fds).is_err());
        assert!(SpawnRequest::Start(vec![]).validate(0).is_err());
    }

    #[test]
    fn a_block_start_takes_a_socket_and_an_image_and_a_plain_name() {
        let start_of = |serial: u64, node: &str, program: Option<&str>| {
            SpawnRequest::StartBlock(BlockStart {
                serial,
                node: node.into(),
                read_only: false,
                program: program.map(str::to_string),
            })
        };
        let start = |serial: u64, node: &str| start_of(serial, node, None);
        let upgraded = start_of(1, "disk0", Some("/opt/pv/papervisor-block"));
        assert_eq!(upgraded.validate(2), Ok(()));
        assert!(start_of(1, "disk0", Some("papervisor-block"))
            .validate(2)
            .is_err());
        let long = format!("/{}", "p".repeat(MAX_PROGRAM_PATH));
        assert!(start_of(1, "disk0", Some(&long)).validate(2).is_err());
        assert_eq!(start(1, "disk0").validate(2), Ok(()));
        assert!(start(1, "disk0").validate(1).is_err());
        assert!(start(1, "disk0").validate(3).is_err());
        assert!(start(0, "disk0").validate(2).is_err());
        assert!(start(1, "").validate(2).is_err());
        assert!(start(1, "../etc").validate(2).is_err());
        assert!(start(1, &"d".repeat(32)).validate(2).is_err());
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
        let devices = SpawnReply::Devices(vec![Ok(7), Err("no jail".into()), Ok(9)]);
        assert_eq!(devices.validate(2), Ok(()));
        assert!(devices.validate(3).is_err());
        assert!(SpawnReply::Devices(vec![Ok(0)]).validate(1).is_err());
        assert!(SpawnReply::Devices(vec![]).validate(0).is_err());
        assert!(SpawnReply::Devices(vec![Ok(1); 4]).validate(4).is_err());
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
