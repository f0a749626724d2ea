//! The core's end of one device process, the same for every kind: requests
//! with the link's timeout, replies checked before anyone sees them, and a
//! process that answers garbage, the wrong thing, or nothing is cut off
//! (SIGKILLed through its pidfd; the supervisor restarts it). A reply that
//! blames a peer is passed to the supervisor, which acts on that peer.

use super::fault_hook::{BeforeSend, CoreFaults, FaultHook};
use super::spawn::ProcessHandle;
use crate::control::ControlMessage;
use ipc_proto::channel::{Channel, ChannelError};
use ipc_proto::control::{Answer, ControlReply, ControlRequest, Refusal, Request};
use ipc_proto::protocol::{Client, Protocol};
use ipc_proto::ProcessKind;
use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Why a request to a device process did not get its answer.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DeviceFailure {
    /// The process answered, refusing.
    #[error("{0}")]
    Refused(Refusal),
    /// The process is down; a new one is on its way.
    #[error("the {} is restarting; try again", .0.name())]
    Restarting(ProcessKind),
    /// The supervisor gave up on the process.
    #[error("the {} has failed", .0.name())]
    Failed(ProcessKind),
    /// The process died while it was asked.
    #[error("the {} died", .0.name())]
    Died(ProcessKind),
    /// The process misbehaved and was cut off.
    #[error("the {} failed ({why}) and was cut off", kind.name())]
    CutOff {
        /// The kind of the process.
        kind: ProcessKind,
        /// What it did.
        why: String,
    },
}

impl From<DeviceFailure> for crate::request::QmpError {
    fn from(failure: DeviceFailure) -> Self {
        crate::request::QmpError::generic(failure.to_string())
    }
}

/// The non-generic part of a proxy, for what is done to every kind alike.
pub trait Supervised: Send + Sync {
    /// A (new) process is ready on `channel`, linked to the peers of `peers`
    /// (kind → generation).
    fn connect(
        &self,
        channel: Channel,
        process: Arc<ProcessHandle>,
        peers: HashMap<ProcessKind, u64>,
    );
    /// Hands the process `fd`, the new end of `link`, to generation
    /// `generation` of its peer.
    fn relink(
        &self,
        link: ipc_proto::Link,
        fd: BorrowedFd<'_>,
        generation: u64,
    ) -> Result<(), DeviceFailure>;
    /// The process is gone: requests fail until the next connect.
    fn disconnect(&self);
    /// The supervisor gave up (or not) on the process.
    fn set_failed(&self, failed: bool);
    /// The supervisor gave up on the process.
    fn is_failed(&self) -> bool;
    /// The pid of the process that serves now (connected and set up).
    fn serving_pid(&self) -> Option<u32>;
    /// Waits until a process other than `pid` serves, the supervisor gives
    /// up, or `until` passes: a caller that found this process gone goes on
    /// as soon as its successor is set up.
    fn wait_for_successor(&self, pid: Option<u32>, until: Instant);
    /// Kills a process the core no longer trusts; its watcher reports it.
    fn cut_off(&self, why: &str);
    /// The connected process is set up: callers waiting for it go on.
    fn mark_ready(&self);
    /// An upgrade: `process`, connected on `channel`, takes the requests
    /// while the one it would replace waits aside, still linked.
    fn stage(
        &self,
        channel: Channel,
        process: Arc<ProcessHandle>,
        peers: HashMap<ProcessKind, u64>,
    );
    /// Ends an upgrade: `keep`, the staged process serves (ready) and the
    /// one aside is killed; else the staged one is killed and the one aside
    /// serves again.
    fn finish_stage(&self, keep: bool);
    /// A control request, answered by an acknowledgement (`None`) or a
    /// control reply.
    fn control(
        &self,
        request: ControlRequest,
        fds: &[BorrowedFd<'_>],
    ) -> Result<Option<ControlReply>, DeviceFailure>;
    /// The fault armed at the core's end of the link, fired or not.
    fn core_fault(&self) -> Option<ipc_proto::control::FaultRecord>;
    /// Disarms and forgets the fault armed at the core's end of the link.
    fn clear_core_fault(&self);
}

struct Connected<P> {
    client: Client<P>,
    process: Arc<ProcessHandle>,
    /// The generation of each peer this process is linked to: blame names
    /// that one, so a late report never hits the peer's successor.
    peers: HashMap<ProcessKind, u64>,
    /// The process is set up and serves the guest.
    ready: bool,
}

/// The core's end of the link `P` to one device process.
pub struct Proxy<P: Protocol> {
    kind: ProcessKind,
    connected: Mutex<Option<Connected<P>>>,
    /// Notified when a process is ready or the supervisor gives up.
    changed: Condvar,
    failed: AtomicBool,
    control: Sender<ControlMessage>,
    /// Request ids: unique across every process this proxy talks to, so a
    /// request sent again to a successor keeps an id no other request had.
    next_id: AtomicU64,
    /// The core's fault points on this link.
    faults: CoreFaults,
    /// During an upgrade, the process being replaced.
    aside: Mutex<Option<Connected<P>>>,
}

impl<P: Protocol> Proxy<P> {
    /// A proxy of `kind`, not yet connected; blame goes to `control`.
    pub fn new(kind: ProcessKind, control: Sender<ControlMessage>) -> Proxy<P> {
        Proxy {
            kind,
            connected: Mutex::new(None),
            changed: Condvar::new(),
            failed: AtomicBool::new(false),
            control,
            next_id: AtomicU64::new(1),
            faults: CoreFaults::default(),
            aside: Mutex::new(None),
        }
    }

