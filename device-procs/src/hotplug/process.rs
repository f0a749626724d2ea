//! The hotplug controller's process: requests from the core and from the RTAS
//! server, events to the event log, notifications to the core — all through
//! its state region, so that a successor resumes where it stopped.

use super::pci::{touches_pci, PciBus};
use super::store::{Destination, Requester, Store, StoredReply};
use super::{Controller, Effect};
use crate::links::{answer, serve, Device, Links};
use crate::process::{Descriptors, ProcessError, Startup};
use crate::state::Mapping;
use crate::state::RequestKey;
use ipc_proto::channel::{ChannelError, Frame};
use ipc_proto::control::{Answer, FaultPoint, Refusal};
use ipc_proto::link::core_hotplug::{self, CoreHotplug, DrcRange};
use ipc_proto::link::hotplug_eventlog::{self, HotplugEventLog};
use ipc_proto::link::hotplug_notify::{HotplugNotify, Notification};
use ipc_proto::link::rtas_hotplug::{self, RtasHotplug};
use ipc_proto::papr::{DrcIndex, DrcState};
use ipc_proto::protocol::refused;
use ipc_proto::{Link, ProcessKind};
use std::collections::HashMap;

/// Runs the controller until the core hangs up.
pub fn run(startup: Startup, mut descriptors: Descriptors) -> Result<(), ProcessError> {
    let region = descriptors.next_extra("the state region")?;
    // Mapped before the seccomp filter, which allows anonymous memory only.
    let mapping = Mapping::map(&region).map_err(ProcessError::State)?;
    drop(region);
    let mut links = Links::open(
        ProcessKind::HotplugController,
        descriptors.channels,
        &[],
        startup.seccomp,
    )?
    .with_trace(startup.trace);
    log::info!("serving the DRC table");
    let mut process = HotplugController {
        controller: Controller::default(),
        state: State::Unattached(Some(mapping)),
        resume: startup.resume,
        pci: PciBus::default(),
        traced_states: startup.trace.then(HashMap::new),
    };
    serve(&mut process, &mut links)
}

/// The region, before and after set-up.
enum State {
    /// Mapped, waiting for the DRC table (`None` once a set-up failed).
    Unattached(Option<Mapping>),
    /// Formatted or resumed.
    Attached(Box<Store>),
}

struct HotplugController {
    controller: Controller,
    state: State,
    /// An earlier incarnation formatted the region.
    resume: bool,
    /// The PCI host bridge's functions.
    pci: PciBus,
    /// While tracing (`--trace on`), each DRC's state as last committed:
    /// a commit that changes one is a `drc-transition` in the trace.
    traced_states: Option<HashMap<DrcIndex, DrcState>>,
}

impl Device for HotplugController {
    fn on_frame(
        &mut self,
        links: &mut Links,
        link: Link,
        frame: Result<Frame, ChannelError>,
    ) -> Result<(), ChannelError> {
        match link {
            Link::CoreHotplug => answer::<CoreHotplug>(links, frame, |links, id, request, _| {
                self.on_core(links, id, request)
            }),
            _ => answer::<RtasHotplug>(links, frame, |links, id, request, _| {
                self.on_rtas(links, id, request)
            }),
        }
    }

    fn relinked(&mut self, links: &mut Links, link: Link) {
        if link == Link::HotplugEventLog {
            self.deliver(links);
        }
    }
}

impl HotplugController {
    fn store(&mut self) -> Option<&mut Store> {
        match &mut self.state {
            State::Attached(store) => Some(store),
            State::Unattached(_) => None,
        }
    }

