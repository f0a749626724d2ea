//! A PCI host bridge's root bus as the guest reaches it through RTAS
//! (PCI reference §4): the functions plugged into it, configuration reads
//! and writes by configuration address (`ibm,read-pci-config`,
//! `ibm,write-pci-config`), and MSI/MSI-X vectors granted by
//! `ibm,change-msi` and named by `ibm,query-interrupt-source-number` — with
//! QEMU's answers, statuses included, since Linux reads them. The process
//! that serves a bridge keeps one of these; everything here is checked,
//! whatever the guest passes.

use super::config::{ConfigSpace, COMMAND_MEMORY};
use super::transport::{Region, Transport, TransportState};
use super::virtio::{block_function, BLOCK_VECTORS, MODERN_BAR, MSIX_BAR};
use ipc_proto::link::core_hotplug::{DeviceModel, FunctionEffect};
use ipc_proto::papr::{DrcIndex, RtasStatus};
use ipc_proto::pci::{ConfigAddress, Phb, DEVFNS_PER_BUS};

/// `ibm,change-msi` functions (Linux's numbers).
const QUERY: u32 = 0;
const CHANGE: u32 = 1;
const MSI: u32 = 3;
const MSIX: u32 = 4;

/// PCI capability ids.
const CAP_MSI: u8 = 0x05;
const CAP_MSIX: u8 = 0x11;
const CAPABILITIES: u32 = 0x34;

/// A plugged function: its configuration space, the vectors granted and
/// its device as the driver sees it through the BARs.
struct Function {
    space: ConfigSpace,
    /// First interrupt and count granted by `ibm,change-msi`.
    vectors: Option<(u32, u32)>,
    transport: Transport,
}

impl Function {
    /// The region of one of its BARs that bus address `bus` falls in, and
    /// that BAR's bus address, while it decodes memory.
    fn decodes(&self, bus: u64) -> Option<(Region, u64)> {
        if self.space.command() & COMMAND_MEMORY == 0 {
            return None;
        }
        [MSIX_BAR, MODERN_BAR].into_iter().find_map(|index| {
            let base = self.space.bar_address(index)?;
            let size = self.space.bar(index)?.size;
            if base == 0 || bus < base || bus - base >= size {
                return None;
            }
            let offset = bus - base;
            let region = match index {
                MSIX_BAR => Region::Msix(offset),
                _ => Region::Modern(offset),
            };
            Some((region, base))
        })
    }
}

/// What a driver set in one function (its configuration, the vectors it
/// was granted, its device's registers): recorded after each change, so
/// that a successor of the process serving the bridge resumes the driver's
/// set-up where it was, not from a reset the driver never made.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FunctionState {
    config: Vec<u8>,
    vectors: Option<(u32, u32)>,
    transport: TransportState,
}

/// The root bus of one bridge.
pub struct Bridge {
    functions: Vec<Option<Function>>,
    /// Interrupt numbers MSIs are granted from: `first..first + count`.
    interrupts: (u32, u32),
}

/// What `ibm,change-msi` answers: the vectors now granted (0 after a
/// release) and whether they are MSI-X.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Granted {
    /// Vectors granted (or, when more were asked than the function has,
    /// how many it has: nothing is granted then).
    pub count: u32,
    /// MSI-X (else MSI).
    pub msix: bool,
}

impl Bridge {
    /// An empty bus whose MSIs come from `first..first + count`.
    pub fn new(first: u32, count: u32) -> Bridge {
        Bridge {
            functions: (0..DEVFNS_PER_BUS).map(|_| None).collect(),
            interrupts: (first, count),
        }
    }

    /// Plugs a virtio block function at `devfn`, connected through `drc`,
    /// whose device is `model` (after its unplug, or a reset, a new one:
    /// its configuration starts afresh).
    pub fn plug_block(
        &mut self,
        devfn: u8,
        drc: DrcIndex,
        model: &DeviceModel,
    ) -> Result<(), String> {
        let space =
            block_function(BLOCK_VECTORS).map_err(|error| format!("a block function: {error}"))?;
        self.functions[usize::from(devfn)] = Some(Function {
            space,
            vectors: None,
            transport: Transport::new(drc, model, BLOCK_VECTORS),
        });
        Ok(())
    }

