//! The PCI host bridge's memory windows, as vCPUs reach them: each access
//! goes to the process that serves the bridge's functions (the hotplug
//! controller), which parses it; the core gets a value or a typed effect.

use super::proxy::DeviceFailure;
use super::DeviceProcesses;
use ipc_proto::link::core_hotplug::{self, DeviceModel, FunctionEffect};
use ipc_proto::papr::DrcIndex;
use std::time::{Duration, Instant};

/// How long an access waits for a restarting controller: the vCPU sees a
/// slower access, as an RTAS call sees a slower call.
const RESTART_WAIT: Duration = Duration::from_secs(10);

impl DeviceProcesses {
    /// One access by a vCPU: a read's value, or a write's effect. While the
    /// controller restarts the access waits for its successor (up to
    /// [`RESTART_WAIT`], or until `abort`); one it cannot serve reads as
    /// all ones (a master abort) and writes nothing.
    pub fn bar_access(
        &self,
        address: u64,
        size: u32,
        write: Option<u64>,
        abort: &dyn Fn() -> bool,
    ) -> Result<(u64, Option<FunctionEffect>), DeviceFailure> {
        let deadline = Instant::now() + RESTART_WAIT;
        let request = core_hotplug::Request::BarAccess {
            address,
            size,
            write,
        };
        loop {
            if !self.hotplug.wait_for_process(deadline, abort) {
                return Err(DeviceFailure::Restarting(
                    ipc_proto::ProcessKind::HotplugController,
                ));
            }
            match self.hotplug.query(request.clone()) {
                Ok(core_hotplug::Reply::BarRead(value)) => return Ok((value, None)),
                Ok(core_hotplug::Reply::BarWritten(effect)) => return Ok((0, effect)),
                Ok(other) => {
                    log::error!("the hotplug controller answered a BAR access with {other:?}");
                    return Ok((u64::MAX, None));
                }
                Err(
                    failure @ (DeviceFailure::Restarting(_)
                    | DeviceFailure::Died(_)
                    | DeviceFailure::CutOff { .. }),
                ) if Instant::now() < deadline && !abort() => {
                    log::info!("a BAR access waits for the hotplug controller: {failure}");
                }
                Err(failure) => return Err(failure),
            }
        }
    }
}

impl DeviceProcesses {
    /// Keeps what PCI function `drc`'s device offers, for every controller
    /// to come (the caller tells the one serving now).
    pub fn remember_function(&self, drc: DrcIndex, model: DeviceModel) {
        common::lock(&self.resources.function_models).insert(drc, model);
    }

    /// The function at `drc` went.
    pub fn forget_function(&self, drc: DrcIndex) {
        common::lock(&self.resources.function_models).remove(&drc);
    }
}
