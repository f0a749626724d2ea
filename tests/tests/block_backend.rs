//! The block device process against the core's vhost-user frontend, with
//! no VM: the test plays the driver, lays a virtqueue out in a memfd it
//! shares as guest memory, kicks, and waits for the call. The process runs
//! under its seccomp filter (kill mode), so every call it makes serving
//! reads, writes, flushes and discards is one its filter allows.

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use papervisor_tests::binary;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm::block::frontend::{BlockFrontend, QueueSetup, Region};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const MEMORY_BYTES: usize = 4 << 20;
const QUEUE_SIZE: u16 = 16;
const HEADER_AT: u64 = 0x10_0000;
const DATA_AT: u64 = 0x20_0000;
const STATUS_AT: u64 = 0x30_0000;
const NEXT: u16 = 1;
const WRITE: u16 = 2;

/// A scratch directory removed when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let path = std::env::temp_dir().join(format!("papervisor-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Scratch(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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

/// A block process serving `image`, and the frontend's end of its socket.
fn start_block(scratch: &Scratch, image: &File, extra: &[&str]) -> (Child, UnixStream) {
    let path = scratch.0.join("vhost-user.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let stream = UnixStream::connect(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let listener = OwnedFd::from(listener);
    let image = image.as_fd().try_clone_to_owned().unwrap();
    let (listener_fd, image_fd) = (listener.as_raw_fd(), image.as_raw_fd());
    let mut command = Command::new(binary("papervisor-block"));
    command
        .args(["--id", "disk0", "--log-level", "debug"])
        .args(extra);
    // SAFETY: hand_over makes only async-signal-safe calls.
    unsafe {
        command.pre_exec(move || hand_over(listener_fd, image_fd));
    }
    let child = command.spawn().unwrap();
    (child, stream)
}

fn image(scratch: &Scratch, bytes: u64) -> File {
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(scratch.0.join("image.raw"))
        .unwrap();
    file.set_len(bytes).unwrap();
    file
}

/// Guest memory in a memfd, as the core has it.
fn guest_memory() -> (GuestMemoryMmap, File) {
    let fd = nix::sys::memfd::memfd_create("guest", nix::sys::memfd::MFdFlags::empty()).unwrap();
    let file = File::from(fd);
    file.set_len(MEMORY_BYTES as u64).unwrap();
    let memory = GuestMemoryMmap::from_ranges_with_files([(
        GuestAddress(0),
        MEMORY_BYTES,
        Some(FileOffset::new(file.try_clone().unwrap(), 0)),
    )])
    .unwrap();
    (memory, file)
}

struct Driver<'a> {
    memory: &'a GuestMemoryMmap,
    queue: MockSplitQueue<'a, GuestMemoryMmap>,
    kick: EventFd,
    call: EventFd,
    posted: u16,
}

impl<'a> Driver<'a> {
    fn new(memory: &'a GuestMemoryMmap) -> Driver<'a> {
        Driver {
            memory,
            queue: MockSplitQueue::create(memory, GuestAddress(0), QUEUE_SIZE),
            kick: EventFd::new(EFD_NONBLOCK).unwrap(),
            call: EventFd::new(EFD_NONBLOCK).unwrap(),
            posted: 0,
        }
    }

    fn host(&self, address: GuestAddress) -> u64 {
        self.memory.get_host_address(address).unwrap() as u64
    }

    fn setup(&self) -> QueueSetup<'_> {
        QueueSetup {
            size: QUEUE_SIZE,
            descriptors: self.host(self.queue.desc_table_addr()),
            available: self.host(self.queue.avail_addr()),
            used: self.host(self.queue.used_addr()),
            kick: &self.kick,
            call: &self.call,
        }
    }

    /// Posts one request and waits for its completion: its status byte.
    fn request(&mut self, kind: u32, sector: u64, data: u32, to_guest: bool) -> u8 {
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&kind.to_le_bytes());
        header[8..].copy_from_slice(&sector.to_le_bytes());
        self.memory
            .write_slice(&header, GuestAddress(HEADER_AT))
            .unwrap();
        self.memory
            .write_obj(0xffu8, GuestAddress(STATUS_AT))
            .unwrap();
        let first = (self.posted % 5) * 3;
        let mut chain = vec![(HEADER_AT, 16, 0)];
        if data > 0 {
            chain.push((DATA_AT, data, if to_guest { WRITE } else { 0 }));
        }
        chain.push((STATUS_AT, 1, WRITE));
        let last = chain.len() - 1;
        let descriptors: Vec<RawDescriptor> = chain
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| {
                let next = if i < last { NEXT } else { 0 };
                let index = first + i as u16;
                RawDescriptor::from(Descriptor::new(addr, len, flags | next, index + 1))
            })
            .collect();
        self.queue.add_desc_chains(&descriptors, first).unwrap();
        self.posted += 1;
        self.kick.write(1).unwrap();
        // The backend may signal a call it was just given once, with
        // nothing used: wait for the used index, not for one signal.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let used: u16 = self
                .memory
                .read_obj(self.queue.used_addr().unchecked_add(2))
                .unwrap();
            if used == self.posted {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no completion within 10 s (used index {used})"
            );
            // SAFETY: the eventfd outlives this borrow of its descriptor.
            let call = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.call.as_raw_fd()) };
            let mut fds = [PollFd::new(call, PollFlags::POLLIN)];
            if poll(&mut fds, PollTimeout::from(100u16)).unwrap() == 1 {
                self.call.read().unwrap();
            }
        }
        self.memory.read_obj(GuestAddress(STATUS_AT)).unwrap()
    }
}

fn pattern(bytes: usize, seed: u8) -> Vec<u8> {
    (0..bytes)
        .map(|i| (i as u8).wrapping_mul(7) ^ seed)
        .collect()
}

