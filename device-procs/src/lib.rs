//! Papervisor's device processes: the code that handles guest-controlled data
//! outside the core. Each process kind has one folder of the same shape
//! (`mod.rs` its logic, `process.rs` its process); [`process`] is what every
//! kind does around its logic; `src/bin/` holds their entry points.
#![deny(missing_docs)]

pub mod block;
pub mod clock;
pub mod eventlog;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod hotplug;
#[cfg(feature = "fault-injection")]
pub mod lie;
pub mod links;
pub mod pci;
pub mod process;
pub mod rtas;
pub mod seccomp;
pub mod state;
pub mod trace;

use ipc_proto::ProcessKind;

/// How a device of `kind` runs, in its own process (`process::main`) or on
/// a thread of the core (`--device-mode in-process`): the same code.
pub fn run_fn(kind: ProcessKind) -> process::Run {
    match kind {
        ProcessKind::RtasServer => rtas::process::run,
        ProcessKind::HotplugController => hotplug::process::run,
        ProcessKind::EventLog => eventlog::process::run,
    }
}
