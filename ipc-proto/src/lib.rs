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
pub mod papr;
pub mod rtas;

/// Bumped whenever a message changes shape; both ends must agree.
pub const PROTOCOL_VERSION: u32 = 1;

/// Which device process is at the other end of a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ProcessKind {
    /// Serves RTAS calls; the only device process that maps guest memory.
    RtasServer,
}

impl ProcessKind {
    /// A short name for logs and QMP.
    pub const fn name(self) -> &'static str {
        match self {
            ProcessKind::RtasServer => "rtas-server",
        }
    }
}
