//! Running under a service manager or a management stack: detaching once
//! QMP is served (`--daemonize`, which libvirt's probe relies on), a pid
//! file, a QMP socket handed over as a descriptor (`--qmp-fd`), and
//! systemd's readiness notification (`$NOTIFY_SOCKET`, `Type=notify`).

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// The detached process's promise to its parent: said once the VM serves
/// QMP; if the process ends first, the parent reads end-of-file and
/// exits with a failure.
pub struct Detached {
    ready: std::fs::File,
}

/// Forks: the parent waits until the child says it serves, then exits
/// (0 when it does, 1 when the child ended first); the child returns,
/// in a session of its own. Call it before any thread starts.
pub fn daemonize() -> Result<Detached, nix::Error> {
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: no other thread runs yet (the caller's contract), so the
    // child may go on with any code.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { .. } => {
            drop(write_end);
            let mut said = [0u8; 1];
            let served = std::fs::File::from(read_end).read(&mut said).ok() == Some(1);
            std::process::exit(if served { 0 } else { 1 });
        }
        nix::unistd::ForkResult::Child => {
            drop(read_end);
            nix::unistd::setsid()?;
            Ok(Detached {
                ready: std::fs::File::from(write_end),
            })
        }
    }
}

impl Detached {
    /// The VM serves: the parent exits, and this process's standard
    /// streams go to /dev/null (nobody reads them any more).
    pub fn serving(mut self) {
        let _ = self.ready.write_all(b"1");
        if let Ok(null) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
        {
            for stream in 0..=2 {
                // SAFETY: dup2 onto the standard streams replaces them
                // with /dev/null; `null` stays valid during the call.
                unsafe { nix::libc::dup2(null.as_raw_fd(), stream) };
            }
        }
    }
}

/// systemd's notification socket (`$NOTIFY_SOCKET`), connected at start,
/// while the core may still open sockets: saying ready is then one write,
/// which every thread's filter allows.
pub struct Notifier {
    socket: std::fs::File,
}

impl Notifier {
    /// The socket `$NOTIFY_SOCKET` names (a path, or `@` and an abstract
    /// name), if set; the variable is taken out of the environment, so
    /// that no process the core starts inherits it.
    pub fn from_environment() -> Result<Option<Notifier>, String> {
        let Some(address) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(None);
        };
        // SAFETY: called before any thread starts (the caller's contract),
        // so nothing reads the environment meanwhile.
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        Notifier::connect(&address).map(Some)
    }

    /// Connects to the notification socket at `address` (a path, or `@`
    /// and an abstract name).
    fn connect(address: &std::ffi::OsStr) -> Result<Notifier, String> {
        let shown = address.to_string_lossy().into_owned();
        let failed = |error: std::io::Error| format!("NOTIFY_SOCKET {shown}: {error}");
        let socket = std::os::unix::net::UnixDatagram::unbound().map_err(failed)?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(address);
        match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let address =
                    std::os::unix::net::SocketAddr::from_abstract_name(name).map_err(failed)?;
                socket.connect_addr(&address).map_err(failed)?;
            }
            None => socket.connect(address).map_err(failed)?,
        }
        // Said from the control loop, which must not wait for a receiver
        // whose queue is full: the notice is lost then, and logged.
        socket.set_nonblocking(true).map_err(failed)?;
        Ok(Notifier {
            socket: std::fs::File::from(OwnedFd::from(socket)),
        })
    }

    /// `READY=1`: QMP is served and the guest started.
    pub fn ready(&self) {
        let message = format!("READY=1\nMAINPID={}", std::process::id());
        if let Err(error) = (&self.socket).write_all(message.as_bytes()) {
            log::warn!("cannot notify the service manager: {error}");
        }
    }
}

/// `--pidfile`: the core's pid, written at start and removed at the end,
/// and locked meanwhile (`flock`, as QEMU locks its own): a second VM
/// given the same file is refused instead of overwriting the pid of one
/// that runs, whose end would then remove the second's. A file left by a
/// VM that is gone holds no lock and is taken over.
pub struct PidFile {
    path: PathBuf,
    /// Open, and locked, for as long as the process runs; not inherited by
    /// what the core starts (close-on-exec).
    file: nix::fcntl::Flock<std::fs::File>,
}

