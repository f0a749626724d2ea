//! x-inject-fault as the core carries it out: a fault committed by a
//! device now, or armed at a point of a request's path (at the core's end
//! of a link, through [`super::fault_hook`], or in the device); and
//! x-query-faults and x-clear-faults, which list (with how often each
//! fired) and forget the faults armed at points, and the committed faults
//! still to act.

use super::proxy::DeviceFailure;
use super::spawn::DeviceMode;
use super::supervisor::State;
use super::DeviceProcesses;
use ipc_proto::control::{
    ControlReply, ControlRequest, Fault, FaultAction, FaultPoint, FaultRecord, PendingFault,
};
use ipc_proto::ProcessKind;
use serde_json::{json, Value};

impl DeviceProcesses {
    /// x-inject-fault at a point: armed at the core's end of the link to
    /// `kind`, or in the process.
    pub fn arm_fault(
        &self,
        kind: ProcessKind,
        fault: ipc_proto::control::ArmedFault,
    ) -> Result<(), String> {
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
            Ok(Some(reply)) => Err(format!("it answered {reply:?}")),
            Err(error) => Err(error.to_string()),
        }
    }

    /// x-query-faults: every fault armed at a point, at the core's end of
    /// a link or in a process, with how often it fired; and in `pending`,
    /// the committed faults still to act (a `lie` to the next calls, a
    /// `lose-state` of the next transition). A process that is not running
    /// is named in `unreachable` (a fault that crashed or hung its process
    /// went with it; its exit event tells).
    pub fn query_faults(&self) -> Value {
        let mut faults = Vec::new();
        let mut pending = Vec::new();
        let mut unreachable = Vec::new();
        for kind in ProcessKind::ALL {
            let proxy = self.proxy(kind);
            if let Some(record) = proxy.core_fault() {
                faults.push(fault_json(kind, &record));
            }
            if self.state(kind) != Some(State::Running) {
                unreachable.push(kind.name());
                continue;
            }
            match proxy.control(ControlRequest::QueryFaults, &[]) {
                Ok(Some(ControlReply::Faults {
                    armed,
                    pending: still,
                })) => {
                    faults.extend(armed.map(|record| fault_json(kind, &record)));
                    pending.extend(still.iter().map(|fault| pending_json(kind, fault)));
                }
                Ok(other) => {
                    let why = format!("{other:?} to a fault query");
                    self.cut_off(kind, &why);
                    unreachable.push(kind.name());
                }
                Err(error) => {
                    log::warn!("x-query-faults: the {}: {error}", kind.name());
                    unreachable.push(kind.name());
                }
            }
        }
        json!({"faults": faults, "pending": pending, "unreachable": unreachable})
    }

    /// x-clear-faults: disarms and forgets every fault armed at a point,
    /// and cancels what committed faults were still to do; the processes it
    /// could not reach, if any, in the error.
    pub fn clear_faults(&self) -> Result<(), String> {
        let mut missed = Vec::new();
        for kind in ProcessKind::ALL {
            let proxy = self.proxy(kind);
            proxy.clear_core_fault();
            if self.state(kind) != Some(State::Running) {
                missed.push(format!("the {} is not running", kind.name()));
                continue;
            }
            if let Err(error) = proxy.control(ControlRequest::ClearFaults, &[]) {
                missed.push(format!("the {}: {error}", kind.name()));
            }
        }
        match missed.is_empty() {
            true => Ok(()),
            false => Err(format!("not cleared everywhere: {}", missed.join("; "))),
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
        match self
            .proxy(kind)
            .control(ControlRequest::ArmFault(fault), &[])
        {
            Ok(Some(ControlReply::FaultSurvived { outcome })) => Ok(outcome),
            Ok(Some(other)) => {
                let why = format!("{other:?} to a fault");
                self.cut_off(kind, &why);
                Err(format!("it answered {why} and was cut off"))
            }
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

/// One armed fault as x-query-faults lists it.
fn fault_json(kind: ProcessKind, record: &FaultRecord) -> Value {
    json!({
        "process": kind.name(),
        "point": qmp_name(&FaultPoint::ALL, record.fault.point),
        "action": qmp_name(&FaultAction::ALL, record.fault.action),
        "request": record.fault.request,
        "fired": record.fired,
    })
}

/// One committed fault still to act, as x-query-faults lists it.
fn pending_json(kind: ProcessKind, pending: &PendingFault) -> Value {
    json!({
        "process": kind.name(),
        "fault": qmp_name(&Fault::ALL, pending.fault),
        "left": pending.left,
    })
}

/// The QMP name of `value` among `all`.
fn qmp_name<T: PartialEq>(all: &[(&'static str, T)], value: T) -> &'static str {
    all.iter()
        .find(|(_, v)| *v == value)
        .map_or("", |(name, _)| *name)
}
