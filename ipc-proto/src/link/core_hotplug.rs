//! Core → hotplug controller, which owns the DRC table.
//!
//! Every request is acknowledged or refused with a reason; only
//! [`Request::ListDrcs`] has a reply of its own. What the guest gives back
//! (or what a reset releases) reaches the core by one path only: the
//! controller's notifications ([`super::hotplug_notify`]).

use crate::channel::no_descriptors;
use crate::papr::{DrcIndex, DrcKind, DrcState};
use crate::protocol::{link_protocol, Message};
use serde::{Deserialize, Serialize};

link_protocol! {
    /// The link's protocol.
    CoreHotplug: CoreHotplug, Request => Reply
}

/// The longest device id the controller stores (QMP ids are short names).
pub const MAX_DEVICE_ID: usize = 128;
/// The most DRCs one machine has (16 384 LMBs, its CPU cores and a PCI
/// host bridge's 256 slot functions fit).
pub const MAX_DRCS: usize = 17_000;
/// DRC rows per [`Reply::Drcs`] page, so that a page fits a frame.
pub const DRCS_PER_PAGE: usize = 512;
/// The size of the hotplug controller's state region for a table of `drcs`
/// DRCs: the core creates it, the controller lays it out (and refuses one
/// too small for its layout). Untouched pages cost nothing.
pub fn state_region_bytes(drcs: usize) -> u64 {
    STATE_REGION_FIXED_BYTES + STATE_REGION_BYTES_PER_DRC * drcs as u64
}
const STATE_REGION_FIXED_BYTES: u64 = 2 << 20;
const STATE_REGION_BYTES_PER_DRC: u64 = 128;

/// The most runs one [`Request::DefineDrcs`] carries.
pub const MAX_DRC_RANGES: usize = 8;

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
    pub kind: DrcKind,
    /// The first id.
    pub first_id: u32,
    /// How many.
    pub count: u32,
    /// Distance between ids (threads per core for CPU cores, 1 for LMBs).
    pub step: u32,
}

/// Core → hotplug controller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Sent first to every incarnation. The first (started with `--state
    /// fresh`) formats its state region and creates the machine's DRCs, all
    /// empty; a successor (`--state resume`) validates the region, which
    /// must hold exactly these DRCs, and resumes from it.
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
    /// time, queues the remove event and pulses the interrupt. A device the
    /// guest never took is released at once (notified).
    UnplugRequest {
        /// The DRCs.
        drcs: Vec<DrcIndex>,
    },
    /// Machine reset: pending unplugs complete (each notified, then
    /// [`super::hotplug_notify::Notification::ResetComplete`]), attached DRCs
    /// become configured.
    Reset,
    /// One page of the table, from row `from`.
    ListDrcs {
        /// The first row.
        from: u32,
    },
}

/// Hotplug controller → core, for [`Request::ListDrcs`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// A page of the table.
    Drcs {
        /// At most [`DRCS_PER_PAGE`] rows.
        rows: Vec<DrcInfo>,
        /// Where the next page starts, if there is one.
        next: Option<u32>,
    },
}

/// Checks a device id from a peer.
pub fn check_device_id(device: &str) -> Result<(), String> {
    if device.is_empty() || device.len() > MAX_DEVICE_ID {
        return Err(format!("device id of {} bytes", device.len()));
    }
    Ok(())
}

fn check_drcs(drcs: &[DrcIndex]) -> Result<(), String> {
    if drcs.is_empty() || drcs.len() > MAX_DRCS {
        return Err(format!("{} DRCs", drcs.len()));
    }
    Ok(())
}

impl Message for Request {
    fn validate(&self, fds: usize) -> Result<(), String> {
        no_descriptors(fds, "a hotplug request")?;
        match self {
            Request::DefineDrcs { ranges } if ranges.len() > MAX_DRC_RANGES => {
                Err(format!("{} DRC ranges", ranges.len()))
            }
            Request::Plug { drcs, device, .. } => {
                check_drcs(drcs)?;
                check_device_id(device)
            }
            Request::UnplugRequest { drcs } => check_drcs(drcs),
            Request::DefineDrcs { .. } | Request::Reset | Request::ListDrcs { .. } => Ok(()),
        }
    }
}

impl Message for Reply {
    fn validate(&self, _: usize) -> Result<(), String> {
        match self {
            Reply::Drcs { rows, .. } => {
                if rows.len() > DRCS_PER_PAGE {
                    return Err(format!("a page of {} DRCs", rows.len()));
                }
                for device in rows.iter().filter_map(|row| row.device.as_deref()) {
                    check_device_id(device)?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_pages_are_bounded() {
        let plug = |device: &str, drcs: Vec<DrcIndex>| Request::Plug {
            drcs,
            device: device.into(),
            cold: false,
        };
        assert!(plug("core1", vec![DrcIndex(0x1000_0001)])
            .validate(0)
            .is_ok());
        assert!(plug("core1", vec![DrcIndex(0x1000_0001)])
            .validate(1)
            .is_err());
        assert!(plug("", vec![DrcIndex(0x1000_0001)]).validate(0).is_err());
        assert!(plug(&"x".repeat(200), vec![DrcIndex(1)])
            .validate(0)
            .is_err());
        assert!(plug("core1", vec![]).validate(0).is_err());
        let row = DrcInfo {
            index: DrcIndex(0x1000_0001),
            state: DrcState::Unusable,
            device: None,
            unplug_requested: false,
        };
        let page = |n| Reply::Drcs {
            rows: vec![row.clone(); n],
            next: None,
        };
        assert!(page(DRCS_PER_PAGE).validate(0).is_ok());
        assert!(page(DRCS_PER_PAGE + 1).validate(0).is_err());
    }
}
