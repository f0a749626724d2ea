//! A virtio-blk request (`device_procs::block::request`) as a guest's
//! driver, or a hostile one, lays it out: the input's first byte is the
//! number of descriptors (1 to 8) and whether the disk is read-only; then
//! 8 bytes per descriptor (le32 address, le16 length in 16-byte units + 1,
//! flags, pad); then the bytes at the header's place (type, sector, data).
//!
//! Beyond not panicking: a completion writes at most what the chain lets
//! the device write (when no descriptor is an indirect table, whose
//! entries are in guest memory), and a read-only disk's image never changes.

use device_procs::block::request::{execute, CHUNK_BYTES};
use device_procs::block::Disk;
use std::os::unix::fs::FileExt;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEMORY_BYTES: usize = 1 << 20;
/// Where the input's payload goes: most descriptors point near it.
const PAYLOAD_AT: u64 = 0x8_0000;
const IMAGE_BYTES: u64 = 64 << 10;
const WRITE: u16 = 2;
const INDIRECT: u16 = 4;

/// The target.
pub fn fuzz(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(first & 7) + 1;
    let read_only = first & 8 != 0;
    if rest.len() < count * 8 {
        return;
    }
    let (layout, payload) = rest.split_at(count * 8);
    let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEMORY_BYTES)]).unwrap();
    let payload = &payload[..payload.len().min(0x1000)];
    memory
        .write_slice(payload, GuestAddress(PAYLOAD_AT))
        .unwrap();
    let mut writable = 0u64;
    let mut indirect = false;
    let descriptors: Vec<RawDescriptor> = layout
        .chunks_exact(8)
        .map(|d| {
            let addr = u64::from(u32::from_le_bytes([d[0], d[1], d[2], d[3]]));
            let len = (u32::from(u16::from_le_bytes([d[4], d[5]])) + 1) * 16 % (2 << 20);
            let flags = u16::from(d[6]) & (WRITE | INDIRECT);
            if flags & WRITE != 0 {
                writable += u64::from(len);
            }
            // An indirect table's entries (in guest memory) say for themselves.
            indirect |= flags & INDIRECT != 0;
            RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
        })
        .collect();
    let queue = MockSplitQueue::create(&memory, GuestAddress(0), 16);
    let Ok(chain) = queue.build_desc_chain(&descriptors) else {
        return;
    };
    let image = image();
    let before = contents(&image);
    let disk = Disk::new(image.try_clone().unwrap(), read_only, "fuzz").unwrap();
    let mut scratch = vec![0; CHUNK_BYTES];
    if let Ok(completion) = execute(chain, &memory, &disk, &mut scratch) {
        assert!(
            indirect || u64::from(completion.written) <= writable,
            "wrote {} of {writable} writable bytes",
            completion.written
        );
    }
    if read_only {
        assert!(contents(&image) == before, "a read-only image changed");
    }
}

fn image() -> std::fs::File {
    let fd = nix::sys::memfd::memfd_create("image", nix::sys::memfd::MFdFlags::empty()).unwrap();
    let file = std::fs::File::from(fd);
    file.set_len(IMAGE_BYTES).unwrap();
    file.write_all_at(&[0x5a; 4096], 0).unwrap();
    file
}

fn contents(image: &std::fs::File) -> Vec<u8> {
    let mut bytes = vec![0; IMAGE_BYTES as usize];
    image.read_exact_at(&mut bytes, 0).unwrap();
    bytes
}
