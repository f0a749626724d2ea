//! A PCI host bridge's root bus (`device_procs::pci::bridge`) as a guest,
//! or a hostile one, drives it through the PCI RTAS calls and its BARs:
//! the input is a sequence of 8-byte operations (kind, devfn, register
//! le16, size, value or count le24) — plug, unplug, configuration read and
//! write, change-msi, query-interrupt-source-number, BAR reads and writes
//! (at the register's offset into the bridge's 32-bit window) — on a bus
//! with 8 interrupts.
//!
//! Beyond not panicking: a grant never exceeds what was asked, no two
//! functions are ever given the same interrupt, a BAR read is no wider
//! than the access, and what a BAR write asks of a device passes the
//! checks its receiver makes.

use device_procs::pci::bridge::Bridge;
use ipc_proto::link::core_hotplug::DeviceModel;
use ipc_proto::pci::{ConfigAddress, Phb};
use std::collections::HashMap;

const FIRST_INTERRUPT: u32 = 0x1300;
const INTERRUPTS: u32 = 8;

/// The target.
pub fn fuzz(data: &[u8]) {
    let mut bridge = Bridge::new(FIRST_INTERRUPT, INTERRUPTS);
    let phb = Phb::new(0);
    let model = DeviceModel {
        features: (1 << 32) | (1 << 9),
        config: vec![0x5a; 60],
    };
    for op in data.chunks_exact(8) {
        let devfn = op[1];
        let address = ConfigAddress {
            bus: 0,
            devfn,
            register: u16::from_le_bytes([op[2], op[3] & 0x0f]),
        };
        let size = u32::from(op[4] % 6);
        // The top byte mirrors the third, so that a BAR can be placed
        // (0x80 there puts it in the window, at bus 0x8080_0000).
        let value = u32::from_le_bytes([op[5], op[6], op[7], op[7]]);
        // A BAR access lands in the window's first 16 MiB (offset: byte 5,
        // 3, 2), writing bytes 6 and 7.
        let window =
            phb.mem32.0 + (u64::from(op[5]) << 16 | u64::from(op[3]) << 8 | u64::from(op[2]));
        let written = u64::from(u16::from_le_bytes([op[6], op[7]]));
        let width = [1, 2, 4, 8][usize::from(op[4] % 4)];
        match op[0] % 8 {
            0 => {
                if let Some(drc) = phb.drc(devfn) {
                    let _ = bridge.plug_block(devfn, drc, &model);
                }
            }
            1 => bridge.unplug(devfn),
            2 => {
                let _ = bridge.read_config(address, size);
            }
            3 => {
                let _ = bridge.write_config(address, size, value);
            }
            4 => {
                let count = (value & 0xff_ffff) % 12;
                if let Ok(granted) = bridge.change_msi(address, u32::from(op[4] % 8), count) {
                    // A release grants nothing; more than the table holds
                    // is answered with the table's size, nothing granted.
                    assert!(granted.count <= count, "{granted:?} for {count}");
                    if count > 0 && granted.count == count {
                        assert!(bridge.interrupt_of(address, count - 1).is_ok());
                    }
                }
            }
            5 => {
                let _ = bridge.interrupt_of(address, value % 16);
            }
            6 => {
                let (read, effect) = bridge.bar_access(&phb, window, width, None);
                assert!(effect.is_none());
                assert!(
                    width == 8 || read >> (8 * width) == 0,
                    "{read:#x} in {width}"
                );
            }
            _ => {
                let (_, effect) = bridge.bar_access(&phb, window, width, Some(written));
                if let Some(effect) = effect {
                    effect.check().expect("an effect its receiver takes");
                }
            }
        }
        // Every granted interrupt belongs to one function only.
        let mut owners: HashMap<u32, u8> = HashMap::new();
        for devfn in 0..=u8::MAX {
            let at = ConfigAddress {
                bus: 0,
                devfn,
                register: 0,
            };
            for n in 0..INTERRUPTS {
                let Ok(irq) = bridge.interrupt_of(at, n) else {
                    break;
                };
                assert!((FIRST_INTERRUPT..FIRST_INTERRUPT + INTERRUPTS).contains(&irq));
                if let Some(other) = owners.insert(irq, devfn) {
                    panic!("interrupt {irq:#x} given to {other:#x} and {devfn:#x}");
                }
            }
        }
    }
}
