//! Memory DLPAR as pseries Linux does it (PAPR reference §7). The guest
//! knows its LMBs from `ibm,dynamic-memory-v2`. Add by indexed count: each
//! LMB is acquired, walked with configure-connector, marked assigned and
//! onlined. Remove by indexed count: each LMB is offlined (an LMB holding a
//! pinned page cannot be, as non-movable memory stops Linux); only when every
//! one went are they all released. On a failure the ones offlined are added
//! back, each re-unisolated first — the platform hears the refusal — but when
//! the very first LMB fails nothing was touched and no RTAS call is made, as
//! in Linux: the host never hears of that refusal.

use crate::console::Line;
use crate::dlpar;
use crate::fdt::be32;
use crate::platform;
use crate::sync::SpinLock;

pub const LMB_SIZE: u64 = 256 << 20;
/// LMBs the guest keeps track of: 4 TiB of device memory.
const MAX_LMBS: usize = 16_384;
const ASSIGNED: u32 = 0x08;
const DRC_INVALID: u32 = 0x20;
/// `mem fill` / `mem check` write and read one word per page.
const PAGE: u64 = 4096;

#[derive(Clone, Copy)]
struct Lmb {
    drc: u32,
    addr: u64,
    assigned: bool,
    online: bool,
    pinned: bool,
}

const NO_LMB: Lmb = Lmb {
    drc: 0,
    addr: 0,
    assigned: false,
    online: false,
    pinned: false,
};

struct Table {
    lmbs: [Lmb; MAX_LMBS],
    count: usize,
}

static TABLE: SpinLock<Table> = SpinLock::new(Table {
    lmbs: [NO_LMB; MAX_LMBS],
    count: 0,
});

/// Reads the LMBs from `ibm,dynamic-memory-v2`: the assigned ones (DIMMs
/// plugged before this boot) are online, as boot memory is.
pub fn init(platform: &platform::Platform) {
    let fdt = &platform.fdt;
    let Some(runs) = fdt
        .path("/ibm,dynamic-reconfiguration-memory")
        .and_then(|node| fdt.prop(node, "ibm,dynamic-memory-v2"))
    else {
        return;
    };
    let mut table = TABLE.lock();
    table.count = 0;
    let count = be32(runs, 0).unwrap_or(0) as usize;
    for run in 0..count {
        let at = 4 + run * 24;
        let (Some(lmbs), Some(high), Some(low), Some(drc), Some(flags)) = (
            be32(runs, at),
            be32(runs, at + 4),
            be32(runs, at + 8),
            be32(runs, at + 12),
            be32(runs, at + 20),
        ) else {
            break;
        };
        if flags & DRC_INVALID != 0 {
            continue;
        }
        let base = (u64::from(high) << 32) | u64::from(low);
        for i in 0..lmbs {
            let slot = table.count;
            if slot >= MAX_LMBS {
                return;
            }
            let assigned = flags & ASSIGNED != 0;
            table.lmbs[slot] = Lmb {
                drc: drc + i,
                addr: base + u64::from(i) * LMB_SIZE,
                assigned,
                online: assigned,
                pinned: false,
            };
            table.count += 1;
        }
    }
}

/// The table positions of `count` LMBs from DRC `first`, if the guest knows
/// them all.
fn range(table: &Table, first: u32, count: u32) -> Option<core::ops::Range<usize>> {
    let start = table.lmbs[..table.count]
        .iter()
        .position(|lmb| lmb.drc == first)?;
    let end = start.checked_add(count as usize)?;
    let consecutive = end <= table.count
        && table.lmbs[start..end]
            .iter()
            .enumerate()
            .all(|(i, lmb)| lmb.drc == first.wrapping_add(i as u32));
    consecutive.then_some(start..end)
}

fn report(action: &str, first: u32, count: u32, outcome: &str, detail: &str) {
    Line::new()
        .str("dlpar: memory ")
        .str(action)
        .str(" count ")
        .dec(u64::from(count))
        .str(" from ")
        .hex(u64::from(first))
        .str(": ")
        .str(outcome)
        .str(detail)
        .nl();
}

/// Linux's dlpar_add_lmb after the DRC is acquired: the walk (which gives
/// the LMB's associativity), then the memory is added and onlined.
fn add_lmb(table: &mut Table, i: usize) -> bool {
    if dlpar::walk(table.lmbs[i].drc, |_, _| {}).is_err() {
        return false;
    }
    table.lmbs[i].assigned = true;
    table.lmbs[i].online = true;
    true
}

/// Linux's dlpar_remove_lmb before the DRC is released: offline it, which a
/// pinned page (not movable) forbids.
fn remove_lmb(table: &mut Table, i: usize) -> Result<(), &'static str> {
    let lmb = &mut table.lmbs[i];
    if !lmb.assigned || !lmb.online {
        return Err("the LMB is not in use");
    }
    if lmb.pinned {
        return Err("memory is not movable");
    }
    lmb.online = false;
    lmb.assigned = false;
    Ok(())
}

/// Add by indexed count.
pub fn add(first: u32, count: u32) {
    let mut table = TABLE.lock();
    let Some(range) = range(&table, first, count) else {
        return report("add", first, count, "failed: ", "unknown LMBs");
    };
    if table.lmbs[range.clone()].iter().any(|lmb| lmb.assigned) {
        return report("add", first, count, "failed: ", "an LMB is in use already");
    }
    for i in range.clone() {
        let drc = table.lmbs[i].drc;
        if dlpar::acquire_drc(drc) && add_lmb(&mut table, i) {
            continue;
        }
        // Linux gives back the ones it took, and this one.
        for j in range.start..=i {
            let lmb = &mut table.lmbs[j];
            lmb.assigned = false;
            lmb.online = false;
            dlpar::release_drc(lmb.drc);
        }
        return report("add", first, count, "failed: ", "cannot acquire an LMB");
    }
    report("add", first, count, "ok", "");
}

