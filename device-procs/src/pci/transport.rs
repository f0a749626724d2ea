//! A virtio-pci function's BARs as the guest's driver reaches them: the
//! MSI-X table (BAR 1) and the modern regions (BAR 4: common
//! configuration, ISR, device configuration, notifications). Every access
//! is checked against the region it falls in; what the driver's writes
//! ask of the device's queues comes out as a [`FunctionEffect`], data for
//! the core to act on.

use super::common::{self, CommonConfig, CommonState, NO_VECTOR};
use super::virtio::{COMMON_OFFSET, DEVICE_OFFSET, ISR_OFFSET, NOTIFY_MULTIPLIER, NOTIFY_OFFSET};
use ipc_proto::link::core_hotplug::{DeviceModel, FunctionEffect, QueueStart};
use ipc_proto::papr::DrcIndex;

/// The queues of a block device and the most entries each may have.
const QUEUES: u16 = 1;
const MAX_QUEUE_SIZE: u16 = 256;
/// Bytes of one MSI-X table entry, and where its vector-control word is.
const MSIX_ENTRY_BYTES: u64 = 16;
const MSIX_CONTROL: u64 = 12;
const MSIX_MASKED: u32 = 1;
/// Where the MSI-X BAR's pending bits start.
const MSIX_PBA_OFFSET: u64 = 0x800;
/// The size of each modern region.
const REGION_BYTES: u64 = 0x1000;

/// The driver-visible state of one function's device.
#[derive(Clone)]
pub struct Transport {
    drc: DrcIndex,
    common: CommonConfig,
    device_config: Vec<u8>,
    /// Per MSI-X vector: the vector-control word (the mask bit).
    vector_control: Vec<u32>,
}

/// What the driver set through the BARs, for a successor to restore.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TransportState {
    common: CommonState,
    vector_control: Vec<u32>,
}

/// Which region an access falls in.
pub enum Region {
    /// The MSI-X BAR, at this offset.
    Msix(u64),
    /// The modern BAR, at this offset.
    Modern(u64),
}

impl Transport {
    /// A reset device of `model`, connected through `drc`, with `vectors`
    /// MSI-X vectors.
    pub fn new(drc: DrcIndex, model: &DeviceModel, vectors: u16) -> Transport {
        Transport {
            drc,
            common: CommonConfig::new(model.features, QUEUES, MAX_QUEUE_SIZE),
            device_config: model.config.clone(),
            vector_control: vec![MSIX_MASKED; usize::from(vectors)],
        }
    }

    /// What the driver set.
    pub fn state(&self) -> TransportState {
        TransportState {
            common: self.common.state(),
            vector_control: self.vector_control.clone(),
        }
    }

    /// Takes back what the driver set, checked against this device.
    pub fn restore(&mut self, state: TransportState) -> Result<(), String> {
        if state.vector_control.len() != self.vector_control.len() {
            return Err(format!(
                "{} MSI-X vectors, not {}",
                state.vector_control.len(),
                self.vector_control.len()
            ));
        }
        self.common.restore(state.common)?;
        self.vector_control = state.vector_control;
        Ok(())
    }

    /// The device status (for tests and the log).
    pub fn status(&self) -> u8 {
        self.common.status()
    }

    /// Its connector.
    pub fn drc(&self) -> DrcIndex {
        self.drc
    }

    /// The driver started the device and it has not failed.
    pub fn running(&self) -> bool {
        let status = self.common.status();
        status & common::DRIVER_OK != 0 && status & common::DEVICE_NEEDS_RESET == 0
    }

    /// The device failed: it needs a reset.
    pub fn fail(&mut self) {
        self.common.fail();
    }

