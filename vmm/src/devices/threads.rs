//! Devices as threads of the core (`--device-mode in-process`, the
//! `in-process` feature): the same code a device process runs, on copies of
//! the descriptors it would inherit, started by one thread of the core
//! that does nothing else.

use super::spawn::{DeviceMode, Launch, ProcessHandle, SpawnError, Spawned, Waiter};
use super::starter::Starter;
use ipc_proto::ProcessKind;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Mutex, OnceLock};

/// Work for the device starter.
type Work = Box<dyn FnOnce() + Send>;

/// The device starter's queue, once it runs.
static DEVICE_STARTER: OnceLock<Mutex<Sender<Work>>> = OnceLock::new();

/// Runs `work` on the device starter, a thread of the core that starts the
/// device threads and nothing else. A thread inherits the filter of the
/// thread that starts it: the control loop's would break a device's calls,
/// so they start from this one, whose filter allows what any device does
/// (each then installs its own, narrower, on itself). It holds no
/// capability. It is started on first use, which is at the VM's start,
/// before the main thread installs its own filter.
fn on_device_starter<R: Send + 'static>(
    work: impl FnOnce() -> R + Send + 'static,
) -> Result<R, SpawnError> {
    let queue = match DEVICE_STARTER.get() {
        Some(queue) => queue,
        None => {
            let (queue, inbox) = channel::<Work>();
            std::thread::Builder::new()
                .name("device-starter".into())
                .spawn(move || {
                    crate::seccomp::confine_or_exit(crate::seccomp::ThreadKind::DeviceStarter);
                    while let Ok(work) = inbox.recv() {
                        work();
                    }
                })
                .map_err(SpawnError::Thread)?;
            DEVICE_STARTER.get_or_init(|| Mutex::new(queue))
        }
    };
    let (reply, answer) = channel();
    let sent = common::lock(queue).send(Box::new(move || {
        let _ = reply.send(work());
    }));
    let gone = || SpawnError::Thread(std::io::ErrorKind::BrokenPipe.into());
    sent.map_err(|_| gone())?;
    answer.recv().map_err(|_| gone())
}

/// Devices as threads of the core.
pub struct Threads;

impl Starter for Threads {
    /// On the device starter's thread (see [`on_device_starter`]).
    fn start(&self, launches: Vec<Launch>) -> Vec<Spawned> {
        let count = launches.len();
        on_device_starter(move || launches.iter().map(start_thread).collect()).unwrap_or_else(
            |error| {
                let why = common::describe(&error);
                (0..count)
                    .map(|_| Err(SpawnError::DeviceThread(std::io::Error::other(why.clone()))))
                    .collect()
            },
        )
    }

    fn mode(&self) -> DeviceMode {
        DeviceMode::InProcess
    }
}

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
        trace: crate::trace::enabled(),
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

/// A device thread's body, as `device_procs::process::main` is a process's:
/// returns how it ended.
fn run_device(
    kind: ProcessKind,
    startup: device_procs::process::Startup,
    fds: Vec<OwnedFd>,
) -> String {
    // A thread started by the spawner has its capabilities.
    let ran = jailer::privileges::drop_all()
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