    /// Formats the region for `ranges`, or resumes from it.
    fn attach(&mut self, ranges: &[DrcRange]) -> Result<(), String> {
        let resume = self.resume;
        let mapping = match &mut self.state {
            State::Attached(_) => return Err("the DRC table is defined already".into()),
            State::Unattached(mapping) => mapping
                .take()
                .ok_or("an earlier set-up failed; this process cannot serve")?,
        };
        let mut expected = Controller::default();
        expected.define(ranges).map_err(|e| e.to_string())?;
        let count = expected.drcs().count() as u32;
        let (store, controller) = if resume {
            let (store, controller) =
                Store::resume(mapping, count).map_err(|e| common::describe(&e))?;
            let found: Vec<_> = controller.drcs().map(|drc| drc.index()).collect();
            let wanted: Vec<_> = expected.drcs().map(|drc| drc.index()).collect();
            if found != wanted {
                return Err(format!(
                    "the state region holds {} other DRCs than the {} defined",
                    found.len(),
                    wanted.len()
                ));
            }
            log::info!(
                "resumed from the state region: {count} DRCs, {} transitions committed before",
                store.transitions()
            );
            (store, controller)
        } else {
            let store = Store::create(mapping, &mut expected).map_err(|e| common::describe(&e))?;
            log::info!("state region formatted for {count} DRCs");
            (store, expected)
        };
        if resume {
            match store.functions() {
                Ok(functions) => self.pci.resume(functions),
                Err(error) => log::error!(
                    "the bridge's functions start afresh: {}",
                    common::describe(&error)
                ),
            }
        }
        self.controller = controller;
        if let Some(states) = &mut self.traced_states {
            *states = (self.controller.drcs())
                .map(|drc| (drc.index(), drc.state()))
                .collect();
        }
        self.state = State::Attached(Box::new(store));
        self.pci.sync(&self.controller, !resume);
        self.record_functions();
        Ok(())
    }

    /// Records the functions that changed, before the reply that follows
    /// the change is sent.
    fn record_functions(&mut self) {
        let changed = self.pci.changed_records();
        let Some(store) = self.store() else {
            return;
        };
        for (devfn, record) in changed {
            if let Err(error) = store.record_function(devfn, record.as_ref()) {
                log::error!(
                    "function {devfn:#04x}: cannot record it: {}",
                    common::describe(&error)
                );
            }
        }
    }

    fn on_core(
        &mut self,
        links: &mut Links,
        id: u64,
        request: core_hotplug::Request,
    ) -> Answer<core_hotplug::Reply> {
        if let core_hotplug::Request::DefineDrcs { ranges } = &request {
            let attached = self.attach(ranges);
            // A successor delivers what its predecessor still owed.
            self.deliver(links);
            return match attached {
                Ok(()) => Answer::Ack,
                Err(error) => {
                    log::error!("{error}");
                    refused(error)
                }
            };
        }
        // A function's model and its BARs are not DRC state: they are
        // recorded on their own (each write is idempotent, and is made
        // again by the core if its answer was lost), and answered afresh.
        match request {
            core_hotplug::Request::DescribeFunction { drc, model } => {
                let described = self.pci.describe(drc, model);
                self.record_functions();
                return match described {
                    Ok(()) => Answer::Ack,
                    Err(error) => refused(error),
                };
            }
            core_hotplug::Request::BarAccess {
                address,
                size,
                write,
            } => {
                let reply = self.pci.bar_access(address, size, write);
                self.record_functions();
                return Answer::Link(reply);
            }
            _ => {}
        }
        let reset = matches!(request, core_hotplug::Request::Reset);
        let pci = reset
            || match &request {
                core_hotplug::Request::Plug { drcs, .. }
                | core_hotplug::Request::UnplugRequest { drcs } => touches_pci(drcs),
                _ => false,
            };
        let answer = self.on_core_table(links, id, request);
        if pci {
            self.pci.sync(&self.controller, reset);
            self.record_functions();
        }
        answer
    }

