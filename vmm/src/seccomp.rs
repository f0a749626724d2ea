//! One seccomp filter per kind of thread of the core, written as reviewable
//! data, installed by each thread itself when it starts (the main thread
//! once the VM is set up). A thread inherits the filter of the thread that
//! started it, so the control loop's filter also covers what the threads it
//! starts later need (vCPUs of a hot-plugged core, process watchers). No
//! thread holds a capability: what starting jails needs is the spawner
//! process's (`jailer::spawner`).
//! `--seccomp kill|log|off` sets what a call outside a filter does.

use common::seccomp::{arg_equals_32, compile, not_executable, rule, Mode, Rules, SeccompError};
use kvm_bindings::{kvm_cpuid2, kvm_irq_routing, kvm_irqfd, kvm_mp_state, kvm_regs, kvm_sregs};
use seccompiler::BpfProgram;
use std::sync::OnceLock;

static MODE: OnceLock<Mode> = OnceLock::new();

/// Sets the mode for every thread (once, from the command line).
pub fn set_mode(mode: &str) {
    let _ = MODE.set(Mode::parse(mode).unwrap_or(Mode::Kill));
}

/// The kinds of thread of the core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// Runs one vCPU: KVM_RUN, hypercalls, the RTAS proxy.
    Vcpu,
    /// The control loop: QMP commands, hotplug, reset, supervision.
    Control,
    /// Accepts QMP clients and serves each.
    Qmp,
    /// The console: stdin/stdout or a socket client.
    Console,
    /// Reads the hotplug controller's notifications.
    Notifications,
    /// Waits for a device process to end.
    Watcher,
    /// Takes SIGTERM, SIGINT and SIGHUP.
    Signals,
    /// Drains the log pipe into the log.
    Log,
    /// Starts the device threads (`--device-mode in-process`).
    DeviceStarter,
}

const KVMIO: u64 = 0xAE;

