//! Memory: backends (object-add, object-del) and DIMMs (device_add,
//! device_del, release). A DIMM's memory is shown to the guest (a KVM
//! slot) and to the RTAS server before the guest is told of it, and taken
//! from both once every LMB of it went back.

use super::Vm;
use crate::dimms::Dimm;
use crate::memory::{BackendMemory, DimmMemory};
use crate::request::{BackendAdd, QmpError};
use ipc_proto::link::core_hotplug;
use ipc_proto::link::core_rtas::MemoryRegion;
use serde_json::{json, Value};
use std::os::fd::{AsFd, OwnedFd};

/// KVM memory slot of DIMM slot 0 (boot RAM has slot 0).
const FIRST_DIMM_KVM_SLOT: u32 = 1;

impl Vm {
    /// object-add of a memory backend: a sealed memfd of `size` bytes.
    pub(super) fn object_add(&mut self, backend: BackendAdd) -> Result<Value, QmpError> {
        let BackendAdd {
            qom_type,
            id,
            size,
            prealloc,
            share,
        } = backend;
        let room = self.layout.device_memory_end - self.layout.device_memory_start;
        if size == 0 || size > room {
            return Err(QmpError::generic(format!(
                "property 'size' of {qom_type} must be between 1 and {room} bytes (the device memory), not {size}"
            )));
        }
        let memfd = crate::memory::sealed_memfd("papervisor-dimm", size)?;
        if prealloc {
            nix::fcntl::fallocate(&memfd, nix::fcntl::FallocateFlags::empty(), 0, size as i64)
                .map_err(|error| {
                    QmpError::generic(format!(
                        "cannot preallocate {size} bytes for {id} (prealloc): {error}"
                    ))
                })?;
        }
        let memory = BackendMemory {
            memfd,
            plugged: None,
            prealloc,
            share,
        };
        self.dimms.add_backend(&id, size, memory)?;
        Ok(json!({}))
    }

    /// object-del of a memory backend no DIMM uses.
    pub(super) fn object_del(&mut self, id: &str) -> Result<Value, QmpError> {
        self.dimms.remove_backend(id)?;
        Ok(json!({}))
    }

    /// The RTAS server's view of the DIMMs: each plugged one, plus `adding`.
    fn dimm_memory_table(
        &self,
        adding: Option<&Dimm>,
    ) -> Result<Vec<(MemoryRegion, OwnedFd)>, QmpError> {
        let mut table = Vec::new();
        for dimm in self.dimms.plugged_dimms().into_iter().chain(adding) {
            let Some(backend) = self.dimms.backend(&dimm.memdev) else {
                continue;
            };
            let fd = backend
                .memory
                .memfd
                .as_fd()
                .try_clone_to_owned()
                .map_err(|error| QmpError::generic(format!("cannot share a DIMM: {error}")))?;
            let region = MemoryRegion {
                guest_address: dimm.addr,
                size: dimm.size,
                file_offset: 0,
            };
            table.push((region, fd));
        }
        Ok(table)
    }

    /// Gives the RTAS server the memory of the plugged DIMMs, after one
    /// went or did not come.
    fn share_plugged_dimms(&self) -> Result<(), String> {
        let table = self.dimm_memory_table(None).map_err(|error| error.desc)?;
        self.devices
            .set_dimm_memory(table)
            .map_err(|failure| failure.to_string())
    }

