//! x86_64 entry state: long mode without firmware (the Firecracker recipe).
//! GDT with flat 64-bit segments, identity page tables (2 MiB pages for the
//! first 64 GiB, 1 GiB pages above, so that a machine of several TiB fits),
//! paging and long mode on, CPUID from KVM with each vCPU's own APIC id.

use crate::layout::{
    MemoryLayout, BOOT_GDT, BOOT_IDT, GUEST_IMAGE_START, PAGE_DIRECTORIES, PDPT, PML4,
    WINDOWS_DIRECTORIES, WINDOWS_PDPT,
};
use kvm_bindings::{kvm_regs, kvm_segment, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_MP: u64 = 1 << 1;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_NE: u64 = 1 << 5;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

const PAGE_PRESENT_WRITABLE: u64 = 0x3;
const PAGE_HUGE: u64 = 0x80;

const CODE_SELECTOR: u16 = 0x08;
const DATA_SELECTOR: u16 = 0x10;
const TSS_SELECTOR: u16 = 0x18;

/// Why the guest cannot be given its boot state.
#[derive(Debug, Error)]
pub enum BootError {
    /// The boot tables do not fit guest memory.
    #[error("cannot write boot tables into guest memory")]
    GuestMemory(#[source] vm_memory::GuestMemoryError),
    /// The identity mapping of guest memory does not fit its page tables.
    #[error("{gib} GiB of identity mapping do not fit below the guest image")]
    TooMuchMemory {
        /// The guest's memory, rounded up to GiB.
        gib: u64,
    },
    /// A KVM ioctl failed.
    #[error("KVM call {call} failed")]
    Kvm {
        /// The ioctl.
        call: &'static str,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

fn kvm_call(call: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> BootError {
    move |source| BootError::Kvm { call, source }
}

/// A GDT entry from flags, base and limit, in the packed x86 layout.
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
}

const BOOT_GDT_ENTRIES: [u64; 4] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff), // 64-bit code
    gdt_entry(0xc093, 0, 0xfffff), // data
    gdt_entry(0x808b, 0, 0xfffff), // TSS
];

fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let granularity = ((entry >> 55) & 1) as u8;
    kvm_segment {
        base,
        // Limits are in 4 KiB units when the granularity bit is set.
        limit: if granularity == 1 {
            (limit << 12) | 0xfff
        } else {
            limit
        },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granularity,
        avl: ((entry >> 52) & 1) as u8,
        unusable: if (entry >> 47) & 1 == 1 { 0 } else { 1 },
        padding: 0,
    }
}

/// GiBs mapped with 2 MiB pages (one page directory each); above, 1 GiB pages.
const SMALL_PAGE_GIB: u64 = 64;

/// Writes the boot GDT, an empty IDT and the identity page tables.
pub fn write_boot_tables(memory: &GuestMemoryMmap, layout: &MemoryLayout) -> Result<(), BootError> {
    for (i, entry) in BOOT_GDT_ENTRIES.iter().enumerate() {
        memory
            .write_obj(*entry, GuestAddress(BOOT_GDT + i as u64 * 8))
            .map_err(BootError::GuestMemory)?;
    }
    memory
        .write_obj(0u64, GuestAddress(BOOT_IDT))
        .map_err(BootError::GuestMemory)?;

    let gib = layout.mapped_gib();
    let small = gib.min(SMALL_PAGE_GIB);
    // The first 512 GiB's PDPT is PDPT; each further 512 GiB has one after
    // the page directories.
    let pdpts = gib.div_ceil(512);
    let extra_pdpts = PAGE_DIRECTORIES + small * 0x1000;
    let windows_slot = ipc_proto::pci::Phb::new(0).mem32.0 >> 39;
    if extra_pdpts + (pdpts - 1) * 0x1000 > GUEST_IMAGE_START || pdpts > windows_slot {
        return Err(BootError::TooMuchMemory { gib });
    }
    let write = |value: u64, at: u64| {
        memory
            .write_obj(value, GuestAddress(at))
            .map_err(BootError::GuestMemory)
    };
    let pdpt_of = |k: u64| {
        if k == 0 {
            PDPT
        } else {
            extra_pdpts + (k - 1) * 0x1000
        }
    };
    for k in 0..pdpts {
        write(pdpt_of(k) | PAGE_PRESENT_WRITABLE, PML4 + k * 8)?;
    }
    map_bridge_windows(&write)?;
    for g in 0..gib {
        let entry = pdpt_of(g / 512) + (g % 512) * 8;
        if g >= small {
            write((g << 30) | PAGE_PRESENT_WRITABLE | PAGE_HUGE, entry)?;
            continue;
        }
        let directory = PAGE_DIRECTORIES + g * 0x1000;
        write(directory | PAGE_PRESENT_WRITABLE, entry)?;
        for i in 0..512u64 {
            let frame = (g << 30) | (i << 21);
            write(frame | PAGE_PRESENT_WRITABLE | PAGE_HUGE, directory + i * 8)?;
        }
    }
    Ok(())
}

/// Page-level cache disable: MMIO is not cached.
const PAGE_CACHE_DISABLE: u64 = 0x10;

/// Identity-maps the PCI host bridge's 32-bit memory window (where the
/// guest places its functions' BARs) with uncached 2 MiB pages (1 GiB
/// pages are not offered to guests everywhere: PVM has none), in the
/// 512 GiB slot of the PML4 that holds it, above any RAM.
fn map_bridge_windows(write: &dyn Fn(u64, u64) -> Result<(), BootError>) -> Result<(), BootError> {
    let (base, size) = ipc_proto::pci::Phb::new(0).mem32;
    let slot = base >> 39;
    write(WINDOWS_PDPT | PAGE_PRESENT_WRITABLE, PML4 + slot * 8)?;
    let first_gib = base >> 30;
    for gib in first_gib..(base + size) >> 30 {
        let directory = WINDOWS_DIRECTORIES + (gib - first_gib) * 0x1000;
        write(
            directory | PAGE_PRESENT_WRITABLE,
            WINDOWS_PDPT + (gib % 512) * 8,
        )?;
        for i in 0..512u64 {
            let frame = (gib << 30) | (i << 21);
            write(
                frame | PAGE_PRESENT_WRITABLE | PAGE_HUGE | PAGE_CACHE_DISABLE,
                directory + i * 8,
            )?;
        }
    }
    Ok(())
}

/// CPUID for one vCPU: what KVM supports, with this vCPU's APIC ids.
pub fn cpuid_for(kvm: &Kvm, vcpu_id: u32) -> Result<CpuId, BootError> {
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_call("KVM_GET_SUPPORTED_CPUID"))?;
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            1 => {
                entry.ebx = (entry.ebx & 0x00ff_ffff) | ((vcpu_id & 0xff) << 24);
            }
            0xb | 0x1f => entry.edx = vcpu_id,
            _ => {}
        }
    }
    Ok(cpuid)
}

