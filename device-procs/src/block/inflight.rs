//! The inflight-tracking region (`VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`):
//! shared memory the backend allocates and the frontend keeps, in which the
//! backend records every request it took from the available ring and has
//! not yet put in the used ring. A successor backend handed the region
//! (`SET_INFLIGHT_FD`) resubmits exactly those, in the order they were
//! taken, so that every request the guest submitted completes once: none
//! lost with the process that died, none (completed out of order) redone.
//!
//! The layout is vhost-user's for split rings, one part per queue:
//! `{features: u64, version: u16, desc_num: u16, last_batch_head: u16,
//! used_idx: u16}` then `desc_num` entries `{inflight: u8, padding: [u8; 5],
//! next: u16, counter: u64}`, indexed by the chain's head descriptor.
//!
//! A completion goes in three steps, each a store the next does not pass:
//! `last_batch_head = head`, the used ring's element and index (the
//! library's `add_used`), then `desc[head].inflight = 0` and `used_idx =`
//! the ring's index. A death between the second and third leaves the ring's
//! index ahead of `used_idx`: recovery clears `last_batch_head` (this
//! backend completes one request per batch).
//!
//! The region comes from a previous process, which may have been
//! compromised: whatever it holds only selects which of the guest's own
//! descriptors are served again, each checked like any other chain, and is
//! bounded by the queue's size.

use std::fs::File;
use std::io;
use std::sync::atomic::{fence, Ordering};
use vm_memory::mmap::MmapRegion;
use vm_memory::{Bytes, FileOffset, VolatileMemory, VolatileSlice};

/// The bytes of a queue part's header.
const HEADER_BYTES: usize = 16;
/// The bytes of one descriptor's state.
const DESC_BYTES: usize = 16;
/// Each queue's part starts on this boundary.
const QUEUE_ALIGN: usize = 64;
/// The version a region's header carries once a backend has used it.
const VERSION: u16 = 1;

// Offsets in a queue part's header, and in a descriptor's state.
const VERSION_AT: usize = 8;
const DESC_NUM_AT: usize = 10;
const LAST_BATCH_HEAD_AT: usize = 12;
const USED_IDX_AT: usize = 14;
const INFLIGHT_AT: usize = 0;
const NEXT_AT: usize = 6;
const COUNTER_AT: usize = 8;

/// The bytes of one queue's part for queues of `queue_size` entries.
pub fn queue_bytes(queue_size: u16) -> usize {
    (HEADER_BYTES + DESC_BYTES * usize::from(queue_size)).next_multiple_of(QUEUE_ALIGN)
}

/// The bytes of a region for `queues` queues of `queue_size` entries.
pub fn region_bytes(queues: u16, queue_size: u16) -> usize {
    usize::from(queues) * queue_bytes(queue_size)
}

/// What a successor must do to a queue before it serves new requests.
#[derive(Debug, PartialEq, Eq)]
pub struct Recovery {
    /// The heads of the requests in flight, oldest first: served again.
    pub resubmit: Vec<u16>,
    /// The available index to go on from: the used ring's index plus the
    /// requests in flight (each was taken from the ring once).
    pub next_avail: u16,
    /// The counter the next request taken gets.
    pub next_counter: u64,
}

/// A mapped inflight region.
pub struct InflightRegion {
    mapping: MmapRegion,
    queues: u16,
    queue_size: u16,
}

