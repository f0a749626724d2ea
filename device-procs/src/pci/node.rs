//! A PCI function's device-tree node as QEMU's pseries machine writes it
//! for a hot-plugged function (`spapr_dt_pci_device`; PCI reference §1.4):
//! what the guest's configure-connector walk of a PCI DRC hands over, read
//! from the function's configuration space so that the two never disagree.

use super::config::{BarKind, ConfigSpace};
use super::virtio::{block_function, BLOCK_VECTORS};
use ipc_proto::papr::DrcIndex;

/// Configuration registers the node reads.
const VENDOR_ID: u32 = 0x00;
const DEVICE_ID: u32 = 0x02;
const STATUS: u32 = 0x06;
const REVISION_ID: u32 = 0x08;
const CACHE_LINE_SIZE: u32 = 0x0c;
const BAR0: u32 = 0x10;
const SUBSYSTEM_VENDOR_ID: u32 = 0x2c;
const SUBSYSTEM_ID: u32 = 0x2e;
const INTERRUPT_PIN: u32 = 0x3d;
const MIN_GRANT: u32 = 0x3e;
const MAX_LATENCY: u32 = 0x3f;
const CAPABILITIES: u32 = 0x34;
const CAP_MSIX: u32 = 0x11;

/// The open-firmware space codes of a `reg` entry's phys.hi.
const SPACE_IO: u32 = 0x0100_0000;
const SPACE_MEM32: u32 = 0x0200_0000;
const SPACE_MEM64: u32 = 0x0300_0000;

/// A node: its name and its properties, in QEMU's order.
pub type Node = (String, Vec<(&'static str, Vec<u8>)>);

fn be32(value: u32) -> Vec<u8> {
    value.to_be_bytes().to_vec()
}

fn read(space: &ConfigSpace, register: u32, size: u32) -> u32 {
    space.read(register, size).unwrap_or(0)
}

/// The MSI-X table size of `space`, if it has the capability.
fn msix_vectors(space: &ConfigSpace) -> Option<u32> {
    let mut at = read(space, CAPABILITIES, 1);
    // A well-formed list ends within the 48 dwords it can hold.
    for _ in 0..48 {
        if at == 0 {
            return None;
        }
        if read(space, at, 1) == CAP_MSIX {
            return Some((read(space, at + 2, 2) & 0x7ff) + 1);
        }
        at = read(space, at + 1, 1);
    }
    None
}

/// QEMU's node name for a class: storage/SCSI (a virtio-blk-pci) is
/// `scsi`; the few this machine plugs.
fn name_of_class(class: u32) -> &'static str {
    match class >> 8 {
        0x0100 => "scsi",
        0x0200 => "ethernet",
        _ => "pci",
    }
}

/// The node of the function at `devfn` on the root bus of PHB `phb`,
/// connected through `drc`, whose configuration space is `space`; `model`
/// is its QOM type name (in its location code).
pub fn device_node(space: &ConfigSpace, phb: u32, devfn: u8, drc: DrcIndex, model: &str) -> Node {
    let (slot, function) = (devfn >> 3, devfn & 7);
    let class = read(space, REVISION_ID, 4) >> 8;
    let name = match function {
        0 => format!("{}@{slot:x}", name_of_class(class)),
        _ => format!("{}@{slot:x},{function:x}", name_of_class(class)),
    };
    let mut properties = vec![
        ("vendor-id", be32(read(space, VENDOR_ID, 2))),
        ("device-id", be32(read(space, DEVICE_ID, 2))),
        ("revision-id", be32(read(space, REVISION_ID, 1))),
        ("class-code", be32(class)),
    ];
    let pin = read(space, INTERRUPT_PIN, 1);
    if pin != 0 {
        properties.push(("interrupts", be32(pin)));
    }
    for (property, register) in [
        ("subsystem-id", SUBSYSTEM_ID),
        ("subsystem-vendor-id", SUBSYSTEM_VENDOR_ID),
    ] {
        let value = read(space, register, 2);
        if value != 0 {
            properties.push((property, be32(value)));
        }
    }
    let status = read(space, STATUS, 2);
    properties.push(("cache-line-size", be32(read(space, CACHE_LINE_SIZE, 1))));
    properties.push(("devsel-speed", be32((status >> 9) & 3)));
    for (property, bit) in [
        ("fast-back-to-back", 1 << 7),
        ("66mhz-capable", 1 << 5),
        ("udf-supported", 1 << 6),
    ] {
        if status & bit != 0 {
            properties.push((property, Vec::new()));
        }
    }
    let location = format!("qemu_{model}:{phb:04x}:00:{slot:02x}.{function:x}\0");
    properties.push(("ibm,loc-code", location.into_bytes()));
    properties.push(("ibm,my-drc-index", be32(drc.0)));
    if let Some(vectors) = msix_vectors(space) {
        properties.push(("ibm,req#msi-x", be32(vectors)));
    }
    properties.push(("reg", reg(space, devfn)));
    properties.push(("min-grant", be32(read(space, MIN_GRANT, 1))));
    properties.push(("max-latency", be32(read(space, MAX_LATENCY, 1))));
    (name, properties)
}

/// `reg`: the configuration space, then each BAR (relocatable, size only).
fn reg(space: &ConfigSpace, devfn: u8) -> Vec<u8> {
    let config = u32::from(devfn) << 8;
    let mut cells = vec![config, 0, 0, 0, 0];
    for index in 0..6 {
        let Some(bar) = space.bar(index) else {
            continue;
        };
        let code = match bar.kind {
            BarKind::Io => SPACE_IO,
            BarKind::Memory32 { .. } => SPACE_MEM32,
            BarKind::Memory64 { .. } => SPACE_MEM64,
        };
        let register = BAR0 + 4 * index as u32;
        cells.extend([
            config | code | register,
            0,
            0,
            (bar.size >> 32) as u32,
            bar.size as u32,
        ]);
    }
    cells.iter().flat_map(|cell| cell.to_be_bytes()).collect()
}

/// The node of the device a PCI DRC connects. Every PCI device this
/// machine plugs is a virtio-blk-pci function, so the DRC alone says what
/// it is; a second kind of device would have the plug say which.
pub fn plugged_device_node(drc: DrcIndex) -> Option<Node> {
    let id = drc.id();
    let (phb, devfn) = (id >> 16, (id & 0xff) as u8);
    if id >> 8 & 0xff != 0 {
        // Behind a bridge: none here.
        return None;
    }
    let space = block_function(BLOCK_VECTORS).ok()?;
    Some(device_node(&space, phb, devfn, drc, "virtio-blk-pci"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc_proto::papr::DrcKind;

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
        assert_eq!(value("ibm,req#msi-x"), be32(u32::from(BLOCK_VECTORS)));
        assert_eq!(value("ibm,loc-code"), b"qemu_virtio-blk-pci:0000:00:03.0\0");
        // Configuration space, BAR 1 (32-bit, 4 KiB), BAR 4 (64-bit, 16 KiB).
        let reg: Vec<u32> = value("reg")
            .chunks(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(
            reg,
            [
                0x1800,
                0,
                0,
                0,
                0, //
                0x0200_1814,
                0,
                0,
                0,
                0x1000, //
                0x0300_1820,
                0,
                0,
                0,
                0x4000,
            ]
        );
    }

    #[test]
    fn functions_behind_a_bridge_have_no_node_here() {
        let behind = DrcIndex::new(DrcKind::Pci, 0x0118).unwrap();
        assert!(plugged_device_node(behind).is_none());
    }
}
