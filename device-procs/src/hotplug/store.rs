//! The hotplug controller's state region: its DRC table, its devices, the
//! effects it owes the core and the event log, and the last reply to each
//! requester — so that a successor resumes where a killed controller stopped,
//! with nothing lost and nothing applied twice.
//!
//! Every request that changes something is one committed transition (see
//! [`crate::state`]): the DRCs and devices it touched, the effects it caused
//! (each numbered; receivers drop a number they have seen), and its reply
//! under the request's id. A requester that got no answer sends the same id
//! again, and is answered from the record instead of applying it twice.

use super::drc::Drc;
use super::{Controller, Effect, Touched};
use crate::links::PEER_REQUESTS_PER_REQUEST;
use crate::state::{
    decode_record as read, encode_record as record, Layout, Mapping, Region, RequestKey,
    StateError, Table, Write,
};
use ipc_proto::papr::{DrcIndex, DrcState, RtasStatus};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use thiserror::Error;

/// Devices attached at once, at most.
pub const DEVICE_SLOTS: u32 = 1024;
/// Effects kept for a receiver that is down; beyond, the oldest are dropped.
pub const OUTBOX_SLOTS: u32 = 1024;
/// Bumped whenever a record's meaning changes.
pub const LAYOUT_VERSION: u32 = 4;
const MAGIC: [u8; 8] = *b"PVHOTPLG";

const META: usize = 0;
const DRCS: usize = 1;
const DEVICES: usize = 2;
const OUTBOX: usize = 3;
const REPLIES: usize = 4;
const FUNCTIONS: usize = 5;
/// A function record's slot: its configuration bytes, its device's
/// registers and model.
const FUNCTION_RECORD_BYTES: u32 = 768;

/// The region's tables for a table of `drcs` DRCs.
pub fn layout(drcs: u32) -> Layout {
    let table = |slot_bytes, slots| Table { slot_bytes, slots };
    Layout {
        magic: MAGIC,
        version: LAYOUT_VERSION,
        tables: vec![
            table(64, 1),
            table(48, drcs),
            table(192, DEVICE_SLOTS),
            table(192, OUTBOX_SLOTS),
            table(64, Requester::REPLY_SLOTS),
            table(FUNCTION_RECORD_BYTES, ipc_proto::pci::DEVFNS_PER_BUS),
        ],
    }
}

/// Why the controller cannot use its region.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The region itself.
    #[error(transparent)]
    Region(#[from] StateError),
    /// A record that does not decode, or records that disagree.
    #[error("the state region is inconsistent: {0}")]
    Inconsistent(String),
    /// More devices than [`DEVICE_SLOTS`].
    #[error("no free device record (at most {DEVICE_SLOTS} devices)")]
    NoDeviceSlot,
}

/// Who sends the controller requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requester {
    /// The core (plug, unplug request, reset).
    Core,
    /// The RTAS server, for the guest.
    Rtas,
}

impl Requester {
    /// One reply for the core's last request; one for each request the RTAS
    /// server made for its last call (a call makes several, and all of them
    /// are made again when the call is).
    const REPLY_SLOTS: u32 = 1 + PEER_REQUESTS_PER_REQUEST as u32;

    /// The key of `request`, sent as `id` by this requester.
    pub fn key<R: Serialize>(self, id: u64, request: &R) -> RequestKey {
        let slot = match self {
            Requester::Core => 0,
            Requester::Rtas => 1 + (id % PEER_REQUESTS_PER_REQUEST) as u32,
        };
        RequestKey::of(slot, id, request)
    }
}

/// Where an effect goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// The notify link.
    Core,
    /// The event log link.
    EventLog,
}

impl Effect {
    /// Who is owed this effect.
    pub fn destination(&self) -> Destination {
        match self {
            Effect::Notify(_) => Destination::Core,
            Effect::Queue(_) | Effect::Withdraw(_) => Destination::EventLog,
        }
    }
}

