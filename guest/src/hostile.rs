//! `hostile SEED COUNT`: a guest that lies. COUNT random and malformed RTAS
//! calls, from a xorshift stream seeded by SEED: every token the platform
//! offers that does not end the guest or move its CPUs (no power-off,
//! reboot, start-cpu, stop-self, set-xive, os-term, display-character),
//! and tokens it does not offer; cell counts at and past the limits; DRC
//! calls on real, empty and made-up DRCs, in any order; configure-connector
//! on any DRC; check-exception and event-scan with odd buffers and lengths.
//! Each call's block, work area and buffer lie in RAM above 32 MiB, which
//! the guest does not use. PCI too: configuration reads and writes of any
//! register of any function (a plugged one's included), MSI changes and
//! queries, reads and writes anywhere in the first 32 MiB of the bridge's
//! window (where BARs, MSI-X tables and notifications are), and, every so
//! often, garbage descriptors in disk 0's ring, rung. It prints how many
//! calls got each RTAS status (and how many hypercalls were refused
//! outright), for the host to check.

use crate::console::Line;
use crate::platform;
use crate::rtas;

const BLOCK: u64 = 32 << 20;
const WORK_AREA: u64 = 33 << 20;
const BUFFER: u64 = 34 << 20;
/// Statuses tallied: -9003..=-9000 and -3..=4 (the rest are "other").
const TALLIES: usize = 12;

/// Tokens worth calling, and tokens nothing answers.
const TOKENS: [u32; 17] = [
    0x2001, // get-time-of-day
    0x2014, // read-pci-config
    0x2015, // write-pci-config
    0x2016, // ibm,read-pci-config
    0x2017, // ibm,write-pci-config
    0x2018, // ibm,query-interrupt-source-number
    0x2019, // ibm,change-msi
    0x2005, // query-cpu-stopped-state
    0x200e, // check-exception
    0x200f, // event-scan
    0x201a, // set-indicator
    0x201d, // get-sensor-state
    0x201e, // ibm,configure-connector
    0x2002, // not a call
    0x2008, // not a call
    0x2030, // not a call
    0xffff_ffff,
];

struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick(&mut self, values: &[u32]) -> u32 {
        values[self.below(values.len() as u64) as usize]
    }
}

fn put(at: u64, value: u32) {
    // SAFETY: `at` lies in RAM from 32 MiB up (checked by `run`), which the
    // guest uses for nothing else.
    unsafe { (at as *mut u32).write_volatile(value.to_be()) };
}

fn get(at: u64) -> u32 {
    // SAFETY: as in `put`.
    u32::from_be(unsafe { (at as *const u32).read_volatile() })
}

/// A DRC index a lying guest would pass: a real CPU or LMB DRC, or not.
fn drc(random: &mut Random) -> u32 {
    match random.below(4) {
        0 => 0x1000_0000 + random.below(8) as u32,
        1 => 0x8000_0000 + random.below(40) as u32,
        2 => random.pick(&[0, 0x2000_0001, 0x1000_0000 + 4096, 0x8fff_ffff]),
        _ => random.next() as u32,
    }
}

