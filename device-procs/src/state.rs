//! State that survives a restart: a shared-memory region that the core
//! creates, keeps, and hands to every incarnation of a device process.
//!
//! The region holds fixed-size tables of records (each slot: length, CRC-32,
//! payload) and one redo journal. A transition is committed in three steps:
//!
//! 1. its writes (table, slot, new bytes) go to the journal, with a checksum;
//! 2. `committed` is set to the journal's sequence number: the one commit
//!    point, a single aligned 8-byte store written last;
//! 3. the writes are applied to the tables, then `applied` is set.
//!
//! A process killed before step 2 leaves the old state (a journal that is not
//! committed is ignored); killed after it, its successor finds `committed >
//! applied` and applies the journal again. A write sets a slot to given bytes,
//! so applying it twice is applying it once. A transition costs the writes
//! it makes, whatever the size of the tables.
//!
//! A successor validates everything before it resumes — magic, layout
//! version, geometry, header checksum, the committed journal's checksum, every
//! slot's checksum — and refuses a region that fails any of them: it never
//! guesses.

use ipc_proto::channel::{decode, encode, Envelope};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;
use std::sync::atomic::{fence, Ordering};
use thiserror::Error;

/// Tables a layout may have.
pub const MAX_TABLES: usize = 8;
const PAGE: usize = 4096;
/// Slot header: payload length, then its CRC-32.
const SLOT_HEADER: usize = 8;
/// A journal write's header: table (u16), slot (u32), length (u32; `CLEARED`
/// for a slot emptied).
const WRITE_HEADER: usize = 10;
const CLEARED: u32 = u32::MAX;

/// Header offsets (page 0).
const MAGIC: usize = 0;
const VERSION: usize = 8;
const TABLE_COUNT: usize = 12;
const TABLES: usize = 16;
const HEADER_CRC: usize = TABLES + 8 * MAX_TABLES;
/// The commit words, each alone in its cache line.
const COMMITTED: usize = 128;
const APPLIED: usize = 192;
/// The journal: sequence number, length, checksum, then the writes.
const JOURNAL: usize = PAGE;
const JOURNAL_SEQ: usize = JOURNAL;
const JOURNAL_LEN: usize = JOURNAL + 8;
const JOURNAL_CRC: usize = JOURNAL + 16;
const JOURNAL_DATA: usize = JOURNAL + 24;

/// Why a region cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StateError {
    /// A failure injected (x-inject-fault `lose-state`).
    #[cfg(feature = "fault-injection")]
    #[error("a failure injected as asked")]
    Injected,
    /// The descriptor cannot be mapped.
    #[error("cannot map the state region: {0}")]
    Map(String),
    /// The region is smaller than the layout needs.
    #[error("the state region has {have} bytes; the layout needs {need}")]
    TooSmall {
        /// Bytes mapped.
        have: usize,
        /// Bytes needed.
        need: usize,
    },
    /// Not a region of this kind (or never formatted).
    #[error("the state region's magic is {found:?}, not {expected:?}")]
    BadMagic {
        /// What is there.
        found: [u8; 8],
        /// What this process writes.
        expected: [u8; 8],
    },
    /// Written by a binary with another layout.
    #[error("the state region has layout version {found}; this binary reads version {expected}")]
    BadVersion {
        /// What is there.
        found: u32,
        /// What this binary reads.
        expected: u32,
    },
    /// The tables' sizes differ from what this process was told.
    #[error("the state region's tables are {found:?}, not {expected:?}")]
    BadGeometry {
        /// What is there.
        found: Vec<Table>,
        /// What was expected.
        expected: Vec<Table>,
    },
    /// A checksum does not match: the region was damaged.
    #[error("the state region's {0} fails its checksum")]
    BadChecksum(String),
    /// A committed journal that is not the one recorded.
    #[error("the state region's journal is inconsistent: {0}")]
    BadJournal(String),
    /// A record that does not encode or decode.
    #[error("a record of table {table} slot {slot}: {reason}")]
    BadRecord {
        /// Table.
        table: usize,
        /// Slot.
        slot: u32,
        /// What the codec said.
        reason: String,
    },
    /// A write that does not fit its slot or table: a bug of the caller.
    #[error("a write to table {table} slot {slot} of {len} bytes does not fit")]
    BadWrite {
        /// Table.
        table: usize,
        /// Slot.
        slot: u32,
        /// Payload length.
        len: usize,
    },
}

