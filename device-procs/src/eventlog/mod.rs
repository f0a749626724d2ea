//! The event log: the RTAS event queue and the hot-plug interrupt.
//!
//! Semantics (PAPR reference §4.2, §4.4): a FIFO filtered by class mask on
//! dequeue; the interrupt is pulsed on enqueue, again after a dequeue while
//! events of that class remain, and on event-scan while events remain —
//! never on an empty queue (a Linux guest would re-read a stale buffer).
//! Repeats are coalesced: at most one unconsumed event per (DRC, action).

pub mod encode;
pub mod process;
pub mod store;

use crate::clock::UtcTime;
use ipc_proto::link::core_eventlog::QueuedEvent as Queued;
use ipc_proto::link::hotplug_eventlog::HotplugEvent;
use std::collections::VecDeque;

/// Event class mask of hot-plug events (PAPR class 3).
pub const CLASS_HOTPLUG: u32 = 0x1000_0000;
/// Event class mask of EPOW events (PAPR class 1): the power button.
pub const CLASS_EPOW: u32 = 0x4000_0000;
/// Events kept at most; with coalescing a guest that never reads still
/// cannot fill it with fewer DRCs than this.
pub const MAX_QUEUED: usize = ipc_proto::link::core_eventlog::MAX_QUEUED_EVENTS;

/// One queued event, as the guest will read it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// Its place in the queue: numbers grow, the oldest is the lowest.
    pub order: u64,
    /// What it is (for coalescing and withdrawal).
    pub event: Queued,
    /// Its class mask.
    pub class: u32,
    /// Its PAPR encoding.
    pub bytes: Vec<u8>,
}

/// An entry a queue operation added or removed, which the state region
/// must be told of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// The entry of this order was queued.
    Added(u64),
    /// The entry of this order left the queue.
    Removed(u64),
}

/// The queue holds [`MAX_QUEUED`] events already.
#[derive(Debug, PartialEq, Eq)]
pub struct QueueFull;

/// Which interrupts a queue operation asks to raise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pulse {
    /// The hot-plug source.
    pub hotplug: bool,
    /// The EPOW source.
    pub epow: bool,
}

impl Pulse {
    /// Raise nothing.
    pub const NONE: Pulse = Pulse {
        hotplug: false,
        epow: false,
    };
    /// Raise the hot-plug interrupt.
    pub const HOTPLUG: Pulse = Pulse {
        hotplug: true,
        epow: false,
    };
    /// Raise the EPOW interrupt.
    pub const EPOW: Pulse = Pulse {
        hotplug: false,
        epow: true,
    };
}

/// Result of [`EventQueue::dequeue`].
#[derive(Debug, PartialEq, Eq)]
pub enum Dequeued {
    /// The event's bytes.
    Event(Vec<u8>),
    /// Nothing matches the mask.
    Nothing,
    /// The first match is longer than the guest's buffer; it stays.
    TooLarge(usize),
}

/// The queue.
#[derive(Default)]
pub struct EventQueue {
    entries: VecDeque<Entry>,
    next_plid: u32,
    next_order: u64,
    changes: Vec<Change>,
}

impl EventQueue {
    /// A queue as a state region recorded it.
    pub fn restore(mut entries: Vec<Entry>, next_plid: u32, next_order: u64) -> EventQueue {
        entries.sort_by_key(|entry| entry.order);
        EventQueue {
            entries: entries.into(),
            next_plid,
            next_order,
            changes: Vec::new(),
        }
    }

    /// The counters a successor needs: next PLID, next order.
    pub fn counters(&self) -> (u32, u64) {
        (self.next_plid, self.next_order)
    }

    /// The entry of `order`, if it waits.
    pub fn entry(&self, order: u64) -> Option<&Entry> {
        self.entries.iter().find(|entry| entry.order == order)
    }

    /// What changed since the last call.
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    fn push(&mut self, event: Queued, class: u32, bytes: Vec<u8>) {
        let order = self.next_order;
        self.next_order += 1;
        self.entries.push_back(Entry {
            order,
            event,
            class,
            bytes,
        });
        self.changes.push(Change::Added(order));
    }

