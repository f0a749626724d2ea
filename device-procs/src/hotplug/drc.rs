//! One DRC and its state machine: a logical one (CPU core, LMB) as in the
//! PAPR reference §2.3 and §2.6, a physical one (a PCI slot function) as in
//! the PCI reference §2 (QEMU's physical DRC): each guest request is one
//! `match` on (state, value), so the code reads like the table it
//! implements.

use super::HotplugError;
use ipc_proto::papr::{indicator, DrcIndex, DrcKind, DrcState, RtasStatus};

/// Isolation values (set-indicator 9001).
const ISOLATE: u32 = 0;
const UNISOLATE: u32 = 1;
/// Allocation values (set-indicator 9003).
const UNUSABLE: u32 = 0;
const USABLE: u32 = 1;
/// dr-entity-sense values (get-sensor-state 9003).
pub const SENSE_PRESENT: u32 = 1;
/// dr-entity-sense: the DRC is not usable by the guest now.
pub const SENSE_UNUSABLE: u32 = 2;
/// dr-entity-sense of a physical DRC without a device.
pub const SENSE_EMPTY: u32 = 0;
/// DR indicator values (set-indicator 9002, physical DRCs): inactive,
/// active, identify, action; a reset shows whether a device is there.
const DR_INDICATOR_INACTIVE: u32 = 0;
const DR_INDICATOR_ACTIVE: u32 = 1;
const DR_INDICATOR_LAST: u32 = 3;

/// What a transition means beyond its status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing more.
    Nothing,
    /// The guest gave this DRC back with an unplug pending (or never took
    /// it): it stays linked to its device until every DRC of the device is
    /// given back, when the device is released as a whole.
    Released,
    /// The guest re-unisolated a DRC with a pending unplug: it refuses the
    /// unplug, which is withdrawn from this DRC. `again`: this DRC was
    /// re-unisolated in the refusal being answered already, so this is the
    /// guest's answer to another remove event.
    UnplugRefused {
        /// The DRC had answered the current refusal already.
        again: bool,
    },
}

/// Whether a DRC is logical (CPU core, LMB: allocation and isolation,
/// no DR indicator) or physical (a PCI slot: isolation and a DR indicator,
/// no allocation state); the tables dispatch on this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrcClass {
    /// CPU cores and LMBs.
    Logical,
    /// PCI slot functions.
    Physical,
}

impl DrcClass {
    /// The class of the DRC at `index`.
    pub fn of(index: DrcIndex) -> DrcClass {
        match index.kind() {
            Some(kind) if kind.is_physical() => DrcClass::Physical,
            _ => DrcClass::Logical,
        }
    }

    /// The state of a DRC the guest does not hold: logical UNUSABLE,
    /// physical POWERON (QEMU's "empty state").
    pub const fn empty_state(self) -> DrcState {
        match self {
            DrcClass::Logical => DrcState::Unusable,
            DrcClass::Physical => DrcState::PowerOn,
        }
    }

    /// The state of a DRC whose device the guest uses (its "ready state").
    pub const fn ready_state(self) -> DrcState {
        match self {
            DrcClass::Logical => DrcState::Configured,
            DrcClass::Physical => DrcState::PhysicalConfigured,
        }
    }
}

/// One DRC. Closed: its fields change only through the transitions below
/// (each a row of the PAPR tables, or of the unplug rules).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drc {
    index: DrcIndex,
    state: DrcState,
    /// The attached device.
    device: Option<String>,
    /// The host asked for the device back.
    unplug_requested: bool,
    /// The configure-connector walk's next step: a new walk (AVAILABLE →
    /// UNISOLATE) and a completed one start from 0.
    configure_step: u32,
    /// The guest re-unisolated it in the refusal being answered: a device's
    /// refusal may re-unisolate several of its DRCs (Linux adds back every
    /// LMB it had offlined), which is one refusal, not several.
    answered: bool,
    /// A physical DRC's DR indicator (0..=3); 0 for a logical one.
    dr_indicator: u32,
}

impl Drc {
    /// An empty DRC.
    pub fn new(index: DrcIndex) -> Drc {
        let state = DrcClass::of(index).empty_state();
        Drc::restored(index, state, None, false, 0, false, DR_INDICATOR_INACTIVE)
    }

