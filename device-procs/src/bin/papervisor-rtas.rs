//! The RTAS server process (see `device_procs::rtas`). The core starts it
//! with its channels as descriptors 3.. (`ipc_proto::ProcessKind::links`).

fn main() -> std::process::ExitCode {
    device_procs::process::main(ipc_proto::ProcessKind::RtasServer)
}
