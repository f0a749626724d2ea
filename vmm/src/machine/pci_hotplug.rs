//! Disks on the PCI host bridge: `device_add virtio-blk-pci` starts the
//! disk's block device process on its node's image, connects the core to
//! it as vhost-user frontend with guest memory, then plugs its PCI DRC;
//! `device_del` asks the guest (again, every time); the release ends the
//! process and frees the node. Each step that fails undoes the ones before.

use super::Vm;
use crate::block::disks::{Backend, Disk};
use crate::block::frontend::{BlockFrontend, Region};
use crate::control::ControlMessage;
use crate::devices::spawn::{self, ProcessHandle};
use crate::request::QmpError;
use ipc_proto::link::core_hotplug::{self, DeviceModel};
use ipc_proto::spawner::BlockStart;
use serde_json::{json, Value};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// The vhost-user socket of block process `serial`: bound in the VM's
/// private directory, connected by the core at once, then unlinked, so that
/// no other process can reach the listener the block process accepts on.
fn vhost_user_socket(dir: &Path, serial: u64) -> Result<(OwnedFd, UnixStream), QmpError> {
    let path = dir.join(format!("block-{serial}.sock"));
    let failed = |what: &str, error: std::io::Error| {
        QmpError::generic(format!(
            "cannot {what} the vhost-user socket {}: {error}",
            path.display()
        ))
    };
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|e| failed("bind", e))?;
    let stream = UnixStream::connect(&path);
    let _ = std::fs::remove_file(&path);
    let stream = stream.map_err(|e| failed("connect to", e))?;
    Ok((OwnedFd::from(listener), stream))
}

/// Connects to a backend's socket without waiting on a full listen queue
/// (a backend that accepts nothing must not hold the control loop).
pub(super) fn connect_backend(path: &Path) -> Result<UnixStream, QmpError> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let failed = |error: nix::Error| {
        QmpError::generic(format!(
            "cannot connect to the vhost-user backend at {}: {error}",
            path.display()
        ))
    };
    let socket = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(failed)?;
    let address = UnixAddr::new(path).map_err(failed)?;
    connect(socket.as_raw_fd(), &address).map_err(failed)?;
    // Blocking again for the frontend, whose every message is bounded by
    // its own watchdog (by fcntl: std's set_nonblocking is an ioctl the
    // control loop's filter refuses).
    nix::fcntl::fcntl(
        &socket,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
    )
    .map_err(failed)?;
    Ok(UnixStream::from(socket))
}

/// Where a VM's vhost-user sockets are made: its private directory (the
/// parent of its jails').
fn socket_dir(jail_dir: &Path) -> PathBuf {
    match jail_dir.file_name() {
        Some(name) if name == "jails" => jail_dir.parent().unwrap_or(jail_dir).to_path_buf(),
        _ => jail_dir.to_path_buf(),
    }
}

impl Vm {
    /// The core as vhost-user frontend of the backend at the other end of
    /// `stream`: negotiated, with guest memory.
    pub(super) fn connect_frontend(
        &self,
        stream: UnixStream,
    ) -> Result<BlockFrontend, crate::block::frontend::FrontendError> {
        let mut frontend = BlockFrontend::connect(stream)?;
        frontend.set_memory(&self.vhost_memory())?;
        Ok(frontend)
    }

