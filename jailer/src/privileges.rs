//! Giving up privileges. The spawner process keeps only what starting a
//! jail needs ([`SPAWNER_CAPABILITIES`]); the core drops every capability
//! before it sets the VM up, so that no thread of it — vCPUs, QMP, console,
//! the device proxies — ever holds one. Both set no_new_privs.

use caps::{CapSet, Capability, CapsHashSet};
use thiserror::Error;

/// What the spawner process keeps, and why:
/// - `CAP_SYS_ADMIN`: the jailer's namespaces, its tmpfs root, pivot_root;
/// - `CAP_SETUID`, `CAP_SETGID`: the jailer switches to the VM's ids;
/// - `CAP_SETPCAP`: the jailer empties the bounding set of the program;
/// - `CAP_KILL`: killing a device process, which runs under another uid.
pub const SPAWNER_CAPABILITIES: [Capability; 5] = [
    Capability::CAP_SYS_ADMIN,
    Capability::CAP_SETUID,
    Capability::CAP_SETGID,
    Capability::CAP_SETPCAP,
    Capability::CAP_KILL,
];

/// Why a thread cannot give up its privileges.
#[derive(Debug, Error)]
pub enum ConfineError {
    /// Its capability sets cannot be changed.
    #[error("cannot change this thread's capabilities")]
    Capabilities(#[source] caps::errors::CapsError),
    /// prctl(PR_SET_NO_NEW_PRIVS) failed.
    #[error("cannot set no_new_privs")]
    NoNewPrivs(#[source] nix::Error),
}

/// Keeps only `keep` of the calling thread's capabilities (in every set, the
/// bounding set included, so that nothing it execs can gain more) and sets
/// no_new_privs. A thread without privileges to drop is left as it is.
pub fn keep_only(keep: &[Capability]) -> Result<(), ConfineError> {
    let keep: CapsHashSet = keep.iter().copied().collect();
    let failed = ConfineError::Capabilities;
    // The bounding set first: dropping from it needs CAP_SETPCAP, which may
    // be about to go.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).map_err(failed)? {
        for capability in caps::read(None, CapSet::Bounding).map_err(failed)? {
            if !keep.contains(&capability) {
                caps::drop(None, CapSet::Bounding, capability).map_err(failed)?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(failed)?;
    caps::clear(None, CapSet::Inheritable).map_err(failed)?;
    let permitted = caps::read(None, CapSet::Permitted).map_err(failed)?;
    let kept: CapsHashSet = permitted.intersection(&keep).copied().collect();
    caps::set(None, CapSet::Effective, &kept).map_err(failed)?;
    caps::set(None, CapSet::Permitted, &kept).map_err(failed)?;
    nix::sys::prctl::set_no_new_privs().map_err(ConfineError::NoNewPrivs)
}

/// Drops every capability of this thread and sets no_new_privs.
pub fn drop_all() -> Result<(), ConfineError> {
    keep_only(&[])
}