/// The reply a transition gave, kept to answer its id again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredReply {
    /// The core's requests.
    Ack,
    /// The RTAS server's requests.
    Status {
        /// The RTAS status.
        status: RtasStatus,
        /// Its value.
        value: u32,
    },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Meta {
    /// The number the next effect gets (numbers start at 1).
    next_effect: u64,
    /// The highest number delivered to the core, then to the event log.
    delivered: [u64; 2],
}

#[derive(Debug, Serialize, Deserialize)]
struct DrcRecord {
    index: DrcIndex,
    state: DrcState,
    /// The device's record slot.
    device: Option<u32>,
    unplug_requested: bool,
    configure_step: u32,
    answered: bool,
    /// A physical DRC's DR indicator.
    dr_indicator: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct DeviceRecord {
    id: String,
    first: DrcIndex,
    count: u32,
    /// Remove events queued and not answered yet.
    outstanding: u32,
}

fn destination_index(destination: Destination) -> usize {
    match destination {
        Destination::Core => 0,
        Destination::EventLog => 1,
    }
}

/// The controller's region, and what it indexes of it.
pub struct Store {
    region: Region,
    drc_slots: HashMap<DrcIndex, u32>,
    device_slots: HashMap<String, u32>,
    free_device_slots: Vec<u32>,
    meta: Meta,
    /// Effects not yet delivered, by number.
    outbox: BTreeMap<u64, Effect>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("region", &self.region)
            .field("meta", &self.meta)
            .finish()
    }
}

impl Store {
    /// Formats `mapping` for the DRCs `controller` defined, and records them.
    pub fn create(mapping: Mapping, controller: &mut Controller) -> Result<Store, StoreError> {
        let count = controller.drcs().count() as u32;
        let region = Region::format(mapping, layout(count))?;
        let mut store = Store {
            region,
            drc_slots: controller
                .drcs()
                .enumerate()
                .map(|(slot, drc)| (drc.index(), slot as u32))
                .collect(),
            device_slots: HashMap::new(),
            free_device_slots: (0..DEVICE_SLOTS).rev().collect(),
            meta: Meta {
                next_effect: 1,
                delivered: [0; 2],
            },
            outbox: BTreeMap::new(),
        };
        store.transition(controller, Vec::new(), None, None, true)?;
        Ok(store)
    }

