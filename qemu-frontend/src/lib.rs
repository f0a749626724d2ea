//! QEMU's command line, as libvirt writes it for a pseries guest, turned
//! into the core's (`papervisor`) with the same meaning. Every option is
//! either carried over, taken because it means nothing for this machine
//! (said in [`Translation::notes`]), or refused with one line that names
//! it: never dropped when it would change what the guest sees.

use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The QEMU version whose command line and QMP this follows (the core's
/// `query-version` says the same).
pub const QEMU_VERSION: &str = "9.0.0";

/// The core's command line, and what was taken without effect.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Translation {
    /// The core's arguments.
    pub args: Vec<String>,
    /// Options taken that mean nothing here, for the log.
    pub notes: Vec<String>,
    /// `-version` or `-help`: print this and exit.
    pub print: Option<String>,
}

/// Options that take no value.
const FLAGS: &[&str] = &[
    "S",
    "no-user-config",
    "nodefaults",
    "nographic",
    "no-shutdown",
    "daemonize",
    "enable-kvm",
    "version",
    "help",
    "h",
];

/// A QEMU option's value: `key=value,...`, the first item perhaps bare
/// (`implied`), `,,` a comma; or a JSON object (libvirt's -object and
/// -device when the schema allows it).
fn parse_opts(option: &str, text: &str, implied: &str) -> Result<Map<String, Value>, String> {
    if text.starts_with('{') {
        return match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => Ok(map),
            _ => Err(format!("-{option} {text}: not a JSON object")),
        };
    }
    let items = common::options::split(text);
    let mut map = Map::new();
    for (index, item) in items.into_iter().enumerate() {
        let (key, value) = match item.split_once('=') {
            Some((key, value)) => (key.to_string(), value.to_string()),
            None if index == 0 && !implied.is_empty() => (implied.to_string(), item),
            // QEMU's old boolean shorthand: `server` is server=on, `nowait` wait=off.
            None => match item.strip_prefix("no") {
                Some(key) if !key.is_empty() => (key.to_string(), "off".to_string()),
                _ => (item, "on".to_string()),
            },
        };
        if map.insert(key.clone(), Value::String(value)).is_some() {
            return Err(format!("-{option} {text}: '{key}' is given twice"));
        }
    }
    Ok(map)
}

/// A value as text (JSON numbers and booleans as QEMU's key=value spells them).
fn text_of(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Bool(true) => "on".into(),
        Value::Bool(false) => "off".into(),
        other => other.to_string(),
    }
}

fn flag_of(option: &str, key: &str, value: &Value) -> Result<bool, String> {
    match text_of(value).as_str() {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        other => Err(format!("-{option} {key}={other}: expected on or off")),
    }
}

/// A size as QEMU reads one: bytes, or a number with a k/M/G/T suffix
/// (`-m` without suffix is MiB, given as `default_unit`).
fn parse_size(option: &str, text: &str, default_unit: u64) -> Result<u64, String> {
    let bad = || format!("-{option}: '{text}' is not a size");
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => text.split_at(at),
        None => (text, ""),
    };
    let number: u64 = digits.parse().map_err(|_| bad())?;
    let unit = match unit {
        "" => default_unit,
        "b" | "B" => 1,
        "k" | "K" => 1 << 10,
        "m" | "M" => 1 << 20,
        "g" | "G" => 1 << 30,
        "t" | "T" => 1 << 40,
        _ => return Err(bad()),
    };
    number.checked_mul(unit).ok_or_else(bad)
}

/// A number of a `-smp`-like option.
fn number(option: &str, key: &str, value: &Value) -> Result<u64, String> {
    text_of(value)
        .parse()
        .map_err(|_| format!("-{option} {key}={}: not a number", text_of(value)))
}

fn unsupported(option: &str, key: &str, value: &Value) -> String {
    format!(
        "-{option} {key}={}: not supported by Papervisor",
        text_of(value)
    )
}