    /// Arms a fault at the core's end of this link (fault injection).
    pub fn arm(&self, fault: ipc_proto::control::ArmedFault) {
        self.faults.arm(fault);
    }

    /// An id for a request that may be sent more than once (to a process
    /// and to its successors): see [`Proxy::call_as`].
    pub fn new_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Option<Connected<P>>> {
        common::lock(&self.connected)
    }

    fn unavailable(&self) -> DeviceFailure {
        if self.failed.load(Ordering::SeqCst) {
            DeviceFailure::Failed(self.kind)
        } else {
            DeviceFailure::Restarting(self.kind)
        }
    }

    /// Waits until a process is connected and set up (`true`), or the
    /// supervisor gave up, `deadline` passed or `abort` says so (`false`).
    pub fn wait_for_process(&self, deadline: Instant, abort: &dyn Fn() -> bool) -> bool {
        self.wait_until(deadline, abort, |serving| serving.is_some())
    }

    /// The pid of the connected process, once it is set up.
    fn serving(connected: &Option<Connected<P>>) -> Option<u32> {
        connected
            .as_ref()
            .filter(|connected| connected.ready)
            .map(|connected| connected.process.pid)
    }

    /// Waits until `done` holds of the pid of the process that serves
    /// (`true`), or the supervisor gave up, `deadline` passed or `abort`
    /// says so (`false`).
    fn wait_until(
        &self,
        deadline: Instant,
        abort: &dyn Fn() -> bool,
        done: impl Fn(Option<u32>) -> bool,
    ) -> bool {
        let mut guard = self.lock();
        loop {
            if done(Self::serving(&guard)) {
                return true;
            }
            let now = Instant::now();
            if self.failed.load(Ordering::SeqCst) || now >= deadline || abort() {
                return false;
            }
            // Short slices, so that `abort` is looked at.
            let slice = (deadline - now).min(Duration::from_millis(20));
            guard = self
                .changed
                .wait_timeout(guard, slice)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Sends `request` and waits (the link's timeout) for the answer.
    /// Serialised: one request at a time per process.
    pub fn call(
        &self,
        request: Request<P::Request>,
        fds: &[BorrowedFd<'_>],
    ) -> Result<Answer<P::Reply>, DeviceFailure> {
        self.call_as(self.new_id(), request, fds)
    }

    /// [`Proxy::call`] as request `id`. A caller that got no answer (the
    /// process died) sends the same request with the same id to the
    /// successor, which answers a request it already applied from its state
    /// region instead of applying it twice.
    pub fn call_as(
        &self,
        id: u64,
        request: Request<P::Request>,
        fds: &[BorrowedFd<'_>],
    ) -> Result<Answer<P::Reply>, DeviceFailure> {
        self.call_locked(&mut self.lock(), id, request, fds)
    }

    fn call_locked(
        &self,
        guard: &mut MutexGuard<'_, Option<Connected<P>>>,
        id: u64,
        request: Request<P::Request>,
        fds: &[BorrowedFd<'_>],
    ) -> Result<Answer<P::Reply>, DeviceFailure> {
        if guard.is_none() {
            return Err(self.unavailable());
        }
        let at_reply = match self.faults.before_send(self.kind, &request) {
            BeforeSend::CloseLink => {
                Self::cut(self.kind, guard, "its link was closed (fault injection)");
                return Err(DeviceFailure::Died(self.kind));
            }
            BeforeSend::Send { at_reply } => at_reply,
        };
        let Some(connected) = guard.as_mut() else {
            return Err(self.unavailable());
        };
        let result = connected
            .client
            .call_as(id, request, fds, P::LINK.reply_timeout());
        let result = self.faults.at_reply(at_reply, result);
        match result {
            Ok(reply) => {
                if let Some(peer) = reply.peer_failed {
                    if let Some(&generation) = connected.peers.get(&peer) {
                        let _ = self.control.send(ControlMessage::PeerFailed {
                            peer,
                            generation,
                            reported_by: self.kind,
                        });
                    }
                }
                match reply.answer {
                    Answer::Refused(refusal) => Err(DeviceFailure::Refused(refusal)),
                    answer => Ok(answer),
                }
            }
            Err(ChannelError::HungUp) => {
                // Dead, or it closed the link and lingers: either way it is
                // done (killing a dead process is harmless), and its
                // watcher reports the exit the supervisor waits for.
                Self::cut(self.kind, guard, "it hung up");
                Err(DeviceFailure::Died(self.kind))
            }
            Err(error) => {
                let why = error.to_string();
                Self::cut(self.kind, guard, &why);
                Err(DeviceFailure::CutOff {
                    kind: self.kind,
                    why,
                })
            }
        }
    }

    fn cut(kind: ProcessKind, guard: &mut Option<Connected<P>>, why: &str) {
        if let Some(connected) = guard.take() {
            log::error!("cutting off the {}: {why}", kind.name());
            connected.process.kill();
        }
    }

    fn wrong_answer(&self, answer: &Answer<P::Reply>) -> DeviceFailure {
        let why = format!("it answered {answer:?}");
        Self::cut(self.kind, &mut self.lock(), &why);
        DeviceFailure::CutOff {
            kind: self.kind,
            why,
        }
    }

    /// A request whose answer is an acknowledgement.
    pub fn command(&self, request: P::Request) -> Result<(), DeviceFailure> {
        self.command_as(self.new_id(), request)
    }

    /// [`Proxy::command`] as request `id` (see [`Proxy::call_as`]).
    pub fn command_as(&self, id: u64, request: P::Request) -> Result<(), DeviceFailure> {
        match self.call_as(id, Request::Link(request), &[])? {
            Answer::Ack => Ok(()),
            other => Err(self.wrong_answer(&other)),
        }
    }

    /// A request whose answer is the link's reply (`fds` ride along).
    pub fn query_with(
        &self,
        request: P::Request,
        fds: &[BorrowedFd<'_>],
    ) -> Result<P::Reply, DeviceFailure> {
        match self.call(Request::Link(request), fds)? {
            Answer::Link(reply) => Ok(reply),
            other => Err(self.wrong_answer(&other)),
        }
    }

    /// A request whose answer is the link's reply.
    pub fn query(&self, request: P::Request) -> Result<P::Reply, DeviceFailure> {
        self.query_with(request, &[])
    }

    /// [`Proxy::query`] as request `id` (see [`Proxy::call_as`]).
    pub fn query_as(&self, id: u64, request: P::Request) -> Result<P::Reply, DeviceFailure> {
        match self.call_as(id, Request::Link(request), &[])? {
            Answer::Link(reply) => Ok(reply),
            other => Err(self.wrong_answer(&other)),
        }
    }

    /// A request with descriptors whose answer is an acknowledgement.
    pub fn command_with(
        &self,
        request: P::Request,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), DeviceFailure> {
        match self.call(Request::Link(request), fds)? {
            Answer::Ack => Ok(()),
            other => Err(self.wrong_answer(&other)),
        }
    }
}

impl<P: Protocol> Supervised for Proxy<P> {
    fn connect(
        &self,
        channel: Channel,
        process: Arc<ProcessHandle>,
        peers: HashMap<ProcessKind, u64>,
    ) {
        let mut guard = self.lock();
        *guard = Some(Connected {
            client: Client::new(channel),
            process,
            peers,
            ready: false,
        });
        self.failed.store(false, Ordering::SeqCst);
    }

    fn relink(
        &self,
        link: ipc_proto::Link,
        fd: BorrowedFd<'_>,
        generation: u64,
    ) -> Result<(), DeviceFailure> {
        let mut guard = self.lock();
        let request = Request::Control(ControlRequest::ReplaceLink(link));
        match self.call_locked(&mut guard, self.new_id(), request, &[fd])? {
            Answer::Ack => {
                let peer = link.peer_of(self.kind);
                if let (Some(connected), Some(peer)) = (guard.as_mut(), peer) {
                    connected.peers.insert(peer, generation);
                }
                Ok(())
            }
            other => {
                drop(guard);
                Err(self.wrong_answer(&other))
            }
        }
    }

    fn disconnect(&self) {
        *self.lock() = None;
    }

    fn stage(
        &self,
        channel: Channel,
        process: Arc<ProcessHandle>,
        peers: HashMap<ProcessKind, u64>,
    ) {
        let staged = Connected {
            client: Client::new(channel),
            process,
            peers,
            ready: false,
        };
        let serving = self.lock().replace(staged);
        *common::lock(&self.aside) = serving;
    }

    fn finish_stage(&self, keep: bool) {
        let aside = common::lock(&self.aside).take();
        let mut guard = self.lock();
        let dropped = if keep {
            if let Some(staged) = guard.as_mut() {
                staged.ready = true;
            }
            aside
        } else {
            std::mem::replace(&mut *guard, aside)
        };
        drop(guard);
        if let Some(dropped) = dropped {
            dropped.process.kill();
        }
        self.changed.notify_all();
    }

    fn mark_ready(&self) {
        if let Some(connected) = self.lock().as_mut() {
            connected.ready = true;
        }
        self.changed.notify_all();
    }

    fn set_failed(&self, failed: bool) {
        self.failed.store(failed, Ordering::SeqCst);
        self.changed.notify_all();
    }

    fn is_failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    fn serving_pid(&self) -> Option<u32> {
        Self::serving(&self.lock())
    }

    fn wait_for_successor(&self, pid: Option<u32>, until: Instant) {
        self.wait_until(until, &|| false, |serving| {
            serving.is_some_and(|serving| Some(serving) != pid)
        });
    }

    fn cut_off(&self, why: &str) {
        Self::cut(self.kind, &mut self.lock(), why);
    }

    fn control(
        &self,
        request: ControlRequest,
        fds: &[BorrowedFd<'_>],
    ) -> Result<Option<ControlReply>, DeviceFailure> {
        match self.call(Request::Control(request), fds)? {
            Answer::Ack => Ok(None),
            Answer::Control(reply) => Ok(Some(reply)),
            other => Err(self.wrong_answer(&other)),
        }
    }

    fn core_fault(&self) -> Option<ipc_proto::control::FaultRecord> {
        self.faults.armed()
    }

    fn clear_core_fault(&self) {
        self.faults.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc_proto::channel::{encode, Envelope};
    use ipc_proto::control::Reply;
    use ipc_proto::link::core_rtas::{
        CoreRtas, CpuSnapshot, PlatformRequest, Reply as RtasReply, Request as RtasRequest,
    };
    use std::sync::mpsc::{channel, Receiver};

    /// A proxy whose "process" is a thread of this test, speaking raw frames.
    fn fake(
        server: impl FnOnce(Channel) + Send + 'static,
    ) -> (Proxy<CoreRtas>, Receiver<ControlMessage>) {
        let (core_end, server_end) = Channel::pair().unwrap();
        std::thread::spawn(move || server(server_end));
        let (control, inbox) = channel();
        let proxy = Proxy::new(ProcessKind::RtasServer, control);
        let peers = HashMap::from([(ProcessKind::EventLog, 7)]);
        proxy.connect(core_end, Arc::new(ProcessHandle::of_this_test()), peers);
        (proxy, inbox)
    }

    fn call(proxy: &Proxy<CoreRtas>) -> Result<RtasReply, DeviceFailure> {
        proxy.query(RtasRequest::Call {
            caller: 0,
            args_address: 0x1000,
            cpus: CpuSnapshot::default(),
        })
    }

    fn done(id: u64, request: PlatformRequest) -> Vec<u8> {
        encode(&Envelope {
            id,
            body: Reply::new(Answer::Link(RtasReply::CallDone {
                request: Some(request),
            })),
        })
        .unwrap()
    }

    #[test]
    fn a_caller_that_found_a_process_gone_goes_on_when_its_successor_serves() {
        let (proxy, _inbox) = fake(|channel| {
            let _ = channel.recv_frame(None);
        });
        proxy.mark_ready();
        let gone = proxy.serving_pid();
        assert_eq!(gone, Some(0));
        // The same process still serves: the wait lasts until its end.
        let until = Instant::now() + Duration::from_millis(10);
        proxy.wait_for_successor(gone, until);
        assert!(Instant::now() >= until);
        let proxy = Arc::new(proxy);
        let waiter = {
            let proxy = Arc::clone(&proxy);
            let until = Instant::now() + Duration::from_secs(60);
            std::thread::spawn(move || {
                proxy.wait_for_successor(gone, until);
                (Instant::now() < until, proxy.serving_pid())
            })
        };
        proxy.disconnect();
        let (core_end, _server_end) = Channel::pair().unwrap();
        proxy.connect(
            core_end,
            Arc::new(ProcessHandle::of_thread(42, Vec::new())),
            HashMap::new(),
        );
        proxy.mark_ready();
        assert_eq!(waiter.join().unwrap(), (true, Some(42)));
    }

    #[test]
    fn garbage_truncated_invalid_and_wrong_replies_cut_the_process_off() {
        let valid = done(1, PlatformRequest::PowerOff);
        let wrong = encode(&Envelope {
            id: 1,
            body: Reply::<RtasReply>::new(Answer::Ack),
        })
        .unwrap();
        let replies: Vec<Vec<u8>> = vec![
            vec![0xff; 40],
            valid[..valid.len() - 3].to_vec(),
            [valid.clone(), vec![0]].concat(),
            done(
                1,
                PlatformRequest::StartCpu {
                    cpu: 999,
                    entry: 0,
                    r3: 0,
                },
            ),
            wrong,
        ];
        for reply in replies {
            let (proxy, _inbox) = fake(move |channel| {
                let _ = channel.recv_frame(None);
                let _ = channel.send_frame(&reply, &[]);
                let _ = channel.recv_frame(None);
            });
            assert!(matches!(call(&proxy), Err(DeviceFailure::CutOff { .. })));
            // Cut off: the caller is told to retry while a new process comes.
            assert_eq!(
                call(&proxy),
                Err(DeviceFailure::Restarting(ProcessKind::RtasServer))
            );
            // Once the supervisor gives up, requests fail for good.
            proxy.set_failed(true);
            assert_eq!(
                call(&proxy),
                Err(DeviceFailure::Failed(ProcessKind::RtasServer))
            );
        }
    }

    #[test]
    fn a_valid_reply_is_returned_and_stale_replies_are_skipped() {
        let (proxy, _inbox) = fake(|channel| {
            let _ = channel.recv_frame(None);
            for id in [0, 1] {
                channel
                    .send_frame(&done(id, PlatformRequest::Reboot), &[])
                    .unwrap();
            }
            let _ = channel.recv_frame(None);
        });
        assert_eq!(
            call(&proxy).unwrap(),
            RtasReply::CallDone {
                request: Some(PlatformRequest::Reboot)
            }
        );
    }

    #[test]
    fn a_silent_process_times_out_and_a_dead_one_fails_fast() {
        let timeout = ipc_proto::Link::CoreRtas.reply_timeout();
        let (proxy, _inbox) = fake(move |channel| {
            let _ = channel.recv_frame(None);
            std::thread::sleep(timeout + Duration::from_secs(1));
        });
        let started = std::time::Instant::now();
        assert!(matches!(call(&proxy), Err(DeviceFailure::CutOff { .. })));
        assert!(started.elapsed() < timeout + Duration::from_secs(1));

        let (proxy, _inbox) = fake(drop);
        assert_eq!(
            call(&proxy),
            Err(DeviceFailure::Died(ProcessKind::RtasServer))
        );
    }

    #[test]
    fn refusals_pass_through_and_blame_reaches_the_supervisor() {
        let (proxy, inbox) = fake(|channel| {
            let _ = channel.recv_frame(None);
            let refused = Reply::<RtasReply>::new(Answer::Refused(Refusal::Rejected {
                reason: "no".into(),
            }));
            channel
                .send(
                    &Envelope {
                        id: 1,
                        body: refused,
                    },
                    &[],
                )
                .unwrap();
            let _ = channel.recv_frame(None);
            let blaming = Reply {
                answer: Answer::Link(RtasReply::CallDone { request: None }),
                peer_failed: Some(ProcessKind::EventLog),
            };
            channel
                .send(
                    &Envelope {
                        id: 2,
                        body: blaming,
                    },
                    &[],
                )
                .unwrap();
            let _ = channel.recv_frame(None);
        });
        assert!(matches!(call(&proxy), Err(DeviceFailure::Refused(_))));
        assert_eq!(call(&proxy).unwrap(), RtasReply::CallDone { request: None });
        assert_eq!(
            inbox.try_recv().unwrap(),
            ControlMessage::PeerFailed {
                peer: ProcessKind::EventLog,
                generation: 7,
                reported_by: ProcessKind::RtasServer
            }
        );
    }
}