    /// What the driver set in the function at `devfn`, if one is plugged.
    pub fn snapshot(&self, devfn: u8) -> Option<FunctionState> {
        let function = self.functions[usize::from(devfn)].as_ref()?;
        Some(FunctionState {
            config: function.space.driver_bytes(),
            vectors: function.vectors,
            transport: function.transport.state(),
        })
    }

    /// Takes back into the function at `devfn` what its driver had set,
    /// checked as the driver's own writes were: a state that does not fit
    /// the function (or vectors outside the bridge's) is refused, and the
    /// function stays as it was.
    pub fn restore(&mut self, devfn: u8, state: FunctionState) -> Result<(), String> {
        let (first, count) = self.interrupts;
        if let Some((start, granted)) = state.vectors {
            let end = start.checked_add(granted);
            if start < first || granted > u32::from(BLOCK_VECTORS) || end > Some(first + count) {
                return Err(format!("vectors {start:#x}+{granted} outside the bridge's"));
            }
        }
        let function = self.functions[usize::from(devfn)]
            .as_mut()
            .ok_or_else(|| format!("no function at {devfn:#04x}"))?;
        let mut space = function.space.clone();
        space.restore_driver_bytes(&state.config)?;
        let mut transport = function.transport.clone();
        transport.restore(state.transport)?;
        function.space = space;
        function.transport = transport;
        function.vectors = state.vectors;
        Ok(())
    }

    /// The function at `devfn` is plugged.
    pub fn has(&self, devfn: u8) -> bool {
        self.functions[usize::from(devfn)].is_some()
    }

    /// A vCPU's access to CPU address `cpu` in the windows of `phb`: a
    /// read's value (all ones where no function decodes the address, as a
    /// master abort reads), or what a write asks of a device's server.
    pub fn bar_access(
        &mut self,
        phb: &Phb,
        cpu: u64,
        size: u32,
        write: Option<u64>,
    ) -> (u64, Option<FunctionEffect>) {
        let all_ones = u64::MAX >> (64 - 8 * size.clamp(1, 8));
        let Some(bus) = phb.bus_address(cpu) else {
            return (all_ones, None);
        };
        let Some((devfn, region, base)) = self.decoding(bus) else {
            return (all_ones, None);
        };
        let Some(function) = self.functions[usize::from(devfn)].as_mut() else {
            return (all_ones, None);
        };
        let vectors = function.vectors;
        let granted = move |vector: u16| source_of(vectors, u32::from(vector));
        match write {
            None => (function.transport.read(region, size, &granted), None),
            Some(value) => {
                // The driver's notifications go to the BAR's CPU address.
                let bar = phb.cpu_address(base).unwrap_or(base);
                let effect = function.transport.write(region, size, value, bar, &granted);
                (0, effect)
            }
        }
    }

    /// The function that decodes bus address `bus`: its devfn, the region
    /// and the BAR's bus address.
    fn decoding(&self, bus: u64) -> Option<(u8, Region, u64)> {
        self.functions
            .iter()
            .enumerate()
            .find_map(|(devfn, function)| {
                let (region, base) = function.as_ref()?.decodes(bus)?;
                Some((devfn as u8, region, base))
            })
    }

    /// The function a vCPU's access to CPU address `cpu` reaches, if any.
    pub fn function_at(&self, phb: &Phb, cpu: u64) -> Option<u8> {
        let (devfn, _, _) = self.decoding(phb.bus_address(cpu)?)?;
        Some(devfn)
    }

    /// Takes the function at `devfn` out (its vectors go with it).
    pub fn unplug(&mut self, devfn: u8) {
        self.functions[usize::from(devfn)] = None;
    }

    fn function(&self, address: ConfigAddress) -> Result<&Function, RtasStatus> {
        match (address.bus, self.functions.get(usize::from(address.devfn))) {
            (0, Some(Some(function))) => Ok(function),
            _ => Err(RtasStatus::HardwareError),
        }
    }

    fn function_mut(&mut self, address: ConfigAddress) -> Result<&mut Function, RtasStatus> {
        match (
            address.bus,
            self.functions.get_mut(usize::from(address.devfn)),
        ) {
            (0, Some(Some(function))) => Ok(function),
            _ => Err(RtasStatus::HardwareError),
        }
    }