    /// A DRC as the state region recorded it (the region was validated).
    pub fn restored(
        index: DrcIndex,
        state: DrcState,
        device: Option<String>,
        unplug_requested: bool,
        configure_step: u32,
        answered: bool,
        dr_indicator: u32,
    ) -> Drc {
        Drc {
            index,
            state,
            device,
            unplug_requested,
            configure_step,
            answered,
            dr_indicator,
        }
    }

    fn class(&self) -> DrcClass {
        DrcClass::of(self.index)
    }

    /// A physical DRC's DR indicator.
    pub fn dr_indicator(&self) -> u32 {
        self.dr_indicator
    }

    /// Its index.
    pub fn index(&self) -> DrcIndex {
        self.index
    }

    /// Its state.
    pub fn state(&self) -> DrcState {
        self.state
    }

    /// The attached device's id.
    pub fn device(&self) -> Option<&str> {
        self.device.as_deref()
    }

    /// The host asked for the device back.
    pub fn unplug_requested(&self) -> bool {
        self.unplug_requested
    }

    /// The configure-connector walk's next step.
    pub fn configure_step(&self) -> u32 {
        self.configure_step
    }

    /// It answered the refusal being handled.
    pub fn answered(&self) -> bool {
        self.answered
    }

    fn is_lmb(&self) -> bool {
        self.index.kind() == Some(DrcKind::Lmb)
    }

    /// set-indicator: `indicator` set to `value`.
    pub fn set_indicator(&mut self, indicator: u32, value: u32) -> (RtasStatus, Outcome) {
        match (self.class(), indicator) {
            (DrcClass::Logical, indicator::ISOLATION_STATE) => self.set_isolation(value),
            (DrcClass::Logical, indicator::ALLOCATION_STATE) => self.set_allocation(value),
            (DrcClass::Physical, indicator::ISOLATION_STATE) => self.set_physical_isolation(value),
            (DrcClass::Physical, indicator::DR_INDICATOR) => self.set_dr_indicator(value),
            // Logical DRCs have no DR indicator, physical ones no
            // allocation state.
            _ => (RtasStatus::ParameterError, Outcome::Nothing),
        }
    }

    /// set-indicator 9001 (isolation-state) on a physical DRC. Isolating a
    /// configured one gives it back: its device goes if the host asked for
    /// it. There is no refusal: re-unisolating is a no-op (QEMU's physical
    /// DRC has no refusal signal, nor does Linux give one for PCI).
    fn set_physical_isolation(&mut self, value: u32) -> (RtasStatus, Outcome) {
        use DrcState::*;
        match (self.state, value) {
            (PowerOn, UNISOLATE) => {
                if self.device.is_none() {
                    return (RtasStatus::ParameterError, Outcome::Nothing);
                }
                self.state = PhysicalUnisolate;
                self.configure_step = 0;
                (RtasStatus::Success, Outcome::Nothing)
            }
            (PowerOn, ISOLATE) => (RtasStatus::Success, Outcome::Nothing),
            (PhysicalUnisolate | PhysicalConfigured, UNISOLATE) => {
                (RtasStatus::Success, Outcome::Nothing)
            }
            (PhysicalUnisolate, ISOLATE) => (RtasStatus::ParameterError, Outcome::Nothing),
            (PhysicalConfigured, ISOLATE) => {
                self.state = PowerOn;
                match self.unplug_requested {
                    true => (RtasStatus::Success, Outcome::Released),
                    false => (RtasStatus::Success, Outcome::Nothing),
                }
            }
            _ => (RtasStatus::ParameterError, Outcome::Nothing),
        }
    }

    /// set-indicator 9002 (DR indicator) on a physical DRC: stored.
    fn set_dr_indicator(&mut self, value: u32) -> (RtasStatus, Outcome) {
        if value > DR_INDICATOR_LAST {
            return (RtasStatus::ParameterError, Outcome::Nothing);
        }
        self.dr_indicator = value;
        (RtasStatus::Success, Outcome::Nothing)
    }

