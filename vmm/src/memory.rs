//! Guest RAM: memfds mapped through vm-memory and registered with KVM.
//! The memfds are what device processes will map to share guest memory.

use ipc_proto::link::core_rtas::MemoryRegion;
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use nix::fcntl::{fallocate, fcntl, FallocateFlags, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use thiserror::Error;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Why guest memory cannot be made or shown to the guest.
#[derive(Debug, Error)]
pub enum MemoryError {
    /// A memfd cannot be created.
    #[error("cannot create the memfd {0}")]
    Memfd(&'static str, #[source] nix::Error),
    /// A memfd cannot be sized.
    #[error("cannot size the memfd {name} to {size} bytes")]
    Resize {
        /// Its name.
        name: &'static str,
        /// The size.
        size: u64,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Guest memory cannot be mapped.
    #[error("cannot map guest RAM")]
    Map(#[source] vm_memory::mmap::FromRangesError),
    /// A region cannot be registered with KVM.
    #[error("KVM refused memory slot {slot}")]
    Register {
        /// The KVM memory slot.
        slot: u32,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A memfd cannot be sealed.
    #[error("cannot seal the memfd {0} against resizing")]
    Seal(&'static str, #[source] nix::Error),
    /// A DIMM's memory cannot be mapped.
    #[error("cannot map a DIMM's memory")]
    MapDimm(#[source] vm_memory::mmap::MmapRegionError),
    /// Boot RAM cannot be discarded.
    #[error("cannot discard guest RAM contents")]
    Discard(#[source] nix::Error),
}

/// Boot RAM, backed by one memfd, sealed against growing and shrinking
/// before anyone else sees it: a device process that maps it cannot make the
/// host back more memory (or pull pages from under the core, SIGBUS).
pub struct GuestRam {
    memory: GuestMemoryMmap,
    memfd: File,
    size: u64,
}

impl From<MemoryError> for crate::request::QmpError {
    fn from(error: MemoryError) -> Self {
        crate::request::QmpError::generic(common::describe(&error))
    }
}

/// What backs a memory backend in the core: its memfd, and its mapping and
/// KVM slot while a DIMM it backs is plugged.
pub struct BackendMemory {
    /// The backend's sealed memfd.
    pub memfd: std::fs::File,
    /// Its mapping and KVM slot, while a DIMM it backs is plugged.
    pub plugged: Option<DimmMemory>,
    /// object-add's `prealloc`: the memfd was allocated in full.
    pub prealloc: bool,
    /// object-add's `share`, reported back by query-memdev.
    pub share: bool,
}

/// A DIMM's memory as the core holds it: its backend's memfd, mapped, and
/// the KVM slot that shows it to the guest while it is plugged.
pub struct DimmMemory {
    region: vm_memory::mmap::MmapRegion,
    slot: u32,
    guest_address: u64,
}

impl DimmMemory {
    /// Maps `memfd` and shows it to the guest at `guest_address` in KVM
    /// memory slot `slot`.
    pub fn plug(
        vm: &VmFd,
        memfd: &File,
        size: u64,
        slot: u32,
        guest_address: u64,
    ) -> Result<DimmMemory, MemoryError> {
        let file = memfd.try_clone().map_err(|source| MemoryError::Resize {
            name: "a DIMM's backend",
            size,
            source,
        })?;
        let region =
            vm_memory::mmap::MmapRegion::from_file(FileOffset::new(file, 0), size as usize)
                .map_err(MemoryError::MapDimm)?;
        let memory = DimmMemory {
            region,
            slot,
            guest_address,
        };
        memory.set_slot(vm, size)?;
        Ok(memory)
    }

    fn set_slot(&self, vm: &VmFd, size: u64) -> Result<(), MemoryError> {
        let description = kvm_userspace_memory_region {
            slot: self.slot,
            flags: 0,
            guest_phys_addr: self.guest_address,
            memory_size: size,
            userspace_addr: self.region.as_ptr() as u64,
        };
        // SAFETY: the mapping is `self.region`, which outlives the slot: the
        // slot is deleted (size 0) in `unplug` before the region is dropped,
        // and DIMM slots never overlap boot RAM or each other.
        unsafe { vm.set_user_memory_region(description) }.map_err(|source| MemoryError::Register {
            slot: self.slot,
            source,
        })
    }

    /// The DIMM as a vhost-user backend is told of it: its place, the
    /// core's mapping and `memfd`, its backend's memfd.
    pub fn vhost_region<'a>(&self, memfd: &'a File) -> crate::block::frontend::Region<'a> {
        crate::block::frontend::Region {
            guest_address: self.guest_address,
            size: self.region.size() as u64,
            host_address: self.region.as_ptr() as u64,
            file_offset: 0,
            fd: memfd.as_fd(),
        }
    }

    /// The guest can no longer reach it: the slot goes, then the mapping.
    /// A slot KVM would not delete keeps its mapping (leaked, not unmapped
    /// under the guest).
    pub fn unplug(self, vm: &VmFd) -> Result<(), MemoryError> {
        let deleted = self.set_slot(vm, 0);
        if deleted.is_err() {
            std::mem::forget(self.region);
        }
        deleted
    }
}

/// A memfd of `size` zero bytes, sealed against growing and shrinking (and
/// against unsealing) before anyone else sees it: what the core shares with
/// device processes, which then can neither make the host back more memory
/// nor pull pages from under the core (SIGBUS).
pub fn sealed_memfd(name: &'static str, size: u64) -> Result<File, MemoryError> {
    let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)
        .map_err(|error| MemoryError::Memfd(name, error))?;
    let memfd = File::from(fd);
    memfd
        .set_len(size)
        .map_err(|source| MemoryError::Resize { name, size, source })?;
    let seals = SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_SEAL;
    fcntl(&memfd, FcntlArg::F_ADD_SEALS(seals)).map_err(|error| MemoryError::Seal(name, error))?;
    Ok(memfd)
}

impl GuestRam {
    /// Boot RAM of `size` bytes, in a sealed memfd.
    pub fn new(size: u64) -> Result<GuestRam, MemoryError> {
        let name = "papervisor-ram";
        let memfd = sealed_memfd(name, size)?;
        let clone =
            memfd
                .try_clone()
                .map_err(|source| MemoryError::Resize { name, size, source })?;
        let memory = GuestMemoryMmap::from_ranges_with_files([(
            GuestAddress(0),
            size as usize,
            Some(FileOffset::new(clone, 0)),
        )])
        .map_err(MemoryError::Map)?;
        Ok(GuestRam {
            memory,
            memfd,
            size,
        })
    }

    /// Guest memory, as the core reads and writes it.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// The regions with the descriptor that backs each, for device processes.
    pub fn regions(&self) -> Vec<(MemoryRegion, BorrowedFd<'_>)> {
        vec![(
            MemoryRegion {
                guest_address: 0,
                size: self.size,
                file_offset: 0,
            },
            self.memfd.as_fd(),
        )]
    }

    /// Boot RAM as a vhost-user backend is told of it.
    pub fn vhost_region(&self) -> crate::block::frontend::Region<'_> {
        crate::block::frontend::Region {
            guest_address: 0,
            size: self.size,
            host_address: self
                .memory
                .get_host_address(GuestAddress(0))
                .map_or(0, |address| address as u64),
            file_offset: 0,
            fd: self.memfd.as_fd(),
        }
    }

    /// Registers every region with KVM, one slot each.
    pub fn register(&self, vm: &VmFd) -> Result<(), MemoryError> {
        for (slot, region) in self.memory.iter().enumerate() {
            let slot = slot as u32;
            let host = self
                .memory
                .get_host_address(region.start_addr())
                .expect("a region's start is inside guest memory");
            let description = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the mapping is owned by `self.memory`, which lives as long as
            // the VM (the core drops the VM fd first), and slots do not overlap.
            unsafe { vm.set_user_memory_region(description) }
                .map_err(|source| MemoryError::Register { slot, source })?;
        }
        Ok(())
    }

    /// Zeroes all of RAM as a power cycle would, and gives the pages back to
    /// the host. vCPUs must be stopped.
    pub fn discard(&self) -> Result<(), MemoryError> {
        fallocate(
            &self.memfd,
            FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
            0,
            self.size as i64,
        )
        .map_err(MemoryError::Discard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn the_memfd_can_neither_grow_nor_shrink_nor_lose_its_seals() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let (_, fd) = ram.regions()[0];
        let file = File::from(fd.try_clone_to_owned().unwrap());
        assert!(file.set_len(2 << 20).is_err());
        assert!(file.set_len(1 << 19).is_err());
        use std::os::unix::fs::FileExt;
        assert!(
            file.write_at(b"x", 1 << 20).is_err(),
            "a write past the end grows it"
        );
        assert!(
            file.write_at(b"x", 0).is_ok(),
            "writing inside is still allowed"
        );
        assert!(fcntl(&file, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_WRITE)).is_err());
        assert_eq!(file.metadata().unwrap().len(), 1 << 20);
    }

    #[test]
    fn discard_zeroes_ram() {
        let ram = GuestRam::new(1 << 20).unwrap();
        ram.memory()
            .write_obj(0xdead_beefu32, GuestAddress(0x1000))
            .unwrap();
        ram.discard().unwrap();
        assert_eq!(
            ram.memory().read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0
        );
    }
}
