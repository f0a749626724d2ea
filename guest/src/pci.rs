//! PCI hot plug as a pseries Linux guest does it. The kernel fetches the
//! PCI event and leaves it to userspace: rtas_errd runs `drmgr -c pci
//! -a|-r -s <index> -n -d4 -V`, whose RTAS calls this module makes in the
//! same order (PCI reference §3.2, §3.3, §8):
//!
//! - add: isolate, power off, DR indicator on, the sensor (present?), power
//!   on, unisolate, then the configure-connector walk of the device's node;
//! - remove: DR indicator on, the device taken from the system, isolate
//!   (the platform completes the unplug here), power off.
//!
//! The last sequence's calls and their statuses are kept for `pci calls`.

use crate::console::Line;
use crate::dlpar::{walk, DR_ENTITY_SENSE};
use crate::fdt::be32;
use crate::pcibus;
use crate::rtas;
use crate::sync::SpinLock;

const ISOLATION_STATE: u32 = 9001;
const DR_INDICATOR: u32 = 9002;
const ISOLATE: u32 = 0;
const UNISOLATE: u32 = 1;
const INDICATOR_ON: u32 = 1;
const EMPTY: u32 = 0;
/// The power domain of every PCI DRC (`ibm,drc-power-domains`): -1, the
/// platform's own.
const POWER_DOMAIN: u32 = u32::MAX;
const POWER_OFF: u32 = 0;
const POWER_ON: u32 = 100;
/// drmgr reads the sensor once a second up to 30 times while the slot is
/// empty (a card being seated); the platform answers at once, so a few
/// reads without the wait say the same.
const SENSOR_TRIES: usize = 3;

/// A configured function.
#[derive(Clone, Copy)]
struct Function {
    drc: u32,
    vendor: u16,
    device: u16,
    /// The disk its driver made of it, if one took it.
    disk: Option<usize>,
}

/// Slots configured, at most.
const MAX_FUNCTIONS: usize = 32;
static FUNCTIONS: SpinLock<[Option<Function>; MAX_FUNCTIONS]> =
    SpinLock::new([None; MAX_FUNCTIONS]);

/// One RTAS call of the last sequence.
#[derive(Clone, Copy)]
struct Call {
    name: &'static str,
    args: [u32; 3],
    nargs: usize,
    status: i32,
    out: [u32; 2],
    nret: usize,
    /// A configure-connector walk: its calls, children and properties.
    walk: Option<crate::dlpar::WalkSteps>,
    /// How many such calls it stands for (configuration accesses are
    /// counted, not listed).
    count: u32,
}

/// Calls of the last sequence kept, at most (an add makes 7, a walk and
/// a probe's dozen).
const MAX_CALLS: usize = 48;
static CALLS: SpinLock<([Option<Call>; MAX_CALLS], usize)> = SpinLock::new(([None; MAX_CALLS], 0));

fn begin_sequence() {
    let mut calls = CALLS.lock();
    calls.0 = [None; MAX_CALLS];
    calls.1 = 0;
}

fn record(call: Call) {
    let mut calls = CALLS.lock();
    let at = calls.1;
    if at < MAX_CALLS {
        calls.0[at] = Some(call);
        calls.1 += 1;
    }
}

/// Makes and records one call; its status (-1 when it could not be made).
fn call(name: &'static str, args: &[u32], nret: usize) -> (i32, [u32; 2]) {
    call_shown(name, args, args, nret)
}

fn set_indicator(indicator: u32, drc: u32, value: u32) -> bool {
    call("set-indicator", &[indicator, drc, value], 1).0 == 0
}

fn set_power(level: u32) -> bool {
    call("set-power-level", &[POWER_DOMAIN, level], 2).0 == 0
}

fn report(action: &str, drc: u32, outcome: &str) {
    Line::new()
        .str("dlpar: pci ")
        .str(action)
        .str(" ")
        .hex(drc as u64)
        .str(": ")
        .str(outcome)
        .nl();
}

fn find(drc: u32) -> Option<usize> {
    FUNCTIONS
        .lock()
        .iter()
        .position(|f| f.is_some_and(|f| f.drc == drc))
}

use pcibus::PHB_NODE;

