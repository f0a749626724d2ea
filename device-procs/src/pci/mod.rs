//! PCI functions as the guest sees them through the PCI host bridge: their
//! configuration space ([`config`]). The process that will serve a bridge's
//! functions (configuration calls, BARs, MSI-X) is built on it.

pub mod config;
