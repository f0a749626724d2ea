//! What this VMM is, told the way QEMU tells it, for management stacks
//! that probe an emulator before they use it (libvirt runs `-machine none`
//! and asks these): the target, the machine, the QOM types a client may
//! name, their properties, the command-line options. Every answer is
//! fixed at build time and true of every VM; what a running machine holds
//! is answered by the control loop instead.

use crate::config::MAX_VCPUS;
use crate::cores::CORE_DRIVER;
use crate::dimms::{BACKEND_TYPES, DIMM_DRIVER};
use crate::request::QmpError;
use serde_json::{json, Map, Value};

/// The one machine type, and QEMU's name of the empty one that only
/// answers QMP.
pub const MACHINE: &str = "pseries";
/// `-machine none`.
pub const NO_MACHINE: &str = "none";
/// The console device (the PAPR vty).
pub const VTY_DRIVER: &str = "spapr-vty";
/// The CPU model: the host's, whatever `-cpu` names.
pub const CPU_MODEL: &str = "host";

/// A QOM type: its name, its parent, and its properties (name, type).
struct QomType {
    name: &'static str,
    parent: &'static str,
    is_abstract: bool,
    properties: &'static [(&'static str, &'static str)],
}

const MEMORY_BACKEND_PROPERTIES: &[(&str, &str)] = &[
    ("size", "int"),
    ("share", "bool"),
    ("prealloc", "bool"),
    ("prealloc-threads", "uint32"),
    ("merge", "bool"),
    ("dump", "bool"),
    ("reserve", "bool"),
    ("policy", "HostMemPolicy"),
    ("host-nodes", "int"),
    ("x-use-canonical-path-for-ramblock-id", "bool"),
];

const TYPES: &[QomType] = &[
    QomType {
        name: "device",
        parent: "object",
        is_abstract: true,
        properties: &[],
    },
    QomType {
        name: "cpu-core",
        parent: "device",
        is_abstract: true,
        properties: &[("core-id", "int"), ("nr-threads", "int")],
    },
    QomType {
        name: "spapr-cpu-core",
        parent: "cpu-core",
        is_abstract: true,
        properties: &[("core-id", "int"), ("node-id", "int32")],
    },
    QomType {
        name: CORE_DRIVER,
        parent: "spapr-cpu-core",
        is_abstract: false,
        properties: &[("core-id", "int"), ("node-id", "int32")],
    },
    QomType {
        name: DIMM_DRIVER,
        parent: "device",
        is_abstract: false,
        properties: &[
            ("addr", "uint64"),
            ("node", "uint32"),
            ("slot", "int32"),
            ("size", "uint64"),
            ("memdev", "link<memory-backend>"),
        ],
    },
    QomType {
        name: "memory-backend",
        parent: "object",
        is_abstract: true,
        properties: MEMORY_BACKEND_PROPERTIES,
    },
    QomType {
        name: BACKEND_TYPES[0],
        parent: "memory-backend",
        is_abstract: false,
        properties: MEMORY_BACKEND_PROPERTIES,
    },
    QomType {
        name: BACKEND_TYPES[1],
        parent: "memory-backend",
        is_abstract: false,
        properties: MEMORY_BACKEND_PROPERTIES,
    },
    QomType {
        name: VTY_DRIVER,
        parent: "spapr-vio-device",
        is_abstract: false,
        properties: &[("reg", "uint32"), ("chardev", "str")],
    },
    QomType {
        name: "spapr-vio-device",
        parent: "device",
        is_abstract: true,
        properties: &[("reg", "uint32")],
    },
    QomType {
        name: crate::block::disks::VIRTIO_BLK_DRIVER,
        parent: "virtio-pci",
        is_abstract: false,
        properties: &[("drive", "str"), ("addr", "int32"), ("bus", "str")],
    },
    QomType {
        name: crate::block::disks::VHOST_USER_BLK_DRIVER,
        parent: "virtio-pci",
        is_abstract: false,
        properties: &[("chardev", "str"), ("addr", "int32"), ("bus", "str")],
    },
    // The machine's one PCI host bridge (index 0), built in: device_add
    // of another is refused.
    QomType {
        name: "spapr-pci-host-bridge",
        parent: "pci-host-bridge",
        is_abstract: false,
        properties: &[("index", "uint32")],
    },
    QomType {
        name: "pci-host-bridge",
        parent: "device",
        is_abstract: true,
        properties: &[],
    },
    QomType {
        name: "virtio-pci",
        parent: "pci-device",
        is_abstract: true,
        properties: &[],
    },
    QomType {
        name: "pci-device",
        parent: "device",
        is_abstract: true,
        properties: &[("addr", "int32")],
    },
    QomType {
        name: "pseries-machine",
        parent: "spapr-machine",
        is_abstract: false,
        properties: &[("kernel", "str")],
    },
    // The accelerators `-accel` takes. libvirt offers a domain type only
    // for an accelerator listed here, and a ppc64 guest on another host
    // architecture only with `tcg` (its `kvm` needs the host's own
    // architecture): both run the guest on this host's KVM.
    QomType {
        name: "kvm-accel",
        parent: "accel",
        is_abstract: false,
        properties: &[],
    },
    QomType {
        name: "tcg-accel",
        parent: "accel",
        is_abstract: false,
        properties: &[],
    },
    QomType {
        name: "accel",
        parent: "object",
        is_abstract: true,
        properties: &[],
    },
    QomType {
        name: "none-machine",
        parent: "machine",
        is_abstract: false,
        properties: &[],
    },
    QomType {
        name: "spapr-machine",
        parent: "machine",
        is_abstract: true,
        properties: &[],
    },
    QomType {
        name: "machine",
        parent: "object",
        is_abstract: true,
        properties: &[],
    },
];

