//! Prints the core's man page (roff), made from the command-line
//! definition itself: `cargo run -p vmm --example man > papervisor.1`
//! (scripts/install does).

use clap::CommandFactory;

fn main() -> std::io::Result<()> {
    let command = vmm::config::Cli::command();
    clap_mangen::Man::new(command).render(&mut std::io::stdout())
}
