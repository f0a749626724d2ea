//! The arguments of the commands that need the machine, parsed totally
//! in the QMP thread into a typed [`MachineRequest`], or the error QEMU
//! gives. The schema (`schema.rs`) has checked each argument's JSON type
//! already; what is checked here is what the schema cannot say.

use super::schema::{ArgType, Command};
use crate::block::{disks, nodes};
use crate::cores::CORE_DRIVER;
use crate::dimms::{BACKEND_TYPES, DIMM_DRIVER};
use crate::request::{
    valid_id, BackendAdd, BlockdevAdd, ChardevAdd, DeviceAdd, FaultInjection, MachineRequest,
    QmpError, Query,
};
use ipc_proto::link::core_hotplug::MAX_DEVICE_ID;
use ipc_proto::ProcessKind;
use serde_json::{Map, Value};

/// The request of a command that needs the machine; `None` for the
/// commands the QMP server answers itself.
pub fn machine_request(
    command: Command,
    arguments: &Map<String, Value>,
) -> Result<Option<MachineRequest>, QmpError> {
    let query = |query| Ok(Some(MachineRequest::Query(query)));
    let request = match command {
        Command::DeviceAdd => MachineRequest::DeviceAdd(device_add(arguments)?),
        Command::DeviceDel => MachineRequest::DeviceDel(device_del(arguments)?),
        Command::ObjectAdd => MachineRequest::ObjectAdd(object_add(arguments)?),
        Command::ObjectDel => MachineRequest::ObjectDel(object_del(arguments)),
        Command::BlockdevAdd => MachineRequest::BlockdevAdd(blockdev_add(arguments)?),
        Command::BlockdevDel => {
            MachineRequest::BlockdevDel(text(arguments, "node-name").unwrap_or_default().into())
        }
        Command::QueryBlock => return query(Query::Block),
        Command::QueryNamedBlockNodes => return query(Query::NamedBlockNodes),
        Command::ChardevAdd => MachineRequest::ChardevAdd(chardev_add(arguments)?),
        Command::ChardevRemove => {
            MachineRequest::ChardevRemove(text(arguments, "id").unwrap_or_default().into())
        }
        Command::QueryChardev => return query(Query::Chardev),
        Command::QueryMemdev => return query(Query::Memdev),
        Command::QueryStats => {
            return match text(arguments, "target") {
                Some("vm") => query(Query::StatsVm),
                Some("vcpu") => query(Query::StatsVcpus),
                other => Err(QmpError::generic(format!(
                    "Parameter 'target' expects 'vm' or 'vcpu', not {other:?}"
                ))),
            }
        }
        Command::QueryPci => return query(Query::Pci),
        Command::QueryMemoryDevices => return query(Query::MemoryDevices),
        Command::QueryMemorySizeSummary => return query(Query::MemorySizeSummary),
        Command::QueryHotpluggableCpus => return query(Query::HotpluggableCpus),
        Command::QueryCpusFast => return query(Query::CpusFast),
        Command::XQueryDrcs => return query(Query::Drcs),
        Command::XQueryEventLog => return query(Query::EventLog),
        Command::XQueryStartup => return query(Query::Startup),
        Command::XQueryDeviceProcesses => return query(Query::DeviceProcesses),
        Command::SystemPowerdown => MachineRequest::PowerDown,
        Command::Stop => MachineRequest::Pause(true),
        Command::Cont => MachineRequest::Pause(false),
        Command::XInjectFault => inject_fault(arguments)?,
        Command::XQueryFaults => {
            fault_injection_built("x-query-faults")?;
            MachineRequest::QueryFaults
        }
        Command::XClearFaults => {
            fault_injection_built("x-clear-faults")?;
            MachineRequest::ClearFaults
        }
        Command::XUpgradeDeviceProcess => upgrade(arguments)?,
        Command::XRestartDeviceProcess => MachineRequest::Restart(process_kind(arguments)?),
        Command::QmpCapabilities
        | Command::QueryStatus
        | Command::QueryVersion
        | Command::QueryName
        | Command::QueryKvm
        | Command::QueryUuid
        | Command::QueryTarget
        | Command::QueryMachines
        | Command::QueryEvents
        | Command::QomListTypes
        | Command::DeviceListProperties
        | Command::QomListProperties
        | Command::QomList
        | Command::QueryCommandLineOptions
        | Command::QueryCpuDefinitions
        | Command::QueryTpmModels
        | Command::QueryTpmTypes
        | Command::QueryMigrateCapabilities
        | Command::MigrateSetCapabilities
        | Command::QueryStatsSchemas
        | Command::QueryJobs
        | Command::XQueryTrace
        | Command::HumanMonitorCommand
        | Command::QueryIothreads
        | Command::QueryCommands
        | Command::QueryQmpSchema
        | Command::SystemReset
        | Command::Quit => return Ok(None),
    };
    Ok(Some(request))
}

fn text<'a>(arguments: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    arguments.get(name).and_then(Value::as_str)
}

/// Refuses a property that `driver` does not have.
fn only_properties(
    arguments: &Map<String, Value>,
    driver: &str,
    known: &[&str],
) -> Result<(), QmpError> {
    match arguments.keys().find(|key| !known.contains(&key.as_str())) {
        Some(key) => Err(QmpError::generic(format!(
            "Property '{driver}.{key}' not found"
        ))),
        None => Ok(()),
    }
}

