//! Builds the no_std test guest with its own flags (guest/.cargo/config.toml)
//! and hands its path to the core as PAPERVISOR_GUEST_ELF.

use std::env;
use std::path::PathBuf;
use std::process::Command;

/// Named explicitly so that the output path does not depend on any config.
const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let guest_dir = manifest_dir.join("../guest");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let target_dir = out_dir.join("guest-target");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());

    // The nested build must see the guest's flags, not the outer build's.
    let status = Command::new(cargo)
        .current_dir(&guest_dir)
        .args([
            "build",
            "--release",
            "--target",
            GUEST_TARGET,
            "--target-dir",
        ])
        .arg(&target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_MAKEFLAGS")
        .status()
        .expect("cannot run cargo to build the test guest");
    assert!(status.success(), "building the test guest failed");

    let elf = target_dir
        .join(GUEST_TARGET)
        .join("release/papervisor-guest");
    println!("cargo:rustc-env=PAPERVISOR_GUEST_ELF={}", elf.display());
    for path in ["src", "Cargo.toml", "link.ld", ".cargo/config.toml"] {
        println!("cargo:rerun-if-changed={}", guest_dir.join(path).display());
    }
}