    /// device_add of a DIMM: its memory is shown to the guest (KVM slot)
    /// and to the RTAS server before the controller tells the guest;
    /// `cold`: before the guest runs (its DRCs configured, no event: the
    /// device tree has it assigned).
    pub(super) fn dimm_add(
        &mut self,
        id: &str,
        memdev: &str,
        addr: Option<u64>,
        slot: Option<u32>,
        cold: bool,
    ) -> Result<Value, QmpError> {
        let dimm = self.dimms.prepare_plug(id, memdev, addr, slot)?;
        let memfd = &self
            .dimms
            .backend(memdev)
            .ok_or_else(|| QmpError::generic("the backend went away"))?
            .memory
            .memfd;
        let memory = DimmMemory::plug(
            &self.vm_fd,
            memfd,
            dimm.size,
            FIRST_DIMM_KVM_SLOT + dimm.slot,
            dimm.addr,
        )?;
        let undo = |vm: &Self, memory: DimmMemory| {
            if let Err(error) = memory.unplug(&vm.vm_fd) {
                log::error!("cannot take back a DIMM's memory: {error}");
            }
        };
        let table = match self.dimm_memory_table(Some(&dimm)) {
            Ok(table) => table,
            Err(error) => {
                undo(self, memory);
                return Err(error);
            }
        };
        if let Err(failure) = self.devices.set_dimm_memory(table) {
            undo(self, memory);
            // The table a successor gets at its set-up: without this DIMM.
            let _ = self.share_plugged_dimms();
            return Err(QmpError::generic(format!(
                "the RTAS server cannot map the DIMM: {failure}"
            )));
        }
        self.share_dimm_with_disks(&dimm, &memory);
        let plug = core_hotplug::Request::Plug {
            drcs: dimm.drcs(),
            device: dimm.path(),
            cold,
        };
        if let Err(reason) = self.hotplug_request(plug) {
            self.unshare_dimm_with_disks(&dimm, &memory);
            undo(self, memory);
            let _ = self.share_plugged_dimms();
            return Err(QmpError::generic(reason));
        }
        log::info!(
            "DIMM {} plugged: {:#x} bytes at {:#x}, slot {}",
            dimm.id,
            dimm.size,
            dimm.addr,
            dimm.slot
        );
        if let Some(backend) = self.dimms.backend_mut(memdev) {
            backend.memory.plugged = Some(memory);
        }
        self.dimms.plugged(dimm);
        Ok(json!({}))
    }

    /// Adds a DIMM's memory to every disk's backend's memory table (a region
    /// of its own), before the guest can put a buffer there. A backend that
    /// fails it is cut off (its disk fails): memory hot plug is not hostage
    /// to one disk's backend.
    fn share_dimm_with_disks(&mut self, dimm: &Dimm, memory: &DimmMemory) {
        self.update_disks_memory(dimm, memory, true);
    }

    /// Takes a DIMM's memory out of every disk's backend's memory table; a
    /// backend that fails it is cut off.
    fn unshare_dimm_with_disks(&mut self, dimm: &Dimm, memory: &DimmMemory) {
        self.update_disks_memory(dimm, memory, false);
    }

    fn update_disks_memory(&mut self, dimm: &Dimm, memory: &DimmMemory, add: bool) {
        let Some(backend) = self.dimms.backend(&dimm.memdev) else {
            return;
        };
        let region = memory.vhost_region(&backend.memory.memfd);
        for disk in self.disks.all_mut() {
            let Some(frontend) = disk.frontend.as_mut() else {
                continue;
            };
            let updated = match add {
                true => frontend.add_region(&region),
                false => frontend.remove_region(&region),
            };
            if let Err(error) = updated {
                let what = if add { "take" } else { "drop" };
                disk.cut_off(format!(
                    "cut off: its backend did not {what} DIMM {}: {}",
                    dimm.id,
                    common::describe(&error)
                ));
            }
        }
    }

    /// device_del of a DIMM: every request reaches the guest again
    /// (coalesced in the event queue). It is asked back before the request
    /// goes, and stays asked back if the request failed (it may have
    /// reached the controller).
    pub(super) fn dimm_del(&mut self, name: &str) -> Result<Value, QmpError> {
        let Some(dimm) = self.dimms.find(name) else {
            return Err(QmpError::device_not_found(format!(
                "Device '{name}' not found"
            )));
        };
        let drcs = dimm.drcs();
        self.dimms.ask_unplug(name);
        self.hotplug_request(core_hotplug::Request::UnplugRequest { drcs })
            .map_err(QmpError::generic)?;
        Ok(json!({}))
    }

    /// Every LMB of the DIMM went back to the platform (or a reset completed
    /// its unplug): the guest can no longer reach it, so its KVM slot, the
    /// RTAS server's mapping and the core's go, and its backend is free.
    pub(super) fn release_dimm(&mut self, device: &str) -> Result<(), String> {
        let dimm = self.dimms.remove_released(device)?;
        let memory = self
            .dimms
            .backend_mut(&dimm.memdev)
            .and_then(|backend| backend.memory.plugged.take());
        if let Some(memory) = memory {
            self.unshare_dimm_with_disks(&dimm, &memory);
            if let Err(error) = memory.unplug(&self.vm_fd) {
                log::error!("DIMM {}: {}", dimm.id, common::describe(&error));
            }
        }
        if let Err(error) = self.share_plugged_dimms() {
            log::error!("the RTAS server did not drop DIMM {}: {error}", dimm.id);
        }
        log::info!("DIMM {} unplugged", dimm.id);
        self.device_deleted(Some(&dimm.id), &dimm.path());
        Ok(())
    }
}
