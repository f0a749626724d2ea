//! The command line, validated into a [`VmConfig`] before anything starts.

use clap::Parser;
use ipc_proto::papr::LMB_SIZE;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Largest boot RAM: x86 keeps 3 GiB..4 GiB for the APIC and other MMIO.
pub const MAX_BOOT_RAM: u64 = 3 << 30;
/// PAPR's limit on DIMM slots (QEMU's SPAPR_MAX_RAM_SLOTS).
pub const MAX_MEMORY_SLOTS: u32 = 32;
/// The guest's CPU table and the FDT ids assume at most this many vCPUs.
pub const MAX_VCPUS: u32 = 64;
/// The most vCPUs a core may have (PAPR's SMT-8).
pub const MAX_THREADS_PER_CORE: u32 = 8;

/// What `--help` (and the man page) say after the options.
const AFTER_HELP: &str = "\
Examples:
  papervisor --smp cpus=2,maxcpus=4 --memory size=512M,maxmem=4G,slots=8 --qmp /tmp/vm.qmp
      the built-in test guest; its console is this terminal
  papervisor --name web1 --console /run/web1.console --qmp /run/web1.qmp --log-file /var/log/web1.log
      a VM in the background of a service: console and QMP on sockets
  papervisor --no-machine --qmp /tmp/probe.qmp
      QMP only: what this VMM offers, as a management stack probes it

Console: on a terminal, Ctrl-a x ends the VM, Ctrl-a Ctrl-a sends a Ctrl-a.

Exit status: 0 the guest powered off, or quit, SIGTERM, SIGINT, SIGHUP or
Ctrl-a x ended the VM; 1 the VM could not run or the guest crashed (the
log says which); 2 a bad command line (one line on stderr names the
option).";

