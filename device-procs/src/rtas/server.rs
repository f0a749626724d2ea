//! The RTAS server's process: one request at a time from the core; the
//! hotplug controller and the event log are reached on their own links.
//! A frame that does not decode or validate is answered with
//! [`RtasToCore::Rejected`] and the loop goes on; only the core's hang-up ends it.

use super::configure::ConfigureSessions;
use super::{handle_call, Peers, Services};
use crate::process::{adopt, open_links, reply, serve, Server as Serve, PEER_TIMEOUT};
use ipc_proto::channel::{decode, Channel, ChannelError, Client, Frame};
use ipc_proto::eventlog::{EventLogToRtas, RtasToEventLog};
use ipc_proto::hotplug::{HotplugToRtas, RtasToHotplug};
use ipc_proto::rtas::{CallRefusal, CoreToRtas, MemoryRegion, RtasToCore};
use ipc_proto::{Link, ProcessKind};
use std::fs::File;
use std::os::fd::OwnedFd;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

struct Links {
    hotplug: Client,
    eventlog: Client,
}

impl Peers for Links {
    fn hotplug(&mut self, request: RtasToHotplug) -> Option<(i32, u32)> {
        match self
            .hotplug
            .request::<_, HotplugToRtas>(request, &[], PEER_TIMEOUT)
        {
            Ok(HotplugToRtas::Status { status, value }) => Some((status, value)),
            Ok(other) => {
                log::error!("the hotplug controller answered {other:?}");
                None
            }
            Err(error) => {
                log::error!("cannot reach the hotplug controller: {error}");
                None
            }
        }
    }

    fn eventlog(&mut self, request: RtasToEventLog) -> Option<EventLogToRtas> {
        match self
            .eventlog
            .request::<_, EventLogToRtas>(request, &[], PEER_TIMEOUT)
        {
            Ok(EventLogToRtas::Rejected { reason }) => {
                log::error!("the event log rejected a request: {reason}");
                None
            }
            Ok(answer) => Some(answer),
            Err(error) => {
                log::error!("cannot reach the event log: {error}");
                None
            }
        }
    }
}

struct Server {
    core: Channel,
    memory: Option<GuestMemoryMmap>,
    threads_per_core: u32,
    configure: ConfigureSessions,
    links: Links,
}

/// Runs the RTAS server until the core hangs up.
pub fn run() -> Result<(), String> {
    let mut channels = open_links(ProcessKind::RtasServer)?.into_iter();
    let (Some(core), Some(hotplug), Some(eventlog)) =
        (channels.next(), channels.next(), channels.next())
    else {
        return Err("missing channels".into());
    };
    log::info!("serving RTAS calls");
    let mut server = Server {
        core,
        memory: None,
        threads_per_core: 1,
        configure: ConfigureSessions::default(),
        links: Links {
            hotplug: Client::new(hotplug),
            eventlog: Client::new(eventlog),
        },
    };
    serve(&mut server).map_err(|error| error.to_string())
}

impl Serve for Server {
    fn watched(&self) -> Vec<(&Channel, Link)> {
        vec![(&self.core, Link::CoreRtas)]
    }

    fn handle(&mut self, _: Link, frame: Result<Frame, ChannelError>) -> Result<(), ChannelError> {
        self.on_core(frame)
    }

    fn peer_gone(&mut self, _: Link) {}
}

impl Server {
    fn on_core(&mut self, frame: Result<Frame, ChannelError>) -> Result<(), ChannelError> {
        let core = &self.core;
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => return reject(core, 0, &error.to_string()),
        };
        let message = match decode::<CoreToRtas>(&frame.bytes) {
            Ok(message) => message,
            Err(error) => return reject(core, 0, &error.to_string()),
        };
        if let Err(reason) = message.body.validate(frame.fds.len()) {
            return reject(core, message.id, &reason);
        }
        let answer = match message.body {
            CoreToRtas::ReplaceLink(link) => match adopt(link, frame.fds) {
                Ok(channel) => {
                    match link {
                        Link::RtasHotplug => self.links.hotplug = Client::new(channel),
                        _ => self.links.eventlog = Client::new(channel),
                    }
                    RtasToCore::MemoryTableSet
                }
                Err(reason) => RtasToCore::Rejected { reason },
            },
            CoreToRtas::SetMemoryTable { regions } => match map_memory(&regions, frame.fds) {
                Ok(mapped) => {
                    log::info!("mapped {} guest memory region(s)", regions.len());
                    self.memory = Some(mapped);
                    RtasToCore::MemoryTableSet
                }
                Err(reason) => RtasToCore::Rejected { reason },
            },
            CoreToRtas::InjectFault(fault) => RtasToCore::FaultSurvived {
                outcome: {
                    if fault == ipc_proto::Fault::Garbage {
                        crate::process::send_garbage(&self.core);
                    }
                    crate::seccomp::commit(fault)
                },
            },
            CoreToRtas::SetTopology { threads_per_core } => {
                self.threads_per_core = threads_per_core;
                RtasToCore::MemoryTableSet
            }
            CoreToRtas::Call {
                caller,
                args_address,
                cpus,
            } => match &self.memory {
                None => RtasToCore::CallRefused(CallRefusal::NoMemory),
                Some(memory) => {
                    let mut services = Services {
                        cpus: &cpus,
                        peers: &mut self.links,
                        configure: &mut self.configure,
                        threads_per_core: self.threads_per_core,
                    };
                    match handle_call(memory, args_address, &mut services) {
                        Ok(request) => {
                            log::debug!("vCPU {caller}: call at {args_address:#x} -> {request:?}");
                            RtasToCore::CallDone { request }
                        }
                        Err(refusal) => {
                            log::warn!("vCPU {caller}: {refusal}");
                            RtasToCore::CallRefused(refusal)
                        }
                    }
                }
            },
        };
        reply(&self.core, message.id, answer)
    }
}

fn reject(channel: &Channel, id: u64, reason: &str) -> Result<(), ChannelError> {
    log::warn!("rejected a request from the core: {reason}");
    reply(
        channel,
        id,
        RtasToCore::Rejected {
            reason: reason.to_string(),
        },
    )
}

/// Maps each region from its memfd, refusing a region its file cannot back
/// (touching it would raise SIGBUS).
fn map_memory(regions: &[MemoryRegion], fds: Vec<OwnedFd>) -> Result<GuestMemoryMmap, String> {
    let mut ranges = Vec::with_capacity(regions.len());
    for (region, fd) in regions.iter().zip(fds) {
        let file = File::from(fd);
        let length = file
            .metadata()
            .map_err(|error| format!("cannot stat a memory descriptor: {error}"))?
            .len();
        let end = region.file_offset + region.size;
        if end > length {
            return Err(format!(
                "region at {:#x} needs {end} bytes of a {length}-byte file",
                region.guest_address
            ));
        }
        let size = usize::try_from(region.size).map_err(|_| "region too large".to_string())?;
        ranges.push((
            GuestAddress(region.guest_address),
            size,
            Some(FileOffset::new(file, region.file_offset)),
        ));
    }
    GuestMemoryMmap::from_ranges_with_files(ranges).map_err(|error| error.to_string())
}
