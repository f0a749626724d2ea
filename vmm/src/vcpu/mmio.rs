//! A vCPU's accesses to guest-physical addresses no memory backs. Those in
//! the PCI host bridge's windows are the BARs of its functions: the process
//! that serves the bridge parses them, and what a write asks of a device
//! (start or stop its queues) is carried out by the control loop before
//! the vCPU runs on — as a virtio status write completes before QEMU's vCPU
//! returns to the guest.

use crate::control::ControlMessage;
use crate::devices::DeviceProcesses;
use ipc_proto::link::core_hotplug::FunctionEffect;
use ipc_proto::pci::Phb;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// How long a vCPU waits for the control loop to start or stop a device's
/// queues (a backend's every message is bounded by less).
const EFFECT_WAIT: Duration = Duration::from_secs(30);

/// A vCPU as its MMIO exits need it.
pub(super) struct Mmio<'a> {
    pub(super) id: u32,
    pub(super) devices: &'a DeviceProcesses,
    pub(super) control: &'a Sender<ControlMessage>,
    /// The vCPU is asked to park: it waits for nothing more.
    pub(super) park_requested: &'a AtomicBool,
}

impl Mmio<'_> {
    fn in_bridge_window(address: u64) -> bool {
        Phb::new(0).bus_address(address).is_some()
    }

    fn parking(&self) -> bool {
        self.park_requested.load(Ordering::SeqCst)
    }

    /// A read: the function's answer, or all ones (nothing decodes it).
    pub(super) fn read(&self, address: u64, data: &mut [u8]) {
        data.fill(0xff);
        if !Self::in_bridge_window(address) {
            log::debug!("vcpu{}: read from unmapped address {address:#x}", self.id);
            return;
        }
        let size = data.len() as u32;
        let parking = || self.parking();
        match self.devices.bar_access(address, size, None, &parking) {
            Ok((value, _)) => {
                let bytes = value.to_le_bytes();
                let n = data.len().min(8);
                data[..n].copy_from_slice(&bytes[..n]);
            }
            Err(failure) => log::warn!("vcpu{}: BAR read at {address:#x}: {failure}", self.id),
        }
    }

    /// A write, and what it asks of a device.
    pub(super) fn write(&self, address: u64, data: &[u8]) {
        if !Self::in_bridge_window(address) {
            log::debug!("vcpu{}: write to unmapped address {address:#x}", self.id);
            return;
        }
        let mut bytes = [0u8; 8];
        let n = data.len().min(8);
        bytes[..n].copy_from_slice(&data[..n]);
        let value = u64::from_le_bytes(bytes);
        let parking = || self.parking();
        match self
            .devices
            .bar_access(address, n as u32, Some(value), &parking)
        {
            Ok((_, Some(effect))) => self.carry_out_effect(effect),
            Ok((_, None)) => {}
            Err(failure) => log::warn!("vcpu{}: BAR write at {address:#x}: {failure}", self.id),
        }
    }

    /// Has the control loop carry out `effect` and waits for it (bounded,
    /// and not past a request to park: the loop may be parking vCPUs).
    pub(super) fn carry_out_effect(&self, effect: FunctionEffect) {
        let (done, outcome) = sync_channel(1);
        let message = ControlMessage::Function { effect, done };
        if self.control.send(message).is_err() {
            return;
        }
        let deadline = Instant::now() + EFFECT_WAIT;
        loop {
            match outcome.recv_timeout(Duration::from_millis(20)) {
                Ok(Ok(())) => return,
                Ok(Err(error)) => {
                    log::warn!("vcpu{}: {error}", self.id);
                    return;
                }
                Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {
                    if self.parking() || Instant::now() >= deadline {
                        log::warn!(
                            "vcpu{}: runs on before its device write was carried out",
                            self.id
                        );
                        return;
                    }
                }
            }
        }
    }
}
