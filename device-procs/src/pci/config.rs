//! The configuration space of one PCI function (a type 0 header, 4 KiB
//! extended space), as the guest reads and writes it through
//! `ibm,read-pci-config`/`ibm,write-pci-config`: every access is checked
//! (size 1, 2 or 4, aligned, inside the space) and every write goes
//! through a per-bit mask, so the guest changes only what a device lets it
//! change — the BAR sizing protocol included — and what a write means to
//! the device (a BAR moved, decoding switched) is said once, as data.

use ipc_proto::pci::FunctionDescription;
use thiserror::Error;

/// Bytes of extended configuration space.
pub const CONFIG_SPACE_BYTES: usize = 4096;
/// The configuration bytes a driver may write lie below this.
pub const DRIVER_BYTES: usize = 256;
/// Where the conventional space (and its capability list) ends.
const CONVENTIONAL_BYTES: usize = 256;

/// Header registers (PCI local bus specification, type 0 header).
const VENDOR_ID: usize = 0x00;
const DEVICE_ID: usize = 0x02;
const COMMAND: usize = 0x04;
const STATUS: usize = 0x06;
const REVISION_ID: usize = 0x08;
const CLASS_CODE: usize = 0x09;
const HEADER_TYPE: usize = 0x0e;
const BAR0: usize = 0x10;
const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
const SUBSYSTEM_ID: usize = 0x2e;
const CAPABILITIES_POINTER: usize = 0x34;
const INTERRUPT_LINE: usize = 0x3c;
const INTERRUPT_PIN: usize = 0x3d;
/// The first capability goes after the header.
const FIRST_CAPABILITY: usize = 0x40;

/// Command register bits the guest may set: I/O and memory decoding, bus
/// mastering, INTx disable.
pub const COMMAND_IO: u16 = 1 << 0;
/// Memory space decoding.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Bus mastering (the device may DMA).
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// INTx disabled.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
const COMMAND_WRITABLE: u16 =
    COMMAND_IO | COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE;
/// Status: the function has a capability list.
const STATUS_CAPABILITIES: u16 = 1 << 4;

/// BAR low bits: I/O space, 64-bit memory, prefetchable.
const BAR_IO: u32 = 1;
const BAR_MEMORY_64: u32 = 0b100;
const BAR_PREFETCHABLE: u32 = 0b1000;

/// Why an access is refused (the RTAS call answers a hardware error, as
/// QEMU's does).
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum AccessError {
    /// Not 1, 2 or 4 bytes.
    #[error("a configuration access of {0} bytes")]
    Size(u32),
    /// Not aligned to its size.
    #[error("a {size}-byte configuration access at {register:#x}, not aligned")]
    Unaligned {
        /// Where.
        register: u32,
        /// How wide.
        size: u32,
    },
    /// Past the 4 KiB space.
    #[error("a configuration access at {0:#x}, past the space")]
    OutOfRange(u32),
}

/// Why a function cannot be described so (a programming error of the
/// device model, refused before any guest sees it).
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum LayoutError {
    /// A BAR index past 5, or a 64-bit BAR at 5, or one already taken.
    #[error("BAR {0} cannot be used")]
    Bar(usize),
    /// A BAR size that is not a power of two of at least 16 bytes (4 for I/O).
    #[error("a BAR of {0} bytes")]
    BarSize(u64),
    /// No room left for a capability in the conventional space.
    #[error("no room for a capability of {0} bytes")]
    CapabilityRoom(usize),
}

/// What a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// I/O space.
    Io,
    /// 32-bit memory space.
    Memory32 {
        /// Prefetchable.
        prefetchable: bool,
    },
    /// 64-bit memory space (takes two BAR registers).
    Memory64 {
        /// Prefetchable.
        prefetchable: bool,
    },
}

/// A BAR of the function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// What it decodes.
    pub kind: BarKind,
    /// Its size in bytes: a power of two.
    pub size: u64,
}

/// What a write changed that the device acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Nothing the device acts on (or nothing at all).
    None,
    /// The command register changed (decoding, bus mastering, INTx).
    Command(u16),
    /// BAR `index` now holds `address` (sizing writes included: the device
    /// acts on an address only while its decoding is on).
    BarWritten {
        /// Which BAR.
        index: usize,
        /// Its base address now.
        address: u64,
    },
    /// A byte of the capability at `capability` (its offset) changed.
    Capability {
        /// The capability's offset.
        capability: usize,
    },
}

