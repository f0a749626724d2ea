//! The soak: plug/unplug cycles of CPU cores, DIMMs and disks, with random
//! guest refusals and random device-process kills (SIGKILL while the guest
//! works on the event; a disk's block process while the guest writes and
//! checks a pattern). After every step QMP, the DRC table and the guest must
//! agree; at the end the core's descriptors and threads must be what they
//! were after the warm-up, and its RSS within [`RSS_SLACK_KIB`] of it.
//!
//! `cargo test --test soak` runs a short soak ([`DEFAULT_CYCLES`]);
//! `scripts/soak CYCLES SEED` runs a long one and prints its summary.
//! Needs /dev/kvm.

use papervisor_tests::bench::status_kib;
use papervisor_tests::{kvm_usable, send_signal, QmpClient, Vm, HOTPLUG_MACHINE};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Cycles of the short soak that runs with the tests.
const DEFAULT_CYCLES: u64 = 24;
/// Cycles before the baseline of descriptors, threads and RSS is taken, at
/// least: every device is plugged once and a few processes restarted. A
/// long soak warms up for a tenth of its cycles: the core's heaps never
/// shrink (`M_TRIM_THRESHOLD` in main.rs), so their high-water marks rise
/// in steps while each thread's arena meets its largest burst, then stay.
const WARM_UP_CYCLES: u64 = 8;
/// How much the core's RSS may exceed the baseline at the end. The heap of
/// a process that allocated and freed for hours keeps some fragments; a
/// leak of even 100 bytes per cycle would pass this in a 10 000-cycle soak
/// only barely, and one of a few KiB per cycle would not.
const RSS_SLACK_KIB: u64 = 1024;
/// The guest's hot-plug work, at most (a restarted peer slows it).
const GUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Kills of one process the soak allows itself within the supervisor's
/// restart window: one fewer than the supervisor tolerates, so that the
/// soak tests restarts, not the give-up policy (tested in supervision.rs).
const KILLS_PER_WINDOW: usize = 4;
/// A progress line every this many cycles.
const REPORT_EVERY: u64 = 250;
/// The supervisor's restart window.
const RESTART_WINDOW: Duration = Duration::from_secs(60);

const KINDS: [&str; 3] = ["hotplug-controller", "rtas-server", "event-log"];

/// splitmix64: a reproducible stream from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// True with probability `percent` %.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text} is not a number")),
        Err(_) => default,
    }
}

/// What one cycle plugs.
#[derive(Clone, Copy, Debug)]
enum Device {
    /// A CPU core (one thread) with this core-id.
    Core(u32),
    /// The 512 MiB DIMM on backend mem0: LMBs 0x80000004 and 0x80000005.
    Dimm,
    /// A 16 MiB virtio-blk disk on node disk0, in PCI slot 3.
    Disk,
}

const FIRST_CORE_DRC: u32 = 0x1000_0000;
const DISK_DRC: u32 = 0x4000_0018;
const DIMM_LMBS: [u32; 2] = [0x8000_0004, 0x8000_0005];

impl Device {
    fn id(self) -> String {
        match self {
            Device::Core(core) => format!("core{core}"),
            Device::Dimm => "dimm0".into(),
            Device::Disk => "vd0".into(),
        }
    }

    fn drcs(self) -> Vec<u32> {
        match self {
            Device::Core(core) => vec![FIRST_CORE_DRC + core],
            Device::Dimm => DIMM_LMBS.to_vec(),
            Device::Disk => vec![DISK_DRC],
        }
    }

    fn guest_line(self, action: &str) -> String {
        match self {
            Device::Core(core) => format!("dlpar: cpu {action} {:#010x}: ", FIRST_CORE_DRC + core),
            Device::Dimm => format!("dlpar: memory {action} count 2 from 0x80000004: "),
            Device::Disk => format!("dlpar: pci {action} {DISK_DRC:#010x}: "),
        }
    }
}

