//! The hvterm console: output through H_PUT_TERM_CHAR, input through H_GET_TERM_CHAR.
//! Numbers are printed by hand: `core::fmt` would pull in SSE code.

use crate::hcall::{hcall, H_GET_TERM_CHAR, H_PUT_TERM_CHAR, H_SUCCESS};
use crate::sync::SpinLock;
use core::sync::atomic::{AtomicU64, Ordering};

static TERMNO: AtomicU64 = AtomicU64::new(0);
static OUTPUT_LOCK: SpinLock<()> = SpinLock::new(());

pub fn set_termno(termno: u64) {
    TERMNO.store(termno, Ordering::Relaxed);
}

fn put_chunk(chunk: &[u8]) {
    let mut packed = [0u8; 16];
    packed[..chunk.len()].copy_from_slice(chunk);
    let hi = u64::from_be_bytes(first8(&packed[0..8]));
    let lo = u64::from_be_bytes(first8(&packed[8..16]));
    hcall(
        H_PUT_TERM_CHAR,
        [
            TERMNO.load(Ordering::Relaxed),
            chunk.len() as u64,
            hi,
            lo,
            0,
            0,
        ],
    );
}

fn first8(bytes: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(&bytes[..8]);
    out
}

/// A line under construction; flushed in 16-byte hcalls so that one message
/// from one CPU is not interleaved with another's.
pub struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    pub const fn new() -> Self {
        Line {
            buf: [0; 256],
            len: 0,
        }
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes {
            if self.len == self.buf.len() {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        self
    }

    pub fn dec(&mut self, value: u64) -> &mut Self {
        let mut digits = [0u8; 20];
        let mut n = value;
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.bytes(&digits[i..])
    }

    pub fn signed(&mut self, value: i64) -> &mut Self {
        if value < 0 {
            self.str("-").dec(value.unsigned_abs())
        } else {
            self.dec(value as u64)
        }
    }

    pub fn hex(&mut self, value: u64) -> &mut Self {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 18];
        out[0] = b'0';
        out[1] = b'x';
        let mut len = 2;
        let mut started = false;
        for shift in (0..16).rev() {
            let nibble = ((value >> (shift * 4)) & 0xf) as usize;
            if nibble != 0 || started || shift == 0 {
                started = true;
                out[len] = DIGITS[nibble];
                len += 1;
            }
        }
        self.bytes(&out[..len])
    }

    pub fn nl(&mut self) -> &mut Self {
        self.str("\n")
    }

    pub fn flush(&mut self) {
        let _guard = OUTPUT_LOCK.lock();
        for chunk in self.buf[..self.len].chunks(16) {
            put_chunk(chunk);
        }
        self.len = 0;
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        self.flush();
    }
}

pub fn print(s: &str) {
    Line::new().str(s);
}

/// Whatever input the VMM has for us, up to 16 bytes; empty when there is none.
pub fn read_input(out: &mut [u8; 16]) -> usize {
    let ret = hcall(
        H_GET_TERM_CHAR,
        [TERMNO.load(Ordering::Relaxed), 0, 0, 0, 0, 0],
    );
    if ret.status != H_SUCCESS {
        return 0;
    }
    let len = (ret.out[0] as usize).min(16);
    out[0..8].copy_from_slice(&ret.out[1].to_be_bytes());
    out[8..16].copy_from_slice(&ret.out[2].to_be_bytes());
    len
}
