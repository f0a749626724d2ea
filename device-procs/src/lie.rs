//! `x-inject-fault {"fault": "lie"}` (fault-injection builds only): a
//! compromised device process that speaks the protocol perfectly and lies.
//! Every message is well-formed, so it passes decoding and reaches the
//! receiver's judgement: unknown DRCs and devices, releases of devices
//! nobody asked back (the boot core first), replies to ids never asked,
//! huge counts, a flood of notifications; and, from the RTAS server, machine
//! requests (stop, start, power off, reset, routing) that the guest's next
//! calls did not make. Each receiver must refuse with a logged reason and
//! stay consistent; `tell` reports what each lie got.

use crate::links::Links;
use ipc_proto::control::Answer;
use ipc_proto::link::core_rtas::{self, CoreRtas, PlatformRequest};
use ipc_proto::link::hotplug_eventlog::{
    self, HotplugAction, HotplugEvent, HotplugEventLog, HotplugTarget,
};
use ipc_proto::link::hotplug_notify::{HotplugNotify, Notification, Released};
use ipc_proto::link::rtas_eventlog::{self, RtasEventLog};
use ipc_proto::link::rtas_hotplug::{self, RtasHotplug};
use ipc_proto::link::{core_eventlog, core_hotplug};
use ipc_proto::papr::DrcIndex;
use ipc_proto::protocol::Protocol;
use ipc_proto::ProcessKind;

/// Notifications in the flood.
pub const NOTIFICATION_FLOOD: u64 = 10_000;
/// RTAS calls answered with a lie after `tell`.
pub const LYING_CALLS: usize = 8;
/// The id the lies start from: far past any real one.
const LIE_IDS: u64 = u64::MAX - 2 * NOTIFICATION_FLOOD;
/// The boot core's QOM path, as the core names it.
const BOOT_CORE: &str = "/machine/unattached/device[0]";

/// Tells this kind's lies; returns what each got.
pub fn tell(links: &mut Links) -> String {
    log::warn!("lying to the core and the peers as asked");
    let told = match links.kind() {
        ProcessKind::HotplugController => controller_lies(links),
        ProcessKind::RtasServer => rtas_lies(links),
        ProcessKind::EventLog => eventlog_lies(links),
    };
    told.join("; ")
}

/// A request to a peer and what it answered: `status` or `refused`.
fn ask<P: Protocol>(links: &mut Links, request: P::Request) -> String {
    let what = ipc_proto::control::request_name(&request);
    match links.request::<P>(request) {
        Ok(Answer::Link(reply)) => format!("{what}: {reply:?}"),
        Ok(Answer::Refused(refusal)) => format!("{what}: refused ({refusal:?})"),
        Ok(other) => format!("{what}: {other:?}"),
        Err(down) => format!("{what}: no answer ({:?})", down.0),
    }
}

fn stray_reply<P: Protocol>(links: &mut Links, reply: P::Reply) -> String {
    let what = format!("{:?}: a reply to an id never asked", P::LINK);
    let sent = links.stray_reply::<P>(u64::MAX, Answer::Link(reply));
    format!("{what}: {}", if sent { "sent" } else { "not sent" })
}

fn controller_lies(links: &mut Links) -> Vec<String> {
    let mut told = Vec::new();
    // To the core: releases and refusals it never asked for, then a flood.
    let lies = [
        Notification::Released(Released {
            device: BOOT_CORE.into(),
        }),
        Notification::Released(Released {
            device: "/machine/peripheral/core1".into(),
        }),
        Notification::Released(Released {
            device: "/machine/peripheral/dimm0".into(),
        }),
        Notification::Released(Released {
            device: "/machine/peripheral/never-plugged".into(),
        }),
        Notification::UnplugRefused {
            device: "/machine/peripheral/core1".into(),
        },
        Notification::UnplugRefused {
            device: "/machine/peripheral/never-plugged".into(),
        },
    ];
    let mut id = LIE_IDS;
    let mut sent = 0;
    for lie in lies {
        log::warn!("notifying {lie:?} as notification {id}");
        if links.notify_as::<HotplugNotify>(id, lie).is_ok() {
            sent += 1;
        }
        id += 1;
    }
    told.push(format!("{sent} lying notifications"));
    let mut flooded = 0;
    for _ in 0..NOTIFICATION_FLOOD {
        let lie = Notification::Released(Released {
            device: BOOT_CORE.into(),
        });
        if links.notify_as::<HotplugNotify>(id, lie).is_ok() {
            flooded += 1;
        }
        id += 1;
    }
    told.push(format!("a flood of {flooded} releases of the boot core"));
    told.push(stray_reply::<core_hotplug::CoreHotplug>(
        links,
        core_hotplug::Reply::Drcs {
            rows: Vec::new(),
            next: None,
        },
    ));
    // To the event log: events for no DRC of theirs, a huge count. (A
    // well-formed request with an id from the future would be judged, and
    // would make the event log take the controller's real requests that
    // follow for repeats: a controller can deny the hot-plug service it
    // provides, and nothing else; these lies are about content.)
    let event = |target| HotplugEvent {
        action: HotplugAction::Add,
        target,
    };
    for request in [
        hotplug_eventlog::Request::Queue(event(HotplugTarget::CpuByIndex(DrcIndex(0x2000_0001)))),
        hotplug_eventlog::Request::Queue(event(HotplugTarget::LmbsCountIndexed {
            count: u32::MAX,
            first: DrcIndex(0x8000_0004),
        })),
        hotplug_eventlog::Request::Withdraw(event(HotplugTarget::LmbsCountIndexed {
            count: 2,
            first: DrcIndex(0x1000_0001),
        })),
    ] {
        told.push(ask::<HotplugEventLog>(links, request));
    }
    told
}

