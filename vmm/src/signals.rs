//! SIGTERM and SIGINT end the VM the way QMP `quit` does: blocked in every
//! thread, and taken by one thread that tells the control loop. SIGCHLD is
//! blocked in every thread too, and never taken.

use crate::control::ControlMessage;
use nix::sys::signal::{SigSet, Signal};
use std::sync::mpsc::Sender;

/// The termination signals, blocked in this thread (and so in every thread
/// it starts) until [`Blocked::forward_to`] takes them.
pub struct Blocked(SigSet);

/// Blocks the termination signals and SIGCHLD in this thread, and so in
/// every thread it starts (programs it starts begin with an empty mask).
pub fn block() -> nix::Result<Blocked> {
    let mut termination = SigSet::empty();
    termination.add(Signal::SIGTERM);
    termination.add(Signal::SIGINT);
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
                Ok(signal) => {
                    log::info!("{signal} received: ending the VM");
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
