//! The machine's life: its start (KVM, memory, interrupts, the device
//! processes, the boot vCPUs), power-on, the VM's end, reset, and the
//! power button and pause of QMP.

use super::notification_log::NotificationLog;
use super::startup::StartupTimes;
use super::{kvm_call, Vm, VmError, BUILTIN_GUEST};
use crate::boot;
use crate::config::{ConsoleConfig, GuestImage, SmpConfig, VmConfig};
use crate::console::{Console, ConsoleError};
use crate::control::ControlMessage;
use crate::cores::Cores;
use crate::devices::{DeviceProcesses, Platform};
use crate::dimms::Dimms;
use crate::fdt::{self, MachineDescription};
use crate::interrupts::InterruptRouter;
use crate::layout::{MemoryLayout, FDT_MAX_SIZE, FDT_START, GUEST_IMAGE_START, KVM_TSS_ADDRESS};
use crate::line_stream::LineStream;
use crate::memory::GuestRam;
use crate::qmp::QmpServer;
use crate::request::{DeviceAdd, MachineRequest, QmpError};
use crate::vcpu::{CpuTable, RunStatus, StartPoint, VcpuContext};
use ipc_proto::link::core_eventlog;
use ipc_proto::link::core_hotplug::{self, DrcRange};
use ipc_proto::papr::{irq, DrcKind, LMB_SIZE};
use ipc_proto::pci;
use kvm_ioctls::Kvm;
use linux_loader::loader::{elf::Elf, KernelLoader};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::io::Cursor;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::sync::Arc;
use std::time::Instant;
use vm_memory::{Bytes, GuestAddress};

/// Lines of `--metrics-path` waiting for the file, at most.
const METRICS_QUEUE: usize = 64;

/// The DRC table of the machine: a CPU DRC per possible core, an LMB DRC per
/// 256 MiB of device memory.
fn drc_ranges(smp: &SmpConfig, layout: &MemoryLayout) -> Vec<DrcRange> {
    let mut ranges = vec![
        DrcRange {
            kind: DrcKind::Cpu,
            first_id: 0,
            count: smp.max_cores(),
            step: smp.threads_per_core,
        },
        DrcRange {
            kind: DrcKind::Lmb,
            first_id: (layout.device_memory_start / LMB_SIZE) as u32,
            count: ((layout.device_memory_end - layout.device_memory_start) / LMB_SIZE) as u32,
            step: 1,
        },
    ];
    // Each PHB's root bus: a physical DRC per devfn.
    ranges.extend((0..pci::PHBS).filter_map(|phb| pci::Phb::new(phb).drc_range()));
    ranges
}

/// The steps of a machine reset, each carried out by [`reset_machine`] in
/// its order.
pub(super) trait ResetSteps {
    /// Every vCPU stops: nothing of the guest runs while the machine resets.
    fn park_vcpus(&mut self);
    /// The hotplug controller completes the pending unplugs, and the core
    /// carries out the releases it notifies. A controller that is down
    /// cannot: the machine resets all the same.
    fn complete_unplugs(&mut self);
    /// The event log drops its queue: a new boot starts with none.
    fn empty_event_queue(&mut self);
    /// Interrupt lines and their state start over.
    fn reset_interrupts(&mut self) -> Result<(), VmError>;
    /// Boot RAM is zeroed.
    fn discard_ram(&mut self) -> Result<(), VmError>;
    /// The guest is loaded again and vCPU 0 started.
    fn power_on(&mut self) -> Result<(), VmError>;
    /// QMP clients are told (`RESET`).
    fn announce_reset(&mut self, by_guest: bool);
}

/// A machine reset, in a fixed order: every vCPU is parked first (no
/// guest code sees the machine change), then the controller's releases are
/// carried out (a core unplugged at reset is gone before the guest starts
/// again), then the event queue is emptied, interrupts and RAM start over,
/// the guest is loaded, and only then is `RESET` emitted.
pub(super) fn reset_machine(steps: &mut impl ResetSteps, by_guest: bool) -> Result<(), VmError> {
    steps.park_vcpus();
    steps.complete_unplugs();
    steps.empty_event_queue();
    steps.reset_interrupts()?;
    steps.discard_ram()?;
    steps.power_on()?;
    steps.announce_reset(by_guest);
    Ok(())
}

