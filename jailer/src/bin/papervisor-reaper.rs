//! `papervisor-reaper`: ends a VM's device processes when its core ends,
//! however it ends (see `jailer::reaper`). The core starts it with its
//! socket as descriptor 3.

use clap::Parser;
use std::os::fd::BorrowedFd;
use std::process::ExitCode;

#[derive(Parser)]
#[command(about = "Ends a Papervisor VM's device processes when its core ends.")]
struct Cli {
    /// The VM's device uid, to run as (the core is root).
    #[arg(long, requires = "gid")]
    uid: Option<u32>,
    /// The VM's device gid.
    #[arg(long, requires = "uid")]
    gid: Option<u32>,
    /// What a call outside its filter does: kill, log or off.
    #[arg(long, default_value = "kill")]
    seccomp: String,
}

fn main() -> ExitCode {
    let cli: Cli = match common::parse_cli("papervisor-reaper") {
        Ok(cli) => cli,
        Err(exit) => return exit,
    };
    common::init_logging("reaper", None, None);
    let Some(mode) = common::seccomp::Mode::parse(&cli.seccomp) else {
        log::error!("--seccomp {}: expects kill, log or off", cli.seccomp);
        return ExitCode::from(common::EXIT_USAGE);
    };
    let ids = cli.uid.zip(cli.gid);
    if let Err(error) = jailer::reaper::confine(ids, mode) {
        log::error!("{}", common::describe(&error));
        return ExitCode::FAILURE;
    }
    // SAFETY: the core hands the socket over as this descriptor, open for
    // the life of the process.
    let socket = unsafe { BorrowedFd::borrow_raw(jailer::reaper::REAPER_SOCKET_FD) };
    let served = jailer::reaper::serve(socket);
    match (served.killed, served.clean) {
        (0, _) => {}
        (killed, true) => {
            log::info!(
                "the VM ended: {killed} of its device processes were still ending, and were killed"
            )
        }
        (killed, false) => log::warn!(
            "the core is gone: {killed} of its device processes were still running, and were killed"
        ),
    }
    ExitCode::SUCCESS
}
