//! Memory backends (`object-add`) and DIMMs (`device_add pc-dimm`) as the
//! core sees them: which backend backs which DIMM, where each DIMM sits in
//! the device-memory area, in which slot, and so which LMB DRCs it has. The
//! DRCs' states are the hotplug controller's; `M` is what backs a backend
//! (its memfd, in the core).

use crate::layout::MemoryLayout;
use crate::request::QmpError;
use ipc_proto::papr::{DrcIndex, DrcKind, LMB_SIZE};
use std::collections::BTreeMap;

/// The QMP driver name of a DIMM.
pub const DIMM_DRIVER: &str = "pc-dimm";
/// The QMP types of a memory backend; both are memfds here, so that the
/// RTAS server can map them.
pub const BACKEND_TYPES: [&str; 2] = ["memory-backend-memfd", "memory-backend-ram"];

/// Memory backends a client may make the core hold at once: each is a
/// descriptor (its memfd) and, once plugged, a mapping. More slots than
/// any machine has (32), with room to prepare the next DIMMs.
pub const MAX_BACKENDS: usize = 64;

fn refused(desc: String) -> QmpError {
    QmpError::generic(desc)
}

/// A memory backend, and the DIMM it backs, if any.
pub struct Backend<M> {
    /// Its size in bytes.
    pub size: u64,
    /// What backs it.
    pub memory: M,
    /// The id of the DIMM it backs, if any.
    pub used_by: Option<String>,
}

/// A plugged DIMM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dimm {
    /// Its QMP id.
    pub id: String,
    /// Its backend's id.
    pub memdev: String,
    /// Its guest-physical address.
    pub addr: u64,
    /// Its size in bytes.
    pub size: u64,
    /// Its slot.
    pub slot: u32,
    /// A device_del was accepted: the hotplug controller may release it.
    /// Nothing else lets the core take its memory from the guest.
    pub unplug_asked: bool,
}

impl Dimm {
    /// The QOM path: also the device's name at the hotplug controller.
    pub fn path(&self) -> String {
        if is_anonymous(&self.id) {
            format!("/machine/peripheral-anon/{}", self.id)
        } else {
            format!("/machine/peripheral/{}", self.id)
        }
    }

    /// Its LMB DRCs, one per 256 MiB, in address order.
    pub fn drcs(&self) -> Vec<DrcIndex> {
        let first = (self.addr / LMB_SIZE) as u32;
        (0..(self.size / LMB_SIZE) as u32)
            .filter_map(|i| DrcIndex::new(DrcKind::Lmb, first + i))
            .collect()
    }
}

/// The name a DIMM plugged without an id goes by: QEMU's
/// `device[N]`, which no client id can be (ids do not take brackets).
pub fn anonymous_id(number: u64) -> String {
    format!("device[{number}]")
}

/// Whether `id` is one [`anonymous_id`] made.
pub fn is_anonymous(id: &str) -> bool {
    id.starts_with("device[")
}

/// The memory backends and the DIMMs they back; `M` is what backs a backend.
pub struct Dimms<M> {
    area: (u64, u64),
    slots: u32,
    backends: BTreeMap<String, Backend<M>>,
    dimms: BTreeMap<String, Dimm>,
}

impl<M> Dimms<M> {
    /// No backend, no DIMM; DIMMs go in `layout`'s device-memory area, at
    /// most `slots` of them.
    pub fn new(layout: &MemoryLayout, slots: u32) -> Dimms<M> {
        Dimms {
            area: (layout.device_memory_start, layout.device_memory_end),
            slots,
            backends: BTreeMap::new(),
            dimms: BTreeMap::new(),
        }
    }

    /// object-add of a backend of `size` bytes.
    pub fn add_backend(&mut self, id: &str, size: u64, memory: M) -> Result<(), QmpError> {
        if self.backends.contains_key(id) {
            return Err(refused(format!(
                "attempt to add duplicate property '{id}' to object (type 'container')"
            )));
        }
        if self.backends.len() >= MAX_BACKENDS {
            return Err(refused(format!(
                "at most {MAX_BACKENDS} memory backends at once: object-del one that no DIMM uses first"
            )));
        }
        self.backends.insert(
            id.to_string(),
            Backend {
                size,
                memory,
                used_by: None,
            },
        );
        Ok(())
    }

    /// object-del: the backend, unless a DIMM uses it.
    pub fn remove_backend(&mut self, id: &str) -> Result<Backend<M>, QmpError> {
        match self.backends.get(id) {
            None => Err(refused(format!("object '{id}' not found"))),
            Some(Backend {
                used_by: Some(dimm),
                ..
            }) => Err(refused(format!(
                "object '{id}' can't be deleted: DIMM '{dimm}' uses it"
            ))),
            Some(_) => self
                .backends
                .remove(id)
                .ok_or_else(|| refused(format!("object '{id}' not found"))),
        }
    }

    /// The backend `id`, if any.
    pub fn backend(&self, id: &str) -> Option<&Backend<M>> {
        self.backends.get(id)
    }

