//! The event log's process: requests from the core, the hotplug controller and
//! the RTAS server; the hot-plug interrupt raised through the eventfd the core
//! registered with KVM as an irqfd.

use super::{Dequeued, EventQueue, Pulse};
use crate::clock::UtcTime;
use crate::process::{
    adopt, decode_request, decode_with_fds, open_links, reply, serve, take_fd, Server,
};
use ipc_proto::channel::{Channel, ChannelError, Frame};
use ipc_proto::eventlog::{
    CoreToEventLog, EventLogToCore, EventLogToHotplug, EventLogToRtas, HotplugToEventLog,
    RtasToEventLog,
};
use ipc_proto::{Link, ProcessKind, FIRST_CHANNEL_FD};
use std::fs::File;
use std::io::Write;

/// Runs the event log until the core hangs up.
pub fn run() -> Result<(), String> {
    let links = ProcessKind::EventLog.links();
    // SAFETY: the core passes the hot-plug interrupt's eventfd right after the
    // channels. Taken before the seccomp filter (which forbids fcntl) is on.
    let interrupt = File::from(unsafe { take_fd(FIRST_CHANNEL_FD + links.len() as i32)? });
    let mut channels = open_links(ProcessKind::EventLog)?.into_iter();
    let (Some(core), Some(hotplug), Some(rtas)) =
        (channels.next(), channels.next(), channels.next())
    else {
        return Err("missing channels".into());
    };
    log::info!("serving the event queue");
    let mut log = EventLog {
        queue: EventQueue::default(),
        interrupt,
        core,
        hotplug: Some(hotplug),
        rtas: Some(rtas),
    };
    serve(&mut log).map_err(|error| error.to_string())
}

struct EventLog {
    queue: EventQueue,
    interrupt: File,
    core: Channel,
    /// None while that peer is down.
    hotplug: Option<Channel>,
    rtas: Option<Channel>,
}

impl Server for EventLog {
    fn watched(&self) -> Vec<(&Channel, Link)> {
        let mut watched = vec![(&self.core, Link::CoreEventLog)];
        if let Some(hotplug) = &self.hotplug {
            watched.push((hotplug, Link::HotplugEventLog));
        }
        if let Some(rtas) = &self.rtas {
            watched.push((rtas, Link::RtasEventLog));
        }
        watched
    }

    fn handle(
        &mut self,
        link: Link,
        frame: Result<Frame, ChannelError>,
    ) -> Result<(), ChannelError> {
        match link {
            Link::CoreEventLog => self.on_core(frame),
            Link::HotplugEventLog => self.on_hotplug(frame),
            _ => self.on_rtas(frame),
        }
    }

    fn peer_gone(&mut self, link: Link) {
        match link {
            Link::HotplugEventLog => self.hotplug = None,
            _ => self.rtas = None,
        }
    }
}

/// Answers a peer; a failure means the peer died, which is not ours to end.
fn answer_peer<T: serde::Serialize>(channel: &Option<Channel>, id: u64, body: T) {
    if let Some(channel) = channel {
        if let Err(error) = reply(channel, id, body) {
            log::warn!("cannot answer a peer: {error}");
        }
    }
}

impl EventLog {
    fn pulse(&mut self, pulse: Pulse) {
        if pulse == Pulse::Hotplug {
            // An eventfd counter write: KVM injects the interrupt.
            if let Err(error) = self.interrupt.write_all(&1u64.to_ne_bytes()) {
                log::error!("cannot raise the hot-plug interrupt: {error}");
            }
        }
    }

    fn on_core(&mut self, frame: Result<Frame, ChannelError>) -> Result<(), ChannelError> {
        let (message, fds) = match decode_with_fds::<CoreToEventLog>(frame) {
            Ok(decoded) => decoded,
            Err(reason) => {
                log::warn!("rejected a request from the core: {reason}");
                return reply(&self.core, 0, EventLogToCore::Rejected { reason });
            }
        };
        if !fds.is_empty() && !matches!(message.body, CoreToEventLog::ReplaceLink(_)) {
            let reason = "unexpected descriptors".to_string();
            return reply(&self.core, message.id, EventLogToCore::Rejected { reason });
        }
        let answer = match message.body {
            CoreToEventLog::Reset => {
                self.queue.clear();
                EventLogToCore::Done
            }
            CoreToEventLog::List => EventLogToCore::Queued(self.queue.list()),
            CoreToEventLog::InjectFault(fault) => EventLogToCore::FaultSurvived {
                outcome: {
                    if fault == ipc_proto::Fault::Garbage {
                        crate::process::send_garbage(&self.core);
                    }
                    crate::seccomp::commit(fault)
                },
            },
            CoreToEventLog::ReplaceLink(link) => match (link, adopt(link, fds)) {
                (Link::HotplugEventLog, Ok(channel)) => {
                    self.hotplug = Some(channel);
                    EventLogToCore::Done
                }
                (Link::RtasEventLog, Ok(channel)) => {
                    self.rtas = Some(channel);
                    EventLogToCore::Done
                }
                (_, Ok(_)) => EventLogToCore::Rejected {
                    reason: format!("{link:?} is not a link to replace here"),
                },
                (_, Err(reason)) => EventLogToCore::Rejected { reason },
            },
        };
        reply(&self.core, message.id, answer)
    }

    fn on_hotplug(&mut self, frame: Result<Frame, ChannelError>) -> Result<(), ChannelError> {
        let message = match decode_request::<HotplugToEventLog>(frame) {
            Ok(message) => message,
            Err(reason) => {
                log::warn!("rejected a request from the hotplug controller: {reason}");
                answer_peer(&self.hotplug, 0, EventLogToHotplug::Rejected { reason });
                return Ok(());
            }
        };
        let answer = match message.body {
            HotplugToEventLog::Queue(event) => match self.queue.enqueue(event, UtcTime::now()) {
                Ok((coalesced, pulse)) => {
                    self.pulse(pulse);
                    EventLogToHotplug::Queued { coalesced }
                }
                Err(super::QueueFull) => {
                    log::error!("the event queue is full; dropping {event:?}");
                    EventLogToHotplug::Full
                }
            },
            HotplugToEventLog::Withdraw(event) => {
                EventLogToHotplug::Withdrawn(self.queue.withdraw(&event))
            }
        };
        answer_peer(&self.hotplug, message.id, answer);
        Ok(())
    }

    fn on_rtas(&mut self, frame: Result<Frame, ChannelError>) -> Result<(), ChannelError> {
        let message = match decode_request::<RtasToEventLog>(frame) {
            Ok(message) => message,
            Err(reason) => {
                log::warn!("rejected a request from the RTAS server: {reason}");
                answer_peer(&self.rtas, 0, EventLogToRtas::Rejected { reason });
                return Ok(());
            }
        };
        let answer = match message.body {
            RtasToEventLog::CheckException { mask, max_len } => {
                let (dequeued, pulse) = self.queue.dequeue(mask, max_len as usize);
                self.pulse(pulse);
                match dequeued {
                    Dequeued::Event(bytes) => EventLogToRtas::Event(bytes),
                    Dequeued::Nothing => EventLogToRtas::NoEvent,
                    Dequeued::TooLarge(needed) => EventLogToRtas::BufferTooSmall {
                        needed: needed as u32,
                    },
                }
            }
            RtasToEventLog::EventScan { mask } => {
                let pulse = self.queue.scan(mask);
                self.pulse(pulse);
                EventLogToRtas::NoEvent
            }
        };
        answer_peer(&self.rtas, message.id, answer);
        Ok(())
    }
}
