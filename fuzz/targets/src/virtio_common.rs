//! The virtio-pci common configuration (`device_procs::pci::common`), as
//! a guest's driver (or a hostile one) drives it: the input is a sequence
//! of 8-byte accesses (kind, offset, size, pad, value le32) on a block
//! device offering VERSION_1 and FLUSH with two queues of at most 256.
//!
//! Beyond not panicking: accepted features are always offered ones, a
//! queue that starts is enabled with a size the device serves, a reset
//! leaves status 0, and FEATURES_OK is never set over unoffered features.

use device_procs::pci::common::{CommonConfig, Effect, FEATURES_OK};

const OFFERED: u64 = (1 << 32) | (1 << 9);
const MAX_QUEUE: u16 = 256;

/// The target.
pub fn fuzz(data: &[u8]) {
    let mut config = CommonConfig::new(OFFERED, 2, MAX_QUEUE);
    for access in data.chunks_exact(8) {
        let offset = u32::from(access[1]);
        let size = u32::from(access[2] % 5);
        let value = u32::from_le_bytes([access[4], access[5], access[6], access[7]]);
        if access[0] % 2 == 0 {
            let _ = config.read(offset, size);
            continue;
        }
        let Ok(effect) = config.write(offset, size, value) else {
            continue;
        };
        match effect {
            Effect::None => {}
            Effect::Reset => assert_eq!(config.status(), 0),
            Effect::FeaturesAccepted(features) => {
                assert_eq!(features & !OFFERED, 0, "accepted {features:#x}")
            }
            Effect::DriverOk(queues) => {
                for (index, queue) in queues {
                    assert!(index < 2 && queue.enabled, "{queue:?}");
                    assert!(queue.size.is_power_of_two() && queue.size <= MAX_QUEUE);
                }
            }
        }
        if config.status() & FEATURES_OK != 0 {
            let low = u64::from(config.read(0x0c, 4).unwrap_or(0));
            let selected = config.read(0x08, 4).unwrap_or(0);
            if selected == 0 {
                assert_eq!(low & !OFFERED, 0, "FEATURES_OK over {low:#x}");
            }
        }
    }
}
