//! The control sub-protocol every link shares, and the wire shape of every
//! request and reply.
//!
//! A requester sends [`Request`]s: either a request of the link's own
//! protocol, or a [`ControlRequest`] that every process understands the same
//! way (re-link, fault arming). A server answers each with one [`Reply`]:
//! the link's reply, an acknowledgement, or a [`Refusal`] with a typed
//! reason; and, beside it, the peer it needed and found silent, so that the
//! supervisor acts on that peer instead of the messenger. Each side handles
//! the control part in one place (the device processes' serving loop, the
//! core's proxy).

use crate::{Link, ProcessKind};
use serde::{Deserialize, Serialize};

/// The longest free text (a reason, an outcome) a message may carry.
pub const MAX_TEXT: usize = 512;

/// A misbehaviour a device process is told to commit, to prove its jail
/// (`x-inject-fault`). Only builds with the `fault-injection` feature commit
/// one; others refuse with [`Refusal::FaultInjectionNotBuilt`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fault {
    /// open("/etc/passwd").
    OpenHostFile,
    /// socket(AF_INET, SOCK_STREAM).
    OpenSocket,
    /// fork().
    Fork,
    /// execve("/bin/sh").
    Exec,
    /// write(2) to a descriptor that is neither a link nor the log (stdin).
    WriteOtherFd,
    /// Stops answering (the core must cut it off).
    Hang,
    /// Sends random and truncated frames on every link to the core, then
    /// goes on serving (the core must survive and cut it off).
    Garbage,
    /// Sends the core and its peers well-formed but wrong messages (unknown
    /// DRCs and devices, releases nobody asked for, replies to ids never
    /// asked, huge counts, floods), and answers the RTAS calls that follow
    /// with machine requests they did not make; then goes on serving. The
    /// receivers must reject every lie and stay consistent.
    Lie,
    /// Panics, as a bug would: the message must reach the log and the
    /// supervisor must restart the process.
    Panic,
    /// The state region fails to record the next transition, as a damaged
    /// region would: the device (process or thread) ends, and nothing else.
    LoseState,
}

impl Fault {
    /// The QMP names.
    pub const ALL: [(&'static str, Fault); 10] = [
        ("open-host-file", Fault::OpenHostFile),
        ("open-socket", Fault::OpenSocket),
        ("fork", Fault::Fork),
        ("exec", Fault::Exec),
        ("write-other-fd", Fault::WriteOtherFd),
        ("hang", Fault::Hang),
        ("garbage", Fault::Garbage),
        ("lie", Fault::Lie),
        ("panic", Fault::Panic),
        ("lose-state", Fault::LoseState),
    ];
}

/// Where an armed fault fires: the steps every request passes, in order.
/// A device process passes [`FaultPoint::Received`] and
/// [`FaultPoint::Replying`] for every request; [`FaultPoint::Committed`]
/// when a transition reached its state region (hotplug controller, event
/// log); [`FaultPoint::Delivered`] when the hotplug controller handed on
/// what a transition owed others; [`FaultPoint::PeerAnswered`] when a peer
/// answered the RTAS server. The core passes [`FaultPoint::CoreSending`] and
/// [`FaultPoint::CoreReceived`] at its end of each link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FaultPoint {
    /// Decoded and validated, before anything is applied.
    Received,
    /// The transition is committed, before anything else.
    Committed,
    /// What the transition owed the core and the event log was delivered,
    /// before the reply.
    Delivered,
    /// A peer answered, before the guest's return cells are written.
    PeerAnswered,
    /// The answer is ready, before it is sent.
    Replying,
    /// The core is about to send a request.
    CoreSending,
    /// The core received the answer, before it acts on it.
    CoreReceived,
}

