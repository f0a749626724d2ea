//! The VM: KVM objects, guest RAM, vCPU threads and the control loop that
//! carries out power-off and reset.

use crate::boot::{self, BootError};
use crate::config::{ConsoleConfig, GuestImage, SmpConfig, VmConfig};
use crate::console::{Console, ConsoleError};
use crate::control::ControlMessage;
use crate::fdt::{self, FdtError, MachineDescription};
use crate::interrupts::{InterruptError, InterruptRouter};
use crate::layout::{MemoryLayout, FDT_MAX_SIZE, FDT_START, GUEST_IMAGE_START, KVM_TSS_ADDRESS};
use crate::memory::{GuestRam, MemoryError};
use crate::qmp::{QmpContext, QmpServer};
use crate::rtas_client::{self, RtasService, SpawnError};
use crate::vcpu::{CpuTable, StartPoint, VcpuContext, VcpuHandle};
use ipc_proto::papr::irq;
use kvm_ioctls::{Kvm, VmFd};
use linux_loader::loader::{elf::Elf, KernelLoader};
use serde_json::json;
use std::io::Cursor;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};

/// The built-in test guest, built by vmm/build.rs from guest/.
pub static BUILTIN_GUEST: &[u8] = include_bytes!(env!("PAPERVISOR_GUEST_ELF"));

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
    #[error("interrupts")]
    Interrupts(#[from] InterruptError),
    #[error("cannot start the RTAS server")]
    RtasServer(#[from] SpawnError),
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

pub struct Vm {
    // Field order is drop order: vCPU threads end before what they use.
    vcpus: Vec<VcpuHandle>,
    cpus: Arc<CpuTable>,
    _rtas: Arc<RtasService>,
    interrupts: Arc<InterruptRouter>,
    _console: Arc<Console>,
    control: Sender<ControlMessage>,
    inbox: Receiver<ControlMessage>,
    ram: GuestRam,
    layout: MemoryLayout,
    smp: SmpConfig,
    guest_image: Vec<u8>,
    _vm_fd: Arc<VmFd>,
    _kvm: Kvm,
}

impl Vm {
    pub fn new(config: VmConfig) -> Result<Vm, VmError> {
        let guest_image = match config.guest_image {
            GuestImage::File(bytes) => bytes,
            GuestImage::BuiltIn => BUILTIN_GUEST.to_vec(),
        };
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let vm_fd = Arc::new(kvm.create_vm().map_err(kvm_call("KVM_CREATE_VM"))?);
        vm_fd
            .set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(kvm_call("KVM_SET_TSS_ADDR"))?;
        vm_fd
            .create_irq_chip()
            .map_err(kvm_call("KVM_CREATE_IRQCHIP"))?;

        let layout = MemoryLayout::new(&config.memory);
        let ram = GuestRam::new(layout.boot_ram)?;
        ram.register(&vm_fd)?;

        let interrupts = Arc::new(InterruptRouter::new(Arc::clone(&vm_fd))?);
        let vty_interrupt = interrupts.eventfd(irq::VTY)?;
        let console = match &config.console {
            ConsoleConfig::Stdio => Console::stdio(vty_interrupt)?,
            ConsoleConfig::Socket(path) => Console::socket(path, vty_interrupt)?,
        };
        let rtas = Arc::new(RtasService::spawn(
            &rtas_client::sibling_binary(rtas_client::RTAS_SERVER_BINARY),
            &ram,
        )?);

        let (control, inbox) = channel();
        let cpus = Arc::new(CpuTable::new(config.smp.cpus));
        let context = VcpuContext {
            console: Arc::clone(&console),
            cpus: Arc::clone(&cpus),
            rtas: Arc::clone(&rtas),
            interrupts: Arc::clone(&interrupts),
            control: control.clone(),
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
            cpus,
            _rtas: rtas,
            interrupts,
            _console: console,
            control,
            inbox,
            ram,
            layout,
            smp: config.smp,
            guest_image,
            _vm_fd: vm_fd,
            _kvm: kvm,
        })
    }

    /// What the QMP server needs to reach this VM.
    pub fn qmp_context(&self) -> QmpContext {
        QmpContext {
            control: self.control.clone(),
            cpus: Arc::clone(&self.cpus),
            smp: self.smp,
        }
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
        if !self.cpus.start(0, start) {
            log::error!("vCPU 0 was not stopped at power-on");
        }
        Ok(())
    }

    fn park_all(&self) {
        for vcpu in &self.vcpus {
            vcpu.park();
        }
    }

    /// Boots the guest and runs it until it powers off or QMP quits (Ok),
    /// or it crashes.
    pub fn run(self, qmp: Option<Arc<QmpServer>>) -> Result<(), VmError> {
        let emit = |event: &str, data| {
            if let Some(qmp) = &qmp {
                qmp.emit(event, data);
            }
        };
        self.power_on()?;
        loop {
            let message = self
                .inbox
                .recv()
                .map_err(|_| VmError::GuestCrashed("every vCPU thread is gone".into()))?;
            match message {
                ControlMessage::PowerOff => {
                    log::info!("guest powered off");
                    self.park_all();
                    emit(
                        "SHUTDOWN",
                        json!({"guest": true, "reason": "guest-shutdown"}),
                    );
                    return Ok(());
                }
                ControlMessage::Quit => {
                    log::info!("quit requested over QMP");
                    self.park_all();
                    emit(
                        "SHUTDOWN",
                        json!({"guest": false, "reason": "host-qmp-quit"}),
                    );
                    return Ok(());
                }
                ControlMessage::Reset { by_guest } => {
                    log::info!(
                        "machine reset requested by the {}",
                        if by_guest { "guest" } else { "host" }
                    );
                    self.park_all();
                    self.interrupts.reset()?;
                    self.ram.discard()?;
                    self.power_on()?;
                    let reason = if by_guest {
                        "guest-reset"
                    } else {
                        "host-qmp-system-reset"
                    };
                    emit("RESET", json!({"guest": by_guest, "reason": reason}));
                }
                ControlMessage::GuestCrashed(reason) => {
                    self.park_all();
                    return Err(VmError::GuestCrashed(reason));
                }
            }
        }
    }
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
