//! Every QMP command and event Papervisor implements, defined once: the
//! name, the arguments (checked here before anything runs: unknown ones
//! refused, required ones present, types right) and the event members. From
//! the same definitions come `query-commands` and `query-qmp-schema` (QEMU's
//! `SchemaInfo` shape), so generic clients can discover what is here.

use crate::request::QmpError;
use serde_json::{json, Map, Value};

/// An argument's (or a member's) JSON type, as QEMU's schema names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgType {
    /// A string, one of the values of an enumeration of [`ENUMS`].
    Enum(&'static str),
    /// An object of a type of [`TYPES`].
    Object(&'static str),
    /// A list of objects of a type of [`TYPES`].
    ObjectList(&'static str),
    /// A list of integers.
    IntList,
    /// A string.
    Str,
    /// An integer.
    Int,
    /// A boolean.
    Bool,
    /// A list of strings.
    StrList,
    /// Any value (checked where it is parsed).
    Any,
}

impl ArgType {
    fn schema_name(self) -> String {
        match self {
            ArgType::Enum(name) | ArgType::Object(name) => name.into(),
            ArgType::ObjectList(name) => format!("[{name}]"),
            ArgType::IntList => "[int]".into(),
            other => other.builtin_name().into(),
        }
    }

    const fn builtin_name(self) -> &'static str {
        match self {
            ArgType::Enum(_) | ArgType::Object(_) | ArgType::ObjectList(_) | ArgType::IntList => {
                "any"
            }
            ArgType::Str => "str",
            ArgType::Int => "int",
            ArgType::Bool => "bool",
            ArgType::StrList => "[str]",
            ArgType::Any => "any",
        }
    }

    fn accepts(self, value: &Value) -> bool {
        match self {
            ArgType::Str => value.is_string(),
            ArgType::Int => value.is_i64() || value.is_u64(),
            ArgType::Bool => value.is_boolean(),
            ArgType::StrList => value
                .as_array()
                .is_some_and(|items| items.iter().all(Value::is_string)),
            // Which value, the command's parser says (with the values).
            ArgType::Enum(_) => value.is_string(),
            ArgType::Object(_) => value.is_object(),
            ArgType::ObjectList(_) => value
                .as_array()
                .is_some_and(|items| items.iter().all(Value::is_object)),
            ArgType::IntList => value
                .as_array()
                .is_some_and(|items| items.iter().all(|i| i.is_i64() || i.is_u64())),
            ArgType::Any => true,
        }
    }

    fn described(self) -> &'static str {
        match self {
            ArgType::Str => "a string",
            ArgType::Int => "an integer",
            ArgType::Bool => "a boolean",
            ArgType::StrList => "a list of strings",
            ArgType::Enum(_) => "a string",
            ArgType::Object(_) => "an object",
            ArgType::ObjectList(_) => "a list of objects",
            ArgType::IntList => "a list of integers",
            ArgType::Any => "a value",
        }
    }
}

/// One argument or event member.
#[derive(Clone, Copy, Debug)]
pub struct Arg {
    /// Its name.
    pub name: &'static str,
    /// Its type.
    pub ty: ArgType,
    /// Whether it may be left out.
    pub optional: bool,
}

const fn required(name: &'static str, ty: ArgType) -> Arg {
    Arg {
        name,
        ty,
        optional: false,
    }
}

const fn optional(name: &'static str, ty: ArgType) -> Arg {
    Arg {
        name,
        ty,
        optional: true,
    }
}

