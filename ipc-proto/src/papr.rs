//! PAPR platform facts shared by the core and the device processes.
//!
//! Values follow QEMU's sPAPR machine so that a pseries guest sees what it
//! expects (see the design notes' PAPR reference, sections 1 to 4).

/// Size of one logical memory block (LMB), the unit of memory hotplug.
pub const LMB_SIZE: u64 = 256 << 20;

/// Bits 31..28 of a DRC index hold the connector type.
const DRC_INDEX_TYPE_SHIFT: u32 = 28;
const DRC_INDEX_ID_MASK: u32 = (1 << DRC_INDEX_TYPE_SHIFT) - 1;

/// The kinds of dynamic-reconfiguration connector Papervisor implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum DrcKind {
    /// A CPU core; its id is the core's first vCPU id.
    Cpu,
    /// A 256 MiB logical memory block; its id is its guest address / LMB_SIZE.
    Lmb,
    /// A PCI slot function of a PCI host bridge (a physical DRC); its id is
    /// [`pci_drc_id`] of its bridge, bus and devfn.
    Pci,
}

impl DrcKind {
    /// The value in bits 31..28 of the index.
    pub const fn type_shift(self) -> u32 {
        match self {
            DrcKind::Cpu => 1,
            DrcKind::Pci => 4,
            DrcKind::Lmb => 8,
        }
    }

    /// The string of `ibm,drc-types` (a PCI slot's is numeric: Linux and
    /// drmgr recognise hot-plug slots by a number there).
    pub const fn type_name(self) -> &'static str {
        match self {
            DrcKind::Cpu => "CPU",
            DrcKind::Lmb => "MEM",
            DrcKind::Pci => "28",
        }
    }

    /// The prefix of the `ibm,drc-names` entries.
    pub const fn name_prefix(self) -> &'static str {
        match self {
            DrcKind::Cpu => "CPU ",
            DrcKind::Lmb => "LMB ",
            DrcKind::Pci => "C",
        }
    }

    /// Physical DRCs (a slot: isolation and a DR indicator, no allocation
    /// state) as opposed to logical ones (CPU cores, LMBs).
    pub const fn is_physical(self) -> bool {
        matches!(self, DrcKind::Pci)
    }
}

/// The id of the PCI DRC of `devfn` on bus `chassis` of PCI host bridge
/// `phb` (chassis 0: the bridge's root bus), as QEMU numbers them; `None`
/// for a bridge index past 0xfff.
pub const fn pci_drc_id(phb: u32, chassis: u8, devfn: u8) -> Option<u32> {
    if phb > 0xfff {
        return None;
    }
    Some((phb << 16) | ((chassis as u32) << 8) | devfn as u32)
}

/// A DRC index as the guest sees it: type in bits 31..28, id below.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct DrcIndex(pub u32);

impl DrcIndex {
    /// The index of the connector of `kind` with `id`; `None` if `id` does not fit.
    pub const fn new(kind: DrcKind, id: u32) -> Option<DrcIndex> {
        if id > DRC_INDEX_ID_MASK {
            return None;
        }
        Some(DrcIndex((kind.type_shift() << DRC_INDEX_TYPE_SHIFT) | id))
    }

    /// The connector type, if it is one Papervisor implements.
    pub fn kind(self) -> Option<DrcKind> {
        match self.0 >> DRC_INDEX_TYPE_SHIFT {
            1 => Some(DrcKind::Cpu),
            4 => Some(DrcKind::Pci),
            8 => Some(DrcKind::Lmb),
            _ => None,
        }
    }

    /// The id within its type.
    pub const fn id(self) -> u32 {
        self.0 & DRC_INDEX_ID_MASK
    }

    /// The `ibm,drc-names` entry, e.g. `CPU 8` or `LMB 4`.
    pub fn name(self) -> Option<String> {
        Some(format!("{}{}", self.kind()?.name_prefix(), self.id()))
    }
}

/// The states of a logical DRC (PAPR; the numbers are the guest-visible ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum DrcState {
    /// 1: no device the guest may use (empty, or given back).
    Unusable,
    /// 2: allocated to the guest, isolated.
    Available,
    /// 3: unisolated, being configured.
    Unisolate,
    /// 4: configured: the guest uses the device.
    Configured,
    /// 6: a physical DRC isolated: empty, or holding a device the guest
    /// does not use (its "empty state").
    PowerOn,
    /// 7: a physical DRC unisolated, being configured.
    PhysicalUnisolate,
    /// 8: a physical DRC configured: the guest uses the device (its
    /// "ready state").
    PhysicalConfigured,
}

