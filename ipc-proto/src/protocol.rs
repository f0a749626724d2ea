//! What a link is: its request and reply types, their validation, and the
//! typed ends that use them.
//!
//! A [`Protocol`] names one [`Link`], its [`Protocol::Request`] and its
//! [`Protocol::Reply`]. A [`Client<P>`] can send only `P`'s requests and
//! returns only `P`'s replies, checked with their [`Message::validate`]
//! before the caller sees them; a server decodes and validates with
//! [`decode_request`]. Nothing is acted on before it is validated.

use crate::channel::{decode, no_descriptors, Channel, ChannelError, Envelope, Frame};
use crate::control::{Answer, ControlRequest, Refusal, Reply, Request};
use crate::hello::Hello;
use crate::Link;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;
use std::marker::PhantomData;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

/// A message of a link, checked by its receiver before it is acted on.
pub trait Message: Serialize + DeserializeOwned + Debug + Send + 'static {
    /// Checks the fields a peer could get wrong; `fds` is how many
    /// descriptors came with the message.
    fn validate(&self, fds: usize) -> Result<(), String>;
}

/// One link's protocol.
pub trait Protocol: 'static {
    /// The link.
    const LINK: Link;
    /// What the requester sends.
    type Request: Message;
    /// What the server answers with, besides the shared [`Answer`]s.
    type Reply: Message;
}

