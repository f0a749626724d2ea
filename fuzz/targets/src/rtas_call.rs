//! RTAS calls: an arbitrary `rtas_args` block over arbitrary guest memory,
//! answered by the RTAS server's code with the real hotplug controller and
//! event queue behind it (what the other two processes run), so sequences
//! of calls drive the DRC state machines and the check-exception path.
//!
//! Input: two bytes of machine (present and running vCPUs; which devices
//! start plugged), then steps. A step's first byte picks what it is: a host
//! request (plug, device_del) or a guest call; a call writes its bytes into
//! guest memory at an address of its choice, then calls at another.
//!
//! Beyond not panicking, after every step: an empty DRC is in its empty
//! state (a logical one unusable, a PCI slot's physical one power-on); a
//! device is released only after the host asked for it back; a call that
//! ran wrote a known status; a refused call left the return cells alone.

use device_procs::clock::UtcTime;
use device_procs::eventlog::{Dequeued, EventQueue};
use device_procs::hotplug::drc::DrcClass;
use device_procs::hotplug::pci::PciBus;
use device_procs::hotplug::{Controller, Effect};
use device_procs::rtas::calls::{handle_call, Peers, RtasArgs, Services};
use ipc_proto::link::core_hotplug::DrcRange;
use ipc_proto::link::core_rtas::{CallRefusal, CpuSnapshot};
use ipc_proto::link::hotplug_notify::Notification;
use ipc_proto::link::rtas_eventlog::{Reply as EventLogReply, Request as EventLogRequest};
use ipc_proto::link::rtas_hotplug::{Reply as HotplugReply, Request as HotplugRequest};
use ipc_proto::papr::{pci_drc_id, DrcIndex, DrcKind};
use std::collections::BTreeSet;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest memory: 64 KiB at 0 (addresses past it are outside memory).
const MEMORY_SIZE: u64 = 0x1_0000;
const CPU_CORES: u32 = 4;
const LMBS: u32 = 4;
/// PCI slots 1 and 2 (devfn 8 and 16) of the first bridge.
const PCI_SLOTS: u32 = 2;
/// Devices a step can name: the cores, the LMB pairs, the slots.
const DEVICES: u32 = CPU_CORES + LMBS / 2 + PCI_SLOTS;
const FIRST_LMB: u32 = 4;
/// Statuses a call may leave in its first return cell: PAPR's, and
/// configure-connector's step codes.
const STATUSES: [i32; 10] = [-9003, -9002, -3, -2, -1, 0, 1, 2, 3, 4];

fn time() -> UtcTime {
    UtcTime {
        year: 2026,
        month: 12,
        day: 1,
        hour: 0,
        minute: 0,
        second: 0,
        nanos: 0,
    }
}

/// The hotplug controller and the event log, in this process.
struct Platform {
    controller: Controller,
    queue: EventQueue,
    /// Devices the host asked back (device_del).
    unplug_requested: BTreeSet<String>,
    /// Answer the next peer request with "down" (a restarting peer).
    peer_down: bool,
    /// The PCI host bridge's functions, kept in line with the table.
    pci: PciBus,
}

impl Platform {
    fn apply(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Queue(event) => {
                    let _ = self.queue.enqueue(event, time());
                }
                Effect::Withdraw(event) => {
                    self.queue.withdraw(&event);
                }
                Effect::Notify(Notification::Released(released)) => self.released(&released.device),
                Effect::Notify(_) => {}
            }
        }
    }

    fn released(&mut self, device: &str) {
        assert!(
            self.unplug_requested.remove(device),
            "{device} released without a device_del"
        );
    }

    fn down(&mut self) -> Result<(), CallRefusal> {
        if std::mem::take(&mut self.peer_down) {
            return Err(CallRefusal::PeerDown {
                peer: ipc_proto::ProcessKind::HotplugController,
            });
        }
        Ok(())
    }
}

