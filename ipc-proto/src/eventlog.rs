//! Messages to and from the event log, which owns the RTAS event queue.

use crate::papr::DrcIndex;
use serde::{Deserialize, Serialize};

/// What a hot-plug event asks of the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HotplugAction {
    /// Take the resource.
    Add,
    /// Give the resource back.
    Remove,
}

/// Which resources, in the PAPR identifier forms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HotplugTarget {
    /// One CPU core, by DRC index.
    CpuByIndex(DrcIndex),
    /// `count` LMBs from the DRC `first` (QEMU's DIMM form).
    LmbsCountIndexed {
        /// How many LMBs.
        count: u32,
        /// The first LMB's DRC.
        first: DrcIndex,
    },
}

/// One hot-plug event to queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HotplugEvent {
    /// Add or remove.
    pub action: HotplugAction,
    /// What.
    pub target: HotplugTarget,
}

/// Hotplug controller → event log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HotplugToEventLog {
    /// Queues the event unless the same one waits unconsumed; pulses the
    /// hot-plug interrupt either way.
    Queue(HotplugEvent),
    /// Drops the event if it waits unconsumed: the request it re-sent has
    /// been answered (the guest refused it), so the guest must not see it again.
    Withdraw(HotplugEvent),
}

/// Event log → hotplug controller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventLogToHotplug {
    /// The request did not decode or validate.
    Rejected {
        /// Why, for the log.
        reason: String,
    },
    /// Queued, or merged with the same event already waiting.
    Queued {
        /// The same event was already waiting: nothing was added.
        coalesced: bool,
    },
    /// The queue is full; the event was not queued.
    Full,
    /// Withdrawn (`true`) or not found.
    Withdrawn(bool),
}

/// RTAS server → event log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RtasToEventLog {
    /// check-exception: the first event whose class is in `mask`, if it fits
    /// in `max_len` bytes (otherwise it stays queued).
    CheckException {
        /// Event class mask (PAPR: 0x1000_0000 hot-plug, 0x4000_0000 EPOW).
        mask: u32,
        /// The guest buffer's size.
        max_len: u32,
    },
    /// event-scan: re-pulses the interrupts of queued classes.
    EventScan {
        /// Event class mask.
        mask: u32,
    },
}

/// Event log → RTAS server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventLogToRtas {
    /// The request did not decode or validate.
    Rejected {
        /// Why, for the log.
        reason: String,
    },
    /// The event's bytes, PAPR-encoded, for the guest buffer.
    Event(Vec<u8>),
    /// Nothing matches (RTAS status 1).
    NoEvent,
    /// The first matching event does not fit the buffer; it stays queued.
    BufferTooSmall {
        /// The event's length.
        needed: u32,
    },
}

/// Core → event log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoreToEventLog {
    /// A peer was restarted: the descriptor sent along is the new channel
    /// of `link`, to handshake on and use instead of the old one.
    ReplaceLink(crate::Link),
    /// Commit `Fault` (tests of the jail); answered only if it did not kill.
    InjectFault(crate::Fault),
    /// Machine reset: the queue is emptied.
    Reset,
    /// What is queued.
    List,
}

/// Event log → core.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventLogToCore {
    /// The fault was attempted and the process lived: what happened.
    FaultSurvived {
        /// The outcome, e.g. the error the attempt got.
        outcome: String,
    },
    /// The request did not decode or validate.
    Rejected {
        /// Why, for the log.
        reason: String,
    },
    /// Done.
    Done,
    /// The queued events, oldest first.
    Queued(Vec<HotplugEvent>),
}
