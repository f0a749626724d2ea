//! Delivery of PAPR interrupt sources: each source is an irqfd on its own GSI,
//! routed as an MSI to the local APIC of the vCPU the guest chose with
//! `ibm,set-xive` (vCPU 0 at power-on).

use ipc_proto::papr::irq;
use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irq_routing_entry__bindgen_ty_1, kvm_irq_routing_msi, KvmIrqRouting,
    KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use thiserror::Error;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// x86 MSI address window: 0xFEE0_0000 | destination APIC id << 12.
const MSI_ADDRESS_BASE: u32 = 0xfee0_0000;

/// Why an interrupt cannot be routed or raised.
#[derive(Debug, Error)]
pub enum InterruptError {
    /// A source the platform does not have.
    #[error("interrupt source {0:#x} does not exist")]
    UnknownSource(u32),
    /// A source's eventfd cannot be made.
    #[error("cannot create an eventfd for interrupt source {source:#x}")]
    EventFd {
        /// The source.
        source: u32,
        /// Why.
        #[source]
        error: std::io::Error,
    },
    /// A KVM ioctl failed.
    #[error("KVM call {call} failed")]
    Kvm {
        /// The ioctl.
        call: &'static str,
        /// KVM's error.
        #[source]
        error: kvm_ioctls::Error,
    },
}

/// KVM GSI of a PAPR interrupt source (above the legacy irqchip pins).
fn gsi_for(source: u32) -> u32 {
    32 + (source - irq::BASE)
}

/// Routes the platform's interrupt sources (hot-plug, EPOW, console) to vCPUs, through eventfds KVM injects from.
pub struct InterruptRouter {
    vm: Arc<VmFd>,
    /// source → vCPU (APIC id) it is delivered to.
    servers: Mutex<BTreeMap<u32, u32>>,
    eventfds: BTreeMap<u32, EventFd>,
}

impl InterruptRouter {
    /// Creates an irqfd per platform source, all delivered to vCPU 0.
    pub fn new(vm: Arc<VmFd>) -> Result<InterruptRouter, InterruptError> {
        let mut eventfds = BTreeMap::new();
        for source in irq::every_source() {
            let eventfd = EventFd::new(EFD_NONBLOCK)
                .map_err(|error| InterruptError::EventFd { source, error })?;
            eventfds.insert(source, eventfd);
        }
        let router = InterruptRouter {
            vm,
            servers: Mutex::new(irq::every_source().map(|source| (source, 0)).collect()),
            eventfds,
        };
        router.apply(&common::lock(&router.servers))?;
        for (&source, eventfd) in &router.eventfds {
            router
                .vm
                .register_irqfd(eventfd, gsi_for(source))
                .map_err(|error| InterruptError::Kvm {
                    call: "KVM_IRQFD",
                    error,
                })?;
        }
        Ok(router)
    }

    /// The eventfd that raises `source` (handed to whoever raises it).
    pub fn eventfd(&self, source: u32) -> Result<EventFd, InterruptError> {
        let eventfd = self
            .eventfds
            .get(&source)
            .ok_or(InterruptError::UnknownSource(source))?;
        eventfd
            .try_clone()
            .map_err(|error| InterruptError::EventFd { source, error })
    }

    /// Delivers `source` to vCPU `server` from now on.
    pub fn set_server(&self, source: u32, server: u32) -> Result<(), InterruptError> {
        let mut servers = common::lock(&self.servers);
        let previous = servers
            .insert(source, server)
            .ok_or(InterruptError::UnknownSource(source))?;
        if let Err(error) = self.apply(&servers) {
            servers.insert(source, previous);
            return Err(error);
        }
        Ok(())
    }

    /// Back to power-on routing: every source to vCPU 0.
    pub fn reset(&self) -> Result<(), InterruptError> {
        let mut servers = common::lock(&self.servers);
        servers.values_mut().for_each(|server| *server = 0);
        self.apply(&servers)
    }

    /// Replaces KVM's whole routing table with ours.
    fn apply(&self, servers: &BTreeMap<u32, u32>) -> Result<(), InterruptError> {
        let kvm_error = |error| InterruptError::Kvm {
            call: "KVM_SET_GSI_ROUTING",
            error,
        };
        let mut table = KvmIrqRouting::new(0)
            .map_err(|_| kvm_error(kvm_ioctls::Error::new(nix::libc::ENOMEM)))?;
        for (&source, &apic_id) in servers {
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
            table
                .push(entry)
                .map_err(|_| kvm_error(kvm_ioctls::Error::new(nix::libc::ENOSPC)))?;
        }
        self.vm.set_gsi_routing(&table).map_err(kvm_error)
    }
}