/// One table: `slots` slots of `slot_bytes` bytes each (header included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Table {
    /// Bytes per slot, its 8-byte header included.
    pub slot_bytes: u32,
    /// Slots.
    pub slots: u32,
}

impl Table {
    /// The largest payload a slot holds.
    pub fn max_payload(self) -> usize {
        self.slot_bytes as usize - SLOT_HEADER
    }
}

/// What a kind keeps in its region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Names the kind (and that the region was formatted).
    pub magic: [u8; 8],
    /// Bumped whenever the meaning of any byte changes.
    pub version: u32,
    /// At most [`MAX_TABLES`].
    pub tables: Vec<Table>,
}

impl Layout {
    /// Room for a journal that rewrites every slot: the largest transition
    /// (a machine reset) fits.
    fn journal_capacity(&self) -> usize {
        self.tables
            .iter()
            .map(|t| t.slots as usize * (t.slot_bytes as usize + WRITE_HEADER))
            .sum()
    }

    fn table_offsets(&self) -> Vec<usize> {
        let mut offset = round_up(JOURNAL_DATA + self.journal_capacity());
        self.tables
            .iter()
            .map(|t| {
                let here = offset;
                offset = round_up(offset + t.slots as usize * t.slot_bytes as usize);
                here
            })
            .collect()
    }

    /// The bytes a region of this layout needs.
    pub fn bytes(&self) -> usize {
        let offsets = self.table_offsets();
        match (offsets.last(), self.tables.last()) {
            (Some(offset), Some(t)) => round_up(offset + t.slots as usize * t.slot_bytes as usize),
            _ => round_up(JOURNAL_DATA + self.journal_capacity()),
        }
    }

    fn header(&self) -> Vec<u8> {
        let mut header = vec![0; HEADER_CRC];
        header[MAGIC..MAGIC + 8].copy_from_slice(&self.magic);
        header[VERSION..VERSION + 4].copy_from_slice(&self.version.to_le_bytes());
        header[TABLE_COUNT..TABLE_COUNT + 4]
            .copy_from_slice(&(self.tables.len() as u32).to_le_bytes());
        for (i, t) in self.tables.iter().enumerate() {
            let at = TABLES + 8 * i;
            header[at..at + 4].copy_from_slice(&t.slot_bytes.to_le_bytes());
            header[at + 4..at + 8].copy_from_slice(&t.slots.to_le_bytes());
        }
        header
    }
}

fn round_up(n: usize) -> usize {
    n.div_ceil(PAGE) * PAGE
}

/// One write of a transition: a slot's new payload, or `None` to empty it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    /// Table.
    pub table: usize,
    /// Slot.
    pub slot: u32,
    /// New payload; `None` empties the slot.
    pub payload: Option<Vec<u8>>,
}

/// Where the region's bytes live.
enum Backing {
    /// A shared mapping of the core's memfd.
    Mapped(NonNull<std::ffi::c_void>),
    /// Heap memory, for tests that snapshot a region: owns what `base`
    /// points into.
    #[cfg(test)]
    Heap { _words: Vec<u64> },
}

