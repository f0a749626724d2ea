//! The RTAS event encoder, through a decoder written from PAPR (not from
//! the encoder): the event and its time in, 116 bytes out, decoded back
//! equal. The decoder walks the sections by their lengths, as a guest does.

use device_procs::clock::UtcTime;
use device_procs::eventlog::encode::{hotplug_event, power_down_event};
use ipc_proto::link::hotplug_eventlog::{HotplugAction, HotplugEvent, HotplugTarget};
use ipc_proto::papr::DrcIndex;

fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// Eight BCD digits.
fn from_bcd(value: u32) -> u32 {
    (0..8).rev().fold(0, |n, digit| {
        let nibble = (value >> (4 * digit)) & 0xf;
        assert!(nibble < 10, "not BCD: {value:#x}");
        n * 10 + nibble
    })
}

/// What a guest reads from an event.
#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    /// RTAS error log version (summary byte 0).
    version: u8,
    /// Section ids in order, with their lengths.
    sections: Vec<([u8; 2], u16)>,
    plid: u32,
    time: UtcTime,
    /// The "HP" section: type, action, id type, and the two id words.
    hotplug: Option<(u8, u8, u8, u32, u32)>,
    /// The "EP" section's sensor value.
    epow: Option<u8>,
}

fn decode(bytes: &[u8]) -> Decoded {
    let version = bytes[0];
    let extended = be32(bytes, 4) as usize;
    assert_eq!(extended + 8, bytes.len(), "the extended length");
    assert_eq!(bytes[8] & 0x80, 0x80, "a valid v6 log");
    assert_eq!(&bytes[20..24], b"IBM\0");
    let mut sections = Vec::new();
    let mut at = 24;
    let (mut plid, mut date, mut clock) = (0, 0, 0);
    let (mut hotplug, mut epow) = (None, None);
    while at + 8 <= bytes.len() {
        let id = [bytes[at], bytes[at + 1]];
        let length = be16(bytes, at + 2);
        assert!(
            length >= 8,
            "a section of {length} bytes would stop the walk"
        );
        let end = at + usize::from(length);
        assert!(end <= bytes.len(), "section {id:?} runs past the log");
        match &id {
            b"PH" => {
                date = be32(bytes, at + 8);
                clock = be32(bytes, at + 12);
                plid = be32(bytes, at + 40);
            }
            b"HP" => {
                hotplug = Some((
                    bytes[at + 8],
                    bytes[at + 9],
                    bytes[at + 10],
                    be32(bytes, at + 12),
                    be32(bytes, at + 16),
                ))
            }
            b"EP" => epow = Some(bytes[at + 8]),
            _ => {}
        }
        sections.push((id, length));
        at = end;
    }
    assert_eq!(at, bytes.len(), "the sections cover the log");
    let (date, clock) = (from_bcd(date), from_bcd(clock));
    Decoded {
        version,
        sections,
        plid,
        time: UtcTime {
            year: date / 10_000,
            month: date / 100 % 100,
            day: date % 100,
            hour: clock / 1_000_000,
            minute: clock / 10_000 % 100,
            second: clock / 100 % 100,
            nanos: 0,
        },
        hotplug,
        epow,
    }
}

fn word(data: &[u8], at: usize) -> u32 {
    let mut bytes = [0u8; 4];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = data.get(at + i).copied().unwrap_or(0);
    }
    u32::from_be_bytes(bytes)
}

/// The target.
pub fn fuzz(data: &[u8]) {
    let Some(&selector) = data.first() else {
        return;
    };
    // A time UtcTime::now() can give: years 1970..=9999.
    let time = UtcTime {
        year: 1970 + word(data, 1) % 8030,
        month: 1 + word(data, 5) % 12,
        day: 1 + word(data, 9) % 31,
        hour: word(data, 13) % 24,
        minute: word(data, 17) % 60,
        second: word(data, 21) % 60,
        nanos: word(data, 37) % 1_000_000_000,
    };
    // The log has no field finer than the second.
    let logged = UtcTime { nanos: 0, ..time };
    let plid = word(data, 25);
    let (a, b) = (word(data, 29), word(data, 33));
    if selector % 5 == 4 {
        let decoded = decode(&power_down_event(plid, time));
        assert_eq!(
            (decoded.plid, decoded.time, decoded.epow),
            (plid, logged, Some(3))
        );
        assert_eq!(decoded.hotplug, None);
        return;
    }
    let action = if selector & 1 == 0 {
        HotplugAction::Add
    } else {
        HotplugAction::Remove
    };
    let target = match (selector >> 1) % 3 {
        0 => HotplugTarget::CpuByIndex(DrcIndex(a)),
        1 => HotplugTarget::PciByIndex(DrcIndex(a)),
        _ => HotplugTarget::LmbsCountIndexed {
            count: b,
            first: DrcIndex(a),
        },
    };
    let event = HotplugEvent { action, target };
    let decoded = decode(&hotplug_event(&event, plid, time));
    assert_eq!(decoded.version, 6);
    assert_eq!(
        decoded.sections,
        [(*b"PH", 48), (*b"UH", 24), (*b"HP", 20)],
        "the sections a guest walks"
    );
    assert_eq!((decoded.plid, decoded.time), (plid, logged));
    let action = match action {
        HotplugAction::Add => 1,
        HotplugAction::Remove => 2,
    };
    let expected = match target {
        // PAPR: type 1 CPU, id type 2 DRC index.
        HotplugTarget::CpuByIndex(drc) => (1, action, 2, drc.0, 0),
        // Type 5 PCI, by DRC index.
        HotplugTarget::PciByIndex(drc) => (5, action, 2, drc.0, 0),
        // Type 2 memory, id type 4 count-indexed: count, then the first index.
        HotplugTarget::LmbsCountIndexed { count, first } => (2, action, 4, count, first.0),
    };
    assert_eq!(decoded.hotplug, Some(expected));
}
