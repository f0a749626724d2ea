//! What a VM holds on the host while it runs: its runtime directory (the
//! jails' roots live there) and the uid/gid its device processes run as.
//!
//! Both are claimed with `flock`, which the kernel releases when the core
//! dies however it dies: a directory whose lock nobody holds belongs to a
//! dead VM and is removed at the next start; a uid whose lock is held is
//! another VM's and is never handed out twice.

use nix::fcntl::{Flock, FlockArg};
use std::fs::{DirBuilder, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Device processes run as a uid (and gid) of this range, one per VM:
/// far above login users' and the usual subordinate-id ranges.
pub const ID_RANGE: std::ops::Range<u32> = 1_900_000_000..1_900_065_536;
/// Where every VM of the host claims its device processes' uid and gid,
/// whatever its `--jail-dir`: one place, so that no two VMs share an id.
pub const IDS_DIR: &str = "/run/papervisor/ids";
/// Directories of VMs are called this, then the core's pid.
const VM_DIR_PREFIX: &str = "vm-";
const LOCK_FILE: &str = "lock";

/// Why a runtime directory or the device processes' ids cannot be had.
#[derive(Debug, Error)]
pub enum RuntimeError {
    /// A directory cannot be created.
    #[error("cannot create {0}")]
    Create(PathBuf, #[source] std::io::Error),
    /// A lock file cannot be locked.
    #[error("cannot lock {0}")]
    Lock(PathBuf, #[source] nix::Error),
    /// The uid asked for is taken.
    #[error("uid {0} is in use (by another VM or another process); choose another --uid")]
    UidInUse(u32),
    /// The gid asked for is taken.
    #[error("gid {0} is in use (by another VM or another process); choose another --gid")]
    GidInUse(u32),
    /// Every uid of the range is taken.
    #[error("every uid of {}..{} is in use", ID_RANGE.start, ID_RANGE.end)]
    NoFreeUid,
    /// A directory others could tamper with.
    #[error("{0} is not a private directory of this user (mode 0700, ours)")]
    NotPrivate(PathBuf),
    /// Ids asked for without root.
    #[error("--uid and --gid need root: without it, device processes run under this user's uid, in a user namespace")]
    IdsNeedRoot,
}

/// Where runtime directories go by default: `/run/papervisor` for root;
/// otherwise `$XDG_RUNTIME_DIR/papervisor`, or `/tmp/papervisor-<uid>`.
pub fn default_base() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/run/papervisor");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir.join("papervisor"),
        _ => PathBuf::from(format!("/tmp/papervisor-{}", nix::unistd::geteuid())),
    }
}

/// This VM's runtime directory, `<base>/vm-<pid>`, removed when dropped.
pub struct RunDir {
    path: PathBuf,
    _lock: Flock<File>,
}

/// Makes `path` (mode 0700), and checks that it is ours and private: a
/// directory someone else made in a shared place (/tmp) is refused.
pub fn create_private_dir(path: &Path) -> Result<(), RuntimeError> {
    use std::os::unix::fs::MetadataExt;
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|error| RuntimeError::Create(path.to_path_buf(), error))?;
    let metadata = std::fs::symlink_metadata(path)
        .map_err(|error| RuntimeError::Create(path.to_path_buf(), error))?;
    if !metadata.is_dir()
        || metadata.uid() != nix::unistd::geteuid().as_raw()
        || metadata.mode() & 0o077 != 0
    {
        return Err(RuntimeError::NotPrivate(path.to_path_buf()));
    }
    Ok(())
}

/// Takes the lock at `path` without waiting; `None` if someone holds it.
pub fn try_lock(path: &Path) -> Result<Option<Flock<File>>, RuntimeError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(|error| RuntimeError::Create(path.to_path_buf(), error))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, errno)) => Err(RuntimeError::Lock(path.to_path_buf(), errno)),
    }
}

impl RunDir {
    /// Removes the directories of dead VMs under `base`, then makes and
    /// locks this VM's. The directory gets its name only once it is locked,
    /// so that another VM starting at the same time never takes it for stale.
    pub fn create(base: &Path) -> Result<RunDir, RuntimeError> {
        create_private_dir(base)?;
        remove_stale(base);
        let pid = std::process::id();
        let path = base.join(format!("{VM_DIR_PREFIX}{pid}"));
        let unnamed = base.join(format!(".{VM_DIR_PREFIX}{pid}"));
        // Directories of a dead VM whose pid we now have: stale too.
        let _ = std::fs::remove_dir_all(&path);
        let _ = std::fs::remove_dir_all(&unnamed);
        create_private_dir(&unnamed)?;
        let lock = try_lock(&unnamed.join(LOCK_FILE))?
            .ok_or_else(|| RuntimeError::Lock(unnamed.clone(), nix::errno::Errno::EWOULDBLOCK))?;
        std::fs::rename(&unnamed, &path)
            .map_err(|error| RuntimeError::Create(path.clone(), error))?;
        Ok(RunDir { path, _lock: lock })
    }