/// A mapped region, not yet validated or formatted.
pub struct Mapping {
    backing: Backing,
    base: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain shared memory that only the owner of this
// value touches; moving it to another thread moves that ownership.
unsafe impl Send for Mapping {}

impl Mapping {
    /// Maps the whole of `fd` (a memfd the core sized), shared, read-write,
    /// never executable.
    pub fn map(fd: &OwnedFd) -> Result<Mapping, StateError> {
        let len = nix::sys::stat::fstat(fd)
            .map_err(|e| StateError::Map(format!("fstat: {e}")))?
            .st_size as usize;
        let size = NonZeroUsize::new(len).ok_or(StateError::Map("the region is empty".into()))?;
        // SAFETY: a fresh shared mapping of a memfd at an address the kernel
        // picks; nothing else in this process aliases it.
        let pointer = unsafe {
            mmap(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd,
                0,
            )
        }
        .map_err(|e| StateError::Map(format!("mmap: {e}")))?;
        Ok(Mapping {
            backing: Backing::Mapped(pointer),
            base: pointer.as_ptr().cast(),
            len,
        })
    }

    /// A zeroed region on the heap, as the core's fresh memfd is.
    #[cfg(test)]
    pub(crate) fn heap(len: usize) -> Mapping {
        let mut words = vec![0u64; len.div_ceil(8)];
        let base = words.as_mut_ptr().cast();
        Mapping {
            backing: Backing::Heap { _words: words },
            base,
            len,
        }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `base` points at `len` mapped bytes owned by this value.
        unsafe { std::slice::from_raw_parts(self.base, self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.base, self.len) }
    }

    fn u64_at(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.bytes()[at..at + 8].try_into().expect("8 bytes"))
    }

    fn u32_at(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.bytes()[at..at + 4].try_into().expect("4 bytes"))
    }

    /// A commit word: one aligned 8-byte store, after every store before it.
    fn store_word(&mut self, at: usize, value: u64) {
        fence(Ordering::SeqCst);
        // SAFETY: `at` is 8-aligned inside page 0 of the mapping (a page-aligned
        // base, or an u64 vector in tests), which this value owns.
        unsafe { std::ptr::write_volatile(self.base.add(at).cast::<u64>(), value.to_le()) };
        fence(Ordering::SeqCst);
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        match self.backing {
            Backing::Mapped(pointer) => {
                // SAFETY: the mapping made in `map`, of `len` bytes, unmapped once.
                if let Err(error) = unsafe { munmap(pointer, self.len) } {
                    log::warn!("cannot unmap the state region: {error}");
                }
            }
            #[cfg(test)]
            Backing::Heap { .. } => {}
        }
    }
}

/// A validated region of one layout.
pub struct Region {
    mapping: Mapping,
    layout: Layout,
    offsets: Vec<usize>,
    /// Sequence number of the last committed transition.
    seq: u64,
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("layout", &self.layout)
            .field("seq", &self.seq)
            .finish()
    }
}

fn slot_crc(payload: &[u8]) -> u32 {
    crc32fast::hash(payload)
}

impl Region {
    fn check_size(mapping: &Mapping, layout: &Layout) -> Result<(), StateError> {
        if layout.tables.len() > MAX_TABLES {
            return Err(StateError::BadGeometry {
                found: layout.tables.clone(),
                expected: vec![],
            });
        }
        let need = layout.bytes();
        match mapping.len < need {
            true => Err(StateError::TooSmall {
                have: mapping.len,
                need,
            }),
            false => Ok(()),
        }
    }

