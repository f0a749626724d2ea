//! The links of a device process: their ends (handshaken at start, or
//! adopted when the core re-links a peer), requests to peers with the
//! link's timeout and blame for the peer that fails, the control
//! sub-protocol (re-link, fault arming), and the loop that serves the links
//! the process answers — the same for every kind.

use crate::process::{ProcessError, HANDSHAKE_TIMEOUT};
use crate::seccomp;
use crate::trace::TraceRing;
use ipc_proto::channel::{poll_briefly, Channel, ChannelError, Envelope, Frame, ADAPTIVE_POLL};
use ipc_proto::control::{Answer, ControlRequest, Refusal, Reply, Request};
use ipc_proto::protocol::{
    await_reply, decode_request, send_reply, Incoming, Protocol, Unacceptable,
};
use ipc_proto::{Link, ProcessKind};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};
use thiserror::Error;

/// One end of a link, and the next request id on it for requests that are
/// not made on behalf of another.
struct End {
    channel: Channel,
    next_id: u64,
    /// A replacement whose peer's hello has not been read yet: the first
    /// frame on it must be that hello. Adopting a link does not wait for
    /// the new peer, which the core may still be starting.
    awaits_hello: bool,
}

impl End {
    fn greeted(channel: Channel) -> End {
        End {
            channel,
            next_id: 1,
            awaits_hello: false,
        }
    }
}

/// A peer that could not be reached; the caller answers the guest "busy".
#[derive(Debug, Error)]
#[error("{0:?} is down")]
pub struct PeerDown(pub Link);

/// The ends of a process's links. A link without an end is a peer that is
/// down (it hung up, or failed this process) until the core hands over a
/// replacement.
pub struct Links {
    kind: ProcessKind,
    ends: BTreeMap<Link, End>,
    /// The peer that failed this process while it answered the current request.
    peer_failed: Option<ProcessKind>,
    /// Links replaced since the serving loop last looked.
    relinked: Vec<Link>,
    /// The id of the request being answered, and how many peer requests it
    /// made so far: a peer request's id derives from them, so that the same
    /// request sent again (after a restart) asks the peers with the same ids.
    serving: Option<(u64, u64)>,
    /// The state region failed to record a transition: the device ends.
    lost_state: Option<Box<dyn std::error::Error + Send + Sync>>,
    /// What happened inside the device, for the core's trace (while the
    /// core traces).
    trace: Option<crate::trace::TraceRing>,
    /// Faults armed at points, and the request they would spoil.
    #[cfg(feature = "fault-injection")]
    faults: crate::fault::Armed,
}

/// Peer requests one request may make, at most (ids derive from its id).
pub const PEER_REQUESTS_PER_REQUEST: u64 = 16;

impl Links {
    /// Takes the channels of `kind` (in the order of its links), installs
    /// its seccomp filter (allowing `write` to `writable` besides the log),
    /// and handshakes on all of them: hellos are sent on
    /// every link before any is awaited, so no start-up order deadlocks.
    /// Extra descriptors must be taken before. A peer that is down (several
    /// processes restart together) is simply not linked yet: the core hands
    /// over its link when it is back; one that does not answer in its link's
    /// time is blamed in the first reply.
    pub fn open(
        kind: ProcessKind,
        channels: Vec<Channel>,
        writable: &[RawFd],
        mode: seccomp::Mode,
    ) -> Result<Links, ProcessError> {
        let links = kind.links();
        seccomp::install(kind, writable, mode)?;
        let handshake = |link: Link| move |source| ProcessError::Handshake { link, source };
        let mut greeted = Vec::with_capacity(links.len());
        for (channel, &link) in channels.iter().zip(links) {
            match channel.send_hello(link) {
                Ok(()) => greeted.push(Ok(())),
                Err(error) if !link.touches_core() => greeted.push(Err(error)),
                Err(error) => return Err(handshake(link)(error)),
            }
        }
        let mut ends = BTreeMap::new();
        let mut peer_failed = None;
        for ((channel, &link), greeted) in channels.into_iter().zip(links).zip(greeted) {
            let timeout = match link.touches_core() {
                true => HANDSHAKE_TIMEOUT,
                false => link.reply_timeout(),
            };
            // A peer whose end is closed already (it is down, or this process
            // replaces another and is linked to its peers afterwards).
            match greeted.and_then(|()| channel.expect_hello(link, timeout)) {
                Ok(()) => {
                    ends.insert(link, End::greeted(channel));
                }
                Err(error) if !link.touches_core() => {
                    log::warn!(
                        "{link:?}: no peer yet ({error}); it joins when the core re-links it"
                    );
                    if matches!(error, ChannelError::Timeout(_)) {
                        peer_failed = link.peer_of(kind);
                    }
                }
                Err(error) => return Err(handshake(link)(error)),
            }
        }
        Ok(Links {
            kind,
            ends,
            peer_failed,
            relinked: Vec::new(),
            serving: None,
            lost_state: None,
            trace: None,
            #[cfg(feature = "fault-injection")]
            faults: crate::fault::Armed::default(),
        })
    }

