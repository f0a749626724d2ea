//! The spawner's request decoder (`jailer::spawner::parse_request`): the one
//! input of the VM's privileged process. The first byte is how many
//! descriptors "came with" the frame; the rest is the frame.
//!
//! Beyond not panicking: a request that is accepted re-encodes to the same
//! bytes (the spawner acts on exactly what the core sent), names its
//! processes' exact descriptors, and an accepted start (each kind at most
//! once, generations increasing) or reaper names a generation past zero.

use ipc_proto::channel::{encode, Envelope};
use ipc_proto::spawner::{descriptors_of, SpawnRequest};

/// The target.
pub fn fuzz(data: &[u8]) {
    let Some((&fds, frame)) = data.split_first() else {
        return;
    };
    // A start of all three kinds takes 14.
    let fds = usize::from(fds % 16);
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
        SpawnRequest::Start(devices) => {
            assert!((1..=3).contains(&devices.len()));
            let wanted: usize = devices.iter().map(|d| descriptors_of(d.kind)).sum();
            assert_eq!(fds, wanted);
            let mut previous = 0;
            for (i, device) in devices.iter().enumerate() {
                assert!(device.generation > previous);
                previous = device.generation;
                assert!(devices[..i].iter().all(|other| other.kind != device.kind));
            }
        }
        SpawnRequest::StartReaper { generation } => {
            assert_eq!(fds, 1);
            assert!(generation > 0);
        }
        SpawnRequest::StartBlock(block) => {
            assert_eq!(fds, ipc_proto::spawner::BLOCK_DESCRIPTORS);
            assert!(block.serial > 0);
            assert!(!block.node.is_empty() && !block.node.contains('/'));
        }
        SpawnRequest::Kill(_) => assert_eq!(fds, 0),
    }
}
