//! The spawner's request decoder (`jailer::spawner::parse_request`): the one
//! input of the VM's privileged process. The first byte is how many
//! descriptors "came with" the frame; the rest is the frame.
//!
//! Beyond not panicking: a request that is accepted re-encodes to the same
//! bytes (the spawner acts on exactly what the core sent), names a kind's
//! exact descriptors, and an accepted start or reaper names a generation
//! past zero.

use ipc_proto::channel::{encode, Envelope};
use ipc_proto::spawner::{descriptors_of, SpawnRequest};

/// The target.
pub fn fuzz(data: &[u8]) {
    let Some((&fds, frame)) = data.split_first() else {
        return;
    };
    let fds = usize::from(fds % 8);
    let Ok((id, request)) = jailer::spawner::parse_request(frame, fds) else {
        return;
    };
    let again = encode(&Envelope {
        id,
        body: request.clone(),
    })
    .expect("an accepted request encodes");
    assert_eq!(again, frame, "a second encoding of {request:?}");
    match request {
        SpawnRequest::Start {
            kind, generation, ..
        } => {
            assert_eq!(fds, descriptors_of(kind));
            assert!(generation > 0);
        }
        SpawnRequest::StartReaper { generation } => {
            assert_eq!(fds, 1);
            assert!(generation > 0);
        }
        SpawnRequest::Kill(_) => assert_eq!(fds, 0),
    }
}
