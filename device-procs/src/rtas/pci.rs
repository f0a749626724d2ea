//! The PCI configuration and MSI calls (PCI reference §4), answered as
//! QEMU's pseries machine answers them. The RTAS server checks the cells
//! and the PHB; the function behind a configuration address, and
//! everything the guest writes to it, is the hotplug controller's (the
//! process that serves the bridge).

use super::calls::{status, RtasArgs, Services};
use ipc_proto::link::core_rtas::{CallRefusal, PlatformRequest};
use ipc_proto::link::rtas_hotplug::{Reply, Request};
use ipc_proto::papr::{RtasCall, RtasStatus};
use ipc_proto::pci::phb_of;

/// ibm,change-msi's interrupt types (its fourth return cell).
const TYPE_MSI: u32 = 1;
const TYPE_MSIX: u32 = 2;
/// ibm,query-interrupt-source-number: the source is edge-triggered.
const EDGE: u32 = 1;

/// A call's return cells and what the core must do.
type Answer = (Vec<u32>, Option<PlatformRequest>);

/// The PHB a call's BUID cells name, if the machine has it.
fn phb(high: u32, low: u32) -> Option<u32> {
    phb_of((u64::from(high) << 32) | u64::from(low)).map(|phb| phb.index)
}

/// The return cells of a PCI call and what the core must do, or `None`
/// for a call that is not one.
pub fn call(
    kind: RtasCall,
    call: &RtasArgs,
    services: &mut Services<'_>,
) -> Result<Option<Answer>, CallRefusal> {
    let args = call.args.as_slice();
    let nret = call.nret as usize;
    let mut ask = |request| services.peers.hotplug_reply(request);
    if kind == RtasCall::IbmWritePciConfig {
        return write_config(args, nret, &mut ask).map(Some);
    }
    Ok(Some((
        match kind {
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
        },
        None,
    )))
}

/// ibm,write-pci-config: its status, and the stop of a running function's
/// queues when the write took its BAR away.
fn write_config(
    args: &[u32],
    nret: usize,
    ask: &mut dyn FnMut(Request) -> Result<Reply, CallRefusal>,
) -> Result<Answer, CallRefusal> {
    let (&[address, high, low, size, value], 1) = (args, nret) else {
        return Ok((status(RtasStatus::HardwareError), None));
    };
    let Some(phb) = phb(high, low) else {
        return Ok((status(RtasStatus::HardwareError), None));
    };
    let request = Request::WritePciConfig {
        phb,
        address,
        size,
        value,
    };
    Ok(match ask(request)? {
        Reply::Stopped { status: code, drc } => {
            (status(code), Some(PlatformRequest::StopFunction { drc }))
        }
        other => (status(status_of(&other)), None),
    })
}

fn status_of(reply: &Reply) -> RtasStatus {
    match *reply {
        Reply::Status { status, .. }
        | Reply::Vectors { status, .. }
        | Reply::Stopped { status, .. } => status,
    }
}

#[cfg(test)]
mod tests {
    use super::super::calls::{handle_call, Peers};
    use super::*;
    use ipc_proto::link::core_rtas::CpuSnapshot;
    use ipc_proto::link::rtas_eventlog::{Reply as EventLogReply, Request as EventLogRequest};
    use ipc_proto::papr::DrcIndex;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    const BUID: u64 = 0x0800_0000_2000_0000;
    const AT: u64 = 0x1000;

    /// A hotplug controller that records what it is asked and answers
    /// with `answer`.
    struct Controller {
        asked: Vec<Request>,
        answer: Reply,
    }

    impl Peers for Controller {
        fn hotplug_reply(&mut self, request: Request) -> Result<Reply, CallRefusal> {
            self.asked.push(request);
            Ok(self.answer)
        }
        fn eventlog(&mut self, _: EventLogRequest) -> Result<Option<EventLogReply>, CallRefusal> {
            Ok(None)
        }
    }