/// device_add of a CPU core or a DIMM.
fn device_add(arguments: &Map<String, Value>) -> Result<DeviceAdd, QmpError> {
    let driver = match arguments.get("driver") {
        Some(Value::String(driver)) => driver.as_str(),
        Some(_) => return Err(QmpError::generic("Parameter 'driver' expects a string")),
        None => return Err(QmpError::generic("Parameter 'driver' is missing")),
    };
    if driver == DIMM_DRIVER {
        return dimm_add(arguments);
    }
    if driver == disks::VIRTIO_BLK_DRIVER || driver == disks::VHOST_USER_BLK_DRIVER {
        return disk_add(driver, arguments);
    }
    if driver != CORE_DRIVER {
        return Err(QmpError::generic(format!(
            "'{driver}' is not a valid device model name (this machine plugs {CORE_DRIVER} and {DIMM_DRIVER})"
        )));
    }
    only_properties(
        arguments,
        CORE_DRIVER,
        &["driver", "core-id", "id", "node-id"],
    )?;
    only_node_zero(arguments, CORE_DRIVER, "node-id")?;
    let core_id = match arguments.get("core-id") {
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| QmpError::generic("Parameter 'core-id' expects an integer"))?,
        Some(_) => return Err(QmpError::generic("Parameter 'core-id' expects an integer")),
        None => return Err(QmpError::generic("Parameter 'core-id' is missing")),
    };
    let id = match arguments.get("id") {
        Some(Value::String(id)) if id.len() <= MAX_DEVICE_ID => Some(id.clone()),
        Some(_) => return Err(QmpError::generic("Parameter 'id' expects a short string")),
        None => None,
    };
    Ok(DeviceAdd::Core { core_id, id })
}

/// device_add of a disk: `id` required (a disk without an id could not be
/// named to device_del), and `drive` for a virtio-blk-pci one (its node),
/// `chardev` for a vhost-user-blk-pci one (its backend's socket); `addr`
/// as QEMU's "slot[.function]", `bus` only the bridge's.
fn disk_add(driver: &str, arguments: &Map<String, Value>) -> Result<DeviceAdd, QmpError> {
    let backend = match driver {
        disks::VIRTIO_BLK_DRIVER => "drive",
        _ => "chardev",
    };
    only_properties(arguments, driver, &["driver", "id", backend, "addr", "bus"])?;
    let id = text(arguments, "id").ok_or_else(|| QmpError::generic("Parameter 'id' is missing"))?;
    if id.len() > MAX_DEVICE_ID || !valid_id(id) {
        return Err(QmpError::generic(format!(
            "Parameter 'id' expects an identifier, not '{id}'"
        )));
    }
    let named = text(arguments, backend)
        .ok_or_else(|| QmpError::generic(format!("Property '{driver}.{backend}' is missing")))?;
    match text(arguments, "bus") {
        None => {}
        Some(disks::BUS_NAME) => {}
        Some(bus) => {
            return Err(QmpError::generic(format!(
                "Bus '{bus}' not found (this machine has {})",
                disks::BUS_NAME
            )))
        }
    }
    let slot = arguments.get("addr").map(disks::parse_addr).transpose()?;
    Ok(match backend {
        "drive" => DeviceAdd::VirtioBlk {
            id: id.to_string(),
            drive: named.to_string(),
            slot,
        },
        _ => DeviceAdd::VhostUserBlk {
            id: id.to_string(),
            chardev: named.to_string(),
            slot,
        },
    })
}

