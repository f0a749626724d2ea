//! SIGTERM, SIGINT and SIGHUP (what a closed terminal sends; QEMU treats it
//! as SIGTERM) end the VM the way QMP `quit` does: blocked in every thread,
//! and taken by one thread that tells the control loop. SIGCHLD is blocked
//! in every thread too, and never taken. SIGUSR1, SIGUSR2 and SIGALRM, which
//! would end the core outright, mean nothing to it: they are ignored.

use crate::control::ControlMessage;
use nix::sys::signal::{SigSet, Signal};
use std::sync::mpsc::Sender;

/// The signals that end the VM as `quit` does.
pub const TERMINATION: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];
/// Signals whose default action would end the core, which it ignores.
pub const IGNORED: [Signal; 3] = [Signal::SIGUSR1, Signal::SIGUSR2, Signal::SIGALRM];

/// Ignores [`IGNORED`] in the whole process.
fn ignore_meaningless() -> nix::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler};
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    for signal in IGNORED {
        // SAFETY: SIG_IGN runs no code of ours; no handler is replaced
        // that anything relies on (the core installs none for these).
        unsafe { sigaction(signal, &ignore) }?;
    }
    Ok(())
}

/// The termination signals, blocked in this thread (and so in every thread
/// it starts) until [`Blocked::forward_to`] takes them.
pub struct Blocked(SigSet);

/// Blocks the termination signals and SIGCHLD in this thread, and so in
/// every thread it starts (programs it starts begin with an empty mask).
pub fn block() -> nix::Result<Blocked> {
    let mut termination = SigSet::empty();
    for signal in TERMINATION {
        termination.add(signal);
    }
    ignore_meaningless()?;
    // Children are waited for through pidfds, never through SIGCHLD. Yet a
    // SIGCHLD that comes while the spawner thread has every signal blocked
    // (glibc does so around posix_spawn) is queued instead of dropped, and
    // its delivery to another thread fails that thread's timed socket read
    // with EINTR, which is never restarted: a QMP client negotiating then
    // was disconnected.
    let mut blocked = termination;
    blocked.add(Signal::SIGCHLD);
    blocked.thread_block()?;
    Ok(Blocked(termination))
}

impl Blocked {
    /// Waits for the signals on a thread of its own; each becomes a
    /// [`ControlMessage::HostSignal`].
    pub fn forward_to(self, control: Sender<ControlMessage>) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                crate::seccomp::confine_or_exit(crate::seccomp::ThreadKind::Signals);
                self.forward(&control)
            })
            .map(drop)
    }

    fn forward(&self, control: &Sender<ControlMessage>) {
        loop {
            match self.0.wait() {
                // The control loop logs it, once.
                Ok(signal) => {
                    if control.send(ControlMessage::HostSignal(signal)).is_err() {
                        return;
                    }
                }
                Err(error) => {
                    log::error!("cannot wait for termination signals: {error}");
                    return;
                }
            }
        }
    }
}
