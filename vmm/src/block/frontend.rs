//! The core as the vhost-user frontend of a block backend (its own block
//! process, or one written by others): it negotiates features, reads the
//! device configuration, and hands the backend guest memory (the memory
//! table, one region per memfd, updated region by region when DIMMs come and
//! go) and the queues the driver set up, with their kick and call eventfds.
//! After that the core is off the I/O path: KVM's ioeventfd writes the kick,
//! the backend writes the call into KVM's irqfd.
//!
//! The backend is a peer the core does not trust: every reply is checked
//! by the `vhost` crate, and every message is bounded: the crate waits for
//! a reply as long as it takes (it retries a socket time-out), so a
//! watchdog shuts the socket down when [`BACKEND_TIMEOUT`] passes, which
//! ends the wait with an error. A backend that timed out is done for: its
//! late answer would be taken for the next request's.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserInflight, VhostUserProtocolFeatures,
};
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
    /// The backend did not answer in time (the link is shut down).
    #[error("the backend did not {0} within {BACKEND_TIMEOUT:?}")]
    TimedOut(&'static str),
    /// The backend lacks what the core requires.
    #[error("the backend does not offer {0}")]
    Lacks(&'static str),
    /// The backend's inflight region is not what was asked.
    #[error("the backend's inflight region is not usable: {0}")]
    Inflight(String),
}

/// The most bytes of inflight region the core keeps for a backend (a queue
/// of 32768 entries takes 512 KiB).
const MAX_INFLIGHT_BYTES: u64 = 1 << 20;

/// The inflight-tracking region a backend allocated, which the core keeps
/// while the driver's set-up lasts and hands to the backend's successor.
/// The core never maps it: it only holds the descriptor.
pub struct Inflight {
    shape: VhostUserInflight,
    file: std::fs::File,
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
    /// The available index the backend starts from: 0 for a new queue,
    /// the used ring's index for one a new backend takes over.
    pub base: u16,
    /// What KVM writes when the guest notifies the queue.
    pub kick: &'a EventFd,
    /// What the backend writes when it used buffers (KVM's irqfd).
    pub call: &'a EventFd,
}

/// A connected, negotiated block backend.
pub struct BlockFrontend {
    frontend: Frontend,
    /// A copy of the socket, which the watchdog shuts down.
    socket: OwnedFd,
    offered: u64,
    protocol: VhostUserProtocolFeatures,
    config: Vec<u8>,
    queues: usize,
    /// The core hangs up itself: a hang-up watch says nothing.
    closing: Arc<AtomicBool>,
}

impl Drop for BlockFrontend {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::SeqCst);
        // Ends a hang-up watch's copy of the socket too: the backend sees
        // the hang-up now.
        let _ =
            nix::sys::socket::shutdown(self.socket.as_raw_fd(), nix::sys::socket::Shutdown::Both);
    }
}