/// One function's configuration space.
#[derive(Clone)]
pub struct ConfigSpace {
    bytes: Box<[u8; CONFIG_SPACE_BYTES]>,
    /// Per bit: may the guest change it.
    writable: Box<[u8; CONFIG_SPACE_BYTES]>,
    bars: [Option<Bar>; 6],
    /// BAR registers in use (a 64-bit BAR takes two).
    taken: [bool; 6],
    /// Capabilities: offset and length, in list order.
    capabilities: Vec<(usize, usize)>,
}

impl ConfigSpace {
    /// A function with the identity of `identity` (its ids, class,
    /// subsystem and pin), no BAR and no capability yet.
    pub fn new(identity: &FunctionDescription) -> ConfigSpace {
        let mut space = ConfigSpace {
            bytes: Box::new([0; CONFIG_SPACE_BYTES]),
            writable: Box::new([0; CONFIG_SPACE_BYTES]),
            bars: [None; 6],
            taken: [false; 6],
            capabilities: Vec::new(),
        };
        space.put(VENDOR_ID, &identity.vendor.to_le_bytes());
        space.put(DEVICE_ID, &identity.device.to_le_bytes());
        space.put(REVISION_ID, &[identity.revision]);
        space.put(CLASS_CODE, &identity.class.to_le_bytes()[..3]);
        space.put(HEADER_TYPE, &[0]);
        space.put(
            SUBSYSTEM_VENDOR_ID,
            &identity.subsystem_vendor.to_le_bytes(),
        );
        space.put(SUBSYSTEM_ID, &identity.subsystem.to_le_bytes());
        space.put(INTERRUPT_PIN, &[identity.interrupt_pin]);
        space.allow(COMMAND, &COMMAND_WRITABLE.to_le_bytes());
        // A scratch register the OS keeps its routing in.
        space.allow(INTERRUPT_LINE, &[0xff]);
        space
    }

    /// Adds BAR `index` (a 64-bit one takes `index + 1` too): the guest
    /// sizes it by writing all ones and reading back, then places it.
    pub fn add_bar(&mut self, index: usize, bar: Bar) -> Result<(), LayoutError> {
        let wide = matches!(bar.kind, BarKind::Memory64 { .. });
        let last = index + usize::from(wide);
        if last >= self.taken.len() || self.taken[index..=last].contains(&true) {
            return Err(LayoutError::Bar(index));
        }
        let smallest = match bar.kind {
            BarKind::Io => 4,
            _ => 16,
        };
        if !bar.size.is_power_of_two() || bar.size < smallest || (!wide && bar.size > 1 << 31) {
            return Err(LayoutError::BarSize(bar.size));
        }
        let low_bits = match bar.kind {
            BarKind::Io => BAR_IO,
            BarKind::Memory32 { prefetchable } => u32::from(prefetchable) * BAR_PREFETCHABLE,
            BarKind::Memory64 { prefetchable } => {
                BAR_MEMORY_64 | (u32::from(prefetchable) * BAR_PREFETCHABLE)
            }
        };
        let address_mask = !(bar.size - 1);
        let register = BAR0 + 4 * index;
        self.put(register, &low_bits.to_le_bytes());
        self.allow(register, &(address_mask as u32).to_le_bytes());
        if wide {
            self.allow(register + 4, &((address_mask >> 32) as u32).to_le_bytes());
        }
        self.bars[index] = Some(bar);
        self.taken[index..=last].fill(true);
        Ok(())
    }