    /// The backend `id`, to change what backs it.
    pub fn backend_mut(&mut self, id: &str) -> Option<&mut Backend<M>> {
        self.backends.get_mut(id)
    }

    /// Checks a device_add of a DIMM `id` backed by `memdev`, at `addr` or
    /// the lowest free place; the DIMM it would be.
    pub fn prepare_plug(
        &self,
        id: &str,
        memdev: &str,
        addr: Option<u64>,
        slot: Option<u32>,
    ) -> Result<Dimm, QmpError> {
        if self.dimms.contains_key(id) {
            return Err(refused(format!("Duplicate device ID '{id}'")));
        }
        let backend = self.backends.get(memdev).ok_or_else(|| {
            refused(format!(
                "Property '{DIMM_DRIVER}.memdev' can't find value '{memdev}'"
            ))
        })?;
        if backend.used_by.is_some() {
            return Err(refused(format!("can't use already busy memdev: {memdev}")));
        }
        let size = backend.size;
        if size == 0 || size % LMB_SIZE != 0 {
            return Err(refused(format!(
                "Hotplugged memory size must be a multiple of 256 MB (memdev '{memdev}' has {size} bytes)"
            )));
        }
        let free_slot = |slot: &u32| self.dimms.values().all(|d| d.slot != *slot);
        let slot = match slot {
            Some(slot) if slot >= self.slots => {
                return Err(refused(format!(
                    "'{DIMM_DRIVER}.slot' can't be {slot}: this machine has slots 0 to {} (--memory slots)",
                    self.slots.saturating_sub(1)
                )))
            }
            Some(slot) if !free_slot(&slot) => {
                return Err(refused(format!(
                    "slot {slot} is busy with another DIMM"
                )))
            }
            Some(slot) => Some(slot),
            None => (0..self.slots).find(free_slot),
        };
        let slot = slot.ok_or_else(|| {
            refused(format!(
                "all {} memory slots are in use (--memory slots)",
                self.slots
            ))
        })?;
        let (start, end) = self.area;
        let free = |at: u64| {
            at >= start
                && at.checked_add(size).is_some_and(|last| last <= end)
                && self
                    .dimms
                    .values()
                    .all(|d| at + size <= d.addr || at >= d.addr + d.size)
        };
        let addr = match addr {
            Some(at) if at % LMB_SIZE != 0 => {
                return Err(refused(format!(
                    "address {at:#x} is not aligned to 256 MiB"
                )))
            }
            Some(at) if !free(at) => {
                return Err(refused(format!(
                    "address {at:#x} of a DIMM of {size:#x} bytes is not free device memory ({start:#x}..{end:#x})"
                )))
            }
            Some(at) => at,
            None => {
                let candidates = std::iter::once(start).chain(self.dimms.values().map(|d| d.addr + d.size));
                let mut candidates: Vec<u64> = candidates.collect();
                candidates.sort_unstable();
                candidates.into_iter().find(|at| free(*at)).ok_or_else(|| {
                    let used: u64 = self.dimms.values().map(|d| d.size).sum();
                    refused(format!(
                        "not enough space, currently {used:#x} in use of total space for memory devices {:#x} (--memory maxmem)",
                        end - start
                    ))
                })?
            }
        };
        Ok(Dimm {
            id: id.to_string(),
            memdev: memdev.to_string(),
            addr,
            size,
            slot,
            unplug_asked: false,
        })
    }

    /// The controller took the DIMM.
    pub fn plugged(&mut self, dimm: Dimm) {
        if let Some(backend) = self.backends.get_mut(&dimm.memdev) {
            backend.used_by = Some(dimm.id.clone());
        }
        self.dimms.insert(dimm.id.clone(), dimm);
    }

    /// The DIMM named by its id or QOM path.
    pub fn find(&self, name: &str) -> Option<&Dimm> {
        self.dimms
            .values()
            .find(|d| d.id == name || d.path() == name)
    }

    /// Records that a device_del of DIMM `name` goes to the hotplug controller.
    pub fn ask_unplug(&mut self, name: &str) {
        let Some(id) = self.find(name).map(|dimm| dimm.id.clone()) else {
            return;
        };
        if let Some(dimm) = self.dimms.get_mut(&id) {
            dimm.unplug_asked = true;
        }
    }

    /// Removes the DIMM the hotplug controller released: only one the core
    /// asked back, whatever the controller says.
    pub fn remove_released(&mut self, name: &str) -> Result<Dimm, String> {
        match self.find(name) {
            None => Err(format!("an unknown DIMM {name}")),
            Some(dimm) if !dimm.unplug_asked => Err(format!(
                "DIMM {} ({name}), which no device_del asked back",
                dimm.id
            )),
            Some(_) => self
                .remove(name)
                .ok_or_else(|| format!("a DIMM {name} that went meanwhile")),
        }
    }

