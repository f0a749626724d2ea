//! CPU cores as the core process sees them: which are plugged, under which
//! QMP id and QOM path, and the DRC of each. The DRC's state is the hotplug
//! controller's; this table only knows what device sits in each slot.

use crate::config::SmpConfig;
use crate::request::{valid_id, QmpError};
use ipc_proto::papr::{DrcIndex, DrcKind};

/// The QMP driver name of a core (QEMU's for the host CPU model).
pub const CORE_DRIVER: &str = "host-spapr-cpu-core";

/// A plugged core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreDevice {
    /// The QMP `id`, for cores plugged with one.
    pub id: Option<String>,
    /// The QOM path: also the device's name at the hotplug controller.
    pub path: String,
    /// A device_del was accepted: the hotplug controller may release it.
    /// Nothing else lets the core park a core's vCPUs.
    pub unplug_asked: bool,
}

/// The cores of the machine, by slot, and the device plugged in each.
pub struct Cores {
    threads: u32,
    slots: Vec<Option<CoreDevice>>,
    anonymous: u32,
}

fn generic(desc: String) -> QmpError {
    QmpError::generic(desc)
}

impl Cores {
    /// The boot cores plugged, the others free.
    pub fn new(smp: &SmpConfig) -> Cores {
        let slots = (0..smp.max_cores())
            .map(|core| {
                (core < smp.boot_cores()).then(|| CoreDevice {
                    id: None,
                    path: format!("/machine/unattached/device[{core}]"),
                    unplug_asked: false,
                })
            })
            .collect();
        Cores {
            threads: smp.threads_per_core,
            slots,
            anonymous: 0,
        }
    }

    /// vCPUs per core.
    pub fn threads(&self) -> u32 {
        self.threads
    }

    /// The DRC of core slot `core`: its id is the core-id (first vCPU id).
    pub fn drc(&self, core: u32) -> DrcIndex {
        DrcIndex::new(DrcKind::Cpu, core * self.threads).expect("core ids fit a DRC index")
    }

    /// The vCPU ids of core slot `core`.
    pub fn vcpus(&self, core: u32) -> std::ops::Range<u32> {
        core * self.threads..(core + 1) * self.threads
    }

    /// The cores the machine can have.
    pub fn max_cores(&self) -> u32 {
        self.slots.len() as u32
    }

    /// The device plugged in slot `core`, if any.
    pub fn device(&self, core: u32) -> Option<&CoreDevice> {
        self.slots.get(core as usize).and_then(Option::as_ref)
    }

    /// The slots with a core plugged.
    pub fn present(&self) -> Vec<u32> {
        (0..self.max_cores())
            .filter(|&c| self.device(c).is_some())
            .collect()
    }

    /// Checks a device_add and returns the slot and the device to plug.
    pub fn prepare_plug(
        &mut self,
        core_id: i64,
        id: Option<&str>,
    ) -> Result<(u32, CoreDevice), QmpError> {
        let max = i64::from(self.max_cores() * self.threads);
        if core_id < 0 || core_id >= max {
            return Err(generic(format!(
                "core-id {core_id} out of range (the machine has core ids below {max})"
            )));
        }
        if core_id % i64::from(self.threads) != 0 {
            return Err(generic(format!(
                "invalid core id {core_id}: not a multiple of threads={}",
                self.threads
            )));
        }
        let core = (core_id / i64::from(self.threads)) as u32;
        if self.device(core).is_some() {
            return Err(generic(format!("core {core_id} already populated")));
        }
        let path = match id {
            Some(id) => {
                if !valid_id(id) {
                    return Err(generic(format!(
                        "Parameter 'id' expects an identifier (a letter, then letters, digits, '-', '.', '_'), got '{id}'"
                    )));
                }
                if self.find(id).is_some() {
                    return Err(generic(format!("Duplicate device ID '{id}'")));
                }
                format!("/machine/peripheral/{id}")
            }
            None => {
                self.anonymous += 1;
                format!("/machine/peripheral-anon/device[{}]", self.anonymous - 1)
            }
        };
        Ok((
            core,
            CoreDevice {
                id: id.map(str::to_string),
                path,
                unplug_asked: false,
            },
        ))
    }

    /// Records `device` as plugged in slot `core` (its plug went through).
    pub fn plugged(&mut self, core: u32, device: CoreDevice) {
        if let Some(slot) = self.slots.get_mut(core as usize) {
            *slot = Some(device);
        }
    }

    /// The slot of the device named by QMP id or QOM path.
    pub fn find(&self, name: &str) -> Option<u32> {
        (0..self.max_cores()).find(|&c| {
            self.device(c)
                .is_some_and(|d| d.id.as_deref() == Some(name) || d.path == name)
        })
    }