/// Records the functions present at boot: the bridge's child nodes, as
/// Linux's boot-time scan of the device tree finds them.
pub fn init(platform: &crate::platform::Platform) {
    let fdt = &platform.fdt;
    let Some(bridge) = fdt.path(PHB_NODE) else {
        return;
    };
    let mut functions = FUNCTIONS.lock();
    let mut free = functions.iter_mut().filter(|f| f.is_none());
    fdt.for_each_child(bridge, |node| {
        let (Some(drc), Some(vendor), Some(device)) = (
            fdt.prop_u32(node, "ibm,my-drc-index"),
            fdt.prop_u32(node, "vendor-id"),
            fdt.prop_u32(node, "device-id"),
        ) else {
            return;
        };
        if let Some(slot) = free.next() {
            *slot = Some(Function {
                drc,
                vendor: vendor as u16,
                device: device as u16,
                disk: None,
            });
        }
    });
    drop(functions);
    // The kernel's boot-time probe of what the firmware found.
    for at in 0..MAX_FUNCTIONS {
        let Some(function) = FUNCTIONS.lock()[at] else {
            continue;
        };
        let disk = probe(function.drc);
        if let Some(Some(found)) = FUNCTIONS.lock().get_mut(at) {
            found.disk = disk;
        }
    }
}

/// drmgr's add: any failure isolates and powers the slot off again.
pub fn add(drc: u32) {
    begin_sequence();
    if find(drc).is_some() {
        return report("add", drc, "failed: the slot is already occupied");
    }
    let outcome = power_up(drc).and_then(|()| configure(drc));
    match outcome {
        Ok(mut function) => {
            // drmgr -V then writes /sys/bus/pci/rescan: the kernel probes
            // the new function and its driver takes it.
            function.disk = probe(drc);
            let mut functions = FUNCTIONS.lock();
            match functions.iter_mut().find(|f| f.is_none()) {
                Some(free) => *free = Some(function),
                None => {
                    drop(functions);
                    return report("add", drc, "failed: too many functions");
                }
            }
            drop(functions);
            report("add", drc, "ok");
        }
        Err(why) => {
            set_indicator(ISOLATION_STATE, drc, ISOLATE);
            set_power(POWER_OFF);
            let mut line = Line::new();
            line.str("dlpar: pci add ")
                .hex(drc as u64)
                .str(": failed: ")
                .str(why)
                .nl();
        }
    }
}

fn power_up(drc: u32) -> Result<(), &'static str> {
    if !set_indicator(ISOLATION_STATE, drc, ISOLATE) || !set_power(POWER_OFF) {
        return Err("cannot isolate the slot");
    }
    if !set_indicator(DR_INDICATOR, drc, INDICATOR_ON) {
        return Err("cannot set the DR indicator");
    }
    let mut present = false;
    for _ in 0..SENSOR_TRIES {
        let (status, out) = call("get-sensor-state", &[DR_ENTITY_SENSE, drc], 2);
        if status != 0 {
            return Err("cannot read the slot's sensor");
        }
        if out[0] != EMPTY {
            present = true;
            break;
        }
    }
    if !present {
        return Err("the slot is empty");
    }
    if !set_power(POWER_ON) || !set_indicator(ISOLATION_STATE, drc, UNISOLATE) {
        return Err("cannot power the slot on");
    }
    Ok(())
}

/// The configure-connector walk: the device's node, its ids.
fn configure(drc: u32) -> Result<Function, &'static str> {
    let mut function = Function {
        drc,
        vendor: 0,
        device: 0,
        disk: None,
    };
    let walked = walk(drc, |name, value| match name {
        b"vendor-id" => function.vendor = be32(value, 0).unwrap_or(0) as u16,
        b"device-id" => function.device = be32(value, 0).unwrap_or(0) as u16,
        _ => {}
    });
    // The walk's calls, counted by dlpar's walker: recorded as one line.
    record(Call {
        name: "ibm,configure-connector",
        args: [drc, 0, 0],
        nargs: 1,
        status: if walked.is_ok() { 0 } else { -1 },
        out: [0, 0],
        nret: 0,
        walk: Some(crate::dlpar::last_walk()),
        count: 1,
    });
    walked.map(|()| function)
}

