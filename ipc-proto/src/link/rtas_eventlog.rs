//! RTAS server → event log: check-exception and event-scan.

use crate::channel::no_descriptors;
use crate::protocol::{link_protocol, Message};
use serde::{Deserialize, Serialize};

link_protocol! {
    /// The link's protocol.
    RtasEventLog: RtasEventLog, Request => Reply
}

/// The largest event the log hands out (a v6 hot-plug event is 116 bytes).
pub const MAX_EVENT_BYTES: usize = 4096;

/// RTAS server → event log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, strum::VariantNames)]
pub enum Request {
    /// check-exception: the first event whose class is in `mask`, if it fits
    /// in `max_len` bytes (otherwise it stays queued).
    CheckException {
        /// Event class mask (PAPR: 0x1000_0000 hot-plug, 0x4000_0000 EPOW).
        mask: u32,
        /// The guest buffer's size.
        max_len: u32,
    },
    /// event-scan: re-pulses the interrupts of queued classes; acknowledged.
    EventScan {
        /// Event class mask.
        mask: u32,
    },
}

/// Event log → RTAS server, for check-exception.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
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

impl Message for Request {
    fn validate(&self, fds: usize) -> Result<(), String> {
        no_descriptors(fds, "an event request")
    }
}

impl Message for Reply {
    fn validate(&self, _: usize) -> Result<(), String> {
        match self {
            Reply::Event(bytes) if bytes.is_empty() || bytes.len() > MAX_EVENT_BYTES => {
                Err(format!("an event of {} bytes", bytes.len()))
            }
            _ => Ok(()),
        }
    }
}
