//! The VM: KVM objects, guest RAM, vCPU threads, the device processes, and
//! the control loop that owns the machine's state and carries out power-off,
//! reset, CPU hotplug and the QMP commands that need the machine.

use crate::boot::{self, BootError};
use crate::config::{ConsoleConfig, GuestImage, SmpConfig, VmConfig};
use crate::console::{Console, ConsoleError};
use crate::control::{ControlMessage, QmpError};
use crate::cores::{CoreDevice, Cores, CORE_DRIVER};
use crate::devices::proxy::DeviceFailure;
use crate::devices::supervisor::{AfterExit, State};
use crate::devices::{DeviceError, DeviceProcesses};
use crate::dimms::{Dimm, Dimms};
use crate::fdt::{self, FdtError, MachineDescription};
use crate::interrupts::{InterruptError, InterruptRouter};
use crate::layout::{MemoryLayout, FDT_MAX_SIZE, FDT_START, GUEST_IMAGE_START, KVM_TSS_ADDRESS};
use crate::memory::{DimmMemory, GuestRam, MemoryError};
use crate::qmp::arguments::{self as qmp_arguments, BackendAdd, DeviceAdd};
use crate::qmp::schema::Command;
use crate::qmp::{QmpContext, QmpServer};
use crate::vcpu::{CpuTable, StartPoint, VcpuContext, VcpuHandle};
use ipc_proto::link::core_eventlog;
use ipc_proto::link::core_hotplug::{self, DrcRange};
use ipc_proto::link::core_rtas::MemoryRegion;
use ipc_proto::link::hotplug_eventlog::{HotplugAction, HotplugTarget};
use ipc_proto::link::hotplug_notify::{Notification, Released};

use ipc_proto::papr::{irq, DrcKind, LMB_SIZE};
use ipc_proto::ProcessKind;
use kvm_ioctls::{Kvm, VmFd};
use linux_loader::loader::{elf::Elf, KernelLoader};
use serde_json::{json, Map, Value};
use std::collections::VecDeque;
use std::io::Cursor;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};

/// KVM memory slot of DIMM slot 0 (boot RAM has slot 0).
const FIRST_DIMM_KVM_SLOT: u32 = 1;

/// What backs a memory backend in the core: its memfd, and its mapping and
/// KVM slot while a DIMM it backs is plugged.
struct BackendMemory {
    memfd: std::fs::File,
    plugged: Option<DimmMemory>,
}

/// How many times a request to the hotplug controller is sent, to it and
/// to its successors, before QMP is told it failed.
const MAX_HOTPLUG_ATTEMPTS: u32 = 3;
/// How long the control loop waits for the report of a process that died
/// while it was asked (its watcher sees the exit within milliseconds).
const EXIT_REPORT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The built-in test guest, built by vmm/build.rs from guest/.
pub static BUILTIN_GUEST: &[u8] = include_bytes!(env!("PAPERVISOR_GUEST_ELF"));

