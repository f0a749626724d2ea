//! PCI functions as the guest sees them through the PCI host bridge: their
//! configuration space ([`config`]) and, for a virtio device, the common
//! configuration its driver negotiates and sets its queues up through
//! ([`common`]), laid out as a modern virtio-pci function ([`virtio`]).
//! The process that will serve a bridge's functions
//! (configuration calls, BARs, MSI-X) is built on them.

pub mod common;
pub mod config;
pub mod virtio;
