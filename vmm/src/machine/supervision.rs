//! What follows a device process's exit (restart with backoff, or give
//! up), requests to the hotplug controller that outlive its restarts, and
//! the operator's commands on device processes: restart, upgrade, faults.

use super::Vm;
use crate::control::ControlMessage;
use crate::devices::proxy::DeviceFailure;
use crate::devices::supervisor::{AfterExit, State};
use crate::devices::DeviceError;
use crate::request::{FaultInjection, QmpError};
use ipc_proto::control::Fault;
use ipc_proto::link::core_hotplug;
use ipc_proto::ProcessKind;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

/// How many times a request to the hotplug controller is sent, to it and
/// to its successors, before QMP is told it failed.
const MAX_HOTPLUG_ATTEMPTS: u32 = 3;
/// How long the control loop waits for the report of a process that died
/// while it was asked (its watcher sees the exit within milliseconds).
const EXIT_REPORT_WAIT: Duration = Duration::from_secs(5);
/// How long a restart that lacked host resources waits before it tries again.
const RESOURCE_RETRY: Duration = Duration::from_secs(1);

/// What follows an attempt to restart a group of processes.
#[derive(Debug, PartialEq, Eq)]
enum RestartOutcome {
    /// They serve again.
    Restarted(Vec<ProcessKind>),
    /// The host lacked descriptors, memory or processes: not the
    /// processes' fault, so no death is counted, and the restart is tried
    /// again until the host has what it takes.
    Postponed {
        group: Vec<ProcessKind>,
        why: String,
    },
    /// They did not come up: that counts as another death of each (the
    /// backoff grows, then they fail); the reason reaches QMP (`last-exit`,
    /// the exit event).
    Failed {
        group: Vec<ProcessKind>,
        reason: String,
    },
}

fn restart_outcome(
    result: Result<Vec<ProcessKind>, (Vec<ProcessKind>, DeviceError)>,
) -> RestartOutcome {
    match result {
        Ok(group) => RestartOutcome::Restarted(group),
        Err((group, error)) if lacks_host_resources(&error) => RestartOutcome::Postponed {
            group,
            why: common::describe(&error),
        },
        Err((group, error)) => RestartOutcome::Failed {
            group,
            reason: format!("its restart did not come up: {}", common::describe(&error)),
        },
    }
}

/// The data of `X_DEVICE_PROCESS_EXITED` for an exit the supervisor acts
/// on; none for one it ignores (a generation already replaced).
fn exit_event(
    kind: ProcessKind,
    pid: u32,
    reason: &str,
    restarts: u32,
    after: AfterExit,
) -> Option<Value> {
    let action = match after {
        AfterExit::Ignore => return None,
        AfterExit::RestartAfter(_) => "restart",
        AfterExit::Failed => "failed",
    };
    Some(json!({"process": kind.name(), "pid": pid, "reason": reason,
                "restarts": restarts, "action": action}))
}