/// Classes described (qom-list-properties) but not offered (absent from
/// qom-list-types, refused by object-add): QEMU always has them, and
/// libvirt 9.0 asks their properties unconditionally (it crashes on an
/// error there), then decides by qom-list-types whether to use them.
const DESCRIBED_ONLY: &[QomType] = &[QomType {
    name: "memory-backend-file",
    parent: "memory-backend",
    is_abstract: false,
    properties: MEMORY_BACKEND_PROPERTIES,
}];

fn find_type(name: &str) -> Option<&'static QomType> {
    TYPES.iter().find(|t| t.name == name)
}

/// Whether `name` is `ancestor` or derives from it.
fn implements(name: &str, ancestor: &str) -> bool {
    let mut current = name;
    // The chain is short and acyclic: bounded all the same.
    for _ in 0..TYPES.len() + 1 {
        if current == ancestor {
            return true;
        }
        match find_type(current) {
            Some(ty) => current = ty.parent,
            None => return false,
        }
    }
    false
}

/// `query-target`. The architecture the guest sees is PAPR's; the host's
/// KVM runs it (see the README on what that means for libvirt).
pub fn query_target() -> Value {
    json!({"arch": "ppc64"})
}

/// `query-machines`: `pseries`, with its hot-plug limits, and `none`.
pub fn query_machines() -> Value {
    json!([
        {
            "name": MACHINE,
            "is-default": true,
            "cpu-max": MAX_VCPUS,
            "hotpluggable-cpus": true,
            "numa-mem-supported": false,
            "deprecated": false,
            "acpi": false,
        },
        {
            "name": NO_MACHINE,
            "cpu-max": 1,
            "hotpluggable-cpus": false,
            "numa-mem-supported": false,
            "deprecated": false,
            "acpi": false,
        }
    ])
}

/// `qom-list-types`.
pub fn qom_list_types(arguments: &Map<String, Value>) -> Value {
    let implements_filter = arguments.get("implements").and_then(Value::as_str);
    let with_abstract = arguments
        .get("abstract")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Value::Array(
        TYPES
            .iter()
            .filter(|ty| with_abstract || !ty.is_abstract)
            .filter(|ty| implements_filter.is_none_or(|ancestor| implements(ty.name, ancestor)))
            .map(|ty| {
                let mut info = json!({"name": ty.name, "parent": ty.parent});
                if ty.is_abstract {
                    info["abstract"] = json!(true);
                }
                info
            })
            .collect(),
    )
}

fn properties(ty: &QomType) -> Value {
    Value::Array(
        ty.properties
            .iter()
            .map(|(name, kind)| json!({"name": name, "type": kind}))
            .collect(),
    )
}

/// `device-list-properties`: a device type's properties.
pub fn device_list_properties(arguments: &Map<String, Value>) -> Result<Value, QmpError> {
    let name = arguments
        .get("typename")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match find_type(name) {
        Some(ty) if implements(name, "device") && !ty.is_abstract => Ok(properties(ty)),
        Some(_) => Err(QmpError::generic(format!(
            "Parameter 'typename' expects a non-abstract device type, not '{name}'"
        ))),
        None => Err(QmpError::device_not_found(format!(
            "Device '{name}' not found"
        ))),
    }
}

/// `qom-list-properties`: any known type's properties.
pub fn qom_list_properties(arguments: &Map<String, Value>) -> Result<Value, QmpError> {
    let name = arguments
        .get("typename")
        .and_then(Value::as_str)
        .unwrap_or_default();
    find_type(name)
        .or_else(|| DESCRIBED_ONLY.iter().find(|t| t.name == name))
        .map(properties)
        .ok_or_else(|| QmpError::device_not_found(format!("Class '{name}' not found")))
}