    /// set-indicator 9001 (isolation-state).
    fn set_isolation(&mut self, value: u32) -> (RtasStatus, Outcome) {
        use DrcState::*;
        match (self.state, value) {
            (Unusable, UNISOLATE) => (RtasStatus::ParameterError, Outcome::Nothing),
            (Available, UNISOLATE) => {
                if self.device.is_none() {
                    return (RtasStatus::ParameterError, Outcome::Nothing);
                }
                self.state = Unisolate;
                self.configure_step = 0;
                (RtasStatus::Success, Outcome::Nothing)
            }
            // A no-op that succeeds, unless an unplug is pending: then it is
            // the guest's "I refuse" (Linux ≥ 5.13 after a failed removal).
            (Unisolate | Configured, UNISOLATE) => {
                if self.unplug_requested && self.device.is_some() {
                    self.unplug_requested = false;
                    let again = self.answered;
                    (RtasStatus::Success, Outcome::UnplugRefused { again })
                } else {
                    (RtasStatus::Success, Outcome::Nothing)
                }
            }
            (Unusable | Available, ISOLATE) => (RtasStatus::Success, Outcome::Nothing),
            (Unisolate, ISOLATE) => (RtasStatus::ParameterError, Outcome::Nothing),
            (Configured, ISOLATE) => {
                // An LMB the host did not ask for cannot be taken away by the
                // guest (a by-count removal must not pick another DIMM's LMBs).
                if self.is_lmb() && !self.unplug_requested {
                    return (RtasStatus::HardwareError, Outcome::Nothing);
                }
                self.state = Available;
                (RtasStatus::Success, Outcome::Nothing)
            }
            _ => (RtasStatus::ParameterError, Outcome::Nothing),
        }
    }

    /// set-indicator 9003 (allocation-state).
    fn set_allocation(&mut self, value: u32) -> (RtasStatus, Outcome) {
        use DrcState::*;
        match (self.state, value) {
            (Unusable, USABLE) => {
                if self.device.is_none() || self.unplug_requested {
                    return (RtasStatus::ParameterError, Outcome::Nothing);
                }
                self.state = Available;
                (RtasStatus::Success, Outcome::Nothing)
            }
            (Available | Unisolate | Configured, USABLE) => (RtasStatus::Success, Outcome::Nothing),
            (Unusable, UNUSABLE) => (RtasStatus::Success, Outcome::Nothing),
            (Available, UNUSABLE) => {
                self.state = Unusable;
                if self.unplug_requested {
                    (RtasStatus::Success, Outcome::Released)
                } else {
                    (RtasStatus::Success, Outcome::Nothing)
                }
            }
            (Unisolate | Configured, UNUSABLE) => (RtasStatus::ParameterError, Outcome::Nothing),
            _ => (RtasStatus::ParameterError, Outcome::Nothing),
        }
    }

    /// get-sensor-state 9003 (dr-entity-sense): status and value.
    pub fn entity_sense(&self) -> (RtasStatus, u32) {
        let sense = match self.class() {
            // A slot senses its device, in any state.
            DrcClass::Physical if self.device.is_some() => SENSE_PRESENT,
            DrcClass::Physical => SENSE_EMPTY,
            DrcClass::Logical if self.state == DrcState::Unusable => SENSE_UNUSABLE,
            DrcClass::Logical => SENSE_PRESENT,
        };
        (RtasStatus::Success, sense)
    }

    /// ibm,configure-connector may walk this DRC's device tree now.
    pub fn may_configure(&self) -> bool {
        self.device.is_some()
            && matches!(
                self.state,
                DrcState::Unisolate
                    | DrcState::Configured
                    | DrcState::PhysicalUnisolate
                    | DrcState::PhysicalConfigured
            )
    }

    /// The walk handed out step `configure_step`: the index, and the cursor moves on.
    pub fn next_configure_step(&mut self) -> u32 {
        let index = self.configure_step;
        self.configure_step = index.saturating_add(1);
        index
    }

    /// The walk handed out the whole fragment.
    pub fn configured(&mut self) {
        if self.may_configure() {
            self.state = self.class().ready_state();
            self.configure_step = 0;
        }
    }

    /// Links a device. A cold plug resets the DRC to CONFIGURED at once.
    pub fn attach(&mut self, device: &str, cold: bool) -> Result<(), HotplugError> {
        if self.device.is_some() || self.state != self.class().empty_state() {
            return Err(HotplugError::DrcInUse(self.index));
        }
        self.device = Some(device.to_string());
        if cold {
            self.reset();
        }
        Ok(())
    }