impl Peers for Platform {
    fn hotplug_reply(&mut self, request: HotplugRequest) -> Result<HotplugReply, CallRefusal> {
        self.down()?;
        let (status, value) = match request {
            HotplugRequest::ReadPciConfig { .. }
            | HotplugRequest::WritePciConfig { .. }
            | HotplugRequest::ChangeMsi { .. }
            | HotplugRequest::QueryInterruptSource { .. } => return Ok(self.pci.rtas(request)),
            HotplugRequest::SetIndicator {
                indicator,
                drc,
                value,
            } => {
                let (status, effects) = self.controller.set_indicator(indicator, drc, value);
                self.apply(effects);
                (status, 0)
            }
            HotplugRequest::GetSensorState { sensor, drc } => self.controller.sensor(sensor, drc),
            HotplugRequest::ConfigureStep { drc } => self.controller.configure_step(drc),
            HotplugRequest::ConfigureDone { drc } => (self.controller.configure_done(drc), 0),
        };
        self.pci.sync(&self.controller, false);
        Ok(HotplugReply::Status { status, value })
    }

    fn eventlog(&mut self, request: EventLogRequest) -> Result<Option<EventLogReply>, CallRefusal> {
        self.down()?;
        Ok(match request {
            EventLogRequest::CheckException { mask, max_len } => {
                let (dequeued, _) = self.queue.dequeue(mask, max_len as usize);
                Some(match dequeued {
                    Dequeued::Event(bytes) => EventLogReply::Event(bytes),
                    Dequeued::Nothing => EventLogReply::NoEvent,
                    Dequeued::TooLarge(needed) => EventLogReply::BufferTooSmall {
                        needed: needed as u32,
                    },
                })
            }
            EventLogRequest::EventScan { .. } => None,
        })
    }
}

/// Device ids: core N is "coreN", the LMB pair N is "dimmN", the disk in
/// slot N+1 is "diskN".
fn device(pick: u8) -> (String, Vec<DrcIndex>) {
    let n = u32::from(pick) % DEVICES;
    if n >= CPU_CORES + LMBS / 2 {
        let slot = n - (CPU_CORES + LMBS / 2);
        let id = pci_drc_id(0, 0, (8 * (slot + 1)) as u8).expect("a slot");
        let drc = DrcIndex::new(DrcKind::Pci, id).expect("a PCI DRC");
        return (format!("disk{slot}"), vec![drc]);
    }
    if n < CPU_CORES {
        let drc = DrcIndex::new(DrcKind::Cpu, n).expect("a CPU DRC");
        (format!("core{n}"), vec![drc])
    } else {
        let first = FIRST_LMB + 2 * (n - CPU_CORES);
        let drcs = (first..first + 2)
            .map(|id| DrcIndex::new(DrcKind::Lmb, id).expect("an LMB DRC"))
            .collect();
        (format!("dimm{}", n - CPU_CORES), drcs)
    }
}

fn check_drcs(controller: &Controller) {
    for drc in controller.drcs() {
        if drc.device().is_none() {
            let empty = DrcClass::of(drc.index()).empty_state();
            assert_eq!(drc.state(), empty, "an empty DRC: {drc:?}");
            assert!(!drc.unplug_requested(), "{drc:?}");
        }
    }
}

thread_local! {
    static MEMORY: GuestMemoryMmap =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEMORY_SIZE as usize)])
            .expect("64 KiB of guest memory");
}

/// The target.
pub fn fuzz(data: &[u8]) {
    MEMORY.with(|memory| run(memory, data));
}