impl FaultPoint {
    /// The QMP names.
    pub const ALL: [(&'static str, FaultPoint); 7] = [
        ("received", FaultPoint::Received),
        ("committed", FaultPoint::Committed),
        ("delivered", FaultPoint::Delivered),
        ("peer-answered", FaultPoint::PeerAnswered),
        ("replying", FaultPoint::Replying),
        ("core-sending", FaultPoint::CoreSending),
        ("core-received", FaultPoint::CoreReceived),
    ];

    /// The core's own points.
    pub const fn at_core(self) -> bool {
        matches!(self, FaultPoint::CoreSending | FaultPoint::CoreReceived)
    }
}

/// What an armed fault does when it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FaultAction {
    /// The process ends on the spot, as if SIGKILLed (not for the core).
    Crash,
    /// The process stops answering (not for the core).
    Hang,
    /// [`FAULT_DELAY_MS`] of nothing, then on as usual.
    Delay,
    /// The request's answer is never sent (at the core: never seen).
    DropReply,
    /// The request's answer is sent as garbage (at the core: read as such).
    CorruptReply,
    /// The link the request came on is closed.
    CloseLink,
}

/// How long [`FaultAction::Delay`] waits: less than every link's timeout.
pub const FAULT_DELAY_MS: u64 = 300;

impl FaultAction {
    /// The QMP names.
    pub const ALL: [(&'static str, FaultAction); 6] = [
        ("crash", FaultAction::Crash),
        ("hang", FaultAction::Hang),
        ("delay", FaultAction::Delay),
        ("drop-reply", FaultAction::DropReply),
        ("corrupt-reply", FaultAction::CorruptReply),
        ("close-link", FaultAction::CloseLink),
    ];
}

/// The longest request name an armed fault may be limited to.
pub const MAX_FAULT_REQUEST_NAME: usize = 64;

/// A fault armed at a point: it fires once, at the first request that
/// passes `point` (and whose name, when given, is `request`, e.g.
/// `SetIndicator`), then disarms.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArmedFault {
    /// Where.
    pub point: FaultPoint,
    /// What.
    pub action: FaultAction,
    /// Only for requests of this name.
    pub request: Option<String>,
}

impl ArmedFault {
    /// Whether the fault fires at `point` for a request named `name`.
    pub fn fires(&self, point: FaultPoint, name: &str) -> bool {
        self.point == point && self.request.as_deref().is_none_or(|wanted| wanted == name)
    }
}

/// A fault armed at a point, and how often it fired there (it fires
/// once: 0 while it waits, 1 once spent); kept, spent, until cleared or
/// replaced, so that a test can tell a fault that fired from one that
/// never met its request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultRecord {
    /// The fault as armed.
    pub fault: ArmedFault,
    /// How often it fired.
    pub fired: u32,
}

/// A committed fault whose effect is still to come (`lie`: the next RTAS
/// calls are answered with lies; `lose-state`: the next transition is not
/// recorded), and how many times more it will act.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingFault {
    /// The fault as committed.
    pub fault: Fault,
    /// Acts this many times more.
    pub left: u32,
}

/// The pending faults one reply lists, at most: one per kind of fault.
pub const MAX_PENDING_FAULTS: usize = Fault::ALL.len();

/// The records a device process's trace ring keeps, at most.
pub const TRACE_RING_RECORDS: usize = 256;
/// The records one reply to [`ControlRequest::TakeTrace`] carries, at most
/// (the rest wait in the process's ring for the next).
pub const MAX_TRACE_RECORDS: usize = 32;
/// The fields of one trace record, at most.
pub const MAX_TRACE_FIELDS: usize = 6;
/// The trace's points, by name: where each is recorded names it by its
/// constant, and `--trace-filter` takes only patterns that one contains.
pub mod trace_point {
    /// A guest's RTAS call, in the core.
    pub const RTAS_CALL: &str = "rtas-call";
    /// A hot-plug request of the machine to the controller.
    pub const HOTPLUG_REQUEST: &str = "hotplug-request";
    /// A notification of the controller to the machine.
    pub const HOTPLUG_NOTIFICATION: &str = "hotplug-notification";
    /// A device process's exit.
    pub const DEVICE_EXIT: &str = "device-exit";
    /// A device process's restart.
    pub const DEVICE_RESTART: &str = "device-restart";
    /// A QMP event sent.
    pub const QMP_EVENT: &str = "qmp-event";
    /// A DRC's state change, in the hotplug controller.
    pub const DRC_TRANSITION: &str = "drc-transition";
    /// An event queued for the guest, in the event log.
    pub const EVENT_QUEUED: &str = "event-queued";
    /// An event taken back from the queue, in the event log.
    pub const EVENT_WITHDRAWN: &str = "event-withdrawn";
    /// An event the guest fetched, in the event log.
    pub const EVENT_FETCHED: &str = "event-fetched";
    /// A request of one device process to another.
    pub const PEER_REQUEST: &str = "peer-request";
    /// Every point.
    pub const ALL: [&str; 11] = [
        RTAS_CALL,
        HOTPLUG_REQUEST,
        HOTPLUG_NOTIFICATION,
        DEVICE_EXIT,
        DEVICE_RESTART,
        QMP_EVENT,
        DRC_TRANSITION,
        EVENT_QUEUED,
        EVENT_WITHDRAWN,
        EVENT_FETCHED,
        PEER_REQUEST,
    ];
}