fn connect(stream: UnixStream, memory: &GuestMemoryMmap, memfd: &File) -> BlockFrontend {
    let mut frontend = BlockFrontend::connect(stream).expect("the backend negotiates");
    let region = Region {
        guest_address: 0,
        size: MEMORY_BYTES as u64,
        host_address: memory.get_host_address(GuestAddress(0)).unwrap() as u64,
        file_offset: 0,
        fd: memfd.as_fd(),
    };
    frontend.set_memory(&[region]).unwrap();
    frontend
}

const VERSION_1: u64 = 1 << 32;

#[test]
fn the_block_process_serves_reads_writes_flushes_and_discards_under_its_filter() {
    let scratch = Scratch::new("block-rw");
    let file = image(&scratch, 1 << 20);
    let (mut child, stream) = start_block(&scratch, &file, &[]);
    let (memory, memfd) = guest_memory();
    let mut frontend = connect(stream, &memory, &memfd);
    assert_eq!(frontend.sectors(), 2048);
    assert!(!frontend.read_only());
    let mut driver = Driver::new(&memory);
    frontend.start(VERSION_1, &[driver.setup()]).unwrap();

    let data = pattern(8192, 5);
    memory.write_slice(&data, GuestAddress(DATA_AT)).unwrap();
    assert_eq!(driver.request(1, 40, 8192, false), 0, "write");
    let mut on_disk = vec![0; data.len()];
    file.read_exact_at(&mut on_disk, 40 * 512).unwrap();
    assert_eq!(on_disk, data, "the write reached the image");

    memory
        .write_slice(&vec![0; data.len()], GuestAddress(DATA_AT))
        .unwrap();
    assert_eq!(driver.request(0, 40, 8192, true), 0, "read");
    let mut read = vec![0; data.len()];
    memory.read_slice(&mut read, GuestAddress(DATA_AT)).unwrap();
    assert_eq!(read, data, "the read returned the data");

    assert_eq!(driver.request(4, 0, 0, false), 0, "flush");
    assert_eq!(driver.request(8, 0, 20, true), 0, "get-id");
    let mut id = [0u8; 20];
    memory.read_slice(&mut id, GuestAddress(DATA_AT)).unwrap();
    assert_eq!(&id[..6], b"disk0\0");

    let mut segment = [0u8; 16];
    segment[..8].copy_from_slice(&40u64.to_le_bytes());
    segment[8..12].copy_from_slice(&8u32.to_le_bytes());
    memory.write_slice(&segment, GuestAddress(DATA_AT)).unwrap();
    assert_eq!(driver.request(11, 0, 16, false), 0, "discard");
    file.read_exact_at(&mut on_disk, 40 * 512).unwrap();
    assert_eq!(&on_disk[..4096], &[0; 4096][..], "the discard zeroed");
    assert_eq!(driver.request(0, 2048, 512, true), 1, "a read past the end");
    assert_eq!(driver.request(77, 0, 0, false), 2, "an unknown request");

    assert_eq!(frontend.stop().unwrap(), vec![u32::from(driver.posted)]);
    drop(frontend);
    let status = child.wait().unwrap();
    assert!(status.success(), "the process ended with {status}");
}

#[test]
fn a_read_only_block_process_refuses_writes_with_ioerr() {
    let scratch = Scratch::new("block-ro");
    let file = image(&scratch, 64 << 10);
    file.write_all_at(&[0xab; 512], 0).unwrap();
    let (mut child, stream) = start_block(&scratch, &file, &["--read-only"]);
    let (memory, memfd) = guest_memory();
    let mut frontend = connect(stream, &memory, &memfd);
    assert!(frontend.read_only());
    let mut driver = Driver::new(&memory);
    frontend.start(VERSION_1, &[driver.setup()]).unwrap();
    memory
        .write_slice(&[0x11; 512], GuestAddress(DATA_AT))
        .unwrap();
    assert_eq!(driver.request(1, 0, 512, false), 1, "IOERR");
    let mut on_disk = [0; 512];
    file.read_exact_at(&mut on_disk, 0).unwrap();
    assert_eq!(on_disk, [0xab; 512], "the image is unchanged");
    assert_eq!(driver.request(0, 0, 512, true), 0, "reads still work");
    drop(frontend);
    assert!(child.wait().unwrap().success());
}

#[test]
fn the_block_process_refuses_descriptors_that_are_not_a_listener_and_an_image() {
    let scratch = Scratch::new("block-bad");
    let file = image(&scratch, 4096);
    // A connected stream where the listener belongs.
    let (stream, _peer) = UnixStream::pair().unwrap();
    let stream = OwnedFd::from(stream);
    let image = file.as_fd().try_clone_to_owned().unwrap();
    let (stream_fd, image_fd) = (stream.as_raw_fd(), image.as_raw_fd());
    let mut command = Command::new(binary("papervisor-block"));
    // SAFETY: hand_over makes only async-signal-safe calls.
    unsafe {
        command.pre_exec(move || hand_over(stream_fd, image_fd));
    }
    let output = command.output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("not a listening socket"), "{log}");
}

#[test]
fn every_call_the_block_filter_allows_the_spawners_inherited_filter_allows() {
    // The spawner's filter stays on what it starts (filters are inherited
    // across exec), so a call only the block filter allows would kill the
    // jailed process.
    let spawner = jailer::spawner::rules();
    let missing: Vec<i64> = device_procs::seccomp::block_rules()
        .into_keys()
        .filter(|call| !spawner.contains_key(call))
        .collect();
    assert!(missing.is_empty(), "the spawner's filter lacks {missing:?}");
}