/// Puts `vcpu` in 64-bit mode at `entry` with `rdi` and `rsi` as the first two arguments.
pub fn enter_long_mode(vcpu: &VcpuFd, entry: u64, rdi: u64, rsi: u64) -> Result<(), BootError> {
    let mut sregs = vcpu.get_sregs().map_err(kvm_call("KVM_GET_SREGS"))?;
    let code = segment_from_gdt(BOOT_GDT_ENTRIES[1], CODE_SELECTOR);
    let data = segment_from_gdt(BOOT_GDT_ENTRIES[2], DATA_SELECTOR);
    let tss = segment_from_gdt(BOOT_GDT_ENTRIES[3], TSS_SELECTOR);
    sregs.gdt.base = BOOT_GDT;
    sregs.gdt.limit = (BOOT_GDT_ENTRIES.len() * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.cr3 = PML4;
    sregs.cr4 = X86_CR4_PAE;
    sregs.cr0 = X86_CR0_PE | X86_CR0_MP | X86_CR0_ET | X86_CR0_NE | X86_CR0_PG;
    sregs.efer = EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs).map_err(kvm_call("KVM_SET_SREGS"))?;
    let regs = kvm_regs {
        rip: entry,
        rdi,
        rsi,
        rflags: 0x2,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm_call("KVM_SET_REGS"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_flat_long_mode_segments() {
        let code = segment_from_gdt(BOOT_GDT_ENTRIES[1], CODE_SELECTOR);
        assert_eq!(
            (code.l, code.db, code.present, code.s, code.type_),
            (1, 0, 1, 1, 0xb)
        );
        assert_eq!(code.limit, 0xffff_ffff);
        let data = segment_from_gdt(BOOT_GDT_ENTRIES[2], DATA_SELECTOR);
        assert_eq!((data.l, data.db, data.type_), (0, 1, 3));
        let tss = segment_from_gdt(BOOT_GDT_ENTRIES[3], TSS_SELECTOR);
        assert_eq!((tss.s, tss.type_, tss.present), (0, 0xb, 1));
    }

    #[test]
    fn page_tables_identity_map_with_2mib_pages() {
        let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 21)]).unwrap();
        let layout = MemoryLayout {
            boot_ram: 512 << 20,
            device_memory_start: 1 << 30,
            device_memory_end: 1 << 30,
        };
        write_boot_tables(&memory, &layout).unwrap();
        let pml4: u64 = memory.read_obj(GuestAddress(PML4)).unwrap();
        assert_eq!(pml4, PDPT | 3);
        let third_gib: u64 = memory.read_obj(GuestAddress(PDPT + 2 * 8)).unwrap();
        assert_eq!(third_gib, (PAGE_DIRECTORIES + 0x2000) | 3);
        let page: u64 = memory
            .read_obj(GuestAddress(PAGE_DIRECTORIES + 0x2000 + 5 * 8))
            .unwrap();
        assert_eq!(page, ((2 << 30) + (5 << 21)) | 0x83);
    }

    #[test]
    fn terabytes_are_mapped_with_1gib_pages_above_64gib() {
        let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 21)]).unwrap();
        let layout = MemoryLayout {
            boot_ram: 512 << 20,
            device_memory_start: 1 << 30,
            device_memory_end: 4 << 40,
        };
        write_boot_tables(&memory, &layout).unwrap();
        let read = |at: u64| -> u64 { memory.read_obj(GuestAddress(at)).unwrap() };
        // 64 GiB of 2 MiB pages, then 1 GiB pages in PDPT, then in 7 more PDPTs.
        assert_eq!(read(PDPT + 63 * 8), (PAGE_DIRECTORIES + 63 * 0x1000) | 3);
        assert_eq!(read(PDPT + 64 * 8), (64 << 30) | 0x83);
        let second = PAGE_DIRECTORIES + 64 * 0x1000;
        assert_eq!(read(PML4 + 8), second | 3);
        assert_eq!(read(second + 3 * 8), ((512 + 3) << 30) | 0x83);
        let last = second + 6 * 0x1000;
        assert_eq!(read(PML4 + 7 * 8), last | 3);
        assert_eq!(read(last + 511 * 8), (4095u64 << 30) | 0x83);
        assert_eq!(read(PML4 + 8 * 8), 0);
    }
}