/// `query-command-line-options`: the options `papervisor-qemu` takes, with
/// the parameters it understands.
pub fn query_command_line_options(arguments: &Map<String, Value>) -> Result<Value, QmpError> {
    const OPTIONS: &[(&str, &[(&str, &str)])] = &[
        (
            "machine",
            &[
                ("type", "string"),
                ("accel", "string"),
                ("usb", "boolean"),
                ("dump-guest-core", "boolean"),
            ],
        ),
        (
            "smp-opts",
            &[
                ("cpus", "number"),
                ("maxcpus", "number"),
                ("sockets", "number"),
                ("cores", "number"),
                ("threads", "number"),
            ],
        ),
        (
            "memory",
            &[("size", "size"), ("slots", "number"), ("maxmem", "size")],
        ),
        ("sandbox", &[("enable", "boolean")]),
        ("overcommit", &[("mem-lock", "boolean")]),
        ("msg", &[("timestamp", "boolean")]),
        ("boot-opts", &[("strict", "boolean")]),
        ("name", &[("guest", "string"), ("debug-threads", "boolean")]),
        ("chardev", &[]),
        ("mon", &[("chardev", "string"), ("mode", "string")]),
        ("numa", &[]),
        ("accel", &[("accel", "string")]),
    ];
    let wanted = arguments.get("option").and_then(Value::as_str);
    let answer: Vec<Value> = OPTIONS
        .iter()
        .filter(|(option, _)| wanted.is_none_or(|w| w == *option))
        .map(|(option, parameters)| {
            let parameters: Vec<Value> = parameters
                .iter()
                .map(|(name, kind)| json!({"name": name, "type": kind}))
                .collect();
            json!({"option": option, "parameters": parameters})
        })
        .collect();
    match wanted {
        Some(option) if answer.is_empty() => {
            Err(QmpError::generic(format!("invalid option name: {option}")))
        }
        _ => Ok(Value::Array(answer)),
    }
}

/// `query-cpu-definitions`: the one model, the host's.
pub fn query_cpu_definitions() -> Value {
    json!([{
        "name": CPU_MODEL,
        "typename": format!("{CPU_MODEL}-powerpc64-cpu"),
        "static": false,
        "migration-safe": false,
        "deprecated": false,
        "unavailable-features": [],
    }])
}

/// `qom-list`: the paths a client may look under, and what is there.
/// Devices are found with the queries that list them (query-cpus-fast,
/// query-memory-devices, query-pci); the containers are listed so that a
/// client that walks the tree finds where they are.
pub fn qom_list(arguments: &Map<String, Value>) -> Result<Value, QmpError> {
    let path = arguments
        .get("path")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let children: &[&str] = match path {
        "/" => &["machine", "objects"],
        "/machine" => &["peripheral", "peripheral-anon", "unattached"],
        "/machine/peripheral" | "/machine/peripheral-anon" | "/machine/unattached" | "/objects" => {
            &[]
        }
        _ => {
            return Err(QmpError::device_not_found(format!(
                "Device '{path}' not found"
            )))
        }
    };
    let mut answer = vec![json!({"name": "type", "type": "string"})];
    answer.extend(
        children
            .iter()
            .map(|child| json!({"name": child, "type": "child<container>"})),
    );
    Ok(Value::Array(answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn the_types_libvirt_looks_for_are_listed_with_their_parents() {
        let types = qom_list_types(&Map::new());
        let names: Vec<&str> = types
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        for wanted in [CORE_DRIVER, DIMM_DRIVER, VTY_DRIVER, "memory-backend-ram"] {
            assert!(names.contains(&wanted), "{wanted} missing from {names:?}");
        }
        assert!(!names.contains(&"device"), "abstract types only when asked");
        let cores = qom_list_types(&args(json!({"implements": "spapr-cpu-core"})));
        assert_eq!(
            cores,
            json!([{"name": CORE_DRIVER, "parent": "spapr-cpu-core"}])
        );
        for ty in TYPES {
            assert!(
                ty.parent == "object" || find_type(ty.parent).is_some(),
                "{}'s parent {} is not a type",
                ty.name,
                ty.parent
            );
        }
    }

    #[test]
    fn device_properties_are_those_device_add_takes() {
        let dimm = device_list_properties(&args(json!({"typename": DIMM_DRIVER}))).unwrap();
        let names: Vec<&str> = dimm
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        for name in &names {
            if *name != "size" {
                assert!(
                    super::super::schema::Command::DeviceAdd
                        .args()
                        .iter()
                        .any(|a| a.name == *name),
                    "device_add does not take {name}"
                );
            }
        }
        assert_eq!(
            device_list_properties(&args(json!({"typename": "e1000"})))
                .unwrap_err()
                .class,
            "DeviceNotFound"
        );
        assert!(device_list_properties(&args(json!({"typename": "device"}))).is_err());
        assert!(qom_list_properties(&args(json!({"typename": "memory-backend-ram"}))).is_ok());
    }

    #[test]
    fn options_are_filtered_and_unknown_ones_refused() {
        let machine = query_command_line_options(&args(json!({"option": "machine"}))).unwrap();
        assert_eq!(machine.as_array().unwrap().len(), 1);
        assert!(query_command_line_options(&args(json!({"option": "spice"}))).is_err());
        assert!(qom_list(&args(json!({"path": "/nowhere"}))).is_err());
    }
}
