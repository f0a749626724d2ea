//! The console shell. Every command's output is documented in the README,
//! because tests read it.

use crate::arch;
use crate::console::{print, read_input, Line};
use crate::cpu;
use crate::platform;
use crate::rtas::{self, RtasError};

const PROMPT: &str = "guest> ";
const MAX_LINE: usize = 128;

struct LineReader {
    buf: [u8; MAX_LINE],
    len: usize,
    pending: [u8; 16],
    pending_len: usize,
    pending_pos: usize,
    last_was_cr: bool,
}

impl LineReader {
    fn next_byte(&mut self) -> u8 {
        while self.pending_pos == self.pending_len {
            self.pending_len = read_input(&mut self.pending);
            self.pending_pos = 0;
            if self.pending_len == 0 {
                // The VMM raises the console interrupt when input arrives after
                // we found the queue empty, so this cannot sleep through input.
                arch::wait_for_interrupt();
            }
        }
        let b = self.pending[self.pending_pos];
        self.pending_pos += 1;
        b
    }

    /// Reads one line, echoing what is typed.
    fn read_line(&mut self) -> &str {
        self.len = 0;
        loop {
            let b = self.next_byte();
            let after_cr = core::mem::replace(&mut self.last_was_cr, b == b'\r');
            match b {
                b'\n' if after_cr => continue,
                b'\r' | b'\n' => {
                    print("\n");
                    break;
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
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

pub fn run() -> ! {
    let mut reader = LineReader {
        buf: [0; MAX_LINE],
        len: 0,
        pending: [0; 16],
        pending_len: 0,
        pending_pos: 0,
        last_was_cr: false,
    };
    loop {
        print(PROMPT);
        let line = reader.read_line();
        let mut words = line.split(' ').filter(|w| !w.is_empty());
        let Some(command) = words.next() else {
            continue;
        };
        match command {
            "help" => help(),
            "cpus" => cpus(),
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
        "  help      this list\n",
        "  cpus      one line per present CPU: cpu <n> online|offline\n",
        "  poweroff  RTAS power-off\n",
        "  reboot    RTAS system-reboot\n",
    ));
}

fn cpus() {
    let platform = platform::get();
    for &id in &platform.present[..platform.present_count] {
        let state = if cpu::is_online(id as usize) {
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

fn power_off() {
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
