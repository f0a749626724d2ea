//! Messages to the VM's control loop, from vCPU threads and from QMP.

/// What the control loop is asked to do.
#[derive(Debug, PartialEq, Eq)]
pub enum ControlMessage {
    /// The guest powered off (RTAS power-off).
    PowerOff,
    /// A machine reset: the guest's (RTAS system-reboot) or QMP's system_reset.
    Reset { by_guest: bool },
    /// QMP quit.
    Quit,
    /// The guest can no longer run: the reason, for the log.
    GuestCrashed(String),
}
