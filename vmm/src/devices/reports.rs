//! What the core reports about its device processes (x-query-device-processes).

use super::spawn::DeviceMode;
use super::{lock, DeviceProcesses};
use ipc_proto::ProcessKind;
use serde_json::{json, Value};

/// A disk's block process, as x-query-device-processes shows it.
pub struct BlockRow<'a> {
    /// Its pid (in-process: its thread's id).
    pub pid: u32,
    /// The disk's id.
    pub disk: &'a str,
    /// The node it serves.
    pub node: &'a str,
    /// `running`, `restarting` or `failed`.
    pub state: &'a str,
    /// Its predecessors that ended.
    pub restarts: u32,
    /// How the last of them (or it) ended.
    pub last_exit: Option<&'a str>,
    /// The binary it was upgraded to, if it was.
    pub program: Option<&'a std::path::Path>,
}

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
                let mut row = json!({
                    "kind": kind.name(),
                    "pid": record.pid,
                    "state": record.supervision.state.name(),
                    "mode": self.starter.mode().name(),
                    "binary": binary,
                    "restarts": record.supervision.restarts,
                    "last-exit": record.supervision.last_exit,
                });
                self.add_confinement(&mut row);
                Some(row)
            })
            .collect();
        Value::Array(rows)
    }

    /// The row of a disk's block device process: it is not restarted (its
    /// disk is no longer served once it ended).
    /// `exit` is how it ended, if it did.
    pub fn block_info(&self, block: BlockRow<'_>) -> Value {
        let BlockRow {
            pid,
            disk,
            node,
            state,
            restarts,
            last_exit,
            program,
        } = block;
        let binary = match (self.starter.mode(), program) {
            (DeviceMode::OutOfProcess, Some(program)) => Some(program.to_path_buf()),
            (DeviceMode::OutOfProcess, None) => {
                Some(super::spawn::helper_binary("papervisor-block"))
            }
            (DeviceMode::InProcess, _) => None,
        };
        let mut row = json!({
            "kind": "block",
            "disk": disk,
            "node": node,
            "pid": pid,
            "state": state,
            "mode": self.starter.mode().name(),
            "binary": binary,
            "restarts": restarts,
            "last-exit": last_exit,
        });
        self.add_confinement(&mut row);
        row
    }

    /// The uid a process runs as (the jail's, when jailed) and its filter's
    /// mode.
    fn add_confinement(&self, row: &mut Value) {
        let jailed = self.sandbox.jail && self.starter.mode() == DeviceMode::OutOfProcess;
        row["uid"] = match jailed {
            true => json!(self.sandbox.uid),
            false => Value::Null,
        };
        row["seccomp"] = json!(self.sandbox.seccomp);
    }
}
