//! Every QMP command and event Papervisor implements, defined once: the
//! name, the arguments (checked here before anything runs: unknown ones
//! refused, required ones present, types right) and the event members. From
//! the same definitions come `query-commands` and `query-qmp-schema` (QEMU's
//! `SchemaInfo` shape), so generic clients can discover what is here.

use crate::request::QmpError;
use serde_json::{json, Map, Value};

/// An argument's (or event member's) JSON type, as QEMU's schema names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgType {
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
    const fn schema_name(self) -> &'static str {
        match self {
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
            ArgType::Any => true,
        }
    }

    fn described(self) -> &'static str {
        match self {
            ArgType::Str => "a string",
            ArgType::Int => "an integer",
            ArgType::Bool => "a boolean",
            ArgType::StrList => "a list of strings",
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

macro_rules! commands {
    ($($variant:ident = $name:literal, args: [$($arg:expr),*];)*) => {
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
    QmpCapabilities = "qmp_capabilities", args: [optional("enable", ArgType::StrList)];
    QueryStatus = "query-status", args: [];
    QueryVersion = "query-version", args: [];
    QueryName = "query-name", args: [];
    QueryKvm = "query-kvm", args: [];
    QueryCommands = "query-commands", args: [];
    QueryQmpSchema = "query-qmp-schema", args: [];
    SystemReset = "system_reset", args: [];
    SystemPowerdown = "system_powerdown", args: [];
    Quit = "quit", args: [];
    Stop = "stop", args: [];
    Cont = "cont", args: [];
    QueryCpusFast = "query-cpus-fast", args: [];
    QueryHotpluggableCpus = "query-hotpluggable-cpus", args: [];
    DeviceAdd = "device_add", args: [
        required("driver", ArgType::Str),
        optional("id", ArgType::Str),
        optional("core-id", ArgType::Int),
        optional("memdev", ArgType::Str),
        optional("addr", ArgType::Any),
        optional("drive", ArgType::Str),
        optional("chardev", ArgType::Str),
        optional("bus", ArgType::Str)
    ];
    ObjectAdd = "object-add", args: [
        required("qom-type", ArgType::Str),
        required("id", ArgType::Str),
        required("size", ArgType::Int)
    ];
    ObjectDel = "object-del", args: [required("id", ArgType::Str)];
    BlockdevAdd = "blockdev-add", args: [
        required("driver", ArgType::Str),
        required("node-name", ArgType::Str),
        required("filename", ArgType::Str),
        optional("read-only", ArgType::Bool)
    ];
    BlockdevDel = "blockdev-del", args: [required("node-name", ArgType::Str)];
    QueryBlock = "query-block", args: [];
    ChardevAdd = "chardev-add", args: [
        required("id", ArgType::Str),
        required("backend", ArgType::Any)
    ];
    ChardevRemove = "chardev-remove", args: [required("id", ArgType::Str)];
    QueryChardev = "query-chardev", args: [];
    QueryPci = "query-pci", args: [];
    QueryMemoryDevices = "query-memory-devices", args: [];
    QueryMemorySizeSummary = "query-memory-size-summary", args: [];
    DeviceDel = "device_del", args: [required("id", ArgType::Str)];
    XQueryDrcs = "x-query-drcs", args: [];
    XQueryEventLog = "x-query-event-log", args: [];
    XQueryDeviceProcesses = "x-query-device-processes", args: [];
    XQueryStartup = "x-query-startup", args: [];
    XRestartDeviceProcess = "x-restart-device-process", args: [required("process", ArgType::Str)];
    XUpgradeDeviceProcess = "x-upgrade-device-process", args: [
        required("process", ArgType::Str),
        required("path", ArgType::Str),
        optional("id", ArgType::Str)
    ];
    XInjectFault = "x-inject-fault", args: [
        required("process", ArgType::Str),
        optional("fault", ArgType::Str),
        optional("point", ArgType::Str),
        optional("action", ArgType::Str),
        optional("request", ArgType::Str)
    ];
}

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
            required("process", ArgType::Str),
            required("pid", ArgType::Int),
            required("reason", ArgType::Str),
            required("restarts", ArgType::Int),
            required("action", ArgType::Str),
        ],
    ),
    (
        "X_DEVICE_PROCESS_RESTARTED",
        &[
            required("process", ArgType::Str),
            required("pid", ArgType::Int),
            required("restarts", ArgType::Int),
        ],
    ),
    (
        "X_DEVICE_PROCESS_UPGRADED",
        &[
            required("process", ArgType::Str),
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
        schema.push(json!({
            "name": command.name(),
            "meta-type": "command",
            "arg-type": arg_type,
            "ret-type": "any",
            "allow-oob": false,
        }));
        schema.push(object_type(arg_type, command.args()));
    }
    for (event, members) in EVENTS {
        let arg_type = format!("q_obj_{event}-arg");
        schema.push(json!({"name": event, "meta-type": "event", "arg-type": arg_type}));
        schema.push(object_type(arg_type, members));
    }
    for (name, json_type) in [
        ("str", "string"),
        ("int", "int"),
        ("bool", "boolean"),
        ("any", "value"),
    ] {
        schema.push(json!({"name": name, "meta-type": "builtin", "json-type": json_type}));
    }
    schema.push(json!({"name": "[str]", "meta-type": "array", "element-type": "str"}));
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
        assert_eq!(Command::from_name("human-monitor-command"), None);
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
    }
}