    /// The kind of this process.
    pub fn kind(&self) -> ProcessKind {
        self.kind
    }

    /// The links this process answers on, that have an end, the core's first.
    fn served(&self) -> Vec<(Link, &Channel)> {
        self.kind
            .links()
            .iter()
            .filter(|link| link.server() == Some(self.kind))
            .filter_map(|link| Some((*link, &self.ends.get(link)?.channel)))
            .collect()
    }

    /// The ends whose other side is the core.
    pub fn core_channels(&self) -> impl Iterator<Item = &Channel> {
        self.ends
            .iter()
            .filter(|(link, _)| link.touches_core())
            .map(|(_, end)| &end.channel)
    }

    /// Asks the peer on link `P` and waits (the link's timeout) for its
    /// answer. A peer that is down, silent, or answers garbage is dropped
    /// until the core re-links it, and blamed in this process's reply.
    /// While a request is answered, the peer request's id derives from its
    /// id, so that a repeat of that request repeats the same peer requests.
    pub fn request<P: Protocol>(
        &mut self,
        request: P::Request,
    ) -> Result<Answer<P::Reply>, PeerDown> {
        let id = match &mut self.serving {
            Some((serving, made)) if *made < PEER_REQUESTS_PER_REQUEST => {
                *made += 1;
                serving
                    .wrapping_mul(PEER_REQUESTS_PER_REQUEST)
                    .wrapping_add(*made - 1)
            }
            _ => {
                let end = self.ends.get_mut(&P::LINK).ok_or(PeerDown(P::LINK))?;
                end.next_id += 1;
                end.next_id - 1
            }
        };
        self.request_as::<P>(id, request)
    }

    /// [`Links::request`] with the id the caller chose: the same id for the
    /// same request, whichever incarnation of this process sends it, so the
    /// peer can recognise a repeat.
    pub fn request_as<P: Protocol>(
        &mut self,
        id: u64,
        request: P::Request,
    ) -> Result<Answer<P::Reply>, PeerDown> {
        let traced =
            (self.tracing()).then(|| (ipc_proto::control::request_name(&request), Instant::now()));
        let result = self.exchange::<P>(id, request);
        if let Some((name, started)) = traced {
            let answer = match &result {
                Ok(Answer::Refused(refusal)) => format!("refused: {refusal}"),
                Ok(_) => "answered".to_string(),
                Err(down) => down.to_string(),
            };
            let peer = P::LINK.server().map_or("unknown", ProcessKind::name);
            let serving = self.serving.map_or(String::new(), |(id, _)| id.to_string());
            self.trace(
                ipc_proto::control::trace_point::PEER_REQUEST,
                &[
                    ("peer", peer.to_string()),
                    ("request", name),
                    ("id", id.to_string()),
                    ("for", serving),
                    ("answer", answer),
                    ("took-us", started.elapsed().as_micros().to_string()),
                ],
            );
        }
        result
    }