impl DrcState {
    /// The number PAPR gives the state.
    pub const fn number(self) -> u32 {
        match self {
            DrcState::Unusable => 1,
            DrcState::Available => 2,
            DrcState::Unisolate => 3,
            DrcState::Configured => 4,
            DrcState::PowerOn => 6,
            DrcState::PhysicalUnisolate => 7,
            DrcState::PhysicalConfigured => 8,
        }
    }

    /// A name for QMP.
    pub const fn name(self) -> &'static str {
        match self {
            DrcState::Unusable => "unusable",
            DrcState::Available => "available",
            DrcState::Unisolate => "unisolate",
            DrcState::Configured => "configured",
            DrcState::PowerOn => "power-on",
            DrcState::PhysicalUnisolate => "physical-unisolate",
            DrcState::PhysicalConfigured => "physical-configured",
        }
    }
}

/// RTAS indicator and sensor numbers (PAPR).
pub mod indicator {
    /// set-indicator: isolation state (0 isolate, 1 unisolate).
    pub const ISOLATION_STATE: u32 = 9001;
    /// set-indicator: DR indicator (lights; not for logical DRCs).
    pub const DR_INDICATOR: u32 = 9002;
    /// set-indicator: allocation state (0 unusable, 1 usable);
    /// get-sensor-state: dr-entity-sense.
    pub const ALLOCATION_STATE: u32 = 9003;
    /// get-sensor-state's sensor for the entity sense (same number).
    pub const DR_ENTITY_SENSE: u32 = 9003;
}

/// The status of an RTAS call, as the guest reads it in the first return
/// cell. Statuses cross process boundaries as this type, never as integers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum RtasStatus {
    /// 0.
    Success,
    /// 1: check-exception and event-scan found no event.
    NoErrorsFound,
    /// -1: hardware error (also: the state does not allow the request).
    HardwareError,
    /// -2: busy, try again (a peer process is down or restarting).
    Busy,
    /// -3: parameter error, or a call not supported with these counts.
    ParameterError,
    /// -9003: configure-connector on a DRC that is not being configured.
    NotConfigurable,
}

impl RtasStatus {
    /// The number PAPR gives the status.
    pub const fn code(self) -> i32 {
        match self {
            RtasStatus::Success => 0,
            RtasStatus::NoErrorsFound => 1,
            RtasStatus::HardwareError => -1,
            RtasStatus::Busy => -2,
            RtasStatus::ParameterError => -3,
            RtasStatus::NotConfigurable => -9003,
        }
    }

    /// The status as the guest's return cell holds it.
    pub const fn cell(self) -> u32 {
        self.code() as u32
    }
}

/// PAPR addresses may carry the top nibble (Linux's ppc64_phys_to_real
/// masks it): what is left is the real address.
pub const REAL_ADDRESS_MASK: u64 = !0xf000_0000_0000_0000;

/// The RTAS calls of the platform, each with the token QEMU gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RtasCall {
    /// Prints one character on the console.
    DisplayCharacter,
    /// Reads the real-time clock.
    GetTimeOfDay,
    /// Powers the machine off.
    PowerOff,
    /// Resets the machine.
    SystemReboot,
    /// Asks whether a CPU has stopped.
    QueryCpuStoppedState,
    /// Starts a stopped CPU at an address.
    StartCpu,
    /// Stops the calling CPU.
    StopSelf,
    /// Dequeues an event from the RTAS event log.
    CheckException,
    /// Periodic scan for events.
    EventScan,
    /// Sets a DRC indicator (isolation, allocation, DR indicator).
    SetIndicator,
    /// Reads a DRC sensor (entity sense).
    GetSensorState,
    /// Hands out the device-tree fragment of a DRC's device.
    ConfigureConnector,
    /// The OS reports that it terminated.
    OsTerm,
    /// Routes an interrupt source to a CPU (the guest moves interrupts off a
    /// CPU before offlining it).
    SetXive,
    /// Sets a power domain's level (drmgr's PCI add and remove: a slot's
    /// power domain is -1, always on).
    SetPowerLevel,
    /// Reads a power domain's level.
    GetPowerLevel,
    /// Reads a PCI configuration register of the first PHB (no BUID).
    ReadPciConfig,
    /// Writes a PCI configuration register of the first PHB (no BUID).
    WritePciConfig,
    /// Reads a PCI configuration register of a PHB named by its BUID.
    IbmReadPciConfig,
    /// Writes a PCI configuration register of a PHB named by its BUID.
    IbmWritePciConfig,
    /// Names the interrupt source of a function's granted MSI vector.
    QueryInterruptSourceNumber,
    /// Grants or releases a function's MSI or MSI-X vectors.
    ChangeMsi,
    /// EEH's PE address query: the platform has no EEH, and says so as
    /// QEMU does without VFIO (parameter error).
    GetConfigAddrInfo2,
}