    /// The memory table a block backend gets: boot RAM and every plugged
    /// DIMM, each with its memfd.
    pub(super) fn vhost_memory(&self) -> Vec<Region<'_>> {
        let mut regions = vec![self.ram.vhost_region()];
        for dimm in self.dimms.plugged_dimms() {
            let Some(backend) = self.dimms.backend(&dimm.memdev) else {
                continue;
            };
            if let Some(plugged) = &backend.memory.plugged {
                regions.push(plugged.vhost_region(&backend.memory.memfd));
            }
        }
        regions
    }

    /// device_add of a virtio-blk-pci disk serving node `drive`, in `slot`
    /// if the client says; `cold`: before the guest runs.
    pub(super) fn disk_add(
        &mut self,
        id: &str,
        drive: &str,
        slot: Option<u8>,
        cold: bool,
    ) -> Result<Value, QmpError> {
        let (slot, serial) = self.disks.prepare(id, slot)?;
        let node = self.block_nodes.attach(drive, id)?;
        let start = BlockStart {
            serial,
            node: node.name.clone(),
            read_only: node.read_only,
            program: None,
        };
        let image = node.image.as_fd().try_clone_to_owned();
        let started = image
            .map_err(|error| QmpError::generic(format!("cannot share the image: {error}")))
            .and_then(|image| self.start_disk(id, start, image, slot, cold));
        match started {
            Ok(disk) => {
                log::info!(
                    "disk {id} plugged in slot {slot:02x} (DRC {:#x}), node {drive}",
                    disk.drc.0,
                );
                self.disks.plugged(disk);
                Ok(json!({}))
            }
            Err(error) => {
                self.block_nodes.detach(drive);
                Err(error)
            }
        }
    }

    /// Starts block process `start.serial` on `image`: the process, and
    /// the core's end of its vhost-user socket.
    pub(super) fn spawn_block(
        &self,
        start: BlockStart,
        image: OwnedFd,
    ) -> Result<(ProcessHandle, UnixStream), QmpError> {
        let serial = start.serial;
        let (listener, stream) =
            vhost_user_socket(&socket_dir(&self.devices.sandbox().jail_dir), serial)?;
        let copy = stream
            .as_fd()
            .try_clone_to_owned()
            .map_err(|error| QmpError::generic(format!("cannot hold the socket: {error}")))?;
        let control = self.control.clone();
        let process = spawn::start_block(
            start,
            self.devices.device_mode(),
            listener,
            image,
            copy,
            Box::new(move |how| {
                let _ = control.send(ControlMessage::BlockExited { serial, how });
            }),
        )
        .map_err(|error| {
            QmpError::generic(format!(
                "cannot start the block device process: {}",
                common::describe(&error)
            ))
        })?;
        Ok((process, stream))
    }

    /// Starts the block process, connects to it, plugs the DRC.
    fn start_disk(
        &mut self,
        id: &str,
        start: BlockStart,
        image: OwnedFd,
        slot: u8,
        cold: bool,
    ) -> Result<Disk, QmpError> {
        let serial = start.serial;
        let node = start.node.clone();
        let (process, stream) = self.spawn_block(start, image)?;
        let backend = Backend::Process { node, process };
        let plugged = self.plug_disk(id, stream, backend, slot, serial, cold);
        if let Err((error, backend)) = plugged {
            backend.kill();
            return Err(error);
        }
        plugged.map_err(|(error, _)| error)
    }

    /// Connects the core to the backend at the other end of `stream` as its
    /// vhost-user frontend with guest memory, describes the function to the
    /// bridge and plugs the slot's DRC. What fails gives the backend back.
    fn plug_disk(
        &mut self,
        id: &str,
        stream: UnixStream,
        backend: Backend,
        slot: u8,
        serial: u64,
        cold: bool,
    ) -> Result<Disk, (QmpError, Backend)> {
        let drc = match crate::block::disks::slot_drc(slot) {
            Ok(drc) => drc,
            Err(error) => return Err((error, backend)),
        };
        let frontend = match self.connect_frontend(stream) {
            Ok(frontend) => frontend,
            Err(error) => {
                let error = QmpError::generic(format!(
                    "the vhost-user backend of {id} failed: {}",
                    common::describe(&error)
                ));
                return Err((error, backend));
            }
        };
        // The bridge's function shows the backend's features and
        // configuration to the guest's driver.
        let model = DeviceModel {
            features: frontend.driver_features(),
            config: frontend.config().to_vec(),
        };
        let disk = Disk {
            id: id.to_string(),
            slot,
            drc,
            serial,
            unplug_asked: false,
            backend,
            frontend: Some(frontend),
            exit: None,
            last_exit: None,
            restarts: 0,
            recent_exits: Vec::new(),
            failed: false,
            queues: Vec::new(),
            started: None,
            inflight: None,
            progress: None,
            program: None,
        };
        self.devices.remember_function(disk.drc, model.clone());
        let describe = core_hotplug::Request::DescribeFunction {
            drc: disk.drc,
            model,
        };
        let plug = core_hotplug::Request::Plug {
            drcs: vec![disk.drc],
            device: disk.path(),
            cold,
        };
        let plugged = self
            .hotplug_request(describe)
            .and_then(|()| self.hotplug_request(plug));
        if let Err(reason) = plugged {
            self.devices.forget_function(disk.drc);
            return Err((QmpError::generic(reason), disk.backend));
        }
        Ok(disk)
    }

    /// device_add of a vhost-user-blk-pci disk: the core connects to the
    /// socket of `chardev`, where another program's backend listens.
    pub(super) fn external_disk_add(
        &mut self,
        id: &str,
        chardev: &str,
        slot: Option<u8>,
    ) -> Result<Value, QmpError> {
        let (slot, serial) = self.disks.prepare(id, slot)?;
        let (path, reconnect_ms) = self.chardevs.attach(chardev, id)?;
        let plugged = connect_backend(&path).and_then(|stream| {
            let backend = Backend::External {
                chardev: chardev.to_string(),
                path: path.clone(),
                reconnect: (reconnect_ms > 0)
                    .then(|| std::time::Duration::from_millis(reconnect_ms)),
            };
            self.plug_disk(id, stream, backend, slot, serial, false)
                .map_err(|(error, _)| error)
        });
        match plugged {
            Ok(disk) => {
                log::info!(
                    "disk {id} plugged in slot {slot:02x} (DRC {:#x}), backend at {}",
                    disk.drc.0,
                    path.display()
                );
                self.watch_backend(&disk);
                self.disks.plugged(disk);
                Ok(json!({}))
            }
            Err(error) => {
                self.chardevs.detach(chardev);
                Err(error)
            }
        }
    }

    /// device_del of a disk: every request reaches the guest again.
    pub(super) fn disk_del(&mut self, name: &str) -> Result<Value, QmpError> {
        let Some(disk) = self.disks.find_mut(name) else {
            return Err(QmpError::device_not_found(format!(
                "Device '{name}' not found"
            )));
        };
        disk.unplug_asked = true;
        let drcs = vec![disk.drc];
        self.hotplug_request(core_hotplug::Request::UnplugRequest { drcs })
            .map_err(QmpError::generic)?;
        Ok(json!({}))
    }

    /// The guest gave the disk back (or a reset completed its unplug): the
    /// frontend hangs up, which ends the block process, and the node is
    /// free.
    pub(super) fn release_disk(&mut self, device: &str) -> Result<(), String> {
        let disk = self
            .disks
            .remove(device)
            .ok_or_else(|| format!("an unknown disk {device}"))?;
        let mut disk = disk;
        super::pci_functions::stop_queues(&self.vm_fd, &mut disk);
        self.devices.forget_function(disk.drc);
        let Disk {
            id,
            backend,
            frontend,
            ..
        } = disk;
        drop(frontend);
        // A process that does not see the hang-up is ended anyway.
        backend.kill();
        match &backend {
            Backend::Process { node, .. } => self.block_nodes.detach(node),
            Backend::External { chardev, .. } => self.chardevs.detach(chardev),
        }
        log::info!("disk {id} unplugged");
        self.device_deleted(Some(&id), &format!("/machine/peripheral/{id}"));
        Ok(())
    }

    /// query-pci.
    pub(super) fn query_pci(&self) -> Value {
        self.disks.query_pci()
    }
}
