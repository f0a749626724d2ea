//! The RTAS call server: reads `rtas_args` from guest memory, validates every
//! field and address, dispatches by token and writes the return cells back.
//! Effects on the machine (power, reset, console, vCPUs, interrupt routing)
//! are returned as typed [`PlatformRequest`]s for the core to carry out;
//! nothing here touches a vCPU.

pub mod server;

use ipc_proto::papr::{irq, RtasCall};
use ipc_proto::rtas::{CallRefusal, CpuSnapshot, PlatformRequest, MAX_OS_TERM_MESSAGE};
use std::time::{SystemTime, UNIX_EPOCH};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError};

/// Linux's `struct rtas_args` holds 16 cells for arguments and returns together.
pub const MAX_CELLS: u32 = 16;
/// PAPR addresses may carry the top nibble (ppc64_phys_to_real masks it).
const REAL_ADDRESS_MASK: u64 = !0xf000_0000_0000_0000;

/// RTAS status: success.
pub const RTAS_SUCCESS: i32 = 0;
/// RTAS status: hardware error.
pub const RTAS_HARDWARE_ERROR: i32 = -1;
/// RTAS status: parameter error / not supported.
pub const RTAS_PARAMETER_ERROR: i32 = -3;

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

/// Answers the call whose `rtas_args` block is at `address`: writes the return
/// cells and says what the core must do.
pub fn handle_call<M: Bytes<GuestAddress, E = GuestMemoryError>>(
    memory: &M,
    address: u64,
    cpus: &CpuSnapshot,
) -> Result<Option<PlatformRequest>, CallRefusal> {
    let call = RtasArgs::read(memory, address)?;
    let (rets, request) = dispatch(memory, &call, cpus);
    call.write_rets(memory, &rets)?;
    Ok(request)
}

fn status(code: i32) -> Vec<u32> {
    vec![code as u32]
}