/// chardev-add of a Unix client socket, in QEMU's `ChardevBackend` shape:
/// `{"type": "socket", "data": {"addr": {"type": "unix", "data": {"path":
/// P}}, "server": false, "reconnect": S | "reconnect-ms": M}}`.
fn chardev_add(arguments: &Map<String, Value>) -> Result<ChardevAdd, QmpError> {
    let id = text(arguments, "id").unwrap_or_default();
    if id.len() > MAX_DEVICE_ID || !valid_id(id) {
        return Err(QmpError::generic(format!(
            "Parameter 'id' expects an identifier, not '{id}'"
        )));
    }
    let backend = arguments.get("backend").and_then(Value::as_object);
    let kind = backend.and_then(|b| b.get("type")).and_then(Value::as_str);
    if kind != Some("socket") {
        return Err(QmpError::generic(
            "Parameter 'backend.type' expects 'socket' (this machine has no other character device)",
        ));
    }
    let data = backend
        .and_then(|b| b.get("data"))
        .and_then(Value::as_object)
        .ok_or_else(|| QmpError::generic("Parameter 'backend.data' is missing"))?;
    let addr = data.get("addr").and_then(Value::as_object);
    if addr.and_then(|a| a.get("type")).and_then(Value::as_str) != Some("unix") {
        return Err(QmpError::generic(
            "Parameter 'backend.data.addr.type' expects 'unix'",
        ));
    }
    let path = addr
        .and_then(|a| a.get("data"))
        .and_then(|d| d.get("path"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    if path.is_empty() || path.len() > MAX_SOCKET_PATH || path.contains('\0') {
        return Err(QmpError::generic(format!(
            "Parameter 'backend.data.addr.data.path' expects a socket path of 1 to {MAX_SOCKET_PATH} bytes"
        )));
    }
    if data.get("server").and_then(Value::as_bool) == Some(true) {
        return Err(QmpError::generic(
            "Parameter 'backend.data.server': only client sockets (a backend's) are supported",
        ));
    }
    let number = |key: &str| match data.get(key) {
        None => Ok(None),
        Some(value) => value.as_u64().map(Some).ok_or_else(|| {
            QmpError::generic(format!(
                "Parameter 'backend.data.{key}' expects an unsigned integer"
            ))
        }),
    };
    let reconnect_ms = match (number("reconnect-ms")?, number("reconnect")?) {
        (Some(ms), _) => ms,
        (None, Some(seconds)) => seconds.saturating_mul(1000),
        (None, None) => 0,
    };
    Ok(ChardevAdd {
        id: id.to_string(),
        path: path.into(),
        reconnect_ms: reconnect_ms.min(MAX_RECONNECT_MS),
    })
}

/// A Unix socket's path is at most this long (`sun_path`, its NUL out).
const MAX_SOCKET_PATH: usize = 107;
/// The longest wait between two reconnection attempts (an hour).
const MAX_RECONNECT_MS: u64 = 3_600_000;

/// The machine has one NUMA node, 0: a device on another is refused.
fn only_node_zero(
    arguments: &Map<String, Value>,
    driver: &str,
    property: &str,
) -> Result<(), QmpError> {
    match arguments.get(property) {
        None => Ok(()),
        Some(node) if node.as_u64() == Some(0) => Ok(()),
        Some(node) => Err(QmpError::generic(format!(
            "'{driver}.{property}' can't be {node}: this machine has one NUMA node, 0"
        ))),
    }
}

/// DIMMs plugged without an id, numbered as QEMU numbers them.
static ANONYMOUS_DEVICES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// device_add of a DIMM: `id` optional, as in QEMU (one without is named
/// by its QOM path), `node` 0 if given, `slot` checked by the machine.
fn dimm_add(arguments: &Map<String, Value>) -> Result<DeviceAdd, QmpError> {
    only_properties(
        arguments,
        DIMM_DRIVER,
        &["driver", "id", "memdev", "addr", "node", "slot"],
    )?;
    only_node_zero(arguments, DIMM_DRIVER, "node")?;
    let id = match text(arguments, "id") {
        Some(id) if id.len() > MAX_DEVICE_ID || !valid_id(id) => {
            return Err(QmpError::generic(format!(
                "Parameter 'id' expects an identifier, not '{id}'"
            )))
        }
        Some(id) => id.to_string(),
        None => crate::dimms::anonymous_id(
            ANONYMOUS_DEVICES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        ),
    };
    let slot = match arguments.get("slot") {
        None => None,
        Some(value) => Some(
            value
                .as_u64()
                .and_then(|slot| u32::try_from(slot).ok())
                .ok_or_else(|| QmpError::generic("Parameter 'slot' expects a slot number"))?,
        ),
    };
    let memdev = text(arguments, "memdev")
        .ok_or_else(|| QmpError::generic("Parameter 'memdev' is missing"))?;
    let addr =
        match arguments.get("addr") {
            None => None,
            Some(value) => Some(value.as_u64().ok_or_else(|| {
                QmpError::generic("Parameter 'addr' expects an unsigned integer")
            })?),
        };
    Ok(DeviceAdd::Dimm {
        id,
        memdev: memdev.to_string(),
        addr,
        slot,
    })
}

/// device_del: the id or QOM path of the device.
fn device_del(arguments: &Map<String, Value>) -> Result<String, QmpError> {
    match arguments.get("id") {
        Some(Value::String(name)) => Ok(name.clone()),
        Some(_) => Err(QmpError::generic("Parameter 'id' expects a string")),
        None => Err(QmpError::generic("Parameter 'id' is missing")),
    }
}

/// object-add of a memory backend; its properties flat (QEMU 6.0 on) or
/// under `props` (before; libvirt sends them so when the schema does not
/// name the object types), checked alike.
fn object_add(arguments: &Map<String, Value>) -> Result<BackendAdd, QmpError> {
    let mut flat = arguments.clone();
    match flat.remove("props") {
        None => {}
        Some(Value::Object(props)) => {
            for (key, value) in props {
                if key == "props" || flat.insert(key.clone(), value).is_some() {
                    return Err(QmpError::generic(format!(
                        "Parameter '{key}' is given twice (in 'props' too)"
                    )));
                }
            }
            Command::ObjectAdd.check(&flat)?;
        }
        Some(_) => return Err(QmpError::generic("Parameter 'props' expects an object")),
    }
    let arguments = &flat;
    let qom_type = text(arguments, "qom-type").unwrap_or_default();
    let id = text(arguments, "id").unwrap_or_default();
    if !BACKEND_TYPES.contains(&qom_type) {
        return Err(QmpError::generic(format!(
            "invalid object type: {qom_type} (this machine has {})",
            BACKEND_TYPES.join(" and ")
        )));
    }
    if !valid_id(id) {
        return Err(QmpError::generic(format!(
            "Parameter 'id' expects an identifier, not '{id}'"
        )));
    }
    if !arguments.contains_key("size") {
        return Err(QmpError::generic("Parameter 'size' is missing"));
    }
    let flag = |name: &str| arguments.get(name).and_then(Value::as_bool);
    // What would change where or how the memory is placed is refused;
    // hints that mean nothing for a memfd the core maps are taken.
    match text(arguments, "policy") {
        None | Some("default") => {}
        Some(policy) => {
            return Err(QmpError::generic(format!(
                "'{qom_type}.policy' {policy}: this machine places no memory on host NUMA nodes (only 'default')"
            )))
        }
    }
    if arguments
        .get("host-nodes")
        .and_then(Value::as_array)
        .is_some_and(|nodes| !nodes.is_empty())
    {
        return Err(QmpError::generic(format!(
            "'{qom_type}.host-nodes': this machine places no memory on host NUMA nodes"
        )));
    }
    if flag("reserve") == Some(false) && flag("prealloc") == Some(true) {
        return Err(QmpError::generic(format!(
            "'{qom_type}': 'prealloc=on' and 'reserve=off' are incompatible"
        )));
    }
    Ok(BackendAdd {
        qom_type: qom_type.to_string(),
        id: id.to_string(),
        size: arguments.get("size").and_then(Value::as_u64).unwrap_or(0),
        prealloc: flag("prealloc").unwrap_or(false),
        share: flag("share").unwrap_or(false),
    })
}

/// blockdev-add of a raw image: a `file` node (the image), or a `raw`
/// node layered over one (what libvirt makes: its disks name the `raw`
/// node). `discard` is taken (the disk offers the guest no discard).
fn blockdev_add(arguments: &Map<String, Value>) -> Result<BlockdevAdd, QmpError> {
    let driver = text(arguments, "driver").unwrap_or_default();
    let node_name = text(arguments, "node-name").unwrap_or_default();
    if !nodes::valid_node_name(node_name) {
        return Err(QmpError::generic(format!(
            "Invalid node-name: '{node_name}' (a letter, then letters, digits, '-', '.' or '_', at most {} characters)",
            nodes::MAX_NODE_NAME
        )));
    }
    let flag = |name: &str| {
        arguments
            .get(name)
            .and_then(Value::as_bool)
            .unwrap_or(false)
    };
    let (filename, over) = match driver {
        nodes::DRIVER => {
            if arguments.contains_key("file") {
                return Err(QmpError::generic("Parameter 'file' is unexpected for driver 'file'"));
            }
            let filename = text(arguments, "filename")
                .ok_or_else(|| QmpError::generic("Parameter 'filename' is missing"))?;
            if filename.is_empty() || filename.len() > MAX_PATH || filename.contains('\0') {
                return Err(QmpError::generic(
                    "Parameter 'filename' expects a path of 1 to 4095 bytes",
                ));
            }
            (filename.into(), None)
        }
        nodes::RAW_DRIVER => {
            if arguments.contains_key("filename") || arguments.contains_key("auto-read-only") {
                return Err(QmpError::generic(
                    "Parameter 'filename' or 'auto-read-only' is unexpected for driver 'raw': it names a 'file' node",
                ));
            }
            let file = text(arguments, "file")
                .ok_or_else(|| QmpError::generic("Parameter 'file' is missing"))?;
            if !nodes::valid_node_name(file) {
                return Err(QmpError::generic(format!(
                    "Parameter 'file' expects the name of a file node, not '{file}'"
                )));
            }
            (std::path::PathBuf::new(), Some(file.to_string()))
        }
        _ => {
            return Err(QmpError::generic(format!(
                "Parameter 'driver' does not accept value '{driver}' (this machine has '{}' and '{}' over it)",
                nodes::DRIVER,
                nodes::RAW_DRIVER
            )))
        }
    };
    match text(arguments, "discard") {
        None | Some("ignore" | "off" | "unmap" | "on") => {}
        Some(other) => {
            return Err(QmpError::generic(format!(
                "Parameter 'discard' does not accept value '{other}'"
            )))
        }
    }
    Ok(BlockdevAdd {
        node_name: node_name.to_string(),
        filename,
        read_only: flag("read-only"),
        over,
        auto_read_only: flag("auto-read-only"),
    })
}

/// A cold plug on the command line, as QEMU writes one: `--blockdev
/// key=value,...` (blockdev-add's arguments), `--object
/// qom-type=T,key=value,...` (object-add's) or `--device
/// DRIVER,key=value,...` (device_add's); `,,` is a comma in a value,
/// `read-only`, `share` and `prealloc` take on/off, and the numbers of
/// object-add and device_add are numbers. Checked as the QMP command with
/// those arguments, by the same code.
pub fn command_line_request(option: &str, text: &str) -> Result<MachineRequest, String> {
    let mut arguments = Map::new();
    let mut items = common::options::split(text);
    let command = match option {
        "--blockdev" => Command::BlockdevAdd,
        "--object" => Command::ObjectAdd,
        "--device" => {
            let driver = items.remove(0);
            arguments.insert("driver".into(), Value::String(driver));
            Command::DeviceAdd
        }
        _ => return Err(format!("{option} is not a cold-plug option")),
    };
    for item in items {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| format!("{option}: '{item}' is not key=value"))?;
        let typed = command.args().iter().find(|arg| arg.name == key);
        let value = match (typed.map(|arg| arg.ty), value) {
            (Some(ArgType::Bool), "on" | "true") => Value::Bool(true),
            (Some(ArgType::Bool), "off" | "false") => Value::Bool(false),
            (Some(ArgType::Bool), other) => {
                return Err(format!("{option}: {key}={other}: expected on or off"))
            }
            (Some(ArgType::Int), number) => match number.parse::<u64>() {
                Ok(number) => Value::from(number),
                Err(_) => return Err(format!("{option}: {key}={number}: expected a number")),
            },
            (_, value) => Value::String(value.to_string()),
        };
        if arguments.insert(key.to_string(), value).is_some() {
            return Err(format!("{option}: '{key}' is given twice"));
        }
    }
    let refused = |error: QmpError| format!("{option} {text}: {}", error.desc);
    command.check(&arguments).map_err(refused)?;
    match machine_request(command, &arguments).map_err(refused)? {
        Some(
            request @ (MachineRequest::BlockdevAdd(_)
            | MachineRequest::ObjectAdd(_)
            | MachineRequest::DeviceAdd(
                DeviceAdd::VirtioBlk { .. } | DeviceAdd::Core { .. } | DeviceAdd::Dimm { .. },
            )),
        ) => Ok(request),
        _ => Err(format!(
            "{option} {text}: only disks, cores, memory backends and DIMMs are plugged from the command line"
        )),
    }
}

/// The longest path Linux opens.
const MAX_PATH: usize = 4095;

/// object-del: the backend's id.
fn object_del(arguments: &Map<String, Value>) -> String {
    text(arguments, "id").unwrap_or_default().to_string()
}

/// The device-process kind QMP parameter `process` names.
/// x-upgrade-device-process: a platform process by kind, or (`"process":
/// "block"`) the block process of the disk `id`.
fn upgrade(arguments: &Map<String, Value>) -> Result<MachineRequest, QmpError> {
    let program = text(arguments, "path").unwrap_or_default().into();
    let id = text(arguments, "id");
    if text(arguments, "process") == Some("block") {
        let id = id.ok_or_else(|| {
            QmpError::generic("Parameter 'id' is missing: the block process of which disk")
        })?;
        return Ok(MachineRequest::UpgradeBlock {
            id: id.to_string(),
            program,
        });
    }
    if id.is_some() {
        return Err(QmpError::generic(
            "Parameter 'id' names a disk: it goes with \"process\": \"block\" only",
        ));
    }
    Ok(MachineRequest::Upgrade {
        process: process_kind(arguments)?,
        program,
    })
}

fn process_kind(arguments: &Map<String, Value>) -> Result<ProcessKind, QmpError> {
    let process = text(arguments, "process").unwrap_or_default();
    ProcessKind::ALL
        .into_iter()
        .find(|k| k.name() == process)
        .ok_or_else(|| {
            QmpError::generic(format!(
                "Parameter 'process' expects rtas-server, hotplug-controller or event-log, not '{process}'"
            ))
        })
}

/// x-inject-fault: a fault now (`fault`), or armed at a point (`point`,
/// `action`, and the `request` it waits for, if any). A build without
/// fault injection refuses it here: its device processes commit none.
fn inject_fault(arguments: &Map<String, Value>) -> Result<MachineRequest, QmpError> {
    use ipc_proto::control::{ArmedFault, Fault, FaultAction, FaultPoint, MAX_FAULT_REQUEST_NAME};
    fault_injection_built("x-inject-fault")?;
    let process = process_kind(arguments)?;
    let fault = match (
        text(arguments, "fault"),
        text(arguments, "point"),
        text(arguments, "action"),
    ) {
        (Some(name), None, None) => FaultInjection::Now(named(&Fault::ALL, "fault", name)?),
        (None, Some(point), Some(action)) => {
            let request = text(arguments, "request").map(str::to_string);
            if request
                .as_ref()
                .is_some_and(|r| r.len() > MAX_FAULT_REQUEST_NAME)
            {
                return Err(QmpError::generic("Parameter 'request' is too long"));
            }
            // A misspelt name would be armed and never fire: a test that
            // relies on it would pass without its fault.
            if let Some(name) = &request {
                let mut known: Vec<&str> = process
                    .links()
                    .iter()
                    .flat_map(|link| ipc_proto::link::request_names(*link).iter().copied())
                    .collect();
                known.sort_unstable();
                known.dedup();
                if !known.contains(&name.as_str()) {
                    return Err(QmpError::generic(format!(
                        "Parameter 'request': {} neither takes nor sends a request '{name}' (one of: {})",
                        process.name(),
                        known.join(", ")
                    )));
                }
            }
            FaultInjection::Armed(ArmedFault {
                point: named(&FaultPoint::ALL, "point", point)?,
                action: named(&FaultAction::ALL, "action", action)?,
                request,
            })
        }
        _ => {
            return Err(QmpError::generic(
                "x-inject-fault takes either 'fault', or 'point' and 'action' (and 'request')",
            ))
        }
    };
    Ok(MachineRequest::InjectFault { process, fault })
}

/// Refuses `command` in a build without fault injection.
fn fault_injection_built(command: &str) -> Result<(), QmpError> {
    match cfg!(feature = "fault-injection") {
        true => Ok(()),
        false => Err(QmpError::generic(format!(
            "{command}: this build has no fault injection (build with --features fault-injection)"
        ))),
    }
}

/// The value named `name` among `all` (QMP parameter `parameter`).
fn named<T: Copy>(all: &[(&str, T)], parameter: &str, name: &str) -> Result<T, QmpError> {
    all.iter()
        .find(|(n, _)| *n == name)
        .map(|(_, value)| *value)
        .ok_or_else(|| {
            let names: Vec<&str> = all.iter().map(|(n, _)| *n).collect();
            QmpError::generic(format!(
                "Parameter '{parameter}' expects one of {}, not '{name}'",
                names.join(", ")
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(value: Value) -> Map<String, Value> {
        value.as_object().expect("an object").clone()
    }

    fn error(result: Result<impl std::fmt::Debug, QmpError>) -> String {
        result.expect_err("an error").desc
    }

    #[test]
    fn a_block_process_is_upgraded_by_its_disks_id() {
        assert_eq!(
            machine_request(
                Command::XUpgradeDeviceProcess,
                &args(json!({"process": "block", "id": "vd0", "path": "/opt/pv/papervisor-block"}))
            ),
            Ok(Some(MachineRequest::UpgradeBlock {
                id: "vd0".into(),
                program: std::path::PathBuf::from("/opt/pv/papervisor-block"),
            }))
        );
        let missing = machine_request(
            Command::XUpgradeDeviceProcess,
            &args(json!({"process": "block", "path": "/x"})),
        );
        assert!(missing.unwrap_err().desc.contains("'id'"));
        let stray = machine_request(
            Command::XUpgradeDeviceProcess,
            &args(json!({"process": "event-log", "id": "vd0", "path": "/x"})),
        );
        assert!(stray.unwrap_err().desc.contains("block"));
    }

    #[test]
    fn chardev_add_takes_a_unix_client_socket_as_qemu_spells_it() {
        let socket =
            |data: Value| args(json!({"id": "c0", "backend": {"type": "socket", "data": data}}));
        let unix = json!({"type": "unix", "data": {"path": "/run/b.sock"}});
        assert_eq!(
            chardev_add(&socket(json!({"addr": unix, "server": false}))).unwrap(),
            ChardevAdd {
                id: "c0".into(),
                path: "/run/b.sock".into(),
                reconnect_ms: 0
            }
        );
        assert!(
            error(chardev_add(&socket(json!({"addr": unix, "server": true})))).contains("client")
        );
        assert_eq!(
            chardev_add(&socket(json!({"addr": unix, "reconnect": 2})))
                .unwrap()
                .reconnect_ms,
            2000
        );
        assert_eq!(
            chardev_add(&socket(
                json!({"addr": unix, "reconnect": 1, "reconnect-ms": 5})
            ))
            .unwrap()
            .reconnect_ms,
            5
        );
        assert!(error(chardev_add(&socket(
            json!({"addr": unix, "reconnect": "x"})
        )))
        .contains("unsigned"));
        let inet = json!({"type": "inet", "data": {"host": "h", "port": "1"}});
        assert!(error(chardev_add(&socket(json!({"addr": inet})))).contains("'unix'"));
        let long = json!({"type": "unix", "data": {"path": "/".repeat(200)}});
        assert!(error(chardev_add(&socket(json!({"addr": long})))).contains("socket path"));
        assert!(error(chardev_add(&args(
            json!({"id": "c0", "backend": {"type": "pty"}})
        )))
        .contains("'socket'"));
        assert!(
            error(chardev_add(&args(json!({"id": "c 0", "backend": {}})))).contains("identifier")
        );
        assert_eq!(
            device_add(&args(
                json!({"driver": "vhost-user-blk-pci", "id": "vd0", "chardev": "c0"})
            ))
            .unwrap(),
            DeviceAdd::VhostUserBlk {
                id: "vd0".into(),
                chardev: "c0".into(),
                slot: None
            }
        );
        assert!(error(device_add(&args(
            json!({"driver": "vhost-user-blk-pci", "id": "vd0", "drive": "d"})
        )))
        .contains("not found"));
    }

    #[test]
    fn device_add_parses_cores_and_dimms_and_names_what_is_wrong() {
        assert_eq!(
            device_add(&args(
                json!({"driver": CORE_DRIVER, "core-id": 2, "id": "c"})
            ))
            .unwrap(),
            DeviceAdd::Core {
                core_id: 2,
                id: Some("c".into())
            }
        );
        assert_eq!(
            device_add(&args(
                json!({"driver": "pc-dimm", "id": "d", "memdev": "m", "addr": 4096})
            ))
            .unwrap(),
            DeviceAdd::Dimm {
                id: "d".into(),
                memdev: "m".into(),
                addr: Some(4096),
                slot: None,
            }
        );
        // As libvirt sends it: node and slot; and QEMU's optional id.
        assert_eq!(
            device_add(&args(
                json!({"driver": "pc-dimm", "node": 0, "memdev": "m", "id": "dimm0", "slot": 3})
            ))
            .unwrap(),
            DeviceAdd::Dimm {
                id: "dimm0".into(),
                memdev: "m".into(),
                addr: None,
                slot: Some(3),
            }
        );
        let DeviceAdd::Dimm { id, .. } =
            device_add(&args(json!({"driver": "pc-dimm", "memdev": "m"}))).unwrap()
        else {
            panic!("not a DIMM")
        };
        assert!(crate::dimms::is_anonymous(&id) && !valid_id(&id), "{id}");
        assert!(error(device_add(&args(
            json!({"driver": "pc-dimm", "node": 1, "memdev": "m"})
        )))
        .contains("one NUMA node"));
        assert!(error(device_add(&args(
            json!({"driver": "pc-dimm", "slot": -2, "memdev": "m"})
        )))
        .contains("slot"));
        assert!(error(device_add(&args(
            json!({"driver": CORE_DRIVER, "core-id": 1, "node-id": 2})
        )))
        .contains("one NUMA node"));
        assert!(device_add(&args(
            json!({"driver": CORE_DRIVER, "core-id": 1, "node-id": 0})
        ))
        .is_ok());
        assert!(error(device_add(&args(json!({"driver": "virtio-net"})))).contains("not a valid"));
        assert!(error(device_add(&args(json!({"driver": CORE_DRIVER}))))
            .contains("'core-id' is missing"));
        assert!(error(device_add(&args(
            json!({"driver": CORE_DRIVER, "core-id": 1, "x": 1})
        )))
        .contains("Property 'host-spapr-cpu-core.x' not found"));
        assert!(error(device_add(&args(
            json!({"driver": "pc-dimm", "id": "a b", "memdev": "m"})
        )))
        .contains("expects an identifier"));
        assert!(error(device_add(&args(
            json!({"driver": "pc-dimm", "id": "d", "memdev": "m", "addr": -1})
        )))
        .contains("unsigned"));
    }

    #[test]
    fn object_add_takes_memory_backends_with_an_identifier() {
        let add = json!({"qom-type": "memory-backend-memfd", "id": "m", "size": 268435456});
        assert_eq!(
            object_add(&args(add)).unwrap(),
            BackendAdd {
                qom_type: "memory-backend-memfd".into(),
                id: "m".into(),
                size: 1 << 28,
                prealloc: false,
                share: false,
            }
        );
        // QEMU's older form, which libvirt sends; and its members.
        let wrapped = json!({"qom-type": "memory-backend-ram", "id": "m",
            "props": {"size": 268435456, "prealloc": true, "share": true, "policy": "default"}});
        let backend = object_add(&args(wrapped)).unwrap();
        assert!(backend.prealloc && backend.share && backend.size == 1 << 28);
        let twice =
            json!({"qom-type": "memory-backend-ram", "id": "m", "size": 1, "props": {"size": 2}});
        assert!(error(object_add(&args(twice))).contains("given twice"));
        let unknown = json!({"qom-type": "memory-backend-ram", "id": "m", "props": {"size": 2, "mem-path": "/x"}});
        assert!(error(object_add(&args(unknown))).contains("'mem-path' is unexpected"));
        let bind = json!({"qom-type": "memory-backend-ram", "id": "m", "size": 1, "policy": "bind", "host-nodes": [1]});
        assert!(error(object_add(&args(bind))).contains("NUMA"));
        let nodes =
            json!({"qom-type": "memory-backend-ram", "id": "m", "size": 1, "host-nodes": [0]});
        assert!(error(object_add(&args(nodes))).contains("host NUMA"));
        assert!(error(object_add(&args(
            json!({"qom-type": "memory-backend-ram", "id": "m"})
        )))
        .contains("'size' is missing"));
        assert!(error(object_add(&args(
            json!({"qom-type": "memory-backend-file", "id": "m"})
        )))
        .contains("invalid object type"));
        assert!(error(object_add(&args(
            json!({"qom-type": "memory-backend-ram", "id": ""})
        )))
        .contains("expects an identifier"));
        assert!(error(device_del(&args(json!({"id": 3})))).contains("expects a string"));
    }

    #[test]
    fn machine_commands_become_typed_requests() {
        use std::path::PathBuf;
        let none = Map::new();
        assert_eq!(
            machine_request(Command::Stop, &none),
            Ok(Some(MachineRequest::Pause(true)))
        );
        assert_eq!(
            machine_request(
                Command::XUpgradeDeviceProcess,
                &args(json!({"process": "event-log", "path": "/opt/pv/papervisor-eventlog"}))
            ),
            Ok(Some(MachineRequest::Upgrade {
                process: ProcessKind::EventLog,
                program: PathBuf::from("/opt/pv/papervisor-eventlog"),
            }))
        );
        assert_eq!(
            machine_request(
                Command::XRestartDeviceProcess,
                &args(json!({"process": "rtas-server"}))
            ),
            Ok(Some(MachineRequest::Restart(ProcessKind::RtasServer)))
        );
        assert!(error(machine_request(
            Command::XRestartDeviceProcess,
            &args(json!({"process": "core"}))
        ))
        .contains("expects rtas-server, hotplug-controller or event-log, not 'core'"));
    }

    #[test]
    fn faults_are_parsed_whole_or_refused() {
        use ipc_proto::control::{ArmedFault, Fault, FaultAction, FaultPoint};
        let inject = |arguments| machine_request(Command::XInjectFault, &args(arguments));
        if !cfg!(feature = "fault-injection") {
            assert!(
                error(inject(json!({"process": "event-log", "fault": "panic"})))
                    .contains("this build has no fault injection")
            );
            return;
        }
        assert_eq!(
            inject(json!({"process": "event-log", "fault": "panic"})),
            Ok(Some(MachineRequest::InjectFault {
                process: ProcessKind::EventLog,
                fault: FaultInjection::Now(Fault::Panic),
            }))
        );
        assert_eq!(
            inject(json!({"process": "rtas-server", "point": "core-sending",
                          "action": "close-link", "request": "Call"})),
            Ok(Some(MachineRequest::InjectFault {
                process: ProcessKind::RtasServer,
                fault: FaultInjection::Armed(ArmedFault {
                    point: FaultPoint::CoreSending,
                    action: FaultAction::CloseLink,
                    request: Some("Call".into()),
                }),
            }))
        );
        assert!(error(inject(json!({"process": "event-log"}))).contains("takes either"));
        assert!(error(inject(
            json!({"process": "event-log", "fault": "panic", "point": "x"})
        ))
        .contains("takes either"));
        assert!(
            error(inject(json!({"process": "event-log", "fault": "boom"})))
                .contains("Parameter 'fault' expects one of")
        );
        let long = "x".repeat(ipc_proto::control::MAX_FAULT_REQUEST_NAME + 1);
        assert!(error(inject(
            json!({"process": "event-log", "point": "core-sending",
                                    "action": "delay", "request": long})
        ))
        .contains("too long"));
        let misspelt = error(inject(
            json!({"process": "rtas-server", "point": "received",
                                           "action": "crash", "request": "SetIndicatr"}),
        ));
        assert!(
            misspelt.contains("'SetIndicatr'") && misspelt.contains("SetIndicator"),
            "{misspelt}"
        );
        // A name of another process's links is not this one's.
        assert!(
            error(inject(json!({"process": "event-log", "point": "received",
                                    "action": "crash", "request": "Call"})))
            .contains("one of")
        );
    }

    #[test]
    fn cold_plugs_on_the_command_line_are_checked_as_their_qmp_commands() {
        let node = command_line_request(
            "--blockdev",
            "driver=file,node-name=disk0,filename=/images/a,,b.raw,read-only=on",
        )
        .unwrap();
        assert_eq!(
            node,
            MachineRequest::BlockdevAdd(BlockdevAdd {
                node_name: "disk0".into(),
                filename: "/images/a,b.raw".into(),
                read_only: true,
                over: None,
                auto_read_only: false,
            })
        );
        assert_eq!(
            command_line_request("--blockdev", "driver=raw,node-name=fmt,file=disk0"),
            Ok(MachineRequest::BlockdevAdd(BlockdevAdd {
                node_name: "fmt".into(),
                filename: Default::default(),
                read_only: false,
                over: Some("disk0".into()),
                auto_read_only: false,
            }))
        );
        assert!(
            command_line_request("--blockdev", "driver=raw,node-name=fmt,filename=/x")
                .unwrap_err()
                .contains("unexpected")
        );
        assert!(
            command_line_request("--blockdev", "driver=qcow2,node-name=q,file=f")
                .unwrap_err()
                .contains("'qcow2'")
        );
        let disk =
            command_line_request("--device", "virtio-blk-pci,id=vd0,drive=disk0,addr=3").unwrap();
        assert_eq!(
            disk,
            MachineRequest::DeviceAdd(DeviceAdd::VirtioBlk {
                id: "vd0".into(),
                drive: "disk0".into(),
                slot: Some(3),
            })
        );
        let refused = |option, text| command_line_request(option, text).unwrap_err();
        assert!(refused("--blockdev", "driver=file,node-name=d").contains("'filename' is missing"));
        assert!(refused(
            "--blockdev",
            "driver=file,node-name=d,filename=/x,read-only=maybe"
        )
        .contains("expected on or off"));
        assert!(refused("--device", "virtio-blk-pci,id=vd0,drive").contains("not key=value"));
        assert!(refused("--device", "virtio-blk-pci,id=a,id=b,drive=d").contains("twice"));
        assert!(
            refused("--device", "virtio-blk-pci,id=vd0,drive=d,addr=3.1").contains("function 1")
        );
        assert!(refused("--blockdev", "driver=file").contains("'node-name' is missing"));
        // Cores, backends and DIMMs too, their numbers numbers.
        assert_eq!(
            command_line_request("--device", "host-spapr-cpu-core,core-id=1,id=vcpu1"),
            Ok(MachineRequest::DeviceAdd(DeviceAdd::Core {
                core_id: 1,
                id: Some("vcpu1".into())
            }))
        );
        assert_eq!(
            command_line_request(
                "--object",
                "qom-type=memory-backend-ram,id=m0,size=268435456,share=off"
            ),
            Ok(MachineRequest::ObjectAdd(BackendAdd {
                qom_type: "memory-backend-ram".into(),
                id: "m0".into(),
                size: 1 << 28,
                prealloc: false,
                share: false,
            }))
        );
        assert!(matches!(
            command_line_request("--device", "pc-dimm,id=d,memdev=m0,slot=1,node=0"),
            Ok(MachineRequest::DeviceAdd(DeviceAdd::Dimm {
                slot: Some(1),
                ..
            }))
        ));
        assert!(
            refused("--object", "qom-type=memory-backend-ram,id=m,size=big")
                .contains("expected a number")
        );
        assert!(refused("--device", "host-spapr-cpu-core,core-id=x").contains("expected a number"));
    }
}
