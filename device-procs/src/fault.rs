//! Fault injection (`x-inject-fault`), built only with the
//! `fault-injection` feature: each fault is something a compromised device
//! process would do, so that tests can prove the jail and the supervisor.
//! A build without the feature has none of this code and refuses the request.

use crate::process::Links;
use ipc_proto::channel::{encode, Channel, Envelope};
use ipc_proto::{Fault, Link};

/// Commits `fault`; returns what happened if the process is still alive.
pub fn commit(fault: Fault, links: &Links) -> String {
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
