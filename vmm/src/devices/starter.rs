//! How devices start, behind one trait: as processes of their own (jailed,
//! the default), or as threads of the core (`--device-mode in-process`,
//! which prices isolation, and lets tests run the supervisor's glue
//! without a jail or KVM). Only the thread starter links the device code
//! (`device-procs`), and only with the `in-process` feature.

use super::spawn::{self, DeviceMode, Launch, Spawned};

/// Starts devices.
pub trait Starter: Send + Sync {
    /// Starts `launches` together: one result each, in order.
    fn start(&self, launches: Vec<Launch>) -> Vec<Spawned>;
    /// Where the devices it starts run.
    fn mode(&self) -> DeviceMode;
    /// Whether a running device can be replaced by another program
    /// (x-upgrade-device-process): threads of the core run no program.
    fn replaceable(&self) -> bool {
        self.mode() == DeviceMode::OutOfProcess
    }
}

/// Devices as processes of their own, jailed unless the sandbox is off.
pub struct Processes;

impl Starter for Processes {
    fn start(&self, launches: Vec<Launch>) -> Vec<Spawned> {
        spawn::spawn(launches)
    }

    fn mode(&self) -> DeviceMode {
        DeviceMode::OutOfProcess
    }
}
