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
use crate::block::frontend::BlockFrontend;
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
                let mut frontend =
                    BlockFrontend::connect(stream).map_err(|e| common::describe(&e))?;
                frontend
                    .set_memory(&self.vhost_memory())
                    .map_err(|e| common::describe(&e))?;
                Ok(frontend)
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