    /// Sends `request` on link `P` as `id` and awaits its reply.
    fn exchange<P: Protocol>(
        &mut self,
        id: u64,
        request: P::Request,
    ) -> Result<Answer<P::Reply>, PeerDown> {
        let link = P::LINK;
        self.greet(link, link.reply_timeout())?;
        let end = self.ends.get_mut(&link).ok_or(PeerDown(link))?;
        let sent = end.channel.send(
            &Envelope {
                id,
                body: Request::<P::Request>::Link(request),
            },
            &[],
        );
        let result = sent.and_then(|()| await_reply::<P>(&end.channel, id, link.reply_timeout()));
        match result {
            Ok(reply) => {
                // A peer of the peer failed: pass the blame on.
                if let Some(failed) = reply.peer_failed {
                    self.peer_failed = Some(failed);
                }
                Ok(reply.answer)
            }
            // A peer that is only slow (it may still be starting, or wait
            // on a third) is blamed, and kept: if the supervisor judges it
            // hung it kills it (and the link goes with it); if not — the
            // blame names a generation already gone — the next request
            // reaches it, and its late reply is skipped as stale. Dropping
            // it here would leave a link that nobody replaces.
            Err(error @ ChannelError::Timeout(_)) => {
                log::error!("{link:?}: the peer did not answer ({error}); it is reported");
                self.peer_failed = link.server();
                Err(PeerDown(link))
            }
            Err(error) => {
                log::error!(
                    "{link:?}: the peer failed ({error}); dropping it until it is replaced"
                );
                self.ends.remove(&link);
                self.peer_failed = link.server();
                Err(PeerDown(link))
            }
        }
    }

    /// Sends a one-way message on link `P` (the notify link) as `id`: the
    /// receiver drops an id it has seen.
    pub fn notify_as<P: Protocol>(&mut self, id: u64, message: P::Request) -> Result<(), PeerDown> {
        let link = P::LINK;
        let end = self.ends.get_mut(&link).ok_or(PeerDown(link))?;
        let envelope = Envelope {
            id,
            body: Request::<P::Request>::Link(message),
        };
        end.channel.send(&envelope, &[]).map_err(|error| {
            log::error!("{link:?}: cannot send: {error}");
            PeerDown(link)
        })
    }

