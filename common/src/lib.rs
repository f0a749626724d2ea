//! What every Papervisor binary shares: the log format, an error and its
//! causes on one line, and clap's command-line errors on one line.
#![deny(missing_docs)]

pub mod options;
pub mod seccomp;

use std::cell::Cell;
use std::collections::HashMap;
use std::error::Error;
use std::os::fd::{AsRawFd, RawFd};
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Exit status for a command line that is refused before anything starts.
pub const EXIT_USAGE: u8 = 2;

/// The levels `--log-level` takes.
pub const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Logs to stderr (or `file`) with the process's name in every line, so
/// that the interleaved logs of the core and its device processes stay
/// readable. `level` (`--log-level`) wins over `RUST_LOG`; info when
/// neither is given. Each place in the code that logs at info level or
/// above is rate-limited ([`RateLimit`]): a guest or a peer that makes one
/// line repeat cannot flood the host's log. Debug and trace lines, which
/// an operator asks for to see every event, are not: what bounds them is
/// the log itself. A line is one write(2) that never waits
/// ([`LogWriter`]): on a log that cannot take it now (a non-blocking pipe
/// that is full), it is dropped and counted, never waited for.
pub fn init_logging(
    process: &'static str,
    level: Option<log::LevelFilter>,
    file: Option<std::fs::File>,
) {
    use std::io::Write;
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if let Some(level) = level {
        builder.filter_level(level);
    }
    let writer = match file {
        Some(file) => LogWriter::on(file),
        None => LogWriter { fd: 2 },
    };
    LOG_FD.store(writer.fd, Ordering::Relaxed);
    builder.target(env_logger::Target::Pipe(Box::new(writer)));
    let inner = builder
        .format(move |out, record| {
            writeln!(
                out,
                "[{} {:5} {}] {}",
                out.timestamp_micros(),
                record.level(),
                THREAD_LABEL.get().unwrap_or(process),
                record.args()
            )
        })
        .build();
    let level = inner.filter();
    let logger = RateLimitedLogger {
        inner,
        sites: Mutex::new(HashMap::new()),
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(level);
    }
}

/// Lines longer than this are cut: a write to a pipe of at most PIPE_BUF
/// bytes is atomic, so lines of processes sharing one never interleave.
pub const MAX_LOG_LINE: usize = 4096;

/// Log lines dropped because the log could not take them at once.
static DROPPED_LINES: AtomicU64 = AtomicU64::new(0);

/// How many log lines this process dropped because its log was full.
pub fn dropped_log_lines() -> u64 {
    DROPPED_LINES.load(Ordering::Relaxed)
}

/// Writes each line as one write(2) and never retries: a line the log
/// cannot take now (a full non-blocking pipe: EAGAIN) or at all is dropped
/// and counted, and the next line that gets through says how many went.
/// Nothing that serves the guest or QMP ever waits for a log reader.
pub struct LogWriter {
    fd: RawFd,
}

impl LogWriter {
    /// A writer on `log`, which stays open for the life of the process.
    pub fn on(log: std::fs::File) -> LogWriter {
        let fd = log.as_raw_fd();
        std::mem::forget(log);
        LogWriter { fd }
    }

    /// One write of `line`; whether it went.
    fn write_line(&self, line: &[u8]) -> bool {
        // SAFETY: `self.fd` is the log's descriptor, open for the life of
        // the process (init_logging never closes it).
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.fd) };
        matches!(nix::unistd::write(fd, line), Ok(n) if n == line.len())
    }
}