impl ResetSteps for Vm {
    fn park_vcpus(&mut self) {
        self.park_all();
    }

    fn complete_unplugs(&mut self) {
        match self.hotplug_request(core_hotplug::Request::Reset) {
            Ok(()) => self.await_reset_releases(),
            Err(error) => log::error!("reset without the hotplug controller: {error}"),
        }
        // The bridge's functions reset: their drivers start them again.
        self.stop_all_queues();
    }

    fn empty_event_queue(&mut self) {
        if let Err(error) = self.devices.eventlog.command(core_eventlog::Request::Reset) {
            log::error!("the event log did not reset: {error}");
        }
    }

    fn reset_interrupts(&mut self) -> Result<(), VmError> {
        Ok(self.interrupts.reset()?)
    }

    fn discard_ram(&mut self) -> Result<(), VmError> {
        Ok(self.ram.discard()?)
    }

    fn power_on(&mut self) -> Result<(), VmError> {
        Vm::power_on(self)
    }

    fn announce_reset(&mut self, by_guest: bool) {
        let reason = if by_guest {
            "guest-reset"
        } else {
            "host-qmp-system-reset"
        };
        self.qmp
            .emit("RESET", json!({"guest": by_guest, "reason": reason}));
    }
}

impl Vm {
    /// Builds the machine: KVM, memory, interrupts, the console, the device processes and the boot vCPUs, parked until [`Vm::run`].
    pub fn new(
        mut config: VmConfig,
        console_socket: Option<&crate::sockets::ClaimedSocket>,
        qmp: Arc<QmpServer>,
    ) -> Result<Vm, VmError> {
        let cold_plugs = config.cold_plugs;
        let guest_image = match config.guest_image {
            GuestImage::File(bytes) => bytes,
            GuestImage::BuiltIn => BUILTIN_GUEST.to_vec(),
        };
        let kvm_started = Instant::now();
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let vm_fd = Arc::new(kvm.create_vm().map_err(kvm_call("KVM_CREATE_VM"))?);
        vm_fd
            .set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(kvm_call("KVM_SET_TSS_ADDR"))?;
        vm_fd
            .create_irq_chip()
            .map_err(kvm_call("KVM_CREATE_IRQCHIP"))?;

        let layout = MemoryLayout::new(&config.memory);
        let ram = GuestRam::new(layout.boot_ram)?;
        ram.register(&vm_fd)?;

        let interrupts = Arc::new(InterruptRouter::new(Arc::clone(&vm_fd))?);
        let vty_interrupt = interrupts.eventfd(irq::VTY)?;
        let (control, inbox) = channel();
        let mut console_filename = "stdio".to_string();
        let console = match &config.console {
            ConsoleConfig::Stdio => {
                let control = control.clone();
                Console::stdio(vty_interrupt, move || {
                    let _ = control.send(ControlMessage::ConsoleQuit);
                })?
            }
            ConsoleConfig::Pty => {
                let (console, path) = Console::pty(vty_interrupt)?;
                log::info!("console on {}", path.display());
                console_filename = format!("pty:{}", path.display());
                console
            }
            ConsoleConfig::Socket(path) => match console_socket {
                Some(socket) => {
                    console_filename = format!("unix:{},server=on", path.display());
                    Console::socket(socket, vty_interrupt)?
                }
                None => {
                    return Err(VmError::Console(ConsoleError::Bind {
                        path: path.clone(),
                        source: std::io::ErrorKind::NotFound.into(),
                    }))
                }
            },
        };
        // The event log raises the hot-plug and EPOW interrupts itself.
        let event_log_interrupt = |source| -> Result<OwnedFd, VmError> {
            let eventfd = interrupts.eventfd(source)?;
            // SAFETY: `eventfd` keeps the descriptor open while it is borrowed here.
            unsafe { BorrowedFd::borrow_raw(eventfd.as_raw_fd()) }
                .try_clone_to_owned()
                .map_err(|source| VmError::Thread {
                    what: "the event log's interrupts".into(),
                    source,
                })
        };
        let hotplug_interrupt = event_log_interrupt(irq::HOTPLUG)?;
        let epow_interrupt = event_log_interrupt(irq::EPOW)?;
        let mut startup = StartupTimes {
            kvm: kvm_started.elapsed(),
            ..StartupTimes::default()
        };
        let devices_started = Instant::now();
        let platform = Platform::new(
            &ram,
            [hotplug_interrupt, epow_interrupt],
            config.smp.threads_per_core,
            drc_ranges(&config.smp, &layout),
        )?;
        let devices = Arc::new(DeviceProcesses::start(
            platform,
            config.sandbox.clone(),
            control.clone(),
        )?);
        startup.devices = devices_started.elapsed();
        let cpus = Arc::new(CpuTable::new(config.smp.max_cpus));
        // Before QMP serves: a client that asks at once sees `prelaunch`.
        if config.paused {
            cpus.set_status(RunStatus::Prelaunch);
        }
        let context = VcpuContext {
            ram: ram.memory().clone(),
            console,
            cpus: Arc::clone(&cpus),
            devices: Arc::clone(&devices),
            interrupts: Arc::clone(&interrupts),
            control: control.clone(),
            stats: Default::default(),
        };
        // Started here, before the control loop's filter, which its
        // writer's would stack on.
        let metrics = match config.metrics.take() {
            None => None,
            Some((file, every)) => {
                let stream =
                    LineStream::start(file, "metrics", METRICS_QUEUE).map_err(|source| {
                        VmError::Thread {
                            what: "--metrics-path".into(),
                            source,
                        }
                    })?;
                Some((stream, every))
            }
        };
        let mut vm = Vm {
            vcpus: (0..config.smp.max_cpus).map(|_| None).collect(),
            cpus,
            context,
            devices,
            interrupts,
            cores: Cores::new(&config.smp),
            dimms: Dimms::new(&layout, config.memory.slots),
            block_nodes: Default::default(),
            disks: crate::block::disks::Disks::with_stall_timeout(config.block_stall_timeout),
            chardevs: Default::default(),
            qmp,
            control,
            inbox,
            deferred: VecDeque::new(),
            notifications: NotificationLog::default(),
            ram,
            layout,
            smp: config.smp,
            name: config.name.clone(),
            uuid: config.uuid.clone(),
            migration_events: Default::default(),
            metrics,
            console_chardev: json!({
                "label": config.console_id,
                "filename": console_filename,
                "frontend-open": true,
            }),
            no_shutdown: config.no_shutdown,
            numa_node: config.numa_node,
            guest_image,
            vm_fd,
            kvm,
            startup,
        };
        let vcpus_started = Instant::now();
        for core in vm.cores.present() {
            vm.create_core_vcpus(core)?;
        }
        vm.startup.kvm += vcpus_started.elapsed();
        let cold_plug_started = Instant::now();
        vm.cold_plug_present_cores().map_err(VmError::Hotplug)?;
        vm.cold_plug(cold_plugs).map_err(VmError::Hotplug)?;
        vm.startup.devices += cold_plug_started.elapsed();
        Ok(vm)
    }

