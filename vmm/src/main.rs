//! `papervisor`: the core process.

mod boot;
mod config;
mod console;
mod control;
mod cores;
mod devices;
mod fdt;
mod hcall;
mod interrupts;
mod layout;
mod memory;
mod qmp;
mod rtas_client;
mod vcpu;
mod vm;

use clap::Parser;
use config::Cli;
use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit status for a command line we refuse, before anything starts.
const EXIT_USAGE: u8 = 2;
/// Exit status when the VM could not be run or the guest crashed.
const EXIT_FAILURE: u8 = 1;

/// One line: the error and each of its causes.
pub fn describe(error: &dyn Error) -> String {
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
            // clap's message spans lines (and adds usage); keep its sentence.
            let rendered = error.render().to_string();
            let first = rendered
                .lines()
                .take_while(|line| !line.is_empty() && !line.starts_with("Usage:"))
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" ");
            eprintln!("papervisor: {}", first.trim_start_matches("error: "));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    device_procs::init_logging("core");

    let config = match config::VmConfig::from_cli(cli) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("papervisor: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Err(error) = install_kick_handler() {
        eprintln!("papervisor: {}", describe(&error));
        return ExitCode::from(EXIT_FAILURE);
    }
    let mut sockets: Vec<PathBuf> = config.qmp.iter().cloned().collect();
    if let config::ConsoleConfig::Socket(path) = &config.console {
        sockets.push(path.clone());
    }
    let result = run(config);
    for path in sockets {
        let _ = std::fs::remove_file(path);
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            log::error!("{}", describe(error.as_ref()));
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Builds the VM, serves QMP, and runs the guest to the end.
fn run(config: config::VmConfig) -> Result<(), Box<dyn Error>> {
    let qmp_path = config.qmp.clone();
    let qmp = std::sync::Arc::new(qmp::QmpServer::default());
    let vm = vm::Vm::new(config, std::sync::Arc::clone(&qmp))?;
    if let Some(path) = qmp_path {
        qmp.serve(&path, vm.qmp_context())
            .map_err(|error| format!("cannot serve QMP on {}: {error}", path.display()))?;
    }
    Ok(vm.run()?)
}

/// vCPU threads are kicked out of KVM_RUN with a signal; it must not kill us.
fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    extern "C" fn ignore(_: i32, _: *mut nix::libc::siginfo_t, _: *mut std::ffi::c_void) {}
    vmm_sys_util::signal::register_signal_handler(vcpu::kick_signal(), ignore)
}
