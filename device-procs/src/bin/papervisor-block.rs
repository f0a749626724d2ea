//! The block device process (see `device_procs::block`), one per disk. The
//! core starts it with its vhost-user socket as descriptor 3 and its image
//! as descriptor 4.

fn main() -> std::process::ExitCode {
    device_procs::block::process::main()
}
