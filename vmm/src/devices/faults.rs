//! x-inject-fault as the core carries it out: a fault committed by a
//! device now, or armed at a point of a request's path (at the core's end
//! of a link, through [`super::fault_hook`], or in the device).

use super::proxy::DeviceFailure;
use super::spawn::DeviceMode;
use super::DeviceProcesses;
use ipc_proto::ProcessKind;

impl DeviceProcesses {
    /// x-inject-fault at a point: armed at the core's end of the link to
    /// `kind`, or in the process.
    pub fn arm_fault(
        &self,
        kind: ProcessKind,
        fault: ipc_proto::control::ArmedFault,
    ) -> Result<(), String> {
        use ipc_proto::control::{ControlRequest, FaultAction};
        if fault.point.at_core() {
            if matches!(fault.action, FaultAction::Crash | FaultAction::Hang) {
                return Err(format!(
                    "the core does not {:?} on purpose: {:?} is for device processes",
                    fault.action, fault.action
                ));
            }
            match kind {
                ProcessKind::RtasServer => self.rtas.arm(fault),
                ProcessKind::HotplugController => self.hotplug.arm(fault),
                ProcessKind::EventLog => self.eventlog.arm(fault),
            }
            return Ok(());
        }
        if matches!(fault.action, FaultAction::Crash | FaultAction::Hang) {
            self.refuse_in_process(format_args!("{:?}", fault.action))?;
        }
        match self
            .proxy(kind)
            .control(ControlRequest::ArmFaultPoint(fault), &[])
        {
            Ok(None) => Ok(()),
            Ok(Some(outcome)) => Err(format!("it answered {outcome}")),
            Err(error) => Err(error.to_string()),
        }
    }

    /// In-process a device is a thread of the core: a fault that ends or
    /// hangs it, or makes it break its seccomp filter, would do so to the core.
    pub fn refuse_in_process(&self, fault: impl std::fmt::Display) -> Result<(), String> {
        match self.starter.mode() {
            DeviceMode::OutOfProcess => Ok(()),
            DeviceMode::InProcess => Err(format!(
                "'{fault}' would end or hang the core itself: the devices are its threads (--device-mode in-process)"
            )),
        }
    }

    /// x-inject-fault: the process's answer if it lived, or what became of it.
    pub fn inject(
        &self,
        kind: ProcessKind,
        fault: ipc_proto::control::Fault,
    ) -> Result<String, String> {
        use ipc_proto::control::ControlRequest;
        match self
            .proxy(kind)
            .control(ControlRequest::ArmFault(fault), &[])
        {
            Ok(Some(outcome)) => Ok(outcome),
            Ok(None) => {
                let why = format!("an acknowledgement after {fault:?}");
                self.cut_off(kind, &why);
                Err(format!("it answered {why} and was cut off"))
            }
            // Dead already: its watcher reports how it died.
            Err(DeviceFailure::Died(_)) => Err("it died".into()),
            Err(error) => Err(error.to_string()),
        }
    }
}
