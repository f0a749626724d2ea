//! vCPU threads. Each vCPU has a thread that parks until it is told where to
//! start, runs the guest, handles its exits (the hypercall doorbell), and
//! parks again when the core asks (reset, power-off) or the guest stops it
//! (RTAS stop-self).

mod mmio;

use crate::boot;
use crate::console::{Console, MAX_READ};
use crate::control::ControlMessage;
use crate::devices::proxy::DeviceFailure;
use crate::devices::DeviceProcesses;
use crate::fdt::VTY_TERMNO;
use crate::hcall::{
    Hcall, HcallResult, H_BUSY, H_FUNCTION, H_GET_TERM_CHAR, H_HARDWARE, H_PARAMETER,
    H_PUT_TERM_CHAR, H_RTAS, H_SUCCESS,
};
use crate::interrupts::InterruptRouter;
use crate::layout::HCALL_DOORBELL_PORT;
use common::lock;
use ipc_proto::link::core_rtas::{self, CpuSnapshot, PlatformRequest, ARGS_CHECKED};
use ipc_proto::papr::REAL_ADDRESS_MASK;
use kvm_bindings::{kvm_mp_state, KVM_MP_STATE_RUNNABLE};
use kvm_ioctls::{VcpuExit, VcpuFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::signal::{Killable, SIGRTMIN};

/// The argument cells an RTAS call's trace record shows, at most.
const TRACED_ARGS: u32 = 8;

/// The signal that kicks a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

/// Where a parked vCPU starts when it is released.
#[derive(Clone, Copy, Debug)]
pub struct StartPoint {
    /// Where it starts executing.
    pub entry: u64,
    /// RDI (the device tree's address).
    pub rdi: u64,
    /// RSI.
    pub rsi: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum RunState {
    Parked,
    StartRequested,
    Running,
    Exit,
}

/// The state of one vCPU that other threads may read or change.
pub struct VcpuControl {
    state: Mutex<(RunState, Option<StartPoint>)>,
    changed: Condvar,
    /// Read before every KVM_RUN: the core wants this vCPU parked.
    park_requested: AtomicBool,
    /// The host thread id, for QMP (0 until the thread runs).
    thread_id: AtomicI32,
    /// Its core is plugged. A vCPU that is not present never starts.
    present: AtomicBool,
    /// The thread holds at the pause gate (QMP `stop`).
    holding: AtomicBool,
    /// Its exits, by reason.
    stats: crate::stats::VcpuStats,
}

impl VcpuControl {
    fn new() -> VcpuControl {
        VcpuControl {
            state: Mutex::new((RunState::Parked, None)),
            changed: Condvar::new(),
            holding: AtomicBool::new(false),
            park_requested: AtomicBool::new(false),
            thread_id: AtomicI32::new(0),
            present: AtomicBool::new(false),
            stats: Default::default(),
        }
    }

    fn is_running(&self) -> bool {
        matches!(
            lock(&self.state).0,
            RunState::Running | RunState::StartRequested
        )
    }
}

/// Whether the vCPUs run, and why not: QEMU's `RunState`s that this
/// machine has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunStatus {
    /// The guest runs.
    Running,
    /// QMP `stop`.
    Paused,
    /// Started with `--paused`: not run yet, until `cont`.
    Prelaunch,
    /// The guest powered off under `--no-shutdown`.
    Shutdown,
}

impl RunStatus {
    /// Every status.
    pub const ALL: [RunStatus; 4] = [
        RunStatus::Running,
        RunStatus::Paused,
        RunStatus::Prelaunch,
        RunStatus::Shutdown,
    ];

    /// Its QMP name.
    pub const fn qmp_name(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Paused => "paused",
            RunStatus::Prelaunch => "prelaunch",
            RunStatus::Shutdown => "shutdown",
        }
    }
}

/// Every vCPU's shared state, indexed by vCPU id.
pub struct CpuTable {
    vcpus: Vec<VcpuControl>,
    /// Anything but running: every vCPU holds before its next KVM_RUN
    /// until `cont`.
    status: Mutex<RunStatus>,
    resumed: Condvar,
}

