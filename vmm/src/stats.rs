//! What the VM counts for operators: vCPU exits by reason, RTAS calls by
//! name with a log2 histogram of how long they took, hot-plug operations
//! and the guest's refusals. Plain counters, bumped by the thread that sees
//! the event (a relaxed atomic add; the RTAS table takes a lock, against a
//! call that costs a round trip to another process); `query-stats` and the
//! metrics file read them. Nothing ever waits for a reader.

use common::lock;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Why a vCPU left KVM_RUN, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The hypercall doorbell (hcalls, RTAS calls).
    Hypercall,
    /// Another port.
    Io,
    /// Memory-mapped I/O (the PCI bridge's window).
    Mmio,
    /// Anything else (a signal that kicked it out, a shutdown).
    Other,
}

impl Exit {
    const ALL: [Exit; 4] = [Exit::Hypercall, Exit::Io, Exit::Mmio, Exit::Other];

    const fn stat(self) -> &'static str {
        match self {
            Exit::Hypercall => "exits-hypercall",
            Exit::Io => "exits-io",
            Exit::Mmio => "exits-mmio",
            Exit::Other => "exits-other",
        }
    }
}

/// One vCPU's exits, by reason.
#[derive(Default)]
pub struct VcpuStats {
    exits: [AtomicU64; 4],
}

impl VcpuStats {
    /// Counts an exit.
    pub fn exit(&self, reason: Exit) {
        self.exits[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn count(&self, reason: Exit) -> u64 {
        self.exits[reason as usize].load(Ordering::Relaxed)
    }

    /// Its stats, in QEMU's `Stats` shape.
    pub fn to_stats(&self) -> Vec<Value> {
        Exit::ALL
            .iter()
            .map(|&reason| json!({"name": reason.stat(), "value": self.count(reason)}))
            .collect()
    }
}

/// Buckets of the RTAS time histogram: bucket 0 counts calls under 1 µs,
/// bucket i those of 2^(i-1) to 2^i µs, the last everything longer.
pub const RTAS_TIME_BUCKETS: usize = 24;

/// The hot-plug operations counted, by stat name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hotplug {
    /// A core device_add answered `{}`.
    CoreAdd,
    /// A core device_del answered `{}`.
    CoreDel,
    /// A DIMM device_add answered `{}`.
    DimmAdd,
    /// A DIMM device_del answered `{}`.
    DimmDel,
    /// A disk device_add answered `{}`.
    DiskAdd,
    /// A disk device_del answered `{}`.
    DiskDel,
    /// A device the guest gave back (DEVICE_DELETED).
    Deleted,
    /// An unplug the guest refused (DEVICE_UNPLUG_GUEST_ERROR).
    Refused,
}

impl Hotplug {
    const ALL: [Hotplug; 8] = [
        Hotplug::CoreAdd,
        Hotplug::CoreDel,
        Hotplug::DimmAdd,
        Hotplug::DimmDel,
        Hotplug::DiskAdd,
        Hotplug::DiskDel,
        Hotplug::Deleted,
        Hotplug::Refused,
    ];

    const fn stat(self) -> &'static str {
        match self {
            Hotplug::CoreAdd => "hotplug-core-add",
            Hotplug::CoreDel => "hotplug-core-del",
            Hotplug::DimmAdd => "hotplug-dimm-add",
            Hotplug::DimmDel => "hotplug-dimm-del",
            Hotplug::DiskAdd => "hotplug-disk-add",
            Hotplug::DiskDel => "hotplug-disk-del",
            Hotplug::Deleted => "hotplug-deleted",
            Hotplug::Refused => "hotplug-unplug-refused",
        }
    }
}

/// The VM's counters.
pub struct VmStats {
    /// RTAS calls by name (`unknown` for a token the platform lacks).
    rtas_calls: Mutex<BTreeMap<&'static str, u64>>,
    rtas_time: [AtomicU64; RTAS_TIME_BUCKETS],
    hotplug: [AtomicU64; 8],
}

