//! A virtio-blk driver for a modern virtio-pci function, as Linux's
//! virtio_pci_modern + virtio_blk drive one: it negotiates VERSION_1 (and
//! RO, FLUSH when offered), sets up one split virtqueue with MSI-X vectors
//! for configuration changes (0) and the queue (1), and makes one request
//! at a time, waiting for the used ring ([`stress`] keeps 16 in flight). The queue's interrupt is counted;
//! completion is seen in the used ring itself, so a lost interrupt slows
//! nothing down.

use crate::console::Line;
use crate::lmb::pattern;
use crate::pcibus::{
    mmio_read16, mmio_read32, mmio_read8, mmio_write16, mmio_write32, mmio_write8,
};
use crate::sync::SpinLock;
use core::sync::atomic::{compiler_fence, AtomicU32, AtomicU64, Ordering};

mod stress;

pub const MAX_DISKS: usize = 4;
/// Room for [`stress::SLOTS`] requests of three descriptors each.
const QUEUE_SIZE: u16 = 64;
pub const SECTOR: u64 = 512;
/// The most sectors one request moves.
const MAX_REQUEST_SECTORS: u64 = 64;
/// Polls of the used ring before a request is given up (several seconds
/// of an emulated guest).
const MAX_POLLS: u64 = 4_000_000;
/// Polls between two looks at the device's status while a request waits.
const STATUS_POLLS: u64 = 20_000;

/// Device status bits.
const ACKNOWLEDGE: u8 = 1;
const DRIVER: u8 = 2;
const DRIVER_OK: u8 = 4;
const FEATURES_OK: u8 = 8;
const NEEDS_RESET: u8 = 64;
/// Features.
const VERSION_1: u64 = 1 << 32;
const BLK_RO: u64 = 1 << 5;
const BLK_FLUSH: u64 = 1 << 9;
/// Request types and statuses.
const TYPE_IN: u32 = 0;
const TYPE_OUT: u32 = 1;
const TYPE_GET_ID: u32 = 8;
/// The bytes of a get-id answer.
const ID_BYTES: u32 = 20;
const STATUS_OK: u8 = 0;
/// Descriptor flags.
const DESC_NEXT: u16 = 1;
const DESC_WRITE: u16 = 2;
/// MSI-X vectors: configuration changes, the queue.
const CONFIG_VECTOR: u16 = 0;
const QUEUE_VECTOR: u16 = 1;

/// Common configuration registers.
const DEVICE_FEATURE_SELECT: u64 = 0x00;
const DEVICE_FEATURE: u64 = 0x04;
const DRIVER_FEATURE_SELECT: u64 = 0x08;
const DRIVER_FEATURE: u64 = 0x0c;
const MSIX_CONFIG: u64 = 0x10;
const DEVICE_STATUS: u64 = 0x14;
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_SIZE_REGISTER: u64 = 0x18;
const QUEUE_MSIX_VECTOR: u64 = 0x1a;
const QUEUE_ENABLE: u64 = 0x1c;
const QUEUE_NOTIFY_OFF: u64 = 0x1e;
const QUEUE_DESC: u64 = 0x20;
const QUEUE_DRIVER: u64 = 0x28;
const QUEUE_DEVICE: u64 = 0x30;

/// Where a function's virtio regions are (CPU addresses).
#[derive(Clone, Copy)]
pub struct Regions {
    pub common: u64,
    pub device: u64,
    pub notify: u64,
    pub notify_multiplier: u32,
}

/// One page per disk: descriptors, driver ring, device ring, a request's
/// header and status.
#[repr(C, align(4096))]
struct RingPage([u8; 4096]);
const DESC_AT: usize = 0;
const AVAIL_AT: usize = 0x400;
const USED_AT: usize = 0x500;
/// Request headers, 16 bytes each: one per slot of [`stress`] (the first
/// is the single request's).
const HEADER_AT: usize = 0x800;
/// Status bytes, one per slot.
const STATUS_AT: usize = 0x900;

#[repr(C, align(4096))]
struct DataBuffer([u8; (MAX_REQUEST_SECTORS * SECTOR) as usize]);

static mut RINGS: [RingPage; MAX_DISKS] = [const { RingPage([0; 4096]) }; MAX_DISKS];
static mut DATA: [DataBuffer; MAX_DISKS] =
    [const { DataBuffer([0; (MAX_REQUEST_SECTORS * SECTOR) as usize]) }; MAX_DISKS];

