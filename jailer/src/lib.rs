//! The jailer: starts a program the way a Papervisor device process must run.
//!
//! In this order (Firecracker's jailer is the model): every inherited
//! descriptor closed but the ones handed over (3..3+N), the environment
//! cleared; new mount, PID, network, IPC and UTS namespaces (and a user
//! namespace when not root); an empty root (a tmpfs, pivot_root, the old root
//! detached, nothing of the host filesystem left); an unprivileged uid/gid
//! with no supplementary groups and no capabilities; no_new_privs; resource
//! limits (open files, address space, no core dumps, no new processes); then
//! exec of the program, opened before the root went away.
//!
//! The core uses [`JailConfig::to_args`] to start the `jailer` binary, which
//! calls [`run`]. The program becomes PID 1 of its PID namespace. The jailer
//! does not stay: once the program has been exec'd it hands a pidfd of it to
//! whoever started it, on the report socket ([`JailConfig::report_fd`]), and
//! exits; the starter, a child subreaper, inherits the program as its child
//! and watches and signals it through that pidfd, never through a pid that
//! could be reused. No privileged process is left behind.
#![deny(missing_docs)]

pub mod privileges;
pub mod reaper;
pub mod spawn;
pub mod spawner;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{chdir, fork, pivot_root, ForkResult, Gid, Uid};
use std::ffi::{CString, OsString};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// nobody/nogroup.
pub const DEFAULT_ID: u32 = 65_534;
/// Where per-jail roots are made: `<base>/<program>/<id>/root`.
pub const DEFAULT_CHROOT_BASE: &str = "/srv/jailer";
/// The first descriptor handed over.
pub const FIRST_KEPT_FD: i32 = 3;
const DEFAULT_OPEN_FILES: u64 = 64;
const MAX_ID_LEN: usize = 64;
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Why a jail cannot be made.
#[derive(Debug, Error)]
pub enum JailError {
    /// The id is empty, too long, or has characters other than letters, digits and '-'.
    #[error("invalid --id '{0}': 1 to 64 letters, digits or '-'")]
    BadId(String),
    /// The program does not exist or cannot be executed.
    #[error("--exec-file {path}: {why}")]
    BadExecFile {
        /// The path given.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A uid or gid of 0 (root) or -1.
    #[error("invalid --{which} {value}: an unprivileged id is required (not 0 or 4294967295)")]
    BadId2 {
        /// "uid" or "gid".
        which: &'static str,
        /// The value.
        value: u32,
    },
    /// The chroot base is not an absolute path.
    #[error("--chroot-base-dir {0}: must be an absolute path")]
    BadChrootBase(PathBuf),
    /// A resource limit that is not NAME=VALUE with a known name.
    #[error(
        "invalid --resource-limit '{0}': expected no-file=N, as=BYTES, fsize=BYTES or nproc=N"
    )]
    BadResourceLimit(String),
    /// A cgroup setting that is not FILE=VALUE with a plain file name.
    #[error("invalid --cgroup '{0}': expected FILE=VALUE, e.g. pids.max=1")]
    BadCgroup(String),
    /// The report socket is one of the handed-over descriptors, or stdio.
    #[error("--report-fd {fd}: must be a descriptor above the kept ones (>= {first_free})")]
    BadReportFd {
        /// The descriptor given.
        fd: i32,
        /// The first descriptor that is not handed over.
        first_free: i32,
    },
    /// cgroup settings were asked for but cgroup v2 is not mounted.
    #[error("--cgroup needs cgroup v2 at {CGROUP_ROOT}")]
    NoCgroupV2,
    /// A step inside the jail failed (the program did not start).
    #[error("{0}")]
    InJail(String),
    /// A step of the jail failed.
    #[error("{step}: {source}")]
    Step {
        /// What was being done.
        step: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn step(step: &'static str) -> impl FnOnce(nix::Error) -> JailError {
    move |errno| JailError::Step {
        step,
        source: std::io::Error::from(errno),
    }
}

fn io_step(step: &'static str) -> impl FnOnce(std::io::Error) -> JailError {
    move |source| JailError::Step { step, source }
}

/// A resource limit the jail sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// RLIMIT_NOFILE.
    OpenFiles(u64),
    /// RLIMIT_AS, in bytes.
    AddressSpace(u64),
    /// RLIMIT_FSIZE, in bytes.
    FileSize(u64),
    /// RLIMIT_NPROC: the tasks (processes and threads) of the jail's uid,
    /// 0 (none may be made) unless given.
    Tasks(u64),
}

