//! The virtio-pci common configuration structure of one device (virtio
//! 1.x, "Common configuration structure layout"), as the guest's driver
//! reads and writes it through its BAR: feature negotiation, device
//! status, and each queue's size, vector, addresses and enable. Every
//! access is checked against the register it names; what the guest may
//! not change is not changed; and the moments the device acts on — a
//! reset, FEATURES_OK, DRIVER_OK with its queues — are said once, as data,
//! for whoever serves the queues (a vhost-user backend).

use thiserror::Error;

/// Device status bits.
pub const ACKNOWLEDGE: u8 = 1;
/// The driver knows how to drive the device.
pub const DRIVER: u8 = 2;
/// The driver is set up and ready to drive the device.
pub const DRIVER_OK: u8 = 4;
/// Feature negotiation is complete.
pub const FEATURES_OK: u8 = 8;
/// The device has failed and needs a reset.
pub const DEVICE_NEEDS_RESET: u8 = 64;
/// The driver gave up on the device.
pub const FAILED: u8 = 128;

/// MSI-X vector meaning "no vector".
pub const NO_VECTOR: u16 = 0xffff;
/// The structure's size (through `queue_device`'s high half).
pub const COMMON_BYTES: u32 = 0x38;

/// One queue as the driver sets it up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueConfig {
    /// Entries (a power of two, at most the device's maximum).
    pub size: u16,
    /// MSI-X vector of its used-buffer notifications.
    pub vector: u16,
    /// The driver enabled it.
    pub enabled: bool,
    /// Guest-physical addresses of the descriptor table, the driver
    /// (available) ring and the device (used) ring.
    pub desc: u64,
    /// See `desc`.
    pub driver: u64,
    /// See `desc`.
    pub device: u64,
}

/// What a write means to whoever serves the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Nothing to act on.
    None,
    /// The driver reset the device (status 0): stop the queues.
    Reset,
    /// The driver accepted `features` and set FEATURES_OK (the device kept
    /// it: they are a subset of what it offers).
    FeaturesAccepted(u64),
    /// DRIVER_OK: the queues that are enabled, each with its index, start.
    DriverOk(Vec<(u16, QueueConfig)>),
}

/// Why an access is refused: the driver's error, not the device's.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum AccessError {
    /// No register of that width starts there.
    #[error("no {size}-byte register at {offset:#x} of the common configuration")]
    NoRegister {
        /// Where.
        offset: u32,
        /// How wide.
        size: u32,
    },
}

/// The registers, by offset and width (the 64-bit addresses are accessed
/// as 32-bit halves, as drivers do).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Register {
    DeviceFeatureSelect,
    DeviceFeature,
    DriverFeatureSelect,
    DriverFeature,
    ConfigVector,
    NumQueues,
    DeviceStatus,
    ConfigGeneration,
    QueueSelect,
    QueueSize,
    QueueVector,
    QueueEnable,
    QueueNotifyOff,
    /// A 32-bit half of a queue address: which, and whether the high one.
    QueueAddress(Ring, bool),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ring {
    Desc,
    Driver,
    Device,
}

fn register(offset: u32, size: u32) -> Option<Register> {
    use Register::*;
    Some(match (offset, size) {
        (0x00, 4) => DeviceFeatureSelect,
        (0x04, 4) => DeviceFeature,
        (0x08, 4) => DriverFeatureSelect,
        (0x0c, 4) => DriverFeature,
        (0x10, 2) => ConfigVector,
        (0x12, 2) => NumQueues,
        (0x14, 1) => DeviceStatus,
        (0x15, 1) => ConfigGeneration,
        (0x16, 2) => QueueSelect,
        (0x18, 2) => QueueSize,
        (0x1a, 2) => QueueVector,
        (0x1c, 2) => QueueEnable,
        (0x1e, 2) => QueueNotifyOff,
        (0x20, 4) => QueueAddress(Ring::Desc, false),
        (0x24, 4) => QueueAddress(Ring::Desc, true),
        (0x28, 4) => QueueAddress(Ring::Driver, false),
        (0x2c, 4) => QueueAddress(Ring::Driver, true),
        (0x30, 4) => QueueAddress(Ring::Device, false),
        (0x34, 4) => QueueAddress(Ring::Device, true),
        _ => return None,
    })
}

