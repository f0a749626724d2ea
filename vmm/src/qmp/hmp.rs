//! `human-monitor-command`: QEMU's human monitor, for the commands a
//! person types at `qmp-shell -H` to look at a VM. Each `info` is the QMP
//! query it shows, run through the same dispatcher, rendered as QEMU's
//! monitor renders it (lines end in CR LF, as there).

use serde_json::Value;

/// What a command line asks.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// `help` or `?`: the commands.
    Help,
    /// `info TOPIC`: the QMP query that shows it.
    Info(Topic),
    /// Anything else, as typed.
    Unknown(String),
}

/// What `info` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topic {
    /// `info status`.
    Status,
    /// `info cpus`.
    Cpus,
    /// `info hotpluggable-cpus`.
    HotpluggableCpus,
    /// `info memory-devices`.
    MemoryDevices,
    /// `info pci`.
    Pci,
    /// `info chardev`.
    Chardev,
}

const TOPICS: [(&str, Topic, &str, &str); 6] = [
    (
        "status",
        Topic::Status,
        "query-status",
        "show the VM status",
    ),
    (
        "cpus",
        Topic::Cpus,
        "query-cpus-fast",
        "show infos for each CPU",
    ),
    (
        "hotpluggable-cpus",
        Topic::HotpluggableCpus,
        "query-hotpluggable-cpus",
        "show the CPU slots and what fills them",
    ),
    (
        "memory-devices",
        Topic::MemoryDevices,
        "query-memory-devices",
        "show the DIMMs",
    ),
    ("pci", Topic::Pci, "query-pci", "show the PCI functions"),
    (
        "chardev",
        Topic::Chardev,
        "query-chardev",
        "show the character devices",
    ),
];

/// Reads a command line.
pub fn parse(line: &str) -> Request {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["help" | "?" | "h"] => Request::Help,
        ["info", topic] => TOPICS
            .iter()
            .find(|(name, ..)| name == topic)
            .map(|(_, topic, ..)| Request::Info(*topic))
            .unwrap_or_else(|| Request::Unknown(line.trim().to_string())),
        _ => Request::Unknown(line.trim().to_string()),
    }
}

impl Topic {
    /// The QMP query it shows.
    pub fn query(self) -> &'static str {
        TOPICS
            .iter()
            .find(|(_, topic, ..)| *topic == self)
            .map(|(_, _, query, _)| *query)
            .unwrap_or_default()
    }
}

/// `help`.
pub fn help() -> String {
    let mut text = String::from("help|? -- show this list\r\n");
    for (name, _, _, what) in TOPICS {
        text.push_str(&format!("info {name} -- {what}\r\n"));
    }
    text
}

/// An unknown command, as QEMU answers it: a line, not an error.
pub fn unknown(line: &str) -> String {
    format!("unknown command: '{line}' (help lists the commands here)\r\n")
}

fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// `answer`, the topic's query's return, as the monitor shows it.
pub fn render(topic: Topic, answer: &Value) -> String {
    let items = || answer.as_array().into_iter().flatten();
    let mut out = String::new();
    match topic {
        Topic::Status => {
            let status = text(&answer["status"]);
            out.push_str(&match status.as_str() {
                "running" => "VM status: running\r\n".to_string(),
                "paused" => "VM status: paused\r\n".to_string(),
                other => format!("VM status: paused ({other})\r\n"),
            });
        }
        Topic::Cpus => {
            for (index, cpu) in items().enumerate() {
                let marker = if index == 0 { '*' } else { ' ' };
                out.push_str(&format!(
                    "{marker} CPU #{}: thread_id={}\r\n",
                    cpu["cpu-index"], cpu["thread-id"]
                ));
            }
        }
        Topic::HotpluggableCpus => {
            out.push_str("Hotpluggable CPUs:\r\n");
            for slot in items() {
                out.push_str(&format!("  type: \"{}\"\r\n", text(&slot["type"])));
                out.push_str(&format!("  vcpus_count: \"{}\"\r\n", slot["vcpus-count"]));
                if let Some(path) = slot["qom-path"].as_str() {
                    out.push_str(&format!("  qom_path: \"{path}\"\r\n"));
                }
                out.push_str("  CPUInstance Properties:\r\n");
                for (name, value) in slot["props"].as_object().into_iter().flatten() {
                    out.push_str(&format!("    {name}: \"{value}\"\r\n"));
                }
            }
        }
        Topic::MemoryDevices => {
            for device in items() {
                let data = &device["data"];
                out.push_str(&format!(
                    "Memory device [{}]: \"{}\"\r\n",
                    text(&device["type"]),
                    data["id"].as_str().unwrap_or("")
                ));
                out.push_str(&format!(
                    "  addr: {:#x}\r\n",
                    data["addr"].as_u64().unwrap_or(0)
                ));
                for key in [
                    "slot",
                    "node",
                    "size",
                    "memdev",
                    "hotplugged",
                    "hotpluggable",
                ] {
                    out.push_str(&format!("  {key}: {}\r\n", text(&data[key])));
                }
            }
        }
        Topic::Pci => {
            for bus in items() {
                for function in bus["devices"].as_array().into_iter().flatten() {
                    out.push_str(&format!(
                        "  Bus {:>2}, device {:>3}, function {}:\r\n",
                        bus["bus"], function["slot"], function["function"]
                    ));
                    out.push_str(&format!(
                        "    {}: PCI device {:04x}:{:04x}\r\n",
                        text(&function["class_info"]["desc"]),
                        function["id"]["vendor"].as_u64().unwrap_or(0),
                        function["id"]["device"].as_u64().unwrap_or(0)
                    ));
                    out.push_str(&format!("      id \"{}\"\r\n", text(&function["qdev_id"])));
                }
            }
        }
        Topic::Chardev => {
            for chardev in items() {
                out.push_str(&format!(
                    "{}: filename={}\r\n",
                    text(&chardev["label"]),
                    text(&chardev["filename"])
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn command_lines_read_as_the_monitor_reads_them() {
        assert_eq!(parse("help"), Request::Help);
        assert_eq!(parse("  info   status "), Request::Info(Topic::Status));
        assert_eq!(
            parse("info nothing"),
            Request::Unknown("info nothing".into())
        );
        assert_eq!(parse(""), Request::Unknown(String::new()));
        for (name, topic, query, _) in TOPICS {
            assert_eq!(parse(&format!("info {name}")), Request::Info(topic));
            assert!(
                super::super::schema::Command::from_name(query).is_some(),
                "{query} is no command"
            );
        }
        assert!(help().contains("info hotpluggable-cpus"));
    }

    #[test]
    fn answers_render_as_qemus_monitor_renders_them() {
        let status = json!({"status": "prelaunch", "running": false});
        assert_eq!(
            render(Topic::Status, &status),
            "VM status: paused (prelaunch)\r\n"
        );
        let cpus = json!([{"cpu-index": 0, "thread-id": 7}, {"cpu-index": 1, "thread-id": 8}]);
        assert_eq!(
            render(Topic::Cpus, &cpus),
            "* CPU #0: thread_id=7\r\n  CPU #1: thread_id=8\r\n"
        );
        let dimm = json!([{"type": "dimm", "data": {"id": "d0", "addr": 1073741824u64,
            "slot": 0, "node": 0, "size": 268435456, "memdev": "/objects/m0",
            "hotplugged": true, "hotpluggable": true}}]);
        let shown = render(Topic::MemoryDevices, &dimm);
        assert!(
            shown.starts_with("Memory device [dimm]: \"d0\"\r\n  addr: 0x40000000\r\n"),
            "{shown}"
        );
    }
}