impl Vm {
    /// A request to the hotplug controller; the error is for QMP or the log.
    /// A controller that is down waiting out its restart backoff is
    /// restarted now, and one that dies while it is asked is awaited and
    /// restarted: either way the request is sent again under the same id, so
    /// a successor that finds it applied (in its state region) answers it
    /// without applying it twice. A QMP command sees a slower answer.
    pub(super) fn hotplug_request(&mut self, request: core_hotplug::Request) -> Result<(), String> {
        let kind = ProcessKind::HotplugController;
        let id = self.devices.hotplug.new_id();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let failure = match self.devices.hotplug.command_as(id, request.clone()) {
                Ok(()) => return Ok(()),
                Err(failure) => failure,
            };
            if attempts > MAX_HOTPLUG_ATTEMPTS {
                return Err(format!("{failure}, {attempts} times"));
            }
            match failure {
                DeviceFailure::Restarting(_) => {
                    log::info!("restarting the {} now: a request waits for it", kind.name());
                }
                DeviceFailure::Died(_) | DeviceFailure::CutOff { .. } => {
                    log::warn!("{failure} with request {id} in hand: it goes to the successor");
                    if !self.await_exit(kind) {
                        return Err(failure.to_string());
                    }
                }
                other => return Err(other.to_string()),
            }
            self.restart_device(kind);
        }
    }

    /// Waits (bounded) for the supervisor's report of a process that died
    /// while the control loop asked it, and acts on it; anything else that
    /// arrives meanwhile waits its turn. Whether the process comes back.
    fn await_exit(&mut self, kind: ProcessKind) -> bool {
        let deadline = std::time::Instant::now() + EXIT_REPORT_WAIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.inbox.recv_timeout(left) {
                Ok(ControlMessage::DeviceExited {
                    kind: exited,
                    generation,
                    reason,
                }) if exited == kind => {
                    self.device_exited(kind, generation, &reason);
                    // Restarted already (it served), or to be: not given up.
                    return matches!(
                        self.devices.state(kind),
                        Some(State::Running | State::Restarting)
                    );
                }
                Ok(other) => self.deferred.push_back(other),
                Err(_) => {
                    log::error!("the {} did not exit in time", kind.name());
                    return false;
                }
            }
        }
    }

    /// The supervisor's part: report, then restart with backoff or give up.
    pub(super) fn device_exited(&mut self, kind: ProcessKind, generation: u64, reason: &str) {
        crate::trace::record(
            ipc_proto::control::trace_point::DEVICE_EXIT,
            || serde_json::json!({"process": kind.name(), "generation": generation, "reason": reason}),
        );
        let after = self.devices.exited(kind, generation, reason);
        self.after_exit(kind, reason, after);
    }

    fn after_exit(&mut self, kind: ProcessKind, reason: &str, after: AfterExit) {
        let pid = self.devices.pid(kind);
        let restarts = self.devices.restarts(kind);
        let Some(event) = exit_event(kind, pid, reason, restarts, after) else {
            return;
        };
        let follows = match after {
            AfterExit::RestartAfter(Duration::ZERO) => "restarting now".to_string(),
            AfterExit::RestartAfter(delay) => format!("restarting in {delay:?}"),
            _ if self.devices.cannot_start() => {
                "nothing can start it again: marked failed, the VM runs on without it".to_string()
            }
            _ => "it keeps dying: marked failed, the VM runs on without it".to_string(),
        };
        log::error!("{} (pid {pid}) {reason}; {follows}", kind.name());
        // The exit is announced before the restart that follows it.
        self.qmp.emit("X_DEVICE_PROCESS_EXITED", event);
        match after {
            // It served: its successor starts now, and the guest's calls
            // that wait for it go on as soon as it is set up.
            AfterExit::RestartAfter(Duration::ZERO) => self.restart_device(kind),
            AfterExit::RestartAfter(delay) => self.schedule_restart(kind, delay),
            _ => {}
        }
    }

    /// Restarts `kind` after `delay`.
    fn schedule_restart(&self, kind: ProcessKind, delay: Duration) {
        let control = self.control.clone();
        let timer = std::thread::Builder::new()
            .name("restart-timer".into())
            .spawn(move || {
                std::thread::sleep(delay);
                let _ = control.send(ControlMessage::RestartDevice(kind));
            });
        if let Err(error) = timer {
            log::error!("cannot schedule the restart of {}: {error}", kind.name());
        }
    }

    /// Restarts `kind` together with every other process that is down:
    /// processes that died together come back together.
    pub(super) fn restart_device(&mut self, kind: ProcessKind) {
        crate::trace::record(
            ipc_proto::control::trace_point::DEVICE_RESTART,
            || serde_json::json!({"process": kind.name()}),
        );
        match restart_outcome(self.devices.restart(kind)) {
            RestartOutcome::Restarted(group) => {
                for kind in group {
                    let pid = self.devices.pid(kind);
                    log::info!("{} restarted as pid {pid}", kind.name());
                    self.qmp.emit(
                        "X_DEVICE_PROCESS_RESTARTED",
                        json!({"process": kind.name(), "pid": pid, "restarts": self.devices.restarts(kind)}),
                    );
                }
            }
            RestartOutcome::Postponed { group, why } => {
                log::error!(
                    "cannot restart {} for lack of host resources ({why}); trying again in {RESOURCE_RETRY:?}",
                    names(&group)
                );
                for kind in group {
                    self.devices.restart_postponed(kind, &why);
                    self.schedule_restart(kind, RESOURCE_RETRY);
                }
            }
            RestartOutcome::Failed { group, reason } => {
                log::error!("cannot restart {}: {reason}", names(&group));
                for kind in group {
                    let after = self.devices.restart_failed(kind, &reason);
                    self.after_exit(kind, &reason, after);
                }
            }
        }
    }

    /// x-inject-fault: a fault committed now (the process's outcome, or
    /// what became of it), or armed at a point of a request's path.
    pub(super) fn inject_fault(
        &mut self,
        kind: ProcessKind,
        fault: FaultInjection,
    ) -> Result<Value, QmpError> {
        let refused = |error: String| QmpError::generic(format!("x-inject-fault: {error}"));
        match fault {
            FaultInjection::Now(fault) => {
                // What ends or harms only the device is allowed in-process.
                if !matches!(fault, Fault::Garbage | Fault::Lie | Fault::LoseState) {
                    self.devices
                        .refuse_in_process(format_args!("{fault:?}"))
                        .map_err(refused)?;
                }
                Ok(match self.devices.inject(kind, fault) {
                    Ok(outcome) => json!({"survived": true, "outcome": outcome}),
                    Err(error) => json!({"survived": false, "outcome": error}),
                })
            }
            FaultInjection::Armed(fault) => self
                .devices
                .arm_fault(kind, fault)
                .map(|()| json!({"armed": true}))
                .map_err(refused),
        }
    }

    /// x-upgrade-device-process: the process of a kind replaced by another
    /// binary on the same state region, at a quiet point (every vCPU held
    /// outside KVM_RUN and outside any call, for the few milliseconds it
    /// takes; the guest sees nothing else).
    pub(super) fn upgrade_device_process(
        &mut self,
        kind: ProcessKind,
        program: PathBuf,
    ) -> Result<Value, QmpError> {
        let was_paused = self.cpus.is_paused();
        self.cpus.set_paused(true);
        for vcpu in self.vcpus.iter().flatten() {
            vcpu.wait_paused();
        }
        let upgraded = self.devices.upgrade(kind, program.clone());
        if !was_paused {
            self.cpus.set_paused(false);
        }
        match upgraded {
            Ok(pid) => {
                self.qmp.emit(
                    "X_DEVICE_PROCESS_UPGRADED",
                    json!({"process": kind.name(), "pid": pid, "path": program}),
                );
                Ok(json!({"pid": pid}))
            }
            Err(error) => {
                let error = common::describe(&error);
                log::error!("{error}; the running one keeps serving");
                Err(QmpError::generic(format!(
                    "{error}; the running one keeps serving"
                )))
            }
        }
    }

    /// x-restart-device-process: the operator's way back for a process
    /// the supervisor gave up on (or one waiting out its backoff): it is
    /// restarted now, with its peers that are down, and its crash history
    /// starts over. Answers once it serves (or why it did not come up).
    pub(super) fn restart_device_process(&mut self, kind: ProcessKind) -> Result<Value, QmpError> {
        self.devices
            .revive(kind)
            .map_err(|error| QmpError::generic(format!("x-restart-device-process: {error}")))?;
        log::info!("{}: restart asked by the operator", kind.name());
        self.restart_device(kind);
        match self.devices.state(kind) {
            Some(State::Running) => Ok(json!({"pid": self.devices.pid(kind)})),
            _ => Err(QmpError::generic(format!(
                "the {} did not come up: {}",
                kind.name(),
                self.devices.last_exit(kind).unwrap_or_default()
            ))),
        }
    }
}