/// What a driver set in a device's common configuration: what a successor
/// of the process that serves it restores.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommonState {
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    config_vector: u16,
    status: u8,
    generation: u8,
    queue_select: u16,
    queues: Vec<QueueConfig>,
}

/// One device's common configuration.
#[derive(Clone)]
pub struct CommonConfig {
    /// What the device offers.
    offered: u64,
    /// The largest queue it serves.
    max_queue_size: u16,
    /// What the driver set.
    driver: CommonState,
}

impl CommonConfig {
    /// A device offering `features`, with `queues` queues of at most
    /// `max_queue_size` entries (a power of two), reset.
    pub fn new(features: u64, queues: u16, max_queue_size: u16) -> CommonConfig {
        let mut config = CommonConfig {
            offered: features,
            max_queue_size,
            driver: CommonState {
                device_feature_select: 0,
                driver_feature_select: 0,
                driver_features: 0,
                config_vector: NO_VECTOR,
                status: 0,
                generation: 0,
                queue_select: 0,
                queues: vec![QueueConfig::default(); usize::from(queues)],
            },
        };
        config.reset();
        config
    }

    /// What the driver set.
    pub fn state(&self) -> CommonState {
        self.driver.clone()
    }

    /// Takes back what a driver set, checked as its writes were: features
    /// the device offers, the queues it has, sizes it serves.
    pub fn restore(&mut self, state: CommonState) -> Result<(), String> {
        if state.driver_features & !self.offered != 0 {
            return Err(format!(
                "features {:#x} beyond the offered {:#x}",
                state.driver_features, self.offered
            ));
        }
        if state.queues.len() != self.driver.queues.len() {
            return Err(format!(
                "{} queues, not {}",
                state.queues.len(),
                self.driver.queues.len()
            ));
        }
        if let Some(queue) = state
            .queues
            .iter()
            .find(|q| !q.size.is_power_of_two() || q.size > self.max_queue_size)
        {
            return Err(format!("a queue of {} entries", queue.size));
        }
        self.driver = state;
        Ok(())
    }

    fn reset(&mut self) {
        self.driver.driver_features = 0;
        self.driver.config_vector = NO_VECTOR;
        self.driver.status = 0;
        self.driver.queue_select = 0;
        let size = self.max_queue_size;
        for queue in &mut self.driver.queues {
            *queue = QueueConfig {
                size,
                vector: NO_VECTOR,
                ..QueueConfig::default()
            };
        }
    }

    /// The device status.
    pub fn status(&self) -> u8 {
        self.driver.status
    }

    /// The features the driver took.
    pub fn driver_features(&self) -> u64 {
        self.driver.driver_features
    }

    /// The device failed the driver (it used the device in a way it may
    /// not): DEVICE_NEEDS_RESET until the driver resets it.
    pub fn fail(&mut self) {
        self.driver.status |= DEVICE_NEEDS_RESET;
    }

    /// The queue the driver selected, if it exists.
    fn selected(&self) -> Option<&QueueConfig> {
        self.driver
            .queues
            .get(usize::from(self.driver.queue_select))
    }

    /// Queue setup is the driver's only between FEATURES_OK and DRIVER_OK.
    fn queues_writable(&self) -> bool {
        self.driver.status & FEATURES_OK != 0 && self.driver.status & DRIVER_OK == 0
    }