    /// Records that a device_del of `core` goes to the hotplug controller.
    pub fn ask_unplug(&mut self, core: u32) {
        if let Some(Some(device)) = self.slots.get_mut(core as usize) {
            device.unplug_asked = true;
        }
    }

    /// Frees the slot of the device the hotplug controller released, named
    /// by QOM path: only a core the core asked back, never the boot core,
    /// whatever the controller says.
    pub fn remove_released(&mut self, path: &str) -> Result<(u32, CoreDevice), String> {
        let core = self
            .find(path)
            .ok_or_else(|| format!("an unknown device {path}"))?;
        let slot = self
            .slots
            .get_mut(core as usize)
            .ok_or_else(|| format!("core {core} of no slot"))?;
        match slot {
            _ if core == 0 => Err(format!("the boot core ({path})")),
            Some(device) if !device.unplug_asked => Err(format!(
                "core {core} ({path}), which no device_del asked back"
            )),
            _ => slot
                .take()
                .map(|device| (core, device))
                .ok_or_else(|| format!("an empty core slot {core}")),
        }
    }

    /// Checks a device_del: the slot to unplug.
    pub fn prepare_unplug(&self, name: &str) -> Result<u32, QmpError> {
        let core = self
            .find(name)
            .ok_or_else(|| QmpError::device_not_found(format!("Device '{name}' not found")))?;
        if core == 0 {
            return Err(generic("Boot CPU core may not be unplugged".into()));
        }
        Ok(core)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cores() -> Cores {
        Cores::new(&SmpConfig {
            cpus: 2,
            max_cpus: 8,
            threads_per_core: 2,
        })
    }

    #[test]
    fn boot_cores_are_plugged_with_unattached_paths() {
        let c = cores();
        assert_eq!(c.present(), [0]);
        assert_eq!(c.device(0).unwrap().path, "/machine/unattached/device[0]");
        assert_eq!(c.drc(3), DrcIndex(0x1000_0006));
        assert_eq!(c.vcpus(1), 2..4);
    }

    #[test]
    fn plug_checks_core_id_and_id() {
        let mut c = cores();
        let refused = |c: &mut Cores, core_id, id| c.prepare_plug(core_id, id).unwrap_err().desc;
        assert!(refused(&mut c, 8, Some("a")).contains("out of range"));
        assert!(refused(&mut c, -2, Some("a")).contains("out of range"));
        assert!(refused(&mut c, 3, Some("a")).contains("invalid core id 3"));
        assert!(refused(&mut c, 0, Some("a")).contains("already populated"));
        assert!(refused(&mut c, 2, Some("9lives")).contains("identifier"));
        let (core, device) = c.prepare_plug(2, Some("core1")).unwrap();
        assert_eq!(
            (core, device.path.as_str()),
            (1, "/machine/peripheral/core1")
        );
        c.plugged(core, device);
        assert!(refused(&mut c, 4, Some("core1")).contains("Duplicate device ID"));
        let (_, anonymous) = c.prepare_plug(4, None).unwrap();
        assert_eq!(anonymous.path, "/machine/peripheral-anon/device[0]");
    }

    #[test]
    fn unplug_finds_by_id_or_path_and_protects_the_boot_core() {
        let mut c = cores();
        let (core, device) = c.prepare_plug(2, Some("core1")).unwrap();
        c.plugged(core, device);
        assert_eq!(c.prepare_unplug("core1"), Ok(1));
        assert_eq!(c.prepare_unplug("/machine/peripheral/core1"), Ok(1));
        assert_eq!(
            c.prepare_unplug("nope").unwrap_err().class,
            "DeviceNotFound"
        );
        assert!(c
            .prepare_unplug("/machine/unattached/device[0]")
            .unwrap_err()
            .desc
            .contains("Boot CPU core"));
        // Released only when asked back, and never the boot core.
        let not_asked = c.remove_released("/machine/peripheral/core1").unwrap_err();
        assert!(
            not_asked.contains("which no device_del asked back"),
            "{not_asked}"
        );
        let boot = c
            .remove_released("/machine/unattached/device[0]")
            .unwrap_err();
        assert!(boot.contains("the boot core"), "{boot}");
        assert!(c.remove_released("nope").unwrap_err().contains("unknown"));
        assert_eq!(c.present(), [0, 1]);
        c.ask_unplug(1);
        assert_eq!(c.remove_released("/machine/peripheral/core1").unwrap().0, 1);
        assert_eq!(c.present(), [0]);
    }
}