impl Default for VmStats {
    fn default() -> VmStats {
        VmStats {
            rtas_calls: Mutex::new(BTreeMap::new()),
            rtas_time: std::array::from_fn(|_| AtomicU64::new(0)),
            hotplug: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// The histogram bucket of a call that took `took`.
fn time_bucket(took: Duration) -> usize {
    let micros = took.as_micros();
    if micros == 0 {
        return 0;
    }
    // 1 µs is bucket 1, 2-3 µs bucket 2, 4-7 µs bucket 3, ...
    let bucket = (u128::BITS - micros.leading_zeros()) as usize;
    bucket.min(RTAS_TIME_BUCKETS - 1)
}

impl VmStats {
    /// Counts an RTAS call (`name`, from its token) that took `took`.
    pub fn rtas_call(&self, name: &'static str, took: Duration) {
        *lock(&self.rtas_calls).entry(name).or_insert(0) += 1;
        self.rtas_time[time_bucket(took)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a hot-plug operation.
    pub fn hotplug(&self, operation: Hotplug) {
        self.hotplug[operation as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The VM's stats, in QEMU's `Stats` shape, with what only the machine
    /// knows (`extra`: the vCPUs' exits summed, restarts, the event queue).
    pub fn to_stats(&self, extra: Vec<Value>) -> Vec<Value> {
        let calls = lock(&self.rtas_calls).clone();
        let mut stats = vec![json!({
            "name": "rtas-calls",
            "value": calls.values().sum::<u64>(),
        })];
        stats.extend(
            calls
                .iter()
                .map(|(name, count)| json!({"name": format!("rtas-calls-{name}"), "value": count})),
        );
        let histogram: Vec<u64> = self
            .rtas_time
            .iter()
            .map(|bucket| bucket.load(Ordering::Relaxed))
            .collect();
        stats.push(json!({"name": "rtas-call-time", "value": histogram}));
        stats.extend(Hotplug::ALL.iter().map(|&operation| {
            json!({
                "name": operation.stat(),
                "value": self.hotplug[operation as usize].load(Ordering::Relaxed),
            })
        }));
        stats.extend(extra);
        stats
    }
}

/// The sum of the vCPUs' exits, as VM stats.
pub fn exits_of(vcpus: &[&VcpuStats]) -> Vec<Value> {
    Exit::ALL
        .iter()
        .map(|&reason| {
            let total: u64 = vcpus.iter().map(|vcpu| vcpu.count(reason)).sum();
            json!({"name": reason.stat(), "value": total})
        })
        .collect()
}

/// `query-stats-schemas`: what each stat is, in QEMU's `StatsSchema` shape.
pub fn schemas() -> Value {
    let cumulative = |name: &str| json!({"name": name, "type": "cumulative"});
    let mut vcpu: Vec<Value> = Exit::ALL.iter().map(|e| cumulative(e.stat())).collect();
    let mut vm = vcpu.clone();
    vm.push(cumulative("rtas-calls"));
    vm.push(json!({"name": "rtas-calls-NAME", "type": "cumulative"}));
    vm.push(json!({
        "name": "rtas-call-time", "type": "log2-histogram",
        "unit": "seconds", "base": 10, "exponent": -6,
    }));
    vm.extend(Hotplug::ALL.iter().map(|h| cumulative(h.stat())));
    vm.push(cumulative("restarts-PROCESS"));
    vm.push(json!({"name": "event-queue-depth", "type": "instant"}));
    vcpu.sort_by_key(|s| s["name"].as_str().map(str::to_string));
    json!([
        {"provider": PROVIDER, "target": "vm", "stats": vm},
        {"provider": PROVIDER, "target": "vcpu", "stats": vcpu},
    ])
}

/// The stats provider: QEMU's are `kvm` and `cryptodev`; these are the
/// VMM's own.
pub const PROVIDER: &str = "papervisor";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_times_fall_in_log2_buckets_of_microseconds() {
        assert_eq!(time_bucket(Duration::from_nanos(500)), 0);
        assert_eq!(time_bucket(Duration::from_micros(1)), 1);
        assert_eq!(time_bucket(Duration::from_micros(3)), 2);
        assert_eq!(time_bucket(Duration::from_micros(4)), 3);
        assert_eq!(
            time_bucket(Duration::from_secs(3600)),
            RTAS_TIME_BUCKETS - 1
        );
    }

    #[test]
    fn counts_come_out_as_they_went_in() {
        let stats = VmStats::default();
        for _ in 0..3 {
            stats.rtas_call("get-time-of-day", Duration::from_micros(20));
        }
        stats.rtas_call("set-indicator", Duration::from_micros(40));
        stats.hotplug(Hotplug::CoreAdd);
        let shown = stats.to_stats(vec![json!({"name": "x", "value": 1})]);
        let value = |name: &str| {
            shown
                .iter()
                .find(|s| s["name"] == name)
                .map(|s| s["value"].clone())
                .unwrap_or_else(|| panic!("no {name}"))
        };
        assert_eq!(value("rtas-calls"), 4);
        assert_eq!(value("rtas-calls-get-time-of-day"), 3);
        assert_eq!(value("hotplug-core-add"), 1);
        assert_eq!(value("hotplug-dimm-add"), 0);
        assert_eq!(value("rtas-call-time")[5], 3, "20 µs is bucket 5");
        assert_eq!(value("x"), 1);
        let vcpu = VcpuStats::default();
        vcpu.exit(Exit::Mmio);
        assert_eq!(
            exits_of(&[&vcpu, &vcpu])[2],
            json!({"name": "exits-mmio", "value": 2})
        );
    }
}
