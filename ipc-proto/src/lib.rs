//! The contract between Papervisor's processes.
//!
//! [`papr`] is the platform vocabulary every process shares: DRC indices, RTAS
//! tokens and interrupt sources, as the guest sees them.
#![deny(missing_docs)]

pub mod papr;
