//! vCPU threads. Each vCPU has a thread that parks until it is told where to
//! start, runs the guest, handles its exits (the hypercall doorbell), and
//! parks again when the core asks (reset, power-off) or the guest stops it.

use crate::boot;
use crate::console::{Console, MAX_READ};
use crate::fdt::VTY_TERMNO;
use crate::hcall::{
    Hcall, HcallResult, H_FUNCTION, H_GET_TERM_CHAR, H_PARAMETER, H_PUT_TERM_CHAR, H_RTAS,
    H_SUCCESS,
};
use crate::layout::HCALL_DOORBELL_PORT;
use device_procs::rtas::{self, PlatformRequest};
use kvm_bindings::{kvm_mp_state, KVM_MP_STATE_RUNNABLE};
use kvm_ioctls::{VcpuExit, VcpuFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::signal::{Killable, SIGRTMIN};

/// The signal that kicks a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

/// What the vCPU threads tell the VM's control loop.
#[derive(Debug, PartialEq, Eq)]
pub enum VmEvent {
    PowerOff,
    Reset,
    /// The guest can no longer run: the reason, for the log.
    Crashed(String),
}

/// Where a parked vCPU starts when it is released.
#[derive(Clone, Copy, Debug)]
pub struct StartPoint {
    pub entry: u64,
    pub rdi: u64,
    pub rsi: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum RunState {
    Parked,
    StartRequested,
    Running,
    Exit,
}

struct Control {
    state: Mutex<(RunState, Option<StartPoint>)>,
    changed: Condvar,
    /// Read before every KVM_RUN: the core wants this vCPU parked.
    park_requested: AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The VM-wide things a vCPU needs to answer hypercalls.
#[derive(Clone)]
pub struct VcpuContext {
    pub console: Arc<Console>,
    pub memory: GuestMemoryMmap,
    pub events: Sender<VmEvent>,
}

pub struct VcpuHandle {
    pub id: u32,
    control: Arc<Control>,
    thread: Option<JoinHandle<()>>,
}

impl VcpuHandle {
    pub fn spawn(id: u32, fd: VcpuFd, context: VcpuContext) -> std::io::Result<VcpuHandle> {
        let control = Arc::new(Control {
            state: Mutex::new((RunState::Parked, None)),
            changed: Condvar::new(),
            park_requested: AtomicBool::new(false),
        });
        let thread_control = Arc::clone(&control);
        let thread = thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                Vcpu {
                    id,
                    fd,
                    control: thread_control,
                    context,
                }
                .run()
            })?;
        Ok(VcpuHandle {
            id,
            control,
            thread: Some(thread),
        })
    }

    /// Releases a parked vCPU at `start`.
    pub fn start(&self, start: StartPoint) {
        let mut state = lock(&self.control.state);
        *state = (RunState::StartRequested, Some(start));
        self.control.changed.notify_all();
    }

    /// Stops the vCPU and waits until its thread is out of KVM_RUN.
    pub fn park(&self) {
        self.control.park_requested.store(true, Ordering::SeqCst);
        let mut state = lock(&self.control.state);
        if state.0 == RunState::StartRequested {
            state.0 = RunState::Parked;
        }
        while state.0 == RunState::Running {
            // The flag is checked before each KVM_RUN; a signal interrupts a
            // KVM_RUN already in progress. Repeat in case the signal landed
            // between the check and the ioctl.
            if let Some(thread) = &self.thread {
                if let Err(error) = thread.kill(kick_signal()) {
                    log::warn!("vcpu{}: cannot signal its thread: {error}", self.id);
                }
            }
            state = self
                .control
                .changed
                .wait_timeout(state, Duration::from_millis(5))
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        self.control.park_requested.store(false, Ordering::SeqCst);
    }
}

impl Drop for VcpuHandle {
    fn drop(&mut self) {
        self.park();
        {
            let mut state = lock(&self.control.state);
            state.0 = RunState::Exit;
            self.control.changed.notify_all();
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
    control: Arc<Control>,
    context: VcpuContext,
}

impl Vcpu {
    fn run(mut self) {
        while let Some(start) = self.wait_for_start() {
            if let Err(error) = self.prepare(start) {
                self.crash(format!("vcpu{}: cannot set up registers: {error}", self.id));
            } else {
                self.run_guest();
            }
            let mut state = lock(&self.control.state);
            if state.0 == RunState::Running {
                state.0 = RunState::Parked;
            }
            self.control.changed.notify_all();
        }
    }

    fn wait_for_start(&self) -> Option<StartPoint> {
        let mut state = lock(&self.control.state);
        loop {
            match *state {
                (RunState::Exit, _) => return None,
                (RunState::StartRequested, Some(start)) => {
                    state.0 = RunState::Running;
                    self.control.changed.notify_all();
                    return Some(start);
                }
                _ => {
                    state = self
                        .control
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
        let _ = self.context.events.send(VmEvent::Crashed(reason));
    }

    fn run_guest(&mut self) {
        loop {
            if self.control.park_requested.load(Ordering::SeqCst) {
                return;
            }
            let exit = match self.fd.run() {
                Ok(exit) => exit,
                Err(error) if error.errno() == libc_eintr() || error.errno() == libc_eagain() => {
                    continue
                }
                Err(error) => {
                    self.crash(format!("vcpu{}: KVM_RUN failed: {error}", self.id));
                    return;
                }
            };
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
                    log::debug!("vcpu{}: read from unmapped address {address:#x}", self.id);
                    data.fill(0xff);
                    Next::Continue
                }
                VcpuExit::MmioWrite(address, _) => {
                    log::debug!("vcpu{}: write to unmapped address {address:#x}", self.id);
                    Next::Continue
                }
                VcpuExit::Shutdown => {
                    let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or_default();
                    self.crash(format!(
                        "vcpu{}: guest triple fault (rip {rip:#x})",
                        self.id
                    ));
                    Next::Park
                }
                VcpuExit::InternalError => {
                    let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or_default();
                    self.crash(format!(
                        "vcpu{}: KVM internal error at rip {rip:#x} (an instruction KVM cannot emulate, e.g. SSE at CPL0)",
                        self.id
                    ));
                    Next::Park
                }
                other => {
                    let reason = format!("vcpu{}: unexpected exit {other:?}", self.id);
                    let _ = self.context.events.send(VmEvent::Crashed(reason));
                    Next::Park
                }
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
            H_RTAS => match rtas::handle_call(&self.context.memory, call.args[0]) {
                Ok(request) => {
                    let next = self.carry_out(request);
                    (HcallResult::status(H_SUCCESS), 0, next)
                }
                Err(error) => {
                    log::warn!("vcpu{}: RTAS call refused: {error}", self.id);
                    (HcallResult::status(H_PARAMETER), 0, Next::Continue)
                }
            },
            number => {
                log::debug!("vcpu{}: unknown hcall {number:#x}", self.id);
                (HcallResult::status(H_FUNCTION), 0, Next::Continue)
            }
        }
    }

    fn carry_out(&self, request: Option<PlatformRequest>) -> Next {
        let event = match request {
            None => return Next::Continue,
            Some(PlatformRequest::DisplayCharacter(byte)) => {
                self.context.console.write(&[byte]);
                return Next::Continue;
            }
            Some(PlatformRequest::PowerOff) => VmEvent::PowerOff,
            Some(PlatformRequest::Reboot) => VmEvent::Reset,
            Some(PlatformRequest::OsTerm { message }) => {
                VmEvent::Crashed(format!("guest called ibm,os-term: {message}"))
            }
        };
        let _ = self.context.events.send(event);
        Next::Park
    }
}

fn libc_eintr() -> i32 {
    nix::errno::Errno::EINTR as i32
}

fn libc_eagain() -> i32 {
    nix::errno::Errno::EAGAIN as i32
}
