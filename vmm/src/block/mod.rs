//! Disks: block nodes (the images the core opens, [`nodes`]) and the core
//! as the vhost-user frontend of the backend that serves each ([`frontend`]).

pub mod frontend;
pub mod nodes;