/// What a command returns, as its schema entry's `ret-type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Returns {
    /// `{}`.
    Nothing,
    /// An object of a type of [`TYPES`].
    Object(&'static str),
    /// A list of objects of a type of [`TYPES`].
    List(&'static str),
    /// A string (the human monitor's text).
    Text,
    /// Any value: the `x-` queries, whose shape is Papervisor's own and
    /// documented where they are made.
    Any,
}

impl Returns {
    fn schema_name(self) -> String {
        match self {
            Returns::Nothing => EMPTY.into(),
            Returns::Object(name) => name.into(),
            Returns::List(name) => format!("[{name}]"),
            Returns::Text => "str".into(),
            Returns::Any => "any".into(),
        }
    }
}

/// The empty object type: what a command that returns `{}` returns.
const EMPTY: &str = "q_empty";

macro_rules! commands {
    ($($variant:ident = $name:literal, args: [$($arg:expr),*], returns: $returns:expr;)*) => {
        /// The commands, each once.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Command {
            $(#[doc = concat!("`", $name, "`.")] $variant,)*
        }

        impl Command {
            /// Every command the dispatcher accepts.
            pub const ALL: &'static [Command] = &[$(Command::$variant,)*];

            /// Its QMP name.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Command::$variant => $name,)*
                }
            }

            /// What it returns.
            pub const fn returns(self) -> Returns {
                match self {
                    $(Command::$variant => $returns,)*
                }
            }

            /// Its arguments.
            pub fn args(self) -> &'static [Arg] {
                match self {
                    $(Command::$variant => {
                        const ARGS: &[Arg] = &[$($arg),*];
                        ARGS
                    })*
                }
            }
        }
    };
}