impl PidFile {
    /// Locks `path` (created if need be) and writes this process's pid to it.
    pub fn write(path: &Path) -> Result<PidFile, String> {
        use nix::fcntl::{Flock, FlockArg};
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let failed =
            |error: &dyn std::fmt::Display| format!("--pidfile {}: {error}", path.display());
        loop {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .mode(0o644)
                .custom_flags(nix::libc::O_CLOEXEC)
                .open(path)
                .map_err(|error| failed(&error))?;
            let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(file) => file,
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                    let holder = std::fs::read_to_string(path).unwrap_or_default();
                    return Err(failed(&format_args!(
                        "in use by a running process (pid {})",
                        holder.trim()
                    )));
                }
                Err((_, errno)) => return Err(failed(&errno)),
            };
            let pid_file = PidFile {
                path: path.to_path_buf(),
                file,
            };
            // Removed (by the VM that held it, ending) between the open and
            // the lock: the lock is on a file nobody reads. Again.
            if !pid_file.still_named() {
                continue;
            }
            pid_file.file.set_len(0).map_err(|error| failed(&error))?;
            (&*pid_file.file)
                .write_all(format!("{}\n", std::process::id()).as_bytes())
                .map_err(|error| failed(&error))?;
            return Ok(pid_file);
        }
    }

    /// Whether the locked file is still the one at the path.
    fn still_named(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (self.file.metadata(), std::fs::metadata(&self.path)) {
            (Ok(held), Ok(named)) => held.ino() == named.ino() && held.dev() == named.dev(),
            _ => false,
        }
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Removed while the lock is held: nobody else took the path.
        if self.still_named() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// `--qmp-fd`: the inherited descriptor, checked to be a listening Unix
/// socket, and kept from every process the core starts.
pub fn inherited_listener(fd: RawFd) -> Result<UnixListener, String> {
    use nix::sys::socket::{getsockname, getsockopt, sockopt, UnixAddr};
    // SAFETY: `fd` is checked to be open before it is owned; the command
    // line gives it to the core, and nothing else in the process uses it.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    nix::fcntl::fcntl(borrowed, nix::fcntl::FcntlArg::F_GETFD)
        .map_err(|error| format!("--qmp-fd {fd}: not an open descriptor ({error})"))?;
    // SAFETY: open (checked above) and handed to the core alone.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    nix::fcntl::fcntl(
        &owned,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|error| format!("--qmp-fd {fd}: {error}"))?;
    if getsockname::<UnixAddr>(owned.as_raw_fd()).is_err() {
        return Err(format!("--qmp-fd {fd}: not a Unix socket"));
    }
    match getsockopt(&owned, sockopt::AcceptConn) {
        Ok(true) => Ok(UnixListener::from(owned)),
        _ => Err(format!("--qmp-fd {fd}: not a listening socket")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_listening_unix_socket_is_taken() {
        let dir = std::env::temp_dir().join(format!("pv-daemon-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let listener = UnixListener::bind(dir.join("q.sock")).unwrap();
        let fd = std::os::fd::IntoRawFd::into_raw_fd(listener);
        let taken = inherited_listener(fd).unwrap();
        let flags = nix::fcntl::fcntl(&taken, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & nix::libc::FD_CLOEXEC, 0);

        let file = std::fs::File::open("/dev/null").unwrap();
        let fd = std::os::fd::IntoRawFd::into_raw_fd(file);
        assert!(inherited_listener(fd)
            .unwrap_err()
            .contains("not a Unix socket"));
        let (one, _other) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = std::os::fd::IntoRawFd::into_raw_fd(one);
        assert!(inherited_listener(fd)
            .unwrap_err()
            .contains("not a listening"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_service_manager_that_does_not_read_is_not_waited_for() {
        let dir = std::env::temp_dir().join(format!("pv-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let receiver = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::connect(path.as_os_str()).unwrap();
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Far more than a datagram queue holds (its default is 10).
            for _ in 0..1000 {
                notifier.ready();
            }
            let _ = done.send(());
        });
        assert!(
            finished
                .recv_timeout(std::time::Duration::from_secs(20))
                .is_ok(),
            "saying ready waited for a receiver that does not read"
        );
        let mut message = [0u8; 64];
        let n = receiver.recv(&mut message).unwrap();
        assert!(message[..n].starts_with(b"READY=1\nMAINPID="));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_pid_file_is_held_while_its_process_runs_and_goes_with_it() {
        let path = std::env::temp_dir().join(format!("pv-pid-{}", std::process::id()));
        // Left by a VM that is gone: taken over.
        std::fs::write(&path, "999999999\n").unwrap();
        let pid_file = PidFile::write(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        // Held: a second VM is refused, and the file names the first.
        let refused = PidFile::write(&path).err().unwrap();
        assert!(refused.contains("in use by a running process"), "{refused}");
        assert!(
            refused.contains(&std::process::id().to_string()),
            "{refused}"
        );
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        drop(pid_file);
        assert!(!path.exists());
        // Replaced by another file meanwhile: that one is left alone.
        let pid_file = PidFile::write(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "1\n").unwrap();
        drop(pid_file);
        assert!(path.exists(), "another process's pid file is left alone");
        let _ = std::fs::remove_file(path);
    }
}
