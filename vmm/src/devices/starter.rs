//! How devices start, behind one trait: as processes of their own (jailed,
//! the default), or as threads of the core (`--device-mode in-process`,
//! which prices isolation, and lets tests run the supervisor's glue
//! without a jail or KVM). Only the thread starter links the device code
//! (`device-procs`), and only with the `in-process` feature.

use super::spawn::{self, DeviceMode, Launch, SpawnError, Spawned};
#[cfg(feature = "in-process")]
use super::spawn::{ProcessHandle, Waiter};
#[cfg(feature = "in-process")]
use ipc_proto::ProcessKind;
#[cfg(feature = "in-process")]
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
#[cfg(feature = "in-process")]
use std::sync::mpsc::channel;

/// Starts devices.
pub trait Starter: Send + Sync {
    /// Starts `launches` together: one result each, in order.
    fn start(&self, launches: Vec<Launch>) -> Vec<Spawned>;
    /// Where the devices it starts run.
    fn mode(&self) -> DeviceMode;
    /// Whether a running device can be replaced by another program
    /// (x-upgrade-device-process): threads of the core run no program.
    fn replaceable(&self) -> bool {
        self.mode() == DeviceMode::OutOfProcess
    }
}

/// The starter of `mode`; in-process is refused by a core built without it.
pub fn for_mode(mode: DeviceMode) -> Result<Box<dyn Starter>, SpawnError> {
    match mode {
        DeviceMode::OutOfProcess => Ok(Box::new(Processes)),
        #[cfg(feature = "in-process")]
        DeviceMode::InProcess => Ok(Box::new(Threads)),
        #[cfg(not(feature = "in-process"))]
        DeviceMode::InProcess => Err(SpawnError::NoInProcess),
    }
}

/// Devices as processes of their own, jailed unless the sandbox is off.
pub struct Processes;

impl Starter for Processes {
    fn start(&self, launches: Vec<Launch>) -> Vec<Spawned> {
        spawn::spawn(launches)
    }

    fn mode(&self) -> DeviceMode {
        DeviceMode::OutOfProcess
    }
}

/// Devices as threads of the core.
#[cfg(feature = "in-process")]
pub struct Threads;

#[cfg(feature = "in-process")]
impl Starter for Threads {
    /// On the spawner thread: a thread started there inherits no seccomp
    /// filter (the device installs its own), and the caller (the control
    /// loop) has one that a device's calls would break.
    fn start(&self, launches: Vec<Launch>) -> Vec<Spawned> {
        let count = launches.len();
        spawn::on_spawner(move || launches.iter().map(start_thread).collect())
            .unwrap_or_else(|| spawn::spawner_gone(count))
    }

    fn mode(&self) -> DeviceMode {
        DeviceMode::InProcess
    }
}

#[cfg(feature = "in-process")]
/// Starts `launch` as a thread of the core: on copies of the descriptors a
/// process would inherit, with the seccomp filter the process would install
/// (on that thread alone) and no capability. Its log lines carry its kind's
/// name, as a process's do.
fn start_thread(launch: &Launch) -> Result<(ProcessHandle, Waiter), SpawnError> {
    let kind = launch.kind;
    let failed = SpawnError::DeviceThread;
    let duplicate = |&fd: &RawFd| {
        // SAFETY: the caller holds `fds` open until `spawn` returns.
        unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()
    };
    let fds = launch
        .fds
        .iter()
        .map(duplicate)
        .collect::<Result<Vec<_>, _>>()
        .map_err(failed)?;
    let channel_copies = || {
        fds.iter()
            .take(kind.links().len())
            .map(|fd| fd.try_clone())
            .collect::<Result<Vec<_>, _>>()
            .map_err(failed)
    };
    let (sockets, shut_when_ended) = (channel_copies()?, channel_copies()?);
    let startup = device_procs::process::Startup {
        seccomp: common::seccomp::Mode::parse(&launch.sandbox.seccomp)
            .unwrap_or(common::seccomp::Mode::Kill),
        resume: launch.resume,
    };
    let (started, tid) = channel();
    let thread = std::thread::Builder::new()
        .name(kind.name().into())
        .spawn(move || {
            common::set_thread_log_label(kind.name());
            let _ = started.send(nix::unistd::gettid().as_raw() as u32);
            run_device(kind, startup, fds)
        })
        .map_err(failed)?;
    let tid = tid
        .recv()
        .map_err(|_| failed(std::io::ErrorKind::BrokenPipe.into()))?;
    let handle = ProcessHandle::of_thread(tid, sockets);
    let waiter = Waiter::Thread {
        thread,
        sockets: shut_when_ended,
    };
    Ok((handle, waiter))
}

#[cfg(feature = "in-process")]
/// A device thread's body, as `device_procs::process::main` is a process's:
/// returns how it ended.
fn run_device(
    kind: ProcessKind,
    startup: device_procs::process::Startup,
    fds: Vec<OwnedFd>,
) -> String {
    // A thread started by the spawner has its capabilities.
    let ran = crate::confine::drop_all()
        .map_err(|error| common::describe(&error))
        .and_then(|()| {
            device_procs::process::Descriptors::of(kind, fds)
                .and_then(|descriptors| device_procs::run_fn(kind)(startup, descriptors))
                .map_err(|error| common::describe(&error))
        });
    match ran {
        Ok(()) => "returned".to_string(),
        Err(error) => {
            log::error!("{error}");
            format!("failed: {error}")
        }
    }
}
