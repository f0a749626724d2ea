//! The VM's reaper (`jailer::reaper`): a process that holds a pidfd of
//! every device process and kills each when the core ends or dies. The
//! core hands it each new process, and replaces a reaper that dies.

use super::spawn::{self, ProcessHandle};
use super::{lock, DeviceProcesses};
use std::os::fd::AsRawFd;

/// Reapers started after the first, at most: one that keeps dying is
/// given up on (and says so) rather than restarted in a loop.
const MAX_REAPER_RESTARTS: u32 = 5;

impl DeviceProcesses {
    /// The reaper ended (`reason`): a new one takes every running device
    /// process, unless reapers keep dying.
    pub fn reaper_exited(&self, reason: &str) {
        let mut restarts = lock(&self.reaper_restarts);
        if *restarts >= MAX_REAPER_RESTARTS {
            log::error!("the reaper {reason}, again: given up; device processes would outlive a core that dies");
            *lock(&self.reaper) = None;
            return;
        }
        *restarts += 1;
        drop(restarts);
        match spawn::start_reaper(&self.control) {
            Ok(socket) => {
                log::error!("the reaper {reason}; a new one holds the device processes");
                *lock(&self.reaper) = Some(socket);
                let records = lock(&self.records);
                for process in records.values().filter_map(|r| r.process.as_ref()) {
                    self.tell_reaper(process);
                }
            }
            Err(error) => {
                log::error!(
                    "the reaper {reason}, and no new one starts ({}): device processes would outlive a core that dies",
                    common::describe(&error)
                );
                *lock(&self.reaper) = None;
            }
        }
    }

    /// Tells the reaper the VM ends cleanly: what still runs when the core
    /// is gone was ending with it (no warning).
    pub fn announce_end(&self) {
        use nix::sys::socket::{sendmsg, MsgFlags};
        if let Some(reaper) = lock(&self.reaper).as_ref() {
            // sendmsg, as for the pidfds: the system call the control
            // thread's filter allows on this socket.
            let _ = sendmsg::<()>(
                reaper.as_raw_fd(),
                &[std::io::IoSlice::new(&[jailer::reaper::ENDING])],
                &[],
                MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
                None,
            );
        }
    }

    /// Hands the reaper a pidfd of a new device process.
    pub(super) fn tell_reaper(&self, handle: &ProcessHandle) {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        let reaper = lock(&self.reaper);
        let (Some(reaper), Some(pidfd)) = (reaper.as_ref(), handle.pidfd()) else {
            return;
        };
        let fds = [pidfd.as_raw_fd()];
        let sent = sendmsg::<()>(
            reaper.as_raw_fd(),
            &[std::io::IoSlice::new(&[1])],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
            None,
        );
        if let Err(error) = sent {
            log::error!(
                "the reaper did not take pid {}: it would outlive a core that dies ({error})",
                handle.pid
            );
        }
    }
}
