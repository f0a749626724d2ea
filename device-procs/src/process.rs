//! What every device process does around its own logic: take the channels
//! the core handed it, handshake on all of them, and serve requests from
//! several channels in one loop.

use ipc_proto::channel::{decode, Channel, ChannelError, Envelope, Frame};
use ipc_proto::{Link, ProcessKind, FIRST_CHANNEL_FD};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{getsockopt, sockopt, SockType};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// How long peers have to answer the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a device process waits for a peer's reply.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(5);

/// Takes descriptor `fd`, inherited from the core, checking it is a
/// SOCK_SEQPACKET socket.
fn take_socket(fd: RawFd) -> Result<Channel, String> {
    // SAFETY: only inspected here; ownership is taken below once it is known to be a socket.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    match getsockopt(&borrowed, sockopt::SockType) {
        Ok(SockType::SeqPacket) => {}
        other => {
            return Err(format!(
                "descriptor {fd} is not a SOCK_SEQPACKET socket ({other:?})"
            ))
        }
    }
    // SAFETY: fd is an open socket the core handed to this process alone.
    Ok(unsafe { Channel::from_raw_fd(fd) })
}

/// Takes an extra descriptor (after the channels) of any type.
///
/// # Safety
/// The core must have passed descriptor `fd` to this process for this use.
pub unsafe fn take_fd(fd: RawFd) -> Result<OwnedFd, String> {
    // SAFETY: only inspected until ownership is taken below.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    if nix::fcntl::fcntl(borrowed, nix::fcntl::FcntlArg::F_GETFD).is_err() {
        return Err(format!("descriptor {fd} is not open"));
    }
    // SAFETY: open (checked above) and ours by the caller's promise.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Takes the channels of `kind`, installs its seccomp filter, and handshakes
/// on all of them: hellos are sent on every link before any is awaited, so no
/// start-up order deadlocks. Extra descriptors must be taken before.
pub fn open_links(kind: ProcessKind) -> Result<Vec<Channel>, String> {
    let links = kind.links();
    let channels = (0..links.len())
        .map(|i| take_socket(FIRST_CHANNEL_FD + i as RawFd))
        .collect::<Result<Vec<_>, _>>()?;
    crate::seccomp::install(kind, seccomp_mode())?;
    for (channel, &link) in channels.iter().zip(links) {
        channel
            .send_hello(link)
            .map_err(|error| format!("{link:?}: {error}"))?;
    }
    for (channel, &link) in channels.iter().zip(links) {
        channel
            .expect_hello(link, HANDSHAKE_TIMEOUT)
            .map_err(|error| format!("{link:?}: {error}"))?;
    }
    Ok(channels)
}

/// What a device process serves: the links that send it requests.
pub trait Server {
    /// The channels to watch now, the core's first.
    fn watched(&self) -> Vec<(&Channel, Link)>;
    /// Handles what arrived on `link` (a frame, or the error that stands
    /// for a bad one).
    fn handle(
        &mut self,
        link: Link,
        frame: Result<Frame, ChannelError>,
    ) -> Result<(), ChannelError>;
    /// The peer on `link` (not the core) hung up.
    fn peer_gone(&mut self, link: Link);
}

/// Serves until the core hangs up. A peer other than the core that hangs up
/// is reported to the server (which stops watching it until the core hands
/// over a replacement).
pub fn serve(server: &mut impl Server) -> Result<(), ChannelError> {
    loop {
        let ready: Vec<usize> = {
            let watched = server.watched();
            let mut fds: Vec<PollFd> = watched
                .iter()
                .map(|(channel, _)| PollFd::new(channel.as_fd(), PollFlags::POLLIN))
                .collect();
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(errno) => return Err(errno.into()),
            }
            fds.iter()
                .enumerate()
                .filter(|(_, fd)| fd.revents().is_some_and(|r| !r.is_empty()))
                .map(|(i, _)| i)
                .collect()
        };
        for i in ready {
            let (result, link) = {
                let watched = server.watched();
                let Some((channel, link)) = watched.get(i) else {
                    continue;
                };
                (channel.recv_frame(Some(Duration::ZERO)), *link)
            };
            match result {
                Err(ChannelError::HungUp) if i == 0 => {
                    log::info!("the core hung up; exiting");
                    return Ok(());
                }
                Err(ChannelError::HungUp) => {
                    log::warn!("{link:?}: the peer hung up");
                    server.peer_gone(link);
                }
                Err(ChannelError::Timeout(_)) => {}
                result => server.handle(link, result)?,
            }
            // Indices may have changed (a link replaced or dropped).
            break;
        }
    }
}

/// Takes over a replacement channel the core sent for `link`, and handshakes on it.
pub fn adopt(link: Link, fds: Vec<OwnedFd>) -> Result<Channel, String> {
    let fd = fds
        .into_iter()
        .next()
        .ok_or("no descriptor with the new link")?;
    let channel = Channel::from_fd(fd);
    channel
        .handshake(link, HANDSHAKE_TIMEOUT)
        .map_err(|error| format!("{link:?}: {error}"))?;
    log::info!("{link:?}: new peer connected");
    Ok(channel)
}

/// Decodes a request frame; a bad one becomes the reason to reject it.
pub fn decode_request<T: DeserializeOwned>(
    frame: Result<Frame, ChannelError>,
) -> Result<Envelope<T>, String> {
    let (message, fds) = decode_with_fds(frame)?;
    if !fds.is_empty() {
        return Err("unexpected descriptors".into());
    }
    Ok(message)
}

/// Decodes a request frame that may carry descriptors.
pub fn decode_with_fds<T: DeserializeOwned>(
    frame: Result<Frame, ChannelError>,
) -> Result<(Envelope<T>, Vec<OwnedFd>), String> {
    let frame = frame.map_err(|error| error.to_string())?;
    let message = decode::<T>(&frame.bytes).map_err(|error| error.to_string())?;
    Ok((message, frame.fds))
}

/// Answers request `id`.
pub fn reply<T: Serialize>(channel: &Channel, id: u64, body: T) -> Result<(), ChannelError> {
    channel.send(&Envelope { id, body }, &[])
}

static SECCOMP_MODE: std::sync::OnceLock<crate::seccomp::Mode> = std::sync::OnceLock::new();

fn seccomp_mode() -> crate::seccomp::Mode {
    *SECCOMP_MODE.get().unwrap_or(&crate::seccomp::Mode::Kill)
}

/// The `main` of every device process: logging, then `run` until the core
/// hangs up (status 0) or something fails (status 1, with the reason logged).
/// The only argument is `--seccomp kill|log|off` (kill when absent).
pub fn main(name: &'static str, run: fn() -> Result<(), String>) -> std::process::ExitCode {
    crate::init_logging(name);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = match args.as_slice() {
        [] => crate::seccomp::Mode::Kill,
        [flag, mode] if flag == "--seccomp" => match crate::seccomp::Mode::parse(mode) {
            Some(mode) => mode,
            None => {
                log::error!("--seccomp {mode}: expected kill, log or off");
                return std::process::ExitCode::from(2);
            }
        },
        _ => {
            log::error!(
                "{name} takes only --seccomp kill|log|off; its channels are descriptors {FIRST_CHANNEL_FD}.."
            );
            return std::process::ExitCode::from(2);
        }
    };
    let _ = SECCOMP_MODE.set(mode);
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            log::error!("{error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Fault injection: random and truncated frames on `channel`, as a hostile
/// process would send them.
pub fn send_garbage(channel: &Channel) {
    let valid = ipc_proto::channel::encode(&Envelope {
        id: u64::MAX,
        body: ipc_proto::Link::CoreRtas,
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
