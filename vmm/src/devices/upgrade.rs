//! x-upgrade-device-process: a running device process replaced by another
//! binary on the same state region, or left untouched if the new one does
//! not come up.

use super::proxy::DeviceFailure;
#[cfg(all(test, feature = "in-process"))]
use super::supervisor::AfterExit;
use super::supervisor::State;
use super::wire::{spawn_notification_reader, SETUP_TIMEOUT};
use super::{lock, DeviceError, DeviceProcesses};
use ipc_proto::channel::Channel;
use ipc_proto::ProcessKind;
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::sync::Arc;

impl DeviceProcesses {
    /// x-upgrade-device-process: starts `program` as the `kind` on the same
    /// state region beside the one that serves, which must be quiet (the
    /// caller pauses the vCPUs; the control loop sends nothing meanwhile).
    /// Only once the new process has completed its handshake (same protocol
    /// version) and its set-up (it validated the region: same layout) does
    /// it take over: the old one is killed and the peers are re-linked to
    /// the new one. Otherwise the new one is killed and the old one keeps
    /// serving, untouched. Returns the new pid.
    pub fn upgrade(&self, kind: ProcessKind, program: PathBuf) -> Result<u32, DeviceError> {
        let refused = |why: String| DeviceError::Upgrade {
            kind: kind.name(),
            why,
        };
        if self.state(kind) != Some(State::Running) {
            return Err(refused(
                "it is not running (x-restart-device-process brings back a failed one)".into(),
            ));
        }
        if !self.starter.replaceable() {
            return Err(refused(
                "the devices are threads of the core (--device-mode in-process): there is no program to replace".into(),
            ));
        }
        let executable = std::fs::metadata(&program)
            .map(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
            .unwrap_or(false);
        if !program.is_absolute() || !executable {
            return Err(refused(format!(
                "{} is not the absolute path of an executable file",
                program.display()
            )));
        }
        let program = jailer::trusted_program(&program, self.owner).map_err(refused)?;
        // Its links: to the core, live; to its peers, dead for now (it
        // starts without them, and is re-linked to them once it is in).
        let mut core_ends = Vec::new();
        let mut fds = Vec::new();
        let mut held = Vec::new();
        for &link in kind.links() {
            let (ours, its) = Channel::pair().map_err(|error| DeviceError::Channel(link, error))?;
            fds.push(its.as_fd().as_raw_fd());
            held.push(its);
            if link.touches_core() {
                core_ends.push((link, ours));
            }
        }
        fds.extend(self.extra_fds(kind));
        let old = {
            let records = lock(&self.records);
            let record = records
                .get(&kind)
                .ok_or_else(|| refused("never started".into()))?;
            (
                record.supervision.incarnation(),
                record.pid,
                record.process.clone(),
            )
        };
        let (generation, process) = self
            .spawn(vec![(kind, fds, Some(program.clone()))])
            .pop()
            .expect("one result per launch")?;
        drop(held);
        let restore = || {
            process.kill();
            let mut records = lock(&self.records);
            if let Some(record) = records.get_mut(&kind) {
                record.supervision.restore(old.0);
                record.pid = old.1;
                record.process = old.2.clone();
            }
        };
        let handshake = core_ends.iter().try_for_each(|(link, channel)| {
            channel.send_hello(*link)?;
            channel.expect_hello(*link, SETUP_TIMEOUT)
        });
        if let Err(error) = handshake {
            restore();
            return Err(refused(format!(
                "the new process failed its handshake: {error}"
            )));
        }
        let peers = self.peer_generations(kind, &HashMap::new());
        let mut notify = None;
        for (link, channel) in core_ends {
            match link.server() {
                Some(_) => self
                    .proxy(kind)
                    .stage(channel, Arc::clone(&process), peers.clone()),
                None => notify = Some(channel),
            }
        }
        if let Err(failure) = self.set_up(kind) {
            self.proxy(kind).finish_stage(false);
            restore();
            return Err(refused(format!(
                "the new process refused its set-up: {failure}"
            )));
        }
        self.proxy(kind).finish_stage(true);
        self.served(kind, generation);
        lock(&self.upgraded).insert(kind, program);
        if let Some(notify) = notify {
            spawn_notification_reader(notify, self.control.clone());
        }
        log::info!(
            "{} upgraded: pid {} (generation {generation}) replaces pid {}",
            kind.name(),
            process.pid,
            old.1
        );
        self.relink_peers(kind, generation, &peers);
        Ok(process.pid)
    }

    /// Links `kind` (generation `generation`) and each running peer with a
    /// fresh channel: both are told at once, as each waits for the other's
    /// hello.
    fn relink_peers(&self, kind: ProcessKind, generation: u64, peers: &HashMap<ProcessKind, u64>) {
        for &link in kind.links().iter().filter(|link| !link.touches_core()) {
            let Some(peer) = link.peer_of(kind) else {
                continue;
            };
            let Some(&peer_generation) = peers.get(&peer) else {
                continue;
            };
            let (ours, theirs) = match Channel::pair() {
                Ok(pair) => pair,
                Err(error) => {
                    log::error!("{link:?}: cannot make a channel: {error}");
                    continue;
                }
            };
            std::thread::scope(|scope| {
                let new =
                    scope.spawn(|| self.proxy(kind).relink(link, ours.as_fd(), peer_generation));
                let old = self.proxy(peer).relink(link, theirs.as_fd(), generation);
                for (who, result) in [
                    (kind, new.join().unwrap_or(Err(DeviceFailure::Died(kind)))),
                    (peer, old),
                ] {
                    if let Err(error) = result {
                        log::error!("{}: cannot take the new {link:?}: {error}", who.name());
                    }
                }
            });
        }
    }
}

#[cfg(all(test, feature = "in-process"))]
mod thread_tests {
    use super::super::testing::{self, Replaceable};
    use super::super::threads::Threads;
    use super::*;