impl Limit {
    /// Parses `no-file=N`, `as=BYTES`, `fsize=BYTES`, `nproc=N`.
    pub fn parse(text: &str) -> Result<Limit, JailError> {
        let bad = || JailError::BadResourceLimit(text.to_string());
        let (name, value) = text.split_once('=').ok_or_else(bad)?;
        let value: u64 = value.parse().map_err(|_| bad())?;
        match name {
            "no-file" => Ok(Limit::OpenFiles(value)),
            "as" => Ok(Limit::AddressSpace(value)),
            "fsize" => Ok(Limit::FileSize(value)),
            "nproc" => Ok(Limit::Tasks(value)),
            _ => Err(bad()),
        }
    }

    fn arg(&self) -> String {
        match self {
            Limit::OpenFiles(n) => format!("no-file={n}"),
            Limit::AddressSpace(n) => format!("as={n}"),
            Limit::FileSize(n) => format!("fsize={n}"),
            Limit::Tasks(n) => format!("nproc={n}"),
        }
    }
}

/// A cgroup v2 setting: a file of the jail's cgroup and its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupSetting {
    /// e.g. `pids.max`.
    pub file: String,
    /// e.g. `1`.
    pub value: String,
}

impl CgroupSetting {
    /// Parses `FILE=VALUE`.
    pub fn parse(text: &str) -> Result<CgroupSetting, JailError> {
        let bad = || JailError::BadCgroup(text.to_string());
        let (file, value) = text.split_once('=').ok_or_else(bad)?;
        let plain = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ' '))
        };
        if !plain(file) || file.starts_with('.') || !plain(value) {
            return Err(bad());
        }
        Ok(CgroupSetting {
            file: file.to_string(),
            value: value.to_string(),
        })
    }
}

/// Everything about one jail.
#[derive(Clone, Debug)]
pub struct JailConfig {
    /// Names the jail (its directory, its cgroup).
    pub id: String,
    /// The program.
    pub exec_file: PathBuf,
    /// Its uid.
    pub uid: u32,
    /// Its gid.
    pub gid: u32,
    /// Where the jail's root directory is made.
    pub chroot_base: PathBuf,
    /// Limits besides the fixed ones (no core dumps, no new processes).
    pub limits: Vec<Limit>,
    /// cgroup v2 settings, if any.
    pub cgroup: Vec<CgroupSetting>,
    /// Descriptors 3..3+N are handed to the program.
    pub keep_fds: u32,
    /// A Unix socket on which the jailer sends, once the program exists,
    /// its pid (4 bytes, little-endian) with a pidfd of it (SCM_RIGHTS). The
    /// program never sees this descriptor.
    pub report_fd: Option<i32>,
    /// The program's arguments.
    pub args: Vec<OsString>,
}