    /// Appends a capability `id` whose body (after its id and next
    /// pointer) is `body`, the guest allowed to change the bits of
    /// `writable` (same length); its offset.
    pub fn add_capability(
        &mut self,
        id: u8,
        body: &[u8],
        writable: &[u8],
    ) -> Result<usize, LayoutError> {
        let length = 2 + body.len();
        // Dword aligned, after the header or the previous capability.
        let offset = self
            .capabilities
            .last()
            .map_or(FIRST_CAPABILITY, |&(at, len)| (at + len + 3) & !3);
        if offset + length > CONVENTIONAL_BYTES || writable.len() != body.len() {
            return Err(LayoutError::CapabilityRoom(length));
        }
        self.put(offset, &[id, 0]);
        self.put(offset + 2, body);
        self.allow(offset + 2, writable);
        match self.capabilities.last() {
            Some(&(previous, _)) => self.put(previous + 1, &[offset as u8]),
            None => {
                self.put(CAPABILITIES_POINTER, &[offset as u8]);
                let status = self.word(STATUS) | STATUS_CAPABILITIES;
                self.put(STATUS, &status.to_le_bytes());
            }
        }
        self.capabilities.push((offset, length));
        Ok(offset)
    }

    /// Reads `size` bytes at `register`, little-endian.
    pub fn read(&self, register: u32, size: u32) -> Result<u32, AccessError> {
        let at = check(register, size)?;
        let mut value = [0u8; 4];
        value[..size as usize].copy_from_slice(&self.bytes[at..at + size as usize]);
        Ok(u32::from_le_bytes(value))
    }

    /// Writes the low `size` bytes of `value` at `register`, through the
    /// mask; what the device must act on.
    pub fn write(&mut self, register: u32, size: u32, value: u32) -> Result<Effect, AccessError> {
        let at = check(register, size)?;
        let new = value.to_le_bytes();
        let mut changed = false;
        for (i, &byte) in new.iter().enumerate().take(size as usize) {
            let mask = self.writable[at + i];
            let merged = (self.bytes[at + i] & !mask) | (byte & mask);
            changed |= merged != self.bytes[at + i];
            self.bytes[at + i] = merged;
        }
        if !changed {
            return Ok(Effect::None);
        }
        Ok(self.effect_of(at))
    }

    /// What a changed byte at `at` means.
    fn effect_of(&self, at: usize) -> Effect {
        if (COMMAND..COMMAND + 2).contains(&at) {
            return Effect::Command(self.word(COMMAND));
        }
        if (BAR0..BAR0 + 24).contains(&at) {
            let register = (at - BAR0) / 4;
            // The high half of a 64-bit BAR belongs to the one below.
            let index = match register.checked_sub(1).and_then(|below| self.bars[below]) {
                Some(Bar {
                    kind: BarKind::Memory64 { .. },
                    ..
                }) => register - 1,
                _ => register,
            };
            if let Some(address) = self.bar_address(index) {
                return Effect::BarWritten { index, address };
            }
            return Effect::None;
        }
        match self
            .capabilities
            .iter()
            .find(|&&(offset, length)| (offset..offset + length).contains(&at))
        {
            Some(&(capability, _)) => Effect::Capability { capability },
            None => Effect::None,
        }
    }

    /// The base address BAR `index` holds (sized or placed), if it exists.
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let bar = (*self.bars.get(index)?)?;
        let register = BAR0 + 4 * index;
        let low = u64::from(self.dword(register));
        let (address, low_bits) = match bar.kind {
            BarKind::Io => (low, 0b11),
            BarKind::Memory32 { .. } => (low, 0b1111),
            BarKind::Memory64 { .. } => (low | u64::from(self.dword(register + 4)) << 32, 0b1111),
        };
        Some(address & !low_bits)
    }

    /// The BAR `index`, if the function has it.
    pub fn bar(&self, index: usize) -> Option<Bar> {
        *self.bars.get(index)?
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.word(COMMAND)
    }

    /// The bytes of the capability at `offset` (id and next pointer first).
    pub fn capability(&self, offset: usize) -> Option<&[u8]> {
        let &(at, length) = self.capabilities.iter().find(|(at, _)| *at == offset)?;
        Some(&self.bytes[at..at + length])
    }

    /// Sets bytes the device owns (the guest sees them, cannot change them
    /// unless they are also allowed).
    /// The bytes a driver may have changed (the header and the
    /// capabilities: nothing beyond [`DRIVER_BYTES`] is writable).
    pub fn driver_bytes(&self) -> Vec<u8> {
        self.bytes[..DRIVER_BYTES].to_vec()
    }

    /// Takes back `saved` (from [`ConfigSpace::driver_bytes`]) in the bits
    /// a driver may write; the others stay this function's.
    pub fn restore_driver_bytes(&mut self, saved: &[u8]) -> Result<(), String> {
        if saved.len() != DRIVER_BYTES {
            return Err(format!(
                "{} configuration bytes, not {DRIVER_BYTES}",
                saved.len()
            ));
        }
        for (at, &byte) in saved.iter().enumerate() {
            let mask = self.writable[at];
            self.bytes[at] = (self.bytes[at] & !mask) | (byte & mask);
        }
        Ok(())
    }

    fn put(&mut self, at: usize, bytes: &[u8]) {
        self.bytes[at..at + bytes.len()].copy_from_slice(bytes);
    }

    fn allow(&mut self, at: usize, mask: &[u8]) {
        self.writable[at..at + mask.len()].copy_from_slice(mask);
    }

    fn word(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.bytes[at], self.bytes[at + 1]])
    }

    fn dword(&self, at: usize) -> u32 {
        u32::from_le_bytes([
            self.bytes[at],
            self.bytes[at + 1],
            self.bytes[at + 2],
            self.bytes[at + 3],
        ])
    }
}

