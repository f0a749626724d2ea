//! The RTAS calls: read `rtas_args` from guest memory, validate every field
//! and address, dispatch by token and write the return cells back. Effects
//! on the machine (power, reset, console, vCPUs, interrupt routing) are
//! returned as typed [`PlatformRequest`]s for the core to carry out; nothing
//! here touches a vCPU.

use super::configure::{write_walk_step, Progress, WORK_AREA_SIZE};
use crate::clock::UtcTime;
use ipc_proto::link::core_rtas::{CallRefusal, CpuSnapshot, PlatformRequest, MAX_OS_TERM_MESSAGE};
use ipc_proto::link::rtas_eventlog::{Reply as EventLogReply, Request as EventLogRequest};
use ipc_proto::link::rtas_hotplug::{Reply as HotplugReply, Request as HotplugRequest};
use ipc_proto::papr::{irq, DrcIndex, RtasCall, RtasStatus, REAL_ADDRESS_MASK};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError};

/// Linux's `struct rtas_args` holds 16 cells for arguments and returns together.
pub const MAX_CELLS: u32 = 16;

/// The largest check-exception buffer looked at (Linux uses 2048).
const MAX_EVENT_BUFFER: u32 = 64 * 1024;

/// query-cpu-stopped-state: the CPU is stopped.
const CPU_STOPPED: u32 = 0;
/// query-cpu-stopped-state: the CPU runs.
const CPU_RUNNING: u32 = 2;

/// One decoded call: the header and argument cells, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtasArgs {
    /// Address of the block in guest memory.
    pub address: u64,
    /// The token the guest passed.
    pub token: u32,
    /// The argument cells.
    pub args: Vec<u32>,
    /// How many return cells the guest expects.
    pub nret: u32,
}

fn read_cell<M: Bytes<GuestAddress, E = GuestMemoryError>>(
    memory: &M,
    address: u64,
) -> Result<u32, CallRefusal> {
    memory
        .read_obj::<u32>(GuestAddress(address))
        .map(u32::from_be)
        .map_err(|_| CallRefusal::ArgsOutsideMemory { address })
}

impl RtasArgs {
    /// Reads and validates the block at `address`.
    pub fn read<M: Bytes<GuestAddress, E = GuestMemoryError>>(
        memory: &M,
        address: u64,
    ) -> Result<RtasArgs, CallRefusal> {
        let address = address & REAL_ADDRESS_MASK;
        let cell = |i: u64| {
            let at = address
                .checked_add(4 * i)
                .ok_or(CallRefusal::ArgsOutsideMemory { address })?;
            read_cell(memory, at)
        };
        let token = cell(0)?;
        let nargs = cell(1)?;
        let nret = cell(2)?;
        if nret == 0 || nargs.checked_add(nret).is_none_or(|n| n > MAX_CELLS) {
            return Err(CallRefusal::BadCellCount { nargs, nret });
        }
        // The last return cell must be writable memory too, before we act.
        cell(3 + u64::from(nargs) + u64::from(nret) - 1)?;
        let args = (0..nargs)
            .map(|i| cell(3 + u64::from(i)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RtasArgs {
            address,
            token,
            args,
            nret,
        })
    }

    fn write_rets<M: Bytes<GuestAddress, E = GuestMemoryError>>(
        &self,
        memory: &M,
        rets: &[u32],
    ) -> Result<(), CallRefusal> {
        let first = self.address + 12 + 4 * self.args.len() as u64;
        for (i, value) in rets.iter().take(self.nret as usize).enumerate() {
            let at = first + 4 * i as u64;
            memory
                .write_obj(value.to_be(), GuestAddress(at))
                .map_err(|_| CallRefusal::ArgsOutsideMemory { address: at })?;
        }
        Ok(())
    }
}

/// The other device processes, as the RTAS server reaches them. A peer
/// that does not answer (it is down, and the supervisor restarts it) is
/// [`CallRefusal::PeerDown`]: the call stops there, writes no return cell,
/// and the core makes it again once the peer is back — the guest never reads
/// a status for a call that did not run.
pub trait Peers {
    /// A request to the hotplug controller: its reply.
    fn hotplug_reply(&mut self, request: HotplugRequest) -> Result<HotplugReply, CallRefusal>;
    /// A request to the hotplug controller: RTAS status and value.
    fn hotplug(&mut self, request: HotplugRequest) -> Result<(RtasStatus, u32), CallRefusal> {
        Ok(match self.hotplug_reply(request)? {
            HotplugReply::Status { status, value } => (status, value),
            HotplugReply::Vectors { status, count, .. } => (status, count),
            HotplugReply::Stopped { status, .. } => (status, 0),
        })
    }
    /// A request to the event log: its reply, or `None` for an acknowledgement.
    fn eventlog(&mut self, request: EventLogRequest) -> Result<Option<EventLogReply>, CallRefusal>;
}

/// What a call may use besides guest memory.
pub struct Services<'a> {
    /// vCPU states when the call was made.
    pub cpus: &'a CpuSnapshot,
    /// The hotplug controller and the event log.
    pub peers: &'a mut dyn Peers,
    /// vCPUs per core.
    pub threads_per_core: u32,
}

