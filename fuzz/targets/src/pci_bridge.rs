//! A PCI host bridge's root bus (`device_procs::pci::bridge`) as a guest,
//! or a hostile one, drives it through the PCI RTAS calls: the input is a
//! sequence of 8-byte operations (kind, devfn, register le16, size, value
//! or count le24) — plug, unplug, configuration read and write,
//! change-msi, query-interrupt-source-number — on a bus with 8 interrupts.
//!
//! Beyond not panicking: a grant never exceeds what was asked, and no two
//! functions are ever given the same interrupt.

use device_procs::pci::bridge::Bridge;
use ipc_proto::pci::ConfigAddress;
use std::collections::HashMap;

const FIRST_INTERRUPT: u32 = 0x1300;
const INTERRUPTS: u32 = 8;

/// The target.
pub fn fuzz(data: &[u8]) {
    let mut bridge = Bridge::new(FIRST_INTERRUPT, INTERRUPTS);
    for op in data.chunks_exact(8) {
        let devfn = op[1];
        let address = ConfigAddress::decode(u32::from_le_bytes([op[2], op[3], devfn, 0]));
        let size = u32::from(op[4] % 6);
        let value = u32::from_le_bytes([op[5], op[6], op[7], 0]);
        match op[0] % 6 {
            0 => {
                let _ = bridge.plug_block(devfn);
            }
            1 => bridge.unplug(devfn),
            2 => {
                let _ = bridge.read_config(address, size);
            }
            3 => {
                let _ = bridge.write_config(address, size, value);
            }
            4 => {
                let count = value % 12;
                if let Ok(granted) = bridge.change_msi(address, u32::from(op[4] % 8), count) {
                    // A release grants nothing; more than the table holds
                    // is answered with the table's size, nothing granted.
                    assert!(granted.count <= count, "{granted:?} for {count}");
                    if count > 0 && granted.count == count {
                        assert!(bridge.interrupt_of(address, count - 1).is_ok());
                    }
                }
            }
            _ => {
                let _ = bridge.interrupt_of(address, value % 16);
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
