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
mod vcpu;
mod vm;

use config::Cli;
use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit status when the VM could not be run or the guest crashed.
const EXIT_FAILURE: u8 = 1;

fn main() -> ExitCode {
    let cli: Cli = match common::parse_cli("papervisor") {
        Ok(cli) => cli,
        Err(exit) => return exit,
    };
    common::init_logging("core");

    let config = match config::VmConfig::from_cli(cli) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("papervisor: {error}");
            return ExitCode::from(common::EXIT_USAGE);
        }
    };
    if let Err(error) = install_kick_handler() {
        eprintln!("papervisor: {}", common::describe(&error));
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
            log::error!("{}", common::describe(error.as_ref()));
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