    /// Validates the region a predecessor wrote for `drcs` DRCs and rebuilds
    /// the table from it.
    pub fn resume(mapping: Mapping, drcs: u32) -> Result<(Store, Controller), StoreError> {
        let region = Region::open(mapping, layout(drcs))?;
        let bad = |why: String| StoreError::Inconsistent(why);
        let (_, meta) =
            read::<Meta>(&region, META, 0)?.ok_or_else(|| bad("no meta record".into()))?;

        let mut devices: BTreeMap<u32, DeviceRecord> = BTreeMap::new();
        for slot in 0..DEVICE_SLOTS {
            if let Some((_, device)) = read::<DeviceRecord>(&region, DEVICES, slot)? {
                devices.insert(slot, device);
            }
        }
        let mut table = Vec::with_capacity(drcs as usize);
        let mut drc_slots = HashMap::new();
        for slot in 0..drcs {
            let (_, record) = read::<DrcRecord>(&region, DRCS, slot)?
                .ok_or_else(|| bad(format!("DRC record {slot} is empty")))?;
            let device = match record.device {
                None => None,
                Some(d) => Some(
                    devices
                        .get(&d)
                        .ok_or_else(|| {
                            bad(format!(
                                "DRC {:#x} names device record {d}, which is empty",
                                record.index.0
                            ))
                        })?
                        .id
                        .clone(),
                ),
            };
            if drc_slots.insert(record.index, slot).is_some() {
                return Err(bad(format!("DRC {:#x} is recorded twice", record.index.0)));
            }
            table.push(Drc::restored(
                record.index,
                record.state,
                device,
                record.unplug_requested,
                record.configure_step,
                record.answered,
                record.dr_indicator,
            ));
        }
        let mut attached = Vec::new();
        for device in devices.values() {
            let drcs: Vec<DrcIndex> = (0..device.count)
                .map(|i| DrcIndex(device.first.0.wrapping_add(i)))
                .collect();
            if let Some(missing) = drcs.iter().find(|i| !drc_slots.contains_key(i)) {
                return Err(bad(format!(
                    "device {} names DRC {:#x}, which does not exist",
                    device.id, missing.0
                )));
            }
            attached.push((device.id.clone(), drcs, device.outstanding));
        }
        let mut outbox = BTreeMap::new();
        for slot in 0..OUTBOX_SLOTS {
            if let Some((id, effect)) = read::<Effect>(&region, OUTBOX, slot)? {
                let delivered = meta.delivered[destination_index(effect.destination())];
                if id >= meta.next_effect {
                    return Err(bad(format!("effect {id} is beyond the last one numbered")));
                }
                if id > delivered {
                    outbox.insert(id, effect);
                }
            }
        }
        let device_slots: HashMap<String, u32> = devices
            .iter()
            .map(|(slot, d)| (d.id.clone(), *slot))
            .collect();
        let free_device_slots = (0..DEVICE_SLOTS)
            .rev()
            .filter(|slot| !devices.contains_key(slot))
            .collect();
        let store = Store {
            region,
            drc_slots,
            device_slots,
            free_device_slots,
            meta,
            outbox,
        };
        Ok((store, Controller::restore(table, attached)))
    }

    /// The reply already given to `key`, if it is the last request of its
    /// requester that changed something.
    pub fn replayed(&self, key: RequestKey) -> Option<StoredReply> {
        key.replayed(&self.region, REPLIES)
    }

    /// Commits what the last request changed in `controller` (its touched
    /// records), the effects it caused, and its reply: one transition.
    pub fn commit(
        &mut self,
        controller: &mut Controller,
        effects: Vec<Effect>,
        reply: Option<(RequestKey, StoredReply)>,
    ) -> Result<(), StoreError> {
        self.transition(controller, effects, reply, None, false)
    }