impl InflightRegion {
    /// A new, zeroed region for `queues` queues of at most `queue_size`
    /// entries, and the file the frontend keeps.
    pub fn create(queues: u16, queue_size: u16) -> io::Result<(InflightRegion, File)> {
        let file = File::from(
            nix::sys::memfd::memfd_create("inflight", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
                .map_err(io::Error::from)?,
        );
        let bytes = region_bytes(queues, queue_size);
        file.set_len(bytes as u64)?;
        let region = InflightRegion::map(file.try_clone()?, 0, bytes, queues, queue_size)?;
        Ok((region, file))
    }

    /// Maps the region a frontend hands over: `bytes` at `offset` of
    /// `file`, which must be as long as `queues` parts of `queue_size`.
    pub fn open(
        file: File,
        offset: u64,
        bytes: u64,
        queues: u16,
        queue_size: u16,
    ) -> io::Result<InflightRegion> {
        let expected = region_bytes(queues, queue_size);
        if bytes != expected as u64 || queues == 0 || queue_size == 0 {
            return Err(io::Error::other(format!(
                "an inflight region of {bytes} bytes for {queues} queues of {queue_size} (expected {expected})"
            )));
        }
        let length = file.metadata()?.len();
        if offset.checked_add(bytes).is_none_or(|end| end > length) {
            return Err(io::Error::other(format!(
                "the inflight region ({bytes} bytes at {offset}) is past its file's {length} bytes"
            )));
        }
        InflightRegion::map(file, offset, expected, queues, queue_size)
    }

    fn map(
        file: File,
        offset: u64,
        bytes: usize,
        queues: u16,
        queue_size: u16,
    ) -> io::Result<InflightRegion> {
        let mapping = MmapRegion::from_file(FileOffset::new(file, offset), bytes)
            .map_err(io::Error::other)?;
        Ok(InflightRegion {
            mapping,
            queues,
            queue_size,
        })
    }

    /// The entries each queue's part has room for.
    pub fn queue_size(&self) -> u16 {
        self.queue_size
    }

    /// The part of queue `queue`, if the region has one.
    pub fn queue(&self, queue: usize) -> Option<InflightQueue<'_>> {
        if queue >= usize::from(self.queues) {
            return None;
        }
        let bytes = queue_bytes(self.queue_size);
        let part = self.mapping.get_slice(queue * bytes, bytes).ok()?;
        Some(InflightQueue {
            part,
            entries: self.queue_size,
        })
    }
}

/// One queue's part of the region.
pub struct InflightQueue<'a> {
    part: VolatileSlice<'a>,
    entries: u16,
}

