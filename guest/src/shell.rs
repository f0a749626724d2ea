//! The console shell. Every command's output is documented in the README,
//! because tests read it. The shell runs on one CPU at a time (see
//! `cpu::shell_owner`); its input state is shared so that it survives a move.

use crate::arch;
use crate::console::{print, read_input, Line};
use crate::cpu::{self, CpuError};
use crate::dlpar;
use crate::epow;
use crate::hcall::hcall;
use crate::platform;
use crate::rtas::{self, RtasError};
use crate::sync::SpinLock;

const PROMPT: &str = "guest> ";
const MAX_LINE: usize = 128;
/// rtas-raw only writes its block into RAM above the kernel and device tree.
const RAW_BLOCK_FLOOR: u64 = 32 << 20;
/// An hcall number nobody implements: the cheapest round trip to the VMM.
const H_NULL_FOR_BENCH: u64 = 0xdead;

struct LineReader {
    buf: [u8; MAX_LINE],
    len: usize,
    pending: [u8; 16],
    pending_len: usize,
    pending_pos: usize,
    last_was_cr: bool,
}

static READER: SpinLock<LineReader> = SpinLock::new(LineReader {
    buf: [0; MAX_LINE],
    len: 0,
    pending: [0; 16],
    pending_len: 0,
    pending_pos: 0,
    last_was_cr: false,
});

impl LineReader {
    /// The next input byte; `None` when hot-plug work arrived first.
    fn next_byte(&mut self) -> Option<u8> {
        while self.pending_pos == self.pending_len {
            self.pending_len = read_input(&mut self.pending);
            self.pending_pos = 0;
            if self.pending_len == 0 {
                if dlpar::pending() || epow::pending() {
                    return None;
                }
                // A held disk reads in the background while the shell
                // waits: each completion's interrupt wakes it for the next.
                crate::virtio_blk::background();
                // The VMM raises the console interrupt when input arrives after
                // we found the queue empty, so this cannot sleep through input.
                arch::wait_for_interrupt();
            }
        }
        let b = self.pending[self.pending_pos];
        self.pending_pos += 1;
        Some(b)
    }

    /// Reads one line into `out`, echoing what is typed; `None` when
    /// interrupted by hot-plug work (what was typed so far is kept).
    fn read_line(&mut self, out: &mut [u8; MAX_LINE]) -> Option<usize> {
        loop {
            let b = self.next_byte()?;
            let after_cr = core::mem::replace(&mut self.last_was_cr, b == b'\r');
            match b {
                b'\n' if after_cr => continue,
                b'\r' | b'\n' => {
                    print("\n");
                    let len = core::mem::take(&mut self.len);
                    out[..len].copy_from_slice(&self.buf[..len]);
                    return Some(len);
                }
                0x08 | 0x7f if self.len > 0 => {
                    self.len -= 1;
                    print("\x08 \x08");
                }
                b if (0x20..0x7f).contains(&b) && self.len < MAX_LINE => {
                    self.buf[self.len] = b;
                    self.len += 1;
                    Line::new().bytes(&[b]);
                }
                _ => {}
            }
        }
    }

    /// Prints the prompt and what was typed of the current line.
    fn prompt(&self) {
        Line::new().str(PROMPT).bytes(&self.buf[..self.len]);
    }
}

