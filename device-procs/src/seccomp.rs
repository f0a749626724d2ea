//! One seccomp filter per device-process kind: the system calls each needs,
//! written as reviewable data, with argument checks where they are cheap.
//! A process installs its filter itself, after taking its channels and before
//! it reads its first message. Anything else kills the process (or, for
//! debugging, is logged or allowed).

use ipc_proto::ProcessKind;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// What a call outside the filter does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The process is killed (SIGSYS). The default.
    Kill,
    /// The call is logged by the kernel and allowed.
    Log,
    /// No filter.
    Off,
}

impl Mode {
    /// Parses `kill`, `log`, `off`.
    pub fn parse(text: &str) -> Option<Mode> {
        match text {
            "kill" => Some(Mode::Kill),
            "log" => Some(Mode::Log),
            "off" => Some(Mode::Off),
            _ => None,
        }
    }
}

/// Every device process: its channels, its allocator, its log (stderr).
const COMMON: &[i64] = &[
    nix::libc::SYS_read,
    nix::libc::SYS_write,
    nix::libc::SYS_sendmsg,
    nix::libc::SYS_recvmsg,
    nix::libc::SYS_poll,
    nix::libc::SYS_ppoll,
    nix::libc::SYS_close,
    nix::libc::SYS_brk,
    nix::libc::SYS_munmap,
    nix::libc::SYS_mremap,
    nix::libc::SYS_madvise,
    nix::libc::SYS_futex,
    nix::libc::SYS_getrandom,
    nix::libc::SYS_clock_gettime,
    nix::libc::SYS_sched_yield,
    nix::libc::SYS_rt_sigreturn,
    nix::libc::SYS_rt_sigprocmask,
    nix::libc::SYS_sigaltstack,
    nix::libc::SYS_exit,
    nix::libc::SYS_exit_group,
];

/// The RTAS server maps guest RAM from the memfds the core sends, and checks
/// their size first.
const RTAS_SERVER: &[i64] = &[
    nix::libc::SYS_fstat,
    nix::libc::SYS_newfstatat,
    nix::libc::SYS_statx,
];

fn condition(arg: u8, len: SeccompCmpArgLen, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    SeccompCondition::new(arg, len, op, value).expect("a well-formed condition")
}

fn rule(conditions: Vec<SeccompCondition>) -> SeccompRule {
    SeccompRule::new(conditions).expect("a well-formed rule")
}

/// The allowed calls of `kind`: number → rules (empty: always allowed).
pub fn rules(kind: ProcessKind) -> BTreeMap<i64, Vec<SeccompRule>> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = COMMON.iter().map(|&n| (n, vec![])).collect();
    let no_exec = || {
        condition(
            2,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(nix::libc::PROT_EXEC as u64),
            0,
        )
    };
    // Never executable memory.
    rules.insert(nix::libc::SYS_mprotect, vec![rule(vec![no_exec()])]);
    // Only F_GETFD: std checks a descriptor is open before closing it (with
    // debug assertions); nothing else of fcntl is needed.
    let getfd = condition(
        1,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        nix::libc::F_GETFD as u64,
    );
    rules.insert(nix::libc::SYS_fcntl, vec![rule(vec![getfd])]);
    match kind {
        ProcessKind::RtasServer => {
            // Shared mappings of guest RAM, never executable.
            rules.insert(nix::libc::SYS_mmap, vec![rule(vec![no_exec()])]);
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
            rules.insert(nix::libc::SYS_mmap, vec![rule(vec![no_exec(), anonymous])]);
        }
    }
    rules
}

/// The compiled filter of `kind`, or `None` in [`Mode::Off`].
pub fn program(kind: ProcessKind, mode: Mode) -> Result<Option<BpfProgram>, String> {
    let mismatch = match mode {
        Mode::Kill => SeccompAction::KillProcess,
        Mode::Log => SeccompAction::Log,
        Mode::Off => return Ok(None),
    };
    let filter = SeccompFilter::new(
        rules(kind),
        mismatch,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|error| format!("seccomp filter: {error}"))?;
    let program: BpfProgram = filter
        .try_into()
        .map_err(|error: seccompiler::BackendError| format!("seccomp filter: {error}"))?;
    Ok(Some(program))
}

/// Installs the filter of `kind` on this process (it also sets no_new_privs).
pub fn install(kind: ProcessKind, mode: Mode) -> Result<(), String> {
    match program(kind, mode)? {
        Some(program) => {
            seccompiler::apply_filter(&program).map_err(|error| format!("seccomp: {error}"))
        }
        None => Ok(()),
    }
}

/// Commits `fault`; returns what happened if the process is still alive.
pub fn commit(fault: ipc_proto::Fault) -> String {
    use ipc_proto::Fault;
    log::warn!("committing {fault:?} as asked");
    match fault {
        Fault::OpenHostFile => match std::fs::File::open("/etc/passwd") {
            Ok(_) => "opened /etc/passwd".into(),
            Err(error) => format!("open failed: {}", error.kind()),
        },
        Fault::OpenSocket => {
            // SAFETY: socket(2) has no memory preconditions; the descriptor is closed.
            let fd = unsafe { nix::libc::socket(nix::libc::AF_INET, nix::libc::SOCK_STREAM, 0) };
            if fd >= 0 {
                // SAFETY: fd was just returned by socket and is ours.
                unsafe { nix::libc::close(fd) };
                "opened a socket".into()
            } else {
                format!("socket failed: errno {}", nix::errno::Errno::last_raw())
            }
        }
        Fault::Fork => {
            // SAFETY: the child exits at once without touching anything.
            let pid = unsafe { nix::libc::fork() };
            match pid {
                0 => {
                    // SAFETY: _exit is always safe in a forked child.
                    unsafe { nix::libc::_exit(0) }
                }
                p if p > 0 => "forked".into(),
                _ => format!("fork failed: errno {}", nix::errno::Errno::last_raw()),
            }
        }
        Fault::Exec => {
            let path = c"/bin/sh";
            let argv = [path.as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null()];
            // SAFETY: NUL-terminated path and argument/environment arrays.
            unsafe { nix::libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
            format!("exec failed: errno {}", nix::errno::Errno::last_raw())
        }
        Fault::Garbage => "garbage is sent by the process loop".into(),
        Fault::Hang => loop {
            // Never answers again; poll with no descriptors is allowed.
            let _ = nix::poll::poll(&mut [], nix::poll::PollTimeout::NONE);
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_compiles_and_allows_only_its_own_extras() {
        for kind in ProcessKind::ALL {
            assert!(program(kind, Mode::Kill).unwrap().is_some());
            assert!(program(kind, Mode::Off).unwrap().is_none());
            let allowed = rules(kind);
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
        assert!(rules(ProcessKind::RtasServer).contains_key(&nix::libc::SYS_statx));
        assert!(!rules(ProcessKind::EventLog).contains_key(&nix::libc::SYS_statx));
    }

    #[test]
    fn modes_parse() {
        assert_eq!(Mode::parse("kill"), Some(Mode::Kill));
        assert_eq!(Mode::parse("log"), Some(Mode::Log));
        assert_eq!(Mode::parse("off"), Some(Mode::Off));
        assert_eq!(Mode::parse("KILL"), None);
    }
}
