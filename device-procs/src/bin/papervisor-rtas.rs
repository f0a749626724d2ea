//! The RTAS server process. The core starts it with one end of a
//! SOCK_SEQPACKET socketpair as file descriptor 3 (or `--channel-fd N`).

use device_procs::rtas::server;
use ipc_proto::channel::Channel;
use nix::sys::socket::{getsockopt, sockopt, SockType};
use std::os::fd::{BorrowedFd, RawFd};
use std::process::ExitCode;

const DEFAULT_CHANNEL_FD: RawFd = 3;

fn channel_fd() -> Result<RawFd, String> {
    let mut args = std::env::args().skip(1);
    let mut fd = DEFAULT_CHANNEL_FD;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--channel-fd" => {
                let value = args.next().ok_or("--channel-fd needs a number")?;
                fd = value
                    .parse()
                    .map_err(|_| format!("--channel-fd {value} is not a number"))?;
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(fd)
}

fn main() -> ExitCode {
    device_procs::init_logging("rtas-server");
    let fd = match channel_fd() {
        Ok(fd) => fd,
        Err(error) => {
            log::error!("{error}");
            return ExitCode::from(2);
        }
    };
    // SAFETY: only inspected here; ownership is taken below once it is known to be a socket.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    match getsockopt(&borrowed, sockopt::SockType) {
        Ok(SockType::SeqPacket) => {}
        other => {
            log::error!("file descriptor {fd} is not a SOCK_SEQPACKET socket ({other:?})");
            return ExitCode::from(2);
        }
    }
    // SAFETY: fd is an open SOCK_SEQPACKET socket the core handed to this process alone.
    let channel = unsafe { Channel::from_raw_fd(fd) };
    match server::serve(&channel) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            log::error!("channel failed: {error}");
            ExitCode::FAILURE
        }
    }
}
