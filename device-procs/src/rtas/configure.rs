//! ibm,configure-connector: hands the guest the device-tree fragment of a
//! DRC's device one step per call, through a 4 KiB work area (PAPR reference
//! §3.4). Names go at work-area offset 20, a property's value right after its
//! name. The DRC's state is the hotplug controller's, which says whether a
//! walk may run and which step comes next (its cursor).

use ipc_proto::papr::{
    cpu_core_node_name, cpu_core_properties, DrcIndex, DrcKind, RtasStatus, LMB_SIZE,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError};

/// Size of the work area.
pub const WORK_AREA_SIZE: u64 = 4096;
/// Where names are written.
const NAME_OFFSET: u64 = 20;

/// Return codes of a step.
pub const COMPLETE: i32 = 0;
const NEXT_CHILD: i32 = 2;
const NEXT_PROPERTY: i32 = 3;
const PREV_PARENT: i32 = 4;
/// A step that does not fit the work area.
const HARDWARE_ERROR: i32 = RtasStatus::HardwareError.code();

/// One step of a walk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Enter a child node.
    Child(String),
    /// A property of the current node.
    Property(&'static str, Vec<u8>),
    /// Leave the current node (leaving the top node completes the walk).
    Parent,
}

/// The fragment of the device a DRC connects.
pub fn fragment(drc: DrcIndex, threads_per_core: u32) -> Option<Vec<Step>> {
    let mut steps = Vec::new();
    match drc.kind()? {
        DrcKind::Cpu => {
            let first = drc.id();
            steps.push(Step::Child(cpu_core_node_name(first)));
            steps.push(Step::Property("name", b"cpu\0".to_vec()));
            for (name, value) in cpu_core_properties(first, threads_per_core, drc) {
                steps.push(Step::Property(name, value));
            }
        }
        DrcKind::Pci => {
            // The device node only, as QEMU's fragment: no `name` property.
            let (name, properties) = ipc_proto::pci::plugged_device_node(drc)?;
            steps.push(Step::Child(name));
            steps.extend(
                properties
                    .into_iter()
                    .map(|(name, value)| Step::Property(name, value)),
            );
        }
        DrcKind::Lmb => {
            let address = u64::from(drc.id()) * LMB_SIZE;
            let reg: Vec<u8> = [address, LMB_SIZE]
                .iter()
                .flat_map(|v| v.to_be_bytes())
                .collect();
            let associativity: Vec<u8> = [4u32, 0, 0, 0, 0]
                .iter()
                .flat_map(|v| v.to_be_bytes())
                .collect();
            steps.push(Step::Child(format!("memory@{address:x}")));
            steps.push(Step::Property("name", b"memory\0".to_vec()));
            steps.push(Step::Property("device_type", b"memory\0".to_vec()));
            steps.push(Step::Property("reg", reg));
            steps.push(Step::Property("ibm,associativity", associativity));
        }
    }
    steps.push(Step::Parent);
    Some(steps)
}

/// What one call did.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// A step was written; the status to return.
    Step(i32),
    /// The last step: the walk is complete (status 0).
    Complete,
}

/// Writes step `index` of `drc`'s walk into the work area at `area`. The
/// walk's cursor is the hotplug controller's (in its state region), so a
/// walk survives the death of either process; this side keeps nothing.
pub fn write_walk_step<M: Bytes<GuestAddress, E = GuestMemoryError>>(
    memory: &M,
    area: u64,
    drc: DrcIndex,
    index: u32,
    threads_per_core: u32,
) -> Progress {
    let Some(steps) = fragment(drc, threads_per_core) else {
        return Progress::Step(HARDWARE_ERROR);
    };
    let Some(step) = steps.get(index as usize) else {
        return Progress::Step(HARDWARE_ERROR);
    };
    match write_step(memory, area, step) {
        Ok(_) if index as usize + 1 == steps.len() => Progress::Complete,
        Ok(status) => Progress::Step(status),
        Err(()) => Progress::Step(HARDWARE_ERROR),
    }
}

