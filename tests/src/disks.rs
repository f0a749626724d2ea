//! What the disk tests share: images, the guest's pattern, disks at boot,
//! QMP's empty return, waiting, the guest's `blk stress`.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A sparse image of `bytes` bytes, `name` in `dir`.
pub fn image(dir: &Path, name: &str, bytes: u64) -> PathBuf {
    let path = dir.join(name);
    std::fs::File::create(&path)
        .and_then(|file| file.set_len(bytes))
        .expect("an image");
    path
}

/// QMP's answer to a command that returns nothing.
pub fn ok() -> Value {
    json!({"return": {}})
}

/// Waits until `done` holds (at most 10 s: then the test fails, naming
/// `what`).
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{what} within 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Bytes in a sector.
pub const SECTOR: u64 = 512;

/// The guest's `blk write` / `blk check` pattern: word `i` of sector `s`
/// is `pattern(s * 512 + 8 * i, seed)`, little-endian (as `mem fill`).
pub fn pattern(address: u64, seed: u64) -> u64 {
    let mut x = address ^ seed.rotate_left(17) ^ 0x9e37_79b9_7f4a_7c15;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// The bytes `blk write` puts in `count` sectors from `first`.
pub fn sectors_of_pattern(first: u64, count: u64, seed: u64) -> Vec<u8> {
    (first * SECTOR..(first + count) * SECTOR)
        .step_by(8)
        .flat_map(|address| pattern(address, seed).to_le_bytes())
        .collect()
}

/// Command-line options for 64 MiB disks present at boot, one per slot
/// (`vd<n>` on node `disk<n>`, its image in `scratch`).
pub fn cold_plugged_disks(scratch: &Path, slots: &[u8]) -> Vec<String> {
    let mut args = Vec::new();
    for (n, slot) in slots.iter().enumerate() {
        let path = image(scratch, &format!("disk{n}.raw"), 64 << 20);
        args.push("--blockdev".to_string());
        args.push(format!(
            "driver=file,node-name=disk{n},filename={}",
            path.display()
        ));
        args.push("--device".to_string());
        args.push(format!("virtio-blk-pci,id=vd{n},drive=disk{n},addr={slot}"));
    }
    args
}

/// What the guest's `blk stress` reports when it ends.
#[derive(Debug, PartialEq, Eq)]
pub struct Stress {
    /// Requests completed.
    pub requests: u64,
    /// Of which writes.
    pub writes: u64,
    /// Of which reads.
    pub reads: u64,
    /// Requests never completed.
    pub lost: u64,
    /// Used elements naming no request in flight: completions twice.
    pub unexpected: u64,
    /// Reads that did not find their pattern.
    pub mismatched: u64,
    /// Requests that did not complete `OK`.
    pub errors: u64,
}

impl Stress {
    /// Starts `blk stress ARGS` and lets its requests get in flight (150
    /// ms); it must not have ended by then, or a fault the caller does
    /// next would not land among its requests.
    pub fn start(console: &mut crate::Console, args: &str) {
        console.send_line(&format!("blk stress {args}"));
        std::thread::sleep(Duration::from_millis(150));
        assert!(
            console
                .read_until_or_timeout("blk stress: ", Duration::ZERO)
                .is_none(),
            "blk stress {args} ended before the fault: give it more requests"
        );
    }

    /// The report of the stress started, within `timeout`.
    pub fn report(console: &mut crate::Console, timeout: Duration) -> Stress {
        console.read_until("blk stress: ", timeout);
        let line = console.read_until("\n", Duration::from_secs(5));
        let counts: Vec<u64> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|word| word.parse().ok())
            .collect();
        let [requests, writes, reads, lost, unexpected, mismatched, errors] = counts[..] else {
            panic!("not a blk stress report: {line}");
        };
        Stress {
            requests,
            writes,
            reads,
            lost,
            unexpected,
            mismatched,
            errors,
        }
    }

    /// Every one of `requests` completed once, `OK`, reads finding their
    /// pattern, writers and readers both served (`what` names the run).
    pub fn assert_whole(&self, requests: u64, what: &str) {
        assert_eq!(
            (
                self.requests,
                self.lost,
                self.unexpected,
                self.mismatched,
                self.errors
            ),
            (requests, 0, 0, 0, 0),
            "{what}: {self:?}"
        );
        assert_eq!(self.writes + self.reads, requests, "{what}: {self:?}");
        assert!(self.writes > 0 && self.reads > 0, "{what}: {self:?}");
    }
}
