//! The block device process, one per disk: descriptor 3 is the listening
//! vhost-user socket the core will have connected to (it accepts that one
//! connection), descriptor 4 the image the core opened. It installs its
//! filter (no open, no socket, no exec) before it accepts, then serves until
//! the frontend hangs up. The same [`serve`] runs on a thread of the core in
//! `--device-mode in-process`.

use super::backend::{BlockBackend, Memory};
use super::{Disk, DiskError};
use crate::seccomp::{self, SeccompError};
use nix::sys::socket::{getsockopt, sockopt};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use thiserror::Error;
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::GuestMemoryMmap;

/// The descriptor of the listening vhost-user socket.
pub const LISTENER_FD: RawFd = 3;
/// The descriptor of the image.
pub const IMAGE_FD: RawFd = 4;

/// Why a block device stops.
#[derive(Debug, Error)]
pub enum BlockError {
    /// A descriptor handed over is not what it must be.
    #[error("descriptor {fd}: {why}")]
    Descriptor {
        /// The descriptor.
        fd: RawFd,
        /// What it is not.
        why: &'static str,
    },
    /// The image cannot be served.
    #[error("the image cannot be served")]
    Disk(#[source] DiskError),
    /// The filter could not be installed.
    #[error("cannot install the seccomp filter")]
    Seccomp(#[from] SeccompError),
    /// The vhost-user daemon failed.
    #[error("vhost-user: {0}")]
    VhostUser(String),
}

/// What the command line says.
#[derive(Debug, PartialEq, Eq)]
pub struct Options {
    /// `--seccomp kill|log|off`.
    pub seccomp: seccomp::Mode,
    /// `--log-level LEVEL`.
    pub log_level: Option<log::LevelFilter>,
    /// `--read-only`: writes fail with IOERR (and the disk says RO).
    pub read_only: bool,
    /// `--id ID`: what get-id answers (the node's name).
    pub id: String,
}

/// Parses `--seccomp kill|log|off`, `--log-level LEVEL`, `--read-only`
/// and `--id ID`.
pub fn parse_options(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        seccomp: seccomp::Mode::Kill,
        log_level: None,
        read_only: false,
        id: String::new(),
    };
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        if flag == "--read-only" {
            options.read_only = true;
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--seccomp" => options.seccomp = crate::process::seccomp_option(value)?,
            "--log-level" => options.log_level = Some(crate::process::log_level_option(value)?),
            "--id" => options.id = value.clone(),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(options)
}

/// `listener` is a listening stream socket.
fn check_listener(listener: &OwnedFd) -> Result<(), BlockError> {
    match getsockopt(listener, sockopt::AcceptConn) {
        Ok(true) => Ok(()),
        _ => Err(BlockError::Descriptor {
            fd: listener.as_raw_fd(),
            why: "not a listening socket",
        }),
    }
}

/// `image` is a regular file or a block device.
fn check_image(image: &OwnedFd) -> Result<(), BlockError> {
    let stat = nix::sys::stat::fstat(image).map_err(|_| BlockError::Descriptor {
        fd: image.as_raw_fd(),
        why: "not open",
    })?;
    match stat.st_mode & nix::libc::S_IFMT {
        nix::libc::S_IFREG | nix::libc::S_IFBLK => Ok(()),
        _ => Err(BlockError::Descriptor {
            fd: image.as_raw_fd(),
            why: "neither a regular file nor a block device",
        }),
    }
}

/// Serves `image` to the one frontend connected to `listener`, until it
/// hangs up. `confine` runs once the descriptors are checked and before the
/// first message is read (the process installs its filter there).
pub fn serve(
    listener: OwnedFd,
    image: OwnedFd,
    options: &Options,
    confine: impl FnOnce() -> Result<(), BlockError>,
) -> Result<(), BlockError> {
    check_listener(&listener)?;
    check_image(&image)?;
    let disk = Disk::new(image.into(), options.read_only, &options.id).map_err(BlockError::Disk)?;
    log::info!(
        "serving {} sectors{}",
        disk.sectors(),
        if disk.read_only() { ", read-only" } else { "" }
    );
    confine()?;
    let backend = Arc::new(BlockBackend::new(disk));
    let vhost_user = |error: &dyn std::fmt::Debug| BlockError::VhostUser(format!("{error:?}"));
    let mut daemon = VhostUserDaemon::new(
        "block".to_string(),
        backend.clone(),
        Memory::new(GuestMemoryMmap::new()),
    )
    .map_err(|e| vhost_user(&e))?;
    // SAFETY: `listener` is an open listening socket (checked above), whose
    // ownership passes to the Listener.
    let mut listener = unsafe { Listener::from_raw_fd(listener.into_raw_fd()) };
    daemon.start(&mut listener).map_err(|e| vhost_user(&e))?;
    let ended = daemon.wait();
    log::info!("the frontend hung up after {} requests", backend.served());
    match ended {
        // The frontend closing the socket, even mid-message, is its end.
        Err(vhost_user_backend::Error::HandleRequest(
            vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
        ))
        | Ok(()) => Ok(()),
        Err(error) => Err(vhost_user(&error)),
    }
}

/// The `main` of the block device process.
pub fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = parse_options(&args);
    common::init_logging(
        "block",
        options.as_ref().ok().and_then(|o| o.log_level),
        None,
    );
    crate::process::log_panics();
    let options = match options {
        Ok(options) => options,
        Err(error) => {
            log::error!("{error}; papervisor-block takes --seccomp kill|log|off, --log-level LEVEL, --read-only and --id ID; descriptor {LISTENER_FD} is its vhost-user socket, {IMAGE_FD} its image");
            return std::process::ExitCode::from(common::EXIT_USAGE);
        }
    };
    if let Err(error) = nix::sys::prctl::set_dumpable(false) {
        log::error!("cannot make the process non-dumpable: {error}");
        return std::process::ExitCode::FAILURE;
    }
    // SAFETY: the core passes these two descriptors to this process for
    // these uses; nothing else in it owns them.
    let (listener, image) = unsafe {
        (
            OwnedFd::from_raw_fd(LISTENER_FD),
            OwnedFd::from_raw_fd(IMAGE_FD),
        )
    };
    let confine = || Ok(seccomp::install_block(options.seccomp)?);
    crate::process::exit_status(serve(listener, image, &options, confine))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, String> {
        parse_options(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn options_parse_and_bad_ones_are_named() {
        let options = parse(&["--read-only", "--id", "disk0", "--seccomp", "log"]).unwrap();
        assert!(options.read_only);
        assert_eq!(options.id, "disk0");
        assert_eq!(options.seccomp, seccomp::Mode::Log);
        assert!(!parse(&[]).unwrap().read_only);
        assert!(parse(&["--id"]).unwrap_err().contains("needs a value"));
        assert!(parse(&["--writable", "1"])
            .unwrap_err()
            .contains("--writable"));
    }

    #[test]
    fn descriptors_that_are_not_a_listener_and_an_image_are_refused() {
        let file = || OwnedFd::from(tempfile_in_memory());
        let (stream, _other) = std::os::unix::net::UnixStream::pair().unwrap();
        let options = parse(&[]).unwrap();
        let error = serve(OwnedFd::from(stream), file(), &options, || Ok(())).unwrap_err();
        assert!(
            error.to_string().contains("not a listening socket"),
            "{error}"
        );
        let dir = std::env::temp_dir().join(format!("block-listener-{}", std::process::id()));
        let listener = std::os::unix::net::UnixListener::bind(&dir).unwrap();
        std::fs::remove_file(&dir).unwrap();
        let directory = OwnedFd::from(std::fs::File::open("/").unwrap());
        let error = serve(OwnedFd::from(listener), directory, &options, || Ok(())).unwrap_err();
        assert!(
            error.to_string().contains("neither a regular file"),
            "{error}"
        );
    }

    fn tempfile_in_memory() -> std::fs::File {
        let fd =
            nix::sys::memfd::memfd_create("image", nix::sys::memfd::MFdFlags::empty()).unwrap();
        std::fs::File::from(fd)
    }
}
