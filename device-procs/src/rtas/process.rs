//! The RTAS server's process: requests from the core, one at a time; the
//! hotplug controller and the event log are reached on their own links.

use super::calls::{handle_described, Peers, Services};
use crate::links::{answer, serve, Device, Links};
use crate::process::{Descriptors, ProcessError, Startup};
use ipc_proto::channel::{ChannelError, Frame};
use ipc_proto::control::{Answer, FaultPoint, Refusal};
use ipc_proto::link::core_rtas::{CallRefusal, CoreRtas, MemoryRegion, Reply, Request};
use ipc_proto::link::rtas_eventlog::{self, RtasEventLog};
use ipc_proto::link::rtas_hotplug::{self, RtasHotplug};
use ipc_proto::papr::RtasStatus;
use ipc_proto::protocol::refused;
use ipc_proto::{Link, ProcessKind};
use std::fs::File;
use std::os::fd::OwnedFd;
use thiserror::Error;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

/// Runs the RTAS server until the core hangs up.
pub fn run(startup: Startup, descriptors: Descriptors) -> Result<(), ProcessError> {
    let mut links = Links::open(
        ProcessKind::RtasServer,
        descriptors.channels,
        &[],
        startup.seccomp,
    )?
    .with_trace(startup.trace);
    log::info!("serving RTAS calls");
    let mut server = RtasServer {
        memory: None,
        threads_per_core: 1,
    };
    serve(&mut server, &mut links)
}

struct RtasServer {
    memory: Option<GuestMemoryMmap>,
    threads_per_core: u32,
}

impl Peers for Links {
    fn hotplug_reply(
        &mut self,
        request: rtas_hotplug::Request,
    ) -> Result<rtas_hotplug::Reply, CallRefusal> {
        match self.request::<RtasHotplug>(request) {
            Ok(Answer::Link(reply)) => {
                self.fault_point(FaultPoint::PeerAnswered);
                Ok(reply)
            }
            // A successor that is not set up yet: the call waits for it.
            Ok(Answer::Refused(Refusal::NotReady)) => Err(CallRefusal::PeerDown {
                peer: ProcessKind::HotplugController,
            }),
            Ok(other) => {
                log::error!("the hotplug controller answered {other:?}");
                Ok(rtas_hotplug::Reply::Status {
                    status: RtasStatus::HardwareError,
                    value: 0,
                })
            }
            Err(_) => Err(CallRefusal::PeerDown {
                peer: ProcessKind::HotplugController,
            }),
        }
    }

    fn eventlog(
        &mut self,
        request: rtas_eventlog::Request,
    ) -> Result<Option<rtas_eventlog::Reply>, CallRefusal> {
        match self.request::<RtasEventLog>(request) {
            Ok(Answer::Link(reply)) => {
                self.fault_point(FaultPoint::PeerAnswered);
                Ok(Some(reply))
            }
            Ok(Answer::Ack) => {
                self.fault_point(FaultPoint::PeerAnswered);
                Ok(None)
            }
            Ok(other) => {
                log::error!("the event log answered {other:?}");
                Ok(None)
            }
            Err(_) => Err(CallRefusal::PeerDown {
                peer: ProcessKind::EventLog,
            }),
        }
    }
}

impl Device for RtasServer {
    fn on_frame(
        &mut self,
        links: &mut Links,
        _: Link,
        frame: Result<Frame, ChannelError>,
    ) -> Result<(), ChannelError> {
        answer::<CoreRtas>(links, frame, |links, _, request, fds| {
            self.on_core(links, request, fds)
        })
    }
}

impl RtasServer {
    fn on_core(&mut self, links: &mut Links, request: Request, fds: Vec<OwnedFd>) -> Answer<Reply> {
        match request {
            Request::SetMemoryTable { regions } => match map_memory(&regions, fds) {
                Ok(mapped) => {
                    log::info!("mapped {} guest memory region(s)", regions.len());
                    self.memory = Some(mapped);
                    Answer::Ack
                }
                Err(error) => refused(error.to_string()),
            },
            Request::SetTopology { threads_per_core } => {
                self.threads_per_core = threads_per_core;
                Answer::Ack
            }
            Request::Call {
                caller,
                args_address,
                cpus,
            } => {
                let Some(memory) = &self.memory else {
                    return Answer::Link(Reply::CallRefused(CallRefusal::NoMemory));
                };
                let mut services = Services {
                    cpus: &cpus,
                    peers: links,
                    threads_per_core: self.threads_per_core,
                };
                Answer::Link(
                    match handle_described(memory, args_address, &mut services) {
                        Ok((request, summary)) => {
                            match &request {
                                Some(request) => log::debug!(
                                    "vCPU {caller}: {summary}; the core carries out {request:?}"
                                ),
                                None => log::debug!("vCPU {caller}: {summary}"),
                            }
                            #[cfg(feature = "fault-injection")]
                            let request = lie_about(links, request);
                            Reply::CallDone { request }
                        }
                        Err(refusal) => {
                            log::warn!("vCPU {caller}: {refusal}");
                            Reply::CallRefused(refusal)
                        }
                    },
                )
            }
        }
    }
}

