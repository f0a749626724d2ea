//! The supervisor's policy, as plain code: what an exit of a device process
//! leads to, and the state QMP reports. A process that served (it completed
//! its set-up) and lived past [`SHORT_LIFE`] is restarted at once: its
//! death is not a crash loop, and the guest waits for its successor. One
//! that died before it served, or soon after its start, is restarted after a
//! backoff that doubles with each recent exit. Either way, more than
//! [`MAX_RESTARTS`] exits within [`RESTART_WINDOW`] and the supervisor gives
//! up. It holds no process handle: the caller carries out what it decides.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Exits allowed within [`RESTART_WINDOW`] before a process is failed.
pub const MAX_RESTARTS: usize = 5;
/// The window in which exits count.
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// The wait before the first restart; it doubles with each recent exit.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait before a restart.
const MAX_BACKOFF_DOUBLINGS: usize = 6;
/// A process that dies within this time of its start is in a crash loop,
/// even if it served.
pub const SHORT_LIFE: Duration = Duration::from_millis(100);

/// What QMP reports of a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// It serves.
    Running,
    /// It is down, and a successor is on its way.
    Restarting,
    /// It kept dying: the supervisor gave up on it.
    Failed,
}

impl State {
    /// The name QMP shows.
    pub const fn name(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Restarting => "restarting",
            State::Failed => "failed",
        }
    }
}

/// What the supervisor decided about an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterExit {
    /// An exit of an older generation, or of a process not running.
    Ignore,
    /// Restart it after this delay.
    RestartAfter(Duration),
    /// Give up on it: it keeps dying.
    Failed,
}

/// The supervision record of one process kind.
#[derive(Debug)]
pub struct Supervision {
    /// How it is doing.
    pub state: State,
    /// Which start of the process this is; exits of older ones are stale.
    pub generation: u64,
    /// How many times it was restarted.
    pub restarts: u32,
    /// How it last ended, in words.
    pub last_exit: Option<String>,
    recent_exits: VecDeque<Instant>,
    /// The running generation: when it started, whether it served.
    incarnation: Incarnation,
}

/// One start of a process, as the policy sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Incarnation {
    /// Which start it is.
    generation: u64,
    /// When it started.
    started_at: Instant,
    /// It completed its set-up.
    served: bool,
}

impl Supervision {
    /// A process just started as `generation`, at `now`.
    pub fn new(generation: u64, now: Instant) -> Supervision {
        Supervision {
            state: State::Running,
            generation,
            restarts: 0,
            last_exit: None,
            recent_exits: VecDeque::new(),
            incarnation: Incarnation {
                generation,
                started_at: now,
                served: false,
            },
        }
    }

    /// A new generation of the process runs, started at `now`.
    pub fn started(&mut self, generation: u64, now: Instant) {
        self.restore(Incarnation {
            generation,
            started_at: now,
            served: false,
        });
    }

    /// Generation `generation` completed its set-up: it serves.
    pub fn serving(&mut self, generation: u64) {
        if self.incarnation.generation == generation {
            self.incarnation.served = true;
        }
    }

    /// The running generation, to be restored if what replaces it does not
    /// come up (an upgrade).
    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    /// `incarnation` runs (again).
    pub fn restore(&mut self, incarnation: Incarnation) {
        self.generation = incarnation.generation;
        self.incarnation = incarnation;
        self.state = State::Running;
    }

    /// The operator asks for the process back (x-restart-device-process):
    /// one that is failed, or waiting out its backoff, restarts now, with
    /// its crash history forgotten. Whether there is anything to restart.
    pub fn revive(&mut self) -> bool {
        match self.state {
            State::Running => false,
            State::Restarting | State::Failed => {
                self.state = State::Restarting;
                self.recent_exits.clear();
                true
            }
        }
    }

