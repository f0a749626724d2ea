//! Lines appended to a file by a thread of its own: the trace of
//! `--trace FILE` and the metrics of `--metrics-path`. Whoever records a
//! line never waits for the file (a full queue drops the line, counted),
//! so a file that blocks — a FIFO whose reader stopped reading, a stuck
//! disk — stalls only that thread, never a vCPU or the control loop. A
//! line the file refuses (a full disk) is dropped and counted too, and the
//! first of a run of them logged.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Opens `path` for appending, creating it readable by its owner alone
/// (a log or a trace tells what the guest did), as `option` names it in
/// an error. A FIFO must have a reader already: opening one without would
/// wait for a reader before the VM even starts.
pub fn open_for_append(path: &Path, option: &str) -> Result<File, String> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use std::os::unix::fs::OpenOptionsExt;
    let failed = |error: &dyn std::fmt::Display| format!("{option} {}: {error}", path.display());
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|error| match error.raw_os_error() {
            Some(nix::libc::ENXIO) => failed(&"a FIFO that nobody reads (start its reader first)"),
            _ => failed(&error),
        })?;
    // Writes block again, in the stream's thread only: a line is written
    // whole or not at all.
    let flags = fcntl(&file, FcntlArg::F_GETFL)
        .map(OFlag::from_bits_truncate)
        .map_err(|error| failed(&error))?;
    fcntl(&file, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK)).map_err(|error| failed(&error))?;
    Ok(file)
}

/// A running stream.
pub struct LineStream {
    lines: SyncSender<String>,
    /// Lines sent and not yet written.
    in_flight: Arc<AtomicUsize>,
    /// Lines dropped: at a full queue, or refused by the file.
    dropped: Arc<AtomicU64>,
}

impl LineStream {
    /// Streams lines into `file` from a thread named `name`, holding at
    /// most `queue` lines while the file does not take them. Start it once
    /// this thread holds no privilege (the thread inherits what its
    /// starter holds).
    pub fn start(file: File, name: &str, queue: usize) -> std::io::Result<LineStream> {
        let (lines, queued) = sync_channel::<String>(queue);
        let in_flight = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        let (written, refused) = (Arc::clone(&in_flight), Arc::clone(&dropped));
        let label = name.to_string();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                // Its work is the log thread's: take lines, write them.
                crate::seccomp::confine_or_exit(crate::seccomp::ThreadKind::Log);
                let mut file = file;
                let mut failing = false;
                // A line is one write: a reader never sees half of one
                // (unless the file takes part of it and fails), and never
                // waits for a buffer to fill.
                for line in queued {
                    match file.write_all(line.as_bytes()) {
                        Ok(()) => failing = false,
                        Err(error) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            if !failing {
                                log::warn!(
                                    "{label}: the file refuses lines ({error}): dropping them"
                                );
                            }
                            failing = true;
                        }
                    }
                    written.fetch_sub(1, Ordering::AcqRel);
                }
            })?;
        Ok(LineStream {
            lines,
            in_flight,
            dropped,
        })
    }

    /// Queues `line` (ending with its newline); `false` when it was
    /// dropped, the queue being full.
    pub fn send(&self, line: String) -> bool {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        match self.lines.try_send(line) {
            Ok(()) => true,
            Err(_) => {
                self.in_flight.fetch_sub(1, Ordering::AcqRel);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Lines dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits until what was sent is written, for `timeout` at most: at the
    /// end of the VM, so that its last lines reach a file that takes them.
    pub fn flush(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.in_flight.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn lines_reach_the_file_and_a_flush_waits_for_them() {
        let (mut reader, writer) = std::io::pipe().unwrap();
        let stream =
            LineStream::start(File::from(std::os::fd::OwnedFd::from(writer)), "t", 8).unwrap();
        assert!(stream.send("one\n".into()));
        assert!(stream.send("two\n".into()));
        stream.flush(Duration::from_secs(5));
        let mut read = [0u8; 8];
        reader.read_exact(&mut read).unwrap();
        assert_eq!(&read, b"one\ntwo\n");
        assert_eq!(stream.dropped(), 0);
    }

    #[test]
    fn a_file_that_takes_nothing_costs_dropped_lines_not_waits() {
        let (_reader, writer) = std::io::pipe().unwrap();
        let stream =
            LineStream::start(File::from(std::os::fd::OwnedFd::from(writer)), "t", 4).unwrap();
        // The pipe (64 KiB) and the queue (4) fill; nothing waits.
        let line = "x".repeat(4095) + "\n";
        let started = Instant::now();
        let sent = (0..64).filter(|_| stream.send(line.clone())).count();
        assert!(sent < 64, "every line was taken");
        assert_eq!(stream.dropped(), 64 - sent as u64);
        stream.flush(Duration::from_millis(50));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn lines_a_full_disk_refuses_are_counted() {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let stream = LineStream::start(full, "t", 8).unwrap();
        for _ in 0..3 {
            assert!(stream.send("line\n".into()));
        }
        stream.flush(Duration::from_secs(5));
        assert_eq!(stream.dropped(), 3);
    }

    #[test]
    fn a_fifo_without_a_reader_is_refused_at_once() {
        let dir = std::env::temp_dir().join(format!("line-stream-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let _ = std::fs::remove_file(&fifo);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let refused = open_for_append(&fifo, "--metrics-path").unwrap_err();
        assert!(refused.starts_with("--metrics-path "), "{refused}");
        assert!(refused.contains("nobody reads"), "{refused}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
