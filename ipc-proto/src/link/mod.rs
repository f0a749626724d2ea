//! One module per link: its [`Protocol`](crate::protocol::Protocol), its
//! requests and replies, and their validation.

pub mod core_eventlog;
pub mod core_hotplug;
pub mod core_rtas;
pub mod hotplug_eventlog;
pub mod hotplug_notify;
pub mod rtas_eventlog;
pub mod rtas_hotplug;

/// The names of the requests (notifications, for the notify link) that go
/// over `link`: what an armed fault's `request` may name.
pub fn request_names(link: crate::Link) -> &'static [&'static str] {
    use strum::VariantNames;
    match link {
        crate::Link::CoreRtas => core_rtas::Request::VARIANTS,
        crate::Link::CoreHotplug => core_hotplug::Request::VARIANTS,
        crate::Link::HotplugNotify => hotplug_notify::Notification::VARIANTS,
        crate::Link::RtasHotplug => rtas_hotplug::Request::VARIANTS,
        crate::Link::HotplugEventLog => hotplug_eventlog::Request::VARIANTS,
        crate::Link::RtasEventLog => rtas_eventlog::Request::VARIANTS,
        crate::Link::CoreEventLog => core_eventlog::Request::VARIANTS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names are those `control::request_name` gives a request, the
    /// names an armed fault compares.
    #[test]
    fn request_names_are_the_names_faults_compare() {
        let request = core_eventlog::Request::PowerDown;
        assert!(request_names(crate::Link::CoreEventLog)
            .contains(&crate::control::request_name(&request).as_str()));
        let all: Vec<&str> = crate::Link::ALL
            .iter()
            .flat_map(|link| request_names(*link).iter().copied())
            .collect();
        for used in [
            "Call",
            "Plug",
            "SetIndicator",
            "CheckException",
            "GetSensorState",
            "ConfigureStep",
            "ConfigureDone",
            "BarAccess",
            "ChangeMsi",
            "WritePciConfig",
        ] {
            assert!(all.contains(&used), "{used}");
        }
    }
}