    /// Reads `size` bytes (1, 2, 4 or 8) of `region`. `granted` names the
    /// interrupt source of each vector `ibm,change-msi` granted: PAPR's
    /// platform, not the driver, programs the table (its data is the
    /// source, as QEMU's is).
    pub fn read(&self, region: Region, size: u32, granted: &dyn Fn(u16) -> Option<u32>) -> u64 {
        if size == 8 {
            let low = self.read(shifted(&region, 0), 4, granted);
            let high = self.read(shifted(&region, 4), 4, granted);
            return low | high << 32;
        }
        match region {
            Region::Msix(offset) if offset < MSIX_PBA_OFFSET => {
                let entry = offset / MSIX_ENTRY_BYTES;
                let Ok(vector) = u16::try_from(entry) else {
                    return 0;
                };
                match (offset % MSIX_ENTRY_BYTES, size) {
                    (8, 4) => granted(vector).map_or(0, u64::from),
                    (MSIX_CONTROL, 4) => self
                        .vector_control
                        .get(usize::from(vector))
                        .map_or(0, |&control| u64::from(control)),
                    _ => 0,
                }
            }
            // No vector is ever pending: KVM delivers each at once.
            Region::Msix(_) => 0,
            Region::Modern(offset) => match region_of(offset) {
                Some((COMMON_OFFSET, at)) => self.common.read(at, size).map_or(0, u64::from),
                // With MSI-X the ISR is not used; it reads as nothing pending.
                Some((ISR_OFFSET, _)) => 0,
                Some((DEVICE_OFFSET, at)) => {
                    let at = at as usize;
                    let mut bytes = [0u8; 4];
                    for (i, byte) in bytes.iter_mut().take(size as usize).enumerate() {
                        *byte = self.device_config.get(at + i).copied().unwrap_or(0);
                    }
                    u64::from(u32::from_le_bytes(bytes))
                }
                _ => 0,
            },
        }
    }

    /// Writes the low `size` bytes of `value` to `region`; what the device's
    /// server must do about it. A notification that reaches the bridge
    /// (none does once the queues run: KVM hands those to the backend) is
    /// a driver ringing a queue it did not start: the device fails.
    pub fn write(
        &mut self,
        region: Region,
        size: u32,
        value: u64,
        bar: u64,
        granted: &dyn Fn(u16) -> Option<u32>,
    ) -> Option<FunctionEffect> {
        if size == 8 {
            let low = self.write(shifted(&region, 0), 4, value & 0xffff_ffff, bar, granted);
            let high = self.write(shifted(&region, 4), 4, value >> 32, bar, granted);
            return high.or(low);
        }
        match region {
            Region::Msix(offset) if offset < MSIX_PBA_OFFSET => {
                let vector = usize::try_from(offset / MSIX_ENTRY_BYTES).ok()?;
                if (offset % MSIX_ENTRY_BYTES, size) == (MSIX_CONTROL, 4) {
                    if let Some(control) = self.vector_control.get_mut(vector) {
                        *control = value as u32 & MSIX_MASKED;
                    }
                }
                None
            }
            Region::Msix(_) => None,
            Region::Modern(offset) => match region_of(offset) {
                Some((COMMON_OFFSET, at)) => {
                    match self.common.write(at, size, value as u32).ok()? {
                        common::Effect::DriverOk(queues) => Some(FunctionEffect::Start {
                            drc: self.drc,
                            features: self.common.driver_features(),
                            queues: queues
                                .into_iter()
                                .map(|(index, queue)| QueueStart {
                                    index,
                                    size: queue.size,
                                    desc: queue.desc,
                                    driver: queue.driver,
                                    device: queue.device,
                                    notify: bar
                                        + u64::from(NOTIFY_OFFSET)
                                        + u64::from(index) * u64::from(NOTIFY_MULTIPLIER),
                                    interrupt: (queue.vector != NO_VECTOR)
                                        .then(|| granted(queue.vector))
                                        .flatten(),
                                })
                                .collect(),
                        }),
                        common::Effect::Reset => Some(FunctionEffect::Stop { drc: self.drc }),
                        common::Effect::None | common::Effect::FeaturesAccepted(_) => None,
                    }
                }
                Some((NOTIFY_OFFSET, _)) => {
                    log::warn!(
                        "DRC {:#x}: the driver rang a queue that does not run: device failed",
                        self.drc.0
                    );
                    self.common.fail();
                    None
                }
                _ => None,
            },
        }
    }
}

/// `region` `by` bytes further.
fn shifted(region: &Region, by: u64) -> Region {
    match *region {
        Region::Msix(offset) => Region::Msix(offset + by),
        Region::Modern(offset) => Region::Modern(offset + by),
    }
}

/// The modern region an offset of BAR 4 falls in, and the offset in it.
fn region_of(offset: u64) -> Option<(u32, u32)> {
    let start = offset / REGION_BYTES * REGION_BYTES;
    let start = u32::try_from(start).ok()?;
    [COMMON_OFFSET, ISR_OFFSET, DEVICE_OFFSET, NOTIFY_OFFSET]
        .contains(&start)
        .then_some((start, (offset % REGION_BYTES) as u32))
}