/// An ioctl request number as linux/ioctl.h makes it on x86_64: direction
/// (bit 30 write, bit 31 read), argument size, type, number.
const fn kvm_request(write: bool, read: bool, nr: u64, size: usize) -> u64 {
    ((read as u64) << 31) | ((write as u64) << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}

/// The KVM requests each kind may make (arguments filtered by number).
fn kvm_requests(kind: ThreadKind) -> Vec<u64> {
    use std::mem::size_of;
    let run = kvm_request(false, false, 0x80, 0);
    let get_regs = kvm_request(false, true, 0x81, size_of::<kvm_regs>());
    let set_regs = kvm_request(true, false, 0x82, size_of::<kvm_regs>());
    let get_sregs = kvm_request(false, true, 0x83, size_of::<kvm_sregs>());
    let set_sregs = kvm_request(true, false, 0x84, size_of::<kvm_sregs>());
    let set_mp_state = kvm_request(true, false, 0x99, size_of::<kvm_mp_state>());
    let set_gsi_routing = kvm_request(true, false, 0x6a, size_of::<kvm_irq_routing>());
    let irqfd = kvm_request(true, false, 0x76, size_of::<kvm_irqfd>());
    let ioeventfd = kvm_request(true, false, 0x79, size_of::<kvm_bindings::kvm_ioeventfd>());
    let create_vcpu = kvm_request(false, false, 0x41, 0);
    let vcpu_mmap_size = kvm_request(false, false, 0x04, 0);
    let check_extension = kvm_request(false, false, 0x03, 0);
    let get_supported_cpuid = kvm_request(true, true, 0x05, size_of::<kvm_cpuid2>());
    let set_cpuid2 = kvm_request(true, false, 0x90, size_of::<kvm_cpuid2>());
    let set_user_memory_region = kvm_request(
        true,
        false,
        0x46,
        size_of::<kvm_bindings::kvm_userspace_memory_region>(),
    );
    // A vCPU runs, reads and writes its registers, becomes runnable when
    // started, and routes an interrupt for ibm,set-xive.
    let vcpu = vec![
        run,
        set_mp_state,
        get_regs,
        set_regs,
        get_sregs,
        set_sregs,
        set_gsi_routing,
    ];
    match kind {
        ThreadKind::Vcpu => vcpu,
        // The control loop creates the vCPUs of a hot-plugged core (whose
        // threads start under its filter) and resets interrupt routing.
        ThreadKind::Control => {
            let mut control = vcpu;
            control.extend([
                create_vcpu,
                vcpu_mmap_size,
                check_extension,
                get_supported_cpuid,
                set_cpuid2,
                irqfd,
                // A DIMM's memory shown to the guest, and taken back.
                set_user_memory_region,
                // A disk's queue notifications, straight to its backend.
                ioeventfd,
            ]);
            control
        }
        _ => vec![],
    }
}

/// What every thread of the core does besides the basics of every
/// confined process (`common::seccomp::PROCESS_BASICS`): randomness for
/// hash maps, sleeps and yields, writing its log, naming itself.
const EVERY_THREAD: &[i64] = &[
    nix::libc::SYS_getrandom,
    nix::libc::SYS_clock_nanosleep,
    nix::libc::SYS_nanosleep,
    nix::libc::SYS_sched_yield,
    nix::libc::SYS_write,
    nix::libc::SYS_gettid,
    nix::libc::SYS_getpid,
];

/// Starting a thread (std's spawn and the new thread's own set-up).
const STARTS_THREADS: &[i64] = &[
    nix::libc::SYS_clone,
    nix::libc::SYS_clone3,
    nix::libc::SYS_set_robust_list,
    nix::libc::SYS_rseq,
    nix::libc::SYS_prctl,
    nix::libc::SYS_sched_getaffinity,
];

/// Talking over a Unix socket: the device-process links and clients.
const SOCKETS: &[i64] = &[
    nix::libc::SYS_sendmsg,
    nix::libc::SYS_recvmsg,
    nix::libc::SYS_sendto,
    nix::libc::SYS_recvfrom,
    nix::libc::SYS_read,
    nix::libc::SYS_poll,
    nix::libc::SYS_ppoll,
];

/// What a device thread calls, under the filter of the thread that
/// started it: before its own filter (giving up its capabilities, checking
/// its descriptors, mapping its state region) and under it (any kind's).
fn device_thread_calls() -> Vec<i64> {
    use nix::libc::*;
    let mut calls = vec![
        SYS_capget,
        SYS_capset,
        SYS_seccomp,
        SYS_getsockopt,
        SYS_fstat,
        SYS_newfstatat,
        SYS_statx,
    ];
    #[cfg(feature = "in-process")]
    for kind in ipc_proto::ProcessKind::ALL {
        calls.extend(device_procs::seccomp::rules(kind, &[]).into_keys());
    }
    calls.sort_unstable();
    calls.dedup();
    calls
}

/// What a disk's block device runs as a thread of the core
/// (`--device-mode in-process`) calls under the control loop's filter,
/// which started it: its checks of its descriptors, then its filter's.
fn block_thread_calls() -> Vec<i64> {
    #[cfg(feature = "in-process")]
    return device_procs::seccomp::block_rules()
        .into_keys()
        .chain([nix::libc::SYS_getsockopt])
        .collect();
    #[cfg(not(feature = "in-process"))]
    Vec::new()
}

fn extra_calls(kind: ThreadKind) -> Vec<i64> {
    use nix::libc::*;
    match kind {
        // A device thread (in-process) it cuts off: its channels shut down.
        ThreadKind::Vcpu => [SOCKETS, &[SYS_tgkill, SYS_shutdown]].concat(),
        ThreadKind::Control => [
            SOCKETS,
            STARTS_THREADS,
            &[
                // Kicking vCPUs out of KVM_RUN.
                SYS_tgkill,
                // Device processes: new links, descriptors handed out,
                // the jails' directories removed.
                SYS_socketpair,
                SYS_dup,
                SYS_openat,
                SYS_newfstatat,
                SYS_statx,
                SYS_fstat,
                SYS_getdents64,
                SYS_unlinkat,
                SYS_unlink,
                SYS_rmdir,
                // An upgrade's binary resolved (realpath) and checked.
                SYS_readlink,
                SYS_readlinkat,
                SYS_access,
                SYS_faccessat,
                SYS_faccessat2,
                // Reset: guest RAM given back to the host.
                SYS_fallocate,
                // object-add: a memory backend's sealed memfd.
                SYS_memfd_create,
                SYS_ftruncate,
                // The end: the runtime directory's and the uid's locks go.
                SYS_flock,
                // Watchers and restart timers start under this filter, and
                // the threads it starts install their own on top.
                SYS_waitid,
                SYS_seccomp,
                SYS_shutdown,
                // A disk's vhost-user socket: bound in the VM's directory,
                // connected, timed out (AF_UNIX only: see `rules`).
                SYS_socket,
                SYS_bind,
                SYS_listen,
                SYS_connect,
                SYS_setsockopt,
            ],
            &block_thread_calls(),
        ]
        .concat(),
        ThreadKind::Log => vec![SYS_read],
        ThreadKind::Qmp => [
            SOCKETS,
            STARTS_THREADS,
            // Read and write time-outs of the clients' sockets.
            &[SYS_accept4, SYS_accept, SYS_shutdown, SYS_setsockopt],
        ]
        .concat(),
        ThreadKind::Console => [
            SOCKETS,
            STARTS_THREADS,
            &[SYS_accept4, SYS_accept, SYS_shutdown],
        ]
        .concat(),
        ThreadKind::Notifications => SOCKETS.to_vec(),
        // A device thread's channels are shut down once it ended.
        ThreadKind::Watcher => vec![SYS_waitid, SYS_shutdown],
        ThreadKind::Signals => vec![SYS_rt_sigtimedwait],
        ThreadKind::DeviceStarter => [STARTS_THREADS, &device_thread_calls()].concat(),
    }
}

/// The allowed calls of `kind`: number → rules (empty: always allowed).
pub fn rules(kind: ThreadKind) -> Rules {
    let mut rules: Rules = common::seccomp::PROCESS_BASICS
        .iter()
        .chain(EVERY_THREAD)
        .chain(&extra_calls(kind))
        .map(|&n| (n, vec![]))
        .collect();
    // Memory is never executable.
    rules.insert(nix::libc::SYS_mmap, vec![rule(vec![not_executable()])]);
    rules.insert(nix::libc::SYS_mprotect, vec![rule(vec![not_executable()])]);
    // fcntl: std checks a descriptor before closing it (debug builds);
    // the threads that hand out or set up descriptors do more.
    let fcntl_commands: &[i32] = match kind {
        ThreadKind::Control => &[
            nix::libc::F_GETFD,
            nix::libc::F_SETFD,
            nix::libc::F_GETFL,
            nix::libc::F_SETFL,
            nix::libc::F_DUPFD_CLOEXEC,
            // A memory backend's memfd is sealed against resizing.
            nix::libc::F_ADD_SEALS,
        ],
        ThreadKind::Qmp | ThreadKind::Console => &[
            nix::libc::F_GETFD,
            nix::libc::F_SETFD,
            nix::libc::F_GETFL,
            nix::libc::F_SETFL,
            nix::libc::F_DUPFD_CLOEXEC,
        ],
        // A device thread gets copies of its descriptors.
        ThreadKind::DeviceStarter => &[nix::libc::F_GETFD, nix::libc::F_DUPFD_CLOEXEC],
        _ => &[nix::libc::F_GETFD],
    };
    let fcntl = fcntl_commands
        .iter()
        .map(|&command| arg_equals_32(1, command as u64))
        .collect();
    rules.insert(nix::libc::SYS_fcntl, fcntl);
    if kind == ThreadKind::Control {
        // Sockets of the AF_UNIX family only.
        rules.insert(
            nix::libc::SYS_socket,
            vec![arg_equals_32(0, nix::libc::AF_UNIX as u64)],
        );
    }
    // ioctl: the KVM requests of the kind, and TCGETS (the log checks
    // whether stderr is a terminal); the control loop, whose thread ends the
    // process, gives the terminal its settings back (TCSETS).
    let terminal: &[u64] = match kind {
        ThreadKind::Control => &[nix::libc::TCGETS, nix::libc::TCSETS],
        _ => &[nix::libc::TCGETS],
    };
    let ioctls = kvm_requests(kind)
        .into_iter()
        .chain(terminal.iter().copied())
        .map(|request| arg_equals_32(1, request))
        .collect();
    rules.insert(nix::libc::SYS_ioctl, ioctls);
    rules
}

/// The compiled filter of `kind`, or `None` in [`Mode::Off`].
pub fn program(kind: ThreadKind, mode: Mode) -> Result<Option<BpfProgram>, SeccompError> {
    compile(rules(kind), mode)
}

/// Installs the filter of `kind` on the calling thread (it also sets
/// no_new_privs). A thread that cannot be confined must not go on.
pub fn confine_thread(kind: ThreadKind) -> Result<(), SeccompError> {
    // Unset (unit tests): no filter.
    let mode = *MODE.get().unwrap_or(&Mode::Off);
    common::seccomp::install(program(kind, mode)?.as_ref())
}

/// [`confine_thread`] for the start of a thread: logs and ends the process
/// if the filter cannot be installed.
pub fn confine_or_exit(kind: ThreadKind) {
    if let Err(error) = confine_thread(kind) {
        log::error!(
            "cannot confine a {kind:?} thread: {}",
            common::describe(&error)
        );
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ThreadKind; 9] = [
        ThreadKind::DeviceStarter,
        ThreadKind::Log,
        ThreadKind::Vcpu,
        ThreadKind::Control,
        ThreadKind::Qmp,
        ThreadKind::Console,
        ThreadKind::Notifications,
        ThreadKind::Watcher,
        ThreadKind::Signals,
    ];

    #[test]
    fn every_kind_compiles_and_none_may_open_exec_or_trace() {
        for kind in ALL {
            assert!(program(kind, Mode::Kill).unwrap().is_some());
            let allowed = rules(kind);
            for forbidden in [
                nix::libc::SYS_execve,
                nix::libc::SYS_execveat,
                nix::libc::SYS_fork,
                nix::libc::SYS_ptrace,
                nix::libc::SYS_setuid,
                nix::libc::SYS_mount,
                nix::libc::SYS_kill,
            ] {
                assert!(
                    !allowed.contains_key(&forbidden),
                    "{kind:?} allows {forbidden}"
                );
            }
        }
        // Only the control loop makes sockets (a disk's vhost-user
        // socket), of the AF_UNIX family only.
        for kind in ALL {
            let sockets = kind == ThreadKind::Control;
            assert_eq!(
                rules(kind).contains_key(&nix::libc::SYS_socket),
                sockets,
                "{kind:?}"
            );
            assert_eq!(
                rules(kind).contains_key(&nix::libc::SYS_connect),
                sockets,
                "{kind:?}"
            );
        }
        assert_eq!(rules(ThreadKind::Control)[&nix::libc::SYS_socket].len(), 1);
        // Only the threads that face no guest or client may open files.
        assert!(rules(ThreadKind::Control).contains_key(&nix::libc::SYS_openat));
        for kind in [ThreadKind::Vcpu, ThreadKind::Qmp, ThreadKind::Console] {
            assert!(
                !rules(kind).contains_key(&nix::libc::SYS_openat),
                "{kind:?}"
            );
        }
        // ioctl requests are filtered by number: KVM's for the threads that
        // drive KVM, and only TCGETS for the others.
        assert_eq!(rules(ThreadKind::Vcpu)[&nix::libc::SYS_ioctl].len(), 8);
        assert_eq!(rules(ThreadKind::Qmp)[&nix::libc::SYS_ioctl].len(), 1);
    }

    #[test]
    fn a_call_outside_the_filter_kills_and_one_inside_does_not() {
        use nix::sys::wait::{waitpid, WaitStatus};
        let program = program(ThreadKind::Qmp, Mode::Kill).unwrap().unwrap();
        for (path, expect_killed) in [(c"/etc/hostname", true), (c"", false)] {
            // SAFETY: the child only installs the prepared filter and makes
            // raw system calls before it exits; it allocates nothing.
            match unsafe { nix::unistd::fork() }.unwrap() {
                nix::unistd::ForkResult::Child => {
                    if seccompiler::apply_filter(&program).is_err() {
                        // SAFETY: _exit is always safe in a forked child.
                        unsafe { nix::libc::_exit(3) };
                    }
                    if !path.is_empty() {
                        // SAFETY: a NUL-terminated path; the result is ignored.
                        unsafe { nix::libc::open(path.as_ptr(), nix::libc::O_RDONLY) };
                    }
                    // SAFETY: _exit is always safe in a forked child.
                    unsafe { nix::libc::_exit(0) };
                }
                nix::unistd::ForkResult::Parent { child } => {
                    let status = waitpid(child, None).unwrap();
                    if expect_killed {
                        assert!(
                            matches!(
                                status,
                                WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGSYS, _)
                            ),
                            "{status:?}"
                        );
                    } else {
                        assert_eq!(status, WaitStatus::Exited(child, 0));
                    }
                }
            }
        }
    }

    #[test]
    fn kvm_request_numbers_are_the_kernels() {
        // From linux/kvm.h, as the kernel computes them on x86_64.
        let vcpu = kvm_requests(ThreadKind::Vcpu);
        assert!(vcpu.contains(&0xae80), "KVM_RUN");
        assert!(vcpu.contains(&0x8090_ae81), "KVM_GET_REGS");
        assert!(vcpu.contains(&0x4090_ae82), "KVM_SET_REGS");
        assert!(vcpu.contains(&0x8138_ae83), "KVM_GET_SREGS");
        assert!(vcpu.contains(&0x4008_ae6a), "KVM_SET_GSI_ROUTING");
        assert!(vcpu.contains(&0x4004_ae99), "KVM_SET_MP_STATE");
        let control = kvm_requests(ThreadKind::Control);
        assert!(control.contains(&0xae41), "KVM_CREATE_VCPU");
        assert!(control.contains(&0x4008_ae90), "KVM_SET_CPUID2");
        assert!(control.contains(&0xc008_ae05), "KVM_GET_SUPPORTED_CPUID");
        assert!(control.contains(&0x4040_ae79), "KVM_IOEVENTFD");
    }
}