commands! {
    QmpCapabilities = "qmp_capabilities", args: [optional("enable", ArgType::StrList)], returns: Returns::Nothing;
    QueryStatus = "query-status", args: [], returns: Returns::Object("StatusInfo");
    QueryVersion = "query-version", args: [], returns: Returns::Object("VersionInfo");
    QueryName = "query-name", args: [], returns: Returns::Object("NameInfo");
    QueryUuid = "query-uuid", args: [], returns: Returns::Object("UuidInfo");
    QueryKvm = "query-kvm", args: [], returns: Returns::Object("KvmInfo");
    QueryTarget = "query-target", args: [], returns: Returns::Object("TargetInfo");
    QueryMachines = "query-machines", args: [optional("compat-props", ArgType::Bool)], returns: Returns::List("MachineInfo");
    QueryCommands = "query-commands", args: [], returns: Returns::List("CommandInfo");
    QueryEvents = "query-events", args: [], returns: Returns::List("EventInfo");
    QueryQmpSchema = "query-qmp-schema", args: [], returns: Returns::List("SchemaInfo");
    QomListTypes = "qom-list-types", args: [
        optional("implements", ArgType::Str),
        optional("abstract", ArgType::Bool)
    ], returns: Returns::List("ObjectTypeInfo");
    DeviceListProperties = "device-list-properties", args: [required("typename", ArgType::Str)], returns: Returns::List("ObjectPropertyInfo");
    QomListProperties = "qom-list-properties", args: [required("typename", ArgType::Str)], returns: Returns::List("ObjectPropertyInfo");
    QomList = "qom-list", args: [required("path", ArgType::Str)], returns: Returns::List("ObjectPropertyInfo");
    QueryCommandLineOptions = "query-command-line-options", args: [optional("option", ArgType::Str)], returns: Returns::List("CommandLineOptionInfo");
    QueryCpuDefinitions = "query-cpu-definitions", args: [], returns: Returns::List("CpuDefinitionInfo");
    QueryTpmModels = "query-tpm-models", args: [], returns: Returns::List("TpmModel");
    QueryTpmTypes = "query-tpm-types", args: [], returns: Returns::List("TpmType");
    QueryMigrateCapabilities = "query-migrate-capabilities", args: [], returns: Returns::List("MigrationCapabilityStatus");
    MigrateSetCapabilities = "migrate-set-capabilities", args: [
        required("capabilities", ArgType::ObjectList("MigrationCapabilityStatus"))
    ], returns: Returns::Nothing;
    HumanMonitorCommand = "human-monitor-command", args: [
        required("command-line", ArgType::Str),
        optional("cpu-index", ArgType::Int)
    ], returns: Returns::Text;
    QueryStats = "query-stats", args: [
        required("target", ArgType::Enum("StatsTarget")),
        optional("providers", ArgType::Any),
        optional("vcpus", ArgType::StrList)
    ], returns: Returns::List("StatsResult");
    QueryStatsSchemas = "query-stats-schemas", args: [
        optional("provider", ArgType::Enum("StatsProvider"))
    ], returns: Returns::List("StatsSchema");
    QueryJobs = "query-jobs", args: [], returns: Returns::List("JobInfo");
    QueryIothreads = "query-iothreads", args: [], returns: Returns::List("IOThreadInfo");
    SystemReset = "system_reset", args: [], returns: Returns::Nothing;
    SystemPowerdown = "system_powerdown", args: [], returns: Returns::Nothing;
    Quit = "quit", args: [], returns: Returns::Nothing;
    Stop = "stop", args: [], returns: Returns::Nothing;
    Cont = "cont", args: [], returns: Returns::Nothing;
    QueryCpusFast = "query-cpus-fast", args: [], returns: Returns::List("CpuInfoFast");
    QueryHotpluggableCpus = "query-hotpluggable-cpus", args: [], returns: Returns::List("HotpluggableCPU");
    DeviceAdd = "device_add", args: [
        required("driver", ArgType::Str),
        optional("id", ArgType::Str),
        optional("core-id", ArgType::Int),
        optional("node-id", ArgType::Int),
        optional("memdev", ArgType::Str),
        optional("node", ArgType::Int),
        optional("slot", ArgType::Int),
        optional("addr", ArgType::Any),
        optional("drive", ArgType::Str),
        optional("chardev", ArgType::Str),
        optional("bus", ArgType::Str)
    ], returns: Returns::Nothing;
    ObjectAdd = "object-add", args: [
        required("qom-type", ArgType::Enum("MemoryBackendType")),
        required("id", ArgType::Str),
        optional("props", ArgType::Any),
        optional("size", ArgType::Int),
        optional("share", ArgType::Bool),
        optional("prealloc", ArgType::Bool),
        optional("prealloc-threads", ArgType::Int),
        optional("merge", ArgType::Bool),
        optional("dump", ArgType::Bool),
        optional("reserve", ArgType::Bool),
        optional("policy", ArgType::Str),
        optional("host-nodes", ArgType::IntList),
        optional("x-use-canonical-path-for-ramblock-id", ArgType::Bool)
    ], returns: Returns::Nothing;
    ObjectDel = "object-del", args: [required("id", ArgType::Str)], returns: Returns::Nothing;
    QueryMemdev = "query-memdev", args: [], returns: Returns::List("Memdev");
    BlockdevAdd = "blockdev-add", args: [
        required("driver", ArgType::Enum("BlockdevDriver")),
        required("node-name", ArgType::Str),
        optional("filename", ArgType::Str),
        optional("file", ArgType::Str),
        optional("read-only", ArgType::Bool),
        optional("auto-read-only", ArgType::Bool),
        optional("discard", ArgType::Str)
    ], returns: Returns::Nothing;
    BlockdevDel = "blockdev-del", args: [required("node-name", ArgType::Str)], returns: Returns::Nothing;
    QueryBlock = "query-block", args: [], returns: Returns::List("BlockInfo");
    QueryNamedBlockNodes = "query-named-block-nodes", args: [optional("flat", ArgType::Bool)], returns: Returns::List("BlockDeviceInfo");
    ChardevAdd = "chardev-add", args: [
        required("id", ArgType::Str),
        required("backend", ArgType::Any)
    ], returns: Returns::Object("ChardevReturn");
    ChardevRemove = "chardev-remove", args: [required("id", ArgType::Str)], returns: Returns::Nothing;
    QueryChardev = "query-chardev", args: [], returns: Returns::List("ChardevInfo");
    QueryPci = "query-pci", args: [], returns: Returns::List("PciInfo");
    QueryMemoryDevices = "query-memory-devices", args: [], returns: Returns::List("MemoryDeviceInfo");
    QueryMemorySizeSummary = "query-memory-size-summary", args: [], returns: Returns::Object("MemoryInfo");
    DeviceDel = "device_del", args: [required("id", ArgType::Str)], returns: Returns::Nothing;
    XQueryDrcs = "x-query-drcs", args: [], returns: Returns::Any;
    XQueryEventLog = "x-query-event-log", args: [], returns: Returns::Any;
    XQueryDeviceProcesses = "x-query-device-processes", args: [], returns: Returns::Any;
    XQueryStartup = "x-query-startup", args: [], returns: Returns::Any;
    XQueryTrace = "x-query-trace", args: [
        optional("filter", ArgType::Str),
        optional("last", ArgType::Int)
    ], returns: Returns::Any;
    XRestartDeviceProcess = "x-restart-device-process", args: [required("process", ArgType::Enum("DeviceProcess"))], returns: Returns::Nothing;
    XUpgradeDeviceProcess = "x-upgrade-device-process", args: [
        required("process", ArgType::Enum("DeviceProcess")),
        required("path", ArgType::Str),
        optional("id", ArgType::Str)
    ], returns: Returns::Nothing;
    XQueryFaults = "x-query-faults", args: [], returns: Returns::Any;
    XClearFaults = "x-clear-faults", args: [], returns: Returns::Nothing;
    XInjectFault = "x-inject-fault", args: [
        required("process", ArgType::Enum("DeviceProcess")),
        optional("fault", ArgType::Enum("Fault")),
        optional("point", ArgType::Enum("FaultPoint")),
        optional("action", ArgType::Enum("FaultAction")),
        optional("request", ArgType::Str)
    ], returns: Returns::Any;
}

