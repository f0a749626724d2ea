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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, strum::VariantNames)]
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
    /// ibm,read-pci-config on PHB `phb` (the RTAS server found it by its
    /// BUID): the configuration address and width as the guest passed them.
    ReadPciConfig {
        /// The PHB's index.
        phb: u32,
        /// The configuration address cell.
        address: u32,
        /// Bytes.
        size: u32,
    },
    /// ibm,write-pci-config.
    WritePciConfig {
        /// The PHB's index.
        phb: u32,
        /// The configuration address cell.
        address: u32,
        /// Bytes.
        size: u32,
        /// The value.
        value: u32,
    },
    /// ibm,change-msi.
    ChangeMsi {
        /// The PHB's index.
        phb: u32,
        /// The configuration address cell.
        address: u32,
        /// The function (0 query … 6).
        function: u32,
        /// Vectors asked for (0 releases).
        count: u32,
    },
    /// ibm,query-interrupt-source-number.
    QueryInterruptSource {
        /// The PHB's index.
        phb: u32,
        /// The configuration address cell.
        address: u32,
        /// The vector.
        vector: u32,
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
    /// ibm,write-pci-config's answer when the write turned a running
    /// function's memory decoding off or moved its queues' BAR: the device
    /// failed (DEVICE_NEEDS_RESET) and its queues must stop.
    Stopped {
        /// RTAS status.
        status: RtasStatus,
        /// The function's DRC.
        drc: crate::papr::DrcIndex,
    },
    /// ibm,change-msi's answer: vectors granted (or, asked too many, how
    /// many the function has) and their kind.
    Vectors {
        /// RTAS status.
        status: RtasStatus,
        /// Vectors.
        count: u32,
        /// MSI-X (else MSI).
        msix: bool,
    },
}

impl Message for Request {
    fn validate(&self, fds: usize) -> Result<(), String> {
        // Every u32 the guest passes is legal here: the controller answers
        // unknown DRCs, indicators and PCI addresses with an RTAS status.
        // The RTAS server names a PHB the machine has.
        no_descriptors(fds, "an RTAS request")?;
        match self {
            Request::ReadPciConfig { phb, .. }
            | Request::WritePciConfig { phb, .. }
            | Request::ChangeMsi { phb, .. }
            | Request::QueryInterruptSource { phb, .. }
                if *phb >= crate::pci::PHBS =>
            {
                Err(format!("PHB {phb}"))
            }
            _ => Ok(()),
        }
    }
}

impl Message for Reply {
    fn validate(&self, _: usize) -> Result<(), String> {
        Ok(())
    }
}
