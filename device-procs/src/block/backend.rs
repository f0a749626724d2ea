//! The vhost-user-blk backend of a [`Disk`], on `vhost-user-backend`: the
//! frontend (the core) sets the guest's memory and the queue up; kicks
//! arrive on the queue's kick eventfd (straight from KVM's ioeventfd) and
//! completions leave on its call eventfd (straight into KVM's irqfd).
//!
//! Guest memory is what the frontend's memory table maps, no more: a
//! descriptor outside it fails its chain. A queue whose rings lie (an avail
//! index ahead by more than the queue size, rings outside memory) is broken
//! for good, until the driver sets the device up again: logged once, no
//! request served, the process and its other disks untouched.
//!
//! Every request taken from the ring is recorded in the inflight region
//! ([`super::inflight`]) when the frontend asked for one, until its used
//! element is written; a backend handed the region of one that died serves
//! what it lists again before anything new.

use super::inflight::{self, InflightRegion};
use super::request::{self, CHUNK_BYTES};
use super::{Disk, CONFIG_BYTES};
use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use vhost::vhost_user::message::{VhostUserInflight, VhostUserProtocolFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringState, VringT};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

/// The guest memory a backend sees: the frontend's memory table.
pub type Memory = GuestMemoryAtomic<GuestMemoryMmap>;

/// The queues a disk has.
pub const QUEUES: usize = 1;
/// The largest queue a driver may set up.
pub const MAX_QUEUE_SIZE: u16 = 256;
/// vhost-user's feature bit saying protocol features are negotiated.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u32 = 30;

/// A disk served over vhost-user.
pub struct BlockBackend {
    disk: Disk,
    memory: Mutex<Option<Memory>>,
    event_idx: AtomicBool,
    /// Set when the guest's rings lied; cleared when the driver negotiates
    /// features again (a new set-up).
    broken: AtomicBool,
    scratch: Mutex<Vec<u8>>,
    served: AtomicU64,
    /// The inflight region, when the frontend asked for one.
    tracking: Mutex<Option<Tracking>>,
    resubmitted: AtomicU64,
}

/// The inflight region in use, and where this backend stands in it.
struct Tracking {
    region: InflightRegion,
    /// Whether the queue's part was checked for requests to serve again
    /// (done at the first kick, once the ring's addresses are known).
    recovered: bool,
    /// The counter the next request taken gets: the order of resubmission.
    counter: u64,
}

impl Tracking {
    fn new(region: InflightRegion) -> Tracking {
        Tracking {
            region,
            recovered: false,
            counter: 1,
        }
    }
}

impl BlockBackend {
    /// The backend of `disk`.
    pub fn new(disk: Disk) -> BlockBackend {
        BlockBackend {
            disk,
            memory: Mutex::new(None),
            event_idx: AtomicBool::new(false),
            broken: AtomicBool::new(false),
            scratch: Mutex::new(vec![0; CHUNK_BYTES]),
            served: AtomicU64::new(0),
            tracking: Mutex::new(None),
            resubmitted: AtomicU64::new(0),
        }
    }

    /// The requests served again for a backend that died.
    pub fn resubmitted(&self) -> u64 {
        self.resubmitted.load(Ordering::Relaxed)
    }

