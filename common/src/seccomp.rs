//! What the device processes' filters and the core's per-thread filters
//! share: the `--seccomp` mode, the argument conditions they are written
//! with, and compiling and installing a filter. The filters themselves are
//! data beside the code they confine (`device-procs/src/seccomp.rs`,
//! `vmm/src/seccomp.rs`).

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;
use thiserror::Error;

/// System call number → the rules of which one must match (none: always
/// allowed).
pub type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// Why a filter cannot be built or installed.
#[derive(Debug, Error)]
pub enum SeccompError {
    /// The rules do not make a filter.
    #[error("the filter does not compile")]
    Compile(#[from] seccompiler::BackendError),
    /// The kernel refused it.
    #[error("the filter cannot be installed")]
    Install(#[from] seccompiler::Error),
}

/// What a call outside the filter does (`--seccomp`).
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

/// What every confined process does whatever its job: its allocator,
/// locks and clock, signal returns and masks, closing descriptors, ending.
pub const PROCESS_BASICS: &[i64] = &[
    nix::libc::SYS_close,
    nix::libc::SYS_brk,
    nix::libc::SYS_munmap,
    nix::libc::SYS_mremap,
    nix::libc::SYS_madvise,
    nix::libc::SYS_futex,
    nix::libc::SYS_clock_gettime,
    nix::libc::SYS_rt_sigreturn,
    // A stopped process (SIGSTOP, a cgroup freeze, a debugger) resumes its
    // interrupted poll or wait through this.
    nix::libc::SYS_restart_syscall,
    nix::libc::SYS_rt_sigprocmask,
    nix::libc::SYS_sigaltstack,
    nix::libc::SYS_exit,
    nix::libc::SYS_exit_group,
];

/// Argument `arg` (a 64-bit value) equals `value`.
pub fn arg_equals(arg: u8, value: u64) -> SeccompRule {
    rule(vec![condition(
        arg,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::Eq,
        value,
    )])
}

/// Argument `arg` (32 bits) equals `value`: descriptors, commands.
pub fn arg_equals_32(arg: u8, value: u64) -> SeccompRule {
    rule(vec![condition(
        arg,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        value,
    )])
}

/// The `prot` argument (2) of mmap and mprotect has no PROT_EXEC.
pub fn not_executable() -> SeccompCondition {
    condition(
        2,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(nix::libc::PROT_EXEC as u64),
        0,
    )
}

/// One condition on an argument.
pub fn condition(arg: u8, len: SeccompCmpArgLen, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    SeccompCondition::new(arg, len, op, value).expect("a well-formed condition")
}

/// Conditions that must all hold.
pub fn rule(conditions: Vec<SeccompCondition>) -> SeccompRule {
    SeccompRule::new(conditions).expect("a well-formed rule")
}

/// The compiled filter, or `None` in [`Mode::Off`].
pub fn compile(rules: Rules, mode: Mode) -> Result<Option<BpfProgram>, SeccompError> {
    let mismatch = match mode {
        Mode::Kill => SeccompAction::KillProcess,
        Mode::Log => SeccompAction::Log,
        Mode::Off => return Ok(None),
    };
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)?;
    Ok(Some(filter.try_into()?))
}

/// A filter that makes `calls` fail with `ENOSYS` and allows the rest: put
/// before a process's own filter (the stricter answer wins), it turns a call
/// that cannot be checked into one the C library falls back from, such as
/// `clone3` (its flags are out of the filter's reach) into `clone`.
pub fn unimplemented(calls: &[i64]) -> Result<BpfProgram, SeccompError> {
    let rules = calls.iter().map(|&call| (call, vec![])).collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(nix::libc::ENOSYS as u32),
        TargetArch::x86_64,
    )?;
    Ok(filter.try_into()?)
}

/// Installs `program` on the calling thread (it also sets no_new_privs).
pub fn install(program: Option<&BpfProgram>) -> Result<(), SeccompError> {
    match program {
        Some(program) => Ok(seccompiler::apply_filter(program)?),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse() {
        assert_eq!(Mode::parse("kill"), Some(Mode::Kill));
        assert_eq!(Mode::parse("log"), Some(Mode::Log));
        assert_eq!(Mode::parse("off"), Some(Mode::Off));
        assert_eq!(Mode::parse("KILL"), None);
    }

    #[test]
    fn off_compiles_to_nothing() {
        assert!(compile(Rules::new(), Mode::Off).unwrap().is_none());
        assert!(compile(Rules::new(), Mode::Kill).unwrap().is_some());
    }
}
