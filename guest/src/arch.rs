//! x86_64 plumbing: our own GDT, a TSS per CPU (interrupts switch to an IST
//! stack because precompiled `core` uses the red zone), the IDT and the x2APIC.

use core::arch::{asm, global_asm};
use core::mem::size_of;

pub const MAX_CPUS: usize = 64;
pub const STACK_SIZE: usize = 16 * 1024;
const IST_SIZE: usize = 8 * 1024;

/// Device interrupts arrive on vector `DEVICE_VECTOR_BASE + (source - 0x1000)`:
/// the platform's sources on 0x30.., PCI functions' MSIs (sources 0x1010..)
/// on 0x40..0x7f.
pub const DEVICE_VECTOR_BASE: u8 = 0x30;
const DEVICE_VECTORS: u8 = 80;
/// PCI functions' MSI vectors start here.
pub const MSI_VECTOR_BASE: u8 = 0x40;
/// The last vector below the MSIs is ours: a CPU wakes another with it.
pub const WAKE_VECTOR: u8 = 0x3f;

const MSR_APIC_BASE: u32 = 0x1b;
const MSR_X2APIC_ID: u32 = 0x802;
const MSR_X2APIC_EOI: u32 = 0x80b;
const MSR_X2APIC_ICR: u32 = 0x830;
const MSR_X2APIC_SVR: u32 = 0x80f;

#[repr(C, packed)]
#[derive(Clone, Copy)]
struct Tss {
    reserved0: u32,
    rsp: [u64; 3],
    reserved1: u64,
    ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    iomap_base: u16,
}

const EMPTY_TSS: Tss = Tss {
    reserved0: 0,
    rsp: [0; 3],
    reserved1: 0,
    ist: [0; 7],
    reserved2: 0,
    reserved3: 0,
    iomap_base: size_of::<Tss>() as u16,
};

#[repr(C, align(16))]
struct IstStack([u8; IST_SIZE]);
#[repr(C, align(16))]
pub struct Stack([u8; STACK_SIZE]);

/// Kernel stacks of the secondary CPUs, by CPU id (the boot CPU has its own).
/// The entry code in main.rs computes a CPU's stack top from this symbol.
pub static mut STACKS: [Stack; MAX_CPUS] = [const { Stack([0; STACK_SIZE]) }; MAX_CPUS];

