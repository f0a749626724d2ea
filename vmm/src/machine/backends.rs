//! Backends that go and come back. A disk's block process of ours that
//! ends is replaced by a successor, and one can be upgraded to another
//! binary while the guest's requests go on; either takes the queues and
//! the inflight region over. A disk's external backend (another program's,
//! at a character device's socket) that hangs up is connected to again
//! every `reconnect` interval, as QEMU's `reconnect` does, and takes the
//! queues over where the used rings say (it has no inflight record, so a
//! request it had taken but not answered is made again). The guest's kicks
//! wait in their eventfds meanwhile: it sees slower requests. Without
//! `reconnect` the disk fails.

use super::pci_hotplug::connect_backend;
use super::Vm;
use crate::block::disks::{Backend, Disk};
use crate::block::frontend::BlockFrontend;
use crate::control::ControlMessage;
use crate::devices::spawn::ProcessHandle;
use crate::request::QmpError;
use serde_json::{json, Value};
use std::path::PathBuf;

impl Vm {
    /// Tells the control loop when `disk`'s external backend hangs up.
    pub(super) fn watch_backend(&self, disk: &Disk) {
        let (Backend::External { .. }, Some(frontend)) = (&disk.backend, &disk.frontend) else {
            return;
        };
        let control = self.control.clone();
        let serial = disk.serial;
        let watched = frontend.watch_hangup(Box::new(move || {
            let _ = control.send(ControlMessage::BackendHungUp { serial });
        }));
        if let Err(error) = watched {
            log::warn!(
                "disk {}: its backend's hang-up is not watched: {}",
                disk.id,
                common::describe(&error)
            );
        }
    }

    /// The external backend of disk `serial` hung up.
    pub(super) fn backend_hung_up(&mut self, serial: u64) {
        let Some(disk) = self.disks.by_serial(serial) else {
            return;
        };
        let Backend::External {
            reconnect, path, ..
        } = &disk.backend
        else {
            return;
        };
        let Some(every) = *reconnect else {
            disk.cut_off(format!("its backend at {} hung up", path.display()));
            return;
        };
        log::warn!(
            "disk {}: its backend at {} hung up: connecting again every {} ms",
            disk.id,
            path.display(),
            every.as_millis()
        );
        disk.frontend = None;
        self.reconnect_later(serial, every);
    }

    fn reconnect_later(&self, serial: u64, after: std::time::Duration) {
        let control = self.control.clone();
        let spawned = std::thread::Builder::new()
            .name("vhost-user-reconnect".into())
            .spawn(move || {
                std::thread::sleep(after);
                let _ = control.send(ControlMessage::ReconnectBackend { serial });
            });
        if let Err(error) = spawned {
            log::error!("disk serial {serial}: cannot wait to reconnect: {error}");
        }
    }

    /// Time to connect to disk `serial`'s backend again.
    pub(super) fn reconnect_backend(&mut self, serial: u64) {
        let Some(disk) = self.disks.by_serial(serial) else {
            return;
        };
        let Backend::External {
            path,
            reconnect: Some(every),
            ..
        } = &disk.backend
        else {
            return;
        };
        if disk.frontend.is_some() {
            return;
        }
        let (path, every, drc, id) = (path.clone(), *every, disk.drc, disk.id.clone());
        let connected = connect_backend(&path)
            .map_err(|error| error.desc)
            .and_then(|stream| {
                self.connect_frontend(stream)
                    .map_err(|error| common::describe(&error))
            });
        let Some(disk) = self.disks.by_serial(serial) else {
            return;
        };
        match connected {
            Ok(frontend) => {
                disk.frontend = Some(frontend);
                log::info!(
                    "disk {id}: connected to its backend at {} again",
                    path.display()
                );
                if let Err(error) = self.hand_queues(drc, true) {
                    log::error!("{error}");
                }
                if let Some(disk) = self.disks.find(&id) {
                    self.watch_backend(disk);
                }
            }
            Err(error) => {
                log::info!("disk {id}: its backend is not back yet: {error}");
                self.reconnect_later(serial, every);
            }
        }
    }
}

/// A disk's block processes may end this often in [`RESTART_WINDOW`]
/// without completing a request in between; past it the disk fails (as a
/// platform process's supervisor gives up). An end after progress starts
/// the count again (`disk_watch`).
const MAX_RESTARTS: usize = 5;
const RESTART_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

impl Vm {
    /// Block process `serial` ended:
    /// expected once its disk went; otherwise a successor, jailed as it
    /// was, on the same image, takes its queues over and serves first what
    /// the inflight region says its predecessor left in flight, unless the
    /// budget is spent.
    pub(super) fn block_exited(&mut self, serial: u64, how: &str) {
        let Some(disk) = self.disks.by_serial(serial) else {
            log::info!("block process {serial} {how}");
            return;
        };
        if disk.failed {
            return;
        }
        let why = disk.exit.get_or_insert_with(|| how.to_string()).clone();
        disk.frontend = None;
        let progressed = self.made_progress(serial);
        let Some(disk) = self.disks.by_serial(serial) else {
            return;
        };
        let now = std::time::Instant::now();
        if progressed {
            disk.recent_exits.clear();
        }
        disk.recent_exits
            .retain(|&at| now.duration_since(at) < RESTART_WINDOW);
        disk.recent_exits.push(now);
        if disk.recent_exits.len() > MAX_RESTARTS {
            log::error!(
                "the block process of disk {} {why}: more than {MAX_RESTARTS} ends in {} s without a request completed, the disk is not served any more",
                disk.id,
                RESTART_WINDOW.as_secs()
            );
            disk.failed = true;
            return;
        }
        log::warn!(
            "the block process of disk {} {why}: starting its successor",
            disk.id
        );
        if let Err(error) = self.restart_block(serial) {
            if let Some(disk) = self.disks.by_serial(serial) {
                log::error!("disk {}: no successor: {error}", disk.id);
                disk.failed = true;
            }
        }
    }

