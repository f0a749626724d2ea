//! The reaper: a small process each VM's core starts beside its device
//! processes, so that none of them outlives the core however it dies
//! (SIGKILL included), stopped (SIGSTOP) or hung ones too.
//!
//! It holds a pidfd of every device process the core started, sent over a
//! SOCK_SEQPACKET socket (its descriptor 3) as they start; when the core's
//! end closes — the core ended, or died — it SIGKILLs each and exits.
//! Through pidfds only: a process that is gone is never confused with a
//! later one that got its pid. It runs as the VM's device uid (so it may
//! signal them and nothing else), in a session of its own (a terminal's
//! signals do not reach it), non-dumpable, with no_new_privs and a seccomp
//! filter of the few calls it makes.

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use thiserror::Error;

/// The reaper's socket from the core.
pub const REAPER_SOCKET_FD: RawFd = 3;
/// The pidfds it holds at most: far more than a VM's processes ever are at
/// once; past it, those of exited processes are let go first.
pub const MAX_HELD: usize = 256;

/// Why the reaper cannot serve.
#[derive(Debug, Error)]
pub enum ReaperError {
    /// Dropping to the VM's ids, or confining itself, failed.
    #[error("cannot {0}")]
    Setup(&'static str, #[source] nix::Error),
    /// Its filter.
    #[error("cannot install its seccomp filter")]
    Seccomp(#[source] common::seccomp::SeccompError),
}

/// The calls the reaper makes once it serves.
fn rules() -> common::seccomp::Rules {
    use common::seccomp::{arg_equals_32, not_executable, rule};
    let mut rules: common::seccomp::Rules = common::seccomp::PROCESS_BASICS
        .iter()
        .chain(&[
            nix::libc::SYS_recvmsg,
            nix::libc::SYS_poll,
            nix::libc::SYS_ppoll,
            nix::libc::SYS_pidfd_send_signal,
        ])
        .map(|&call| (call, vec![]))
        .collect();
    rules.insert(nix::libc::SYS_write, vec![arg_equals_32(0, 2)]);
    rules.insert(nix::libc::SYS_mmap, vec![rule(vec![not_executable()])]);
    rules.insert(nix::libc::SYS_mprotect, vec![rule(vec![not_executable()])]);
    rules.insert(
        nix::libc::SYS_fcntl,
        vec![arg_equals_32(1, nix::libc::F_GETFD as u64)],
    );
    rules
}

/// Becomes what the reaper runs as: its own session, the VM's `ids`
/// (uid, gid) when given (the core is root), non-dumpable, no_new_privs,
/// under its filter (`mode`).
pub fn confine(ids: Option<(u32, u32)>, mode: common::seccomp::Mode) -> Result<(), ReaperError> {
    use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
    nix::unistd::setsid().map_err(|e| ReaperError::Setup("start a session", e))?;
    crate::empty_bounding_set();
    if ids.is_none() && nix::unistd::geteuid().is_root() {
        // Root without a VM uid (device processes run unjailed, as root):
        // of root's capabilities it keeps only the one it uses.
        keep_only_kill().map_err(|e| ReaperError::Setup("drop capabilities", e))?;
    }
    if let Some((uid, gid)) = ids {
        setgroups(&[]).map_err(|e| ReaperError::Setup("drop supplementary groups", e))?;
        let gid = Gid::from_raw(gid);
        setresgid(gid, gid, gid).map_err(|e| ReaperError::Setup("take the VM's gid", e))?;
        let uid = Uid::from_raw(uid);
        // From root to another uid: every capability goes with it.
        setresuid(uid, uid, uid).map_err(|e| ReaperError::Setup("take the VM's uid", e))?;
    }
    nix::sys::prctl::set_dumpable(false).map_err(|e| ReaperError::Setup("be non-dumpable", e))?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| ReaperError::Setup("set no_new_privs", e))?;
    let program = common::seccomp::compile(rules(), mode).map_err(ReaperError::Seccomp)?;
    common::seccomp::install(program.as_ref()).map_err(ReaperError::Seccomp)
}

/// Keeps CAP_KILL alone, in every set.
fn keep_only_kill() -> nix::Result<()> {
    use caps::{CapSet, Capability, CapsHashSet};
    let kill: CapsHashSet = [Capability::CAP_KILL].into_iter().collect();
    let failed = |_| nix::errno::Errno::EPERM;
    caps::clear(None, CapSet::Ambient).map_err(failed)?;
    caps::clear(None, CapSet::Inheritable).map_err(failed)?;
    caps::set(None, CapSet::Effective, &kill).map_err(failed)?;
    caps::set(None, CapSet::Permitted, &kill).map_err(failed)
}

/// Whether the process behind `pidfd` has ended (its pidfd is readable).
fn has_ended(pidfd: &OwnedFd) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut polled = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    poll(&mut polled, PollTimeout::ZERO).is_ok_and(|ready| ready > 0)
}