/// Answers the call whose `rtas_args` block is at `address`: writes the return
/// cells and says what the core must do.
pub fn handle_call<M: Bytes<GuestAddress, E = GuestMemoryError>>(
    memory: &M,
    address: u64,
    services: &mut Services<'_>,
) -> Result<Option<PlatformRequest>, CallRefusal> {
    handle_described(memory, address, services).map(|(request, _)| request)
}

/// A call as the log names it: the call, its arguments, its status.
pub struct CallSummary {
    token: u32,
    args: Vec<u32>,
    status: Option<u32>,
}

impl std::fmt::Display for CallSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match RtasCall::from_token(self.token) {
            Some(call) => write!(f, "{}", call.name())?,
            None => write!(f, "token {:#x}", self.token)?,
        }
        write!(f, "(")?;
        for (index, arg) in self.args.iter().enumerate() {
            let comma = if index == 0 { "" } else { ", " };
            write!(f, "{comma}{arg:#x}")?;
        }
        match self.status {
            Some(status) => write!(f, ") -> status {}", status as i32),
            None => write!(f, ") -> no return cell"),
        }
    }
}

/// [`handle_call`], and what the call was.
pub fn handle_described<M: Bytes<GuestAddress, E = GuestMemoryError>>(
    memory: &M,
    address: u64,
    services: &mut Services<'_>,
) -> Result<(Option<PlatformRequest>, CallSummary), CallRefusal> {
    let call = RtasArgs::read(memory, address)?;
    let (rets, request) = dispatch(memory, &call, services)?;
    call.write_rets(memory, &rets)?;
    let summary = CallSummary {
        token: call.token,
        args: call.args,
        status: rets.first().copied(),
    };
    Ok((request, summary))
}

pub(super) fn status(status: RtasStatus) -> Vec<u32> {
    vec![status.cell()]
}

/// The return cells and the core's part, or why the call cannot run now.
type Answered = Result<(Vec<u32>, Option<PlatformRequest>), CallRefusal>;