    /// Writes everything the guest finds at power-on; returns where CPU 0 starts.
    fn load(&self) -> Result<StartPoint, VmError> {
        let memory = self.ram.memory();
        boot::write_boot_tables(memory, &self.layout)?;
        let loaded = Elf::load(
            memory,
            None,
            &mut Cursor::new(&self.guest_image),
            Some(GuestAddress(GUEST_IMAGE_START)),
        )
        .map_err(VmError::LoadGuest)?;
        if loaded.kernel_end > FDT_START {
            return Err(VmError::GuestTooLarge {
                end: loaded.kernel_end,
            });
        }
        let present_cores = self.cores.present();
        let dimms: Vec<(u64, u64)> = self
            .dimms
            .plugged_dimms()
            .iter()
            .map(|dimm| (dimm.addr, dimm.size))
            .collect();
        let pci_slots: Vec<u8> = self.disks.all().iter().map(|disk| disk.slot).collect();
        let blob = fdt::build(&MachineDescription {
            smp: &self.smp,
            layout: &self.layout,
            present_cores: &present_cores,
            dimms: &dimms,
            pci_slots: &pci_slots,
        })?;
        if blob.len() as u64 > FDT_MAX_SIZE {
            return Err(VmError::FdtTooLarge(blob.len()));
        }
        memory
            .write_slice(&blob, GuestAddress(FDT_START))
            .map_err(VmError::WriteFdt)?;
        Ok(StartPoint {
            entry: loaded.kernel_load.0,
            rdi: FDT_START,
            rsi: 0,
        })
    }

