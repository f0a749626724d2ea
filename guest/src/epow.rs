//! The power button, as pseries Linux takes it (PAPR reference §4.5): on the
//! EPOW interrupt, check-exception with the EPOW class fetches the event;
//! an "EP" section asking for a system shutdown (sensor value 3, modifier 1,
//! normal) powers the machine off in order. (Linux first reads the EPOW
//! sensor, 9; the platform here has none, and Linux only uses it to decide
//! whether the event is critical.)

use crate::console::Line;
use crate::fdt::be32;
use crate::platform;
use crate::rtas;
use crate::sync::SpinLock;
use core::sync::atomic::{AtomicBool, Ordering};

const RTAS_EPOW_WARNING: u32 = 0x4000_0000;
const RTAS_VECTOR_EXTERNAL_INTERRUPT: u32 = 0x500;
const EVENT_BUFFER_SIZE: usize = 2048;
const EPOW_SYSTEM_SHUTDOWN: u8 = 3;
const EPOW_MODIFIER_NORMAL: u8 = 1;

/// An EPOW interrupt arrived; the shell's CPU does the work.
static PENDING: AtomicBool = AtomicBool::new(false);

#[repr(C, align(4096))]
struct Page([u8; 4096]);

static BUFFER: SpinLock<Page> = SpinLock::new(Page([0; 4096]));

/// Called by the interrupt handler.
pub fn interrupt() {
    PENDING.store(true, Ordering::SeqCst);
}

pub fn pending() -> bool {
    PENDING.load(Ordering::SeqCst)
}

/// Handles every queued EPOW event; powers off when one asks to.
pub fn process() {
    PENDING.store(false, Ordering::SeqCst);
    while let Some((action, modifier)) = fetch() {
        if action == EPOW_SYSTEM_SHUTDOWN && modifier == EPOW_MODIFIER_NORMAL {
            Line::new().str("epow: power-off requested").nl();
            crate::shell::power_off();
            return;
        }
        Line::new()
            .str("epow: ignored action ")
            .dec(u64::from(action))
            .str(" modifier ")
            .dec(u64::from(modifier))
            .nl();
    }
}

/// check-exception for EPOW events; the "EP" section's action and modifier.
fn fetch() -> Option<(u8, u8)> {
    let irq = platform::get().epow_irq.unwrap_or(0);
    let buffer = BUFFER.lock();
    let address = buffer.0.as_ptr() as u32;
    let args = [
        RTAS_VECTOR_EXTERNAL_INTERRUPT,
        irq,
        RTAS_EPOW_WARNING,
        0,
        address,
        EVENT_BUFFER_SIZE as u32,
    ];
    match rtas::call("check-exception", &args, 1) {
        Ok(ret) if ret.status == 0 => {}
        _ => return None,
    }
    let log = &buffer.0[..EVENT_BUFFER_SIZE];
    let extended = be32(log, 4)? as usize;
    if extended < 16 || log.get(10)? & 0x0f != 14 || log.get(20..24)? != b"IBM\0" {
        return None;
    }
    let end = (8 + extended).min(log.len());
    let mut at = 24;
    while at + 10 <= end {
        let length = u16::from_be_bytes([log[at + 2], log[at + 3]]) as usize;
        if log[at..at + 2] == *b"EP" {
            return Some((log[at + 8], log[at + 9]));
        }
        if length == 0 {
            return None;
        }
        at += length;
    }
    None
}
