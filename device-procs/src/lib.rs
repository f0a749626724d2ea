//! Papervisor's device processes: the code that handles guest-controlled data
//! outside the core. Each module is one process kind.
#![deny(missing_docs)]

pub mod rtas;
