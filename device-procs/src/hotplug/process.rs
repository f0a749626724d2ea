//! The hotplug controller's process: requests from the core and from the RTAS
//! server, events to the event log, notifications to the core.

use super::{Controller, Effect};
use crate::process::{
    adopt, decode_request, decode_with_fds, open_links, reply, serve, Server, PEER_TIMEOUT,
};
use ipc_proto::channel::{Channel, ChannelError, Client, Envelope, Frame};
use ipc_proto::eventlog::{EventLogToHotplug, HotplugToEventLog};
use ipc_proto::hotplug::{CoreToHotplug, HotplugToCore, HotplugToRtas, RtasToHotplug};
use ipc_proto::{Link, ProcessKind};

struct Process {
    controller: Controller,
    core: Channel,
    /// None while the RTAS server is down.
    rtas: Option<Channel>,
    notify: Channel,
    notifications: u64,
    eventlog: Client,
}

/// Runs the controller until the core hangs up.
pub fn run() -> Result<(), String> {
    let mut channels = open_links(ProcessKind::HotplugController)?.into_iter();
    let (Some(core), Some(notify), Some(rtas), Some(eventlog)) = (
        channels.next(),
        channels.next(),
        channels.next(),
        channels.next(),
    ) else {
        return Err("missing channels".into());
    };
    log::info!("serving the DRC table");
    let mut process = Process {
        controller: Controller::default(),
        core,
        rtas: Some(rtas),
        notify,
        notifications: 0,
        eventlog: Client::new(eventlog),
    };
    serve(&mut process).map_err(|error| error.to_string())
}

impl Server for Process {
    fn watched(&self) -> Vec<(&Channel, Link)> {
        let mut watched = vec![(&self.core, Link::CoreHotplug)];
        if let Some(rtas) = &self.rtas {
            watched.push((rtas, Link::RtasHotplug));
        }
        watched
    }

    fn handle(
        &mut self,
        link: Link,
        frame: Result<Frame, ChannelError>,
    ) -> Result<(), ChannelError> {
        match link {
            Link::CoreHotplug => self.on_core(frame),
            _ => self.on_rtas(frame),
        }
    }

    fn peer_gone(&mut self, _: Link) {
        self.rtas = None;
    }
}

impl Process {
    fn on_core(&mut self, frame: Result<Frame, ChannelError>) -> Result<(), ChannelError> {
        let (message, fds) = match decode_with_fds::<CoreToHotplug>(frame) {
            Ok(decoded) => decoded,
            Err(reason) => {
                log::warn!("rejected a request from the core: {reason}");
                return reply(&self.core, 0, HotplugToCore::Refused { reason });
            }
        };
        if !fds.is_empty() && !matches!(message.body, CoreToHotplug::ReplaceLink(_)) {
            let reason = "unexpected descriptors".to_string();
            return reply(&self.core, message.id, HotplugToCore::Refused { reason });
        }
        let answer = match message.body {
            CoreToHotplug::DefineDrcs { ranges } => match self.controller.define(&ranges) {
                Ok(()) => HotplugToCore::Done { released: vec![] },
                Err(reason) => HotplugToCore::Refused { reason },
            },
            CoreToHotplug::Plug { drcs, device, cold } => {
                match self.controller.plug(&drcs, &device, cold) {
                    Ok(effects) => {
                        let how = if cold { "cold" } else { "hot" };
                        log::info!("plugged {device} ({} DRCs, {how})", drcs.len());
                        self.carry_out(effects);
                        HotplugToCore::Done { released: vec![] }
                    }
                    Err(reason) => HotplugToCore::Refused { reason },
                }
            }
            CoreToHotplug::UnplugRequest { drcs } => match self.controller.unplug_request(&drcs) {
                Ok((released, effects)) => {
                    self.carry_out(effects);
                    HotplugToCore::Done { released }
                }
                Err(reason) => HotplugToCore::Refused { reason },
            },
            CoreToHotplug::Reset => HotplugToCore::Done {
                released: self.controller.reset(),
            },
            CoreToHotplug::ListDrcs { from } => {
                let (rows, next) = self.controller.list(from);
                HotplugToCore::Drcs { rows, next }
            }
            CoreToHotplug::InjectFault(fault) => HotplugToCore::FaultSurvived {
                outcome: {
                    if fault == ipc_proto::Fault::Garbage {
                        crate::process::send_garbage(&self.core);
                        crate::process::send_garbage(&self.notify);
                    }
                    crate::seccomp::commit(fault)
                },
            },
            CoreToHotplug::ReplaceLink(link) => match (link, adopt(link, fds)) {
                (Link::RtasHotplug, Ok(channel)) => {
                    self.rtas = Some(channel);
                    HotplugToCore::Done { released: vec![] }
                }
                (Link::HotplugEventLog, Ok(channel)) => {
                    self.eventlog = Client::new(channel);
                    HotplugToCore::Done { released: vec![] }
                }
                (_, Ok(_)) => HotplugToCore::Refused {
                    reason: format!("{link:?} is not a link to replace here"),
                },
                (_, Err(reason)) => HotplugToCore::Refused { reason },
            },
        };
        reply(&self.core, message.id, answer)
    }