/// The longest trace point name or field name.
pub const MAX_TRACE_NAME: usize = 24;
/// The longest trace field value.
pub const MAX_TRACE_VALUE: usize = 64;

/// One record of a device process's trace: a named point (a DRC
/// transition, an event queued or fetched) with its fields, as text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceRecord {
    /// When, in microseconds since the Unix epoch.
    pub us: u64,
    /// The point, e.g. `drc-transition`.
    pub point: String,
    /// Its fields, by name.
    pub fields: Vec<(String, String)>,
}

impl TraceRecord {
    /// Checks a record from a peer: every part bounded.
    pub fn validate(&self) -> Result<(), String> {
        let name = |what: &str, text: &str| match text.len() > MAX_TRACE_NAME || text.is_empty() {
            true => Err(format!("a trace {what} of {} bytes", text.len())),
            false => Ok(()),
        };
        name("point", &self.point)?;
        if self.fields.len() > MAX_TRACE_FIELDS {
            return Err(format!("a trace record of {} fields", self.fields.len()));
        }
        for (field, value) in &self.fields {
            name("field", field)?;
            if value.len() > MAX_TRACE_VALUE {
                return Err(format!("a trace value of {} bytes", value.len()));
            }
        }
        Ok(())
    }
}

/// The variant name of a request, as an armed fault names it.
pub fn request_name(request: &impl std::fmt::Debug) -> String {
    let text = format!("{request:?}");
    text.split([' ', '(', '{'])
        .next()
        .unwrap_or_default()
        .to_string()
}

/// What every device process understands, on any link it serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlRequest {
    /// A peer was restarted: the one descriptor sent along is the new channel
    /// of `link`, to handshake on and use instead of the old one.
    ReplaceLink(Link),
    /// Commit `Fault`; answered only if the process lived.
    ArmFault(Fault),
    /// Arm a fault at a point; acknowledged.
    ArmFaultPoint(ArmedFault),
    /// The fault armed at a point, and whether it fired
    /// ([`ControlReply::Faults`]).
    QueryFaults,
    /// Disarm and forget the fault armed at a point; acknowledged.
    ClearFaults,
    /// Hand over the oldest records of the process's trace ring
    /// ([`ControlReply::Trace`]); they leave the ring.
    TakeTrace,
}

/// The answers to a [`ControlRequest`] besides an acknowledgement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlReply {
    /// The fault was committed and the process lived: what happened.
    FaultSurvived {
        /// The outcome, e.g. the error the attempt got.
        outcome: String,
    },
    /// The faults of a process still to act or to be cleared.
    Faults {
        /// The fault armed at a point, if any (fired or not).
        armed: Option<FaultRecord>,
        /// Committed faults whose effect is still to come; at most
        /// [`MAX_PENDING_FAULTS`].
        pending: Vec<PendingFault>,
    },
    /// Trace records, oldest first, and how many the ring dropped (it was
    /// full) since the last such reply.
    Trace {
        /// At most [`MAX_TRACE_RECORDS`].
        records: Vec<TraceRecord>,
        /// Records lost to a full ring.
        dropped: u64,
        /// More records wait in the ring.
        more: bool,
    },
}

