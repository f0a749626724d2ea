//! Where the VM's log lines go: every process of the VM (the core, its
//! device processes, their jailers) writes into one pipe that never blocks
//! a writer (its write end is non-blocking, and `common::LogWriter` drops
//! and counts a line it cannot take), and one thread of the core that
//! serves nothing else drains it into the real log (stderr or
//! `--log-file`). A log reader that stops reading (a stuck journal, a
//! paused pager) then stalls only that thread: never a vCPU, the control
//! loop, QMP or a device process. The drain puts the VM's name (its pid
//! when unnamed) at the start of every record, whichever process wrote it,
//! so that the logs of many VMs in one journal tell them apart.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the pipe holds while its reader is away: lines beyond it are dropped.
const PIPE_BYTES: i32 = 1 << 20;

/// The log pipe, before its drain runs.
pub struct LogPipe {
    read_end: OwnedFd,
    write_end: OwnedFd,
}

/// The running drain.
pub struct LogDrain {
    read_end: Arc<OwnedFd>,
    writing: Arc<AtomicBool>,
}

impl LogPipe {
    /// A new pipe for the log, its read end non-blocking.
    pub fn new() -> nix::Result<LogPipe> {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        let (read_end, write_end) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        // Only the write end: the drain's reads block, the writers' writes
        // never do (the flag belongs to the open file, which every process
        // handed this end as its stderr shares).
        fcntl(&write_end, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        // Room for bursts; the default (64 KiB) if the host allows no more.
        let _ = fcntl(&write_end, FcntlArg::F_SETPIPE_SZ(PIPE_BYTES));
        Ok(LogPipe {
            read_end,
            write_end,
        })
    }

    /// A descriptor of the write end: the core's log, or a device
    /// process's stderr.
    pub fn writer(&self) -> std::io::Result<File> {
        self.write_end.try_clone().map(File::from)
    }

    /// Drains the pipe into `sink` (stderr when `None`) on a thread of
    /// its own, under its own filter. Start it once this thread holds no
    /// privilege (the thread inherits what its starter holds).
    pub fn drain_into(self, sink: Option<File>, label: String) -> std::io::Result<LogDrain> {
        let read_end = Arc::new(self.read_end);
        let writing = Arc::new(AtomicBool::new(false));
        let drain = LogDrain {
            read_end: Arc::clone(&read_end),
            writing: Arc::clone(&writing),
        };
        std::thread::Builder::new()
            .name("log".into())
            .spawn(move || {
                crate::seccomp::confine_or_exit(crate::seccomp::ThreadKind::Log);
                drain_loop(&read_end, sink, &writing, &label);
            })?;
        Ok(drain)
    }
}

/// A line longer than this without its end is passed on as it is.
const MAX_PENDING: usize = 64 * 1024;

/// Whole lines of the pipe, each record (a line that starts with `[`, as
/// `common`'s format makes them) with the VM's label after its `[`; a
/// line's start that came without its end waits for it.
#[derive(Default)]
struct Labeller {
    pending: Vec<u8>,
}

impl Labeller {
    fn label(&mut self, bytes: &[u8], label: &str, out: &mut Vec<u8>) {
        self.pending.extend_from_slice(bytes);
        let whole = match self.pending.iter().rposition(|&b| b == b'\n') {
            Some(last) => last + 1,
            None if self.pending.len() > MAX_PENDING => self.pending.len(),
            None => return,
        };
        for line in self.pending[..whole].split_inclusive(|&b| b == b'\n') {
            match line.strip_prefix(b"[") {
                Some(rest) => {
                    out.push(b'[');
                    out.extend_from_slice(label.as_bytes());
                    out.push(b' ');
                    out.extend_from_slice(rest);
                }
                None => out.extend_from_slice(line),
            }
        }
        self.pending.drain(..whole);
    }
}

fn drain_loop(read_end: &OwnedFd, sink: Option<File>, writing: &AtomicBool, label: &str) {
    let mut sink: Box<dyn Write> = match sink {
        Some(file) => Box::new(file),
        None => Box::new(std::io::stderr()),
    };
    let mut buffer = vec![0u8; 64 * 1024];
    let mut labeller = Labeller::default();
    let mut labelled = Vec::with_capacity(buffer.len());
    loop {
        match nix::unistd::read(read_end, &mut buffer) {
            Ok(0) => return,
            Ok(n) => {
                writing.store(true, Ordering::SeqCst);
                labelled.clear();
                labeller.label(&buffer[..n], label, &mut labelled);
                // A sink that fails loses these lines; nothing else to do.
                let _ = sink.write_all(&labelled).and_then(|()| sink.flush());
                writing.store(false, Ordering::SeqCst);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
    }
}

impl LogDrain {
    /// Waits (at most `timeout`) until what was logged reached the sink:
    /// the last lines of a VM that ends.
    pub fn flush(&self, timeout: Duration) {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let mut pending = [PollFd::new(self.read_end.as_fd(), PollFlags::POLLIN)];
            let empty = poll(&mut pending, PollTimeout::ZERO).is_ok_and(|ready| ready == 0);
            if empty && !self.writing.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_record_gets_the_label_and_a_split_line_waits_for_its_end() {
        let mut labeller = Labeller::default();
        let mut out = Vec::new();
        labeller.label(b"[t INFO  core] one\n[t WARN  rtas-", "vm1", &mut out);
        assert_eq!(out, b"[vm1 t INFO  core] one\n");
        out.clear();
        labeller.label(b"server] two\n  a continuation\n", "vm1", &mut out);
        assert_eq!(out, b"[vm1 t WARN  rtas-server] two\n  a continuation\n");
        out.clear();
        labeller.label(&vec![b'x'; MAX_PENDING + 1], "vm1", &mut out);
        assert_eq!(out.len(), MAX_PENDING + 1, "an endless line is not held");
    }

    #[test]
    fn writers_never_wait_for_a_sink_that_does_not_read() {
        let pipe = LogPipe::new().unwrap();
        // A sink nobody reads: a pipe whose reader sleeps forever.
        let (_stalled_reader, stalled) = nix::unistd::pipe().unwrap();
        let mut writer = common::LogWriter::on(pipe.writer().unwrap());
        let _drain = pipe
            .drain_into(Some(File::from(stalled)), "vm".into())
            .unwrap();
        // 10 MB into a 64 KiB sink and a 1 MiB pipe: most are dropped, and
        // the writer finishes (a writer that waited would wait forever).
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for _ in 0..10_000 {
                writer.write_all(&[b'z'; 1000]).unwrap();
            }
            let _ = done.send(());
        });
        assert!(
            finished.recv_timeout(Duration::from_secs(120)).is_ok(),
            "a log writer waited for a sink that does not read"
        );
        assert!(common::dropped_log_lines() > 0);
    }
}
