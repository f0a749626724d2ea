//! Messages to and from the hotplug controller, which owns the DRC table.

use crate::papr::DrcIndex;
use serde::{Deserialize, Serialize};

/// The longest device id the controller stores (QMP ids are short names).
pub const MAX_DEVICE_ID: usize = 128;
/// The most DRCs one reply lists (16 384 LMBs plus CPU cores fit).
pub const MAX_DRCS: usize = 17_000;

/// RTAS indicator and sensor numbers (PAPR).
pub mod indicator {
    /// set-indicator: isolation state (0 isolate, 1 unisolate).
    pub const ISOLATION_STATE: u32 = 9001;
    /// set-indicator: DR indicator (lights; not for logical DRCs).
    pub const DR_INDICATOR: u32 = 9002;
    /// set-indicator: allocation state (0 unusable, 1 usable);
    /// get-sensor-state: dr-entity-sense.
    pub const ALLOCATION_STATE: u32 = 9003;
    /// get-sensor-state's sensor for the entity sense (same number).
    pub const DR_ENTITY_SENSE: u32 = 9003;
}

/// The states of a logical DRC (PAPR; the numbers are the guest-visible ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DrcState {
    /// 1: no device the guest may use (empty, or given back).
    Unusable,
    /// 2: allocated to the guest, isolated.
    Available,
    /// 3: unisolated, being configured.
    Unisolate,
    /// 4: configured: the guest uses the device.
    Configured,
}

impl DrcState {
    /// The number PAPR gives the state.
    pub const fn number(self) -> u32 {
        match self {
            DrcState::Unusable => 1,
            DrcState::Available => 2,
            DrcState::Unisolate => 3,
            DrcState::Configured => 4,
        }
    }

    /// A name for QMP.
    pub const fn name(self) -> &'static str {
        match self {
            DrcState::Unusable => "unusable",
            DrcState::Available => "available",
            DrcState::Unisolate => "unisolate",
            DrcState::Configured => "configured",
        }
    }
}

/// One row of the DRC table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrcInfo {
    /// The DRC.
    pub index: DrcIndex,
    /// Its state.
    pub state: DrcState,
    /// The attached device's id, if any.
    pub device: Option<String>,
    /// The host asked for the device to go; the guest has not given it back.
    pub unplug_requested: bool,
}

/// A run of DRCs of one kind: ids `first_id`, `first_id + step`, ...
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrcRange {
    /// The kind.
    pub kind: crate::papr::DrcKind,
    /// The first id.
    pub first_id: u32,
    /// How many.
    pub count: u32,
    /// Distance between ids (threads per core for CPU cores, 1 for LMBs).
    pub step: u32,
}

/// DRC rows per [`HotplugToCore::Drcs`] page, so that a page fits a frame.
pub const DRCS_PER_PAGE: usize = 512;

/// Core → hotplug controller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoreToHotplug {
    /// A peer was restarted: the descriptor sent along is the new channel
    /// of `link`, to handshake on and use instead of the old one.
    ReplaceLink(crate::Link),
    /// Commit `Fault` (tests of the jail); answered only if it did not kill.
    InjectFault(crate::Fault),
    /// Creates the machine's DRCs, all empty. Sent once, first.
    DefineDrcs {
        /// The runs.
        ranges: Vec<DrcRange>,
    },
    /// Attaches `device` to the DRCs (one per LMB for a DIMM). A cold plug
    /// (boot) leaves them configured and tells the guest nothing; a hot plug
    /// leaves them unusable and queues an add event.
    Plug {
        /// The DRCs, all of one kind.
        drcs: Vec<DrcIndex>,
        /// The device's id.
        device: String,
        /// Plugged before the guest runs.
        cold: bool,
    },
    /// device_del: marks the device's DRCs unplug-requested (once) and, every
    /// time, queues the remove event and pulses the interrupt.
    UnplugRequest {
        /// The DRCs.
        drcs: Vec<DrcIndex>,
    },
    /// Machine reset: pending unplugs complete, attached DRCs become configured.
    Reset,
    /// One page of the table, from row `from`.
    ListDrcs {
        /// The first row.
        from: u32,
    },
}

/// A device whose DRCs all went back to the platform.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    /// The device's id.
    pub device: String,
    /// Its DRCs.
    pub drcs: Vec<DrcIndex>,
}

/// Hotplug controller → core (replies).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HotplugToCore {
    /// The fault was attempted and the process lived: what happened.
    FaultSurvived {
        /// The outcome, e.g. the error the attempt got.
        outcome: String,
    },
    /// Done; `released` lists devices the request completed (an unplug
    /// request on a device the guest never took completes at once; a reset
    /// completes every pending unplug).
    Done {
        /// Devices released by this request.
        released: Vec<Released>,
    },
    /// A page of the table.
    Drcs {
        /// At most [`DRCS_PER_PAGE`] rows.
        rows: Vec<DrcInfo>,
        /// Where the next page starts, if there is one.
        next: Option<u32>,
    },
    /// The request was refused.
    Refused {
        /// Why, for the QMP client.
        reason: String,
    },
}

/// Hotplug controller → core, unsolicited (on the notify link).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HotplugNotification {
    /// The guest gave the device back: the unplug is complete.
    Released(Released),
    /// The guest refused the unplug (it re-unisolated a DRC with a pending
    /// unplug): the request is cleared.
    UnplugRefused {
        /// The device's id.
        device: String,
    },
}

/// RTAS server → hotplug controller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RtasToHotplug {
    /// set-indicator.
    SetIndicator {
        /// Indicator number (9001, 9002, 9003).
        indicator: u32,
        /// The DRC, as the guest passed it.
        drc: u32,
        /// The value.
        value: u32,
    },
    /// get-sensor-state.
    GetSensorState {
        /// Sensor number (9003).
        sensor: u32,
        /// The DRC, as the guest passed it.
        drc: u32,
    },
    /// ibm,configure-connector is about to hand out the DRC's device tree.
    ConfigureBegin {
        /// The DRC, as the guest passed it.
        drc: u32,
    },
    /// ibm,configure-connector handed out the whole fragment.
    ConfigureDone {
        /// The DRC.
        drc: u32,
    },
}

/// Hotplug controller → RTAS server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HotplugToRtas {
    /// The request did not decode or validate.
    Rejected {
        /// Why, for the log.
        reason: String,
    },
    /// The RTAS status for the guest (and a sensor value for get-sensor-state).
    Status {
        /// RTAS status.
        status: i32,
        /// The sensor's value (0 when none).
        value: u32,
    },
}