fn dispatch<M: Bytes<GuestAddress, E = GuestMemoryError>>(
    memory: &M,
    call: &RtasArgs,
    services: &mut Services<'_>,
) -> Answered {
    let cpus = services.cpus;
    let nargs = call.args.len();
    let nret = call.nret as usize;
    let Some(kind) = RtasCall::from_token(call.token) else {
        log::debug!("RTAS: unknown token {:#x}", call.token);
        return Ok((status(RtasStatus::ParameterError), None));
    };
    if let Some(answer) = super::pci::call(kind, call, services)? {
        return Ok(answer);
    }
    Ok(match kind {
        RtasCall::DisplayCharacter if nargs == 1 && nret == 1 => (
            status(RtasStatus::Success),
            Some(PlatformRequest::DisplayCharacter(call.args[0] as u8)),
        ),
        RtasCall::GetTimeOfDay if nargs == 0 && nret == 8 => (time_of_day(UtcTime::now()), None),
        RtasCall::PowerOff if nargs == 2 && nret == 1 => {
            (status(RtasStatus::Success), Some(PlatformRequest::PowerOff))
        }
        RtasCall::SystemReboot if nargs == 0 && nret == 1 => {
            (status(RtasStatus::Success), Some(PlatformRequest::Reboot))
        }
        RtasCall::StartCpu if nargs == 3 && nret == 1 => {
            let [cpu, entry, r3] = [call.args[0], call.args[1], call.args[2]];
            if !cpus.is_present(cpu) || memory.read_obj::<u8>(GuestAddress(entry.into())).is_err() {
                (status(RtasStatus::ParameterError), None)
            } else if cpus.is_running(cpu) {
                (status(RtasStatus::HardwareError), None)
            } else {
                let request = PlatformRequest::StartCpu {
                    cpu,
                    entry: entry.into(),
                    r3: r3.into(),
                };
                (status(RtasStatus::Success), Some(request))
            }
        }
        // QEMU checks neither count: the call does not return to the caller.
        RtasCall::StopSelf => (status(RtasStatus::Success), Some(PlatformRequest::StopSelf)),
        RtasCall::QueryCpuStoppedState if nargs == 1 && nret == 2 => {
            let cpu = call.args[0];
            if !cpus.is_present(cpu) {
                (vec![RtasStatus::ParameterError.cell(), 0], None)
            } else if cpus.is_running(cpu) {
                (vec![RtasStatus::Success.cell(), CPU_RUNNING], None)
            } else {
                (vec![RtasStatus::Success.cell(), CPU_STOPPED], None)
            }
        }
        RtasCall::SetXive if nargs == 3 && nret == 1 => {
            let [source, server, _priority] = [call.args[0], call.args[1], call.args[2]];
            if !irq::every_source().any(|known| known == source) || !cpus.is_present(server) {
                (status(RtasStatus::ParameterError), None)
            } else {
                let request = PlatformRequest::SetInterruptServer { source, server };
                (status(RtasStatus::Success), Some(request))
            }
        }
        RtasCall::SetIndicator if nargs == 3 && nret == 1 => {
            let request = HotplugRequest::SetIndicator {
                indicator: call.args[0],
                drc: call.args[1],
                value: call.args[2],
            };
            let (status, _) = services.peers.hotplug(request)?;
            (self::status(status), None)
        }
        RtasCall::GetSensorState if nargs == 2 && nret == 2 => {
            let request = HotplugRequest::GetSensorState {
                sensor: call.args[0],
                drc: call.args[1],
            };
            let (status, value) = services.peers.hotplug(request)?;
            (vec![status.cell(), value], None)
        }
        RtasCall::ConfigureConnector if nargs == 2 && nret == 1 => {
            let area =
                (u64::from(call.args[0]) | (u64::from(call.args[1]) << 32)) & REAL_ADDRESS_MASK;
            (vec![configure_connector(memory, area, services)?], None)
        }
        RtasCall::CheckException if (nargs == 6 || nargs == 7) && nret == 1 => {
            let [mask, buffer, length] = [call.args[2], call.args[4], call.args[5]];
            (
                status(check_exception(
                    memory,
                    mask,
                    buffer.into(),
                    length,
                    services,
                )?),
                None,
            )
        }
        RtasCall::EventScan if nargs == 4 && nret == 1 => {
            // Never returns data (as QEMU): it re-raises the interrupt of
            // queued classes, so a lost interrupt is delivered again.
            services
                .peers
                .eventlog(EventLogRequest::EventScan { mask: call.args[0] })?;
            (status(RtasStatus::NoErrorsFound), None)
        }
        // Every DRC's power domain is -1 ("always on", as QEMU's): setting
        // it succeeds and leaves it at 100, whatever was asked.
        RtasCall::SetPowerLevel if nargs == 2 && nret == 2 => (power_level(call.args[0]), None),
        RtasCall::GetPowerLevel if nargs == 1 && nret == 2 => (power_level(call.args[0]), None),
        RtasCall::OsTerm if nargs == 1 && nret == 1 => {
            let message = read_message(memory, u64::from(call.args[0]) & REAL_ADDRESS_MASK);
            (
                status(RtasStatus::Success),
                Some(PlatformRequest::OsTerm { message }),
            )
        }
        _ => {
            log::debug!(
                "RTAS: {} with nargs={nargs} nret={nret} is not supported",
                kind.name()
            );
            (status(RtasStatus::ParameterError), None)
        }
    })
}

/// The only power domain, -1, and its level.
const POWER_DOMAIN: u32 = u32::MAX;
const POWER_LEVEL_FULL: u32 = 100;

