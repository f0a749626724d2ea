//! One virtio-blk request, read from the guest's descriptor chain and carried
//! out on a [`Disk`]: the header (type, sector), the data, and the status
//! byte written last. Everything here comes from the guest and is checked:
//! a chain too short for a header or a status, data that is not whole
//! sectors, a range past the disk's end, a write to a read-only disk, a
//! discard with too many segments; each ends as a status, never a panic,
//! and the data moves in bounded chunks whatever the chain claims.

use super::{Disk, DiskError, SECTOR_BYTES};
use std::io::{Read, Write};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::{ByteValued, GuestMemoryMmap};

/// The bytes of a request's header: le32 type, le32 reserved, le64 sector.
pub const HEADER_BYTES: usize = 16;
/// The bytes of a get-id answer (NUL padded).
pub const ID_BYTES: usize = 20;
/// The segments one discard or write-zeroes request may carry (the
/// `max_discard_seg` / `max_write_zeroes_seg` the device offers).
pub const MAX_SEGMENTS: u32 = 1;
/// The sectors one segment may cover (`max_discard_sectors` /
/// `max_write_zeroes_sectors`): 1 GiB.
pub const MAX_SEGMENT_SECTORS: u32 = 1 << 21;
/// Data moves between guest memory and the image in pieces of at most this
/// many bytes.
pub const CHUNK_BYTES: usize = 128 * 1024;

/// A request's header as the guest laid it out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
struct Header {
    kind: u32,
    reserved: u32,
    sector: u64,
}
// SAFETY: plain integers, no padding (4 + 4 + 8 bytes), any bit pattern valid.
unsafe impl ByteValued for Header {}

/// A discard or write-zeroes segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
struct Segment {
    sector: u64,
    sectors: u32,
    flags: u32,
}
// SAFETY: plain integers, no padding (8 + 4 + 4 bytes), any bit pattern valid.
unsafe impl ByteValued for Segment {}

/// The `unmap` flag of a write-zeroes segment; reserved for a discard.
const SEGMENT_UNMAP: u32 = 1;

/// What a request the device can answer came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The status byte written last (`VIRTIO_BLK_S_*`).
    pub status: u8,
    /// The bytes the device wrote into the chain, the status included: the
    /// used element's length.
    pub written: u32,
}

/// Why a chain is no request at all: nowhere to put a status, so it cannot
/// be answered and the device only returns it (used length 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// The chain's descriptors do not lie in guest memory or loop.
    #[error("the descriptor chain is not in guest memory")]
    Chain,
    /// The chain has no device-writable byte for the status.
    #[error("the chain has no room for a status")]
    NoStatus,
}

/// What one request does, by type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operation {
    Read,
    Write,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
    Unsupported,
}

impl Operation {
    fn of(kind: u32) -> Operation {
        match kind {
            VIRTIO_BLK_T_IN => Operation::Read,
            VIRTIO_BLK_T_OUT => Operation::Write,
            VIRTIO_BLK_T_FLUSH => Operation::Flush,
            VIRTIO_BLK_T_GET_ID => Operation::GetId,
            VIRTIO_BLK_T_DISCARD => Operation::Discard,
            VIRTIO_BLK_T_WRITE_ZEROES => Operation::WriteZeroes,
            _ => Operation::Unsupported,
        }
    }
}

/// Carries out the request in `chain` on `disk` and writes its status.
/// `scratch` is the caller's buffer of [`CHUNK_BYTES`], reused across
/// requests so that no request allocates.
pub fn execute<M>(
    chain: DescriptorChain<M>,
    memory: &GuestMemoryMmap,
    disk: &Disk,
    scratch: &mut [u8],
) -> Result<Completion, Malformed>
where
    M: std::ops::Deref<Target = GuestMemoryMmap> + Clone,
{
    let mut reader = chain.clone().reader(memory).map_err(|_| Malformed::Chain)?;
    let mut writer = chain.writer(memory).map_err(|_| Malformed::Chain)?;
    let status_at = writer
        .available_bytes()
        .checked_sub(1)
        .ok_or(Malformed::NoStatus)?;
    let mut status_writer = writer.split_at(status_at).map_err(|_| Malformed::Chain)?;
    let status = match reader.read_obj::<Header>() {
        Ok(header) => carry_out(header, &mut reader, &mut writer, disk, scratch),
        Err(_) => VIRTIO_BLK_S_IOERR as u8,
    };
    status_writer
        .write_all(&[status])
        .map_err(|_| Malformed::Chain)?;
    let written = writer.bytes_written() + 1;
    Ok(Completion {
        status,
        written: u32::try_from(written).unwrap_or(u32::MAX),
    })
}