fn dispatch<M: Bytes<GuestAddress, E = GuestMemoryError>>(
    memory: &M,
    call: &RtasArgs,
    cpus: &CpuSnapshot,
) -> (Vec<u32>, Option<PlatformRequest>) {
    let nargs = call.args.len();
    let nret = call.nret as usize;
    let Some(kind) = RtasCall::from_token(call.token) else {
        log::debug!("RTAS: unknown token {:#x}", call.token);
        return (status(RTAS_PARAMETER_ERROR), None);
    };
    match kind {
        RtasCall::DisplayCharacter if nargs == 1 && nret == 1 => (
            status(RTAS_SUCCESS),
            Some(PlatformRequest::DisplayCharacter(call.args[0] as u8)),
        ),
        RtasCall::GetTimeOfDay if nargs == 0 && nret == 8 => (time_of_day(SystemTime::now()), None),
        RtasCall::PowerOff if nargs == 2 && nret == 1 => {
            (status(RTAS_SUCCESS), Some(PlatformRequest::PowerOff))
        }
        RtasCall::SystemReboot if nargs == 0 && nret == 1 => {
            (status(RTAS_SUCCESS), Some(PlatformRequest::Reboot))
        }
        RtasCall::StartCpu if nargs == 3 && nret == 1 => {
            let [cpu, entry, r3] = [call.args[0], call.args[1], call.args[2]];
            if !cpus.is_present(cpu) || memory.read_obj::<u8>(GuestAddress(entry.into())).is_err() {
                (status(RTAS_PARAMETER_ERROR), None)
            } else if cpus.is_running(cpu) {
                (status(RTAS_HARDWARE_ERROR), None)
            } else {
                let request = PlatformRequest::StartCpu {
                    cpu,
                    entry: entry.into(),
                    r3: r3.into(),
                };
                (status(RTAS_SUCCESS), Some(request))
            }
        }
        // QEMU checks neither count: the call does not return to the caller.
        RtasCall::StopSelf => (status(RTAS_SUCCESS), Some(PlatformRequest::StopSelf)),
        RtasCall::QueryCpuStoppedState if nargs == 1 && nret == 2 => {
            let cpu = call.args[0];
            if !cpus.is_present(cpu) {
                (vec![RTAS_PARAMETER_ERROR as u32, 0], None)
            } else if cpus.is_running(cpu) {
                (vec![RTAS_SUCCESS as u32, CPU_RUNNING], None)
            } else {
                (vec![RTAS_SUCCESS as u32, CPU_STOPPED], None)
            }
        }
        RtasCall::SetXive if nargs == 3 && nret == 1 => {
            let [source, server, _priority] = [call.args[0], call.args[1], call.args[2]];
            if !irq::ALL.contains(&source) || !cpus.is_present(server) {
                (status(RTAS_PARAMETER_ERROR), None)
            } else {
                let request = PlatformRequest::SetInterruptServer { source, server };
                (status(RTAS_SUCCESS), Some(request))
            }
        }
        RtasCall::OsTerm if nargs == 1 && nret == 1 => {
            let message = read_message(memory, u64::from(call.args[0]) & REAL_ADDRESS_MASK);
            (
                status(RTAS_SUCCESS),
                Some(PlatformRequest::OsTerm { message }),
            )
        }
        _ => {
            log::debug!(
                "RTAS: {} with nargs={nargs} nret={nret} is not supported",
                kind.name()
            );
            (status(RTAS_PARAMETER_ERROR), None)
        }
    }
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
fn time_of_day(now: SystemTime) -> Vec<u32> {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    let second_of_day = seconds % 86_400;
    vec![
        RTAS_SUCCESS as u32,
        year as u32,
        month,
        day,
        (second_of_day / 3600) as u32,
        (second_of_day / 60 % 60) as u32,
        (second_of_day % 60) as u32,
        since_epoch.subsec_nanos(),
    ]
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use vm_memory::GuestMemoryMmap;

    /// vCPUs 0..4 exist; 0 and 2 run.
    const CPUS: CpuSnapshot = CpuSnapshot {
        present: 0b1111,
        running: 0b0101,
    };

    fn handle(m: &GuestMemoryMmap, at: u64) -> Result<Option<PlatformRequest>, CallRefusal> {
        handle_call(m, at, &CPUS)
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
        assert_eq!(ret(&m, BLOCK, 0, 0) as i32, RTAS_PARAMETER_ERROR);
    }

    #[test]
    fn wrong_cell_counts_for_a_call_get_parameter_error() {
        let m = memory();
        write_call(&m, BLOCK, RtasCall::SystemReboot.token(), &[1], 1);
        assert_eq!(handle(&m, BLOCK), Ok(None));
        assert_eq!(ret(&m, BLOCK, 1, 0) as i32, RTAS_PARAMETER_ERROR);
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
        assert_eq!(ret(&m, BLOCK, 3, 0) as i32, RTAS_HARDWARE_ERROR);
        for bad in [[9, 0x8000, 0], [1, 0x20000, 0]] {
            write_call(&m, BLOCK, start, &bad, 1);
            assert_eq!(handle(&m, BLOCK), Ok(None));
            assert_eq!(ret(&m, BLOCK, 3, 0) as i32, RTAS_PARAMETER_ERROR, "{bad:?}");
        }
    }

    #[test]
    fn query_cpu_stopped_state_reports_the_snapshot() {
        let m = memory();
        let query = RtasCall::QueryCpuStoppedState.token();
        for (cpu, expected) in [(0, [0, 2]), (1, [0, 0]), (7, [-3i32 as u32, 0])] {
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
            assert_eq!(ret(&m, BLOCK, 3, 0) as i32, RTAS_PARAMETER_ERROR);
        }
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
    fn time_of_day_is_civil_utc() {
        // 2026-11-24 19:20:54.5 UTC
        let now = UNIX_EPOCH + Duration::new(1_795_548_054, 500_000_000);
        assert_eq!(time_of_day(now), [0, 2026, 11, 24, 19, 20, 54, 500_000_000]);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
