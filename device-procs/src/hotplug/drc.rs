//! One logical DRC (CPU core, LMB) and its state machine, as in the PAPR
//! reference §2.3 and §2.6: each guest request is one `match` on
//! (state, value), so the code reads like the table it implements.

use super::HotplugError;
use ipc_proto::papr::{DrcIndex, DrcKind, DrcState, RtasStatus};

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
    /// unplug, which is withdrawn.
    UnplugRefused,
}

/// One logical DRC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drc {
    /// Its index.
    pub index: DrcIndex,
    /// Its state.
    pub state: DrcState,
    /// The attached device.
    pub device: Option<String>,
    /// The host asked for the device back.
    pub unplug_requested: bool,
    /// The configure-connector walk's next step: a new walk (AVAILABLE →
    /// UNISOLATE) and a completed one start from 0.
    pub configure_step: u32,
    /// The guest re-unisolated it in the refusal being answered: a device's
    /// refusal may re-unisolate several of its DRCs (Linux adds back every
    /// LMB it had offlined), which is one refusal, not several.
    pub answered: bool,
}

impl Drc {
    /// An empty DRC.
    pub fn new(index: DrcIndex) -> Drc {
        Drc {
            index,
            state: DrcState::Unusable,
            device: None,
            unplug_requested: false,
            configure_step: 0,
            answered: false,
        }
    }

    fn is_lmb(&self) -> bool {
        self.index.kind() == Some(DrcKind::Lmb)
    }

    /// set-indicator 9001 (isolation-state).
    pub fn set_isolation(&mut self, value: u32) -> (RtasStatus, Outcome) {
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
                    (RtasStatus::Success, Outcome::UnplugRefused)
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
    pub fn set_allocation(&mut self, value: u32) -> (RtasStatus, Outcome) {
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
        match self.state {
            DrcState::Unusable => (RtasStatus::Success, SENSE_UNUSABLE),
            DrcState::Available | DrcState::Unisolate | DrcState::Configured => {
                (RtasStatus::Success, SENSE_PRESENT)
            }
        }
    }

    /// ibm,configure-connector may walk this DRC's device tree now.
    pub fn may_configure(&self) -> bool {
        matches!(self.state, DrcState::Unisolate | DrcState::Configured)
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
            self.state = DrcState::Configured;
            self.configure_step = 0;
        }
    }

