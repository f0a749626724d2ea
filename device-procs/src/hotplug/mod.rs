//! The hotplug controller: the DRC table, unplug requests, plug and unplug
//! completion. It maps no guest memory: everything it learns arrives as
//! typed, validated values from the core and the RTAS server.
//!
//! The unplug rules (design notes, "Unplug semantics") live here, for every
//! device type: detach once; every request re-sends the remove event (the
//! event log coalesces repeats); a guest that re-unisolates a DRC with a
//! pending unplug refuses it, once, for the whole device; pending unplugs
//! complete at reset.

pub mod drc;
pub mod pci;
pub mod process;
pub mod store;

use drc::{Drc, Outcome};
use ipc_proto::link::core_hotplug::{DrcInfo, DrcRange, DRCS_PER_PAGE, MAX_DEVICE_ID, MAX_DRCS};
use ipc_proto::link::hotplug_eventlog::{HotplugAction, HotplugEvent, HotplugTarget};
use ipc_proto::link::hotplug_notify::{Notification, Released};
use ipc_proto::papr::{indicator, DrcIndex, DrcKind, RtasStatus};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use thiserror::Error;

/// Why the controller refuses a request of the core.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HotplugError {
    /// The table would grow past [`MAX_DRCS`].
    #[error("{0} DRCs is more than {MAX_DRCS}")]
    TooManyDrcs(u64),
    /// A run of DRCs whose ids do not fit a DRC index.
    #[error("DRC range {0:?} overflows")]
    RangeOverflows(DrcRange),
    /// A request that names no DRC.
    #[error("no DRC given")]
    NoDrc,
    /// A DRC index of a type the platform does not have.
    #[error("DRC {:#x} has no known type", .0 .0)]
    UnknownType(DrcIndex),
    /// A DRC the table does not have.
    #[error("no DRC {:#x}", .0 .0)]
    NoSuchDrc(DrcIndex),
    /// One request for DRCs of different types.
    #[error("DRCs of different types")]
    MixedTypes,
    /// A device id that is empty or too long.
    #[error("device id of {0} bytes")]
    BadDeviceId(usize),
    /// A device that is plugged already.
    #[error("device {0} is already plugged")]
    AlreadyPlugged(String),
    /// A DRC that holds a device already.
    #[error("DRC {:#x} is in use", .0 .0)]
    DrcInUse(DrcIndex),
    /// An unplug request for an empty DRC.
    #[error("DRC {:#x} has no device", .0 .0)]
    NoDevice(DrcIndex),
    /// An unplug request whose DRCs hold more than one device.
    #[error("the DRCs do not hold one device")]
    NotOneDevice,
    /// A device's DRCs must be a run of consecutive indexes.
    #[error("the DRCs of a device must be consecutive")]
    NotConsecutive,
}

/// What the controller must tell others after a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    /// To the core, on the notify link.
    Notify(Notification),
    /// To the event log.
    Queue(HotplugEvent),
    /// To the event log: drop this event if it still waits.
    Withdraw(HotplugEvent),
}

/// A record a request changed, which the state region must be told of.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Touched {
    /// A DRC's state, device or unplug request.
    Drc(DrcIndex),
    /// A device was attached or went.
    Device(String),
}

/// The DRC table.
#[derive(Default)]
pub struct Controller {
    drcs: BTreeMap<DrcIndex, Drc>,
    /// Each attached device's DRCs.
    devices: BTreeMap<String, Vec<DrcIndex>>,
    /// Per device, the remove events the event log queued (not coalesced
    /// into one that waited, not withdrawn) that no refusal answered yet:
    /// the guest may have fetched each (Linux does so from its interrupt
    /// handler, before it handles the one before), and answers each.
    outstanding: BTreeMap<String, u32>,
    /// What changed since [`Controller::take_touched`] was last called.
    touched: Vec<Touched>,
}

fn target(drcs: &[DrcIndex]) -> Option<HotplugTarget> {
    let first = *drcs.iter().min()?;
    match first.kind()? {
        DrcKind::Cpu => Some(HotplugTarget::CpuByIndex(first)),
        DrcKind::Pci => Some(HotplugTarget::PciByIndex(first)),
        DrcKind::Lmb => Some(HotplugTarget::LmbsCountIndexed {
            count: drcs.len() as u32,
            first,
        }),
    }
}

