//! Where a PCI host bridge (PHB) is and which connectors it has, as QEMU's
//! pseries machine places them (`spapr_phb_placement`): the core describes
//! it in the device tree and defines its DRCs, and the processes that will
//! serve its devices read the same numbers.

use crate::link::core_hotplug::DrcRange;
use crate::papr::{pci_drc_id, DrcIndex, DrcKind};

/// Device/function numbers on one bus: 32 slots of 8 functions, one DRC
/// each.
pub const DEVFNS_PER_BUS: u32 = 256;
/// The PHBs a machine has. QEMU's pseries allows 31; one is enough for the
/// devices Papervisor serves, and each costs its DRCs in the hotplug
/// controller's table.
pub const PHBS: u32 = 1;

const BUID_BASE: u64 = 0x0800_0000_2000_0000;
const WINDOWS_BASE: u64 = 1 << 45;
const PIO_SIZE: u64 = 64 << 10;
const MEM32_SIZE: u64 = 2 << 30;
const MEM64_SIZE: u64 = 1 << 40;
/// The PCI bus address of the 32-bit window.
pub const MEM32_PCI_ADDRESS: u64 = 0x8000_0000;

/// A function's configuration register as the PCI configuration RTAS calls
/// name it in one cell: bits 27:24 the register's bits 11:8 (extended
/// space), 23:16 the bus, 15:8 the devfn, 7:0 the register's bits 7:0
/// (Linux's `rtas_config_addr`, QEMU's `rtas_pci_cfgaddr`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigAddress {
    /// The bus.
    pub bus: u8,
    /// Device (bits 7:3) and function (bits 2:0).
    pub devfn: u8,
    /// The register, 0..4096.
    pub register: u16,
}

impl ConfigAddress {
    /// The address a cell names (bits 31:28 are ignored, as QEMU does).
    pub const fn decode(cell: u32) -> ConfigAddress {
        ConfigAddress {
            bus: (cell >> 16) as u8,
            devfn: (cell >> 8) as u8,
            register: (((cell >> 16) & 0xf00) | (cell & 0xff)) as u16,
        }
    }

    /// The cell that names it.
    pub const fn encode(self) -> u32 {
        let register = self.register as u32;
        ((register & 0xf00) << 16)
            | ((self.bus as u32) << 16)
            | ((self.devfn as u32) << 8)
            | (register & 0xff)
    }
}

/// The PHB whose bus unit id is `buid`, if the machine has it.
pub fn phb_of(buid: u64) -> Option<Phb> {
    (0..PHBS).map(Phb::new).find(|phb| phb.buid == buid)
}

/// A PHB's identity and windows (CPU addresses, sizes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Phb {
    /// Its index (0 for the first).
    pub index: u32,
    /// Its bus unit id: the `reg` of its node, and what the PCI
    /// configuration RTAS calls name it by.
    pub buid: u64,
    /// The I/O window: CPU address, size (bus address 0).
    pub pio: (u64, u64),
    /// The 32-bit memory window: CPU address, size (bus address
    /// [`MEM32_PCI_ADDRESS`]).
    pub mem32: (u64, u64),
    /// The 64-bit memory window: CPU address = bus address, size.
    pub mem64: (u64, u64),
}

impl Phb {
    /// PHB `index`, placed as QEMU places it.
    pub const fn new(index: u32) -> Phb {
        let i = index as u64;
        Phb {
            index,
            buid: BUID_BASE + i,
            pio: (WINDOWS_BASE + i * PIO_SIZE, PIO_SIZE),
            mem32: (WINDOWS_BASE + (i + 1) * MEM32_SIZE, MEM32_SIZE),
            mem64: (WINDOWS_BASE + (i + 1) * MEM64_SIZE, MEM64_SIZE),
        }
    }

    /// Its device-tree node's name.
    pub fn node_name(&self) -> String {
        format!("pci@{:x}", self.buid)
    }

    /// The DRC of `devfn` on its root bus.
    pub fn drc(&self, devfn: u8) -> Option<DrcIndex> {
        DrcIndex::new(DrcKind::Pci, pci_drc_id(self.index, 0, devfn)?)
    }

    /// The DRCs of its root bus, one per devfn, in order.
    pub fn drcs(&self) -> Vec<DrcIndex> {
        (0..=u8::MAX).filter_map(|devfn| self.drc(devfn)).collect()
    }

    /// The same DRCs as the hotplug controller is told them.
    pub fn drc_range(&self) -> Option<DrcRange> {
        Some(DrcRange {
            kind: DrcKind::Pci,
            first_id: pci_drc_id(self.index, 0, 0)?,
            count: DEVFNS_PER_BUS,
            step: 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_address_carries_bus_devfn_and_an_extended_register() {
        // Bus 0, slot 1 function 0, register 0x10c (extended bits 27:24).
        let address = ConfigAddress::decode(0x0100_080c);
        assert_eq!(
            address,
            ConfigAddress {
                bus: 0,
                devfn: 8,
                register: 0x10c
            }
        );
        assert_eq!(address.encode(), 0x0100_080c);
        // The top nibble is ignored.
        assert_eq!(ConfigAddress::decode(0xf003_1104).bus, 3);
        assert_eq!(ConfigAddress::decode(0xf003_1104).register, 4);
        assert_eq!(phb_of(0x0800_0000_2000_0000), Some(Phb::new(0)));
        assert_eq!(phb_of(0), None);
    }

    #[test]
    fn the_first_phb_is_where_qemu_puts_it() {
        let phb = Phb::new(0);
        assert_eq!(phb.node_name(), "pci@800000020000000");
        assert_eq!(phb.pio, (1 << 45, 64 << 10));
        assert_eq!(phb.mem32, ((1 << 45) + (2 << 30), 2 << 30));
        assert_eq!(phb.mem64, ((1 << 45) + (1 << 40), 1 << 40));
        let drcs = phb.drcs();
        assert_eq!(drcs.len(), DEVFNS_PER_BUS as usize);
        assert_eq!(
            (drcs[0].0, drcs[8].0, drcs[255].0),
            (0x4000_0000, 0x4000_0008, 0x4000_00ff)
        );
        let range = phb.drc_range().unwrap();
        assert_eq!(
            (range.kind, range.first_id, range.count, range.step),
            (DrcKind::Pci, 0, 256, 1)
        );
        // The second's windows follow the first's.
        let next = Phb::new(1);
        assert_eq!(next.buid, phb.buid + 1);
        assert_eq!(next.mem64.0, phb.mem64.0 + phb.mem64.1);
        assert_eq!(next.drc(0x11).unwrap().0, 0x4001_0011);
    }
}
