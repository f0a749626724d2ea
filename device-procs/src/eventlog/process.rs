//! The event log's process: requests from the core, the hotplug controller and
//! the RTAS server; the hot-plug interrupt raised through the eventfd the core
//! registered with KVM as an irqfd.

use super::{Dequeued, EventQueue, Pulse};
use crate::clock::UtcTime;
use crate::process::{decode_request, open_links, reply, serve, take_fd};
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
    };
    serve(
        &[
            (&core, Link::CoreEventLog),
            (&hotplug, Link::HotplugEventLog),
            (&rtas, Link::RtasEventLog),
        ],
        |i, frame| match i {
            0 => log.on_core(&core, frame),
            1 => log.on_hotplug(&hotplug, frame),
            _ => log.on_rtas(&rtas, frame),
        },
    )
    .map_err(|error| error.to_string())
}

struct EventLog {
    queue: EventQueue,
    interrupt: File,
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

    fn on_core(
        &mut self,
        core: &Channel,
        frame: Result<Frame, ChannelError>,
    ) -> Result<(), ChannelError> {
        let message = match decode_request::<CoreToEventLog>(frame) {
            Ok(message) => message,
            Err(reason) => {
                log::warn!("rejected a request from the core: {reason}");
                return reply(core, 0, EventLogToCore::Rejected { reason });
            }
        };
        let answer = match message.body {
            CoreToEventLog::Reset => {
                self.queue.clear();
                EventLogToCore::Done
            }
            CoreToEventLog::List => EventLogToCore::Queued(self.queue.list()),
            CoreToEventLog::InjectFault(fault) => EventLogToCore::FaultSurvived {
                outcome: crate::seccomp::commit(fault),
            },
        };
        reply(core, message.id, answer)
    }

    fn on_hotplug(
        &mut self,
        hotplug: &Channel,
        frame: Result<Frame, ChannelError>,
    ) -> Result<(), ChannelError> {
        let message = match decode_request::<HotplugToEventLog>(frame) {
            Ok(message) => message,
            Err(reason) => {
                log::warn!("rejected a request from the hotplug controller: {reason}");
                return reply(hotplug, 0, EventLogToHotplug::Rejected { reason });
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
        reply(hotplug, message.id, answer)
    }

    fn on_rtas(
        &mut self,
        rtas: &Channel,
        frame: Result<Frame, ChannelError>,
    ) -> Result<(), ChannelError> {
        let message = match decode_request::<RtasToEventLog>(frame) {
            Ok(message) => message,
            Err(reason) => {
                log::warn!("rejected a request from the RTAS server: {reason}");
                return reply(rtas, 0, EventLogToRtas::Rejected { reason });
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
        reply(rtas, message.id, answer)
    }
}
