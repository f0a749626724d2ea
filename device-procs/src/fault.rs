//! Fault injection (`x-inject-fault`), built only with the
//! `fault-injection` feature: each fault is something a compromised device
//! process would do, so that tests can prove the jail and the supervisor.
//! A build without the feature has none of this code and refuses the request.

use crate::links::Links;
use ipc_proto::channel::{encode, Channel, Envelope};
use ipc_proto::control::{
    ArmedFault, Fault, FaultAction, FaultPoint, FaultRecord, PendingFault, FAULT_DELAY_MS,
};
use ipc_proto::Link;

/// The status a crashing process ends with: `_exit`, as abrupt as SIGKILL
/// (nothing is flushed or unwound), because a jailed process is its PID
/// namespace's init, which ignores a SIGKILL it sends itself.
pub const CRASH_STATUS: i32 = 70;

/// The fault armed at a point, and what it does to the request in hand.
#[derive(Debug, Default)]
pub struct Armed {
    /// Kept once spent, until cleared or replaced.
    fault: Option<FaultRecord>,
    /// RTAS calls still to be answered with a lie (`Fault::Lie`).
    pub(crate) lies: usize,
    /// The request being answered: its link and name.
    current: Option<(Link, String)>,
    /// What to do to the current request's reply.
    spoil: Option<FaultAction>,
    /// The next transition fails to be recorded (`Fault::LoseState`).
    lose_state: bool,
}

impl Armed {
    /// Arms `fault`, replacing any other.
    pub fn arm(&mut self, fault: ArmedFault) {
        self.fault = Some(FaultRecord { fault, fired: 0 });
    }

    /// The fault armed at a point, fired or not.
    pub fn armed(&self) -> Option<&FaultRecord> {
        self.fault.as_ref()
    }

    /// Disarms and forgets the fault armed at a point.
    pub fn clear(&mut self) -> Option<FaultRecord> {
        self.fault.take()
    }

    /// Committed faults whose effect is still to come.
    pub fn pending(&self) -> Vec<PendingFault> {
        let left = |count: usize| u32::try_from(count).unwrap_or(u32::MAX);
        let mut pending = Vec::new();
        if self.lies > 0 {
            pending.push(PendingFault {
                fault: Fault::Lie,
                left: left(self.lies),
            });
        }
        if self.lose_state {
            pending.push(PendingFault {
                fault: Fault::LoseState,
                left: 1,
            });
        }
        pending
    }

    /// Cancels what committed faults were still to do; what that was.
    pub fn clear_pending(&mut self) -> Vec<PendingFault> {
        let pending = self.pending();
        self.lies = 0;
        self.lose_state = false;
        pending
    }

    /// A request of `link` named `name` is being answered.
    pub fn serving(&mut self, link: Link, name: String) {
        self.current = Some((link, name));
        self.spoil = None;
    }

    /// The action of the armed fault, if it fires at `point` now (once).
    pub fn fire(&mut self, point: FaultPoint) -> Option<FaultAction> {
        let (_, name) = self.current.as_ref()?;
        let record = self.fault.as_mut()?;
        if record.fired > 0 || !record.fault.fires(point, name) {
            return None;
        }
        record.fired += 1;
        log::warn!(
            "fault {:?} fires at {point:?} for {name}",
            record.fault.action
        );
        Some(record.fault.action)
    }
}

/// Carries out `action` where it fired.
pub fn act(action: FaultAction, links: &mut Links) {
    match action {
        FaultAction::Crash => {
            // SAFETY: _exit ends the process; nothing after it runs.
            unsafe { nix::libc::_exit(CRASH_STATUS) }
        }
        FaultAction::Hang => loop {
            let _ = nix::poll::poll(&mut [], nix::poll::PollTimeout::NONE);
        },
        FaultAction::Delay => {
            let delay = nix::poll::PollTimeout::try_from(FAULT_DELAY_MS as i32)
                .unwrap_or(nix::poll::PollTimeout::NONE);
            let _ = nix::poll::poll(&mut [], delay);
        }
        FaultAction::DropReply | FaultAction::CorruptReply => links.spoil(action),
        FaultAction::CloseLink => {
            if let Some(link) = links.current_link() {
                log::warn!("closing {link:?} as asked");
                links.close_link(link);
            }
        }
    }
}

