//! The PAPR v6 hot-plug error log, 116 big-endian bytes (PAPR reference §4.3):
//! an 8-byte RTAS header, the v6 extended header, then the "PH", "UH" and
//! "HP" sections. Every section length is filled: a guest walks sections by
//! their lengths and a zero would make it loop forever.

use crate::clock::UtcTime;
use ipc_proto::link::hotplug_eventlog::{HotplugAction, HotplugEvent, HotplugTarget};

/// Length of a hot-plug event.
pub const HOTPLUG_EVENT_LEN: usize = 116;
/// Summary word: version 6, severity "event", not recovered, extended log
/// present, initiator hot plug, type hot plug.
const SUMMARY_HOTPLUG: u32 = 0x0634_60e5;
const SUMMARY_EPOW: u32 = 0x0634_0040;
const EXTENDED_LENGTH: u32 = (HOTPLUG_EVENT_LEN - 8) as u32;
/// v6 byte 0: valid, new log, big-endian.
const V6_VALID_NEW_BIG_ENDIAN: u8 = 0x86;
/// v6 byte 2: PowerPC format, log format 14 (platform event).
const V6_POWERPC_PLATFORM_EVENT: u8 = 0x8e;
const COMPANY_IBM: &[u8; 4] = b"IBM\0";
const CREATOR_HYPERVISOR: u8 = b'H';
const SUBSYSTEM_HOTPLUG: u8 = 0x80;
const SUBSYSTEM_EPOW: u8 = 0xa0;
const EPOW_SUBTYPE: u8 = 0xd0;
/// EPOW sensor value: system shutdown; modifier: normal; extended: partition.
const EPOW_SYSTEM_SHUTDOWN: u8 = 3;
const EPOW_MODIFIER_NORMAL: u8 = 1;
const EPOW_EXTENDED_PARTITION: u8 = 1;

const HOTPLUG_TYPE_CPU: u8 = 1;
const HOTPLUG_TYPE_MEMORY: u8 = 2;
const HOTPLUG_TYPE_PCI: u8 = 5;
const HOTPLUG_ACTION_ADD: u8 = 1;
const HOTPLUG_ACTION_REMOVE: u8 = 2;
const HOTPLUG_ID_DRC_INDEX: u8 = 2;
const HOTPLUG_ID_DRC_COUNT_INDEXED: u8 = 4;

fn put16(bytes: &mut [u8], at: usize, value: u16) {
    bytes[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

fn put32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_be_bytes());
}

/// Binary-coded decimal of up to eight digits.
fn bcd(value: u32) -> u32 {
    let mut out = 0;
    for digit in 0..8 {
        out |= ((value / 10u32.pow(digit)) % 10) << (4 * digit);
    }
    out
}

/// A section header: two ASCII id bytes, the section's whole length,
/// version, subtype, creator component.
fn section_header(bytes: &mut [u8], at: usize, id: &[u8; 2], length: u16, version: u8) {
    bytes[at..at + 2].copy_from_slice(id);
    put16(bytes, at + 2, length);
    bytes[at + 4] = version;
}

/// The header and the "PH" and "UH" sections every event has.
fn platform_event(
    summary: u32,
    subsystem: u8,
    plid: u32,
    time: UtcTime,
) -> [u8; HOTPLUG_EVENT_LEN] {
    let mut b = [0u8; HOTPLUG_EVENT_LEN];
    put32(&mut b, 0, summary);
    put32(&mut b, 4, EXTENDED_LENGTH);
    b[8] = V6_VALID_NEW_BIG_ENDIAN;
    b[10] = V6_POWERPC_PLATFORM_EVENT;
    b[20..24].copy_from_slice(COMPANY_IBM);

    // Main-A, "PH": when, who, how many sections, which log.
    section_header(&mut b, 24, b"PH", 48, 1);
    put32(
        &mut b,
        32,
        bcd(time.year * 10_000 + time.month * 100 + time.day),
    );
    put32(
        &mut b,
        36,
        bcd(time.hour * 1_000_000 + time.minute * 10_000 + time.second * 100),
    );
    b[48] = CREATOR_HYPERVISOR;
    b[51] = 3;
    // Big-endian like every other field (QEMU writes it in host order).
    put32(&mut b, 64, plid);

    // Main-B, "UH": the subsystem.
    section_header(&mut b, 72, b"UH", 24, 1);
    b[80] = subsystem;
    b
}

