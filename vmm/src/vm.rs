//! The VM: KVM objects, guest RAM, vCPU threads and the control loop that
//! carries out power-off and reset.

use crate::boot::{self, BootError};
use crate::config::{ConsoleConfig, GuestImage, SmpConfig, VmConfig};
use crate::console::{Console, ConsoleError};
use crate::fdt::{self, FdtError, MachineDescription};
use crate::layout::{MemoryLayout, FDT_MAX_SIZE, FDT_START, GUEST_IMAGE_START, KVM_TSS_ADDRESS};
use crate::memory::{GuestRam, MemoryError};
use crate::vcpu::{StartPoint, VcpuContext, VcpuHandle, VmEvent};
use ipc_proto::papr::irq;
use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irq_routing_entry__bindgen_ty_1, kvm_irq_routing_msi, KvmIrqRouting,
    KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::{Kvm, VmFd};
use linux_loader::loader::{elf::Elf, KernelLoader};
use std::io::Cursor;
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The built-in test guest, built by vmm/build.rs from guest/.
pub static BUILTIN_GUEST: &[u8] = include_bytes!(env!("PAPERVISOR_GUEST_ELF"));

/// x86 MSI address window: 0xFEE0_0000 | destination APIC id << 12.
const MSI_ADDRESS_BASE: u32 = 0xfee0_0000;

