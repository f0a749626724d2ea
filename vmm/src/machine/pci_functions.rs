//! What a driver's writes to a disk's PCI function ask of its backend, as
//! the process that serves the bridge reports them: DRIVER_OK starts the
//! queues (the backend gets their rings, a kick that KVM signals from the
//! guest's notification address, and the irqfd of the vector the driver
//! chose), a reset stops them. The I/O then runs guest → KVM → backend →
//! KVM → guest, without the core.

use super::disk_watch::{host_address, read_ring_index};
use super::Vm;
use crate::block::disks::{Disk, RunningQueue};
use crate::block::frontend::{BlockFrontend, FrontendError, Inflight, QueueSetup};
use ipc_proto::link::core_hotplug::{FunctionEffect, QueueStart};
use ipc_proto::papr::DrcIndex;
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Bytes of a split queue's rings with `size` entries: descriptor table,
/// available ring, used ring (virtio 1.x, 2.7).
fn ring_bytes(size: u16) -> [u64; 3] {
    let size = u64::from(size);
    [16 * size, 6 + 2 * size, 6 + 8 * size]
}

/// Takes the kicks of `disk`'s queues out of KVM.
fn unregister_kicks(vm: &VmFd, disk: &mut Disk) {
    for queue in disk.queues.drain(..) {
        let address = IoEventAddress::Mmio(queue.notify);
        if let Err(error) = vm.unregister_ioevent(&queue.kick, &address, NoDatamatch) {
            log::error!("disk {}: cannot unregister a kick: {error}", disk.id);
        }
    }
}

impl Vm {
    /// Carries out what a driver's write asks.
    pub(super) fn function_effect(&mut self, effect: FunctionEffect) -> Result<(), String> {
        effect.check()?;
        match effect {
            FunctionEffect::Start {
                drc,
                features,
                queues,
            } => self.start_queues(drc, features, &queues),
            FunctionEffect::Stop { drc } => {
                let vm = std::sync::Arc::clone(&self.vm_fd);
                let disk = self.disk_of(drc)?;
                stop_queues(&vm, disk);
                Ok(())
            }
        }
    }

    fn disk_of(&mut self, drc: DrcIndex) -> Result<&mut Disk, String> {
        self.disks
            .by_drc(drc)
            .ok_or_else(|| format!("no disk at DRC {:#x}", drc.0))
    }

    fn start_queues(
        &mut self,
        drc: DrcIndex,
        features: u64,
        queues: &[QueueStart],
    ) -> Result<(), String> {
        let vm = std::sync::Arc::clone(&self.vm_fd);
        let disk = self.disk_of(drc)?;
        stop_queues(&vm, disk);
        for queue in queues {
            let kick = EventFd::new(EFD_NONBLOCK).map_err(|e| format!("a kick eventfd: {e}"))?;
            vm.register_ioevent(&kick, &IoEventAddress::Mmio(queue.notify), NoDatamatch)
                .map_err(|error| {
                    format!(
                        "disk {}: cannot register its kick at {:#x}: {error}",
                        disk.id, queue.notify
                    )
                })?;
            disk.queues.push(RunningQueue {
                kick,
                notify: queue.notify,
            });
        }
        disk.started = Some((features, queues.to_vec()));
        let handed = self.hand_queues(drc, false);
        let disk = self.disk_of(drc)?;
        if handed.is_err() {
            if disk.frontend.is_none() && disk.backend.reconnects() {
                // The queues wait, kicks and all, for the backend to be back.
                log::info!("disk {}: its queues wait for its backend", disk.id);
                return Ok(());
            }
            unregister_kicks(&vm, disk);
            disk.started = None;
        }
        handed
    }