    fn on_core_table(
        &mut self,
        links: &mut Links,
        id: u64,
        request: core_hotplug::Request,
    ) -> Answer<core_hotplug::Reply> {
        let key = Requester::Core.key(id, &request);
        let Some(store) = self.store() else {
            return Answer::Refused(Refusal::NotReady);
        };
        if let Some(reply) = store.replayed(key) {
            log::info!("core request {id} was applied before a restart: answering it again");
            self.deliver(links);
            return match reply {
                StoredReply::Ack => Answer::Ack,
                StoredReply::Status { .. } => refused("a recorded reply of the wrong kind"),
            };
        }
        let outcome = match request {
            core_hotplug::Request::DefineDrcs { .. } => unreachable!("handled above"),
            core_hotplug::Request::Plug { drcs, device, cold } => {
                self.controller.plug(&drcs, &device, cold).inspect(|_| {
                    let how = if cold { "cold" } else { "hot" };
                    log::info!("plugged {device} ({} DRCs, {how})", drcs.len());
                })
            }
            core_hotplug::Request::UnplugRequest { drcs } => self
                .controller
                .unplug_request(&drcs)
                .map(|(released, effects)| {
                    released
                        .into_iter()
                        .map(|r| Effect::Notify(Notification::Released(r)))
                        .chain(effects)
                        .collect()
                }),
            core_hotplug::Request::Reset => {
                let released = self.controller.reset();
                Ok(released
                    .into_iter()
                    .map(|r| Effect::Notify(Notification::Released(r)))
                    .chain([Effect::Notify(Notification::ResetComplete)])
                    .collect())
            }
            core_hotplug::Request::ListDrcs { from } => {
                let (rows, next) = self.controller.list(from);
                return Answer::Link(core_hotplug::Reply::Drcs { rows, next });
            }
            core_hotplug::Request::DescribeFunction { .. }
            | core_hotplug::Request::BarAccess { .. } => unreachable!("handled above"),
        };
        match outcome {
            Ok(effects) => {
                self.commit(links, effects, Some((key, StoredReply::Ack)));
                self.deliver(links);
                Answer::Ack
            }
            Err(error) => {
                // Nothing changed; a repeat is judged afresh.
                self.commit(links, Vec::new(), None);
                refused(error.to_string())
            }
        }
    }

    fn on_rtas(
        &mut self,
        links: &mut Links,
        id: u64,
        request: rtas_hotplug::Request,
    ) -> Answer<rtas_hotplug::Reply> {
        use rtas_hotplug::Request::*;
        if matches!(
            request,
            ReadPciConfig { .. }
                | WritePciConfig { .. }
                | ChangeMsi { .. }
                | QueryInterruptSource { .. }
        ) {
            if self.store().is_none() {
                return Answer::Refused(Refusal::NotReady);
            }
            let reply = self.pci.rtas(request);
            self.record_functions();
            return Answer::Link(reply);
        }
        let pci = match &request {
            SetIndicator { drc, .. } => touches_pci(&[ipc_proto::papr::DrcIndex(*drc)]),
            _ => false,
        };
        let answer = self.on_rtas_table(links, id, request);
        if pci {
            self.pci.sync(&self.controller, false);
            self.record_functions();
        }
        answer
    }

    fn on_rtas_table(
        &mut self,
        links: &mut Links,
        id: u64,
        request: rtas_hotplug::Request,
    ) -> Answer<rtas_hotplug::Reply> {
        let key = Requester::Rtas.key(id, &request);
        let Some(store) = self.store() else {
            return Answer::Refused(Refusal::NotReady);
        };
        if let Some(reply) = store.replayed(key) {
            log::info!("RTAS request {id} was applied before a restart: answering it again");
            return match reply {
                StoredReply::Status { status, value } => {
                    Answer::Link(rtas_hotplug::Reply::Status { status, value })
                }
                StoredReply::Ack => refused("a recorded reply of the wrong kind"),
            };
        }
        let ((status, value), effects) = match request {
            rtas_hotplug::Request::ReadPciConfig { .. }
            | rtas_hotplug::Request::WritePciConfig { .. }
            | rtas_hotplug::Request::ChangeMsi { .. }
            | rtas_hotplug::Request::QueryInterruptSource { .. } => {
                unreachable!("handled by the bridge")
            }
            rtas_hotplug::Request::SetIndicator {
                indicator,
                drc,
                value,
            } => {
                let (status, effects) = self.controller.set_indicator(indicator, drc, value);
                log::debug!("set-indicator {indicator} {drc:#x} {value} -> {status:?}");
                ((status, 0), effects)
            }
            rtas_hotplug::Request::GetSensorState { sensor, drc } => {
                (self.controller.sensor(sensor, drc), Vec::new())
            }
            rtas_hotplug::Request::ConfigureStep { drc } => {
                (self.controller.configure_step(drc), Vec::new())
            }
            rtas_hotplug::Request::ConfigureDone { drc } => {
                ((self.controller.configure_done(drc), 0), Vec::new())
            }
        };
        self.commit(
            links,
            effects,
            Some((key, StoredReply::Status { status, value })),
        );
        self.deliver(links);
        Answer::Link(rtas_hotplug::Reply::Status { status, value })
    }

