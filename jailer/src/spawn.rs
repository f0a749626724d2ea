//! Starting a program with descriptors in place, without copying the
//! starter's address space.

/// Starts `program` with `args` the way a device process receives its
/// channels: `fds` as descriptors from `first` on, in order,
/// and no others besides stdio (every other is closed in the child, even
/// one the starter inherited without close-on-exec), stdin
/// from /dev/null, stderr to `stderr` (inherited when `None`), every signal
/// at its default disposition and none blocked (the starter's are its own).
/// Through posix_spawn, which the C library does with the kernel's vfork:
/// the starter's address space is not copied, where a fork of the core, with
/// guest RAM mapped, costs milliseconds. Returns the child's pid; the
/// caller reaps it.
pub fn spawn_with_descriptors(
    program: &std::path::Path,
    args: &[impl AsRef<std::ffi::OsStr>],
    fds: &[std::os::fd::RawFd],
    first: std::os::fd::RawFd,
    stderr: Option<std::os::fd::RawFd>,
) -> std::io::Result<u32> {
    use nix::spawn::{posix_spawn, PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags};
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c_string = |bytes: &[u8]| {
        CString::new(bytes).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
    };
    let path = c_string(program.as_os_str().as_bytes())?;
    let argv = std::iter::once(Ok(path.clone()))
        .chain(args.iter().map(|arg| c_string(arg.as_ref().as_bytes())))
        .collect::<std::io::Result<Vec<CString>>>()?;
    let environment = std::env::vars_os()
        .map(|(key, value)| c_string(&[key.as_bytes(), b"=", value.as_bytes()].concat()))
        .collect::<std::io::Result<Vec<CString>>>()?;
    let mut actions = PosixSpawnFileActions::init()?;
    actions.add_open(
        0,
        c"/dev/null",
        nix::fcntl::OFlag::O_RDONLY,
        nix::sys::stat::Mode::empty(),
    )?;
    if let Some(stderr) = stderr {
        actions.add_dup2(stderr, 2)?;
    }
    // Each descriptor is first copied above all of them, so that placing
    // them at `first`.. cannot overwrite one not yet placed.
    let scratch = fds.iter().copied().max().unwrap_or(0).max(first) + 1;
    // The child could not place them (EBADF): say what it is, a starter
    // short of descriptors.
    let (soft_limit, _) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
    if (scratch as u64).saturating_add(fds.len() as u64) > soft_limit {
        return Err(std::io::Error::from_raw_os_error(nix::libc::EMFILE));
    }
    for (i, &fd) in fds.iter().enumerate() {
        actions.add_dup2(fd, scratch + i as i32)?;
    }
    for i in 0..fds.len() as i32 {
        // dup2 leaves the new descriptor without close-on-exec.
        actions.add_dup2(scratch + i, first + i)?;
        actions.add_close(scratch + i)?;
    }
    // Nothing else crosses, not even what whoever started the starter
    // left open: a descriptor of the spawner's link in what it starts
    // would let that process speak for the spawner.
    // SAFETY: `PosixSpawnFileActions` is `repr(transparent)` over the C
    // library's `posix_spawn_file_actions_t`, initialised by `init` above
    // and alive for the call; the call only appends an action to it.
    let added = unsafe {
        nix::libc::posix_spawn_file_actions_addclosefrom_np(
            std::ptr::from_mut(&mut actions).cast::<nix::libc::posix_spawn_file_actions_t>(),
            first + fds.len() as i32,
        )
    };
    if added != 0 {
        return Err(std::io::Error::from_raw_os_error(added));
    }
    let mut attributes = PosixSpawnAttr::init()?;
    attributes.set_sigmask(&nix::sys::signal::SigSet::empty())?;
    attributes.set_sigdefault(&nix::sys::signal::SigSet::all())?;
    attributes.set_flags(
        PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF,
    )?;
    let pid = posix_spawn(path.as_c_str(), &actions, &attributes, &argv, &environment)?;
    Ok(pid.as_raw() as u32)
}
