//! RTAS server → hotplug controller: the DRC calls of the guest, with their
//! arguments as the guest passed them (the controller checks them against
//! its table).

use crate::channel::no_descriptors;
use crate::papr::RtasStatus;
use crate::protocol::{link_protocol, Message};
use serde::{Deserialize, Serialize};

link_protocol! {
    /// The link's protocol.
    RtasHotplug: RtasHotplug, Request => Reply
}

/// RTAS server → hotplug controller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
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
    /// ibm,configure-connector hands out the next step of the DRC's device
    /// tree: the controller answers the step's index and advances the walk's
    /// cursor (which a new walk, AVAILABLE → UNISOLATE, resets).
    ConfigureStep {
        /// The DRC, as the guest passed it.
        drc: u32,
    },
    /// ibm,configure-connector handed out the whole fragment: the DRC is
    /// configured, and a later walk starts from the first step.
    ConfigureDone {
        /// The DRC.
        drc: u32,
    },
}

/// Hotplug controller → RTAS server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// The RTAS status for the guest, and a value: the sensor's for
    /// get-sensor-state, the step's index for configure-step, else 0.
    Status {
        /// RTAS status.
        status: RtasStatus,
        /// The value.
        value: u32,
    },
}

impl Message for Request {
    fn validate(&self, fds: usize) -> Result<(), String> {
        // Every u32 the guest passes is legal here: the controller answers
        // unknown DRCs and indicators with an RTAS status.
        no_descriptors(fds, "an RTAS request")
    }
}

impl Message for Reply {
    fn validate(&self, _: usize) -> Result<(), String> {
        Ok(())
    }
}
