//! Papervisor's test guest: a small kernel that plays a Linux pseries guest.
//! It runs at CPL0, where PVM emulates every instruction: keep loops short and
//! never use SSE (see .cargo/config.toml).
#![no_std]
#![no_main]
#![no_builtins]

mod arch;
mod console;
mod cpu;
mod dlpar;
mod epow;
mod fdt;
mod hcall;
mod hostile;
mod lmb;
mod mem;
mod pci;
mod pcibus;
mod platform;
mod rtas;
mod shell;
mod sync;
mod virtio_blk;

use console::Line;
use core::arch::global_asm;

const BOOT_STACK_SIZE: usize = 32 * 1024;

#[repr(C, align(16))]
struct BootStack([u8; BOOT_STACK_SIZE]);

static mut BOOT_STACK: BootStack = BootStack([0; BOOT_STACK_SIZE]);

// The VMM enters here in long mode on identity-mapped memory, with the FDT
// address in RDI (PAPR's r3) and this CPU's id in RSI.
global_asm!(
    r#"
    .section .text.entry
    .global _start
    _start:
        cli
        lea rsp, [rip + {stack} + {size}]
        xor ebp, ebp
        call {main}
    2:
        hlt
        jmp 2b
    "#,
    stack = sym BOOT_STACK,
    size = const BOOT_STACK_SIZE,
    main = sym kernel_main,
);

// Started CPUs enter here (start-cpu's entry) with their id in RDI (r3).
global_asm!(
    r#"
    .section .text
    .global secondary_start
    secondary_start:
        cli
        cmp rdi, {max_cpus}
        jae 3f
        lea rax, [rdi + 1]
        imul rax, rax, {stack_size}
        lea rsp, [rip + {stacks}]
        add rsp, rax
        xor ebp, ebp
        call {main}
    3:
        hlt
        jmp 3b
    "#,
    max_cpus = const arch::MAX_CPUS,
    stack_size = const arch::STACK_SIZE,
    stacks = sym arch::STACKS,
    main = sym secondary_main,
);

extern "C" fn secondary_main(cpu_id: u64) -> ! {
    let cpu_id = cpu_id as usize;
    arch::init_cpu(cpu_id);
    cpu::set_online(cpu_id, true);
    cpu::idle()
}

extern "C" fn kernel_main(fdt_address: u64, cpu_id: u64) -> ! {
    let cpu_id = cpu_id as usize;
    arch::init_idt();
    arch::init_cpu(cpu_id);
    let platform = match platform::probe(fdt_address) {
        Ok(platform) => platform,
        Err(platform::ProbeError::BadBlob) => fatal("no valid device tree"),
        Err(platform::ProbeError::NoVty) => fatal("no /vdevice/vty in the device tree"),
    };
    console::set_termno(platform.vty_termno);
    dlpar::init(platform);
    pcibus::init(platform);
    pci::init(platform);
    lmb::init(platform);
    cpu::set_online(cpu_id, true);
    let sources = [platform.vty_irq, platform.hotplug_irq, platform.epow_irq];
    let sources: [u32; 3] = sources.map(|source| source.unwrap_or(0));
    cpu::set_sources(&sources);
    banner(platform, cpu_id);
    bring_up_secondaries(platform, cpu_id);
    cpu::idle()
}

/// Starts every other present CPU, as Linux's smp_init does.
fn bring_up_secondaries(platform: &platform::Platform, boot_cpu: usize) {
    let mut online = 1u64;
    for &id in &platform.present[..platform.present_count] {
        if id as usize == boot_cpu {
            continue;
        }
        match cpu::bring_up(id as usize) {
            Ok(()) => online += 1,
            Err(error) => shell::report_cpu_error(id as usize, error),
        }
    }
    Line::new()
        .str("smp: ")
        .dec(online)
        .str(" of ")
        .dec(platform.present_count as u64)
        .str(" cpus online")
        .nl();
}

fn banner(platform: &platform::Platform, cpu_id: usize) {
    Line::new()
        .str("Papervisor test guest on cpu ")
        .dec(cpu_id as u64)
        .nl();
    let mut line = Line::new();
    line.str("cpus: ")
        .dec(platform.present_count as u64)
        .str(" present, ")
        .dec(platform.threads_per_core as u64)
        .str(" threads per core:");
    for &id in &platform.present[..platform.present_count] {
        line.str(" ").dec(id as u64);
    }
    line.nl();
    drop(line);
    Line::new()
        .str("memory: ")
        .dec(platform.memory_bytes >> 20)
        .str(" MiB")
        .nl();
    Line::new()
        .str("drcs: ")
        .dec(platform.cpu_drcs as u64)
        .str(" cpu, ")
        .dec(platform.lmb_drcs as u64)
        .str(" lmb")
        .nl();
    let mut line = Line::new();
    let known = platform::RTAS_CALLS
        .iter()
        .filter(|name| platform.rtas_token(name).is_some())
        .count();
    line.str("rtas: ").dec(known as u64).str(" calls:");
    for name in platform::RTAS_CALLS {
        if let Some(token) = platform.rtas_token(name) {
            line.str(" ").str(name).str("=").hex(token as u64);
        }
    }
    line.nl();
}

/// Called by the interrupt stubs in `arch` with the saved frame.
extern "C" fn interrupt_dispatch(frame: &arch::InterruptFrame) {
    let vector = frame.vector as u8;
    if vector < 32 {
        Line::new()
            .str("guest: exception ")
            .dec(frame.vector)
            .str(" error ")
            .hex(frame.error_code)
            .str(" at rip ")
            .hex(frame.rip)
            .nl();
        fatal("unexpected exception");
    }
    arch::end_of_interrupt();
    let is_source = |source: Option<u32>| {
        source.is_some_and(|source| {
            source.wrapping_sub(0x1000) == u32::from(vector - arch::DEVICE_VECTOR_BASE)
        })
    };
    if is_source(platform::get().hotplug_irq) {
        dlpar::interrupt();
    }
    if is_source(platform::get().epow_irq) {
        epow::interrupt();
    }
    if vector >= arch::MSI_VECTOR_BASE && vector != arch::WAKE_VECTOR {
        virtio_blk::interrupt(0x1000 + u32::from(vector - arch::DEVICE_VECTOR_BASE));
    }
    // Device interrupts only wake a CPU; the shell's CPU does the work (reads
    // the console, handles hot-plug events), so pass the wake-up on.
    if vector != arch::WAKE_VECTOR {
        let owner = cpu::shell_owner();
        if owner != arch::cpu_id() {
            arch::wake(owner);
        }
    }
}

/// For RTAS calls that must not fail.
fn fatal_rtas(what: &str, result: Result<rtas::RtasReturn, rtas::RtasError>) -> ! {
    let mut line = Line::new();
    line.str("guest: ").str(what);
    match result {
        Ok(ret) => line.str(" (status ").signed(ret.status as i64).str(")"),
        Err(rtas::RtasError::NoToken) => line.str(" (no RTAS token)"),
        Err(rtas::RtasError::Hcall(status)) => line.str(" (hcall status ").signed(status).str(")"),
    };
    line.nl();
    drop(line);
    arch::triple_fault()
}

fn fatal(why: &str) -> ! {
    Line::new().str("guest: fatal: ").str(why).nl();
    arch::triple_fault()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let mut line = Line::new();
    line.str("guest: panic");
    if let Some(location) = info.location() {
        line.str(" at ")
            .str(location.file())
            .str(":")
            .dec(location.line() as u64);
    }
    line.nl();
    drop(line);
    arch::triple_fault()
}