/// The byte of the message by which the core says it ends cleanly: the
/// processes still running when its end closes are ending with it.
pub const ENDING: u8 = b'E';

/// What one message from the core says.
enum Received {
    /// Pidfds of new device processes (the core sends one per message).
    Pidfds(Vec<OwnedFd>),
    /// [`ENDING`].
    Ending,
    /// The core's end closed.
    Closed,
}

/// How the core ended, as [`serve`] saw it.
pub struct Served {
    /// Device processes still running that were killed.
    pub killed: usize,
    /// The core said it was ending before its end closed.
    pub clean: bool,
}

fn received(socket: BorrowedFd<'_>) -> nix::Result<Received> {
    let mut byte = [0u8; 1];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [IoSliceMut::new(&mut byte)];
    let message = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for control in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = control {
            // SAFETY: SCM_RIGHTS hands over new descriptors that nothing
            // else owns.
            fds.extend(
                received
                    .into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    if message.bytes == 0 && fds.is_empty() {
        return Ok(Received::Closed);
    }
    if fds.is_empty() && byte[0] == ENDING {
        return Ok(Received::Ending);
    }
    Ok(Received::Pidfds(fds))
}

/// Serves `socket` until the core's end closes, then SIGKILLs every
/// process it was told of that still runs.
pub fn serve(socket: BorrowedFd<'_>) -> Served {
    let mut held: Vec<OwnedFd> = Vec::new();
    let mut clean = false;
    loop {
        match received(socket) {
            Ok(Received::Ending) => clean = true,
            Ok(Received::Pidfds(pidfds)) => {
                for pidfd in pidfds {
                    if held.len() >= MAX_HELD {
                        held.retain(|held| !has_ended(held));
                    }
                    if held.len() < MAX_HELD {
                        held.push(pidfd);
                    }
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            // The core's end closed (or broke): the core is gone.
            Ok(Received::Closed) | Err(_) => break,
        }
    }
    let killed = held
        .iter()
        .filter(|pidfd| {
            rustix::process::pidfd_send_signal(pidfd, rustix::process::Signal::KILL).is_ok()
        })
        .count();
    Served { killed, clean }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{
        sendmsg, socketpair, AddressFamily, ControlMessage, SockFlag, SockType,
    };
    use std::io::IoSlice;
    use std::process::Command;

    fn send_pidfd(socket: &OwnedFd, pidfd: &OwnedFd) {
        let fds = [pidfd.as_raw_fd()];
        sendmsg::<()>(
            socket.as_raw_fd(),
            &[IoSlice::new(&[1])],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
    }

    /// The core's end and the reaper's.
    fn link() -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap()
    }

    #[test]
    #[allow(clippy::zombie_processes)]
    fn when_the_core_end_closes_every_process_still_running_is_killed() {
        let (core, reaper) = link();
        let mut stopped = Command::new("sleep").arg("600").spawn().unwrap();
        let mut exited = Command::new("true").spawn().unwrap();
        let pidfd = |child: &std::process::Child| {
            rustix::process::pidfd_open(
                rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
                rustix::process::PidfdFlags::empty(),
            )
            .unwrap()
        };
        let (stopped_fd, exited_fd) = (pidfd(&stopped), pidfd(&exited));
        exited.wait().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(stopped.id() as i32),
            nix::sys::signal::Signal::SIGSTOP,
        )
        .unwrap();
        send_pidfd(&core, &stopped_fd);
        send_pidfd(&core, &exited_fd);
        let server = std::thread::spawn(move || serve(reaper.as_fd()));
        drop(core);
        // The stopped one is killed; the one that had exited is not
        // signalled (its pid may be anyone's by now).
        let served = server.join().unwrap();
        assert_eq!((served.killed, served.clean), (1, false));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(stopped.wait().unwrap().signal(), Some(nix::libc::SIGKILL));
    }

    /// The core said it ends: what it leaves running is no news.
    #[test]
    fn a_core_that_says_it_ends_ends_cleanly() {
        let (core, reaper) = link();
        nix::sys::socket::send(core.as_raw_fd(), &[ENDING], MsgFlags::empty()).unwrap();
        drop(core);
        let served = serve(reaper.as_fd());
        assert_eq!((served.killed, served.clean), (0, true));
    }

    #[test]
    fn its_filter_compiles() {
        assert!(
            common::seccomp::compile(rules(), common::seccomp::Mode::Kill)
                .unwrap()
                .is_some()
        );
    }
}
