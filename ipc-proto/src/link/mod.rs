//! One module per link: its [`Protocol`](crate::protocol::Protocol), its
//! requests and replies, and their validation.

pub mod core_eventlog;
pub mod core_hotplug;
pub mod core_rtas;
pub mod hotplug_eventlog;
pub mod hotplug_notify;
pub mod rtas_eventlog;
pub mod rtas_hotplug;
