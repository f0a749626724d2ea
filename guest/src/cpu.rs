//! Which CPUs run guest code. Only the boot CPU runs until others are started.

use crate::arch::MAX_CPUS;
use core::sync::atomic::{AtomicBool, Ordering};

static ONLINE: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

pub fn set_online(cpu: usize, online: bool) {
    if let Some(flag) = ONLINE.get(cpu) {
        flag.store(online, Ordering::SeqCst);
    }
}

pub fn is_online(cpu: usize) -> bool {
    ONLINE
        .get(cpu)
        .is_some_and(|flag| flag.load(Ordering::SeqCst))
}