    /// Where the jails' roots are made.
    pub fn jails(&self) -> PathBuf {
        self.path.join("jails")
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// How long the VM's last processes (the spawner, a standby it was
/// starting) may take to stop adding to the runtime directory at the end.
const REMOVAL_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

impl Drop for RunDir {
    fn drop(&mut self) {
        // The spawner ends with the core's link, a moment after it: a jail
        // it was making meanwhile appears while the tree is removed.
        let deadline = std::time::Instant::now() + REMOVAL_GRACE;
        loop {
            match std::fs::remove_dir_all(&self.path) {
                Ok(()) => return,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => return,
                Err(error)
                    if error.raw_os_error() == Some(nix::libc::ENOTEMPTY)
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(error) => {
                    log::warn!("cannot remove {}: {error}", self.path.display());
                    return;
                }
            }
        }
    }
}

/// Removes every VM directory under `base` whose lock nobody holds.
fn remove_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(VM_DIR_PREFIX) {
            continue;
        }
        let dir = entry.path();
        // A VM ending removes its own directory while another starts and
        // sweeps: what vanishes meanwhile is someone else's removal, not
        // a problem to warn of.
        match try_lock(&dir.join(LOCK_FILE)) {
            Ok(Some(_stale)) => {
                log::info!("removing {}, left by a VM that is gone", dir.display());
                match std::fs::remove_dir_all(&dir) {
                    Ok(()) => {}
                    Err(error) if removed_meanwhile(&error) => {
                        log::info!("{} is being removed by another: {error}", dir.display())
                    }
                    Err(error) => log::warn!("cannot remove {}: {error}", dir.display()),
                }
            }
            Ok(None) => {}
            Err(RuntimeError::Create(_, error)) if removed_meanwhile(&error) => {}
            Err(error) => log::warn!("{}", common::describe(&error)),
        }
    }
}

/// Whether `error` says another process removed (or is removing) what a
/// sweep touched: gone, or not yet empty.
fn removed_meanwhile(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::NotFound
        || error.raw_os_error() == Some(nix::libc::ENOTEMPTY)
}

/// The uid and gid this VM's device processes run as, held while it runs.
pub struct Identity {
    /// The uid.
    pub uid: u32,
    /// The gid.
    pub gid: u32,
    _locks: Vec<Flock<File>>,
}

/// Whether a process on the host runs with `id` as any of its uids
/// (`field` "Uid:") or gids ("Gid:").
fn id_used_by_a_process(field: &str, id: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    let id = id.to_string();
    entries.flatten().any(|entry| {
        std::fs::read_to_string(entry.path().join("status"))
            .ok()
            .and_then(|status| {
                let line = status.lines().find(|l| l.starts_with(field))?.to_string();
                Some(line.split_whitespace().skip(1).any(|used| used == id))
            })
            .unwrap_or(false)
    })
}

/// Claims id `id` of `kind` ("uid" or "gid") in `ids`: its lock, unless
/// another VM holds it or a process runs with it.
fn claim_id(ids: &Path, kind: &str, id: u32) -> Result<Option<Flock<File>>, RuntimeError> {
    let Some(lock) = try_lock(&ids.join(format!("{kind}-{id}")))? else {
        return Ok(None);
    };
    let field = if kind == "uid" { "Uid:" } else { "Gid:" };
    if id_used_by_a_process(field, id) {
        return Ok(None);
    }
    Ok(Some(lock))
}

impl Identity {
    /// Without root: the jailer maps the only ids it may, this user's, to
    /// these inside the device processes' user namespace.
    pub fn unprivileged() -> Identity {
        Identity {
            uid: jailer::DEFAULT_ID,
            gid: jailer::DEFAULT_ID,
            _locks: Vec::new(),
        }
    }

