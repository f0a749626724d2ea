//! Where the core's start-up went, for x-query-startup.

use serde_json::{json, Value};
use std::time::Duration;

/// Where the core's start-up went (x-query-startup).
#[derive(Default)]
pub(super) struct StartupTimes {
    /// KVM's VM, guest memory, interrupts and the boot vCPUs.
    pub(super) kvm: Duration,
    /// The device processes started, handshaken, set up, told the cold-plugged cores.
    pub(super) devices: Duration,
    /// From `main` to vCPU 0 started, at the first power-on.
    pub(super) vcpu0_started: Option<Duration>,
}

impl StartupTimes {
    pub(super) fn to_json(&self) -> Value {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        json!({
            "kvm-ms": ms(self.kvm),
            "devices-ms": ms(self.devices),
            "vcpu0-started-ms": self.vcpu0_started.map(ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_times_are_milliseconds_and_vcpu0_is_null_until_power_on() {
        let mut times = StartupTimes {
            kvm: Duration::from_micros(1500),
            devices: Duration::from_millis(20),
            vcpu0_started: None,
        };
        assert_eq!(
            times.to_json(),
            json!({"kvm-ms": 1.5, "devices-ms": 20.0, "vcpu0-started-ms": null})
        );
        times.vcpu0_started = Some(Duration::from_millis(40));
        assert_eq!(times.to_json()["vcpu0-started-ms"], 40.0);
    }
}