    /// `ibm,read-pci-config`: no function there, a bad size, an unaligned
    /// or out-of-range register are all -1, as QEMU answers.
    pub fn read_config(&self, address: ConfigAddress, size: u32) -> Result<u32, RtasStatus> {
        self.function(address)?
            .space
            .read(u32::from(address.register), size)
            .map_err(|_| RtasStatus::HardwareError)
    }

    /// `ibm,write-pci-config`, with the same answers; and the DRC of a
    /// function whose queues must stop: a write that turns a running
    /// device's memory decoding off or moves its queues' BAR takes its
    /// notification addresses away, so the device fails (it needs a reset,
    /// after which its driver starts it again where its BAR is now).
    pub fn write_config(
        &mut self,
        address: ConfigAddress,
        size: u32,
        value: u32,
    ) -> Result<Option<DrcIndex>, RtasStatus> {
        let function = self.function_mut(address)?;
        let decoded = |space: &ConfigSpace| {
            (space.command() & COMMAND_MEMORY != 0).then(|| space.bar_address(MODERN_BAR))
        };
        let before = decoded(&function.space);
        function
            .space
            .write(u32::from(address.register), size, value)
            .map_err(|_| RtasStatus::HardwareError)?;
        if function.transport.running() && decoded(&function.space) != before {
            function.transport.fail();
            return Ok(Some(function.transport.drc()));
        }
        Ok(None)
    }

    /// `ibm,change-msi` (`function`, `count`), as QEMU answers it: query
    /// and the other functions are not implemented (-3); an absent device
    /// or capability is -3; a release (count 0) of nothing is -1; more than
    /// the function has is granted nothing and answered with what it has
    /// (the guest asks again); else `count` consecutive interrupts.
    pub fn change_msi(
        &mut self,
        address: ConfigAddress,
        function: u32,
        count: u32,
    ) -> Result<Granted, RtasStatus> {
        let (first_free, room) = self.next_free();
        let target = self
            .function_mut(address)
            .map_err(|_| RtasStatus::ParameterError)?;
        let msix = match function {
            MSI => false,
            MSIX => true,
            CHANGE => !has_capability(&target.space, CAP_MSI),
            QUERY => return Err(RtasStatus::ParameterError),
            _ => return Err(RtasStatus::ParameterError),
        };
        let capacity = match msix {
            true => msix_table_size(&target.space),
            false => has_capability(&target.space, CAP_MSI).then_some(1),
        }
        .ok_or(RtasStatus::ParameterError)?;
        if count == 0 {
            return match target.vectors.take() {
                Some(_) => Ok(Granted { count: 0, msix }),
                None => Err(RtasStatus::HardwareError),
            };
        }
        if count > capacity {
            return Ok(Granted {
                count: capacity,
                msix,
            });
        }
        if count > room {
            return Err(RtasStatus::HardwareError);
        }
        target.vectors = Some((first_free, count));
        Ok(Granted { count, msix })
    }

    /// `ibm,query-interrupt-source-number` for vector `n`: its interrupt
    /// (edge-triggered), or -1 past what was granted.
    pub fn interrupt_of(&self, address: ConfigAddress, n: u32) -> Result<u32, RtasStatus> {
        source_of(self.function(address)?.vectors, n).ok_or(RtasStatus::HardwareError)
    }

    /// The first interrupt after every one granted, and how many remain.
    fn next_free(&self) -> (u32, u32) {
        let (first, count) = self.interrupts;
        let used_up_to = self
            .functions
            .iter()
            .flatten()
            .filter_map(|function| function.vectors)
            .map(|(start, n)| start + n)
            .max()
            .unwrap_or(first);
        (used_up_to, (first + count).saturating_sub(used_up_to))
    }
}

/// The interrupt source of vector `n` of a grant (first source, count).
fn source_of(vectors: Option<(u32, u32)>, n: u32) -> Option<u32> {
    let (first, count) = vectors?;
    (n < count).then(|| first + n)
}

/// Whether `space` lists capability `id` (a walk bounded as a well-formed
/// list is: at most 48 entries).
fn has_capability(space: &ConfigSpace, id: u8) -> bool {
    find_capability(space, id).is_some()
}

