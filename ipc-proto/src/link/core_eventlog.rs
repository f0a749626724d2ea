//! Core → event log: reset and queries.

use super::hotplug_eventlog::HotplugEvent;
use crate::channel::no_descriptors;
use crate::protocol::{link_protocol, Message};
use serde::{Deserialize, Serialize};

link_protocol! {
    /// The link's protocol.
    CoreEventLog: CoreEventLog, Request => Reply
}

/// The most events the queue holds.
pub const MAX_QUEUED_EVENTS: usize = 4096;

/// The size of the event log's state region: the core creates it, the event
/// log lays it out (and refuses one too small for its layout).
pub const STATE_REGION_BYTES: u64 = 4 << 20;

/// Core → event log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, strum::VariantNames)]
pub enum Request {
    /// Machine reset: the queue is emptied; acknowledged.
    Reset,
    /// The power button: an EPOW event asking the guest for an orderly
    /// power-off, on the EPOW interrupt; acknowledged.
    PowerDown,
    /// What is queued.
    List,
}

/// One event waiting in the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueuedEvent {
    /// A hot-plug event.
    Hotplug(HotplugEvent),
    /// An EPOW power-off request (the power button).
    PowerDown,
}

/// Event log → core, for [`Request::List`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// The queued events, oldest first.
    Queued(Vec<QueuedEvent>),
}

impl Message for Request {
    fn validate(&self, fds: usize) -> Result<(), String> {
        no_descriptors(fds, "an event-log request")
    }
}

impl Message for Reply {
    fn validate(&self, _: usize) -> Result<(), String> {
        match self {
            Reply::Queued(events) if events.len() > MAX_QUEUED_EVENTS => {
                Err(format!("{} queued events", events.len()))
            }
            Reply::Queued(_) => Ok(()),
        }
    }
}