    /// Formats a fresh region: empty tables, nothing committed. The header is
    /// written last, so a region whose formatting was cut short is refused.
    pub fn format(mut mapping: Mapping, layout: Layout) -> Result<Region, StateError> {
        Region::check_size(&mapping, &layout)?;
        let header = layout.header();
        let bytes = mapping.bytes_mut();
        bytes[..PAGE].fill(0);
        for (offset, table) in layout.table_offsets().iter().zip(&layout.tables) {
            bytes[*offset..*offset + table.slots as usize * table.slot_bytes as usize].fill(0);
        }
        bytes[TABLES..HEADER_CRC].copy_from_slice(&header[TABLES..]);
        bytes[VERSION..TABLES].copy_from_slice(&header[VERSION..TABLES]);
        bytes[HEADER_CRC..HEADER_CRC + 4].copy_from_slice(&crc32fast::hash(&header).to_le_bytes());
        fence(Ordering::SeqCst);
        mapping.bytes_mut()[MAGIC..MAGIC + 8].copy_from_slice(&layout.magic);
        fence(Ordering::SeqCst);
        Ok(Region {
            offsets: layout.table_offsets(),
            mapping,
            layout,
            seq: 0,
        })
    }

    /// Validates a region an earlier incarnation wrote, finishes the
    /// transition it committed last, and checks every slot.
    pub fn open(mapping: Mapping, layout: Layout) -> Result<Region, StateError> {
        let bytes = mapping.bytes();
        if bytes.len() < JOURNAL_DATA {
            return Err(StateError::TooSmall {
                have: bytes.len(),
                need: JOURNAL_DATA,
            });
        }
        let magic: [u8; 8] = bytes[MAGIC..MAGIC + 8].try_into().expect("8 bytes");
        if magic != layout.magic {
            return Err(StateError::BadMagic {
                found: magic,
                expected: layout.magic,
            });
        }
        let version = mapping.u32_at(VERSION);
        if version != layout.version {
            return Err(StateError::BadVersion {
                found: version,
                expected: layout.version,
            });
        }
        let count = (mapping.u32_at(TABLE_COUNT) as usize).min(MAX_TABLES);
        let found: Vec<Table> = (0..count)
            .map(|i| Table {
                slot_bytes: mapping.u32_at(TABLES + 8 * i),
                slots: mapping.u32_at(TABLES + 8 * i + 4),
            })
            .collect();
        if found != layout.tables {
            return Err(StateError::BadGeometry {
                found,
                expected: layout.tables,
            });
        }
        let stored_crc = mapping.u32_at(HEADER_CRC);
        if crc32fast::hash(&bytes[..HEADER_CRC]) != stored_crc {
            return Err(StateError::BadChecksum("header".into()));
        }
        Region::check_size(&mapping, &layout)?;
        let committed = mapping.u64_at(COMMITTED);
        let applied = mapping.u64_at(APPLIED);
        let mut region = Region {
            offsets: layout.table_offsets(),
            mapping,
            layout,
            seq: committed,
        };
        match committed.checked_sub(applied) {
            Some(0) => {}
            Some(1) => {
                let writes = region.committed_journal(committed)?;
                log::info!(
                    "state region: finishing transition {committed} ({} writes) that its writer committed",
                    writes.len()
                );
                region.apply(&writes, None);
                region.mapping.store_word(APPLIED, committed);
            }
            _ => {
                return Err(StateError::BadJournal(format!(
                    "committed {committed}, applied {applied}"
                )))
            }
        }
        for (table, t) in region.layout.tables.clone().iter().enumerate() {
            for slot in 0..t.slots {
                region.check_slot(table, slot)?;
            }
        }
        Ok(region)
    }

    /// A copy of the region's bytes, as a successor would find them.
    #[cfg(test)]
    pub(crate) fn snapshot(&self) -> Mapping {
        let mut copy = Mapping::heap(self.mapping.len);
        copy.bytes_mut().copy_from_slice(self.mapping.bytes());
        copy
    }

    fn slot_offset(&self, table: usize, slot: u32) -> usize {
        self.offsets[table] + slot as usize * self.layout.tables[table].slot_bytes as usize
    }

