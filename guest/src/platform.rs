//! What the device tree tells us about the machine, read once at boot.

use crate::arch::MAX_CPUS;
use crate::fdt::{be32, Fdt, Node};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

/// The RTAS calls this guest knows how to use, in the order the banner lists them.
pub const RTAS_CALLS: &[&str] = &[
    "display-character",
    "get-time-of-day",
    "power-off",
    "system-reboot",
    "ibm,os-term",
    "ibm,set-xive",
    "start-cpu",
    "stop-self",
    "query-cpu-stopped-state",
    "set-indicator",
    "get-sensor-state",
    "ibm,configure-connector",
    "check-exception",
    "event-scan",
];

pub struct Platform {
    pub fdt: Fdt,
    pub vty_termno: u64,
    pub vty_irq: Option<u32>,
    pub hotplug_irq: Option<u32>,
    pub epow_irq: Option<u32>,
    /// Hardware ids of the present CPU threads, in device-tree order.
    pub present: [u32; MAX_CPUS],
    pub present_count: usize,
    pub threads_per_core: usize,
    pub memory_bytes: u64,
    pub cpu_drcs: u32,
    pub lmb_drcs: u32,
    rtas: Option<Node>,
}

struct PlatformCell {
    ready: AtomicBool,
    value: UnsafeCell<Option<Platform>>,
}

// SAFETY: written once by the boot CPU before `ready` is set; read-only after.
unsafe impl Sync for PlatformCell {}

static PLATFORM: PlatformCell = PlatformCell {
    ready: AtomicBool::new(false),
    value: UnsafeCell::new(None),
};

pub fn get() -> &'static Platform {
    assert!(
        PLATFORM.ready.load(Ordering::Acquire),
        "platform not read yet"
    );
    // SAFETY: `ready` is set only after the value was written, and it is never written again.
    unsafe {
        (*PLATFORM.value.get())
            .as_ref()
            .expect("platform set before ready")
    }
}

pub enum ProbeError {
    BadBlob,
    NoVty,
}

/// Reads the device tree at `fdt_address`. Called once, by the boot CPU.
pub fn probe(fdt_address: u64) -> Result<&'static Platform, ProbeError> {
    // SAFETY: the VMM passes the address of the tree it wrote into our RAM.
    let fdt = unsafe { Fdt::from_addr(fdt_address) }.ok_or(ProbeError::BadBlob)?;
    let mut platform = Platform {
        fdt,
        vty_termno: 0,
        vty_irq: None,
        hotplug_irq: None,
        epow_irq: None,
        present: [0; MAX_CPUS],
        present_count: 0,
        threads_per_core: 1,
        memory_bytes: 0,
        cpu_drcs: 0,
        lmb_drcs: 0,
        rtas: fdt.path("/rtas"),
    };

    let vty = fdt.path("/vdevice/vty").ok_or(ProbeError::NoVty)?;
    platform.vty_termno = fdt.prop_u32(vty, "reg").ok_or(ProbeError::NoVty)? as u64;
    platform.vty_irq = fdt.prop_u32(vty, "interrupts");
    platform.hotplug_irq = fdt
        .path("/event-sources/hot-plug-events")
        .and_then(|node| fdt.prop_u32(node, "interrupts"));
    platform.epow_irq = fdt
        .path("/event-sources/epow-events")
        .and_then(|node| fdt.prop_u32(node, "interrupts"));

    if let Some(cpus) = fdt.path("/cpus") {
        platform.cpu_drcs = fdt.prop_u32(cpus, "ibm,drc-indexes").unwrap_or(0);
        fdt.for_each_child(cpus, |core| {
            if let Some(servers) = fdt.prop(core, "ibm,ppc-interrupt-server#s") {
                platform.threads_per_core = servers.len() / 4;
                for i in 0..servers.len() / 4 {
                    if platform.present_count < MAX_CPUS {
                        platform.present[platform.present_count] =
                            be32(servers, i * 4).unwrap_or(0);
                        platform.present_count += 1;
                    }
                }
            }
        });
    }
    fdt.for_each_child(fdt.root(), |node| {
        if fdt.prop(node, "device_type") == Some(b"memory\0") {
            if let Some(reg) = fdt.prop(node, "reg") {
                for entry in reg.chunks_exact(16) {
                    let hi = be32(entry, 8).unwrap_or(0) as u64;
                    let lo = be32(entry, 12).unwrap_or(0) as u64;
                    platform.memory_bytes += (hi << 32) | lo;
                }
            }
        }
    });
    platform.lmb_drcs = fdt.prop_u32(fdt.root(), "ibm,drc-indexes").unwrap_or(0);

    // SAFETY: only the boot CPU runs here, and nobody reads before `ready`.
    unsafe { *PLATFORM.value.get() = Some(platform) };
    PLATFORM.ready.store(true, Ordering::Release);
    Ok(get())
}

impl Platform {
    pub fn rtas_token(&self, name: &str) -> Option<u32> {
        self.fdt.prop_u32(self.rtas?, name)
    }
}