#[derive(Debug, Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("KVM call {call} failed")]
    Kvm {
        call: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("guest memory")]
    Memory(#[from] MemoryError),
    #[error("boot state")]
    Boot(#[from] BootError),
    #[error("device tree")]
    Fdt(#[from] FdtError),
    #[error("the device tree is {0} bytes, more than its {FDT_MAX_SIZE}-byte area")]
    FdtTooLarge(usize),
    #[error("console")]
    Console(#[from] ConsoleError),
    #[error("cannot load the guest ELF")]
    LoadGuest(#[source] linux_loader::loader::Error),
    #[error("the guest image ends at {end:#x}, into the device tree at {FDT_START:#x}")]
    GuestTooLarge { end: u64 },
    #[error("cannot write the device tree into guest memory")]
    WriteFdt(#[source] vm_memory::GuestMemoryError),
    #[error("cannot create the eventfd for {what}")]
    EventFd {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the thread of vCPU {id}")]
    SpawnVcpu {
        id: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("the guest crashed: {0}")]
    GuestCrashed(String),
}

fn kvm_call(call: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { call, source }
}

/// KVM GSI of a PAPR interrupt source (routes above the legacy irqchip pins).
fn gsi_for(source: u32) -> u32 {
    32 + (source - irq::BASE)
}

pub struct Vm {
    // Field order is drop order: vCPU threads end before the fds they use.
    vcpus: Vec<VcpuHandle>,
    _console: Arc<Console>,
    events: Receiver<VmEvent>,
    ram: GuestRam,
    layout: MemoryLayout,
    smp: SmpConfig,
    guest_image: Vec<u8>,
    _vm_fd: VmFd,
    _kvm: Kvm,
}

impl Vm {
    pub fn new(config: VmConfig) -> Result<Vm, VmError> {
        let guest_image = match config.guest_image {
            GuestImage::File(bytes) => bytes,
            GuestImage::BuiltIn => BUILTIN_GUEST.to_vec(),
        };
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let vm_fd = kvm.create_vm().map_err(kvm_call("KVM_CREATE_VM"))?;
        vm_fd
            .set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(kvm_call("KVM_SET_TSS_ADDR"))?;
        vm_fd
            .create_irq_chip()
            .map_err(kvm_call("KVM_CREATE_IRQCHIP"))?;

        let layout = MemoryLayout::new(&config.memory);
        let ram = GuestRam::new(layout.boot_ram)?;
        ram.register(&vm_fd)?;

        let vty_interrupt = EventFd::new(EFD_NONBLOCK).map_err(|source| VmError::EventFd {
            what: "the vty interrupt",
            source,
        })?;
        route_interrupts(&vm_fd, &[(irq::VTY, 0)])?;
        vm_fd
            .register_irqfd(&vty_interrupt, gsi_for(irq::VTY))
            .map_err(kvm_call("KVM_IRQFD"))?;
        let console = match &config.console {
            ConsoleConfig::Stdio => Console::stdio(vty_interrupt)?,
            ConsoleConfig::Socket(path) => Console::socket(path, vty_interrupt)?,
        };

        let (event_sender, events) = channel();
        let context = VcpuContext {
            console: Arc::clone(&console),
            memory: ram.memory().clone(),
            events: event_sender,
        };
        let mut vcpus = Vec::new();
        for id in 0..config.smp.cpus {
            let fd = vm_fd
                .create_vcpu(u64::from(id))
                .map_err(kvm_call("KVM_CREATE_VCPU"))?;
            fd.set_cpuid2(&boot::cpuid_for(&kvm, id)?)
                .map_err(kvm_call("KVM_SET_CPUID2"))?;
            let handle = VcpuHandle::spawn(id, fd, context.clone())
                .map_err(|source| VmError::SpawnVcpu { id, source })?;
            vcpus.push(handle);
        }

        Ok(Vm {
            vcpus,
            _console: console,
            events,
            ram,
            layout,
            smp: config.smp,
            guest_image,
            _vm_fd: vm_fd,
            _kvm: kvm,
        })
    }

    /// Writes everything the guest finds at power-on; returns where CPU 0 starts.
    fn load(&self) -> Result<StartPoint, VmError> {
        let memory = self.ram.memory();
        boot::write_boot_tables(memory, &self.layout)?;
        let loaded = Elf::load(
            memory,
            None,
            &mut Cursor::new(&self.guest_image),
            Some(GuestAddress(GUEST_IMAGE_START)),
        )
        .map_err(VmError::LoadGuest)?;
        if loaded.kernel_end > FDT_START {
            return Err(VmError::GuestTooLarge {
                end: loaded.kernel_end,
            });
        }
        let present_cores: Vec<u32> = (0..self.smp.boot_cores()).collect();
        let blob = fdt::build(&MachineDescription {
            smp: &self.smp,
            layout: &self.layout,
            present_cores: &present_cores,
        })?;
        if blob.len() as u64 > FDT_MAX_SIZE {
            return Err(VmError::FdtTooLarge(blob.len()));
        }
        memory
            .write_slice(&blob, GuestAddress(FDT_START))
            .map_err(VmError::WriteFdt)?;
        Ok(StartPoint {
            entry: loaded.kernel_load.0,
            rdi: FDT_START,
            rsi: 0,
        })
    }

    fn power_on(&self) -> Result<(), VmError> {
        let start = self.load()?;
        log::info!(
            "starting vCPU 0 at {:#x} with the device tree at {:#x}",
            start.entry,
            start.rdi
        );
        self.vcpus[0].start(start);
        Ok(())
    }

    fn park_all(&self) {
        for vcpu in &self.vcpus {
            vcpu.park();
        }
    }

    /// Boots the guest and runs it until it powers off (Ok) or crashes.
    pub fn run(self) -> Result<(), VmError> {
        self.power_on()?;
        loop {
            let event = self
                .events
                .recv()
                .map_err(|_| VmError::GuestCrashed("every vCPU thread is gone".into()))?;
            match event {
                VmEvent::PowerOff => {
                    log::info!("guest powered off");
                    self.park_all();
                    return Ok(());
                }
                VmEvent::Reset => {
                    log::info!("guest requested a reset");
                    self.park_all();
                    self.ram.discard()?;
                    self.power_on()?;
                }
                VmEvent::Crashed(reason) => {
                    self.park_all();
                    return Err(VmError::GuestCrashed(reason));
                }
            }
        }
    }
}

/// Routes each PAPR interrupt source to a vCPU's local APIC as an MSI on the
/// source's x86 vector. Replaces KVM's whole routing table.
fn route_interrupts(vm_fd: &VmFd, routes: &[(u32, u32)]) -> Result<(), VmError> {
    let mut table = KvmIrqRouting::new(0).map_err(|_| VmError::Kvm {
        call: "KVM_SET_GSI_ROUTING",
        source: kvm_ioctls::Error::new(nix::errno::Errno::ENOMEM as i32),
    })?;
    for &(source, apic_id) in routes {
        let entry = kvm_irq_routing_entry {
            gsi: gsi_for(source),
            type_: KVM_IRQ_ROUTING_MSI,
            u: kvm_irq_routing_entry__bindgen_ty_1 {
                msi: kvm_irq_routing_msi {
                    address_lo: MSI_ADDRESS_BASE | (apic_id << 12),
                    address_hi: 0,
                    data: irq::x86_vector(source),
                    ..Default::default()
                },
            },
            ..Default::default()
        };
        table.push(entry).map_err(|_| VmError::Kvm {
            call: "KVM_SET_GSI_ROUTING",
            source: kvm_ioctls::Error::new(nix::errno::Errno::ENOSPC as i32),
        })?;
    }
    vm_fd
        .set_gsi_routing(&table)
        .map_err(kvm_call("KVM_SET_GSI_ROUTING"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// PVM emulates CPL0 code and cannot emulate SSE: one SSE instruction in
    /// the guest kernel is a KVM internal error at run time.
    #[test]
    fn builtin_guest_contains_no_sse_instruction() {
        let elf = env!("PAPERVISOR_GUEST_ELF");
        let output = Command::new("objdump")
            .args(["-d", "--no-show-raw-insn", elf])
            .output()
            .expect("objdump (binutils) is needed to check the guest's instructions");
        assert!(output.status.success(), "objdump failed on {elf}");
        let listing = String::from_utf8_lossy(&output.stdout);
        assert!(
            listing.lines().count() > 1000,
            "suspiciously short disassembly"
        );
        let offending: Vec<&str> = listing
            .lines()
            .filter(|line| line.contains("%xmm") || line.contains("%ymm") || line.contains("%zmm"))
            .take(10)
            .collect();
        assert!(
            offending.is_empty(),
            "SSE/AVX in the guest:\n{}",
            offending.join("\n")
        );
    }

    #[test]
    fn builtin_guest_is_a_loadable_elf() {
        assert_eq!(crate::config::check_guest_elf(BUILTIN_GUEST), Ok(()));
    }
}
