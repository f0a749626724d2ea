//! The PCI host bridge's functions, served by the process that owns its
//! connectors: a function exists exactly while its DRC holds a device, so
//! one process keeps both. What the guest writes to a function (its
//! configuration space through RTAS, its BARs through the core's vCPUs) is
//! parsed here, in a process that maps no guest memory; the core receives
//! only typed effects (start or stop a device's queues).
//!
//! Each function's driver-visible state (its configuration, the vectors
//! granted, its device's registers) and its model are recorded in the
//! state region after every change the driver or the core makes, so that
//! a successor resumes a driver's set-up mid-way: a configure-connector
//! walk, an `ibm,change-msi`, feature negotiation. A write whose record a
//! dying process did not commit is made again by its sender (the RTAS
//! server's call, the core's BAR access): every such write is idempotent.

use super::store::FunctionRecord;
use super::Controller;
use crate::pci::bridge::Bridge;
use ipc_proto::link::core_hotplug;
use ipc_proto::link::core_hotplug::DeviceModel;
use ipc_proto::link::rtas_hotplug::{Reply, Request};
use ipc_proto::papr::{irq, DrcIndex, DrcKind, RtasStatus};
use ipc_proto::pci::{ConfigAddress, Phb};
use std::collections::{BTreeMap, BTreeSet};

/// The bridge's root bus and what the core said of each device.
pub struct PciBus {
    phb: Phb,
    bridge: Bridge,
    models: BTreeMap<DrcIndex, DeviceModel>,
    /// Functions changed since their last record.
    touched: BTreeSet<u8>,
}

impl Default for PciBus {
    fn default() -> PciBus {
        PciBus {
            phb: Phb::new(0),
            bridge: Bridge::new(irq::MSI_FIRST, irq::MSI_COUNT),
            models: BTreeMap::new(),
            touched: BTreeSet::new(),
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
        // A successor resumed the function with this model already.
        if self.bridge.has(devfn) && self.models.get(&drc) != Some(&model) {
            self.bridge.plug_block(devfn, drc, &model)?;
            self.touched.insert(devfn);
        }
        self.models.insert(drc, model);
        Ok(())
    }

    /// Rebuilds the functions a predecessor recorded, as their drivers had
    /// set them; a record that does not fit its function is dropped (that
    /// function starts afresh, as after a reset).
    pub fn resume(&mut self, records: Vec<(u8, FunctionRecord)>) {
        for (devfn, record) in records {
            if self.phb.drc(devfn) != Some(record.drc) {
                log::error!("function {devfn:#04x}: recorded for another DRC; dropped");
                continue;
            }
            let rebuilt = self
                .bridge
                .plug_block(devfn, record.drc, &record.model)
                .and_then(|()| self.bridge.restore(devfn, record.state));
            match rebuilt {
                Ok(()) => log::info!("function {devfn:#04x} resumed as its driver left it"),
                Err(error) => {
                    log::error!("function {devfn:#04x}: its record does not fit ({error}); it starts afresh");
                    self.touched.insert(devfn);
                }
            }
            self.models.insert(record.drc, record.model);
        }
    }

    /// The records of the functions changed since the last call: each
    /// function's, or `None` for one no longer there.
    pub fn changed_records(&mut self) -> Vec<(u8, Option<FunctionRecord>)> {
        std::mem::take(&mut self.touched)
            .into_iter()
            .map(|devfn| {
                let record = self.bridge.snapshot(devfn).and_then(|state| {
                    let drc = self.phb.drc(devfn)?;
                    Some(FunctionRecord {
                        drc,
                        model: self.models.get(&drc)?.clone(),
                        state,
                    })
                });
                (devfn, record)
            })
            .collect()
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
                    self.touched.insert(devfn);
                    log::info!("function {devfn:#04x} left the bridge");
                }
                continue;
            }
            if self.bridge.has(devfn) && !fresh {
                continue;
            }
            self.touched.insert(devfn);
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
        if let Request::WritePciConfig { address, .. } | Request::ChangeMsi { address, .. } =
            &request
        {
            let address = ConfigAddress::decode(*address);
            if address.bus == 0 && self.bridge.has(address.devfn) {
                self.touched.insert(address.devfn);
            }
        }
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
        if write.is_some() {
            self.touched
                .extend(self.bridge.function_at(&self.phb, address));
        }
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