    /// Makes call `call` with `args` and `nret` return cells: the cells
    /// written, what the core is asked, what the controller was asked.
    fn make(
        call: RtasCall,
        args: &[u32],
        nret: u32,
        answer: Reply,
    ) -> (Vec<u32>, Option<PlatformRequest>, Vec<Request>) {
        let memory: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let cells = [call.token(), args.len() as u32, nret]
            .into_iter()
            .chain(args.iter().copied());
        for (i, cell) in cells.enumerate() {
            memory
                .write_obj(cell.to_be(), GuestAddress(AT + 4 * i as u64))
                .unwrap();
        }
        let mut controller = Controller {
            asked: Vec::new(),
            answer,
        };
        let cpus = CpuSnapshot {
            present: 1,
            running: 1,
        };
        let mut services = Services {
            cpus: &cpus,
            peers: &mut controller,
            threads_per_core: 1,
        };
        let request = handle_call(&memory, AT, &mut services).unwrap();
        let rets = (0..nret)
            .map(|i| {
                let at = AT + 4 * (3 + args.len() as u64 + u64::from(i));
                u32::from_be(memory.read_obj(GuestAddress(at)).unwrap())
            })
            .collect();
        (rets, request, controller.asked)
    }

    fn ok(value: u32) -> Reply {
        Reply::Status {
            status: RtasStatus::Success,
            value,
        }
    }

    #[test]
    fn configuration_calls_name_a_phb_by_buid_or_answer_minus_one() {
        let (high, low) = ((BUID >> 32) as u32, BUID as u32);
        let (rets, _, asked) = make(
            RtasCall::IbmReadPciConfig,
            &[0x1800, high, low, 4],
            2,
            ok(7),
        );
        assert_eq!(rets, [0, 7]);
        assert_eq!(
            asked,
            [Request::ReadPciConfig {
                phb: 0,
                address: 0x1800,
                size: 4
            }]
        );
        // An unknown BUID, the BUID-less form, wrong cell counts: -1, and
        // the controller is not asked.
        for (call, args, nret) in [
            (RtasCall::IbmReadPciConfig, vec![0x1800, 1, 2, 4], 2),
            (RtasCall::ReadPciConfig, vec![0x1800, 4], 2),
            (RtasCall::IbmReadPciConfig, vec![0x1800, high, low], 2),
            (RtasCall::IbmWritePciConfig, vec![0x1800, high, low, 4], 1),
        ] {
            let (rets, request, asked) = make(call, &args, nret, ok(7));
            assert_eq!(
                rets[0],
                RtasStatus::HardwareError.cell(),
                "{call:?} {args:?}"
            );
            assert!(asked.is_empty() && request.is_none());
        }
        assert_eq!(
            make(
                RtasCall::GetConfigAddrInfo2,
                &[0x1800, high, low, 0],
                2,
                ok(0)
            )
            .0[0],
            RtasStatus::ParameterError.cell()
        );
    }

    #[test]
    fn msi_calls_return_counts_sequence_type_and_sources() {
        let (high, low) = ((BUID >> 32) as u32, BUID as u32);
        let granted = Reply::Vectors {
            status: RtasStatus::Success,
            count: 2,
            msix: true,
        };
        let (rets, _, _) = make(
            RtasCall::ChangeMsi,
            &[0x1800, high, low, 4, 2, 5],
            4,
            granted,
        );
        assert_eq!(rets, [0, 2, 6, 2]);
        let (rets, _, _) = make(
            RtasCall::QueryInterruptSourceNumber,
            &[0x1800, high, low, 1],
            3,
            ok(0x1011),
        );
        assert_eq!(rets, [0, 0x1011, 1]);
        let refused = Reply::Vectors {
            status: RtasStatus::ParameterError,
            count: 0,
            msix: false,
        };
        let (rets, _, _) = make(
            RtasCall::ChangeMsi,
            &[0x1800, high, low, 3, 0, 0],
            3,
            refused,
        );
        assert_eq!(rets[0], RtasStatus::ParameterError.cell());
    }

    #[test]
    fn a_write_that_takes_a_running_devices_bar_away_stops_its_queues() {
        let (high, low) = ((BUID >> 32) as u32, BUID as u32);
        let drc = DrcIndex(0x4000_0018);
        let stopped = Reply::Stopped {
            status: RtasStatus::Success,
            drc,
        };
        let (rets, request, _) = make(
            RtasCall::IbmWritePciConfig,
            &[0x1804, high, low, 2, 0],
            1,
            stopped,
        );
        assert_eq!(rets, [0]);
        let request = request.expect("a stop");
        assert_eq!(request, PlatformRequest::StopFunction { drc });
        // The core carries it out only for the function the call named.
        let token = RtasCall::IbmWritePciConfig.token();
        assert!(request.answers(token, &[0x1804, high, low, 2, 0]));
        assert!(!request.answers(token, &[0x2004, high, low, 2, 0]));
        assert!(!request.answers(RtasCall::IbmReadPciConfig.token(), &[0x1804, high, low, 2]));
    }
}
