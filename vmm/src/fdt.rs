//! The flattened device tree the guest boots from: how a pseries guest learns
//! the machine (CPUs and their DRCs, memory and LMB DRCs, RTAS, event sources).

mod rename;

use crate::config::SmpConfig;
use crate::layout::MemoryLayout;
use ipc_proto::papr::{
    cpu_core_node_name, cpu_core_properties, irq, DrcIndex, DrcKind, RtasCall, LMB_SIZE,
};
use ipc_proto::pci::{device_node, Phb, MEM32_PCI_ADDRESS, PHBS, VIRTIO_BLK_PCI};
use thiserror::Error;
use vm_fdt::FdtWriter;

/// The vty's `reg`: the terminal number the console hcalls name.
pub const VTY_TERMNO: u32 = 0x3000_0000;
/// The path of the console's node in the device tree.
pub const VTY_PATH: &str = "/vdevice/vty@30000000";

/// `ibm,dynamic-memory-v2` flags (the numbers Linux's drmem uses).
const LMB_ASSIGNED: u32 = 0x08;
const LMB_HOT_REMOVABLE: u32 = 0x100;
const LMB_RESERVED: u32 = 0x80;
const LMB_DRC_INVALID: u32 = 0x20;
const NO_ASSOCIATIVITY: u32 = 0xffff_ffff;
/// `ibm,drc-power-domains`: -1, live insertion (power managed automatically).
const LIVE_INSERTION: u32 = 0xffff_ffff;
const RTAS_ERROR_LOG_MAX: u32 = 2048;

/// Why a device tree cannot be built.
#[derive(Debug, Error)]
pub enum FdtError {
    /// The writer refused it.
    #[error("cannot write the device tree")]
    Writer(#[from] vm_fdt::Error),
    /// A node cannot be named as the guest expects.
    #[error("cannot rename node {0} in the written tree")]
    Rename(String),
    /// A DRC id that does not fit a DRC index.
    #[error("DRC id {0} does not fit in a DRC index")]
    DrcId(u32),
}

/// What the tree describes.
pub struct MachineDescription<'a> {
    /// The CPU topology.
    pub smp: &'a SmpConfig,
    /// Where memory is.
    pub layout: &'a MemoryLayout,
    /// Indices (0-based) of the cores present now.
    pub present_cores: &'a [u32],
    /// The plugged DIMMs (address, size), in address order.
    pub dimms: &'a [(u64, u64)],
    /// The slots of the PCI host bridge whose function 0 holds a disk.
    pub pci_slots: &'a [u8],
}

impl MachineDescription<'_> {
    /// The CPU DRC of core `core`: its id is the core's first vCPU id (QEMU's
    /// core-id, with one vCPU id per thread).
    pub fn core_drc(&self, core: u32) -> Result<DrcIndex, FdtError> {
        let id = core * self.smp.threads_per_core;
        DrcIndex::new(DrcKind::Cpu, id).ok_or(FdtError::DrcId(id))
    }

    fn cpu_drcs(&self) -> Result<Vec<DrcIndex>, FdtError> {
        (0..self.smp.max_cores())
            .map(|core| self.core_drc(core))
            .collect()
    }

    fn lmb_drcs(&self) -> Result<Vec<DrcIndex>, FdtError> {
        let first = self.layout.device_memory_start / LMB_SIZE;
        let last = self.layout.device_memory_end / LMB_SIZE;
        (first..last)
            .map(|id| DrcIndex::new(DrcKind::Lmb, id as u32).ok_or(FdtError::DrcId(id as u32)))
            .collect()
    }
}