/// The core's command line.
#[derive(Parser, Debug)]
#[command(
    name = "papervisor",
    version,
    about = "A multi-process VMM for the PAPR (pseries) platform on KVM",
    long_about = None,
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// CPU topology: cpus=N[,maxcpus=M][,threads=T]. A core is T vCPUs.
    #[arg(long, default_value = "cpus=1", value_parser = SmpConfig::parse)]
    pub smp: SmpConfig,
    /// Memory: size=S[,maxmem=M][,slots=N]; sizes take K/M/G/T suffixes and are multiples of 256M.
    #[arg(long, default_value = "size=512M", value_parser = MemoryConfig::parse)]
    pub memory: MemoryConfig,
    /// Path of the QMP Unix socket to serve.
    #[arg(long, value_name = "PATH")]
    pub qmp: Option<PathBuf>,
    /// Where the guest console goes: `stdio`, or the path of a Unix socket to serve.
    #[arg(long, default_value = "stdio", value_parser = ConsoleConfig::parse)]
    pub console: ConsoleConfig,
    /// Guest kernel ELF; the built-in test guest when absent.
    #[arg(long, value_name = "ELF")]
    pub guest: Option<PathBuf>,
    /// What a device process's forbidden system call does: kill it, log it, or nothing (no filter).
    #[arg(long, default_value = "kill", value_parser = ["kill", "log", "off"])]
    pub seccomp: String,
    /// Start device processes through the jailer (on, the default), or directly (off, for debugging).
    #[arg(long, value_parser = ["on", "off"])]
    pub jail: Option<String>,
    /// Run the devices in processes of their own (the default), or as
    /// threads of the core, unjailed (to measure what isolation costs).
    #[arg(long, default_value = "out-of-process", value_parser = ["out-of-process", "in-process"])]
    pub device_mode: String,
    /// Where the VM's runtime directory is made (DIR/vm-<pid>, the jails'
    /// roots inside); directories of VMs that are gone are removed at start.
    /// By default /run/papervisor as root, else $XDG_RUNTIME_DIR/papervisor
    /// or /tmp/papervisor-<uid>.
    #[arg(long, value_name = "DIR")]
    pub jail_dir: Option<PathBuf>,
    /// How long (milliseconds, 100 to 3600000) a disk's block process may
    /// complete none of the requests waiting in its queue before it is
    /// taken for hung, killed and replaced (its requests served again by
    /// its successor). 30000 by default.
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub block_stall_timeout: Option<u64>,
    /// The uid the device processes run as (not 0); by default the first
    /// free one of 1900000000..1900065536. Refused if another VM or any
    /// process uses it.
    #[arg(long, value_parser = parse_id)]
    pub uid: Option<u32>,
    /// The gid the device processes run as (not 0); by default the uid.
    #[arg(long, value_parser = parse_id)]
    pub gid: Option<u32>,
    /// How much the core and its device processes log: off, error, warn,
    /// info, debug or trace (overrides RUST_LOG).
    #[arg(long, value_name = "LEVEL", value_parser = common::LOG_LEVELS)]
    pub log_level: Option<String>,
    /// Where the core and its device processes log: a file (appended to),
    /// or `stderr`. By default stderr, but with `--console stdio` on a
    /// terminal a file beside the runtime directories, so that log lines
    /// never mix with the console.
    #[arg(long, value_name = "PATH|stderr")]
    pub log_file: Option<PathBuf>,
    /// The VM's name, for QMP query-name and the logs (at most 128
    /// printable characters).
    #[arg(long, value_parser = parse_name)]
    pub name: Option<String>,
    /// A block node opened at start, as QMP blockdev-add's arguments:
    /// driver=file,node-name=N,filename=PATH[,read-only=on] (repeatable).
    #[arg(long, value_name = "KEY=VALUE,...")]
    pub blockdev: Vec<String>,
    /// A memory backend made at start, as QMP object-add's arguments:
    /// qom-type=memory-backend-ram,id=ID,size=BYTES (repeatable).
    #[arg(long, value_name = "KEY=VALUE,...")]
    pub object: Vec<String>,
    /// A device present at boot (its connector configured), as
    /// device_add's arguments: virtio-blk-pci,id=ID,drive=NODE[,addr=SLOT],
    /// host-spapr-cpu-core,core-id=N[,id=ID] or
    /// pc-dimm,memdev=BACKEND[,id=ID][,slot=S] (repeatable).
    #[arg(long, value_name = "DRIVER,KEY=VALUE,...")]
    pub device: Vec<String>,
    /// Serve QMP on this inherited descriptor, a listening Unix socket
    /// (how libvirt hands its monitor socket over).
    #[arg(long, value_name = "FD", value_parser = clap::value_parser!(i32).range(3..))]
    pub qmp_fd: Option<i32>,
    /// No machine at all: serve QMP's descriptions of what this VMM offers
    /// until `quit` (QEMU's `-machine none`, which management stacks run to
    /// probe an emulator). Needs no /dev/kvm.
    #[arg(long)]
    pub no_machine: bool,
    /// Start with the guest stopped (QMP status `prelaunch`) until `cont`.
    #[arg(long)]
    pub paused: bool,
    /// When the guest powers off, stop (QMP status `shutdown`) and keep
    /// serving QMP, instead of ending.
    #[arg(long)]
    pub no_shutdown: bool,
    /// The machine has one NUMA node, 0, with every CPU and all memory
    /// (QEMU's -numa node,nodeid=0): the CPUs' properties say so
    /// (`node-id`), as clients that place CPUs by node expect.
    #[arg(long)]
    pub numa_node: bool,
    /// The VM's UUID, for QMP query-uuid.
    #[arg(long, value_parser = parse_uuid)]
    pub uuid: Option<String>,
    /// The console's character-device id, as QMP query-chardev reports it.
    #[arg(long, value_name = "ID", default_value = "console")]
    pub console_id: String,
    /// Write the core's pid here once QMP is served (removed at the end).
    #[arg(long, value_name = "PATH")]
    pub pidfile: Option<PathBuf>,
    /// Detach once QMP is served: the command returns (0, or 1 if the VM
    /// could not start) and the VM runs on in the background.
    #[arg(long)]
    pub daemonize: bool,
    /// Append the VM's stats (query-stats of the VM and of its vCPUs) to
    /// this file as one JSON line every --metrics-interval, and once at
    /// the end. A FIFO must have its reader already; one that stops
    /// reading costs lines, never a wait.
    #[arg(long, value_name = "PATH")]
    pub metrics_path: Option<PathBuf>,
    /// How often (milliseconds, 100 to 3600000) --metrics-path is written.
    #[arg(long, value_name = "MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub metrics_interval: u64,
    /// Trace what crosses the core (RTAS calls with their status and time,
    /// hot-plug requests and notifications, device processes' exits and
    /// restarts, QMP events) into a ring of the last 4096 records, read by
    /// QMP x-query-trace (`ring`), and also as JSON lines to a file (a
    /// path). Off by default.
    #[arg(long, value_name = "ring|PATH")]
    pub trace: Option<PathBuf>,
    /// With --trace: only the points whose name contains one of these
    /// (comma-separated), e.g. rtas,hotplug.
    #[arg(long, value_name = "PATTERN,...")]
    pub trace_filter: Option<String>,
    /// Keep the log file made when the console is this terminal: by
    /// default it goes when the VM ends well (one that failed keeps it).
    #[arg(long)]
    pub keep_log: bool,
    /// Where the jailer, the spawner, the reaper and the device programs
    /// are (an absolute path). By default the directory the build named
    /// (scripts/install: PREFIX/libexec/papervisor), else the core's own.
    #[arg(long, value_name = "DIR")]
    pub helper_dir: Option<PathBuf>,
}