    fn canonical(path: impl AsRef<std::path::Path>) -> PathBuf {
        std::fs::canonicalize(path).unwrap()
    }

    #[test]
    fn an_upgrade_that_fails_its_handshake_leaves_the_old_process_serving() {
        let broken = canonical("/usr/bin/env");
        let test = testing::start(Box::new(Replaceable {
            broken: broken.clone(),
        }));
        for kind in ProcessKind::ALL {
            let (generation, pid) = (test.devices.generation(kind), test.devices.pid(kind));
            let error = test.devices.upgrade(kind, broken.clone()).unwrap_err();
            assert!(
                error
                    .to_string()
                    .contains("the new process failed its handshake"),
                "{error}"
            );
            assert_eq!(test.devices.generation(kind), generation, "{kind:?}");
            assert_eq!(test.devices.pid(kind), pid, "{kind:?}");
            assert_eq!(test.devices.state(kind), Some(State::Running));
            assert_ne!(test.devices.program(kind), broken, "recorded as upgraded");
            test.all_serve().unwrap();
        }
    }

    #[test]
    fn an_upgrade_replaces_the_process_and_relinks_its_peers() {
        let program = canonical(std::env::current_exe().unwrap());
        let test = testing::start(Box::new(Replaceable {
            broken: canonical("/usr/bin/env"),
        }));
        for kind in ProcessKind::ALL {
            let generation = test.devices.generation(kind).unwrap();
            test.devices.upgrade(kind, program.clone()).unwrap();
            assert!(test.devices.generation(kind).unwrap() > generation);
            // The one replaced ends; its exit is an old generation's.
            let (exited, reason) = test.await_exit(kind);
            assert_eq!(exited, generation);
            assert_eq!(
                test.devices.exited(kind, exited, &reason),
                AfterExit::Ignore
            );
            assert_eq!(test.devices.program(kind), program, "restarts run it");
            test.all_serve().unwrap();
        }
    }

    #[test]
    fn device_threads_cannot_be_upgraded() {
        let test = testing::start(Box::new(Threads));
        let program = canonical(std::env::current_exe().unwrap());
        let error = test
            .devices
            .upgrade(ProcessKind::EventLog, program)
            .unwrap_err();
        assert!(
            error.to_string().contains("there is no program to replace"),
            "{error}"
        );
    }
}