#[derive(Clone, Copy)]
struct Disk {
    drc: u32,
    regions: Regions,
    notify: u64,
    sectors: u64,
    read_only: bool,
    next_avail: u16,
    /// A request was made and not waited for (a background read).
    in_flight: bool,
    held: bool,
    hold_sector: u64,
    hold_reads: u64,
    hold_errors: u64,
}

static DISKS: SpinLock<[Option<Disk>; MAX_DISKS]> = SpinLock::new([None; MAX_DISKS]);
/// Per disk: the interrupt source of its queue, and its interrupts seen.
static SOURCES: [AtomicU32; MAX_DISKS] = [const { AtomicU32::new(0) }; MAX_DISKS];
static INTERRUPTS: [AtomicU64; MAX_DISKS] = [const { AtomicU64::new(0) }; MAX_DISKS];

fn ring(slot: usize) -> *mut u8 {
    // SAFETY: only the address is taken; accesses go through the disk's lock.
    unsafe { core::ptr::addr_of_mut!(RINGS[slot]) as *mut u8 }
}

fn data(slot: usize) -> *mut u8 {
    // SAFETY: as for `ring`.
    unsafe { core::ptr::addr_of_mut!(DATA[slot]) as *mut u8 }
}

/// Writes `value` at byte `at` of `base` (volatile: the device reads it).
fn put<T>(base: *mut u8, at: usize, value: T) {
    // SAFETY: callers pass offsets inside the page or buffer `base` starts.
    unsafe { core::ptr::write_volatile(base.add(at) as *mut T, value) }
}

fn get<T>(base: *mut u8, at: usize) -> T {
    // SAFETY: as for `put`.
    unsafe { core::ptr::read_volatile(base.add(at) as *const T) }
}

/// A queue interrupt arrived (`source`).
pub fn interrupt(source: u32) {
    for (slot, known) in SOURCES.iter().enumerate() {
        if known.load(Ordering::Relaxed) == source && source != 0 {
            INTERRUPTS[slot].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Brings the device up; its disk number. `queue_source` is the interrupt
/// source of the queue's vector.
pub fn attach(drc: u32, regions: Regions, queue_source: u32) -> Result<usize, &'static str> {
    let mut disks = DISKS.lock();
    let slot = disks
        .iter()
        .position(|d| d.is_none())
        .ok_or("too many disks")?;
    disks[slot] = Some(bring_up(slot, drc, regions, queue_source)?);
    Ok(slot)
}

/// The driver's set-up of the device, from a reset to DRIVER_OK, with
/// disk slot `slot`'s rings.
fn bring_up(
    slot: usize,
    drc: u32,
    regions: Regions,
    queue_source: u32,
) -> Result<Disk, &'static str> {
    let wanted = negotiate(regions.common)?;
    start_queue(slot, drc, regions, queue_source, wanted)
}

/// The first half of a set-up: a reset, then features (VERSION_1, and RO
/// and FLUSH when offered) up to FEATURES_OK. The features taken.
fn negotiate(common: u64) -> Result<u64, &'static str> {
    let status = |value: u8| mmio_write8(common + DEVICE_STATUS, value);
    status(0);
    if mmio_read8(common + DEVICE_STATUS) != 0 {
        return Err("the device does not reset");
    }
    status(ACKNOWLEDGE);
    status(ACKNOWLEDGE | DRIVER);
    mmio_write32(common + DEVICE_FEATURE_SELECT, 0);
    let low = u64::from(mmio_read32(common + DEVICE_FEATURE));
    mmio_write32(common + DEVICE_FEATURE_SELECT, 1);
    let offered = low | u64::from(mmio_read32(common + DEVICE_FEATURE)) << 32;
    if offered & VERSION_1 == 0 {
        status(0x80);
        return Err("not a modern device");
    }
    let wanted = offered & (VERSION_1 | BLK_RO | BLK_FLUSH);
    mmio_write32(common + DRIVER_FEATURE_SELECT, 0);
    mmio_write32(common + DRIVER_FEATURE, wanted as u32);
    mmio_write32(common + DRIVER_FEATURE_SELECT, 1);
    mmio_write32(common + DRIVER_FEATURE, (wanted >> 32) as u32);
    status(ACKNOWLEDGE | DRIVER | FEATURES_OK);
    if mmio_read8(common + DEVICE_STATUS) & FEATURES_OK == 0 {
        status(0x80);
        return Err("the device refused the features");
    }
    Ok(wanted)
}

