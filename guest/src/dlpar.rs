//! Dynamic reconfiguration as pseries Linux does it (PAPR reference §7): on
//! the hot-plug interrupt, check-exception fetches the event; a CPU add by
//! index acquires the DRC, walks ibm,configure-connector and starts the new
//! threads; a CPU remove by index offlines the threads and releases the DRC,
//! or — when that would take the last online CPU — refuses with Linux's
//! message and re-unisolates the DRC so that the platform hears the refusal.

use crate::arch::{self, MAX_CPUS};
use crate::console::Line;
use crate::cpu;
use crate::fdt::be32;
use crate::platform;
use crate::rtas;
use crate::sync::SpinLock;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

const ISOLATION_STATE: u32 = 9001;
const ALLOCATION_STATE: u32 = 9003;
pub const DR_ENTITY_SENSE: u32 = 9003;
const PRESENT: u32 = 1;
const UNUSABLE: u32 = 2;
const ISOLATE: u32 = 0;
const UNISOLATE: u32 = 1;
const ALLOC_UNUSABLE: u32 = 0;
const ALLOC_USABLE: u32 = 1;

const RTAS_HOTPLUG_EVENTS: u32 = 0x1000_0000;
/// configure-connector steps before a walk is taken as broken.
const MAX_CONFIGURE_STEPS: usize = 256;

const RESOURCE_CPU: u8 = 1;
const RESOURCE_MEMORY: u8 = 2;
const RESOURCE_PCI: u8 = 5;
const ACTION_ADD: u8 = 1;
const ACTION_REMOVE: u8 = 2;
const ID_DRC_INDEX: u8 = 2;
const ID_DRC_COUNT: u8 = 3;
const ID_DRC_COUNT_INDEXED: u8 = 4;

/// A hot-plug interrupt arrived; the shell's CPU does the work.
static PENDING: AtomicBool = AtomicBool::new(false);
/// `dlpar off`: events stay queued in the platform, as with a guest whose
/// hotplug worker is stuck.
static HELD: AtomicBool = AtomicBool::new(false);
/// The CPU DRC of each present CPU's core (0: not present).
static CORE_OF: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];

#[derive(Clone, Copy)]
pub struct Event {
    resource: u8,
    action: u8,
    id_type: u8,
    index_or_count: u32,
    index: u32,
}

/// Events fetched and not handled yet, oldest first, and the last ones
/// fetched. Linux fetches every event from its interrupt handler as soon
/// as it is pulsed and handles them later, in order; so does this guest —
/// before it handles one, and before it refuses one — so that several
/// remove events for a device may be fetched before the first is refused.
struct EventState {
    fetched: [Option<Event>; FETCHED],
    first: usize,
    count: usize,
    recent: [Option<Event>; 8],
    next_recent: usize,
}

/// Events fetched and waiting, at most.
const FETCHED: usize = 16;

static EVENTS: SpinLock<EventState> = SpinLock::new(EventState {
    fetched: [None; FETCHED],
    first: 0,
    count: 0,
    recent: [None; 8],
    next_recent: 0,
});

impl EventState {
    fn push_back(&mut self, event: Event) {
        let slot = (self.first + self.count) % FETCHED;
        self.fetched[slot] = Some(event);
        self.count += 1;
    }

    fn push_front(&mut self, event: Event) {
        self.first = (self.first + FETCHED - 1) % FETCHED;
        self.fetched[self.first] = Some(event);
        self.count += 1;
    }

    fn pop_front(&mut self) -> Option<Event> {
        if self.count == 0 {
            return None;
        }
        let event = self.fetched[self.first].take();
        self.first = (self.first + 1) % FETCHED;
        self.count -= 1;
        event
    }
}

/// Fetches every queued event (as Linux's interrupt handler does), while
/// there is room to keep them.
fn drain() {
    while EVENTS.lock().count < FETCHED {
        let Some(event) = fetch() else {
            return;
        };
        remember(event);
        EVENTS.lock().push_back(event);
    }
}

static BUFFER: SpinLock<rtas::Page> = SpinLock::new(rtas::Page::zeroed());
static WORK_AREA: SpinLock<rtas::Page> = SpinLock::new(rtas::Page::zeroed());

/// Records the boot cores from the device tree.
pub fn init(platform: &platform::Platform) {
    let fdt = &platform.fdt;
    let Some(cpus) = fdt.path("/cpus") else {
        return;
    };
    fdt.for_each_child(cpus, |core| {
        let drc = fdt.prop_u32(core, "ibm,my-drc-index").unwrap_or(0);
        if let Some(servers) = fdt.prop(core, "ibm,ppc-interrupt-server#s") {
            for i in 0..servers.len() / 4 {
                let id = be32(servers, i * 4).unwrap_or(u32::MAX) as usize;
                if let Some(slot) = CORE_OF.get(id) {
                    slot.store(drc, Ordering::SeqCst);
                }
            }
        }
    });
}