    /// The requests completed so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Serves every available request of `vring` (first those a dead
    /// backend left in flight), then signals the guest once (or as its
    /// event index asks).
    fn serve(&self, vring: &VringRwLock<Memory>) -> io::Result<()> {
        if self.broken.load(Ordering::Relaxed) {
            return Ok(());
        }
        let memory = common::lock(&self.memory)
            .clone()
            .ok_or_else(|| io::Error::other("a kick before the memory table"))?
            .memory();
        let mut scratch = common::lock(&self.scratch);
        let mut tracking = common::lock(&self.tracking);
        let event_idx = self.event_idx.load(Ordering::Relaxed);
        if let Some(tracking) = tracking.as_mut().filter(|t| !t.recovered) {
            tracking.recovered = true;
            self.resubmit(vring, tracking, &memory, &mut scratch)?;
        }
        loop {
            if event_idx {
                vring.disable_notification().map_err(io::Error::other)?;
            }
            // Collected (at most a queue's worth) so that the ring's lock is
            // not held while the image is read or written; each recorded in
            // flight as it is taken.
            let chains: Vec<_> = match vring.get_mut().get_queue_mut().iter(memory.clone()) {
                Ok(chains) => chains
                    .inspect(|chain| {
                        if let Some(tracking) = tracking.as_mut() {
                            if let Some(part) = tracking.region.queue(0) {
                                part.begin(chain.head_index(), tracking.counter);
                            }
                            tracking.counter += 1;
                        }
                    })
                    .collect(),
                Err(error) => {
                    self.break_down(&error);
                    return Ok(());
                }
            };
            for chain in chains {
                if !self.complete(vring, tracking.as_ref(), chain, &memory, &mut scratch) {
                    return Ok(());
                }
            }
            if vring.needs_notification().unwrap_or(true) {
                vring.signal_used_queue()?;
            }
            if !event_idx || !vring.enable_notification().map_err(io::Error::other)? {
                return Ok(());
            }
        }
    }

    /// Carries out `chain` and puts it in the used ring, recording its
    /// completion in the inflight region. False when the ring broke.
    fn complete<M>(
        &self,
        vring: &VringRwLock<Memory>,
        tracking: Option<&Tracking>,
        chain: DescriptorChain<M>,
        memory: &GuestMemoryMmap,
        scratch: &mut [u8],
    ) -> bool
    where
        M: std::ops::Deref<Target = GuestMemoryMmap> + Clone,
    {
        let head = chain.head_index();
        let written = match request::execute(chain, memory, &self.disk, scratch) {
            Ok(completion) => completion.written,
            Err(malformed) => {
                log::warn!("request {head} returned unanswered: {malformed}");
                0
            }
        };
        let part = tracking.and_then(|t| t.region.queue(0));
        if let Some(part) = &part {
            part.completing(head);
        }
        if let Err(error) = vring.add_used(head, written) {
            self.break_down(&error);
            return false;
        }
        if let Some(part) = &part {
            part.completed(head, vring.get_ref().get_queue().next_used());
        }
        self.served.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Serves again, oldest first, the requests the region says a backend
    /// before this one took and never completed, and goes on after them.
    fn resubmit(
        &self,
        vring: &VringRwLock<Memory>,
        tracking: &mut Tracking,
        memory: &GuestMemoryMmap,
        scratch: &mut [u8],
    ) -> io::Result<()> {
        let Some(part) = tracking.region.queue(0) else {
            return Ok(());
        };
        let used_index = match vring.queue_used_idx() {
            Ok(index) => index,
            Err(error) => {
                self.break_down(&error);
                return Ok(());
            }
        };
        let recovery = part.recover(used_index);
        tracking.counter = recovery.next_counter;
        let (table, size) = {
            let state: std::sync::RwLockReadGuard<'_, VringState<Memory>> = vring.get_ref();
            let queue = state.get_queue();
            (queue.desc_table(), queue.size())
        };
        vring.set_queue_next_avail(recovery.next_avail);
        if recovery.resubmit.is_empty() {
            return Ok(());
        }
        log::info!(
            "serving again {} requests a previous backend left in flight",
            recovery.resubmit.len()
        );
        for head in recovery.resubmit {
            if head >= size {
                // Recorded for a larger queue than the driver set up now.
                part.completed(head, used_index);
                continue;
            }
            let chain = DescriptorChain::new(memory, GuestAddress(table), size, head);
            if !self.complete(vring, Some(tracking), chain, memory, scratch) {
                return Ok(());
            }
            self.resubmitted.fetch_add(1, Ordering::Relaxed);
        }
        if vring.needs_notification().unwrap_or(true) {
            vring.signal_used_queue()?;
        }
        Ok(())
    }

    fn break_down(&self, why: &dyn std::fmt::Display) {
        if !self.broken.swap(true, Ordering::Relaxed) {
            log::warn!("the guest's queue is broken ({why}): no request is served until the driver sets the device up again");
        }
    }
}

/// The queues and entries an inflight message asks a region for, checked
/// against what this device has.
fn inflight_shape(message: &VhostUserInflight) -> io::Result<(u16, u16)> {
    if usize::from(message.num_queues) != QUEUES
        || message.queue_size == 0
        || message.queue_size > MAX_QUEUE_SIZE
    {
        return Err(io::Error::other(format!(
            "an inflight region for {} queues of {} entries (this disk has {QUEUES} of at most {MAX_QUEUE_SIZE})",
            message.num_queues, message.queue_size
        )));
    }
    Ok((message.num_queues, message.queue_size))
}

impl VhostUserBackend for BlockBackend {
    type Bitmap = ();
    type Vring = VringRwLock<Memory>;