/// Runs the shell on this CPU for as long as it owns it.
pub fn run() {
    let me = arch::cpu_id();
    if let Some((stopped, result)) = cpu::finish_pending_stop() {
        report_offline(stopped, result);
    }
    let mut line = [0u8; MAX_LINE];
    let mut show_prompt = true;
    loop {
        if epow::pending() {
            epow::process();
            show_prompt = true;
        }
        if dlpar::pending() {
            if let dlpar::Work::MoveShellTo(heir) = dlpar::process() {
                cpu::hand_shell_to(heir);
                return;
            }
            show_prompt = true;
        }
        if cpu::shell_owner() != me {
            return;
        }
        if core::mem::take(&mut show_prompt) {
            READER.lock().prompt();
        }
        let Some(len) = READER.lock().read_line(&mut line) else {
            continue;
        };
        show_prompt = true;
        let text = core::str::from_utf8(&line[..len]).unwrap_or("");
        let mut words = text.split(' ').filter(|w| !w.is_empty());
        let Some(command) = words.next() else {
            continue;
        };
        match command {
            "help" => help(),
            "cpus" => cpus(),
            "cpu" => cpu_command(&mut words),
            "events" => dlpar::print_recent(),
            "rtas-calls" => {
                Line::new().str("rtas-calls: ").dec(rtas::calls()).nl();
            }
            "rtas-recent" => {
                let mut recent = [(0, 0); rtas::RECENT];
                let count = rtas::recent(&mut recent);
                for &(token, cycles) in &recent[..count] {
                    Line::new()
                        .str("rtas-recent: token ")
                        .hex(token as u64)
                        .str(" tsc ")
                        .dec(cycles)
                        .nl();
                }
            }
            "rtas-time" => {
                Line::new()
                    .str("rtas-time: ")
                    .dec(rtas::calls())
                    .str(" calls, tsc ")
                    .dec(rtas::cycles())
                    .nl();
            }
            "mem" => crate::lmb::command(&mut words, parse_number),
            "hostile" => match (
                words.next().and_then(parse_number),
                words.next().and_then(parse_number),
            ) {
                (Some(seed), Some(count)) => crate::hostile::run(seed, count),
                _ => usage("hostile <seed> <count>"),
            },
            "dlpar" => match words.next() {
                Some("off") => {
                    dlpar::hold(true);
                    print("dlpar: off\n");
                }
                Some("on") => {
                    dlpar::hold(false);
                    print("dlpar: on\n");
                }
                _ => usage("dlpar on|off"),
            },
            "pci" => match words.next() {
                None => crate::pci::list(),
                Some("calls") => crate::pci::print_calls(),
                Some(_) => usage("pci [calls]"),
            },
            "blk" => crate::virtio_blk::command(&mut words, parse_number),
            "time" => time(),
            "rtas-raw" => rtas_raw(&mut words),
            "bench" => bench(&mut words),
            "poweroff" => power_off(),
            "reboot" => reboot(),
            _ => {
                Line::new()
                    .str("unknown command: ")
                    .str(command)
                    .str(" (try help)")
                    .nl();
            }
        }
    }
}

fn help() {
    print(concat!(
        "commands:\n",
        "  help                 this list\n",
        "  cpus                 one line per present CPU: cpu <n> online|offline\n",
        "  cpu offline <n>      stop CPU n (stop-self); the shell moves if it ran there\n",
        "  cpu online <n>       start CPU n (start-cpu)\n",
        "  events               the last hot-plug events received\n",
        "  rtas-calls           RTAS calls the guest made since boot\n",
        "  rtas-time            those calls, and the TSC cycles spent in them\n",
        "  rtas-recent          the last 16 of them: token and TSC cycles each\n",
        "  hostile <seed> <n>   n random and malformed RTAS calls; a tally of their statuses\n",
        "  dlpar off|on         stop or resume handling hot-plug events\n",
        "  pci                  one line per PCI function: pci <drc> <bus:dev.fn> <vendor:device> <driver or ->\n",
        "  pci calls            the RTAS calls of the last PCI add or remove, with their statuses\n",
        "  mem                  one line per LMB: lmb <drc> at <addr>: assigned|free [online] [pinned]\n",
        "  mem pin|unpin <addr> make the LMB holding addr non-movable, or movable again\n",
        "  mem fill|check <addr> <len> <seed>  write or check a pattern (a word per page)\n",
        "  time                 RTAS get-time-of-day\n",
        "  rtas-raw <addr> <token> <nargs> <nret> [args]  a hand-made RTAS call\n",
        "  bench hcall|rtas|rtas-named|sensor <n>  n null hcalls, query-cpu-stopped-state (a prepared block, or by name) or get-sensor-state calls, timed\n",
        "  poweroff             RTAS power-off\n",
        "  reboot               RTAS system-reboot\n",
    ));
}

fn cpus() {
    for id in (0..arch::MAX_CPUS).filter(|&id| dlpar::is_present(id)) {
        let state = if cpu::is_online(id) {
            "online"
        } else {
            "offline"
        };
        Line::new()
            .str("cpu ")
            .dec(id as u64)
            .str(" ")
            .str(state)
            .nl();
    }
}

/// A decimal or 0x-prefixed hexadecimal number.
fn parse_number(word: &str) -> Option<u64> {
    match word.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => word.parse().ok(),
    }
}

fn usage(text: &str) {
    Line::new().str("usage: ").str(text).nl();
}

