//! The event log's process: requests from the core, the hotplug controller and
//! the RTAS server; the hot-plug interrupt raised through the eventfd the core
//! registered with KVM as an irqfd. The queue lives in the state region
//! (see [`super::store`]): a successor has every event not yet fetched.

use super::store::{Resumed, Store};
use super::{Dequeued, EventQueue, Pulse, QueueFull};
use crate::clock::UtcTime;
use crate::links::{answer, serve, Device, Links};
use crate::process::{Descriptors, ProcessError, Startup};
use crate::state::{self, Mapping, StateError};
use ipc_proto::channel::{ChannelError, Frame};
use ipc_proto::control::{Answer, FaultPoint};
use ipc_proto::link::core_eventlog::{self, CoreEventLog};
use ipc_proto::link::hotplug_eventlog::{self, HotplugEventLog};
use ipc_proto::link::rtas_eventlog::{self, RtasEventLog};
use ipc_proto::protocol::refused;
use ipc_proto::{Link, ProcessKind};
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;

/// Runs the event log until the core hangs up.
pub fn run(startup: Startup, mut descriptors: Descriptors) -> Result<(), ProcessError> {
    let interrupt = File::from(descriptors.next_extra("the hot-plug interrupt")?);
    let epow = File::from(descriptors.next_extra("the EPOW interrupt")?);
    let region = descriptors.next_extra("the state region")?;
    // Mapped before the seccomp filter, which allows anonymous memory only.
    let mapping = Mapping::map(&region).map_err(ProcessError::State)?;
    drop(region);
    let (store, resumed) = if startup.resume {
        let (store, resumed) = Store::resume(mapping).map_err(ProcessError::State)?;
        log::info!(
            "resumed from the state region: {} event(s) queued",
            resumed.queue.list().len()
        );
        (store, resumed)
    } else {
        let store = Store::create(mapping).map_err(ProcessError::State)?;
        let resumed = Resumed {
            queue: EventQueue::default(),
            last_from_controller: 0,
        };
        (store, resumed)
    };
    let mut links = Links::open(
        ProcessKind::EventLog,
        descriptors.channels,
        &[interrupt.as_raw_fd(), epow.as_raw_fd()],
        startup.seccomp,
    )?
    .with_trace(startup.trace);
    log::info!("serving the event queue");
    let mut log = EventLog {
        queue: resumed.queue,
        last_from_controller: resumed.last_from_controller,
        store,
        interrupt,
        epow,
    };
    // A successor raises the interrupt again for what waits: the guest may
    // have missed the pulse of an event its predecessor queued.
    let waiting = log.queue.scan(super::CLASS_HOTPLUG | super::CLASS_EPOW);
    log.pulse(waiting);
    serve(&mut log, &mut links)
}

struct EventLog {
    queue: EventQueue,
    /// The highest request number the hotplug controller sent.
    last_from_controller: u64,
    store: Store,
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
            Link::CoreEventLog => answer::<CoreEventLog>(links, frame, |links, _, request, _| {
                self.on_core(links, request)
            }),
            Link::HotplugEventLog => {
                answer::<HotplugEventLog>(links, frame, |links, id, request, _| {
                    Answer::Link(self.on_hotplug(links, id, request))
                })
            }
            _ => answer::<RtasEventLog>(links, frame, |links, id, request, _| {
                self.on_rtas(links, id, request)
            }),
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

    /// Records what the last request changed (and `answer`, the record of
    /// an answer to give again to a repeat) before anyone hears of it;
    /// `false` if it could not (the device ends: see [`Links::record`]).
    fn commit(
        &mut self,
        links: &mut Links,
        answer: Option<Result<state::Write, StateError>>,
    ) -> bool {
        let before = self.store.transitions();
        let recorded = links.record(|| {
            answer.transpose().and_then(|answer| {
                self.store
                    .commit(&mut self.queue, self.last_from_controller, answer)
            })
        });
        if recorded && self.store.transitions() > before {
            links.fault_point(FaultPoint::Committed);
        }
        recorded
    }

