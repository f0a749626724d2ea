//! Hotplug controller → core, one way: what the guest (or a reset) decided
//! about a device. This is the only path by which a release reaches the core.

use super::core_hotplug::check_device_id;
use crate::channel::no_descriptors;
use crate::protocol::{link_protocol, Message, NoReply};
use serde::{Deserialize, Serialize};

link_protocol! {
    /// The link's protocol: notifications, never answered.
    HotplugNotify: HotplugNotify, Notification => NoReply
}

/// A device whose DRCs all went back to the platform.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    /// The device's id, as in its plug request.
    pub device: String,
}

/// Hotplug controller → core.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, strum::VariantNames)]
pub enum Notification {
    /// The device is gone: the guest gave it back, it never took it, or a
    /// reset completed its pending unplug.
    Released(Released),
    /// The guest refused the unplug (it re-unisolated a DRC with a pending
    /// unplug): the request is cleared.
    UnplugRefused {
        /// The device's id.
        device: String,
    },
    /// Every release of a machine reset was sent before this.
    ResetComplete,
}

impl Message for Notification {
    fn validate(&self, fds: usize) -> Result<(), String> {
        no_descriptors(fds, "a notification")?;
        match self {
            Notification::Released(Released { device }) => check_device_id(device),
            Notification::UnplugRefused { device } => check_device_id(device),
            Notification::ResetComplete => Ok(()),
        }
    }
}