/// A character device as `-chardev` declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Chardev {
    /// A listening socket handed over as descriptor N.
    Fd(i32),
    /// A listening socket at a path.
    Path(String),
    /// A pseudo-terminal.
    Pty,
}

#[derive(Default)]
struct State {
    args: Vec<String>,
    notes: Vec<String>,
    chardevs: BTreeMap<String, Chardev>,
    monitors: Vec<String>,
    console: Option<String>,
    machine_none: bool,
    ram_backend: Option<String>,
    /// Memory backends by id: their size, and the core's `--object`.
    memory_objects: BTreeMap<String, (u64, String)>,
    ram_size: Option<u64>,
    /// `-device` cores and DIMMs, as the core's `--device`, in order.
    devices: Vec<String>,
    numa_node: bool,
    numa_memdev: Option<String>,
    /// The core's `--blockdev`s, in order.
    blockdevs: Vec<String>,
}

/// A device's or object's properties as the core's key=value list
/// (`,,` a comma in a value), `first` leading.
fn key_values(first: &str, opts: &Map<String, Value>, skip: &str) -> String {
    let mut items = vec![common::options::escape(first)];
    for (key, value) in opts {
        if key != skip {
            items.push(format!(
                "{key}={}",
                common::options::escape(&text_of(value))
            ));
        }
    }
    items.join(",")
}

impl State {
    fn push(&mut self, option: &str, value: impl Into<String>) {
        self.args.push(format!("--{option}"));
        self.args.push(value.into());
    }

    fn note(&mut self, why: impl Into<String>) {
        self.notes.push(why.into());
    }
}

/// Translates QEMU's arguments (without the program name). A refusal is
/// one line: what it quotes of the arguments has its control characters
/// escaped.
pub fn translate(argv: &[String]) -> Result<Translation, String> {
    translate_line(argv).map_err(|refusal| {
        refusal
            .chars()
            .flat_map(|c| {
                if c.is_control() {
                    c.escape_default().collect::<Vec<_>>()
                } else {
                    vec![c]
                }
            })
            .collect()
    })
}

fn translate_line(argv: &[String]) -> Result<Translation, String> {
    let mut state = State::default();
    let mut arguments = argv.iter();
    while let Some(argument) = arguments.next() {
        let Some(option) = argument
            .strip_prefix("--")
            .or_else(|| argument.strip_prefix('-'))
        else {
            return Err(format!(
                "{argument}: a disk image as a bare argument is not supported by Papervisor"
            ));
        };
        if FLAGS.contains(&option) {
            match flag(&mut state, option) {
                Some(print) => {
                    return Ok(Translation {
                        print: Some(print),
                        ..Translation::default()
                    })
                }
                None => continue,
            }
        }
        let value = arguments
            .next()
            .ok_or_else(|| format!("-{option}: requires an argument"))?;
        valued(&mut state, option, value)?;
    }
    finish(state)
}

fn flag(state: &mut State, option: &str) -> Option<String> {
    match option {
        "S" => state.args.push("--paused".into()),
        "no-shutdown" => state.args.push("--no-shutdown".into()),
        "daemonize" => state.args.push("--daemonize".into()),
        "version" => {
            return Some(format!(
                "QEMU emulator version {QEMU_VERSION} (papervisor {})\n",
                env!("CARGO_PKG_VERSION")
            ))
        }
        "help" | "h" => {
            return Some(format!(
                "usage: papervisor-qemu [options]\nQEMU's command line for a pseries guest, run by Papervisor (see its README, \"Managed by libvirt\"). QEMU {QEMU_VERSION} compatible.\n"
            ))
        }
        // -no-user-config, -nodefaults, -nographic, -enable-kvm: what
        // Papervisor does anyway (no configuration files, no default
        // devices, no display, KVM).
        _ => {}
    }
    None
}