    /// The host asks for the device back; this DRC is given back at once
    /// when the guest does not hold it.
    pub fn unplug_request(&mut self) -> Outcome {
        if self.device.is_none() {
            return Outcome::Nothing;
        }
        self.unplug_requested = true;
        if self.state == self.class().empty_state() {
            return Outcome::Released;
        }
        Outcome::Nothing
    }

    /// A refusal of the device's unplug is heard while remove events are
    /// still outstanding: the request stands again, so that the guest's
    /// next refusal (or release) is heard too. `answering`: this is a DRC
    /// the guest re-unisolated in this refusal.
    pub fn refusal_heard(&mut self, answering: bool) {
        if self.device.is_some() {
            self.unplug_requested = true;
            self.answered |= answering;
        }
    }

    /// The guest answers another remove event: no DRC of the device has
    /// answered it yet.
    pub fn new_refusal(&mut self) {
        self.answered = false;
    }

    /// The device's unplug is over (refused with no remove event left):
    /// the device stays, asked for by nobody.
    pub fn end_unplug(&mut self) {
        self.unplug_requested = false;
        self.answered = false;
    }

    /// A machine reset completes the unplug of this DRC's device, which is
    /// pending on another of its DRCs: the device goes whole.
    pub fn complete_unplug_at_reset(&mut self) {
        if self.device.is_some() {
            self.unplug_requested = true;
        }
    }

    /// The guest does not hold it and the host asked it back: it waits for
    /// the device's other DRCs. A refusal of the unplug (which clears the
    /// request) re-attaches it: the guest may acquire it again.
    pub fn given_back(&self) -> bool {
        self.device.is_some() && self.unplug_requested && self.state == self.class().empty_state()
    }

    /// Unlinks the device: its unplug completed.
    pub fn release(&mut self) {
        self.device = None;
        self.unplug_requested = false;
        self.answered = false;
    }

