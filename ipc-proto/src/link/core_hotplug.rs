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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, strum::VariantNames)]
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
    /// The device a PCI DRC is about to get (sent before its
    /// [`Request::Plug`], and again to a successor): what its function
    /// offers a driver.
    DescribeFunction {
        /// The PCI DRC.
        drc: DrcIndex,
        /// The device.
        model: DeviceModel,
    },
    /// A vCPU's access to a PCI host bridge's memory window (a BAR, where
    /// a function decodes one): CPU address, width (1, 2, 4 or 8), and the
    /// value written (little-endian), or `None` for a read.
    BarAccess {
        /// CPU address.
        address: u64,
        /// Bytes.
        size: u32,
        /// The value written.
        write: Option<u64>,
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
    /// A BAR read's value (all ones where no function decodes).
    BarRead(u64),
    /// A BAR write was taken; what it asks of the device's server.
    BarWritten(Option<FunctionEffect>),
}

/// The most bytes of device-specific configuration a function shows (a
/// virtio-blk configuration is 60).
pub const MAX_DEVICE_CONFIG: usize = 256;
/// The most queues a function starts at once.
pub const MAX_FUNCTION_QUEUES: usize = 16;
/// The largest virtqueue (virtio's limit for split queues).
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// What the bridge needs of a function's device besides its description:
/// the virtio features its backend offers a driver and its device
/// configuration (the backend's, as vhost-user's GET_CONFIG gave it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceModel {
    /// Virtio features a driver may take.
    pub features: u64,
    /// The device configuration, at most [`MAX_DEVICE_CONFIG`] bytes.
    pub config: Vec<u8>,
}

/// One queue a driver started, as whoever serves it needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStart {
    /// The queue's index.
    pub index: u16,
    /// Entries (a power of two, at most [`MAX_QUEUE_SIZE`]).
    pub size: u16,
    /// Guest-physical addresses of the descriptor table, the driver
    /// (available) ring and the device (used) ring.
    pub desc: u64,
    /// See `desc`.
    pub driver: u64,
    /// See `desc`.
    pub device: u64,
    /// The CPU address the guest writes to notify it (an ioeventfd there
    /// sends the kick straight to the backend).
    pub notify: u64,
    /// The interrupt source its used-buffer notifications raise (an MSI-X
    /// vector granted by `ibm,change-msi`), if the driver gave it one.
    pub interrupt: Option<u32>,
}

/// What a driver's write to a function's BAR asks of whoever serves the
/// device's queues.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FunctionEffect {
    /// DRIVER_OK: start these queues with these features.
    Start {
        /// The function's DRC.
        drc: DrcIndex,
        /// The features the driver took.
        features: u64,
        /// The queues it enabled.
        queues: Vec<QueueStart>,
    },
    /// The driver reset the device: stop its queues.
    Stop {
        /// The function's DRC.
        drc: DrcIndex,
    },
}

impl FunctionEffect {
    /// Checks an effect from a peer.
    pub fn check(&self) -> Result<(), String> {
        match self {
            FunctionEffect::Start { queues, .. } => {
                if queues.len() > MAX_FUNCTION_QUEUES {
                    return Err(format!("{} queues", queues.len()));
                }
                for queue in queues {
                    if !queue.size.is_power_of_two() || queue.size > MAX_QUEUE_SIZE {
                        return Err(format!("a queue of {} entries", queue.size));
                    }
                }
                Ok(())
            }
            FunctionEffect::Stop { .. } => Ok(()),
        }
    }
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
            Request::DescribeFunction { drc, model } => {
                if drc.kind() != Some(DrcKind::Pci) {
                    return Err(format!("DRC {:#x} is not a PCI connector", drc.0));
                }
                if model.config.len() > MAX_DEVICE_CONFIG {
                    return Err(format!(
                        "{} bytes of device configuration",
                        model.config.len()
                    ));
                }
                Ok(())
            }
            Request::BarAccess { size, .. } if !matches!(size, 1 | 2 | 4 | 8) => {
                Err(format!("a BAR access of {size} bytes"))
            }
            Request::DefineDrcs { .. }
            | Request::Reset
            | Request::ListDrcs { .. }
            | Request::BarAccess { .. } => Ok(()),
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
            Reply::BarRead(_) | Reply::BarWritten(None) => Ok(()),
            Reply::BarWritten(Some(effect)) => effect.check(),
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
