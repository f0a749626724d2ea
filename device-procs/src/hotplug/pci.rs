//! The PCI host bridge's functions, served by the process that owns its
//! connectors: a function exists exactly while its DRC holds a device, so
//! one process keeps both. What the guest writes to a function (its
//! configuration space through RTAS, its BARs through the core's vCPUs) is
//! parsed here, in a process that maps no guest memory; the core receives
//! only typed effects (start or stop a device's queues).
//!
//! A function's driver-visible state (its BARs, granted vectors, virtio
//! status) is not in the state region: a successor builds each plugged
//! function afresh, as after a reset, from its DRC and the model the core
//! describes again.

use super::Controller;
use crate::pci::bridge::Bridge;
use ipc_proto::link::core_hotplug;
use ipc_proto::link::core_hotplug::DeviceModel;
use ipc_proto::link::rtas_hotplug::{Reply, Request};
use ipc_proto::papr::{irq, DrcIndex, DrcKind, RtasStatus};
use ipc_proto::pci::{ConfigAddress, Phb};
use std::collections::BTreeMap;

/// The bridge's root bus and what the core said of each device.
pub struct PciBus {
    phb: Phb,
    bridge: Bridge,
    models: BTreeMap<DrcIndex, DeviceModel>,
}

impl Default for PciBus {
    fn default() -> PciBus {
        PciBus {
            phb: Phb::new(0),
            bridge: Bridge::new(irq::MSI_FIRST, irq::MSI_COUNT),
            models: BTreeMap::new(),
        }
    }
}

/// Whether a request names a PCI DRC (and may plug or release a function).
pub fn touches_pci(drcs: &[DrcIndex]) -> bool {
    drcs.iter().any(|drc| drc.kind() == Some(DrcKind::Pci))
}

impl PciBus {
    /// The core describes the device `drc` is about to get (or, to a
    /// successor, has): a function already there is built afresh with it.
    pub fn describe(&mut self, drc: DrcIndex, model: DeviceModel) -> Result<(), String> {
        // One model per connector of the bridge: the map stays bounded.
        let devfn = self
            .phb
            .devfn_of(drc)
            .ok_or_else(|| format!("DRC {:#x} is not on the bridge", drc.0))?;
        if self.bridge.has(devfn) {
            self.bridge.plug_block(devfn, drc, &model)?;
        }
        self.models.insert(drc, model);
        Ok(())
    }

    /// Brings the functions in line with the table: a function for each PCI
    /// DRC that holds a device, none for one that does not. `fresh` starts
    /// every function afresh (a machine reset resets the bridge).
    pub fn sync(&mut self, controller: &Controller, fresh: bool) {
        for (devfn, index) in (0..=u8::MAX).filter_map(|devfn| Some((devfn, self.phb.drc(devfn)?)))
        {
            let plugged = controller
                .drc(index)
                .is_some_and(|drc| drc.device().is_some());
            if !plugged {
                if self.bridge.has(devfn) {
                    self.bridge.unplug(devfn);
                    log::info!("function {devfn:#04x} left the bridge");
                }
                continue;
            }
            if self.bridge.has(devfn) && !fresh {
                continue;
            }
            let model = self.models.get(&index).cloned().unwrap_or_else(|| {
                log::warn!("DRC {:#x}: no device model from the core yet", index.0);
                DeviceModel {
                    features: 0,
                    config: Vec::new(),
                }
            });
            match self.bridge.plug_block(devfn, index, &model) {
                Ok(()) => log::info!("function {devfn:#04x} on the bridge"),
                Err(error) => log::error!("function {devfn:#04x}: {error}"),
            }
        }
    }

    /// The guest's PCI configuration and MSI calls.
    pub fn rtas(&mut self, request: Request) -> Reply {
        let status_value = |result: Result<u32, RtasStatus>| match result {
            Ok(value) => Reply::Status {
                status: RtasStatus::Success,
                value,
            },
            Err(status) => Reply::Status { status, value: 0 },
        };
        match request {
            Request::ReadPciConfig { address, size, .. } => status_value(
                self.bridge
                    .read_config(ConfigAddress::decode(address), size),
            ),
            Request::WritePciConfig {
                address,
                size,
                value,
                ..
            } => match self
                .bridge
                .write_config(ConfigAddress::decode(address), size, value)
            {
                Ok(Some(drc)) => {
                    log::warn!(
                        "DRC {:#x}: the driver took a running device's BAR away: device failed",
                        drc.0
                    );
                    Reply::Stopped {
                        status: RtasStatus::Success,
                        drc,
                    }
                }
                other => status_value(other.map(|_| 0)),
            },
            Request::ChangeMsi {
                address,
                function,
                count,
                ..
            } => match self
                .bridge
                .change_msi(ConfigAddress::decode(address), function, count)
            {
                Ok(granted) => Reply::Vectors {
                    status: RtasStatus::Success,
                    count: granted.count,
                    msix: granted.msix,
                },
                Err(status) => Reply::Vectors {
                    status,
                    count: 0,
                    msix: false,
                },
            },
            Request::QueryInterruptSource {
                address, vector, ..
            } => status_value(
                self.bridge
                    .interrupt_of(ConfigAddress::decode(address), vector),
            ),
            other => {
                log::error!("not a PCI request: {other:?}");
                Reply::Status {
                    status: RtasStatus::HardwareError,
                    value: 0,
                }
            }
        }
    }

    /// A vCPU's access to the bridge's windows.
    pub fn bar_access(
        &mut self,
        address: u64,
        size: u32,
        write: Option<u64>,
    ) -> core_hotplug::Reply {
        let (value, effect) = self.bridge.bar_access(&self.phb, address, size, write);
        if let Some(effect) = &effect {
            log::info!("the driver asks: {effect:?}");
        }
        match write {
            None => core_hotplug::Reply::BarRead(value),
            Some(_) => core_hotplug::Reply::BarWritten(effect),
        }
    }
}
