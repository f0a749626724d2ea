//! What the core reports about its device processes (x-query-device-processes).

use super::spawn::DeviceMode;
use super::{lock, DeviceProcesses};
use ipc_proto::ProcessKind;
use serde_json::{json, Value};

impl DeviceProcesses {
    /// x-query-device-processes.
    pub fn info(&self) -> Value {
        let records = lock(&self.records);
        let rows: Vec<Value> = ProcessKind::ALL
            .into_iter()
            .filter_map(|kind| {
                let record = records.get(&kind)?;
                let binary = match self.starter.mode() {
                    DeviceMode::OutOfProcess => Some(self.program(kind)),
                    DeviceMode::InProcess => None,
                };
                Some(json!({
                    "kind": kind.name(),
                    "pid": record.pid,
                    "state": record.supervision.state.name(),
                    "mode": self.starter.mode().name(),
                    "binary": binary,
                    "restarts": record.supervision.restarts,
                    "last-exit": record.supervision.last_exit,
                }))
            })
            .collect();
        Value::Array(rows)
    }
}
