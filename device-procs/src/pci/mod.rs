//! PCI functions as the guest sees them through the PCI host bridge: their
//! configuration space ([`config`]) and, for a virtio device, the common
//! configuration its driver negotiates and sets its queues up through
//! ([`common`]), laid out as a modern virtio-pci function ([`virtio`]);
//! a bridge's root bus as the RTAS calls reach it ([`bridge`]). The process
//! that will serve a bridge's functions (configuration calls, BARs, MSI-X)
//! is built on them.

pub mod bridge;
pub mod common;
pub mod config;
pub mod transport;
pub mod virtio;