impl InflightQueue<'_> {
    // Offsets are within the part by construction (`head < entries`).
    fn store<T: vm_memory::ByteValued>(&self, value: T, at: usize) {
        let _ = self.part.write_obj(value, at);
    }

    fn load<T: vm_memory::ByteValued + Default>(&self, at: usize) -> T {
        self.part.read_obj(at).unwrap_or_default()
    }

    fn desc(head: u16) -> usize {
        HEADER_BYTES + DESC_BYTES * usize::from(head)
    }

    /// Whether `head` has an entry.
    fn holds(&self, head: u16) -> bool {
        head < self.entries
    }

    /// Records that the request at `head` was taken from the available ring.
    pub fn begin(&self, head: u16, counter: u64) {
        if !self.holds(head) {
            return;
        }
        self.store(counter, Self::desc(head) + COUNTER_AT);
        fence(Ordering::SeqCst);
        self.store(1u8, Self::desc(head) + INFLIGHT_AT);
        fence(Ordering::SeqCst);
    }

    /// The first step of completing `head`, before its used element is
    /// written.
    pub fn completing(&self, head: u16) {
        if !self.holds(head) {
            return;
        }
        let last: u16 = self.load(LAST_BATCH_HEAD_AT);
        self.store(last, Self::desc(head) + NEXT_AT);
        self.store(head, LAST_BATCH_HEAD_AT);
        fence(Ordering::SeqCst);
    }

    /// The last step: the used ring's index is `used_index` now.
    pub fn completed(&self, head: u16, used_index: u16) {
        fence(Ordering::SeqCst);
        if self.holds(head) {
            self.store(0u8, Self::desc(head) + INFLIGHT_AT);
        }
        fence(Ordering::SeqCst);
        self.store(used_index, USED_IDX_AT);
        fence(Ordering::SeqCst);
    }

    /// Readies the part for a backend that takes the queue over, whose
    /// used ring's index is `used_index`: a new part (never used) is
    /// stamped and nothing is in flight; a used one says what was.
    pub fn recover(&self, used_index: u16) -> Recovery {
        let version: u16 = self.load(VERSION_AT);
        if version != VERSION {
            self.part
                .write_slice(&vec![0; self.part.len()], 0)
                .unwrap_or_default();
            self.store(self.entries, DESC_NUM_AT);
            self.store(used_index, USED_IDX_AT);
            fence(Ordering::SeqCst);
            self.store(VERSION, VERSION_AT);
            return Recovery {
                resubmit: Vec::new(),
                next_avail: used_index,
                next_counter: 1,
            };
        }
        let recorded_used: u16 = self.load(USED_IDX_AT);
        if recorded_used != used_index {
            // The last completion reached the used ring but not this part.
            let last: u16 = self.load(LAST_BATCH_HEAD_AT);
            if self.holds(last) {
                self.store(0u8, Self::desc(last) + INFLIGHT_AT);
            }
            self.store(used_index, USED_IDX_AT);
            fence(Ordering::SeqCst);
        }
        let mut in_flight: Vec<(u64, u16)> = (0..self.entries)
            .filter(|&head| self.load::<u8>(Self::desc(head) + INFLIGHT_AT) == 1)
            .map(|head| (self.load(Self::desc(head) + COUNTER_AT), head))
            .collect();
        in_flight.sort_unstable();
        let next_counter = in_flight
            .last()
            .map_or(1, |&(counter, _)| counter.wrapping_add(1));
        Recovery {
            next_avail: used_index.wrapping_add(in_flight.len() as u16),
            resubmit: in_flight.into_iter().map(|(_, head)| head).collect(),
            next_counter,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(queue_size: u16) -> (InflightRegion, File) {
        InflightRegion::create(1, queue_size).unwrap()
    }

    #[test]
    fn a_new_region_has_nothing_in_flight_and_is_stamped() {
        let (region, _file) = region(16);
        let queue = region.queue(0).unwrap();
        let recovery = queue.recover(7);
        assert_eq!(recovery.resubmit, Vec::<u16>::new());
        assert_eq!(recovery.next_avail, 7);
        assert!(region.queue(1).is_none());
        assert_eq!(queue.load::<u16>(VERSION_AT), VERSION);
        assert_eq!(queue.load::<u16>(DESC_NUM_AT), 16);
    }

    #[test]
    fn a_successor_resubmits_what_was_in_flight_oldest_first_and_nothing_completed() {
        let (region, file) = region(16);
        let queue = region.queue(0).unwrap();
        queue.recover(0);
        // Taken in this order: 5, 2, 9, 3. Completed out of order: 2, then 3.
        for (counter, head) in [5u16, 2, 9, 3].into_iter().enumerate() {
            queue.begin(head, counter as u64 + 1);
        }
        queue.completing(2);
        queue.completed(2, 1);
        queue.completing(3);
        queue.completed(3, 2);
        drop(region);

        let bytes = file.metadata().unwrap().len();
        let successor = InflightRegion::open(file, 0, bytes, 1, 16).unwrap();
        let recovery = successor.queue(0).unwrap().recover(2);
        assert_eq!(recovery.resubmit, vec![5, 9]);
        assert_eq!(recovery.next_avail, 4, "two completed, two in flight");
        assert_eq!(recovery.next_counter, 4);
    }

    #[test]
    fn a_death_after_the_used_ring_moved_does_not_redo_that_request() {
        let (region, _file) = region(8);
        let queue = region.queue(0).unwrap();
        queue.recover(10);
        queue.begin(4, 1);
        queue.begin(6, 2);
        // Died between the used ring's index (now 11) and the part's.
        queue.completing(4);
        let recovery = queue.recover(11);
        assert_eq!(recovery.resubmit, vec![6]);
        assert_eq!(recovery.next_avail, 12);
        // Died before the used ring moved: served again.
        queue.completing(6);
        let recovery = queue.recover(11);
        assert_eq!(recovery.resubmit, vec![6]);
    }

    #[test]
    fn a_region_of_the_wrong_shape_is_refused_and_lies_stay_in_bounds() {
        let (region, file) = region(8);
        let bytes = queue_bytes(8) as u64;
        assert!(InflightRegion::open(file.try_clone().unwrap(), 0, bytes, 1, 16).is_err());
        assert!(InflightRegion::open(file.try_clone().unwrap(), 64, bytes, 1, 8).is_err());
        assert!(InflightRegion::open(file.try_clone().unwrap(), 0, 0, 0, 8).is_err());
        // A previous process wrote nonsense: every entry in flight, a last
        // head past the queue, a used index that disagrees.
        let queue = region.queue(0).unwrap();
        queue.recover(0);
        for head in 0..8 {
            queue.begin(head, u64::from(8 - head));
        }
        queue.store(999u16, LAST_BATCH_HEAD_AT);
        queue.begin(200, 1);
        queue.completing(200);
        let recovery = queue.recover(3);
        assert_eq!(recovery.resubmit, vec![7, 6, 5, 4, 3, 2, 1, 0]);
        assert_eq!(recovery.next_avail, 11);
    }
}
