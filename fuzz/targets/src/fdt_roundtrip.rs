//! The device tree: a machine (its `--smp` and `--memory` text, the present
//! cores, the plugged DIMMs) in, a blob out, read back with an independent
//! FDT parser and checked against the machine: every CPU and LMB DRC, each
//! present core's node, and each LMB's flags in `ibm,dynamic-memory-v2`.

use fdt::Fdt;
use ipc_proto::papr::{DrcIndex, DrcKind, LMB_SIZE};
use vmm::config::{MemoryConfig, SmpConfig};
use vmm::fdt::{build, MachineDescription};
use vmm::layout::MemoryLayout;

const ASSIGNED: u32 = 0x08;
const RESERVED: u32 = 0x80;
const DRC_INVALID: u32 = 0x20;

fn cells(bytes: &[u8]) -> Vec<u32> {
    assert_eq!(bytes.len() % 4, 0, "a cell array");
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The count and the NUL-terminated strings of an `ibm,drc-names` array.
fn strings(bytes: &[u8]) -> (u32, Vec<String>) {
    let count = cells(&bytes[..4])[0];
    let mut text = bytes[4..]
        .split(|&b| b == 0)
        .map(|s| String::from_utf8(s.to_vec()).expect("UTF-8 names"))
        .collect::<Vec<_>>();
    assert_eq!(text.pop().as_deref(), Some(""), "NUL-terminated");
    (count, text)
}

/// The four `ibm,drc-*` arrays of `node` describe exactly `drcs`.
fn check_drc_arrays(node: &fdt::node::FdtNode, drcs: &[DrcIndex], type_name: &str) {
    let property = |name: &str| {
        node.property(name)
            .unwrap_or_else(|| panic!("no {name}"))
            .value
    };
    let count = drcs.len() as u32;
    let mut indexes = vec![count];
    indexes.extend(drcs.iter().map(|d| d.0));
    assert_eq!(cells(property("ibm,drc-indexes")), indexes);
    assert_eq!(
        cells(property("ibm,drc-power-domains")).len(),
        drcs.len() + 1
    );
    let names: Vec<String> = drcs.iter().map(|d| d.name().expect("a name")).collect();
    assert_eq!(strings(property("ibm,drc-names")), (count, names));
    let types = vec![type_name.to_string(); drcs.len()];
    assert_eq!(strings(property("ibm,drc-types")), (count, types));
}

fn byte(data: &[u8], at: usize) -> u32 {
    u32::from(data.get(at).copied().unwrap_or(0))
}

/// The target.
pub fn fuzz(data: &[u8]) {
    let threads = 1 + byte(data, 0) % 8;
    let smp_text = format!(
        "cpus={},maxcpus={},threads={threads}",
        threads * (1 + byte(data, 1) % 8),
        threads * (1 + byte(data, 2) % 16)
    );
    let memory_text = format!(
        "size={}M,maxmem={}M,slots={}",
        256 * (1 + byte(data, 3) % 16),
        256 * (1 + byte(data, 3) % 16 + byte(data, 4) * 2),
        byte(data, 5) % 40
    );
    let (Ok(smp), Ok(memory)) = (
        SmpConfig::parse(&smp_text),
        MemoryConfig::parse(&memory_text),
    ) else {
        return;
    };
    let layout = MemoryLayout::new(&memory);
    // Present cores: a bit each; core 0 always.
    let mask = u64::from_le_bytes(std::array::from_fn(|i| byte(data, 6 + i) as u8)) | 1;
    let present: Vec<u32> = (0..smp.max_cores())
        .filter(|c| mask >> (c % 64) & 1 == 1)
        .collect();
    // DIMMs: (gap, size) in LMBs, in address order, within device memory.
    let mut dimms = Vec::new();
    let mut at = layout.device_memory_start;
    for pair in data.get(14..).unwrap_or_default().chunks_exact(2) {
        if dimms.len() as u32 >= memory.slots {
            break;
        }
        let addr = at + u64::from(pair[0] % 4) * LMB_SIZE;
        let size = u64::from(1 + pair[1] % 8) * LMB_SIZE;
        if addr + size > layout.device_memory_end {
            break;
        }
        dimms.push((addr, size));
        at = addr + size;
    }
    // Disks in the slots whose bit of byte 13 is set (slots 0..8).
    let pci_slots: Vec<u8> = (0..8u8).filter(|s| byte(data, 13) >> s & 1 == 1).collect();
    let machine = MachineDescription {
        smp: &smp,
        layout: &layout,
        present_cores: &present,
        dimms: &dimms,
        pci_slots: &pci_slots,
    };
    let blob = build(&machine).expect("a valid machine builds");
    let tree = Fdt::new(&blob).expect("the blob parses");

    let root = tree.find_node("/").expect("a root");
    let lmb = |addr: u64| DrcIndex::new(DrcKind::Lmb, (addr / LMB_SIZE) as u32).expect("an LMB");
    let lmbs: Vec<DrcIndex> = (layout.device_memory_start / LMB_SIZE
        ..layout.device_memory_end / LMB_SIZE)
        .map(|id| lmb(id * LMB_SIZE))
        .collect();
    check_drc_arrays(&root, &lmbs, "MEM");

    let bridge = tree
        .find_node("/pci@800000020000000")
        .expect("the PCI host bridge");
    assert_eq!(bridge.children().count(), pci_slots.len());
    for &slot in &pci_slots {
        let node = tree
            .find_node(&format!("/pci@800000020000000/scsi@{slot:x}"))
            .expect("a disk's node");
        let drc = node
            .property("ibm,my-drc-index")
            .and_then(|p| p.as_usize())
            .expect("its DRC");
        assert_eq!(drc, 0x4000_0000 | usize::from(slot) << 3);
    }

    let cpus = tree.find_node("/cpus").expect("/cpus");
    let cores: Vec<DrcIndex> = (0..smp.max_cores())
        .map(|core| DrcIndex::new(DrcKind::Cpu, core * threads).expect("a CPU DRC"))
        .collect();
    check_drc_arrays(&cpus, &cores, "CPU");
    assert_eq!(cpus.children().count(), present.len());
    for &core in &present {
        let first = core * threads;
        let node = tree
            .find_node(&format!(
                "/cpus/{}",
                ipc_proto::papr::cpu_core_node_name(first)
            ))
            .expect("a present core's node");
        let property = |name: &str| cells(node.property(name).expect(name).value);
        assert_eq!(property("reg"), [first]);
        assert_eq!(property("ibm,my-drc-index"), [cores[core as usize].0]);
        let servers: Vec<u32> = (first..first + threads).collect();
        assert_eq!(property("ibm,ppc-interrupt-server#s"), servers);
    }

    let reg = tree
        .find_node("/memory@0")
        .expect("/memory@0")
        .property("reg")
        .expect("reg");
    assert_eq!(
        cells(reg.value),
        [0, 0, (layout.boot_ram >> 32) as u32, layout.boot_ram as u32]
    );

    // ibm,dynamic-memory-v2: runs of (count, base, first DRC, aa index, flags).
    let drconf = tree
        .find_node("/ibm,dynamic-reconfiguration-memory")
        .expect("the drconf node");
    let v2 = cells(drconf.property("ibm,dynamic-memory-v2").expect("v2").value);
    let (&runs, rest) = v2.split_first().expect("a run count");
    assert_eq!(rest.len(), 6 * runs as usize, "six cells a run");
    let mut next = 0u64;
    for run in rest.chunks_exact(6) {
        let (count, base) = (run[0], u64::from(run[1]) << 32 | u64::from(run[2]));
        let (drc, flags) = (run[3], run[5]);
        assert!(count > 0, "an empty run");
        if base == 0 {
            // Boot memory and what lies below device memory: no DRCs.
            assert_eq!(next, 0);
            assert_eq!(flags, RESERVED | DRC_INVALID);
            assert_eq!(u64::from(count) * LMB_SIZE, layout.device_memory_start);
            next = layout.device_memory_start;
            continue;
        }
        assert_eq!(base, next, "runs are contiguous");
        assert_eq!(drc, lmb(base).0, "a run's first DRC is its first LMB's");
        for i in 0..u64::from(count) {
            let addr = base + i * LMB_SIZE;
            let in_dimm = dimms.iter().any(|&(a, s)| (a..a + s).contains(&addr));
            assert_eq!(flags & ASSIGNED != 0, in_dimm, "LMB at {addr:#x}");
        }
        next = base + u64::from(count) * LMB_SIZE;
    }
    assert_eq!(
        next, layout.device_memory_end,
        "the runs cover device memory"
    );
}
