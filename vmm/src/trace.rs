//! A trace of what crosses the core, for debugging a guest: named points
//! (an RTAS call with its name, status, time and vCPU; a hot-plug request
//! and the controller's notifications; a device process's exit and
//! restart; every QMP event; and, taken from the device processes' own
//! rings, DRC transitions and events queued and fetched, each with the
//! `process` it happened in), each one JSON record, kept without rate
//! limit in a bounded ring (the oldest go first, and are counted), read by
//! `x-query-trace`, and with `--trace FILE` streamed as JSON lines by a
//! [`LineStream`]: a vCPU never waits for the file (a full queue drops the
//! record, counted). Off, the default, a point costs one relaxed load.

use crate::line_stream::LineStream;
use common::lock;
use ipc_proto::control::{trace_point, TraceRecord};
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

/// Records the ring keeps.
pub const RING_RECORDS: usize = 4096;
/// Records waiting for the stream's writer, at most.
const STREAM_QUEUE: usize = 4096;

/// The VM's tracer.
struct Tracer {
    /// Point names to record (a record's point contains one); all if empty.
    filter: Vec<String>,
    ring: Mutex<Ring>,
    stream: Option<LineStream>,
}

#[derive(Default)]
struct Ring {
    records: VecDeque<Value>,
    next: u64,
    dropped: u64,
    /// What each device process's own ring dropped before the core took it.
    process_dropped: BTreeMap<&'static str, u64>,
}

static ON: AtomicBool = AtomicBool::new(false);
static TRACER: OnceLock<Tracer> = OnceLock::new();

/// Where `--trace` sends the records besides the ring.
pub enum Sink {
    /// The ring alone (`--trace ring`).
    Ring,
    /// The ring and this file, appended as JSON lines.
    File(std::fs::File),
}

/// Turns the trace on, once, before the VM's threads start: `filter`
/// lists the points to record (by part of their name), all if empty.
pub fn start(sink: Sink, filter: Vec<String>) -> std::io::Result<()> {
    let stream = match sink {
        Sink::Ring => None,
        Sink::File(file) => Some(LineStream::start(file, "trace", STREAM_QUEUE)?),
    };
    let tracer = Tracer {
        filter,
        ring: Mutex::new(Ring::default()),
        stream,
    };
    if TRACER.set(tracer).is_ok() {
        ON.store(true, Ordering::Release);
    }
    Ok(())
}

/// `--trace-filter`: patterns separated by commas, each a part of some
/// point's name; a misspelt one would record nothing, and say nothing.
pub fn parse_filter(text: &str) -> Result<Vec<String>, String> {
    let patterns: Vec<String> = text
        .split(',')
        .filter(|pattern| !pattern.is_empty())
        .map(str::to_string)
        .collect();
    if patterns.is_empty() {
        return Err(format!("--trace-filter {text:?}: names no pattern"));
    }
    let points = trace_point::ALL;
    match patterns
        .iter()
        .find(|pattern| !points.iter().any(|point| point.contains(pattern.as_str())))
    {
        Some(unknown) => Err(format!(
            "--trace-filter {unknown}: no trace point's name contains it (the points: {})",
            points.join(", ")
        )),
        None => Ok(patterns),
    }
}

/// Waits, for `timeout` at most, until the records streamed so far are in
/// the file: at the end of the VM.
pub fn flush(timeout: std::time::Duration) {
    if let Some(stream) = TRACER.get().and_then(|tracer| tracer.stream.as_ref()) {
        stream.flush(timeout);
    }
}

/// Whether tracing is on.
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Records point `point`, its fields made only when it is recorded.
pub fn record(point: &'static str, fields: impl FnOnce() -> Value) {
    if !enabled() {
        return;
    }
    let Some(tracer) = TRACER.get().filter(|tracer| tracer.wants(point)) else {
        return;
    };
    let micros = common::unix_micros();
    // A point whose fields are not an object is still recorded, bare.
    let fields = match fields() {
        Value::Object(fields) => fields,
        _ => serde_json::Map::new(),
    };
    tracer.push(point, micros, fields);
}

/// Takes records a device process kept in its own ring (and how many it
/// dropped) into the trace, each named with `process`.
pub fn adopt(process: &'static str, records: Vec<TraceRecord>, dropped: u64) {
    let Some(tracer) = TRACER.get() else {
        return;
    };
    if dropped > 0 {
        *lock(&tracer.ring)
            .process_dropped
            .entry(process)
            .or_default() += dropped;
    }
    for record in records {
        if !tracer.wants(&record.point) {
            continue;
        }
        let mut fields = serde_json::Map::new();
        fields.insert("process".into(), process.into());
        // A process names its own fields, not the record's.
        for (name, value) in record.fields {
            if !matches!(name.as_str(), "seq" | "us" | "point" | "process") {
                fields.insert(name, value.into());
            }
        }
        tracer.push(&record.point, record.us, fields);
    }
}

