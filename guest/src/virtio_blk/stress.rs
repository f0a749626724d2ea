//! `blk stress`: 8 writers and 8 readers, each with one request always in
//! flight, so that whatever happens to the device's backend meanwhile (a
//! kill, a hang, an upgrade) catches requests in flight. The driver checks
//! what a block device owes it: every request completes, once; a read
//! finds the pattern the test wrote before; a write completes `OK`.
//!
//! Writer `w` writes sectors `[first + w·area, first + (w+1)·area)`, 8
//! sectors a request, in order and round again, each sector tagged: its
//! first word is `pattern(sector · 512, write_seed)`, the other 63 words
//! `!write_seed` (a tag costs the guest one pattern per sector: its code is
//! emulated instruction by instruction here, and a whole pattern per
//! request would make the guest, not the device, the bottleneck). Reader
//! `r` reads `[first + (8+r)·area, …)`, which must hold the full pattern of
//! `read_seed` already (`blk write`): the first and last word of each
//! sector are checked. Slot `i` uses descriptors `3i..3i+3`, header `i`,
//! status byte `i` and data page `i`. `blk tagged` checks a writer's work.

use super::{
    get, mmio_write16, pattern, put, ring, Disk, Line, Pass, AVAIL_AT, DESC_AT, DESC_NEXT,
    DESC_WRITE, DISKS, HEADER_AT, QUEUE_SIZE, SECTOR, STATUS_AT, STATUS_OK, TYPE_IN, TYPE_OUT,
    USED_AT,
};
use core::sync::atomic::{compiler_fence, Ordering};

/// Requests in flight at once: the writers first, then the readers.
pub const SLOTS: usize = 16;
const WRITERS: usize = 8;
/// Sectors per request.
const REQUEST_SECTORS: u64 = 8;
/// How long (TSC cycles: tens of seconds) the device may complete nothing
/// while requests wait before they are called lost.
const STALL_CYCLES: u64 = 1 << 36;
/// A status byte the device never writes.
const UNANSWERED: u8 = 0xff;

#[repr(C, align(4096))]
struct Pages([[u8; (REQUEST_SECTORS * SECTOR) as usize]; SLOTS]);
static mut PAGES: Pages = Pages([[0; (REQUEST_SECTORS * SECTOR) as usize]; SLOTS]);

fn page(slot: usize) -> *mut u8 {
    // SAFETY: only the address is taken; the pages are used under the
    // disks' lock, which `stress` holds throughout.
    unsafe { core::ptr::addr_of_mut!(PAGES.0[slot]) as *mut u8 }
}

/// What `blk stress` counts.
#[derive(Default)]
struct Tally {
    writes: u64,
    reads: u64,
    /// Used elements naming no request in flight: a completion twice.
    unexpected: u64,
    mismatches: u64,
    errors: u64,
    /// Requests never completed.
    lost: u64,
}

/// One slot's request in flight: its first sector.
#[derive(Clone, Copy)]
struct InFlight {
    sector: u64,
}

/// `blk stress <n> <first> <area> <requests> <read-seed> <write-seed>`.
pub fn run(n: usize, first: u64, area: u64, requests: u64, read_seed: u64, write_seed: u64) {
    const WHAT: &str = "blk stress: ";
    let mut disks = DISKS.lock();
    let Some(Some(disk)) = disks.get_mut(n) else {
        Line::new().str(WHAT).str("no disk ").dec(n as u64).nl();
        return;
    };
    let rounds = area / REQUEST_SECTORS;
    let end = first.checked_add(area.saturating_mul(SLOTS as u64));
    if rounds == 0 || end.is_none_or(|end| end > disk.sectors) || disk.in_flight {
        Line::new()
            .str(WHAT)
            .str("the areas must be whole requests on the disk, and the disk idle")
            .nl();
        return;
    }
    let ring_page = ring(n);
    fill_writers(write_seed);
    let mut slots: [Option<InFlight>; SLOTS] = [None; SLOTS];
    let mut next_sector = [0u64; SLOTS];
    let mut tally = Tally::default();
    let mut submitted = 0;
    let mut seen_used = disk.next_avail;
    let mut last_progress = crate::arch::timestamp();
    loop {
        // Fill the free slots.
        let mut rung = false;
        for slot in 0..SLOTS {
            if slots[slot].is_some() || submitted == requests {
                continue;
            }
            let sector = first + slot as u64 * area + next_sector[slot] * REQUEST_SECTORS;
            next_sector[slot] = (next_sector[slot] + 1) % rounds;
            submit(disk, n, slot, sector, write_seed);
            slots[slot] = Some(InFlight { sector });
            submitted += 1;
            rung = true;
        }
        if rung {
            compiler_fence(Ordering::SeqCst);
            mmio_write16(disk.notify, 0);
        }
        // Take what the device used.
        let used_index = get::<u16>(ring_page, USED_AT + 2);
        while seen_used != used_index {
            let element = USED_AT + 4 + 8 * usize::from(seen_used % QUEUE_SIZE);
            let head = get::<u32>(ring_page, element) as usize;
            seen_used = seen_used.wrapping_add(1);
            last_progress = crate::arch::timestamp();
            let slot = head / 3;
            let request = match head.is_multiple_of(3) {
                true => slots.get_mut(slot).and_then(Option::take),
                false => None,
            };
            let Some(request) = request else {
                tally.unexpected += 1;
                continue;
            };
            compiler_fence(Ordering::SeqCst);
            if get::<u8>(ring_page, STATUS_AT + slot) != STATUS_OK {
                tally.errors += 1;
            } else if slot < WRITERS {
                tally.writes += 1;
            } else {
                tally.reads += 1;
                if mismatched(slot, request.sector, read_seed) {
                    tally.mismatches += 1;
                }
            }
        }
        let waiting = slots.iter().filter(|s| s.is_some()).count() as u64;
        if waiting == 0 && submitted == requests {
            break;
        }
        if crate::arch::timestamp().wrapping_sub(last_progress) > STALL_CYCLES {
            tally.lost = waiting;
            break;
        }
        core::hint::spin_loop();
    }
    // The driver's own count of what it made available goes on from here;
    // a stalled device leaves its requests to the next reset.
    disk.in_flight = tally.lost != 0;
    Line::new()
        .str(WHAT)
        .dec(tally.writes + tally.reads)
        .str(" requests (")
        .dec(tally.writes)
        .str(" writes, ")
        .dec(tally.reads)
        .str(" reads), ")
        .dec(tally.lost)
        .str(" lost, ")
        .dec(tally.unexpected)
        .str(" unexpected, ")
        .dec(tally.mismatches)
        .str(" mismatched, ")
        .dec(tally.errors)
        .str(" errors")
        .nl();
}

