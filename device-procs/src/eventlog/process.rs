//! The event log's process: requests from the core, the hotplug controller and
//! the RTAS server; the hot-plug interrupt raised through the eventfd the core
//! registered with KVM as an irqfd.

use super::{Dequeued, EventQueue, Pulse, QueueFull};
use crate::clock::UtcTime;
use crate::process::{answer, serve, take_fd, Device, Links, ProcessError};
use crate::seccomp;
use ipc_proto::channel::{ChannelError, Frame};
use ipc_proto::control::Answer;
use ipc_proto::link::core_eventlog::{self, CoreEventLog};
use ipc_proto::link::hotplug_eventlog::{self, HotplugEventLog};
use ipc_proto::link::rtas_eventlog::{self, RtasEventLog};
use ipc_proto::protocol::refused;
use ipc_proto::{Link, ProcessKind, FIRST_CHANNEL_FD};
use std::fs::File;
use std::io::Write;

/// Runs the event log until the core hangs up.
pub fn run(mode: seccomp::Mode) -> Result<(), ProcessError> {
    let links = ProcessKind::EventLog.links();
    let first_extra = FIRST_CHANNEL_FD + links.len() as i32;
    // SAFETY: the core passes the hot-plug interrupt's eventfd right after
    // the channels, then the EPOW interrupt's.
    let interrupt = File::from(unsafe { take_fd(first_extra)? });
    // SAFETY: as above.
    let epow = File::from(unsafe { take_fd(first_extra + 1)? });
    let mut links = Links::open(ProcessKind::EventLog, mode)?;
    log::info!("serving the event queue");
    let mut log = EventLog {
        queue: EventQueue::default(),
        last_from_controller: 0,
        interrupt,
        epow,
    };
    serve(&mut log, &mut links)
}

struct EventLog {
    queue: EventQueue,
    /// The highest request number the hotplug controller sent.
    last_from_controller: u64,
    interrupt: File,
    epow: File,
}

impl Device for EventLog {
    fn on_frame(
        &mut self,
        links: &mut Links,
        link: Link,
        frame: Result<Frame, ChannelError>,
    ) -> Result<(), ChannelError> {
        match link {
            Link::CoreEventLog => {
                answer::<CoreEventLog>(links, frame, |_, _, request, _| self.on_core(request))
            }
            Link::HotplugEventLog => {
                answer::<HotplugEventLog>(links, frame, |_, id, request, _| {
                    Answer::Link(self.on_hotplug(id, request))
                })
            }
            _ => answer::<RtasEventLog>(links, frame, |_, _, request, _| self.on_rtas(request)),
        }
    }
}

impl EventLog {
    fn pulse(&mut self, pulse: Pulse) {
        for (raise, eventfd, name) in [
            (pulse.hotplug, &mut self.interrupt, "hot-plug"),
            (pulse.epow, &mut self.epow, "EPOW"),
        ] {
            // An eventfd counter write: KVM injects the interrupt.
            if raise {
                if let Err(error) = eventfd.write_all(&1u64.to_ne_bytes()) {
                    log::error!("cannot raise the {name} interrupt: {error}");
                }
            }
        }
    }

    fn on_core(&mut self, request: core_eventlog::Request) -> Answer<core_eventlog::Reply> {
        match request {
            core_eventlog::Request::Reset => {
                self.queue.clear();
                Answer::Ack
            }
            core_eventlog::Request::PowerDown => match self.queue.power_down(UtcTime::now()) {
                Ok(pulse) => {
                    self.pulse(pulse);
                    Answer::Ack
                }
                Err(QueueFull) => refused("the event queue is full"),
            },
            core_eventlog::Request::List => {
                Answer::Link(core_eventlog::Reply::Queued(self.queue.list()))
            }
        }
    }

    /// The controller numbers its requests in the order it commits them,
    /// and sends one again when it does not know it arrived (it restarted):
    /// a number already seen is answered without being applied again.
    fn on_hotplug(
        &mut self,
        id: u64,
        request: hotplug_eventlog::Request,
    ) -> hotplug_eventlog::Reply {
        if id <= self.last_from_controller {
            log::info!("the hotplug controller repeats request {id}: already applied");
            return match request {
                hotplug_eventlog::Request::Queue(_) => {
                    hotplug_eventlog::Reply::Queued { coalesced: true }
                }
                hotplug_eventlog::Request::Withdraw(_) => hotplug_eventlog::Reply::Withdrawn(false),
            };
        }
        self.last_from_controller = id;
        match request {
            hotplug_eventlog::Request::Queue(event) => {
                match self.queue.enqueue(event, UtcTime::now()) {
                    Ok((coalesced, pulse)) => {
                        self.pulse(pulse);
                        hotplug_eventlog::Reply::Queued { coalesced }
                    }
                    Err(QueueFull) => {
                        log::error!("the event queue is full; dropping {event:?}");
                        hotplug_eventlog::Reply::Full
                    }
                }
            }
            hotplug_eventlog::Request::Withdraw(event) => {
                hotplug_eventlog::Reply::Withdrawn(self.queue.withdraw(&event))
            }
        }
    }

    fn on_rtas(&mut self, request: rtas_eventlog::Request) -> Answer<rtas_eventlog::Reply> {
        match request {
            rtas_eventlog::Request::CheckException { mask, max_len } => {
                let (dequeued, pulse) = self.queue.dequeue(mask, max_len as usize);
                self.pulse(pulse);
                Answer::Link(match dequeued {
                    Dequeued::Event(bytes) => rtas_eventlog::Reply::Event(bytes),
                    Dequeued::Nothing => rtas_eventlog::Reply::NoEvent,
                    Dequeued::TooLarge(needed) => rtas_eventlog::Reply::BufferTooSmall {
                        needed: needed as u32,
                    },
                })
            }
            rtas_eventlog::Request::EventScan { mask } => {
                let pulse = self.queue.scan(mask);
                self.pulse(pulse);
                Answer::Ack
            }
        }
    }
}