/// The second half: the queue on fresh rings, its vector, DRIVER_OK (which
/// the device must keep).
fn start_queue(
    slot: usize,
    drc: u32,
    regions: Regions,
    queue_source: u32,
    wanted: u64,
) -> Result<Disk, &'static str> {
    let common = regions.common;
    let status = |value: u8| mmio_write8(common + DEVICE_STATUS, value);
    if mmio_read8(common + DEVICE_STATUS) != ACKNOWLEDGE | DRIVER | FEATURES_OK {
        status(0x80);
        return Err("the device forgot the features");
    }
    mmio_write16(common + MSIX_CONFIG, CONFIG_VECTOR);
    mmio_write16(common + QUEUE_SELECT, 0);
    let size = mmio_read16(common + QUEUE_SIZE_REGISTER);
    if size < QUEUE_SIZE {
        status(0x80);
        return Err("the queue is too small");
    }
    mmio_write16(common + QUEUE_SIZE_REGISTER, QUEUE_SIZE);
    mmio_write16(common + QUEUE_MSIX_VECTOR, QUEUE_VECTOR);
    let page = ring(slot);
    // A fresh queue: zeroed rings.
    for at in (0..4096).step_by(8) {
        put::<u64>(page, at, 0);
    }
    let base = page as u64;
    for (register, offset) in [
        (QUEUE_DESC, DESC_AT),
        (QUEUE_DRIVER, AVAIL_AT),
        (QUEUE_DEVICE, USED_AT),
    ] {
        let address = base + offset as u64;
        mmio_write32(common + register, address as u32);
        mmio_write32(common + register + 4, (address >> 32) as u32);
    }
    let notify_off = u64::from(mmio_read16(common + QUEUE_NOTIFY_OFF));
    mmio_write16(common + QUEUE_ENABLE, 1);
    SOURCES[slot].store(queue_source, Ordering::Relaxed);
    INTERRUPTS[slot].store(0, Ordering::Relaxed);
    let running = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK;
    status(running);
    if mmio_read8(common + DEVICE_STATUS) != running {
        return Err("the device did not keep DRIVER_OK");
    }
    let sectors =
        u64::from(mmio_read32(regions.device)) | u64::from(mmio_read32(regions.device + 4)) << 32;
    Ok(Disk {
        drc,
        regions,
        notify: regions.notify + notify_off * u64::from(regions.notify_multiplier),
        sectors,
        read_only: wanted & BLK_RO != 0,
        next_avail: 0,
        in_flight: false,
        held: false,
        hold_sector: 0,
        hold_reads: 0,
        hold_errors: 0,
    })
}

/// `blk setup <n> features|finish`: the driver's set-up of disk `n` again,
/// in two halves, so that whatever serves the device can be made to fail
/// between them: `features` resets it and negotiates; `finish` starts the
/// queue from where the device says the driver is.
fn setup(n: usize, half: &str) {
    let mut disks = DISKS.lock();
    let Some(Some(disk)) = disks.get_mut(n) else {
        Line::new().str("blk setup: no disk ").dec(n as u64).nl();
        return;
    };
    let outcome = match half {
        "features" => negotiate(disk.regions.common).map(|_| ()),
        "finish" => {
            let source = SOURCES[n].load(Ordering::Relaxed);
            let wanted = if disk.read_only {
                VERSION_1 | BLK_RO
            } else {
                VERSION_1
            };
            start_queue(n, disk.drc, disk.regions, source, wanted).map(|fresh| *disk = fresh)
        }
        _ => Err("features|finish"),
    };
    let mut line = Line::new();
    line.str("blk setup ").str(half).str(": ");
    match outcome {
        Ok(()) => line.str("ok").nl(),
        Err(why) => line.str(why).nl(),
    };
}