    /// Records what the request changed, if anything, with its effects and
    /// reply. A request that changed nothing is not recorded: answered again,
    /// it is judged afresh, which gives what a first answer would have.
    fn commit(
        &mut self,
        links: &mut Links,
        effects: Vec<Effect>,
        reply: Option<(RequestKey, StoredReply)>,
    ) {
        let transitions = self.drc_transitions();
        let State::Attached(store) = &mut self.state else {
            return;
        };
        let touched = self.controller.has_touched();
        let reply = reply.filter(|_| touched || !effects.is_empty());
        let before = store.transitions();
        let controller = &mut self.controller;
        if links.record(|| store.commit(controller, effects, reply)) {
            for fields in &transitions {
                links.trace(ipc_proto::control::trace_point::DRC_TRANSITION, fields);
            }
            if store.transitions() > before {
                links.fault_point(FaultPoint::Committed);
            }
        }
    }

    /// The state changes of the DRCs the request touched, as trace fields
    /// (none while not tracing).
    fn drc_transitions(&mut self) -> Vec<[(&'static str, String); 4]> {
        let mut transitions = Vec::new();
        let Some(traced_states) = &mut self.traced_states else {
            return transitions;
        };
        for index in self.controller.touched_drcs() {
            let Some(drc) = self.controller.drc(index) else {
                continue;
            };
            let to = drc.state();
            let from = traced_states.insert(index, to);
            if from != Some(to) {
                transitions.push([
                    ("drc", format!("{:#x}", index.0)),
                    (
                        "from",
                        from.map_or("none".into(), |from| format!("{from:?}")),
                    ),
                    ("to", format!("{to:?}")),
                    ("device", drc.device().unwrap_or_default().to_string()),
                ]);
            }
        }
        transitions
    }

    /// Sends what the core and the event log are owed, in order; stops at
    /// the first the event log cannot take (it is down: its successor gets
    /// them). Each delivery is recorded, and receivers drop repeats.
    fn deliver(&mut self, links: &mut Links) {
        let State::Attached(store) = &mut self.state else {
            return;
        };
        if links.state_lost() {
            return;
        }
        let mut delivered = false;
        for destination in [Destination::Core, Destination::EventLog] {
            for (id, effect) in store.pending(destination) {
                use hotplug_eventlog::{Reply, Request};
                let sent = match effect {
                    Effect::Notify(notification) => {
                        log::info!("telling the core: {notification:?}");
                        links.notify_as::<HotplugNotify>(id, notification).is_ok()
                    }
                    // What the event log did decides what the guest may
                    // answer: a remove event it really queued is outstanding
                    // until answered, one it withdrew no longer is.
                    Effect::Queue(event) => {
                        match Self::to_event_log(links, id, Request::Queue(event)) {
                            Some(Some(Reply::Queued { coalesced: false })) => {
                                self.controller.event_queued(&event);
                                true
                            }
                            Some(_) => true,
                            None => false,
                        }
                    }
                    Effect::Withdraw(event) => {
                        match Self::to_event_log(links, id, Request::Withdraw(event)) {
                            Some(Some(Reply::Withdrawn(true))) => {
                                self.controller.event_withdrawn(&event);
                                true
                            }
                            Some(_) => true,
                            None => false,
                        }
                    }
                };
                if !sent {
                    let waiting = store.pending(destination).len();
                    log::warn!("{destination:?} is down: {waiting} effect(s) wait for it");
                    break;
                }
                let controller = &mut self.controller;
                if !links.record(|| store.delivered(controller, id)) {
                    return;
                }
                delivered = true;
            }
        }
        if delivered {
            links.fault_point(FaultPoint::Delivered);
        }
    }

    /// The event log's reply (`Some(None)` for a refusal), or `None` when it
    /// is down.
    fn to_event_log(
        links: &mut Links,
        id: u64,
        request: hotplug_eventlog::Request,
    ) -> Option<Option<hotplug_eventlog::Reply>> {
        match links.request_as::<HotplugEventLog>(id, request.clone()) {
            Ok(Answer::Link(reply)) => {
                log::debug!("event log: {request:?} -> {reply:?}");
                Some(Some(reply))
            }
            Ok(other) => {
                // Delivered, and refused: sending it again would not help.
                log::error!("the event log did not take {request:?}: {other:?}");
                Some(None)
            }
            Err(_) => None,
        }
    }
}
