//! The event log's state region: the queue (what the guest has not fetched
//! yet), the counters, the number of the last event the hotplug controller
//! sent, and the last check-exception answer — so that a successor neither
//! loses an event nor hands one to the guest twice.
//!
//! A fetched event leaves the queue in the same transition that records the
//! answer under the request's id: an RTAS call made again after the event
//! log died gets the same event again, not the next one.

use super::{Change, Entry, EventQueue};
use crate::state::{
    decode_record, encode_record, Layout, Mapping, Region, RequestKey, StateError, Table, Write,
};
use ipc_proto::link::core_eventlog::MAX_QUEUED_EVENTS;
use ipc_proto::link::{hotplug_eventlog, rtas_eventlog};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Bumped whenever a record's meaning changes.
pub const LAYOUT_VERSION: u32 = 2;
const MAGIC: [u8; 8] = *b"PVEVTLOG";

const META: usize = 0;
const ENTRIES: usize = 1;
const REPLIES: usize = 2;
/// The replies table's requesters: the RTAS server, the hotplug controller.
const RTAS: u32 = 0;
const CONTROLLER: u32 = 1;

/// The region's tables.
pub fn layout() -> Layout {
    let table = |slot_bytes, slots| Table { slot_bytes, slots };
    Layout {
        magic: MAGIC,
        version: LAYOUT_VERSION,
        tables: vec![
            table(64, 1),
            table(256, MAX_QUEUED_EVENTS as u32),
            table(256, 2),
        ],
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Meta {
    next_plid: u32,
    next_order: u64,
    /// The highest request number the hotplug controller sent.
    last_from_controller: u64,
}

/// The event log's region, and where each queued entry lives in it.
pub struct Store {
    region: Region,
    slots: HashMap<u64, u32>,
    free: Vec<u32>,
    meta: Meta,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("meta", &self.meta).finish()
    }
}

/// What the event log keeps between requests.
pub struct Resumed {
    /// The queue.
    pub queue: EventQueue,
    /// The highest request number the hotplug controller sent.
    pub last_from_controller: u64,
}

impl Store {
    /// Formats a fresh region: an empty queue.
    pub fn create(mapping: Mapping) -> Result<Store, StateError> {
        let mut store = Store {
            region: Region::format(mapping, layout())?,
            slots: HashMap::new(),
            free: (0..MAX_QUEUED_EVENTS as u32).rev().collect(),
            meta: Meta::default(),
        };
        let meta = store.meta;
        store.region.commit(&[Write {
            table: META,
            slot: 0,
            payload: Some(encode_record(0, &meta)?),
        }])?;
        Ok(store)
    }

    /// Validates the region a predecessor wrote and rebuilds the queue.
    pub fn resume(mapping: Mapping) -> Result<(Store, Resumed), StateError> {
        let region = Region::open(mapping, layout())?;
        let (_, meta) = decode_record::<Meta>(&region, META, 0)?.ok_or(StateError::BadRecord {
            table: META,
            slot: 0,
            reason: "no meta record".into(),
        })?;
        let mut entries = Vec::new();
        let mut slots = HashMap::new();
        let mut free = Vec::new();
        for slot in (0..MAX_QUEUED_EVENTS as u32).rev() {
            match decode_record::<Entry>(&region, ENTRIES, slot)? {
                Some((_, entry)) => {
                    if entry.order >= meta.next_order || slots.insert(entry.order, slot).is_some() {
                        return Err(StateError::BadRecord {
                            table: ENTRIES,
                            slot,
                            reason: format!("an entry of order {} out of place", entry.order),
                        });
                    }
                    entries.push(entry);
                }
                None => free.push(slot),
            }
        }
        let store = Store {
            region,
            slots,
            free,
            meta,
        };
        let queue = EventQueue::restore(entries, meta.next_plid, meta.next_order);
        let last_from_controller = meta.last_from_controller;
        Ok((
            store,
            Resumed {
                queue,
                last_from_controller,
            },
        ))
    }

    /// Transitions committed since the region was formatted.
    pub fn transitions(&self) -> u64 {
        self.region.committed()
    }

    /// The answer already given to this check-exception, if it was the last.
    pub fn replayed(
        &self,
        id: u64,
        request: &rtas_eventlog::Request,
    ) -> Option<rtas_eventlog::Reply> {
        RequestKey::of(RTAS, id, request).replayed(&self.region, REPLIES)
    }

    /// The record of a check-exception's answer.
    pub fn rtas_answer(
        id: u64,
        request: &rtas_eventlog::Request,
        reply: &rtas_eventlog::Reply,
    ) -> Result<Write, StateError> {
        RequestKey::of(RTAS, id, request).record(REPLIES, reply)
    }

    /// The answer already given to the controller's request `id`, if it was
    /// its last: a controller that died before it recorded the answer asks
    /// again, and must hear the same (it counts the remove events queued).
    pub fn controller_replayed(
        &self,
        id: u64,
        request: &hotplug_eventlog::Request,
    ) -> Option<hotplug_eventlog::Reply> {
        RequestKey::of(CONTROLLER, id, request).replayed(&self.region, REPLIES)
    }

    /// The record of an answer to the controller.
    pub fn controller_answer(
        id: u64,
        request: &hotplug_eventlog::Request,
        reply: &hotplug_eventlog::Reply,
    ) -> Result<Write, StateError> {
        RequestKey::of(CONTROLLER, id, request).record(REPLIES, reply)
    }

    /// Commits what the last request changed in `queue`, the controller's
    /// request number, and `answer` (a record of [`Store::rtas_answer`] or
    /// [`Store::controller_answer`]).
    pub fn commit(
        &mut self,
        queue: &mut EventQueue,
        last_from_controller: u64,
        answer: Option<Write>,
    ) -> Result<(), StateError> {
        let mut writes = Vec::new();
        let mut slots = self.slots.clone();
        let mut free = self.free.clone();
        for change in queue.take_changes() {
            match change {
                Change::Added(order) => {
                    let (Some(entry), Some(slot)) = (queue.entry(order), free.pop()) else {
                        continue;
                    };
                    slots.insert(order, slot);
                    writes.push(Write {
                        table: ENTRIES,
                        slot,
                        payload: Some(encode_record(order, entry)?),
                    });
                }
                Change::Removed(order) => {
                    if let Some(slot) = slots.remove(&order) {
                        free.push(slot);
                        writes.push(Write {
                            table: ENTRIES,
                            slot,
                            payload: None,
                        });
                    }
                }
            }
        }
        let (next_plid, next_order) = queue.counters();
        let meta = Meta {
            next_plid,
            next_order,
            last_from_controller,
        };
        if meta != self.meta {
            writes.push(Write {
                table: META,
                slot: 0,
                payload: Some(encode_record(0, &meta)?),
            });
        }
        writes.extend(answer);
        if writes.is_empty() {
            return Ok(());
        }
        self.region.commit(&writes)?;
        self.slots = slots;
        self.free = free;
        self.meta = meta;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::UtcTime;
    use ipc_proto::link::hotplug_eventlog::{HotplugAction, HotplugEvent, HotplugTarget};
    use ipc_proto::papr::DrcIndex;

    fn event(drc: u32) -> HotplugEvent {
        HotplugEvent {
            action: HotplugAction::Remove,
            target: HotplugTarget::CpuByIndex(DrcIndex(drc)),
        }
    }

    fn resume(store: &Store) -> (Store, Resumed) {
        Store::resume(store.region.snapshot()).unwrap()
    }

    #[test]
    fn the_core_sizes_the_region_for_the_layout() {
        let need = layout().bytes() as u64;
        assert!(
            need <= ipc_proto::link::core_eventlog::STATE_REGION_BYTES,
            "{need}"
        );
    }

    #[test]
    fn a_successor_has_the_queue_in_order_and_answers_a_repeated_fetch_alike() {
        let mut store = Store::create(Mapping::heap(layout().bytes())).unwrap();
        let mut queue = EventQueue::default();
        for (n, drc) in [0x1000_0001, 0x1000_0002, 0x1000_0003]
            .into_iter()
            .enumerate()
        {
            queue.enqueue(event(drc), UtcTime::now()).unwrap();
            store.commit(&mut queue, n as u64 + 1, None).unwrap();
        }
        let request = rtas_eventlog::Request::CheckException {
            mask: super::super::CLASS_HOTPLUG,
            max_len: 2048,
        };
        let (fetched, _) = queue.dequeue(super::super::CLASS_HOTPLUG, 2048);
        let super::super::Dequeued::Event(bytes) = fetched else {
            panic!("an event")
        };
        let reply = rtas_eventlog::Reply::Event(bytes);
        let answer = Store::rtas_answer(77, &request, &reply).unwrap();
        store.commit(&mut queue, 3, Some(answer)).unwrap();

        let (successor, resumed) = resume(&store);
        assert_eq!(resumed.queue.list(), queue.list());
        assert_eq!(resumed.queue.counters(), queue.counters());
        assert_eq!(resumed.last_from_controller, 3);
        assert_eq!(successor.replayed(77, &request), Some(reply));
        assert_eq!(successor.replayed(78, &request), None);
        assert_eq!(
            successor.controller_replayed(77, &hotplug_eventlog::Request::Queue(event(1))),
            None
        );
        // Slots are reused: the queue never needs more than it holds.
        let (mut successor, mut resumed) = (successor, resumed);
        resumed.queue.clear();
        successor.commit(&mut resumed.queue, 3, None).unwrap();
        for n in 0..MAX_QUEUED_EVENTS as u32 {
            resumed
                .queue
                .enqueue(event(0x2000_0000 + n), UtcTime::now())
                .unwrap();
            successor.commit(&mut resumed.queue, 3, None).unwrap();
        }
        let (_, last) = resume(&successor);
        assert_eq!(last.queue.list().len(), MAX_QUEUED_EVENTS);
    }
}
