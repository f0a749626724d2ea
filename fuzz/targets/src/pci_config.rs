//! A PCI function's configuration space (`device_procs::pci::config`), as
//! a guest drives it through the configuration RTAS calls: the input is a
//! sequence of 10-byte accesses (kind, register le16, size, value le32,
//! pad), applied to the virtio block function as the platform lays it out
//! (the MSI-X BAR, the 64-bit modern BAR, an MSI-X capability and five
//! virtio ones).
//!
//! Beyond not panicking: the identity never changes, an access is refused
//! exactly when it is not 1, 2 or 4 bytes aligned inside 4 KiB, a BAR's
//! address is always aligned to its size, and the capability list always
//! walks the same six capabilities.

use device_procs::pci::config::ConfigSpace;

const ACCESS_BYTES: usize = 10;

fn function() -> ConfigSpace {
    device_procs::pci::virtio::block_function(2).expect("the block function")
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
    while at != 0 && walked.len() < 8 {
        walked.push(space.read(at, 1).expect("an id"));
        at = space.read(at + 1, 1).expect("a next pointer");
    }
    assert_eq!(walked, [0x11, 9, 9, 9, 9, 9], "the capability list");
}
