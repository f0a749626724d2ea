//! CPU bring-up and take-down, as pseries Linux does it: start-cpu to bring a
//! CPU online, stop-self on the dying CPU while another polls
//! query-cpu-stopped-state, interrupts moved off a CPU (ibm,set-xive) before
//! it goes. Any CPU may go offline, the boot CPU included, but never the last.

use crate::arch::{self, MAX_CPUS};
use crate::rtas::{self, RtasError};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

static ONLINE: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
static STOP_REQUESTED: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
/// The CPU that runs the console shell.
static SHELL_OWNER: AtomicUsize = AtomicUsize::new(0);
/// A CPU that offlined itself and handed the shell over; the new owner
/// finishes the command (waits for the stop, reports it).
static PENDING_STOP: AtomicUsize = AtomicUsize::new(NONE);
const NONE: usize = usize::MAX;

/// Interrupt sources we route, and the CPU each is delivered to.
pub const MAX_SOURCES: usize = 4;
static SOURCES: [AtomicU32; MAX_SOURCES] = [const { AtomicU32::new(0) }; MAX_SOURCES];
static SERVERS: [AtomicUsize; MAX_SOURCES] = [const { AtomicUsize::new(0) }; MAX_SOURCES];

/// Polls of query-cpu-stopped-state (each an RTAS round trip) before giving up.
const STOP_POLLS: u32 = 200_000;
/// Spins waiting for a started CPU to report itself online.
const ONLINE_SPINS: u32 = 5_000_000;

pub enum CpuError {
    NoSuchCpu,
    AlreadyOnline,
    AlreadyOffline,
    LastOnline,
    Rtas(&'static str, Result<i32, RtasError>),
    Timeout,
}

pub fn set_online(cpu: usize, online: bool) {
    if let Some(flag) = ONLINE.get(cpu) {
        flag.store(online, Ordering::SeqCst);
    }
}

pub fn is_online(cpu: usize) -> bool {
    ONLINE
        .get(cpu)
        .is_some_and(|flag| flag.load(Ordering::SeqCst))
}

fn online_cpus() -> impl Iterator<Item = usize> {
    (0..MAX_CPUS).filter(|&cpu| is_online(cpu))
}

pub fn shell_owner() -> usize {
    SHELL_OWNER.load(Ordering::SeqCst)
}

/// Remembers the interrupt sources the device tree names (all on CPU 0 at boot).
pub fn set_sources(sources: &[u32]) {
    for (slot, &source) in SOURCES.iter().zip(sources) {
        slot.store(source, Ordering::SeqCst);
    }
}

fn rtas_status(
    what: &'static str,
    result: Result<rtas::RtasReturn, RtasError>,
) -> Result<rtas::RtasReturn, CpuError> {
    match result {
        Ok(ret) if ret.status == 0 => Ok(ret),
        Ok(ret) => Err(CpuError::Rtas(what, Ok(ret.status))),
        Err(error) => Err(CpuError::Rtas(what, Err(error))),
    }
}

extern "C" {
    /// The entry point of started CPUs, in main.rs.
    fn secondary_start();
}

/// start-cpu, then waits for the CPU to report itself online.
pub fn bring_up(cpu: usize) -> Result<(), CpuError> {
    if !crate::dlpar::is_present(cpu) {
        return Err(CpuError::NoSuchCpu);
    }
    if is_online(cpu) {
        return Err(CpuError::AlreadyOnline);
    }
    let entry = secondary_start as *const () as usize as u32;
    rtas_status(
        "start-cpu",
        rtas::call("start-cpu", &[cpu as u32, entry, cpu as u32], 1),
    )?;
    for _ in 0..ONLINE_SPINS {
        if is_online(cpu) {
            return Ok(());
        }
        core::hint::spin_loop();
    }
    Err(CpuError::Timeout)
}

/// Takes `cpu` offline. When it is the calling CPU, the shell moves to
/// another CPU first and this does not return.
pub fn take_down(cpu: usize) -> Result<(), CpuError> {
    if !crate::dlpar::is_present(cpu) {
        return Err(CpuError::NoSuchCpu);
    }
    if !is_online(cpu) {
        return Err(CpuError::AlreadyOffline);
    }
    let Some(heir) = online_cpus().find(|&other| other != cpu) else {
        return Err(CpuError::LastOnline);
    };
    move_interrupts(cpu, heir)?;
    if cpu == arch::cpu_id() {
        PENDING_STOP.store(cpu, Ordering::SeqCst);
        SHELL_OWNER.store(heir, Ordering::SeqCst);
        arch::wake(heir);
        stop_self();
    }
    STOP_REQUESTED[cpu].store(true, Ordering::SeqCst);
    arch::wake(cpu);
    wait_stopped(cpu)
}

/// Routes every source delivered to `from` to `to` instead.
fn move_interrupts(from: usize, to: usize) -> Result<(), CpuError> {
    for (source, server) in SOURCES.iter().zip(&SERVERS) {
        let source = source.load(Ordering::SeqCst);
        if source == 0 || server.load(Ordering::SeqCst) != from {
            continue;
        }
        rtas_status(
            "ibm,set-xive",
            rtas::call("ibm,set-xive", &[source, to as u32, 5], 1),
        )?;
        server.store(to, Ordering::SeqCst);
    }
    Ok(())
}

/// Polls query-cpu-stopped-state until `cpu` has stopped, as Linux's
/// pseries_cpu_die does.
fn wait_stopped(cpu: usize) -> Result<(), CpuError> {
    for _ in 0..STOP_POLLS {
        let ret = rtas_status(
            "query-cpu-stopped-state",
            rtas::call("query-cpu-stopped-state", &[cpu as u32], 2),
        )?;
        if ret.out[0] == 0 {
            return Ok(());
        }
    }
    Err(CpuError::Timeout)
}

/// The dying CPU's last call. Interrupts are off; it never returns.
fn stop_self() -> ! {
    let me = arch::cpu_id();
    set_online(me, false);
    let result = rtas::stop_self();
    crate::fatal_rtas("stop-self returned", result)
}

/// Moves the shell to `heir` (which must be online); the caller goes idle.
pub fn hand_shell_to(heir: usize) {
    SHELL_OWNER.store(heir, Ordering::SeqCst);
    arch::wake(heir);
}

/// Called by the new shell owner: finishes an offline its predecessor began.
pub fn finish_pending_stop() -> Option<(usize, Result<(), CpuError>)> {
    let cpu = PENDING_STOP.swap(NONE, Ordering::SeqCst);
    (cpu != NONE).then(|| (cpu, wait_stopped(cpu)))
}

/// What a CPU other than the shell's owner does: sleep until asked to stop
/// or to take over the shell.
pub fn idle() -> ! {
    let me = arch::cpu_id();
    loop {
        if STOP_REQUESTED[me].swap(false, Ordering::SeqCst) {
            stop_self();
        }
        if shell_owner() == me {
            crate::shell::run();
            continue;
        }
        arch::wait_for_interrupt();
    }
}
