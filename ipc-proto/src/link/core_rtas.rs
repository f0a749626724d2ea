//! Core → RTAS server.
//!
//! The core sets the server up with [`Request::SetMemoryTable`] (the guest
//! RAM memfds ride along, one per region, vhost-user style) and
//! [`Request::SetTopology`], each acknowledged, then forwards each H_RTAS
//! hypercall as a [`Request::Call`]. The server reads and validates
//! `rtas_args` in guest memory itself, writes the return cells, and answers
//! with what the core must do, as a typed [`PlatformRequest`].

use crate::channel::no_descriptors;
use crate::channel::MAX_FDS;
use crate::papr::{irq, DrcIndex, RtasCall};
use crate::protocol::{link_protocol, Message};
use serde::{Deserialize, Serialize};

link_protocol! {
    /// The link's protocol.
    CoreRtas: CoreRtas, Request => Reply
}

/// vCPU ids are below this (bit masks in [`CpuSnapshot`] are 64 bits).
pub const MAX_VCPUS: u32 = 64;
/// Guest RAM regions in one memory table: one descriptor each.
pub const MAX_MEMORY_REGIONS: usize = MAX_FDS;
/// The longest `ibm,os-term` message passed on.
pub const MAX_OS_TERM_MESSAGE: usize = 256;
/// The arguments [`PlatformRequest::answers`] compares, at most.
pub const ARGS_CHECKED: usize = 3;

/// One region of guest RAM: the descriptor at the same position in the
/// message's descriptors maps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryRegion {
    /// Guest-physical start.
    pub guest_address: u64,
    /// Length in bytes.
    pub size: u64,
    /// Where the region starts in its file.
    pub file_offset: u64,
}

/// Which vCPUs exist and which run, as the core saw them when it forwarded
/// the call (bit n is vCPU n).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuSnapshot {
    /// vCPUs that exist.
    pub present: u64,
    /// vCPUs running guest code (the others are stopped).
    pub running: u64,
}

impl CpuSnapshot {
    /// Whether vCPU `cpu` exists.
    pub fn is_present(&self, cpu: u32) -> bool {
        cpu < MAX_VCPUS && self.present & (1 << cpu) != 0
    }

    /// Whether vCPU `cpu` runs guest code.
    pub fn is_running(&self, cpu: u32) -> bool {
        cpu < MAX_VCPUS && self.running & (1 << cpu) != 0
    }
}

/// Core → RTAS server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, strum::VariantNames)]
pub enum Request {
    /// Replaces the guest memory map; one descriptor per region, in order.
    SetMemoryTable {
        /// The regions.
        regions: Vec<MemoryRegion>,
    },
    /// The machine's shape, for the device-tree fragments of hot-plugged cores.
    SetTopology {
        /// vCPUs per core (1..=8).
        threads_per_core: u32,
    },
    /// One H_RTAS hypercall.
    Call {
        /// The vCPU that made it.
        caller: u32,
        /// The guest address of its `rtas_args` block (r4).
        args_address: u64,
        /// vCPU states at the time of the call.
        cpus: CpuSnapshot,
    },
}

/// RTAS server → core, for a [`Request::Call`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// The call was answered (return cells written); the core carries out `request`.
    CallDone {
        /// What the core must do, if anything.
        request: Option<PlatformRequest>,
    },
    /// The call could not be answered at all; the hypercall fails.
    CallRefused(CallRefusal),
}

/// Why a call got no RTAS status at all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CallRefusal {
    /// `rtas_args`, or part of it, is outside guest memory.
    ArgsOutsideMemory {
        /// The first address that is not memory.
        address: u64,
    },
    /// nargs + nret exceed the block, or there is no return cell.
    BadCellCount {
        /// Arguments claimed.
        nargs: u32,
        /// Returns claimed.
        nret: u32,
    },
    /// No memory table has been set.
    NoMemory,
    /// A peer the call needs is down: the call did not run (no return cell
    /// was written), and the core makes it again once the peer is back.
    PeerDown {
        /// The peer.
        peer: crate::ProcessKind,
    },
}

impl std::fmt::Display for CallRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallRefusal::ArgsOutsideMemory { address } => {
                write!(f, "rtas_args reach {address:#x}, outside guest memory")
            }
            CallRefusal::BadCellCount { nargs, nret } => write!(
                f,
                "rtas_args with nargs={nargs} nret={nret} (at most 16 cells, at least one return)"
            ),
            CallRefusal::NoMemory => write!(f, "the RTAS server has no guest memory mapped"),
            CallRefusal::PeerDown { peer } => {
                write!(f, "the {} is down; the call did not run", peer.name())
            }
        }
    }
}