/// The status of `header`'s request, its data moved.
fn carry_out(
    header: Header,
    reader: &mut Reader<'_>,
    writer: &mut Writer<'_>,
    disk: &Disk,
    scratch: &mut [u8],
) -> u8 {
    let result = match Operation::of(header.kind) {
        Operation::Read => read(header.sector, writer, disk, scratch),
        Operation::Write => write(header.sector, reader, disk, scratch),
        Operation::Flush => disk.flush(),
        Operation::GetId => get_id(writer, disk),
        Operation::Discard => segments(reader, disk, |disk, segment| {
            if segment.flags != 0 {
                return Err(DiskError::Unsupported);
            }
            disk.discard(segment.sector, segment.sectors)
        }),
        Operation::WriteZeroes => segments(reader, disk, |disk, segment| {
            if segment.flags & !SEGMENT_UNMAP != 0 {
                return Err(DiskError::Unsupported);
            }
            disk.write_zeroes(segment.sector, segment.sectors)
        }),
        Operation::Unsupported => Err(DiskError::Unsupported),
    };
    match result {
        Ok(()) => VIRTIO_BLK_S_OK as u8,
        Err(DiskError::Unsupported) => VIRTIO_BLK_S_UNSUPP as u8,
        Err(error) => {
            log::debug!(
                "{} request at sector {}: {error}",
                header.kind,
                header.sector
            );
            VIRTIO_BLK_S_IOERR as u8
        }
    }
}

/// The range of `bytes` from `sector`, if it is whole sectors on the disk.
fn byte_range(disk: &Disk, sector: u64, bytes: usize) -> Result<u64, DiskError> {
    if !bytes.is_multiple_of(SECTOR_BYTES as usize) {
        return Err(DiskError::Unaligned);
    }
    let offset = sector
        .checked_mul(SECTOR_BYTES)
        .ok_or(DiskError::OutOfRange)?;
    let end = offset
        .checked_add(bytes as u64)
        .ok_or(DiskError::OutOfRange)?;
    if end > disk.bytes() {
        return Err(DiskError::OutOfRange);
    }
    Ok(offset)
}

fn read(
    sector: u64,
    writer: &mut Writer<'_>,
    disk: &Disk,
    scratch: &mut [u8],
) -> Result<(), DiskError> {
    let mut offset = byte_range(disk, sector, writer.available_bytes())?;
    while writer.available_bytes() > 0 {
        let piece = &mut scratch[..writer.available_bytes().min(CHUNK_BYTES)];
        disk.read_at(piece, offset)?;
        writer.write_all(piece).map_err(|_| DiskError::Memory)?;
        offset += piece.len() as u64;
    }
    Ok(())
}

fn write(
    sector: u64,
    reader: &mut Reader<'_>,
    disk: &Disk,
    scratch: &mut [u8],
) -> Result<(), DiskError> {
    disk.writable()?;
    let mut offset = byte_range(disk, sector, reader.available_bytes())?;
    while reader.available_bytes() > 0 {
        let piece = &mut scratch[..reader.available_bytes().min(CHUNK_BYTES)];
        reader.read_exact(piece).map_err(|_| DiskError::Memory)?;
        disk.write_at(piece, offset)?;
        offset += piece.len() as u64;
    }
    Ok(())
}

fn get_id(writer: &mut Writer<'_>, disk: &Disk) -> Result<(), DiskError> {
    if writer.available_bytes() < ID_BYTES {
        return Err(DiskError::Unaligned);
    }
    writer
        .write_all(&disk.id_bytes())
        .map_err(|_| DiskError::Memory)
}

