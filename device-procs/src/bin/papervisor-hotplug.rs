//! The hotplug controller process (see `device_procs::hotplug`). The core
//! starts it with its channels as descriptors 3.. (`ipc_proto::ProcessKind::links`).

fn main() -> std::process::ExitCode {
    device_procs::process::main(ipc_proto::ProcessKind::HotplugController)
}