    /// Reads `size` bytes at `offset`.
    pub fn read(&self, offset: u32, size: u32) -> Result<u32, AccessError> {
        use Register::*;
        let register = register(offset, size).ok_or(AccessError::NoRegister { offset, size })?;
        let half = |value: u64, high: bool| (if high { value >> 32 } else { value }) as u32;
        let queue = self.selected();
        Ok(match register {
            DeviceFeatureSelect => self.driver.device_feature_select,
            DeviceFeature => match self.driver.device_feature_select {
                0 => self.offered as u32,
                1 => (self.offered >> 32) as u32,
                _ => 0,
            },
            DriverFeatureSelect => self.driver.driver_feature_select,
            DriverFeature => match self.driver.driver_feature_select {
                0 => self.driver.driver_features as u32,
                1 => (self.driver.driver_features >> 32) as u32,
                _ => 0,
            },
            ConfigVector => u32::from(self.driver.config_vector),
            NumQueues => self.driver.queues.len() as u32,
            DeviceStatus => u32::from(self.driver.status),
            ConfigGeneration => u32::from(self.driver.generation),
            QueueSelect => u32::from(self.driver.queue_select),
            // A queue that does not exist reads as size 0: "not available".
            QueueSize => queue.map_or(0, |q| u32::from(q.size)),
            QueueVector => u32::from(queue.map_or(NO_VECTOR, |q| q.vector)),
            QueueEnable => u32::from(queue.is_some_and(|q| q.enabled)),
            // Each queue is notified at its own index.
            QueueNotifyOff => u32::from(self.driver.queue_select),
            QueueAddress(ring, high) => queue.map_or(0, |q| {
                half(
                    match ring {
                        Ring::Desc => q.desc,
                        Ring::Driver => q.driver,
                        Ring::Device => q.device,
                    },
                    high,
                )
            }),
        })
    }