/// A UUID as QEMU takes it: 8-4-4-4-12 hexadecimal digits.
fn parse_uuid(text: &str) -> Result<String, String> {
    let groups: Vec<&str> = text.split('-').collect();
    let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    if lengths != [8, 4, 4, 4, 12]
        || !groups
            .iter()
            .all(|g| g.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(format!(
            "'{text}' is not a UUID (8-4-4-4-12 hexadecimal digits)"
        ));
    }
    Ok(text.to_ascii_lowercase())
}

/// A VM name: short and printable, as it goes into QMP and logs.
fn parse_name(text: &str) -> Result<String, String> {
    if text.is_empty()
        || text.len() > 128
        || !text.chars().all(|c| c.is_ascii_graphic() || c == ' ')
    {
        return Err("a name is 1 to 128 printable ASCII characters".into());
    }
    Ok(text.to_string())
}

/// An unprivileged id: not root, not -1.
fn parse_id(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(0) => Err("0 is root: an unprivileged id is required".into()),
        Ok(u32::MAX) => Err("4294967295 is not an id".into()),
        Ok(id) => Ok(id),
        Err(_) => Err(format!("'{text}' is not a number")),
    }
}

/// The CPU topology (`--smp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmpConfig {
    /// vCPUs present at boot.
    pub cpus: u32,
    /// vCPUs the machine can ever have.
    pub max_cpus: u32,
    /// vCPUs per core.
    pub threads_per_core: u32,
}

/// Guest memory (`--memory`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Boot RAM, in bytes.
    pub size: u64,
    /// Boot RAM and every DIMM the machine can take, in bytes.
    pub max_size: u64,
    /// DIMM slots.
    pub slots: u32,
}

/// Where the guest's console goes (`--console`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsoleConfig {
    /// The terminal on stdin and stdout.
    Stdio,
    /// A Unix socket at this path, one client at a time.
    Socket(PathBuf),
    /// A pseudo-terminal the core opens; QMP query-chardev names it.
    Pty,
}

/// Why a command line is refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// An item of a key=value list without `=`.
    #[error("'{0}' is not key=value")]
    NotKeyValue(String),
    /// A key the option does not take.
    #[error("unknown key '{key}' (expected one of: {expected})")]
    UnknownKey {
        /// The key given.
        key: String,
        /// The keys the option takes.
        expected: String,
    },
    /// A key given twice.
    #[error("'{key}' is given twice")]
    DuplicateKey {
        /// The key.
        key: String,
    },
    /// A key the option needs.
    #[error("'{key}' is required")]
    MissingKey {
        /// The key.
        key: &'static str,
    },
    /// A value that is not a number.
    #[error("{key}={value} is not a number")]
    NotANumber {
        /// The key.
        key: String,
        /// What was given.
        value: String,
    },
    /// A value that is not a size.
    #[error("{key}={value} is not a size (like 512M or 4G)")]
    NotASize {
        /// The key.
        key: String,
        /// What was given.
        value: String,
    },
    /// Anything else, in words.
    #[error("{0}")]
    Invalid(String),
}