    /// A restart could not start for lack of host resources: the process
    /// is still down, to be restarted, and that is not counted against it.
    pub fn postponed(&mut self, reason: &str) {
        self.state = State::Restarting;
        self.last_exit = Some(format!("its restart waits for host resources: {reason}"));
    }

    /// A restart completed.
    pub fn restarted(&mut self) {
        self.restarts += 1;
    }

    /// Generation `generation` ended, for `reason`, at `now`.
    pub fn exited(&mut self, generation: u64, reason: &str, now: Instant) -> AfterExit {
        if generation != self.generation || self.state != State::Running {
            return AfterExit::Ignore;
        }
        self.last_exit = Some(reason.to_string());
        self.recent_exits.push_back(now);
        while self
            .recent_exits
            .front()
            .is_some_and(|t| now.duration_since(*t) > RESTART_WINDOW)
        {
            self.recent_exits.pop_front();
        }
        if self.recent_exits.len() > MAX_RESTARTS {
            self.state = State::Failed;
            return AfterExit::Failed;
        }
        self.state = State::Restarting;
        let Incarnation {
            started_at, served, ..
        } = self.incarnation;
        if served && now.saturating_duration_since(started_at) >= SHORT_LIFE {
            return AfterExit::RestartAfter(Duration::ZERO);
        }
        let doublings = (self.recent_exits.len() - 1).min(MAX_BACKOFF_DOUBLINGS);
        AfterExit::RestartAfter(FIRST_BACKOFF * (1 << doublings))
    }

    /// A restart that can never come up (`reason`: nothing can start it
    /// any more): failed at once, no backoff to wait out.
    pub fn give_up(&mut self, reason: &str) -> AfterExit {
        self.state = State::Failed;
        self.last_exit = Some(reason.to_string());
        AfterExit::Failed
    }