    /// Writes the low `size` bytes of `value` at `offset`; what the device
    /// must act on. A write the driver may not make now (a read-only
    /// register, features after FEATURES_OK, a queue outside its setup, a
    /// queue size the device cannot serve) changes nothing.
    pub fn write(&mut self, offset: u32, size: u32, value: u32) -> Result<Effect, AccessError> {
        use Register::*;
        let register = register(offset, size).ok_or(AccessError::NoRegister { offset, size })?;
        let negotiating = self.driver.status & FEATURES_OK == 0;
        match register {
            DeviceFeatureSelect => self.driver.device_feature_select = value,
            DriverFeatureSelect => self.driver.driver_feature_select = value,
            DriverFeature if negotiating => match self.driver.driver_feature_select {
                0 => {
                    self.driver.driver_features =
                        (self.driver.driver_features & !0xffff_ffff) | u64::from(value)
                }
                1 => {
                    self.driver.driver_features =
                        (self.driver.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
                }
                _ => {}
            },
            ConfigVector => self.driver.config_vector = value as u16,
            DeviceStatus => return Ok(self.set_status(value as u8)),
            QueueSelect => self.driver.queue_select = value as u16,
            QueueSize if self.queues_writable() => {
                let size = value as u16;
                let max = self.max_queue_size;
                if let Some(queue) = self.selected_mut() {
                    if size.is_power_of_two() && size <= max {
                        queue.size = size;
                    }
                }
            }
            QueueVector => {
                if let Some(queue) = self.selected_mut() {
                    queue.vector = value as u16;
                }
            }
            QueueEnable if self.queues_writable() && value == 1 => {
                if let Some(queue) = self.selected_mut() {
                    queue.enabled = true;
                }
            }
            QueueAddress(ring, high) if self.queues_writable() => {
                if let Some(queue) = self.selected_mut() {
                    let field = match ring {
                        Ring::Desc => &mut queue.desc,
                        Ring::Driver => &mut queue.driver,
                        Ring::Device => &mut queue.device,
                    };
                    *field = match high {
                        false => (*field & !0xffff_ffff) | u64::from(value),
                        true => (*field & 0xffff_ffff) | (u64::from(value) << 32),
                    };
                }
            }
            // Read-only, or not the driver's to change now.
            _ => {}
        }
        Ok(Effect::None)
    }

    fn selected_mut(&mut self) -> Option<&mut QueueConfig> {
        self.driver
            .queues
            .get_mut(usize::from(self.driver.queue_select))
    }

    /// The driver writes the status: 0 resets; bits are only ever added
    /// (a driver cannot take one back but by a reset); FEATURES_OK holds
    /// only for features the device offers; DRIVER_OK starts the queues.
    fn set_status(&mut self, value: u8) -> Effect {
        if value == 0 {
            let was = self.driver.status;
            self.reset();
            return match was {
                0 => Effect::None,
                _ => Effect::Reset,
            };
        }
        let added = value & !self.driver.status;
        let mut status = self.driver.status | value;
        let mut effect = Effect::None;
        if added & FEATURES_OK != 0 {
            if self.driver.driver_features & !self.offered != 0 {
                // Features the device did not offer: FEATURES_OK does not stick.
                status &= !FEATURES_OK;
            } else {
                effect = Effect::FeaturesAccepted(self.driver.driver_features);
            }
        }
        if added & DRIVER_OK != 0 {
            if status & FEATURES_OK == 0 {
                // DRIVER_OK before negotiation: the device needs a reset.
                status |= DEVICE_NEEDS_RESET;
                status &= !DRIVER_OK;
            } else {
                let enabled = self
                    .driver
                    .queues
                    .iter()
                    .enumerate()
                    .filter(|(_, q)| q.enabled)
                    .map(|(i, q)| (i as u16, *q))
                    .collect();
                effect = Effect::DriverOk(enabled);
            }
        }
        self.driver.status = status;
        effect
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERSION_1: u64 = 1 << 32;
    const BLK_FLUSH: u64 = 1 << 9;

    fn device() -> CommonConfig {
        CommonConfig::new(VERSION_1 | BLK_FLUSH, 1, 256)
    }

    /// The driver's negotiation of `features` (low, high halves).
    fn negotiate(config: &mut CommonConfig, features: u64) -> Effect {
        for status in [ACKNOWLEDGE, ACKNOWLEDGE | DRIVER] {
            config.write(0x14, 1, u32::from(status)).unwrap();
        }
        for (select, half) in [(0, features as u32), (1, (features >> 32) as u32)] {
            config.write(0x08, 4, select).unwrap();
            config.write(0x0c, 4, half).unwrap();
        }
        config
            .write(0x14, 1, u32::from(ACKNOWLEDGE | DRIVER | FEATURES_OK))
            .unwrap()
    }

    #[test]
    fn a_restored_state_is_checked_as_the_drivers_writes_were() {
        let mut config = device();
        negotiate(&mut config, VERSION_1);
        let state = config.state();
        let mut successor = device();
        successor.restore(state.clone()).unwrap();
        assert_eq!(successor.status(), ACKNOWLEDGE | DRIVER | FEATURES_OK);
        assert_eq!(successor.read(0x0c, 4), config.read(0x0c, 4));
        // Features the device does not offer, another number of queues, a
        // queue size it does not serve: refused, the device untouched.
        let lies = [
            CommonState {
                driver_features: 1 << 40,
                ..state.clone()
            },
            CommonState {
                queues: Vec::new(),
                ..state.clone()
            },
            CommonState {
                queues: vec![QueueConfig {
                    size: 3,
                    ..QueueConfig::default()
                }],
                ..state
            },
        ];
        let mut fresh = device();
        for lie in lies {
            assert!(fresh.restore(lie).is_err());
            assert_eq!(fresh.status(), 0);
        }
    }

    #[test]
    fn the_driver_reads_the_offered_features_by_halves() {
        let mut config = device();
        assert_eq!(config.read(0x04, 4), Ok(BLK_FLUSH as u32));
        config.write(0x00, 4, 1).unwrap();
        assert_eq!(config.read(0x04, 4), Ok(1));
        config.write(0x00, 4, 7).unwrap();
        assert_eq!(config.read(0x04, 4), Ok(0));
        assert_eq!(config.read(0x12, 2), Ok(1));
        // The offer is read-only.
        config.write(0x00, 4, 0).unwrap();
        config.write(0x04, 4, u32::MAX).unwrap();
        assert_eq!(config.read(0x04, 4), Ok(BLK_FLUSH as u32));
    }

    #[test]
    fn features_ok_holds_only_for_offered_features_and_then_features_are_fixed() {
        let mut config = device();
        // An unoffered feature: FEATURES_OK does not stick.
        assert_eq!(negotiate(&mut config, VERSION_1 | 1 << 12), Effect::None);
        assert_eq!(config.status() & FEATURES_OK, 0);
        config.write(0x14, 1, 0).unwrap();
        assert_eq!(
            negotiate(&mut config, VERSION_1 | BLK_FLUSH),
            Effect::FeaturesAccepted(VERSION_1 | BLK_FLUSH)
        );
        // Fixed from then on.
        config.write(0x08, 4, 0).unwrap();
        config.write(0x0c, 4, 0).unwrap();
        assert_eq!(config.read(0x0c, 4), Ok(BLK_FLUSH as u32));
    }

    #[test]
    fn queues_are_set_up_between_features_ok_and_driver_ok_then_start() {
        let mut config = device();
        // Before FEATURES_OK the queue is not the driver's to set.
        config.write(0x20, 4, 0x1000).unwrap();
        assert_eq!(config.read(0x20, 4), Ok(0));
        negotiate(&mut config, VERSION_1);
        config.write(0x16, 2, 0).unwrap();
        assert_eq!(config.read(0x18, 2), Ok(256));
        // A size it cannot serve is kept at what it was.
        for bad in [300, 512, 0] {
            config.write(0x18, 2, bad).unwrap();
            assert_eq!(config.read(0x18, 2), Ok(256));
        }
        config.write(0x18, 2, 128).unwrap();
        for (offset, value) in [(0x20, 0x1000), (0x24, 0x2), (0x28, 0x3000), (0x30, 0x4000)] {
            config.write(offset, 4, value).unwrap();
        }
        config.write(0x1a, 2, 1).unwrap();
        config.write(0x1c, 2, 1).unwrap();
        // A queue that does not exist reads as absent and takes nothing.
        config.write(0x16, 2, 5).unwrap();
        assert_eq!(config.read(0x18, 2), Ok(0));
        config.write(0x1c, 2, 1).unwrap();
        let ready = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK;
        let started = config.write(0x14, 1, u32::from(ready)).unwrap();
        assert_eq!(
            started,
            Effect::DriverOk(vec![(
                0,
                QueueConfig {
                    size: 128,
                    vector: 1,
                    enabled: true,
                    desc: 0x2_0000_1000,
                    driver: 0x3000,
                    device: 0x4000,
                }
            )])
        );
        // Running queues are no longer the driver's to move.
        config.write(0x16, 2, 0).unwrap();
        config.write(0x20, 4, 0x9000).unwrap();
        assert_eq!(config.read(0x20, 4), Ok(0x1000));
        // A reset stops them and forgets the setup.
        assert_eq!(config.write(0x14, 1, 0), Ok(Effect::Reset));
        assert_eq!((config.status(), config.read(0x1c, 2)), (0, Ok(0)));
        assert_eq!(config.read(0x1a, 2), Ok(u32::from(NO_VECTOR)));
    }

    #[test]
    fn driver_ok_before_negotiation_asks_for_a_reset() {
        let mut config = device();
        let effect = config
            .write(0x14, 1, u32::from(ACKNOWLEDGE | DRIVER | DRIVER_OK))
            .unwrap();
        assert_eq!(effect, Effect::None);
        assert_eq!(
            config.status() & (DRIVER_OK | DEVICE_NEEDS_RESET),
            DEVICE_NEEDS_RESET
        );
    }

    #[test]
    fn only_the_registers_of_the_layout_can_be_accessed_at_their_width() {
        let mut config = device();
        for (offset, size) in [
            (0x14, 2),
            (0x02, 2),
            (0x20, 8),
            (0x38, 4),
            (0x10, 4),
            (u32::MAX, 1),
        ] {
            assert_eq!(
                config.read(offset, size),
                Err(AccessError::NoRegister { offset, size })
            );
            assert!(config.write(offset, size, 0).is_err());
        }
    }
}
