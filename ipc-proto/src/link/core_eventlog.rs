//! Core → event log: reset and queries.

use super::hotplug_eventlog::HotplugEvent;
use crate::protocol::{Message, Protocol};
use crate::Link;
use serde::{Deserialize, Serialize};

/// The link's protocol.
pub struct CoreEventLog;

impl Protocol for CoreEventLog {
    const LINK: Link = Link::CoreEventLog;
    type Request = Request;
    type Reply = Reply;
}

/// The most events the queue holds.
pub const MAX_QUEUED_EVENTS: usize = 4096;

/// Core → event log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Machine reset: the queue is emptied; acknowledged.
    Reset,
    /// What is queued.
    List,
}

/// Event log → core, for [`Request::List`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// The queued events, oldest first.
    Queued(Vec<HotplugEvent>),
}

impl Message for Request {
    fn validate(&self, fds: usize) -> Result<(), String> {
        match fds {
            0 => Ok(()),
            _ => Err(format!("{fds} descriptors with an event-log request")),
        }
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
