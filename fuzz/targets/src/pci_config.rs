//! A PCI function's configuration space (`device_procs::pci::config`), as
//! a guest drives it through the configuration RTAS calls: the input is a
//! sequence of 10-byte accesses (kind, register le16, size, value le32,
//! pad), applied to a virtio-blk-like function (a 32-bit BAR, a 64-bit BAR,
//! an MSI-X and a vendor capability).
//!
//! Beyond not panicking: the identity never changes, an access is refused
//! exactly when it is not 1, 2 or 4 bytes aligned inside 4 KiB, a BAR's
//! address is always aligned to its size, and the capability list always
//! walks the same two capabilities.

use device_procs::pci::config::{Bar, BarKind, ConfigSpace, Identity};

const ACCESS_BYTES: usize = 10;

fn function() -> ConfigSpace {
    let mut space = ConfigSpace::new(Identity {
        vendor: 0x1af4,
        device: 0x1042,
        revision: 1,
        class: 0x01_00_00,
        subsystem_vendor: 0x1af4,
        subsystem: 0x1100,
        interrupt_pin: 1,
    });
    let mmio = Bar {
        kind: BarKind::Memory32 {
            prefetchable: false,
        },
        size: 0x1000,
    };
    let wide = Bar {
        kind: BarKind::Memory64 { prefetchable: true },
        size: 0x4000,
    };
    space.add_bar(1, mmio).expect("BAR 1");
    space.add_bar(4, wide).expect("BAR 4");
    space
        .add_capability(
            0x11,
            &[1, 0, 1, 0, 0, 0, 1, 8, 0, 0],
            &[0, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0],
        )
        .expect("MSI-X");
    space
        .add_capability(
            0x09,
            &[14, 1, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0],
            &[0; 14],
        )
        .expect("vendor");
    space
}

/// The target.
pub fn fuzz(data: &[u8]) {
    let mut space = function();
    let identity = [0x00, 0x08, 0x2c].map(|register| space.read(register, 4).expect("header"));
    for access in data.chunks_exact(ACCESS_BYTES) {
        let register = u32::from(u16::from_le_bytes([access[1], access[2]]));
        let size = u32::from(access[3] % 9);
        let value = u32::from_le_bytes([access[4], access[5], access[6], access[7]]);
        let valid =
            matches!(size, 1 | 2 | 4) && register % size.max(1) == 0 && register + size <= 4096;
        let result = match access[0] % 2 {
            0 => space.read(register, size).map(drop),
            _ => space.write(register, size, value).map(drop),
        };
        assert_eq!(
            result.is_ok(),
            valid,
            "register {register:#x} size {size}: {result:?}"
        );
    }
    let now = [0x00, 0x08, 0x2c].map(|register| space.read(register, 4).expect("header"));
    assert_eq!(now, identity, "the identity changed");
    for index in [1, 4] {
        let bar = space.bar(index).expect("a BAR");
        let address = space.bar_address(index).expect("its address");
        assert_eq!(address % bar.size, 0, "BAR {index} at {address:#x}");
    }
    let mut walked = Vec::new();
    let mut at = space.read(0x34, 1).expect("the pointer");
    while at != 0 && walked.len() < 4 {
        walked.push(space.read(at, 1).expect("an id"));
        at = space.read(at + 1, 1).expect("a next pointer");
    }
    assert_eq!(walked, [0x11, 0x09], "the capability list");
}
