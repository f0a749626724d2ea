//! Papervisor's device processes: the code that handles guest-controlled data
//! outside the core. Each module is one process kind; `src/bin/` holds their
//! entry points.
#![deny(missing_docs)]

pub mod clock;
pub mod eventlog;
pub mod hotplug;
pub mod process;
pub mod rtas;
pub mod seccomp;

/// Logs to stderr with the process kind in every line, so that the
/// interleaved logs of the core and its device processes stay readable.
pub fn init_logging(process: &'static str) {
    use std::io::Write;
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(move |out, record| {
            writeln!(
                out,
                "[{} {:5} {process}] {}",
                out.timestamp_millis(),
                record.level(),
                record.args()
            )
        })
        .init();
}