/// The driver lets the device go (the device is being removed): it is
/// reset, its disk forgotten. Whether it was held (busy).
pub fn detach(drc: u32) -> Option<bool> {
    let mut disks = DISKS.lock();
    let slot = disks.iter().position(|d| d.is_some_and(|d| d.drc == drc))?;
    let disk = disks[slot].take()?;
    mmio_write8(disk.regions.common + DEVICE_STATUS, 0);
    SOURCES[slot].store(0, Ordering::Relaxed);
    if disk.held {
        Line::new()
            .str("blk: disk ")
            .dec(slot as u64)
            .str(" removed while held (")
            .dec(disk.hold_reads)
            .str(" reads)")
            .nl();
    }
    Some(disk.held)
}

/// Makes a request of `count` sectors at `sector` through the data buffer
/// and rings the queue; [`complete`] waits for it.
fn submit(
    slot: usize,
    disk: &mut Disk,
    kind: u32,
    sector: u64,
    count: u64,
) -> Result<(), &'static str> {
    submit_to(slot, disk, kind, sector, count, data(slot) as u64)
}

/// [`submit`] with the data at `data_address`.
fn submit_to(
    slot: usize,
    disk: &mut Disk,
    kind: u32,
    sector: u64,
    count: u64,
    data_address: u64,
) -> Result<(), &'static str> {
    let page = ring(slot);
    put::<u32>(page, HEADER_AT, kind);
    put::<u32>(page, HEADER_AT + 4, 0);
    put::<u64>(page, HEADER_AT + 8, sector);
    put::<u8>(page, STATUS_AT, 0xff);
    let descriptor = |index: usize, address: u64, length: u32, flags: u16, next: u16| {
        let at = DESC_AT + index * 16;
        put::<u64>(page, at, address);
        put::<u32>(page, at + 8, length);
        put::<u16>(page, at + 12, flags);
        put::<u16>(page, at + 14, next);
    };
    let base = page as u64;
    descriptor(0, base + HEADER_AT as u64, 16, DESC_NEXT, 1);
    let (data_flags, data_bytes) = match kind {
        TYPE_IN => (DESC_WRITE, (count * SECTOR) as u32),
        TYPE_GET_ID => (DESC_WRITE, ID_BYTES),
        _ => (0, (count * SECTOR) as u32),
    };
    descriptor(1, data_address, data_bytes, DESC_NEXT | data_flags, 2);
    descriptor(2, base + STATUS_AT as u64, 1, DESC_WRITE, 0);
    let index = disk.next_avail;
    put::<u16>(page, AVAIL_AT + 4 + 2 * usize::from(index % QUEUE_SIZE), 0);
    compiler_fence(Ordering::SeqCst);
    disk.next_avail = index.wrapping_add(1);
    put::<u16>(page, AVAIL_AT + 2, disk.next_avail);
    compiler_fence(Ordering::SeqCst);
    mmio_write16(disk.notify, 0);
    disk.in_flight = true;
    Ok(())
}

/// Whether the device used the request in flight.
fn used(slot: usize, disk: &Disk) -> bool {
    get::<u16>(ring(slot), USED_AT + 2) == disk.next_avail
}

/// Waits for the request in flight: its status. A request that takes
/// long has the device's status looked at (as a driver's timeout handler
/// does): a device that needs a reset will not answer.
fn complete(slot: usize, disk: &mut Disk) -> Result<(), &'static str> {
    let mut polls = 0;
    while !used(slot, disk) {
        polls += 1;
        if polls > MAX_POLLS {
            return Err("no answer");
        }
        if polls % STATUS_POLLS == 0
            && mmio_read8(disk.regions.common + DEVICE_STATUS) & NEEDS_RESET != 0
        {
            return Err("the device needs a reset");
        }
        core::hint::spin_loop();
    }
    disk.in_flight = false;
    compiler_fence(Ordering::SeqCst);
    match get::<u8>(ring(slot), STATUS_AT) {
        STATUS_OK => Ok(()),
        1 => Err("I/O error"),
        2 => Err("unsupported"),
        _ => Err("no status"),
    }
}

/// One request, waited for (after a background read still in flight).
fn request(
    slot: usize,
    disk: &mut Disk,
    kind: u32,
    sector: u64,
    count: u64,
) -> Result<(), &'static str> {
    if disk.in_flight {
        let outcome = complete(slot, disk);
        disk.count_background(outcome);
    }
    submit(slot, disk, kind, sector, count)?;
    complete(slot, disk)
}

