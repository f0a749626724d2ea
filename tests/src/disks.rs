//! What the disk tests share: images, QMP's empty return, waiting.

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