/// An EPOW event asking for an orderly power-off (the power button),
/// created at `time` with platform log id `plid`.
pub fn power_down_event(plid: u32, time: UtcTime) -> [u8; HOTPLUG_EVENT_LEN] {
    let mut b = platform_event(SUMMARY_EPOW, SUBSYSTEM_EPOW, plid, time);
    b[83] = EPOW_SUBTYPE;
    section_header(&mut b, 96, b"EP", 20, 2);
    b[104] = EPOW_SYSTEM_SHUTDOWN;
    b[105] = EPOW_MODIFIER_NORMAL;
    b[106] = EPOW_EXTENDED_PARTITION;
    b
}

/// Encodes `event`, created at `time` with platform log id `plid`.
pub fn hotplug_event(event: &HotplugEvent, plid: u32, time: UtcTime) -> [u8; HOTPLUG_EVENT_LEN] {
    let mut b = platform_event(SUMMARY_HOTPLUG, SUBSYSTEM_HOTPLUG, plid, time);

    // "HP": what to plug or unplug.
    section_header(&mut b, 96, b"HP", 20, 1);
    b[105] = match event.action {
        HotplugAction::Add => HOTPLUG_ACTION_ADD,
        HotplugAction::Remove => HOTPLUG_ACTION_REMOVE,
    };
    match event.target {
        HotplugTarget::CpuByIndex(drc) => {
            b[104] = HOTPLUG_TYPE_CPU;
            b[106] = HOTPLUG_ID_DRC_INDEX;
            put32(&mut b, 108, drc.0);
        }
        HotplugTarget::PciByIndex(drc) => {
            b[104] = HOTPLUG_TYPE_PCI;
            b[106] = HOTPLUG_ID_DRC_INDEX;
            put32(&mut b, 108, drc.0);
        }
        HotplugTarget::LmbsCountIndexed { count, first } => {
            b[104] = HOTPLUG_TYPE_MEMORY;
            b[106] = HOTPLUG_ID_DRC_COUNT_INDEXED;
            put32(&mut b, 108, count);
            put32(&mut b, 112, first.0);
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc_proto::papr::DrcIndex;

    const TIME: UtcTime = UtcTime {
        year: 2026,
        month: 11,
        day: 24,
        hour: 19,
        minute: 5,
        second: 9,
        nanos: 0,
    };

    #[test]
    fn pci_add_by_index_bytes() {
        let event = HotplugEvent {
            action: HotplugAction::Add,
            target: HotplugTarget::PciByIndex(DrcIndex(0x4000_0008)),
        };
        let b = hotplug_event(&event, 7, TIME);
        // Only the HP section differs from a CPU event: type 5 (PCI), add,
        // by DRC index, the index.
        assert_eq!(b[96..98], *b"HP");
        assert_eq!(b[104..108], [5, 1, 2, 0]);
        assert_eq!(b[108..116], [0x40, 0x00, 0x00, 0x08, 0, 0, 0, 0]);
    }

    #[test]
    fn cpu_remove_by_index_bytes() {
        let event = HotplugEvent {
            action: HotplugAction::Remove,
            target: HotplugTarget::CpuByIndex(DrcIndex(0x1000_0008)),
        };
        let b = hotplug_event(&event, 0x0102_0304, TIME);
        #[rustfmt::skip]
        let expected: [u8; HOTPLUG_EVENT_LEN] = [
            // 0: summary, extended length 108
            0x06, 0x34, 0x60, 0xe5, 0x00, 0x00, 0x00, 0x6c,
            // 8: v6 header: valid|new|BE, reserved, PowerPC|platform event, reserved…
            0x86, 0x00, 0x8e, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            // 20: company "IBM\0"
            b'I', b'B', b'M', 0x00,
            // 24: "PH", length 48, version 1, subtype 0, creator component 0
            b'P', b'H', 0x00, 0x30, 0x01, 0x00, 0x00, 0x00,
            // 32: date 20261124 and time 19050900, BCD
            0x20, 0x26, 0x11, 0x24, 0x19, 0x05, 0x09, 0x00,
            // 40: commit time (unused)
            0, 0, 0, 0, 0, 0, 0, 0,
            // 48: creator 'H', reserved, reserved, 3 sections
            b'H', 0x00, 0x00, 0x03,
            // 52: reserved, creator implementation
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            // 64: PLID, then the rest of Main-A
            0x01, 0x02, 0x03, 0x04, 0, 0, 0, 0,
            // 72: "UH", length 24, version 1
            b'U', b'H', 0x00, 0x18, 0x01, 0x00, 0x00, 0x00,
            // 80: subsystem 0x80, reserved, severity 0, subtype 0
            0x80, 0x00, 0x00, 0x00, 0, 0, 0, 0, 0, 0,
            // 90: action flags 0, reserved
            0x00, 0x00, 0, 0, 0, 0,
            // 96: "HP", length 20, version 1
            b'H', b'P', 0x00, 0x14, 0x01, 0x00, 0x00, 0x00,
            // 104: CPU, remove, by DRC index, reserved
            0x01, 0x02, 0x02, 0x00,
            // 108: DRC index, then 0
            0x10, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x00,
        ];
        assert_eq!(b, expected);
    }

    #[test]
    fn cpu_add_and_memory_count_indexed_fields() {
        let add = hotplug_event(
            &HotplugEvent {
                action: HotplugAction::Add,
                target: HotplugTarget::CpuByIndex(DrcIndex(0x1000_0001)),
            },
            1,
            TIME,
        );
        assert_eq!(&add[104..116], &[1, 1, 2, 0, 0x10, 0, 0, 1, 0, 0, 0, 0]);
        let dimm = hotplug_event(
            &HotplugEvent {
                action: HotplugAction::Remove,
                target: HotplugTarget::LmbsCountIndexed {
                    count: 4,
                    first: DrcIndex(0x8000_0004),
                },
            },
            2,
            TIME,
        );
        assert_eq!(&dimm[104..116], &[2, 2, 4, 0, 0, 0, 0, 4, 0x80, 0, 0, 4]);
    }

    #[test]
    fn sections_chain_to_the_end_of_the_log() {
        // What Linux's get_pseries_errorlog does: from offset 24, add lengths.
        let b = hotplug_event(
            &HotplugEvent {
                action: HotplugAction::Add,
                target: HotplugTarget::CpuByIndex(DrcIndex(0x1000_0001)),
            },
            1,
            TIME,
        );
        let end = 8 + u32::from_be_bytes(b[4..8].try_into().unwrap()) as usize;
        let mut at = 24;
        let mut ids = Vec::new();
        while at < end {
            ids.push([b[at], b[at + 1]]);
            let length = u16::from_be_bytes([b[at + 2], b[at + 3]]) as usize;
            assert!(length > 0);
            at += length;
        }
        assert_eq!(at, end);
        assert_eq!(ids, [*b"PH", *b"UH", *b"HP"]);
    }

    #[test]
    fn bcd_digits() {
        assert_eq!(bcd(20_261_124), 0x2026_1124);
        assert_eq!(bcd(0), 0);
        assert_eq!(bcd(19_050_900), 0x1905_0900);
    }
}