impl Controller {
    /// A table as a state region recorded it: its DRCs and its devices
    /// (id, DRCs).
    /// (id, DRCs, outstanding remove events) each.
    pub fn restore(drcs: Vec<Drc>, devices: Vec<(String, Vec<DrcIndex>, u32)>) -> Controller {
        let outstanding = devices
            .iter()
            .filter(|(_, _, count)| *count > 0)
            .map(|(id, _, count)| (id.clone(), *count))
            .collect();
        Controller {
            drcs: drcs.into_iter().map(|drc| (drc.index(), drc)).collect(),
            devices: devices
                .into_iter()
                .map(|(id, drcs, _)| (id, drcs))
                .collect(),
            outstanding,
            touched: Vec::new(),
        }
    }

    /// The remove events of device `id` that no refusal answered yet.
    pub fn outstanding(&self, id: &str) -> u32 {
        self.outstanding.get(id).copied().unwrap_or(0)
    }

    /// The device a remove event asks for.
    fn removed_by(&self, event: &HotplugEvent) -> Option<String> {
        let first = match event.target {
            HotplugTarget::CpuByIndex(drc) | HotplugTarget::PciByIndex(drc) => drc,
            HotplugTarget::LmbsCountIndexed { first, .. } => first,
        };
        match event.action {
            HotplugAction::Remove => self.drcs.get(&first)?.device().map(str::to_string),
            HotplugAction::Add => None,
        }
    }

    /// The event log queued `event` as a new event (not coalesced into one
    /// that waited): a remove event the guest will fetch and answer.
    pub fn event_queued(&mut self, event: &HotplugEvent) {
        if let Some(device) = self.removed_by(event) {
            *self.outstanding.entry(device.clone()).or_default() += 1;
            self.touched.push(Touched::Device(device));
        }
    }

    /// The event log withdrew `event` before the guest fetched it: nobody
    /// answers it. The last one gone, the device's unplug is over.
    pub fn event_withdrawn(&mut self, event: &HotplugEvent) {
        if let Some(device) = self.removed_by(event) {
            if self.answer_one(&device) == 0 {
                self.each_drc_of(&device, Drc::end_unplug);
            }
        }
    }

    /// One outstanding remove event of `device` is answered: how many remain.
    fn answer_one(&mut self, device: &str) -> u32 {
        let left = self.outstanding(device).saturating_sub(1);
        match left {
            0 => self.outstanding.remove(device),
            n => self.outstanding.insert(device.to_string(), n),
        };
        self.touched.push(Touched::Device(device.to_string()));
        left
    }

    /// Applies the transition `change` to every DRC of `device`, noting
    /// those it changed.
    fn each_drc_of(&mut self, device: &str, change: impl Fn(&mut Drc)) {
        for index in self.devices.get(device).cloned().unwrap_or_default() {
            if let Some(drc) = self.drcs.get_mut(&index) {
                let before = drc.clone();
                change(drc);
                if *drc != before {
                    self.touched.push(Touched::Drc(index));
                }
            }
        }
    }

    /// What requests changed since the last call, each once.
    pub fn take_touched(&mut self) -> Vec<Touched> {
        let mut touched = std::mem::take(&mut self.touched);
        touched.sort();
        touched.dedup();
        touched
    }