impl JailConfig {
    /// Checks everything that can be checked before anything is done.
    pub fn validate(&self) -> Result<(), JailError> {
        let id_ok = !self.id.is_empty()
            && self.id.len() <= MAX_ID_LEN
            && self
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !id_ok {
            return Err(JailError::BadId(self.id.clone()));
        }
        let bad_exec = |why: &str| JailError::BadExecFile {
            path: self.exec_file.clone(),
            why: why.to_string(),
        };
        let metadata = std::fs::metadata(&self.exec_file).map_err(|e| bad_exec(&e.to_string()))?;
        if !metadata.is_file() {
            return Err(bad_exec("not a regular file"));
        }
        if metadata.permissions().mode() & 0o111 == 0 {
            return Err(bad_exec("not executable"));
        }
        if self.exec_file.file_name().is_none() {
            return Err(bad_exec("no file name"));
        }
        for (which, value) in [("uid", self.uid), ("gid", self.gid)] {
            if value == 0 || value == u32::MAX {
                return Err(JailError::BadId2 { which, value });
            }
        }
        let first_free = FIRST_KEPT_FD + self.keep_fds as i32;
        if let Some(fd) = self.report_fd.filter(|&fd| fd < first_free) {
            return Err(JailError::BadReportFd { fd, first_free });
        }
        if !self.chroot_base.is_absolute() {
            return Err(JailError::BadChrootBase(self.chroot_base.clone()));
        }
        if !self.cgroup.is_empty() && !Path::new(CGROUP_ROOT).join("cgroup.controllers").exists() {
            return Err(JailError::NoCgroupV2);
        }
        Ok(())
    }

    /// The `jailer` command line for this jail.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--id".into(),
            self.id.clone().into(),
            "--exec-file".into(),
            self.exec_file.clone().into(),
            "--uid".into(),
            self.uid.to_string().into(),
            "--gid".into(),
            self.gid.to_string().into(),
            "--chroot-base-dir".into(),
            self.chroot_base.clone().into(),
            "--keep-fds".into(),
            self.keep_fds.to_string().into(),
        ];
        if let Some(fd) = self.report_fd {
            args.push("--report-fd".into());
            args.push(fd.to_string().into());
        }
        for limit in &self.limits {
            args.push("--resource-limit".into());
            args.push(limit.arg().into());
        }
        for setting in &self.cgroup {
            args.push("--cgroup".into());
            args.push(format!("{}={}", setting.file, setting.value).into());
        }
        args.push("--".into());
        args.extend(self.args.iter().cloned());
        args
    }

    /// The jail's own directory, `<chroot base>/<program's file name>/<id>`:
    /// whoever started the jail removes it once the program is gone.
    pub fn jail_dir(&self) -> PathBuf {
        let program = self.exec_file.file_name().unwrap_or_default();
        self.chroot_base.join(program).join(&self.id)
    }

    fn jail_root(&self) -> PathBuf {
        self.jail_dir().join("root")
    }
}

/// No capability can come back: empties this process's bounding set
/// (where it may: that takes CAP_SETPCAP; without it nothing changes).
pub fn empty_bounding_set() {
    for capability in 0..64 {
        // SAFETY: PR_CAPBSET_DROP only shrinks this process's bounding set.
        unsafe { nix::libc::prctl(nix::libc::PR_CAPBSET_DROP, capability, 0, 0, 0) };
    }
}

/// Closes every descriptor from `first` up, but `keep`.
fn close_from(first: i32, keep: Option<i32>) {
    let ranges = match keep {
        Some(keep) if keep >= first => [(first, keep - 1), (keep + 1, i32::MAX)],
        _ => [(first, i32::MAX), (0, -1)],
    };
    for (low, high) in ranges.into_iter().filter(|(low, high)| low <= high) {
        // SAFETY: close_range only closes descriptors; nothing of ours in the
        // range is in use (the caller runs before it opens anything).
        unsafe { nix::libc::syscall(nix::libc::SYS_close_range, low as u32, high as u32, 0u32) };
    }
}

/// Closes the handed-over descriptors 3..3+`count` (and nothing else).
fn close_kept(count: u32) {
    if count > 0 {
        let (low, high) = (FIRST_KEPT_FD as u32, FIRST_KEPT_FD as u32 + count - 1);
        // SAFETY: close_range only closes descriptors; the handed-over ones
        // are the program's, nothing here uses them.
        unsafe { nix::libc::syscall(nix::libc::SYS_close_range, low, high, 0u32) };
    }
}