/// Why guest memory cannot be mapped.
#[derive(Debug, Error)]
enum MapError {
    #[error("cannot stat a memory descriptor")]
    Stat(#[source] std::io::Error),
    #[error("the region at {guest_address:#x} needs {end} bytes of a {length}-byte file")]
    FileTooShort {
        guest_address: u64,
        end: u64,
        length: u64,
    },
    #[error("the region at {0:#x} is larger than the address space")]
    TooLarge(u64),
    #[error("cannot map guest memory")]
    Map(#[source] vm_memory::mmap::FromRangesError),
}

/// Maps each region from its memfd, refusing a region its file cannot back
/// (touching it would raise SIGBUS).
fn map_memory(regions: &[MemoryRegion], fds: Vec<OwnedFd>) -> Result<GuestMemoryMmap, MapError> {
    let mut ranges = Vec::with_capacity(regions.len());
    for (region, fd) in regions.iter().zip(fds) {
        let file = File::from(fd);
        let length = file.metadata().map_err(MapError::Stat)?.len();
        let end = region.file_offset + region.size;
        if end > length {
            return Err(MapError::FileTooShort {
                guest_address: region.guest_address,
                end,
                length,
            });
        }
        let size =
            usize::try_from(region.size).map_err(|_| MapError::TooLarge(region.guest_address))?;
        ranges.push((
            GuestAddress(region.guest_address),
            size,
            Some(FileOffset::new(file, region.file_offset)),
        ));
    }
    // The table may come in any order; vm-memory takes regions sorted.
    ranges.sort_by_key(|(address, _, _)| *address);
    GuestMemoryMmap::from_ranges_with_files(ranges).map_err(MapError::Map)
}

/// What a call that was told to lie asks of the core instead (`Fault::Lie`).
#[cfg(feature = "fault-injection")]
fn lie_about(
    links: &mut Links,
    request: Option<ipc_proto::link::core_rtas::PlatformRequest>,
) -> Option<ipc_proto::link::core_rtas::PlatformRequest> {
    let faults = links.faults_mut();
    if faults.lies == 0 {
        return request;
    }
    faults.lies -= 1;
    let lie = crate::lie::call_lie(crate::lie::LYING_CALLS - 1 - faults.lies);
    log::warn!("answering a call with {lie:?} instead of {request:?}, as asked");
    Some(lie)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    fn memfd(size: u64) -> OwnedFd {
        let fd = nix::sys::memfd::memfd_create("test", nix::sys::memfd::MFdFlags::empty()).unwrap();
        let file = File::from(fd);
        file.set_len(size).unwrap();
        file.into()
    }

    #[test]
    fn a_table_in_any_order_is_mapped_by_address() {
        const MIB: u64 = 1 << 20;
        let region = |guest_address: u64| MemoryRegion {
            guest_address,
            size: MIB,
            file_offset: 0,
        };
        // A DIMM plugged below one plugged before it.
        let regions = [region(0), region(8 * MIB), region(4 * MIB)];
        let fds = vec![memfd(MIB), memfd(MIB), memfd(MIB)];
        let memory = map_memory(&regions, fds).unwrap();
        assert_eq!(memory.num_regions(), 3);
        memory.write_obj(7u64, GuestAddress(4 * MIB)).unwrap();
        assert_eq!(memory.read_obj::<u64>(GuestAddress(4 * MIB)).unwrap(), 7);
        // A file too short for its region is refused, not mapped.
        let short = map_memory(&[region(0)], vec![memfd(4096)]).unwrap_err();
        assert!(matches!(short, MapError::FileTooShort { .. }), "{short}");
    }
}