/// One vCPU as QMP reports it.
pub struct VcpuInfo {
    /// The vCPU id.
    pub id: u32,
    /// Its thread's id.
    pub thread_id: i32,
}

impl CpuTable {
    /// A table of `count` vCPUs, none present, running or paused.
    pub fn new(count: u32) -> CpuTable {
        CpuTable {
            vcpus: (0..count).map(|_| VcpuControl::new()).collect(),
            status: Mutex::new(RunStatus::Running),
            resumed: Condvar::new(),
        }
    }

    /// Pauses (`true`) or resumes the guest. Pausing returns at once; each
    /// vCPU holds at its next exit ([`VcpuHandle::wait_paused`]).
    pub fn set_paused(&self, paused: bool) {
        self.set_status(if paused {
            RunStatus::Paused
        } else {
            RunStatus::Running
        });
    }

    /// Holds the vCPUs (or lets them go) for `status`'s reason.
    pub fn set_status(&self, status: RunStatus) {
        *lock(&self.status) = status;
        self.resumed.notify_all();
    }

    /// Whether QMP stopped the vCPUs.
    pub fn is_paused(&self) -> bool {
        self.status() != RunStatus::Running
    }

    /// The exits of vCPU `id` (none for an id beyond the table).
    pub fn vcpu_stats(&self, id: u32) -> Option<&crate::stats::VcpuStats> {
        self.vcpus.get(id as usize).map(|vcpu| &vcpu.stats)
    }

    /// What QMP `query-status` says.
    pub fn status(&self) -> RunStatus {
        *lock(&self.status)
    }

    /// Marks vCPU `id` as plugged (or not).
    pub fn set_present(&self, id: u32, present: bool) {
        if let Some(vcpu) = self.vcpus.get(id as usize) {
            vcpu.present.store(present, Ordering::SeqCst);
        }
    }

    /// The vCPUs' states, for an RTAS call.
    pub fn snapshot(&self) -> CpuSnapshot {
        let mut snapshot = CpuSnapshot::default();
        for (id, vcpu) in self.vcpus.iter().enumerate() {
            if !vcpu.present.load(Ordering::SeqCst) {
                continue;
            }
            snapshot.present |= 1 << id;
            if vcpu.is_running() {
                snapshot.running |= 1 << id;
            }
        }
        snapshot
    }