    /// Machine reset: a pending unplug completes; then an attached device is
    /// configured, an empty DRC in its empty state, and a slot's DR
    /// indicator shows whether it holds a device.
    pub fn reset(&mut self) -> Outcome {
        let outcome = if self.unplug_requested {
            self.release();
            Outcome::Released
        } else {
            Outcome::Nothing
        };
        let class = self.class();
        self.state = match self.device.is_some() {
            true => class.ready_state(),
            false => class.empty_state(),
        };
        if class == DrcClass::Physical {
            self.dr_indicator = match self.device.is_some() {
                true => DR_INDICATOR_ACTIVE,
                false => DR_INDICATOR_INACTIVE,
            };
        }
        self.answered = false;
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DrcState::*;

    fn cpu() -> DrcIndex {
        DrcIndex::new(DrcKind::Cpu, 1).unwrap()
    }

    fn lmb() -> DrcIndex {
        DrcIndex::new(DrcKind::Lmb, 4).unwrap()
    }

    /// PHB 0, root bus, slot 1 function 0.
    fn slot() -> DrcIndex {
        DrcIndex::new(DrcKind::Pci, ipc_proto::papr::pci_drc_id(0, 0, 8).unwrap()).unwrap()
    }

    /// A DRC in `state`, with a device attached or not, unplug requested or
    /// not, having answered the current refusal or not.
    fn drc(index: DrcIndex, state: DrcState, device: bool, unplug: bool, answered: bool) -> Drc {
        Drc::restored(
            index,
            state,
            device.then(|| "dev".to_string()),
            unplug,
            0,
            answered,
            0,
        )
    }

    /// Before: state, device, unplug requested, answered, value. After:
    /// status, state, unplug requested, answered, outcome.
    type Cell = (
        DrcState,
        bool,
        bool,
        bool,
        u32,
        i32,
        DrcState,
        bool,
        bool,
        Outcome,
    );

    fn check(index: DrcIndex, indicator: u32, cells: &[Cell]) {
        for &(
            state,
            device,
            unplug,
            answered,
            value,
            status,
            after,
            unplug_after,
            answered_after,
            outcome,
        ) in cells
        {
            let mut d = drc(index, state, device, unplug, answered);
            let (got_status, got_outcome) = d.set_indicator(indicator, value);
            assert_eq!(
                (
                    (got_status.code(), got_outcome),
                    (d.state(), d.unplug_requested(), d.answered())
                ),
                ((status, outcome), (after, unplug_after, answered_after)),
                "{state:?} device={device} unplug={unplug} answered={answered} value={value}"
            );
        }
    }

    const REFUSED: Outcome = Outcome::UnplugRefused { again: false };
    const REFUSED_AGAIN: Outcome = Outcome::UnplugRefused { again: true };

    #[test]
    fn isolation_table() {
        let n = Outcome::Nothing;
        #[rustfmt::skip]
        let cells: &[Cell] = &[
            // state, device, unplug, answered, value → status, state, unplug, answered, outcome
            (Unusable, true, false, false, UNISOLATE, -3, Unusable, false, false, n),
            (Available, true, false, false, UNISOLATE, 0, Unisolate, false, false, n),
            (Available, false, false, false, UNISOLATE, -3, Available, false, false, n),
            (Unisolate, true, false, false, UNISOLATE, 0, Unisolate, false, false, n),
            (Configured, true, false, false, UNISOLATE, 0, Configured, false, false, n),
            // The guest's refusal: the request is withdrawn from the DRC;
            // whether it answered this refusal already is the outcome's.
            (Configured, true, true, false, UNISOLATE, 0, Configured, false, false, REFUSED),
            (Unisolate, true, true, false, UNISOLATE, 0, Unisolate, false, false, REFUSED),
            (Configured, true, true, true, UNISOLATE, 0, Configured, false, true, REFUSED_AGAIN),
            (Unusable, true, false, false, ISOLATE, 0, Unusable, false, false, n),
            (Available, true, false, false, ISOLATE, 0, Available, false, false, n),
            (Unisolate, true, false, false, ISOLATE, -3, Unisolate, false, false, n),
            (Configured, true, false, false, ISOLATE, 0, Available, false, false, n),
            (Configured, true, true, false, ISOLATE, 0, Available, true, false, n),
            (Configured, true, false, false, 2, -3, Configured, false, false, n),
            (Available, true, false, false, 7, -3, Available, false, false, n),
        ];
        check(cpu(), indicator::ISOLATION_STATE, cells);
    }

    #[test]
    fn physical_isolation_table() {
        let n = Outcome::Nothing;
        let released = Outcome::Released;
        #[rustfmt::skip]
        let cells: &[Cell] = &[
            // state, device, unplug, answered, value → status, state, unplug, answered, outcome
            (PowerOn, true, false, false, UNISOLATE, 0, PhysicalUnisolate, false, false, n),
            (PowerOn, false, false, false, UNISOLATE, -3, PowerOn, false, false, n),
            (PowerOn, true, false, false, ISOLATE, 0, PowerOn, false, false, n),
            (PhysicalUnisolate, true, false, false, UNISOLATE, 0, PhysicalUnisolate, false, false, n),
            (PhysicalUnisolate, true, false, false, ISOLATE, -3, PhysicalUnisolate, false, false, n),
            // No refusal for a slot: re-unisolating leaves the request.
            (PhysicalConfigured, true, true, false, UNISOLATE, 0, PhysicalConfigured, true, false, n),
            (PhysicalConfigured, true, false, false, UNISOLATE, 0, PhysicalConfigured, false, false, n),
            // Isolating gives it back: the device goes if it was asked for.
            (PhysicalConfigured, true, false, false, ISOLATE, 0, PowerOn, false, false, n),
            (PhysicalConfigured, true, true, false, ISOLATE, 0, PowerOn, true, false, released),
            (PhysicalConfigured, true, false, false, 2, -3, PhysicalConfigured, false, false, n),
        ];
        check(slot(), indicator::ISOLATION_STATE, cells);
    }

    #[test]
    fn a_slot_has_a_dr_indicator_and_no_allocation_state() {
        let mut d = drc(slot(), PhysicalConfigured, true, false, false);
        for value in 0..=3 {
            assert_eq!(
                d.set_indicator(indicator::DR_INDICATOR, value),
                (RtasStatus::Success, Outcome::Nothing)
            );
            assert_eq!(d.dr_indicator(), value);
        }
        assert_eq!(
            d.set_indicator(indicator::DR_INDICATOR, 4),
            (RtasStatus::ParameterError, Outcome::Nothing)
        );
        assert_eq!(d.dr_indicator(), 3);
        assert_eq!(
            d.set_indicator(indicator::ALLOCATION_STATE, 1),
            (RtasStatus::ParameterError, Outcome::Nothing)
        );
        assert_eq!(d.state(), PhysicalConfigured);
    }

    #[test]
    fn a_slot_senses_its_device_in_any_state_and_resets_to_its_ready_or_empty_state() {
        let mut empty = Drc::new(slot());
        assert_eq!(empty.state(), PowerOn);
        assert_eq!(empty.entity_sense(), (RtasStatus::Success, SENSE_EMPTY));
        // A device the guest never took: asked back, it goes at once.
        empty.attach("disk0", false).unwrap();
        assert_eq!(empty.entity_sense(), (RtasStatus::Success, SENSE_PRESENT));
        assert_eq!(empty.unplug_request(), Outcome::Released);
        assert!(empty.given_back());
        empty.release();
        // Cold-plugged: configured, its indicator active.
        let mut cold = Drc::new(slot());
        cold.attach("disk1", true).unwrap();
        assert_eq!((cold.state(), cold.dr_indicator()), (PhysicalConfigured, 1));
        assert!(cold.may_configure());
        assert_eq!(
            cold.attach("disk2", false),
            Err(HotplugError::DrcInUse(slot()))
        );
        // A reset completes a pending unplug: empty, indicator inactive.
        assert_eq!(cold.unplug_request(), Outcome::Nothing);
        assert_eq!(cold.reset(), Outcome::Released);
        assert_eq!(
            (cold.state(), cold.device(), cold.dr_indicator()),
            (PowerOn, None, 0)
        );
        // A walk on an unisolated slot ends configured.
        let mut walked = drc(slot(), PhysicalUnisolate, true, false, false);
        assert!(walked.may_configure());
        walked.configured();
        assert_eq!(walked.state(), PhysicalConfigured);
    }

    #[test]
    fn isolating_a_configured_lmb_needs_an_unplug_request() {
        let n = Outcome::Nothing;
        #[rustfmt::skip]
        let cells: &[Cell] = &[
            (Configured, true, false, false, ISOLATE, -1, Configured, false, false, n),
            (Configured, true, true, false, ISOLATE, 0, Available, true, false, n),
        ];
        check(lmb(), indicator::ISOLATION_STATE, cells);
    }

    #[test]
    fn allocation_table() {
        let n = Outcome::Nothing;
        #[rustfmt::skip]
        let cells: &[Cell] = &[
            (Unusable, true, false, false, USABLE, 0, Available, false, false, n),
            (Unusable, false, false, false, USABLE, -3, Unusable, false, false, n),
            (Unusable, true, true, false, USABLE, -3, Unusable, true, false, n),
            (Available, true, false, false, USABLE, 0, Available, false, false, n),
            (Unisolate, true, false, false, USABLE, 0, Unisolate, false, false, n),
            (Configured, true, false, false, USABLE, 0, Configured, false, false, n),
            (Unusable, true, false, false, UNUSABLE, 0, Unusable, false, false, n),
            (Available, true, false, false, UNUSABLE, 0, Unusable, false, false, n),
            (Available, true, true, false, UNUSABLE, 0, Unusable, true, false, Outcome::Released),
            (Available, true, true, true, UNUSABLE, 0, Unusable, true, true, Outcome::Released),
            (Unisolate, true, false, false, UNUSABLE, -3, Unisolate, false, false, n),
            (Configured, true, false, false, UNUSABLE, -3, Configured, false, false, n),
            (Available, true, false, false, 2, -3, Available, false, false, n),
            (Available, true, false, false, 3, -3, Available, false, false, n),
        ];
        check(cpu(), indicator::ALLOCATION_STATE, cells);
    }

    #[test]
    fn logical_drcs_have_no_dr_indicator() {
        let mut d = drc(cpu(), Configured, true, false, false);
        assert_eq!(
            d.set_indicator(indicator::DR_INDICATOR, 1),
            (RtasStatus::ParameterError, Outcome::Nothing)
        );
        assert_eq!(d.state(), Configured);
    }

    /// The unplug rules' transitions, one row each: before (state, unplug
    /// requested, answered) → after (unplug requested, answered).
    #[test]
    fn refusal_bookkeeping_table() {
        type Row = (&'static str, fn(&mut Drc), bool, bool, bool, bool);
        #[rustfmt::skip]
        let rows: &[Row] = &[
            // transition, unplug, answered → unplug, answered
            ("new refusal", Drc::new_refusal, false, true, false, false),
            ("heard, answering", |d| d.refusal_heard(true), false, false, true, true),
            ("heard, another DRC", |d| d.refusal_heard(false), false, false, true, false),
            ("heard, answered before", |d| d.refusal_heard(false), false, true, true, true),
            ("end of the unplug", Drc::end_unplug, true, true, false, false),
            ("reset completes it", Drc::complete_unplug_at_reset, false, false, true, false),
            ("release", Drc::release, true, true, false, false),
        ];
        for &(name, transition, unplug, answered, unplug_after, answered_after) in rows {
            let mut d = drc(lmb(), Configured, true, unplug, answered);
            transition(&mut d);
            assert_eq!(
                (d.unplug_requested(), d.answered()),
                (unplug_after, answered_after),
                "{name}"
            );
        }
        // A DRC without a device is asked for nothing.
        let mut empty = drc(lmb(), Unusable, false, false, false);
        empty.refusal_heard(true);
        empty.complete_unplug_at_reset();
        assert_eq!((empty.unplug_requested(), empty.answered()), (false, false));
    }

    #[test]
    fn a_drc_given_back_keeps_its_device_until_the_device_is_released() {
        let mut d = drc(cpu(), Available, true, true, false);
        assert_eq!(
            d.set_indicator(indicator::ALLOCATION_STATE, UNUSABLE),
            (RtasStatus::Success, Outcome::Released)
        );
        assert!(d.given_back());
        assert_eq!(d.device(), Some("dev"));
        // Not the guest's to take again while the unplug stands.
        assert_eq!(
            d.set_indicator(indicator::ALLOCATION_STATE, USABLE).0,
            RtasStatus::ParameterError
        );
        d.release();
        assert_eq!((d.device(), d.unplug_requested()), (None, false));
        assert!(!d.given_back());
    }

    #[test]
    fn entity_sense_table() {
        for (state, sense) in [
            (Unusable, SENSE_UNUSABLE),
            (Available, SENSE_PRESENT),
            (Unisolate, SENSE_PRESENT),
            (Configured, SENSE_PRESENT),
        ] {
            assert_eq!(
                drc(cpu(), state, true, false, false).entity_sense(),
                (RtasStatus::Success, sense)
            );
        }
    }

    #[test]
    fn unisolate_from_available_starts_a_new_configure_walk() {
        let mut d = Drc::restored(cpu(), Available, Some("dev".into()), false, 3, false, 0);
        assert!(!d.may_configure());
        d.set_indicator(indicator::ISOLATION_STATE, UNISOLATE);
        assert_eq!(d.configure_step(), 0);
        assert!(d.may_configure());
        assert_eq!((d.next_configure_step(), d.next_configure_step()), (0, 1));
        // Already unisolated: the walk goes on.
        d.set_indicator(indicator::ISOLATION_STATE, UNISOLATE);
        assert_eq!(d.next_configure_step(), 2);
        // Complete: configured, and a later walk starts over.
        d.configured();
        assert_eq!((d.state(), d.configure_step()), (Configured, 0));
    }

    #[test]
    fn attach_unplug_request_and_reset() {
        let mut d = Drc::new(cpu());
        d.attach("core1", false).unwrap();
        assert_eq!(d.state(), Unusable);
        assert!(d.attach("other", false).is_err());
        // The guest never took it: given back at once.
        assert_eq!(d.unplug_request(), Outcome::Released);
        assert!(d.given_back());

        let mut d = Drc::new(cpu());
        d.attach("core1", true).unwrap();
        assert_eq!(d.state(), Configured);
        // The guest holds it: the request waits, repeats change nothing.
        assert_eq!(d.unplug_request(), Outcome::Nothing);
        assert_eq!(d.unplug_request(), Outcome::Nothing);
        assert!(d.unplug_requested());
        // A pending unplug completes at reset.
        assert_eq!(d.reset(), Outcome::Released);
        assert_eq!((d.state(), d.device()), (Unusable, None));
        // Reset of an attached DRC configures it.
        let mut d = drc(cpu(), Available, true, false, false);
        assert_eq!(d.reset(), Outcome::Nothing);
        assert_eq!(d.state(), Configured);
        // No device: nothing to unplug.
        assert_eq!(Drc::new(cpu()).unplug_request(), Outcome::Nothing);
    }
}
