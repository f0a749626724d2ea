//! CPU cores: cold plug at start, device_add and device_del of a core,
//! and a core's release. The vCPUs of a core are created once (KVM cannot
//! destroy them) and parked while the core is unplugged.

use super::{kvm_call, Vm, VmError};
use crate::boot;
use crate::request::QmpError;
use crate::vcpu::VcpuHandle;
use ipc_proto::link::core_hotplug;
use serde_json::{json, Value};

impl Vm {
    /// Tells the hotplug controller about every plugged core, as configured,
    /// at start. A restarted controller resumes from its state region.
    pub(super) fn cold_plug_present_cores(&mut self) -> Result<(), String> {
        for core in self.cores.present() {
            let device = self.cores.device(core).cloned().expect("a present core");
            self.hotplug_request(core_hotplug::Request::Plug {
                drcs: vec![self.cores.drc(core)],
                device: device.path,
                cold: true,
            })?;
        }
        Ok(())
    }

    /// Creates (or finds, after an earlier unplug: KVM cannot destroy vCPUs)
    /// the vCPUs of core slot `core`, parked, and marks them present.
    pub(super) fn create_core_vcpus(&mut self, core: u32) -> Result<(), VmError> {
        for id in self.cores.vcpus(core) {
            if self.vcpus[id as usize].is_none() {
                let fd = self
                    .vm_fd
                    .create_vcpu(u64::from(id))
                    .map_err(kvm_call("KVM_CREATE_VCPU"))?;
                fd.set_cpuid2(&boot::cpuid_for(&self.kvm, id)?)
                    .map_err(kvm_call("KVM_SET_CPUID2"))?;
                let handle = VcpuHandle::spawn(id, fd, self.context.clone()).map_err(|source| {
                    VmError::Thread {
                        what: format!("vCPU {id}"),
                        source,
                    }
                })?;
                self.vcpus[id as usize] = Some(handle);
            }
            self.cpus.set_present(id, true);
        }
        Ok(())
    }

    /// device_add of a core: its vCPUs are created (parked) before the
    /// controller tells the guest.
    /// `cold`: before the guest runs (its DRC configured, no event).
    pub(super) fn core_add(
        &mut self,
        core_id: i64,
        id: Option<&str>,
        cold: bool,
    ) -> Result<Value, QmpError> {
        let (core, device) = self.cores.prepare_plug(core_id, id)?;
        self.create_core_vcpus(core)
            .map_err(|error| QmpError::generic(format!("cannot create the vCPUs: {error}")))?;
        let plug = core_hotplug::Request::Plug {
            drcs: vec![self.cores.drc(core)],
            device: device.path.clone(),
            cold,
        };
        if let Err(reason) = self.hotplug_request(plug) {
            for id in self.cores.vcpus(core) {
                self.cpus.set_present(id, false);
            }
            return Err(QmpError::generic(reason));
        }
        log::info!("core {core} plugged as {}", device.path);
        self.cores.plugged(core, device);
        Ok(json!({}))
    }

    /// device_del of a core. It is asked back before the request goes: the
    /// controller may release it (one the guest never took) before it
    /// answers. A request that failed may still have reached it: the core
    /// stays asked back.
    pub(super) fn core_del(&mut self, name: &str) -> Result<Value, QmpError> {
        let core = self.cores.prepare_unplug(name)?;
        self.cores.ask_unplug(core);
        // A device the guest never took is released at once, notified.
        self.hotplug_request(core_hotplug::Request::UnplugRequest {
            drcs: vec![self.cores.drc(core)],
        })
        .map_err(QmpError::generic)?;
        Ok(json!({}))
    }

    /// A core the guest gave back (or a pending unplug at reset): its vCPUs
    /// stop for good (parked, their fds kept for a re-plug) and it goes.
    /// Only a core the core process asked back goes, never the boot core.
    pub(super) fn release_core(&mut self, device: &str) -> Result<(), String> {
        let (core, device) = self.cores.remove_released(device)?;
        for id in self.cores.vcpus(core) {
            self.cpus.set_present(id, false);
            if let Some(vcpu) = &self.vcpus[id as usize] {
                vcpu.park();
            }
        }
        log::info!("core {core} ({}) unplugged", device.path);
        self.device_deleted(device.id.as_deref(), &device.path);
        Ok(())
    }
}