impl Disk {
    fn count_background(&mut self, outcome: Result<(), &'static str>) {
        match outcome {
            Ok(()) => self.hold_reads += 1,
            Err(_) => self.hold_errors += 1,
        }
    }
}

/// Fills the data buffer with the pattern of `count` sectors from `sector`.
fn fill(slot: usize, sector: u64, count: u64, seed: u64) {
    let buffer = data(slot);
    for s in 0..count {
        for word in 0..SECTOR / 8 {
            let at = (s * SECTOR + word * 8) as usize;
            put::<u64>(buffer, at, pattern((sector + s) * SECTOR + word * 8, seed));
        }
    }
}

/// The first sector of the buffer that does not hold its pattern.
fn mismatch(slot: usize, sector: u64, count: u64, seed: u64) -> Option<u64> {
    let buffer = data(slot);
    (0..count)
        .find(|s| {
            (0..SECTOR / 8).any(|word| {
                let at = (s * SECTOR + word * 8) as usize;
                get::<u64>(buffer, at) != pattern((sector + s) * SECTOR + word * 8, seed)
            })
        })
        .map(|s| sector + s)
}

fn parse(word: Option<&str>, number: fn(&str) -> Option<u64>) -> Option<u64> {
    word.and_then(number)
}

/// `blk`, `blk write|check <n> <sector> <count> <seed>`, `blk hold|unhold <n>`.
pub fn command<'a>(words: &mut impl Iterator<Item = &'a str>, number: fn(&str) -> Option<u64>) {
    const SYNTAX: &str =
        "blk | blk write|check <n> <sector> <count> <seed> | blk stress <n> <first> <area> <requests> <read-seed> <write-seed> | blk tagged <n> <first> <count> <seed> | blk setup <n> features|finish | blk status <n> | blk hold|unhold <n> | blk irqs <n> | blk hostile <n> early-kick|wild-descriptor|garbage-config";
    let usage = || {
        Line::new().str("usage: ").str(SYNTAX).nl();
    };
    match words.next() {
        None => list(),
        Some(action @ ("write" | "check")) => {
            let args = [
                parse(words.next(), number),
                parse(words.next(), number),
                parse(words.next(), number),
                parse(words.next(), number),
            ];
            let [Some(n), Some(sector), Some(count), Some(seed)] = args else {
                return usage();
            };
            let pass = match action {
                "write" => Pass::Write,
                _ => Pass::Check("blk check: ", mismatch),
            };
            transfer(pass, n as usize, sector, count, seed);
        }
        Some("stress") => {
            let args = [(); 6].map(|()| parse(words.next(), number));
            let [Some(n), Some(first), Some(area), Some(requests), Some(read), Some(write)] = args
            else {
                return usage();
            };
            stress::run(n as usize, first, area, requests, read, write);
        }
        Some("setup") => {
            let Some(n) = parse(words.next(), number) else {
                return usage();
            };
            setup(n as usize, words.next().unwrap_or(""));
        }
        Some("tagged") => {
            let args = [(); 4].map(|()| parse(words.next(), number));
            let [Some(n), Some(first), Some(count), Some(seed)] = args else {
                return usage();
            };
            stress::check_tagged(n as usize, first, count, seed);
        }
        Some(action @ ("hold" | "unhold")) => {
            let Some(n) = parse(words.next(), number) else {
                return usage();
            };
            hold(action == "hold", n as usize);
        }
        Some("hostile") => {
            let n = parse(words.next(), number).map(|n| n as usize);
            match (n, words.next()) {
                (Some(n), Some(what)) => hostile(n, what),
                _ => usage(),
            }
        }
        Some("status") => {
            let Some(n) = parse(words.next(), number) else {
                return usage();
            };
            let disks = DISKS.lock();
            match disks.get(n as usize) {
                Some(Some(disk)) => {
                    let status = mmio_read8(disk.regions.common + DEVICE_STATUS);
                    Line::new().str("blk status: ").hex(u64::from(status)).nl();
                }
                _ => {
                    Line::new().str("blk status: no disk ").dec(n).nl();
                }
            }
        }
        Some("irqs") => {
            let Some(n) = parse(words.next(), number).filter(|&n| (n as usize) < MAX_DISKS) else {
                return usage();
            };
            Line::new()
                .str("blk irqs: ")
                .dec(INTERRUPTS[n as usize].load(Ordering::Relaxed))
                .nl();
        }
        Some(_) => usage(),
    }
}

