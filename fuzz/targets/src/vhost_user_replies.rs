//! What a vhost-user backend sends the core's frontend
//! (`vmm::block::frontend`): the input is the byte stream of the
//! backend's replies, whatever the frontend asked. The frontend connects
//! (features, protocol features, the configuration), asks for an inflight
//! region, starts a queue and stops it, each step on whatever came back.
//!
//! Beyond not panicking or hanging: a backend the frontend accepted offered
//! virtio 1.0 and protocol features and gave the whole configuration; the
//! features a driver may take are among those it offered.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use vmm::block::frontend::{BlockFrontend, QueueSetup, CONFIG_BYTES};
use vmm_sys_util::eventfd::EventFd;

/// The target.
pub fn fuzz(data: &[u8]) {
    let (core_end, mut backend_end) = UnixStream::pair().expect("a socket pair");
    let replies = data.to_vec();
    let backend = std::thread::spawn(move || {
        let _ = backend_end.write_all(&replies);
        let _ = backend_end.shutdown(std::net::Shutdown::Write);
        // Whatever the frontend sends is read and dropped, until it hangs up.
        let mut sink = [0; 4096];
        while matches!(backend_end.read(&mut sink), Ok(n) if n > 0) {}
    });
    if let Ok(mut frontend) = BlockFrontend::connect(core_end) {
        assert_eq!(frontend.config().len(), CONFIG_BYTES as usize);
        assert_ne!(frontend.driver_features() & (1 << 32), 0, "no VERSION_1");
        let _ = frontend.sectors();
        if frontend.tracks_inflight() {
            let _ = frontend.new_inflight(16);
        }
        let kick = EventFd::new(0).expect("an eventfd");
        let call = EventFd::new(0).expect("an eventfd");
        let queue = QueueSetup {
            size: 16,
            descriptors: 0x1000,
            available: 0x2000,
            used: 0x3000,
            base: 0,
            kick: &kick,
            call: &call,
        };
        if frontend.start(frontend.driver_features(), &[queue]).is_ok() {
            if let Ok(bases) = frontend.stop() {
                assert!(bases.len() <= 1, "{bases:?}");
            }
        }
    }
    backend.join().expect("the backend's thread");
}
