//! The core as the vhost-user frontend of a block backend (its own block
//! process, or one written by others): it negotiates features, reads the
//! device configuration, and hands the backend guest memory (the memory
//! table, one region per memfd, updated region by region when DIMMs come and
//! go) and the queues the driver set up, with their kick and call eventfds.
//! After that the core is off the I/O path: KVM's ioeventfd writes the kick,
//! the backend writes the call into KVM's irqfd.
//!
//! The backend is a peer the core does not trust: every reply is checked
//! by the `vhost` crate, and the socket has timeouts so that a backend that
//! stops answering costs a bounded wait and an error, never a hung core.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;
use thiserror::Error;
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::EventFd;

/// How long one message to or from a backend may take.
pub const BACKEND_TIMEOUT: Duration = Duration::from_secs(5);

/// The virtio features the core offers a driver at most, whatever the
/// backend offers: version 1, event index, indirect descriptors and the
/// block features a driver may use.
const DRIVER_FEATURES: u64 = (1 << 32) // VERSION_1
    | (1 << 29) // RING_EVENT_IDX
    | (1 << 28) // RING_INDIRECT_DESC
    | (1 << 1) // SIZE_MAX
    | (1 << 2) // SEG_MAX
    | (1 << 5) // RO
    | (1 << 6) // BLK_SIZE
    | (1 << 9) // FLUSH
    | (1 << 10) // TOPOLOGY
    | (1 << 13) // DISCARD
    | (1 << 14); // WRITE_ZEROES

/// vhost-user's bit for protocol features, which the core requires.
const PROTOCOL_FEATURES_BIT: u64 = 1 << 30;
/// virtio's VERSION_1, which the core requires.
const VERSION_1: u64 = 1 << 32;
/// virtio-blk's RO.
const READ_ONLY: u64 = 1 << 5;
/// The bytes of the block configuration the core reads: capacity,
/// size_max, seg_max, geometry, blk_size, topology, writeback, num_queues,
/// the discard and write-zeroes limits.
pub const CONFIG_BYTES: u32 = 0x3c;

/// Why a backend cannot be used.
#[derive(Debug, Error)]
pub enum FrontendError {
    /// The socket cannot be set up.
    #[error("cannot set up the vhost-user socket")]
    Socket(#[source] std::io::Error),
    /// The backend did not answer as vhost-user says.
    #[error("the backend failed to {0}")]
    Protocol(&'static str, #[source] vhost::Error),
    /// The backend lacks what the core requires.
    #[error("the backend does not offer {0}")]
    Lacks(&'static str),
}

/// A guest memory region as the backend is told of it.
#[derive(Clone, Copy, Debug)]
pub struct Region<'a> {
    /// Guest-physical start.
    pub guest_address: u64,
    /// Length in bytes.
    pub size: u64,
    /// Where the core maps it.
    pub host_address: u64,
    /// Where it starts in its file.
    pub file_offset: u64,
    /// Its memfd.
    pub fd: BorrowedFd<'a>,
}

impl Region<'_> {
    fn info(&self) -> VhostUserMemoryRegionInfo {
        VhostUserMemoryRegionInfo {
            guest_phys_addr: self.guest_address,
            memory_size: self.size,
            userspace_addr: self.host_address,
            mmap_offset: self.file_offset,
            mmap_handle: self.fd.as_raw_fd(),
        }
    }
}

/// One queue the driver set up, its ring addresses in the core's mapping.
#[derive(Debug)]
pub struct QueueSetup<'a> {
    /// Entries.
    pub size: u16,
    /// The descriptor table, in the core's address space.
    pub descriptors: u64,
    /// The available ring, in the core's address space.
    pub available: u64,
    /// The used ring, in the core's address space.
    pub used: u64,
    /// What KVM writes when the guest notifies the queue.
    pub kick: &'a EventFd,
    /// What the backend writes when it used buffers (KVM's irqfd).
    pub call: &'a EventFd,
}

/// A connected, negotiated block backend.
pub struct BlockFrontend {
    frontend: Frontend,
    offered: u64,
    protocol: VhostUserProtocolFeatures,
    config: Vec<u8>,
    queues: usize,
}

