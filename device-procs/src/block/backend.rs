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

use super::request::{self, CHUNK_BYTES};
use super::{Disk, CONFIG_BYTES};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::QueueOwnedT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
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
        }
    }

    /// The requests completed so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Serves every available request of `vring`, then signals the guest
    /// once (or as its event index asks).
    fn serve(&self, vring: &VringRwLock<Memory>) -> io::Result<()> {
        if self.broken.load(Ordering::Relaxed) {
            return Ok(());
        }
        let memory = common::lock(&self.memory)
            .clone()
            .ok_or_else(|| io::Error::other("a kick before the memory table"))?
            .memory();
        let mut scratch = common::lock(&self.scratch);
        let event_idx = self.event_idx.load(Ordering::Relaxed);
        loop {
            if event_idx {
                vring.disable_notification().map_err(io::Error::other)?;
            }
            // Collected (at most a queue's worth) so that the ring's lock is
            // not held while the image is read or written.
            let chains: Vec<_> = match vring.get_mut().get_queue_mut().iter(memory.clone()) {
                Ok(chains) => chains.collect(),
                Err(error) => {
                    self.break_down(&error);
                    return Ok(());
                }
            };
            for chain in chains {
                let head = chain.head_index();
                let written = match request::execute(chain, &memory, &self.disk, &mut scratch) {
                    Ok(completion) => completion.written,
                    Err(malformed) => {
                        log::warn!("request {head} returned unanswered: {malformed}");
                        0
                    }
                };
                if let Err(error) = vring.add_used(head, written) {
                    self.break_down(&error);
                    return Ok(());
                }
                self.served.fetch_add(1, Ordering::Relaxed);
            }
            if vring.needs_notification().unwrap_or(true) {
                vring.signal_used_queue()?;
            }
            if !event_idx || !vring.enable_notification().map_err(io::Error::other)? {
                return Ok(());
            }
        }
    }

    fn break_down(&self, why: &dyn std::fmt::Display) {
        if !self.broken.swap(true, Ordering::Relaxed) {
            log::warn!("the guest's queue is broken ({why}): no request is served until the driver sets the device up again");
        }
    }
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
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
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
