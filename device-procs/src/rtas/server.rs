//! The RTAS server's main loop: one request at a time from the core's channel.
//! A frame that does not decode or validate is answered with
//! [`RtasToCore::Rejected`] and the loop goes on; only a hang-up ends it.

use super::handle_call;
use ipc_proto::channel::{decode, Channel, ChannelError, Envelope};
use ipc_proto::rtas::{CallRefusal, CoreToRtas, MemoryRegion, RtasToCore};
use ipc_proto::ProcessKind;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::time::Duration;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

/// How long the core has to answer the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves until the core hangs up (Ok) or the channel fails.
pub fn serve(channel: &Channel) -> Result<(), ChannelError> {
    channel.handshake(ProcessKind::RtasServer, HANDSHAKE_TIMEOUT)?;
    log::info!("serving RTAS calls");
    let mut memory: Option<GuestMemoryMmap> = None;
    loop {
        let frame = match channel.recv_frame(None) {
            Ok(frame) => frame,
            Err(ChannelError::HungUp) => {
                log::info!("the core hung up; exiting");
                return Ok(());
            }
            Err(
                error @ (ChannelError::FrameTooLarge
                | ChannelError::TooManyFds
                | ChannelError::Malformed { .. }),
            ) => {
                reject(channel, 0, &error.to_string())?;
                continue;
            }
            Err(error) => return Err(error),
        };
        let message = match decode::<CoreToRtas>(&frame.bytes) {
            Ok(message) => message,
            Err(error) => {
                reject(channel, 0, &error.to_string())?;
                continue;
            }
        };
        if let Err(reason) = message.body.validate(frame.fds.len()) {
            reject(channel, message.id, &reason)?;
            continue;
        }
        let reply = match message.body {
            CoreToRtas::SetMemoryTable { regions } => match map_memory(&regions, frame.fds) {
                Ok(mapped) => {
                    log::info!("mapped {} guest memory region(s)", regions.len());
                    memory = Some(mapped);
                    RtasToCore::MemoryTableSet
                }
                Err(reason) => RtasToCore::Rejected { reason },
            },
            CoreToRtas::Call {
                caller,
                args_address,
                cpus,
            } => match &memory {
                None => RtasToCore::CallRefused(CallRefusal::NoMemory),
                Some(memory) => match handle_call(memory, args_address, &cpus) {
                    Ok(request) => {
                        log::debug!("vCPU {caller}: call at {args_address:#x} -> {request:?}");
                        RtasToCore::CallDone { request }
                    }
                    Err(refusal) => {
                        log::warn!("vCPU {caller}: {refusal}");
                        RtasToCore::CallRefused(refusal)
                    }
                },
            },
        };
        channel.send(
            &Envelope {
                id: message.id,
                body: reply,
            },
            &[],
        )?;
    }
}

fn reject(channel: &Channel, id: u64, reason: &str) -> Result<(), ChannelError> {
    log::warn!("rejected a request from the core: {reason}");
    channel.send(
        &Envelope {
            id,
            body: RtasToCore::Rejected {
                reason: reason.to_string(),
            },
        },
        &[],
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