fn rtas_lies(links: &mut Links) -> Vec<String> {
    let mut told = Vec::new();
    // To the controller: connectors that do not exist, the boot core given
    // back, a DR indicator logical connectors lack, a huge sensor number,
    // configure-connector on an empty connector and on the boot core.
    let boot_core = 0x1000_0000;
    for request in [
        rtas_hotplug::Request::SetIndicator {
            indicator: 9001,
            drc: 0xdead_beef,
            value: 1,
        },
        rtas_hotplug::Request::SetIndicator {
            indicator: 9003,
            drc: boot_core,
            value: 0,
        },
        rtas_hotplug::Request::SetIndicator {
            indicator: 9002,
            drc: boot_core,
            value: 1,
        },
        rtas_hotplug::Request::GetSensorState {
            sensor: u32::MAX,
            drc: boot_core,
        },
        rtas_hotplug::Request::ConfigureStep { drc: 0x1000_0003 },
        rtas_hotplug::Request::ConfigureDone { drc: boot_core },
    ] {
        told.push(ask::<RtasHotplug>(links, request));
    }
    // To the event log: a buffer of 4 GiB, every class.
    for request in [
        rtas_eventlog::Request::CheckException {
            mask: u32::MAX,
            max_len: u32::MAX,
        },
        rtas_eventlog::Request::EventScan { mask: u32::MAX },
    ] {
        told.push(ask::<RtasEventLog>(links, request));
    }
    told.push(stray_reply::<CoreRtas>(
        links,
        core_rtas::Reply::CallDone {
            request: Some(PlatformRequest::StopSelf),
        },
    ));
    links.faults_mut().lies = LYING_CALLS;
    told.push(format!(
        "the next {LYING_CALLS} calls will be answered with lies"
    ));
    told
}

fn eventlog_lies(links: &mut Links) -> Vec<String> {
    vec![
        stray_reply::<core_eventlog::CoreEventLog>(links, core_eventlog::Reply::Queued(Vec::new())),
        stray_reply::<HotplugEventLog>(links, hotplug_eventlog::Reply::Full),
        stray_reply::<RtasEventLog>(links, rtas_eventlog::Reply::Event(vec![0xff; 116])),
    ]
}

/// The lie told for the `n`th lying call: what no guest call of the test
/// asks for (stop the caller, start vCPUs that do not exist or run, power
/// off, reset, route an interrupt to a missing vCPU, a crash report).
pub fn call_lie(n: usize) -> PlatformRequest {
    const LIES: [fn() -> PlatformRequest; 8] = [
        || PlatformRequest::StopSelf,
        || PlatformRequest::StartCpu {
            cpu: 63,
            entry: 0x100,
            r3: 0,
        },
        || PlatformRequest::StartCpu {
            cpu: 0,
            entry: 0,
            r3: 0,
        },
        || PlatformRequest::SetInterruptServer {
            source: ipc_proto::papr::irq::HOTPLUG,
            server: 63,
        },
        || PlatformRequest::PowerOff,
        || PlatformRequest::Reboot,
        || PlatformRequest::OsTerm {
            message: "lie".into(),
        },
        || PlatformRequest::DisplayCharacter(b'!'),
    ];
    LIES[n % LIES.len()]()
}