/// Sends the program's pid and a pidfd of it on the report socket.
fn report_child(
    report: &OwnedFd,
    child: nix::unistd::Pid,
    pidfd: &OwnedFd,
) -> Result<(), JailError> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::os::fd::AsRawFd;
    let bytes = (child.as_raw() as u32).to_le_bytes();
    let fds = [pidfd.as_raw_fd()];
    sendmsg::<()>(
        report.as_raw_fd(),
        &[std::io::IoSlice::new(&bytes)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(step("report the program's pidfd"))?;
    Ok(())
}

/// Makes the jail and execs the program in it. Returns once the program
/// runs (after reporting it), or with the error that kept it from running.
pub fn run(config: &JailConfig) -> Result<(), JailError> {
    config.validate()?;
    // Sanitize first: only the handed-over descriptors, the report socket and stdio stay.
    close_from(FIRST_KEPT_FD + config.keep_fds as i32, config.report_fd);
    let report = match config.report_fd {
        Some(fd) => {
            // SAFETY: the descriptor was handed to us for this use; the program
            // must not inherit it, hence close-on-exec.
            let report = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            nix::fcntl::fcntl(
                &report,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )
            .map_err(step("the report socket"))?;
            Some(report)
        }
        None => None,
    };
    let environment: Vec<OsString> = std::env::vars_os().map(|(key, _)| key).collect();
    for key in environment {
        // SAFETY: single-threaded here; nothing reads the environment concurrently.
        unsafe { std::env::remove_var(key) };
    }

    if !config.cgroup.is_empty() {
        join_cgroup(config)?;
    }
    let root = Uid::effective().is_root();
    let mut namespaces = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWPID;
    if !root {
        namespaces |= CloneFlags::CLONE_NEWUSER;
    }
    let (outer_uid, outer_gid) = (Uid::effective(), Gid::effective());
    unshare(namespaces).map_err(|errno| JailError::Step {
        step: if root {
            "unshare"
        } else {
            "unshare (without root the jail needs unprivileged user namespaces: user.max_user_namespaces > 0, kernel.unprivileged_userns_clone = 1 where it exists)"
        },
        source: std::io::Error::from(errno),
    })?;
    if !root {
        map_ids(config, outer_uid.as_raw(), outer_gid.as_raw())?;
    }
    // Opened now: after pivot_root the program's path no longer exists.
    let program = std::fs::File::open(&config.exec_file).map_err(io_step("open the program"))?;
    let program = OwnedFd::from(program);
    // The child's end closes at its exec: end of file says the program runs;
    // anything else is why it does not.
    let (exec_read, exec_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(step("pipe"))?;

    // SAFETY: the jailer is single-threaded, so the child may do anything.
    match unsafe { fork() }.map_err(step("fork"))? {
        ForkResult::Parent { child } => {
            // The handed-over descriptors are the program's alone: were they
            // left open here, the peers would never see it hang up.
            drop(program);
            drop(exec_write);
            close_kept(config.keep_fds);
            // Before anything could reap the child: the pid is still its.
            let pidfd = pidfd_of(child);
            let mut why = String::new();
            let _ = std::io::Read::read_to_string(&mut std::fs::File::from(exec_read), &mut why);
            if !why.is_empty() {
                let _ = waitpid(child, None);
                return Err(JailError::InJail(why));
            }
            let reported = pidfd.and_then(|pidfd| match report {
                Some(report) => report_child(&report, child, &pidfd),
                None => Ok(()),
            });
            if let Err(error) = reported {
                // Nobody could watch the program: it must not run.
                let _ = kill(child, Signal::SIGKILL);
                let _ = waitpid(child, None);
                return Err(error);
            }
            Ok(())
        }
        ForkResult::Child => {
            drop(exec_read);
            let error = match jail_and_exec(config, &program, root) {
                Err(error) => error,
                Ok(never) => match never {},
            };
            let _ = std::io::Write::write_all(
                &mut std::fs::File::from(exec_write),
                error.to_string().as_bytes(),
            );
            std::process::exit(127);
        }
    }
}

fn pidfd_of(child: nix::unistd::Pid) -> Result<OwnedFd, JailError> {
    let failed = |source| JailError::Step {
        step: "pidfd_open",
        source,
    };
    let pid = rustix::process::Pid::from_raw(child.as_raw())
        .ok_or_else(|| failed(std::io::ErrorKind::InvalidInput.into()))?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
        .map_err(|errno| failed(errno.into()))
}

fn write_file(path: &str, text: &str, what: &'static str) -> Result<(), JailError> {
    std::fs::write(path, text).map_err(io_step(what))
}

/// A user namespace maps our own ids (the only ones we may map) to the jail's.
fn map_ids(config: &JailConfig, outer_uid: u32, outer_gid: u32) -> Result<(), JailError> {
    write_file("/proc/self/setgroups", "deny", "deny setgroups")?;
    write_file(
        "/proc/self/uid_map",
        &format!("{} {outer_uid} 1", config.uid),
        "map the uid",
    )?;
    write_file(
        "/proc/self/gid_map",
        &format!("{} {outer_gid} 1", config.gid),
        "map the gid",
    )
}

fn join_cgroup(config: &JailConfig) -> Result<(), JailError> {
    let program = config
        .exec_file
        .file_name()
        .unwrap_or_default()
        .to_string_lossy();
    let dir = Path::new(CGROUP_ROOT)
        .join("papervisor")
        .join(format!("{program}-{}", config.id));
    std::fs::create_dir_all(&dir).map_err(io_step("create the cgroup"))?;
    for setting in &config.cgroup {
        std::fs::write(dir.join(&setting.file), &setting.value)
            .map_err(io_step("write a cgroup setting"))?;
    }
    std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
        .map_err(io_step("join the cgroup"))
}

fn jail_and_exec(
    config: &JailConfig,
    program: &OwnedFd,
    root: bool,
) -> Result<std::convert::Infallible, JailError> {
    // Mounts made here stay here.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(step("make mounts private"))?;
    let jail_root = config.jail_root();
    std::fs::create_dir_all(&jail_root).map_err(io_step("create the jail root"))?;
    mount(
        Some("tmpfs"),
        &jail_root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("size=64k,mode=0755"),
    )
    .map_err(step("mount the jail root"))?;
    let old_root = jail_root.join("old_root");
    std::fs::create_dir(&old_root).map_err(io_step("create old_root"))?;
    pivot_root(&jail_root, &old_root).map_err(step("pivot_root"))?;
    chdir("/").map_err(step("chdir /"))?;
    umount2("/old_root", MntFlags::MNT_DETACH).map_err(step("detach the old root"))?;
    std::fs::remove_dir("/old_root").map_err(io_step("remove old_root"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(step("make the root read-only"))?;
    nix::unistd::sethostname("papervisor-jail").map_err(step("set the hostname"))?;

    empty_bounding_set();
    if root {
        nix::unistd::setgroups(&[]).map_err(step("drop supplementary groups"))?;
    }
    let gid = Gid::from_raw(config.gid);
    let uid = Uid::from_raw(config.uid);
    nix::unistd::setresgid(gid, gid, gid).map_err(step("setresgid"))?;
    // Leaving uid 0 for good clears the permitted and effective capabilities.
    nix::unistd::setresuid(uid, uid, uid).map_err(step("setresuid"))?;

    // SAFETY: these prctls only clear this process's ambient capabilities and
    // set no_new_privs; they take no pointers.
    unsafe {
        nix::libc::prctl(
            nix::libc::PR_CAP_AMBIENT,
            nix::libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        if nix::libc::prctl(nix::libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(io_step("no_new_privs")(std::io::Error::last_os_error()));
        }
    }

    // After setresuid, so that the process limit counts against the jail's uid
    // without failing this very exec.
    let mut limits = vec![
        (Resource::RLIMIT_NOFILE, DEFAULT_OPEN_FILES),
        (Resource::RLIMIT_CORE, 0),
        (Resource::RLIMIT_NPROC, 0),
    ];
    for limit in &config.limits {
        match *limit {
            Limit::OpenFiles(n) => limits[0].1 = n,
            Limit::AddressSpace(n) => limits.push((Resource::RLIMIT_AS, n)),
            Limit::FileSize(n) => limits.push((Resource::RLIMIT_FSIZE, n)),
            Limit::Tasks(n) => limits[2].1 = n,
        }
    }
    for (resource, value) in limits {
        setrlimit(resource, value, value).map_err(step("set a resource limit"))?;
    }

    let name = config.exec_file.file_name().unwrap_or_default();
    let mut argv: Vec<CString> = vec![CString::new(name.as_bytes()).map_err(|_| {
        io_step("program name")(std::io::Error::from(std::io::ErrorKind::InvalidInput))
    })?];
    for arg in &config.args {
        argv.push(CString::new(arg.as_bytes()).map_err(|_| {
            io_step("program argument")(std::io::Error::from(std::io::ErrorKind::InvalidInput))
        })?);
    }
    let env: [CString; 0] = [];
    let empty = CString::default();
    nix::unistd::execveat(
        program,
        &empty,
        &argv,
        &env,
        nix::fcntl::AtFlags::AT_EMPTY_PATH,
    )
    .map_err(step("exec the program"))?;
    unreachable!("execveat returns only on failure")
}

/// The signal name for reports ("SIGSYS" for a seccomp kill).
pub fn signal_name(number: i32) -> String {
    Signal::try_from(number)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {number}"))
}

/// `program`, resolved, if nobody but root and `owner` (the user the VM
/// runs as) can change it: neither the file nor any directory on its way
/// may be owned by another user, or be writable by group or others (a
/// root-owned directory with the sticky bit, such as /tmp, lets nobody
/// else replace what is ours). A device process runs with guest RAM
/// mapped: whoever can replace its binary runs code there.
pub fn trusted_program(program: &std::path::Path, owner: u32) -> Result<PathBuf, String> {
    use std::os::unix::fs::MetadataExt;
    let resolved = std::fs::canonicalize(program)
        .map_err(|error| format!("{}: {error}", program.display()))?;
    for path in resolved.ancestors() {
        let metadata =
            std::fs::metadata(path).map_err(|error| format!("{}: {error}", path.display()))?;
        let mode = metadata.mode();
        let sticky_root_dir = metadata.is_dir() && mode & 0o1000 != 0 && metadata.uid() == 0;
        let why = if metadata.uid() != 0 && metadata.uid() != owner {
            format!("is owned by uid {}", metadata.uid())
        } else if mode & 0o022 != 0 && !sticky_root_dir {
            format!(
                "is writable by {}",
                if mode & 0o002 != 0 {
                    "anyone"
                } else {
                    "its group"
                }
            )
        } else {
            continue;
        };
        return Err(format!(
            "{} {why}: only root and uid {owner} may control a device process's binary and the directories above it",
            path.display()
        ));
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> JailConfig {
        JailConfig {
            id: "vm1-rtas".into(),
            exec_file: "/bin/true".into(),
            uid: DEFAULT_ID,
            gid: DEFAULT_ID,
            chroot_base: DEFAULT_CHROOT_BASE.into(),
            limits: vec![Limit::OpenFiles(32)],
            cgroup: vec![],
            keep_fds: 2,
            report_fd: Some(5),
            args: vec!["--seccomp".into(), "kill".into()],
        }
    }

    #[test]
    fn a_good_config_validates_and_round_trips_to_arguments() {
        let c = config();
        c.validate().unwrap();
        let args: Vec<String> = c
            .to_args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--id",
                "vm1-rtas",
                "--exec-file",
                "/bin/true",
                "--uid",
                "65534",
                "--gid",
                "65534",
                "--chroot-base-dir",
                "/srv/jailer",
                "--keep-fds",
                "2",
                "--report-fd",
                "5",
                "--resource-limit",
                "no-file=32",
                "--",
                "--seccomp",
                "kill"
            ]
        );
        assert_eq!(c.jail_root(), Path::new("/srv/jailer/true/vm1-rtas/root"));
    }

    #[test]
    fn bad_values_are_refused_with_what_is_wrong() {
        let plain = std::env::temp_dir().join(format!("jailer-test-{}", std::process::id()));
        std::fs::write(&plain, "not a program").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        let cases: Vec<(JailConfig, &str)> = vec![
            (
                JailConfig {
                    id: "".into(),
                    ..config()
                },
                "invalid --id",
            ),
            (
                JailConfig {
                    id: "a/b".into(),
                    ..config()
                },
                "invalid --id",
            ),
            (
                JailConfig {
                    id: "x".repeat(65),
                    ..config()
                },
                "invalid --id",
            ),
            (
                JailConfig {
                    exec_file: "/no/such/file".into(),
                    ..config()
                },
                "--exec-file /no/such/file",
            ),
            (
                JailConfig {
                    exec_file: "/etc".into(),
                    ..config()
                },
                "not a regular file",
            ),
            (
                JailConfig {
                    exec_file: plain.clone(),
                    ..config()
                },
                "not executable",
            ),
            (JailConfig { uid: 0, ..config() }, "invalid --uid 0"),
            (
                JailConfig {
                    report_fd: Some(4),
                    ..config()
                },
                "--report-fd 4",
            ),
            (
                JailConfig {
                    gid: u32::MAX,
                    ..config()
                },
                "invalid --gid",
            ),
            (
                JailConfig {
                    chroot_base: "relative".into(),
                    ..config()
                },
                "absolute",
            ),
        ];
        for (c, expected) in cases {
            let error = match c.validate() {
                Err(error) => error.to_string(),
                Ok(()) => panic!("accepted: {c:?}"),
            };
            assert!(error.contains(expected), "{error}");
        }
        std::fs::remove_file(plain).unwrap();
    }

    #[test]
    fn limits_and_cgroup_settings_parse_strictly() {
        assert_eq!(Limit::parse("no-file=16").unwrap(), Limit::OpenFiles(16));
        assert_eq!(
            Limit::parse("as=1073741824").unwrap(),
            Limit::AddressSpace(1 << 30)
        );
        for bad in ["nofile=1", "as=-1", "as", "as=1G"] {
            assert!(Limit::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(CgroupSetting::parse("pids.max=1").unwrap().file, "pids.max");
        for bad in ["../x=1", "pids.max", "a/b=1", ".hidden=1", "x=1\n2"] {
            assert!(CgroupSetting::parse(bad).is_err(), "{bad}");
        }
    }

    fn set_mode(path: &std::path::Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_binary_others_could_replace_is_not_trusted() {
        let me = nix::unistd::geteuid().as_raw();
        let dir = std::env::temp_dir().join(format!("pv-trust-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        set_mode(&dir, 0o755);
        let program = dir.join("papervisor-rtas");
        std::fs::write(&program, b"#!/bin/true\n").unwrap();
        set_mode(&program, 0o755);
        assert_eq!(trusted_program(&program, me), Ok(program.clone()));
        // Through a symbolic link: the file it names is checked.
        let link = dir.join("link");
        std::os::unix::fs::symlink(&program, &link).unwrap();
        assert_eq!(trusted_program(&link, me), Ok(program.clone()));
        for (mode, why) in [
            (0o757, "writable by anyone"),
            (0o775, "writable by its group"),
        ] {
            set_mode(&program, mode);
            let error = trusted_program(&program, me).unwrap_err();
            assert!(error.contains(why), "{error}");
        }
        set_mode(&program, 0o755);
        // A directory on the way that others may write to.
        set_mode(&dir, 0o777);
        let error = trusted_program(&program, me).unwrap_err();
        assert!(
            error.contains(&format!("{} is writable by anyone", dir.display())),
            "{error}"
        );
        set_mode(&dir, 0o755);
        if me == 0 {
            // Owned by another user.
            std::os::unix::fs::chown(&program, Some(4242), None).unwrap();
            let error = trusted_program(&program, me).unwrap_err();
            assert!(error.contains("owned by uid 4242"), "{error}");
            // A root-owned directory with the sticky bit (as /tmp) is fine.
            std::os::unix::fs::chown(&program, Some(0), None).unwrap();
            set_mode(&dir, 0o1777);
            assert!(trusted_program(&program, me).is_ok());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