    fn on_rtas(&mut self, frame: Result<Frame, ChannelError>) -> Result<(), ChannelError> {
        let message = match decode_request::<RtasToHotplug>(frame) {
            Ok(message) => message,
            Err(reason) => {
                log::warn!("rejected a request from the RTAS server: {reason}");
                return self.answer_rtas(0, HotplugToRtas::Rejected { reason });
            }
        };
        let (status, value) = match message.body {
            RtasToHotplug::SetIndicator {
                indicator,
                drc,
                value,
            } => {
                let (status, effects) = self.controller.set_indicator(indicator, drc, value);
                log::debug!("set-indicator {indicator} {drc:#x} {value} -> {status}");
                self.carry_out(effects);
                (status, 0)
            }
            RtasToHotplug::GetSensorState { sensor, drc } => self.controller.sensor(sensor, drc),
            RtasToHotplug::ConfigureBegin { drc } => self.controller.configure_begin(drc),
            RtasToHotplug::ConfigureDone { drc } => (self.controller.configure_done(drc), 0),
        };
        self.answer_rtas(message.id, HotplugToRtas::Status { status, value })
    }

    fn answer_rtas(&self, id: u64, answer: HotplugToRtas) -> Result<(), ChannelError> {
        match &self.rtas {
            // A send failure means the RTAS server died; it is not ours to end.
            Some(rtas) => {
                if let Err(error) = reply(rtas, id, answer) {
                    log::warn!("cannot answer the RTAS server: {error}");
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn tell_eventlog(&mut self, request: HotplugToEventLog) {
        let result: Result<EventLogToHotplug, _> =
            self.eventlog.request(request.clone(), &[], PEER_TIMEOUT);
        match result {
            Ok(EventLogToHotplug::Queued { .. } | EventLogToHotplug::Withdrawn(_)) => {
                log::debug!("event log: {request:?} -> {result:?}");
            }
            Ok(other) => log::error!("the event log did not take {request:?}: {other:?}"),
            Err(error) => log::error!("cannot reach the event log: {error}"),
        }
    }

    fn carry_out(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Notify(notification) => {
                    log::info!("telling the core: {notification:?}");
                    self.notifications += 1;
                    let envelope = Envelope {
                        id: self.notifications,
                        body: notification,
                    };
                    if let Err(error) = self.notify.send(&envelope, &[]) {
                        log::error!("cannot notify the core: {error}");
                    }
                }
                Effect::Queue(event) => self.tell_eventlog(HotplugToEventLog::Queue(event)),
                Effect::Withdraw(event) => self.tell_eventlog(HotplugToEventLog::Withdraw(event)),
            }
        }
    }
}
