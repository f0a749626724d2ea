//! RTAS calls, made the way Linux makes them: a big-endian `rtas_args` block
//! whose address goes to the H_RTAS hypercall. Tokens come from `/rtas`.

use crate::fdt::be32;
use crate::hcall::{hcall, H_RTAS, H_SUCCESS};
use crate::platform;
use crate::sync::SpinLock;

const MAX_ARGS: usize = 16;
const RTAS_VECTOR_EXTERNAL_INTERRUPT: u32 = 0x500;
/// The event log length check-exception is offered (Linux's RTAS_ERROR_LOG_MAX).
const EVENT_BUFFER_SIZE: usize = 2048;

/// A page RTAS writes into: an event log, a configure-connector work area.
#[repr(C, align(4096))]
pub struct Page(pub [u8; 4096]);

impl Page {
    pub const fn zeroed() -> Page {
        Page([0; 4096])
    }
}

#[repr(C)]
pub struct RtasArgs {
    token: u32,
    nargs: u32,
    nret: u32,
    /// The arguments, then the return values, all big-endian.
    cells: [u32; MAX_ARGS],
}

const EMPTY_ARGS: RtasArgs = RtasArgs {
    token: 0,
    nargs: 0,
    nret: 0,
    cells: [0; MAX_ARGS],
};

static ARGS: SpinLock<RtasArgs> = SpinLock::new(EMPTY_ARGS);

impl RtasArgs {
    /// A block for `token` with `args`, room for `nret` returns.
    pub fn new(token: u32, args: &[u32], nret: usize) -> RtasArgs {
        let mut block = EMPTY_ARGS;
        fill(&mut block, token, args, nret);
        block
    }
}

pub enum RtasError {
    /// The platform does not advertise this call in `/rtas`.
    NoToken,
    /// The hypercall itself failed (e.g. H_FUNCTION when RTAS is unavailable).
    Hcall(i64),
}

pub struct RtasReturn {
    pub status: i32,
    /// rets[1..]: the outputs after the status.
    pub out: [u32; MAX_ARGS],
}

/// Calls `name` with `args`, expecting `nret` return cells (status included).
pub fn call(name: &str, args: &[u32], nret: usize) -> Result<RtasReturn, RtasError> {
    let token = platform::get().rtas_token(name).ok_or(RtasError::NoToken)?;
    call_token(token, args, nret)
}

/// H_RTAS on a block the caller prepared (for testing the platform's checks).
pub fn raw(address: u64) -> i64 {
    hcall(H_RTAS, [address, 0, 0, 0, 0, 0]).status
}

/// RTAS calls made through [`call`] since boot (`rtas-calls`).
static CALLS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// TSC cycles spent in those calls (`rtas-time`): what a burst of calls,
/// such as an unplug's, costs this guest.
static CYCLES: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// The last calls: (token, TSC cycles), the slot `CALLS % RECENT` next.
pub const RECENT: usize = 16;
static RECENT_CALLS: crate::sync::SpinLock<[(u32, u64); RECENT]> =
    crate::sync::SpinLock::new([(0, 0); RECENT]);

/// The last calls (up to [`RECENT`]), oldest first: (token, TSC cycles).
pub fn recent(out: &mut [(u32, u64); RECENT]) -> usize {
    let made = calls() as usize;
    let recent = RECENT_CALLS.lock();
    let count = made.min(RECENT);
    for (i, slot) in out.iter_mut().take(count).enumerate() {
        *slot = recent[(made - count + i) % RECENT];
    }
    count
}

pub fn calls() -> u64 {
    CALLS.load(core::sync::atomic::Ordering::Relaxed)
}

pub fn cycles() -> u64 {
    CYCLES.load(core::sync::atomic::Ordering::Relaxed)
}