fn list() {
    let disks = *DISKS.lock();
    let mut any = false;
    for (n, disk) in disks.iter().enumerate() {
        let Some(disk) = disk else { continue };
        any = true;
        let mut line = Line::new();
        line.str("blk ")
            .dec(n as u64)
            .str(": ")
            .dec(disk.sectors)
            .str(" sectors");
        if disk.read_only {
            line.str(", read-only");
        }
        line.nl();
    }
    if !any {
        Line::new().str("blk: no disks").nl();
    }
}

/// What [`transfer`] does over the sectors.
pub(crate) enum Pass {
    /// Writes the pattern.
    Write,
    /// Reads and checks them (the label of its lines, and the check: the
    /// first sector of the data buffer that is wrong).
    Check(&'static str, fn(usize, u64, u64, u64) -> Option<u64>),
}

/// `count` sectors of disk `n` from `sector`, written with or checked
/// against `seed`'s pattern, in requests of up to 64 sectors.
pub(crate) fn transfer(pass: Pass, n: usize, sector: u64, count: u64, seed: u64) {
    let write = matches!(pass, Pass::Write);
    let what = match pass {
        Pass::Write => "blk write: ",
        Pass::Check(what, _) => what,
    };
    let mut disks = DISKS.lock();
    let Some(Some(disk)) = disks.get_mut(n) else {
        Line::new().str(what).str("no disk ").dec(n as u64).nl();
        return;
    };
    if sector
        .checked_add(count)
        .is_none_or(|end| end > disk.sectors)
    {
        Line::new().str(what).str("past the end of the disk").nl();
        return;
    }
    let mut done = 0;
    while done < count {
        let chunk = (count - done).min(MAX_REQUEST_SECTORS);
        let at = sector + done;
        let outcome = match pass {
            Pass::Write => {
                fill(n, at, chunk, seed);
                request(n, disk, TYPE_OUT, at, chunk)
            }
            Pass::Check(_, check) => request(n, disk, TYPE_IN, at, chunk).map(|()| {
                if let Some(bad) = check(n, at, chunk, seed) {
                    Line::new()
                        .str(what)
                        .str("mismatch at sector ")
                        .dec(bad)
                        .nl();
                    done = u64::MAX;
                }
            }),
        };
        if done == u64::MAX {
            return;
        }
        if let Err(why) = outcome {
            Line::new()
                .str(what)
                .str("error at sector ")
                .dec(at)
                .str(": ")
                .str(why)
                .nl();
            return;
        }
        done += chunk;
    }
    let mut line = Line::new();
    line.str(what).dec(count).str(" sectors");
    if !write {
        line.str(", ok");
    }
    line.nl();
}

fn hold(on: bool, n: usize) {
    let mut disks = DISKS.lock();
    let Some(Some(disk)) = disks.get_mut(n) else {
        Line::new().str("blk: no disk ").dec(n as u64).nl();
        return;
    };
    disk.held = on;
    if on {
        disk.hold_reads = 0;
        disk.hold_errors = 0;
        Line::new().str("blk hold: ").dec(n as u64).nl();
    } else {
        Line::new()
            .str("blk unhold: ")
            .dec(disk.hold_reads)
            .str(" reads, ")
            .dec(disk.hold_errors)
            .str(" errors")
            .nl();
    }
}

/// Background reads of each held disk (8 sectors at a time, rolling over
/// it): a finished one is counted and the next one made. The caller then
/// sleeps: the completion's interrupt wakes it, as a hot-plug event does.
pub fn background() {
    let mut disks = DISKS.lock();
    for (n, slot) in disks.iter_mut().enumerate() {
        let Some(disk) = slot.as_mut().filter(|disk| disk.held) else {
            continue;
        };
        if disk.in_flight {
            if !used(n, disk) {
                continue;
            }
            let outcome = complete(n, disk);
            disk.count_background(outcome);
        }
        let count = 8.min(disk.sectors);
        if count == 0 {
            continue;
        }
        if disk.hold_sector + count > disk.sectors {
            disk.hold_sector = 0;
        }
        let at = disk.hold_sector;
        if submit(n, disk, TYPE_IN, at, count).is_err() {
            disk.hold_errors += 1;
        }
        disk.hold_sector += count;
    }
}

/// What a hostile driver does to disk `n`; the platform must fail that
/// device only:
/// - `early-kick`: rings the queue before DRIVER_OK (the device then needs
///   a reset), then sets the device up again as a driver would;
/// - `wild-descriptor`: a request whose data lies outside guest memory;
/// - `garbage-config`: pseudo-random values over the function's
///   configuration header (its BARs and command too).
fn hostile(n: usize, what: &str) {
    let mut disks = DISKS.lock();
    let Some(Some(disk)) = disks.get_mut(n) else {
        Line::new().str("blk: no disk ").dec(n as u64).nl();
        return;
    };
    let common = disk.regions.common;
    match what {
        "early-kick" => {
            mmio_write8(common + DEVICE_STATUS, 0);
            mmio_write8(common + DEVICE_STATUS, ACKNOWLEDGE | DRIVER);
            mmio_write16(disk.notify, 0);
            let status = mmio_read8(common + DEVICE_STATUS);
            Line::new()
                .str("blk hostile: status ")
                .hex(u64::from(status))
                .nl();
            let source = SOURCES[n].load(Ordering::Relaxed);
            match bring_up(n, disk.drc, disk.regions, source) {
                Ok(fresh) => {
                    *disk = fresh;
                    Line::new().str("blk hostile: set up again").nl();
                }
                Err(why) => {
                    Line::new().str("blk hostile: ").str(why).nl();
                }
            }
        }
        "wild-descriptor" => {
            // The data descriptor points past guest memory.
            let outcome =
                submit_to(n, disk, TYPE_IN, 0, 1, 1 << 40).and_then(|()| complete(n, disk));
            let mut line = Line::new();
            line.str("blk hostile: wild descriptor: ");
            match outcome {
                Ok(()) => line.str("served").nl(),
                Err(why) => line.str(why).nl(),
            };
        }
        "garbage-config" => {
            let devfn = (disk.drc & 0xff) as u8;
            let mut x: u32 = 0x2545_f491;
            for register in (0..0x40).step_by(4) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                crate::pcibus::write(devfn, register, 4, x);
            }
            Line::new().str("blk hostile: garbage written").nl();
        }
        _ => {
            Line::new()
                .str("blk hostile: early-kick|wild-descriptor|garbage-config")
                .nl();
        }
    }
}

