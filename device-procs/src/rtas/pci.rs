//! The PCI configuration and MSI calls (PCI reference §4), answered as
//! QEMU's pseries machine answers them. The RTAS server checks the cells
//! and the PHB; the function behind a configuration address, and
//! everything the guest writes to it, is the hotplug controller's (the
//! process that serves the bridge).

use super::calls::{status, RtasArgs, Services};
use ipc_proto::link::core_rtas::CallRefusal;
use ipc_proto::link::rtas_hotplug::{Reply, Request};
use ipc_proto::papr::{RtasCall, RtasStatus};
use ipc_proto::pci::phb_of;

/// ibm,change-msi's interrupt types (its fourth return cell).
const TYPE_MSI: u32 = 1;
const TYPE_MSIX: u32 = 2;
/// ibm,query-interrupt-source-number: the source is edge-triggered.
const EDGE: u32 = 1;

/// The PHB a call's BUID cells name, if the machine has it.
fn phb(high: u32, low: u32) -> Option<u32> {
    phb_of((u64::from(high) << 32) | u64::from(low)).map(|phb| phb.index)
}

/// The return cells of a PCI call, or `None` for a call that is not one.
pub fn call(
    kind: RtasCall,
    call: &RtasArgs,
    services: &mut Services<'_>,
) -> Result<Option<Vec<u32>>, CallRefusal> {
    let args = call.args.as_slice();
    let nret = call.nret as usize;
    let mut ask = |request| services.peers.hotplug_reply(request);
    Ok(Some(match kind {
        // The forms without a BUID name PHB "0", which QEMU does not
        // have: no device answers them.
        RtasCall::ReadPciConfig => vec![RtasStatus::HardwareError.cell(), 0],
        RtasCall::WritePciConfig => status(RtasStatus::HardwareError),
        RtasCall::IbmReadPciConfig => match (args, nret) {
            (&[address, high, low, size], 2) => match phb(high, low) {
                Some(phb) => match ask(Request::ReadPciConfig { phb, address, size })? {
                    Reply::Status { status, value } if status == RtasStatus::Success => {
                        vec![status.cell(), value]
                    }
                    other => vec![status_of(&other).cell(), 0],
                },
                None => vec![RtasStatus::HardwareError.cell(), 0],
            },
            _ => vec![RtasStatus::HardwareError.cell(), 0],
        },
        RtasCall::IbmWritePciConfig => match (args, nret) {
            (&[address, high, low, size, value], 1) => match phb(high, low) {
                Some(phb) => {
                    let request = Request::WritePciConfig {
                        phb,
                        address,
                        size,
                        value,
                    };
                    status(status_of(&ask(request)?))
                }
                None => status(RtasStatus::HardwareError),
            },
            _ => status(RtasStatus::HardwareError),
        },
        RtasCall::ChangeMsi => match (args, nret) {
            (&[address, high, low, function, count, sequence], 3 | 4) => match phb(high, low) {
                Some(phb) => {
                    let request = Request::ChangeMsi {
                        phb,
                        address,
                        function,
                        count,
                    };
                    match ask(request)? {
                        Reply::Vectors {
                            status,
                            count,
                            msix,
                        } if status == RtasStatus::Success => {
                            let kind = if msix { TYPE_MSIX } else { TYPE_MSI };
                            let mut rets = vec![status.cell(), count, sequence.wrapping_add(1)];
                            if nret == 4 {
                                rets.push(kind);
                            }
                            rets
                        }
                        other => status(status_of(&other)),
                    }
                }
                None => status(RtasStatus::ParameterError),
            },
            _ => status(RtasStatus::ParameterError),
        },
        RtasCall::QueryInterruptSourceNumber => match (args, nret) {
            (&[address, high, low, vector], 3) => match phb(high, low) {
                Some(phb) => {
                    let request = Request::QueryInterruptSource {
                        phb,
                        address,
                        vector,
                    };
                    match ask(request)? {
                        Reply::Status { status, value } if status == RtasStatus::Success => {
                            vec![status.cell(), value, EDGE]
                        }
                        other => status(status_of(&other)),
                    }
                }
                None => status(RtasStatus::ParameterError),
            },
            _ => status(RtasStatus::ParameterError),
        },
        // No EEH: QEMU without VFIO answers a parameter error, and Linux
        // then takes the device's own address as its PE's.
        RtasCall::GetConfigAddrInfo2 => status(RtasStatus::ParameterError),
        _ => return Ok(None),
    }))
}

fn status_of(reply: &Reply) -> RtasStatus {
    match *reply {
        Reply::Status { status, .. } | Reply::Vectors { status, .. } => status,
    }
}