/// drmgr's remove (with `-V`): the device leaves the system, then the
/// slot is isolated — where the platform completes the unplug — and
/// powered off.
pub fn remove(drc: u32) {
    begin_sequence();
    if !set_indicator(DR_INDICATOR, drc, INDICATOR_ON) {
        return report("remove", drc, "failed: cannot set the DR indicator");
    }
    let Some(at) = find(drc) else {
        return report("remove", drc, "failed: no device in the slot");
    };
    // The device's sysfs `remove`: its driver lets it go (a busy disk
    // too), its vectors are freed, its decoding turned off.
    pcibus::begin_counting();
    let busy = crate::virtio_blk::detach(drc) == Some(true);
    let devfn = (drc & 0xff) as u8;
    release_vectors(devfn);
    let command = pcibus::read(devfn, COMMAND, 2).unwrap_or(0);
    pcibus::write(
        devfn,
        COMMAND,
        2,
        command & !(COMMAND_MEMORY | COMMAND_MASTER),
    );
    record_config_counts();
    FUNCTIONS.lock()[at] = None;
    set_indicator(ISOLATION_STATE, drc, ISOLATE);
    set_power(POWER_OFF);
    report(
        "remove",
        drc,
        if busy { "ok (the disk was busy)" } else { "ok" },
    );
}

/// Configuration registers and bits a probe uses.
const VENDOR_ID: u32 = 0x00;
const COMMAND: u32 = 0x04;
const STATUS: u32 = 0x06;
const CLASS: u32 = 0x08;
const HEADER_TYPE: u32 = 0x0e;
const BAR1: u32 = 0x14;
const BAR4: u32 = 0x20;
const BAR5: u32 = 0x24;
const CAPABILITIES: u32 = 0x34;
const COMMAND_MEMORY: u32 = 1 << 1;
const COMMAND_MASTER: u32 = 1 << 2;
const CAP_VENDOR: u32 = 0x09;
const CAP_MSIX: u32 = 0x11;
const MSIX_ENABLE: u32 = 1 << 15;
/// Virtio capability types.
const VIRTIO_COMMON: u32 = 1;
const VIRTIO_NOTIFY: u32 = 2;
const VIRTIO_DEVICE: u32 = 4;
/// virtio-blk-pci (modern).
const VIRTIO_VENDOR: u32 = 0x1af4;
const VIRTIO_BLOCK: u32 = 0x1042;
/// Where the MSI-X table's BAR and the virtio BAR go in the slot's span.
const MSIX_BAR_AT: u64 = 0;
const VIRTIO_BAR_AT: u64 = 0x8000;
/// `ibm,change-msi` functions.
const CHANGE_MSI: u32 = 1;
const CHANGE_MSI_ONLY: u32 = 3;
const CHANGE_MSIX: u32 = 4;
const VECTORS: u32 = 2;

/// Makes and records a call, shown with `shown` (its first three shown
/// at most) in place of its cells.
fn call_shown(name: &'static str, args: &[u32], shown: &[u32], nret: usize) -> (i32, [u32; 2]) {
    let (status, out) = match rtas::call(name, args, nret) {
        Ok(ret) => (ret.status, [ret.out[0], ret.out[1]]),
        Err(_) => (-1, [0, 0]),
    };
    let mut kept = [0; 3];
    kept[..shown.len().min(3)].copy_from_slice(&shown[..shown.len().min(3)]);
    record(Call {
        name,
        args: kept,
        nargs: shown.len().min(3),
        status,
        out,
        nret: nret.saturating_sub(1).min(2),
        walk: None,
        count: 1,
    });
    (status, out)
}

/// The configuration calls of the probe or removal, one line each.
fn record_config_counts() {
    let (reads, writes) = pcibus::counted();
    for (name, count) in [
        ("ibm,read-pci-config", reads),
        ("ibm,write-pci-config", writes),
    ] {
        if count > 0 {
            record(Call {
                name,
                args: [0; 3],
                nargs: 0,
                status: 0,
                out: [0, 0],
                nret: 0,
                walk: None,
                count,
            });
        }
    }
}