/// Reads the request's segments (at most [`MAX_SEGMENTS`]) and applies
/// `each` to every one, once all are read and checked.
fn segments(
    reader: &mut Reader<'_>,
    disk: &Disk,
    each: impl Fn(&Disk, Segment) -> Result<(), DiskError>,
) -> Result<(), DiskError> {
    let bytes = reader.available_bytes();
    let size = std::mem::size_of::<Segment>();
    if bytes == 0 || !bytes.is_multiple_of(size) || bytes / size > MAX_SEGMENTS as usize {
        return Err(DiskError::Unaligned);
    }
    let mut read = [Segment::default(); MAX_SEGMENTS as usize];
    let read = &mut read[..bytes / size];
    for segment in read.iter_mut() {
        *segment = reader.read_obj().map_err(|_| DiskError::Memory)?;
        if segment.sectors > MAX_SEGMENT_SECTORS {
            return Err(DiskError::OutOfRange);
        }
        byte_range(
            disk,
            segment.sector,
            segment.sectors as usize * SECTOR_BYTES as usize,
        )?;
    }
    read.iter().try_for_each(|segment| each(disk, *segment))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const HEADER_AT: u64 = 0x1_0000;
    const DATA_AT: u64 = 0x2_0000;
    const STATUS_AT: u64 = 0x8_0000;
    const IMAGE_SECTORS: u64 = 64;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn image(sectors: u64) -> std::fs::File {
        let fd =
            nix::sys::memfd::memfd_create("image", nix::sys::memfd::MFdFlags::empty()).unwrap();
        let file = std::fs::File::from(fd);
        file.set_len(sectors * SECTOR_BYTES).unwrap();
        file
    }

    fn disk(read_only: bool) -> Disk {
        Disk::new(image(IMAGE_SECTORS), read_only, "disk0").unwrap()
    }

    fn descriptor(addr: u64, len: u32, writable: bool) -> RawDescriptor {
        let flags = if writable {
            VRING_DESC_F_WRITE as u16
        } else {
            0
        };
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    /// Runs one request of `kind` at `sector` with `data` bytes of data
    /// (device-writable when `to_guest`), its data taken from `payload`.
    fn run(
        memory: &GuestMemoryMmap,
        disk: &Disk,
        kind: u32,
        sector: u64,
        payload: &[u8],
        to_guest: bool,
    ) -> Result<Completion, Malformed> {
        let header = Header {
            kind,
            reserved: 0,
            sector,
        };
        memory.write_obj(header, GuestAddress(HEADER_AT)).unwrap();
        memory.write_slice(payload, GuestAddress(DATA_AT)).unwrap();
        let mut chain = vec![descriptor(HEADER_AT, HEADER_BYTES as u32, false)];
        if !payload.is_empty() {
            chain.push(descriptor(DATA_AT, payload.len() as u32, to_guest));
        }
        chain.push(descriptor(STATUS_AT, 1, true));
        let queue = MockSplitQueue::new(memory, 16);
        let chain = queue.build_desc_chain(&chain).unwrap();
        execute(chain, memory, disk, &mut vec![0; CHUNK_BYTES])
    }

    fn ok(written: usize) -> Result<Completion, Malformed> {
        Ok(Completion {
            status: VIRTIO_BLK_S_OK as u8,
            written: written as u32,
        })
    }

    fn status(status: u32, written: usize) -> Result<Completion, Malformed> {
        Ok(Completion {
            status: status as u8,
            written: written as u32,
        })
    }

    fn pattern(bytes: usize, seed: u8) -> Vec<u8> {
        (0..bytes)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    #[test]
    fn a_write_is_read_back_and_reaches_the_image() {
        let (memory, disk) = (memory(), disk(false));
        let data = pattern(8 * 512, 7);
        assert_eq!(
            run(&memory, &disk, VIRTIO_BLK_T_OUT, 3, &data, false),
            ok(1)
        );
        let mut on_image = vec![0; data.len()];
        disk.image.read_exact_at(&mut on_image, 3 * 512).unwrap();
        assert_eq!(on_image, data);
        let zeroes = vec![0; data.len()];
        assert_eq!(
            run(&memory, &disk, VIRTIO_BLK_T_IN, 3, &zeroes, true),
            ok(data.len() + 1)
        );
        let mut read = vec![0; data.len()];
        memory.read_slice(&mut read, GuestAddress(DATA_AT)).unwrap();
        assert_eq!(read, data);
        assert_eq!(memory.read_obj::<u8>(GuestAddress(STATUS_AT)).unwrap(), 0);
    }

    #[test]
    fn data_larger_than_a_chunk_moves_whole() {
        let memory = memory();
        let disk = Disk::new(image(2 * CHUNK_BYTES as u64 / SECTOR_BYTES), false, "big").unwrap();
        let data = pattern(CHUNK_BYTES + 3 * 512, 9);
        assert_eq!(
            run(&memory, &disk, VIRTIO_BLK_T_OUT, 0, &data, false),
            ok(1)
        );
        let zeroes = vec![0; data.len()];
        assert_eq!(
            run(&memory, &disk, VIRTIO_BLK_T_IN, 0, &zeroes, true),
            ok(data.len() + 1)
        );
        let mut read = vec![0; data.len()];
        memory.read_slice(&mut read, GuestAddress(DATA_AT)).unwrap();
        assert_eq!(read, data);
    }

    #[test]
    fn ranges_off_the_disk_and_partial_sectors_fail_with_ioerr() {
        let (memory, disk) = (memory(), disk(false));
        let sector = vec![0; 512];
        let ioerr = status(VIRTIO_BLK_S_IOERR, 1);
        let last = IMAGE_SECTORS - 1;
        assert_eq!(
            run(&memory, &disk, VIRTIO_BLK_T_IN, last, &sector, true),
            ok(513)
        );
        assert_eq!(
            run(
                &memory,
                &disk,
                VIRTIO_BLK_T_IN,
                IMAGE_SECTORS,
                &sector,
                true
            ),
            ioerr
        );
        assert_eq!(
            run(
                &memory,
                &disk,
                VIRTIO_BLK_T_OUT,
                u64::MAX / 256,
                &sector,
                false
            ),
            ioerr
        );
        assert_eq!(
            run(&memory, &disk, VIRTIO_BLK_T_OUT, 0, &[1; 513], false),
            ioerr
        );
    }

    #[test]
    fn a_read_only_disk_refuses_changes_but_reads_and_flushes() {
        let (memory, disk) = (memory(), disk(true));
        let ioerr = status(VIRTIO_BLK_S_IOERR, 1);
        let data = pattern(512, 1);
        assert_eq!(
            run(&memory, &disk, VIRTIO_BLK_T_OUT, 0, &data, false),
            ioerr
        );
        let segment = segment_bytes(0, 8, 0);
        assert_eq!(
            run(&memory, &disk, VIRTIO_BLK_T_DISCARD, 0, &segment, false),
            ioerr
        );
        assert_eq!(
            run(
                &memory,
                &disk,
                VIRTIO_BLK_T_WRITE_ZEROES,
                0,
                &segment,
                false
            ),
            ioerr
        );
        let mut on_image = vec![1; 512];
        disk.image.read_exact_at(&mut on_image, 0).unwrap();
        assert_eq!(on_image, vec![0; 512]);
        assert_eq!(
            run(&memory, &disk, VIRTIO_BLK_T_FLUSH, 0, &[], false),
            ok(1)
        );
        assert_eq!(
            run(&memory, &disk, VIRTIO_BLK_T_IN, 0, &data, true),
            ok(513)
        );
    }

    #[test]
    fn get_id_answers_the_name_padded_and_needs_twenty_bytes() {
        let (memory, disk) = (memory(), disk(false));
        assert_eq!(
            run(
                &memory,
                &disk,
                VIRTIO_BLK_T_GET_ID,
                0,
                &[0xff; ID_BYTES],
                true
            ),
            ok(ID_BYTES + 1)
        );
        let mut id = [0; ID_BYTES];
        memory.read_slice(&mut id, GuestAddress(DATA_AT)).unwrap();
        assert_eq!(&id[..6], b"disk0\0");
        assert_eq!(
            run(&memory, &disk, VIRTIO_BLK_T_GET_ID, 0, &[0; 8], true),
            status(VIRTIO_BLK_S_IOERR, 1)
        );
    }

    fn segment_bytes(sector: u64, sectors: u32, flags: u32) -> Vec<u8> {
        Segment {
            sector,
            sectors,
            flags,
        }
        .as_slice()
        .to_vec()
    }

    #[test]
    fn discard_and_write_zeroes_clear_their_range_and_check_their_segments() {
        let (memory, disk) = (memory(), disk(false));
        let data = pattern(16 * 512, 3);
        assert_eq!(
            run(&memory, &disk, VIRTIO_BLK_T_OUT, 0, &data, false),
            ok(1)
        );
        let ranged = |kind, sector, sectors, flags| {
            run(
                &memory,
                &disk,
                kind,
                0,
                &segment_bytes(sector, sectors, flags),
                false,
            )
        };
        assert_eq!(ranged(VIRTIO_BLK_T_DISCARD, 0, 4, 0), ok(1));
        assert_eq!(
            ranged(VIRTIO_BLK_T_WRITE_ZEROES, 8, 4, SEGMENT_UNMAP),
            ok(1)
        );
        let mut on_image = vec![0; data.len()];
        disk.image.read_exact_at(&mut on_image, 0).unwrap();
        assert_eq!(on_image[..4 * 512], vec![0; 4 * 512]);
        assert_eq!(on_image[4 * 512..8 * 512], data[4 * 512..8 * 512]);
        assert_eq!(on_image[8 * 512..12 * 512], vec![0; 4 * 512]);
        assert_eq!(on_image[12 * 512..], data[12 * 512..]);
        // A discard takes no flag; unknown flags; past the end; two segments.
        let unsupp = status(VIRTIO_BLK_S_UNSUPP, 1);
        let ioerr = status(VIRTIO_BLK_S_IOERR, 1);
        assert_eq!(ranged(VIRTIO_BLK_T_DISCARD, 0, 4, SEGMENT_UNMAP), unsupp);
        assert_eq!(ranged(VIRTIO_BLK_T_WRITE_ZEROES, 0, 4, 2), unsupp);
        assert_eq!(ranged(VIRTIO_BLK_T_DISCARD, IMAGE_SECTORS - 1, 2, 0), ioerr);
        assert_eq!(ranged(VIRTIO_BLK_T_DISCARD, 0, u32::MAX, 0), ioerr);
        let mut two = segment_bytes(0, 1, 0);
        two.extend(segment_bytes(1, 1, 0));
        assert_eq!(
            run(&memory, &disk, VIRTIO_BLK_T_DISCARD, 0, &two, false),
            ioerr
        );
    }

    #[test]
    fn unknown_types_are_unsupported_and_short_headers_fail() {
        let (memory, disk) = (memory(), disk(false));
        assert_eq!(
            run(&memory, &disk, 99, 0, &[], false),
            status(VIRTIO_BLK_S_UNSUPP, 1)
        );
        let queue = MockSplitQueue::new(&memory, 16);
        let short = [
            descriptor(HEADER_AT, 8, false),
            descriptor(STATUS_AT, 1, true),
        ];
        let chain = queue.build_desc_chain(&short).unwrap();
        assert_eq!(
            execute(chain, &memory, &disk, &mut vec![0; CHUNK_BYTES]),
            status(VIRTIO_BLK_S_IOERR, 1)
        );
    }

    #[test]
    fn a_chain_without_room_for_a_status_or_outside_memory_is_no_request() {
        let (memory, disk) = (memory(), disk(false));
        let queue = MockSplitQueue::new(&memory, 16);
        let readable_only = [descriptor(HEADER_AT, HEADER_BYTES as u32, false)];
        let chain = queue.build_desc_chain(&readable_only).unwrap();
        assert_eq!(
            execute(chain, &memory, &disk, &mut vec![0; CHUNK_BYTES]),
            Err(Malformed::NoStatus)
        );
        let outside = [
            descriptor(HEADER_AT, HEADER_BYTES as u32, false),
            descriptor(2 << 20, 1, true),
        ];
        let chain = queue.build_desc_chain(&outside).unwrap();
        assert_eq!(
            execute(chain, &memory, &disk, &mut vec![0; CHUNK_BYTES]),
            Err(Malformed::Chain)
        );
    }
}