    /// Answers request `id` on link `P`, with the blame gathered meanwhile.
    /// Failing to answer the core ends the process; failing to answer a peer
    /// means that peer died, which is not this process's to end.
    fn reply<P: Protocol>(
        &mut self,
        id: u64,
        answer: Answer<P::Reply>,
    ) -> Result<(), ChannelError> {
        let link = P::LINK;
        let reply = Reply {
            answer,
            peer_failed: self.peer_failed.take(),
        };
        let Some(end) = self.ends.get(&link) else {
            return Ok(());
        };
        #[cfg(feature = "fault-injection")]
        if crate::fault::spoil_reply(&mut self.faults, &end.channel) {
            return Ok(());
        }
        match send_reply::<P>(&end.channel, id, &reply) {
            Err(error) if link.touches_core() => Err(error),
            Err(error) => {
                log::warn!("{link:?}: cannot answer the peer: {error}");
                self.ends.remove(&link);
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    /// Carries out a control request, the same for every kind.
    fn control<R>(&mut self, request: ControlRequest, fds: Vec<OwnedFd>) -> Answer<R> {
        match request {
            ControlRequest::ReplaceLink(link) => match self.adopt(link, fds) {
                Ok(()) => Answer::Ack,
                Err(reason) => Answer::Refused(Refusal::Relink { link, reason }),
            },
            ControlRequest::ArmFault(fault) => arm_fault(self, fault),
            ControlRequest::ArmFaultPoint(armed) => arm_fault_point(self, armed),
            ControlRequest::QueryFaults => query_faults(self),
            ControlRequest::ClearFaults => clear_faults(self),
            ControlRequest::TakeTrace => Answer::Control(
                (self.trace.as_mut()).map_or_else(TraceRing::nothing, TraceRing::take),
            ),
        }
    }

    /// Takes over a replacement channel the core sent for `link`, and
    /// sends its hello; the peer's is read with its first frame
    /// ([`Links::greet`]), so that the core may hand the link over before
    /// the peer runs, and this process serves meanwhile.
    fn adopt(&mut self, link: Link, fds: Vec<OwnedFd>) -> Result<(), String> {
        if !self.kind.links().contains(&link) || link.touches_core() {
            return Err(format!(
                "{link:?} is not a peer link of the {}",
                self.kind.name()
            ));
        }
        let fd = fds
            .into_iter()
            .next()
            .ok_or("no descriptor with the new link")?;
        let channel = Channel::from_fd(fd);
        channel
            .send_hello(link)
            .map_err(|error| error.to_string())?;
        self.ends.insert(
            link,
            End {
                channel,
                next_id: 1,
                awaits_hello: true,
            },
        );
        self.relinked.push(link);
        Ok(())
    }

    /// Reads the hello of the new peer on `link` if it is still awaited,
    /// waiting up to `timeout` for it. A peer that sends anything else, or
    /// hangs up, is dropped and blamed; one that is silent for `timeout` is
    /// blamed and kept (see [`Links::request_as`]).
    fn greet(&mut self, link: Link, timeout: Duration) -> Result<(), PeerDown> {
        self.read_hello(link, timeout).map_err(|error| {
            self.blame_for_hello(link, error);
            PeerDown(link)
        })
    }

    /// [`Links::greet`] for a link whose hello may not have come yet (a
    /// link replaced after the serving loop polled): nothing to read is
    /// not a fault.
    fn greet_if_there(&mut self, link: Link) {
        match self.read_hello(link, Duration::ZERO) {
            Ok(()) | Err(ChannelError::Timeout(_)) => {}
            Err(error) => self.blame_for_hello(link, error),
        }
    }

    /// The new peer on `link` did not say hello (`error`): it is reported.
    fn blame_for_hello(&mut self, link: Link, error: ChannelError) {
        log::error!("{link:?}: the new peer did not say hello ({error}); it is reported");
        self.peer_failed = link.peer_of(self.kind);
    }

    /// Reads the awaited hello on `link`; a link whose peer sent anything
    /// else, or hung up, is dropped until the core replaces it.
    fn read_hello(&mut self, link: Link, timeout: Duration) -> Result<(), ChannelError> {
        let Some(end) = self.ends.get_mut(&link) else {
            return Err(ChannelError::HungUp);
        };
        if !end.awaits_hello {
            return Ok(());
        }
        match end.channel.expect_hello(link, timeout) {
            Ok(()) => {
                end.awaits_hello = false;
                log::info!("{link:?}: new peer connected");
                Ok(())
            }
            Err(error @ ChannelError::Timeout(_)) => Err(error),
            Err(error) => {
                self.ends.remove(&link);
                Err(error)
            }
        }
    }
}

#[cfg(feature = "fault-injection")]
fn arm_fault<R>(links: &mut Links, fault: ipc_proto::control::Fault) -> Answer<R> {
    let outcome = crate::fault::commit(fault, links);
    Answer::Control(ipc_proto::control::ControlReply::FaultSurvived { outcome })
}

#[cfg(not(feature = "fault-injection"))]
fn arm_fault<R>(_: &mut Links, fault: ipc_proto::control::Fault) -> Answer<R> {
    log::warn!("refused to commit {fault:?}: this build has no fault injection");
    Answer::Refused(Refusal::FaultInjectionNotBuilt)
}

#[cfg(feature = "fault-injection")]
fn arm_fault_point<R>(links: &mut Links, armed: ipc_proto::control::ArmedFault) -> Answer<R> {
    log::warn!("arming {armed:?} as asked");
    links.faults.arm(armed);
    Answer::Ack
}

#[cfg(feature = "fault-injection")]
fn query_faults<R>(links: &mut Links) -> Answer<R> {
    Answer::Control(ipc_proto::control::ControlReply::Faults {
        armed: links.faults.armed().cloned(),
        pending: links.faults.pending(),
    })
}

#[cfg(feature = "fault-injection")]
fn clear_faults<R>(links: &mut Links) -> Answer<R> {
    if let Some(record) = links.faults.clear() {
        log::info!("cleared {record:?} as asked");
    }
    for pending in links.faults.clear_pending() {
        log::info!("cancelled {pending:?} as asked");
    }
    Answer::Ack
}

#[cfg(not(feature = "fault-injection"))]
fn query_faults<R>(_: &mut Links) -> Answer<R> {
    Answer::Refused(Refusal::FaultInjectionNotBuilt)
}

#[cfg(not(feature = "fault-injection"))]
fn clear_faults<R>(_: &mut Links) -> Answer<R> {
    Answer::Refused(Refusal::FaultInjectionNotBuilt)
}

#[cfg(not(feature = "fault-injection"))]
fn arm_fault_point<R>(_: &mut Links, armed: ipc_proto::control::ArmedFault) -> Answer<R> {
    log::warn!("refused to arm {armed:?}: this build has no fault injection");
    Answer::Refused(Refusal::FaultInjectionNotBuilt)
}

impl Links {
    /// Records a transition in the state region through `record`; if it
    /// cannot be recorded, the device's memory is ahead of the region: it
    /// answers nothing more and ends once back in [`serve`]. `false` then.
    pub fn record<E>(&mut self, record: impl FnOnce() -> Result<(), E>) -> bool
    where
        E: std::error::Error + From<crate::state::StateError> + Send + Sync + 'static,
    {
        #[cfg(feature = "fault-injection")]
        let recorded = match self.state_fails() {
            true => Err(E::from(crate::state::StateError::Injected)),
            false => record(),
        };
        #[cfg(not(feature = "fault-injection"))]
        let recorded = record();
        match recorded {
            Ok(()) => true,
            // Logged when the device ends, by its entry.
            Err(error) => {
                self.lost_state.get_or_insert(Box::new(error));
                false
            }
        }
    }

    /// Records trace point `point` (see [`crate::trace`]), if tracing.
    pub fn trace(&mut self, point: &'static str, fields: &[(&'static str, String)]) {
        if let Some(ring) = &mut self.trace {
            ring.record(point, fields);
        }
    }

    /// Whether the device records its trace points.
    pub fn tracing(&self) -> bool {
        self.trace.is_some()
    }

    /// Records trace points from now on, if `on` (`--trace on`).
    pub fn with_trace(mut self, on: bool) -> Links {
        self.trace = on.then(Default::default);
        self
    }

    /// Whether a transition could not be recorded.
    pub fn state_lost(&self) -> bool {
        self.lost_state.is_some()
    }

    /// The request being answered passes `point`: a fault armed there fires
    /// (only in builds with fault injection; elsewhere this is nothing).
    #[cfg(feature = "fault-injection")]
    pub fn fault_point(&mut self, point: ipc_proto::control::FaultPoint) {
        if let Some(action) = self.faults.fire(point) {
            crate::fault::act(action, self);
        }
    }

    /// The request being answered passes `point` (this build has no fault injection).
    #[cfg(not(feature = "fault-injection"))]
    #[inline(always)]
    pub fn fault_point(&mut self, _: ipc_proto::control::FaultPoint) {}

    /// Closes the link the current request came on (fault injection).
    #[cfg(feature = "fault-injection")]
    pub(crate) fn close_link(&mut self, link: Link) {
        self.ends.remove(&link);
    }

    /// The faults armed at points.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn faults_mut(&mut self) -> &mut crate::fault::Armed {
        &mut self.faults
    }