impl BlockFrontend {
    /// Negotiates with the backend at the other end of `stream`: features
    /// (version 1 and protocol features required), protocol features
    /// (CONFIG required; REPLY_ACK and CONFIGURE_MEM_SLOTS taken when
    /// offered), ownership, the device configuration.
    pub fn connect(stream: UnixStream) -> Result<BlockFrontend, FrontendError> {
        stream
            .set_read_timeout(Some(BACKEND_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(BACKEND_TIMEOUT)))
            .map_err(FrontendError::Socket)?;
        let mut frontend = Frontend::from_stream(stream, 1);
        let protocol = |what| move |error| FrontendError::Protocol(what, error);
        let offered = frontend
            .get_features()
            .map_err(protocol("offer features"))?;
        if offered & VERSION_1 == 0 {
            return Err(FrontendError::Lacks("virtio 1.0 (VERSION_1)"));
        }
        if offered & PROTOCOL_FEATURES_BIT == 0 {
            return Err(FrontendError::Lacks("protocol features"));
        }
        frontend
            .set_features(PROTOCOL_FEATURES_BIT)
            .map_err(protocol("take features"))?;
        let wanted = VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS;
        let offered_protocol = frontend
            .get_protocol_features()
            .map_err(protocol("offer protocol features"))?;
        if !offered_protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            return Err(FrontendError::Lacks("its configuration (CONFIG)"));
        }
        let protocol_features = offered_protocol & wanted;
        frontend
            .set_protocol_features(protocol_features)
            .map_err(protocol("take protocol features"))?;
        frontend.set_owner().map_err(protocol("take its owner"))?;
        if protocol_features.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            frontend.set_hdr_flags(vhost::vhost_user::message::VhostUserHeaderFlag::NEED_REPLY);
        }
        let (_, config) = frontend
            .get_config(
                0,
                CONFIG_BYTES,
                VhostUserConfigFlags::WRITABLE,
                &[0; CONFIG_BYTES as usize],
            )
            .map_err(protocol("give its configuration"))?;
        Ok(BlockFrontend {
            frontend,
            offered,
            protocol: protocol_features,
            config,
            queues: 1,
        })
    }

    /// The features a driver may negotiate.
    pub fn driver_features(&self) -> u64 {
        self.offered & DRIVER_FEATURES
    }

    /// Whether the backend serves the disk read-only.
    pub fn read_only(&self) -> bool {
        self.offered & READ_ONLY != 0
    }

    /// The disk's size in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        let mut capacity = [0; 8];
        capacity.copy_from_slice(&self.config[..8]);
        u64::from_le_bytes(capacity)
    }

    /// The device configuration the backend gave.
    pub fn config(&self) -> &[u8] {
        &self.config
    }

    /// Whether memory regions can be added and removed one at a time.
    pub fn has_memory_slots(&self) -> bool {
        self.protocol
            .contains(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS)
    }

    /// Hands the backend the whole memory table.
    pub fn set_memory(&mut self, regions: &[Region<'_>]) -> Result<(), FrontendError> {
        let infos: Vec<_> = regions.iter().map(Region::info).collect();
        self.frontend
            .set_mem_table(&infos)
            .map(drop)
            .map_err(|e| FrontendError::Protocol("take the memory table", e))
    }

    /// Adds one region (a DIMM plugged).
    pub fn add_region(&mut self, region: &Region<'_>) -> Result<(), FrontendError> {
        self.frontend
            .add_mem_region(&region.info())
            .map(drop)
            .map_err(|e| FrontendError::Protocol("add a memory region", e))
    }

    /// Removes one region (a DIMM unplugged).
    pub fn remove_region(&mut self, region: &Region<'_>) -> Result<(), FrontendError> {
        self.frontend
            .remove_mem_region(&region.info())
            .map_err(|e| FrontendError::Protocol("remove a memory region", e))
    }

    /// Starts the queues the driver set up, with the features it took
    /// (limited to [`BlockFrontend::driver_features`]).
    pub fn start(&mut self, features: u64, queues: &[QueueSetup<'_>]) -> Result<(), FrontendError> {
        let features = (features & self.driver_features()) | PROTOCOL_FEATURES_BIT;
        let protocol = |what| move |error| FrontendError::Protocol(what, error);
        self.frontend
            .set_features(features)
            .map_err(protocol("take the driver's features"))?;
        for (index, queue) in queues.iter().enumerate().take(self.queues) {
            self.frontend
                .set_vring_num(index, queue.size)
                .map_err(protocol("size a queue"))?;
            self.frontend
                .set_vring_base(index, 0)
                .map_err(protocol("take a queue's base"))?;
            let addresses = VringConfigData {
                queue_max_size: queue.size,
                queue_size: queue.size,
                flags: 0,
                desc_table_addr: queue.descriptors,
                used_ring_addr: queue.used,
                avail_ring_addr: queue.available,
                log_addr: None,
            };
            self.frontend
                .set_vring_addr(index, &addresses)
                .map_err(protocol("take a queue's addresses"))?;
            self.frontend
                .set_vring_call(index, queue.call)
                .map_err(protocol("take a queue's call"))?;
            self.frontend
                .set_vring_kick(index, queue.kick)
                .map_err(protocol("take a queue's kick"))?;
            self.frontend
                .set_vring_enable(index, true)
                .map_err(protocol("enable a queue"))?;
        }
        Ok(())
    }

    /// Stops the queues (a driver reset): the backend finishes and returns
    /// each queue's next available index.
    pub fn stop(&mut self) -> Result<Vec<u32>, FrontendError> {
        (0..self.queues)
            .map(|index| {
                self.frontend
                    .set_vring_enable(index, false)
                    .and_then(|()| self.frontend.get_vring_base(index))
                    .map_err(|e| FrontendError::Protocol("stop a queue", e))
            })
            .collect()
    }
}
