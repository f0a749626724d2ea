//! One seccomp filter per device-process kind: the system calls each needs,
//! written as reviewable data, with argument checks where they are cheap.
//! A process installs its filter itself, after taking its channels and before
//! it reads its first message. Anything else kills the process (or, for
//! debugging, is logged or allowed).

use common::seccomp::{arg_equals_32, compile, condition, not_executable, rule, Rules};
pub use common::seccomp::{Mode, SeccompError};
use ipc_proto::ProcessKind;
use seccompiler::{BpfProgram, SeccompCmpArgLen, SeccompCmpOp};
use std::os::fd::RawFd;

/// Every device process, besides [`common::seccomp::PROCESS_BASICS`]: its
/// channels, its randomness, its polling. `write` is allowed on the log
/// descriptor only (see [`rules`]).
const COMMON: &[i64] = &[
    nix::libc::SYS_read,
    nix::libc::SYS_sendmsg,
    nix::libc::SYS_recvmsg,
    nix::libc::SYS_poll,
    nix::libc::SYS_ppoll,
    nix::libc::SYS_getrandom,
    nix::libc::SYS_sched_yield,
];

/// The RTAS server maps guest RAM from the memfds the core sends, and checks
/// their size first.
const RTAS_SERVER: &[i64] = &[
    nix::libc::SYS_fstat,
    nix::libc::SYS_newfstatat,
    nix::libc::SYS_statx,
];

/// The allowed calls of `kind`: number → rules (empty: always allowed).
/// `write` is allowed to the log (stderr, or the file the log goes to) and
/// to `writable`, the descriptors the device itself writes (the event log's
/// interrupts): everything else goes over the links (sendmsg).
pub fn rules(kind: ProcessKind, writable: &[RawFd]) -> Rules {
    let mut rules: Rules = common::seccomp::PROCESS_BASICS
        .iter()
        .chain(COMMON)
        .map(|&n| (n, vec![]))
        .collect();
    // Never executable memory.
    rules.insert(nix::libc::SYS_mprotect, vec![rule(vec![not_executable()])]);
    // Only F_GETFD: std checks a descriptor is open before closing it (with
    // debug assertions); nothing else of fcntl is needed.
    rules.insert(
        nix::libc::SYS_fcntl,
        vec![arg_equals_32(1, nix::libc::F_GETFD as u64)],
    );
    let mut fds = vec![STDERR, common::log_fd()];
    fds.extend_from_slice(writable);
    fds.sort_unstable();
    fds.dedup();
    let writes = fds
        .into_iter()
        .map(|fd| arg_equals_32(0, fd as u64))
        .collect();
    rules.insert(nix::libc::SYS_write, writes);
    match kind {
        ProcessKind::RtasServer => {
            // Shared mappings of guest RAM, never executable.
            rules.insert(nix::libc::SYS_mmap, vec![rule(vec![not_executable()])]);
            rules.extend(RTAS_SERVER.iter().map(|&n| (n, vec![])));
        }
        ProcessKind::HotplugController | ProcessKind::EventLog => {
            // Anonymous memory only: these processes map nothing of the guest.
            let anonymous = condition(
                3,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(nix::libc::MAP_ANONYMOUS as u64),
                nix::libc::MAP_ANONYMOUS as u64,
            );
            rules.insert(
                nix::libc::SYS_mmap,
                vec![rule(vec![not_executable(), anonymous])],
            );
        }
    }
    rules
}

/// The block device, besides [`common::seccomp::PROCESS_BASICS`]: the
/// vhost-user socket (one accept, then messages with descriptors), the
/// image (positioned reads and writes, sync, hole punching), the guest
/// memory the frontend's table maps, and the threads and epoll of
/// `vhost-user-backend`. No open, no socket, no exec.
const BLOCK: &[i64] = &[
    nix::libc::SYS_read,
    nix::libc::SYS_accept,
    nix::libc::SYS_accept4,
    nix::libc::SYS_sendmsg,
    nix::libc::SYS_recvmsg,
    nix::libc::SYS_shutdown,
    nix::libc::SYS_pread64,
    nix::libc::SYS_pwrite64,
    nix::libc::SYS_fdatasync,
    nix::libc::SYS_fsync,
    nix::libc::SYS_fallocate,
    // The inflight-tracking region: anonymous memory, sized.
    nix::libc::SYS_memfd_create,
    nix::libc::SYS_ftruncate,
    nix::libc::SYS_fstat,
    nix::libc::SYS_newfstatat,
    nix::libc::SYS_statx,
    nix::libc::SYS_epoll_create1,
    nix::libc::SYS_epoll_ctl,
    nix::libc::SYS_epoll_wait,
    nix::libc::SYS_epoll_pwait,
    nix::libc::SYS_eventfd2,
    nix::libc::SYS_getrandom,
    nix::libc::SYS_sched_yield,
    nix::libc::SYS_sched_getaffinity,
    nix::libc::SYS_set_robust_list,
    nix::libc::SYS_rseq,
    nix::libc::SYS_gettid,
    // clone3 is let through here and made to fail with ENOSYS by the filter
    // installed before this one (see [`install_block`]), so that threads
    // are made with clone, whose flags this filter checks.
    nix::libc::SYS_clone3,
];