/// What `bench blk-*` times: one request on disk 0.
#[derive(Clone, Copy)]
pub enum BenchRequest {
    /// get-id: answered from the backend's memory, no image access.
    Null,
    /// 4 KiB read at a pseudo-random 4 KiB-aligned sector.
    Read,
    /// 4 KiB write there.
    Write,
}

/// Makes request number `i` of a benchmark on disk 0, waited for.
pub fn bench_request(kind: BenchRequest, i: u64) -> Result<(), &'static str> {
    let mut disks = DISKS.lock();
    let Some(Some(disk)) = disks.get_mut(0) else {
        return Err("no disk 0");
    };
    let blocks = (disk.sectors / 8).max(1);
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    x ^= x >> 29;
    let sector = (x % blocks) * 8;
    let count = 8.min(disk.sectors);
    match kind {
        BenchRequest::Null => request(0, disk, TYPE_GET_ID, 0, 0),
        BenchRequest::Read => request(0, disk, TYPE_IN, sector, count),
        BenchRequest::Write => request(0, disk, TYPE_OUT, sector, count),
    }
}

/// A hostile driver's ring: garbage over disk `n`'s descriptors and driver
/// ring (a random available index too), then the queue rung. The disk's
/// requests are not to be trusted after this (nor are they waited for).
pub fn scramble_ring(n: usize, seed: u64) {
    let mut disks = DISKS.lock();
    let Some(Some(disk)) = disks.get_mut(n) else {
        return;
    };
    let page = ring(n);
    let mut x = seed | 1;
    for at in (DESC_AT..USED_AT).step_by(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        put::<u64>(page, at, x);
    }
    compiler_fence(Ordering::SeqCst);
    mmio_write16(disk.notify, 0);
    disk.in_flight = false;
    disk.next_avail = get::<u16>(page, AVAIL_AT + 2);
}