#[derive(Debug, Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("KVM call {call} failed")]
    Kvm {
        call: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("guest memory")]
    Memory(#[from] MemoryError),
    #[error("boot state")]
    Boot(#[from] BootError),
    #[error("device tree")]
    Fdt(#[from] FdtError),
    #[error("the device tree is {0} bytes, more than its {FDT_MAX_SIZE}-byte area")]
    FdtTooLarge(usize),
    #[error("console")]
    Console(#[from] ConsoleError),
    #[error("cannot load the guest ELF")]
    LoadGuest(#[source] linux_loader::loader::Error),
    #[error("the guest image ends at {end:#x}, into the device tree at {FDT_START:#x}")]
    GuestTooLarge { end: u64 },
    #[error("cannot write the device tree into guest memory")]
    WriteFdt(#[source] vm_memory::GuestMemoryError),
    #[error("interrupts")]
    Interrupts(#[from] InterruptError),
    #[error("device processes")]
    Devices(#[from] DeviceError),
    #[error("the hotplug controller: {0}")]
    Hotplug(String),
    #[error("cannot start the thread of {what}")]
    Thread {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the guest crashed: {0}")]
    GuestCrashed(String),
}

fn kvm_call(call: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { call, source }
}

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
    qmp: Arc<QmpServer>,
    control: Sender<ControlMessage>,
    inbox: Receiver<ControlMessage>,
    /// Messages that arrived while a reset waited for the controller's releases.
    deferred: VecDeque<ControlMessage>,
    /// The highest notification number the hotplug controller sent: a
    /// successor repeats what its predecessor may have sent, and a repeat
    /// must not emit a second DEVICE_DELETED.
    last_notification: u64,
    /// Notifications of the hotplug controller the core refused to act on
    /// (x-query-device-processes shows the count).
    rejected_notifications: u64,
    ram: GuestRam,
    layout: MemoryLayout,
    smp: SmpConfig,
    name: Option<String>,
    guest_image: Vec<u8>,
    vm_fd: Arc<VmFd>,
    kvm: Kvm,
    startup: StartupTimes,
}

/// Where the core's start-up went (x-query-startup).
#[derive(Default)]
struct StartupTimes {
    /// KVM's VM, guest memory, interrupts and the boot vCPUs.
    kvm: Duration,
    /// The device processes started, handshaken, set up, told the cold-plugged cores.
    devices: Duration,
    /// From `main` to vCPU 0 started, at the first power-on.
    vcpu0_started: Option<Duration>,
}

impl StartupTimes {
    fn to_json(&self) -> Value {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        json!({
            "kvm-ms": ms(self.kvm),
            "devices-ms": ms(self.devices),
            "vcpu0-started-ms": self.vcpu0_started.map(ms),
        })
    }
}

/// The DRC table of the machine: a CPU DRC per possible core, an LMB DRC per
/// 256 MiB of device memory.
fn drc_ranges(smp: &SmpConfig, layout: &MemoryLayout) -> Vec<DrcRange> {
    vec![
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
    ]
}

impl Vm {
    pub fn new(
        config: VmConfig,
        console_socket: Option<&crate::sockets::ClaimedSocket>,
        qmp: Arc<QmpServer>,
    ) -> Result<Vm, VmError> {
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
        let console = match &config.console {
            ConsoleConfig::Stdio => {
                let control = control.clone();
                Console::stdio(vty_interrupt, move || {
                    let _ = control.send(ControlMessage::ConsoleQuit);
                })?
            }
            ConsoleConfig::Socket(path) => match console_socket {
                Some(socket) => Console::socket(socket, vty_interrupt)?,
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
        let devices = Arc::new(DeviceProcesses::start(
            &ram,
            config.memory.max_size,
            [hotplug_interrupt, epow_interrupt],
            config.smp.threads_per_core,
            drc_ranges(&config.smp, &layout),
            config.sandbox.clone(),
            control.clone(),
        )?);
        startup.devices = devices_started.elapsed();
        let cpus = Arc::new(CpuTable::new(config.smp.max_cpus));
        let context = VcpuContext {
            ram: ram.memory().clone(),
            console,
            cpus: Arc::clone(&cpus),
            devices: Arc::clone(&devices),
            interrupts: Arc::clone(&interrupts),
            control: control.clone(),
        };
        let mut vm = Vm {
            vcpus: (0..config.smp.max_cpus).map(|_| None).collect(),
            cpus,
            context,
            devices,
            interrupts,
            cores: Cores::new(&config.smp),
            dimms: Dimms::new(&layout, config.memory.slots),
            qmp,
            control,
            inbox,
            deferred: VecDeque::new(),
            last_notification: 0,
            rejected_notifications: 0,
            ram,
            layout,
            smp: config.smp,
            name: config.name.clone(),
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
        vm.startup.devices += cold_plug_started.elapsed();
        Ok(vm)
    }

    /// Tells the hotplug controller about every plugged core, as configured,
    /// at start. A restarted controller resumes from its state region.
    fn cold_plug_present_cores(&mut self) -> Result<(), String> {
        for core in self.cores.present() {
            let device = self.cores.device(core).cloned().expect("a present core");
            self.hotplug_request(core_hotplug::Request::Plug {
                drcs: vec![self.cores.drc(core)],
                device: device.path,
                cold: true,
            })?;
        }
        Ok(())
    }

    /// What the QMP server needs to reach this VM.
    pub fn qmp_context(&self) -> QmpContext {
        QmpContext {
            control: self.control.clone(),
            cpus: Arc::clone(&self.cpus),
            name: self.name.clone(),
        }
    }

    /// Creates (or finds, after an earlier unplug: KVM cannot destroy vCPUs)
    /// the vCPUs of core slot `core`, parked, and marks them present.
    fn create_core_vcpus(&mut self, core: u32) -> Result<(), VmError> {
        for id in self.cores.vcpus(core) {
            if self.vcpus[id as usize].is_none() {
                let fd = self
                    .vm_fd
                    .create_vcpu(u64::from(id))
                    .map_err(kvm_call("KVM_CREATE_VCPU"))?;
                fd.set_cpuid2(&boot::cpuid_for(&self.kvm, id)?)
                    .map_err(kvm_call("KVM_SET_CPUID2"))?;
                let handle = VcpuHandle::spawn(id, fd, self.context.clone()).map_err(|source| {
                    VmError::Thread {
                        what: format!("vCPU {id}"),
                        source,
                    }
                })?;
                self.vcpus[id as usize] = Some(handle);
            }
            self.cpus.set_present(id, true);
        }
        Ok(())
    }

    /// A request to the hotplug controller; the error is for QMP or the log.
    /// A controller that is down waiting out its restart backoff is
    /// restarted now, and one that dies while it is asked is awaited and
    /// restarted: either way the request is sent again under the same id, so
    /// a successor that finds it applied (in its state region) answers it
    /// without applying it twice. A QMP command sees a slower answer.
    fn hotplug_request(&mut self, request: core_hotplug::Request) -> Result<(), String> {
        let kind = ProcessKind::HotplugController;
        let id = self.devices.hotplug.new_id();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let failure = match self.devices.hotplug.command_as(id, request.clone()) {
                Ok(()) => return Ok(()),
                Err(failure) => failure,
            };
            if attempts > MAX_HOTPLUG_ATTEMPTS {
                return Err(format!("{failure}, {attempts} times"));
            }
            match failure {
                DeviceFailure::Restarting(_) => {
                    log::info!("restarting the {} now: a request waits for it", kind.name());
                }
                DeviceFailure::Died(_) | DeviceFailure::CutOff { .. } => {
                    log::warn!("{failure} with request {id} in hand: it goes to the successor");
                    if !self.await_exit(kind) {
                        return Err(failure.to_string());
                    }
                }
                other => return Err(other.to_string()),
            }
            self.restart_device(kind);
        }
    }

    /// Waits (bounded) for the supervisor's report of a process that died
    /// while the control loop asked it, and acts on it; anything else that
    /// arrives meanwhile waits its turn.
    fn await_exit(&mut self, kind: ProcessKind) -> bool {
        let deadline = std::time::Instant::now() + EXIT_REPORT_WAIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.inbox.recv_timeout(left) {
                Ok(ControlMessage::DeviceExited {
                    kind: exited,
                    generation,
                    reason,
                }) if exited == kind => {
                    self.device_exited(kind, generation, &reason);
                    return self.devices.state(kind) == Some(State::Restarting);
                }
                Ok(other) => self.deferred.push_back(other),
                Err(_) => {
                    log::error!("the {} did not exit in time", kind.name());
                    return false;
                }
            }
        }
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
        let blob = fdt::build(&MachineDescription {
            smp: &self.smp,
            layout: &self.layout,
            present_cores: &present_cores,
            dimms: &dimms,
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

    fn power_on(&mut self) -> Result<(), VmError> {
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

    fn park_all(&self) {
        for vcpu in self.vcpus.iter().flatten() {
            vcpu.park();
        }
    }

    /// The VM ends: every vCPU parked, and QMP clients told why.
    fn shut_down(&self, guest: bool, reason: &str) {
        self.park_all();
        self.qmp
            .emit("SHUTDOWN", json!({"guest": guest, "reason": reason}));
    }

    /// Boots the guest and runs it until it powers off or QMP quits (Ok),
    /// or it crashes.
    pub fn run(mut self) -> Result<(), VmError> {
        self.power_on()?;
        loop {
            let message = match self.deferred.pop_front() {
                Some(message) => message,
                None => self
                    .inbox
                    .recv()
                    .map_err(|_| VmError::GuestCrashed("every vCPU thread is gone".into()))?,
            };
            match message {
                ControlMessage::PowerOff => {
                    log::info!("guest powered off");
                    self.shut_down(true, "guest-shutdown");
                    return Ok(());
                }
                ControlMessage::Quit => {
                    log::info!("quit requested over QMP");
                    self.shut_down(false, "host-qmp-quit");
                    return Ok(());
                }
                ControlMessage::ConsoleQuit => {
                    log::info!("Ctrl-a x on the console: ending the VM");
                    self.shut_down(false, "host-ui");
                    return Ok(());
                }
                ControlMessage::HostSignal(signal) => {
                    log::info!("{signal}: ending the VM");
                    self.shut_down(false, "host-signal");
                    return Ok(());
                }
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
                ControlMessage::PeerFailed {
                    peer,
                    generation,
                    reported_by,
                } => self.devices.peer_failed(peer, generation, reported_by),
                ControlMessage::Qmp {
                    command,
                    arguments,
                    reply,
                } => {
                    let answer = self.qmp_command(command, &arguments);
                    let _ = reply.send(answer);
                }
            }
        }
    }

    /// Machine reset. Pending unplugs complete here, in a fixed order: every
    /// vCPU is parked first, then the controller releases, then the cores go,
    /// then the event queue is emptied, then the guest is loaded again.
    fn reset(&mut self, by_guest: bool) -> Result<(), VmError> {
        log::info!(
            "machine reset requested by the {}",
            if by_guest { "guest" } else { "host" }
        );
        self.park_all();
        // A controller that is down (restarting or failed) cannot complete
        // pending unplugs; the machine resets all the same.
        match self.hotplug_request(core_hotplug::Request::Reset) {
            Ok(()) => self.await_reset_releases(),
            Err(error) => log::error!("reset without the hotplug controller: {error}"),
        }
        if let Err(error) = self.devices.eventlog.command(core_eventlog::Request::Reset) {
            log::error!("the event log did not reset: {error}");
        }
        self.interrupts.reset()?;
        self.ram.discard()?;
        self.power_on()?;
        let reason = if by_guest {
            "guest-reset"
        } else {
            "host-qmp-system-reset"
        };
        self.qmp
            .emit("RESET", json!({"guest": by_guest, "reason": reason}));
        Ok(())
    }

    /// Carries out the releases of a reset, which the controller notifies
    /// (the one path by which releases reach the core) before it says the
    /// reset is complete. Anything else that arrives meanwhile waits.
    fn await_reset_releases(&mut self) {
        let deadline = std::time::Instant::now() + ipc_proto::Link::CoreHotplug.reply_timeout();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.inbox.recv_timeout(left) {
                Ok(ControlMessage::Hotplug {
                    id,
                    notification: Notification::ResetComplete,
                }) if id > self.last_notification => {
                    self.last_notification = id;
                    return;
                }
                Ok(ControlMessage::Hotplug { id, notification }) => {
                    self.on_hotplug(id, notification)
                }
                Ok(other) => self.deferred.push_back(other),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    log::error!("the hotplug controller did not complete the reset in time");
                    return;
                }
            }
        }
    }

    /// The supervisor's part: report, then restart with backoff or give up.
    fn device_exited(&mut self, kind: ProcessKind, generation: u64, reason: &str) {
        let after = self.devices.exited(kind, generation, reason);
        self.after_exit(kind, reason, after);
    }

    fn after_exit(&mut self, kind: ProcessKind, reason: &str, after: AfterExit) {
        let pid = self.devices.pid(kind);
        match after {
            AfterExit::Ignore => {}
            AfterExit::RestartAfter(delay) => {
                log::error!(
                    "{} (pid {pid}) {reason}; restarting in {delay:?}",
                    kind.name()
                );
                self.qmp.emit(
                    "X_DEVICE_PROCESS_EXITED",
                    json!({"process": kind.name(), "pid": pid, "reason": reason,
                           "restarts": self.devices.restarts(kind), "action": "restart"}),
                );
                self.schedule_restart(kind, delay);
            }
            AfterExit::Failed => {
                log::error!(
                    "{} (pid {pid}) {reason}; it keeps dying: marked failed, the VM runs on without it",
                    kind.name()
                );
                self.qmp.emit(
                    "X_DEVICE_PROCESS_EXITED",
                    json!({"process": kind.name(), "pid": pid, "reason": reason,
                           "restarts": self.devices.restarts(kind), "action": "failed"}),
                );
            }
        }
    }

    /// Restarts `kind` after `delay`.
    fn schedule_restart(&self, kind: ProcessKind, delay: Duration) {
        let control = self.control.clone();
        let timer = std::thread::Builder::new()
            .name("restart-timer".into())
            .spawn(move || {
                std::thread::sleep(delay);
                let _ = control.send(ControlMessage::RestartDevice(kind));
            });
        if let Err(error) = timer {
            log::error!("cannot schedule the restart of {}: {error}", kind.name());
        }
    }

    /// Restarts `kind` together with every other process that is down:
    /// processes that died together come back together.
    fn restart_device(&mut self, kind: ProcessKind) {
        let group = match self.devices.restart(kind) {
            Ok(group) => group,
            Err((group, error)) if lacks_host_resources(&error) => {
                // Not the process's fault: no death is counted, and it is
                // tried again until the host has what it takes.
                let why = common::describe(&error);
                log::error!(
                    "cannot restart {} for lack of host resources ({why}); trying again in {RESOURCE_RETRY:?}",
                    names(&group)
                );
                for kind in group {
                    self.devices.restart_postponed(kind, &why);
                    self.schedule_restart(kind, RESOURCE_RETRY);
                }
                return;
            }
            Err((group, error)) => {
                let why = common::describe(&error);
                log::error!("cannot restart {}: {why}", names(&group));
                // Counts as another death: the backoff grows, then it fails.
                // The reason reaches QMP (`last-exit`, the exit event).
                let reason = format!("its restart did not come up: {why}");
                for kind in group {
                    let after = self.devices.restart_failed(kind, &reason);
                    self.after_exit(kind, &reason, after);
                }
                return;
            }
        };
        for kind in group {
            let pid = self.devices.pid(kind);
            log::info!("{} restarted as pid {pid}", kind.name());
            self.qmp.emit(
                "X_DEVICE_PROCESS_RESTARTED",
                json!({"process": kind.name(), "pid": pid, "restarts": self.devices.restarts(kind)}),
            );
        }
    }

    fn on_hotplug(&mut self, id: u64, notification: Notification) {
        if id <= self.last_notification {
            log::info!("the hotplug controller repeats notification {id}: already handled");
            return;
        }
        let outcome = match notification {
            Notification::Released(released) => self.release(&released),
            Notification::ResetComplete => {
                log::debug!("a late reset completion");
                Ok(())
            }
            Notification::UnplugRefused { device } => self.unplug_refused(&device),
        };
        match outcome {
            Ok(()) => self.last_notification = id,
            // Not recorded either: a lying controller cannot make the core
            // skip, as repeats, the real notifications that follow.
            Err(reason) => {
                self.rejected_notifications += 1;
                log::warn!(
                    "notification {id} of the hotplug controller rejected: it names {reason}"
                );
            }
        }
    }

    /// The guest refused to give back a device the core asked back.
    fn unplug_refused(&mut self, device: &str) -> Result<(), String> {
        let (id, asked) = self
            .plugged_device(device)
            .ok_or_else(|| format!("an unknown device {device}"))?;
        if !asked {
            return Err(format!("{device}, which no device_del asked back"));
        }
        log::warn!("Device hotunplug rejected by the guest for device {device}");
        self.qmp.emit(
            "DEVICE_UNPLUG_GUEST_ERROR",
            device_event(id.as_deref(), device),
        );
        Ok(())
    }

    /// The plugged core or DIMM named by QMP id or QOM path: its QMP id,
    /// and whether a device_del asked it back.
    fn plugged_device(&self, name: &str) -> Option<(Option<String>, bool)> {
        if let Some(core) = self.cores.find(name) {
            let device = self.cores.device(core)?;
            return Some((device.id.clone(), device.unplug_asked));
        }
        let dimm = self.dimms.find(name)?;
        Some((Some(dimm.id.clone()), dimm.unplug_asked))
    }

    /// A device the guest gave back (or a pending unplug at reset): its vCPUs
    /// stop for good (parked, their fds kept for a re-plug) and it goes.
    /// Only a device the core asked back goes, never the boot core.
    fn release(&mut self, released: &Released) -> Result<(), String> {
        if self.dimms.find(&released.device).is_some() {
            return self.release_dimm(&released.device);
        }
        let (core, device) = self.cores.remove_released(&released.device)?;
        for id in self.cores.vcpus(core) {
            self.cpus.set_present(id, false);
            if let Some(vcpu) = &self.vcpus[id as usize] {
                vcpu.park();
            }
        }
        log::info!("core {core} ({}) unplugged", device.path);
        self.qmp.emit(
            "DEVICE_DELETED",
            device_event(device.id.as_deref(), &device.path),
        );
        Ok(())
    }

    /// A command that needs the machine; its arguments were checked
    /// against its definition (`qmp::schema`).
    fn qmp_command(
        &mut self,
        command: Command,
        arguments: &Map<String, Value>,
    ) -> Result<Value, QmpError> {
        match command {
            Command::DeviceAdd => self.device_add(arguments),
            Command::ObjectAdd => self.object_add(arguments),
            Command::ObjectDel => self.object_del(arguments),
            Command::QueryMemoryDevices => Ok(self.query_memory_devices()),
            Command::QueryMemorySizeSummary => Ok(json!({
                "base-memory": self.layout.boot_ram,
                "plugged-memory": self.dimms.plugged_bytes(),
            })),
            Command::DeviceDel => self.device_del(arguments),
            Command::QueryHotpluggableCpus => Ok(self.query_hotpluggable_cpus()),
            Command::QueryCpusFast => Ok(self.query_cpus_fast()),
            Command::XQueryDrcs => self.query_drcs(),
            Command::XQueryEventLog => self.query_event_log(),
            Command::XQueryStartup => Ok(self.startup.to_json()),
            Command::XQueryDeviceProcesses => {
                let mut processes = self.devices.info();
                if let Some(controller) = processes.as_array_mut().and_then(|list| {
                    list.iter_mut()
                        .find(|p| p["kind"] == ProcessKind::HotplugController.name())
                }) {
                    controller["rejected-notifications"] = json!(self.rejected_notifications);
                }
                Ok(processes)
            }
            Command::XInjectFault => self.inject_fault(arguments),
            Command::XUpgradeDeviceProcess => self.upgrade_device_process(arguments),
            Command::XRestartDeviceProcess => self.restart_device_process(arguments),
            Command::SystemPowerdown => self.power_button(),
            Command::Stop => Ok(self.pause(true)),
            Command::Cont => Ok(self.pause(false)),
            other => Err(QmpError::generic(format!(
                "{} is answered by the QMP server, not the machine",
                other.name()
            ))),
        }
    }

    /// QMP `system_powerdown`: an EPOW power-off request to the guest,
    /// which powers off (`SHUTDOWN`) if it honours it, as Linux does.
    fn power_button(&mut self) -> Result<Value, QmpError> {
        self.devices
            .eventlog
            .command(core_eventlog::Request::PowerDown)
            .map_err(|failure| QmpError::generic(failure.to_string()))?;
        self.qmp.emit("POWERDOWN", json!({}));
        Ok(json!({}))
    }

    /// QMP `stop` (`true`) and `cont`: every vCPU holds before its next
    /// KVM_RUN, or goes on; `STOP`/`RESUME` when the state changes.
    fn pause(&mut self, pause: bool) -> Value {
        if self.cpus.is_paused() != pause {
            self.cpus.set_paused(pause);
            if pause {
                for vcpu in self.vcpus.iter().flatten() {
                    vcpu.wait_paused();
                }
            }
            self.qmp
                .emit(if pause { "STOP" } else { "RESUME" }, json!({}));
        }
        json!({})
    }

    fn device_add(&mut self, arguments: &Map<String, Value>) -> Result<Value, QmpError> {
        let (core_id, id) = match qmp_arguments::device_add(arguments)? {
            DeviceAdd::Dimm { id, memdev, addr } => return self.dimm_add(&id, &memdev, addr),
            DeviceAdd::Core { core_id, id } => (core_id, id),
        };
        let (core, device) = self
            .cores
            .prepare_plug(core_id, id.as_deref())
            .map_err(|e| QmpError {
                class: e.class,
                desc: e.desc,
            })?;
        self.create_core_vcpus(core)
            .map_err(|error| QmpError::generic(format!("cannot create the vCPUs: {error}")))?;
        let plug = core_hotplug::Request::Plug {
            drcs: vec![self.cores.drc(core)],
            device: device.path.clone(),
            cold: false,
        };
        if let Err(reason) = self.hotplug_request(plug) {
            for id in self.cores.vcpus(core) {
                self.cpus.set_present(id, false);
            }
            return Err(QmpError::generic(reason));
        }
        log::info!("core {core} plugged as {}", device.path);
        self.cores.plugged(core, device);
        Ok(json!({}))
    }

    fn device_del(&mut self, arguments: &Map<String, Value>) -> Result<Value, QmpError> {
        let name = qmp_arguments::device_del(arguments)?;
        // Asked back before the request goes: the controller may release
        // the device (one the guest never took) before it answers. A request
        // that failed may still have reached it: the device stays asked back.
        if let Some(dimm) = self.dimms.find(&name) {
            // Every request reaches the guest again (coalesced in the queue).
            let drcs = dimm.drcs();
            self.dimms.ask_unplug(&name);
            self.hotplug_request(core_hotplug::Request::UnplugRequest { drcs })
                .map_err(QmpError::generic)?;
            return Ok(json!({}));
        }
        let core = self.cores.prepare_unplug(&name).map_err(|e| QmpError {
            class: e.class,
            desc: e.desc,
        })?;
        self.cores.ask_unplug(core);
        // A device the guest never took is released at once, notified.
        self.hotplug_request(core_hotplug::Request::UnplugRequest {
            drcs: vec![self.cores.drc(core)],
        })
        .map_err(QmpError::generic)?;
        Ok(json!({}))
    }

    /// object-add of a memory backend: a sealed memfd of `size` bytes.
    fn object_add(&mut self, arguments: &Map<String, Value>) -> Result<Value, QmpError> {
        let BackendAdd { qom_type, id, size } = qmp_arguments::object_add(arguments)?;
        let room = self.layout.device_memory_end - self.layout.device_memory_start;
        if size == 0 || size > room {
            return Err(QmpError::generic(format!(
                "property 'size' of {qom_type} must be between 1 and {room} bytes (the device memory), not {size}"
            )));
        }
        let memfd = crate::memory::sealed_memfd("papervisor-dimm", size)
            .map_err(|error| QmpError::generic(common::describe(&error)))?;
        let memory = BackendMemory {
            memfd,
            plugged: None,
        };
        self.dimms
            .add_backend(&id, size, memory)
            .map_err(|e| QmpError {
                class: e.class,
                desc: e.desc,
            })?;
        Ok(json!({}))
    }

    fn object_del(&mut self, arguments: &Map<String, Value>) -> Result<Value, QmpError> {
        let id = qmp_arguments::object_del(arguments)?;
        self.dimms.remove_backend(&id).map_err(|e| QmpError {
            class: e.class,
            desc: e.desc,
        })?;
        Ok(json!({}))
    }

    /// The RTAS server's view of the DIMMs: each plugged one, plus `adding`.
    fn dimm_memory_table(
        &self,
        adding: Option<&Dimm>,
    ) -> Result<Vec<(MemoryRegion, OwnedFd)>, QmpError> {
        let mut table = Vec::new();
        for dimm in self.dimms.plugged_dimms().into_iter().chain(adding) {
            let Some(backend) = self.dimms.backend(&dimm.memdev) else {
                continue;
            };
            let fd = backend
                .memory
                .memfd
                .as_fd()
                .try_clone_to_owned()
                .map_err(|error| QmpError::generic(format!("cannot share a DIMM: {error}")))?;
            let region = MemoryRegion {
                guest_address: dimm.addr,
                size: dimm.size,
                file_offset: 0,
            };
            table.push((region, fd));
        }
        Ok(table)
    }

    /// Gives the RTAS server the memory of the plugged DIMMs, after one
    /// went or did not come.
    fn share_plugged_dimms(&self) -> Result<(), String> {
        let table = self.dimm_memory_table(None).map_err(|error| error.desc)?;
        self.devices
            .set_dimm_memory(table)
            .map_err(|failure| failure.to_string())
    }

    /// device_add of a DIMM: its memory is shown to the guest (KVM slot)
    /// and to the RTAS server before the controller tells the guest.
    fn dimm_add(&mut self, id: &str, memdev: &str, addr: Option<u64>) -> Result<Value, QmpError> {
        if self.cores.find(id).is_some() {
            return Err(QmpError::generic(format!("Duplicate device ID '{id}'")));
        }
        let dimm = self
            .dimms
            .prepare_plug(id, memdev, addr)
            .map_err(|e| QmpError {
                class: e.class,
                desc: e.desc,
            })?;
        let memfd = &self
            .dimms
            .backend(memdev)
            .ok_or_else(|| QmpError::generic("the backend went away"))?
            .memory
            .memfd;
        let memory = DimmMemory::plug(
            &self.vm_fd,
            memfd,
            dimm.size,
            FIRST_DIMM_KVM_SLOT + dimm.slot,
            dimm.addr,
        )
        .map_err(|error| QmpError::generic(common::describe(&error)))?;
        let undo = |vm: &Self, memory: DimmMemory| {
            if let Err(error) = memory.unplug(&vm.vm_fd) {
                log::error!("cannot take back a DIMM's memory: {error}");
            }
        };
        let table = match self.dimm_memory_table(Some(&dimm)) {
            Ok(table) => table,
            Err(error) => {
                undo(self, memory);
                return Err(error);
            }
        };
        if let Err(failure) = self.devices.set_dimm_memory(table) {
            undo(self, memory);
            // The table a successor gets at its set-up: without this DIMM.
            let _ = self.share_plugged_dimms();
            return Err(QmpError::generic(format!(
                "the RTAS server cannot map the DIMM: {failure}"
            )));
        }
        let plug = core_hotplug::Request::Plug {
            drcs: dimm.drcs(),
            device: dimm.path(),
            cold: false,
        };
        if let Err(reason) = self.hotplug_request(plug) {
            undo(self, memory);
            let _ = self.share_plugged_dimms();
            return Err(QmpError::generic(reason));
        }
        log::info!(
            "DIMM {} plugged: {:#x} bytes at {:#x}, slot {}",
            dimm.id,
            dimm.size,
            dimm.addr,
            dimm.slot
        );
        if let Some(backend) = self.dimms.backend_mut(memdev) {
            backend.memory.plugged = Some(memory);
        }
        self.dimms.plugged(dimm);
        Ok(json!({}))
    }

    /// Every LMB of the DIMM went back to the platform (or a reset completed
    /// its unplug): the guest can no longer reach it, so its KVM slot, the
    /// RTAS server's mapping and the core's go, and its backend is free.
    fn release_dimm(&mut self, device: &str) -> Result<(), String> {
        let dimm = self.dimms.remove_released(device)?;
        let memory = self
            .dimms
            .backend_mut(&dimm.memdev)
            .and_then(|backend| backend.memory.plugged.take());
        if let Some(memory) = memory {
            if let Err(error) = memory.unplug(&self.vm_fd) {
                log::error!("DIMM {}: {}", dimm.id, common::describe(&error));
            }
        }
        if let Err(error) = self.share_plugged_dimms() {
            log::error!("the RTAS server did not drop DIMM {}: {error}", dimm.id);
        }
        log::info!("DIMM {} unplugged", dimm.id);
        self.qmp
            .emit("DEVICE_DELETED", device_event(Some(&dimm.id), &dimm.path()));
        Ok(())
    }

    /// QEMU's shape.
    fn query_memory_devices(&self) -> Value {
        let dimms: Vec<Value> = self
            .dimms
            .plugged_dimms()
            .into_iter()
            .map(|dimm| {
                json!({"type": "dimm", "data": {
                    "id": dimm.id, "addr": dimm.addr, "size": dimm.size,
                    "slot": dimm.slot, "node": 0,
                    "memdev": format!("/objects/{}", dimm.memdev),
                    "hotplugged": true, "hotpluggable": true,
                }})
            })
            .collect();
        Value::Array(dimms)
    }

    fn query_hotpluggable_cpus(&self) -> Value {
        let threads = self.cores.threads();
        let cpus: Vec<Value> = (0..self.cores.max_cores())
            .rev()
            .map(|core| {
                let mut entry = json!({
                    "type": CORE_DRIVER,
                    "vcpus-count": threads,
                    "props": {"core-id": core * threads},
                });
                if let Some(CoreDevice { path, .. }) = self.cores.device(core) {
                    entry["qom-path"] = json!(path);
                }
                entry
            })
            .collect();
        Value::Array(cpus)
    }

    /// Every vCPU of a plugged core, with the core's QOM path.
    fn query_cpus_fast(&self) -> Value {
        let threads = self.cores.threads();
        let cpus: Vec<Value> = self
            .cpus
            .info()
            .into_iter()
            .filter_map(|vcpu| {
                let core = vcpu.id / threads;
                let thread = vcpu.id % threads;
                let device = self.cores.device(core)?;
                Some(json!({
                    "cpu-index": vcpu.id,
                    "qom-path": format!("{}/thread[{thread}]", device.path),
                    "thread-id": vcpu.thread_id,
                    "props": {"core-id": core * threads, "thread-id": thread},
                    "target": "x86_64",
                }))
            })
            .collect();
        Value::Array(cpus)
    }

    fn query_drcs(&self) -> Result<Value, QmpError> {
        let mut rows = Vec::new();
        let mut from = Some(0);
        while let Some(start) = from {
            match self
                .devices
                .hotplug
                .query(core_hotplug::Request::ListDrcs { from: start })
            {
                Ok(core_hotplug::Reply::Drcs { rows: page, next }) => {
                    if next.is_some_and(|n| n <= start) {
                        return Err(QmpError::generic("the hotplug controller pages backwards"));
                    }
                    rows.extend(page);
                    from = next;
                }
                Err(failure) => {
                    return Err(QmpError::generic(format!(
                        "the hotplug controller did not list its DRCs: {failure}"
                    )))
                }
            }
        }
        let rows: Vec<Value> = rows
            .into_iter()
            .map(|row| {
                let id = row
                    .device
                    .as_deref()
                    .and_then(|path| self.plugged_device(path))
                    .and_then(|(id, _)| id);
                json!({
                    "index": row.index.0,
                    "type": row.index.kind().map(|k| k.type_name()),
                    "name": row.index.name(),
                    "state": row.state.name(),
                    "device": id,
                    "path": row.device,
                    "unplug-requested": row.unplug_requested,
                })
            })
            .collect();
        Ok(Value::Array(rows))
    }

    #[cfg(feature = "fault-injection")]
    fn inject_fault(&mut self, arguments: &Map<String, Value>) -> Result<Value, QmpError> {
        let kind = process_kind(arguments)?;
        let text = |name: &str| arguments.get(name).and_then(Value::as_str);
        match (text("fault"), text("point"), text("action")) {
            (Some(name), None, None) => {
                let fault = named(&ipc_proto::Fault::ALL, "fault", name)?;
                use ipc_proto::Fault;
                if !matches!(fault, Fault::Garbage | Fault::Lie) {
                    self.devices
                        .refuse_in_process(name)
                        .map_err(|error| QmpError::generic(format!("x-inject-fault: {error}")))?;
                }
                match self.devices.inject(kind, fault) {
                    Ok(outcome) => Ok(json!({"survived": true, "outcome": outcome})),
                    Err(error) => Ok(json!({"survived": false, "outcome": error})),
                }
            }
            (None, Some(point), Some(action)) => {
                use ipc_proto::control::{ArmedFault, FaultAction, FaultPoint};
                let request = text("request").map(str::to_string);
                if request
                    .as_ref()
                    .is_some_and(|r| r.len() > ipc_proto::control::MAX_FAULT_REQUEST_NAME)
                {
                    return Err(QmpError::generic("Parameter 'request' is too long"));
                }
                let fault = ArmedFault {
                    point: named(&FaultPoint::ALL, "point", point)?,
                    action: named(&FaultAction::ALL, "action", action)?,
                    request,
                };
                self.devices
                    .arm_fault(kind, fault)
                    .map(|()| json!({"armed": true}))
                    .map_err(|error| QmpError::generic(format!("x-inject-fault: {error}")))
            }
            _ => Err(QmpError::generic(
                "x-inject-fault takes either 'fault', or 'point' and 'action' (and 'request')",
            )),
        }
    }

    /// x-upgrade-device-process: the process of a kind replaced by another
    /// binary on the same state region, at a quiet point (every vCPU held
    /// outside KVM_RUN and outside any call, for the few milliseconds it
    /// takes; the guest sees nothing else).
    fn upgrade_device_process(
        &mut self,
        arguments: &Map<String, Value>,
    ) -> Result<Value, QmpError> {
        let kind = process_kind(arguments)?;
        let path = arguments
            .get("path")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let was_paused = self.cpus.is_paused();
        self.cpus.set_paused(true);
        for vcpu in self.vcpus.iter().flatten() {
            vcpu.wait_paused();
        }
        let upgraded = self.devices.upgrade(kind, std::path::PathBuf::from(path));
        if !was_paused {
            self.cpus.set_paused(false);
        }
        match upgraded {
            Ok(pid) => {
                self.qmp.emit(
                    "X_DEVICE_PROCESS_UPGRADED",
                    json!({"process": kind.name(), "pid": pid, "path": path}),
                );
                Ok(json!({"pid": pid}))
            }
            Err(error) => {
                let error = common::describe(&error);
                log::error!("{error}; the running one keeps serving");
                Err(QmpError::generic(format!(
                    "{error}; the running one keeps serving"
                )))
            }
        }
    }

    /// x-restart-device-process: the operator's way back for a process
    /// the supervisor gave up on (or one waiting out its backoff): it is
    /// restarted now, with its peers that are down, and its crash history
    /// starts over. Answers once it serves (or why it did not come up).
    fn restart_device_process(
        &mut self,
        arguments: &Map<String, Value>,
    ) -> Result<Value, QmpError> {
        let kind = process_kind(arguments)?;
        self.devices
            .revive(kind)
            .map_err(|error| QmpError::generic(format!("x-restart-device-process: {error}")))?;
        log::info!("{}: restart asked by the operator", kind.name());
        self.restart_device(kind);
        match self.devices.state(kind) {
            Some(State::Running) => Ok(json!({"pid": self.devices.pid(kind)})),
            _ => Err(QmpError::generic(format!(
                "the {} did not come up: {}",
                kind.name(),
                self.devices.last_exit(kind).unwrap_or_default()
            ))),
        }
    }

    #[cfg(not(feature = "fault-injection"))]
    fn inject_fault(&mut self, _: &Map<String, Value>) -> Result<Value, QmpError> {
        Err(QmpError::generic(
            "x-inject-fault: this build has no fault injection (build with --features fault-injection)",
        ))
    }

    fn query_event_log(&self) -> Result<Value, QmpError> {
        match self.devices.eventlog.query(core_eventlog::Request::List) {
            Ok(core_eventlog::Reply::Queued(events)) => Ok(Value::Array(
                events
                    .into_iter()
                    .map(|queued| {
                        let event = match queued {
                            core_eventlog::QueuedEvent::Hotplug(event) => event,
                            core_eventlog::QueuedEvent::PowerDown => {
                                return json!({"action": "power-off", "resource": "epow"})
                            }
                        };
                        let action = match event.action {
                            HotplugAction::Add => "add",
                            HotplugAction::Remove => "remove",
                        };
                        match event.target {
                            HotplugTarget::CpuByIndex(drc) => {
                                json!({"action": action, "resource": "cpu", "drc": drc.0})
                            }
                            HotplugTarget::LmbsCountIndexed { count, first } => json!({
                                "action": action, "resource": "memory", "drc": first.0, "count": count
                            }),
                        }
                    })
                    .collect(),
            )),
            Err(failure) => Err(QmpError::generic(format!(
                "the event log did not list its queue: {failure}"
            ))),
        }
    }
}

/// How long a restart that lacked host resources waits before it tries again.
const RESOURCE_RETRY: Duration = Duration::from_secs(1);

/// Whether `error` came from a host out of descriptors, memory or
/// processes (of the core's limits or the system's), not from the process.
fn lacks_host_resources(error: &(dyn std::error::Error + 'static)) -> bool {
    use nix::errno::Errno;
    let mut cause = Some(error);
    while let Some(error) = cause {
        let errno = error
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            .map(Errno::from_raw)
            .or_else(|| error.downcast_ref::<Errno>().copied());
        if matches!(
            errno,
            Some(Errno::EMFILE | Errno::ENFILE | Errno::ENOMEM | Errno::EAGAIN | Errno::ENOSPC)
        ) {
            return true;
        }
        cause = error.source();
    }
    false
}

/// Process kinds as a list in words.
fn names(kinds: &[ProcessKind]) -> String {
    kinds
        .iter()
        .map(|k| k.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The data of DEVICE_DELETED and DEVICE_UNPLUG_GUEST_ERROR: `device` only
/// when the device has an id, as QEMU's schema says.
fn device_event(id: Option<&str>, path: &str) -> Value {
    match id {
        Some(id) => json!({"device": id, "path": path}),
        None => json!({"path": path}),
    }
}

/// The device-process kind QMP parameter `process` names.
fn process_kind(arguments: &Map<String, Value>) -> Result<ProcessKind, QmpError> {
    let process = arguments
        .get("process")
        .and_then(Value::as_str)
        .unwrap_or_default();
    ProcessKind::ALL
        .into_iter()
        .find(|k| k.name() == process)
        .ok_or_else(|| {
            QmpError::generic(format!(
                "Parameter 'process' expects rtas-server, hotplug-controller or event-log, not '{process}'"
            ))
        })
}

/// The value named `name` among `all` (QMP parameter `parameter`).
#[cfg(feature = "fault-injection")]
fn named<T: Copy>(all: &[(&str, T)], parameter: &str, name: &str) -> Result<T, QmpError> {
    all.iter()
        .find(|(n, _)| *n == name)
        .map(|(_, value)| *value)
        .ok_or_else(|| {
            let names: Vec<&str> = all.iter().map(|(n, _)| *n).collect();
            QmpError::generic(format!(
                "Parameter '{parameter}' expects one of {}, not '{name}'",
                names.join(", ")
            ))
        })
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
    fn device_events_name_the_device_only_when_it_has_an_id() {
        assert_eq!(
            device_event(Some("c1"), "/machine/peripheral/c1"),
            json!({"device": "c1", "path": "/machine/peripheral/c1"})
        );
        assert_eq!(
            device_event(None, "/machine/peripheral-anon/device[0]"),
            json!({"path": "/machine/peripheral-anon/device[0]"})
        );
    }

    #[test]
    fn a_restart_without_descriptors_or_memory_is_the_hosts_fault() {
        let channel = DeviceError::Channel(
            ipc_proto::Link::CoreRtas,
            ipc_proto::channel::ChannelError::Io(std::io::Error::from_raw_os_error(
                nix::libc::EMFILE,
            )),
        );
        assert!(lacks_host_resources(&channel));
        let spawn = DeviceError::Spawn {
            kind: "rtas-server",
            source: crate::devices::spawn::SpawnError::Exec {
                path: "/x".into(),
                source: std::io::Error::from_raw_os_error(nix::libc::ENOMEM),
            },
        };
        assert!(lacks_host_resources(&spawn));
        // A process that failed its handshake is its own fault.
        let handshake = DeviceError::Handshake {
            kind: "rtas-server",
            source: ipc_proto::channel::ChannelError::HungUp,
        };
        assert!(!lacks_host_resources(&handshake));
    }

    #[test]
    fn builtin_guest_is_a_loadable_elf() {
        assert_eq!(crate::config::check_guest_elf(BUILTIN_GUEST), Ok(()));
    }
}
