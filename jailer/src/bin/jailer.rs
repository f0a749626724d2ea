//! `jailer`: runs a program jailed (see the `jailer` library) and exits as
//! soon as it runs. Exit status: 0 once the program runs; 2 for a bad command
//! line; 1 when the jail cannot be made; 127 when a step inside the jail (or
//! the exec) failed.

use jailer::{CgroupSetting, JailConfig, Limit, DEFAULT_CHROOT_BASE, DEFAULT_ID};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Parser)]
#[command(
    name = "jailer",
    version,
    about = "Runs a Papervisor device process jailed"
)]
struct Cli {
    /// Names the jail: 1 to 64 letters, digits or '-'.
    #[arg(long)]
    id: String,
    /// The program to run.
    #[arg(long)]
    exec_file: PathBuf,
    /// Its uid (not 0).
    #[arg(long, default_value_t = DEFAULT_ID)]
    uid: u32,
    /// Its gid (not 0).
    #[arg(long, default_value_t = DEFAULT_ID)]
    gid: u32,
    /// Where the jail's root is made: <DIR>/<program>/<id>/root.
    #[arg(long, default_value = DEFAULT_CHROOT_BASE)]
    chroot_base_dir: PathBuf,
    /// A limit: no-file=N, as=BYTES, fsize=BYTES or nproc=N (repeatable).
    #[arg(long, value_parser = |s: &str| Limit::parse(s).map_err(|e| e.to_string()))]
    resource_limit: Vec<Limit>,
    /// A cgroup v2 setting FILE=VALUE, e.g. pids.max=1 (repeatable).
    #[arg(long, value_parser = |s: &str| CgroupSetting::parse(s).map_err(|e| e.to_string()))]
    cgroup: Vec<CgroupSetting>,
    /// Descriptors 3..3+N are handed to the program; all others are closed.
    #[arg(long, default_value_t = 0)]
    keep_fds: u32,
    /// A Unix socket (above the kept descriptors) on which the program's pid
    /// and a pidfd of it are sent once it exists.
    #[arg(long)]
    report_fd: Option<i32>,
    /// The program's arguments.
    #[arg(last = true)]
    args: Vec<OsString>,
}

/// A step inside the jail, or the exec, failed.
const EXIT_NOT_STARTED: u8 = 127;

fn main() -> ExitCode {
    let cli: Cli = match common::parse_cli("jailer") {
        Ok(cli) => cli,
        Err(exit) => return exit,
    };
    let config = JailConfig {
        id: cli.id,
        exec_file: cli.exec_file,
        uid: cli.uid,
        gid: cli.gid,
        chroot_base: cli.chroot_base_dir,
        limits: cli.resource_limit,
        cgroup: cli.cgroup,
        keep_fds: cli.keep_fds,
        report_fd: cli.report_fd,
        args: cli.args,
    };
    if let Err(error) = config.validate() {
        say(&error);
        return ExitCode::from(common::EXIT_USAGE);
    }
    match jailer::run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error @ jailer::JailError::InJail(_)) => {
            say(&error);
            ExitCode::from(EXIT_NOT_STARTED)
        }
        Err(error) => {
            say(&error);
            ExitCode::from(1)
        }
    }
}

/// One line on stderr, which may be a VM's non-blocking log pipe: a line
/// it cannot take is lost, never a panic.
fn say(error: &dyn std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "jailer: {error}");
}
