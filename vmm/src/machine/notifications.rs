//! The hotplug controller's notifications: a device given back (or
//! released at reset), and an unplug the guest refused. They are numbered,
//! and a successor repeats what its predecessor may have sent, so the core
//! acts on each number once ([`NotificationLog`]).

use super::Vm;
use ipc_proto::link::hotplug_notify::{Notification, Released};
use serde_json::{json, Value};

impl Vm {
    pub(super) fn on_hotplug(&mut self, id: u64, notification: Notification) {
        crate::trace::record(
            ipc_proto::control::trace_point::HOTPLUG_NOTIFICATION,
            || json!({"id": id, "notification": format!("{notification:?}")}),
        );
        if self.notifications.is_repeat(id) {
            log::info!("the hotplug controller repeats notification {id}: already handled");
            return;
        }
        let outcome = match notification {
            Notification::Released(released) => self.release(&released),
            Notification::ResetComplete => {
                log::debug!("a late reset completion");
                Ok(())
            }
            Notification::UnplugRefused { device } => self.unplug_refused(&device),
        };
        if let Err(reason) = &outcome {
            log::warn!("notification {id} of the hotplug controller rejected: it names {reason}");
        }
        self.notifications.settle(id, &outcome);
    }

    /// The guest refused to give back a device the core asked back.
    fn unplug_refused(&mut self, device: &str) -> Result<(), String> {
        let (id, asked) = self
            .plugged_device(device)
            .ok_or_else(|| format!("an unknown device {device}"))?;
        if !asked {
            return Err(format!("{device}, which no device_del asked back"));
        }
        log::warn!("Device hotunplug rejected by the guest for device {device}");
        self.context.stats.hotplug(crate::stats::Hotplug::Refused);
        self.qmp.emit(
            "DEVICE_UNPLUG_GUEST_ERROR",
            device_event(id.as_deref(), device),
        );
        Ok(())
    }

    /// A device went: QMP clients are told, and it is counted.
    pub(super) fn device_deleted(&self, id: Option<&str>, path: &str) {
        self.context.stats.hotplug(crate::stats::Hotplug::Deleted);
        self.qmp.emit("DEVICE_DELETED", device_event(id, path));
    }

    /// The plugged core or DIMM named by QMP id or QOM path: its QMP id,
    /// and whether a device_del asked it back.
    pub(super) fn plugged_device(&self, name: &str) -> Option<(Option<String>, bool)> {
        if let Some(core) = self.cores.find(name) {
            let device = self.cores.device(core)?;
            return Some((device.id.clone(), device.unplug_asked));
        }
        if let Some(disk) = self.disks.find(name) {
            return Some((Some(disk.id.clone()), disk.unplug_asked));
        }
        let dimm = self.dimms.find(name)?;
        Some((Some(dimm.id.clone()), dimm.unplug_asked))
    }

    /// A device the guest gave back, or a pending unplug at reset.
    fn release(&mut self, released: &Released) -> Result<(), String> {
        if self.dimms.find(&released.device).is_some() {
            return self.release_dimm(&released.device);
        }
        if self.disks.find(&released.device).is_some() {
            return self.release_disk(&released.device);
        }
        self.release_core(&released.device)
    }
}

/// The data of DEVICE_DELETED and DEVICE_UNPLUG_GUEST_ERROR: `device` only
/// when the device has an id, as QEMU's schema says.
pub(super) fn device_event(id: Option<&str>, path: &str) -> Value {
    match id {
        Some(id) => json!({"device": id, "path": path}),
        None => json!({"path": path}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_events_name_the_device_only_when_it_has_an_id() {
        assert_eq!(
            device_event(Some("c1"), "/machine/peripheral/c1"),
            json!({"device": "c1", "path": "/machine/peripheral/c1"})
        );
        assert_eq!(
            device_event(None, "/machine/peripheral-anon/device[0]"),
            json!({"path": "/machine/peripheral-anon/device[0]"})
        );
    }
}
