//! The arguments of the commands that change the machine, parsed totally
//! before the control loop acts on them: a typed request, or the error
//! QEMU gives. The schema (`schema.rs`) has checked each argument's JSON
//! type already; what is checked here is what the schema cannot say.

use crate::control::QmpError;
use crate::cores::{valid_id, CORE_DRIVER};
use crate::dimms::{BACKEND_TYPES, DIMM_DRIVER};
use ipc_proto::link::core_hotplug::MAX_DEVICE_ID;
use serde_json::{Map, Value};

/// device_add.
#[derive(Debug, PartialEq, Eq)]
pub enum DeviceAdd {
    /// A CPU core.
    Core {
        /// QEMU's core-id (checked against the machine later).
        core_id: i64,
        /// The QMP id, if any.
        id: Option<String>,
    },
    /// A DIMM.
    Dimm {
        /// The QMP id.
        id: String,
        /// The memory backend's id.
        memdev: String,
        /// Where it goes, if the client says.
        addr: Option<u64>,
    },
}

/// object-add of a memory backend.
#[derive(Debug, PartialEq, Eq)]
pub struct BackendAdd {
    /// One of [`BACKEND_TYPES`].
    pub qom_type: String,
    /// Its id.
    pub id: String,
    /// Its size in bytes (checked against device memory later).
    pub size: u64,
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
pub fn device_add(arguments: &Map<String, Value>) -> Result<DeviceAdd, QmpError> {
    let driver = match arguments.get("driver") {
        Some(Value::String(driver)) => driver.as_str(),
        Some(_) => return Err(QmpError::generic("Parameter 'driver' expects a string")),
        None => return Err(QmpError::generic("Parameter 'driver' is missing")),
    };
    if driver == DIMM_DRIVER {
        return dimm_add(arguments);
    }
    if driver != CORE_DRIVER {
        return Err(QmpError::generic(format!(
            "'{driver}' is not a valid device model name (this machine plugs {CORE_DRIVER} and {DIMM_DRIVER})"
        )));
    }
    only_properties(arguments, CORE_DRIVER, &["driver", "core-id", "id"])?;
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

fn dimm_add(arguments: &Map<String, Value>) -> Result<DeviceAdd, QmpError> {
    only_properties(arguments, DIMM_DRIVER, &["driver", "id", "memdev", "addr"])?;
    let id = text(arguments, "id").ok_or_else(|| QmpError::generic("Parameter 'id' is missing"))?;
    if id.len() > MAX_DEVICE_ID || !valid_id(id) {
        return Err(QmpError::generic(format!(
            "Parameter 'id' expects an identifier, not '{id}'"
        )));
    }
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
        id: id.to_string(),
        memdev: memdev.to_string(),
        addr,
    })
}

/// device_del: the id or QOM path of the device.
pub fn device_del(arguments: &Map<String, Value>) -> Result<String, QmpError> {
    match arguments.get("id") {
        Some(Value::String(name)) => Ok(name.clone()),
        Some(_) => Err(QmpError::generic("Parameter 'id' expects a string")),
        None => Err(QmpError::generic("Parameter 'id' is missing")),
    }
}

/// object-add of a memory backend.
pub fn object_add(arguments: &Map<String, Value>) -> Result<BackendAdd, QmpError> {
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
    Ok(BackendAdd {
        qom_type: qom_type.to_string(),
        id: id.to_string(),
        size: arguments.get("size").and_then(Value::as_u64).unwrap_or(0),
    })
}

/// object-del: the backend's id.
pub fn object_del(arguments: &Map<String, Value>) -> Result<String, QmpError> {
    Ok(text(arguments, "id").unwrap_or_default().to_string())
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
                addr: Some(4096)
            }
        );
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
                size: 1 << 28
            }
        );
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
}
