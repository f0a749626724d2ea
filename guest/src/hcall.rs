//! The hypercall doorbell: PAPR's hcall register ABI carried over an x86 port write.
//!
//! PAPR passes the hcall number in r3 and arguments in r4..r12, and returns the
//! status in r3 and outputs in r4... Here r3 is RAX and r4..r9 are RBX, RCX, RSI,
//! RDI, R8, R9; the `out` to the doorbell port makes the vCPU exit to the VMM,
//! which writes the results back into the same registers.

use core::arch::asm;

pub const DOORBELL_PORT: u16 = 0x0700;

pub const H_SUCCESS: i64 = 0;
pub const H_GET_TERM_CHAR: u64 = 0x54;
pub const H_PUT_TERM_CHAR: u64 = 0x58;
pub const H_RTAS: u64 = 0xf000;

/// Status (r3) and the six output registers (r4..r9).
pub struct HcallReturn {
    pub status: i64,
    pub out: [u64; 6],
}

pub fn hcall(number: u64, args: [u64; 6]) -> HcallReturn {
    let status: u64;
    let (mut r4, mut r5, mut r6, mut r7, mut r8, mut r9) =
        (args[0], args[1], args[2], args[3], args[4], args[5]);
    // SAFETY: the doorbell write only exits to the VMM, which changes no memory
    // of ours and only the registers named here (RBX is swapped by hand because
    // LLVM reserves it).
    unsafe {
        asm!(
            "xchg rbx, {r4}",
            "out dx, eax",
            "xchg rbx, {r4}",
            r4 = inout(reg) r4,
            inout("rax") number => status,
            inout("rcx") r5,
            inout("rsi") r6,
            inout("rdi") r7,
            inout("r8") r8,
            inout("r9") r9,
            in("dx") DOORBELL_PORT,
            options(nostack),
        );
    }
    HcallReturn {
        status: status as i64,
        out: [r4, r5, r6, r7, r8, r9],
    }
}
