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