struct Soak {
    vm: Vm,
    qmp: QmpClient,
    rng: Rng,
    /// The chance of a kill at each step that may kill, in %.
    kill_percent: u64,
    kills: BTreeMap<&'static str, Vec<Instant>>,
    tally: BTreeMap<&'static str, u64>,
}

/// The core's open descriptors, threads and RSS.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Footprint {
    descriptors: usize,
    threads: usize,
    rss_kib: u64,
}

impl Footprint {
    /// The least of a few samples over half a second: what stays, without
    /// the descriptors and threads of work in flight (a DIMM's memfd lent
    /// to the RTAS server for a moment, a supervisor's watcher).
    fn settled(pid: u32) -> Footprint {
        let mut least = Footprint::of(pid);
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(100));
            let now = Footprint::of(pid);
            least = Footprint {
                descriptors: least.descriptors.min(now.descriptors),
                threads: least.threads.min(now.threads),
                rss_kib: least.rss_kib.min(now.rss_kib),
            };
        }
        least
    }

    fn of(pid: u32) -> Footprint {
        let count = |dir: String| std::fs::read_dir(&dir).expect(&dir).count();
        Footprint {
            descriptors: count(format!("/proc/{pid}/fd")),
            threads: count(format!("/proc/{pid}/task")),
            rss_kib: status_kib(pid, "VmRSS:"),
        }
    }
}

/// The core's descriptors (what each points to) and threads (their names),
/// to tell what grew.
fn inventory(pid: u32) -> String {
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        lines.push(format!(
            "fd {}: {}",
            entry.file_name().to_string_lossy(),
            target.display()
        ));
    }
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        lines.push(format!(
            "thread {}: {}",
            entry.file_name().to_string_lossy(),
            comm.trim()
        ));
    }
    lines.sort();
    lines.join("\n")
}

impl Soak {
    fn count(&mut self, what: &'static str) {
        *self.tally.entry(what).or_default() += 1;
    }

    /// SIGKILLs a random device process if the soak's kill budget for it
    /// allows (see [`KILLS_PER_WINDOW`]); does not wait for its successor.
    fn maybe_kill(&mut self) {
        if !self.rng.chance(self.kill_percent) {
            return;
        }
        let kind = KINDS[self.rng.below(KINDS.len() as u64) as usize];
        let now = Instant::now();
        let recent = self.kills.entry(kind).or_default();
        recent.retain(|at| now.duration_since(*at) < RESTART_WINDOW);
        if recent.len() >= KILLS_PER_WINDOW {
            return;
        }
        let processes = self.qmp.execute("x-query-device-processes", json!({}));
        let process = processes["return"]
            .as_array()
            .and_then(|list| list.iter().find(|p| p["kind"] == kind))
            .unwrap_or_else(|| panic!("no {kind}: {processes}"));
        // A process that is being restarted has no pid to kill.
        let Some(pid) = process["pid"]
            .as_u64()
            .filter(|_| process["state"] == "running")
        else {
            return;
        };
        send_signal(pid, nix::sys::signal::Signal::SIGKILL);
        self.kills.entry(kind).or_default().push(now);
        self.count(match kind {
            "hotplug-controller" => "kills of the hotplug controller",
            "rtas-server" => "kills of the RTAS server",
            _ => "kills of the event log",
        });
    }

    fn execute_ok(&mut self, command: &str, arguments: Value) {
        let reply = self.qmp.execute(command, arguments.clone());
        assert_eq!(reply, json!({"return": {}}), "{command} {arguments}");
    }

    /// The guest's line for `action` on `device`, and what follows its prefix.
    fn guest_says(&mut self, device: Device, action: &str) -> String {
        let prefix = device.guest_line(action);
        let line = self.vm.console.expect_async(&prefix, GUEST_TIMEOUT);
        // The line may follow a prompt the guest printed meanwhile.
        match line.split_once(&prefix) {
            Some((_, rest)) => rest.to_string(),
            None => line,
        }
    }