impl RtasCall {
    /// Every call the platform implements, for `/rtas` and dispatch.
    pub const ALL: [RtasCall; 23] = [
        RtasCall::DisplayCharacter,
        RtasCall::GetTimeOfDay,
        RtasCall::PowerOff,
        RtasCall::SystemReboot,
        RtasCall::QueryCpuStoppedState,
        RtasCall::StartCpu,
        RtasCall::StopSelf,
        RtasCall::CheckException,
        RtasCall::EventScan,
        RtasCall::SetIndicator,
        RtasCall::GetSensorState,
        RtasCall::ConfigureConnector,
        RtasCall::OsTerm,
        RtasCall::SetXive,
        RtasCall::SetPowerLevel,
        RtasCall::GetPowerLevel,
        RtasCall::ReadPciConfig,
        RtasCall::WritePciConfig,
        RtasCall::IbmReadPciConfig,
        RtasCall::IbmWritePciConfig,
        RtasCall::QueryInterruptSourceNumber,
        RtasCall::ChangeMsi,
        RtasCall::GetConfigAddrInfo2,
    ];

    /// The token the guest passes in `rtas_args.token`.
    pub const fn token(self) -> u32 {
        match self {
            RtasCall::DisplayCharacter => 0x2000,
            RtasCall::GetTimeOfDay => 0x2001,
            RtasCall::PowerOff => 0x2003,
            RtasCall::SystemReboot => 0x2004,
            RtasCall::QueryCpuStoppedState => 0x2005,
            RtasCall::StartCpu => 0x2006,
            RtasCall::StopSelf => 0x2007,
            RtasCall::CheckException => 0x200e,
            RtasCall::EventScan => 0x200f,
            RtasCall::SetIndicator => 0x201a,
            RtasCall::GetSensorState => 0x201d,
            RtasCall::ConfigureConnector => 0x201e,
            RtasCall::OsTerm => 0x201f,
            RtasCall::SetXive => 0x200a,
            RtasCall::SetPowerLevel => 0x201b,
            RtasCall::GetPowerLevel => 0x201c,
            RtasCall::ReadPciConfig => 0x2014,
            RtasCall::WritePciConfig => 0x2015,
            RtasCall::IbmReadPciConfig => 0x2016,
            RtasCall::IbmWritePciConfig => 0x2017,
            RtasCall::QueryInterruptSourceNumber => 0x2018,
            RtasCall::ChangeMsi => 0x2019,
            RtasCall::GetConfigAddrInfo2 => 0x2021,
        }
    }

    /// The property name under `/rtas`.
    pub const fn name(self) -> &'static str {
        match self {
            RtasCall::DisplayCharacter => "display-character",
            RtasCall::GetTimeOfDay => "get-time-of-day",
            RtasCall::PowerOff => "power-off",
            RtasCall::SystemReboot => "system-reboot",
            RtasCall::QueryCpuStoppedState => "query-cpu-stopped-state",
            RtasCall::StartCpu => "start-cpu",
            RtasCall::StopSelf => "stop-self",
            RtasCall::CheckException => "check-exception",
            RtasCall::EventScan => "event-scan",
            RtasCall::SetIndicator => "set-indicator",
            RtasCall::GetSensorState => "get-sensor-state",
            RtasCall::ConfigureConnector => "ibm,configure-connector",
            RtasCall::OsTerm => "ibm,os-term",
            RtasCall::SetXive => "ibm,set-xive",
            RtasCall::SetPowerLevel => "set-power-level",
            RtasCall::GetPowerLevel => "get-power-level",
            RtasCall::ReadPciConfig => "read-pci-config",
            RtasCall::WritePciConfig => "write-pci-config",
            RtasCall::IbmReadPciConfig => "ibm,read-pci-config",
            RtasCall::IbmWritePciConfig => "ibm,write-pci-config",
            RtasCall::QueryInterruptSourceNumber => "ibm,query-interrupt-source-number",
            RtasCall::ChangeMsi => "ibm,change-msi",
            RtasCall::GetConfigAddrInfo2 => "ibm,get-config-addr-info2",
        }
    }

    /// The call a token names, if any.
    pub fn from_token(token: u32) -> Option<RtasCall> {
        RtasCall::ALL.into_iter().find(|call| call.token() == token)
    }
}

/// The properties of the `/cpus` node of a core whose threads are the vCPUs
/// `first_vcpu..first_vcpu + threads`: the boot device tree and the
/// configure-connector fragment of a hot-plugged core both use these.
pub fn cpu_core_properties(
    first_vcpu: u32,
    threads: u32,
    drc: DrcIndex,
) -> Vec<(&'static str, Vec<u8>)> {
    let cells = |values: &[u32]| {
        values
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect::<Vec<u8>>()
    };
    let servers: Vec<u32> = (first_vcpu..first_vcpu + threads).collect();
    vec![
        ("device_type", b"cpu\0".to_vec()),
        ("reg", cells(&[first_vcpu])),
        ("ibm,my-drc-index", cells(&[drc.0])),
        ("ibm,ppc-interrupt-server#s", cells(&servers)),
    ]
}

