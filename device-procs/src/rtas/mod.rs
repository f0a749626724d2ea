//! The RTAS server: the only device process that maps guest memory. It reads
//! and validates every `rtas_args` block ([`calls`]), runs configure-connector
//! walks ([`configure`]), reaches the hotplug controller and the event log
//! on its own links, and returns what the machine must do to the core as
//! typed requests ([`process`]).

pub mod calls;
pub mod configure;
mod pci;
pub mod process;