/// The arguments a call's token usually takes, filled in plausibly, or
/// random ones.
fn arguments(random: &mut Random, token: u32, args: &mut [u32; 16]) -> (u32, u32) {
    for arg in args.iter_mut() {
        *arg = random.next() as u32;
    }
    let usual = random.below(4) != 0;
    let (nargs, nret) = match token {
        0x201a => {
            args[0] = random.pick(&[9001, 9002, 9003, 9004, 0]);
            args[1] = drc(random);
            args[2] = random.pick(&[0, 1, 2, 3]);
            (3, 1)
        }
        0x201d => {
            args[0] = random.pick(&[9003, 9001, 1]);
            args[1] = drc(random);
            (2, 2)
        }
        0x201e => {
            put(WORK_AREA, drc(random));
            put(WORK_AREA + 4, random.next() as u32);
            args[0] = random.pick(&[WORK_AREA as u32, BUFFER as u32 + 4094, 0, u32::MAX]);
            args[1] = random.pick(&[0, 1, 0xf000_0000]);
            (2, 1)
        }
        0x200e => {
            args[2] = random.pick(&[0x1000_0000, 0x4000_0000, u32::MAX, 0]);
            args[4] = random.pick(&[BUFFER as u32, 0, u32::MAX, BUFFER as u32 + 1]);
            args[5] = random.pick(&[0, 1, 8, 116, 2048, 0x7fff_ffff]);
            (random.pick(&[6, 7]), 1)
        }
        0x200f => {
            args[0] = random.pick(&[0x1000_0000, 0x4000_0000, u32::MAX]);
            (4, 1)
        }
        0x2005 => {
            args[0] = random.below(80) as u32;
            (1, 2)
        }
        0x2014..=0x2019 => {
            // A plugged function's registers, or anyone's.
            let anyone = random.below(256) as u32;
            let devfn = random.pick(&[0x18, 0x20, anyone]);
            let register = random.below(0x1000) as u32;
            args[0] = ((register & 0xf00) << 16) | (devfn << 8) | (register & 0xff);
            let (high, low) = crate::pcibus::buid_cells();
            if random.below(8) != 0 {
                args[1] = high;
                args[2] = low;
            }
            match token {
                0x2014 => (2, 2),
                0x2015 => (3, 1),
                0x2016 => {
                    args[3] = random.pick(&[1, 2, 4, 3, 8]);
                    (4, 2)
                }
                0x2017 => {
                    args[3] = random.pick(&[1, 2, 4, 3, 8]);
                    (5, 1)
                }
                0x2018 => {
                    args[3] = random.below(6) as u32;
                    (4, 3)
                }
                _ => {
                    args[3] = random.below(8) as u32;
                    args[4] = random.below(40) as u32;
                    (6, random.pick(&[3, 4]))
                }
            }
        }
        _ => (0, 8),
    };
    match usual {
        true => (nargs, nret),
        false => (random.below(19) as u32, random.below(19) as u32),
    }
}

/// `hostile SEED COUNT`.
pub fn run(seed: u64, count: u64) {
    if platform::get().memory_bytes < BUFFER + 2 * 4096 {
        Line::new().str("hostile: not enough RAM").nl();
        return;
    }
    let mut random = Random(seed | 1);
    let mut tallies = [0u64; TALLIES];
    let (mut other, mut refused, mut unread) = (0u64, 0u64, 0u64);
    let mut args = [0u32; 16];
    for i in 0..count {
        // The bridge's window, as a driver reaches BARs.
        if random.below(4) == 0 {
            let at = crate::pcibus::window_cpu() + (random.below(32 << 20) & !3);
            match random.below(3) {
                0 => {
                    crate::pcibus::mmio_read32(at);
                }
                1 => crate::pcibus::mmio_write32(at, random.next() as u32),
                _ => crate::pcibus::mmio_write16(at & !1, random.next() as u16),
            }
        }
        if i % 256 == 255 {
            crate::virtio_blk::scramble_ring(0, random.next());
        }
        let token = random.pick(&TOKENS);
        let (nargs, nret) = arguments(&mut random, token, &mut args);
        put(BLOCK, token);
        put(BLOCK + 4, nargs);
        put(BLOCK + 8, nret);
        let cells = (nargs as usize).min(16);
        for (i, arg) in args[..cells].iter().enumerate() {
            put(BLOCK + 12 + 4 * i as u64, *arg);
        }
        // The status cell holds a marker: a call that did not run leaves it.
        let status_cell = BLOCK + 12 + 4 * u64::from(nargs);
        let readable = nret > 0 && nargs + nret <= 16;
        if readable {
            put(status_cell, 0x5a5a_5a5a);
        }
        if rtas::raw(BLOCK) != 0 {
            refused += 1;
            continue;
        }
        if !readable {
            unread += 1;
            continue;
        }
        match get(status_cell) as i32 {
            status @ -9003..=-9000 => tallies[(status + 9003) as usize] += 1,
            status @ -3..=4 => tallies[(status + 3 + 4) as usize] += 1,
            _ => other += 1,
        }
    }
    let mut line = Line::new();
    line.str("hostile: ").dec(count).str(" calls:");
    for (i, &n) in tallies.iter().enumerate() {
        if n > 0 {
            let status = if i < 4 { i as i64 - 9003 } else { i as i64 - 7 };
            line.str(" ").signed(status).str("=").dec(n);
        }
    }
    line.str(" other=").dec(other);
    line.str(" refused=").dec(refused);
    line.str(" unread=").dec(unread);
    line.nl();
}