    /// Every present vCPU, for query-cpus-fast.
    pub fn info(&self) -> Vec<VcpuInfo> {
        self.vcpus
            .iter()
            .enumerate()
            .filter(|(_, vcpu)| vcpu.present.load(Ordering::SeqCst))
            .map(|(id, vcpu)| VcpuInfo {
                id: id as u32,
                thread_id: vcpu.thread_id.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Releases a parked vCPU at `start`; false if it is not parked or its
    /// core is not plugged.
    pub fn start(&self, id: u32, start: StartPoint) -> bool {
        let Some(vcpu) = self.vcpus.get(id as usize) else {
            return false;
        };
        if !vcpu.present.load(Ordering::SeqCst) {
            return false;
        }
        let mut state = lock(&vcpu.state);
        if state.0 != RunState::Parked {
            return false;
        }
        *state = (RunState::StartRequested, Some(start));
        vcpu.changed.notify_all();
        true
    }
}

/// The VM-wide things a vCPU needs to answer hypercalls.
#[derive(Clone)]
pub struct VcpuContext {
    /// Boot RAM, where the guest's `rtas_args` blocks are: the core reads a
    /// call's token itself before it acts on the RTAS server's answer.
    pub ram: GuestMemoryMmap,
    /// The guest's console.
    pub console: Arc<Console>,
    /// The vCPU table.
    pub cpus: Arc<CpuTable>,
    /// The device processes (RTAS calls).
    pub devices: Arc<DeviceProcesses>,
    /// Interrupt routing (set-xive).
    pub interrupts: Arc<InterruptRouter>,
    /// The control loop.
    pub control: Sender<ControlMessage>,
    /// The VM's counters (RTAS calls).
    pub stats: Arc<crate::stats::VmStats>,
}

/// Owns a vCPU thread.
pub struct VcpuHandle {
    id: u32,
    cpus: Arc<CpuTable>,
    thread: Option<JoinHandle<()>>,
}

impl VcpuHandle {
    /// Starts vCPU `id` on a thread of its own, parked.
    pub fn spawn(id: u32, fd: VcpuFd, context: VcpuContext) -> std::io::Result<VcpuHandle> {
        let cpus = Arc::clone(&context.cpus);
        let (started, thread_id) = std::sync::mpsc::sync_channel(1);
        let thread = thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                let _ = started.send(nix::unistd::gettid().as_raw());
                crate::seccomp::confine_or_exit(crate::seccomp::ThreadKind::Vcpu);
                Vcpu { id, fd, context }.run()
            })?;
        // Known before device_add answers: a client that lists the CPUs
        // next (libvirt does) finds the new one's thread.
        if let Ok(tid) = thread_id.recv_timeout(Duration::from_secs(5)) {
            cpus.vcpus[id as usize]
                .thread_id
                .store(tid, Ordering::Relaxed);
        }
        Ok(VcpuHandle {
            id,
            cpus,
            thread: Some(thread),
        })
    }

    fn control(&self) -> &VcpuControl {
        &self.cpus.vcpus[self.id as usize]
    }

    /// Stops the vCPU and waits until its thread is out of KVM_RUN.
    pub fn park(&self) {
        let control = self.control();
        control.park_requested.store(true, Ordering::SeqCst);
        let mut state = lock(&control.state);
        if state.0 == RunState::StartRequested {
            state.0 = RunState::Parked;
        }
        while state.0 == RunState::Running {
            // The flag is checked before each KVM_RUN; a signal interrupts a
            // KVM_RUN already in progress. Repeat in case the signal landed
            // between the check and the ioctl.
            self.kick();
            state = control
                .changed
                .wait_timeout(state, Duration::from_millis(5))
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        control.park_requested.store(false, Ordering::SeqCst);
    }

    /// Interrupts a KVM_RUN in progress on the vCPU's thread.
    fn kick(&self) {
        if let Some(thread) = &self.thread {
            if let Err(error) = thread.kill(kick_signal()) {
                log::warn!("vcpu{}: cannot signal its thread: {error}", self.id);
            }
        }
    }

    /// After [`CpuTable::set_paused`]: kicks the vCPU out of KVM_RUN and
    /// waits until it holds (or is not running at all).
    pub fn wait_paused(&self) {
        let control = self.control();
        loop {
            let state = lock(&control.state);
            if state.0 != RunState::Running || control.holding.load(Ordering::SeqCst) {
                return;
            }
            self.kick();
            let _ = control
                .changed
                .wait_timeout(state, Duration::from_millis(5))
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

impl Drop for VcpuHandle {
    fn drop(&mut self) {
        self.park();
        {
            let control = self.control();
            let mut state = lock(&control.state);
            state.0 = RunState::Exit;
            control.changed.notify_all();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the run loop does after an exit.
enum Next {
    Continue,
    Park,
}

struct Vcpu {
    id: u32,
    fd: VcpuFd,
    context: VcpuContext,
}

/// vCPU `id` as its MMIO exits need it (borrowing its context, not the
/// vCPU, whose fd the exit holds).
fn mmio(id: u32, context: &VcpuContext) -> mmio::Mmio<'_> {
    mmio::Mmio {
        id,
        devices: &context.devices,
        control: &context.control,
        park_requested: &context.cpus.vcpus[id as usize].park_requested,
    }
}

impl Vcpu {
    fn control(&self) -> &VcpuControl {
        &self.context.cpus.vcpus[self.id as usize]
    }

    fn run(mut self) {
        while let Some(start) = self.wait_for_start() {
            if let Err(error) = self.prepare(start) {
                self.crash(format!("vcpu{}: cannot set up registers: {error}", self.id));
            } else {
                self.run_guest();
            }
            let control = self.control();
            let mut state = lock(&control.state);
            if state.0 == RunState::Running {
                state.0 = RunState::Parked;
            }
            control.changed.notify_all();
        }
    }

    fn wait_for_start(&self) -> Option<StartPoint> {
        let control = self.control();
        let mut state = lock(&control.state);
        loop {
            match *state {
                (RunState::Exit, _) => return None,
                (RunState::StartRequested, Some(start)) => {
                    state.0 = RunState::Running;
                    control.changed.notify_all();
                    return Some(start);
                }
                _ => {
                    state = control
                        .changed
                        .wait(state)
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                }
            }
        }
    }

    fn prepare(&self, start: StartPoint) -> Result<(), boot::BootError> {
        boot::enter_long_mode(&self.fd, start.entry, start.rdi, start.rsi)?;
        // With the in-kernel LAPIC, vCPUs other than the BSP wait for INIT/SIPI
        // unless told they are runnable; PAPR starts CPUs with RTAS instead.
        self.fd
            .set_mp_state(kvm_mp_state {
                mp_state: KVM_MP_STATE_RUNNABLE,
            })
            .map_err(|source| boot::BootError::Kvm {
                call: "KVM_SET_MP_STATE",
                source,
            })
    }

    fn crash(&self, reason: String) {
        let _ = self
            .context
            .control
            .send(ControlMessage::GuestCrashed(reason));
    }

    /// Holds while the guest is paused (QMP `stop`), unless the core wants
    /// the vCPU parked.
    fn hold_while_paused(&self) {
        let control = self.control();
        let table = &self.context.cpus;
        let mut paused = lock(&table.status);
        if *paused == RunStatus::Running {
            return;
        }
        control.holding.store(true, Ordering::SeqCst);
        {
            let _state = lock(&control.state);
            control.changed.notify_all();
        }
        while *paused != RunStatus::Running && !control.park_requested.load(Ordering::SeqCst) {
            paused = table
                .resumed
                .wait_timeout(paused, Duration::from_millis(5))
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        control.holding.store(false, Ordering::SeqCst);
    }

    fn run_guest(&mut self) {
        loop {
            self.hold_while_paused();
            if self.control().park_requested.load(Ordering::SeqCst) {
                return;
            }
            let exit = match self.fd.run() {
                Ok(exit) => exit,
                Err(error)
                    if error.errno() == nix::libc::EINTR || error.errno() == nix::libc::EAGAIN =>
                {
                    continue
                }
                Err(error) => {
                    self.crash(format!("vcpu{}: KVM_RUN failed: {error}", self.id));
                    return;
                }
            };
            let crash = |reason: String| {
                let _ = self
                    .context
                    .control
                    .send(ControlMessage::GuestCrashed(reason));
                Next::Park
            };
            use crate::stats::Exit;
            let reason = match &exit {
                VcpuExit::IoOut(HCALL_DOORBELL_PORT, _) => Exit::Hypercall,
                VcpuExit::IoOut(..) | VcpuExit::IoIn(..) => Exit::Io,
                VcpuExit::MmioRead(..) | VcpuExit::MmioWrite(..) => Exit::Mmio,
                _ => Exit::Other,
            };
            self.context.cpus.vcpus[self.id as usize].stats.exit(reason);
            let next = match exit {
                VcpuExit::IoOut(HCALL_DOORBELL_PORT, _) => self.doorbell(),
                VcpuExit::IoOut(port, data) => {
                    log::debug!(
                        "vcpu{}: ignored write of {data:?} to port {port:#x}",
                        self.id
                    );
                    Next::Continue
                }
                VcpuExit::IoIn(port, data) => {
                    log::debug!("vcpu{}: read from unknown port {port:#x}", self.id);
                    data.fill(0xff);
                    Next::Continue
                }
                VcpuExit::MmioRead(address, data) => {
                    mmio(self.id, &self.context).read(address, data);
                    Next::Continue
                }
                VcpuExit::MmioWrite(address, data) => {
                    mmio(self.id, &self.context).write(address, data);
                    Next::Continue
                }
                VcpuExit::Shutdown => {
                    let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or_default();
                    crash(format!(
                        "vcpu{}: guest triple fault (rip {rip:#x})",
                        self.id
                    ))
                }
                VcpuExit::InternalError => {
                    let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or_default();
                    crash(format!(
                        "vcpu{}: KVM internal error at rip {rip:#x} (an instruction KVM cannot emulate, e.g. SSE at CPL0)",
                        self.id
                    ))
                }
                other => crash(format!("vcpu{}: unexpected exit {other:?}", self.id)),
            };
            if let Next::Park = next {
                return;
            }
        }
    }

    fn doorbell(&mut self) -> Next {
        let mut regs = match self.fd.get_regs() {
            Ok(regs) => regs,
            Err(error) => {
                self.crash(format!("vcpu{}: cannot read registers: {error}", self.id));
                return Next::Park;
            }
        };
        let call = Hcall::from_regs(&regs);
        let (result, outputs, next) = self.hcall(call);
        result.write_to(&mut regs, outputs);
        if let Err(error) = self.fd.set_regs(&regs) {
            self.crash(format!("vcpu{}: cannot write registers: {error}", self.id));
            return Next::Park;
        }
        next
    }

    fn hcall(&self, call: Hcall) -> (HcallResult, usize, Next) {
        let console = &self.context.console;
        match call.number {
            H_PUT_TERM_CHAR => {
                let [termno, len, hi, lo, ..] = call.args;
                if termno != u64::from(VTY_TERMNO) || len > MAX_READ as u64 {
                    return (HcallResult::status(H_PARAMETER), 0, Next::Continue);
                }
                let mut bytes = [0u8; MAX_READ];
                bytes[..8].copy_from_slice(&hi.to_be_bytes());
                bytes[8..].copy_from_slice(&lo.to_be_bytes());
                console.write(&bytes[..len as usize]);
                (HcallResult::status(H_SUCCESS), 0, Next::Continue)
            }
            H_GET_TERM_CHAR => {
                if call.args[0] != u64::from(VTY_TERMNO) {
                    return (HcallResult::status(H_PARAMETER), 0, Next::Continue);
                }
                let mut bytes = [0u8; MAX_READ];
                let len = console.read(&mut bytes);
                let hi = u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
                let lo = u64::from_be_bytes(bytes[8..].try_into().expect("8 bytes"));
                let result = HcallResult {
                    status: H_SUCCESS,
                    outputs: [len as u64, hi, lo, 0, 0, 0],
                };
                (result, 3, Next::Continue)
            }
            H_RTAS => {
                let args_address = call.args[0];
                let call = core_rtas::Request::Call {
                    caller: self.id,
                    args_address,
                    cpus: self.context.cpus.snapshot(),
                };
                let control = self.control();
                let parking = || control.park_requested.load(Ordering::SeqCst);
                let started = std::time::Instant::now();
                let id = self.context.devices.rtas_call_id();
                let answer = self.context.devices.rtas_call(id, call, &parking);
                let took = started.elapsed();
                let name = self.call_name(args_address);
                self.context.stats.rtas_call(name, took);
                crate::trace::record(ipc_proto::control::trace_point::RTAS_CALL, || {
                    serde_json::json!({
                        "vcpu": self.id,
                        "request": id,
                        "call": name,
                        "args": self.call_args(args_address, TRACED_ARGS),
                        "at": args_address,
                        "answer": match &answer {
                            Ok(reply) => format!("{reply:?}"),
                            Err(failure) => failure.to_string(),
                        },
                        "status": self.call_status(args_address),
                        "took-us": took.as_micros() as u64,
                    })
                });
                match answer {
                    Ok(core_rtas::Reply::CallDone { request }) => {
                        let request = request.filter(|request| {
                            let asked = self.asked_by_guest(args_address, request);
                            if !asked {
                                log::warn!(
                                    "vcpu{}: the RTAS server answered the call at {:#x} with {request:?}, which the call does not ask for: ignored",
                                    self.id,
                                    args_address
                                );
                            }
                            asked
                        });
                        let next = self.carry_out(request);
                        (HcallResult::status(H_SUCCESS), 0, next)
                    }
                    Ok(core_rtas::Reply::CallRefused(refusal)) => {
                        // The RTAS server already logged why.
                        log::debug!("vcpu{}: RTAS call refused: {refusal}", self.id);
                        (HcallResult::status(H_PARAMETER), 0, Next::Continue)
                    }
                    // A new server is on its way: the guest may try again.
                    Err(
                        DeviceFailure::Restarting(_)
                        | DeviceFailure::Died(_)
                        | DeviceFailure::CutOff { .. },
                    ) => (HcallResult::status(H_BUSY), 0, Next::Continue),
                    Err(failure) => {
                        log::warn!("vcpu{}: {failure}", self.id);
                        (HcallResult::status(H_HARDWARE), 0, Next::Continue)
                    }
                }
            }
            number => {
                log::debug!("vcpu{}: unknown hcall {number:#x}", self.id);
                (HcallResult::status(H_FUNCTION), 0, Next::Continue)
            }
        }
    }

    /// Whether the guest's `rtas_args` block at `address` asks for `request`.
    /// Cell `i` of the guest's `rtas_args` block at `address` (big-endian,
    /// as the guest wrote it), if it lies in boot RAM.
    fn rtas_cell(&self, address: u64, i: u64) -> Option<u32> {
        let at = (address & REAL_ADDRESS_MASK).checked_add(i.checked_mul(4)?)?;
        let value: u32 = self.context.ram.read_obj(GuestAddress(at)).ok()?;
        Some(u32::from_be(value))
    }

    /// The name of the RTAS call at `address` (its token, which the guest
    /// may have changed since: a count, never a decision, rests on it).
    fn call_name(&self, address: u64) -> &'static str {
        self.rtas_cell(address, 0)
            .and_then(ipc_proto::papr::RtasCall::from_token)
            .map_or("unknown", |call| call.name())
    }

    /// The status cell of the RTAS call at `address`, as the guest reads it
    /// (for the trace: its first return cell, after the arguments).
    fn call_status(&self, address: u64) -> Option<i32> {
        let nargs = u64::from(self.rtas_cell(address, 1)?);
        self.rtas_cell(address, 3 + nargs)
            .map(|status| status as i32)
    }

    /// The first `max` argument cells of the RTAS call at `address`
    /// (fewer if it has fewer, or they are not memory).
    fn call_args(&self, address: u64, max: u32) -> Vec<u32> {
        let nargs = self.rtas_cell(address, 1).unwrap_or(0).min(max);
        (0..nargs)
            .map_while(|i| self.rtas_cell(address, 3 + u64::from(i)))
            .collect()
    }

    fn asked_by_guest(&self, address: u64, request: &PlatformRequest) -> bool {
        let Some(token) = self.rtas_cell(address, 0) else {
            return false;
        };
        request.answers(token, &self.call_args(address, ARGS_CHECKED as u32))
    }

    /// Carries out what the RTAS server asked for on the guest's behalf.
    fn carry_out(&self, request: Option<PlatformRequest>) -> Next {
        let message = match request {
            None => return Next::Continue,
            Some(PlatformRequest::DisplayCharacter(byte)) => {
                self.context.console.write(&[byte]);
                return Next::Continue;
            }
            Some(PlatformRequest::StartCpu { cpu, entry, r3 }) => {
                let start = StartPoint {
                    entry,
                    rdi: r3,
                    rsi: u64::from(cpu),
                };
                if !self.context.cpus.start(cpu, start) {
                    // Another vCPU started it between the snapshot and now.
                    log::warn!(
                        "vcpu{}: start-cpu of vCPU {cpu}, which is not stopped",
                        self.id
                    );
                }
                return Next::Continue;
            }
            Some(PlatformRequest::StopSelf) => {
                log::debug!("vcpu{}: stopped itself", self.id);
                return Next::Park;
            }
            Some(PlatformRequest::SetInterruptServer { source, server }) => {
                if let Err(error) = self.context.interrupts.set_server(source, server) {
                    log::error!(
                        "vcpu{}: cannot route interrupt {source:#x}: {error}",
                        self.id
                    );
                }
                return Next::Continue;
            }
            Some(PlatformRequest::StopFunction { drc }) => {
                let effect = ipc_proto::link::core_hotplug::FunctionEffect::Stop { drc };
                mmio(self.id, &self.context).carry_out_effect(effect);
                return Next::Continue;
            }
            Some(PlatformRequest::PowerOff) => ControlMessage::PowerOff,
            Some(PlatformRequest::Reboot) => ControlMessage::Reset { by_guest: true },
            Some(PlatformRequest::OsTerm { message }) => {
                ControlMessage::GuestCrashed(format!("guest called ibm,os-term: {message}"))
            }
        };
        let _ = self.context.control.send(message);
        Next::Park
    }
}
