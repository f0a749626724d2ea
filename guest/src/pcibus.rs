//! The PCI host bridge as Linux's pseries code reaches it: configuration
//! space through `ibm,read-pci-config` / `ibm,write-pci-config` (by BUID),
//! MSI-X vectors through `ibm,change-msi` and
//! `ibm,query-interrupt-source-number`, and BARs placed in the bridge's
//! 32-bit window (its `ranges`), reached by MMIO. The calls of a probe or
//! a removal are counted for `pci calls`.

use crate::fdt::be32;
use crate::platform::Platform;
use crate::rtas;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// The bridge's BUID and 32-bit window (CPU address, bus address, size).
static BUID: AtomicU64 = AtomicU64::new(0);
static WINDOW_CPU: AtomicU64 = AtomicU64::new(0);
static WINDOW_BUS: AtomicU64 = AtomicU64::new(0);

/// Configuration calls since the last [`begin_counting`]: reads, writes.
static READS: AtomicU32 = AtomicU32::new(0);
static WRITES: AtomicU32 = AtomicU32::new(0);

/// The space code of a `ranges` entry for 32-bit memory.
const SPACE_MEM32: u32 = 0x0200_0000;
/// Each slot's BARs get 1 MiB of the window: slot `s` at `s` MiB.
const SLOT_SPAN: u64 = 1 << 20;

pub const PHB_NODE: &str = "/pci@800000020000000";

/// Reads the bridge's BUID (`reg`) and 32-bit window (`ranges`).
pub fn init(platform: &Platform) {
    let fdt = &platform.fdt;
    let Some(bridge) = fdt.path(PHB_NODE) else {
        return;
    };
    if let Some(reg) = fdt.prop(bridge, "reg") {
        let buid =
            (u64::from(be32(reg, 0).unwrap_or(0)) << 32) | u64::from(be32(reg, 4).unwrap_or(0));
        BUID.store(buid, Ordering::Relaxed);
    }
    if let Some(ranges) = fdt.prop(bridge, "ranges") {
        for entry in ranges.chunks_exact(28) {
            let cell = |i: usize| u64::from(be32(entry, i * 4).unwrap_or(0));
            if cell(0) as u32 & 0x0300_0000 == SPACE_MEM32 {
                WINDOW_BUS.store(cell(1) << 32 | cell(2), Ordering::Relaxed);
                WINDOW_CPU.store(cell(3) << 32 | cell(4), Ordering::Relaxed);
            }
        }
    }
}

/// The bridge's BUID, as a call's two cells.
pub fn buid_cells() -> (u32, u32) {
    let buid = BUID.load(Ordering::Relaxed);
    ((buid >> 32) as u32, buid as u32)
}

/// A function's configuration address cell for `register`.
pub fn config_address(devfn: u8, register: u32) -> u32 {
    ((register & 0xf00) << 16) | (u32::from(devfn) << 8) | (register & 0xff)
}

pub fn begin_counting() {
    READS.store(0, Ordering::Relaxed);
    WRITES.store(0, Ordering::Relaxed);
}

/// Configuration reads and writes since [`begin_counting`].
pub fn counted() -> (u32, u32) {
    (
        READS.load(Ordering::Relaxed),
        WRITES.load(Ordering::Relaxed),
    )
}

/// `ibm,read-pci-config`: the value, or `None` for a non-zero status
/// (which Linux takes as "no device").
pub fn read(devfn: u8, register: u32, size: u32) -> Option<u32> {
    READS.fetch_add(1, Ordering::Relaxed);
    let (high, low) = buid_cells();
    let args = [config_address(devfn, register), high, low, size];
    match rtas::call("ibm,read-pci-config", &args, 2) {
        Ok(ret) if ret.status == 0 => Some(ret.out[0]),
        _ => None,
    }
}

/// `ibm,write-pci-config`: whether it succeeded.
pub fn write(devfn: u8, register: u32, size: u32, value: u32) -> bool {
    WRITES.fetch_add(1, Ordering::Relaxed);
    let (high, low) = buid_cells();
    let args = [config_address(devfn, register), high, low, size, value];
    matches!(rtas::call("ibm,write-pci-config", &args, 1), Ok(ret) if ret.status == 0)
}

/// Arguments of a per-function call: config address, BUID.
pub fn function_args(devfn: u8) -> [u32; 3] {
    let (high, low) = buid_cells();
    [config_address(devfn, 0), high, low]
}

/// The bus address slot `slot`'s BARs start at.
pub fn slot_bus_address(slot: u8) -> u64 {
    WINDOW_BUS.load(Ordering::Relaxed) + u64::from(slot) * SLOT_SPAN
}

/// The CPU address where the 32-bit window starts.
pub fn window_cpu() -> u64 {
    WINDOW_CPU.load(Ordering::Relaxed)
}

/// The CPU address of a bus address in the 32-bit window.
pub fn cpu_address(bus: u64) -> u64 {
    bus - WINDOW_BUS.load(Ordering::Relaxed) + WINDOW_CPU.load(Ordering::Relaxed)
}

/// MMIO reads and writes of a BAR (identity-mapped, uncached).
pub fn mmio_read32(address: u64) -> u32 {
    // SAFETY: `address` is in a BAR the guest placed in the bridge's window,
    // which the boot page tables map; the access exits to the VMM.
    unsafe { core::ptr::read_volatile(address as *const u32) }
}

pub fn mmio_read8(address: u64) -> u8 {
    // SAFETY: as for `mmio_read32`.
    unsafe { core::ptr::read_volatile(address as *const u8) }
}

pub fn mmio_read16(address: u64) -> u16 {
    // SAFETY: as for `mmio_read32`.
    unsafe { core::ptr::read_volatile(address as *const u16) }
}

pub fn mmio_write32(address: u64, value: u32) {
    // SAFETY: as for `mmio_read32`.
    unsafe { core::ptr::write_volatile(address as *mut u32, value) }
}

pub fn mmio_write16(address: u64, value: u16) {
    // SAFETY: as for `mmio_read32`.
    unsafe { core::ptr::write_volatile(address as *mut u16, value) }
}

pub fn mmio_write8(address: u64, value: u8) {
    // SAFETY: as for `mmio_read32`.
    unsafe { core::ptr::write_volatile(address as *mut u8, value) }
}