/// Splits `a=1,b=2` into pairs, accepting each key of `allowed` at most once.
fn key_values<'a>(
    text: &'a str,
    allowed: &'static [&'static str],
) -> Result<Vec<(&'a str, &'a str)>, ConfigError> {
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    for item in text.split(',') {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| ConfigError::NotKeyValue(item.to_string()))?;
        if !allowed.contains(&key) {
            return Err(ConfigError::UnknownKey {
                key: key.to_string(),
                expected: allowed.join(", "),
            });
        }
        if pairs.iter().any(|(k, _)| *k == key) {
            return Err(ConfigError::DuplicateKey {
                key: key.to_string(),
            });
        }
        pairs.push((key, value));
    }
    Ok(pairs)
}

fn lookup<'a>(pairs: &[(&str, &'a str)], key: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

fn parse_number(key: &str, value: &str) -> Result<u32, ConfigError> {
    value.parse().map_err(|_| ConfigError::NotANumber {
        key: key.to_string(),
        value: value.to_string(),
    })
}

/// Parses `512M`, `4G`, `1073741824`; a bare number is bytes.
pub fn parse_size(key: &str, value: &str) -> Result<u64, ConfigError> {
    let bad = || ConfigError::NotASize {
        key: key.to_string(),
        value: value.to_string(),
    };
    let (digits, shift) = match value.char_indices().last() {
        Some((i, 'K' | 'k')) => (&value[..i], 10),
        Some((i, 'M' | 'm')) => (&value[..i], 20),
        Some((i, 'G' | 'g')) => (&value[..i], 30),
        Some((i, 'T' | 't')) => (&value[..i], 40),
        _ => (value, 0),
    };
    let number: u64 = digits.parse().map_err(|_| bad())?;
    number.checked_mul(1u64 << shift).ok_or_else(bad)
}

fn format_size(bytes: u64) -> String {
    match bytes {
        b if b != 0 && b % (1 << 30) == 0 => format!("{}G", b >> 30),
        b if b != 0 && b % (1 << 20) == 0 => format!("{}M", b >> 20),
        b => format!("{b}"),
    }
}

impl SmpConfig {
    /// Parses `cpus=N[,maxcpus=M][,threads=T]`.
    pub fn parse(text: &str) -> Result<SmpConfig, ConfigError> {
        let pairs = key_values(text, &["cpus", "maxcpus", "threads"])?;
        let number = |key| {
            lookup(&pairs, key)
                .map(|v| parse_number(key, v))
                .transpose()
        };
        let cpus = number("cpus")?.ok_or(ConfigError::MissingKey { key: "cpus" })?;
        let threads = number("threads")?.unwrap_or(1);
        let max_cpus = number("maxcpus")?.unwrap_or(cpus);
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        if !(1..=MAX_THREADS_PER_CORE).contains(&threads) {
            return invalid(format!(
                "threads={threads} is out of range (1..={MAX_THREADS_PER_CORE})"
            ));
        }
        if cpus == 0 {
            return invalid("cpus=0: at least one vCPU is needed".into());
        }
        if max_cpus < cpus {
            return invalid(format!("maxcpus={max_cpus} is less than cpus={cpus}"));
        }
        if max_cpus > MAX_VCPUS {
            return invalid(format!(
                "maxcpus={max_cpus} is above the limit of {MAX_VCPUS}"
            ));
        }
        if cpus % threads != 0 {
            return invalid(format!(
                "cpus={cpus} is not a multiple of threads={threads} (cores are plugged whole)"
            ));
        }
        if max_cpus % threads != 0 {
            return invalid(format!(
                "maxcpus={max_cpus} is not a multiple of threads={threads} (cores are plugged whole)"
            ));
        }
        Ok(SmpConfig {
            cpus,
            max_cpus,
            threads_per_core: threads,
        })
    }

    /// The cores present at boot.
    pub fn boot_cores(&self) -> u32 {
        self.cpus / self.threads_per_core
    }

    /// The cores the machine can ever have.
    pub fn max_cores(&self) -> u32 {
        self.max_cpus / self.threads_per_core
    }
}

