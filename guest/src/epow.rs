//! The power button, as pseries Linux takes it (PAPR reference §4.5): on the
//! EPOW interrupt, check-exception with the EPOW class fetches the event;
//! an "EP" section asking for a system shutdown (sensor value 3, modifier 1,
//! normal) powers the machine off in order. (Linux first reads the EPOW
//! sensor, 9; the platform here has none, and Linux only uses it to decide
//! whether the event is critical.)

use crate::console::Line;
use crate::platform;
use crate::rtas;
use crate::sync::SpinLock;
use core::sync::atomic::{AtomicBool, Ordering};

const RTAS_EPOW_WARNING: u32 = 0x4000_0000;
const EPOW_SYSTEM_SHUTDOWN: u8 = 3;
const EPOW_MODIFIER_NORMAL: u8 = 1;

/// An EPOW interrupt arrived; the shell's CPU does the work.
static PENDING: AtomicBool = AtomicBool::new(false);

static BUFFER: SpinLock<rtas::Page> = SpinLock::new(rtas::Page::zeroed());

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
    let mut buffer = BUFFER.lock();
    let log = rtas::check_exception(&mut buffer, irq, RTAS_EPOW_WARNING)?;
    let section = rtas::event_section(log, *b"EP")?;
    Some((*section.get(8)?, *section.get(9)?))
}