#[repr(C, packed)]
struct DescriptorPointer {
    limit: u16,
    base: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct IdtEntry {
    offset_low: u16,
    selector: u16,
    ist: u8,
    attributes: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

const GDT_ENTRIES: usize = 3 + 2 * MAX_CPUS;
const KERNEL_CS: u16 = 0x08;
const KERNEL_DS: u16 = 0x10;

// Written by each CPU for its own slots only (its TSS and its descriptor), before
// it loads them; the shared entries are constant.
static mut GDT: [u64; GDT_ENTRIES] = {
    let mut gdt = [0u64; GDT_ENTRIES];
    gdt[1] = 0x00af_9a00_0000_ffff; // 64-bit code
    gdt[2] = 0x00cf_9200_0000_ffff; // data
    gdt
};
static mut TSS: [Tss; MAX_CPUS] = [EMPTY_TSS; MAX_CPUS];
static mut IST_STACKS: [IstStack; MAX_CPUS] = [const { IstStack([0; IST_SIZE]) }; MAX_CPUS];
static mut IDT: [IdtEntry; 256] = [IdtEntry {
    offset_low: 0,
    selector: 0,
    ist: 0,
    attributes: 0,
    offset_mid: 0,
    offset_high: 0,
    reserved: 0,
}; 256];

/// Saved by the interrupt stubs below, lowest address first.
#[repr(C)]
pub struct InterruptFrame {
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

global_asm!(
    r#"
    .section .text
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,48,49,50,51,52,53,54,55,56,57,58,59,60,61,62,63,64,65,66,67,68,69,70,71,72,73,74,75,76,77,78,79,80,81,82,83,84,85,86,87,88,89,90,91,92,93,94,95,96,97,98,99,100,101,102,103,104,105,106,107,108,109,110,111,112,113,114,115,116,117,118,119,120,121,122,123,124,125,126,127
    .global isr_\n
    isr_\n:
    .if (\n == 8) | (\n == 10) | (\n == 11) | (\n == 12) | (\n == 13) | (\n == 14) | (\n == 17) | (\n == 21) | (\n == 29) | (\n == 30)
    .else
        push 0
    .endif
        push \n
        jmp isr_common
    .endr

    isr_common:
        push rax
        push rcx
        push rdx
        push rsi
        push rdi
        push r8
        push r9
        push r10
        push r11
        mov rdi, rsp
        cld
        call {dispatch}
        pop r11
        pop r10
        pop r9
        pop r8
        pop rdi
        pop rsi
        pop rdx
        pop rcx
        pop rax
        add rsp, 16
        iretq

    .section .rodata
    .balign 8
    .global isr_table
    isr_table:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,48,49,50,51,52,53,54,55,56,57,58,59,60,61,62,63,64,65,66,67,68,69,70,71,72,73,74,75,76,77,78,79,80,81,82,83,84,85,86,87,88,89,90,91,92,93,94,95,96,97,98,99,100,101,102,103,104,105,106,107,108,109,110,111,112,113,114,115,116,117,118,119,120,121,122,123,124,125,126,127
        .quad isr_\n
    .endr
    "#,
    dispatch = sym crate::interrupt_dispatch,
);

extern "C" {
    static isr_table: [u64; 32 + DEVICE_VECTORS as usize];
}

fn set_idt_entry(vector: usize, handler: u64) {
    let entry = IdtEntry {
        offset_low: handler as u16,
        selector: KERNEL_CS,
        ist: 1,
        attributes: 0x8e, // present, DPL 0, 64-bit interrupt gate
        offset_mid: (handler >> 16) as u16,
        offset_high: (handler >> 32) as u32,
        reserved: 0,
    };
    // SAFETY: called by the boot CPU before any other CPU runs or interrupts are enabled.
    unsafe { IDT[vector] = entry };
}

/// Fills the IDT once, on the boot CPU.
pub fn init_idt() {
    // SAFETY: isr_table is a constant table emitted by the assembly above.
    let table = unsafe { &isr_table };
    let vectors =
        (0..32).chain(DEVICE_VECTOR_BASE as usize..(DEVICE_VECTOR_BASE + DEVICE_VECTORS) as usize);
    for (vector, &handler) in vectors.zip(table.iter()) {
        set_idt_entry(vector, handler);
    }
}

/// Loads this CPU's GDT slots, TSS and the shared IDT, and enables its x2APIC.
pub fn init_cpu(cpu: usize) {
    // SAFETY: slot `cpu` of TSS, IST_STACKS and GDT belongs to this CPU alone.
    unsafe {
        let ist_top = core::ptr::addr_of!(IST_STACKS[cpu]) as u64 + IST_SIZE as u64;
        TSS[cpu].ist[0] = ist_top;
        let base = core::ptr::addr_of!(TSS[cpu]) as u64;
        let limit = (size_of::<Tss>() - 1) as u64;
        let low = (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | (0x89u64 << 40) // present, 64-bit TSS (available)
            | (((limit >> 16) & 0xf) << 48)
            | (((base >> 24) & 0xff) << 56);
        let slot = 3 + 2 * cpu;
        GDT[slot] = low;
        GDT[slot + 1] = base >> 32;
    }
    let gdt_pointer = DescriptorPointer {
        limit: (GDT_ENTRIES * 8 - 1) as u16,
        base: core::ptr::addr_of!(GDT) as u64,
    };
    let idt_pointer = DescriptorPointer {
        limit: (256 * size_of::<IdtEntry>() - 1) as u16,
        base: core::ptr::addr_of!(IDT) as u64,
    };
    let tss_selector = ((3 + 2 * cpu) * 8) as u16;
    // SAFETY: the tables are static, complete and describe flat 64-bit segments,
    // so reloading the segment registers keeps every address meaning the same.
    unsafe {
        asm!(
            "lgdt [{gdt}]",
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov ds, {ds:x}",
            "mov es, {ds:x}",
            "mov ss, {ds:x}",
            "ltr {tss:x}",
            "lidt [{idt}]",
            gdt = in(reg) &gdt_pointer,
            idt = in(reg) &idt_pointer,
            cs = const KERNEL_CS as u64,
            ds = in(reg) KERNEL_DS as u64,
            tss = in(reg) tss_selector as u64,
            tmp = out(reg) _,
        );
    }
    // SAFETY: enabling the local APIC in x2APIC mode touches only this CPU.
    unsafe {
        let base = rdmsr(MSR_APIC_BASE);
        wrmsr(MSR_APIC_BASE, base | (1 << 11) | (1 << 10));
        wrmsr(MSR_X2APIC_SVR, 0x100 | 0xff);
    }
}

/// This CPU's id (the VMM makes the x2APIC id equal to the PAPR vCPU id).
pub fn cpu_id() -> usize {
    // SAFETY: reading the x2APIC id has no side effects.
    unsafe { rdmsr(MSR_X2APIC_ID) as usize }
}

/// The time-stamp counter, for benchmarks: cycles at a rate the host knows.
pub fn timestamp() -> u64 {
    // SAFETY: rdtsc reads a counter and has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Wakes `cpu` from `hlt` with an inter-processor interrupt.
pub fn wake(cpu: usize) {
    // Fixed delivery, physical destination, level assert, edge.
    let icr = ((cpu as u64) << 32) | (1 << 14) | WAKE_VECTOR as u64;
    // SAFETY: an IPI on our own wake vector only makes the target run its handler.
    unsafe { wrmsr(MSR_X2APIC_ICR, icr) };
}

pub fn end_of_interrupt() {
    // SAFETY: EOI only retires the interrupt being serviced.
    unsafe { wrmsr(MSR_X2APIC_EOI, 0) };
}

/// # Safety
/// `msr` must exist and the read must have no side effects we do not expect.
unsafe fn rdmsr(msr: u32) -> u64 {
    let (low, high): (u32, u32);
    // SAFETY: delegated to the caller.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") low, out("edx") high, options(nomem, nostack))
    };
    ((high as u64) << 32) | low as u64
}

/// # Safety
/// `msr` must exist and `value` must be valid for it.
unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: delegated to the caller.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack))
    };
}

/// Sleeps until an interrupt arrives, then returns with interrupts disabled again.
/// `sti; hlt` is atomic: an interrupt pending before `hlt` still wakes it.
pub fn wait_for_interrupt() {
    // SAFETY: enabling interrupts is fine once the IDT is loaded.
    unsafe { asm!("sti", "hlt", "cli", options(nomem, nostack)) };
}

/// Stops this CPU for good: a fault with an empty IDT is a triple fault,
/// which the VMM reports as a guest crash.
pub fn triple_fault() -> ! {
    let empty = DescriptorPointer { limit: 0, base: 0 };
    // SAFETY: deliberately ends the VM.
    unsafe { asm!("lidt [{0}]", "int3", in(reg) &empty, options(noreturn)) };
}
