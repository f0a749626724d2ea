//! What the disk tests share: images, the guest's pattern, disks at boot,
//! QMP's empty return, waiting.

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