/// The four `ibm,drc-*` arrays, each a count followed by one element per DRC.
fn write_drc_arrays(fdt: &mut FdtWriter, drcs: &[DrcIndex]) -> Result<(), FdtError> {
    let count = drcs.len() as u32;
    let mut indexes = vec![count];
    indexes.extend(drcs.iter().map(|drc| drc.0));
    fdt.property_array_u32("ibm,drc-indexes", &indexes)?;
    let mut domains = vec![count];
    domains.extend(drcs.iter().map(|_| LIVE_INSERTION));
    fdt.property_array_u32("ibm,drc-power-domains", &domains)?;
    let strings = |f: &dyn Fn(&DrcIndex) -> String| {
        let mut bytes = count.to_be_bytes().to_vec();
        for drc in drcs {
            bytes.extend_from_slice(f(drc).as_bytes());
            bytes.push(0);
        }
        bytes
    };
    let names = strings(&|drc| drc.name().unwrap_or_default());
    fdt.property("ibm,drc-names", &names)?;
    let types = strings(&|drc| {
        drc.kind()
            .map(|kind| kind.type_name().to_string())
            .unwrap_or_default()
    });
    fdt.property("ibm,drc-types", &types)?;
    Ok(())
}

/// The `/cpus` child for core `core`.
pub fn write_core_node(
    fdt: &mut FdtWriter,
    machine: &MachineDescription,
    core: u32,
) -> Result<(), FdtError> {
    let threads = machine.smp.threads_per_core;
    let first = core * threads;
    let node = fdt.begin_node(&cpu_core_node_name(first))?;
    for (name, value) in cpu_core_properties(first, threads, machine.core_drc(core)?) {
        fdt.property(name, &value)?;
    }
    fdt.end_node(node)?;
    Ok(())
}

/// PCI address space codes (bits 25:24 of a `ranges` entry's phys.hi).
const PCI_SPACE_IO: u32 = 1 << 24;
const PCI_SPACE_MEM32: u32 = 2 << 24;
const PCI_SPACE_MEM64: u32 = 3 << 24;

/// The node of PCI host bridge `phb`, as QEMU's pseries machine writes it
/// (`spapr_dt_phb`): its windows, its bus range and the physical DRCs of
/// its root bus, one per devfn. Its devices' interrupts (LSIs, MSI-X)
/// come with its first device.
fn write_phb_node(fdt: &mut FdtWriter, phb: &Phb, slots: &[u8]) -> Result<(), FdtError> {
    let node = fdt.begin_node(&phb.node_name())?;
    fdt.property_string("device_type", "pci")?;
    fdt.property_string("compatible", "IBM,Logical_PHB")?;
    fdt.property_array_u64("reg", &[phb.buid, 0])?;
    let high = |value: u64| (value >> 32) as u32;
    let low = |value: u64| value as u32;
    let (pio, pio_size) = phb.pio;
    let (mem32, mem32_size) = phb.mem32;
    let (mem64, mem64_size) = phb.mem64;
    #[rustfmt::skip]
    let ranges = [
        // phys.hi, child address (2 cells), CPU address (2), size (2)
        PCI_SPACE_IO, 0, 0, high(pio), low(pio), high(pio_size), low(pio_size),
        PCI_SPACE_MEM32, 0, low(MEM32_PCI_ADDRESS), high(mem32), low(mem32),
        high(mem32_size), low(mem32_size),
        PCI_SPACE_MEM64, high(mem64), low(mem64), high(mem64), low(mem64),
        high(mem64_size), low(mem64_size),
    ];
    fdt.property_array_u32("ranges", &ranges)?;
    fdt.property_array_u32("bus-range", &[0, 255])?;
    fdt.property_u32("#address-cells", 3)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_u32("#interrupt-cells", 1)?;
    // Extended (4 KiB) configuration space.
    fdt.property_u32("ibm,pci-config-space-type", 1)?;
    fdt.property_null("used-by-rtas")?;
    write_drc_arrays(fdt, &phb.drcs())?;
    // The devices present: each a virtio-blk-pci function, its node as the
    // configure-connector walk would have handed it over.
    for &slot in slots {
        let devfn = slot << 3;
        let drc = phb.drc(devfn).ok_or(FdtError::DrcId(u32::from(devfn)))?;
        let (name, properties) = device_node(&VIRTIO_BLK_PCI, phb.index, devfn, drc);
        let device = fdt.begin_node(&name)?;
        for (property, value) in properties {
            fdt.property(property, &value)?;
        }
        fdt.end_node(device)?;
    }
    fdt.end_node(node)?;
    Ok(())
}

