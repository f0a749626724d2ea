//! A virtio-blk driver on the host, for tests and benchmarks of a block
//! backend without a VM: guest memory is a memfd the core's vhost-user
//! frontend (`vmm::block::frontend`) hands the backend, the driver lays a
//! split virtqueue out in it, posts requests, kicks and waits for the used
//! ring. The backend is the block device process (`papervisor-block`,
//! under its seccomp filter) or the same code on a thread.

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm::block::frontend::{BlockFrontend, QueueSetup, Region};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Guest memory: 8 MiB.
pub const MEMORY_BYTES: usize = 8 << 20;
/// Where request `i`'s header, data and status go.
const HEADERS_AT: u64 = 0x10_0000;
const DATA_AT: u64 = 0x20_0000;
const STATUS_AT: u64 = 0x60_0000;
/// The data of one request, at most.
pub const MAX_DATA: u32 = 64 << 10;
/// Requests in flight, at most (three descriptors each).
pub const MAX_IN_FLIGHT: usize = 32;
const NEXT: u16 = 1;
const WRITE: u16 = 2;
/// virtio's VERSION_1.
pub const VERSION_1: u64 = 1 << 32;
/// Request types.
pub const READ: u32 = 0;
/// A write.
pub const WRITE_REQUEST: u32 = 1;
/// A flush.
pub const FLUSH: u32 = 4;
/// Get-id: the backend answers from memory, never touching the image.
pub const GET_ID: u32 = 8;
/// A discard.
pub const DISCARD: u32 = 11;

/// Where a backend runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Where {
    /// The block device process, under its filter.
    Process,
    /// The same code on a thread of this process.
    Thread,
}

/// In the child, between fork and exec: `socket` becomes descriptor 3 and
/// `image` 4, by way of copies above both so that neither overwrites the
/// other. Only async-signal-safe calls.
fn hand_over(socket: i32, image: i32) -> std::io::Result<()> {
    // SAFETY: fcntl and dup2 on descriptors of this (forked) process.
    unsafe {
        let socket = nix::libc::fcntl(socket, nix::libc::F_DUPFD, 100);
        let image = nix::libc::fcntl(image, nix::libc::F_DUPFD, 100);
        if socket < 0
            || image < 0
            || nix::libc::dup2(socket, 3) < 0
            || nix::libc::dup2(image, 4) < 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The command of `papervisor-block` (or anything else) with `socket` as
/// descriptor 3 and `image` as 4 (both must stay open until it starts).
pub fn command_with(program: &Path, args: &[&str], socket: &OwnedFd, image: &File) -> Command {
    let (socket_fd, image_fd) = (socket.as_raw_fd(), image.as_raw_fd());
    let mut command = Command::new(program);
    command.args(args);
    // SAFETY: hand_over makes only async-signal-safe calls.
    unsafe {
        command.pre_exec(move || hand_over(socket_fd, image_fd));
    }
    command
}

/// A backend serving `image`, and the frontend's end of its socket: the
/// listener is bound in `dir`, connected to and unlinked, as the core does.
pub fn start_backend(
    place: Where,
    program: &Path,
    dir: &Path,
    image: &File,
    args: &[&str],
) -> (Option<Child>, UnixStream) {
    let path = dir.join("vhost-user.sock");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).expect("a listener");
    let stream = UnixStream::connect(&path).expect("connected");
    std::fs::remove_file(&path).expect("unlinked");
    let listener = OwnedFd::from(listener);
    match place {
        Where::Process => {
            let child = command_with(program, args, &listener, image)
                .spawn()
                .expect("the block process starts");
            (Some(child), stream)
        }
        Where::Thread => {
            let image = image.as_fd().try_clone_to_owned().expect("an image copy");
            let options = device_procs::block::process::parse_options(
                &args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            )
            .expect("options");
            std::thread::spawn(move || {
                device_procs::block::process::serve(listener, image, &options, || Ok(()))
            });
            (None, stream)
        }
    }
}

/// Guest memory in a memfd, as the core has it.
pub fn guest_memory() -> (GuestMemoryMmap, File) {
    let fd = nix::sys::memfd::memfd_create("guest", nix::sys::memfd::MFdFlags::empty())
        .expect("a memfd");
    let file = File::from(fd);
    file.set_len(MEMORY_BYTES as u64).expect("sized");
    let memory = GuestMemoryMmap::from_ranges_with_files([(
        GuestAddress(0),
        MEMORY_BYTES,
        Some(FileOffset::new(file.try_clone().expect("a copy"), 0)),
    )])
    .expect("mapped");
    (memory, file)
}

/// The frontend, negotiated, with the memory table set.
pub fn connect(stream: UnixStream, memory: &GuestMemoryMmap, memfd: &File) -> BlockFrontend {
    let mut frontend = BlockFrontend::connect(stream).expect("the backend negotiates");
    let region = Region {
        guest_address: 0,
        size: MEMORY_BYTES as u64,
        host_address: memory.get_host_address(GuestAddress(0)).expect("mapped") as u64,
        file_offset: 0,
        fd: memfd.as_fd(),
    };
    frontend.set_memory(&[region]).expect("the memory table");
    frontend
}

/// One request: its type, sector, data bytes, and whether the device
/// writes the data (a read).
#[derive(Clone, Copy, Debug)]
pub struct Request {
    /// `READ`, `WRITE_REQUEST`, ...
    pub kind: u32,
    /// The first sector.
    pub sector: u64,
    /// Data bytes (at most [`MAX_DATA`]).
    pub data: u32,
    /// The device writes the data.
    pub to_guest: bool,
}

/// The driver of one queue.
pub struct Driver<'a> {
    memory: &'a GuestMemoryMmap,
    queue: MockSplitQueue<'a, GuestMemoryMmap>,
    size: u16,
    kick: EventFd,
    call: EventFd,
    avail: u16,
}

