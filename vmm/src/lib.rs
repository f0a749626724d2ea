//! The Papervisor core: KVM, the vCPUs, guest memory, the supervision of the device
//! processes, the console and QMP. The `papervisor` binary runs it; the
//! modules are public so that the fuzz targets (fuzz/) reach the parsers
//! and builders they test.

#![deny(missing_docs)]

pub mod block;
pub mod boot;
pub mod config;
pub mod console;
pub mod control;
pub mod cores;
pub mod daemon;
pub mod devices;
pub mod dimms;
pub mod fdt;
pub mod hcall;
pub mod interrupts;
pub mod layout;
pub mod line_stream;
pub mod logging;
pub mod machine;
pub mod memory;
pub mod qmp;
pub mod request;
pub mod runtime;
pub mod seccomp;
pub mod signals;
pub mod sockets;
pub mod stats;
pub mod trace;
pub mod vcpu;

/// When the core's `main` began: the origin of `x-query-startup`'s times.
pub static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