/// Linux's `rtas_disable_msi`: MSI first, then the legacy function.
fn release_vectors(devfn: u8) {
    let [address, high, low] = pcibus::function_args(devfn);
    for function in [CHANGE_MSI_ONLY, CHANGE_MSI] {
        let args = [address, high, low, function, 0, 0];
        if call_shown("ibm,change-msi", &args, &[function, 0], 4).0 == 0 {
            break;
        }
    }
}

/// The kernel's probe of a new function and, for a virtio-blk one, its
/// driver's: the disk made of it.
fn probe(drc: u32) -> Option<usize> {
    pcibus::begin_counting();
    let disk = probe_function(drc);
    record_config_counts();
    match disk {
        Ok(disk) => disk,
        Err(why) => {
            Line::new()
                .str("pci: ")
                .hex(u64::from(drc))
                .str(": ")
                .str(why)
                .nl();
            None
        }
    }
}

fn probe_function(drc: u32) -> Result<Option<usize>, &'static str> {
    let devfn = (drc & 0xff) as u8;
    let id = pcibus::read(devfn, VENDOR_ID, 4).ok_or("no device answers")?;
    let [address, high, low] = pcibus::function_args(devfn);
    call_shown(
        "ibm,get-config-addr-info2",
        &[address, high, low, 0],
        &[0],
        2,
    );
    for (register, size) in [(HEADER_TYPE, 1), (CLASS, 4), (STATUS, 2)] {
        pcibus::read(devfn, register, size).ok_or("a register does not read")?;
    }
    if id != VIRTIO_BLOCK << 16 | VIRTIO_VENDOR {
        return Ok(None);
    }
    // The capabilities: MSI-X and the virtio regions.
    let mut msix = None;
    let mut regions = [None; 5];
    let mut multiplier = 0;
    let mut at = pcibus::read(devfn, CAPABILITIES, 1).ok_or("no capability list")?;
    for _ in 0..48 {
        if at == 0 {
            break;
        }
        let id = pcibus::read(devfn, at, 1).ok_or("a capability does not read")?;
        if id == CAP_MSIX {
            msix = Some(at);
        }
        if id == CAP_VENDOR {
            let kind = pcibus::read(devfn, at + 3, 1).unwrap_or(0);
            let bar = pcibus::read(devfn, at + 4, 1).unwrap_or(0);
            let offset = pcibus::read(devfn, at + 8, 4).unwrap_or(0);
            if kind == VIRTIO_NOTIFY {
                multiplier = pcibus::read(devfn, at + 16, 4).unwrap_or(0);
            }
            if let Some(region) = regions.get_mut(kind as usize) {
                *region = Some((bar, offset));
            }
        }
        at = pcibus::read(devfn, at + 1, 1).unwrap_or(0);
    }
    let msix = msix.ok_or("no MSI-X")?;
    // Size the BARs (all ones, read, restore), then place them in the
    // slot's span of the bridge's window and turn decoding on.
    for register in [BAR1, BAR4, BAR5] {
        let original = pcibus::read(devfn, register, 4).unwrap_or(0);
        pcibus::write(devfn, register, 4, u32::MAX);
        pcibus::read(devfn, register, 4);
        pcibus::write(devfn, register, 4, original);
    }
    let base = pcibus::slot_bus_address(devfn >> 3);
    pcibus::write(devfn, BAR1, 4, (base + MSIX_BAR_AT) as u32);
    pcibus::write(devfn, BAR4, 4, (base + VIRTIO_BAR_AT) as u32);
    pcibus::write(devfn, BAR5, 4, ((base + VIRTIO_BAR_AT) >> 32) as u32);
    let command = pcibus::read(devfn, COMMAND, 2).unwrap_or(0);
    pcibus::write(devfn, COMMAND, 2, command | COMMAND_MEMORY | COMMAND_MASTER);
    // Vectors as Linux's pseries MSI code asks for them.
    release_vectors(devfn);
    let args = [address, high, low, CHANGE_MSIX, VECTORS, 0];
    let (status, out) = call_shown("ibm,change-msi", &args, &[CHANGE_MSIX, VECTORS], 4);
    if status != 0 || out[0] != VECTORS {
        return Err("no MSI-X vectors");
    }
    let mut sources = [0u32; VECTORS as usize];
    for (vector, source) in sources.iter_mut().enumerate() {
        let args = [address, high, low, vector as u32];
        let (status, out) = call_shown(
            "ibm,query-interrupt-source-number",
            &args,
            &[vector as u32],
            3,
        );
        if status != 0 {
            return Err("a vector has no interrupt");
        }
        *source = out[0];
    }
    let control = pcibus::read(devfn, msix + 2, 2).unwrap_or(0);
    pcibus::write(devfn, msix + 2, 2, control | MSIX_ENABLE);
    let region = |kind: u32| {
        let (bar, offset) = regions[kind as usize]?;
        (bar == 4).then(|| pcibus::cpu_address(base + VIRTIO_BAR_AT + u64::from(offset)))
    };
    let (Some(common), Some(notify), Some(device)) = (
        region(VIRTIO_COMMON),
        region(VIRTIO_NOTIFY),
        region(VIRTIO_DEVICE),
    ) else {
        return Err("a virtio region is missing");
    };
    let regions = crate::virtio_blk::Regions {
        common,
        device,
        notify,
        notify_multiplier: multiplier,
    };
    crate::virtio_blk::attach(drc, regions, sources[1]).map(Some)
}

