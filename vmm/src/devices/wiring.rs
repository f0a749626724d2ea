//! Which process gets which end of which link when processes are started:
//! all of them at boot, or one (or several) being restarted while the
//! others keep running. The core makes a fresh socketpair for every link that
//! touches a process being started; each end goes to the core, to the new
//! process as one of its descriptors, or to a running peer by re-link.

use ipc_proto::{Link, ProcessKind};

/// Who gets one end of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    /// The core.
    Core,
    /// A process being started: the end is one of its descriptors.
    Starting(ProcessKind),
    /// A process that keeps running: it adopts the end by re-link.
    Running(ProcessKind),
}

/// One new link and where its ends go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkPlan {
    /// The link.
    pub link: Link,
    /// Who holds its requester's end.
    pub requester: Holder,
    /// Who holds its server's end.
    pub server: Holder,
}

/// The new links when `starting` are started.
pub fn plan(starting: &[ProcessKind]) -> Vec<LinkPlan> {
    let holder = |kind: Option<ProcessKind>| match kind {
        None => Holder::Core,
        Some(kind) if starting.contains(&kind) => Holder::Starting(kind),
        Some(kind) => Holder::Running(kind),
    };
    Link::ALL
        .into_iter()
        .filter(|link| starting.iter().any(|kind| kind.links().contains(link)))
        .map(|link| LinkPlan {
            link,
            requester: holder(link.requester()),
            server: holder(link.server()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use Holder::*;
    use ProcessKind::*;

    #[test]
    fn at_boot_every_link_is_new_and_nothing_is_relinked() {
        let plans = plan(&ProcessKind::ALL);
        assert_eq!(plans.len(), Link::ALL.len());
        assert!(plans
            .iter()
            .all(|p| !matches!(p.requester, Running(_)) && !matches!(p.server, Running(_))));
    }

    #[test]
    fn a_restarted_event_log_gets_new_links_and_its_peers_adopt_them() {
        assert_eq!(
            plan(&[EventLog]),
            [
                LinkPlan {
                    link: Link::HotplugEventLog,
                    requester: Running(HotplugController),
                    server: Starting(EventLog)
                },
                LinkPlan {
                    link: Link::RtasEventLog,
                    requester: Running(RtasServer),
                    server: Starting(EventLog)
                },
                LinkPlan {
                    link: Link::CoreEventLog,
                    requester: Core,
                    server: Starting(EventLog)
                },
            ]
        );
    }

    #[test]
    fn a_restarted_controller_gets_its_notify_link_to_the_core() {
        let plans = plan(&[HotplugController]);
        let notify = plans
            .iter()
            .find(|p| p.link == Link::HotplugNotify)
            .unwrap();
        assert_eq!(
            (notify.requester, notify.server),
            (Starting(HotplugController), Core)
        );
        assert_eq!(plans.len(), HotplugController.links().len());
    }
}