/// The DRC index of the core `cpu` belongs to (0: none).
pub fn core_drc(cpu: usize) -> u32 {
    CORE_OF.get(cpu).map_or(0, |drc| drc.load(Ordering::SeqCst))
}

pub fn is_present(cpu: usize) -> bool {
    CORE_OF
        .get(cpu)
        .is_some_and(|c| c.load(Ordering::SeqCst) != 0)
}

/// Called by the interrupt handler.
pub fn interrupt() {
    PENDING.store(true, Ordering::SeqCst);
}

pub fn pending() -> bool {
    !HELD.load(Ordering::SeqCst) && (PENDING.load(Ordering::SeqCst) || EVENTS.lock().count > 0)
}

/// `dlpar off` / `dlpar on`. Turning it on fetches whatever waits.
pub fn hold(held: bool) {
    HELD.store(held, Ordering::SeqCst);
    if !held {
        PENDING.store(true, Ordering::SeqCst);
    }
}

/// What handling the events needs from the shell.
pub enum Work {
    Done,
    /// The shell must move to this CPU first; the event waits for it there.
    MoveShellTo(usize),
}

/// Handles every queued event.
pub fn process() -> Work {
    PENDING.store(false, Ordering::SeqCst);
    loop {
        drain();
        let Some(event) = EVENTS.lock().pop_front() else {
            return Work::Done;
        };
        if let Some(heir) = handle(event) {
            // It waits, first, for the shell on the other CPU.
            EVENTS.lock().push_front(event);
            return Work::MoveShellTo(heir);
        }
    }
}

fn remember(event: Event) {
    let mut state = EVENTS.lock();
    let slot = state.next_recent % state.recent.len();
    state.recent[slot] = Some(event);
    state.next_recent += 1;
}

/// check-exception for hot-plug events, parsed like Linux's
/// get_pseries_errorlog; `None` when nothing (valid) is queued.
fn fetch() -> Option<Event> {
    let irq = platform::get().hotplug_irq.unwrap_or(0);
    let mut buffer = BUFFER.lock();
    let log = rtas::check_exception(&mut buffer, irq, RTAS_HOTPLUG_EVENTS)?;
    let section = rtas::event_section(log, *b"HP")?;
    if section.len() < 16 {
        return None;
    }
    Some(Event {
        resource: section[8],
        action: section[9],
        id_type: section[10],
        index_or_count: be32(section, 12)?,
        index: be32(section, 16).unwrap_or(0),
    })
}

/// Handles one event; `Some(cpu)` when the shell must move there first.
fn handle(event: Event) -> Option<usize> {
    match (event.resource, event.action, event.id_type) {
        (RESOURCE_CPU, ACTION_ADD, ID_DRC_INDEX) => {
            cpu_add(event.index_or_count);
            None
        }
        (RESOURCE_CPU, ACTION_REMOVE, ID_DRC_INDEX) => cpu_remove(event.index_or_count),
        (RESOURCE_MEMORY, ACTION_ADD, ID_DRC_COUNT_INDEXED) => {
            crate::lmb::add(event.index, event.index_or_count);
            None
        }
        (RESOURCE_MEMORY, ACTION_REMOVE, ID_DRC_COUNT_INDEXED) => {
            crate::lmb::remove(event.index, event.index_or_count);
            None
        }
        (RESOURCE_PCI, ACTION_ADD, ID_DRC_INDEX) => {
            crate::pci::add(event.index_or_count);
            None
        }
        (RESOURCE_PCI, ACTION_REMOVE, ID_DRC_INDEX) => {
            crate::pci::remove(event.index_or_count);
            None
        }
        _ => {
            let mut line = Line::new();
            line.str("dlpar: ignored event ");
            describe(&mut line, &event);
            line.nl();
            None
        }
    }
}

fn describe(line: &mut Line, event: &Event) {
    line.str(match event.action {
        ACTION_ADD => "add ",
        ACTION_REMOVE => "remove ",
        _ => "? ",
    });
    line.str(match event.resource {
        RESOURCE_CPU => "cpu ",
        RESOURCE_MEMORY => "memory ",
        RESOURCE_PCI => "pci ",
        _ => "other ",
    });
    match event.id_type {
        ID_DRC_INDEX => line.str("index ").hex(event.index_or_count as u64),
        ID_DRC_COUNT => line.str("count ").dec(event.index_or_count as u64),
        ID_DRC_COUNT_INDEXED => line
            .str("count ")
            .dec(event.index_or_count as u64)
            .str(" from ")
            .hex(event.index as u64),
        _ => line.str("?"),
    };
}

