//! IPC frames: every link's request and reply types, as a receiver decodes
//! and validates them. The first byte picks the link, the direction and how
//! many descriptors "came with" the frame; the rest is the frame.
//!
//! Beyond not panicking: a frame that decodes re-encodes to the same bytes
//! (the wire format is canonical, so a message has one encoding and a
//! receiver's reading of it is the sender's), and validation gives the same
//! verdict on the re-decoded message.

use ipc_proto::channel::{decode, encode, Frame};
use ipc_proto::control::{Reply, Request};
use ipc_proto::link::{
    core_eventlog::CoreEventLog, core_hotplug::CoreHotplug, core_rtas::CoreRtas,
    hotplug_eventlog::HotplugEventLog, hotplug_notify::HotplugNotify, rtas_eventlog::RtasEventLog,
    rtas_hotplug::RtasHotplug,
};
use ipc_proto::protocol::{decode_request, Message, Protocol};
use std::os::fd::OwnedFd;
use std::sync::OnceLock;

/// Descriptors that "came with" a frame: duplicates of one /dev/null.
fn descriptors(count: usize) -> Vec<OwnedFd> {
    static DEV_NULL: OnceLock<std::fs::File> = OnceLock::new();
    let file = DEV_NULL.get_or_init(|| std::fs::File::open("/dev/null").expect("/dev/null"));
    (0..count)
        .map(|_| OwnedFd::from(file.try_clone().expect("dup /dev/null")))
        .collect()
}

/// The message re-encodes to `bytes` exactly, and validates as before.
fn canonical<M: Message>(bytes: &[u8], fds: usize) {
    let Ok(first) = decode::<M>(bytes) else {
        return;
    };
    let again = encode(&first).expect("a decoded message encodes");
    assert_eq!(again, bytes, "a second encoding of {first:?}");
    let second = decode::<M>(&again).expect("its own encoding decodes");
    assert_eq!(
        first.body.validate(fds).is_ok(),
        second.body.validate(fds).is_ok()
    );
}

fn link<P: Protocol>(bytes: &[u8], fds: usize, reply: bool) {
    if reply {
        // As a requester reads it (ipc_proto::protocol::await_reply).
        if let Ok(message) = decode::<Reply<P::Reply>>(bytes) {
            let _ = message.body.validate(fds);
        }
        canonical::<Reply<P::Reply>>(bytes, fds);
    } else {
        let frame = Frame {
            bytes: bytes.to_vec(),
            fds: descriptors(fds),
        };
        if let Ok(incoming) = decode_request::<P>(frame) {
            // What was accepted is what was sent.
            assert_eq!(incoming.fds.len(), fds);
        }
        canonical::<Request<P::Request>>(bytes, fds);
    }
}

/// The target.
pub fn fuzz(data: &[u8]) {
    let Some((&selector, frame)) = data.split_first() else {
        return;
    };
    let reply = selector & 1 == 1;
    let fds = usize::from((selector >> 1) & 3);
    match (selector >> 3) % 7 {
        0 => link::<CoreRtas>(frame, fds, reply),
        1 => link::<CoreHotplug>(frame, fds, reply),
        2 => link::<HotplugNotify>(frame, fds, reply),
        3 => link::<RtasHotplug>(frame, fds, reply),
        4 => link::<HotplugEventLog>(frame, fds, reply),
        5 => link::<RtasEventLog>(frame, fds, reply),
        _ => link::<CoreEventLog>(frame, fds, reply),
    }
}