    pub(super) fn power_on(&mut self) -> Result<(), VmError> {
        let start = self.load()?;
        if self.startup.vcpu0_started.is_none() {
            self.startup.vcpu0_started = crate::STARTED.get().map(Instant::elapsed);
        }
        log::info!(
            "starting vCPU 0 at {:#x} with the device tree at {:#x}",
            start.entry,
            start.rdi
        );
        if !self.cpus.start(0, start) {
            log::error!("vCPU 0 was not stopped at power-on");
        }
        Ok(())
    }

    /// The devices of the command line (`--blockdev`, `--object`,
    /// `--device`), in order, before the guest runs: present at boot.
    fn cold_plug(&mut self, requests: Vec<MachineRequest>) -> Result<(), String> {
        for request in requests {
            let plugged = match request {
                MachineRequest::BlockdevAdd(add) => self.block_nodes.add(add),
                MachineRequest::ObjectAdd(backend) => self.object_add(backend).map(drop),
                MachineRequest::DeviceAdd(DeviceAdd::VirtioBlk { id, drive, slot }) => {
                    self.disk_add(&id, &drive, slot, true).map(drop)
                }
                MachineRequest::DeviceAdd(DeviceAdd::Core { core_id, id }) => {
                    self.core_add(core_id, id.as_deref(), true).map(drop)
                }
                MachineRequest::DeviceAdd(DeviceAdd::Dimm {
                    id,
                    memdev,
                    addr,
                    slot,
                }) => self.dimm_add(&id, &memdev, addr, slot, true).map(drop),
                other => Err(QmpError::generic(format!(
                    "{other:?} is not plugged at start"
                ))),
            };
            plugged.map_err(|error| error.desc)?;
        }
        Ok(())
    }

    pub(super) fn park_all(&self) {
        for vcpu in self.vcpus.iter().flatten() {
            vcpu.park();
        }
    }

    /// The VM ends: every vCPU parked, and QMP clients told why.
    pub(super) fn shut_down(&self, guest: bool, reason: &str) {
        self.park_all();
        self.qmp
            .emit("SHUTDOWN", json!({"guest": guest, "reason": reason}));
    }

    /// Machine reset. Pending unplugs complete here, in a fixed order
    /// ([`reset_machine`]).
    pub(super) fn reset(&mut self, by_guest: bool) -> Result<(), VmError> {
        if self.cpus.status() == RunStatus::Shutdown {
            self.cpus.set_status(RunStatus::Prelaunch);
        }
        log::info!(
            "machine reset requested by the {}",
            if by_guest { "guest" } else { "host" }
        );
        reset_machine(self, by_guest)
    }