/// The `events` command: the last events received, oldest first.
pub fn print_recent() {
    let state = EVENTS.lock();
    let count = state.next_recent.min(state.recent.len());
    if count == 0 {
        Line::new().str("no events").nl();
    }
    for n in state.next_recent - count..state.next_recent {
        if let Some(event) = state.recent[n % state.recent.len()] {
            let mut line = Line::new();
            line.str("event ").dec(n as u64 + 1).str(": ");
            describe(&mut line, &event);
            line.nl();
        }
    }
}

fn report(what: &str, drc: u32, outcome: &str, detail: &str) {
    Line::new()
        .str("dlpar: cpu ")
        .str(what)
        .str(" ")
        .hex(drc as u64)
        .str(": ")
        .str(outcome)
        .str(detail)
        .nl();
}

fn sensor(drc: u32) -> Option<u32> {
    match rtas::call("get-sensor-state", &[DR_ENTITY_SENSE, drc], 2) {
        Ok(ret) if ret.status == 0 => Some(ret.out[0]),
        _ => None,
    }
}

fn set_indicator(kind: u32, drc: u32, value: u32) -> bool {
    matches!(rtas::call("set-indicator", &[kind, drc, value], 1), Ok(ret) if ret.status == 0)
}

/// Linux's dlpar_acquire_drc.
pub(crate) fn acquire_drc(drc: u32) -> bool {
    if sensor(drc) != Some(UNUSABLE) {
        return false;
    }
    if !set_indicator(ALLOCATION_STATE, drc, ALLOC_USABLE) {
        return false;
    }
    if !set_indicator(ISOLATION_STATE, drc, UNISOLATE) {
        set_indicator(ALLOCATION_STATE, drc, ALLOC_UNUSABLE);
        return false;
    }
    true
}

/// Linux's dlpar_release_drc.
pub(crate) fn release_drc(drc: u32) -> bool {
    if sensor(drc) != Some(PRESENT) {
        return false;
    }
    if !set_indicator(ISOLATION_STATE, drc, ISOLATE) {
        return false;
    }
    if !set_indicator(ALLOCATION_STATE, drc, ALLOC_UNUSABLE) {
        set_indicator(ISOLATION_STATE, drc, UNISOLATE);
        return false;
    }
    true
}

/// Linux ≥ 5.13's dlpar_unisolate_drc: the "I refused" hint to the platform.
/// Events pulsed meanwhile are fetched first, as Linux's interrupt handler
/// would have: the platform must answer this refusal and theirs apart.
pub(crate) fn unisolate_drc(drc: u32) {
    drain();
    if sensor(drc) == Some(PRESENT) {
        set_indicator(ISOLATION_STATE, drc, UNISOLATE);
    }
}

fn drc_in_device_tree(drc: u32) -> bool {
    let fdt = &platform::get().fdt;
    let Some(indexes) = fdt
        .path("/cpus")
        .and_then(|n| fdt.prop(n, "ibm,drc-indexes"))
    else {
        return false;
    };
    (1..indexes.len() / 4).any(|i| be32(indexes, i * 4) == Some(drc))
}

fn threads_of(drc: u32) -> impl Iterator<Item = usize> {
    (0..MAX_CPUS).filter(move |&cpu| CORE_OF[cpu].load(Ordering::SeqCst) == drc)
}

/// Walks ibm,configure-connector for `drc`; returns the new core's threads.
fn configure(drc: u32) -> Result<([u32; arch::MAX_CPUS], usize), &'static str> {
    let mut threads = [0u32; MAX_CPUS];
    let mut count = 0;
    walk(drc, |name, value| {
        if name == b"ibm,ppc-interrupt-server#s" {
            for (i, thread) in threads.iter_mut().enumerate().take(value.len() / 4) {
                *thread = be32(value, i * 4).unwrap_or(u32::MAX);
            }
            count = (value.len() / 4).min(MAX_CPUS);
        }
    })?;
    match count {
        0 => Err("no threads in the node"),
        _ => Ok((threads, count)),
    }
}

/// Walks ibm,configure-connector for `drc` to its end, handing each
/// property (name, value) to `on_property`.
/// What the last configure-connector walk did: its calls, how many
/// returned "next child" (2) and "next property" (3), and its last status.
#[derive(Clone, Copy, Default)]
pub struct WalkSteps {
    pub calls: u32,
    pub children: u32,
    pub properties: u32,
    pub last: i32,
}

static LAST_WALK: SpinLock<WalkSteps> = SpinLock::new(WalkSteps {
    calls: 0,
    children: 0,
    properties: 0,
    last: 0,
});

/// The last walk's steps.
pub fn last_walk() -> WalkSteps {
    *LAST_WALK.lock()
}

