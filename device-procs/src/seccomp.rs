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
}