impl Tracer {
    /// Whether the filter lets `point` through.
    fn wants(&self, point: &str) -> bool {
        self.filter.is_empty() || self.filter.iter().any(|f| point.contains(f.as_str()))
    }

    /// Appends a record to the ring (and the stream).
    fn push(&self, point: &str, micros: u64, fields: serde_json::Map<String, Value>) {
        let mut ring = lock(&self.ring);
        let mut record = json!({"seq": ring.next, "us": micros, "point": point});
        if let Value::Object(record) = &mut record {
            record.extend(fields);
        }
        ring.next += 1;
        if ring.records.len() == RING_RECORDS {
            ring.records.pop_front();
            ring.dropped += 1;
        }
        if let Some(stream) = &self.stream {
            let mut line = record.to_string();
            line.push('\n');
            stream.send(line);
        }
        ring.records.push_back(record);
    }
}

/// `x-query-trace`: the records whose point contains `filter` (all if
/// none), the last `last` of them (all the ring holds if none), and what
/// the ring and the stream dropped.
pub fn query(filter: Option<&str>, last: Option<usize>) -> Value {
    let Some(tracer) = TRACER.get() else {
        return json!({"enabled": false, "records": [], "dropped": 0, "stream-dropped": 0});
    };
    let ring = lock(&tracer.ring);
    let matching: Vec<&Value> = ring
        .records
        .iter()
        .filter(|record| {
            filter.is_none_or(|f| record["point"].as_str().is_some_and(|p| p.contains(f)))
        })
        .collect();
    let skip = last.map_or(0, |last| matching.len().saturating_sub(last));
    json!({
        "enabled": true,
        "records": matching[skip..],
        "dropped": ring.dropped,
        "stream-dropped": tracer.stream.as_ref().map_or(0, LineStream::dropped),
        "process-dropped": ring.process_dropped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_names_parts_of_known_points_only() {
        assert_eq!(parse_filter("rtas,hotplug").unwrap(), ["rtas", "hotplug"]);
        assert_eq!(parse_filter("event-,").unwrap(), ["event-"]);
        let misspelt = parse_filter("rtas,hotplgu").unwrap_err();
        assert!(
            misspelt.starts_with("--trace-filter hotplgu: "),
            "{misspelt}"
        );
        assert!(
            misspelt.contains("rtas-call, hotplug-request"),
            "{misspelt}"
        );
        assert!(parse_filter(",,").is_err());
        assert!(parse_filter("").is_err());
    }

    /// One test, as the tracer is the process's: off, nothing; on, every
    /// point, without rate limit, the oldest dropped and counted past the
    /// ring, read back by filter.
    #[test]
    fn records_are_kept_in_a_bounded_ring_and_read_by_filter() {
        record("early", || panic!("fields made while tracing is off"));
        assert_eq!(query(None, None)["enabled"], false);
        start(Sink::Ring, vec!["rtas".into(), "hotplug".into()]).unwrap();
        for i in 0..RING_RECORDS + 10 {
            record("rtas-call", || json!({"i": i}));
        }
        record("hotplug-request", || json!({"device": "c1"}));
        record("other", || panic!("a point the filter leaves out was made"));
        let all = query(None, None);
        assert_eq!(all["records"].as_array().unwrap().len(), RING_RECORDS);
        assert_eq!(all["dropped"], 11);
        let last = query(Some("rtas"), Some(2));
        let records = last["records"].as_array().unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[1]["i"], RING_RECORDS + 9);
        assert_eq!(records[1]["point"], "rtas-call");
        let hotplug = query(Some("hotplug"), None);
        assert_eq!(hotplug["records"][0]["device"], "c1");
        // A process's records: named with it, its reserved names ignored,
        // what the filter leaves out left out, its drops counted.
        let from_process = |point: &str, fields: &[(&str, &str)]| TraceRecord {
            us: 7,
            point: point.into(),
            fields: fields
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
        };
        adopt(
            "hotplug-controller",
            vec![
                from_process(
                    "hotplug-drc-transition",
                    &[("to", "Configured"), ("seq", "0")],
                ),
                from_process("event-fetched", &[]),
            ],
            3,
        );
        let adopted = query(Some("hotplug-drc"), None);
        let record = &adopted["records"][0];
        assert_eq!(record["process"], "hotplug-controller");
        assert_eq!(record["to"], "Configured");
        assert_eq!(record["us"], 7);
        assert!(record["seq"].as_u64().unwrap() > RING_RECORDS as u64);
        assert_eq!(adopted["process-dropped"]["hotplug-controller"], 3);
        assert_eq!(query(Some("event-fetched"), None)["records"], json!([]));
        // Fields that are not an object leave the point recorded, bare.
        super::record("rtas-bare", || Value::Null);
        assert_eq!(
            query(Some("rtas-bare"), None)["records"][0]["point"],
            "rtas-bare"
        );
    }
}
