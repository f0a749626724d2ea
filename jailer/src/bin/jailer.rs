//! `jailer`: runs a program jailed (see the `jailer` library). Exit status:
//! the program's; 2 for a bad command line; 1 when the jail cannot be made.

use clap::Parser;
use jailer::{CgroupSetting, JailConfig, Limit, DEFAULT_CHROOT_BASE, DEFAULT_ID};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
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
    /// A limit: no-file=N, as=BYTES or fsize=BYTES (repeatable).
    #[arg(long, value_parser = |s: &str| Limit::parse(s).map_err(|e| e.to_string()))]
    resource_limit: Vec<Limit>,
    /// A cgroup v2 setting FILE=VALUE, e.g. pids.max=1 (repeatable).
    #[arg(long, value_parser = |s: &str| CgroupSetting::parse(s).map_err(|e| e.to_string()))]
    cgroup: Vec<CgroupSetting>,
    /// Descriptors 3..3+N are handed to the program; all others are closed.
    #[arg(long, default_value_t = 0)]
    keep_fds: u32,
    /// The program's arguments.
    #[arg(last = true)]
    args: Vec<OsString>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => {
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            // clap's message spans lines (and adds usage); keep its sentence.
            let rendered = error.render().to_string();
            let first = rendered
                .lines()
                .take_while(|line| !line.is_empty() && !line.starts_with("Usage:"))
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" ");
            eprintln!("jailer: {}", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
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
        args: cli.args,
    };
    if let Err(error) = config.validate() {
        eprintln!("jailer: {error}");
        return ExitCode::from(2);
    }
    match jailer::run(&config) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(error) => {
            eprintln!("jailer: {error}");
            ExitCode::from(1)
        }
    }
}
