//! The contract between Papervisor's processes.
//!
//! - [`channel`]: the transport — one bincode message per SOCK_SEQPACKET
//!   packet, inside an [`Envelope`](channel::Envelope) with a request id, file
//!   descriptors beside it, total decoding with size limits.
//! - [`protocol`]: what a link is — its request and reply types, their
//!   validation, and a [`Client`](protocol::Client) that can send only that
//!   link's requests and gets only its replies.
//! - [`control`]: the sub-protocol every link shares: handshake, re-link,
//!   fault arming, acknowledgement, refusal with a typed reason.
//! - [`link`]: one module per link, with its messages.
//! - [`papr`]: the platform vocabulary every process shares (DRC indices and
//!   states, RTAS tokens and statuses, indicators, interrupt sources).
//!
//! This crate depends on no other crate of Papervisor's.
#![deny(missing_docs)]

pub mod channel;
pub mod control;
pub mod hello;
pub mod link;
pub mod papr;
pub mod pci;
pub mod protocol;
pub mod spawner;

use std::time::Duration;

/// Bumped whenever a message changes shape; both ends must agree.
pub const PROTOCOL_VERSION: u32 = 2;

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

    /// How many descriptors a process of this kind is started with after
    /// its links: the event log its two interrupt eventfds (hot-plug, EPOW)
    /// and its state region's memfd, the hotplug controller its state
    /// region's memfd.
    pub const fn extra_descriptors(self) -> usize {
        match self {
            ProcessKind::RtasServer => 0,
            ProcessKind::HotplugController => 1,
            ProcessKind::EventLog => 3,
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

/// Device processes find their channels from this descriptor number on, in
/// the order of [`ProcessKind::links`]; extra descriptors (the event log's
/// interrupt eventfd) follow them.
pub const FIRST_CHANNEL_FD: i32 = 3;

/// One channel between two processes; both ends name it in their handshake.
/// The first process named sends the requests.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
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

impl Link {
    /// Every link.
    pub const ALL: [Link; 7] = [
        Link::CoreRtas,
        Link::CoreHotplug,
        Link::HotplugNotify,
        Link::RtasHotplug,
        Link::HotplugEventLog,
        Link::RtasEventLog,
        Link::CoreEventLog,
    ];

    /// The device process that sends on this link; `None`: the core.
    pub const fn requester(self) -> Option<ProcessKind> {
        match self {
            Link::CoreRtas | Link::CoreHotplug | Link::CoreEventLog => None,
            Link::HotplugNotify | Link::HotplugEventLog => Some(ProcessKind::HotplugController),
            Link::RtasHotplug | Link::RtasEventLog => Some(ProcessKind::RtasServer),
        }
    }

    /// The device process that receives on this link; `None`: the core
    /// (only the notify link, which has no replies).
    pub const fn server(self) -> Option<ProcessKind> {
        match self {
            Link::CoreRtas => Some(ProcessKind::RtasServer),
            Link::CoreHotplug | Link::RtasHotplug => Some(ProcessKind::HotplugController),
            Link::CoreEventLog | Link::HotplugEventLog | Link::RtasEventLog => {
                Some(ProcessKind::EventLog)
            }
            Link::HotplugNotify => None,
        }
    }

    /// The process at the other end of this link from `kind`'s; `None`:
    /// the core.
    pub fn peer_of(self, kind: ProcessKind) -> Option<ProcessKind> {
        [self.requester(), self.server()]
            .into_iter()
            .flatten()
            .find(|&other| other != kind)
    }

    /// Whether the core holds one end.
    pub const fn touches_core(self) -> bool {
        self.requester().is_none() || self.server().is_none()
    }

    /// How long the requester waits for a reply before it gives up on the
    /// server. Timeouts nest: a process waits for its own peers for less
    /// time than its requester waits for it, so a timeout blames the process
    /// that is really silent, never the messenger (tested below).
    pub const fn reply_timeout(self) -> Duration {
        match self {
            // The event log asks nobody.
            Link::HotplugEventLog | Link::RtasEventLog => Duration::from_secs(1),
            // The controller may wait once for the event log.
            Link::RtasHotplug => Duration::from_secs(2),
            // The RTAS server may wait once for each of its peers.
            Link::CoreRtas | Link::CoreHotplug | Link::CoreEventLog | Link::HotplugNotify => {
                Duration::from_secs(5)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_process_has_the_links_that_name_it() {
        for link in Link::ALL {
            for kind in [link.requester(), link.server()].into_iter().flatten() {
                assert!(kind.links().contains(&link), "{kind:?} lacks {link:?}");
            }
        }
        for kind in ProcessKind::ALL {
            for link in kind.links() {
                assert!(link.requester() == Some(kind) || link.server() == Some(kind));
            }
            // The core's link comes first: it is the one whose hang-up ends the process.
            assert!(kind.links()[0].touches_core());
        }
    }

    #[test]
    fn a_links_peer_is_the_process_at_its_other_end() {
        let hotplug = ProcessKind::HotplugController;
        assert_eq!(
            Link::RtasHotplug.peer_of(hotplug),
            Some(ProcessKind::RtasServer)
        );
        assert_eq!(
            Link::RtasHotplug.peer_of(ProcessKind::RtasServer),
            Some(hotplug)
        );
        assert_eq!(
            Link::HotplugEventLog.peer_of(hotplug),
            Some(ProcessKind::EventLog)
        );
        // The core is no process.
        assert_eq!(Link::CoreHotplug.peer_of(hotplug), None);
        assert_eq!(Link::HotplugNotify.peer_of(hotplug), None);
    }

    #[test]
    fn timeouts_nest_so_that_the_silent_process_is_blamed() {
        for link in Link::ALL {
            let Some(server) = link.server() else {
                continue;
            };
            // Everything the server may wait for while it answers one request.
            let waits: Duration = Link::ALL
                .into_iter()
                .filter(|inner| inner.requester() == Some(server) && inner.server().is_some())
                .map(Link::reply_timeout)
                .sum();
            assert!(
                link.reply_timeout() > waits,
                "{link:?} waits {:?}, its server may wait {waits:?}",
                link.reply_timeout()
            );
        }
    }
}