    /// Sends a reply on link `P` to request `id`, asked or not (a lie).
    #[cfg(feature = "fault-injection")]
    pub(crate) fn stray_reply<P: Protocol>(&mut self, id: u64, answer: Answer<P::Reply>) -> bool {
        self.reply::<P>(id, answer).is_ok()
    }
}

/// A device process's own logic.
pub trait Device {
    /// Handles what arrived on served link `link` — a frame, or the error
    /// that stands for a bad one — usually with [`answer`] and the link's
    /// protocol.
    fn on_frame(
        &mut self,
        links: &mut Links,
        link: Link,
        frame: Result<Frame, ChannelError>,
    ) -> Result<(), ChannelError>;

    /// A new peer took over `link`.
    fn relinked(&mut self, _links: &mut Links, _link: Link) {}
}

/// Decodes and validates one request of link `P`, carries out a control
/// request, hands a link request (and its id) to `handle`, and answers. A frame that does
/// not decode or validate is refused and the process goes on.
pub fn answer<P: Protocol>(
    links: &mut Links,
    frame: Result<Frame, ChannelError>,
    handle: impl FnOnce(&mut Links, u64, P::Request, Vec<OwnedFd>) -> Answer<P::Reply>,
) -> Result<(), ChannelError> {
    let decoded = frame
        .map_err(|error| Unacceptable {
            id: 0,
            refusal: Refusal::Malformed {
                reason: error.to_string(),
            },
        })
        .and_then(decode_request::<P>);
    let (id, answer) = match decoded {
        Ok(Incoming {
            id,
            request: Request::Control(request),
            fds,
        }) => (id, links.control(request, fds)),
        Ok(Incoming {
            id,
            request: Request::Link(request),
            fds,
        }) => {
            links.serving = Some((id, 0));
            #[cfg(feature = "fault-injection")]
            links
                .faults
                .serving(P::LINK, ipc_proto::control::request_name(&request));
            links.fault_point(ipc_proto::control::FaultPoint::Received);
            let answer = handle(links, id, request, fds);
            if links.state_lost() {
                // Not recorded: no answer, and the device ends.
                return Ok(());
            }
            links.fault_point(ipc_proto::control::FaultPoint::Replying);
            links.serving = None;
            (id, answer)
        }
        Err(Unacceptable { id, refusal }) => {
            log::warn!("{:?}: refused a request: {refusal}", P::LINK);
            (id, Answer::Refused(refusal))
        }
    };
    links.reply::<P>(id, answer)
}

