//! The machine: KVM objects, guest RAM, vCPU threads, the device processes,
//! and the control loop, the one owner of the machine's state. The state
//! and the loop are here; each concern the loop carries out has a room of
//! its own: [`lifecycle`] (start, power-on, reset, pause), [`supervision`]
//! (what follows a device process's exit: restarts, upgrades, faults),
//! [`notifications`] (the hotplug controller's reports), [`cpu_hotplug`],
//! [`memory_hotplug`] and [`queries`]. The loop's decisions are pure
//! functions and small types there, unit-tested without KVM or processes.

mod backends;
mod cpu_hotplug;
mod disk_watch;
mod lifecycle;
mod memory_hotplug;
mod notification_log;
mod notifications;
mod pci_functions;
mod pci_hotplug;
mod queries;
mod startup;
mod supervision;

use crate::boot::BootError;
use crate::config::SmpConfig;
use crate::console::ConsoleError;
use crate::control::ControlMessage;
use crate::cores::Cores;
use crate::devices::{DeviceError, DeviceProcesses};
use crate::dimms::Dimms;
use crate::fdt::FdtError;
use crate::interrupts::{InterruptError, InterruptRouter};
use crate::layout::{MemoryLayout, FDT_MAX_SIZE, FDT_START};
use crate::memory::{BackendMemory, GuestRam, MemoryError};
use crate::qmp::{QmpContext, QmpServer};
use crate::request::{DeviceAdd, MachineRequest, QmpError};
use crate::vcpu::{CpuTable, VcpuContext, VcpuHandle};
use kvm_ioctls::{Kvm, VmFd};
use notification_log::NotificationLog;
use serde_json::{json, Value};
use startup::StartupTimes;
use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use thiserror::Error;

/// How long the end of the VM waits for its last metrics line to be
/// written.
const METRICS_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);

/// The built-in test guest, built by vmm/build.rs from guest/.
pub static BUILTIN_GUEST: &[u8] = include_bytes!(env!("PAPERVISOR_GUEST_ELF"));