/// set-/get-power-level's return cells for `domain`.
fn power_level(domain: u32) -> Vec<u32> {
    match domain {
        POWER_DOMAIN => vec![RtasStatus::Success.cell(), POWER_LEVEL_FULL],
        _ => vec![RtasStatus::ParameterError.cell(), 0],
    }
}

/// One configure-connector step; the status cell for the guest (an RTAS
/// status, or the walk's own step code).
fn configure_connector<M: Bytes<GuestAddress, E = GuestMemoryError>>(
    memory: &M,
    area: u64,
    services: &mut Services<'_>,
) -> Result<u32, CallRefusal> {
    let in_memory = |at: u64| memory.read_obj::<u8>(GuestAddress(at)).is_ok();
    let Some(last) = area.checked_add(WORK_AREA_SIZE - 1) else {
        return Ok(RtasStatus::ParameterError.cell());
    };
    if !in_memory(area) || !in_memory(last) {
        return Ok(RtasStatus::ParameterError.cell());
    }
    let Ok(drc) = memory.read_obj::<u32>(GuestAddress(area)).map(u32::from_be) else {
        return Ok(RtasStatus::ParameterError.cell());
    };
    let (status, index) = services
        .peers
        .hotplug(HotplugRequest::ConfigureStep { drc })?;
    if status != RtasStatus::Success {
        return Ok(status.cell());
    }
    let threads = services.threads_per_core;
    Ok(
        match write_walk_step(memory, area, DrcIndex(drc), index, threads) {
            Progress::Step(code) => code as u32,
            Progress::Complete => {
                let (status, _) = services
                    .peers
                    .hotplug(HotplugRequest::ConfigureDone { drc })?;
                status.cell()
            }
        },
    )
}

/// check-exception: dequeues one event into the guest's buffer.
fn check_exception<M: Bytes<GuestAddress, E = GuestMemoryError>>(
    memory: &M,
    mask: u32,
    buffer: u64,
    length: u32,
    services: &mut Services<'_>,
) -> Result<RtasStatus, CallRefusal> {
    let length = length.min(MAX_EVENT_BUFFER);
    let in_memory = |at: u64| memory.read_obj::<u8>(GuestAddress(at)).is_ok();
    let buffer = buffer & REAL_ADDRESS_MASK;
    if length == 0 || !in_memory(buffer) || !in_memory(buffer + u64::from(length) - 1) {
        return Ok(RtasStatus::ParameterError);
    }
    let reply = services.peers.eventlog(EventLogRequest::CheckException {
        mask,
        max_len: length,
    })?;
    Ok(match reply {
        Some(EventLogReply::Event(bytes)) if bytes.len() <= length as usize => {
            match memory.write_slice(&bytes, GuestAddress(buffer)) {
                Ok(()) => RtasStatus::Success,
                Err(_) => RtasStatus::HardwareError,
            }
        }
        Some(EventLogReply::NoEvent) => RtasStatus::NoErrorsFound,
        Some(EventLogReply::BufferTooSmall { .. }) => RtasStatus::ParameterError,
        _ => RtasStatus::HardwareError,
    })
}

/// A NUL-terminated guest string, bounded and reduced to printable ASCII.
fn read_message<M: Bytes<GuestAddress, E = GuestMemoryError>>(memory: &M, address: u64) -> String {
    let mut message = String::new();
    for i in 0..MAX_OS_TERM_MESSAGE as u64 {
        let Some(at) = address.checked_add(i) else {
            break;
        };
        match memory.read_obj::<u8>(GuestAddress(at)) {
            Ok(0) | Err(_) => break,
            Ok(b) if b.is_ascii_graphic() || b == b' ' => message.push(b as char),
            Ok(_) => message.push('?'),
        }
    }
    message
}