fn valued(state: &mut State, option: &str, value: &str) -> Result<(), String> {
    match option {
        "name" => {
            let opts = parse_opts(option, value, "guest")?;
            for (key, item) in &opts {
                match key.as_str() {
                    "guest" => state.push("name", text_of(item)),
                    "debug-threads" | "process" => {}
                    _ => return Err(unsupported(option, key, item)),
                }
            }
        }
        "machine" | "M" => machine(state, option, value)?,
        "accel" => {
            let opts = parse_opts(option, value, "accel")?;
            for (key, item) in &opts {
                match (key.as_str(), text_of(item).as_str()) {
                    ("accel", "kvm" | "tcg") => state.note(format!(
                        "-accel {}: the guest runs on KVM",
                        text_of(item)
                    )),
                    ("thread", _) => {}
                    _ => return Err(unsupported(option, key, item)),
                }
            }
        }
        "cpu" => {
            let model = value.split(',').next().unwrap_or_default();
            if model != "host" {
                return Err(format!(
                    "-cpu {value}: not supported by Papervisor (its vCPUs are the host's: -cpu host)"
                ));
            }
        }
        "m" => memory(state, option, value)?,
        "smp" => smp(state, option, value)?,
        "uuid" => state.push("uuid", value),
        "chardev" => chardev(state, option, value)?,
        "mon" => {
            let opts = parse_opts(option, value, "chardev")?;
            for (key, item) in &opts {
                match (key.as_str(), text_of(item).as_str()) {
                    ("chardev", id) => state.monitors.push(id.to_string()),
                    ("mode", "control") | ("id", _) | ("pretty", "off") => {}
                    _ => return Err(unsupported(option, key, item)),
                }
            }
        }
        "qmp" => {
            let opts = parse_opts(option, value, "path")?;
            let path = opts.get("path").map(text_of).unwrap_or_default();
            let Some(path) = path.strip_prefix("unix:") else {
                return Err(format!(
                    "-qmp {value}: only unix:PATH,server=on,wait=off is supported by Papervisor"
                ));
            };
            for (key, item) in &opts {
                match (key.as_str(), text_of(item).as_str()) {
                    ("path", _) | ("server", "on") | ("wait", "off") => {}
                    _ => return Err(unsupported(option, key, item)),
                }
            }
            state.push("qmp", path);
        }
        "device" => device(state, option, value)?,
        "numa" => numa(state, option, value)?,
        "blockdev" => blockdev(state, option, value)?,
        "object" => object(state, option, value)?,
        "pidfile" => state.push("pidfile", value),
        "kernel" => state.push("guest", value),
        "D" => state.push("log-file", value),
        "msg" => state.note("-msg: log lines always carry a timestamp"),
        "sandbox" => state.note(format!(
            "-sandbox {value}: every device process is jailed and every thread of the core filtered, whatever this says"
        )),
        "overcommit" => {
            let opts = parse_opts(option, value, "")?;
            for (key, item) in &opts {
                match (key.as_str(), text_of(item).as_str()) {
                    ("mem-lock" | "cpu-pm", "off") => {}
                    _ => return Err(unsupported(option, key, item)),
                }
            }
        }
        "boot" => {
            let opts = parse_opts(option, value, "order")?;
            for (key, item) in &opts {
                match key.as_str() {
                    // One guest, loaded directly: no boot devices to order.
                    "strict" | "menu" => {}
                    _ => return Err(unsupported(option, key, item)),
                }
            }
        }
        "rtc" => {
            let opts = parse_opts(option, value, "")?;
            for (key, item) in &opts {
                match (key.as_str(), text_of(item).as_str()) {
                    ("base", "utc") | ("clock", "host") | ("driftfix", "none") => {}
                    _ => return Err(unsupported(option, key, item)),
                }
            }
        }
        "display" | "vga" if value == "none" => {}
        "audiodev" => {
            let opts = parse_opts(option, value, "driver")?;
            match opts.get("driver").map(text_of).as_deref() {
                Some("none") => {}
                _ => return Err(format!("-audiodev {value}: only driver none is supported by Papervisor (no sound)")),
            }
        }
        _ => {
            return Err(format!(
                "-{option} {value}: not supported by Papervisor"
            ))
        }
    }
    Ok(())
}

