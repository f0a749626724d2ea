//! `papervisor`: the core process.

mod boot;
mod config;
mod console;
mod fdt;
mod hcall;
mod layout;
mod memory;
mod vcpu;
mod vm;

use clap::Parser;
use config::Cli;
use std::error::Error;
use std::process::ExitCode;

/// Exit status for a command line we refuse, before anything starts.
const EXIT_USAGE: u8 = 2;
/// Exit status when the VM could not be run or the guest crashed.
const EXIT_FAILURE: u8 = 1;

/// One line: the error and each of its causes.
fn describe(error: &dyn Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => {
            // --help and --version
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            // clap's own message is several lines; keep the one that names the value.
            let rendered = error.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid command line");
            eprintln!("papervisor: {}", first.trim_start_matches("error: "));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();

    let config = match config::VmConfig::from_cli(cli) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("papervisor: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Some(path) = &config.qmp {
        log::warn!("QMP is not served yet; ignoring --qmp {}", path.display());
    }
    if let Err(error) = install_kick_handler() {
        eprintln!("papervisor: {}", describe(&error));
        return ExitCode::from(EXIT_FAILURE);
    }
    let console_socket = match &config.console {
        config::ConsoleConfig::Socket(path) => Some(path.clone()),
        config::ConsoleConfig::Stdio => None,
    };
    let result = vm::Vm::new(config).and_then(vm::Vm::run);
    if let Some(path) = console_socket {
        let _ = std::fs::remove_file(path);
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            log::error!("{}", describe(&error));
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// vCPU threads are kicked out of KVM_RUN with a signal; it must not kill us.
fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    extern "C" fn ignore(_: i32, _: *mut nix::libc::siginfo_t, _: *mut std::ffi::c_void) {}
    vmm_sys_util::signal::register_signal_handler(vcpu::kick_signal(), ignore)
}