fn run(memory: &GuestMemoryMmap, data: &[u8]) {
    let [cpus_byte, plugged, steps @ ..] = data else {
        return;
    };
    memory
        .write_slice(&[0u8; MEMORY_SIZE as usize], GuestAddress(0))
        .expect("clear memory");
    let mut controller = Controller::default();
    controller
        .define(&[
            DrcRange {
                kind: DrcKind::Cpu,
                first_id: 0,
                count: CPU_CORES,
                step: 1,
            },
            DrcRange {
                kind: DrcKind::Lmb,
                first_id: FIRST_LMB,
                count: LMBS,
                step: 1,
            },
            DrcRange {
                kind: DrcKind::Pci,
                first_id: pci_drc_id(0, 0, 8).expect("slot 1"),
                count: PCI_SLOTS,
                step: 8,
            },
        ])
        .expect("the DRC ranges");
    let mut platform = Platform {
        controller,
        queue: EventQueue::default(),
        unplug_requested: BTreeSet::new(),
        peer_down: false,
        pci: PciBus::default(),
    };
    // The boot core always; the others as the second byte says, cold.
    for pick in 0..DEVICES as u8 {
        if pick == 0 || plugged & (1 << pick) != 0 {
            let (id, drcs) = device(pick);
            platform
                .controller
                .plug(&drcs, &id, true)
                .expect("a cold plug");
        }
    }
    let cpus = CpuSnapshot {
        present: u64::from(cpus_byte & 0xf) | 1,
        running: u64::from(cpus_byte >> 4) | 1,
    };
    let mut rest = steps;
    while let [kind, tail @ ..] = rest {
        rest = tail;
        match kind % 8 {
            0 => {
                let [pick, tail @ ..] = rest else { return };
                rest = tail;
                let (id, drcs) = device(*pick);
                if let Ok(effects) = platform.controller.plug(&drcs, &id, false) {
                    platform.apply(effects);
                }
            }
            1 => {
                let [pick, tail @ ..] = rest else { return };
                rest = tail;
                let (id, drcs) = device(*pick);
                if let Ok((released, effects)) = platform.controller.unplug_request(&drcs) {
                    platform.unplug_requested.insert(id);
                    for device in released {
                        platform.released(&device.device);
                    }
                    platform.apply(effects);
                }
            }
            2 => {
                let _ = platform.controller.reset();
                platform.queue.clear();
                platform.unplug_requested.clear();
            }
            peer_down => {
                let [a, b, c, d, len, tail @ ..] = rest else {
                    return;
                };
                let len = usize::from(*len).min(tail.len());
                let (bytes, tail) = tail.split_at(len);
                rest = tail;
                let write_at = u64::from(u16::from_be_bytes([*a, *b]));
                let _ = memory.write_slice(bytes, GuestAddress(write_at));
                // Addresses in or just past memory, and with PAPR's top nibble.
                let mut call_at = u64::from(u16::from_be_bytes([*c, *d])) & !3;
                if d & 1 == 1 {
                    call_at |= 0xf000_0000_0000_0000;
                }
                platform.peer_down = peer_down == 7;
                call(memory, &cpus, &mut platform, call_at);
            }
        }
        check_drcs(&platform.controller);
    }
}

fn call(memory: &GuestMemoryMmap, cpus: &CpuSnapshot, platform: &mut Platform, at: u64) {
    let before = RtasArgs::read(memory, at);
    let rets_at = |args: &RtasArgs| args.address + 12 + 4 * args.args.len() as u64;
    let cells_before = before.as_ref().ok().map(|args| {
        let mut cells = vec![0u8; 4 * args.nret as usize];
        memory
            .read_slice(&mut cells, GuestAddress(rets_at(args)))
            .expect("read_args checked the cells");
        cells
    });
    let mut services = Services {
        cpus,
        peers: platform,
        threads_per_core: 1,
    };
    let result = handle_call(memory, at, &mut services);
    match (result, before) {
        (Ok(_), Ok(args)) => {
            // The status cell, unless the call's own writes (a work area or
            // an event buffer the guest placed over its args) overwrote it.
            let status = memory
                .read_obj::<u32>(GuestAddress(rets_at(&args)))
                .map(u32::from_be)
                .expect("in memory");
            let overlapped = args.args.iter().any(|&a| u64::from(a) <= rets_at(&args));
            assert!(
                overlapped || STATUSES.contains(&(status as i32)),
                "status {status:#x} for {args:?}"
            );
        }
        (Ok(_), Err(refusal)) => panic!("answered a block that does not read: {refusal:?}"),
        (Err(_), Ok(args)) => {
            if let Some(cells) = cells_before {
                let mut after = vec![0u8; cells.len()];
                memory
                    .read_slice(&mut after, GuestAddress(rets_at(&args)))
                    .expect("in memory");
                assert_eq!(after, cells, "a refused call wrote return cells: {args:?}");
            }
        }
        (Err(_), Err(_)) => {}
    }
}
