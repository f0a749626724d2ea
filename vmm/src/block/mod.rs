//! Disks: block nodes (the images the core opens, [`nodes`]), the disks on
//! the PCI host bridge that serve them ([`disks`]), and the core as the
//! vhost-user frontend of the backend behind each ([`frontend`]).

pub mod chardevs;
pub mod disks;
pub mod frontend;
pub mod nodes;