/// `pci`: one line per function, `pci <drc> <bus:dev.fn> <vendor:device>
/// <driver or ->`.
pub fn list() {
    let functions = *FUNCTIONS.lock();
    let mut any = false;
    for function in functions.iter().flatten() {
        any = true;
        let devfn = function.drc & 0xff;
        let mut line = Line::new();
        line.str("pci ").hex(function.drc as u64).str(" 00:");
        hex2(&mut line, devfn >> 3);
        line.str(".").dec(u64::from(devfn & 7)).str(" ");
        hex4(&mut line, u32::from(function.vendor));
        line.str(":");
        hex4(&mut line, u32::from(function.device));
        match function.disk {
            Some(_) => line.str(" virtio-blk").nl(),
            None => line.str(" -").nl(),
        };
    }
    if !any {
        Line::new().str("pci: no functions").nl();
    }
}

/// `pci calls`: the last add's or remove's RTAS calls, one per line:
/// `<name>(<args>) -> <status>[, <outputs>]`.
pub fn print_calls() {
    let calls = *CALLS.lock();
    for call in calls.0.iter().take(calls.1).flatten() {
        let mut line = Line::new();
        line.str("call ").str(call.name).str("(");
        for (i, arg) in call.args.iter().take(call.nargs).enumerate() {
            if i > 0 {
                line.str(", ");
            }
            line.signed(i64::from(*arg as i32));
        }
        if let Some(walk) = call.walk {
            // `x17 -> 2 x1, 3 x15, 0`: the walk's statuses, as counted.
            line.str(") x")
                .dec(u64::from(walk.calls))
                .str(" -> 2 x")
                .dec(u64::from(walk.children))
                .str(", 3 x")
                .dec(u64::from(walk.properties))
                .str(", ")
                .signed(i64::from(walk.last))
                .nl();
            continue;
        }
        if call.count > 1 || call.nargs == 0 {
            // `call ibm,read-pci-config x228 -> 0`.
            line.str(") x").dec(u64::from(call.count)).str(" -> ");
            line.signed(i64::from(call.status)).nl();
            continue;
        }
        line.str(") -> ").signed(i64::from(call.status));
        // A failed call's other cells mean nothing.
        let outputs = if call.status == 0 { call.nret } else { 0 };
        for out in call.out.iter().take(outputs) {
            line.str(", ").dec(u64::from(*out));
        }
        line.nl();
    }
}

fn hex_digits(line: &mut Line, value: u32, digits: u32) {
    for shift in (0..digits).rev() {
        let nibble = (value >> (shift * 4)) & 0xf;
        let digit = b"0123456789abcdef"[nibble as usize];
        line.bytes(&[digit]);
    }
}

fn hex2(line: &mut Line, value: u32) {
    hex_digits(line, value, 2);
}

fn hex4(line: &mut Line, value: u32) {
    hex_digits(line, value, 4);
}
