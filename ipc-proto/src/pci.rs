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

    /// The PCI bus address of a CPU address in one of its memory windows.
    pub fn bus_address(&self, cpu: u64) -> Option<u64> {
        let (base32, size32) = self.mem32;
        let (base64, size64) = self.mem64;
        if cpu >= base32 && cpu - base32 < size32 {
            return Some(cpu - base32 + MEM32_PCI_ADDRESS);
        }
        (cpu >= base64 && cpu - base64 < size64).then_some(cpu)
    }

    /// The CPU address of a bus address in one of its memory windows.
    pub fn cpu_address(&self, bus: u64) -> Option<u64> {
        let (base32, size32) = self.mem32;
        let (base64, size64) = self.mem64;
        if bus >= MEM32_PCI_ADDRESS && bus - MEM32_PCI_ADDRESS < size32 {
            return Some(bus - MEM32_PCI_ADDRESS + base32);
        }
        (bus >= base64 && bus - base64 < size64).then_some(bus)
    }

    /// The DRC of `devfn` on its root bus.
    pub fn drc(&self, devfn: u8) -> Option<DrcIndex> {
        DrcIndex::new(DrcKind::Pci, pci_drc_id(self.index, 0, devfn)?)
    }

    /// The devfn on its root bus that `drc` connects, if it is one of its
    /// DRCs (the inverse of [`Phb::drc`]).
    pub fn devfn_of(&self, drc: DrcIndex) -> Option<u8> {
        let id = drc.id();
        (drc.kind()? == DrcKind::Pci && id >> 16 == self.index && (id >> 8) & 0xff == 0)
            .then_some(id as u8)
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

/// A BAR's address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarSpace {
    /// I/O space.
    Io,
    /// 32-bit memory.
    Memory32,
    /// 64-bit memory (two BAR registers).
    Memory64,
}

/// What a PCI function is, as its configuration space and its device-tree
/// node both show it: one description, so that the two never disagree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FunctionDescription {
    /// Vendor id.
    pub vendor: u16,
    /// Device id.
    pub device: u16,
    /// Revision.
    pub revision: u8,
    /// Class code (base class, subclass, programming interface).
    pub class: u32,
    /// Subsystem vendor id.
    pub subsystem_vendor: u16,
    /// Subsystem id.
    pub subsystem: u16,
    /// INTx pin (1..=4), or 0.
    pub interrupt_pin: u8,
    /// Its BARs: register index, space, size (a power of two).
    pub bars: &'static [(usize, BarSpace, u64)],
    /// MSI-X table entries (0: no MSI-X).
    pub msix_vectors: u16,
    /// Its QOM type name (in its location code).
    pub model: &'static str,
}

/// A modern virtio-blk-pci function as QEMU lays it out: BAR 1 the MSI-X
/// table (4 KiB), BAR 4 (64-bit) the virtio regions (16 KiB), two vectors
/// (its queue's and configuration changes').
pub const VIRTIO_BLK_PCI: FunctionDescription = FunctionDescription {
    vendor: 0x1af4,
    device: 0x1042,
    revision: 1,
    class: 0x01_00_00,
    subsystem_vendor: 0x1af4,
    // Modern devices: at least 0x40.
    subsystem: 0x1100,
    interrupt_pin: 1,
    bars: &[
        (1, BarSpace::Memory32, 0x1000),
        (4, BarSpace::Memory64, 0x4000),
    ],
    msix_vectors: 2,
    model: "virtio-blk-pci",
};