    /// [`Store::commit`]; the first transition writes the meta record even
    /// though nothing in it changed.
    fn transition(
        &mut self,
        controller: &mut Controller,
        effects: Vec<Effect>,
        reply: Option<(RequestKey, StoredReply)>,
        delivered: Option<u64>,
        first: bool,
    ) -> Result<(), StoreError> {
        let mut writes = Vec::new();
        let mut freed = Vec::new();
        for touched in controller.take_touched() {
            match touched {
                Touched::Drc(index) => {
                    let (Some(drc), Some(&slot)) =
                        (controller.drc(index), self.drc_slots.get(&index))
                    else {
                        continue;
                    };
                    let device = match drc.device() {
                        Some(id) => Some(self.device_slot(id)?),
                        None => None,
                    };
                    let body = DrcRecord {
                        index,
                        state: drc.state(),
                        device,
                        unplug_requested: drc.unplug_requested(),
                        configure_step: drc.configure_step(),
                        answered: drc.answered(),
                        dr_indicator: drc.dr_indicator(),
                    };
                    writes.push(Write {
                        table: DRCS,
                        slot,
                        payload: Some(record(0, &body)?),
                    });
                }
                Touched::Device(id) => match controller.device(&id) {
                    Some(drcs) => {
                        let slot = self.device_slot(&id)?;
                        let body = DeviceRecord {
                            id: id.clone(),
                            first: drcs.first().copied().unwrap_or(DrcIndex(0)),
                            count: drcs.len() as u32,
                            outstanding: controller.outstanding(&id),
                        };
                        writes.push(Write {
                            table: DEVICES,
                            slot,
                            payload: Some(record(0, &body)?),
                        });
                    }
                    None => {
                        if let Some(slot) = self.device_slots.remove(&id) {
                            writes.push(Write {
                                table: DEVICES,
                                slot,
                                payload: None,
                            });
                            freed.push(slot);
                        }
                    }
                },
            }
        }
        let mut meta = self.meta;
        let delivered = delivered.and_then(|id| Some((id, self.outbox.get(&id)?.destination())));
        if let Some((id, destination)) = delivered {
            meta.delivered[destination_index(destination)] = id;
        }
        let mut numbered = Vec::new();
        for effect in effects {
            let id = meta.next_effect;
            meta.next_effect += 1;
            writes.push(Write {
                table: OUTBOX,
                slot: (id % u64::from(OUTBOX_SLOTS)) as u32,
                payload: Some(record(id, &effect)?),
            });
            numbered.push((id, effect));
        }
        if meta != self.meta || first {
            writes.push(Write {
                table: META,
                slot: 0,
                payload: Some(record(0, &meta)?),
            });
        }
        if let Some((key, reply)) = reply {
            writes.push(key.record(REPLIES, &reply)?);
        }
        if writes.is_empty() {
            return Ok(());
        }
        self.region.commit(&writes)?;
        self.meta = meta;
        self.free_device_slots.extend(freed);
        if let Some((id, _)) = delivered {
            self.outbox.remove(&id);
        }
        for (id, effect) in numbered {
            // Its slot held effect `id - OUTBOX_SLOTS`, which is gone if it waited.
            let overwritten = id.checked_sub(u64::from(OUTBOX_SLOTS));
            if let Some((old, dropped)) =
                overwritten.and_then(|old| Some((old, self.outbox.remove(&old)?)))
            {
                log::error!(
                    "more than {OUTBOX_SLOTS} effects wait: dropped effect {old} ({dropped:?})"
                );
            }
            self.outbox.insert(id, effect);
        }
        Ok(())
    }

    fn device_slot(&mut self, id: &str) -> Result<u32, StoreError> {
        if let Some(&slot) = self.device_slots.get(id) {
            return Ok(slot);
        }
        let slot = self
            .free_device_slots
            .pop()
            .ok_or(StoreError::NoDeviceSlot)?;
        self.device_slots.insert(id.to_string(), slot);
        Ok(slot)
    }

    /// The effects owed to `destination`, in order, with their numbers.
    pub fn pending(&self, destination: Destination) -> Vec<(u64, Effect)> {
        self.outbox
            .iter()
            .filter(|(_, effect)| effect.destination() == destination)
            .map(|(id, effect)| (*id, effect.clone()))
            .collect()
    }

    /// Effect `id` reached its destination: committed, with what its answer
    /// changed in `controller`, so a successor does not send it again (it
    /// would be answered as a repeat if it did).
    pub fn delivered(&mut self, controller: &mut Controller, id: u64) -> Result<(), StoreError> {
        self.transition(controller, Vec::new(), None, Some(id), false)
    }

    /// Transitions committed so far.
    pub fn transitions(&self) -> u64 {
        self.region.committed()
    }

    /// Records what the driver set in the function at `devfn` (`None`:
    /// there is none now).
    pub fn record_function(
        &mut self,
        devfn: u8,
        function: Option<&FunctionRecord>,
    ) -> Result<(), StoreError> {
        let payload = function.map(|f| record(0, f)).transpose()?;
        self.region.commit(&[Write {
            table: FUNCTIONS,
            slot: u32::from(devfn),
            payload,
        }])?;
        Ok(())
    }

    /// The functions recorded, by devfn.
    pub fn functions(&self) -> Result<Vec<(u8, FunctionRecord)>, StoreError> {
        let mut found = Vec::new();
        for devfn in 0..=u8::MAX {
            if let Some((_, function)) =
                read::<FunctionRecord>(&self.region, FUNCTIONS, u32::from(devfn))?
            {
                found.push((devfn, function));
            }
        }
        Ok(found)
    }
}

