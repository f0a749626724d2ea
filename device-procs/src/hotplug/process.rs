//! The hotplug controller's process: requests from the core and from the RTAS
//! server, events to the event log, notifications to the core.

use super::{Controller, Effect};
use crate::process::{answer, serve, Device, Links, ProcessError};
use crate::seccomp;
use ipc_proto::channel::{ChannelError, Frame};
use ipc_proto::control::Answer;
use ipc_proto::link::core_hotplug::{self, CoreHotplug};
use ipc_proto::link::hotplug_eventlog::{self, HotplugEventLog};
use ipc_proto::link::hotplug_notify::{HotplugNotify, Notification};
use ipc_proto::link::rtas_hotplug::{self, RtasHotplug};
use ipc_proto::protocol::refused;
use ipc_proto::{Link, ProcessKind};
use std::collections::VecDeque;

/// Events the event log did not take because it was down, at most this many;
/// they are sent again, in order, to its successor.
const MAX_UNDELIVERED: usize = 1024;

/// Runs the controller until the core hangs up.
pub fn run(mode: seccomp::Mode) -> Result<(), ProcessError> {
    let mut links = Links::open(ProcessKind::HotplugController, mode)?;
    log::info!("serving the DRC table");
    let mut process = HotplugController {
        controller: Controller::default(),
        undelivered: VecDeque::new(),
    };
    serve(&mut process, &mut links)
}

struct HotplugController {
    controller: Controller,
    /// What the event log should have received but did not (it was down).
    undelivered: VecDeque<hotplug_eventlog::Request>,
}

impl Device for HotplugController {
    fn on_frame(
        &mut self,
        links: &mut Links,
        link: Link,
        frame: Result<Frame, ChannelError>,
    ) -> Result<(), ChannelError> {
        match link {
            Link::CoreHotplug => answer::<CoreHotplug>(links, frame, |links, request, _| {
                self.on_core(links, request)
            }),
            _ => answer::<RtasHotplug>(links, frame, |links, request, _| {
                Answer::Link(self.on_rtas(links, request))
            }),
        }
    }

    fn relinked(&mut self, links: &mut Links, link: Link) {
        if link == Link::HotplugEventLog && !self.undelivered.is_empty() {
            log::info!(
                "sending {} undelivered event(s) to the new event log",
                self.undelivered.len()
            );
            self.deliver(links);
        }
    }
}

impl HotplugController {
    fn on_core(
        &mut self,
        links: &mut Links,
        request: core_hotplug::Request,
    ) -> Answer<core_hotplug::Reply> {
        let outcome = match request {
            core_hotplug::Request::DefineDrcs { ranges } => self.controller.define(&ranges),
            core_hotplug::Request::Plug { drcs, device, cold } => {
                self.controller.plug(&drcs, &device, cold).map(|effects| {
                    let how = if cold { "cold" } else { "hot" };
                    log::info!("plugged {device} ({} DRCs, {how})", drcs.len());
                    self.carry_out(links, effects);
                })
            }
            core_hotplug::Request::UnplugRequest { drcs } => self
                .controller
                .unplug_request(&drcs)
                .map(|(released, effects)| {
                    let released = released
                        .into_iter()
                        .map(|r| Effect::Notify(Notification::Released(r)));
                    self.carry_out(links, released.chain(effects).collect());
                }),
            core_hotplug::Request::Reset => {
                let released = self.controller.reset();
                let notifications = released
                    .into_iter()
                    .map(|r| Effect::Notify(Notification::Released(r)))
                    .chain([Effect::Notify(Notification::ResetComplete)]);
                self.carry_out(links, notifications.collect());
                Ok(())
            }
            core_hotplug::Request::ListDrcs { from } => {
                let (rows, next) = self.controller.list(from);
                return Answer::Link(core_hotplug::Reply::Drcs { rows, next });
            }
        };
        match outcome {
            Ok(()) => Answer::Ack,
            Err(error) => refused(error.to_string()),
        }
    }

    fn on_rtas(
        &mut self,
        links: &mut Links,
        request: rtas_hotplug::Request,
    ) -> rtas_hotplug::Reply {
        let (status, value) = match request {
            rtas_hotplug::Request::SetIndicator {
                indicator,
                drc,
                value,
            } => {
                let (status, effects) = self.controller.set_indicator(indicator, drc, value);
                log::debug!("set-indicator {indicator} {drc:#x} {value} -> {status:?}");
                self.carry_out(links, effects);
                (status, 0)
            }
            rtas_hotplug::Request::GetSensorState { sensor, drc } => {
                self.controller.sensor(sensor, drc)
            }
            rtas_hotplug::Request::ConfigureBegin { drc } => self.controller.configure_begin(drc),
            rtas_hotplug::Request::ConfigureDone { drc } => {
                (self.controller.configure_done(drc), 0)
            }
        };
        rtas_hotplug::Reply::Status { status, value }
    }

    fn carry_out(&mut self, links: &mut Links, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Notify(notification) => {
                    log::info!("telling the core: {notification:?}");
                    // A failure means the core is gone; the serving loop ends on its hang-up.
                    let _ = links.notify::<HotplugNotify>(notification);
                }
                Effect::Queue(event) => {
                    self.undelivered
                        .push_back(hotplug_eventlog::Request::Queue(event));
                }
                Effect::Withdraw(event) => {
                    self.undelivered
                        .push_back(hotplug_eventlog::Request::Withdraw(event));
                }
            }
        }
        self.deliver(links);
    }

    /// Sends the waiting events in order; stops at the first the event log
    /// cannot take (it is down: they wait for its successor).
    fn deliver(&mut self, links: &mut Links) {
        while let Some(request) = self.undelivered.front() {
            match links.request::<HotplugEventLog>(request.clone()) {
                Ok(Answer::Link(reply)) => log::debug!("event log: {request:?} -> {reply:?}"),
                Ok(other) => log::error!("the event log did not take {request:?}: {other:?}"),
                Err(down) => {
                    log::warn!("{down}: {} event(s) wait for it", self.undelivered.len());
                    while self.undelivered.len() > MAX_UNDELIVERED {
                        let dropped = self.undelivered.pop_front();
                        log::error!("too many undelivered events: dropping {dropped:?}");
                    }
                    return;
                }
            }
            self.undelivered.pop_front();
        }
    }
}
