//! One message per SOCK_SEQPACKET packet, file descriptors passed beside it.
//!
//! Decoding is total: a frame larger than [`MAX_FRAME`], a frame that does not
//! decode, a frame with trailing bytes or with more than [`MAX_FDS`] file
//! descriptors is an [`ChannelError`], never a panic, and never an allocation
//! larger than the frame.

use crate::hello::Hello;
use bincode::config::{Configuration, Fixint, Limit, LittleEndian};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};
use thiserror::Error;

/// The largest frame either side sends or accepts.
pub const MAX_FRAME: usize = 64 * 1024;

/// The most file descriptors one message may carry.
pub const MAX_FDS: usize = 64;

/// How long a waiter polls, giving its CPU away between polls, before it
/// sleeps, once there has been traffic: a message that arrives meanwhile
/// needs no wake-up of a sleeping thread, which on a virtual machine is a
/// cross-CPU interrupt, and costs more than the rest of the hop.
pub const ADAPTIVE_POLL: Duration = Duration::from_micros(100);

/// Polls `fds` without sleeping for up to `window`, yielding the CPU between
/// polls (a peer that must run to answer gets it). Whether one is ready.
pub fn poll_briefly(fds: &mut [PollFd<'_>], window: Duration) -> Result<bool, Errno> {
    let deadline = Instant::now() + window;
    loop {
        match poll(fds, PollTimeout::ZERO) {
            Ok(0) | Err(Errno::EINTR) => {}
            Ok(_) => return Ok(true),
            Err(errno) => return Err(errno),
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::yield_now();
    }
}

type WireConfig = Configuration<LittleEndian, Fixint, Limit<MAX_FRAME>>;

const fn wire_config() -> WireConfig {
    bincode::config::standard()
        .with_fixed_int_encoding()
        .with_limit::<MAX_FRAME>()
}

/// Every message travels in an envelope that names its request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// Chosen by the requester; a reply carries the id of its request.
    pub id: u64,
    /// The message.
    pub body: T,
}

/// What can go wrong on a channel.
#[derive(Debug, Error)]
pub enum ChannelError {
    /// The peer closed its end (or died).
    #[error("the peer hung up")]
    HungUp,
    /// No message arrived in time.
    #[error("no message within {0:?}")]
    Timeout(Duration),
    /// The frame was larger than [`MAX_FRAME`] and was cut.
    #[error("frame larger than {MAX_FRAME} bytes")]
    FrameTooLarge,
    /// More file descriptors than [`MAX_FDS`], or the kernel dropped some.
    #[error("too many file descriptors with one message")]
    TooManyFds,
    /// The bytes are not a message of the expected type.
    #[error("malformed frame of {len} bytes: {reason}")]
    Malformed {
        /// Frame length.
        len: usize,
        /// What the decoder said.
        reason: String,
    },
    /// The frame decoded but left bytes over.
    #[error("frame of {len} bytes has {extra} trailing bytes")]
    TrailingBytes {
        /// Frame length.
        len: usize,
        /// Bytes left after the message.
        extra: usize,
    },
    /// A message too large to send.
    #[error("message does not encode within {MAX_FRAME} bytes: {0}")]
    Encode(String),
    /// The peer speaks another protocol version or is another kind of process.
    #[error("handshake failed: expected {expected:?}, got {got:?}")]
    Handshake {
        /// What we expected.
        expected: Hello,
        /// What the peer sent.
        got: Hello,
    },
    /// The message decoded but a field is out of range.
    #[error("invalid message: {0}")]
    Invalid(String),
    /// A system call on the socket failed.
    #[error("socket error")]
    Io(#[source] std::io::Error),
}

impl From<Errno> for ChannelError {
    fn from(errno: Errno) -> Self {
        ChannelError::Io(std::io::Error::from(errno))
    }
}

/// Encodes a message as the bytes of one frame.
pub fn encode<T: Serialize>(message: &Envelope<T>) -> Result<Vec<u8>, ChannelError> {
    bincode::serde::encode_to_vec(message, wire_config())
        .map_err(|error| ChannelError::Encode(error.to_string()))
}

/// Decodes one frame, which must hold exactly one message.
pub fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<Envelope<T>, ChannelError> {
    let (message, used) =
        bincode::serde::decode_from_slice(frame, wire_config()).map_err(|error| {
            ChannelError::Malformed {
                len: frame.len(),
                reason: error.to_string(),
            }
        })?;
    if used != frame.len() {
        return Err(ChannelError::TrailingBytes {
            len: frame.len(),
            extra: frame.len() - used,
        });
    }
    Ok(message)
}

/// One end of a SOCK_SEQPACKET socketpair.
#[derive(Debug)]
pub struct Channel {
    socket: OwnedFd,
}

/// A frame as received: its bytes and the descriptors that came with it.
pub struct Frame {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// The descriptors, in the order they were sent.
    pub fds: Vec<OwnedFd>,
}

impl Channel {
    /// A connected pair; both ends are close-on-exec.
    pub fn pair() -> Result<(Channel, Channel), ChannelError> {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        Ok((Channel { socket: a }, Channel { socket: b }))
    }

    /// Wraps a socket inherited from the spawner.
    pub fn from_fd(socket: OwnedFd) -> Channel {
        Channel { socket }
    }

    /// Sends one frame.
    pub fn send_frame(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), ChannelError> {
        if bytes.len() > MAX_FRAME {
            return Err(ChannelError::FrameTooLarge);
        }
        if fds.len() > MAX_FDS {
            return Err(ChannelError::TooManyFds);
        }
        let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
        let rights = [ControlMessage::ScmRights(&raw)];
        let control: &[ControlMessage] = if raw.is_empty() { &[] } else { &rights };
        loop {
            match sendmsg::<()>(
                self.socket.as_raw_fd(),
                &[IoSlice::new(bytes)],
                control,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(Errno::EPIPE | Errno::ECONNRESET) => return Err(ChannelError::HungUp),
                Err(errno) => return Err(errno.into()),
            }
        }
    }

    /// Sends one message with its descriptors.
    pub fn send<T: Serialize>(
        &self,
        message: &Envelope<T>,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ChannelError> {
        self.send_frame(&encode(message)?, fds)
    }

    /// Waits for the next frame; `None` waits forever.
    pub fn recv_frame(&self, timeout: Option<Duration>) -> Result<Frame, ChannelError> {
        if let Some(timeout) = timeout {
            self.wait_readable(timeout)?;
        }
        let mut bytes = vec![0u8; MAX_FRAME];
        let mut control = nix::cmsg_space!([RawFd; MAX_FDS]);
        let (len, flags, fds) = loop {
            let mut iov = [IoSliceMut::new(&mut bytes)];
            match recvmsg::<()>(
                self.socket.as_raw_fd(),
                &mut iov,
                Some(&mut control),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(message) => {
                    let mut fds = Vec::new();
                    for cmsg in message.cmsgs()? {
                        if let ControlMessageOwned::ScmRights(received) = cmsg {
                            // SAFETY: the kernel just installed these descriptors for us.
                            fds.extend(
                                received
                                    .into_iter()
                                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                            );
                        }
                    }
                    break (message.bytes, message.flags, fds);
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::ECONNRESET) => return Err(ChannelError::HungUp),
                Err(errno) => return Err(errno.into()),
            }
        };
        if flags.contains(MsgFlags::MSG_TRUNC) {
            return Err(ChannelError::FrameTooLarge);
        }
        if flags.contains(MsgFlags::MSG_CTRUNC) || fds.len() > MAX_FDS {
            return Err(ChannelError::TooManyFds);
        }
        if len == 0 && fds.is_empty() {
            // SOCK_SEQPACKET reports the peer's close as a zero-length read,
            // but a peer can also send an empty packet: tell them apart.
            return Err(if self.peer_closed()? {
                ChannelError::HungUp
            } else {
                ChannelError::Malformed {
                    len: 0,
                    reason: "empty frame".into(),
                }
            });
        }
        bytes.truncate(len);
        Ok(Frame { bytes, fds })
    }

    /// Waits for the next message and decodes it.
    pub fn recv<T: DeserializeOwned>(
        &self,
        timeout: Option<Duration>,
    ) -> Result<(Envelope<T>, Vec<OwnedFd>), ChannelError> {
        let frame = self.recv_frame(timeout)?;
        Ok((decode(&frame.bytes)?, frame.fds))
    }

    fn peer_closed(&self) -> Result<bool, ChannelError> {
        let mut fds = [PollFd::new(self.socket.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::ZERO)?;
        let events = fds[0].revents().unwrap_or(PollFlags::empty());
        Ok(events.intersects(PollFlags::POLLHUP | PollFlags::POLLERR))
    }

    fn wait_readable(&self, timeout: Duration) -> Result<(), ChannelError> {
        let deadline = Instant::now() + timeout;
        let mut fds = [PollFd::new(self.socket.as_fd(), PollFlags::POLLIN)];
        if poll_briefly(&mut fds, ADAPTIVE_POLL.min(timeout))? {
            return Ok(());
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let millis =
                u16::try_from(left.as_millis().min(u128::from(u16::MAX))).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.socket.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(millis)) {
                Ok(0) if left.is_zero() => return Err(ChannelError::Timeout(timeout)),
                Ok(0) => continue,
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(errno) => return Err(errno.into()),
            }
        }
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

/// Refuses descriptors with a message that does not take any.
pub fn no_descriptors(fds: usize, what: &str) -> Result<(), String> {
    match fds {
        0 => Ok(()),
        _ => Err(format!("{fds} descriptors with {what}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Message {
        Ping(u32),
        Text(String),
        List(Vec<u64>),
    }

    #[test]
    fn messages_round_trip_with_descriptors() {
        let (a, b) = Channel::pair().unwrap();
        let mut file = std::fs::File::from(
            nix::sys::memfd::memfd_create("t", nix::sys::memfd::MFdFlags::empty()).unwrap(),
        );
        file.write_all(b"shared").unwrap();
        a.send(
            &Envelope {
                id: 7,
                body: Message::Text("hi".into()),
            },
            &[file.as_fd()],
        )
        .unwrap();
        let (message, fds) = b.recv::<Message>(Some(Duration::from_secs(1))).unwrap();
        assert_eq!(message.id, 7);
        assert_eq!(message.body, Message::Text("hi".into()));
        let mut received = std::fs::File::from(fds.into_iter().next().unwrap());
        received.rewind().unwrap();
        let mut text = String::new();
        received.read_to_string(&mut text).unwrap();
        assert_eq!(text, "shared");
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        // Unknown variant, truncated, trailing bytes, absurd lengths.
        assert!(matches!(
            decode::<Message>(&[0; 3]),
            Err(ChannelError::Malformed { .. })
        ));
        let good = encode(&Envelope {
            id: 1,
            body: Message::Ping(5),
        })
        .unwrap();
        for cut in 0..good.len() {
            assert!(decode::<Message>(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(
            decode::<Message>(&long),
            Err(ChannelError::TrailingBytes { extra: 1, .. })
        ));
        let mut bad_variant = good.clone();
        bad_variant[8] = 99;
        assert!(decode::<Message>(&bad_variant).is_err());
        // A list claiming 2^60 elements must not allocate them.
        let mut huge = encode(&Envelope {
            id: 1,
            body: Message::List(vec![]),
        })
        .unwrap();
        let len_at = huge.len() - 8;
        huge[len_at..].copy_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(decode::<Message>(&huge).is_err());
    }

    #[test]
    fn random_frames_never_panic() {
        // A small deterministic generator: no extra dependency for a fuzz-style loop.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 64) as usize;
            let bytes: Vec<u8> = (0..len).map(|i| (state >> (i % 8 * 8)) as u8).collect();
            let _ = decode::<Message>(&bytes);
        }
    }

    #[test]
    fn oversized_frames_are_refused_on_both_sides() {
        let (a, b) = Channel::pair().unwrap();
        assert!(matches!(
            a.send_frame(&vec![0; MAX_FRAME + 1], &[]),
            Err(ChannelError::FrameTooLarge)
        ));
        // Bypass send_frame's check to make the receiver see a cut frame.
        nix::sys::socket::send(
            a.as_fd().as_raw_fd(),
            &vec![0; MAX_FRAME + 10],
            MsgFlags::empty(),
        )
        .unwrap();
        assert!(matches!(
            b.recv_frame(Some(Duration::from_secs(1))),
            Err(ChannelError::FrameTooLarge)
        ));
    }

    #[test]
    fn an_empty_frame_is_malformed_not_a_hang_up() {
        let (a, b) = Channel::pair().unwrap();
        a.send_frame(&[], &[]).unwrap();
        assert!(matches!(
            b.recv_frame(Some(Duration::from_secs(1))),
            Err(ChannelError::Malformed { len: 0, .. })
        ));
        a.send_frame(b"x", &[]).unwrap();
        assert_eq!(b.recv_frame(None).unwrap().bytes, b"x");
    }

    #[test]
    fn hang_up_and_timeout_are_reported() {
        let (a, b) = Channel::pair().unwrap();
        assert!(matches!(
            b.recv_frame(Some(Duration::from_millis(10))),
            Err(ChannelError::Timeout(_))
        ));
        drop(a);
        assert!(matches!(b.recv_frame(None), Err(ChannelError::HungUp)));
        assert!(matches!(b.send_frame(b"x", &[]), Err(ChannelError::HungUp)));
    }

    #[test]
    fn a_brief_poll_sees_what_is_queued_and_gives_up_after_its_window() {
        let (a, b) = Channel::pair().unwrap();
        let mut fds = [PollFd::new(b.as_fd(), PollFlags::POLLIN)];
        let started = Instant::now();
        assert!(!poll_briefly(&mut fds, Duration::from_millis(2)).unwrap());
        assert!(started.elapsed() >= Duration::from_millis(2));
        a.send_frame(b"x", &[]).unwrap();
        assert!(poll_briefly(&mut fds, Duration::ZERO).unwrap());
        // A message that arrives while it polls is seen without a sleep.
        let (c, d) = Channel::pair().unwrap();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1));
            c.send_frame(b"y", &[]).unwrap();
        });
        let mut fds = [PollFd::new(d.as_fd(), PollFlags::POLLIN)];
        assert!(poll_briefly(&mut fds, Duration::from_secs(10)).unwrap());
        sender.join().unwrap();
        assert_eq!(d.recv_frame(None).unwrap().bytes, b"y");
    }
}
