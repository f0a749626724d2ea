//! The RTAS server's part of the core's device processes: its memory
//! table (boot RAM and the plugged DIMMs) and the guest's RTAS calls, which
//! wait for a restarting server or peer instead of failing.

use super::proxy::DeviceFailure;
use super::{lock, DeviceProcesses};
use ipc_proto::link::core_rtas::{self, MemoryRegion};
use ipc_proto::ProcessKind;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

/// How long an RTAS call waits for a restarting RTAS server: the guest
/// sees a slower call, not a failed one.
pub const RTAS_RESTART_WAIT: Duration = Duration::from_secs(10);
/// How long a call that found a peer of the RTAS server down waits, at
/// most, before it asks again: it goes on as soon as the peer's successor
/// serves, but the RTAS server may have dropped a peer the core still
/// runs (one that was only slow), and then no successor comes.
const PEER_RESTART_POLL: Duration = Duration::from_millis(20);

impl DeviceProcesses {
    /// The RTAS server's memory table: boot RAM and every plugged DIMM.
    pub(super) fn send_memory_table(&self) -> Result<(), DeviceFailure> {
        let dimms = lock(&self.resources.dimm_memory);
        let (regions, fds): (Vec<MemoryRegion>, Vec<BorrowedFd<'_>>) = self
            .resources
            .memory
            .iter()
            .chain(dimms.iter())
            .map(|(region, fd)| (*region, fd.as_fd()))
            .unzip();
        self.rtas
            .command_with(core_rtas::Request::SetMemoryTable { regions }, &fds)
    }

    /// The plugged DIMMs changed: the RTAS server maps `dimms` besides boot
    /// RAM. One that is down, or dies taking the table, is replaced by a
    /// successor that gets the table at its set-up (and guest calls wait
    /// for it): only a refusal, or a server failed for good, is an error.
    pub fn set_dimm_memory(
        &self,
        mut dimms: Vec<(MemoryRegion, OwnedFd)>,
    ) -> Result<(), DeviceFailure> {
        // Kept in address order: what every successor is handed too.
        dimms.sort_by_key(|(region, _)| region.guest_address);
        *lock(&self.resources.dimm_memory) = dimms;
        match self.send_memory_table() {
            Err(
                failure @ (DeviceFailure::Restarting(_)
                | DeviceFailure::Died(_)
                | DeviceFailure::CutOff { .. }),
            ) => {
                log::info!("the RTAS server's successor maps the DIMMs at its set-up ({failure})");
                Ok(())
            }
            other => other,
        }
    }

    /// An id for an H_RTAS call ([`DeviceProcesses::rtas_call`]): the
    /// trace names the call by it, and the RTAS server its peer requests.
    pub fn rtas_call_id(&self) -> u64 {
        self.rtas.new_id()
    }

    /// One H_RTAS call, as request `id`. While the RTAS server, or a peer the call needs,
    /// restarts, the call waits for the successor (up to
    /// [`RTAS_RESTART_WAIT`], or until `abort`) and is made again, under the
    /// same id: the guest sees a slower call, never a status for a call that
    /// did not run (a `stop-self` that "returned" busy would be fatal to it,
    /// and Linux zeroes the return cells before a call). A call that did run
    /// before its server died is recognised by its id where it changed
    /// something (the hotplug controller's state region) and not applied
    /// twice. Only a process failed for good fails the call.
    pub fn rtas_call(
        &self,
        id: u64,
        request: core_rtas::Request,
        abort: &dyn Fn() -> bool,
    ) -> Result<core_rtas::Reply, DeviceFailure> {
        let deadline = Instant::now() + RTAS_RESTART_WAIT;
        loop {
            // Which processes served when the call was sent: a peer the RTAS
            // server finds down is awaited until another serves.
            let peers_before: Vec<(ProcessKind, Option<u32>)> = ProcessKind::ALL
                .into_iter()
                .filter(|&kind| kind != ProcessKind::RtasServer)
                .map(|kind| (kind, self.proxy(kind).serving_pid()))
                .collect();
            // A server just restarted serves the guest once it is set up.
            if !self.rtas.wait_for_process(deadline, abort) {
                return self.rtas.query_as(id, request);
            }
            match self.rtas.query_as(id, request.clone()) {
                Err(
                    failure @ (DeviceFailure::Restarting(_)
                    | DeviceFailure::Died(_)
                    | DeviceFailure::CutOff { .. }),
                ) => {
                    log::info!("RTAS call waits for the RTAS server: {failure}");
                }
                Ok(core_rtas::Reply::CallRefused(core_rtas::CallRefusal::PeerDown { peer })) => {
                    if self.proxy(peer).is_failed() {
                        return Err(DeviceFailure::Failed(peer));
                    }
                    if Instant::now() >= deadline || abort() {
                        return Err(DeviceFailure::Restarting(peer));
                    }
                    log::debug!("RTAS call waits for the {}", peer.name());
                    let before = peers_before
                        .iter()
                        .find(|(kind, _)| *kind == peer)
                        .and_then(|(_, pid)| *pid);
                    let until = (Instant::now() + PEER_RESTART_POLL).min(deadline);
                    self.proxy(peer).wait_for_successor(before, until);
                }
                answer => return answer,
            }
        }
    }
}
