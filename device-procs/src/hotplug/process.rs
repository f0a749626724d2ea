//! The hotplug controller's process: requests from the core and from the RTAS
//! server, events to the event log, notifications to the core.

use super::{Controller, Effect};
use crate::process::{decode_request, open_links, reply, serve, PEER_TIMEOUT};
use ipc_proto::channel::{Channel, ChannelError, Client, Envelope, Frame};
use ipc_proto::eventlog::{EventLogToHotplug, HotplugToEventLog};
use ipc_proto::hotplug::{CoreToHotplug, HotplugToCore, HotplugToRtas, RtasToHotplug};
use ipc_proto::{Link, ProcessKind};

struct Process {
    controller: Controller,
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
        notify,
        notifications: 0,
        eventlog: Client::new(eventlog),
    };
    serve(
        &[(&core, Link::CoreHotplug), (&rtas, Link::RtasHotplug)],
        |i, frame| match i {
            0 => process.on_core(&core, frame),
            _ => process.on_rtas(&rtas, frame),
        },
    )
    .map_err(|error| error.to_string())
}

impl Process {
    fn on_core(
        &mut self,
        core: &Channel,
        frame: Result<Frame, ChannelError>,
    ) -> Result<(), ChannelError> {
        let message = match decode_request::<CoreToHotplug>(frame) {
            Ok(message) => message,
            Err(reason) => {
                log::warn!("rejected a request from the core: {reason}");
                return reply(core, 0, HotplugToCore::Refused { reason });
            }
        };
        let answer = match message.body {
            CoreToHotplug::DefineDrcs { ranges } => match self.controller.define(&ranges) {
                Ok(()) => HotplugToCore::Done { released: vec![] },
                Err(reason) => HotplugToCore::Refused { reason },
            },
            CoreToHotplug::Plug { drcs, device, cold } => {
                match self.controller.plug(&drcs, &device, cold) {
                    Ok(effects) => {
                        log::info!(
                            "plugged {device} ({} DRCs, {})",
                            drcs.len(),
                            if cold { "cold" } else { "hot" }
                        );
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
            CoreToHotplug::InjectFault(fault) => HotplugToCore::FaultSurvived {
                outcome: crate::seccomp::commit(fault),
            },
            CoreToHotplug::ListDrcs { from } => {
                let (rows, next) = self.controller.list(from);
                HotplugToCore::Drcs { rows, next }
            }
        };
        reply(core, message.id, answer)
    }

    fn on_rtas(
        &mut self,
        rtas: &Channel,
        frame: Result<Frame, ChannelError>,
    ) -> Result<(), ChannelError> {
        let message = match decode_request::<RtasToHotplug>(frame) {
            Ok(message) => message,
            Err(reason) => {
                log::warn!("rejected a request from the RTAS server: {reason}");
                return reply(rtas, 0, HotplugToRtas::Rejected { reason });
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
        reply(rtas, message.id, HotplugToRtas::Status { status, value })
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
