//! The cost of a committed transition of the hotplug controller's state
//! region, at a small table (`maxmem=4G`: 14 LMB DRCs) and a large one
//! (`maxmem=4T`: 16 382), measured in one run: it must not grow with the
//! table. Also what a successor pays to validate and resume each region.
//! `cargo bench -p device-procs --bench state [-- TRANSITIONS]`.

use device_procs::hotplug::store::{Requester, Store, StoredReply};
use device_procs::hotplug::Controller;
use device_procs::state::Mapping;
use ipc_proto::link::core_hotplug::{state_region_bytes, DrcRange};
use ipc_proto::papr::{indicator, DrcKind, RtasStatus};
use nix::sys::memfd::{memfd_create, MFdFlags};
use std::os::fd::OwnedFd;
use std::time::Instant;

const CORE1: u32 = 0x1000_0001;

fn region(drcs: usize) -> OwnedFd {
    let fd = memfd_create("state-bench", MFdFlags::MFD_CLOEXEC).expect("memfd");
    let file = std::fs::File::from(fd);
    file.set_len(state_region_bytes(drcs)).expect("size");
    file.into()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// Median ns per committed transition, and ms to resume the region.
fn measure(lmbs: u32, transitions: usize) -> (f64, f64) {
    let ranges = [
        DrcRange {
            kind: DrcKind::Cpu,
            first_id: 0,
            count: 2,
            step: 1,
        },
        DrcRange {
            kind: DrcKind::Lmb,
            first_id: 8,
            count: lmbs,
            step: 1,
        },
    ];
    let mut controller = Controller::default();
    controller.define(&ranges).expect("DRCs");
    let fd = region(controller.drcs().count());
    let mut store =
        Store::create(Mapping::map(&fd).expect("map"), &mut controller).expect("format");
    let effects = controller
        .plug(&[ipc_proto::papr::DrcIndex(CORE1)], "core1", false)
        .expect("plug");
    store
        .commit(&mut controller, effects, None)
        .expect("commit");
    // The guest's allocation of the core's DRC, then its release: one DRC
    // record and one reply record each.
    let mut samples = Vec::new();
    let batch = 100;
    for round in 0..transitions / batch {
        let started = Instant::now();
        for i in 0..batch {
            let value = ((round * batch + i) % 2 == 0) as u32;
            let (status, effects) =
                controller.set_indicator(indicator::ALLOCATION_STATE, CORE1, value);
            assert_eq!(status, RtasStatus::Success);
            let id = (round * batch + i) as u64;
            let key = Requester::Rtas.key(id, &id);
            let reply = StoredReply::Status { status, value: 0 };
            store
                .commit(&mut controller, effects, Some((key, reply)))
                .expect("commit");
        }
        samples.push(started.elapsed().as_nanos() as f64 / batch as f64);
    }
    let count = controller.drcs().count() as u32;
    drop(store);
    let started = Instant::now();
    let (_, restored) = Store::resume(Mapping::map(&fd).expect("map"), count).expect("resume");
    let resume_ms = started.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(restored.drcs().count() as u32, count);
    (median(&mut samples), resume_ms)
}

fn main() {
    let transitions = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20_000usize);
    let small = measure(14, transitions);
    let large = measure(16_382, transitions);
    println!("| {transitions} transitions | LMB DRCs | committed transition (median) | successor validates and resumes |");
    println!("|---|---|---|---|");
    println!("| maxmem=4G | 14 | {:.0} ns | {:.2} ms |", small.0, small.1);
    println!(
        "| maxmem=4T | 16 382 | {:.0} ns | {:.2} ms |",
        large.0, large.1
    );
    println!(
        "| ratio 4T / 4G | | {:.2} | {:.0} |",
        large.0 / small.0,
        large.1 / small.1
    );
}