impl std::io::Write for LogWriter {
    fn write(&mut self, record: &[u8]) -> std::io::Result<usize> {
        let dropped = DROPPED_LINES.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let note = format!("[log: {dropped} lines dropped: the log could not take them]\n");
            if !self.write_line(note.as_bytes()) {
                DROPPED_LINES.fetch_add(dropped, Ordering::Relaxed);
            }
        }
        let line = if record.len() > MAX_LOG_LINE {
            let mut cut = record[..MAX_LOG_LINE - 1].to_vec();
            cut.push(b'\n');
            std::borrow::Cow::Owned(cut)
        } else {
            std::borrow::Cow::Borrowed(record)
        };
        if !self.write_line(&line) {
            DROPPED_LINES.fetch_add(1, Ordering::Relaxed);
        }
        // Whatever happened to it, the line is done with: no retry.
        Ok(record.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The descriptor the log is written to: stderr, or the file
/// [`init_logging`] was given.
static LOG_FD: AtomicI32 = AtomicI32::new(2);

/// The descriptor the log is written to, for a seccomp filter that allows
/// `write` there and nowhere else.
pub fn log_fd() -> RawFd {
    LOG_FD.load(Ordering::Relaxed)
}

thread_local! {
    static THREAD_LABEL: Cell<Option<&'static str>> = const { Cell::new(None) };
}

/// Names this thread's log lines `label` instead of the process: a device
/// run as a thread of the core logs under its own name, as its process would.
pub fn set_thread_log_label(label: &'static str) {
    THREAD_LABEL.set(Some(label));
}

/// Lines one place in the code may log at once.
const LOG_BURST: u32 = 20;
/// Then one line per this long.
const LOG_INTERVAL: Duration = Duration::from_millis(500);

/// A token bucket: `burst` events at once, then one per `interval`; counts
/// what it refuses, to say so with the next event it lets through.
#[derive(Debug)]
pub struct RateLimit {
    burst: u32,
    interval: Duration,
    tokens: u32,
    refilled: Instant,
    suppressed: u64,
}

impl RateLimit {
    /// A full bucket.
    pub fn new(burst: u32, interval: Duration, now: Instant) -> RateLimit {
        RateLimit {
            burst,
            interval,
            tokens: burst,
            refilled: now,
            suppressed: 0,
        }
    }

    /// `Some(n)`: let the event through, `n` were refused since the last one.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        let elapsed = now.saturating_duration_since(self.refilled);
        let earned = (elapsed.as_nanos() / self.interval.as_nanos().max(1)) as u64;
        if earned > 0 {
            self.tokens = (u64::from(self.tokens) + earned).min(u64::from(self.burst)) as u32;
            self.refilled = now;
        }
        if self.tokens == 0 {
            self.suppressed += 1;
            return None;
        }
        self.tokens -= 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

struct RateLimitedLogger {
    inner: env_logger::Logger,
    sites: Mutex<HashMap<(&'static str, u32), RateLimit>>,
}

impl log::Log for RateLimitedLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.inner.enabled(record.metadata()) {
            return;
        }
        if record.level() >= log::Level::Debug {
            return self.inner.log(record);
        }
        let site = (
            record
                .file_static()
                .or(record.module_path_static())
                .unwrap_or("?"),
            record.line().unwrap_or(0),
        );
        let now = Instant::now();
        let admitted = {
            let mut sites = lock(&self.sites);
            sites
                .entry(site)
                .or_insert_with(|| RateLimit::new(LOG_BURST, LOG_INTERVAL, now))
                .admit(now)
        };
        match admitted {
            None => {}
            Some(0) => self.inner.log(record),
            Some(suppressed) => self.inner.log(
                &log::Record::builder()
                    .args(format_args!(
                        "{} ({suppressed} more such lines suppressed)",
                        record.args()
                    ))
                    .metadata(record.metadata().clone())
                    .file(record.file())
                    .line(record.line())
                    .module_path(record.module_path())
                    .build(),
            ),
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Gives the heap's free pages back to the host: what start-up allocated
/// and freed (argument parsing, a seccomp filter's compilation) would
/// otherwise stay in the process's memory for its whole life. For the
/// processes a VM keeps many of that wait most of their time.
pub fn release_free_memory() {
    // SAFETY: malloc_trim only returns free heap memory to the kernel; it
    // takes the allocator's own locks.
    unsafe { nix::libc::malloc_trim(0) };
}

/// Now, in microseconds since the Unix epoch: when a trace record was made
/// (the core's and the device processes' records share the clock).
pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_micros() as u64)
        .unwrap_or_default()
}

/// Locks `mutex`, whether or not a thread panicked holding it: the data
/// under this project's locks stays consistent across a panic (each
/// critical section leaves it whole), and a panicking thread must not take
/// the others down with it.
pub fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One line: the error and each of its causes.
pub fn describe(error: &dyn Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

/// Parses the command line with clap. `--help` and `--version` print and
/// exit 0; a bad command line prints one line, `<program>: <what is
/// wrong>`, and exits [`EXIT_USAGE`].
pub fn parse_cli<T: clap::Parser>(program: &str) -> Result<T, ExitCode> {
    match T::try_parse() {
        Ok(cli) => Ok(cli),
        Err(error) if !error.use_stderr() => {
            let _ = error.print();
            Err(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("{program}: {}", one_line(&error.render().to_string()));
            Err(ExitCode::from(EXIT_USAGE))
        }
    }
}

/// clap's message spans lines and adds the usage; keep its sentence.
fn one_line(rendered: &str) -> String {
    let first = rendered
        .lines()
        .take_while(|line| !line.is_empty() && !line.starts_with("Usage:"))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    first.trim_start_matches("error: ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_errors_become_one_sentence() {
        let rendered = "error: invalid value 'x' for '--smp <SMP>': bad\n  tip: more\n\nUsage: papervisor [OPTIONS]\n";
        assert_eq!(
            one_line(rendered),
            "invalid value 'x' for '--smp <SMP>': bad tip: more"
        );
    }

    #[test]
    fn a_repeating_line_is_limited_and_the_suppressed_ones_counted() {
        let start = Instant::now();
        let mut limit = RateLimit::new(3, Duration::from_secs(1), start);
        let admitted: Vec<Option<u64>> = (0..10).map(|_| limit.admit(start)).collect();
        assert_eq!(&admitted[..3], [Some(0); 3]);
        assert!(admitted[3..].iter().all(Option::is_none));
        // A second later one more line, which says how many were dropped.
        assert_eq!(limit.admit(start + Duration::from_secs(1)), Some(7));
        assert_eq!(limit.admit(start + Duration::from_secs(1)), None);
        // A quiet spell refills the bucket, up to the burst.
        let later = start + Duration::from_secs(100);
        let refilled = (0..5).filter(|_| limit.admit(later).is_some()).count();
        assert_eq!(refilled, 3);
    }

    #[test]
    fn a_full_log_drops_and_counts_lines_and_never_waits() {
        use std::io::Write;
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK).unwrap();
        let mut writer = LogWriter {
            fd: write.as_raw_fd(),
        };
        let line = [b'x'; 1000];
        // A pipe holds 64 KiB: the rest is dropped at once, not waited for.
        for _ in 0..200 {
            assert_eq!(writer.write(&line).unwrap(), line.len());
        }
        let dropped = dropped_log_lines();
        assert!(dropped >= 100, "{dropped} dropped");
        // Drained, the next line says how many went before it.
        let mut sink = vec![0u8; 1 << 20];
        while nix::unistd::read(&read, &mut sink).is_ok_and(|n| n > 0) {}
        writer.write_all(b"next\n").unwrap();
        let n = nix::unistd::read(&read, &mut sink).unwrap();
        let text = String::from_utf8_lossy(&sink[..n]);
        assert!(text.contains("lines dropped"), "{text}");
        assert!(text.ends_with("next\n"), "{text}");
        // An overlong line is cut to one atomic write.
        writer.write_all(&[b'y'; 3 * MAX_LOG_LINE]).unwrap();
        let n = nix::unistd::read(&read, &mut sink).unwrap();
        assert_eq!(n, MAX_LOG_LINE);
        assert_eq!(sink[n - 1], b'\n');
    }

    #[test]
    fn causes_are_chained() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("cannot start")
            }
        }
        impl Error for Outer {
            fn source(&self) -> Option<&(dyn Error + 'static)> {
                Some(&self.0)
            }
        }
        let error = Outer(std::io::Error::other("no such file"));
        assert_eq!(describe(&error), "cannot start: no such file");
    }
}