/// Declares a link's protocol: a unit type that names the link, its request
/// type and its reply type.
macro_rules! link_protocol {
    ($(#[$doc:meta])* $name:ident: $link:ident, $request:ty => $reply:ty) => {
        $(#[$doc])*
        pub struct $name;

        impl $crate::protocol::Protocol for $name {
            const LINK: $crate::Link = $crate::Link::$link;
            type Request = $request;
            type Reply = $reply;
        }
    };
}
pub(crate) use link_protocol;

/// A message no one sends: the reply type of a one-way link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NoReply {}

impl Message for NoReply {
    fn validate(&self, _: usize) -> Result<(), String> {
        match *self {}
    }
}

impl<R: Message> Message for Request<R> {
    fn validate(&self, fds: usize) -> Result<(), String> {
        match self {
            Request::Control(control) => control.validate(fds),
            Request::Link(request) => request.validate(fds),
        }
    }
}

impl<R: Message> Message for Reply<R> {
    fn validate(&self, fds: usize) -> Result<(), String> {
        no_descriptors(fds, "a reply")?;
        self.answer.validate(|reply| reply.validate(0))
    }
}

/// A request as received: decoded and validated.
#[derive(Debug)]
pub struct Incoming<R> {
    /// Its id, for the reply.
    pub id: u64,
    /// The request.
    pub request: Request<R>,
    /// The descriptors that came with it.
    pub fds: Vec<OwnedFd>,
}

/// A request that is refused before it is acted on.
#[derive(Debug, PartialEq, Eq)]
pub struct Unacceptable {
    /// The request's id (0 when the frame did not decode).
    pub id: u64,
    /// Why.
    pub refusal: Refusal,
}

/// Decodes and validates one request frame of link `P`.
pub fn decode_request<P: Protocol>(frame: Frame) -> Result<Incoming<P::Request>, Unacceptable> {
    let message = decode::<Request<P::Request>>(&frame.bytes).map_err(|error| Unacceptable {
        id: 0,
        refusal: Refusal::Malformed {
            reason: error.to_string(),
        },
    })?;
    if let Err(reason) = message.body.validate(frame.fds.len()) {
        return Err(Unacceptable {
            id: message.id,
            refusal: Refusal::Invalid { reason },
        });
    }
    Ok(Incoming {
        id: message.id,
        request: message.body,
        fds: frame.fds,
    })
}

/// The requesting end of link `P`: numbers requests and waits for the reply
/// with the same id, skipping stale replies (to requests that timed out).
#[derive(Debug)]
pub struct Client<P> {
    channel: Channel,
    next_id: u64,
    protocol: PhantomData<fn() -> P>,
}

impl<P: Protocol> Client<P> {
    /// Wraps the requesting end of `P`'s link.
    pub fn new(channel: Channel) -> Client<P> {
        Client {
            channel,
            next_id: 1,
            protocol: PhantomData,
        }
    }

    /// The channel, e.g. for the handshake.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Sends a request of the link and waits for its reply.
    pub fn request(&mut self, request: P::Request) -> Result<Reply<P::Reply>, ChannelError> {
        self.call(Request::Link(request), &[], P::LINK.reply_timeout())
    }

    /// Sends a control request (with the descriptor of a re-link).
    pub fn control(
        &mut self,
        request: ControlRequest,
        fds: &[BorrowedFd<'_>],
    ) -> Result<Reply<P::Reply>, ChannelError> {
        self.call(Request::Control(request), fds, P::LINK.reply_timeout())
    }

    /// Sends `request` with `fds` and waits up to `timeout` for its reply,
    /// which must decode and validate.
    pub fn call(
        &mut self,
        request: Request<P::Request>,
        fds: &[BorrowedFd<'_>],
        timeout: Duration,
    ) -> Result<Reply<P::Reply>, ChannelError> {
        let id = self.send(request, fds)?;
        await_reply::<P>(&self.channel, id, timeout)
    }

    /// [`Client::call`] as request `id`, which the caller chose: a request
    /// sent again to a restarted server keeps its id, so the server can tell
    /// a repeat from a new request.
    pub fn call_as(
        &mut self,
        id: u64,
        request: Request<P::Request>,
        fds: &[BorrowedFd<'_>],
        timeout: Duration,
    ) -> Result<Reply<P::Reply>, ChannelError> {
        self.channel.send(&Envelope { id, body: request }, fds)?;
        await_reply::<P>(&self.channel, id, timeout)
    }

    /// Sends without waiting: the one-way notify link, and the tests of
    /// hostile requesters.
    pub fn send(
        &mut self,
        request: Request<P::Request>,
        fds: &[BorrowedFd<'_>],
    ) -> Result<u64, ChannelError> {
        let id = self.next_id;
        self.next_id += 1;
        self.channel.send(&Envelope { id, body: request }, fds)?;
        Ok(id)
    }
}

/// Waits up to `timeout` for the reply to request `id` on the requesting end
/// of link `P`, skipping stale replies; the reply must decode and validate.
pub fn await_reply<P: Protocol>(
    channel: &Channel,
    id: u64,
    timeout: Duration,
) -> Result<Reply<P::Reply>, ChannelError> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ChannelError::Timeout(timeout));
        }
        let (reply, received_fds) = channel.recv::<Reply<P::Reply>>(Some(left))?;
        if reply.id != id {
            continue;
        }
        reply
            .body
            .validate(received_fds.len())
            .map_err(ChannelError::Invalid)?;
        return Ok(reply.body);
    }
}

/// Answers request `id` on a server's end of link `P`.
pub fn send_reply<P: Protocol>(
    channel: &Channel,
    id: u64,
    reply: &Reply<P::Reply>,
) -> Result<(), ChannelError> {
    channel.send(&Envelope { id, body: reply }, &[])
}

/// An [`Answer`] that refuses.
pub fn refused<R>(reason: impl Into<String>) -> Answer<R> {
    Answer::Refused(Refusal::Rejected {
        reason: reason.into(),
    })
}

impl Channel {
    /// Exchanges [`Hello`]s: sends ours, and checks that the peer's names the
    /// same version and link.
    pub fn handshake(&self, link: Link, timeout: Duration) -> Result<(), ChannelError> {
        self.send_hello(link)?;
        self.expect_hello(link, timeout)
    }

    /// The first half of a handshake. A process with several channels sends
    /// on all of them before it waits on any, so that no order of start-up
    /// can deadlock.
    pub fn send_hello(&self, link: Link) -> Result<(), ChannelError> {
        self.send(
            &Envelope {
                id: 0,
                body: Hello::ours(link),
            },
            &[],
        )
    }

    /// The second half of a handshake.
    pub fn expect_hello(&self, link: Link, timeout: Duration) -> Result<(), ChannelError> {
        let ours = Hello::ours(link);
        let (theirs, _fds) = self.recv::<Hello>(Some(timeout))?;
        if theirs.body != ours {
            return Err(ChannelError::Handshake {
                expected: ours,
                got: theirs.body,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::ControlReply;
    use crate::link::core_eventlog::{
        CoreEventLog, Reply as EventLogReply, Request as EventLogRequest,
    };
    use crate::PROTOCOL_VERSION;

    #[test]
    fn a_client_gets_its_links_reply_and_skips_stale_ones() {
        let (core, server) = Channel::pair().unwrap();
        let peer = std::thread::spawn(move || {
            let frame = server.recv_frame(None).unwrap();
            let incoming = decode_request::<CoreEventLog>(frame).unwrap();
            let id = incoming.id;
            assert_eq!(incoming.request, Request::Link(EventLogRequest::List));
            let stale = Reply::new(Answer::<EventLogReply>::Ack);
            send_reply::<CoreEventLog>(&server, id + 7, &stale).unwrap();
            let reply = Reply::new(Answer::Link(EventLogReply::Queued(vec![])));
            send_reply::<CoreEventLog>(&server, id, &reply).unwrap();
        });
        let mut client = Client::<CoreEventLog>::new(core);
        let reply = client.request(EventLogRequest::List).unwrap();
        assert_eq!(reply.answer, Answer::Link(EventLogReply::Queued(vec![])));
        peer.join().unwrap();
    }

    #[test]
    fn an_invalid_reply_is_an_error_before_the_caller_sees_it() {
        let (core, server) = Channel::pair().unwrap();
        std::thread::spawn(move || {
            let frame = server.recv_frame(None).unwrap();
            let id = decode_request::<CoreEventLog>(frame).unwrap().id;
            let reply = Reply::<EventLogReply>::new(Answer::Control(ControlReply::FaultSurvived {
                outcome: "x".repeat(10_000),
            }));
            send_reply::<CoreEventLog>(&server, id, &reply).unwrap();
        });
        let mut client = Client::<CoreEventLog>::new(core);
        assert!(matches!(
            client.request(EventLogRequest::Reset),
            Err(ChannelError::Invalid(_))
        ));
    }

    #[test]
    fn requests_are_refused_with_a_typed_reason() {
        let frame = |bytes: Vec<u8>| Frame { bytes, fds: vec![] };
        assert!(matches!(
            decode_request::<CoreEventLog>(frame(vec![9; 12])),
            Err(Unacceptable {
                id: 0,
                refusal: Refusal::Malformed { .. }
            })
        ));
        let relink = crate::channel::encode(&Envelope {
            id: 4,
            body: Request::<EventLogRequest>::Control(ControlRequest::ReplaceLink(
                Link::RtasEventLog,
            )),
        })
        .unwrap();
        // A re-link without its descriptor.
        assert!(matches!(
            decode_request::<CoreEventLog>(frame(relink)),
            Err(Unacceptable {
                id: 4,
                refusal: Refusal::Invalid { .. }
            })
        ));
    }

    #[test]
    fn handshake_checks_version_and_kind() {
        let (a, b) = Channel::pair().unwrap();
        let peer = std::thread::spawn(move || b.handshake(Link::CoreRtas, Duration::from_secs(1)));
        a.handshake(Link::CoreRtas, Duration::from_secs(1)).unwrap();
        peer.join().unwrap().unwrap();

        let (a, b) = Channel::pair().unwrap();
        b.send(
            &Envelope {
                id: 0,
                body: Hello {
                    version: PROTOCOL_VERSION + 1,
                    link: Link::CoreRtas,
                },
            },
            &[],
        )
        .unwrap();
        assert!(matches!(
            a.handshake(Link::CoreRtas, Duration::from_secs(1)),
            Err(ChannelError::Handshake { .. })
        ));
    }
}