/// The node name of that core.
pub fn cpu_core_node_name(first_vcpu: u32) -> String {
    format!("cpu@{first_vcpu:x}")
}

/// PAPR interrupt source numbers (QEMU's fixed numbers for the event sources).
pub mod irq {
    /// Environmental and power warnings (EPOW) event source.
    pub const EPOW: u32 = 0x1000;
    /// Hot-plug event source.
    pub const HOTPLUG: u32 = 0x1001;
    /// The console (vty) input interrupt.
    pub const VTY: u32 = 0x1002;
    /// First source number; on x86 source `BASE + n` is delivered on vector
    /// `X86_VECTOR_BASE + n`.
    pub const BASE: u32 = 0x1000;
    /// The x86 vector of source `BASE`.
    pub const X86_VECTOR_BASE: u32 = 0x30;

    /// Every fixed source the platform has.
    pub const ALL: [u32; 3] = [EPOW, HOTPLUG, VTY];
    /// The sources PCI functions' MSI-X vectors are granted from
    /// (`ibm,change-msi`): `MSI_FIRST..MSI_FIRST + MSI_COUNT`.
    pub const MSI_FIRST: u32 = 0x1010;
    /// See [`MSI_FIRST`]: two vectors for each of 32 slots.
    pub const MSI_COUNT: u32 = 64;

    /// Every source the platform may raise: the fixed ones and the MSIs.
    pub fn every_source() -> impl Iterator<Item = u32> {
        ALL.into_iter().chain(MSI_FIRST..MSI_FIRST + MSI_COUNT)
    }

    /// The x86 vector a source is delivered on.
    pub const fn x86_vector(source: u32) -> u32 {
        X86_VECTOR_BASE + (source - BASE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drc_index_encodes_type_in_top_nibble() {
        let cpu = DrcIndex::new(DrcKind::Cpu, 8).unwrap();
        assert_eq!(cpu.0, 0x1000_0008);
        assert_eq!(cpu.kind(), Some(DrcKind::Cpu));
        assert_eq!(cpu.id(), 8);
        assert_eq!(cpu.name().as_deref(), Some("CPU 8"));
        let lmb = DrcIndex::new(DrcKind::Lmb, 4).unwrap();
        assert_eq!(lmb.0, 0x8000_0004);
        assert_eq!(lmb.name().as_deref(), Some("LMB 4"));
        assert_eq!(DrcIndex::new(DrcKind::Lmb, 1 << 28), None);
        assert_eq!(DrcIndex(0x2000_0001).kind(), None);
    }

    #[test]
    fn pci_drcs_are_numbered_as_qemu_numbers_them() {
        // PHB 0, root bus, slot 1 function 0 (devfn 8): 0x4000_0008, "C8".
        let slot1 = DrcIndex::new(DrcKind::Pci, pci_drc_id(0, 0, 8).unwrap()).unwrap();
        assert_eq!(slot1.0, 0x4000_0008);
        assert_eq!(slot1.kind(), Some(DrcKind::Pci));
        assert_eq!(slot1.name().unwrap(), "C8");
        // PHB 1, devfn 0x11: 0x4001_0011, "C65553".
        let other = DrcIndex::new(DrcKind::Pci, pci_drc_id(1, 0, 0x11).unwrap()).unwrap();
        assert_eq!(
            (other.0, other.name().unwrap()),
            (0x4001_0011, "C65553".into())
        );
        assert_eq!(pci_drc_id(0x1000, 0, 0), None);
        assert!(DrcKind::Pci.is_physical() && !DrcKind::Lmb.is_physical());
        assert_eq!(DrcKind::Pci.type_name(), "28");
        assert_eq!(
            [
                DrcState::PowerOn,
                DrcState::PhysicalUnisolate,
                DrcState::PhysicalConfigured
            ]
            .map(DrcState::number),
            [6, 7, 8]
        );
    }

    #[test]
    fn rtas_statuses_have_papr_codes() {
        assert_eq!(RtasStatus::Busy.cell(), (-2i32) as u32);
        assert_eq!(RtasStatus::NotConfigurable.code(), -9003);
        assert_eq!(RtasStatus::NoErrorsFound.cell(), 1);
    }

    #[test]
    fn rtas_tokens_are_unique_and_round_trip() {
        for call in RtasCall::ALL {
            assert_eq!(RtasCall::from_token(call.token()), Some(call));
        }
        assert_eq!(RtasCall::from_token(0x2002), None);
        assert_eq!(RtasCall::SetIndicator.token(), 0x201a);
    }
}
