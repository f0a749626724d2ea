//! What the machine reports over QMP, rendered as QEMU renders it (or,
//! for the `x-` queries, as Papervisor documents it).

use super::Vm;
use crate::block::disks::Backend;
use crate::control::ControlMessage;
use crate::cores::{CoreDevice, CORE_DRIVER};
use crate::devices::reports::BlockRow;
use crate::request::{QmpError, Query};
use ipc_proto::link::core_eventlog;
use ipc_proto::link::core_hotplug;
use ipc_proto::link::hotplug_eventlog::{HotplugAction, HotplugTarget};
use ipc_proto::ProcessKind;
use serde_json::{json, Value};

/// How often the device processes' trace records are taken while the trace is on.
const TRACE_COLLECTION: std::time::Duration = std::time::Duration::from_secs(1);

impl Vm {
    /// A query's answer.
    pub(super) fn query(&self, query: Query) -> Result<Value, QmpError> {
        match query {
            Query::MemoryDevices => Ok(self.query_memory_devices()),
            Query::MemorySizeSummary => Ok(json!({
                "base-memory": self.layout.boot_ram,
                "plugged-memory": self.dimms.plugged_bytes(),
            })),
            Query::HotpluggableCpus => Ok(self.query_hotpluggable_cpus()),
            Query::CpusFast => Ok(self.query_cpus_fast()),
            Query::Drcs => self.query_drcs(),
            Query::EventLog => self.query_event_log(),
            Query::Startup => Ok(self.startup.to_json()),
            Query::DeviceProcesses => Ok(self.query_device_processes()),
            Query::Block => Ok(self.block_nodes.query()),
            Query::NamedBlockNodes => Ok(self.block_nodes.query_named()),
            Query::StatsVm => Ok(json!([{
                "provider": crate::stats::PROVIDER,
                "stats": self.vm_stats(),
            }])),
            Query::StatsVcpus => Ok(self.vcpu_stats()),
            Query::Chardev => {
                let mut chardevs = self.chardevs.query();
                if let Value::Array(list) = &mut chardevs {
                    list.insert(0, self.console_chardev.clone());
                }
                Ok(chardevs)
            }
            Query::Pci => Ok(self.query_pci()),
            Query::Memdev => Ok(Value::Array(
                self.dimms
                    .backends()
                    .map(|(id, backend)| {
                        json!({
                            "id": id, "size": backend.size, "merge": false, "dump": false,
                            "prealloc": backend.memory.prealloc, "share": backend.memory.share,
                            "host-nodes": [], "policy": "default",
                        })
                    })
                    .collect(),
            )),
        }
    }

    /// The device processes, and the notifications of the hotplug
    /// controller the core refused.
    fn query_device_processes(&self) -> Value {
        let mut processes = self.devices.info();
        if let Some(controller) = processes.as_array_mut().and_then(|list| {
            list.iter_mut()
                .find(|p| p["kind"] == ProcessKind::HotplugController.name())
        }) {
            controller["rejected-notifications"] = json!(self.notifications.rejected());
        }
        if let Some(list) = processes.as_array_mut() {
            list.extend(
                self.disks
                    .all()
                    .iter()
                    .filter_map(|disk| match &disk.backend {
                        Backend::Process { node, process } => {
                            Some(self.devices.block_info(BlockRow {
                                pid: process.pid,
                                disk: &disk.id,
                                node,
                                state: disk.state(),
                                restarts: disk.restarts,
                                last_exit: disk.exit.as_deref().or(disk.last_exit.as_deref()),
                                program: disk.program.as_deref(),
                            }))
                        }
                        // Another program's: not a device process of this VM.
                        Backend::External { .. } => None,
                    }),
            );
        }
        processes
    }