pub fn call_token(token: u32, args: &[u32], nret: usize) -> Result<RtasReturn, RtasError> {
    let mut block = ARGS.lock();
    let started = crate::arch::timestamp();
    let result = call_with(&mut block, token, args, nret);
    let spent = crate::arch::timestamp().wrapping_sub(started);
    CYCLES.fetch_add(spent, core::sync::atomic::Ordering::Relaxed);
    let made = CALLS.fetch_add(1, core::sync::atomic::Ordering::Relaxed) as usize;
    RECENT_CALLS.lock()[made % RECENT] = (token, spent);
    result
}

/// stop-self; returns only if the call failed. It never returns on success,
/// so it must not take the shared block's lock (nothing would release it):
/// the block lives on the dying CPU's stack, which nobody reuses until the
/// CPU is started again (Linux's rtas_stop_self keeps its own block too).
pub fn stop_self() -> Result<RtasReturn, RtasError> {
    let token = platform::get()
        .rtas_token("stop-self")
        .ok_or(RtasError::NoToken)?;
    let mut block = EMPTY_ARGS;
    call_with(&mut block, token, &[], 1)
}

/// Writes the header and arguments; returns the counts actually used.
fn fill(block: &mut RtasArgs, token: u32, args: &[u32], nret: usize) -> (usize, usize) {
    let nargs = args.len().min(MAX_ARGS);
    let nret = nret.min(MAX_ARGS - nargs).max(1);
    block.token = token.to_be();
    block.nargs = (nargs as u32).to_be();
    block.nret = (nret as u32).to_be();
    for (cell, arg) in block.cells.iter_mut().zip(args) {
        *cell = arg.to_be();
    }
    for cell in &mut block.cells[nargs..] {
        *cell = 0;
    }
    (nargs, nret)
}

fn call_with(
    block: &mut RtasArgs,
    token: u32,
    args: &[u32],
    nret: usize,
) -> Result<RtasReturn, RtasError> {
    let (nargs, nret) = fill(block, token, args, nret);
    let address = &*block as *const RtasArgs as u64;
    let ret = hcall(H_RTAS, [address, 0, 0, 0, 0, 0]);
    if ret.status != H_SUCCESS {
        return Err(RtasError::Hcall(ret.status));
    }
    let rets = &block.cells[nargs..nargs + nret];
    let mut out = [0u32; MAX_ARGS];
    for (o, r) in out.iter_mut().zip(&rets[1..]) {
        *o = u32::from_be(*r);
    }
    Ok(RtasReturn {
        status: u32::from_be(rets[0]) as i32,
        out,
    })
}

/// check-exception for the events of `class` raised on `irq`, as Linux's
/// ras.c calls it: the event log RTAS wrote into `buffer`, or `None` when
/// nothing of that class is queued (or the call failed).
pub fn check_exception(buffer: &mut Page, irq: u32, class: u32) -> Option<&[u8]> {
    let args = [
        RTAS_VECTOR_EXTERNAL_INTERRUPT,
        irq,
        class,
        0,
        buffer.0.as_ptr() as u32,
        EVENT_BUFFER_SIZE as u32,
    ];
    match call("check-exception", &args, 1) {
        Ok(ret) if ret.status == 0 => Some(&buffer.0[..EVENT_BUFFER_SIZE]),
        _ => None,
    }
}

/// The first section tagged `id` of an extended PAPR event log, from its
/// header to the log's end, found as Linux's get_pseries_errorlog finds it;
/// `None` when `log` is no valid extended log or has no such section.
pub fn event_section(log: &[u8], id: [u8; 2]) -> Option<&[u8]> {
    let extended = be32(log, 4)? as usize;
    if extended < 16 || log.get(10)? & 0x0f != 14 || log.get(20..24)? != b"IBM\0" {
        return None;
    }
    let end = (8 + extended).min(log.len());
    let mut at = 24;
    while at + 4 <= end {
        if log[at..at + 2] == id {
            return Some(&log[at..end]);
        }
        let length = u16::from_be_bytes([log[at + 2], log[at + 3]]) as usize;
        if length == 0 {
            return None;
        }
        at += length;
    }
    None
}
