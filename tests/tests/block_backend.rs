//! The block device process against the core's vhost-user frontend, with
//! no VM: the test plays the driver, lays a virtqueue out in a memfd it
//! shares as guest memory, kicks, and waits for the call. The process runs
//! under its seccomp filter (kill mode), so every call it makes serving
//! reads, writes, flushes and discards is one its filter allows.

use papervisor_tests::binary;
use papervisor_tests::vhost_driver::{
    command_with, connect, guest_memory, start_backend, Driver, Where, VERSION_1,
};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::process::Child;
use vm_memory::Bytes;

const QUEUE_SIZE: u16 = 16;

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

/// A block process serving `image`, and the frontend's end of its socket.
fn start_block(scratch: &Scratch, image: &File, extra: &[&str]) -> (Child, UnixStream) {
    let mut args = vec!["--id", "disk0", "--log-level", "debug"];
    args.extend_from_slice(extra);
    let (child, stream) = start_backend(
        Where::Process,
        &binary("papervisor-block"),
        &scratch.0,
        image,
        &args,
    );
    (child.expect("a process"), stream)
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

fn pattern(bytes: usize, seed: u8) -> Vec<u8> {
    (0..bytes)
        .map(|i| (i as u8).wrapping_mul(7) ^ seed)
        .collect()
}

#[test]
fn the_block_process_serves_reads_writes_flushes_and_discards_under_its_filter() {
    let scratch = Scratch::new("block-rw");
    let file = image(&scratch, 1 << 20);
    let (mut child, stream) = start_block(&scratch, &file, &[]);
    let (memory, memfd) = guest_memory();
    let mut frontend = connect(stream, &memory, &memfd);
    assert_eq!(frontend.sectors(), 2048);
    assert!(!frontend.read_only());
    let mut driver = Driver::new(&memory, QUEUE_SIZE);
    frontend.start(VERSION_1, &[driver.setup()]).unwrap();

    let data = pattern(8192, 5);
    memory.write_slice(&data, Driver::data_at(0)).unwrap();
    assert_eq!(driver.request(1, 40, 8192, false), 0, "write");
    let mut on_disk = vec![0; data.len()];
    file.read_exact_at(&mut on_disk, 40 * 512).unwrap();
    assert_eq!(on_disk, data, "the write reached the image");

    memory
        .write_slice(&vec![0; data.len()], Driver::data_at(0))
        .unwrap();
    assert_eq!(driver.request(0, 40, 8192, true), 0, "read");
    let mut read = vec![0; data.len()];
    memory.read_slice(&mut read, Driver::data_at(0)).unwrap();
    assert_eq!(read, data, "the read returned the data");

    assert_eq!(driver.request(4, 0, 0, false), 0, "flush");
    assert_eq!(driver.request(8, 0, 20, true), 0, "get-id");
    let mut id = [0u8; 20];
    memory.read_slice(&mut id, Driver::data_at(0)).unwrap();
    assert_eq!(&id[..6], b"disk0\0");

    let mut segment = [0u8; 16];
    segment[..8].copy_from_slice(&40u64.to_le_bytes());
    segment[8..12].copy_from_slice(&8u32.to_le_bytes());
    memory.write_slice(&segment, Driver::data_at(0)).unwrap();
    assert_eq!(driver.request(11, 0, 16, false), 0, "discard");
    file.read_exact_at(&mut on_disk, 40 * 512).unwrap();
    assert_eq!(&on_disk[..4096], &[0; 4096][..], "the discard zeroed");
    assert_eq!(driver.request(0, 2048, 512, true), 1, "a read past the end");
    assert_eq!(driver.request(77, 0, 0, false), 2, "an unknown request");

    assert_eq!(frontend.stop().unwrap(), vec![7]);
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
    let mut driver = Driver::new(&memory, QUEUE_SIZE);
    frontend.start(VERSION_1, &[driver.setup()]).unwrap();
    memory
        .write_slice(&[0x11; 512], Driver::data_at(0))
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
    let output = command_with(&binary("papervisor-block"), &[], &stream, &file)
        .output()
        .unwrap();
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

#[test]
fn the_block_backend_serves_the_same_on_a_thread() {
    let scratch = Scratch::new("block-thread");
    let file = image(&scratch, 1 << 20);
    let (child, stream) = start_backend(
        Where::Thread,
        &binary("papervisor-block"),
        &scratch.0,
        &file,
        &["--id", "disk0"],
    );
    assert!(child.is_none());
    let (memory, memfd) = guest_memory();
    let mut frontend = connect(stream, &memory, &memfd);
    let mut driver = Driver::new(&memory, QUEUE_SIZE);
    frontend.start(VERSION_1, &[driver.setup()]).unwrap();
    let data = pattern(4096, 9);
    memory.write_slice(&data, Driver::data_at(0)).unwrap();
    assert_eq!(driver.request(1, 8, 4096, false), 0, "write");
    let mut on_disk = vec![0; data.len()];
    file.read_exact_at(&mut on_disk, 8 * 512).unwrap();
    assert_eq!(on_disk, data);
}