    fn check_slot(&self, table: usize, slot: u32) -> Result<(), StateError> {
        let at = self.slot_offset(table, slot);
        let len = self.mapping.u32_at(at) as usize;
        let crc = self.mapping.u32_at(at + 4);
        let damaged = || StateError::BadChecksum(format!("table {table} slot {slot}"));
        if len == 0 && crc == 0 {
            return Ok(());
        }
        if len > self.layout.tables[table].max_payload() {
            return Err(damaged());
        }
        let payload = &self.mapping.bytes()[at + SLOT_HEADER..at + SLOT_HEADER + len];
        match slot_crc(payload) == crc {
            true => Ok(()),
            false => Err(damaged()),
        }
    }

    /// The layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Transitions committed since the region was formatted.
    pub fn committed(&self) -> u64 {
        self.seq
    }

    /// The payload in a slot, or `None` when it is empty.
    pub fn get(&self, table: usize, slot: u32) -> Option<&[u8]> {
        let t = self.layout.tables.get(table)?;
        if slot >= t.slots {
            return None;
        }
        let at = self.slot_offset(table, slot);
        let len = self.mapping.u32_at(at) as usize;
        let crc = self.mapping.u32_at(at + 4);
        if len == 0 && crc == 0 {
            return None;
        }
        Some(&self.mapping.bytes()[at + SLOT_HEADER..at + SLOT_HEADER + len.min(t.max_payload())])
    }

    /// Commits one transition: after this returns, the writes are the state;
    /// if the process dies inside, the state is either before or after them.
    pub fn commit(&mut self, writes: &[Write]) -> Result<(), StateError> {
        self.commit_until(writes, None)
    }

    /// `commit`, stopping after `steps` stores when given: the tests' SIGKILL.
    fn commit_until(&mut self, writes: &[Write], steps: Option<usize>) -> Result<(), StateError> {
        let journal = self.encode(writes)?;
        let mut budget = steps.unwrap_or(usize::MAX);
        let step = |budget: &mut usize| match budget.checked_sub(1) {
            Some(left) => {
                *budget = left;
                true
            }
            None => false,
        };
        let seq = self.seq + 1;
        // 1. The journal, in two halves (a store cut in the middle).
        let half = journal.len() / 2;
        for (from, to) in [(0, half), (half, journal.len())] {
            if !step(&mut budget) {
                return Ok(());
            }
            self.mapping.bytes_mut()[JOURNAL_DATA + from..JOURNAL_DATA + to]
                .copy_from_slice(&journal[from..to]);
        }
        if !step(&mut budget) {
            return Ok(());
        }
        let bytes = self.mapping.bytes_mut();
        bytes[JOURNAL_SEQ..JOURNAL_SEQ + 8].copy_from_slice(&seq.to_le_bytes());
        bytes[JOURNAL_LEN..JOURNAL_LEN + 8].copy_from_slice(&(journal.len() as u64).to_le_bytes());
        bytes[JOURNAL_CRC..JOURNAL_CRC + 4]
            .copy_from_slice(&journal_crc(seq, &journal).to_le_bytes());
        // 2. The commit point.
        if !step(&mut budget) {
            return Ok(());
        }
        self.mapping.store_word(COMMITTED, seq);
        self.seq = seq;
        // 3. The tables, then `applied`.
        if !self.apply(writes, Some(&mut budget)) || !step(&mut budget) {
            return Ok(());
        }
        self.mapping.store_word(APPLIED, seq);
        Ok(())
    }

    fn encode(&self, writes: &[Write]) -> Result<Vec<u8>, StateError> {
        let mut journal = Vec::new();
        for write in writes {
            let len = write.payload.as_ref().map_or(0, Vec::len);
            let fits = self
                .layout
                .tables
                .get(write.table)
                .is_some_and(|t| write.slot < t.slots && len <= t.max_payload());
            if !fits {
                return Err(StateError::BadWrite {
                    table: write.table,
                    slot: write.slot,
                    len,
                });
            }
            journal.extend_from_slice(&(write.table as u16).to_le_bytes());
            journal.extend_from_slice(&write.slot.to_le_bytes());
            match &write.payload {
                Some(payload) => {
                    journal.extend_from_slice(&(payload.len() as u32).to_le_bytes());
                    journal.extend_from_slice(payload);
                }
                None => journal.extend_from_slice(&CLEARED.to_le_bytes()),
            }
        }
        if journal.len() > self.layout.journal_capacity() {
            return Err(StateError::BadWrite {
                table: 0,
                slot: 0,
                len: journal.len(),
            });
        }
        Ok(journal)
    }