/// The device tree of `machine`.
pub fn build(machine: &MachineDescription) -> Result<Vec<u8>, FdtError> {
    let layout = machine.layout;
    let mut fdt = FdtWriter::new()?;
    let root = fdt.begin_node("")?;
    fdt.property_string("compatible", "papervisor,pseries")?;
    fdt.property_string("model", "papervisor")?;
    fdt.property_string("device_type", "chrp")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    let lmb_drcs = machine.lmb_drcs()?;
    write_drc_arrays(&mut fdt, &lmb_drcs)?;

    let chosen = fdt.begin_node("chosen")?;
    fdt.property_string("stdout-path", VTY_PATH)?;
    fdt.property_string("bootargs", "")?;
    fdt.end_node(chosen)?;

    let memory = fdt.begin_node("memory@0")?;
    fdt.property_string("device_type", "memory")?;
    fdt.property_array_u64("reg", &[0, layout.boot_ram])?;
    fdt.end_node(memory)?;

    let cpus = fdt.begin_node("cpus")?;
    fdt.property_u32("#address-cells", 1)?;
    fdt.property_u32("#size-cells", 0)?;
    write_drc_arrays(&mut fdt, &machine.cpu_drcs()?)?;
    for &core in machine.present_cores {
        write_core_node(&mut fdt, machine, core)?;
    }
    fdt.end_node(cpus)?;

    let rtas = fdt.begin_node("rtas")?;
    for call in RtasCall::ALL {
        match call.name() {
            name if name.len() > MAX_NAME => {
                fdt.property_u32(&token_placeholder(call), call.token())?
            }
            name => fdt.property_u32(name, call.token())?,
        }
    }
    fdt.property_u32("rtas-error-log-max", RTAS_ERROR_LOG_MAX)?;
    fdt.property_u32("rtas-event-scan-rate", 1)?;
    fdt.property_null("ibm,extended-os-term")?;
    let max_address = layout.device_memory_end;
    fdt.property_array_u32(
        "ibm,lrdr-capacity",
        &[
            (max_address >> 32) as u32,
            max_address as u32,
            (LMB_SIZE >> 32) as u32,
            LMB_SIZE as u32,
            machine.smp.max_cores(),
        ],
    )?;
    fdt.end_node(rtas)?;

    let sources = fdt.begin_node("event-sources")?;
    fdt.property_null("interrupt-controller")?;
    fdt.property_u32("#interrupt-cells", 2)?;
    fdt.property_array_u32("interrupt-ranges", &[irq::EPOW, 1, irq::HOTPLUG, 1])?;
    for (name, source) in [
        ("epow-events", irq::EPOW),
        ("hot-plug-events", irq::HOTPLUG),
    ] {
        let node = fdt.begin_node(name)?;
        fdt.property_array_u32("interrupts", &[source, 0])?;
        fdt.end_node(node)?;
    }
    fdt.end_node(sources)?;

    let vdevice = fdt.begin_node("vdevice")?;
    fdt.property_string("device_type", "vdevice")?;
    fdt.property_string("compatible", "IBM,vdevice")?;
    fdt.property_u32("#address-cells", 1)?;
    fdt.property_u32("#size-cells", 0)?;
    let vty = fdt.begin_node(&format!("vty@{VTY_TERMNO:x}"))?;
    fdt.property_string("name", "vty")?;
    fdt.property_string("device_type", "serial")?;
    fdt.property_string("compatible", "hvterm1")?;
    fdt.property_u32("reg", VTY_TERMNO)?;
    fdt.property_array_u32("interrupts", &[irq::VTY, 0])?;
    fdt.end_node(vty)?;
    fdt.end_node(vdevice)?;

    for index in 0..PHBS {
        // The disks are on PHB 0's root bus.
        let slots = if index == 0 { machine.pci_slots } else { &[] };
        write_phb_node(&mut fdt, &Phb::new(index), slots)?;
    }

    let drconf = fdt.begin_node(DRCONF_PLACEHOLDER)?;
    fdt.property_array_u32("ibm,lmb-size", &[(LMB_SIZE >> 32) as u32, LMB_SIZE as u32])?;
    fdt.property_u32("ibm,memory-flags-mask", 0xff)?;
    fdt.property_u32("ibm,memory-preservation-time", 0)?;
    // One associativity array of four cells, all node 0.
    fdt.property_array_u32("ibm,associativity-lookup-arrays", &[1, 4, 0, 0, 0, 0])?;
    fdt.property(
        "ibm,dynamic-memory-v2",
        &dynamic_memory_v2(layout, machine.dimms),
    )?;
    fdt.end_node(drconf)?;

    fdt.end_node(root)?;
    let malformed = |rename::Malformed(name)| FdtError::Rename(name);
    let mut blob =
        rename::rename_node(&fdt.finish()?, DRCONF_PLACEHOLDER, DRCONF_NAME).map_err(malformed)?;
    for call in RtasCall::ALL
        .into_iter()
        .filter(|call| call.name().len() > MAX_NAME)
    {
        blob = rename::rename_property(&blob, &token_placeholder(call), call.name())
            .map_err(malformed)?;
    }
    Ok(blob)
}