fn cpu_command<'a>(words: &mut impl Iterator<Item = &'a str>) {
    let action = words.next();
    let Some(cpu) = words.next().and_then(parse_number).map(|n| n as usize) else {
        return usage("cpu offline|online <n>");
    };
    match action {
        Some("offline") => report_offline(cpu, cpu::take_down(cpu)),
        Some("online") => match cpu::bring_up(cpu) {
            Ok(()) => {
                Line::new().str("cpu ").dec(cpu as u64).str(" online").nl();
            }
            Err(error) => report_cpu_error(cpu, error),
        },
        _ => usage("cpu offline|online <n>"),
    }
}

fn report_offline(cpu: usize, result: Result<(), CpuError>) {
    match result {
        Ok(()) => {
            Line::new().str("cpu ").dec(cpu as u64).str(" offline").nl();
        }
        Err(error) => report_cpu_error(cpu, error),
    }
}

pub fn report_cpu_error(cpu: usize, error: CpuError) {
    let mut line = Line::new();
    line.str("cpu ").dec(cpu as u64);
    match error {
        CpuError::NoSuchCpu => line.str(": no such CPU"),
        CpuError::AlreadyOnline => line.str(" is already online"),
        CpuError::AlreadyOffline => line.str(" is already offline"),
        CpuError::LastOnline => line.str(": cannot offline the last online CPU"),
        CpuError::Timeout => line.str(": timed out"),
        CpuError::Rtas(call, result) => {
            line.str(": ").str(call).str(" failed: ");
            match result {
                Ok(status) => line.str("status ").signed(status as i64),
                Err(RtasError::NoToken) => line.str("no RTAS token"),
                Err(RtasError::Hcall(status)) => line.str("hcall status ").signed(status),
            }
        }
    };
    line.nl();
}

fn two_digits(line: &mut Line, value: u32) {
    if value < 10 {
        line.str("0");
    }
    line.dec(value as u64);
}

fn time() {
    match rtas::call("get-time-of-day", &[], 8) {
        Ok(ret) if ret.status == 0 => {
            let [year, month, day, hour, minute, second, ..] = ret.out;
            let mut line = Line::new();
            line.str("time: ").dec(year as u64).str("-");
            two_digits(&mut line, month);
            line.str("-");
            two_digits(&mut line, day);
            line.str(" ");
            two_digits(&mut line, hour);
            line.str(":");
            two_digits(&mut line, minute);
            line.str(":");
            two_digits(&mut line, second);
            line.str(" UTC").nl();
        }
        result => report_rtas_failure("time", result),
    }
}

/// Builds an rtas_args block by hand (big-endian token, nargs, nret, args)
/// at `addr` if that is RAM we may scribble on, and makes the hypercall.
fn rtas_raw<'a>(words: &mut impl Iterator<Item = &'a str>) {
    const SYNTAX: &str = "rtas-raw <addr> <token> <nargs> <nret> [args...]";
    let mut numbers = [0u64; 4 + 16];
    let mut count = 0;
    for word in words.by_ref().take(numbers.len()) {
        let Some(value) = parse_number(word) else {
            return usage(SYNTAX);
        };
        numbers[count] = value;
        count += 1;
    }
    if count < 4 {
        return usage(SYNTAX);
    }
    let [address, token, nargs, nret] = [numbers[0], numbers[1], numbers[2], numbers[3]];
    let args = &numbers[4..count];
    let cells = 3 + nargs.min(16) + nret.min(16);
    let writable = address >= RAW_BLOCK_FLOOR
        && address % 4 == 0
        && address.saturating_add(4 * cells) <= platform::get().memory_bytes;
    if writable {
        let block = address as *mut u32;
        let header = [token, nargs, nret];
        for (i, &value) in header.iter().chain(args).enumerate() {
            // SAFETY: the block lies in RAM above everything the guest uses.
            unsafe { block.add(i).write_volatile((value as u32).to_be()) };
        }
    }
    let status = rtas::raw(address);
    let mut line = Line::new();
    line.str("rtas-raw: ");
    if status != 0 {
        line.str("hcall status ").signed(status).nl();
        return;
    }
    if writable && nargs + nret <= 16 && nret > 0 {
        // SAFETY: as above; the return cell is inside the block.
        let ret = unsafe {
            (address as *const u32)
                .add(3 + nargs as usize)
                .read_volatile()
        };
        line.str("status ")
            .signed(u32::from_be(ret) as i32 as i64)
            .nl();
    } else {
        line.str("hcall status 0").nl();
    }
}

/// The calls `bench` times one by one (the first ones of a longer run).
const BENCH_SAMPLES: usize = 4096;
static BENCH_CYCLES: SpinLock<[u64; BENCH_SAMPLES]> = SpinLock::new([0; BENCH_SAMPLES]);