use ArgType::{Bool, Int, IntList, Str, StrList};

/// The enumerations, by name: what a string argument or member may be.
pub const ENUMS: &[&str] = &[
    "MemoryBackendType",
    "BlockdevDriver",
    "DeviceProcess",
    "Fault",
    "FaultPoint",
    "FaultAction",
    "RunState",
    "StatsTarget",
    "StatsProvider",
];

/// The values of enumeration `name` (of [`ENUMS`]), each from where the
/// parser takes it.
pub fn enum_values(name: &str) -> Vec<&'static str> {
    use ipc_proto::control::{Fault, FaultAction, FaultPoint};
    fn names<T>(all: &[(&'static str, T)]) -> Vec<&'static str> {
        all.iter().map(|(name, _)| *name).collect()
    }
    match name {
        "MemoryBackendType" => crate::dimms::BACKEND_TYPES.to_vec(),
        "BlockdevDriver" => vec![crate::block::nodes::DRIVER, crate::block::nodes::RAW_DRIVER],
        "DeviceProcess" => ipc_proto::ProcessKind::ALL
            .iter()
            .map(|kind| kind.name())
            .chain(["block"])
            .collect(),
        "Fault" => names(&Fault::ALL),
        "FaultPoint" => names(&FaultPoint::ALL),
        "FaultAction" => names(&FaultAction::ALL),
        "StatsTarget" => vec!["vm", "vcpu"],
        "StatsProvider" => vec![crate::stats::PROVIDER],
        "RunState" => crate::vcpu::RunStatus::ALL
            .iter()
            .map(|status| status.qmp_name())
            .collect(),
        _ => Vec::new(),
    }
}

/// The object types commands return, with their members, as QEMU's
/// schema defines them (the members this machine fills in).
pub const TYPES: &[(&str, &[Arg])] = &[
    (EMPTY, &[]),
    (
        "StatusInfo",
        &[
            required("running", Bool),
            required("singlestep", Bool),
            required("status", ArgType::Enum("RunState")),
        ],
    ),
    (
        "VersionTriple",
        &[
            required("major", Int),
            required("minor", Int),
            required("micro", Int),
        ],
    ),
    (
        "VersionInfo",
        &[
            required("qemu", ArgType::Object("VersionTriple")),
            required("package", Str),
        ],
    ),
    ("NameInfo", &[optional("name", Str)]),
    ("UuidInfo", &[required("UUID", Str)]),
    (
        "KvmInfo",
        &[required("enabled", Bool), required("present", Bool)],
    ),
    ("TargetInfo", &[required("arch", Str)]),
    (
        "MachineInfo",
        &[
            required("name", Str),
            optional("alias", Str),
            optional("is-default", Bool),
            required("cpu-max", Int),
            required("hotpluggable-cpus", Bool),
            required("numa-mem-supported", Bool),
            required("deprecated", Bool),
            optional("default-cpu-type", Str),
            optional("default-ram-id", Str),
            required("acpi", Bool),
        ],
    ),
    ("CommandInfo", &[required("name", Str)]),
    ("EventInfo", &[required("name", Str)]),
    (
        "SchemaInfo",
        &[required("name", Str), required("meta-type", Str)],
    ),
    (
        "ObjectTypeInfo",
        &[
            required("name", Str),
            optional("abstract", Bool),
            optional("parent", Str),
        ],
    ),
    (
        "ObjectPropertyInfo",
        &[
            required("name", Str),
            required("type", Str),
            optional("description", Str),
            optional("default-value", ArgType::Any),
        ],
    ),
    (
        "CommandLineParameterInfo",
        &[
            required("name", Str),
            required("type", Str),
            optional("help", Str),
        ],
    ),
    (
        "CommandLineOptionInfo",
        &[
            required("option", Str),
            required(
                "parameters",
                ArgType::ObjectList("CommandLineParameterInfo"),
            ),
        ],
    ),
    (
        "CpuDefinitionInfo",
        &[
            required("name", Str),
            optional("migration-safe", Bool),
            required("static", Bool),
            optional("unavailable-features", StrList),
            required("typename", Str),
            required("deprecated", Bool),
        ],
    ),
    ("TpmModel", &[]),
    ("TpmType", &[]),
    (
        "MigrationCapabilityStatus",
        &[required("capability", Str), required("state", Bool)],
    ),
    (
        "JobInfo",
        &[
            required("id", Str),
            required("type", Str),
            required("status", Str),
        ],
    ),
    (
        "IOThreadInfo",
        &[required("id", Str), required("thread-id", Int)],
    ),
    (
        "CpuInstanceProperties",
        &[optional("node-id", Int), optional("core-id", Int)],
    ),
    (
        "CpuInfoFast",
        &[
            required("cpu-index", Int),
            required("qom-path", Str),
            required("thread-id", Int),
            optional("props", ArgType::Object("CpuInstanceProperties")),
            required("target", Str),
        ],
    ),
    (
        "HotpluggableCPU",
        &[
            required("type", Str),
            required("vcpus-count", Int),
            required("props", ArgType::Object("CpuInstanceProperties")),
            optional("qom-path", Str),
        ],
    ),
    (
        "Memdev",
        &[
            optional("id", Str),
            required("size", Int),
            required("merge", Bool),
            required("dump", Bool),
            required("prealloc", Bool),
            required("share", Bool),
            required("host-nodes", IntList),
            required("policy", Str),
        ],
    ),
    (
        "BlockInfo",
        &[
            required("device", Str),
            required("locked", Bool),
            required("removable", Bool),
        ],
    ),
    (
        "BlockDeviceInfo",
        &[
            required("node-name", Str),
            required("file", Str),
            required("ro", Bool),
            required("drv", Str),
        ],
    ),
    (
        "Stats",
        &[required("name", Str), required("value", ArgType::Any)],
    ),
    (
        "StatsResult",
        &[
            required("provider", ArgType::Enum("StatsProvider")),
            optional("qom-path", Str),
            required("stats", ArgType::ObjectList("Stats")),
        ],
    ),
    (
        "StatsSchemaValue",
        &[
            required("name", Str),
            required("type", Str),
            optional("unit", Str),
            optional("base", Int),
            optional("exponent", Int),
        ],
    ),
    (
        "StatsSchema",
        &[
            required("provider", ArgType::Enum("StatsProvider")),
            required("target", ArgType::Enum("StatsTarget")),
            required("stats", ArgType::ObjectList("StatsSchemaValue")),
        ],
    ),
    ("ChardevReturn", &[optional("pty", Str)]),
    (
        "ChardevInfo",
        &[
            required("label", Str),
            required("filename", Str),
            required("frontend-open", Bool),
        ],
    ),
    (
        "PciInfo",
        &[required("bus", Int), required("devices", ArgType::Any)],
    ),
    (
        "MemoryDeviceInfo",
        &[required("type", Str), required("data", ArgType::Any)],
    ),
    (
        "MemoryInfo",
        &[
            required("base-memory", Int),
            optional("plugged-memory", Int),
        ],
    ),
];

/// The events, with their members.
pub const EVENTS: &[(&str, &[Arg])] = &[
    (
        "SHUTDOWN",
        &[
            required("guest", ArgType::Bool),
            required("reason", ArgType::Str),
        ],
    ),
    (
        "RESET",
        &[
            required("guest", ArgType::Bool),
            required("reason", ArgType::Str),
        ],
    ),
    ("STOP", &[]),
    ("POWERDOWN", &[]),
    ("RESUME", &[]),
    (
        "DEVICE_DELETED",
        &[
            optional("device", ArgType::Str),
            required("path", ArgType::Str),
        ],
    ),
    (
        "DEVICE_UNPLUG_GUEST_ERROR",
        &[
            optional("device", ArgType::Str),
            required("path", ArgType::Str),
        ],
    ),
    (
        "X_DEVICE_PROCESS_EXITED",
        &[
            required("process", ArgType::Enum("DeviceProcess")),
            required("pid", ArgType::Int),
            required("reason", ArgType::Str),
            required("restarts", ArgType::Int),
            required("action", ArgType::Str),
        ],
    ),
    (
        "X_DEVICE_PROCESS_RESTARTED",
        &[
            required("process", ArgType::Enum("DeviceProcess")),
            required("pid", ArgType::Int),
            required("restarts", ArgType::Int),
        ],
    ),
    (
        "X_DEVICE_PROCESS_UPGRADED",
        &[
            required("process", ArgType::Enum("DeviceProcess")),
            required("pid", ArgType::Int),
            required("path", ArgType::Str),
        ],
    ),
];

impl Command {
    /// The command called `name`, if any.
    pub fn from_name(name: &str) -> Option<Command> {
        Command::ALL.iter().copied().find(|c| c.name() == name)
    }

    /// Checks `arguments` against the definition. `device_add` takes the
    /// properties of its driver besides its own arguments, as QEMU's does:
    /// it refuses the ones its driver lacks itself.
    pub fn check(self, arguments: &Map<String, Value>) -> Result<(), QmpError> {
        let args = self.args();
        let unknown = arguments
            .keys()
            .find(|k| !args.iter().any(|a| a.name == *k));
        if let (Some(key), false) = (unknown, self == Command::DeviceAdd) {
            return Err(QmpError::generic(format!(
                "Parameter '{key}' is unexpected"
            )));
        }
        for arg in args {
            match arguments.get(arg.name) {
                None if !arg.optional => {
                    return Err(QmpError::generic(format!(
                        "Parameter '{}' is missing",
                        arg.name
                    )))
                }
                Some(value) if !arg.ty.accepts(value) => {
                    return Err(QmpError::generic(format!(
                        "Parameter '{}' expects {}",
                        arg.name,
                        arg.ty.described()
                    )))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// `query-events`.
pub fn query_events() -> Value {
    Value::Array(
        EVENTS
            .iter()
            .map(|(name, _)| json!({"name": name}))
            .collect(),
    )
}

/// `query-commands`.
pub fn query_commands() -> Value {
    Value::Array(
        Command::ALL
            .iter()
            .map(|c| json!({"name": c.name()}))
            .collect(),
    )
}

fn object_type(name: String, members: &[Arg]) -> Value {
    let members: Vec<Value> = members
        .iter()
        .map(|arg| {
            let mut member = json!({"name": arg.name, "type": arg.ty.schema_name()});
            if arg.optional {
                member["default"] = Value::Null;
            }
            member
        })
        .collect();
    json!({"name": name, "meta-type": "object", "members": members})
}

/// `query-qmp-schema`: QEMU's `SchemaInfo` list, for every command and
/// event and the types they use.
pub fn query_qmp_schema() -> Value {
    let mut schema = Vec::new();
    for command in Command::ALL {
        let arg_type = format!("q_obj_{}-arg", command.name());
        let mut entry = json!({
            "name": command.name(),
            "meta-type": "command",
            "arg-type": arg_type,
            "ret-type": command.returns().schema_name(),
            "allow-oob": false,
        });
        // QEMU marks what may change without notice: the x- commands.
        if command.name().starts_with("x-") {
            entry["features"] = json!(["unstable"]);
        }
        schema.push(entry);
        schema.push(object_type(arg_type, command.args()));
    }
    for (name, members) in TYPES {
        schema.push(object_type(name.to_string(), members));
        schema
            .push(json!({"name": format!("[{name}]"), "meta-type": "array", "element-type": name}));
    }
    for (event, members) in EVENTS {
        let arg_type = format!("q_obj_{event}-arg");
        let mut entry = json!({"name": event, "meta-type": "event", "arg-type": arg_type});
        if event.starts_with("X_") {
            entry["features"] = json!(["unstable"]);
        }
        schema.push(entry);
        schema.push(object_type(arg_type, members));
    }
    for name in ENUMS {
        schema.push(json!({"name": name, "meta-type": "enum", "values": enum_values(name)}));
    }
    for (name, json_type) in [
        ("str", "string"),
        ("int", "int"),
        ("bool", "boolean"),
        ("any", "value"),
    ] {
        schema.push(json!({"name": name, "meta-type": "builtin", "json-type": json_type}));
    }
    for element in ["str", "int"] {
        schema.push(
            json!({"name": format!("[{element}]"), "meta-type": "array", "element-type": element}),
        );
    }
    Value::Array(schema)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_round_trip() {
        for command in Command::ALL {
            assert_eq!(Command::from_name(command.name()), Some(*command));
        }
        let mut names: Vec<&str> = Command::ALL.iter().map(|c| c.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Command::ALL.len());
        assert_eq!(Command::from_name("migrate"), None);
    }

    #[test]
    fn arguments_are_checked_against_the_definition() {
        let args = |value: Value| value.as_object().unwrap().clone();
        let add = Command::DeviceAdd;
        assert!(add
            .check(&args(json!({"driver": "x", "core-id": 2, "id": "c"})))
            .is_ok());
        let refused = |value: Value| add.check(&args(value)).unwrap_err().desc;
        assert!(refused(json!({"core-id": 2})).contains("'driver' is missing"));
        assert!(Command::DeviceDel
            .check(&args(json!({"id": "x", "bogus": 1})))
            .unwrap_err()
            .desc
            .contains("'bogus' is unexpected"));
        assert!(refused(json!({"driver": "x", "core-id": "2"})).contains("expects an integer"));
        assert!(Command::QueryStatus.check(&args(json!({"x": 1}))).is_err());
    }

    #[test]
    fn the_schema_names_every_type_it_uses() {
        let schema = query_qmp_schema();
        let entries = schema.as_array().unwrap();
        let names: Vec<&str> = entries
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        for entry in entries {
            for key in ["arg-type", "ret-type", "element-type"] {
                if let Some(ty) = entry[key].as_str() {
                    assert!(names.contains(&ty), "{ty} is not defined");
                }
            }
            for member in entry["members"].as_array().into_iter().flatten() {
                let ty = member["type"].as_str().unwrap();
                assert!(names.contains(&ty), "{ty} is not defined");
            }
        }
        let commands = entries
            .iter()
            .filter(|e| e["meta-type"] == "command")
            .count();
        assert_eq!(commands, Command::ALL.len());
        for name in ENUMS {
            assert!(!enum_values(name).is_empty(), "{name} has no values");
        }
        for entry in entries.iter().filter(|e| e["meta-type"] == "command") {
            let unstable = entry["features"] == json!(["unstable"]);
            let name = entry["name"].as_str().unwrap();
            assert_eq!(unstable, name.starts_with("x-"), "{name}");
        }
    }
}