    /// Hands the queues the driver started to the disk's backend: from
    /// their start, or (`resume`, a backend that takes over from one that
    /// went) from each used ring's index, as QEMU's frontend resumes a
    /// backend without inflight tracking.
    pub(super) fn hand_queues(&mut self, drc: DrcIndex, resume: bool) -> Result<(), String> {
        let regions = self.ring_regions();
        let interrupts = std::sync::Arc::clone(&self.interrupts);
        let disk = self.disk_of(drc)?;
        let Some((features, queues)) = disk.started.clone() else {
            return Ok(());
        };
        let mut calls = Vec::new();
        let mut rings = Vec::new();
        for queue in &queues {
            let [desc, driver, device] = ring_bytes(queue.size);
            let translated = [
                (queue.desc, desc),
                (queue.driver, driver),
                (queue.device, device),
            ]
            .map(|(guest, length)| host_address(&regions, guest, length));
            let [Some(desc), Some(driver), Some(device)] = translated else {
                // The backend never decides on memory outside its map: the
                // driver's rings must be in guest RAM before it is asked.
                return Err(format!(
                    "disk {}: queue {} has rings outside guest memory",
                    disk.id, queue.index
                ));
            };
            let base = match resume {
                true => read_ring_index(&regions, queue.device + 2).unwrap_or(0),
                false => 0,
            };
            rings.push((queue.size, desc, driver, device, base));
            calls.push(match queue.interrupt {
                Some(source) => interrupts.eventfd(source).map_err(|e| e.to_string())?,
                // No vector: completions interrupt nobody (the driver polls).
                None => EventFd::new(EFD_NONBLOCK).map_err(|e| format!("a call eventfd: {e}"))?,
            });
        }
        let setups: Vec<QueueSetup<'_>> = rings
            .iter()
            .zip(&disk.queues)
            .zip(&calls)
            .map(
                |((&(size, descriptors, available, used, base), queue), call)| QueueSetup {
                    size,
                    descriptors,
                    available,
                    used,
                    base,
                    kick: &queue.kick,
                    call,
                },
            )
            .collect();
        let Some(frontend) = disk.frontend.as_mut() else {
            return Err(format!("disk {} has no backend", disk.id));
        };
        let tracked = track_inflight(frontend, &mut disk.inflight, &setups, resume);
        let started = match tracked.and_then(|()| frontend.start(features, &setups)) {
            Ok(()) => {
                if resume {
                    // The backend that went may have taken the guest's last
                    // kick with it: one more makes the new one look at the
                    // rings (a kick with nothing new costs a look).
                    for queue in &disk.queues {
                        let _ = queue.kick.write(1);
                    }
                }
                let from = match (resume, disk.inflight.is_some()) {
                    (false, _) => "",
                    (true, true) => ", its requests in flight served again",
                    (true, false) => ", from the used rings",
                };
                log::info!(
                    "disk {}: {} queue(s) started, features {features:#x}{from}",
                    disk.id,
                    setups.len(),
                );
                Ok(disk.serial)
            }
            Err(error) => {
                drop(setups);
                disk.cut_off(format!(
                    "its backend did not start: {}",
                    common::describe(&error)
                ));
                return Err(format!("disk {}: its backend did not start", disk.id));
            }
        };
        drop(setups);
        started.map(|serial| self.watch_progress(serial))
    }

    /// Every disk's queues stop (a machine reset resets every function).
    pub(super) fn stop_all_queues(&mut self) {
        let vm = std::sync::Arc::clone(&self.vm_fd);
        for disk in self.disks.all_mut() {
            stop_queues(&vm, disk);
        }
    }
}

/// Gives a backend that tracks requests in flight its region before its
/// queues start: a new one for a new set-up of the driver, the one its
/// predecessor recorded in when it takes over (`resume`).
fn track_inflight(
    frontend: &mut BlockFrontend,
    inflight: &mut Option<Inflight>,
    setups: &[QueueSetup<'_>],
    resume: bool,
) -> Result<(), FrontendError> {
    if !frontend.tracks_inflight() {
        // A backend that does not (another program's) resumes from the
        // used rings; a region kept would mislead a later one that does.
        *inflight = None;
        return Ok(());
    }
    match inflight.as_ref().filter(|_| resume) {
        Some(kept) => frontend.resume_inflight(kept),
        None => {
            let size = setups.iter().map(|queue| queue.size).max().unwrap_or(0);
            *inflight = Some(frontend.new_inflight(size)?);
            Ok(())
        }
    }
}

/// Stops `disk`'s queues, if they run, and takes their kicks out of KVM.
pub(super) fn stop_queues(vm: &VmFd, disk: &mut Disk) {
    if disk.queues.is_empty() {
        return;
    }
    if let Some(frontend) = disk.frontend.as_mut() {
        if let Err(error) = frontend.stop() {
            disk.cut_off(format!(
                "its backend did not stop: {}",
                common::describe(&error)
            ));
        }
    }
    unregister_kicks(vm, disk);
    disk.started = None;
    disk.inflight = None;
    disk.progress = None;
    log::info!("disk {}: queues stopped", disk.id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_translate_only_inside_one_region() {
        let regions = [(0, 0x1000, 0x7000_0000), (0x10_0000, 0x1000, 0x9000_0000)];
        assert_eq!(host_address(&regions, 0x800, 0x800), Some(0x7000_0800));
        assert_eq!(host_address(&regions, 0x800, 0x801), None);
        assert_eq!(host_address(&regions, 0x10_0010, 16), Some(0x9000_0010));
        assert_eq!(host_address(&regions, 0x2000, 1), None);
        assert_eq!(host_address(&regions, u64::MAX, 2), None);
        assert_eq!(ring_bytes(256), [4096, 518, 2054]);
    }
}