    /// The DRCs a request changed since [`Controller::take_touched`].
    pub fn touched_drcs(&self) -> impl Iterator<Item = DrcIndex> + '_ {
        self.touched.iter().filter_map(|touched| match touched {
            Touched::Drc(index) => Some(*index),
            Touched::Device(_) => None,
        })
    }

    /// Whether a request changed anything since [`Controller::take_touched`].
    pub fn has_touched(&self) -> bool {
        !self.touched.is_empty()
    }

    /// The DRCs, in index order.
    pub fn drcs(&self) -> impl Iterator<Item = &Drc> {
        self.drcs.values()
    }

    /// One DRC.
    pub fn drc(&self, index: DrcIndex) -> Option<&Drc> {
        self.drcs.get(&index)
    }

    /// An attached device's DRCs.
    pub fn device(&self, id: &str) -> Option<&[DrcIndex]> {
        self.devices.get(id).map(Vec::as_slice)
    }

    /// Creates the DRCs of `ranges`.
    pub fn define(&mut self, ranges: &[DrcRange]) -> Result<(), HotplugError> {
        let total: u64 = ranges.iter().map(|r| u64::from(r.count)).sum();
        if total + self.drcs.len() as u64 > MAX_DRCS as u64 {
            return Err(HotplugError::TooManyDrcs(total));
        }
        for range in ranges {
            for i in 0..range.count {
                let id = i
                    .checked_mul(range.step)
                    .and_then(|offset| offset.checked_add(range.first_id))
                    .and_then(|id| DrcIndex::new(range.kind, id))
                    .ok_or(HotplugError::RangeOverflows(*range))?;
                self.drcs.entry(id).or_insert_with(|| Drc::new(id));
                self.touched.push(Touched::Drc(id));
            }
        }
        Ok(())
    }

    fn check_drcs(&self, drcs: &[DrcIndex]) -> Result<DrcKind, HotplugError> {
        let first = drcs.first().ok_or(HotplugError::NoDrc)?;
        let kind = first.kind().ok_or(HotplugError::UnknownType(*first))?;
        for index in drcs {
            if !self.drcs.contains_key(index) {
                return Err(HotplugError::NoSuchDrc(*index));
            }
            if index.kind() != Some(kind) {
                return Err(HotplugError::MixedTypes);
            }
        }
        Ok(kind)
    }

    /// Attaches `device` to `drcs`; a hot plug queues the add event.
    pub fn plug(
        &mut self,
        drcs: &[DrcIndex],
        device: &str,
        cold: bool,
    ) -> Result<Vec<Effect>, HotplugError> {
        self.check_drcs(drcs)?;
        if device.is_empty() || device.len() > MAX_DEVICE_ID {
            return Err(HotplugError::BadDeviceId(device.len()));
        }
        if self.devices.contains_key(device) {
            return Err(HotplugError::AlreadyPlugged(device.to_string()));
        }
        if drcs
            .windows(2)
            .any(|pair| pair[0].0.checked_add(1) != Some(pair[1].0))
        {
            return Err(HotplugError::NotConsecutive);
        }
        if let Some(busy) = drcs.iter().find(|i| self.drcs[i].device().is_some()) {
            return Err(HotplugError::DrcInUse(*busy));
        }
        for index in drcs {
            if let Some(drc) = self.drcs.get_mut(index) {
                drc.attach(device, cold)?;
                self.touched.push(Touched::Drc(*index));
            }
        }
        self.devices.insert(device.to_string(), drcs.to_vec());
        self.touched.push(Touched::Device(device.to_string()));
        let mut effects = Vec::new();
        if !cold {
            if let Some(target) = target(drcs) {
                effects.push(Effect::Queue(HotplugEvent {
                    action: HotplugAction::Add,
                    target,
                }));
            }
        }
        Ok(effects)
    }

    /// device_del. Returns the devices it released at once (the guest never
    /// took them) and, every time, the remove event to queue.
    pub fn unplug_request(
        &mut self,
        drcs: &[DrcIndex],
    ) -> Result<(Vec<Released>, Vec<Effect>), HotplugError> {
        self.check_drcs(drcs)?;
        // Every DRC of a device stays linked to it until the whole device
        // is released, whatever the guest gave back meanwhile.
        let device = self.drcs[&drcs[0]]
            .device()
            .map(str::to_string)
            .ok_or(HotplugError::NoDevice(drcs[0]))?;
        if self.devices.get(&device).map(Vec::as_slice) != Some(drcs) {
            return Err(HotplugError::NotOneDevice);
        }
        for index in drcs {
            if let Some(drc) = self.drcs.get_mut(index) {
                let before = drc.clone();
                drc.unplug_request();
                if *drc != before {
                    self.touched.push(Touched::Drc(*index));
                }
            }
        }
        let released = self.completed(&device).into_iter().collect();
        let mut effects = Vec::new();
        if let Some(target) = target(drcs) {
            effects.push(Effect::Queue(HotplugEvent {
                action: HotplugAction::Remove,
                target,
            }));
        }
        Ok((released, effects))
    }

    /// The device's release, once the guest gave back every DRC of it.
    fn completed(&mut self, device: &str) -> Option<Released> {
        let drcs = self.devices.get(device)?;
        if !drcs
            .iter()
            .all(|i| self.drcs.get(i).is_some_and(Drc::given_back))
        {
            return None;
        }
        self.each_drc_of(device, Drc::release);
        self.forget(device)
    }

    /// The device is gone: it has no DRC and no remove event any more.
    fn forget(&mut self, device: &str) -> Option<Released> {
        self.devices.remove(device)?;
        self.outstanding.remove(device);
        self.touched.push(Touched::Device(device.to_string()));
        Some(Released {
            device: device.to_string(),
        })
    }

    /// set-indicator: the RTAS status and what follows from it.
    pub fn set_indicator(
        &mut self,
        kind: u32,
        index: u32,
        value: u32,
    ) -> (RtasStatus, Vec<Effect>) {
        let Some(drc) = self.drcs.get_mut(&DrcIndex(index)) else {
            return (RtasStatus::ParameterError, Vec::new());
        };
        let device = drc.device().map(str::to_string);
        let before = drc.clone();
        let (status, outcome) = drc.set_indicator(kind, value);
        if *drc != before {
            self.touched.push(Touched::Drc(DrcIndex(index)));
        }
        let mut effects = Vec::new();
        match (outcome, device) {
            (Outcome::Released, Some(device)) => {
                if let Some(released) = self.completed(&device) {
                    effects.push(Effect::Notify(Notification::Released(released)));
                }
            }
            (Outcome::UnplugRefused { again }, Some(device)) => {
                // The guest refuses one remove event it fetched, by
                // re-unisolating DRCs of the device: every LMB it had
                // offlined, for a DIMM. The first of them starts the
                // refusal, reported once; a DRC re-unisolated again starts
                // the next one (the guest answers another event).
                let drcs = self.devices.get(&device).cloned().unwrap_or_default();
                let answered = |c: &Controller| {
                    drcs.iter()
                        .any(|i| c.drcs.get(i).is_some_and(Drc::answered))
                };
                let left = if again || !answered(self) {
                    self.each_drc_of(&device, Drc::new_refusal);
                    let left = self.answer_one(&device);
                    effects.push(Effect::Notify(Notification::UnplugRefused {
                        device: device.clone(),
                    }));
                    // A remove event still waiting was never fetched: it goes
                    // (and is answered when the event log says it went).
                    if let (true, Some(target)) = (left > 0, target(&drcs)) {
                        effects.push(Effect::Withdraw(HotplugEvent {
                            action: HotplugAction::Remove,
                            target,
                        }));
                    }
                    left
                } else {
                    self.outstanding(&device)
                };
                if left == 0 {
                    self.each_drc_of(&device, Drc::end_unplug);
                } else {
                    // Other events are outstanding: the request stands for
                    // every DRC, so that the guest's next refusal is heard.
                    let refusing = DrcIndex(index);
                    self.each_drc_of(&device, |drc| drc.refusal_heard(drc.index() == refusing));
                }
            }
            _ => {}
        }
        (status, effects)
    }

    /// get-sensor-state: status and value.
    pub fn sensor(&self, sensor: u32, index: u32) -> (RtasStatus, u32) {
        match (sensor, self.drcs.get(&DrcIndex(index))) {
            (indicator::DR_ENTITY_SENSE, Some(drc)) => drc.entity_sense(),
            _ => (RtasStatus::ParameterError, 0),
        }
    }

    /// configure-connector hands out the DRC's next step: status and the
    /// step's index; the walk's cursor moves on.
    pub fn configure_step(&mut self, index: u32) -> (RtasStatus, u32) {
        match self.drcs.get_mut(&DrcIndex(index)) {
            None => (RtasStatus::ParameterError, 0),
            Some(drc) if drc.may_configure() => {
                self.touched.push(Touched::Drc(DrcIndex(index)));
                (RtasStatus::Success, drc.next_configure_step())
            }
            Some(_) => (RtasStatus::NotConfigurable, 0),
        }
    }

    /// configure-connector handed out the whole fragment.
    pub fn configure_done(&mut self, index: u32) -> RtasStatus {
        match self.drcs.get_mut(&DrcIndex(index)) {
            Some(drc) if drc.may_configure() => {
                let before = drc.clone();
                drc.configured();
                if *drc != before {
                    self.touched.push(Touched::Drc(DrcIndex(index)));
                }
                RtasStatus::Success
            }
            Some(_) => RtasStatus::NotConfigurable,
            None => RtasStatus::ParameterError,
        }
    }

    /// Machine reset; returns the devices whose pending unplug completed.
    pub fn reset(&mut self) -> Vec<Released> {
        // The event queue is emptied too: no remove event is outstanding.
        for device in std::mem::take(&mut self.outstanding).into_keys() {
            self.touched.push(Touched::Device(device));
        }
        // A device whose unplug is pending goes whole, also one the guest
        // gave part of back before it refused another part.
        let pending: Vec<String> = self
            .devices
            .iter()
            .filter(|(_, drcs)| {
                drcs.iter()
                    .any(|i| self.drcs.get(i).is_some_and(Drc::unplug_requested))
            })
            .map(|(device, _)| device.clone())
            .collect();
        for device in &pending {
            self.each_drc_of(device, Drc::complete_unplug_at_reset);
        }
        for drc in self.drcs.values_mut() {
            let before = drc.clone();
            drc.reset();
            if *drc != before {
                self.touched.push(Touched::Drc(drc.index()));
            }
        }
        pending.iter().filter_map(|d| self.forget(d)).collect()
    }

    /// A page of the table from row `from`.
    pub fn list(&self, from: u32) -> (Vec<DrcInfo>, Option<u32>) {
        let rows: Vec<DrcInfo> = self
            .drcs
            .values()
            .skip(from as usize)
            .take(DRCS_PER_PAGE)
            .map(|drc| DrcInfo {
                index: drc.index(),
                state: drc.state(),
                device: drc.device().map(str::to_string),
                unplug_requested: drc.unplug_requested(),
            })
            .collect();
        let end = from as usize + rows.len();
        let next = (end < self.drcs.len()).then_some(end as u32);
        (rows, next)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ipc_proto::papr::DrcState;
    use RtasStatus::{ParameterError, Success};

    const CORE1: DrcIndex = DrcIndex(0x1000_0001);

    /// Four CPU DRCs and eight LMB DRCs.
    pub(crate) fn test_ranges() -> Vec<DrcRange> {
        vec![
            DrcRange {
                kind: DrcKind::Cpu,
                first_id: 0,
                count: 4,
                step: 1,
            },
            DrcRange {
                kind: DrcKind::Lmb,
                first_id: 4,
                count: 8,
                step: 1,
            },
        ]
    }

    /// The LMB DRCs of `ids`.
    fn lmbs(ids: std::ops::Range<u32>) -> Vec<DrcIndex> {
        ids.map(|id| DrcIndex::new(DrcKind::Lmb, id).unwrap())
            .collect()
    }

    fn controller() -> Controller {
        let mut c = Controller::default();
        c.define(&test_ranges()).unwrap();
        c
    }

    fn remove_event(drc: DrcIndex) -> Effect {
        Effect::Queue(HotplugEvent {
            action: HotplugAction::Remove,
            target: HotplugTarget::CpuByIndex(drc),
        })
    }

    /// Drives the guest side of an acquire: entity sense 2, usable, unisolate, configure.
    fn acquire(c: &mut Controller, drc: DrcIndex) {
        assert_eq!(c.sensor(9003, drc.0), (Success, 2));
        assert_eq!(c.set_indicator(9003, drc.0, 1).0, Success);
        assert_eq!(c.set_indicator(9001, drc.0, 1).0, Success);
        assert_eq!(c.configure_step(drc.0), (Success, 0));
        assert_eq!(c.configure_done(drc.0), Success);
    }

    #[test]
    fn hot_plug_then_guest_acquires_then_unplug_completes_on_release() {
        let mut c = controller();
        let effects = c.plug(&[CORE1], "core1", false).unwrap();
        assert_eq!(
            effects,
            [Effect::Queue(HotplugEvent {
                action: HotplugAction::Add,
                target: HotplugTarget::CpuByIndex(CORE1)
            })]
        );
        acquire(&mut c, CORE1);
        let (released, effects) = c.unplug_request(&[CORE1]).unwrap();
        assert!(released.is_empty());
        assert_eq!(effects, [remove_event(CORE1)]);
        // Guest release: sensor 1, isolate, unusable.
        assert_eq!(c.sensor(9003, CORE1.0), (Success, 1));
        assert_eq!(c.set_indicator(9001, CORE1.0, 0), (Success, vec![]));
        let (status, effects) = c.set_indicator(9003, CORE1.0, 0);
        assert_eq!(status, Success);
        assert_eq!(
            effects,
            [Effect::Notify(Notification::Released(Released {
                device: "core1".into(),
            }))]
        );
        // Re-plug of the same DRC works.
        c.plug(&[CORE1], "core1", false).unwrap();
    }

    #[test]
    fn a_refusal_is_reported_once_and_a_retry_asks_again() {
        let mut c = controller();
        c.plug(&[CORE1], "core1", false).unwrap();
        acquire(&mut c, CORE1);
        for _ in 0..3 {
            // Every device_del re-sends the event; detach happens once.
            let (_, effects) = c.unplug_request(&[CORE1]).unwrap();
            assert_eq!(effects, [remove_event(CORE1)]);
        }
        // The event log coalesced the three: one event, which the guest fetches.
        c.event_queued(&REMOVE_CORE1);
        let (status, effects) = c.set_indicator(9001, CORE1.0, 1);
        assert_eq!(status, Success);
        assert_eq!(
            effects,
            [Effect::Notify(Notification::UnplugRefused {
                device: "core1".into()
            })]
        );
        // A second unisolate is a plain no-op: no second report.
        assert_eq!(c.set_indicator(9001, CORE1.0, 1), (Success, vec![]));
        let (rows, _) = c.list(0);
        let row = rows.iter().find(|r| r.index == CORE1).unwrap();
        assert_eq!(
            (row.state, row.unplug_requested),
            (DrcState::Configured, false)
        );
        // Retry: asked again, and this time given back.
        c.unplug_request(&[CORE1]).unwrap();
        c.set_indicator(9001, CORE1.0, 0);
        let (_, effects) = c.set_indicator(9003, CORE1.0, 0);
        assert!(matches!(
            effects[..],
            [Effect::Notify(Notification::Released(_))]
        ));
    }

    #[test]
    fn unplug_before_the_guest_acquired_completes_at_once() {
        let mut c = controller();
        c.plug(&[CORE1], "core1", false).unwrap();
        let (released, effects) = c.unplug_request(&[CORE1]).unwrap();
        assert_eq!(released.len(), 1);
        assert_eq!(effects, [remove_event(CORE1)]);
    }

    #[test]
    fn reset_completes_pending_unplugs_and_configures_the_rest() {
        let mut c = controller();
        c.plug(&[DrcIndex(0x1000_0000)], "core0", true).unwrap();
        c.plug(&[CORE1], "core1", false).unwrap();
        acquire(&mut c, CORE1);
        c.plug(&[DrcIndex(0x1000_0002)], "core2", false).unwrap();
        c.unplug_request(&[CORE1]).unwrap();
        let released = c.reset();
        assert_eq!(released.len(), 1);
        assert_eq!(released[0].device, "core1");
        let (rows, next) = c.list(0);
        assert_eq!(next, None);
        let state = |i: u32| rows.iter().find(|r| r.index.0 == i).unwrap().state;
        assert_eq!(state(0x1000_0000), DrcState::Configured);
        assert_eq!(state(0x1000_0001), DrcState::Unusable);
        assert_eq!(state(0x1000_0002), DrcState::Configured);
    }

    #[test]
    fn a_dimm_refusal_rolls_back_all_its_lmbs_once() {
        let mut c = controller();
        let lmbs = lmbs(4..6);
        c.plug(&lmbs, "dimm0", true).unwrap();
        let (_, effects) = c.unplug_request(&lmbs).unwrap();
        assert_eq!(
            effects,
            [Effect::Queue(HotplugEvent {
                action: HotplugAction::Remove,
                target: HotplugTarget::LmbsCountIndexed {
                    count: 2,
                    first: lmbs[0]
                }
            })]
        );
        let (_, first) = c.set_indicator(9001, lmbs[0].0, 1);
        assert_eq!(first.len(), 1, "the report: {first:?}");
        let (_, second) = c.set_indicator(9001, lmbs[1].0, 1);
        assert!(second.is_empty(), "one refusal, one report");
        // Without a pending unplug the guest cannot take a configured LMB away.
        assert_eq!(
            c.set_indicator(9001, lmbs[0].0, 0).0,
            RtasStatus::HardwareError
        );
    }

    /// The guest releases one LMB of a DIMM (isolate, unusable).
    fn give_back(c: &mut Controller, lmb: DrcIndex) -> Vec<Effect> {
        assert_eq!(c.set_indicator(9001, lmb.0, 0).0, Success);
        let (status, effects) = c.set_indicator(9003, lmb.0, 0);
        assert_eq!(status, Success);
        effects
    }

    #[test]
    fn a_refusal_after_a_partial_release_leaves_an_unplug_that_can_complete() {
        let mut c = controller();
        let lmbs = lmbs(4..6);
        c.plug(&lmbs, "dimm0", true).unwrap();
        c.unplug_request(&lmbs).unwrap();
        // The guest gives the first LMB back: the DIMM is not gone yet, and
        // both LMBs still name it.
        assert!(give_back(&mut c, lmbs[0]).is_empty());
        assert_eq!(c.drc(lmbs[0]).unwrap().device(), Some("dimm0"));
        assert_eq!(c.device("dimm0"), Some(&lmbs[..]));
        // A repeated device_del reaches the guest again.
        let (released, effects) = c.unplug_request(&lmbs).unwrap();
        assert!(released.is_empty());
        assert_eq!(effects.len(), 1);
        // Then it refuses by re-unisolating the other LMB: one refusal; the
        // LMB it had given back is attached again, for it to take back.
        let (_, effects) = c.set_indicator(9001, lmbs[1].0, 1);
        assert!(matches!(
            effects[..],
            [Effect::Notify(Notification::UnplugRefused { .. })]
        ));
        let first = c.drc(lmbs[0]).unwrap();
        assert_eq!(
            (first.state(), first.device(), first.unplug_requested()),
            (DrcState::Unusable, Some("dimm0"), false)
        );
        // The next device_del can complete: the first LMB is given back at
        // once, the second by the guest.
        let (released, _) = c.unplug_request(&lmbs).unwrap();
        assert!(released.is_empty());
        assert_eq!(
            give_back(&mut c, lmbs[1]),
            [Effect::Notify(Notification::Released(Released {
                device: "dimm0".into()
            }))]
        );
        assert!(lmbs.iter().all(|i| c.drc(*i).unwrap().device().is_none()));
        assert_eq!(c.device("dimm0"), None);
    }

    #[test]
    fn reset_finishes_a_partly_released_unplug_or_keeps_a_refused_device_whole() {
        let lmbs = lmbs(4..6);
        // Pending after a partial release: the whole DIMM goes.
        let mut c = controller();
        c.plug(&lmbs, "dimm0", true).unwrap();
        c.unplug_request(&lmbs).unwrap();
        give_back(&mut c, lmbs[0]);
        let released = c.reset();
        assert_eq!(released.len(), 1);
        assert!(lmbs.iter().all(|i| c.drc(*i).unwrap().device().is_none()));
        // Refused after a partial release: the DIMM stays, whole, configured.
        let mut c = controller();
        c.plug(&lmbs, "dimm0", true).unwrap();
        c.unplug_request(&lmbs).unwrap();
        give_back(&mut c, lmbs[0]);
        c.set_indicator(9001, lmbs[1].0, 1);
        assert!(c.reset().is_empty());
        for lmb in &lmbs {
            let drc = c.drc(*lmb).unwrap();
            assert_eq!(
                (drc.state(), drc.device()),
                (DrcState::Configured, Some("dimm0"))
            );
        }
    }

    const REMOVE_CORE1: HotplugEvent = HotplugEvent {
        action: HotplugAction::Remove,
        target: HotplugTarget::CpuByIndex(CORE1),
    };

    #[test]
    fn each_remove_event_the_guest_fetched_and_refused_is_reported_once() {
        let mut c = controller();
        c.plug(&[CORE1], "core1", false).unwrap();
        acquire(&mut c, CORE1);
        // Two remove events the event log queued: the guest fetched the
        // first, then (Linux's interrupt handler) the second, then refuses both.
        for _ in 0..2 {
            c.unplug_request(&[CORE1]).unwrap();
            c.event_queued(&REMOVE_CORE1);
        }
        let report = Effect::Notify(Notification::UnplugRefused {
            device: "core1".into(),
        });
        let (_, first) = c.set_indicator(9001, CORE1.0, 1);
        assert_eq!(first, [report.clone(), Effect::Withdraw(REMOVE_CORE1)]);
        // The withdrawal found nothing (the guest had it): the request stands.
        assert_eq!(c.outstanding("core1"), 1);
        assert!(c.drc(CORE1).unwrap().unplug_requested());
        let (_, second) = c.set_indicator(9001, CORE1.0, 1);
        assert_eq!(second, [report]);
        assert!(!c.drc(CORE1).unwrap().unplug_requested());
        assert_eq!(c.set_indicator(9001, CORE1.0, 1), (Success, vec![]));

        // A second event the guest never fetched is withdrawn: one report.
        for _ in 0..2 {
            c.unplug_request(&[CORE1]).unwrap();
            c.event_queued(&REMOVE_CORE1);
        }
        let (_, effects) = c.set_indicator(9001, CORE1.0, 1);
        assert_eq!(effects.len(), 2);
        c.event_withdrawn(&REMOVE_CORE1);
        assert_eq!(c.outstanding("core1"), 0);
        assert!(!c.drc(CORE1).unwrap().unplug_requested());
        assert_eq!(c.set_indicator(9001, CORE1.0, 1), (Success, vec![]));
    }

    #[test]
    fn a_dimm_refusal_that_re_unisolates_several_lmbs_is_one_refusal() {
        let mut c = controller();
        let lmbs = lmbs(4..7);
        c.plug(&lmbs, "dimm0", true).unwrap();
        let remove = HotplugEvent {
            action: HotplugAction::Remove,
            target: HotplugTarget::LmbsCountIndexed {
                count: 3,
                first: lmbs[0],
            },
        };
        for _ in 0..2 {
            c.unplug_request(&lmbs).unwrap();
            c.event_queued(&remove);
        }
        // Each refusal re-adds the two LMBs it had offlined (the third was
        // pinned): two re-unisolations, one refusal, one report.
        for round in 0..2 {
            let (_, effects) = c.set_indicator(9001, lmbs[0].0, 1);
            let reports = effects
                .iter()
                .filter(|e| matches!(e, Effect::Notify(Notification::UnplugRefused { .. })))
                .count();
            assert_eq!(reports, 1, "round {round}: {effects:?}");
            let (_, effects) = c.set_indicator(9001, lmbs[1].0, 1);
            assert!(effects.is_empty(), "round {round}: {effects:?}");
        }
        assert_eq!(c.outstanding("dimm0"), 0);
        assert!(lmbs.iter().all(|i| !c.drc(*i).unwrap().unplug_requested()));
        assert!(c.reset().is_empty());
    }

    #[test]
    fn bad_requests_are_refused() {
        let mut c = controller();
        assert!(c.plug(&[DrcIndex(0x1000_0009)], "x", false).is_err());
        assert!(c.plug(&[], "x", false).is_err());
        assert!(c.plug(&[CORE1], "", false).is_err());
        c.plug(&[CORE1], "core1", false).unwrap();
        assert!(c.plug(&[CORE1], "other", false).is_err());
        assert!(c.plug(&[DrcIndex(0x1000_0002)], "core1", false).is_err());
        assert!(c.unplug_request(&[DrcIndex(0x1000_0002)]).is_err());
        assert_eq!(
            c.set_indicator(9001, 0x1000_0009, 1),
            (ParameterError, vec![])
        );
        assert_eq!(c.set_indicator(9002, CORE1.0, 1).0, ParameterError);
        assert_eq!(c.sensor(9001, CORE1.0), (ParameterError, 0));
        assert_eq!(c.sensor(9003, 0x1000_0009), (ParameterError, 0));
        assert_eq!(c.configure_step(CORE1.0).0, RtasStatus::NotConfigurable);
        assert_eq!(c.configure_step(0x1000_0009).0, ParameterError);
        assert!(c
            .define(&[DrcRange {
                kind: DrcKind::Lmb,
                first_id: u32::MAX - 1,
                count: 5,
                step: 1
            }])
            .is_err());
    }

    #[test]
    fn the_table_pages() {
        let mut c = Controller::default();
        c.define(&[DrcRange {
            kind: DrcKind::Lmb,
            first_id: 4,
            count: 16_384,
            step: 1,
        }])
        .unwrap();
        let mut from = Some(0);
        let mut rows = 0;
        while let Some(start) = from {
            let (page, next) = c.list(start);
            rows += page.len();
            from = next;
        }
        assert_eq!(rows, 16_384);
    }
}
