//! `papervisor-qemu`: QEMU's command line, for a libvirt domain's
//! `<emulator>`. It translates the line (see the library) and execs the
//! core, `papervisor`, found beside it: the core's confinement is the one
//! it always has. Exit status 1, with one line naming the option, for
//! anything it does not support.

use std::os::unix::process::CommandExt;
use std::process::ExitCode;

/// The variable that runs the devices as threads of the core
/// (`--device-mode in-process`), for stacks that can set the emulator's
/// environment but not the core's options (libvirt's `<qemu:env>`).
const DEVICE_MODE_VARIABLE: &str = "PAPERVISOR_DEVICE_MODE";

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let translation = match qemu_frontend::translate(&argv) {
        Ok(translation) => translation,
        Err(error) => {
            eprintln!("papervisor-qemu: {error}");
            return ExitCode::from(1);
        }
    };
    if let Some(text) = translation.print {
        print!("{text}");
        return ExitCode::SUCCESS;
    }
    for note in &translation.notes {
        eprintln!("papervisor-qemu: {note}");
    }
    let core = match std::env::current_exe() {
        Ok(path) => path.with_file_name("papervisor"),
        Err(error) => {
            eprintln!("papervisor-qemu: cannot find where it runs from: {error}");
            return ExitCode::from(1);
        }
    };
    let mut command = std::process::Command::new(&core);
    command.args(&translation.args);
    if let Ok(mode) = std::env::var(DEVICE_MODE_VARIABLE) {
        command.args(["--device-mode", &mode]);
    }
    let error = command.exec();
    eprintln!("papervisor-qemu: cannot run {}: {error}", core.display());
    ExitCode::from(1)
}