/// Makes slot `slot`'s request at `sector` available: a write of
/// `write_seed`'s tags for a writer, a read for a reader.
fn submit(disk: &mut Disk, n: usize, slot: usize, sector: u64, write_seed: u64) {
    let ring_page = ring(n);
    let data = page(slot);
    let write = slot < WRITERS;
    if write {
        for s in 0..REQUEST_SECTORS {
            put::<u64>(data, (s * SECTOR) as usize, tag(sector + s, write_seed));
        }
    }
    let header = HEADER_AT + 16 * slot;
    put::<u32>(ring_page, header, if write { TYPE_OUT } else { TYPE_IN });
    put::<u32>(ring_page, header + 4, 0);
    put::<u64>(ring_page, header + 8, sector);
    put::<u8>(ring_page, STATUS_AT + slot, UNANSWERED);
    let base = ring_page as u64;
    let head = 3 * slot;
    let descriptor = |index: usize, address: u64, length: u32, flags: u16, next: usize| {
        let at = DESC_AT + index * 16;
        put::<u64>(ring_page, at, address);
        put::<u32>(ring_page, at + 8, length);
        put::<u16>(ring_page, at + 12, flags);
        put::<u16>(ring_page, at + 14, next as u16);
    };
    let data_flags = if write { 0 } else { DESC_WRITE };
    descriptor(head, base + header as u64, 16, DESC_NEXT, head + 1);
    descriptor(
        head + 1,
        data as u64,
        (REQUEST_SECTORS * SECTOR) as u32,
        DESC_NEXT | data_flags,
        head + 2,
    );
    descriptor(head + 2, base + (STATUS_AT + slot) as u64, 1, DESC_WRITE, 0);
    let index = disk.next_avail;
    put::<u16>(
        ring_page,
        AVAIL_AT + 4 + 2 * usize::from(index % QUEUE_SIZE),
        head as u16,
    );
    compiler_fence(Ordering::SeqCst);
    disk.next_avail = index.wrapping_add(1);
    put::<u16>(ring_page, AVAIL_AT + 2, disk.next_avail);
}

/// Whether slot `slot`'s page lacks `seed`'s pattern for `sector` on (the
/// first and last word of each sector).
fn mismatched(slot: usize, sector: u64, seed: u64) -> bool {
    let data = page(slot);
    (0..REQUEST_SECTORS).any(|s| {
        let at = s * SECTOR;
        let last = at + SECTOR - 8;
        get::<u64>(data, at as usize) != pattern((sector + s) * SECTOR, seed)
            || get::<u64>(data, last as usize) != pattern((sector + s) * SECTOR + SECTOR - 8, seed)
    })
}

/// The first word of a writer's `sector`.
fn tag(sector: u64, seed: u64) -> u64 {
    pattern(sector * SECTOR, seed)
}

/// Readies the writers' pages: every word but the tags is `!write_seed`.
fn fill_writers(write_seed: u64) {
    for slot in 0..WRITERS {
        let data = page(slot);
        for word in 0..REQUEST_SECTORS * SECTOR / 8 {
            put::<u64>(data, (word * 8) as usize, !write_seed);
        }
    }
}

/// `blk tagged <n> <first> <count> <seed>`: whether `count` sectors from
/// `first` hold a writer's tags of `seed` (all 64 words of each sector).
pub fn check_tagged(n: usize, first: u64, count: u64, seed: u64) {
    super::transfer(Pass::Check("blk tagged: ", untagged), n, first, count, seed);
}

/// The first sector of disk slot `slot`'s data buffer (holding `count`
/// sectors from `first`) that is not a writer's tagged sector of `seed`.
fn untagged(slot: usize, first: u64, count: u64, seed: u64) -> Option<u64> {
    let buffer = super::data(slot);
    (0..count)
        .find(|&s| {
            let base = (s * SECTOR) as usize;
            get::<u64>(buffer, base) != tag(first + s, seed)
                || (1..SECTOR as usize / 8).any(|w| get::<u64>(buffer, base + 8 * w) != !seed)
        })
        .map(|s| first + s)
}