/// A function on the bridge as a successor rebuilds it: its connector, its
/// device's model, and what the driver set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionRecord {
    /// Its DRC.
    pub drc: DrcIndex,
    /// Its device, as the core described it.
    pub model: ipc_proto::link::core_hotplug::DeviceModel,
    /// What the driver set.
    pub state: crate::pci::bridge::FunctionState,
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc_proto::link::core_hotplug::{state_region_bytes, MAX_DRCS};
    use ipc_proto::link::hotplug_notify::{Notification, Released};

    const CORE1: DrcIndex = DrcIndex(0x1000_0001);

    fn created() -> (Store, Controller) {
        let mut controller = Controller::default();
        controller
            .define(&crate::hotplug::tests::test_ranges())
            .unwrap();
        let mapping = Mapping::heap(layout(12).bytes());
        (Store::create(mapping, &mut controller).unwrap(), controller)
    }

    fn resumed(store: &Store) -> (Store, Controller) {
        Store::resume(store.region.snapshot(), 12).unwrap()
    }

    fn key(id: u64) -> RequestKey {
        Requester::Core.key(id, &id)
    }

    #[test]
    fn a_successor_resumes_the_table_the_devices_and_what_is_owed() {
        let (mut store, mut c) = created();
        let effects = c.plug(&[CORE1], "core1", false).unwrap();
        store
            .commit(&mut c, effects, Some((key(1), StoredReply::Ack)))
            .unwrap();
        // The guest acquires it, then the host asks for it back.
        for (indicator, value) in [(9003, 1), (9001, 1)] {
            let (_, effects) = c.set_indicator(indicator, CORE1.0, value);
            store.commit(&mut c, effects, None).unwrap();
        }
        assert_eq!(c.configure_done(CORE1.0), RtasStatus::Success);
        store.commit(&mut c, Vec::new(), None).unwrap();
        let (_, effects) = c.unplug_request(&[CORE1]).unwrap();
        store
            .commit(&mut c, effects, Some((key(2), StoredReply::Ack)))
            .unwrap();

        let (successor, restored) = resumed(&store);
        assert_eq!(restored.list(0), c.list(0));
        assert_eq!(restored.device("core1"), Some(&[CORE1][..]));
        let owed = successor.pending(Destination::EventLog);
        assert_eq!(
            owed.len(),
            2,
            "the add event, then the remove event: {owed:?}"
        );
        assert!(owed[0].0 < owed[1].0);
        assert_eq!(successor.replayed(key(2)), Some(StoredReply::Ack));
        assert_eq!(
            successor.replayed(key(1)),
            None,
            "only the last request is kept"
        );
        // Another request under the same id is not a repeat.
        let other = RequestKey {
            digest: key(2).digest ^ 1,
            ..key(2)
        };
        assert_eq!(successor.replayed(other), None);
    }

    #[test]
    fn a_slots_state_and_dr_indicator_survive_a_restart() {
        let mut ranges = crate::hotplug::tests::test_ranges();
        // PHB 0, root bus: slots 1 and 2, function 0.
        let first_id = ipc_proto::papr::pci_drc_id(0, 0, 8).unwrap();
        ranges.push(ipc_proto::link::core_hotplug::DrcRange {
            kind: ipc_proto::papr::DrcKind::Pci,
            first_id,
            count: 2,
            step: 8,
        });
        let mut c = Controller::default();
        c.define(&ranges).unwrap();
        let mut store = Store::create(Mapping::heap(layout(14).bytes()), &mut c).unwrap();
        let slot = DrcIndex::new(ipc_proto::papr::DrcKind::Pci, first_id).unwrap();
        let effects = c.plug(&[slot], "disk0", false).unwrap();
        store.commit(&mut c, effects, None).unwrap();
        // drmgr's add: DR indicator on, unisolate; then the walk.
        for (indicator, value) in [(9002, 1), (9001, 1)] {
            let (status, effects) = c.set_indicator(indicator, slot.0, value);
            assert_eq!(status, RtasStatus::Success);
            store.commit(&mut c, effects, None).unwrap();
        }
        let (successor, restored) = Store::resume(store.region.snapshot(), 14).unwrap();
        drop(successor);
        assert_eq!(restored.list(0), c.list(0));
        let drc = restored.drc(slot).unwrap();
        assert_eq!(
            (drc.state(), drc.dr_indicator(), drc.device()),
            (DrcState::PhysicalUnisolate, 1, Some("disk0"))
        );
    }

    #[test]
    fn a_configure_walk_goes_on_where_it_was_across_a_restart() {
        let (mut store, mut c) = created();
        let effects = c.plug(&[CORE1], "core1", false).unwrap();
        store.commit(&mut c, effects, None).unwrap();
        for (indicator, value) in [(9003, 1), (9001, 1)] {
            let (_, effects) = c.set_indicator(indicator, CORE1.0, value);
            store.commit(&mut c, effects, None).unwrap();
        }
        for expected in 0..2 {
            assert_eq!(c.configure_step(CORE1.0), (RtasStatus::Success, expected));
            store.commit(&mut c, Vec::new(), None).unwrap();
        }
        let (_, mut restored) = resumed(&store);
        assert_eq!(restored.configure_step(CORE1.0), (RtasStatus::Success, 2));
    }

    #[test]
    fn delivered_effects_are_not_owed_to_a_successor_and_numbers_keep_growing() {
        let (mut store, mut c) = created();
        let (released, effects) = {
            c.plug(&[CORE1], "core1", false).unwrap();
            c.unplug_request(&[CORE1]).unwrap()
        };
        let mut all: Vec<Effect> = released
            .into_iter()
            .map(|r| Effect::Notify(Notification::Released(r)))
            .collect();
        all.extend(effects);
        store.commit(&mut c, all, None).unwrap();
        let to_core = store.pending(Destination::Core);
        assert_eq!(
            to_core,
            [(
                1,
                Effect::Notify(Notification::Released(Released {
                    device: "core1".into()
                }))
            )]
        );
        store.delivered(&mut c, 1).unwrap();
        let (mut successor, mut restored) = resumed(&store);
        assert!(successor.pending(Destination::Core).is_empty());
        assert_eq!(successor.pending(Destination::EventLog).len(), 1);
        // The device is gone, and its record slot is free again.
        assert_eq!(restored.device("core1"), None);
        let effects = restored.plug(&[CORE1], "core1b", false).unwrap();
        successor.commit(&mut restored, effects, None).unwrap();
        let numbers: Vec<u64> = successor
            .pending(Destination::EventLog)
            .iter()
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(numbers, [2, 3]);
    }

    #[test]
    fn a_region_for_other_drcs_or_damaged_records_is_refused() {
        let (mut store, mut c) = created();
        let effects = c.plug(&[CORE1], "core1", true).unwrap();
        store.commit(&mut c, effects, None).unwrap();
        assert!(matches!(
            Store::resume(store.region.snapshot(), 13),
            Err(StoreError::Region(StateError::BadGeometry { .. }))
        ));
        // A fresh (zeroed) region is not a table with no DRCs.
        assert!(matches!(
            Store::resume(Mapping::heap(layout(12).bytes()), 12),
            Err(StoreError::Region(StateError::BadMagic { .. }))
        ));
    }

    #[test]
    fn the_core_sizes_the_region_for_every_table_size() {
        for drcs in [0, 1, 12, 16_384, MAX_DRCS] {
            let need = layout(drcs as u32).bytes() as u64;
            assert!(
                need <= state_region_bytes(drcs),
                "{drcs} DRCs need {need} bytes"
            );
        }
    }
}
