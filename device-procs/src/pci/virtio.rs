//! A modern (virtio 1.x) virtio-pci function's configuration space, laid
//! out as QEMU lays it out: BAR 1 holds the MSI-X table and pending-bit
//! array, BAR 4 (64-bit, prefetchable) the common configuration, the ISR
//! byte, the device configuration and the queue notifications; the
//! capabilities point the driver at each (PCI reference §5).

use super::config::{Bar, BarKind, ConfigSpace, LayoutError};
use ipc_proto::pci::{BarSpace, VIRTIO_BLK_PCI};

/// Virtio's PCI vendor.
pub const VIRTIO_VENDOR: u16 = 0x1af4;
/// Modern device ids are this plus the virtio device id.
const MODERN_DEVICE_BASE: u16 = 0x1040;
/// The virtio device id of a block device.
pub const VIRTIO_BLOCK: u16 = 2;

// The function's identity and BARs are `VIRTIO_BLK_PCI`'s (shared with the
// device tree); they are virtio's modern block device.
const _: () = assert!(VIRTIO_BLK_PCI.vendor == VIRTIO_VENDOR);
const _: () = assert!(VIRTIO_BLK_PCI.device == MODERN_DEVICE_BASE + VIRTIO_BLOCK);

/// The MSI-X vectors of a block device: its queue's and its configuration
/// changes' (QEMU's default for one queue).
pub const BLOCK_VECTORS: u16 = VIRTIO_BLK_PCI.msix_vectors;
/// The BAR of the MSI-X table and pending bits.
pub const MSIX_BAR: usize = 1;
/// The BAR of the modern virtio regions.
pub const MODERN_BAR: usize = 4;
/// Where the MSI-X BAR's pending bits start.
const MSIX_PBA_OFFSET: u32 = 0x800;
/// The modern regions, each 4 KiB into the BAR.
pub const COMMON_OFFSET: u32 = 0x0000;
/// The ISR byte.
pub const ISR_OFFSET: u32 = 0x1000;
/// The device-specific configuration.
pub const DEVICE_OFFSET: u32 = 0x2000;
/// The queue notification addresses.
pub const NOTIFY_OFFSET: u32 = 0x3000;
const REGION_BYTES: u32 = 0x1000;
/// Bytes between two queues' notification addresses.
pub const NOTIFY_MULTIPLIER: u32 = 4;

/// PCI capability ids.
const CAP_MSIX: u8 = 0x11;
const CAP_VENDOR: u8 = 0x09;
/// Virtio capability types.
const COMMON_CFG: u8 = 1;
const NOTIFY_CFG: u8 = 2;
const ISR_CFG: u8 = 3;
const DEVICE_CFG: u8 = 4;
const PCI_CFG: u8 = 5;

/// The configuration space of a virtio block device with `vectors` MSI-X
/// vectors (1..=2048).
pub fn block_function(vectors: u16) -> Result<ConfigSpace, LayoutError> {
    let function = VIRTIO_BLK_PCI;
    let mut space = ConfigSpace::new(&function);
    for &(index, space_kind, size) in function.bars {
        let kind = match space_kind {
            BarSpace::Io => BarKind::Io,
            BarSpace::Memory32 => BarKind::Memory32 {
                prefetchable: false,
            },
            BarSpace::Memory64 => BarKind::Memory64 { prefetchable: true },
        };
        space.add_bar(index, Bar { kind, size })?;
    }
    // MSI-X: message control (table size − 1; the enable and function-mask
    // bits are the driver's), table at BAR 1 offset 0, pending bits after.
    let table_size = vectors.clamp(1, 2048) - 1;
    let mut msix = table_size.to_le_bytes().to_vec();
    msix.extend_from_slice(&(MSIX_BAR as u32).to_le_bytes());
    msix.extend_from_slice(&(MSIX_PBA_OFFSET | MSIX_BAR as u32).to_le_bytes());
    let mut writable = vec![0u8; msix.len()];
    writable[1] = 0xc0;
    space.add_capability(CAP_MSIX, &msix, &writable)?;
    for (cfg_type, offset) in [
        (COMMON_CFG, COMMON_OFFSET),
        (ISR_CFG, ISR_OFFSET),
        (DEVICE_CFG, DEVICE_OFFSET),
    ] {
        let body = virtio_capability(cfg_type, MODERN_BAR as u8, offset, REGION_BYTES, &[]);
        space.add_capability(CAP_VENDOR, &body, &vec![0; body.len()])?;
    }
    let notify = virtio_capability(
        NOTIFY_CFG,
        MODERN_BAR as u8,
        NOTIFY_OFFSET,
        REGION_BYTES,
        &NOTIFY_MULTIPLIER.to_le_bytes(),
    );
    space.add_capability(CAP_VENDOR, &notify, &vec![0; notify.len()])?;
    // The configuration-access window the specification requires: its
    // bar, offset, length and data are the driver's to write.
    let window = virtio_capability(PCI_CFG, 0, 0, 0, &[0; 4]);
    let mut writable = vec![0u8; window.len()];
    writable[2] = 0xff;
    writable[6..].fill(0xff);
    space.add_capability(CAP_VENDOR, &window, &writable)?;
    Ok(space)
}