    /// Waits for DEVICE_DELETED or DEVICE_UNPLUG_GUEST_ERROR of `device`.
    fn unplug_outcome(&mut self, device: Device) -> &'static str {
        let event = self
            .qmp
            .wait_any_event(&["DEVICE_DELETED", "DEVICE_UNPLUG_GUEST_ERROR"]);
        assert_eq!(event["data"]["device"], device.id(), "{event}");
        if event["event"] == "DEVICE_DELETED" {
            "deleted"
        } else {
            "refused"
        }
    }

    fn plug(&mut self, device: Device) {
        match device {
            Device::Core(core) => self.execute_ok(
                "device_add",
                json!({"driver": "host-spapr-cpu-core", "core-id": core, "id": device.id()}),
            ),
            Device::Dimm => self.execute_ok(
                "device_add",
                json!({"driver": "pc-dimm", "id": "dimm0", "memdev": "mem0"}),
            ),
            Device::Disk => self.execute_ok(
                "device_add",
                json!({"driver": "virtio-blk-pci", "id": "vd0", "drive": "disk0", "addr": "3"}),
            ),
        }
        self.maybe_kill();
        let added = self.guest_says(device, "add");
        assert!(added.starts_with("ok"), "{added}");
        self.agree(Some(device));
        if matches!(device, Device::Disk) {
            self.drive_disk();
        }
    }

    /// The guest writes a pattern over the disk and reads it back, its
    /// block process killed meanwhile at the soak's kill rate.
    fn drive_disk(&mut self) {
        let seed = self.rng.below(1 << 32);
        let sector = self.rng.below(32) * 1024;
        let write = format!("blk write 0 {sector} 1024 {seed}");
        self.vm.console.send_line(&write);
        if self.rng.chance(self.kill_percent * 3) {
            let row = self.qmp.execute("x-query-device-processes", json!({}));
            let block = row["return"]
                .as_array()
                .and_then(|list| list.iter().find(|p| p["kind"] == "block").cloned());
            if let Some(pid) = block.and_then(|b| b["pid"].as_u64()) {
                send_signal(pid, nix::sys::signal::Signal::SIGKILL);
                self.count("kills of a block process");
            }
        }
        self.vm
            .console
            .read_until(&format!("{write}\n"), GUEST_TIMEOUT);
        let wrote = self.vm.console.read_until("\n", GUEST_TIMEOUT);
        assert_eq!(wrote.trim_end(), "blk write: 1024 sectors");
        let check = format!("blk check 0 {sector} 1024 {seed}");
        assert_eq!(
            self.vm.console.command(&check),
            ["blk check: 1024 sectors, ok"]
        );
        self.count("disk patterns written and checked");
    }

    /// Makes the guest refuse the next unplug of `device`, or lets it go.
    fn refuse(&mut self, device: Device, refuse: bool) {
        let (command, answer) = match (device, refuse) {
            // A disk is taken back even while busy: nothing to refuse.
            (Device::Disk, _) => return,
            (Device::Core(_), true) => ("cpu offline 0", "cpu 0 offline"),
            (Device::Core(_), false) => ("cpu online 0", "cpu 0 online"),
            (Device::Dimm, true) => ("mem pin 0x50000000", "mem: lmb 0x80000005 pinned"),
            (Device::Dimm, false) => ("mem unpin 0x50000000", "mem: lmb 0x80000005 unpinned"),
        };
        assert_eq!(self.vm.console.command(command), [answer]);
    }

    fn unplug(&mut self, device: Device) {
        let refused = !matches!(device, Device::Disk) && self.rng.chance(25);
        if refused {
            self.refuse(device, true);
            self.execute_ok("device_del", json!({"id": device.id()}));
            self.maybe_kill();
            assert_eq!(self.unplug_outcome(device), "refused");
            assert!(self.guest_says(device, "remove").starts_with("refused: "));
            self.count("refusals reported");
            self.agree(Some(device));
            self.refuse(device, false);
        }
        self.execute_ok("device_del", json!({"id": device.id()}));
        self.maybe_kill();
        assert_eq!(self.unplug_outcome(device), "deleted");
        let removed = self.guest_says(device, "remove");
        assert!(removed.starts_with("ok"), "{removed}");
        self.agree(None);
    }

    /// QMP, the DRC table and the guest agree that `plugged` (and nothing
    /// else) is plugged, taken by the guest and not being unplugged.
    fn agree(&mut self, plugged: Option<Device>) {
        // QMP's device view.
        let cpus = self.qmp.execute("query-hotpluggable-cpus", json!({}));
        let mut qmp_cores: Vec<u64> = cpus["return"]
            .as_array()
            .expect("a core list")
            .iter()
            .filter(|c| !c["qom-path"].is_null())
            .map(|c| c["props"]["core-id"].as_u64().expect("a core-id"))
            .collect();
        qmp_cores.sort_unstable();
        let dimms = self.qmp.execute("query-memory-devices", json!({}));
        let qmp_dimms = dimms["return"].as_array().expect("a device list").len();
        let (want_cores, want_dimms) = match plugged {
            Some(Device::Core(core)) => (vec![0, u64::from(core)], 0),
            Some(Device::Dimm) => (vec![0], 1),
            Some(Device::Disk) | None => (vec![0], 0),
        };
        assert_eq!((qmp_cores, qmp_dimms), (want_cores.clone(), want_dimms));

        // The DRC table: only the plugged device's DRCs (and the boot
        // core's) are configured, none is being unplugged.
        let drcs = self.qmp.execute("x-query-drcs", json!({}));
        let mut taken: Vec<u32> = Vec::new();
        for row in drcs["return"].as_array().expect("DRC rows") {
            let index = row["index"].as_u64().expect("an index") as u32;
            assert_eq!(row["unplug-requested"], false, "{row}");
            match row["state"].as_str() {
                Some("configured" | "physical-configured") => {
                    taken.push(index);
                    assert!(!row["path"].is_null(), "{row}");
                }
                Some("unusable") => assert!(row["path"].is_null(), "{row}"),
                // An empty PCI slot.
                Some("power-on") if row["type"] == "28" => {
                    assert!(row["path"].is_null(), "{row}")
                }
                _ => panic!("a DRC between states after the guest finished: {row}"),
            }
        }
        let mut want_drcs = vec![FIRST_CORE_DRC];
        want_drcs.extend(plugged.map(Device::drcs).unwrap_or_default());
        want_drcs.sort_unstable();
        taken.sort_unstable();
        assert_eq!(taken, want_drcs);

        // The guest.
        let guest_cpus = self.vm.console.command("cpus");
        let guest_cores: Vec<u64> = guest_cpus
            .iter()
            .map(|line| {
                let rest = line.strip_prefix("cpu ").expect("cpu N state");
                rest.split(' ')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("N")
            })
            .collect();
        assert_eq!(guest_cores, want_cores, "{guest_cpus:?}");
        let lmbs = self.vm.console.command("mem");
        let online = lmbs
            .iter()
            .filter(|line| line.contains(": assigned online"))
            .count();
        assert_eq!(online, 2 * want_dimms, "{lmbs:?}");
        let disks = self.vm.console.command("blk");
        match plugged {
            Some(Device::Disk) => assert_eq!(disks, ["blk 0: 32768 sectors"]),
            _ => assert_eq!(disks, ["blk: no disks"]),
        }
    }
}