/// Remove by indexed count.
pub fn remove(first: u32, count: u32) {
    let mut table = TABLE.lock();
    let Some(range) = range(&table, first, count) else {
        return report("remove", first, count, "failed: ", "unknown LMBs");
    };
    for i in range.clone() {
        if let Err(why) = remove_lmb(&mut table, i) {
            // Nothing touched: no RTAS call at all, as Linux.
            if i == range.start {
                return report("remove", first, count, "refused: ", why);
            }
            // Re-add the ones removed, re-unisolating each first: the
            // platform takes that as the refusal.
            for j in range.start..i {
                dlpar::unisolate_drc(table.lmbs[j].drc);
                add_lmb(&mut table, j);
            }
            return report("remove", first, count, "refused: ", why);
        }
    }
    for i in range {
        dlpar::release_drc(table.lmbs[i].drc);
    }
    report("remove", first, count, "ok", "");
}

/// The LMB holding `addr`, if it is online device memory.
fn holding(table: &Table, addr: u64) -> Option<usize> {
    table.lmbs[..table.count]
        .iter()
        .position(|lmb| lmb.online && addr >= lmb.addr && addr < lmb.addr + LMB_SIZE)
}

/// The word `mem fill` writes at `addr` for `seed`.
pub fn pattern(addr: u64, seed: u64) -> u64 {
    let mut x = addr ^ seed.rotate_left(17) ^ 0x9e37_79b9_7f4a_7c15;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// `mem`, `mem pin|unpin ADDR`, `mem fill|check ADDR LEN SEED`.
pub fn command<'a>(words: &mut impl Iterator<Item = &'a str>, number: fn(&str) -> Option<u64>) {
    const SYNTAX: &str = "mem | mem pin|unpin <addr> | mem fill|check <addr> <len> <seed>";
    let usage = || {
        Line::new().str("usage: ").str(SYNTAX).nl();
    };
    let action = words.next();
    let mut args = [0u64; 3];
    let mut given = 0;
    for word in words.by_ref().take(3) {
        let Some(value) = number(word) else {
            return usage();
        };
        args[given] = value;
        given += 1;
    }
    let mut table = TABLE.lock();
    match (action, given) {
        (None, 0) => {
            for lmb in &table.lmbs[..table.count] {
                let mut line = Line::new();
                line.str("lmb ")
                    .hex(u64::from(lmb.drc))
                    .str(" at ")
                    .hex(lmb.addr);
                line.str(if lmb.assigned { ": assigned" } else { ": free" });
                if lmb.online {
                    line.str(" online");
                }
                if lmb.pinned {
                    line.str(" pinned");
                }
                line.nl();
            }
        }
        (Some(verb @ ("pin" | "unpin")), 1) => match holding(&table, args[0]) {
            Some(i) => {
                table.lmbs[i].pinned = verb == "pin";
                Line::new()
                    .str("mem: lmb ")
                    .hex(u64::from(table.lmbs[i].drc))
                    .str(if verb == "pin" {
                        " pinned"
                    } else {
                        " unpinned"
                    })
                    .nl();
            }
            None => {
                Line::new()
                    .str("mem: ")
                    .hex(args[0])
                    .str(" is not online device memory")
                    .nl();
            }
        },
        (Some(verb @ ("fill" | "check")), 3) => {
            let [addr, len, seed] = args;
            let end = addr.checked_add(len);
            // Every LMB the range touches must be online.
            let inside = len > 0
                && end.is_some_and(|end| {
                    let mut at = addr;
                    while at < end {
                        if holding(&table, at).is_none() {
                            return false;
                        }
                        at = (at / LMB_SIZE + 1) * LMB_SIZE;
                    }
                    true
                });
            if !inside {
                Line::new()
                    .str("mem: ")
                    .hex(addr)
                    .str("+")
                    .hex(len)
                    .str(" is not all online device memory")
                    .nl();
                return;
            }
            let first = addr.div_ceil(8) * 8;
            let last = end.unwrap_or(addr).saturating_sub(8);
            let mut at = first;
            let mut words = 0u64;
            while at <= last {
                let word = at as *mut u64;
                let expected = pattern(at, seed);
                if verb == "fill" {
                    // SAFETY: `at` is 8-aligned inside online device memory
                    // (checked above), identity-mapped, and used by nothing else.
                    unsafe { core::ptr::write_volatile(word, expected) };
                } else {
                    // SAFETY: as above.
                    let found = unsafe { core::ptr::read_volatile(word) };
                    if found != expected {
                        Line::new().str("mem check: mismatch at ").hex(at).nl();
                        return;
                    }
                }
                words += 1;
                // One word per page, and the last word of the range.
                at = if at + PAGE > last && at < last {
                    last
                } else {
                    at + PAGE
                };
            }
            let mut line = Line::new();
            line.str("mem ")
                .str(verb)
                .str(": ")
                .dec(words)
                .str(" words");
            if verb == "check" {
                line.str(", ok");
            }
            line.nl();
        }
        _ => usage(),
    }
}
