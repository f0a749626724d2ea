//! Where things live in guest-physical memory, and the port the guest knocks on.

use crate::config::MemoryConfig;

/// The hypercall doorbell: a 32-bit `out` here traps to the core.
pub const HCALL_DOORBELL_PORT: u16 = 0x0700;

/// The boot GDT the core writes for the first instructions (the guest loads its own).
pub const BOOT_GDT: u64 = 0x500;
/// An empty IDT: the guest has interrupts disabled until it loads its own.
pub const BOOT_IDT: u64 = 0x520;
/// The boot page tables' PML4.
pub const PML4: u64 = 0x9000;
/// Their PDPT.
pub const PDPT: u64 = 0xa000;
/// The PDPT that maps the PCI host bridge's 32-bit window (uncached), and
/// its two page directories.
pub const WINDOWS_PDPT: u64 = 0xb000;
/// See [`WINDOWS_PDPT`].
pub const WINDOWS_DIRECTORIES: u64 = 0xc000;
/// One page directory per GiB mapped, from here up (at most 0x100000).
pub const PAGE_DIRECTORIES: u64 = 0x10000;
/// Where the guest kernel must load, and below which the core owns memory.
pub const GUEST_IMAGE_START: u64 = 0x10_0000;
/// The flattened device tree; the guest image must end below it.
pub const FDT_START: u64 = 0x100_0000;
/// The most the device tree may take.
pub const FDT_MAX_SIZE: u64 = 0x100_0000;
/// The KVM TSS needs three pages of guest-physical space that is not RAM.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;

const GIB: u64 = 1 << 30;
/// Where x86's window below 4 GiB starts, which no DIMM may cover: the TSS
/// KVM needs ([`KVM_TSS_ADDRESS`]), the IOAPIC and the local APIC pages.
const X86_WINDOW_START: u64 = 3 * GIB;
const X86_WINDOW_END: u64 = 4 * GIB;

/// Boot RAM from 0, then (after a gap up to the next 1 GiB boundary, or up to
/// 4 GiB when the area would cross x86's window below 4 GiB) the
/// device-memory area where DIMMs go, as PAPR lays it out. The device tree
/// describes the gap as reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryLayout {
    /// Boot RAM, in bytes, from address 0.
    pub boot_ram: u64,
    /// Where the device-memory area starts.
    pub device_memory_start: u64,
    /// Where it ends.
    pub device_memory_end: u64,
}

impl MemoryLayout {
    /// The layout of a machine with `config`.
    pub fn new(config: &MemoryConfig) -> MemoryLayout {
        let mut device_memory_start = config.size.div_ceil(GIB) * GIB;
        let span = config.max_size - config.size;
        if span > 0
            && device_memory_start < X86_WINDOW_END
            && device_memory_start + span > X86_WINDOW_START
        {
            device_memory_start = X86_WINDOW_END;
        }
        MemoryLayout {
            boot_ram: config.size,
            device_memory_start,
            device_memory_end: device_memory_start + span,
        }
    }

    /// GiBs of identity mapping the guest starts with: all RAM it can ever have.
    pub fn mapped_gib(&self) -> u64 {
        self.device_memory_end
            .max(self.boot_ram)
            .div_ceil(GIB)
            .max(4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_memory_starts_at_the_next_gib_after_boot_ram() {
        let layout = MemoryLayout::new(&MemoryConfig {
            size: 512 << 20,
            max_size: 4 << 30,
            slots: 8,
        });
        // 3.5 GiB of device memory from 1 GiB would cross 3..4 GiB: from 4 GiB.
        assert_eq!(layout.device_memory_start, 4 << 30);
        assert_eq!(layout.device_memory_end, (4 << 30) + (3584 << 20));
        assert_eq!(layout.mapped_gib(), 8);
        let below = MemoryLayout::new(&MemoryConfig {
            size: 512 << 20,
            max_size: 2560 << 20,
            slots: 8,
        });
        assert_eq!(
            (below.device_memory_start, below.device_memory_end),
            (1 << 30, 3 << 30)
        );
        let exact = MemoryLayout::new(&MemoryConfig {
            size: 2 << 30,
            max_size: 2 << 30,
            slots: 0,
        });
        assert_eq!(exact.device_memory_start, exact.device_memory_end);
        assert_eq!(exact.device_memory_start, 2 << 30);
    }
}