/// A virtio vendor capability's body (after its id and next pointer):
/// its length, type, bar, id, padding, offset, length, then `extra`.
fn virtio_capability(cfg_type: u8, bar: u8, offset: u32, length: u32, extra: &[u8]) -> Vec<u8> {
    let cap_len = (16 + extra.len()) as u8;
    let mut body = vec![cap_len, cfg_type, bar, 0, 0, 0];
    body.extend_from_slice(&offset.to_le_bytes());
    body.extend_from_slice(&length.to_le_bytes());
    body.extend_from_slice(extra);
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_function_points_its_driver_at_each_region_as_qemu_lays_them_out() {
        let space = block_function(2).unwrap();
        assert_eq!(space.read(0, 4), Ok(0x1042_1af4));
        assert_eq!(space.read(8, 4).map(|v| v >> 8), Ok(0x01_00_00));
        // Walk the list: MSI-X, then the virtio capabilities by type.
        let mut found = Vec::new();
        let mut at = space.read(0x34, 1).unwrap();
        while at != 0 {
            let id = space.read(at, 1).unwrap();
            let entry = match id {
                0x11 => (
                    0x11,
                    space.read(at + 2, 2).unwrap(),
                    space.read(at + 4, 4).unwrap(),
                    space.read(at + 8, 4).unwrap(),
                ),
                _ => (
                    space.read(at + 3, 1).unwrap(),
                    space.read(at + 4, 1).unwrap(),
                    space.read(at + 8, 4).unwrap(),
                    space.read(at + 12, 4).unwrap(),
                ),
            };
            found.push(entry);
            at = space.read(at + 1, 1).unwrap();
        }
        assert_eq!(
            found,
            [
                // MSI-X: 2 vectors, table in BAR 1 at 0, pending bits at 0x800.
                (0x11, 1, 1, 0x801),
                // (type, bar, offset, length)
                (1, 4, 0x0000, 0x1000),
                (3, 4, 0x1000, 0x1000),
                (4, 4, 0x2000, 0x1000),
                (2, 4, 0x3000, 0x1000),
                (5, 0, 0, 0),
            ]
        );
        assert_eq!(space.bar(MODERN_BAR).unwrap().size, 0x4000);
        assert_eq!(space.bar(MSIX_BAR).unwrap().size, 0x1000);
    }

    #[test]
    fn the_driver_enables_msix_but_cannot_resize_its_table_or_move_a_region() {
        let mut space = block_function(2).unwrap();
        let msix = space.read(0x34, 1).unwrap();
        space.write(msix + 2, 2, 0xffff).unwrap();
        assert_eq!(space.read(msix + 2, 2), Ok(0xc001));
        let common = space.read(msix + 1, 1).unwrap();
        space.write(common + 8, 4, 0xdead).unwrap();
        assert_eq!(space.read(common + 8, 4), Ok(0));
    }
}
