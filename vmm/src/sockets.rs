//! The Unix socket paths a VM serves (`--qmp`, `--console`), claimed
//! without a check-then-act race and removed only by their owner.
//!
//! Whoever holds an `flock` on `PATH.lock` serves `PATH`: the kernel
//! releases it when the holder dies, however it dies. So two VMs started at
//! once on the same path decide between them without connecting to
//! anything (a probe by connection would be a new client to a running VM,
//! and its console client would be disconnected), the loser touches
//! nothing, and the winner removes, when it ends, only the socket it bound
//! (the same inode) and its lock file.

use nix::fcntl::Flock;
use std::fs::File;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// sockaddr_un holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;
/// Attempts at a lock file another owner removed meanwhile.
const LOCK_ATTEMPTS: usize = 8;

/// A socket path this VM serves, bound; removed (with its lock file) when
/// dropped, if it is still the one this VM bound.
#[derive(Debug)]
pub struct ClaimedSocket {
    path: PathBuf,
    lock_path: PathBuf,
    listener: UnixListener,
    /// The bound socket's (device, inode).
    bound: (u64, u64),
    _lock: Flock<File>,
}

/// The lock file of socket `path`.
pub fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

fn identity(metadata: &std::fs::Metadata) -> (u64, u64) {
    (metadata.dev(), metadata.ino())
}

/// Takes the lock at `path`, or says who holds it; the file locked is the
/// one at `path` (not one an owner unlinked on its way out).
fn lock(path: &Path) -> Result<Option<Flock<File>>, String> {
    for _ in 0..LOCK_ATTEMPTS {
        let Some(lock) =
            crate::runtime::try_lock(path).map_err(|error| common::describe(&error))?
        else {
            return Ok(None);
        };
        let held = lock.metadata().map(|m| identity(&m));
        let named = std::fs::symlink_metadata(path).map(|m| identity(&m));
        match (held, named) {
            (Ok(held), Ok(named)) if held == named => return Ok(Some(lock)),
            // Its owner removed it between our open and our lock: again.
            _ => continue,
        }
    }
    Err(format!("{} keeps being replaced", path.display()))
}

impl ClaimedSocket {
    /// Claims and binds `path` for `option`. A socket left by a VM that
    /// died is replaced; a path another VM serves is refused without
    /// connecting to it; so is anything else that is there.
    pub fn claim(option: &str, path: &Path) -> Result<ClaimedSocket, String> {
        let shown = path.display();
        let parent = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        if !parent.is_dir() {
            return Err(format!(
                "{option} {shown}: directory {} does not exist",
                parent.display()
            ));
        }
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(format!(
                "{option} {shown}: longer than the {MAX_SOCKET_PATH} bytes a Unix socket path may have"
            ));
        }
        let lock_path = lock_path(path);
        let lock = lock(&lock_path)
            .map_err(|why| format!("{option} {shown}: {why}"))?
            .ok_or_else(|| format!("{option} {shown}: another VM serves this socket"))?;
        if let Ok(metadata) = std::fs::symlink_metadata(path) {
            if !metadata.file_type().is_socket() {
                return Err(format!(
                    "{option} {shown}: the path already exists and is not a socket"
                ));
            }
            // No VM of ours serves it (we hold its lock): left by one that
            // died. Another program may serve it: that one is not replaced.
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(format!(
                    "{option} {shown}: a running process serves this socket"
                ));
            }
            std::fs::remove_file(path).map_err(|error| {
                format!("{option} {shown}: cannot remove the stale socket: {error}")
            })?;
            log::info!("{option} {shown}: removed a stale socket nobody served");
        }
        let listener = UnixListener::bind(path)
            .map_err(|error| format!("{option} {shown}: cannot serve it: {error}"))?;
        let bound = std::fs::symlink_metadata(path)
            .map(|m| identity(&m))
            .map_err(|error| format!("{option} {shown}: {error}"))?;
        Ok(ClaimedSocket {
            path: path.to_path_buf(),
            lock_path,
            listener,
            bound,
            _lock: lock,
        })
    }

    /// The listening socket, for the thread that serves it.
    pub fn listener(&self) -> std::io::Result<UnixListener> {
        self.listener.try_clone()
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ClaimedSocket {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|metadata| identity(&metadata) == self.bound);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
        // Unlinked while locked: a VM that opened it meanwhile sees, once
        // it has the lock, that it is not the file at the path any more.
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("pv-sockets-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_served_path_is_refused_without_a_connection_and_the_loser_removes_nothing() {
        let dir = dir();
        let path = dir.join("qmp.sock");
        let winner = ClaimedSocket::claim("--qmp", &path).unwrap();
        let listener = winner.listener().unwrap();
        listener.set_nonblocking(true).unwrap();
        let loser = ClaimedSocket::claim("--qmp", &path).unwrap_err();
        assert!(loser.contains("another VM serves this socket"), "{loser}");
        // Nobody connected to the winner to find out.
        assert!(listener.accept().is_err());
        assert!(path.exists(), "the loser removed the winner's socket");
        assert!(lock_path(&path).exists());
        drop(winner);
        assert!(!path.exists() && !lock_path(&path).exists());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_stale_socket_is_replaced_and_only_our_own_is_removed() {
        let dir = dir();
        let path = dir.join("console.sock");
        // Left by a VM that died: bound, nobody listening, no lock held.
        drop(UnixListener::bind(&path).unwrap());
        let claimed = ClaimedSocket::claim("--console", &path).unwrap();
        // Replaced under us by someone else: theirs stays.
        std::fs::remove_file(&path).unwrap();
        let theirs = UnixListener::bind(&path).unwrap();
        drop(claimed);
        assert!(path.exists(), "a socket this VM did not bind was removed");
        drop(theirs);
        // Something that is not a socket, or a socket another program
        // serves, is never replaced.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"x").unwrap();
        let refused = ClaimedSocket::claim("--console", &path).unwrap_err();
        assert!(refused.contains("is not a socket"), "{refused}");
        std::fs::remove_file(&path).unwrap();
        let _foreign = UnixListener::bind(&path).unwrap();
        let refused = ClaimedSocket::claim("--console", &path).unwrap_err();
        assert!(refused.contains("a running process serves"), "{refused}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn paths_need_an_existing_directory_and_a_short_name() {
        assert!(ClaimedSocket::claim("--qmp", Path::new("/nonexistent-dir/q.sock")).is_err());
        let long = format!("/tmp/{}", "x".repeat(120));
        assert!(ClaimedSocket::claim("--qmp", Path::new(&long)).is_err());
    }
}