/// The longest property name vm-fdt writes (the devicetree specification's
/// limit); QEMU and Linux use longer RTAS call names.
const MAX_NAME: usize = 31;

/// The name an RTAS call's token is written under when its own is too
/// long, for [`rename::rename_property`] to replace.
fn token_placeholder(call: RtasCall) -> String {
    format!("x-rtas-{:x}", call.token())
}

/// Linux looks for this node by name, but it is longer than the 31 characters
/// the devicetree specification (and so vm-fdt) allows: the tree is written
/// with a placeholder that [`rename::rename_node`] then replaces.
const DRCONF_NAME: &str = "ibm,dynamic-reconfiguration-memory";
const DRCONF_PLACEHOLDER: &str = "ibm,drconf-placeholder";

/// Packed 24-byte runs: (u32 count, u64 base, u32 first DRC, u32 aa index, u32 flags).
/// Boot RAM and the gap up to device memory form one reserved run; then, in
/// address order, each plugged DIMM an assigned (and hot-removable) run and
/// each hole a free one. Rebuilt at every reset: a rebooted guest sees the
/// DIMMs plugged now.
fn dynamic_memory_v2(layout: &MemoryLayout, dimms: &[(u64, u64)]) -> Vec<u8> {
    let mut runs = vec![(
        (layout.device_memory_start / LMB_SIZE) as u32,
        0u64,
        0u32,
        NO_ASSOCIATIVITY,
        LMB_RESERVED | LMB_DRC_INVALID,
    )];
    let lmb_drc = |at: u64| DrcIndex::new(DrcKind::Lmb, (at / LMB_SIZE) as u32).map_or(0, |d| d.0);
    let mut at = layout.device_memory_start;
    let holes_and_dimms = dimms
        .iter()
        .map(|&(addr, size)| (addr, size, LMB_ASSIGNED | LMB_HOT_REMOVABLE, 0))
        .chain([(layout.device_memory_end, 0, 0, 0)]);
    for (addr, size, flags, aa) in holes_and_dimms {
        if addr > at {
            runs.push((
                ((addr - at) / LMB_SIZE) as u32,
                at,
                lmb_drc(at),
                NO_ASSOCIATIVITY,
                0,
            ));
        }
        if size > 0 {
            runs.push(((size / LMB_SIZE) as u32, addr, lmb_drc(addr), aa, flags));
        }
        at = at.max(addr + size);
    }
    let mut bytes = (runs.len() as u32).to_be_bytes().to_vec();
    for (count, base, drc, aa, flags) in runs {
        bytes.extend_from_slice(&count.to_be_bytes());
        bytes.extend_from_slice(&base.to_be_bytes());
        bytes.extend_from_slice(&drc.to_be_bytes());
        bytes.extend_from_slice(&aa.to_be_bytes());
        bytes.extend_from_slice(&flags.to_be_bytes());
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use fdt::Fdt;

    fn be32s(bytes: &[u8]) -> Vec<u32> {
        bytes
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
            .collect()
    }

    fn strings(bytes: &[u8]) -> Vec<&str> {
        bytes
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| std::str::from_utf8(s).unwrap())
            .collect()
    }

    fn machine_blob(smp: SmpConfig, layout: MemoryLayout, present: &[u32]) -> Vec<u8> {
        build(&MachineDescription {
            smp: &smp,
            layout: &layout,
            present_cores: present,
            dimms: &[],
            pci_slots: &[],
        })
        .unwrap()
    }

    fn example() -> Vec<u8> {
        machine_blob(
            SmpConfig {
                cpus: 4,
                max_cpus: 8,
                threads_per_core: 2,
            },
            MemoryLayout {
                boot_ram: 512 << 20,
                device_memory_start: 1 << 30,
                device_memory_end: (1 << 30) + (1 << 30),
            },
            &[0, 1],
        )
    }

    #[test]
    fn cpus_node_has_a_child_per_present_core_and_every_possible_drc() {
        let blob = example();
        let fdt = Fdt::new(&blob).unwrap();
        let cpus = fdt.find_node("/cpus").unwrap();
        let cores: Vec<_> = cpus.children().collect();
        assert_eq!(cores.len(), 2);
        let core1 = fdt.find_node("/cpus/cpu@2").unwrap();
        let prop = |name| core1.property(name).unwrap().value;
        assert_eq!(be32s(prop("ibm,my-drc-index")), [0x1000_0002]);
        assert_eq!(be32s(prop("ibm,ppc-interrupt-server#s")), [2, 3]);
        assert_eq!(be32s(prop("reg")), [2]);

        let cpu_prop = |name| cpus.property(name).unwrap().value;
        assert_eq!(
            be32s(cpu_prop("ibm,drc-indexes")),
            [4, 0x1000_0000, 0x1000_0002, 0x1000_0004, 0x1000_0006]
        );
        assert_eq!(
            be32s(cpu_prop("ibm,drc-power-domains")),
            [4, !0, !0, !0, !0]
        );
        let names = cpu_prop("ibm,drc-names");
        assert_eq!(be32s(&names[..4]), [4]);
        assert_eq!(strings(&names[4..]), ["CPU 0", "CPU 2", "CPU 4", "CPU 6"]);
        let types = cpu_prop("ibm,drc-types");
        assert_eq!(strings(&types[4..]), ["CPU"; 4]);
    }

    #[test]
    fn the_phb_has_its_windows_and_a_physical_drc_per_devfn() {
        let blob = example();
        let fdt = Fdt::new(&blob).unwrap();
        let phb = fdt.find_node("/pci@800000020000000").unwrap();
        let prop = |name| phb.property(name).unwrap().value;
        assert_eq!(strings(prop("device_type")), ["pci"]);
        assert_eq!(strings(prop("compatible")), ["IBM,Logical_PHB"]);
        assert_eq!(be32s(prop("reg")), [0x0800_0000, 0x2000_0000, 0, 0]);
        assert_eq!(be32s(prop("bus-range")), [0, 255]);
        #[rustfmt::skip]
        let ranges = [
            0x0100_0000, 0, 0, 0x2000, 0, 0, 0x1_0000,
            0x0200_0000, 0, 0x8000_0000, 0x2000, 0x8000_0000, 0, 0x8000_0000,
            0x0300_0000, 0x2100, 0, 0x2100, 0, 0x100, 0,
        ];
        assert_eq!(be32s(prop("ranges")), ranges);
        let indexes = be32s(prop("ibm,drc-indexes"));
        assert_eq!(indexes.len(), 257);
        assert_eq!(
            (indexes[0], indexes[1], indexes[256]),
            (256, 0x4000_0000, 0x4000_00ff)
        );
        let names = prop("ibm,drc-names");
        assert_eq!(strings(&names[4..])[..3], ["C0", "C1", "C2"]);
        assert_eq!(strings(&prop("ibm,drc-types")[4..]), ["28"; 256]);
        assert_eq!(be32s(prop("ibm,drc-power-domains"))[1..], [!0; 256]);
    }

    #[test]
    fn a_disk_present_at_boot_is_a_node_under_the_phb() {
        let (smp, layout) = (
            SmpConfig {
                cpus: 1,
                max_cpus: 1,
                threads_per_core: 1,
            },
            MemoryLayout {
                boot_ram: 512 << 20,
                device_memory_start: 1 << 30,
                device_memory_end: 1 << 30,
            },
        );
        let blob = build(&MachineDescription {
            smp: &smp,
            layout: &layout,
            present_cores: &[0],
            dimms: &[],
            pci_slots: &[3],
        })
        .unwrap();
        let fdt = Fdt::new(&blob).unwrap();
        let disk = fdt.find_node("/pci@800000020000000/scsi@3").unwrap();
        let prop = |name| disk.property(name).unwrap().value;
        assert_eq!(be32s(prop("vendor-id")), [0x1af4]);
        assert_eq!(be32s(prop("device-id")), [0x1042]);
        assert_eq!(be32s(prop("ibm,my-drc-index")), [0x4000_0018]);
        assert_eq!(be32s(prop("reg"))[0], 0x1800);
        assert!(fdt.find_node("/pci@800000020000000/scsi@0").is_none());
    }

    #[test]
    fn root_lists_the_lmb_drcs_of_device_memory() {
        let blob = example();
        let fdt = Fdt::new(&blob).unwrap();
        let root = fdt.find_node("/").unwrap();
        // Device memory 1 GiB..2 GiB: LMB ids 4..8.
        assert_eq!(
            be32s(root.property("ibm,drc-indexes").unwrap().value),
            [4, 0x8000_0004, 0x8000_0005, 0x8000_0006, 0x8000_0007]
        );
        let names = root.property("ibm,drc-names").unwrap().value;
        assert_eq!(strings(&names[4..]), ["LMB 4", "LMB 5", "LMB 6", "LMB 7"]);
        let types = root.property("ibm,drc-types").unwrap().value;
        assert_eq!(strings(&types[4..]), ["MEM"; 4]);
        let memory = fdt.find_node("/memory@0").unwrap();
        let reg = be32s(memory.property("reg").unwrap().value);
        assert_eq!(reg, [0, 0, 0, 512 << 20]);
    }

    #[test]
    fn dynamic_reconfiguration_memory_describes_ram_and_free_device_memory() {
        let blob = example();
        let fdt = Fdt::new(&blob).unwrap();
        let node = fdt
            .find_node("/ibm,dynamic-reconfiguration-memory")
            .unwrap();
        assert_eq!(
            be32s(node.property("ibm,lmb-size").unwrap().value),
            [0, 0x1000_0000]
        );
        let v2 = be32s(node.property("ibm,dynamic-memory-v2").unwrap().value);
        assert_eq!(
            v2,
            [
                2, // runs
                4,
                0,
                0,
                0,
                0xffff_ffff,
                0xa0, // boot RAM + gap: reserved
                4,
                0,
                1 << 30,
                0x8000_0004,
                0xffff_ffff,
                0, // device memory, free
            ]
        );
    }

    #[test]
    fn plugged_dimms_are_assigned_runs_between_free_ones() {
        let layout = MemoryLayout {
            boot_ram: 512 << 20,
            device_memory_start: 1 << 30,
            device_memory_end: 3 << 30,
        };
        // A 512 MiB DIMM at 1.5 GiB: free 1 GiB..1.5, the DIMM, free 2..3 GiB.
        let v2 = be32s(&dynamic_memory_v2(&layout, &[(3 << 29, 1 << 29)]));
        assert_eq!(
            v2,
            [
                4,
                4,
                0,
                0,
                0,
                0xffff_ffff,
                0xa0, // boot RAM + gap
                2,
                0,
                1 << 30,
                0x8000_0004,
                0xffff_ffff,
                0, // free
                2,
                0,
                3 << 29,
                0x8000_0006,
                0,
                0x108, // the DIMM
                4,
                0,
                1 << 31,
                0x8000_0008,
                0xffff_ffff,
                0, // free
            ]
        );
        // A DIMM that fills the area leaves no free run.
        let full = be32s(&dynamic_memory_v2(&layout, &[(1 << 30, 2 << 30)]));
        assert_eq!(full[0], 2);
        assert_eq!(&full[7..], [8, 0, 1 << 30, 0x8000_0004, 0, 0x108]);
    }

    #[test]
    fn rtas_advertises_every_implemented_call() {
        let blob = example();
        let fdt = Fdt::new(&blob).unwrap();
        let rtas = fdt.find_node("/rtas").unwrap();
        for call in RtasCall::ALL {
            let value = rtas.property(call.name()).unwrap().value;
            assert_eq!(be32s(value), [call.token()], "{}", call.name());
        }
        assert_eq!(
            be32s(rtas.property("rtas-error-log-max").unwrap().value),
            [2048]
        );
        assert_eq!(
            be32s(rtas.property("ibm,lrdr-capacity").unwrap().value),
            [0, 2 << 30, 0, 0x1000_0000, 4]
        );
    }

    #[test]
    fn event_sources_and_console_have_their_interrupts() {
        let blob = example();
        let fdt = Fdt::new(&blob).unwrap();
        let hotplug = fdt.find_node("/event-sources/hot-plug-events").unwrap();
        assert_eq!(
            be32s(hotplug.property("interrupts").unwrap().value),
            [0x1001, 0]
        );
        let epow = fdt.find_node("/event-sources/epow-events").unwrap();
        assert_eq!(
            be32s(epow.property("interrupts").unwrap().value),
            [0x1000, 0]
        );
        let sources = fdt.find_node("/event-sources").unwrap();
        assert!(sources.property("interrupt-controller").is_some());
        let vty = fdt.find_node(VTY_PATH).unwrap();
        assert_eq!(be32s(vty.property("reg").unwrap().value), [VTY_TERMNO]);
        assert_eq!(
            vty.property("compatible").unwrap().as_str(),
            Some("hvterm1")
        );
        let chosen = fdt.find_node("/chosen").unwrap();
        assert_eq!(
            chosen.property("stdout-path").unwrap().as_str(),
            Some(VTY_PATH)
        );
    }

    #[test]
    fn a_machine_without_device_memory_has_no_lmb_drcs() {
        let blob = machine_blob(
            SmpConfig {
                cpus: 1,
                max_cpus: 1,
                threads_per_core: 1,
            },
            MemoryLayout {
                boot_ram: 256 << 20,
                device_memory_start: 1 << 30,
                device_memory_end: 1 << 30,
            },
            &[0],
        );
        let fdt = Fdt::new(&blob).unwrap();
        let root = fdt.find_node("/").unwrap();
        assert_eq!(be32s(root.property("ibm,drc-indexes").unwrap().value), [0]);
        let node = fdt
            .find_node("/ibm,dynamic-reconfiguration-memory")
            .unwrap();
        assert_eq!(
            be32s(node.property("ibm,dynamic-memory-v2").unwrap().value),
            [1, 4, 0, 0, 0, 0xffff_ffff, 0xa0]
        );
    }
}
