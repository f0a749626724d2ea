//! `papervisor-spawner`: starts and signals a VM's device processes for its
//! core, which holds no privilege itself (see `jailer::spawner`). The core
//! starts it first, with its request socket as descriptor 3 and its report
//! socket as descriptor 4.

use clap::Parser;
use jailer::spawner::{Spawner, SpawnerConfig, EVENTS_FD, REQUESTS_FD};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(about = "Starts a Papervisor VM's device processes for its core.")]
struct Cli {
    /// Where the device processes', the jailer's and the reaper's binaries are.
    #[arg(long)]
    bin_dir: PathBuf,
    /// Start device processes through the jailer: on or off.
    #[arg(long, default_value = "on")]
    jail: String,
    /// The device processes' uid.
    #[arg(long)]
    uid: u32,
    /// The device processes' gid.
    #[arg(long)]
    gid: u32,
    /// Where jails are made.
    #[arg(long)]
    jail_dir: PathBuf,
    /// Guest RAM and every DIMM the machine can take, in bytes.
    #[arg(long)]
    guest_memory: u64,
    /// What a call outside a filter does, here and in the device processes: kill, log or off.
    #[arg(long, default_value = "kill")]
    seccomp: String,
    /// The device processes' log level.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Whether the device processes record their trace points: on or off.
    #[arg(long, default_value = "off", value_parser = ["on", "off"])]
    trace: String,
    /// The user the VM runs as (besides root, who may own an upgrade's binary).
    #[arg(long)]
    owner: u32,
}

fn main() -> ExitCode {
    let cli: Cli = match common::parse_cli("papervisor-spawner") {
        Ok(cli) => cli,
        Err(exit) => return exit,
    };
    common::init_logging("spawner", cli.log_level.parse().ok(), None);
    let Some(mode) = common::seccomp::Mode::parse(&cli.seccomp) else {
        log::error!("--seccomp {}: expects kill, log or off", cli.seccomp);
        return ExitCode::from(common::EXIT_USAGE);
    };
    let jail = match cli.jail.as_str() {
        "on" => true,
        "off" => false,
        other => {
            log::error!("--jail {other}: expects on or off");
            return ExitCode::from(common::EXIT_USAGE);
        }
    };
    let config = SpawnerConfig {
        bin_dir: cli.bin_dir,
        jail,
        uid: cli.uid,
        gid: cli.gid,
        jail_dir: cli.jail_dir,
        guest_memory: cli.guest_memory,
        seccomp: cli.seccomp,
        log_level: cli.log_level,
        trace: cli.trace == "on",
        owner: cli.owner,
        core_pid: nix::unistd::getppid().as_raw() as u32,
    };
    if let Err(error) = jailer::spawner::confine(mode) {
        log::error!("{}", common::describe(&error));
        return ExitCode::FAILURE;
    }
    common::release_free_memory();
    // SAFETY: the core hands its sockets over as these descriptors, open for
    // the life of the process, and nothing else here owns them.
    let (requests, events) = unsafe {
        (
            OwnedFd::from_raw_fd(REQUESTS_FD),
            OwnedFd::from_raw_fd(EVENTS_FD),
        )
    };
    let spawner = Spawner::new(
        config,
        ipc_proto::channel::Channel::from_fd(requests),
        ipc_proto::channel::Channel::from_fd(events),
    );
    match spawner.serve() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            log::error!("{}", common::describe(&error));
            ExitCode::FAILURE
        }
    }
}