/// Why a request was not carried out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// The frame did not decode as a request of the link.
    Malformed {
        /// What the decoder said.
        reason: String,
    },
    /// The request decoded but a field is out of range.
    Invalid {
        /// Which field, and why.
        reason: String,
    },
    /// The request is valid but cannot be carried out now (a DRC in use, a
    /// device already plugged, ...).
    Rejected {
        /// Why, for the management client.
        reason: String,
    },
    /// A re-link that failed: the link is not this process's, or the new
    /// peer did not complete the handshake.
    Relink {
        /// The link.
        link: Link,
        /// What went wrong.
        reason: String,
    },
    /// This build of the process has no fault injection.
    FaultInjectionNotBuilt,
    /// The process is not set up yet: the request did not run; ask again.
    NotReady,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Malformed { reason } => write!(f, "malformed request: {reason}"),
            Refusal::Invalid { reason } => write!(f, "invalid request: {reason}"),
            Refusal::Rejected { reason } => f.write_str(reason),
            Refusal::Relink { link, reason } => write!(f, "cannot re-link {link:?}: {reason}"),
            Refusal::FaultInjectionNotBuilt => {
                f.write_str("this build has no fault injection (feature fault-injection)")
            }
            Refusal::NotReady => f.write_str("not set up yet; the request did not run"),
        }
    }
}

impl Refusal {
    fn text(&self) -> Option<&str> {
        match self {
            Refusal::Malformed { reason }
            | Refusal::Invalid { reason }
            | Refusal::Rejected { reason }
            | Refusal::Relink { reason, .. } => Some(reason),
            Refusal::FaultInjectionNotBuilt | Refusal::NotReady => None,
        }
    }
}

/// What a requester sends: the link's own request, or a control request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request<R> {
    /// Shared by every link.
    Control(ControlRequest),
    /// The link's own.
    Link(R),
}

/// What a server answers to one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer<R> {
    /// Done; nothing to report.
    Ack,
    /// The link's own reply.
    Link(R),
    /// The answer to a control request.
    Control(ControlReply),
    /// Not done, and why.
    Refused(Refusal),
}

/// One reply: the answer, and the peer this process needed for it and found
/// silent, dead or misbehaving (it stopped using it until the core hands it
/// a new one). The supervisor acts on that peer, never on the messenger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply<R> {
    /// The answer.
    pub answer: Answer<R>,
    /// A peer that failed this process while it answered.
    pub peer_failed: Option<ProcessKind>,
}

impl<R> Reply<R> {
    /// A reply that blames nobody.
    pub fn new(answer: Answer<R>) -> Reply<R> {
        Reply {
            answer,
            peer_failed: None,
        }
    }
}