/// What a call asks of the machine; the core carries it out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlatformRequest {
    /// `display-character`: one byte for the console.
    DisplayCharacter(u8),
    /// `power-off`.
    PowerOff,
    /// `system-reboot`.
    Reboot,
    /// `ibm,os-term`, with the guest's message (printable ASCII).
    OsTerm {
        /// The message.
        message: String,
    },
    /// `start-cpu`: run a stopped vCPU at `entry` with `r3` as its argument.
    StartCpu {
        /// The vCPU.
        cpu: u32,
        /// Guest address to start at.
        entry: u64,
        /// Passed in the first argument register.
        r3: u64,
    },
    /// `stop-self`: the calling vCPU stops.
    StopSelf,
    /// `ibm,set-xive`: deliver `source` to vCPU `server`.
    SetInterruptServer {
        /// The PAPR interrupt source.
        source: u32,
        /// The vCPU.
        server: u32,
    },
    /// `ibm,write-pci-config` turned a running function's memory decoding
    /// off or moved its queues' BAR: the device failed, its queues stop.
    StopFunction {
        /// The function's DRC.
        drc: DrcIndex,
    },
}

impl PlatformRequest {
    /// Whether this is what a call with `token` and arguments `args` (its
    /// first [`ARGS_CHECKED`] at most) asks of the machine. The core carries
    /// out nothing else: a compromised RTAS server cannot stop, start,
    /// power off or reset vCPUs the guest did not ask about.
    pub fn answers(&self, token: u32, args: &[u32]) -> bool {
        let call = RtasCall::from_token(token);
        let arg = |i: usize| args.get(i).copied();
        match self {
            PlatformRequest::DisplayCharacter(byte) => {
                call == Some(RtasCall::DisplayCharacter) && arg(0).map(|a| a as u8) == Some(*byte)
            }
            PlatformRequest::PowerOff => call == Some(RtasCall::PowerOff),
            PlatformRequest::Reboot => call == Some(RtasCall::SystemReboot),
            PlatformRequest::OsTerm { .. } => call == Some(RtasCall::OsTerm),
            PlatformRequest::StartCpu { cpu, entry, r3 } => {
                call == Some(RtasCall::StartCpu)
                    && arg(0) == Some(*cpu)
                    && arg(1).map(u64::from) == Some(*entry)
                    && arg(2).map(u64::from) == Some(*r3)
            }
            PlatformRequest::StopSelf => call == Some(RtasCall::StopSelf),
            PlatformRequest::SetInterruptServer { source, server } => {
                call == Some(RtasCall::SetXive)
                    && arg(0) == Some(*source)
                    && arg(1) == Some(*server)
            }
            PlatformRequest::StopFunction { drc } => {
                let address = arg(0).map(crate::pci::ConfigAddress::decode);
                let phb = match (arg(1), arg(2)) {
                    (Some(high), Some(low)) => {
                        crate::pci::phb_of(u64::from(high) << 32 | u64::from(low))
                    }
                    _ => None,
                };
                call == Some(RtasCall::IbmWritePciConfig)
                    && matches!((phb, address), (Some(phb), Some(address))
                        if address.bus == 0 && phb.drc(address.devfn) == Some(*drc))
            }
        }
    }