    /// Claims `uid` and `gid` (the uid when absent), or the first uid of
    /// [`ID_RANGE`] free as a uid and as a gid, in `ids` ([`IDS_DIR`]: the
    /// host's one place). An id another VM holds, or that a process runs
    /// with, is refused. Both locks are held before either is used.
    pub fn claim(ids: &Path, uid: Option<u32>, gid: Option<u32>) -> Result<Identity, RuntimeError> {
        create_private_dir(ids)?;
        let take = |uid: u32| -> Result<Result<Identity, RuntimeError>, RuntimeError> {
            let gid = gid.unwrap_or(uid);
            let Some(uid_lock) = claim_id(ids, "uid", uid)? else {
                return Ok(Err(RuntimeError::UidInUse(uid)));
            };
            let Some(gid_lock) = claim_id(ids, "gid", gid)? else {
                return Ok(Err(RuntimeError::GidInUse(gid)));
            };
            Ok(Ok(Identity {
                uid,
                gid,
                _locks: vec![uid_lock, gid_lock],
            }))
        };
        match uid {
            Some(uid) => take(uid)?,
            None => {
                for candidate in ID_RANGE {
                    match take(candidate)? {
                        Ok(identity) => return Ok(identity),
                        // A --gid in use stays in use whatever the uid.
                        Err(RuntimeError::GidInUse(taken)) if gid.is_some() => {
                            return Err(RuntimeError::GidInUse(taken))
                        }
                        Err(_) => continue,
                    }
                }
                Err(RuntimeError::NoFreeUid)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::env::temp_dir().join(format!("pv-runtime-{}-{n}", std::process::id()))
    }

    #[test]
    fn a_uid_is_never_claimed_twice_while_held() {
        let base = base();
        let first = Identity::claim(&base, None, None).unwrap();
        let second = Identity::claim(&base, None, None).unwrap();
        assert_ne!(first.uid, second.uid);
        assert!(ID_RANGE.contains(&first.uid) && ID_RANGE.contains(&second.uid));
        assert!(matches!(
            Identity::claim(&base, Some(first.uid), None),
            Err(RuntimeError::UidInUse(_))
        ));
        // Another VM's gid is not anyone else's, under any uid.
        assert!(matches!(
            Identity::claim(&base, Some(ID_RANGE.end - 1), Some(first.gid)),
            Err(RuntimeError::GidInUse(_))
        ));
        assert!(matches!(
            Identity::claim(&base, None, Some(second.gid)),
            Err(RuntimeError::GidInUse(_))
        ));
        let uid = first.uid;
        drop(first);
        assert_eq!(
            Identity::claim(&base, Some(uid), Some(ID_RANGE.end - 7))
                .unwrap()
                .gid,
            ID_RANGE.end - 7
        );
        let _ = std::fs::remove_dir_all(base);
    }

    #[test]
    fn a_uid_a_process_runs_as_is_refused() {
        let base = base();
        // This test runs as some uid; that one is in use.
        let mine = nix::unistd::getuid().as_raw();
        assert!(matches!(
            Identity::claim(&base, Some(mine), None),
            Err(RuntimeError::UidInUse(_))
        ));
        let _ = std::fs::remove_dir_all(base);
    }

    #[test]
    fn a_directory_removed_during_a_sweep_is_not_an_error() {
        let base = base();
        create_private_dir(&base).unwrap();
        // What the sweep meets when the directory went between its listing
        // and its lock.
        let Err(RuntimeError::Create(_, error)) = try_lock(&base.join("vm-1/lock")) else {
            panic!("a lock in a missing directory");
        };
        assert!(removed_meanwhile(&error));
        // And when the owner's removal is halfway.
        let busy = base.join("vm-2");
        create_private_dir(&busy.join("jails")).unwrap();
        let error = std::fs::remove_dir(&busy).unwrap_err();
        assert!(removed_meanwhile(&error));
        let permission = std::io::Error::from_raw_os_error(nix::libc::EACCES);
        assert!(!removed_meanwhile(&permission));
        let _ = std::fs::remove_dir_all(base);
    }

    #[test]
    fn directories_of_dead_vms_go_and_live_ones_stay() {
        let base = base();
        let dead = base.join("vm-999999999");
        create_private_dir(&dead.join("jails/x")).unwrap();
        let live = base.join("vm-999999998");
        create_private_dir(&live).unwrap();
        let held = try_lock(&live.join(LOCK_FILE)).unwrap().unwrap();
        let ours = RunDir::create(&base).unwrap();
        assert!(!dead.exists(), "a dead VM's directory stayed");
        assert!(live.exists(), "a live VM's directory was removed");
        let path = ours.path().to_path_buf();
        assert!(path.exists());
        drop(ours);
        assert!(
            !path.exists(),
            "the VM's own directory stayed after it ended"
        );
        drop(held);
        let _ = std::fs::remove_dir_all(base);
    }
}