    /// The journal of transition `seq`, checked and decoded.
    fn committed_journal(&self, seq: u64) -> Result<Vec<Write>, StateError> {
        let bad = |why: String| StateError::BadJournal(why);
        let found = self.mapping.u64_at(JOURNAL_SEQ);
        if found != seq {
            return Err(bad(format!("it holds transition {found}, not {seq}")));
        }
        let len = self.mapping.u64_at(JOURNAL_LEN) as usize;
        if len > self.layout.journal_capacity() {
            return Err(bad(format!("{len} bytes")));
        }
        let journal = &self.mapping.bytes()[JOURNAL_DATA..JOURNAL_DATA + len];
        if journal_crc(seq, journal) != self.mapping.u32_at(JOURNAL_CRC) {
            return Err(StateError::BadChecksum("journal".into()));
        }
        let mut writes = Vec::new();
        let mut rest = journal;
        while !rest.is_empty() {
            let (head, tail) = rest
                .split_at_checked(WRITE_HEADER)
                .ok_or_else(|| bad("a truncated write".into()))?;
            let table = u16::from_le_bytes([head[0], head[1]]) as usize;
            let slot = u32::from_le_bytes(head[2..6].try_into().expect("4 bytes"));
            let len = u32::from_le_bytes(head[6..10].try_into().expect("4 bytes"));
            let (payload, tail) = match len {
                CLEARED => (None, tail),
                len => {
                    let (payload, tail) = tail
                        .split_at_checked(len as usize)
                        .ok_or_else(|| bad("a truncated payload".into()))?;
                    (Some(payload.to_vec()), tail)
                }
            };
            let fits = self.layout.tables.get(table).is_some_and(|t| {
                slot < t.slots && payload.as_ref().map_or(0, Vec::len) <= t.max_payload()
            });
            if !fits {
                return Err(bad(format!("a write to table {table} slot {slot}")));
            }
            writes.push(Write {
                table,
                slot,
                payload,
            });
            rest = tail;
        }
        Ok(writes)
    }

    /// Applies `writes` to the tables, each slot in two halves; `false` when
    /// the step budget ran out.
    fn apply(&mut self, writes: &[Write], mut budget: Option<&mut usize>) -> bool {
        for write in writes {
            let at = self.slot_offset(write.table, write.slot);
            let mut slot = vec![0u8; SLOT_HEADER];
            if let Some(payload) = &write.payload {
                slot[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
                slot[4..8].copy_from_slice(&slot_crc(payload).to_le_bytes());
                slot.extend_from_slice(payload);
            }
            let half = slot.len() / 2;
            for (from, to) in [(0, half), (half, slot.len())] {
                if let Some(budget) = budget.as_deref_mut() {
                    match budget.checked_sub(1) {
                        Some(left) => *budget = left,
                        None => return false,
                    }
                }
                self.mapping.bytes_mut()[at + from..at + to].copy_from_slice(&slot[from..to]);
            }
        }
        true
    }
}

/// A record: an ipc-proto envelope (an id, a body), which decodes with the
/// same total decoder as a frame.
pub fn encode_record<T: Serialize>(id: u64, body: &T) -> Result<Vec<u8>, StateError> {
    encode(&Envelope { id, body }).map_err(|error| StateError::BadRecord {
        table: usize::MAX,
        slot: 0,
        reason: error.to_string(),
    })
}

/// The record in a slot: its id and body, or `None` when the slot is empty.
pub fn decode_record<T: DeserializeOwned>(
    region: &Region,
    table: usize,
    slot: u32,
) -> Result<Option<(u64, T)>, StateError> {
    let Some(bytes) = region.get(table, slot) else {
        return Ok(None);
    };
    let envelope = decode::<T>(bytes).map_err(|error| StateError::BadRecord {
        table,
        slot,
        reason: error.to_string(),
    })?;
    Ok(Some((envelope.id, envelope.body)))
}

/// A request's identity, for answering a repeat from the record: who sent
/// it (a slot of the kind's replies table), its id, and a digest of its
/// content (a sender that reuses an id for another request is not answered
/// from the record).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestKey {
    /// The requester's slot in the replies table.
    pub requester: u32,
    /// The request's id.
    pub id: u64,
    /// CRC-32 of its encoding.
    pub digest: u32,
}