/// The block device's allowed calls: number → rules.
pub fn block_rules() -> Rules {
    let mut rules: Rules = common::seccomp::PROCESS_BASICS
        .iter()
        .chain(BLOCK)
        .map(|&n| (n, vec![]))
        .collect();
    rules.insert(nix::libc::SYS_mprotect, vec![rule(vec![not_executable()])]);
    rules.insert(nix::libc::SYS_mmap, vec![rule(vec![not_executable()])]);
    // F_GETFD as every process; F_DUPFD_CLOEXEC: the library keeps copies
    // of the eventfds it is handed.
    rules.insert(
        nix::libc::SYS_fcntl,
        vec![
            arg_equals_32(1, nix::libc::F_GETFD as u64),
            arg_equals_32(1, nix::libc::F_DUPFD_CLOEXEC as u64),
        ],
    );
    // Threads of this process only, never a new process.
    let thread = condition(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(nix::libc::CLONE_THREAD as u64),
        nix::libc::CLONE_THREAD as u64,
    );
    rules.insert(nix::libc::SYS_clone, vec![rule(vec![thread])]);
    // The C library's handler of its own signal (SIGSETXID, 33), set at
    // the first thread it makes.
    rules.insert(nix::libc::SYS_rt_sigaction, vec![arg_equals_32(0, 33)]);
    // Thread names (PR_SET_NAME) only.
    rules.insert(
        nix::libc::SYS_prctl,
        vec![arg_equals_32(0, nix::libc::PR_SET_NAME as u64)],
    );
    // write(2): the log, and the eventfds (exit events, the guest's
    // interrupts) whose numbers the library chooses; any descriptor, since
    // the process cannot open one it was not given.
    rules.insert(nix::libc::SYS_write, vec![]);
    rules
}

/// Installs the block device's filter on the calling thread, before it
/// makes any other: clone3 fails with ENOSYS first (see [`BLOCK`]).
pub fn install_block(mode: Mode) -> Result<(), SeccompError> {
    if mode == Mode::Off {
        return Ok(());
    }
    common::seccomp::install(Some(&common::seccomp::unimplemented(&[
        nix::libc::SYS_clone3,
    ])?))?;
    common::seccomp::install(compile(block_rules(), mode)?.as_ref())
}

/// Where a panic message goes, whatever the log is.
const STDERR: RawFd = 2;

/// The compiled filter of `kind`, or `None` in [`Mode::Off`].
pub fn program(
    kind: ProcessKind,
    writable: &[RawFd],
    mode: Mode,
) -> Result<Option<BpfProgram>, SeccompError> {
    compile(rules(kind, writable), mode)
}

/// Installs the filter of `kind` on the calling thread, the only one of a
/// device process (it also sets no_new_privs).
pub fn install(kind: ProcessKind, writable: &[RawFd], mode: Mode) -> Result<(), SeccompError> {
    common::seccomp::install(program(kind, writable, mode)?.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_compiles_and_allows_only_its_own_extras() {
        for kind in ProcessKind::ALL {
            assert!(program(kind, &[], Mode::Kill).unwrap().is_some());
            assert!(program(kind, &[], Mode::Off).unwrap().is_none());
            let allowed = rules(kind, &[]);
            for forbidden in [
                nix::libc::SYS_openat,
                nix::libc::SYS_socket,
                nix::libc::SYS_clone,
                nix::libc::SYS_clone3,
                nix::libc::SYS_fork,
                nix::libc::SYS_execve,
                nix::libc::SYS_execveat,
                nix::libc::SYS_ioctl,
            ] {
                assert!(
                    !allowed.contains_key(&forbidden),
                    "{kind:?} allows {forbidden}"
                );
            }
        }
        assert!(rules(ProcessKind::RtasServer, &[]).contains_key(&nix::libc::SYS_statx));
        // write(2): the log (stderr here), plus what the device names.
        assert_eq!(
            rules(ProcessKind::RtasServer, &[])[&nix::libc::SYS_write].len(),
            1
        );
        assert_eq!(
            rules(ProcessKind::EventLog, &[7, 8, 2])[&nix::libc::SYS_write].len(),
            3
        );
        assert!(!rules(ProcessKind::EventLog, &[]).contains_key(&nix::libc::SYS_statx));
    }

    #[test]
    fn the_block_filter_opens_nothing_and_makes_threads_only() {
        assert!(compile(block_rules(), Mode::Kill).unwrap().is_some());
        let allowed = block_rules();
        for forbidden in [
            nix::libc::SYS_open,
            nix::libc::SYS_openat,
            nix::libc::SYS_openat2,
            nix::libc::SYS_socket,
            nix::libc::SYS_socketpair,
            nix::libc::SYS_connect,
            nix::libc::SYS_bind,
            nix::libc::SYS_fork,
            nix::libc::SYS_vfork,
            nix::libc::SYS_execve,
            nix::libc::SYS_execveat,
            nix::libc::SYS_ioctl,
            nix::libc::SYS_ptrace,
        ] {
            assert!(
                !allowed.contains_key(&forbidden),
                "block allows {forbidden}"
            );
        }
        // clone is checked (CLONE_THREAD); clone3 is let through to the
        // ENOSYS filter installed before.
        assert_eq!(allowed[&nix::libc::SYS_clone].len(), 1);
        assert!(allowed[&nix::libc::SYS_clone3].is_empty());
        assert!(common::seccomp::unimplemented(&[nix::libc::SYS_clone3]).is_ok());
    }
}
