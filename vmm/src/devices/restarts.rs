//! What the supervisor does to device processes: cut off one the core no
//! longer trusts, record an exit and decide what follows, restart those
//! that are down together, and bring back one the operator asks for.

use super::spawn::{self, DeviceMode};
use super::supervisor::{AfterExit, State, Supervision};
use super::{lock, DeviceError, DeviceProcesses};
use ipc_proto::ProcessKind;
use std::time::Instant;

impl DeviceProcesses {
    /// Kills a process the core no longer trusts; its watcher reports it.
    pub fn cut_off(&self, kind: ProcessKind, why: &str) {
        self.proxy(kind).cut_off(why);
    }

    /// A process reported that generation `generation` of `peer` failed it:
    /// the supervisor acts on that peer, unless it was replaced meanwhile.
    pub fn peer_failed(&self, peer: ProcessKind, generation: u64, reported_by: ProcessKind) {
        if self.generation(peer) != Some(generation) {
            log::info!(
                "the {} reported generation {generation} of the {}, which is gone already",
                reported_by.name(),
                peer.name()
            );
            return;
        }
        let why = format!("the {} found it silent or misbehaving", reported_by.name());
        self.cut_off(peer, &why);
    }

    /// Records an exit and decides what follows.
    pub fn exited(&self, kind: ProcessKind, generation: u64, reason: &str) -> AfterExit {
        let after = {
            let mut records = lock(&self.records);
            let Some(record) = records.get_mut(&kind) else {
                return AfterExit::Ignore;
            };
            let after = record
                .supervision
                .exited(generation, reason, Instant::now());
            if after != AfterExit::Ignore {
                // Gone (the spawner removed its jail): nothing is ever
                // signalled through it again.
                record.process = None;
            }
            after
        };
        if after != AfterExit::Ignore {
            let proxy = self.proxy(kind);
            proxy.disconnect();
            proxy.set_failed(after == AfterExit::Failed);
        }
        after
    }

    /// x-restart-device-process: a failed `kind` (or one waiting out its
    /// backoff) is to be restarted now, its crash history forgotten; the
    /// caller restarts it. A running one is refused.
    pub fn revive(&self, kind: ProcessKind) -> Result<(), String> {
        let revived = lock(&self.records)
            .get_mut(&kind)
            .is_some_and(|record| record.supervision.revive());
        if !revived {
            return Err(format!(
                "the {} is running (x-upgrade-device-process replaces a running one)",
                kind.name()
            ));
        }
        self.proxy(kind).set_failed(false);
        Ok(())
    }

    /// A restart that lacked host resources: what it started goes, and
    /// the process waits to be restarted again, no death counted.
    pub fn restart_postponed(&self, kind: ProcessKind, reason: &str) {
        self.abandon_restart(kind, reason, |supervision| {
            supervision.postponed(reason);
            AfterExit::Ignore
        });
    }

    /// Nothing can start a device process any more: the spawner is gone.
    pub fn cannot_start(&self) -> bool {
        self.starter.mode() == DeviceMode::OutOfProcess && spawn::spawner_gone()
    }

    /// A restart that did not come up (`reason`) counts as another exit;
    /// one that never can (the spawner is gone) fails the process at once.
    pub fn restart_failed(&self, kind: ProcessKind, reason: &str) -> AfterExit {
        let after = self.abandon_restart(kind, reason, |supervision| match self.cannot_start() {
            true => supervision.give_up(reason),
            false => supervision.restart_failed(reason, Instant::now()),
        });
        self.proxy(kind).set_failed(after == AfterExit::Failed);
        after
    }

