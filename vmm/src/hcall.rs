//! The hypercall doorbell ABI: PAPR's hcall registers mapped onto x86.
//!
//! | PAPR | x86 | in | out |
//! |------|-----|----|-----|
//! | r3 | RAX | hcall number | status |
//! | r4..r9 | RBX, RCX, RSI, RDI, R8, R9 | arguments | outputs |
//!
//! The guest then writes EAX to [`HCALL_DOORBELL_PORT`](crate::layout::HCALL_DOORBELL_PORT).

use kvm_bindings::kvm_regs;

/// H_SUCCESS.
pub const H_SUCCESS: i64 = 0;
/// Try again later (PAPR H_BUSY).
pub const H_BUSY: i64 = 1;
/// H_FUNCTION: not implemented.
pub const H_FUNCTION: i64 = -2;
/// H_HARDWARE: the platform failed.
pub const H_HARDWARE: i64 = -1;
/// H_PARAMETER: a bad argument.
pub const H_PARAMETER: i64 = -4;

/// H_GET_TERM_CHAR: read from the console.
pub const H_GET_TERM_CHAR: u64 = 0x54;
/// H_PUT_TERM_CHAR: write to the console.
pub const H_PUT_TERM_CHAR: u64 = 0x58;
/// QEMU's private hcall for RTAS (KVMPPC_H_RTAS).
pub const H_RTAS: u64 = 0xf000;

/// An hcall as the guest made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hcall {
    /// Its number (EAX).
    pub number: u64,
    /// Its arguments, r4..r9's places.
    pub args: [u64; 6],
}

impl Hcall {
    /// The hcall a vCPU's registers hold.
    pub fn from_regs(regs: &kvm_regs) -> Hcall {
        Hcall {
            number: regs.rax,
            args: [regs.rbx, regs.rcx, regs.rsi, regs.rdi, regs.r8, regs.r9],
        }
    }
}

/// What goes back: the status in r3 and up to six outputs in r4..r9.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HcallResult {
    /// The status (r3).
    pub status: i64,
    /// The outputs (r4..r9).
    pub outputs: [u64; 6],
}

impl HcallResult {
    /// A status without outputs.
    pub fn status(status: i64) -> HcallResult {
        HcallResult {
            status,
            outputs: [0; 6],
        }
    }

    /// Writes the result into the registers; argument registers not used
    /// for outputs are left as the guest set them, as on PAPR.
    pub fn write_to(&self, regs: &mut kvm_regs, output_count: usize) {
        regs.rax = self.status as u64;
        let slots = [
            &mut regs.rbx,
            &mut regs.rcx,
            &mut regs.rsi,
            &mut regs.rdi,
            &mut regs.r8,
            &mut regs.r9,
        ];
        for (slot, value) in slots.into_iter().zip(self.outputs).take(output_count) {
            *slot = value;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_map_to_papr_r3_to_r9() {
        let regs = kvm_regs {
            rax: H_PUT_TERM_CHAR,
            rbx: 1,
            rcx: 2,
            rsi: 3,
            rdi: 4,
            r8: 5,
            r9: 6,
            rdx: 0x700,
            ..Default::default()
        };
        let call = Hcall::from_regs(&regs);
        assert_eq!(call.number, H_PUT_TERM_CHAR);
        assert_eq!(call.args, [1, 2, 3, 4, 5, 6]);

        let mut out = regs;
        HcallResult {
            status: H_SUCCESS,
            outputs: [10, 11, 12, 0, 0, 0],
        }
        .write_to(&mut out, 3);
        assert_eq!((out.rax, out.rbx, out.rcx, out.rsi), (0, 10, 11, 12));
        assert_eq!((out.rdi, out.r8, out.rdx), (4, 5, 0x700));
    }
}
