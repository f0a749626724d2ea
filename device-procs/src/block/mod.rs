//! The block device: a virtio-blk disk whose queues a vhost-user backend
//! ([`backend`]) serves in a process of its own ([`process`]), one per disk.
//! It holds the image's descriptor the core opened and nothing else of the
//! host: it cannot open a file. Requests ([`request`]) come from the guest
//! and are checked before they touch the image.

pub mod backend;
pub mod inflight;
pub mod process;
pub mod request;

use std::fs::File;
use std::os::unix::fs::FileExt;
use thiserror::Error;

/// The bytes of a virtio-blk sector, whatever the block size.
pub const SECTOR_BYTES: u64 = 512;

/// Why a request on the disk failed (the guest sees `IOERR` or `UNSUPP`).
#[derive(Debug, Error)]
pub enum DiskError {
    /// A write, discard or write-zeroes on a read-only disk.
    #[error("the disk is read-only")]
    ReadOnly,
    /// A range that does not lie on the disk.
    #[error("the range is past the end of the disk")]
    OutOfRange,
    /// Data that is not whole sectors, or a buffer too small.
    #[error("the request's buffers have a bad size")]
    Unaligned,
    /// The request's buffers could not be read or written.
    #[error("the request's buffers are not accessible")]
    Memory,
    /// The request type (or a flag of it) is not offered.
    #[error("the request is not supported")]
    Unsupported,
    /// The image refused.
    #[error("the image failed")]
    Io(#[source] std::io::Error),
}

/// The image a block device serves, through the descriptor the core opened.
#[derive(Debug)]
pub struct Disk {
    image: File,
    sectors: u64,
    read_only: bool,
    id: [u8; request::ID_BYTES],
}

impl Disk {
    /// The disk of `image` (its size rounded down to whole sectors), named
    /// `id` to the guest (get-id: its first 20 bytes).
    pub fn new(image: File, read_only: bool, id: &str) -> Result<Disk, DiskError> {
        let bytes = image.metadata().map_err(DiskError::Io)?.len();
        let mut padded = [0; request::ID_BYTES];
        let id = id.as_bytes();
        let used = id.len().min(padded.len());
        padded[..used].copy_from_slice(&id[..used]);
        Ok(Disk {
            image,
            sectors: bytes / SECTOR_BYTES,
            read_only,
            id: padded,
        })
    }

    /// Its capacity in sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Its capacity in bytes.
    pub fn bytes(&self) -> u64 {
        self.sectors * SECTOR_BYTES
    }

    /// Whether writes are refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    fn writable(&self) -> Result<(), DiskError> {
        match self.read_only {
            true => Err(DiskError::ReadOnly),
            false => Ok(()),
        }
    }

    fn id_bytes(&self) -> [u8; request::ID_BYTES] {
        self.id
    }

    fn read_at(&self, buffer: &mut [u8], offset: u64) -> Result<(), DiskError> {
        self.image
            .read_exact_at(buffer, offset)
            .map_err(DiskError::Io)
    }

    fn write_at(&self, buffer: &[u8], offset: u64) -> Result<(), DiskError> {
        self.image
            .write_all_at(buffer, offset)
            .map_err(DiskError::Io)
    }

    fn flush(&self) -> Result<(), DiskError> {
        self.image.sync_data().map_err(DiskError::Io)
    }

    /// Frees the range; an image that cannot punch holes keeps its data,
    /// which a discard allows.
    fn discard(&self, sector: u64, sectors: u32) -> Result<(), DiskError> {
        self.writable()?;
        match self.fallocate(
            nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE,
            sector,
            sectors,
        ) {
            Err(DiskError::Io(error)) if error.raw_os_error() == Some(nix::libc::EOPNOTSUPP) => {
                Ok(())
            }
            other => other,
        }
    }

    /// Zeroes the range, by the file system if it can, else by writing.
    fn write_zeroes(&self, sector: u64, sectors: u32) -> Result<(), DiskError> {
        self.writable()?;
        match self.fallocate(
            nix::fcntl::FallocateFlags::FALLOC_FL_ZERO_RANGE,
            sector,
            sectors,
        ) {
            Err(DiskError::Io(error)) if error.raw_os_error() == Some(nix::libc::EOPNOTSUPP) => {
                let zeroes = [0; request::CHUNK_BYTES];
                let mut offset = sector * SECTOR_BYTES;
                let end = offset + u64::from(sectors) * SECTOR_BYTES;
                while offset < end {
                    let piece = (end - offset).min(zeroes.len() as u64) as usize;
                    self.write_at(&zeroes[..piece], offset)?;
                    offset += piece as u64;
                }
                Ok(())
            }
            other => other,
        }
    }

    fn fallocate(
        &self,
        how: nix::fcntl::FallocateFlags,
        sector: u64,
        sectors: u32,
    ) -> Result<(), DiskError> {
        let offset = i64::try_from(sector * SECTOR_BYTES).map_err(|_| DiskError::OutOfRange)?;
        let length = i64::from(sectors) * SECTOR_BYTES as i64;
        nix::fcntl::fallocate(
            &self.image,
            how | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
            offset,
            length,
        )
        .map_err(|errno| DiskError::Io(errno.into()))
    }

    /// The device configuration space (virtio-blk's `virtio_blk_config`, up
    /// to and with `write_zeroes_may_unmap`), little-endian.
    pub fn config(&self, queue_size: u16) -> [u8; CONFIG_BYTES] {
        let mut config = [0; CONFIG_BYTES];
        let mut put = |offset: usize, bytes: &[u8]| {
            config[offset..offset + bytes.len()].copy_from_slice(bytes);
        };
        put(0x00, &self.sectors.to_le_bytes());
        // seg_max: a chain holds the header and the status besides data.
        put(0x0c, &u32::from(queue_size.saturating_sub(2)).to_le_bytes());
        put(0x14, &(SECTOR_BYTES as u32).to_le_bytes());
        put(0x22, &1u16.to_le_bytes());
        put(0x24, &request::MAX_SEGMENT_SECTORS.to_le_bytes());
        put(0x28, &request::MAX_SEGMENTS.to_le_bytes());
        put(0x2c, &1u32.to_le_bytes());
        put(0x30, &request::MAX_SEGMENT_SECTORS.to_le_bytes());
        put(0x34, &request::MAX_SEGMENTS.to_le_bytes());
        put(0x38, &[1]);
        config
    }
}

/// The bytes of the device configuration space served.
pub const CONFIG_BYTES: usize = 0x3c;