impl RequestKey {
    /// The key of `request`, sent as `id` by the requester of slot `requester`.
    pub fn of<R: Serialize>(requester: u32, id: u64, request: &R) -> RequestKey {
        let bytes = encode(&Envelope { id, body: request }).unwrap_or_default();
        RequestKey {
            requester,
            id,
            digest: crc32fast::hash(&bytes),
        }
    }

    /// The replies-table write that records `reply` as this request's answer.
    pub fn record<T: Serialize>(&self, table: usize, reply: &T) -> Result<Write, StateError> {
        Ok(Write {
            table,
            slot: self.requester,
            payload: Some(encode_record(self.id, &(self.digest, reply))?),
        })
    }

    /// The reply recorded for this request in `table`, if it is the last
    /// recorded request of its requester.
    pub fn replayed<T: DeserializeOwned>(&self, region: &Region, table: usize) -> Option<T> {
        let (id, (digest, reply)) =
            decode_record::<(u32, T)>(region, table, self.requester).ok()??;
        (id == self.id && digest == self.digest).then_some(reply)
    }
}

fn journal_crc(seq: u64, journal: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&seq.to_le_bytes());
    hasher.update(journal);
    hasher.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            magic: *b"PVTEST01",
            version: 3,
            tables: vec![
                Table {
                    slot_bytes: 32,
                    slots: 64,
                },
                Table {
                    slot_bytes: 128,
                    slots: 4,
                },
            ],
        }
    }

    fn fresh() -> Region {
        Region::format(Mapping::heap(layout().bytes()), layout()).unwrap()
    }

    fn snapshot(region: &Region) -> Mapping {
        region.snapshot()
    }

    fn contents(region: &Region) -> Vec<Option<Vec<u8>>> {
        let mut all = Vec::new();
        for (table, t) in region.layout.tables.iter().enumerate() {
            for slot in 0..t.slots {
                all.push(region.get(table, slot).map(<[u8]>::to_vec));
            }
        }
        all
    }

    fn put(table: usize, slot: u32, payload: &[u8]) -> Write {
        Write {
            table,
            slot,
            payload: Some(payload.to_vec()),
        }
    }

    #[test]
    fn a_commit_is_read_back_after_a_reopen() {
        let mut region = fresh();
        region
            .commit(&[put(0, 3, b"drc three"), put(1, 0, &[7; 120])])
            .unwrap();
        region
            .commit(&[Write {
                table: 0,
                slot: 3,
                payload: None,
            }])
            .unwrap();
        let reopened = Region::open(snapshot(&region), layout()).unwrap();
        assert_eq!(reopened.get(0, 3), None);
        assert_eq!(reopened.get(1, 0), Some(&[7u8; 120][..]));
        assert_eq!(reopened.committed(), 2);
    }

    #[test]
    fn a_kill_at_any_store_leaves_the_old_or_the_new_state() {
        let mut before = fresh();
        before
            .commit(&[put(0, 1, b"old one"), put(0, 2, b"old two")])
            .unwrap();
        let old = contents(&before);
        let writes = [
            put(0, 1, b"new one, much longer"),
            Write {
                table: 0,
                slot: 2,
                payload: None,
            },
            put(1, 3, &[9; 100]),
        ];
        let mut after = Region::open(snapshot(&before), layout()).unwrap();
        after.commit(&writes).unwrap();
        let new = contents(&after);
        let mut outcomes = (0, 0);
        for steps in 0.. {
            let mut killed = Region::open(snapshot(&before), layout()).unwrap();
            killed.commit_until(&writes, Some(steps)).unwrap();
            let finished = killed.mapping.u64_at(APPLIED) == 2;
            let successor = Region::open(snapshot(&killed), layout()).unwrap();
            let found = contents(&successor);
            if found == old {
                outcomes.0 += 1;
            } else {
                assert_eq!(found, new, "killed after {steps} stores: a torn state");
                outcomes.1 += 1;
            }
            if finished {
                break;
            }
        }
        // Both outcomes were reached: the kill points span the commit point.
        assert!(outcomes.0 >= 3 && outcomes.1 >= 3, "{outcomes:?}");
    }

    #[test]
    fn a_damaged_or_foreign_region_is_refused() {
        let mut region = fresh();
        region.commit(&[put(0, 5, b"precious")]).unwrap();
        let damage = |at: usize| {
            let mut copy = snapshot(&region);
            copy.bytes_mut()[at] ^= 0x20;
            Region::open(copy, layout()).unwrap_err()
        };
        assert!(matches!(damage(MAGIC), StateError::BadMagic { .. }));
        assert!(matches!(damage(VERSION), StateError::BadVersion { .. }));
        assert!(matches!(damage(TABLES), StateError::BadGeometry { .. }));
        assert!(matches!(damage(HEADER_CRC), StateError::BadChecksum(_)));
        let slot = region.slot_offset(0, 5);
        assert_eq!(
            damage(slot + SLOT_HEADER + 2),
            StateError::BadChecksum("table 0 slot 5".into())
        );
        assert!(matches!(damage(COMMITTED), StateError::BadJournal(_)));
        // A zeroed (never formatted) region is not mistaken for an empty one.
        assert!(matches!(
            Region::open(Mapping::heap(layout().bytes()), layout()),
            Err(StateError::BadMagic { .. })
        ));
        let mut other = layout();
        other.version = 4;
        assert!(matches!(
            Region::open(snapshot(&region), other),
            Err(StateError::BadVersion {
                found: 3,
                expected: 4
            })
        ));
        assert!(matches!(
            Region::format(Mapping::heap(100), layout()),
            Err(StateError::TooSmall { .. })
        ));
    }

    #[test]
    fn a_committed_journal_that_is_damaged_is_refused_not_guessed() {
        let mut region = fresh();
        let writes = [put(0, 1, b"x")];
        // Killed right after the commit point, before the tables.
        region.commit_until(&writes, Some(4)).unwrap();
        assert_eq!(region.mapping.u64_at(COMMITTED), 1);
        assert_eq!(region.mapping.u64_at(APPLIED), 0);
        let mut copy = snapshot(&region);
        copy.bytes_mut()[JOURNAL_DATA] ^= 1;
        assert_eq!(
            Region::open(copy, layout()).unwrap_err(),
            StateError::BadChecksum("journal".into())
        );
        let resumed = Region::open(snapshot(&region), layout()).unwrap();
        assert_eq!(resumed.get(0, 1), Some(&b"x"[..]));
    }

    #[test]
    fn writes_that_do_not_fit_are_refused_before_anything_is_written() {
        let mut region = fresh();
        for write in [put(0, 64, b"x"), put(0, 0, &[0; 25]), put(2, 0, b"x")] {
            assert!(matches!(
                region.commit(&[write]),
                Err(StateError::BadWrite { .. })
            ));
        }
        assert_eq!(region.committed(), 0);
    }
}