fn machine(state: &mut State, option: &str, value: &str) -> Result<(), String> {
    let opts = parse_opts(option, value, "type")?;
    for (key, item) in &opts {
        let text = text_of(item);
        match key.as_str() {
            "type" if text == "none" => state.machine_none = true,
            "type" if text == "pseries" || text.starts_with("pseries-") => {}
            "type" => {
                return Err(format!(
                    "-machine {text}: not supported by Papervisor (its machine is pseries)"
                ))
            }
            "accel" => state.note(format!("-machine accel={text}: the guest runs on KVM")),
            "usb" if !flag_of(option, key, item)? => {}
            "dump-guest-core" => {}
            "memory-backend" => state.ram_backend = Some(text),
            _ => return Err(unsupported(option, key, item)),
        }
    }
    Ok(())
}

fn memory(state: &mut State, option: &str, value: &str) -> Result<(), String> {
    let opts = parse_opts(option, value, "size")?;
    let mut parts = Vec::new();
    for (key, item) in &opts {
        let text = text_of(item);
        match key.as_str() {
            "size" => {
                let bytes = parse_size(option, &text, 1 << 20)?;
                state.ram_size = Some(bytes);
                parts.push(format!("size={}M", bytes >> 20));
            }
            "maxmem" => parts.push(format!("maxmem={}M", parse_size(option, &text, 1)? >> 20)),
            "slots" => parts.push(format!("slots={}", number(option, key, item)?)),
            _ => return Err(unsupported(option, key, item)),
        }
    }
    state.push("memory", parts.join(","));
    Ok(())
}

fn smp(state: &mut State, option: &str, value: &str) -> Result<(), String> {
    let opts = parse_opts(option, value, "cpus")?;
    let get = |key: &str| -> Result<Option<u64>, String> {
        opts.get(key).map(|v| number(option, key, v)).transpose()
    };
    let (cpus, max, threads) = (get("cpus")?, get("maxcpus")?, get("threads")?);
    let (sockets, dies, cores) = (get("sockets")?, get("dies")?, get("cores")?);
    for key in opts.keys() {
        if !["cpus", "maxcpus", "threads", "sockets", "dies", "cores"].contains(&key.as_str()) {
            return Err(unsupported(option, key, &opts[key]));
        }
    }
    let threads = threads.unwrap_or(1);
    let cpus = cpus.unwrap_or(1);
    let max = max.unwrap_or(cpus);
    if dies.unwrap_or(1) != 1 {
        return Err(format!(
            "-smp {value}: dies are not supported by Papervisor"
        ));
    }
    if let (Some(sockets), Some(cores)) = (sockets, cores) {
        // Checked: the numbers are the command line's, any size.
        let product = sockets
            .checked_mul(cores)
            .and_then(|product| product.checked_mul(threads));
        if product != Some(max) {
            return Err(format!(
                "-smp {value}: sockets ({sockets}) * cores ({cores}) * threads ({threads}) is not maxcpus ({max})"
            ));
        }
    }
    state.push(
        "smp",
        format!("cpus={cpus},maxcpus={max},threads={threads}"),
    );
    Ok(())
}

fn chardev(state: &mut State, option: &str, value: &str) -> Result<(), String> {
    let opts = parse_opts(option, value, "backend")?;
    let backend = opts.get("backend").map(text_of).unwrap_or_default();
    let id = opts
        .get("id")
        .map(text_of)
        .ok_or_else(|| format!("-chardev {value}: no id"))?;
    let chardev = match backend.as_str() {
        "pty" => Chardev::Pty,
        "socket" => {
            for (key, item) in &opts {
                match (key.as_str(), text_of(item).as_str()) {
                    ("backend" | "id" | "fd" | "path", _) | ("server", "on") | ("wait", "off") => {}
                    _ => return Err(unsupported(option, key, item)),
                }
            }
            match (opts.get("fd"), opts.get("path")) {
                (Some(fd), None) => Chardev::Fd(
                    text_of(fd)
                        .parse()
                        .map_err(|_| format!("-chardev {value}: fd is not a number"))?,
                ),
                (None, Some(path)) => Chardev::Path(text_of(path)),
                _ => return Err(format!("-chardev {value}: one of fd or path")),
            }
        }
        _ => {
            return Err(format!(
                "-chardev {backend}: not supported by Papervisor (pty and listening sockets are)"
            ))
        }
    };
    if state.chardevs.insert(id.clone(), chardev).is_some() {
        return Err(format!("-chardev: duplicate id '{id}'"));
    }
    Ok(())
}