    /// Queues `event` unless the same one waits; either way the interrupt is
    /// pulsed, so a repeated request reaches the guest again. `Err` when full.
    pub fn enqueue(
        &mut self,
        event: HotplugEvent,
        now: UtcTime,
    ) -> Result<(bool, Pulse), QueueFull> {
        let queued = Queued::Hotplug(event);
        if self.entries.iter().any(|entry| entry.event == queued) {
            return Ok((true, Pulse::HOTPLUG));
        }
        if self.entries.len() >= MAX_QUEUED {
            return Err(QueueFull);
        }
        self.next_plid = self.next_plid.wrapping_add(1);
        let bytes = encode::hotplug_event(&event, self.next_plid, now).to_vec();
        self.push(queued, CLASS_HOTPLUG, bytes);
        Ok((false, Pulse::HOTPLUG))
    }

    /// The power button: queues an EPOW power-off request unless one waits;
    /// either way the EPOW interrupt is pulsed.
    pub fn power_down(&mut self, now: UtcTime) -> Result<Pulse, QueueFull> {
        if !self.entries.iter().any(|e| e.event == Queued::PowerDown) {
            if self.entries.len() >= MAX_QUEUED {
                return Err(QueueFull);
            }
            self.next_plid = self.next_plid.wrapping_add(1);
            let bytes = encode::power_down_event(self.next_plid, now).to_vec();
            self.push(Queued::PowerDown, CLASS_EPOW, bytes);
        }
        Ok(Pulse::EPOW)
    }

    /// Removes `event` if it waits unconsumed.
    pub fn withdraw(&mut self, event: &HotplugEvent) -> bool {
        let before = self.entries.len();
        let changes = &mut self.changes;
        self.entries.retain(|entry| {
            let keep = entry.event != Queued::Hotplug(*event);
            if !keep {
                changes.push(Change::Removed(entry.order));
            }
            keep
        });
        self.entries.len() != before
    }

    /// check-exception: the first event of a class in `mask` that fits.
    pub fn dequeue(&mut self, mask: u32, max_len: usize) -> (Dequeued, Pulse) {
        let Some(position) = self.entries.iter().position(|e| e.class & mask != 0) else {
            return (Dequeued::Nothing, Pulse::NONE);
        };
        if self.entries[position].bytes.len() > max_len {
            return (
                Dequeued::TooLarge(self.entries[position].bytes.len()),
                Pulse::NONE,
            );
        }
        let entry = self.entries.remove(position).expect("position is in range");
        self.changes.push(Change::Removed(entry.order));
        (
            Dequeued::Event(entry.bytes),
            self.pulse_if_pending(entry.class),
        )
    }

    /// event-scan: pulse while events of a class in `mask` remain.
    pub fn scan(&self, mask: u32) -> Pulse {
        self.pulse_if_pending(mask)
    }

    fn pulse_if_pending(&self, mask: u32) -> Pulse {
        let pending = |class: u32| self.entries.iter().any(|e| e.class & mask & class != 0);
        Pulse {
            hotplug: pending(CLASS_HOTPLUG),
            epow: pending(CLASS_EPOW),
        }
    }

    /// Machine reset.
    pub fn clear(&mut self) {
        self.changes.extend(
            self.entries
                .drain(..)
                .map(|entry| Change::Removed(entry.order)),
        );
    }

    /// How many events wait.
    pub fn depth(&self) -> usize {
        self.entries.len()
    }