fn put_cell<M: Bytes<GuestAddress, E = GuestMemoryError>>(
    memory: &M,
    at: u64,
    value: u32,
) -> Result<(), ()> {
    memory
        .write_obj(value.to_be(), GuestAddress(at))
        .map_err(|_| ())
}

fn write_step<M: Bytes<GuestAddress, E = GuestMemoryError>>(
    memory: &M,
    area: u64,
    step: &Step,
) -> Result<i32, ()> {
    let write_name = |name: &str| -> Result<u64, ()> {
        let mut bytes = name.as_bytes().to_vec();
        bytes.push(0);
        if NAME_OFFSET + bytes.len() as u64 > WORK_AREA_SIZE {
            return Err(());
        }
        memory
            .write_slice(&bytes, GuestAddress(area + NAME_OFFSET))
            .map_err(|_| ())?;
        put_cell(memory, area + 8, NAME_OFFSET as u32)?;
        Ok(NAME_OFFSET + bytes.len() as u64)
    };
    match step {
        Step::Child(name) => {
            write_name(name)?;
            Ok(NEXT_CHILD)
        }
        Step::Property(name, value) => {
            let value_offset = write_name(name)?;
            if value_offset + value.len() as u64 > WORK_AREA_SIZE {
                return Err(());
            }
            memory
                .write_slice(value, GuestAddress(area + value_offset))
                .map_err(|_| ())?;
            put_cell(memory, area + 12, value.len() as u32)?;
            put_cell(memory, area + 16, value_offset as u32)?;
            Ok(NEXT_PROPERTY)
        }
        Step::Parent => Ok(PREV_PARENT),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    const AREA: u64 = 0x2000;

    fn read_cell(m: &GuestMemoryMmap, at: u64) -> u32 {
        u32::from_be(m.read_obj(GuestAddress(at)).unwrap())
    }

    fn read_str(m: &GuestMemoryMmap, at: u64) -> String {
        let mut bytes = Vec::new();
        for i in 0.. {
            let b: u8 = m.read_obj(GuestAddress(at + i)).unwrap();
            if b == 0 {
                break;
            }
            bytes.push(b);
        }
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_core_walk_yields_its_node_then_completes() {
        let m = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let drc = DrcIndex(0x1000_0002);
        let mut seen = Vec::new();
        for index in 0.. {
            match write_walk_step(&m, AREA, drc, index, 2) {
                Progress::Complete => break,
                Progress::Step(NEXT_CHILD) => seen.push(format!(
                    "child {}",
                    read_str(&m, AREA + read_cell(&m, AREA + 8) as u64)
                )),
                Progress::Step(NEXT_PROPERTY) => {
                    let name = read_str(&m, AREA + read_cell(&m, AREA + 8) as u64);
                    let len = read_cell(&m, AREA + 12);
                    let value_at = AREA + read_cell(&m, AREA + 16) as u64;
                    assert_eq!(value_at, AREA + 20 + name.len() as u64 + 1);
                    if name == "ibm,ppc-interrupt-server#s" {
                        assert_eq!(len, 8);
                        assert_eq!(
                            (read_cell(&m, value_at), read_cell(&m, value_at + 4)),
                            (2, 3)
                        );
                    }
                    seen.push(format!("property {name}"));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            seen,
            [
                "child cpu@2",
                "property name",
                "property device_type",
                "property reg",
                "property ibm,my-drc-index",
                "property ibm,ppc-interrupt-server#s",
            ]
        );
        // A cursor past the end (a guest that lies) is a hardware error.
        assert_eq!(
            write_walk_step(&m, AREA, drc, 7, 2),
            Progress::Step(HARDWARE_ERROR)
        );
    }

    #[test]
    fn an_lmb_fragment_carries_its_associativity() {
        let steps = fragment(DrcIndex(0x8000_0004), 1).unwrap();
        assert_eq!(steps[0], Step::Child("memory@40000000".into()));
        assert!(steps
            .iter()
            .any(|s| matches!(s, Step::Property("ibm,associativity", _))));
        assert_eq!(fragment(DrcIndex(0x2000_0001), 1), None);
    }
}
