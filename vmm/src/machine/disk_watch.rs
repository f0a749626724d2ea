//! Whether each disk's block process makes progress, read from the ring
//! itself: the core maps guest memory, so it sees the driver's available
//! index and the backend's used index without asking either.
//!
//! - A block process that lets requests wait and completes none for the
//!   stall timeout is hung: it is cut off (killed), and its successor
//!   serves what it left in flight.
//! - A block process that completed a request before it ended is not in a
//!   crash loop: its end does not count against the restart budget. Ends
//!   in a row without a completed request do, so that a request that kills
//!   every backend it is served to fails the disk instead of looping.

use super::Vm;
use crate::block::disks::{Backend, Disk, Progress};
use crate::control::ControlMessage;
use std::time::{Duration, Instant};

/// How long a block process may complete nothing while requests wait,
/// unless `--block-stall-timeout` says otherwise.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// A backend that ends sooner than this after it took the queue is in a
/// crash loop even if it completed a request.
const SHORT_LIFE: Duration = crate::devices::supervisor::SHORT_LIFE;

/// The core's address of `length` bytes of guest memory at `guest`, if one
/// region holds them all: `(guest start, size, host address)` each.
pub(super) fn host_address(regions: &[(u64, u64, u64)], guest: u64, length: u64) -> Option<u64> {
    regions.iter().find_map(|&(start, size, host)| {
        let offset = guest.checked_sub(start)?;
        (offset.checked_add(length)? <= size).then(|| host + offset)
    })
}

/// The 16-bit word at guest address `guest` in `regions` (`(guest start,
/// size, host address)` each), read through the core's mapping.
pub(super) fn read_ring_index(regions: &[(u64, u64, u64)], guest: u64) -> Option<u16> {
    let host = host_address(regions, guest, 2)?;
    // SAFETY: `host` is the core's mapping of 2 bytes wholly inside one
    // region of guest memory (checked by `host_address`), which stays
    // mapped while the control thread (the only one that unmaps DIMMs, and
    // the caller's) runs this; the guest may change the word at any time
    // (a volatile read of a plain integer, any value valid).
    Some(u16::from_le(unsafe {
        std::ptr::read_volatile(host as *const u16)
    }))
}

/// A disk's first queue as its rings say now.
struct RingIndices {
    /// The driver's available index.
    available: u16,
    /// The backend's used index.
    used: u16,
    /// The queue's entries.
    size: u16,
}

/// The indices of `disk`'s first queue, if its driver started one in
/// guest memory (`regions`).
fn ring_indices(regions: &[(u64, u64, u64)], disk: &Disk) -> Option<RingIndices> {
    let (_, queues) = disk.started.as_ref()?;
    let queue = queues.first()?;
    Some(RingIndices {
        available: read_ring_index(regions, queue.driver.checked_add(2)?)?,
        used: read_ring_index(regions, queue.device.checked_add(2)?)?,
        size: queue.size,
    })
}

impl Vm {
    /// The guest memory regions as `(guest start, size, host address)`.
    pub(super) fn ring_regions(&self) -> Vec<(u64, u64, u64)> {
        self.vhost_memory()
            .iter()
            .map(|region| (region.guest_address, region.size, region.host_address))
            .collect()
    }

    /// A backend of the disk at `serial` took its queue: progress counts
    /// from here. Starts the ticks that watch it, once.
    pub(super) fn watch_progress(&mut self, serial: u64) {
        let regions = self.ring_regions();
        if let Some(disk) = self.disks.by_serial(serial) {
            disk.progress = ring_indices(&regions, disk).map(|rings| Progress::new(rings.used));
        }
        if self.disks.watched {
            return;
        }
        self.disks.watched = true;
        let every =
            (self.stall_timeout() / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let ticks = crate::control::tick(self.control.clone(), "disk-watch", every, || {
            ControlMessage::WatchDisks
        });
        if let Err(error) = ticks {
            log::error!("cannot watch the disks' progress: {error}");
            self.disks.watched = false;
        }
    }

    fn stall_timeout(&self) -> Duration {
        self.disks.stall_timeout.unwrap_or(DEFAULT_STALL_TIMEOUT)
    }

    /// Whether the backend of the disk at `serial`, which ended, had
    /// completed a request since it took the queue (and lived past a crash
    /// loop's span).
    pub(super) fn made_progress(&mut self, serial: u64) -> bool {
        let regions = self.ring_regions();
        let Some(disk) = self.disks.by_serial(serial) else {
            return false;
        };
        match (disk.progress.take(), ring_indices(&regions, disk)) {
            (Some(progress), Some(rings)) => {
                rings.used != progress.started_used && progress.started_at.elapsed() >= SHORT_LIFE
            }
            _ => false,
        }
    }

    /// A tick: every block process of ours that lets requests wait and has
    /// completed none for the stall timeout is cut off as hung.
    pub(super) fn watch_disks(&mut self) {
        let timeout = self.stall_timeout();
        let regions = self.ring_regions();
        let now = Instant::now();
        for disk in self.disks.all_mut() {
            if disk.frontend.is_none() || !matches!(disk.backend, Backend::Process { .. }) {
                continue;
            }
            let Some(rings) = ring_indices(&regions, disk) else {
                continue;
            };
            let Some(progress) = disk.progress.as_mut() else {
                continue;
            };
            let waiting = rings.available.wrapping_sub(rings.used);
            // More waiting than the ring holds is a driver's lie, which the
            // backend refuses to serve: not the backend's hang.
            if rings.used != progress.last_used || waiting == 0 || waiting > rings.size {
                progress.last_used = rings.used;
                progress.stalled_since = None;
                continue;
            }
            let since = *progress.stalled_since.get_or_insert(now);
            if now.duration_since(since) >= timeout {
                progress.stalled_since = None;
                disk.cut_off(format!(
                    "its block process completed none of {waiting} waiting requests in {} ms: taken for hung",
                    timeout.as_millis()
                ));
            }
        }
    }
}
