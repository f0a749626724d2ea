//! Backends that go and come back: a disk's external backend (another
//! program's, at a character device's socket) that hangs up is connected
//! to again every `reconnect` interval, as QEMU's `reconnect` does, and
//! takes the queues over where the used rings say (it has no inflight
//! record, so a request it had taken but not answered is made again). The
//! guest's kicks wait in their eventfds meanwhile: it sees slower requests.
//! Without `reconnect` the disk fails.

use super::pci_hotplug::connect_backend;
use super::Vm;
use crate::block::disks::{Backend, Disk};
use crate::control::ControlMessage;

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
        let disk = self.disks.by_serial(serial).ok_or("the disk went")?;
        let Backend::Process { node, .. } = &disk.backend else {
            return Err("not a block process's".into());
        };
        let (node, drc, id) = (node.clone(), disk.drc, disk.id.clone());
        let successor = self.disks.next_serial();
        let found = self
            .block_nodes
            .find(&node)
            .ok_or_else(|| format!("its node {node} is gone"))?;
        let start = ipc_proto::spawner::BlockStart {
            serial: successor,
            node: node.clone(),
            read_only: found.read_only,
        };
        let image = found
            .image
            .try_clone()
            .map_err(|error| format!("cannot share the image: {error}"))?;
        let (process, stream) = self
            .spawn_block(start, image.into())
            .map_err(|error| error.desc)?;
        let frontend = match self.connect_frontend(stream) {
            Ok(frontend) => frontend,
            Err(error) => {
                process.kill();
                return Err(common::describe(&error));
            }
        };
        let disk = self.disks.by_serial(serial).ok_or("the disk went")?;
        let pid = process.pid;
        disk.backend = Backend::Process { node, process };
        disk.frontend = Some(frontend);
        disk.serial = successor;
        disk.restarts += 1;
        disk.last_exit = disk.exit.take();
        log::info!(
            "disk {id}: block process {pid} serves it (restart {})",
            disk.restarts
        );
        self.hand_queues(drc, true)
    }
}