    /// What a restart of `kind` that did not come up started goes (cut off,
    /// killed, its jail removed); `settle` records it in its supervision.
    fn abandon_restart(
        &self,
        kind: ProcessKind,
        reason: &str,
        settle: impl FnOnce(&mut Supervision) -> AfterExit,
    ) -> AfterExit {
        let proxy = self.proxy(kind);
        proxy.cut_off(reason);
        let mut records = lock(&self.records);
        let Some(record) = records.get_mut(&kind) else {
            return AfterExit::Ignore;
        };
        if let Some(process) = record.process.take() {
            process.kill();
        }
        let after = settle(&mut record.supervision);
        drop(records);
        proxy.disconnect();
        after
    }

    /// Starts a fresh `kind` in place of the dead one, together with every
    /// other process that is down (processes that died together come back
    /// together, linked to each other). Returns the processes restarted; an
    /// exit of `kind` already handled (it runs again) restarts nothing.
    pub fn restart(
        &self,
        kind: ProcessKind,
    ) -> Result<Vec<ProcessKind>, (Vec<ProcessKind>, DeviceError)> {
        if self.state(kind) != Some(State::Restarting) {
            return Ok(vec![]);
        }
        let group: Vec<ProcessKind> = ProcessKind::ALL
            .into_iter()
            .filter(|&k| self.state(k) == Some(State::Restarting))
            .collect();
        self.wire(&group).map_err(|error| (group.clone(), error))?;
        let mut records = lock(&self.records);
        for kind in &group {
            if let Some(record) = records.get_mut(kind) {
                record.supervision.restarted();
            }
        }
        Ok(group)
    }
}

#[cfg(all(test, feature = "in-process"))]
mod tests {
    use super::super::testing;
    use super::super::threads::Threads;
    use super::*;

    #[test]
    fn processes_down_together_come_back_together_and_the_others_keep_serving() {
        let test = testing::start(Box::new(Threads));
        test.all_serve().unwrap();
        let kept = test.devices.generation(ProcessKind::HotplugController);
        test.kill(ProcessKind::RtasServer);
        test.kill(ProcessKind::EventLog);
        assert_eq!(
            test.devices.state(ProcessKind::RtasServer),
            Some(State::Restarting)
        );
        assert_eq!(
            test.devices.restart(ProcessKind::EventLog).unwrap(),
            [ProcessKind::EventLog, ProcessKind::RtasServer],
            "both that are down, in one group"
        );
        // The other one's restart finds nothing left to do.
        assert_eq!(test.devices.restart(ProcessKind::RtasServer).unwrap(), []);
        assert_eq!(
            test.devices.generation(ProcessKind::HotplugController),
            kept
        );
        for kind in ProcessKind::ALL {
            assert_eq!(test.devices.state(kind), Some(State::Running), "{kind:?}");
            assert_eq!(
                test.devices.restarts(kind),
                u32::from(kind != ProcessKind::HotplugController)
            );
        }
        // Linked to each other and to the one that kept running.
        test.all_serve().unwrap();
    }

    #[test]
    fn an_exit_of_a_generation_already_replaced_is_ignored() {
        let test = testing::start(Box::new(Threads));
        let old = test.devices.generation(ProcessKind::EventLog).unwrap();
        test.kill(ProcessKind::EventLog);
        test.devices.restart(ProcessKind::EventLog).unwrap();
        assert_eq!(
            test.devices
                .exited(ProcessKind::EventLog, old, "a late report"),
            AfterExit::Ignore
        );
        assert_eq!(
            test.devices.state(ProcessKind::EventLog),
            Some(State::Running)
        );
        test.all_serve().unwrap();
    }

    #[test]
    fn a_revived_process_is_restarted_with_its_history_forgotten_and_a_running_one_refused() {
        let test = testing::start(Box::new(Threads));
        assert!(test.devices.revive(ProcessKind::HotplugController).is_err());
        test.kill(ProcessKind::HotplugController);
        test.devices.revive(ProcessKind::HotplugController).unwrap();
        assert_eq!(
            test.devices
                .restart(ProcessKind::HotplugController)
                .unwrap(),
            [ProcessKind::HotplugController]
        );
        test.all_serve().unwrap();
    }
}