    fn num_queues(&self) -> usize {
        QUEUES
    }

    fn max_queue_size(&self) -> usize {
        usize::from(MAX_QUEUE_SIZE)
    }

    fn features(&self) -> u64 {
        let mut bits = vec![
            VIRTIO_F_VERSION_1,
            VIRTIO_RING_F_EVENT_IDX,
            VIRTIO_RING_F_INDIRECT_DESC,
            VHOST_USER_F_PROTOCOL_FEATURES,
            VIRTIO_BLK_F_SEG_MAX,
            VIRTIO_BLK_F_BLK_SIZE,
            VIRTIO_BLK_F_FLUSH,
            VIRTIO_BLK_F_DISCARD,
            VIRTIO_BLK_F_WRITE_ZEROES,
        ];
        if self.disk.read_only() {
            bits.push(VIRTIO_BLK_F_RO);
        }
        bits.into_iter()
            .fold(0, |features, bit| features | 1 << bit)
    }

    fn acked_features(&self, _features: u64) {
        self.broken.store(false, Ordering::Relaxed);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::INFLIGHT_SHMFD
    }

    fn get_inflight_fd(&self, wanted: &VhostUserInflight) -> io::Result<(VhostUserInflight, File)> {
        let (queues, queue_size) = inflight_shape(wanted)?;
        let (region, file) = InflightRegion::create(queues, queue_size)?;
        *common::lock(&self.tracking) = Some(Tracking::new(region));
        let given = VhostUserInflight {
            mmap_size: inflight::region_bytes(queues, queue_size) as u64,
            mmap_offset: 0,
            num_queues: queues,
            queue_size,
        };
        Ok((given, file))
    }

    fn set_inflight_fd(&self, handed: &VhostUserInflight, file: File) -> io::Result<()> {
        let (queues, queue_size) = inflight_shape(handed)?;
        let region = InflightRegion::open(
            file,
            handed.mmap_offset,
            handed.mmap_size,
            queues,
            queue_size,
        )?;
        *common::lock(&self.tracking) = Some(Tracking::new(region));
        Ok(())
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let config = self.disk.config(MAX_QUEUE_SIZE);
        let start = offset as usize;
        match start.checked_add(size as usize) {
            Some(end) if end <= CONFIG_BYTES => config[start..end].to_vec(),
            _ => Vec::new(),
        }
    }

    /// How the library ends the queue's worker thread when the frontend
    /// hangs up (without one, the worker would wait forever).
    fn exit_event(&self, _thread: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK)
            .map_err(|error| log::error!("cannot make the worker's exit event: {error}"))
            .ok()
    }