    /// QEMU's shape.
    fn query_memory_devices(&self) -> Value {
        let dimms: Vec<Value> = self
            .dimms
            .plugged_dimms()
            .into_iter()
            .map(|dimm| {
                let mut info = json!({"type": "dimm", "data": {
                    "addr": dimm.addr, "size": dimm.size,
                    "slot": dimm.slot, "node": 0,
                    "memdev": format!("/objects/{}", dimm.memdev),
                    "hotplugged": true, "hotpluggable": true,
                }});
                if !crate::dimms::is_anonymous(&dimm.id) {
                    info["data"]["id"] = json!(dimm.id);
                }
                info
            })
            .collect();
        Value::Array(dimms)
    }

    fn query_hotpluggable_cpus(&self) -> Value {
        let threads = self.cores.threads();
        let cpus: Vec<Value> = (0..self.cores.max_cores())
            .rev()
            .map(|core| {
                let mut entry = json!({
                    "type": CORE_DRIVER,
                    "vcpus-count": threads,
                    "props": {"core-id": core * threads},
                });
                if self.numa_node {
                    entry["props"]["node-id"] = json!(0);
                }
                if let Some(CoreDevice { path, .. }) = self.cores.device(core) {
                    entry["qom-path"] = json!(path);
                }
                entry
            })
            .collect();
        Value::Array(cpus)
    }

    /// Starts the ticks of `--metrics-path`, if asked.
    pub(super) fn start_metrics(&self) {
        let Some((_, every)) = &self.metrics else {
            return;
        };
        let ticks = crate::control::tick(self.control.clone(), "metrics", *every, || {
            ControlMessage::WriteMetrics
        });
        if let Err(error) = ticks {
            log::error!("cannot time the metrics file: {error}");
        }
    }

    /// While the trace is on, the device processes' records are taken
    /// once a second, so that their rings do not overflow between reads.
    pub(super) fn start_trace_collection(&self) {
        if !crate::trace::enabled() {
            return;
        }
        let ticks = crate::control::tick(
            self.control.clone(),
            "trace-collect",
            TRACE_COLLECTION,
            || ControlMessage::CollectTrace,
        );
        if let Err(error) = ticks {
            log::error!("cannot time the trace collection: {error}");
        }
    }