    fn restart_block(&mut self, serial: u64) -> Result<(), String> {
        let (process, frontend, successor) = self.start_successor(serial)?;
        let disk = self.disks.by_serial(serial).ok_or("the disk went")?;
        let (pid, drc, id) = (process.pid, disk.drc, disk.id.clone());
        disk.take_over(process, frontend, successor);
        disk.restarts += 1;
        disk.last_exit = disk.exit.take();
        log::info!(
            "disk {id}: block process {pid} serves it (restart {})",
            disk.restarts
        );
        self.hand_queues(drc, true)
    }

    /// A new block process for the disk at `serial`, on its node, running
    /// its program: started, jailed, connected and negotiated, not yet
    /// given the queues. Its serial comes with it.
    fn start_successor(
        &mut self,
        serial: u64,
    ) -> Result<(ProcessHandle, BlockFrontend, u64), String> {
        let disk = self.disks.by_serial(serial).ok_or("the disk went")?;
        let Backend::Process { node, .. } = &disk.backend else {
            return Err("not a block process's".into());
        };
        let node = node.clone();
        let program = disk.program.as_ref().map(|p| p.display().to_string());
        let successor = self.disks.next_serial();
        let found = self
            .block_nodes
            .find(&node)
            .ok_or_else(|| format!("its node {node} is gone"))?;
        let start = ipc_proto::spawner::BlockStart {
            serial: successor,
            node,
            read_only: found.read_only,
            program,
        };
        let image = found
            .image
            .try_clone()
            .map_err(|error| format!("cannot share the image: {error}"))?;
        let (process, stream) = self
            .spawn_block(start, image.into())
            .map_err(|error| error.desc)?;
        match self.connect_frontend(stream) {
            Ok(frontend) => Ok((process, frontend, successor)),
            Err(error) => {
                process.kill();
                Err(common::describe(&error))
            }
        }
    }

    /// x-upgrade-device-process for a disk's block process: one running
    /// `program` takes the disk over while the guest's requests go on. The
    /// new one is started and negotiated first (if it fails, the old one
    /// keeps serving); then the old one is ended, and only once it is gone
    /// does the new one get the queues and the inflight region: two
    /// backends never serve one ring, and what the old one left in flight
    /// is served again.
    pub(super) fn upgrade_block(&mut self, id: &str, program: PathBuf) -> Result<Value, QmpError> {
        if self.devices.device_mode() == crate::devices::DeviceMode::InProcess {
            return Err(QmpError::generic(
                "the block devices of --device-mode in-process are threads of the core: there is no program to upgrade",
            ));
        }
        let disk = self
            .disks
            .find(id)
            .ok_or_else(|| QmpError::device_not_found(format!("Device '{id}' not found")))?;
        if !matches!(disk.backend, Backend::Process { .. }) {
            return Err(QmpError::generic(format!(
                "disk {id} is served by another program, not a block process of ours"
            )));
        }
        if disk.failed || disk.frontend.is_none() {
            return Err(QmpError::generic(format!(
                "disk {id}'s block process is not running: {}",
                disk.exit.as_deref().unwrap_or("it is being replaced")
            )));
        }
        let (serial, drc) = (disk.serial, disk.drc);
        let earlier = self
            .disks
            .by_serial(serial)
            .and_then(|disk| disk.program.replace(program.clone()));
        let started = self.start_successor(serial);
        let disk = self
            .disks
            .by_serial(serial)
            .ok_or_else(|| QmpError::generic(format!("disk {id} went")))?;
        let (process, frontend, successor) = match started {
            Ok(started) => started,
            Err(error) => {
                disk.program = earlier;
                let error = format!("disk {id}: {error}; the running block process keeps serving");
                log::error!("{error}");
                return Err(QmpError::generic(error));
            }
        };
        let pid = process.pid;
        let old = disk.take_over(process, frontend, successor);
        old.kill();
        if !old.wait_gone(OLD_PROCESS_END) {
            disk.cut_off(format!(
                "its block process {} did not end when upgraded; the disk is not served",
                old.pid
            ));
            disk.failed = true;
            return Err(QmpError::generic(format!(
                "disk {id}: the old block process did not end within {OLD_PROCESS_END:?}"
            )));
        }
        log::info!(
            "disk {id}: block process {pid} ({}) takes over from {}",
            program.display(),
            old.pid
        );
        self.hand_queues(drc, true).map_err(QmpError::generic)?;
        self.qmp.emit(
            "X_DEVICE_PROCESS_UPGRADED",
            json!({"process": "block", "disk": id, "pid": pid, "path": program}),
        );
        Ok(json!({"pid": pid}))
    }
}

/// How long an upgraded block process, killed, may take to be gone.
const OLD_PROCESS_END: std::time::Duration = std::time::Duration::from_secs(5);