fn device(state: &mut State, option: &str, value: &str) -> Result<(), String> {
    let opts = parse_opts(option, value, "driver")?;
    let driver = opts.get("driver").map(text_of).unwrap_or_default();
    match driver.as_str() {
        "spapr-vty" => {
            for (key, item) in &opts {
                match key.as_str() {
                    "driver" | "chardev" | "id" | "reg" => {}
                    _ => return Err(unsupported(option, key, item)),
                }
            }
            let chardev = opts
                .get("chardev")
                .map(text_of)
                .ok_or_else(|| format!("-device {value}: no chardev"))?;
            if state.console.replace(chardev).is_some() {
                return Err(format!(
                    "-device {value}: Papervisor has one console (one spapr-vty)"
                ));
            }
            Ok(())
        }
        // Present at boot; the core checks them as device_add's.
        "host-spapr-cpu-core" | "pc-dimm" => {
            state.devices.push(key_values(&driver, &opts, "driver"));
            Ok(())
        }
        "virtio-blk-pci" => {
            let mut opts = opts;
            // The guest is loaded directly: there is no firmware to boot
            // from a disk, so no boot order to keep.
            opts.remove("bootindex");
            state.devices.push(key_values(&driver, &opts, "driver"));
            Ok(())
        }
        _ => Err(format!(
            "-device {driver}: not supported by Papervisor (its devices are host-spapr-cpu-core, pc-dimm and spapr-vty; disks plug over QMP)"
        )),
    }
}

/// `-blockdev`, as libvirt layers it: a `file` node (the image), and a
/// `raw` node over it that the disk names; the core's `--blockdev` takes
/// both, checked as blockdev-add's arguments.
fn blockdev(state: &mut State, option: &str, value: &str) -> Result<(), String> {
    let opts = parse_opts(option, value, "")?;
    let driver = opts.get("driver").map(text_of).unwrap_or_default();
    if driver != "file" && driver != "raw" {
        return Err(format!(
            "-blockdev {value}: only raw images (driver file, and raw over it) are supported by Papervisor"
        ));
    }
    state
        .blockdevs
        .push(key_values(&format!("driver={driver}"), &opts, "driver"));
    Ok(())
}

/// `-numa node,nodeid=0[,cpus=..][,memdev=ID]`: the one node there is.
fn numa(state: &mut State, option: &str, value: &str) -> Result<(), String> {
    let opts = parse_opts(option, value, "type")?;
    if opts.get("type").map(text_of).as_deref() != Some("node") {
        return Err(format!(
            "-numa {value}: only one node (-numa node,nodeid=0) is supported by Papervisor"
        ));
    }
    if state.numa_node {
        return Err(format!(
            "-numa {value}: Papervisor's machine has one NUMA node"
        ));
    }
    for (key, item) in &opts {
        match (key.as_str(), text_of(item).as_str()) {
            ("type", _) | ("nodeid", "0") => {}
            // Every CPU is on node 0 whatever the list says.
            ("cpus", _) => {}
            ("memdev", id) => state.numa_memdev = Some(id.to_string()),
            _ => return Err(unsupported(option, key, item)),
        }
    }
    state.numa_node = true;
    state.args.push("--numa-node".into());
    Ok(())
}