    /// Links a device. A cold plug resets the DRC to CONFIGURED at once.
    pub fn attach(&mut self, device: &str, cold: bool) -> Result<(), HotplugError> {
        if self.device.is_some() || self.state != DrcState::Unusable {
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
        if self.state == DrcState::Unusable {
            return Outcome::Released;
        }
        Outcome::Nothing
    }

    /// The guest does not hold it and the host asked it back: it waits for
    /// the device's other DRCs. A refusal of the unplug (which clears the
    /// request) re-attaches it: the guest may acquire it again.
    pub fn given_back(&self) -> bool {
        self.device.is_some() && self.unplug_requested && self.state == DrcState::Unusable
    }

    /// Unlinks the device: its unplug completed.
    pub fn release(&mut self) {
        self.device = None;
        self.unplug_requested = false;
        self.answered = false;
    }

    /// Machine reset: a pending unplug completes; then an attached device is
    /// configured, an empty DRC unusable.
    pub fn reset(&mut self) -> Outcome {
        let outcome = if self.unplug_requested {
            self.release();
            Outcome::Released
        } else {
            Outcome::Nothing
        };
        self.state = if self.device.is_some() {
            DrcState::Configured
        } else {
            DrcState::Unusable
        };
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

    /// A DRC in `state`, with a device attached or not, unplug requested or not.
    fn drc(index: DrcIndex, state: DrcState, device: bool, unplug: bool) -> Drc {
        Drc {
            index,
            state,
            device: device.then(|| "dev".to_string()),
            unplug_requested: unplug,
            configure_step: 0,
            answered: false,
        }
    }

    type Cell = (DrcState, bool, bool, u32, i32, DrcState, Outcome);

    fn check(index: DrcIndex, cells: &[Cell], apply: fn(&mut Drc, u32) -> (RtasStatus, Outcome)) {
        for &(state, device, unplug, value, status, after, outcome) in cells {
            let mut d = drc(index, state, device, unplug);
            let (got_status, got_outcome) = apply(&mut d, value);
            assert_eq!(
                ((got_status.code(), got_outcome), d.state),
                ((status, outcome), after),
                "{state:?} device={device} unplug={unplug} value={value}"
            );
        }
    }

    #[test]
    fn isolation_table() {
        let n = Outcome::Nothing;
        #[rustfmt::skip]
        let cells: &[Cell] = &[
            // state, device, unplug, value → status, state after, outcome
            (Unusable, true, false, UNISOLATE, -3, Unusable, n),
            (Available, true, false, UNISOLATE, 0, Unisolate, n),
            (Available, false, false, UNISOLATE, -3, Available, n),
            (Unisolate, true, false, UNISOLATE, 0, Unisolate, n),
            (Configured, true, false, UNISOLATE, 0, Configured, n),
            (Configured, true, true, UNISOLATE, 0, Configured, Outcome::UnplugRefused),
            (Unisolate, true, true, UNISOLATE, 0, Unisolate, Outcome::UnplugRefused),
            (Unusable, true, false, ISOLATE, 0, Unusable, n),
            (Available, true, false, ISOLATE, 0, Available, n),
            (Unisolate, true, false, ISOLATE, -3, Unisolate, n),
            (Configured, true, false, ISOLATE, 0, Available, n),
            (Configured, true, true, ISOLATE, 0, Available, n),
            (Configured, true, false, 2, -3, Configured, n),
            (Available, true, false, 7, -3, Available, n),
        ];
        check(cpu(), cells, Drc::set_isolation);
    }

    #[test]
    fn isolating_a_configured_lmb_needs_an_unplug_request() {
        let n = Outcome::Nothing;
        #[rustfmt::skip]
        let cells: &[Cell] = &[
            (Configured, true, false, ISOLATE, -1, Configured, n),
            (Configured, true, true, ISOLATE, 0, Available, n),
        ];
        check(lmb(), cells, Drc::set_isolation);
    }

    #[test]
    fn allocation_table() {
        let n = Outcome::Nothing;
        #[rustfmt::skip]
        let cells: &[Cell] = &[
            (Unusable, true, false, USABLE, 0, Available, n),
            (Unusable, false, false, USABLE, -3, Unusable, n),
            (Unusable, true, true, USABLE, -3, Unusable, n),
            (Available, true, false, USABLE, 0, Available, n),
            (Unisolate, true, false, USABLE, 0, Unisolate, n),
            (Configured, true, false, USABLE, 0, Configured, n),
            (Unusable, true, false, UNUSABLE, 0, Unusable, n),
            (Available, true, false, UNUSABLE, 0, Unusable, n),
            (Available, true, true, UNUSABLE, 0, Unusable, Outcome::Released),
            (Unisolate, true, false, UNUSABLE, -3, Unisolate, n),
            (Configured, true, false, UNUSABLE, -3, Configured, n),
            (Available, true, false, 2, -3, Available, n),
            (Available, true, false, 3, -3, Available, n),
        ];
        check(cpu(), cells, Drc::set_allocation);
    }

    #[test]
    fn a_drc_given_back_keeps_its_device_until_the_device_is_released() {
        let mut d = drc(cpu(), Available, true, true);
        assert_eq!(
            d.set_allocation(UNUSABLE),
            (RtasStatus::Success, Outcome::Released)
        );
        assert!(d.given_back());
        assert_eq!(d.device.as_deref(), Some("dev"));
        // Not the guest's to take again while the unplug stands.
        assert_eq!(d.set_allocation(USABLE).0, RtasStatus::ParameterError);
        d.release();
        assert_eq!((d.device.clone(), d.unplug_requested), (None, false));
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
                drc(cpu(), state, true, false).entity_sense(),
                (RtasStatus::Success, sense)
            );
        }
    }

    #[test]
    fn unisolate_from_available_starts_a_new_configure_walk() {
        let mut d = drc(cpu(), Available, true, false);
        d.configure_step = 3;
        assert!(!d.may_configure());
        d.set_isolation(UNISOLATE);
        assert_eq!(d.configure_step, 0);
        assert!(d.may_configure());
        assert_eq!((d.next_configure_step(), d.next_configure_step()), (0, 1));
        // Already unisolated: the walk goes on.
        d.set_isolation(UNISOLATE);
        assert_eq!(d.next_configure_step(), 2);
        // Complete: configured, and a later walk starts over.
        d.configured();
        assert_eq!((d.state, d.configure_step), (Configured, 0));
    }

    #[test]
    fn attach_unplug_request_and_reset() {
        let mut d = Drc::new(cpu());
        d.attach("core1", false).unwrap();
        assert_eq!(d.state, Unusable);
        assert!(d.attach("other", false).is_err());
        // The guest never took it: given back at once.
        assert_eq!(d.unplug_request(), Outcome::Released);
        assert!(d.given_back());

        let mut d = Drc::new(cpu());
        d.attach("core1", true).unwrap();
        assert_eq!(d.state, Configured);
        // The guest holds it: the request waits, repeats change nothing.
        assert_eq!(d.unplug_request(), Outcome::Nothing);
        assert_eq!(d.unplug_request(), Outcome::Nothing);
        assert!(d.unplug_requested);
        // A pending unplug completes at reset.
        assert_eq!(d.reset(), Outcome::Released);
        assert_eq!((d.state, d.device.clone()), (Unusable, None));
        // Reset of an attached DRC configures it.
        let mut d = drc(cpu(), Available, true, false);
        assert_eq!(d.reset(), Outcome::Nothing);
        assert_eq!(d.state, Configured);
        // No device: nothing to unplug.
        assert_eq!(Drc::new(cpu()).unplug_request(), Outcome::Nothing);
    }
}