    /// The DIMM is gone (released): its backend is free again.
    fn remove(&mut self, name: &str) -> Option<Dimm> {
        let id = self.find(name)?.id.clone();
        let dimm = self.dimms.remove(&id)?;
        if let Some(backend) = self.backends.get_mut(&dimm.memdev) {
            backend.used_by = None;
        }
        Some(dimm)
    }

    /// Every backend, by id.
    pub fn backends(&self) -> impl Iterator<Item = (&String, &Backend<M>)> {
        self.backends.iter()
    }

    /// The plugged DIMMs, in address order.
    pub fn plugged_dimms(&self) -> Vec<&Dimm> {
        let mut dimms: Vec<&Dimm> = self.dimms.values().collect();
        dimms.sort_by_key(|d| d.addr);
        dimms
    }

    /// Bytes of plugged DIMMs.
    pub fn plugged_bytes(&self) -> u64 {
        self.dimms.values().map(|d| d.size).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn dimms() -> Dimms<()> {
        let layout = MemoryLayout {
            boot_ram: 512 << 20,
            device_memory_start: GIB,
            device_memory_end: 3 * GIB,
        };
        Dimms::new(&layout, 2)
    }

    #[test]
    fn dimms_take_free_slots_and_addresses_and_give_them_back() {
        let mut d = dimms();
        d.add_backend("m0", GIB / 2, ()).unwrap();
        d.add_backend("m1", GIB, ()).unwrap();
        let first = d.prepare_plug("dimm0", "m0", None, None).unwrap();
        assert_eq!((first.addr, first.slot), (GIB, 0));
        assert_eq!(first.drcs(), [DrcIndex(0x8000_0004), DrcIndex(0x8000_0005)]);
        d.plugged(first);
        let second = d.prepare_plug("dimm1", "m1", None, None).unwrap();
        assert_eq!((second.addr, second.slot), (GIB + GIB / 2, 1));
        d.plugged(second);
        assert_eq!(d.plugged_bytes(), GIB + GIB / 2);
        assert!(d.remove_backend("m0").is_err(), "in use");
        // Released only when asked back.
        let not_asked = d.remove_released("/machine/peripheral/dimm0").unwrap_err();
        assert!(
            not_asked.contains("which no device_del asked back"),
            "{not_asked}"
        );
        assert!(d.remove_released("dimm9").unwrap_err().contains("unknown"));
        d.ask_unplug("dimm0");
        let gone = d.remove_released("/machine/peripheral/dimm0").unwrap();
        assert_eq!(gone.id, "dimm0");
        // Its slot, its place and its backend are free again.
        let again = d.prepare_plug("dimm0", "m0", None, None).unwrap();
        assert_eq!((again.addr, again.slot), (GIB, 0));
        assert!(d.remove_backend("m0").is_ok());
    }

    #[test]
    fn bad_dimms_are_refused_with_the_reason() {
        let mut d = dimms();
        d.add_backend("odd", 100 << 20, ()).unwrap();
        d.add_backend("big", 4 * GIB, ()).unwrap();
        d.add_backend("m", GIB, ()).unwrap();
        let error = |r: Result<Dimm, QmpError>| r.unwrap_err().desc;
        assert!(error(d.prepare_plug("x", "odd", None, None)).contains("multiple of 256 MB"));
        assert!(error(d.prepare_plug("x", "big", None, None)).contains("not enough space"));
        assert!(error(d.prepare_plug("x", "none", None, None)).contains("can't find value 'none'"));
        assert!(error(d.prepare_plug("x", "m", Some(GIB + 1), None)).contains("not aligned"));
        assert!(error(d.prepare_plug("x", "m", Some(0), None)).contains("not free device memory"));
        assert!(error(d.prepare_plug("x", "m", Some(5 * GIB / 2), None)).contains("not free"));
        let placed = d.prepare_plug("x", "m", Some(2 * GIB), None).unwrap();
        d.plugged(placed);
        assert!(error(d.prepare_plug("x", "m", None, None)).contains("Duplicate device ID"));
        assert!(error(d.prepare_plug("y", "m", None, None)).contains("busy memdev"));
        d.add_backend("m2", GIB / 4, ()).unwrap();
        d.add_backend("m3", GIB / 4, ()).unwrap();
        d.plugged(d.prepare_plug("y", "m2", None, None).unwrap());
        assert!(error(d.prepare_plug("z", "m3", None, None)).contains("memory slots are in use"));
        assert!(d
            .add_backend("m", GIB, ())
            .unwrap_err()
            .desc
            .contains("duplicate"));
        assert!(d.remove_backend("nothing").is_err());
    }

    #[test]
    fn backends_are_bounded() {
        let mut d = dimms();
        for n in 0..MAX_BACKENDS {
            d.add_backend(&format!("m{n}"), GIB, ()).unwrap();
        }
        let refused = d.add_backend("one-more", GIB, ()).unwrap_err();
        assert!(
            refused.desc.contains("at most 64 memory backends"),
            "{}",
            refused.desc
        );
        d.remove_backend("m0").unwrap();
        d.add_backend("one-more", GIB, ()).unwrap();
    }
}