impl MemoryConfig {
    /// Parses `size=S[,maxmem=M][,slots=N]`.
    pub fn parse(text: &str) -> Result<MemoryConfig, ConfigError> {
        let pairs = key_values(text, &["size", "maxmem", "slots"])?;
        let size_of = |key| lookup(&pairs, key).map(|v| parse_size(key, v)).transpose();
        let size = size_of("size")?.ok_or(ConfigError::MissingKey { key: "size" })?;
        let max_size = size_of("maxmem")?.unwrap_or(size);
        let slots = lookup(&pairs, "slots")
            .map(|v| parse_number("slots", v))
            .transpose()?
            .unwrap_or(0);
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        for (key, bytes) in [("size", size), ("maxmem", max_size)] {
            if bytes == 0 || bytes % LMB_SIZE != 0 {
                return invalid(format!(
                    "{key}={} is not a non-zero multiple of 256M",
                    format_size(bytes)
                ));
            }
        }
        if size > MAX_BOOT_RAM {
            return invalid(format!(
                "size={} is above {} (the x86 MMIO hole starts there)",
                format_size(size),
                format_size(MAX_BOOT_RAM)
            ));
        }
        if max_size < size {
            return invalid(format!(
                "maxmem={} is less than size={}",
                format_size(max_size),
                format_size(size)
            ));
        }
        if slots > MAX_MEMORY_SLOTS {
            return invalid(format!(
                "slots={slots} is above the limit of {MAX_MEMORY_SLOTS}"
            ));
        }
        if max_size > size && slots == 0 {
            return invalid(format!(
                "maxmem={} leaves room for DIMMs but slots=0",
                format_size(max_size)
            ));
        }
        Ok(MemoryConfig {
            size,
            max_size,
            slots,
        })
    }
}

impl ConsoleConfig {
    /// Parses `stdio`, `pty` or a socket path.
    pub fn parse(text: &str) -> Result<ConsoleConfig, ConfigError> {
        match text {
            "stdio" => Ok(ConsoleConfig::Stdio),
            "pty" => Ok(ConsoleConfig::Pty),
            "" => Err(ConfigError::Invalid("the console path is empty".into())),
            path => Ok(ConsoleConfig::Socket(PathBuf::from(path))),
        }
    }
}

/// Everything the VM needs, checked: nothing here can be refused later for
/// being malformed.
pub struct VmConfig {
    /// The CPU topology.
    pub smp: SmpConfig,
    /// Guest memory.
    pub memory: MemoryConfig,
    /// The guest's console.
    pub console: ConsoleConfig,
    /// The QMP socket's path, if any.
    pub qmp: Option<PathBuf>,
    /// The console's and QMP's sockets, bound; removed when dropped.
    pub console_socket: Option<crate::sockets::ClaimedSocket>,
    /// The QMP socket, bound and claimed.
    pub qmp_socket: Option<crate::sockets::ClaimedSocket>,
    /// The guest ELF's bytes, already checked to be an x86_64 executable.
    pub guest_image: GuestImage,
    /// How device processes are confined (the jail directory and ids are
    /// settled at start, see `runtime`).
    pub sandbox: crate::devices::Sandbox,
    /// `--name`.
    pub name: Option<String>,
    /// `--uuid`.
    pub uuid: Option<String>,
    /// `--paused`.
    pub paused: bool,
    /// `--no-shutdown`.
    pub no_shutdown: bool,
    /// `--numa-node`.
    pub numa_node: bool,
    /// `--console-id`.
    pub console_id: String,
    /// `--helper-dir`.
    pub helper_dir: Option<PathBuf>,
    /// `--metrics-path`, opened (for appending), and `--metrics-interval`.
    pub metrics: Option<(std::fs::File, std::time::Duration)>,
    /// The uid and gid asked for on the command line.
    pub uid: Option<u32>,
    /// The gid the device processes run as (`--gid`), if given.
    pub gid: Option<u32>,
    /// `--block-stall-timeout`.
    pub block_stall_timeout: Option<std::time::Duration>,
    /// `--blockdev`s then `--device`s, in order, checked as the QMP
    /// commands they are (by the binary, with `qmp::arguments`): plugged
    /// before the guest runs.
    pub cold_plugs: Vec<crate::request::MachineRequest>,
}

/// The guest kernel.
pub enum GuestImage {
    /// The test guest built into the core.
    BuiltIn,
    /// An ELF image read from `--guest`.
    File(Vec<u8>),
}

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 62;