fn object(state: &mut State, option: &str, value: &str) -> Result<(), String> {
    let opts = parse_opts(option, value, "qom-type")?;
    let qom_type = opts.get("qom-type").map(text_of).unwrap_or_default();
    let id = opts.get("id").map(text_of).unwrap_or_default();
    match qom_type.as_str() {
        // libvirt's master key: for encrypted secrets of devices this
        // machine does not have.
        "secret" => {
            state.note(format!(
                "-object secret {id}: no device here takes a secret"
            ));
            Ok(())
        }
        "memory-backend-ram" | "memory-backend-memfd" => {
            let mut opts = opts;
            let size = opts
                .get("size")
                .map(|size| parse_size(option, &text_of(size), 1))
                .transpose()?
                .ok_or_else(|| format!("-object {value}: no size"))?;
            opts.insert("size".into(), Value::from(size));
            let object = key_values(&format!("qom-type={qom_type}"), &opts, "qom-type");
            if state
                .memory_objects
                .insert(id.clone(), (size, object))
                .is_some()
            {
                return Err(format!("-object: duplicate id '{id}'"));
            }
            Ok(())
        }
        _ => Err(format!("-object {qom_type}: not supported by Papervisor")),
    }
}

fn finish(mut state: State) -> Result<Translation, String> {
    if state.machine_none {
        state.args.push("--no-machine".into());
    }
    // A memory backend is the machine's RAM (the one -machine
    // memory-backend or the NUMA node names: as large as -m), or a DIMM's.
    let ram: Vec<String> = [state.ram_backend.take(), state.numa_memdev.take()]
        .into_iter()
        .flatten()
        .collect();
    for id in &ram {
        let (size, _) = state
            .memory_objects
            .remove(id)
            .ok_or_else(|| format!("the machine's RAM {id}: no -object {id}"))?;
        if state.ram_size.is_some_and(|ram| ram != size) {
            return Err(format!("-object {id}: its size {size} is not -m's"));
        }
        if state.ram_size.is_none() {
            state.ram_size = Some(size);
            state.push("memory", format!("size={}M", size >> 20));
        }
    }
    for blockdev in std::mem::take(&mut state.blockdevs) {
        state.push("blockdev", blockdev);
    }
    for (_, (_, object)) in std::mem::take(&mut state.memory_objects) {
        state.push("object", object);
    }
    for device in std::mem::take(&mut state.devices) {
        state.push("device", device);
    }
    for monitor in std::mem::take(&mut state.monitors) {
        match state.chardevs.remove(&monitor) {
            Some(Chardev::Fd(fd)) => state.push("qmp-fd", fd.to_string()),
            Some(Chardev::Path(path)) => state.push("qmp", path),
            Some(Chardev::Pty) => {
                return Err(format!(
                    "-mon chardev={monitor}: QMP on a pty is not supported by Papervisor"
                ))
            }
            None => return Err(format!("-mon chardev={monitor}: no such -chardev")),
        }
    }
    if let Some(console) = state.console.take() {
        match state.chardevs.remove(&console) {
            Some(Chardev::Pty) => state.push("console", "pty"),
            Some(Chardev::Path(path)) => state.push("console", path),
            Some(Chardev::Fd(_)) => {
                return Err(format!(
                    "-chardev {console}: a console on a handed-over descriptor is not supported by Papervisor"
                ))
            }
            None => return Err(format!("-device spapr-vty: no -chardev {console}")),
        }
        state.push("console-id", console);
    }
    if let Some(unused) = state.chardevs.keys().next() {
        return Err(format!(
            "-chardev {unused}: no device uses it (Papervisor's character devices are the console and QMP)"
        ));
    }
    Ok(Translation {
        args: state.args,
        notes: state.notes,
        print: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn libvirts_probe_is_a_machine_without_guest() {
        let probe = translate(&args(
            "-S -no-user-config -nodefaults -nographic -machine none,accel=kvm:tcg -qmp unix:/var/lib/libvirt/qemu/qmp-X/qmp.monitor,server=on,wait=off -pidfile /var/lib/libvirt/qemu/qmp-X/qmp.pid -daemonize",
        ))
        .unwrap();
        assert_eq!(
            probe.args,
            args("--paused --qmp /var/lib/libvirt/qemu/qmp-X/qmp.monitor --pidfile /var/lib/libvirt/qemu/qmp-X/qmp.pid --daemonize --no-machine")
        );
    }

    #[test]
    fn a_libvirt_domain_line_keeps_its_meaning() {
        let line = args(concat!(
            "-name guest=pv1,debug-threads=on -S ",
            "-object {\"qom-type\":\"secret\",\"id\":\"masterKey0\",\"format\":\"raw\",\"file\":\"/k\"} ",
            "-machine pseries,usb=off,dump-guest-core=off,memory-backend=ppc_spapr.ram ",
            "-accel tcg -m size=524288k,slots=4,maxmem=2097152k -overcommit mem-lock=off ",
            "-smp 1,maxcpus=4,sockets=4,cores=1,threads=1 ",
            "-object {\"qom-type\":\"memory-backend-ram\",\"id\":\"ppc_spapr.ram\",\"size\":536870912} ",
            "-uuid 6c3f0ad0-1a4b-4f2e-9d7a-0c8e1b2a3f40 -no-user-config -nodefaults ",
            "-chardev socket,id=charmonitor,fd=31,server=on,wait=off ",
            "-mon chardev=charmonitor,id=monitor,mode=control -rtc base=utc -no-shutdown -boot strict=on ",
            "-chardev pty,id=charserial0 ",
            "-device {\"driver\":\"spapr-vty\",\"chardev\":\"charserial0\",\"id\":\"serial0\",\"reg\":805306368} ",
            "-audiodev {\"id\":\"audio1\",\"driver\":\"none\"} ",
            "-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny -msg timestamp=on"
        ));
        let translation = translate(&line).unwrap();
        assert_eq!(
            translation.args,
            args(concat!(
                "--name pv1 --paused --memory maxmem=2048M,size=512M,slots=4 ",
                "--smp cpus=1,maxcpus=4,threads=1 --uuid 6c3f0ad0-1a4b-4f2e-9d7a-0c8e1b2a3f40 ",
                "--no-shutdown --qmp-fd 31 --console pty --console-id charserial0"
            ))
        );
        assert!(translation.notes.iter().any(|n| n.contains("-accel tcg")));
    }

    #[test]
    fn what_would_change_the_guest_is_refused_by_name() {
        let refused = |line: &str| translate(&args(line)).unwrap_err();
        assert!(refused("-machine q35").contains("-machine q35"));
        assert!(refused("-machine pseries,usb=on").contains("usb=on"));
        assert!(refused("-cpu POWER9").contains("-cpu POWER9"));
        assert!(refused("-device e1000").contains("-device e1000"));
        assert!(refused("-netdev user,id=n0").contains("-netdev"));
        assert!(refused("-smp 2,sockets=3,cores=1,threads=1,maxcpus=4").contains("sockets (3)"));
        // Found by fuzzing: the product overflowed.
        assert!(
            refused("-smp 1,maxcpus=4,sockets=4,cores=1,threads=111111111111111111")
                .contains("is not maxcpus")
        );
        assert!(refused("-overcommit mem-lock=on").contains("mem-lock=on"));
        assert!(refused("-chardev pty,id=c0").contains("no device uses it"));
        assert!(refused("-mon chardev=nothing,mode=control").contains("no such -chardev"));
        assert!(refused("-machine pseries,memory-backend=r0").contains("no -object r0"));
        assert!(refused("-numa node,nodeid=1").contains("nodeid=1"));
        assert!(refused("-numa node -numa node").contains("one NUMA node"));
        assert!(refused("-numa dist,src=0,dst=0,val=10").contains("-numa"));
        assert!(refused("-m").contains("requires an argument"));
        assert!(refused("disk.img").contains("disk.img"));
        assert!(refused("-global spapr-nvram.reg=0x3000").contains("-global"));
        let quoted = translate(&["-net\nx".to_string(), "y".to_string()]).unwrap_err();
        assert!(
            quoted.contains("-net\\nx") && !quoted.contains('\n'),
            "{quoted}"
        );
    }

    #[test]
    fn boot_time_cores_dimms_and_the_numa_node_reach_the_core() {
        let line = args(concat!(
            "-m size=1G,slots=4,maxmem=4G -smp 1,maxcpus=4 ",
            "-object {\"qom-type\":\"memory-backend-ram\",\"id\":\"ram-node0\",\"size\":1073741824} ",
            "-numa node,nodeid=0,cpus=0-3,memdev=ram-node0 ",
            "-object memory-backend-ram,id=memdimm0,size=256M ",
            "-device {\"driver\":\"pc-dimm\",\"node\":0,\"memdev\":\"memdimm0\",\"id\":\"dimm0\",\"slot\":0} ",
            "-device host-spapr-cpu-core,core-id=1,id=vcpu1"
        ));
        assert_eq!(
            translate(&line).unwrap().args,
            args(concat!(
                "--memory maxmem=4096M,size=1024M,slots=4 --smp cpus=1,maxcpus=4,threads=1 --numa-node ",
                "--object qom-type=memory-backend-ram,id=memdimm0,size=268435456 ",
                "--device pc-dimm,id=dimm0,memdev=memdimm0,node=0,slot=0 ",
                "--device host-spapr-cpu-core,core-id=1,id=vcpu1"
            ))
        );
        let small = args("-m 1G -object memory-backend-ram,id=r,size=512M -numa node,memdev=r");
        assert!(translate(&small).unwrap_err().contains("not -m's"));
    }

    #[test]
    fn libvirts_disk_is_a_raw_image_node_and_a_virtio_blk_pci_device() {
        let line = vec![
            "-blockdev".to_string(),
            r#"{"driver":"file","filename":"/img/a,b.raw","node-name":"libvirt-1-storage","auto-read-only":true,"discard":"unmap"}"#.into(),
            "-blockdev".into(),
            r#"{"node-name":"libvirt-1-format","read-only":false,"driver":"raw","file":"libvirt-1-storage"}"#.into(),
            "-device".into(),
            "virtio-blk-pci,bus=pci.0,addr=0x1,drive=libvirt-1-format,id=virtio-disk0,bootindex=1".into(),
        ];
        assert_eq!(
            translate(&line).unwrap().args,
            [
                "--blockdev",
                "driver=file,auto-read-only=on,discard=unmap,filename=/img/a,,b.raw,node-name=libvirt-1-storage",
                "--blockdev",
                "driver=raw,file=libvirt-1-storage,node-name=libvirt-1-format,read-only=off",
                "--device",
                "virtio-blk-pci,addr=0x1,bus=pci.0,drive=libvirt-1-format,id=virtio-disk0",
            ]
        );
        let refused = |line: &str| translate(&args(line)).unwrap_err();
        assert!(refused("-blockdev driver=qcow2,node-name=q,file=f").contains("raw images"));
    }

    #[test]
    fn sizes_and_shorthands_read_as_qemu_reads_them() {
        assert_eq!(parse_size("m", "512", 1 << 20), Ok(512 << 20));
        assert_eq!(parse_size("m", "1G", 1 << 20), Ok(1 << 30));
        assert_eq!(parse_size("m", "524288k", 1), Ok(512 << 20));
        assert!(parse_size("m", "12x", 1).is_err());
        assert!(parse_size("m", "99999999999999999999", 1).is_err());
        let opts = parse_opts("qmp", "unix:/a,,b,server,nowait", "path").unwrap();
        assert_eq!(opts["path"], "unix:/a,b");
        assert_eq!(opts["server"], "on");
        assert_eq!(opts["wait"], "off");
        assert!(translate(&args("-version"))
            .unwrap()
            .print
            .unwrap()
            .contains(QEMU_VERSION));
    }
}