    /// A restart that did not come up (`reason`) counts as another exit.
    pub fn restart_failed(&mut self, reason: &str, now: Instant) -> AfterExit {
        self.state = State::Running;
        // What did not come up did not serve: its next try backs off.
        self.incarnation.served = false;
        self.exited(self.generation, reason, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_the_process_is_failed() {
        let start = Instant::now();
        let mut s = Supervision::new(1, start);
        let mut waits = Vec::new();
        for generation in 1..=6 {
            s.started(generation, start);
            let at = start + Duration::from_secs(generation);
            match s.exited(generation, "killed by SIGSYS", at) {
                AfterExit::RestartAfter(wait) => waits.push(wait.as_millis()),
                other => {
                    assert_eq!(generation, 6, "{other:?} too early");
                    assert_eq!(other, AfterExit::Failed);
                }
            }
        }
        assert_eq!(waits, [100, 200, 400, 800, 1600]);
        assert_eq!(s.state, State::Failed);
        assert_eq!(s.last_exit.as_deref(), Some("killed by SIGSYS"));
        // Failed is final: a late exit changes nothing.
        assert_eq!(s.exited(6, "again", start), AfterExit::Ignore);
    }

    #[test]
    fn an_operator_brings_a_failed_process_back_with_its_history_forgotten() {
        let start = Instant::now();
        let mut s = Supervision::new(1, start);
        for generation in 1..=6 {
            s.started(generation, start);
            s.exited(generation, "killed", start);
        }
        assert_eq!(s.state, State::Failed);
        assert!(s.revive());
        assert_eq!(s.state, State::Restarting);
        s.started(7, start);
        s.restarted();
        assert!(!s.revive(), "a running process is not revived");
        // Its next exit is a first one again: the shortest backoff.
        assert_eq!(
            s.exited(7, "killed", start),
            AfterExit::RestartAfter(FIRST_BACKOFF)
        );
        // One waiting out its backoff restarts now too.
        assert!(s.revive());
    }

    #[test]
    fn exits_outside_the_window_are_forgotten() {
        let start = Instant::now();
        let mut s = Supervision::new(0, start);
        for generation in 0..20u64 {
            s.started(generation, start);
            let at = start + (RESTART_WINDOW + Duration::from_secs(1)) * generation as u32;
            assert_eq!(
                s.exited(generation, "exited with status 1", at),
                AfterExit::RestartAfter(FIRST_BACKOFF)
            );
        }
    }

    #[test]
    fn stale_generations_and_exits_while_restarting_are_ignored() {
        let now = Instant::now();
        let mut s = Supervision::new(3, now);
        assert_eq!(s.exited(2, "old", now), AfterExit::Ignore);
        assert!(matches!(s.exited(3, "x", now), AfterExit::RestartAfter(_)));
        assert_eq!(s.state, State::Restarting);
        assert_eq!(s.exited(3, "x", now), AfterExit::Ignore);
        // A restart that does not come up counts as an exit.
        assert_eq!(
            s.restart_failed("its restart did not come up", now),
            AfterExit::RestartAfter(FIRST_BACKOFF * 2)
        );
        assert_eq!(s.last_exit.as_deref(), Some("its restart did not come up"));
    }

    #[test]
    fn a_process_that_served_restarts_at_once_and_a_crash_loop_waits() {
        let start = Instant::now();
        let mut s = Supervision::new(1, start);
        s.serving(1);
        // Served, and lived long enough: at once, however many times.
        for generation in 1..=5u64 {
            let at = start + Duration::from_millis(1500) * generation as u32;
            s.started(generation, at - Duration::from_millis(1500));
            s.serving(generation);
            assert_eq!(
                s.exited(generation, "killed by SIGKILL", at),
                AfterExit::RestartAfter(Duration::ZERO),
                "death {generation}"
            );
        }
        // The threshold is as for any exit: a sixth within the window fails.
        s.started(6, start + Duration::from_secs(8));
        s.serving(6);
        assert_eq!(
            s.exited(6, "killed", start + Duration::from_secs(10)),
            AfterExit::Failed
        );

        // Died before it served: backoff.
        let mut s = Supervision::new(1, start);
        assert_eq!(
            s.exited(1, "exited with status 1", start + Duration::from_secs(5)),
            AfterExit::RestartAfter(FIRST_BACKOFF)
        );
        // Served, but died within SHORT_LIFE of its start: backoff, doubled.
        s.started(2, start + Duration::from_secs(6));
        s.serving(2);
        assert_eq!(
            s.exited(2, "killed", start + Duration::from_secs(6) + SHORT_LIFE / 2),
            AfterExit::RestartAfter(FIRST_BACKOFF * 2)
        );
        // A late `serving` of an older generation changes nothing.
        s.started(3, start + Duration::from_secs(8));
        s.serving(2);
        assert_eq!(
            s.exited(3, "killed", start + Duration::from_secs(20)),
            AfterExit::RestartAfter(FIRST_BACKOFF * 4)
        );
    }

    #[test]
    fn six_deaths_within_100_ms_of_their_starts_end_failed() {
        let start = Instant::now();
        let mut s = Supervision::new(1, start);
        let mut after = AfterExit::Ignore;
        for generation in 1..=6u64 {
            let born = start + Duration::from_secs(generation);
            s.started(generation, born);
            s.serving(generation);
            after = s.exited(generation, "killed", born + Duration::from_millis(90));
            if generation < 6 {
                assert!(matches!(after, AfterExit::RestartAfter(d) if d >= FIRST_BACKOFF));
            }
        }
        assert_eq!(after, AfterExit::Failed);
    }

    #[test]
    fn a_restored_incarnation_keeps_what_it_had_served() {
        let start = Instant::now();
        let mut s = Supervision::new(1, start);
        s.serving(1);
        let serving = s.incarnation();
        s.started(2, start + Duration::from_secs(5));
        s.restore(serving);
        assert_eq!(s.generation, 1);
        assert_eq!(
            s.exited(1, "killed", start + Duration::from_secs(10)),
            AfterExit::RestartAfter(Duration::ZERO)
        );
    }
}
