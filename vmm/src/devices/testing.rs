//! A VM's devices as threads of the test, without KVM or a jail: what the
//! unit tests of the supervisor's glue (restart groups, upgrades) run on.

use super::spawn::{DeviceMode, Launch, ProcessHandle, Sandbox, Spawned, Waiter};
use super::starter::Starter;
use super::threads::Threads;
use super::{DeviceProcesses, Platform};
use crate::control::ControlMessage;
use crate::memory::GuestRam;
use ipc_proto::link::core_eventlog;
use ipc_proto::link::core_hotplug::{self, DrcRange};
use ipc_proto::link::core_rtas::{self, CpuSnapshot};
use ipc_proto::papr::{indicator, DrcIndex, DrcKind, RtasCall};
use ipc_proto::ProcessKind;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress};

/// Where the test writes an RTAS call's arguments in guest RAM.
const RTAS_ARGS: u64 = 0x1000;

/// The devices of a small machine (two cores, no device memory) and the
/// control loop's inbox, which the test reads in the loop's place.
pub struct TestDevices {
    pub devices: DeviceProcesses,
    pub inbox: Receiver<ControlMessage>,
    ram: GuestRam,
}

/// Starts the devices of a small machine through `starter`.
pub fn start(starter: Box<dyn Starter>) -> TestDevices {
    let ram = GuestRam::new(16 << 20).expect("guest RAM");
    // The event log raises its interrupts by writing to these.
    let interrupt = || -> OwnedFd {
        std::fs::File::options()
            .write(true)
            .open("/dev/null")
            .expect("/dev/null")
            .into()
    };
    let drcs = vec![DrcRange {
        kind: DrcKind::Cpu,
        first_id: 0,
        count: 2,
        step: 1,
    }];
    let platform = Platform::new(&ram, [interrupt(), interrupt()], 1, drcs).expect("platform");
    let sandbox = Sandbox {
        jail: false,
        device_mode: starter.mode(),
        seccomp: "off".into(),
        jail_dir: std::env::temp_dir(),
        uid: 0,
        gid: 0,
        log_level: log::LevelFilter::Warn,
        log_file: None,
    };
    let (control, inbox) = channel();
    let devices =
        DeviceProcesses::start_with(platform, sandbox, starter, control).expect("devices start");
    TestDevices {
        devices,
        inbox,
        ram,
    }
}

impl TestDevices {
    /// Waits for the report of an exit of `kind` (other messages are
    /// dropped): its generation and reason.
    pub fn await_exit(&self, kind: ProcessKind) -> (u64, String) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.inbox.recv_timeout(left) {
                Ok(ControlMessage::DeviceExited {
                    kind: exited,
                    generation,
                    reason,
                }) if exited == kind => return (generation, reason),
                Ok(_) => {}
                Err(error) => panic!("no exit report of the {}: {error}", kind.name()),
            }
        }
    }

    /// Ends the device of `kind`, and has the supervisor record its exit.
    pub fn kill(&self, kind: ProcessKind) {
        let generation = self.devices.generation(kind).expect("it runs");
        self.devices.cut_off(kind, "killed by the test");
        let (exited, reason) = self.await_exit(kind);
        assert_eq!(exited, generation);
        self.devices.exited(kind, exited, &reason);
    }

    /// Whether each device answers: the event log and the hotplug
    /// controller a query, the RTAS server a guest call that needs the
    /// hotplug controller (so their link works too).
    pub fn all_serve(&self) -> Result<(), String> {
        self.devices
            .eventlog
            .query(core_eventlog::Request::List)
            .map_err(|failure| format!("event log: {failure}"))?;
        self.devices
            .hotplug
            .query(core_hotplug::Request::ListDrcs { from: 0 })
            .map_err(|failure| format!("hotplug controller: {failure}"))?;
        let drc = DrcIndex::new(DrcKind::Cpu, 1).expect("a DRC index");
        let cells = [
            RtasCall::GetSensorState.token(),
            2,
            2,
            indicator::DR_ENTITY_SENSE,
            drc.0,
            u32::MAX,
            u32::MAX,
        ];
        for (i, cell) in cells.iter().enumerate() {
            self.ram
                .memory()
                .write_obj(cell.to_be(), GuestAddress(RTAS_ARGS + 4 * i as u64))
                .expect("guest RAM");
        }
        let call = core_rtas::Request::Call {
            caller: 0,
            args_address: RTAS_ARGS,
            cpus: CpuSnapshot::default(),
        };
        match self
            .devices
            .rtas_call(self.devices.rtas_call_id(), call, &|| false)
        {
            Ok(core_rtas::Reply::CallDone { .. }) => {}
            other => return Err(format!("RTAS server: {other:?}")),
        }
        let status: u32 = self
            .ram
            .memory()
            .read_obj(GuestAddress(RTAS_ARGS + 4 * 5))
            .expect("guest RAM");
        match u32::from_be(status) {
            0 => Ok(()),
            status => Err(format!(
                "get-sensor-state answered status {}",
                status as i32
            )),
        }
    }
}

/// Devices as threads that play processes: the one started as program
/// `broken` hangs up at once (it never completes a handshake); the others
/// are device threads. Their programs count as replaceable, so that
/// upgrades run on threads.
pub struct Replaceable {
    pub broken: PathBuf,
}

impl Starter for Replaceable {
    fn start(&self, launches: Vec<Launch>) -> Vec<Spawned> {
        launches
            .into_iter()
            .map(|launch| {
                if launch.program.as_ref() == Some(&self.broken) {
                    return hang_up_at_once(&launch);
                }
                Threads.start(vec![launch]).pop().expect("one result")
            })
            .collect()
    }

    fn mode(&self) -> DeviceMode {
        DeviceMode::InProcess
    }

    fn replaceable(&self) -> bool {
        true
    }
}

/// A device thread that closes every descriptor it was given and ends.
fn hang_up_at_once(launch: &Launch) -> Spawned {
    let fds: Vec<OwnedFd> = launch
        .fds
        .iter()
        .map(|&fd| {
            // SAFETY: the caller holds `fds` open until `start` returns.
            unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()
        })
        .collect::<Result<_, _>>()
        .map_err(super::spawn::SpawnError::DeviceThread)?;
    let thread = std::thread::spawn(move || {
        drop(fds);
        "hung up at once".to_string()
    });
    Ok((
        ProcessHandle::of_thread(0, Vec::new()),
        Waiter::Thread {
            thread,
            sockets: Vec::new(),
        },
    ))
}