/// Serves until the core hangs up. A peer (not the core) that hangs up is
/// dropped until the core hands over a replacement.
pub fn serve(device: &mut impl Device, links: &mut Links) -> Result<(), ProcessError> {
    loop {
        let ready: Vec<Link> = {
            let served = links.served();
            let mut fds: Vec<PollFd> = served
                .iter()
                .map(|(_, channel)| PollFd::new(channel.as_fd(), PollFlags::POLLIN))
                .collect();
            // Right after a request the next one often follows (a guest's
            // burst of calls): it is polled for briefly before sleeping.
            if !poll_briefly(&mut fds, ADAPTIVE_POLL).map_err(ProcessError::Poll)? {
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(errno) => return Err(ProcessError::Poll(errno)),
                }
            }
            served
                .iter()
                .zip(&fds)
                .filter(|(_, fd)| fd.revents().is_some_and(|r| !r.is_empty()))
                .map(|((link, _), _)| *link)
                .collect()
        };
        for link in ready {
            let Some(end) = links.ends.get(&link) else {
                continue;
            };
            if end.awaits_hello {
                links.greet_if_there(link);
                continue;
            }
            match end.channel.recv_frame(Some(Duration::ZERO)) {
                Err(ChannelError::HungUp) if link.touches_core() => {
                    log::info!("the core hung up; exiting");
                    return Ok(());
                }
                // A peer that ends: the VM ends, or the core restarts it
                // (and says so); neither is this process's to warn of.
                Err(ChannelError::HungUp) => {
                    log::info!("{link:?}: the peer hung up");
                    links.ends.remove(&link);
                }
                Err(ChannelError::Timeout(_)) => {}
                frame => match device.on_frame(links, link, frame) {
                    Ok(()) => {}
                    // While it answered: the core is gone all the same.
                    Err(ChannelError::HungUp) => {
                        log::info!("the core hung up; exiting");
                        return Ok(());
                    }
                    Err(error) => return Err(ProcessError::Core(error)),
                },
            }
            for link in std::mem::take(&mut links.relinked) {
                device.relinked(links, link);
            }
            if let Some(error) = links.lost_state.take() {
                return Err(ProcessError::LostState(error));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hotplug controller's links, opened (no filter) against the
    /// test's ends, each peer's hello already sent.
    fn opened_controller() -> (Links, Vec<Channel>) {
        let kind = ProcessKind::HotplugController;
        let (ours, theirs): (Vec<Channel>, Vec<Channel>) = kind
            .links()
            .iter()
            .map(|_| Channel::pair().unwrap())
            .unzip();
        for (theirs, &link) in theirs.iter().zip(kind.links()) {
            theirs.send_hello(link).unwrap();
        }
        let links = Links::open(kind, ours, &[], seccomp::Mode::Off).unwrap();
        (links, theirs)
    }

    /// The core hands `links` a new end of `link`: its answer, and the
    /// new peer's end.
    fn replace(links: &mut Links, link: Link) -> (Answer<()>, Channel) {
        let (mine, new_peer) = Channel::pair().unwrap();
        let answer = links.control(
            ControlRequest::ReplaceLink(link),
            vec![mine.as_fd().try_clone_to_owned().unwrap()],
        );
        (answer, new_peer)
    }

    #[test]
    fn a_replaced_link_is_adopted_at_once_and_its_hello_read_with_its_first_frame() {
        let (mut links, _theirs) = opened_controller();
        let link = Link::HotplugEventLog;
        // The new peer is not running yet: adopting does not wait for it.
        let (answer, new_peer) = replace(&mut links, link);
        assert!(matches!(answer, Answer::Ack), "{answer:?}");
        assert!(links.ends[&link].awaits_hello);
        // Nothing there yet: not a fault, nothing blamed.
        links.greet_if_there(link);
        assert!(links.ends[&link].awaits_hello);
        assert_eq!(links.peer_failed, None);
        // The peer runs: its hello is read, ours was waiting for it.
        new_peer.handshake(link, Duration::from_secs(1)).unwrap();
        links.greet(link, Duration::from_secs(1)).unwrap();
        assert!(!links.ends[&link].awaits_hello);
        assert_eq!(links.peer_failed, None);
    }

    #[test]
    fn a_new_peer_that_does_not_say_hello_is_dropped_and_blamed() {
        let (mut links, _theirs) = opened_controller();
        let link = Link::HotplugEventLog;
        let (_, new_peer) = replace(&mut links, link);
        // Silent: blamed, and kept (the supervisor judges it).
        assert!(links.greet(link, Duration::ZERO).is_err());
        assert_eq!(links.peer_failed.take(), Some(ProcessKind::EventLog));
        assert!(links.ends.contains_key(&link));
        // Anything but a hello: dropped until the core replaces it.
        new_peer.send_frame(b"not a hello", &[]).unwrap();
        assert!(links.greet(link, Duration::from_secs(1)).is_err());
        assert_eq!(links.peer_failed, Some(ProcessKind::EventLog));
        assert!(!links.ends.contains_key(&link));
        // A link the controller does not have, or one of the core's, is refused.
        let (refused, _) = replace(&mut links, Link::CoreHotplug);
        assert!(
            matches!(refused, Answer::Refused(Refusal::Relink { .. })),
            "{refused:?}"
        );
    }
}