    /// Checks the fields a peer could get wrong.
    fn validate(&self) -> Result<(), String> {
        match self {
            PlatformRequest::OsTerm { message } => {
                if message.len() > MAX_OS_TERM_MESSAGE {
                    return Err(format!("os-term message of {} bytes", message.len()));
                }
                if !message.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
                    return Err("os-term message is not printable ASCII".into());
                }
            }
            PlatformRequest::StartCpu { cpu, .. } if *cpu >= MAX_VCPUS => {
                return Err(format!("start-cpu of vCPU {cpu}"));
            }
            PlatformRequest::SetInterruptServer { source, server } => {
                if !irq::every_source().any(|known| known == *source) {
                    return Err(format!("interrupt source {source:#x} does not exist"));
                }
                if *server >= MAX_VCPUS {
                    return Err(format!("interrupt server {server}"));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl Message for Reply {
    fn validate(&self, _: usize) -> Result<(), String> {
        match self {
            Reply::CallDone {
                request: Some(request),
            } => request.validate(),
            Reply::CallDone { request: None } | Reply::CallRefused(_) => Ok(()),
        }
    }
}

impl Message for Request {
    fn validate(&self, fds: usize) -> Result<(), String> {
        match self {
            Request::SetMemoryTable { regions } => {
                if regions.is_empty() || regions.len() > MAX_MEMORY_REGIONS {
                    return Err(format!("memory table of {} regions", regions.len()));
                }
                if regions.len() != fds {
                    return Err(format!(
                        "memory table of {} regions with {fds} descriptors",
                        regions.len()
                    ));
                }
                for region in regions {
                    if region.size == 0
                        || region.guest_address.checked_add(region.size).is_none()
                        || region.file_offset.checked_add(region.size).is_none()
                    {
                        return Err(format!("bad memory region {region:?}"));
                    }
                }
                // Any order, no overlap: the receiver sorts them.
                let mut by_address: Vec<&MemoryRegion> = regions.iter().collect();
                by_address.sort_by_key(|region| region.guest_address);
                if let Some(pair) = by_address
                    .windows(2)
                    .find(|pair| pair[0].guest_address + pair[0].size > pair[1].guest_address)
                {
                    return Err(format!(
                        "memory regions {:?} and {:?} overlap",
                        pair[0], pair[1]
                    ));
                }
                return Ok(());
            }
            Request::SetTopology { threads_per_core } => {
                if !(1..=8).contains(threads_per_core) {
                    return Err(format!("{threads_per_core} threads per core"));
                }
            }
            Request::Call { caller, .. } => {
                if *caller >= MAX_VCPUS {
                    return Err(format!("call from vCPU {caller}"));
                }
            }
        }
        no_descriptors(fds, "this request")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_platform_request_answers_only_the_call_that_asks_for_it() {
        let token = |call: RtasCall| call.token();
        let start = PlatformRequest::StartCpu {
            cpu: 1,
            entry: 0x100,
            r3: 7,
        };
        assert!(start.answers(token(RtasCall::StartCpu), &[1, 0x100, 7]));
        assert!(!start.answers(token(RtasCall::StartCpu), &[0, 0x100, 7]));
        assert!(!start.answers(token(RtasCall::StartCpu), &[1, 0x100]));
        assert!(!start.answers(token(RtasCall::GetTimeOfDay), &[1, 0x100, 7]));
        assert!(PlatformRequest::StopSelf.answers(token(RtasCall::StopSelf), &[]));
        for call in RtasCall::ALL {
            if call != RtasCall::StopSelf {
                assert!(
                    !PlatformRequest::StopSelf.answers(token(call), &[]),
                    "{call:?}"
                );
            }
            if call != RtasCall::PowerOff {
                assert!(!PlatformRequest::PowerOff.answers(token(call), &[0, 0]));
            }
        }
        assert!(!PlatformRequest::Reboot.answers(0xdead, &[]));
        let route = PlatformRequest::SetInterruptServer {
            source: 0x1001,
            server: 2,
        };
        assert!(route.answers(token(RtasCall::SetXive), &[0x1001, 2, 5]));
        assert!(!route.answers(token(RtasCall::SetXive), &[0x1001, 0, 5]));
        let print = PlatformRequest::DisplayCharacter(b'x');
        assert!(print.answers(token(RtasCall::DisplayCharacter), &[u32::from(b'x')]));
        assert!(!print.answers(token(RtasCall::DisplayCharacter), &[u32::from(b'y')]));
    }

    #[test]
    fn replies_from_a_peer_are_range_checked() {
        let done = |request| Reply::CallDone {
            request: Some(request),
        };
        assert!(done(PlatformRequest::StartCpu {
            cpu: 64,
            entry: 0,
            r3: 0
        })
        .validate(0)
        .is_err());
        assert!(done(PlatformRequest::SetInterruptServer {
            source: 0x1001,
            server: 3
        })
        .validate(0)
        .is_ok());
        assert!(done(PlatformRequest::SetInterruptServer {
            source: 0x2000,
            server: 3
        })
        .validate(0)
        .is_err());
        assert!(done(PlatformRequest::OsTerm {
            message: "a\nb".into()
        })
        .validate(0)
        .is_err());
        assert!(done(PlatformRequest::OsTerm {
            message: "x".repeat(257)
        })
        .validate(0)
        .is_err());
    }

    #[test]
    fn requests_are_range_checked() {
        let region = MemoryRegion {
            guest_address: 0,
            size: 4096,
            file_offset: 0,
        };
        let table = Request::SetMemoryTable {
            regions: vec![region],
        };
        assert!(table.validate(1).is_ok());
        assert!(table.validate(0).is_err());
        let overflowing = Request::SetMemoryTable {
            regions: vec![MemoryRegion {
                guest_address: u64::MAX,
                ..region
            }],
        };
        assert!(overflowing.validate(1).is_err());
        // A DIMM below another: any order is a table, an overlap is not.
        let at = |guest_address: u64| MemoryRegion {
            guest_address,
            size: 1 << 28,
            file_offset: 0,
        };
        let unsorted = Request::SetMemoryTable {
            regions: vec![at(0), at(5 << 30), at(4 << 30)],
        };
        assert!(unsorted.validate(3).is_ok());
        let overlapping = Request::SetMemoryTable {
            regions: vec![at(5 << 30), at((5 << 30) + 4096)],
        };
        let why = overlapping.validate(2).unwrap_err();
        assert!(why.contains("overlap"), "{why}");
        let call = Request::Call {
            caller: 70,
            args_address: 0,
            cpus: CpuSnapshot::default(),
        };
        assert!(call.validate(0).is_err());
    }

    #[test]
    fn snapshot_bits_name_vcpus() {
        let cpus = CpuSnapshot {
            present: 0b111,
            running: 0b101,
        };
        assert!(cpus.is_present(2) && !cpus.is_present(3) && !cpus.is_present(200));
        assert!(cpus.is_running(0) && !cpus.is_running(1));
    }
}