    fn update_memory(&self, memory: Memory) -> io::Result<()> {
        *common::lock(&self.memory) = Some(memory);
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        events: EventSet,
        vrings: &[Self::Vring],
        _thread: usize,
    ) -> io::Result<()> {
        if events != EventSet::IN {
            return Err(io::Error::other(format!("unexpected events {events:?}")));
        }
        match vrings.get(usize::from(device_event)) {
            Some(vring) => self.serve(vring),
            None => Err(io::Error::other(format!("no queue {device_event}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};

    const QUEUE: u16 = 16;

    fn backend() -> BlockBackend {
        let fd =
            nix::sys::memfd::memfd_create("image", nix::sys::memfd::MFdFlags::empty()).unwrap();
        let image = std::fs::File::from(fd);
        image.set_len(1 << 20).unwrap();
        BlockBackend::new(Disk::new(image, false, "disk0").unwrap())
    }

    /// A get-id request in the first three descriptors of `queue`.
    fn post_get_id(queue: &MockSplitQueue<'_, GuestMemoryMmap>) {
        let chain = [
            (0x1_0000, 16, VRING_DESC_F_NEXT, 1),
            (0x2_0000, 20, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2),
            (0x3_0000, 1, VRING_DESC_F_WRITE, 0),
        ]
        .map(|(addr, len, flags, next)| {
            RawDescriptor::from(Descriptor::new(addr, len, flags as u16, next))
        });
        queue.add_desc_chains(&chain, 0).unwrap();
    }

    fn used_index(memory: &GuestMemoryMmap, queue: &MockSplitQueue<'_, GuestMemoryMmap>) -> u16 {
        memory.read_obj(queue.used_addr().unchecked_add(2)).unwrap()
    }

    #[test]
    fn a_ring_that_lies_stops_its_queue_until_the_driver_sets_it_up_again() {
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let queue = MockSplitQueue::create(&memory, GuestAddress(0), QUEUE);
        let header = [8u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        memory.write_slice(&header, GuestAddress(0x1_0000)).unwrap();
        let backend = backend();
        let atomic = Memory::new(memory.clone());
        backend.update_memory(atomic.clone()).unwrap();
        let vring = VringRwLock::new(atomic, MAX_QUEUE_SIZE).unwrap();
        vring.set_queue_size(QUEUE);
        vring
            .set_queue_info(
                queue.desc_table_addr().0,
                queue.avail_addr().0,
                queue.used_addr().0,
            )
            .unwrap();
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        let vrings = [vring];

        post_get_id(&queue);
        backend.handle_event(0, EventSet::IN, &vrings, 0).unwrap();
        assert_eq!(used_index(&memory, &queue), 1);
        assert_eq!(backend.served(), 1);

        // The driver claims 100 more buffers than a 16-entry ring holds.
        let avail_index = queue.avail_addr().unchecked_add(2);
        memory.write_obj(101u16, avail_index).unwrap();
        backend.handle_event(0, EventSet::IN, &vrings, 0).unwrap();
        assert_eq!(used_index(&memory, &queue), 1, "nothing served");
        // Broken: even a sane ring is left alone now.
        memory.write_obj(2u16, avail_index).unwrap();
        backend.handle_event(0, EventSet::IN, &vrings, 0).unwrap();
        assert_eq!(used_index(&memory, &queue), 1, "still broken");
        // The driver negotiates again (a new set-up): served again.
        backend.acked_features(backend.features());
        backend.handle_event(0, EventSet::IN, &vrings, 0).unwrap();
        assert_eq!(used_index(&memory, &queue), 2);
        assert_eq!(backend.served(), 2);
        // Events it does not serve are errors, not panics.
        assert!(backend.handle_event(7, EventSet::IN, &vrings, 0).is_err());
        assert!(backend.handle_event(0, EventSet::OUT, &vrings, 0).is_err());
    }

    /// Rings of 4 entries at 0x1000 (descriptors), 0x2000 (available),
    /// 0x3000 (used); request `head` is one indirect descriptor whose
    /// table (at 0x4000 + 0x100·head) makes a get-id request.
    fn post_indirect_get_id(memory: &GuestMemoryMmap, head: u16, position: u16) {
        let table = 0x4000 + 0x100 * u64::from(head);
        let data = 0x8000 + 0x100 * u64::from(head);
        let chain = [
            (data, 16, VRING_DESC_F_NEXT, 1),
            (data + 0x20, 20, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2),
            (data + 0x40, 1, VRING_DESC_F_WRITE, 0),
        ];
        for (index, (addr, len, flags, next)) in chain.into_iter().enumerate() {
            let raw = RawDescriptor::from(Descriptor::new(addr, len, flags as u16, next));
            memory
                .write_obj(raw, GuestAddress(table + 16 * index as u64))
                .unwrap();
        }
        let header = [8u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        memory.write_slice(&header, GuestAddress(data)).unwrap();
        let indirect = Descriptor::new(table, 48, VRING_DESC_F_INDIRECT as u16, 0);
        memory
            .write_obj(
                RawDescriptor::from(indirect),
                GuestAddress(0x1000 + 16 * u64::from(head)),
            )
            .unwrap();
        let slot = 0x2000 + 4 + 2 * u64::from(position % 4);
        memory.write_obj(head, GuestAddress(slot)).unwrap();
        memory
            .write_obj(position.wrapping_add(1), GuestAddress(0x2002))
            .unwrap();
    }

    /// The used ring's heads from entry `from` to its index.
    fn used_heads(memory: &GuestMemoryMmap, from: u16) -> Vec<u16> {
        let index: u16 = memory.read_obj(GuestAddress(0x3002)).unwrap();
        (from..index)
            .map(|i| {
                let entry = 0x3004 + 8 * u64::from(i % 4);
                memory.read_obj::<u32>(GuestAddress(entry)).unwrap() as u16
            })
            .collect()
    }

    #[test]
    fn a_successor_serves_what_its_predecessor_left_in_flight_once_even_out_of_order() {
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        // A predecessor took requests 0, 1, 2, 3 (positions 0..4), then
        // completed 1 and 2 (out of order) and died with 0 and 3 in
        // flight; the driver made 1 and 2 available again (positions 4
        // and 5: the ring's slots of 0 and 1 overwritten).
        let (region, file) = InflightRegion::create(1, 4).unwrap();
        let part = region.queue(0).unwrap();
        part.recover(0);
        for head in 0..4u16 {
            post_indirect_get_id(&memory, head, head);
            part.begin(head, u64::from(head) + 1);
        }
        for (done, head) in [1u16, 2].into_iter().enumerate() {
            part.completing(head);
            let entry = 0x3004 + 8 * done as u64;
            memory
                .write_obj(u32::from(head), GuestAddress(entry))
                .unwrap();
            memory
                .write_obj(done as u16 + 1, GuestAddress(0x3002))
                .unwrap();
            part.completed(head, done as u16 + 1);
        }
        post_indirect_get_id(&memory, 1, 4);
        post_indirect_get_id(&memory, 2, 5);
        drop(region);

        // The successor, handed the region, resumed as a frontend does it:
        // from the used index.
        let backend = backend();
        let atomic = Memory::new(memory.clone());
        backend.update_memory(atomic.clone()).unwrap();
        let shape = VhostUserInflight {
            mmap_size: inflight::queue_bytes(4) as u64,
            mmap_offset: 0,
            num_queues: 1,
            queue_size: 4,
        };
        backend.set_inflight_fd(&shape, file).unwrap();
        backend.set_event_idx(false);
        let vring = VringRwLock::new(atomic, MAX_QUEUE_SIZE).unwrap();
        vring.set_queue_size(4);
        vring.set_queue_info(0x1000, 0x2000, 0x3000).unwrap();
        vring.set_queue_next_avail(2);
        vring.set_queue_next_used(2);
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        backend
            .handle_event(0, EventSet::IN, std::slice::from_ref(&vring), 0)
            .unwrap();
        // 0 and 3 served again, oldest first, then the two new ones; 2 not
        // twice, 0 not lost (as a resume from the used ring would have it).
        assert_eq!(used_heads(&memory, 2), [0, 3, 1, 2]);
        assert_eq!(backend.resubmitted(), 2);
        assert_eq!(backend.served(), 4);
    }

    #[test]
    fn the_configuration_is_served_within_its_bounds_and_features_say_read_only() {
        let backend = backend();
        assert_eq!(backend.get_config(0, 8), 2048u64.to_le_bytes());
        assert_eq!(
            backend.get_config(0, CONFIG_BYTES as u32).len(),
            CONFIG_BYTES
        );
        assert!(backend.get_config(0, CONFIG_BYTES as u32 + 1).is_empty());
        assert!(backend.get_config(u32::MAX, 2).is_empty());
        assert_eq!(backend.features() & (1 << VIRTIO_BLK_F_RO), 0);
        assert_ne!(backend.features() & (1 << VIRTIO_F_VERSION_1), 0);
    }
}