fn find_capability(space: &ConfigSpace, id: u8) -> Option<u32> {
    let mut at = space.read(CAPABILITIES, 1).ok()?;
    for _ in 0..48 {
        if at == 0 {
            return None;
        }
        if space.read(at, 1).ok()? == u32::from(id) {
            return Some(at);
        }
        at = space.read(at + 1, 1).ok()?;
    }
    None
}

/// The MSI-X table size of `space`, if it has the capability.
fn msix_table_size(space: &ConfigSpace) -> Option<u32> {
    let at = find_capability(space, CAP_MSIX)?;
    Some((space.read(at + 2, 2).ok()? & 0x7ff) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::config::{CONFIG_SPACE_BYTES, DRIVER_BYTES};
    use ipc_proto::link::core_hotplug::QueueStart;

    fn plug(bridge: &mut Bridge, devfn: u8) {
        let model = DeviceModel {
            features: 1 << 32,
            config: vec![0; 60],
        };
        let drc = Phb::new(0).drc(devfn).unwrap();
        bridge.plug_block(devfn, drc, &model).unwrap();
    }

    fn at(devfn: u8, register: u16) -> ConfigAddress {
        ConfigAddress {
            bus: 0,
            devfn,
            register,
        }
    }

    /// A block function at `devfn` with BAR 4 at bus address `bar`,
    /// decoding, two MSI-X vectors granted and its driver at DRIVER_OK with
    /// queue 0 (16 entries) on vector 1: what DRIVER_OK asked.
    fn started(bridge: &mut Bridge, devfn: u8, bar: u32) -> Option<FunctionEffect> {
        let phb = Phb::new(0);
        plug(bridge, devfn);
        bridge.write_config(at(devfn, 0x20), 4, bar).unwrap();
        bridge.write_config(at(devfn, 0x04), 2, 0x6).unwrap();
        bridge.change_msi(at(devfn, 0), MSIX, 2).unwrap();
        let cpu = phb.cpu_address(u64::from(bar)).unwrap();
        let mut write = |offset: u64, size: u32, value: u64| {
            bridge.bar_access(&phb, cpu + offset, size, Some(value)).1
        };
        for status in [1, 3, 11] {
            assert_eq!(write(0x14, 1, status), None);
        }
        write(0x16, 2, 0);
        write(0x18, 2, 16);
        write(0x1a, 2, 1);
        write(0x20, 8, 0x10_0000);
        write(0x28, 8, 0x10_0100);
        write(0x30, 8, 0x10_0200);
        write(0x1c, 2, 1);
        write(0x14, 1, 15)
    }

    #[test]
    fn driver_ok_asks_for_the_queue_with_its_notification_address_and_interrupt() {
        let mut bridge = Bridge::new(0x1010, 8);
        let phb = Phb::new(0);
        let drc = phb.drc(3 << 3).unwrap();
        let bar = 0x8030_8000;
        let effect = started(&mut bridge, 3 << 3, bar);
        let notify = phb.cpu_address(u64::from(bar)).unwrap() + 0x3000;
        assert_eq!(
            effect,
            Some(FunctionEffect::Start {
                drc,
                features: 0,
                queues: vec![QueueStart {
                    index: 0,
                    size: 16,
                    desc: 0x10_0000,
                    driver: 0x10_0100,
                    device: 0x10_0200,
                    notify,
                    interrupt: Some(0x1011),
                }],
            })
        );
        // Reads: the common configuration, and all ones outside any BAR.
        let cpu = notify - 0x3000;
        assert_eq!(bridge.bar_access(&phb, cpu + 0x14, 1, None).0, 15);
        assert_eq!(bridge.bar_access(&phb, cpu + 0x12, 2, None).0, 1);
        assert_eq!(
            bridge.bar_access(&phb, cpu + 0x8000, 4, None).0,
            0xffff_ffff
        );
        // A reset stops the queue.
        assert_eq!(
            bridge.bar_access(&phb, cpu + 0x14, 1, Some(0)).1,
            Some(FunctionEffect::Stop { drc })
        );
    }

    #[test]
    fn a_successor_resumes_a_function_as_its_driver_left_it_and_refuses_a_lying_record() {
        let phb = Phb::new(0);
        let devfn = 3 << 3;
        let bar = 0x8030_8000;
        let mut bridge = Bridge::new(0x1010, 8);
        assert!(started(&mut bridge, devfn, bar).is_some());
        let state = bridge.snapshot(devfn).unwrap();
        assert!(Bridge::new(0x1010, 8).snapshot(devfn).is_none());

        let mut successor = Bridge::new(0x1010, 8);
        plug(&mut successor, devfn);
        successor.restore(devfn, state.clone()).unwrap();
        assert_eq!(successor.snapshot(devfn), Some(state.clone()));
        let cpu = phb.cpu_address(u64::from(bar)).unwrap();
        for (offset, size) in [(0x14, 1), (0x18, 2), (0x1a, 2), (0x20, 8), (0x1c, 2)] {
            assert_eq!(
                successor.bar_access(&phb, cpu + offset, size, None),
                bridge.bar_access(&phb, cpu + offset, size, None),
                "register {offset:#x}"
            );
        }
        assert_eq!(
            successor.interrupt_of(at(devfn, 0), 1),
            bridge.interrupt_of(at(devfn, 0), 1)
        );
        // Nothing a driver writes lies beyond the bytes recorded.
        let space = block_function(BLOCK_VECTORS).unwrap();
        for register in (DRIVER_BYTES as u32..CONFIG_SPACE_BYTES as u32).step_by(4) {
            let mut probe = block_function(BLOCK_VECTORS).unwrap();
            let _ = probe.write(register, 4, 0xffff_ffff);
            assert_eq!(probe.read(register, 4), space.read(register, 4));
        }

        // Vectors outside the bridge's, or a device the function is not.
        let mut lying = state.clone();
        lying.vectors = Some((0x2000, 2));
        assert!(successor.restore(devfn, lying).is_err());
        let mut lying = state;
        lying.config.truncate(8);
        assert!(successor.restore(devfn, lying).is_err());
        assert!(successor
            .restore(5 << 3, bridge.snapshot(devfn).unwrap())
            .is_err());
    }

    #[test]
    fn taking_a_running_devices_bar_away_fails_it_once() {
        let mut bridge = Bridge::new(0x1010, 8);
        let devfn = 4 << 3;
        let drc = Phb::new(0).drc(devfn).unwrap();
        assert!(matches!(
            started(&mut bridge, devfn, 0x8040_8000),
            Some(FunctionEffect::Start { .. })
        ));
        // Another register: nothing to stop.
        assert_eq!(bridge.write_config(at(devfn, 0x3c), 1, 9), Ok(None));
        assert_eq!(bridge.write_config(at(devfn, 0x04), 2, 0), Ok(Some(drc)));
        assert_eq!(bridge.write_config(at(devfn, 0x04), 2, 6), Ok(None));
        assert_eq!(
            bridge.write_config(at(devfn, 0x20), 4, 0x8050_0000),
            Ok(None)
        );
        // A queue rung before DRIVER_OK fails the device too.
        let mut bridge = Bridge::new(0x1010, 8);
        let phb = Phb::new(0);
        plug(&mut bridge, devfn);
        bridge
            .write_config(at(devfn, 0x20), 4, 0x8040_8000)
            .unwrap();
        bridge.write_config(at(devfn, 0x04), 2, 0x6).unwrap();
        let cpu = phb.cpu_address(0x8040_8000).unwrap();
        bridge.bar_access(&phb, cpu + 0x14, 1, Some(3));
        assert_eq!(bridge.bar_access(&phb, cpu + 0x3000, 2, Some(0)).1, None);
        assert_eq!(bridge.bar_access(&phb, cpu + 0x14, 1, None).0, 0x43);
    }

    #[test]
    fn configuration_reads_answer_minus_one_where_qemu_does() {
        let mut bridge = Bridge::new(0x1300, 16);
        let disk = 3 << 3;
        assert_eq!(
            bridge.read_config(at(disk, 0), 4),
            Err(RtasStatus::HardwareError)
        );
        plug(&mut bridge, disk);
        assert_eq!(bridge.read_config(at(disk, 0), 4), Ok(0x1042_1af4));
        assert_eq!(
            bridge.read_config(at(disk, 0), 3),
            Err(RtasStatus::HardwareError)
        );
        assert_eq!(
            bridge.read_config(at(disk, 1), 2),
            Err(RtasStatus::HardwareError)
        );
        assert_eq!(
            bridge.read_config(at(disk + 1, 0), 4),
            Err(RtasStatus::HardwareError)
        );
        let other_bus = ConfigAddress {
            bus: 1,
            devfn: disk,
            register: 0,
        };
        assert_eq!(
            bridge.read_config(other_bus, 4),
            Err(RtasStatus::HardwareError)
        );
        // The command register takes what a driver writes; the ids do not.
        bridge.write_config(at(disk, 4), 2, 0x0006).unwrap();
        assert_eq!(bridge.read_config(at(disk, 4), 2), Ok(0x0006));
        bridge.write_config(at(disk, 0), 4, 0).unwrap();
        assert_eq!(bridge.read_config(at(disk, 0), 4), Ok(0x1042_1af4));
        bridge.unplug(disk);
        assert_eq!(
            bridge.read_config(at(disk, 0), 4),
            Err(RtasStatus::HardwareError)
        );
    }

    #[test]
    fn msi_x_is_granted_as_linux_asks_for_it_on_qemu() {
        let mut bridge = Bridge::new(0x1300, 16);
        let disk = 3 << 3;
        plug(&mut bridge, disk);
        // Linux's sequence: MSI (-3, a virtio function has none), the
        // release fallback (-1, nothing granted), then MSI-X.
        assert_eq!(
            bridge.change_msi(at(disk, 0), MSI, 2),
            Err(RtasStatus::ParameterError)
        );
        assert_eq!(
            bridge.change_msi(at(disk, 0), CHANGE, 0),
            Err(RtasStatus::HardwareError)
        );
        assert_eq!(
            bridge.change_msi(at(disk, 0), MSIX, 2),
            Ok(Granted {
                count: 2,
                msix: true
            })
        );
        assert_eq!(bridge.interrupt_of(at(disk, 0), 0), Ok(0x1300));
        assert_eq!(bridge.interrupt_of(at(disk, 0), 1), Ok(0x1301));
        assert_eq!(
            bridge.interrupt_of(at(disk, 0), 2),
            Err(RtasStatus::HardwareError)
        );
        // More than the table holds: nothing granted, the capacity told.
        let second = 4 << 3;
        plug(&mut bridge, second);
        assert_eq!(
            bridge.change_msi(at(second, 0), MSIX, 8),
            Ok(Granted {
                count: 2,
                msix: true
            })
        );
        assert_eq!(
            bridge.interrupt_of(at(second, 0), 0),
            Err(RtasStatus::HardwareError)
        );
        assert_eq!(bridge.change_msi(at(second, 0), MSIX, 2).unwrap().count, 2);
        assert_eq!(bridge.interrupt_of(at(second, 0), 0), Ok(0x1302));
        // Released at driver unbind; query and unknown functions are -3.
        assert_eq!(bridge.change_msi(at(disk, 0), MSIX, 0).unwrap().count, 0);
        assert_eq!(
            bridge.interrupt_of(at(disk, 0), 0),
            Err(RtasStatus::HardwareError)
        );
        assert_eq!(
            bridge.change_msi(at(disk, 0), QUERY, 0),
            Err(RtasStatus::ParameterError)
        );
        assert_eq!(
            bridge.change_msi(at(disk, 0), 6, 1),
            Err(RtasStatus::ParameterError)
        );
        assert_eq!(
            bridge.change_msi(at(5 << 3, 0), MSIX, 1),
            Err(RtasStatus::ParameterError)
        );
    }

    #[test]
    fn interrupts_run_out_with_an_error_not_an_overlap() {
        let mut bridge = Bridge::new(0x1300, 3);
        plug(&mut bridge, 0);
        plug(&mut bridge, 8);
        assert_eq!(bridge.change_msi(at(0, 0), MSIX, 2).unwrap().count, 2);
        assert_eq!(
            bridge.change_msi(at(8, 0), MSIX, 2),
            Err(RtasStatus::HardwareError)
        );
        assert_eq!(bridge.change_msi(at(8, 0), MSIX, 1).unwrap().count, 1);
        assert_eq!(bridge.interrupt_of(at(8, 0), 0), Ok(0x1302));
    }
}
