//! The event log process (see `device_procs::eventlog`). The core starts it
//! with its channels as descriptors 3.. and the hot-plug interrupt's eventfd
//! after them.

fn main() -> std::process::ExitCode {
    device_procs::process::main(ipc_proto::ProcessKind::EventLog)
}