impl<'a> Driver<'a> {
    /// A queue of `size` entries at guest address 0.
    pub fn new(memory: &'a GuestMemoryMmap, size: u16) -> Driver<'a> {
        Driver {
            memory,
            queue: MockSplitQueue::create(memory, GuestAddress(0), size),
            size,
            kick: EventFd::new(EFD_NONBLOCK).expect("an eventfd"),
            call: EventFd::new(EFD_NONBLOCK).expect("an eventfd"),
            avail: 0,
        }
    }

    fn host(&self, address: GuestAddress) -> u64 {
        self.memory.get_host_address(address).expect("mapped") as u64
    }

    /// The queue as the frontend hands it over.
    pub fn setup(&self) -> QueueSetup<'_> {
        QueueSetup {
            size: self.size,
            descriptors: self.host(self.queue.desc_table_addr()),
            available: self.host(self.queue.avail_addr()),
            used: self.host(self.queue.used_addr()),
            base: 0,
            kick: &self.kick,
            call: &self.call,
        }
    }

    /// Where request slot `i`'s data is.
    pub fn data_at(i: usize) -> GuestAddress {
        GuestAddress(DATA_AT + i as u64 * u64::from(MAX_DATA))
    }

    fn used_index(&self) -> u16 {
        self.memory
            .read_obj(self.queue.used_addr().unchecked_add(2))
            .expect("the used ring")
    }

    /// Posts `requests` (at most [`MAX_IN_FLIGHT`]), kicks once, and waits
    /// until all are used: their status bytes.
    pub fn run(&mut self, requests: &[Request]) -> Vec<u8> {
        assert!(requests.len() <= MAX_IN_FLIGHT && requests.len() * 3 <= usize::from(self.size));
        for (i, request) in requests.iter().enumerate() {
            let header_at = HEADERS_AT + 16 * i as u64;
            let mut header = [0u8; 16];
            header[..4].copy_from_slice(&request.kind.to_le_bytes());
            header[8..].copy_from_slice(&request.sector.to_le_bytes());
            self.memory
                .write_slice(&header, GuestAddress(header_at))
                .expect("a header");
            let status_at = GuestAddress(STATUS_AT + i as u64);
            self.memory.write_obj(0xffu8, status_at).expect("a status");
            let first = (3 * i) as u16;
            let mut chain = vec![(header_at, 16, 0)];
            if request.data > 0 {
                let flags = if request.to_guest { WRITE } else { 0 };
                chain.push((Self::data_at(i).0, request.data, flags));
            }
            chain.push((status_at.0, 1, WRITE));
            let last = chain.len() - 1;
            for (n, &(addr, len, flags)) in chain.iter().enumerate() {
                let index = first + n as u16;
                let next = if n < last { NEXT } else { 0 };
                let descriptor = Descriptor::new(addr, len, flags | next, index + 1);
                self.queue
                    .desc_table()
                    .store(index, RawDescriptor::from(descriptor))
                    .expect("a descriptor");
            }
            let slot = u64::from(self.avail % self.size);
            self.memory
                .write_obj(first, self.queue.avail_addr().unchecked_add(4 + 2 * slot))
                .expect("the avail ring");
            self.avail = self.avail.wrapping_add(1);
        }
        self.memory
            .write_obj(self.avail, self.queue.avail_addr().unchecked_add(2))
            .expect("the avail index");
        self.kick.write(1).expect("a kick");
        self.wait_used();
        (0..requests.len())
            .map(|i| {
                self.memory
                    .read_obj(GuestAddress(STATUS_AT + i as u64))
                    .expect("a status")
            })
            .collect()
    }

    /// Waits until the used index catches up with what was posted (the
    /// backend may signal a call it was just given once, with nothing
    /// used: the index, not one signal, says).
    fn wait_used(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.used_index() != self.avail {
            assert!(Instant::now() < deadline, "no completion within 10 s");
            // SAFETY: the eventfd outlives this borrow of its descriptor.
            let call = unsafe { BorrowedFd::borrow_raw(self.call.as_raw_fd()) };
            let mut fds = [PollFd::new(call, PollFlags::POLLIN)];
            if poll(&mut fds, PollTimeout::from(100u16)).unwrap_or(0) == 1 {
                let _ = self.call.read();
            }
        }
    }

    /// Posts one request and waits for it: its status.
    pub fn request(&mut self, kind: u32, sector: u64, data: u32, to_guest: bool) -> u8 {
        self.run(&[Request {
            kind,
            sector,
            data,
            to_guest,
        }])[0]
    }
}
