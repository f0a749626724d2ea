//! The inflight-tracking region a block backend takes over
//! (`device_procs::block::inflight`), as a previous backend (perhaps a
//! compromised one) may have left it: the input's first byte sizes the
//! queue (1..=256), the next two are the used ring's index, the rest is
//! the region's content.
//!
//! Beyond not panicking: what is served again is a set of distinct heads
//! of the queue, no more than it has entries, and the backend goes on from
//! the used index plus that many; a second recovery agrees with the first.

use device_procs::block::inflight::{queue_bytes, InflightRegion};
use std::os::unix::fs::FileExt;

/// The target.
pub fn fuzz(data: &[u8]) {
    let [size, low, high, content @ ..] = data else {
        return;
    };
    let queue_size = u16::from(*size).max(1);
    let used_index = u16::from_le_bytes([*low, *high]);
    let bytes = queue_bytes(queue_size);
    let (_, file) = InflightRegion::create(1, queue_size).expect("a region");
    let content = &content[..content.len().min(bytes)];
    file.write_all_at(content, 0).expect("the region's content");
    let region = InflightRegion::open(file, 0, bytes as u64, 1, queue_size).expect("its mapping");
    let part = region.queue(0).expect("queue 0");
    let recovery = part.recover(used_index);
    let mut heads = recovery.resubmit.clone();
    assert!(heads.len() <= usize::from(queue_size), "{heads:?}");
    assert!(heads.iter().all(|&head| head < queue_size), "{heads:?}");
    heads.sort_unstable();
    heads.dedup();
    assert_eq!(heads.len(), recovery.resubmit.len(), "a head twice");
    assert_eq!(
        recovery.next_avail,
        used_index.wrapping_add(recovery.resubmit.len() as u16)
    );
    assert_eq!(part.recover(used_index).resubmit, recovery.resubmit);
}
