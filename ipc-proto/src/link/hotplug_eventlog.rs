//! Hotplug controller → event log: hot-plug events to queue or withdraw.

use crate::channel::no_descriptors;
use crate::papr::{DrcIndex, DrcKind};
use crate::protocol::{link_protocol, Message};
use serde::{Deserialize, Serialize};

link_protocol! {
    /// The link's protocol.
    HotplugEventLog: HotplugEventLog, Request => Reply
}

/// What a hot-plug event asks of the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HotplugAction {
    /// Take the resource.
    Add,
    /// Give the resource back.
    Remove,
}

/// Which resources, in the PAPR identifier forms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HotplugTarget {
    /// One CPU core, by DRC index.
    CpuByIndex(DrcIndex),
    /// `count` LMBs from the DRC `first` (QEMU's DIMM form).
    LmbsCountIndexed {
        /// How many LMBs.
        count: u32,
        /// The first LMB's DRC.
        first: DrcIndex,
    },
    /// One PCI function, by its slot's DRC index (last: the variants'
    /// numbers are what stored and exchanged events carry).
    PciByIndex(DrcIndex),
}

/// One hot-plug event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HotplugEvent {
    /// Add or remove.
    pub action: HotplugAction,
    /// What.
    pub target: HotplugTarget,
}

/// Hotplug controller → event log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, strum::VariantNames)]
pub enum Request {
    /// Queues the event unless the same one waits unconsumed; pulses the
    /// hot-plug interrupt either way.
    Queue(HotplugEvent),
    /// Drops the event if it waits unconsumed: the request it re-sent has
    /// been answered (the guest refused it), so the guest must not see it again.
    Withdraw(HotplugEvent),
}

/// Event log → hotplug controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Queued, or merged with the same event already waiting.
    Queued {
        /// The same event was already waiting: nothing was added.
        coalesced: bool,
    },
    /// The queue is full; the event was not queued.
    Full,
    /// Withdrawn (`true`) or not found.
    Withdrawn(bool),
}

impl Message for Request {
    fn validate(&self, fds: usize) -> Result<(), String> {
        no_descriptors(fds, "an event")?;
        let (Request::Queue(event) | Request::Withdraw(event)) = self;
        match event.target {
            HotplugTarget::CpuByIndex(drc) if drc.kind() != Some(DrcKind::Cpu) => {
                Err(format!("a CPU event for DRC {:#x}", drc.0))
            }
            HotplugTarget::CpuByIndex(_) => Ok(()),
            HotplugTarget::PciByIndex(drc) if drc.kind() != Some(DrcKind::Pci) => {
                Err(format!("a PCI event for DRC {:#x}", drc.0))
            }
            HotplugTarget::PciByIndex(_) => Ok(()),
            HotplugTarget::LmbsCountIndexed { count: 0, .. } => Err("an event for 0 LMBs".into()),
            HotplugTarget::LmbsCountIndexed { count, first } => {
                let last = (count - 1).checked_add(first.id());
                match (
                    first.kind(),
                    last.and_then(|id| DrcIndex::new(DrcKind::Lmb, id)),
                ) {
                    (Some(DrcKind::Lmb), Some(_)) => Ok(()),
                    _ => Err(format!("an event for {count} LMBs from DRC {:#x}", first.0)),
                }
            }
        }
    }
}

impl Message for Reply {
    fn validate(&self, _: usize) -> Result<(), String> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(target: HotplugTarget) -> Result<(), String> {
        Request::Queue(HotplugEvent {
            action: HotplugAction::Add,
            target,
        })
        .validate(0)
    }

    #[test]
    fn events_name_connectors_of_their_kind_within_the_lmb_range() {
        assert!(queue(HotplugTarget::CpuByIndex(DrcIndex(0x1000_0001))).is_ok());
        assert!(queue(HotplugTarget::PciByIndex(DrcIndex(0x4000_0008))).is_ok());
        assert!(queue(HotplugTarget::PciByIndex(DrcIndex(0x1000_0008))).is_err());
        assert!(queue(HotplugTarget::CpuByIndex(DrcIndex(0x4000_0008))).is_err());
        let lmbs = |count, first| HotplugTarget::LmbsCountIndexed {
            count,
            first: DrcIndex(first),
        };
        assert!(queue(lmbs(64, 0x8000_0010)).is_ok());
        // The last LMB id there is.
        assert!(queue(lmbs(1, 0x8fff_ffff)).is_ok());
        for wrong in [
            HotplugTarget::CpuByIndex(DrcIndex(0x8000_0004)),
            HotplugTarget::CpuByIndex(DrcIndex(0x2000_0001)),
            lmbs(0, 0x8000_0004),
            lmbs(2, 0x1000_0001),
            lmbs(2, 0x8fff_ffff),
            lmbs(u32::MAX, 0x8000_0004),
        ] {
            assert!(queue(wrong).is_err(), "{wrong:?}");
        }
    }
}