/// Whether `error` came from a host out of descriptors, memory or
/// processes (of the core's limits or the system's), not from the process.
fn lacks_host_resources(error: &(dyn std::error::Error + 'static)) -> bool {
    use nix::errno::Errno;
    let mut cause = Some(error);
    while let Some(error) = cause {
        let errno = error
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            .map(Errno::from_raw)
            .or_else(|| error.downcast_ref::<Errno>().copied());
        if matches!(
            errno,
            Some(Errno::EMFILE | Errno::ENFILE | Errno::ENOMEM | Errno::EAGAIN | Errno::ENOSPC)
        ) {
            return true;
        }
        cause = error.source();
    }
    false
}

/// Process kinds as a list in words.
fn names(kinds: &[ProcessKind]) -> String {
    kinds
        .iter()
        .map(|k| k.name())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out_of_descriptors() -> DeviceError {
        DeviceError::Channel(
            ipc_proto::Link::CoreRtas,
            ipc_proto::channel::ChannelError::Io(std::io::Error::from_raw_os_error(
                nix::libc::EMFILE,
            )),
        )
    }

    fn failed_handshake() -> DeviceError {
        DeviceError::Handshake {
            kind: "rtas-server",
            source: ipc_proto::channel::ChannelError::HungUp,
        }
    }

    #[test]
    fn a_restart_without_descriptors_or_memory_is_the_hosts_fault() {
        assert!(lacks_host_resources(&out_of_descriptors()));
        let spawn = DeviceError::Spawn {
            kind: "rtas-server",
            source: crate::devices::spawn::SpawnError::Exec {
                path: "/x".into(),
                source: std::io::Error::from_raw_os_error(nix::libc::ENOMEM),
            },
        };
        assert!(lacks_host_resources(&spawn));
        // A process that failed its handshake is its own fault.
        assert!(!lacks_host_resources(&failed_handshake()));
    }

    #[test]
    fn what_follows_a_restart_depends_on_whose_fault_a_failure_is() {
        let group = vec![ProcessKind::RtasServer, ProcessKind::EventLog];
        assert_eq!(
            restart_outcome(Ok(group.clone())),
            RestartOutcome::Restarted(group.clone())
        );
        match restart_outcome(Err((group.clone(), out_of_descriptors()))) {
            RestartOutcome::Postponed {
                group: postponed,
                why,
            } => {
                assert_eq!(postponed, group);
                assert!(why.contains("Too many open files"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        match restart_outcome(Err((group.clone(), failed_handshake()))) {
            RestartOutcome::Failed {
                group: failed,
                reason,
            } => {
                assert_eq!(failed, group);
                assert!(
                    reason.starts_with("its restart did not come up: the rtas-server did not complete its handshake"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_exit_is_announced_with_what_follows_unless_it_is_ignored() {
        let kind = ProcessKind::HotplugController;
        assert_eq!(exit_event(kind, 7, "killed", 1, AfterExit::Ignore), None);
        let restart = exit_event(
            kind,
            7,
            "killed",
            1,
            AfterExit::RestartAfter(Duration::from_millis(100)),
        )
        .unwrap();
        assert_eq!(
            restart,
            json!({"process": "hotplug-controller", "pid": 7, "reason": "killed",
                   "restarts": 1, "action": "restart"})
        );
        let failed = exit_event(kind, 7, "killed", 5, AfterExit::Failed).unwrap();
        assert_eq!(failed["action"], "failed");
    }
}