/// A device-tree node: its name and its properties, in order.
pub type Node = (String, Vec<(&'static str, Vec<u8>)>);

fn be32(value: u32) -> Vec<u8> {
    value.to_be_bytes().to_vec()
}

/// QEMU's node name for a class (`dt_name_from_class`), for the classes
/// this machine plugs.
fn name_of_class(class: u32) -> &'static str {
    match class >> 8 {
        0x0100 => "scsi",
        0x0200 => "ethernet",
        _ => "pci",
    }
}

/// The node of `function` at `devfn` on the root bus of PHB `phb`,
/// connected through `drc`, as QEMU's pseries machine writes a PCI device
/// (`spapr_dt_pci_device`): what the device tree has for a function present
/// at boot and what the configure-connector walk hands over for a
/// hot-plugged one. Its status register has no flag set and its cache line,
/// grant and latency registers read 0.
pub fn device_node(function: &FunctionDescription, phb: u32, devfn: u8, drc: DrcIndex) -> Node {
    let (slot, number) = (devfn >> 3, devfn & 7);
    let name = match number {
        0 => format!("{}@{slot:x}", name_of_class(function.class)),
        _ => format!("{}@{slot:x},{number:x}", name_of_class(function.class)),
    };
    let mut properties = vec![
        ("vendor-id", be32(function.vendor.into())),
        ("device-id", be32(function.device.into())),
        ("revision-id", be32(function.revision.into())),
        ("class-code", be32(function.class)),
    ];
    if function.interrupt_pin != 0 {
        properties.push(("interrupts", be32(function.interrupt_pin.into())));
    }
    if function.subsystem != 0 {
        properties.push(("subsystem-id", be32(function.subsystem.into())));
    }
    if function.subsystem_vendor != 0 {
        properties.push((
            "subsystem-vendor-id",
            be32(function.subsystem_vendor.into()),
        ));
    }
    properties.push(("cache-line-size", be32(0)));
    properties.push(("devsel-speed", be32(0)));
    let location = format!(
        "qemu_{}:{phb:04x}:00:{slot:02x}.{number:x}\0",
        function.model
    );
    properties.push(("ibm,loc-code", location.into_bytes()));
    properties.push(("ibm,my-drc-index", be32(drc.0)));
    if function.msix_vectors != 0 {
        properties.push(("ibm,req#msi-x", be32(function.msix_vectors.into())));
    }
    properties.push(("reg", reg(function, devfn)));
    properties.push(("min-grant", be32(0)));
    properties.push(("max-latency", be32(0)));
    (name, properties)
}

/// The open-firmware space codes of a `reg` entry's phys.hi.
const SPACE_IO: u32 = 0x0100_0000;
const SPACE_MEM32: u32 = 0x0200_0000;
const SPACE_MEM64: u32 = 0x0300_0000;
const BAR0: u32 = 0x10;

/// `reg`: the configuration space, then each BAR (relocatable, size only).
fn reg(function: &FunctionDescription, devfn: u8) -> Vec<u8> {
    let config = u32::from(devfn) << 8;
    let mut cells = vec![config, 0, 0, 0, 0];
    for &(index, space, size) in function.bars {
        let code = match space {
            BarSpace::Io => SPACE_IO,
            BarSpace::Memory32 => SPACE_MEM32,
            BarSpace::Memory64 => SPACE_MEM64,
        };
        let register = BAR0 + 4 * index as u32;
        cells.extend([
            config | code | register,
            0,
            0,
            (size >> 32) as u32,
            size as u32,
        ]);
    }
    cells.iter().flat_map(|cell| cell.to_be_bytes()).collect()
}

/// The node of the device a PCI DRC connects: every PCI device this
/// machine plugs is a virtio-blk-pci function on a PHB's root bus, so the
/// DRC alone says what it is (a second kind of device would have the plug
/// say which).
pub fn plugged_device_node(drc: DrcIndex) -> Option<Node> {
    let (phb, devfn) = (0..PHBS)
        .map(Phb::new)
        .find_map(|phb| Some((phb.index, phb.devfn_of(drc)?)))?;
    Some(device_node(&VIRTIO_BLK_PCI, phb, devfn, drc))
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
        for devfn in 0..=u8::MAX {
            assert_eq!(phb.devfn_of(phb.drc(devfn).unwrap()), Some(devfn));
        }
        // Another PHB's, a bus behind a bridge's, another type's: none.
        for other in [0x4001_0018, 0x4000_0118, 0x1000_0018] {
            assert_eq!(phb.devfn_of(DrcIndex(other)), None, "{other:#x}");
        }
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

    #[test]
    fn a_virtio_block_node_has_qemus_fifteen_properties_in_order() {
        let drc = DrcIndex::new(DrcKind::Pci, 0x18).unwrap();
        let (name, properties) = plugged_device_node(drc).unwrap();
        assert_eq!(name, "scsi@3");
        let names: Vec<&str> = properties.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "vendor-id",
                "device-id",
                "revision-id",
                "class-code",
                "interrupts",
                "subsystem-id",
                "subsystem-vendor-id",
                "cache-line-size",
                "devsel-speed",
                "ibm,loc-code",
                "ibm,my-drc-index",
                "ibm,req#msi-x",
                "reg",
                "min-grant",
                "max-latency",
            ]
        );
        let value = |name: &str| {
            properties
                .iter()
                .find(|(n, _)| *n == name)
                .unwrap()
                .1
                .clone()
        };
        assert_eq!(value("vendor-id"), be32(0x1af4));
        assert_eq!(value("device-id"), be32(0x1042));
        assert_eq!(value("class-code"), be32(0x010000));
        assert_eq!(value("ibm,my-drc-index"), be32(0x4000_0018));
        assert_eq!(value("ibm,req#msi-x"), be32(2));
        assert_eq!(value("ibm,loc-code"), b"qemu_virtio-blk-pci:0000:00:03.0\0");
        // Configuration space, BAR 1 (32-bit, 4 KiB), BAR 4 (64-bit, 16 KiB).
        let reg: Vec<u32> = value("reg")
            .chunks(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        #[rustfmt::skip]
        assert_eq!(
            reg,
            [
                0x1800, 0, 0, 0, 0,
                0x0200_1814, 0, 0, 0, 0x1000,
                0x0300_1820, 0, 0, 0, 0x4000,
            ]
        );
    }

    #[test]
    fn only_root_bus_pci_drcs_of_a_phb_have_a_node() {
        let behind_a_bridge = DrcIndex::new(DrcKind::Pci, 0x0118).unwrap();
        assert!(plugged_device_node(behind_a_bridge).is_none());
        let second_phb = DrcIndex::new(DrcKind::Pci, 0x1_0018).unwrap();
        assert!(plugged_device_node(second_phb).is_none());
        let cpu = DrcIndex::new(DrcKind::Cpu, 3).unwrap();
        assert!(plugged_device_node(cpu).is_none());
    }
}