/// Checks an access: its offset in the space.
fn check(register: u32, size: u32) -> Result<usize, AccessError> {
    if !matches!(size, 1 | 2 | 4) {
        return Err(AccessError::Size(size));
    }
    if !register.is_multiple_of(size) {
        return Err(AccessError::Unaligned { register, size });
    }
    if register as usize + size as usize > CONFIG_SPACE_BYTES {
        return Err(AccessError::OutOfRange(register));
    }
    Ok(register as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A virtio-blk-pci function, modern: vendor 0x1af4, device 0x1042.
    fn function() -> ConfigSpace {
        ConfigSpace::new(&ipc_proto::pci::VIRTIO_BLK_PCI)
    }

    #[test]
    fn the_header_reads_as_the_identity_and_its_read_only_fields_stay() {
        let mut space = function();
        assert_eq!(space.read(0, 4), Ok(0x1042_1af4));
        assert_eq!(space.read(8, 4), Ok(0x0100_0001));
        assert_eq!(space.read(0x2c, 4), Ok(0x1100_1af4));
        assert_eq!(space.read(0x3d, 1), Ok(1));
        for (register, size) in [(0, 4), (8, 4), (0x2c, 4), (0x0e, 1), (0x3d, 1)] {
            let before = space.read(register, size).unwrap();
            assert_eq!(space.write(register, size, !before), Ok(Effect::None));
            assert_eq!(space.read(register, size), Ok(before));
        }
        // The interrupt line is the OS's scratch register.
        space.write(0x3c, 1, 0x5a).unwrap();
        assert_eq!(space.read(0x3c, 1), Ok(0x5a));
    }

    #[test]
    fn accesses_are_one_two_or_four_bytes_aligned_inside_the_space() {
        let mut space = function();
        assert_eq!(space.read(0, 3), Err(AccessError::Size(3)));
        assert_eq!(space.read(0, 8), Err(AccessError::Size(8)));
        assert_eq!(
            space.read(2, 4),
            Err(AccessError::Unaligned {
                register: 2,
                size: 4
            })
        );
        assert_eq!(
            space.write(1, 2, 0),
            Err(AccessError::Unaligned {
                register: 1,
                size: 2
            })
        );
        assert_eq!(space.read(4096, 1), Err(AccessError::OutOfRange(4096)));
        assert_eq!(
            space.read(u32::MAX - 3, 4),
            Err(AccessError::OutOfRange(u32::MAX - 3))
        );
        // The extended space exists, empty.
        assert_eq!(space.read(4092, 4), Ok(0));
    }

    #[test]
    fn the_command_register_takes_only_decoding_bus_master_and_intx_bits() {
        let mut space = function();
        assert_eq!(
            space.write(4, 2, 0xffff),
            Ok(Effect::Command(COMMAND_WRITABLE))
        );
        assert_eq!(space.command(), 0x0407);
        assert_eq!(space.write(4, 2, 0xffff), Ok(Effect::None));
    }

    #[test]
    fn bars_are_sized_by_writing_ones_and_placed_at_aligned_addresses() {
        let mut space = function();
        let mmio = Bar {
            kind: BarKind::Memory32 {
                prefetchable: false,
            },
            size: 0x1000,
        };
        let wide = Bar {
            kind: BarKind::Memory64 { prefetchable: true },
            size: 0x4000,
        };
        space.add_bar(1, mmio).unwrap();
        space.add_bar(4, wide).unwrap();
        // Sizing a 32-bit BAR: all ones read back as the size's mask.
        space.write(0x14, 4, u32::MAX).unwrap();
        assert_eq!(space.read(0x14, 4), Ok(0xffff_f000));
        // A 64-bit prefetchable one: type bits kept, both halves sized.
        space.write(0x20, 4, u32::MAX).unwrap();
        space.write(0x24, 4, u32::MAX).unwrap();
        assert_eq!(space.read(0x20, 4), Ok(0xffff_c00c));
        assert_eq!(space.read(0x24, 4), Ok(u32::MAX));
        // Placed: an unaligned address loses its low bits.
        space.write(0x20, 4, 0x8000_4321).unwrap();
        assert_eq!(
            space.write(0x24, 4, 0x210),
            Ok(Effect::BarWritten {
                index: 4,
                address: 0x210_8000_4000
            })
        );
        assert_eq!(space.bar_address(4), Some(0x210_8000_4000));
        // An absent BAR reads 0 and takes nothing.
        assert_eq!(space.write(0x10, 4, u32::MAX), Ok(Effect::None));
        assert_eq!(space.read(0x10, 4), Ok(0));
    }

    #[test]
    fn a_function_cannot_be_described_with_impossible_bars() {
        let mut space = function();
        let bar = |size| Bar {
            kind: BarKind::Memory32 {
                prefetchable: false,
            },
            size,
        };
        assert_eq!(space.add_bar(6, bar(16)), Err(LayoutError::Bar(6)));
        assert_eq!(space.add_bar(0, bar(24)), Err(LayoutError::BarSize(24)));
        assert_eq!(space.add_bar(0, bar(8)), Err(LayoutError::BarSize(8)));
        let wide = Bar {
            kind: BarKind::Memory64 {
                prefetchable: false,
            },
            size: 1 << 20,
        };
        assert_eq!(space.add_bar(5, wide), Err(LayoutError::Bar(5)));
        space.add_bar(0, wide).unwrap();
        assert_eq!(space.add_bar(1, bar(16)), Err(LayoutError::Bar(1)));
    }

    #[test]
    fn capabilities_form_a_list_the_guest_can_walk_and_write_only_where_allowed() {
        let mut space = function();
        assert_eq!(space.read(0x06, 2).unwrap() & 0x10, 0);
        // MSI-X (id 0x11): message control (its enable and mask bits
        // writable), table and PBA offsets.
        let msix = space
            .add_capability(
                0x11,
                &[0x01, 0x00, 0, 0, 0, 0, 0, 0, 0, 0],
                &[0, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0],
            )
            .unwrap();
        let vendor = space
            .add_capability(0x09, &[14, 1, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[0; 14])
            .unwrap();
        assert_eq!((msix, vendor), (0x40, 0x4c));
        assert_eq!(space.read(0x06, 2).unwrap() & 0x10, 0x10);
        // Walk: pointer → MSI-X → vendor → end.
        let mut walked = Vec::new();
        let mut at = space.read(0x34, 1).unwrap();
        while at != 0 {
            walked.push((at, space.read(at, 1).unwrap()));
            at = space.read(at + 1, 1).unwrap();
        }
        assert_eq!(walked, [(0x40, 0x11), (0x4c, 0x09)]);
        // Enabling MSI-X is the capability's effect; its table size is not writable.
        assert_eq!(
            space.write(0x42, 2, 0xffff),
            Ok(Effect::Capability { capability: 0x40 })
        );
        assert_eq!(space.read(0x42, 2), Ok(0xc001));
        assert_eq!(
            space.capability(0x40).unwrap()[..4],
            [0x11, 0x4c, 0x01, 0xc0]
        );
        // No room past the conventional space.
        assert!(matches!(
            space.add_capability(0x09, &[0; 250], &[0; 250]),
            Err(LayoutError::CapabilityRoom(_))
        ));
    }
}
