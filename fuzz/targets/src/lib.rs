//! Papervisor's fuzz targets. Each is an engine-free `fn(&[u8])` that
//! panics on a defect: an engine drives it (fuzz/afl, scripts/fuzz), and
//! `cargo test` here replays every input of its corpus and regressions.

pub mod blk_request;
pub mod event_roundtrip;
pub mod fdt_roundtrip;
pub mod inflight_region;
pub mod ipc_frames;
pub mod pci_bridge;
pub mod pci_config;
pub mod qemu_command_line;
pub mod qmp;
pub mod rtas_call;
pub mod seeds;
pub mod spawner_requests;
pub mod vhost_user_replies;
pub mod virtio_common;

/// A target.
pub type Target = fn(&[u8]);

/// Every target, by name (the name of its corpus directory too).
pub const TARGETS: [(&str, Target); 13] = [
    ("ipc_frames", ipc_frames::fuzz),
    ("rtas_call", rtas_call::fuzz),
    ("qmp", qmp::fuzz),
    ("event_roundtrip", event_roundtrip::fuzz),
    ("fdt_roundtrip", fdt_roundtrip::fuzz),
    ("spawner_requests", spawner_requests::fuzz),
    ("pci_config", pci_config::fuzz),
    ("virtio_common", virtio_common::fuzz),
    ("blk_request", blk_request::fuzz),
    ("pci_bridge", pci_bridge::fuzz),
    ("vhost_user_replies", vhost_user_replies::fuzz),
    ("inflight_region", inflight_region::fuzz),
    ("qemu_command_line", qemu_command_line::fuzz),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// The targets' names.
pub fn names() -> Vec<&'static str> {
    TARGETS.iter().map(|(n, _)| *n).collect()
}