#[test]
fn soak_cores_and_dimms_with_refusals_and_kills() {
    if !kvm_usable("soak_cores_and_dimms_with_refusals_and_kills") {
        return;
    }
    let cycles = env_number("PAPERVISOR_SOAK_CYCLES", DEFAULT_CYCLES);
    let seed = env_number("PAPERVISOR_SOAK_SEED", 1);
    let warm_up = WARM_UP_CYCLES.max(cycles / 10);
    assert!(cycles > warm_up, "a soak runs past its warm-up");
    let mut vm = Vm::start(&HOTPLUG_MACHINE);
    vm.boot();
    let mut qmp = QmpClient::connect(&vm.qmp_socket());
    let backend = qmp.execute(
        "object-add",
        json!({"qom-type": "memory-backend-memfd", "id": "mem0", "size": 512u64 << 20}),
    );
    assert_eq!(backend, json!({"return": {}}));
    let image = papervisor_tests::scratch_dir().join("disk0.raw");
    std::fs::File::create(&image)
        .and_then(|file| file.set_len(16 << 20))
        .expect("an image");
    let node = json!({"driver": "file", "node-name": "disk0", "filename": image});
    assert_eq!(qmp.execute("blockdev-add", node), json!({"return": {}}));
    let mut soak = Soak {
        vm,
        qmp,
        rng: Rng(seed),
        // A device thread cannot be killed alone: in-process, the soak
        // plugs, refuses and unplugs without kills.
        kill_percent: match papervisor_tests::in_process() {
            true => 0,
            false => env_number("PAPERVISOR_SOAK_KILL_PERCENT", 10),
        },
        kills: BTreeMap::new(),
        tally: BTreeMap::new(),
    };
    let started = Instant::now();
    let mut baseline = None;
    for cycle in 0..cycles {
        if cycle == warm_up {
            baseline = Some((Footprint::settled(soak.vm.pid()), inventory(soak.vm.pid())));
        }
        // The warm-up plugs every device once first: the core creates a
        // core's vCPUs at its first plug and parks them after.
        let pick = if cycle < 5 { cycle } else { soak.rng.below(5) };
        let device = match pick {
            0 => Device::Dimm,
            4 => Device::Disk,
            n => Device::Core(n as u32),
        };
        soak.count(match device {
            Device::Core(_) => "core cycles",
            Device::Dimm => "DIMM cycles",
            Device::Disk => "disk cycles",
        });
        soak.plug(device);
        soak.unplug(device);
        if (cycle + 1) % REPORT_EVERY == 0 {
            eprintln!(
                "soak: {} cycles in {:.0} s, {:?}",
                cycle + 1,
                started.elapsed().as_secs_f64(),
                Footprint::of(soak.vm.pid())
            );
        }
    }
    let elapsed = started.elapsed();
    // Every device process serves at the end.
    let processes = soak.qmp.execute("x-query-device-processes", json!({}));
    for process in processes["return"].as_array().expect("processes") {
        assert_eq!(process["state"], "running", "{process}");
    }
    let status = soak.qmp.execute("query-status", json!({}));
    assert_eq!(status["return"]["status"], "running");
    let (baseline, baseline_inventory) = baseline.expect("taken after the warm-up");
    let end = Footprint::settled(soak.vm.pid());
    println!(
        "soak: {cycles} cycles, seed {seed}, {:.0} s",
        elapsed.as_secs_f64()
    );
    for (what, count) in &soak.tally {
        println!("soak: {what}: {count}");
    }
    println!(
        "soak: core after {warm_up} cycles: {} descriptors, {} threads, {} KiB RSS",
        baseline.descriptors, baseline.threads, baseline.rss_kib
    );
    println!(
        "soak: core at the end: {} descriptors, {} threads, {} KiB RSS",
        end.descriptors, end.threads, end.rss_kib
    );
    if (end.descriptors, end.threads) != (baseline.descriptors, baseline.threads) {
        let now = inventory(soak.vm.pid());
        let was: Vec<&str> = baseline_inventory.lines().collect();
        let is: Vec<&str> = now.lines().collect();
        for line in was.iter().filter(|l| !is.contains(l)) {
            eprintln!("soak: after the warm-up only: {line}");
        }
        for line in is.iter().filter(|l| !was.contains(l)) {
            eprintln!("soak: at the end only: {line}");
        }
    }
    assert_eq!(end.descriptors, baseline.descriptors, "descriptors grew");
    assert_eq!(end.threads, baseline.threads, "threads grew");
    assert!(
        end.rss_kib <= baseline.rss_kib + RSS_SLACK_KIB,
        "RSS grew from {} to {} KiB",
        baseline.rss_kib,
        end.rss_kib
    );
}