/// What `bench` calls.
enum BenchCall {
    NullHcall,
    /// An RTAS block built once: the platform's time alone.
    Block(rtas::RtasArgs),
    /// query-cpu-stopped-state as every other call of this guest is made:
    /// its token looked up by name, its block built each time.
    Named,
    /// A request on disk 0, through the queue: kick (ioeventfd), the
    /// backend, the used ring.
    Disk(crate::virtio_blk::BenchRequest),
}

/// Makes `count` calls in a row, each timed with the time-stamp counter,
/// and prints the total, the median and the 99th percentile in TSC cycles
/// (the host knows the counter's rate; this guest has no calibrated clock).
fn bench<'a>(words: &mut impl Iterator<Item = &'a str>) {
    const USAGE: &str = "bench hcall|rtas|rtas-named|sensor|blk-null|blk-read|blk-write <n>";
    let kind = words.next();
    let Some(count) = words.next().and_then(parse_number).filter(|&n| n > 0) else {
        return usage(USAGE);
    };
    let me = arch::cpu_id() as u32;
    let block = |name: &str, args: &[u32]| match platform::get().rtas_token(name) {
        Some(token) => Some(BenchCall::Block(rtas::RtasArgs::new(token, args, 2))),
        None => {
            report_rtas_failure("bench", Err(RtasError::NoToken));
            None
        }
    };
    let call = match kind {
        Some("hcall") => Some(BenchCall::NullHcall),
        // Answered by the RTAS server alone.
        Some("rtas") => block("query-cpu-stopped-state", &[me]),
        Some("rtas-named") => Some(BenchCall::Named),
        // Answered with the hotplug controller: the DR sensor of this CPU's core.
        Some("sensor") => block(
            "get-sensor-state",
            &[dlpar::DR_ENTITY_SENSE, dlpar::core_drc(me as usize)],
        ),
        Some("blk-null") => Some(BenchCall::Disk(crate::virtio_blk::BenchRequest::Null)),
        Some("blk-read") => Some(BenchCall::Disk(crate::virtio_blk::BenchRequest::Read)),
        Some("blk-write") => Some(BenchCall::Disk(crate::virtio_blk::BenchRequest::Write)),
        _ => return usage(USAGE),
    };
    let Some(mut call) = call else {
        return;
    };
    let mut samples = BENCH_CYCLES.lock();
    let started = arch::timestamp();
    for i in 0..count as usize {
        let before = arch::timestamp();
        match &mut call {
            BenchCall::NullHcall => {
                hcall(H_NULL_FOR_BENCH, [0; 6]);
            }
            BenchCall::Block(block) => {
                rtas::raw(block as *mut rtas::RtasArgs as u64);
            }
            BenchCall::Named => {
                let _ = rtas::call("query-cpu-stopped-state", &[me], 2);
            }
            BenchCall::Disk(kind) => {
                if let Err(why) = crate::virtio_blk::bench_request(*kind, i as u64) {
                    Line::new().str("bench failed: ").str(why).nl();
                    return;
                }
            }
        }
        if let Some(slot) = samples.get_mut(i) {
            *slot = arch::timestamp().wrapping_sub(before);
        }
    }
    let total = arch::timestamp().wrapping_sub(started);
    let timed = &mut samples[..(count as usize).min(BENCH_SAMPLES)];
    timed.sort_unstable();
    let at = |fraction: usize| timed[(timed.len() - 1) * fraction / 100];
    Line::new()
        .str("bench: ")
        .dec(count)
        .str(" calls, tsc total ")
        .dec(total)
        .str(" median ")
        .dec(at(50))
        .str(" p99 ")
        .dec(at(99))
        .nl();
}

fn report_rtas_failure(what: &str, result: Result<rtas::RtasReturn, RtasError>) {
    let mut line = Line::new();
    line.str(what).str(" failed: ");
    match result {
        Ok(ret) => line.str("status ").signed(ret.status as i64),
        Err(RtasError::NoToken) => line.str("no RTAS token"),
        Err(RtasError::Hcall(status)) => line.str("hcall status ").signed(status),
    };
    line.nl();
}

pub fn power_off() {
    print("powering off\n");
    // Linux passes -1 for both halves of the power-on mask.
    let result = rtas::call("power-off", &[u32::MAX, u32::MAX], 1);
    report_rtas_failure("poweroff", result);
}

fn reboot() {
    print("rebooting\n");
    let result = rtas::call("system-reboot", &[], 1);
    report_rtas_failure("reboot", result);
}