    /// Carries out the releases of a reset, which the controller notifies
    /// (the one path by which releases reach the core) before it says the
    /// reset is complete. Anything else that arrives meanwhile waits.
    pub(super) fn await_reset_releases(&mut self) {
        let deadline = std::time::Instant::now() + ipc_proto::Link::CoreHotplug.reply_timeout();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.inbox.recv_timeout(left) {
                Ok(ControlMessage::Hotplug { id, notification })
                    if self.notifications.completes_reset(id, &notification) =>
                {
                    return
                }
                Ok(ControlMessage::Hotplug { id, notification }) => {
                    self.on_hotplug(id, notification)
                }
                // A driver's write from before the reset: its function was
                // reset with the machine, and its vCPU parked.
                Ok(ControlMessage::Function { effect, .. }) => {
                    log::info!("dropped at reset: {effect:?}");
                }
                Ok(other) => self.deferred.push_back(other),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    log::error!("the hotplug controller did not complete the reset in time");
                    return;
                }
            }
        }
    }

    /// QMP `system_powerdown`: an EPOW power-off request to the guest,
    /// which powers off (`SHUTDOWN`) if it honours it, as Linux does.
    pub(super) fn power_button(&mut self) -> Result<Value, QmpError> {
        self.devices
            .eventlog
            .command(core_eventlog::Request::PowerDown)?;
        self.qmp.emit("POWERDOWN", json!({}));
        Ok(json!({}))
    }

    /// QMP `stop` (`true`) and `cont`: every vCPU holds before its next
    /// KVM_RUN, or goes on; `STOP`/`RESUME` when the state changes.
    /// From `prelaunch` (`--paused`), `cont` starts the guest; from
    /// `shutdown` (`--no-shutdown`), only a reset does, as in QEMU.
    pub(super) fn pause(&mut self, pause: bool) -> Result<Value, QmpError> {
        match (self.cpus.status(), pause) {
            (RunStatus::Running, true) => {
                self.cpus.set_paused(true);
                for vcpu in self.vcpus.iter().flatten() {
                    vcpu.wait_paused();
                }
                self.qmp.emit("STOP", json!({}));
            }
            (RunStatus::Shutdown, false) => {
                return Err(QmpError::generic(
                    "Resetting the Virtual Machine is required: the guest powered off",
                ))
            }
            (RunStatus::Paused | RunStatus::Prelaunch, false) => {
                self.cpus.set_paused(false);
                self.qmp.emit("RESUME", json!({}));
            }
            _ => {}
        }
        Ok(json!({}))
    }

    /// The guest powered off under `--no-shutdown`: the vCPUs stop and
    /// the VM stays, for QMP to reset it or end it.
    pub(super) fn stay_shut_down(&mut self) {
        self.cpus.set_status(RunStatus::Shutdown);
        self.shut_down(true, "guest-shutdown");
        self.qmp.emit("STOP", json!({}));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the steps of a reset; fails the one named.
    #[derive(Default)]
    struct Recorder {
        steps: Vec<&'static str>,
        failing: Option<&'static str>,
    }

    impl Recorder {
        fn step(&mut self, name: &'static str) -> Result<(), VmError> {
            self.steps.push(name);
            if self.failing == Some(name) {
                return Err(VmError::GuestCrashed(format!("{name} failed")));
            }
            Ok(())
        }
    }

    impl ResetSteps for Recorder {
        fn park_vcpus(&mut self) {
            let _ = self.step("park");
        }
        fn complete_unplugs(&mut self) {
            let _ = self.step("unplugs");
        }
        fn empty_event_queue(&mut self) {
            let _ = self.step("events");
        }
        fn reset_interrupts(&mut self) -> Result<(), VmError> {
            self.step("interrupts")
        }
        fn discard_ram(&mut self) -> Result<(), VmError> {
            self.step("ram")
        }
        fn power_on(&mut self) -> Result<(), VmError> {
            self.step("power-on")
        }
        fn announce_reset(&mut self, by_guest: bool) {
            let _ = self.step(if by_guest {
                "RESET guest"
            } else {
                "RESET host"
            });
        }
    }

    #[test]
    fn a_reset_parks_first_completes_unplugs_before_power_on_and_announces_last() {
        let mut recorder = Recorder::default();
        reset_machine(&mut recorder, true).unwrap();
        assert_eq!(
            recorder.steps,
            [
                "park",
                "unplugs",
                "events",
                "interrupts",
                "ram",
                "power-on",
                "RESET guest"
            ]
        );
    }

    #[test]
    fn a_reset_that_cannot_power_on_is_not_announced() {
        for failing in ["interrupts", "ram", "power-on"] {
            let mut recorder = Recorder {
                failing: Some(failing),
                ..Recorder::default()
            };
            assert!(reset_machine(&mut recorder, false).is_err());
            assert_eq!(recorder.steps.last(), Some(&failing));
            assert!(!recorder.steps.iter().any(|step| step.starts_with("RESET")));
        }
    }

    #[test]
    fn drc_ranges_cover_every_core_and_every_lmb_of_device_memory() {
        let smp = SmpConfig {
            cpus: 2,
            max_cpus: 8,
            threads_per_core: 2,
        };
        let layout = MemoryLayout {
            boot_ram: 1 << 30,
            device_memory_start: 1 << 32,
            device_memory_end: (1 << 32) + (1 << 30),
        };
        let ranges = drc_ranges(&smp, &layout);
        assert_eq!(ranges[0].count, 4);
        assert_eq!(ranges[0].step, 2);
        assert_eq!(ranges[1].first_id, 16);
        assert_eq!(ranges[1].count, 4);
        assert_eq!(
            (ranges[2].kind, ranges[2].first_id, ranges[2].count),
            (DrcKind::Pci, 0, 256)
        );
    }
}