/// `text` cut to at most `max` bytes, at a character boundary: what a
/// sender does to free text so that it fits what a message carries.
pub fn cut_text(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Checks free text from a peer: bounded, so it cannot flood a log line.
pub fn check_text(what: &str, text: &str) -> Result<(), String> {
    if text.len() > MAX_TEXT {
        return Err(format!("{what} of {} bytes", text.len()));
    }
    Ok(())
}

impl ControlRequest {
    /// Checks the request against the descriptors that came with it.
    pub fn validate(&self, fds: usize) -> Result<(), String> {
        match self {
            ControlRequest::ReplaceLink(link) => {
                if link.touches_core() {
                    return Err(format!("{link:?} is the core's, not a link to replace"));
                }
                if fds != 1 {
                    return Err(format!("re-link of {link:?} with {fds} descriptors"));
                }
            }
            ControlRequest::ArmFault(_) => crate::channel::no_descriptors(fds, "a fault")?,
            ControlRequest::ArmFaultPoint(armed) => {
                crate::channel::no_descriptors(fds, "a fault")?;
                if armed
                    .request
                    .as_ref()
                    .is_some_and(|name| name.len() > MAX_FAULT_REQUEST_NAME)
                {
                    return Err("a fault's request name is too long".into());
                }
                if armed.point.at_core() {
                    return Err(format!("{:?} is the core's", armed.point));
                }
            }
            ControlRequest::QueryFaults | ControlRequest::ClearFaults => {
                crate::channel::no_descriptors(fds, "a fault query")?
            }
            ControlRequest::TakeTrace => crate::channel::no_descriptors(fds, "a trace query")?,
        }
        Ok(())
    }
}

impl<R> Answer<R> {
    /// Checks the parts every link shares; `link` checks the link's own reply.
    pub fn validate(&self, link: impl FnOnce(&R) -> Result<(), String>) -> Result<(), String> {
        match self {
            Answer::Ack => Ok(()),
            Answer::Link(reply) => link(reply),
            Answer::Control(ControlReply::FaultSurvived { outcome }) => {
                check_text("fault outcome", outcome)
            }
            Answer::Control(ControlReply::Faults { armed, pending }) => {
                if pending.len() > MAX_PENDING_FAULTS {
                    return Err(format!("{} pending faults", pending.len()));
                }
                match armed {
                    Some(record)
                        if record
                            .fault
                            .request
                            .as_ref()
                            .is_some_and(|name| name.len() > MAX_FAULT_REQUEST_NAME) =>
                    {
                        Err("a fault's request name is too long".into())
                    }
                    _ => Ok(()),
                }
            }
            Answer::Control(ControlReply::Trace { records, .. }) => {
                if records.len() > MAX_TRACE_RECORDS {
                    return Err(format!("{} trace records in one reply", records.len()));
                }
                records.iter().try_for_each(TraceRecord::validate)
            }
            Answer::Refused(refusal) => refusal
                .text()
                .map_or(Ok(()), |text| check_text("refusal reason", text)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relinks_carry_one_descriptor_and_never_name_a_core_link() {
        let relink = ControlRequest::ReplaceLink(Link::RtasHotplug);
        assert!(relink.validate(1).is_ok());
        assert!(relink.validate(0).is_err());
        assert!(ControlRequest::ReplaceLink(Link::CoreRtas)
            .validate(1)
            .is_err());
        assert!(ControlRequest::ReplaceLink(Link::HotplugNotify)
            .validate(1)
            .is_err());
        assert!(ControlRequest::ArmFault(Fault::Hang).validate(1).is_err());
    }

    #[test]
    fn free_text_from_a_peer_is_bounded() {
        let long = Answer::<()>::Refused(Refusal::Rejected {
            reason: "x".repeat(MAX_TEXT + 1),
        });
        assert!(long.validate(|_| Ok(())).is_err());
        let survived = Answer::<()>::Control(ControlReply::FaultSurvived {
            outcome: "open failed".into(),
        });
        assert!(survived.validate(|_| Ok(())).is_ok());
        assert!(Answer::Link(5)
            .validate(|v| if *v == 5 { Err("no".into()) } else { Ok(()) })
            .is_err());
    }

    #[test]
    fn a_fault_list_from_a_peer_is_bounded() {
        let faults = |pending: usize| {
            Answer::<()>::Control(ControlReply::Faults {
                armed: None,
                pending: vec![
                    PendingFault {
                        fault: Fault::Lie,
                        left: 3,
                    };
                    pending
                ],
            })
            .validate(|_| Ok(()))
        };
        assert!(faults(1).is_ok());
        assert!(faults(MAX_PENDING_FAULTS).is_ok());
        assert!(faults(MAX_PENDING_FAULTS + 1).is_err());
    }

    #[test]
    fn text_is_cut_at_a_character_boundary() {
        assert_eq!(cut_text("abc", 2), "ab");
        assert_eq!(cut_text("abc", 8), "abc");
        // 'é' is two bytes: three bytes hold one of them.
        assert_eq!(cut_text("ééé", 3), "é");
    }

    #[test]
    fn trace_records_from_a_peer_are_bounded() {
        let record = |point: &str, value: &str| TraceRecord {
            us: 1,
            point: point.into(),
            fields: vec![("drc".into(), value.into())],
        };
        let trace = |records: Vec<TraceRecord>| {
            Answer::<()>::Control(ControlReply::Trace {
                records,
                dropped: 0,
                more: false,
            })
            .validate(|_| Ok(()))
        };
        assert!(trace(vec![record("drc-transition", "0x10000000")]).is_ok());
        assert!(trace(vec![record("", "x")]).is_err());
        assert!(trace(vec![record(&"p".repeat(MAX_TRACE_NAME + 1), "x")]).is_err());
        assert!(trace(vec![record("p", &"v".repeat(MAX_TRACE_VALUE + 1))]).is_err());
        assert!(trace(vec![record("p", "v"); MAX_TRACE_RECORDS + 1]).is_err());
        let many_fields = TraceRecord {
            fields: vec![("f".into(), "v".into()); MAX_TRACE_FIELDS + 1],
            ..record("p", "v")
        };
        assert!(trace(vec![many_fields]).is_err());
        assert!(ControlRequest::TakeTrace.validate(1).is_err());
        assert!(ControlRequest::QueryFaults.validate(0).is_ok());
    }
}