    /// The queued events, oldest first.
    pub fn list(&self) -> Vec<Queued> {
        self.entries.iter().map(|e| e.event).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc_proto::link::hotplug_eventlog::{HotplugAction, HotplugTarget};
    use ipc_proto::papr::DrcIndex;

    fn now() -> UtcTime {
        UtcTime::now()
    }

    fn event(action: HotplugAction, drc: u32) -> HotplugEvent {
        HotplugEvent {
            action,
            target: HotplugTarget::CpuByIndex(DrcIndex(drc)),
        }
    }

    #[test]
    fn repeats_coalesce_but_still_pulse() {
        let mut q = EventQueue::default();
        let remove = event(HotplugAction::Remove, 0x1000_0001);
        assert_eq!(q.enqueue(remove, now()), Ok((false, Pulse::HOTPLUG)));
        for _ in 0..1000 {
            assert_eq!(q.enqueue(remove, now()), Ok((true, Pulse::HOTPLUG)));
        }
        assert_eq!(q.list(), [Queued::Hotplug(remove)]);
        // Another DRC or action is another event.
        q.enqueue(event(HotplugAction::Add, 0x1000_0001), now())
            .unwrap();
        q.enqueue(event(HotplugAction::Remove, 0x1000_0002), now())
            .unwrap();
        assert_eq!(q.list().len(), 3);
    }

    #[test]
    fn dequeue_is_fifo_by_mask_and_repulses_while_events_remain() {
        let mut q = EventQueue::default();
        q.enqueue(event(HotplugAction::Add, 1), now()).unwrap();
        q.enqueue(event(HotplugAction::Add, 2), now()).unwrap();
        // An EPOW-only mask matches nothing.
        assert_eq!(
            q.dequeue(0x4000_0000, 2048),
            (Dequeued::Nothing, Pulse::NONE)
        );
        let (first, pulse) = q.dequeue(CLASS_HOTPLUG, 2048);
        let Dequeued::Event(bytes) = first else {
            panic!("no event");
        };
        assert_eq!(&bytes[108..112], &1u32.to_be_bytes());
        assert_eq!(pulse, Pulse::HOTPLUG, "one remains: pulse again");
        let (_, pulse) = q.dequeue(CLASS_HOTPLUG, 2048);
        assert_eq!(pulse, Pulse::NONE, "empty now: no pulse");
        assert_eq!(
            q.dequeue(CLASS_HOTPLUG, 2048),
            (Dequeued::Nothing, Pulse::NONE)
        );
        assert_eq!(q.scan(0xffff_ffff), Pulse::NONE);
    }

    #[test]
    fn the_power_button_queues_one_epow_event_on_its_own_interrupt() {
        let mut q = EventQueue::default();
        assert_eq!(q.power_down(now()), Ok(Pulse::EPOW));
        assert_eq!(q.power_down(now()), Ok(Pulse::EPOW), "repeats still pulse");
        assert_eq!(q.list(), [Queued::PowerDown]);
        // Hot-plug readers do not see it; EPOW readers get it once.
        assert_eq!(
            q.dequeue(CLASS_HOTPLUG, 2048),
            (Dequeued::Nothing, Pulse::NONE)
        );
        let (event, pulse) = q.dequeue(CLASS_EPOW, 2048);
        let Dequeued::Event(bytes) = event else {
            panic!("no EPOW event: {event:?}");
        };
        assert_eq!(pulse, Pulse::NONE);
        assert_eq!(&bytes[0..4], &[0x06, 0x34, 0x00, 0x40]);
        assert_eq!(&bytes[96..98], b"EP");
        assert_eq!(bytes[104..107], [3, 1, 1]);
        assert_eq!(q.dequeue(CLASS_EPOW, 2048).0, Dequeued::Nothing);
    }

    #[test]
    fn a_withdrawn_event_is_not_delivered() {
        let mut q = EventQueue::default();
        let remove = event(HotplugAction::Remove, 1);
        q.enqueue(event(HotplugAction::Add, 2), now()).unwrap();
        q.enqueue(remove, now()).unwrap();
        assert!(q.withdraw(&remove));
        assert!(!q.withdraw(&remove));
        assert_eq!(q.list(), [Queued::Hotplug(event(HotplugAction::Add, 2))]);
    }

    #[test]
    fn a_small_buffer_leaves_the_event_queued() {
        let mut q = EventQueue::default();
        q.enqueue(event(HotplugAction::Add, 1), now()).unwrap();
        assert_eq!(
            q.dequeue(CLASS_HOTPLUG, 100),
            (Dequeued::TooLarge(116), Pulse::NONE)
        );
        assert_eq!(q.list().len(), 1);
        assert_eq!(q.scan(CLASS_HOTPLUG), Pulse::HOTPLUG);
    }

    #[test]
    fn the_queue_is_bounded_and_cleared_at_reset() {
        let mut q = EventQueue::default();
        for drc in 0..MAX_QUEUED as u32 {
            q.enqueue(event(HotplugAction::Add, drc), now()).unwrap();
        }
        assert_eq!(
            q.enqueue(event(HotplugAction::Add, u32::MAX), now()),
            Err(QueueFull)
        );
        q.clear();
        assert!(q.list().is_empty());
    }
}