/// Drops or garbles the reply about to be sent on `channel`, if a fault
/// said so; `true` when the reply must not be sent.
pub fn spoil_reply(armed: &mut Armed, channel: &Channel) -> bool {
    armed.current = None;
    match armed.spoil.take() {
        Some(FaultAction::DropReply) => {
            log::warn!("dropping the reply as asked");
            true
        }
        Some(FaultAction::CorruptReply) => {
            log::warn!("sending garbage for the reply as asked");
            let _ = channel.send_frame(&[0xff; 24], &[]);
            true
        }
        _ => false,
    }
}

impl Links {
    /// Whether the state region is to fail the transition in hand (once).
    pub(crate) fn state_fails(&mut self) -> bool {
        std::mem::take(&mut self.faults_mut().lose_state)
    }

    fn spoil(&mut self, action: FaultAction) {
        self.faults_mut().spoil = Some(action);
    }

    fn current_link(&mut self) -> Option<Link> {
        self.faults_mut().current.as_ref().map(|(link, _)| *link)
    }
}

/// Commits `fault`; returns what happened if the process is still alive.
pub fn commit(fault: Fault, links: &mut Links) -> String {
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
        Fault::WriteOtherFd => {
            // SAFETY: write(2) of a one-byte buffer that outlives the call.
            let written = unsafe { nix::libc::write(0, b"x".as_ptr().cast(), 1) };
            format!("write to descriptor 0 returned {written}")
        }
        Fault::Garbage => {
            for channel in links.core_channels() {
                send_garbage(channel);
            }
            "sent garbage to the core".into()
        }
        Fault::Hang => loop {
            // Never answers again; poll with no descriptors is allowed.
            let _ = nix::poll::poll(&mut [], nix::poll::PollTimeout::NONE);
        },
        Fault::Lie => crate::lie::tell(links),
        Fault::Panic => panic!("panicking as asked"),
        Fault::LoseState => {
            links.faults_mut().lose_state = true;
            "the next transition will not be recorded".into()
        }
    }
}

/// Random and truncated frames on `channel`, as a hostile process would send them.
fn send_garbage(channel: &Channel) {
    let valid = encode(&Envelope {
        id: u64::MAX,
        body: Link::CoreRtas,
    })
    .unwrap_or_default();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..64 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let frame: Vec<u8> = if round % 4 == 0 {
            valid[..(state as usize) % valid.len().max(1)].to_vec()
        } else {
            (0..(state % 200) as usize)
                .map(|i| (state >> (i % 8 * 8)) as u8)
                .collect()
        };
        if channel.send_frame(&frame, &[]).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_fires_once_for_its_request_and_stays_listed_until_cleared() {
        let mut armed = Armed::default();
        armed.arm(ArmedFault {
            point: FaultPoint::Received,
            action: FaultAction::Delay,
            request: Some("SetIndicator".into()),
        });
        armed.serving(Link::RtasHotplug, "GetSensorState".into());
        assert_eq!(armed.fire(FaultPoint::Received), None);
        assert_eq!(armed.armed().unwrap().fired, 0);
        armed.serving(Link::RtasHotplug, "SetIndicator".into());
        assert_eq!(armed.fire(FaultPoint::Replying), None);
        assert_eq!(armed.fire(FaultPoint::Received), Some(FaultAction::Delay));
        assert_eq!(armed.fire(FaultPoint::Received), None);
        assert_eq!(armed.armed().unwrap().fired, 1);
        assert_eq!(armed.clear().unwrap().fired, 1);
        assert!(armed.armed().is_none());
    }

    #[test]
    fn committed_faults_still_to_act_are_listed_until_spent_or_cleared() {
        let mut armed = Armed::default();
        assert_eq!(armed.pending(), []);
        armed.lies = 2;
        armed.lose_state = true;
        let both = vec![
            PendingFault {
                fault: Fault::Lie,
                left: 2,
            },
            PendingFault {
                fault: Fault::LoseState,
                left: 1,
            },
        ];
        assert_eq!(armed.pending(), both);
        armed.lies -= 1;
        assert_eq!(armed.pending()[0].left, 1);
        assert_eq!(armed.clear_pending().len(), 2);
        assert_eq!(armed.pending(), []);
        assert_eq!(armed.lies, 0);
        assert!(!armed.lose_state);
    }
}