impl BlockFrontend {
    /// Negotiates with the backend at the other end of `stream`: features
    /// (version 1 and protocol features required), protocol features
    /// (CONFIG required; REPLY_ACK and CONFIGURE_MEM_SLOTS taken when
    /// offered), ownership, the device configuration.
    pub fn connect(stream: UnixStream) -> Result<BlockFrontend, FrontendError> {
        let socket = stream
            .as_fd()
            .try_clone_to_owned()
            .map_err(FrontendError::Socket)?;
        let mut link = BlockFrontend {
            frontend: Frontend::from_stream(stream, 1),
            socket,
            offered: 0,
            protocol: VhostUserProtocolFeatures::empty(),
            config: Vec::new(),
            queues: 1,
            closing: Arc::new(AtomicBool::new(false)),
        };
        let offered = link.bounded("offer features", |f| f.get_features())?;
        if offered & VERSION_1 == 0 {
            return Err(FrontendError::Lacks("virtio 1.0 (VERSION_1)"));
        }
        if offered & PROTOCOL_FEATURES_BIT == 0 {
            return Err(FrontendError::Lacks("protocol features"));
        }
        // VERSION_1 from the first: libvhost-user's backends (QEMU's
        // storage daemon) refuse a legacy device for good.
        link.bounded("take features", |f| {
            f.set_features(PROTOCOL_FEATURES_BIT | VERSION_1)
        })?;
        let wanted = VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::INFLIGHT_SHMFD;
        let offered_protocol =
            link.bounded("offer protocol features", |f| f.get_protocol_features())?;
        if !offered_protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            return Err(FrontendError::Lacks("its configuration (CONFIG)"));
        }
        let protocol = offered_protocol & wanted;
        link.bounded("take protocol features", |f| {
            f.set_protocol_features(protocol)
        })?;
        link.bounded("take its owner", |f| f.set_owner())?;
        if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            link.frontend
                .set_hdr_flags(vhost::vhost_user::message::VhostUserHeaderFlag::NEED_REPLY);
        }
        let (_, config) = link.bounded("give its configuration", |f| {
            f.get_config(
                0,
                CONFIG_BYTES,
                VhostUserConfigFlags::WRITABLE,
                &[0; CONFIG_BYTES as usize],
            )
        })?;
        link.offered = offered;
        link.protocol = protocol;
        link.config = config;
        Ok(link)
    }

    /// Runs one exchange with the backend, bounded by [`BACKEND_TIMEOUT`]:
    /// past it a watchdog shuts the socket down, which fails the exchange
    /// (and every later one).
    fn bounded<T>(
        &mut self,
        what: &'static str,
        exchange: impl FnOnce(&mut Frontend) -> Result<T, vhost::Error>,
    ) -> Result<T, FrontendError> {
        let socket = self.socket.try_clone().map_err(FrontendError::Socket)?;
        let (done, finished) = channel::<()>();
        let watchdog = std::thread::Builder::new()
            .name("vhost-user-watchdog".into())
            .spawn(move || match finished.recv_timeout(BACKEND_TIMEOUT) {
                Err(RecvTimeoutError::Timeout) => {
                    let _ = nix::sys::socket::shutdown(
                        socket.as_raw_fd(),
                        nix::sys::socket::Shutdown::Both,
                    );
                    true
                }
                _ => false,
            })
            .map_err(FrontendError::Socket)?;
        let result = exchange(&mut self.frontend);
        drop(done);
        let timed_out = watchdog.join().unwrap_or(true);
        match result {
            Ok(value) => Ok(value),
            Err(_) if timed_out => Err(FrontendError::TimedOut(what)),
            Err(error) => Err(FrontendError::Protocol(what, error)),
        }
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

    /// Whether the backend tracks requests in flight for a successor.
    pub fn tracks_inflight(&self) -> bool {
        self.protocol
            .contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD)
    }

    /// Asks the backend for a new inflight region for queues of
    /// `queue_size` entries (a new set-up of the driver), checked to be
    /// what was asked and bounded.
    pub fn new_inflight(&mut self, queue_size: u16) -> Result<Inflight, FrontendError> {
        let asked = VhostUserInflight {
            mmap_size: 0,
            mmap_offset: 0,
            num_queues: self.queues as u16,
            queue_size,
        };
        let (shape, file) =
            self.bounded("give an inflight region", |f| f.get_inflight_fd(&asked))?;
        let bad = |why: String| Err(FrontendError::Inflight(why));
        if shape.num_queues != asked.num_queues || shape.queue_size != queue_size {
            return bad(format!(
                "{} queues of {} entries given for {} of {queue_size}",
                shape.num_queues, shape.queue_size, asked.num_queues
            ));
        }
        if shape.mmap_size == 0 || shape.mmap_size > MAX_INFLIGHT_BYTES {
            return bad(format!("{} bytes", shape.mmap_size));
        }
        let length = file
            .metadata()
            .map_err(|e| FrontendError::Inflight(format!("its file: {e}")))?
            .len();
        if shape
            .mmap_offset
            .checked_add(shape.mmap_size)
            .is_none_or(|end| end > length)
        {
            return bad(format!(
                "{} bytes at {} of a {length}-byte file",
                shape.mmap_size, shape.mmap_offset
            ));
        }
        Ok(Inflight { shape, file })
    }

    /// Hands the backend the region its predecessor kept requests in.
    pub fn resume_inflight(&mut self, inflight: &Inflight) -> Result<(), FrontendError> {
        let fd = inflight.file.as_raw_fd();
        self.bounded("take the inflight region", |f| {
            f.set_inflight_fd(&inflight.shape, fd)
        })
    }

    /// Hands the backend the whole memory table.
    pub fn set_memory(&mut self, regions: &[Region<'_>]) -> Result<(), FrontendError> {
        let infos: Vec<_> = regions.iter().map(Region::info).collect();
        self.bounded("take the memory table", |f| {
            f.set_mem_table(&infos).map(drop)
        })
    }

    /// Adds one region (a DIMM plugged).
    pub fn add_region(&mut self, region: &Region<'_>) -> Result<(), FrontendError> {
        let info = region.info();
        self.bounded("add a memory region", |f| f.add_mem_region(&info).map(drop))
    }

    /// Removes one region (a DIMM unplugged).
    pub fn remove_region(&mut self, region: &Region<'_>) -> Result<(), FrontendError> {
        let info = region.info();
        self.bounded("remove a memory region", |f| f.remove_mem_region(&info))
    }

    /// Starts the queues the driver set up, with the features it took
    /// (limited to [`BlockFrontend::driver_features`]).
    pub fn start(&mut self, features: u64, queues: &[QueueSetup<'_>]) -> Result<(), FrontendError> {
        let features = (features & self.driver_features()) | PROTOCOL_FEATURES_BIT;
        self.bounded("take the driver's features", |f| f.set_features(features))?;
        for (index, queue) in queues.iter().enumerate().take(self.queues) {
            self.bounded("size a queue", |f| f.set_vring_num(index, queue.size))?;
            let base = queue.base;
            self.bounded("take a queue's base", |f| f.set_vring_base(index, base))?;
            let addresses = VringConfigData {
                queue_max_size: queue.size,
                queue_size: queue.size,
                flags: 0,
                desc_table_addr: queue.descriptors,
                used_ring_addr: queue.used,
                avail_ring_addr: queue.available,
                log_addr: None,
            };
            self.bounded("take a queue's addresses", |f| {
                f.set_vring_addr(index, &addresses)
            })?;
            self.bounded("take a queue's call", |f| {
                f.set_vring_call(index, queue.call)
            })?;
            self.bounded("take a queue's kick", |f| {
                f.set_vring_kick(index, queue.kick)
            })?;
            self.bounded("enable a queue", |f| f.set_vring_enable(index, true))?;
        }
        Ok(())
    }

    /// Watches for the backend hanging up (it ended, or was killed): then,
    /// unless the core hung up first, `on_hangup` runs, once.
    pub fn watch_hangup(&self, on_hangup: Box<dyn FnOnce() + Send>) -> Result<(), FrontendError> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let socket = self.socket.try_clone().map_err(FrontendError::Socket)?;
        let closing = Arc::clone(&self.closing);
        std::thread::Builder::new()
            .name("vhost-user-hangup".into())
            .spawn(move || {
                let hangup = PollFlags::from_bits_retain(nix::libc::POLLRDHUP);
                let mut fds = [PollFd::new(socket.as_fd(), hangup)];
                while let Err(nix::errno::Errno::EINTR) = poll(&mut fds, PollTimeout::NONE) {}
                if !closing.load(Ordering::SeqCst) {
                    on_hangup();
                }
            })
            .map_err(FrontendError::Socket)?;
        Ok(())
    }

    /// Stops the queues (a driver reset): the backend finishes and returns
    /// each queue's next available index.
    pub fn stop(&mut self) -> Result<Vec<u32>, FrontendError> {
        (0..self.queues)
            .map(|index| {
                self.bounded("stop a queue", |f| {
                    f.set_vring_enable(index, false)?;
                    f.get_vring_base(index)
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    const GET_FEATURES: u32 = 1;
    const GET_PROTOCOL_FEATURES: u32 = 15;
    const GET_CONFIG: u32 = 24;
    const GET_INFLIGHT_FD: u32 = 31;

    /// What a fake backend answers GET_INFLIGHT_FD with: the region's
    /// shape (mmap size, queues, queue size) and its file's length.
    #[derive(Clone, Copy)]
    struct Lie {
        mmap_size: u64,
        queues: u16,
        queue_size: u16,
        file_bytes: u64,
    }

    /// A backend that offers VERSION_1, protocol features, CONFIG and
    /// INFLIGHT_SHMFD, and answers the inflight request with `lie`.
    fn fake_backend(mut stream: UnixStream, lie: Lie) {
        let reply = |code: u32, payload: &[u8]| {
            let mut bytes: Vec<u8> = [code, 0x5, payload.len() as u32]
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .collect();
            bytes.extend_from_slice(payload);
            bytes
        };
        loop {
            let mut header = [0u8; 12];
            if stream.read_exact(&mut header).is_err() {
                return;
            }
            let word = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().unwrap());
            let mut payload = vec![0; word(8) as usize];
            if stream.read_exact(&mut payload).is_err() {
                return;
            }
            let answer = match word(0) {
                GET_FEATURES => reply(
                    GET_FEATURES,
                    &(VERSION_1 | PROTOCOL_FEATURES_BIT).to_le_bytes(),
                ),
                GET_PROTOCOL_FEATURES => {
                    let offered = VhostUserProtocolFeatures::CONFIG
                        | VhostUserProtocolFeatures::INFLIGHT_SHMFD;
                    reply(GET_PROTOCOL_FEATURES, &offered.bits().to_le_bytes())
                }
                GET_CONFIG => {
                    let mut body: Vec<u8> = [0u32, CONFIG_BYTES, 0]
                        .iter()
                        .flat_map(|w| w.to_le_bytes())
                        .collect();
                    body.extend(vec![0; CONFIG_BYTES as usize]);
                    reply(GET_CONFIG, &body)
                }
                GET_INFLIGHT_FD => {
                    let mut body = lie.mmap_size.to_le_bytes().to_vec();
                    body.extend(0u64.to_le_bytes());
                    body.extend(lie.queues.to_le_bytes());
                    body.extend(lie.queue_size.to_le_bytes());
                    // repr(C): padded to 24 bytes.
                    body.extend([0; 4]);
                    let bytes = reply(GET_INFLIGHT_FD, &body);
                    let file = std::fs::File::from(
                        nix::sys::memfd::memfd_create("lie", nix::sys::memfd::MFdFlags::empty())
                            .unwrap(),
                    );
                    file.set_len(lie.file_bytes).unwrap();
                    let fds = [file.as_raw_fd()];
                    let control = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
                    let iov = [std::io::IoSlice::new(&bytes)];
                    nix::sys::socket::sendmsg::<()>(
                        stream.as_raw_fd(),
                        &iov,
                        &control,
                        nix::sys::socket::MsgFlags::empty(),
                        None,
                    )
                    .unwrap();
                    continue;
                }
                // Sets: no reply without REPLY_ACK.
                _ => continue,
            };
            if stream.write_all(&answer).is_err() {
                return;
            }
        }
    }

    fn inflight_from(lie: Lie) -> Result<Inflight, FrontendError> {
        let (core, backend) = UnixStream::pair().unwrap();
        let fake = std::thread::spawn(move || fake_backend(backend, lie));
        let mut frontend = BlockFrontend::connect(core).unwrap();
        assert!(frontend.tracks_inflight());
        let result = frontend.new_inflight(16);
        drop(frontend);
        fake.join().unwrap();
        result
    }

    #[test]
    fn an_inflight_region_is_kept_only_as_asked_and_bounded() {
        let honest = Lie {
            mmap_size: 320,
            queues: 1,
            queue_size: 16,
            file_bytes: 320,
        };
        assert!(inflight_from(honest).is_ok());
        for (lie, why) in [
            (
                Lie {
                    mmap_size: 2 << 20,
                    file_bytes: 2 << 20,
                    ..honest
                },
                "bytes",
            ),
            (
                Lie {
                    mmap_size: 0,
                    ..honest
                },
                "0 bytes",
            ),
            (
                Lie {
                    queue_size: 256,
                    ..honest
                },
                "entries given",
            ),
            (
                Lie {
                    queues: 2,
                    ..honest
                },
                "queues",
            ),
            (
                Lie {
                    file_bytes: 100,
                    ..honest
                },
                "-byte file",
            ),
        ] {
            let error = inflight_from(lie).err().expect("refused");
            assert!(matches!(error, FrontendError::Inflight(_)), "{error}");
            assert!(error.to_string().contains(why), "{error}");
        }
    }
}