pub(crate) fn walk(
    drc: u32,
    mut on_property: impl FnMut(&[u8], &[u8]),
) -> Result<(), &'static str> {
    *LAST_WALK.lock() = WalkSteps::default();
    let mut area = WORK_AREA.lock();
    let address = area.0.as_ptr() as u32;
    area.0[..8].copy_from_slice(&[0; 8]);
    area.0[..4].copy_from_slice(&drc.to_be_bytes());
    for _ in 0..MAX_CONFIGURE_STEPS {
        let status = match rtas::call("ibm,configure-connector", &[address, 0], 1) {
            Ok(ret) => ret.status,
            Err(_) => return Err("configure-connector unavailable"),
        };
        {
            let mut steps = LAST_WALK.lock();
            steps.calls += 1;
            steps.last = status;
            match status {
                2 => steps.children += 1,
                3 => steps.properties += 1,
                _ => {}
            }
        }
        match status {
            0 => return Ok(()),
            2 | 4 | -2 => {}
            3 => {
                let name_at = be32(&area.0, 8).unwrap_or(0) as usize;
                let length = be32(&area.0, 12).unwrap_or(0) as usize;
                let value_at = be32(&area.0, 16).unwrap_or(0) as usize;
                let name_end = area.0[name_at.min(4096)..]
                    .iter()
                    .position(|&b| b == 0)
                    .map(|n| name_at + n);
                if let Some(end) = name_end {
                    if value_at.checked_add(length).is_some_and(|e| e <= 4096) {
                        on_property(&area.0[name_at..end], &area.0[value_at..value_at + length]);
                    }
                }
            }
            _ => return Err("configure-connector failed"),
        }
    }
    Err("configure-connector did not finish")
}

fn cpu_add(drc: u32) {
    if threads_of(drc).next().is_some() {
        return report(
            "add",
            drc,
            "failed: ",
            "CPU with this drc index already exists",
        );
    }
    if !drc_in_device_tree(drc) {
        return report("add", drc, "failed: ", "Cannot find CPU (drc index) to add");
    }
    if !acquire_drc(drc) {
        return report("add", drc, "failed: ", "cannot acquire the DRC");
    }
    let (threads, count) = match configure(drc) {
        Ok(found) => found,
        Err(why) => {
            release_drc(drc);
            return report("add", drc, "failed: ", why);
        }
    };
    if threads[..count].iter().any(|&t| t as usize >= MAX_CPUS) {
        release_drc(drc);
        return report("add", drc, "failed: ", "thread id out of range");
    }
    for &thread in &threads[..count] {
        CORE_OF[thread as usize].store(drc, Ordering::SeqCst);
    }
    let mut online = 0;
    for &thread in &threads[..count] {
        match cpu::bring_up(thread as usize) {
            Ok(()) => online += 1,
            Err(error) => crate::shell::report_cpu_error(thread as usize, error),
        }
    }
    let mut line = Line::new();
    line.str("dlpar: cpu add ")
        .hex(drc as u64)
        .str(": ok, cpus");
    for &thread in &threads[..count] {
        line.str(" ").dec(thread as u64);
    }
    line.str(" (").dec(online).str(" online)").nl();
}

/// `Some(heir)` when the calling CPU belongs to the core: the shell must
/// move before the core can go.
fn cpu_remove(drc: u32) -> Option<usize> {
    let me = arch::cpu_id();
    if threads_of(drc).next().is_none() {
        unisolate_drc(drc);
        report(
            "remove",
            drc,
            "failed: ",
            "Cannot find CPU (drc index) to remove",
        );
        return None;
    }
    let outside =
        (0..MAX_CPUS).find(|&c| cpu::is_online(c) && CORE_OF[c].load(Ordering::SeqCst) != drc);
    let Some(heir) = outside else {
        // Every online CPU is in this core: Linux refuses and says why.
        let last = threads_of(drc).find(|&c| cpu::is_online(c)).unwrap_or(0);
        Line::new()
            .str("dlpar: cpu remove ")
            .hex(drc as u64)
            .str(": refused: Unable to remove last online CPU ")
            .dec(last as u64)
            .nl();
        unisolate_drc(drc);
        return None;
    };
    if CORE_OF[me].load(Ordering::SeqCst) == drc {
        return Some(heir);
    }
    for thread in threads_of(drc) {
        if !cpu::is_online(thread) {
            continue;
        }
        if let Err(error) = cpu::take_down(thread) {
            crate::shell::report_cpu_error(thread, error);
            unisolate_drc(drc);
            report("remove", drc, "failed: ", "cannot offline a thread");
            return None;
        }
    }
    if !release_drc(drc) {
        unisolate_drc(drc);
        report("remove", drc, "failed: ", "cannot release the DRC");
        return None;
    }
    for core in &CORE_OF {
        let _ = core.compare_exchange(drc, 0, Ordering::SeqCst, Ordering::SeqCst);
    }
    report("remove", drc, "ok", "");
    None
}