/// Why the machine could not start, or ended other than by a power-off or
/// a quit.
#[derive(Debug, Error)]
pub enum VmError {
    /// /dev/kvm cannot be opened.
    #[error("cannot open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// A KVM ioctl failed.
    #[error("KVM call {call} failed")]
    Kvm {
        /// The ioctl.
        call: &'static str,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest memory.
    #[error("guest memory")]
    Memory(#[from] MemoryError),
    /// The boot tables or vCPU state.
    #[error("boot state")]
    Boot(#[from] BootError),
    /// The device tree.
    #[error("device tree")]
    Fdt(#[from] FdtError),
    /// The device tree does not fit its area.
    #[error("the device tree is {0} bytes, more than its {FDT_MAX_SIZE}-byte area")]
    FdtTooLarge(usize),
    /// The console.
    #[error("console")]
    Console(#[from] ConsoleError),
    /// The guest's ELF image.
    #[error("cannot load the guest ELF")]
    LoadGuest(#[source] linux_loader::loader::Error),
    /// The guest's image overlaps the device tree.
    #[error("the guest image ends at {end:#x}, into the device tree at {FDT_START:#x}")]
    GuestTooLarge {
        /// Where the image ends.
        end: u64,
    },
    /// The device tree cannot be written to guest memory.
    #[error("cannot write the device tree into guest memory")]
    WriteFdt(#[source] vm_memory::GuestMemoryError),
    /// The interrupt router.
    #[error("interrupts")]
    Interrupts(#[from] InterruptError),
    /// The device processes.
    #[error("device processes")]
    Devices(#[from] DeviceError),
    /// The hotplug controller refused or failed a request at start.
    #[error("the hotplug controller: {0}")]
    Hotplug(String),
    /// A thread of the core cannot be started.
    #[error("cannot start the thread of {what}")]
    Thread {
        /// The thread.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The guest cannot run on.
    #[error("the guest crashed: {0}")]
    GuestCrashed(String),
}

fn kvm_call(call: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { call, source }
}

/// The machine and its control loop.
pub struct Vm {
    // Field order is drop order: vCPU threads end before what they use.
    vcpus: Vec<Option<VcpuHandle>>,
    cpus: Arc<CpuTable>,
    context: VcpuContext,
    devices: Arc<DeviceProcesses>,
    interrupts: Arc<InterruptRouter>,
    cores: Cores,
    /// Memory backends and the DIMMs they back.
    dimms: Dimms<BackendMemory>,
    block_nodes: crate::block::nodes::Nodes,
    /// The disks on the PCI host bridge.
    disks: crate::block::disks::Disks,
    chardevs: crate::block::chardevs::Chardevs,
    qmp: Arc<QmpServer>,
    control: Sender<ControlMessage>,
    inbox: Receiver<ControlMessage>,
    /// Messages that arrived while the loop waited for one in particular
    /// (the releases of a reset, the exit of a process it asked).
    deferred: VecDeque<ControlMessage>,
    /// The hotplug controller's notifications handled and refused.
    notifications: NotificationLog,
    ram: GuestRam,
    layout: MemoryLayout,
    smp: SmpConfig,
    name: Option<String>,
    /// The console as query-chardev reports it.
    console_chardev: Value,
    /// `--metrics-path` and how often it is written.
    metrics: Option<(crate::line_stream::LineStream, std::time::Duration)>,
    /// QMP's migration capability `events` (shared by every client).
    migration_events: Arc<std::sync::atomic::AtomicBool>,
    /// `--uuid`, for query-uuid.
    uuid: Option<String>,
    /// `--no-shutdown`: a power-off stops the VM instead of ending it.
    no_shutdown: bool,
    /// `--numa-node`: the CPUs say they are on node 0.
    numa_node: bool,
    guest_image: Vec<u8>,
    vm_fd: Arc<VmFd>,
    kvm: Kvm,
    startup: StartupTimes,
}

/// How a message ends the VM, if it does: whether the guest asked,
/// QEMU's `SHUTDOWN` reason, and what the log says.
fn shutdown_cause(message: &ControlMessage) -> Option<(bool, &'static str, String)> {
    match message {
        ControlMessage::PowerOff => Some((true, "guest-shutdown", "guest powered off".into())),
        ControlMessage::Quit => Some((false, "host-qmp-quit", "quit requested over QMP".into())),
        ControlMessage::ConsoleQuit => Some((
            false,
            "host-ui",
            "Ctrl-a x on the console: ending the VM".into(),
        )),
        ControlMessage::HostSignal(signal) => {
            Some((false, "host-signal", format!("{signal}: ending the VM")))
        }
        _ => None,
    }
}

impl Vm {
    /// What the QMP server needs to reach this VM.
    pub fn qmp_context(&self) -> QmpContext {
        QmpContext {
            control: self.control.clone(),
            cpus: Arc::clone(&self.cpus),
            name: self.name.clone(),
            uuid: self.uuid.clone(),
            machine: true,
            kvm_present: true,
            migration_events: Arc::clone(&self.migration_events),
        }
    }

    /// Boots the guest and runs it until it powers off or QMP quits (Ok),
    /// or it crashes; `started` once the guest started (or, `--paused`,
    /// waits for `cont`).
    pub fn run(mut self, started: impl FnOnce()) -> Result<(), VmError> {
        self.power_on()?;
        self.start_metrics();
        self.start_trace_collection();
        started();
        loop {
            let message = match self.deferred.pop_front() {
                Some(message) => message,
                None => self
                    .inbox
                    .recv()
                    .map_err(|_| VmError::GuestCrashed("every vCPU thread is gone".into()))?,
            };
            if let Some((guest, reason, why)) = shutdown_cause(&message) {
                log::info!("{why}");
                if self.no_shutdown && matches!(message, ControlMessage::PowerOff) {
                    self.stay_shut_down();
                    continue;
                }
                self.devices.announce_end();
                self.write_metrics();
                if let Some((stream, _)) = &self.metrics {
                    stream.flush(METRICS_FLUSH);
                }
                self.shut_down(guest, reason);
                return Ok(());
            }
            match message {
                ControlMessage::Reset { by_guest } => self.reset(by_guest)?,
                ControlMessage::GuestCrashed(reason) => {
                    self.park_all();
                    return Err(VmError::GuestCrashed(reason));
                }
                ControlMessage::Hotplug { id, notification } => self.on_hotplug(id, notification),
                ControlMessage::DeviceExited {
                    kind,
                    generation,
                    reason,
                } => self.device_exited(kind, generation, &reason),
                ControlMessage::RestartDevice(kind) => self.restart_device(kind),
                ControlMessage::ReaperExited(reason) => self.devices.reaper_exited(&reason),
                ControlMessage::BlockExited { serial, how } => self.block_exited(serial, &how),
                ControlMessage::BackendHungUp { serial } => self.backend_hung_up(serial),
                ControlMessage::ReconnectBackend { serial } => self.reconnect_backend(serial),
                ControlMessage::WatchDisks => self.watch_disks(),
                ControlMessage::WriteMetrics => self.write_metrics(),
                ControlMessage::CollectTrace => self.devices.collect_trace(),
                ControlMessage::Function { effect, done } => {
                    let outcome = self.function_effect(effect);
                    if let Err(error) = &outcome {
                        log::error!("{error}");
                    }
                    let _ = done.try_send(outcome);
                }
                ControlMessage::PeerFailed {
                    peer,
                    generation,
                    reported_by,
                } => self.devices.peer_failed(peer, generation, reported_by),
                ControlMessage::Qmp { request, reply } => {
                    let _ = reply.send(self.carry_out(request));
                }
                // Each ended the VM above.
                ControlMessage::PowerOff
                | ControlMessage::Quit
                | ControlMessage::ConsoleQuit
                | ControlMessage::HostSignal(_) => {}
            }
        }
    }

    /// A QMP command that needs the machine, parsed by the QMP thread.
    fn carry_out(&mut self, request: MachineRequest) -> Result<Value, QmpError> {
        // A QMP id names one device, whatever its family.
        if let MachineRequest::DeviceAdd(add) = &request {
            let id = match add {
                DeviceAdd::Core { id, .. } => id.as_deref(),
                DeviceAdd::Dimm { id, .. }
                | DeviceAdd::VirtioBlk { id, .. }
                | DeviceAdd::VhostUserBlk { id, .. } => Some(id.as_str()),
            };
            if let Some(id) = id.filter(|id| self.plugged_device(id).is_some()) {
                return Err(QmpError::generic(format!("Duplicate device ID '{id}'")));
            }
        }
        use crate::stats::Hotplug;
        let counted = match &request {
            MachineRequest::DeviceAdd(DeviceAdd::Core { .. }) => Some(Hotplug::CoreAdd),
            MachineRequest::DeviceAdd(DeviceAdd::Dimm { .. }) => Some(Hotplug::DimmAdd),
            MachineRequest::DeviceAdd(_) => Some(Hotplug::DiskAdd),
            MachineRequest::DeviceDel(name) if self.dimms.find(name).is_some() => {
                Some(Hotplug::DimmDel)
            }
            MachineRequest::DeviceDel(name) if self.disks.find(name).is_some() => {
                Some(Hotplug::DiskDel)
            }
            MachineRequest::DeviceDel(_) => Some(Hotplug::CoreDel),
            _ => None,
        };
        if counted.is_some() {
            crate::trace::record(
                ipc_proto::control::trace_point::HOTPLUG_REQUEST,
                || json!({"request": format!("{request:?}")}),
            );
        }
        let answer = self.answer(request);
        if let (Some(operation), Ok(_)) = (counted, &answer) {
            self.context.stats.hotplug(operation);
        }
        answer
    }

    /// [`Vm::carry_out`]'s answer.
    fn answer(&mut self, request: MachineRequest) -> Result<Value, QmpError> {
        match request {
            MachineRequest::DeviceAdd(DeviceAdd::Core { core_id, id }) => {
                self.core_add(core_id, id.as_deref(), false)
            }
            MachineRequest::DeviceAdd(DeviceAdd::Dimm {
                id,
                memdev,
                addr,
                slot,
            }) => self.dimm_add(&id, &memdev, addr, slot, false),
            MachineRequest::DeviceAdd(DeviceAdd::VirtioBlk { id, drive, slot }) => {
                self.disk_add(&id, &drive, slot, false)
            }
            MachineRequest::DeviceAdd(DeviceAdd::VhostUserBlk { id, chardev, slot }) => {
                self.external_disk_add(&id, &chardev, slot)
            }
            MachineRequest::DeviceDel(name) if self.dimms.find(&name).is_some() => {
                self.dimm_del(&name)
            }
            MachineRequest::DeviceDel(name) if self.disks.find(&name).is_some() => {
                self.disk_del(&name)
            }
            MachineRequest::DeviceDel(name) => self.core_del(&name),
            MachineRequest::ObjectAdd(backend) => self.object_add(backend),
            MachineRequest::ObjectDel(id) => self.object_del(&id),
            MachineRequest::BlockdevAdd(add) => self.block_nodes.add(add).map(|()| json!({})),
            MachineRequest::BlockdevDel(name) => self.block_nodes.remove(&name).map(|()| json!({})),
            MachineRequest::ChardevAdd(add) => self.chardevs.add(add).map(|()| json!({})),
            MachineRequest::ChardevRemove(id) => self.chardevs.remove(&id).map(|()| json!({})),
            MachineRequest::Query(query) => self.query(query),
            MachineRequest::PowerDown => self.power_button(),
            MachineRequest::Pause(pause) => self.pause(pause),
            MachineRequest::InjectFault { process, fault } => self.inject_fault(process, fault),
            MachineRequest::QueryFaults => Ok(self.devices.query_faults()),
            MachineRequest::ClearFaults => self
                .devices
                .clear_faults()
                .map(|()| json!({}))
                .map_err(|error| QmpError::generic(format!("x-clear-faults: {error}"))),
            MachineRequest::CollectTrace => {
                self.devices.collect_trace();
                Ok(json!({}))
            }
            MachineRequest::Upgrade { process, program } => {
                self.upgrade_device_process(process, program)
            }
            MachineRequest::UpgradeBlock { id, program } => self.upgrade_block(&id, program),
            MachineRequest::Restart(process) => self.restart_device_process(process),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// PVM emulates CPL0 code and cannot emulate SSE: one SSE instruction in
    /// the guest kernel is a KVM internal error at run time.
    #[test]
    fn builtin_guest_contains_no_sse_instruction() {
        let elf = env!("PAPERVISOR_GUEST_ELF");
        let output = Command::new("objdump")
            .args(["-d", "--no-show-raw-insn", elf])
            .output()
            .expect("objdump (binutils) is needed to check the guest's instructions");
        assert!(output.status.success(), "objdump failed on {elf}");
        let listing = String::from_utf8_lossy(&output.stdout);
        assert!(
            listing.lines().count() > 1000,
            "suspiciously short disassembly"
        );
        let offending: Vec<&str> = listing
            .lines()
            .filter(|line| line.contains("%xmm") || line.contains("%ymm") || line.contains("%zmm"))
            .take(10)
            .collect();
        assert!(
            offending.is_empty(),
            "SSE/AVX in the guest:\n{}",
            offending.join("\n")
        );
    }

    #[test]
    fn builtin_guest_is_a_loadable_elf() {
        assert_eq!(crate::config::check_guest_elf(BUILTIN_GUEST), Ok(()));
    }

    #[test]
    fn power_off_quit_console_and_signals_end_the_vm_and_nothing_else() {
        let ends = |message| shutdown_cause(&message).map(|(guest, reason, _)| (guest, reason));
        assert_eq!(
            ends(ControlMessage::PowerOff),
            Some((true, "guest-shutdown"))
        );
        assert_eq!(ends(ControlMessage::Quit), Some((false, "host-qmp-quit")));
        assert_eq!(ends(ControlMessage::ConsoleQuit), Some((false, "host-ui")));
        let signal = ControlMessage::HostSignal(nix::sys::signal::Signal::SIGTERM);
        assert_eq!(
            shutdown_cause(&signal).map(|(_, reason, why)| (reason, why)),
            Some(("host-signal", "SIGTERM: ending the VM".to_string()))
        );
        assert_eq!(ends(ControlMessage::Reset { by_guest: true }), None);
        assert_eq!(ends(ControlMessage::GuestCrashed("x".into())), None);
    }
}