    fn on_core(
        &mut self,
        links: &mut Links,
        request: core_eventlog::Request,
    ) -> Answer<core_eventlog::Reply> {
        match request {
            core_eventlog::Request::Reset => {
                self.queue.clear();
                self.commit(links, None);
                Answer::Ack
            }
            core_eventlog::Request::PowerDown => match self.queue.power_down(UtcTime::now()) {
                Ok(pulse) => {
                    if self.commit(links, None) {
                        self.pulse(pulse);
                    }
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
        links: &mut Links,
        id: u64,
        request: hotplug_eventlog::Request,
    ) -> hotplug_eventlog::Reply {
        if id <= self.last_from_controller {
            log::info!("the hotplug controller repeats request {id}: already applied");
            if let Some(reply) = self.store.controller_replayed(id, &request) {
                return reply;
            }
            return match request {
                hotplug_eventlog::Request::Queue(_) => {
                    hotplug_eventlog::Reply::Queued { coalesced: true }
                }
                hotplug_eventlog::Request::Withdraw(_) => hotplug_eventlog::Reply::Withdrawn(false),
            };
        }
        self.last_from_controller = id;
        let (reply, pulse) = match &request {
            &hotplug_eventlog::Request::Queue(event) => {
                match self.queue.enqueue(event, UtcTime::now()) {
                    Ok((coalesced, pulse)) => {
                        (hotplug_eventlog::Reply::Queued { coalesced }, pulse)
                    }
                    Err(QueueFull) => {
                        log::error!("the event queue is full; dropping {event:?}");
                        (hotplug_eventlog::Reply::Full, Pulse::NONE)
                    }
                }
            }
            hotplug_eventlog::Request::Withdraw(event) => (
                hotplug_eventlog::Reply::Withdrawn(self.queue.withdraw(event)),
                Pulse::NONE,
            ),
        };
        if self.commit(links, Some(Store::controller_answer(id, &request, &reply))) {
            self.pulse(pulse);
            self.trace_event(links, &request, &reply);
        }
        reply
    }

    /// The trace record of what the controller's request did to the queue.
    fn trace_event(
        &self,
        links: &mut Links,
        request: &hotplug_eventlog::Request,
        reply: &hotplug_eventlog::Reply,
    ) {
        if !links.tracing() {
            return;
        }
        let (point, event, outcome) = match (request, reply) {
            (hotplug_eventlog::Request::Queue(event), hotplug_eventlog::Reply::Full) => (
                ipc_proto::control::trace_point::EVENT_QUEUED,
                event,
                "dropped: queue full",
            ),
            (hotplug_eventlog::Request::Queue(event), reply) => (
                ipc_proto::control::trace_point::EVENT_QUEUED,
                event,
                match reply {
                    hotplug_eventlog::Reply::Queued { coalesced: true } => "coalesced",
                    _ => "queued",
                },
            ),
            (hotplug_eventlog::Request::Withdraw(event), reply) => (
                ipc_proto::control::trace_point::EVENT_WITHDRAWN,
                event,
                match reply {
                    hotplug_eventlog::Reply::Withdrawn(true) => "withdrawn",
                    _ => "not queued",
                },
            ),
        };
        let mut fields = event_fields(event).to_vec();
        fields.push(("outcome", outcome.to_string()));
        fields.push(("depth", self.queue.depth().to_string()));
        links.trace(point, &fields);
    }

    /// A check-exception that fetched an event is recorded with its answer:
    /// made again (the RTAS server, or this process, died before the guest
    /// had it), it gets the same event, not the next one.
    fn on_rtas(
        &mut self,
        links: &mut Links,
        id: u64,
        request: rtas_eventlog::Request,
    ) -> Answer<rtas_eventlog::Reply> {
        if let Some(reply) = self.store.replayed(id, &request) {
            log::info!(
                "check-exception {id} fetched an event before a restart: answering it again"
            );
            return Answer::Link(reply);
        }
        match request {
            rtas_eventlog::Request::CheckException { mask, max_len } => {
                let (dequeued, pulse) = self.queue.dequeue(mask, max_len as usize);
                let reply = match dequeued {
                    Dequeued::Event(bytes) => rtas_eventlog::Reply::Event(bytes),
                    Dequeued::Nothing => rtas_eventlog::Reply::NoEvent,
                    Dequeued::TooLarge(needed) => rtas_eventlog::Reply::BufferTooSmall {
                        needed: needed as u32,
                    },
                };
                let fetched = matches!(reply, rtas_eventlog::Reply::Event(_));
                let recorded = self.commit(
                    links,
                    fetched.then(|| Store::rtas_answer(id, &request, &reply)),
                );
                if recorded {
                    self.pulse(pulse);
                    if let (rtas_eventlog::Reply::Event(bytes), true) = (&reply, links.tracing()) {
                        links.trace(
                            ipc_proto::control::trace_point::EVENT_FETCHED,
                            &[
                                ("mask", format!("{mask:#x}")),
                                ("bytes", bytes.len().to_string()),
                                ("depth", self.queue.depth().to_string()),
                            ],
                        );
                    }
                }
                Answer::Link(reply)
            }
            rtas_eventlog::Request::EventScan { mask } => {
                let pulse = self.queue.scan(mask);
                self.pulse(pulse);
                Answer::Ack
            }
        }
    }
}

/// A hot-plug event as trace fields: its action and what it names.
fn event_fields(event: &hotplug_eventlog::HotplugEvent) -> [(&'static str, String); 4] {
    use hotplug_eventlog::HotplugTarget;
    let (kind, drc, count) = match event.target {
        HotplugTarget::CpuByIndex(drc) => ("cpu", drc, 1),
        HotplugTarget::PciByIndex(drc) => ("pci", drc, 1),
        HotplugTarget::LmbsCountIndexed { count, first } => ("lmb", first, count),
    };
    [
        ("action", format!("{:?}", event.action)),
        ("kind", kind.to_string()),
        ("drc", format!("{:#x}", drc.0)),
        ("count", count.to_string()),
    ]
}