    /// Appends the VM's stats and its vCPUs' to `--metrics-path`, one JSON
    /// line, through its stream: a file that does not take it costs the
    /// line, never a wait.
    pub(super) fn write_metrics(&self) {
        let Some((stream, _)) = &self.metrics else {
            return;
        };
        let utc = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.as_secs())
            .unwrap_or_default();
        let mut line = json!({
            "utc": utc,
            "vm": self.vm_stats(),
            "vcpus": self.vcpu_stats(),
        })
        .to_string();
        line.push('\n');
        if !stream.send(line) {
            log::warn!(
                "--metrics-path does not take its lines: {} dropped so far",
                stream.dropped()
            );
        }
    }

    /// The VM's stats: its counters and what only the machine knows.
    fn vm_stats(&self) -> Vec<Value> {
        self.context.stats.to_stats(self.machine_stats())
    }

    /// What only the machine knows of the VM's stats: the vCPUs' exits,
    /// each device process's restarts, the guest's event queue.
    fn machine_stats(&self) -> Vec<Value> {
        let vcpus: Vec<&crate::stats::VcpuStats> = (0..self.smp.max_cpus)
            .filter_map(|id| self.cpus.vcpu_stats(id))
            .collect();
        let mut stats = crate::stats::exits_of(&vcpus);
        for process in self.devices.info().as_array().into_iter().flatten() {
            if let (Some(kind), Some(restarts)) =
                (process["kind"].as_str(), process["restarts"].as_u64())
            {
                stats.push(json!({"name": format!("restarts-{kind}"), "value": restarts}));
            }
        }
        if let Ok(Value::Array(queued)) = self.query_event_log() {
            stats.push(json!({"name": "event-queue-depth", "value": queued.len()}));
        }
        stats
    }

    /// query-stats of the vCPUs: each present one's exits, by QOM path.
    fn vcpu_stats(&self) -> Value {
        let cpus = self.query_cpus_fast();
        Value::Array(
            cpus.as_array()
                .into_iter()
                .flatten()
                .filter_map(|cpu| {
                    let id = u32::try_from(cpu["cpu-index"].as_u64()?).ok()?;
                    Some(json!({
                        "provider": crate::stats::PROVIDER,
                        "qom-path": cpu["qom-path"],
                        "stats": self.cpus.vcpu_stats(id)?.to_stats(),
                    }))
                })
                .collect(),
        )
    }

    /// Every vCPU of a plugged core, with the core's QOM path.
    fn query_cpus_fast(&self) -> Value {
        let threads = self.cores.threads();
        let cpus: Vec<Value> = self
            .cpus
            .info()
            .into_iter()
            .filter_map(|vcpu| {
                let core = vcpu.id / threads;
                let thread = vcpu.id % threads;
                let device = self.cores.device(core)?;
                Some(json!({
                    "cpu-index": vcpu.id,
                    "qom-path": format!("{}/thread[{thread}]", device.path),
                    "thread-id": vcpu.thread_id,
                    "props": if self.numa_node {
                        json!({"core-id": core * threads, "thread-id": thread, "node-id": 0})
                    } else {
                        json!({"core-id": core * threads, "thread-id": thread})
                    },
                    "target": "x86_64",
                }))
            })
            .collect();
        Value::Array(cpus)
    }

    fn query_drcs(&self) -> Result<Value, QmpError> {
        let mut rows = Vec::new();
        let mut from = Some(0);
        while let Some(start) = from {
            match self
                .devices
                .hotplug
                .query(core_hotplug::Request::ListDrcs { from: start })
            {
                Ok(core_hotplug::Reply::Drcs { rows: page, next }) => {
                    if next.is_some_and(|n| n <= start) {
                        return Err(QmpError::generic("the hotplug controller pages backwards"));
                    }
                    rows.extend(page);
                    from = next;
                }
                Ok(other) => {
                    return Err(QmpError::generic(format!(
                        "the hotplug controller answered a listing with {other:?}"
                    )))
                }
                Err(failure) => {
                    return Err(QmpError::generic(format!(
                        "the hotplug controller did not list its DRCs: {failure}"
                    )))
                }
            }
        }
        let rows: Vec<Value> = rows
            .into_iter()
            .map(|row| {
                let id = row
                    .device
                    .as_deref()
                    .and_then(|path| self.plugged_device(path))
                    .and_then(|(id, _)| id);
                json!({
                    "index": row.index.0,
                    "type": row.index.kind().map(|k| k.type_name()),
                    "name": row.index.name(),
                    "state": row.state.name(),
                    "device": id,
                    "path": row.device,
                    "unplug-requested": row.unplug_requested,
                })
            })
            .collect();
        Ok(Value::Array(rows))
    }

    fn query_event_log(&self) -> Result<Value, QmpError> {
        match self.devices.eventlog.query(core_eventlog::Request::List) {
            Ok(core_eventlog::Reply::Queued(events)) => Ok(Value::Array(
                events
                    .into_iter()
                    .map(|queued| {
                        let event = match queued {
                            core_eventlog::QueuedEvent::Hotplug(event) => event,
                            core_eventlog::QueuedEvent::PowerDown => {
                                return json!({"action": "power-off", "resource": "epow"})
                            }
                        };
                        let action = match event.action {
                            HotplugAction::Add => "add",
                            HotplugAction::Remove => "remove",
                        };
                        match event.target {
                            HotplugTarget::CpuByIndex(drc) => {
                                json!({"action": action, "resource": "cpu", "drc": drc.0})
                            }
                            HotplugTarget::PciByIndex(drc) => {
                                json!({"action": action, "resource": "pci", "drc": drc.0})
                            }
                            HotplugTarget::LmbsCountIndexed { count, first } => json!({
                                "action": action, "resource": "memory", "drc": first.0, "count": count
                            }),
                        }
                    })
                    .collect(),
            )),
            Err(failure) => Err(QmpError::generic(format!(
                "the event log did not list its queue: {failure}"
            ))),
        }
    }
}