/// `get-time-of-day` return cells: status, year, month, day, hour, minute, second, ns (UTC).
fn time_of_day(now: UtcTime) -> Vec<u32> {
    vec![
        RtasStatus::Success.cell(),
        now.year,
        now.month,
        now.day,
        now.hour,
        now.minute,
        now.second,
        now.nanos,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_is_summarised_by_name_arguments_and_status() {
        let summary = CallSummary {
            token: RtasCall::SetIndicator.token(),
            args: vec![9003, 0x2000_0001, 1],
            status: Some(-3i32 as u32),
        };
        assert_eq!(
            summary.to_string(),
            "set-indicator(0x232b, 0x20000001, 0x1) -> status -3"
        );
        let unknown = CallSummary {
            token: 0x7777,
            args: vec![],
            status: None,
        };
        assert_eq!(unknown.to_string(), "token 0x7777() -> no return cell");
    }
    use ipc_proto::ProcessKind;
    use vm_memory::GuestMemoryMmap;

    /// vCPUs 0..4 exist; 0 and 2 run.
    const CPUS: CpuSnapshot = CpuSnapshot {
        present: 0b1111,
        running: 0b0101,
    };

    /// Peers that record requests and give canned answers.
    #[derive(Default)]
    struct FakePeers {
        hotplug: Vec<HotplugRequest>,
        hotplug_answer: Option<(RtasStatus, u32)>,
        vectors_answer: Option<(RtasStatus, u32, bool)>,
        eventlog_answer: Option<EventLogReply>,
    }

    impl Peers for FakePeers {
        fn hotplug_reply(&mut self, request: HotplugRequest) -> Result<HotplugReply, CallRefusal> {
            let vectors = matches!(request, HotplugRequest::ChangeMsi { .. });
            self.hotplug.push(request);
            match (vectors, self.vectors_answer, self.hotplug_answer) {
                (true, Some((status, count, msix)), _) => Ok(HotplugReply::Vectors {
                    status,
                    count,
                    msix,
                }),
                (_, _, Some((status, value))) => Ok(HotplugReply::Status { status, value }),
                _ => Err(CallRefusal::PeerDown {
                    peer: ProcessKind::HotplugController,
                }),
            }
        }
        fn eventlog(&mut self, _: EventLogRequest) -> Result<Option<EventLogReply>, CallRefusal> {
            match &self.eventlog_answer {
                Some(answer) => Ok(Some(answer.clone())),
                None => Err(CallRefusal::PeerDown {
                    peer: ProcessKind::EventLog,
                }),
            }
        }
    }

    fn handle_with(
        m: &GuestMemoryMmap,
        at: u64,
        peers: &mut FakePeers,
    ) -> Result<Option<PlatformRequest>, CallRefusal> {
        let mut services = Services {
            cpus: &CPUS,
            peers,
            threads_per_core: 1,
        };
        handle_call(m, at, &mut services)
    }

    fn handle(m: &GuestMemoryMmap, at: u64) -> Result<Option<PlatformRequest>, CallRefusal> {
        handle_with(m, at, &mut FakePeers::default())
    }

    const BLOCK: u64 = 0x1000;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn write_call(memory: &GuestMemoryMmap, at: u64, token: u32, args: &[u32], nret: u32) {
        let cells = [token, args.len() as u32, nret]
            .into_iter()
            .chain(args.iter().copied());
        for (i, cell) in cells.enumerate() {
            memory
                .write_obj(cell.to_be(), GuestAddress(at + 4 * i as u64))
                .unwrap();
        }
    }

    fn ret(memory: &GuestMemoryMmap, at: u64, nargs: u64, i: u64) -> u32 {
        u32::from_be(
            memory
                .read_obj(GuestAddress(at + 12 + 4 * nargs + 4 * i))
                .unwrap(),
        )
    }

    #[test]
    fn power_off_succeeds_and_asks_the_core() {
        let m = memory();
        write_call(&m, BLOCK, RtasCall::PowerOff.token(), &[!0, !0], 1);
        m.write_obj(0x5555_5555u32, GuestAddress(BLOCK + 20))
            .unwrap();
        assert_eq!(handle(&m, BLOCK), Ok(Some(PlatformRequest::PowerOff)));
        assert_eq!(ret(&m, BLOCK, 2, 0), 0);
    }

    #[test]
    fn unknown_token_gets_parameter_error() {
        let m = memory();
        write_call(&m, BLOCK, 0x2002, &[], 1);
        assert_eq!(handle(&m, BLOCK), Ok(None));
        assert_eq!(ret(&m, BLOCK, 0, 0), RtasStatus::ParameterError.cell());
    }

    #[test]
    fn wrong_cell_counts_for_a_call_get_parameter_error() {
        let m = memory();
        write_call(&m, BLOCK, RtasCall::SystemReboot.token(), &[1], 1);
        assert_eq!(handle(&m, BLOCK), Ok(None));
        assert_eq!(ret(&m, BLOCK, 1, 0), RtasStatus::ParameterError.cell());
    }

    #[test]
    fn blocks_outside_memory_or_with_too_many_cells_are_refused() {
        let m = memory();
        assert_eq!(
            handle(&m, 0x20000),
            Err(CallRefusal::ArgsOutsideMemory { address: 0x20000 })
        );
        assert!(handle(&m, u64::MAX - 3).is_err());
        // The header fits but the return cells run off the end of memory.
        write_call(&m, 0x10000 - 12, RtasCall::SystemReboot.token(), &[], 1);
        assert_eq!(
            handle(&m, 0x10000 - 12),
            Err(CallRefusal::ArgsOutsideMemory { address: 0x10000 })
        );
        write_call(&m, BLOCK, RtasCall::SystemReboot.token(), &[], 17);
        assert_eq!(
            handle(&m, BLOCK),
            Err(CallRefusal::BadCellCount { nargs: 0, nret: 17 })
        );
        write_call(&m, BLOCK, RtasCall::SystemReboot.token(), &[], 0);
        assert!(matches!(
            handle(&m, BLOCK),
            Err(CallRefusal::BadCellCount { .. })
        ));
        m.write_obj(u32::MAX.to_be(), GuestAddress(BLOCK + 4))
            .unwrap();
        m.write_obj(u32::MAX.to_be(), GuestAddress(BLOCK + 8))
            .unwrap();
        assert!(matches!(
            handle(&m, BLOCK),
            Err(CallRefusal::BadCellCount { .. })
        ));
    }

    #[test]
    fn start_cpu_starts_only_a_stopped_present_cpu_at_a_memory_address() {
        let m = memory();
        let start = RtasCall::StartCpu.token();
        write_call(&m, BLOCK, start, &[1, 0x8000, 42], 1);
        assert_eq!(
            handle(&m, BLOCK),
            Ok(Some(PlatformRequest::StartCpu {
                cpu: 1,
                entry: 0x8000,
                r3: 42
            }))
        );
        assert_eq!(ret(&m, BLOCK, 3, 0), 0);
        write_call(&m, BLOCK, start, &[2, 0x8000, 0], 1);
        assert_eq!(handle(&m, BLOCK), Ok(None));
        assert_eq!(ret(&m, BLOCK, 3, 0), RtasStatus::HardwareError.cell());
        for bad in [[9, 0x8000, 0], [1, 0x20000, 0]] {
            write_call(&m, BLOCK, start, &bad, 1);
            assert_eq!(handle(&m, BLOCK), Ok(None));
            assert_eq!(
                ret(&m, BLOCK, 3, 0),
                RtasStatus::ParameterError.cell(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn query_cpu_stopped_state_reports_the_snapshot() {
        let m = memory();
        let query = RtasCall::QueryCpuStoppedState.token();
        for (cpu, expected) in [
            (0, [0, 2]),
            (1, [0, 0]),
            (7, [RtasStatus::ParameterError.cell(), 0]),
        ] {
            write_call(&m, BLOCK, query, &[cpu], 2);
            assert_eq!(handle(&m, BLOCK), Ok(None));
            assert_eq!(
                [ret(&m, BLOCK, 1, 0), ret(&m, BLOCK, 1, 1)],
                expected,
                "cpu {cpu}"
            );
        }
    }

    #[test]
    fn power_levels_are_those_of_domain_minus_one_always_on() {
        let m = memory();
        let set = RtasCall::SetPowerLevel.token();
        let get = RtasCall::GetPowerLevel.token();
        // drmgr powers a slot off, then on: both leave it at 100.
        for (token, args) in [
            (set, &[u32::MAX, 0][..]),
            (set, &[u32::MAX, 100]),
            (get, &[u32::MAX]),
        ] {
            write_call(&m, BLOCK, token, args, 2);
            assert_eq!(handle(&m, BLOCK), Ok(None));
            let at = args.len() as u64;
            assert_eq!((ret(&m, BLOCK, at, 0), ret(&m, BLOCK, at, 1)), (0, 100));
        }
        // Any other domain: a parameter error.
        for (token, args) in [(set, &[0, 100][..]), (get, &[7])] {
            write_call(&m, BLOCK, token, args, 2);
            assert_eq!(handle(&m, BLOCK), Ok(None));
            assert_eq!(
                ret(&m, BLOCK, args.len() as u64, 0),
                RtasStatus::ParameterError.cell()
            );
        }
    }

    #[test]
    fn stop_self_and_set_xive_ask_the_core() {
        let m = memory();
        write_call(&m, BLOCK, RtasCall::StopSelf.token(), &[], 1);
        assert_eq!(handle(&m, BLOCK), Ok(Some(PlatformRequest::StopSelf)));
        let xive = RtasCall::SetXive.token();
        write_call(&m, BLOCK, xive, &[irq::VTY, 3, 5], 1);
        assert_eq!(
            handle(&m, BLOCK),
            Ok(Some(PlatformRequest::SetInterruptServer {
                source: irq::VTY,
                server: 3
            }))
        );
        for bad in [[0x2000, 1, 5], [irq::HOTPLUG, 4, 5]] {
            write_call(&m, BLOCK, xive, &bad, 1);
            assert_eq!(handle(&m, BLOCK), Ok(None));
            assert_eq!(ret(&m, BLOCK, 3, 0), RtasStatus::ParameterError.cell());
        }
    }

    #[test]
    fn drc_calls_go_to_the_hotplug_controller_and_a_silent_one_writes_nothing() {
        let m = memory();
        let mut peers = FakePeers {
            hotplug_answer: Some((RtasStatus::Success, 2)),
            ..FakePeers::default()
        };
        write_call(
            &m,
            BLOCK,
            RtasCall::GetSensorState.token(),
            &[9003, 0x1000_0001],
            2,
        );
        assert_eq!(handle_with(&m, BLOCK, &mut peers), Ok(None));
        assert_eq!([ret(&m, BLOCK, 2, 0), ret(&m, BLOCK, 2, 1)], [0, 2]);
        // The controller's status reaches the guest as its PAPR code.
        let mut refusing = FakePeers {
            hotplug_answer: Some((RtasStatus::ParameterError, 0)),
            ..FakePeers::default()
        };
        handle_with(&m, BLOCK, &mut refusing).unwrap();
        assert_eq!(ret(&m, BLOCK, 2, 0), RtasStatus::ParameterError.cell());
        write_call(
            &m,
            BLOCK,
            RtasCall::SetIndicator.token(),
            &[9001, 0x1000_0001, 1],
            1,
        );
        handle_with(&m, BLOCK, &mut peers).unwrap();
        assert_eq!(
            peers.hotplug[1],
            HotplugRequest::SetIndicator {
                indicator: 9001,
                drc: 0x1000_0001,
                value: 1
            }
        );
        // A controller that is down: the call does not run, and the return
        // cell keeps what the guest left there (Linux zeroes it first).
        let mut silent = FakePeers::default();
        m.write_obj(0x5a5a_5a5au32, GuestAddress(BLOCK + 12 + 12))
            .unwrap();
        assert_eq!(
            handle_with(&m, BLOCK, &mut silent),
            Err(CallRefusal::PeerDown {
                peer: ProcessKind::HotplugController
            })
        );
        assert_eq!(ret(&m, BLOCK, 3, 0), 0x5a5a_5a5a);
        // Wrong counts never reach the controller.
        write_call(
            &m,
            BLOCK,
            RtasCall::SetIndicator.token(),
            &[9001, 0x1000_0001],
            1,
        );
        let mut counted = FakePeers::default();
        handle_with(&m, BLOCK, &mut counted).unwrap();
        assert!(counted.hotplug.is_empty());
        assert_eq!(ret(&m, BLOCK, 2, 0), RtasStatus::ParameterError.cell());
    }

    #[test]
    fn configure_connector_checks_the_work_area() {
        let m = memory();
        let mut peers = FakePeers {
            hotplug_answer: Some((RtasStatus::Success, 0)),
            ..FakePeers::default()
        };
        let token = RtasCall::ConfigureConnector.token();
        // Work area running off the end of memory, or high bits making it absurd.
        for args in [[0xf800, 0], [0x2000, 1]] {
            write_call(&m, BLOCK, token, &args, 1);
            handle_with(&m, BLOCK, &mut peers).unwrap();
            assert_eq!(
                ret(&m, BLOCK, 2, 0),
                RtasStatus::ParameterError.cell(),
                "{args:?}"
            );
        }
        assert!(peers.hotplug.is_empty());
        // A valid area: the DRC index in wa[0] goes to the controller, the
        // first step is the core's node.
        m.write_obj(0x1000_0001u32.to_be(), GuestAddress(0x2000))
            .unwrap();
        write_call(&m, BLOCK, token, &[0x2000, 0], 1);
        handle_with(&m, BLOCK, &mut peers).unwrap();
        assert_eq!(ret(&m, BLOCK, 2, 0), 2);
        assert_eq!(
            peers.hotplug[0],
            HotplugRequest::ConfigureStep { drc: 0x1000_0001 }
        );
        // The controller's cursor says which step: the next is a property.
        let mut further = FakePeers {
            hotplug_answer: Some((RtasStatus::Success, 1)),
            ..FakePeers::default()
        };
        handle_with(&m, BLOCK, &mut further).unwrap();
        assert_eq!(ret(&m, BLOCK, 2, 0), 3);
        // Not configurable now: the controller's status passes through.
        let mut refusing = FakePeers {
            hotplug_answer: Some((RtasStatus::NotConfigurable, 0)),
            ..FakePeers::default()
        };
        handle_with(&m, BLOCK, &mut refusing).unwrap();
        assert_eq!(ret(&m, BLOCK, 2, 0), RtasStatus::NotConfigurable.cell());
    }

    #[test]
    fn check_exception_copies_the_event_or_says_there_is_none() {
        let m = memory();
        let token = RtasCall::CheckException.token();
        let mut peers = FakePeers {
            eventlog_answer: Some(EventLogReply::Event(vec![0xab; 116])),
            ..FakePeers::default()
        };
        write_call(
            &m,
            BLOCK,
            token,
            &[0x500, 0x1001, 0x1000_0000, 0, 0x3000, 2048],
            1,
        );
        handle_with(&m, BLOCK, &mut peers).unwrap();
        assert_eq!(ret(&m, BLOCK, 6, 0), 0);
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x3000 + 115)).unwrap(), 0xab);
        peers.eventlog_answer = Some(EventLogReply::NoEvent);
        handle_with(&m, BLOCK, &mut peers).unwrap();
        assert_eq!(ret(&m, BLOCK, 6, 0), 1);
        // A buffer outside memory.
        write_call(
            &m,
            BLOCK,
            token,
            &[0x500, 0x1001, 0x1000_0000, 0, 0xff00, 2048],
            1,
        );
        handle_with(&m, BLOCK, &mut peers).unwrap();
        assert_eq!(ret(&m, BLOCK, 6, 0), RtasStatus::ParameterError.cell());
        write_call(
            &m,
            BLOCK,
            RtasCall::EventScan.token(),
            &[!0, 0, 0x3000, 2048],
            1,
        );
        handle_with(&m, BLOCK, &mut peers).unwrap();
        assert_eq!(ret(&m, BLOCK, 4, 0), 1);
    }

    #[test]
    fn os_term_message_is_bounded_and_sanitised() {
        let m = memory();
        m.write_slice(b"oops\x01 bad\0", GuestAddress(0x2000))
            .unwrap();
        write_call(&m, BLOCK, RtasCall::OsTerm.token(), &[0x2000], 1);
        assert_eq!(
            handle(&m, BLOCK),
            Ok(Some(PlatformRequest::OsTerm {
                message: "oops? bad".into()
            }))
        );
        m.write_slice(&[b'a'; 1000], GuestAddress(0x3000)).unwrap();
        write_call(&m, BLOCK, RtasCall::OsTerm.token(), &[0x3000], 1);
        let Ok(Some(PlatformRequest::OsTerm { message })) = handle(&m, BLOCK) else {
            panic!("os-term refused");
        };
        assert_eq!(message.len(), MAX_OS_TERM_MESSAGE);
    }

    #[test]
    fn time_of_day_returns_the_calendar_fields() {
        let m = memory();
        write_call(&m, BLOCK, RtasCall::GetTimeOfDay.token(), &[], 8);
        assert_eq!(handle(&m, BLOCK), Ok(None));
        let cells: Vec<u32> = (0..8).map(|i| ret(&m, BLOCK, 0, i)).collect();
        assert_eq!(cells[0], 0);
        assert!(cells[1] >= 2026 && (1..=12).contains(&cells[2]) && cells[4] < 24);
    }
}