/// Checks the ELF header fields the loader relies on.
pub fn check_guest_elf(bytes: &[u8]) -> Result<(), &'static str> {
    if bytes.len() < 64 || &bytes[..4] != ELF_MAGIC {
        return Err("not an ELF file");
    }
    if bytes[4] != ELFCLASS64 || bytes[5] != ELFDATA2LSB {
        return Err("not a 64-bit little-endian ELF");
    }
    let half = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    if half(16) != ET_EXEC {
        return Err("not an executable (ET_EXEC) ELF");
    }
    if half(18) != EM_X86_64 {
        return Err("not an x86_64 ELF");
    }
    Ok(())
}

impl VmConfig {
    /// Checks a parsed command line and claims its sockets.
    pub fn from_cli(cli: Cli) -> Result<VmConfig, ConfigError> {
        if let Some(path) = &cli.qmp {
            if cli.console == ConsoleConfig::Socket(path.clone()) {
                return Err(ConfigError::Invalid(format!(
                    "--qmp {} is also the console socket",
                    path.display()
                )));
            }
        }
        if !crate::request::valid_id(&cli.console_id) || cli.console_id.len() > 64 {
            return Err(ConfigError::Invalid(format!(
                "--console-id {}: an identifier (a letter, then letters, digits, '-', '.' or '_') of at most 64 characters",
                cli.console_id
            )));
        }
        let guest_image = match &cli.guest {
            None => GuestImage::BuiltIn,
            Some(path) => {
                let shown = path.display();
                let bytes = std::fs::read(path).map_err(|error| {
                    ConfigError::Invalid(format!("--guest {shown}: cannot read it: {error}"))
                })?;
                check_guest_elf(&bytes)
                    .map_err(|why| ConfigError::Invalid(format!("--guest {shown}: {why}")))?;
                GuestImage::File(bytes)
            }
        };
        if let Some(dir) = &cli.helper_dir {
            let spawner = dir.join("papervisor-spawner");
            if !dir.is_absolute() || !spawner.is_file() {
                return Err(ConfigError::Invalid(format!(
                    "--helper-dir {}: not an absolute path to a directory holding papervisor-spawner",
                    dir.display()
                )));
            }
        }
        let metrics = match &cli.metrics_path {
            None => None,
            Some(path) => {
                let file = crate::line_stream::open_for_append(path, "--metrics-path")
                    .map_err(ConfigError::Invalid)?;
                Some((file, std::time::Duration::from_millis(cli.metrics_interval)))
            }
        };
        let jail_dir = cli.jail_dir.unwrap_or_else(crate::runtime::default_base);
        if !jail_dir.is_absolute() {
            return Err(ConfigError::Invalid(format!(
                "--jail-dir {}: must be an absolute path",
                jail_dir.display()
            )));
        }
        let in_process = cli.device_mode == "in-process";
        if in_process && !cfg!(feature = "in-process") {
            return Err(ConfigError::Invalid(
                "--device-mode in-process: this core was built without in-process devices (cargo feature `in-process`); its devices run as processes".into(),
            ));
        }
        let jail = match (cli.jail.as_deref(), in_process) {
            (Some("on"), true) => {
                return Err(ConfigError::Invalid(
                    "--jail on: the devices of --device-mode in-process are threads of the core, which cannot be jailed".into(),
                ))
            }
            (jail, in_process) => !in_process && jail != Some("off"),
        };
        // Claimed last: a refused command line binds nothing.
        let claim = |option: &str, path: &Path| {
            crate::sockets::ClaimedSocket::claim(option, path).map_err(ConfigError::Invalid)
        };
        let console_socket = match &cli.console {
            ConsoleConfig::Socket(path) => Some(claim("--console", path)?),
            ConsoleConfig::Stdio | ConsoleConfig::Pty => None,
        };
        let qmp_socket = cli
            .qmp
            .as_deref()
            .map(|path| claim("--qmp", path))
            .transpose()?;
        Ok(VmConfig {
            console_socket,
            qmp_socket,
            smp: cli.smp,
            memory: cli.memory,
            console: cli.console,
            qmp: cli.qmp,
            guest_image,
            sandbox: crate::devices::Sandbox {
                jail,
                device_mode: if in_process {
                    crate::devices::DeviceMode::InProcess
                } else {
                    crate::devices::DeviceMode::OutOfProcess
                },
                seccomp: cli.seccomp,
                jail_dir,
                uid: jailer::DEFAULT_ID,
                gid: jailer::DEFAULT_ID,
                log_level: log::LevelFilter::Info,
                log_file: None,
            },
            name: cli.name,
            uuid: cli.uuid,
            paused: cli.paused,
            no_shutdown: cli.no_shutdown,
            numa_node: cli.numa_node,
            console_id: cli.console_id,
            helper_dir: cli.helper_dir,
            metrics,
            uid: cli.uid,
            gid: cli.gid,
            block_stall_timeout: cli
                .block_stall_timeout
                .map(std::time::Duration::from_millis),
            cold_plugs: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smp_accepts_qemu_style_topology() {
        assert_eq!(
            SmpConfig::parse("cpus=2,maxcpus=4").unwrap(),
            SmpConfig {
                cpus: 2,
                max_cpus: 4,
                threads_per_core: 1
            }
        );
        let smt = SmpConfig::parse("cpus=4,maxcpus=8,threads=2").unwrap();
        assert_eq!((smt.boot_cores(), smt.max_cores()), (2, 4));
        assert_eq!(SmpConfig::parse("cpus=3").unwrap().max_cpus, 3);
    }

    #[test]
    fn smp_rejects_bad_values_naming_them() {
        let cases = [
            ("cpus=0", "cpus=0"),
            ("cpus=2,maxcpus=1", "maxcpus=1"),
            ("cpus=2,threads=9", "threads=9"),
            ("cpus=2,threads=0", "threads=0"),
            ("cpus=3,threads=2", "cpus=3"),
            ("cpus=2,maxcpus=5,threads=2", "maxcpus=5"),
            ("cpus=x", "cpus=x"),
            ("cpus=1,sockets=2", "sockets"),
            ("maxcpus=2", "cpus"),
            ("cpus=1,cpus=2", "cpus"),
            ("cpus", "cpus"),
            ("cpus=1,maxcpus=65", "maxcpus=65"),
        ];
        for (text, named) in cases {
            let error = SmpConfig::parse(text).unwrap_err().to_string();
            assert!(error.contains(named), "{text}: {error}");
        }
    }

    #[test]
    fn memory_sizes_are_lmb_multiples() {
        let m = MemoryConfig::parse("size=512M,maxmem=4G,slots=8").unwrap();
        assert_eq!((m.size, m.max_size, m.slots), (512 << 20, 4 << 30, 8));
        let cases = [
            ("size=100M", "size=100M"),
            ("size=512M,maxmem=1000M", "maxmem=1000M"),
            ("size=1G,maxmem=512M", "maxmem=512M"),
            ("size=512M,maxmem=4G", "slots=0"),
            ("size=512M,slots=33", "slots=33"),
            ("size=4G", "size=4G"),
            ("size=lots", "size=lots"),
            ("size=0", "size=0"),
            ("size=99999999999999T", "size=99999999999999T"),
            ("maxmem=1G", "size"),
        ];
        for (text, named) in cases {
            let error = MemoryConfig::parse(text).unwrap_err().to_string();
            assert!(error.contains(named), "{text}: {error}");
        }
    }

    #[test]
    fn guest_elf_header_is_checked() {
        assert_eq!(check_guest_elf(b"hello"), Err("not an ELF file"));
        let mut header = vec![0u8; 64];
        header[..4].copy_from_slice(ELF_MAGIC);
        header[4] = ELFCLASS64;
        header[5] = ELFDATA2LSB;
        header[16] = 2;
        header[18] = 62;
        assert_eq!(check_guest_elf(&header), Ok(()));
        header[18] = 183; // aarch64
        assert_eq!(check_guest_elf(&header), Err("not an x86_64 ELF"));
        header[18] = 62;
        header[16] = 3; // shared object
        assert_eq!(
            check_guest_elf(&header),
            Err("not an executable (ET_EXEC) ELF")
        );
    }

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("s", "256M"), Ok(256 << 20));
        assert_eq!(parse_size("s", "2g"), Ok(2 << 30));
        assert_eq!(parse_size("s", "1024"), Ok(1024));
        assert!(parse_size("s", "M").is_err());
        assert!(parse_size("s", "-1G").is_err());
    }
}
