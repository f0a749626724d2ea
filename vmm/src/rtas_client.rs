//! The core's side of the RTAS server: spawns the process, shares guest
//! memory with it, forwards H_RTAS calls and checks every reply.
//!
//! The server is untrusted: a reply that does not decode, does not validate,
//! or does not come within [`CALL_TIMEOUT`] cuts the server off (it is
//! killed), and from then on calls fail with an error the guest sees.

use crate::memory::GuestRam;
use ipc_proto::channel::{Channel, ChannelError, Envelope};
use ipc_proto::rtas::{CallRefusal, CoreToRtas, CpuSnapshot, PlatformRequest, RtasToCore};
use ipc_proto::ProcessKind;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use thiserror::Error;

/// How long a vCPU waits for the RTAS server before giving up on it.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// The channel's descriptor number in the server process.
const CHILD_CHANNEL_FD: i32 = 3;
pub const RTAS_SERVER_BINARY: &str = "papervisor-rtas";

#[derive(Debug, Error)]
pub enum RtasFailure {
    /// The server answered, refusing the call: the hcall fails with H_PARAMETER.
    #[error("{0}")]
    Refused(CallRefusal),
    /// The server is gone or was cut off: the hcall fails with H_HARDWARE.
    #[error("the RTAS server is unavailable: {0}")]
    Unavailable(String),
}

#[derive(Debug, Error)]
pub enum SpawnError {
    #[error("cannot create the channel")]
    Channel(#[source] ChannelError),
    #[error("cannot start {path}")]
    Exec {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the RTAS server did not set up")]
    Setup(#[source] ChannelError),
    #[error("the RTAS server refused the memory table: {0}")]
    MemoryTable(String),
}

struct Connection {
    channel: Channel,
    child: Child,
    next_id: u64,
}

impl Drop for Connection {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The RTAS server as the vCPUs see it. Calls are serialised, as PAPR
/// requires of RTAS anyway.
pub struct RtasService {
    connection: Mutex<Option<Connection>>,
}

/// The binary of a device process: beside the core's own executable.
pub fn sibling_binary(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .unwrap_or_default()
        .join(name)
}

impl RtasService {
    /// Starts the RTAS server and gives it guest memory.
    pub fn spawn(binary: &Path, ram: &GuestRam) -> Result<RtasService, SpawnError> {
        let (core_end, server_end) = Channel::pair().map_err(SpawnError::Channel)?;
        let server_fd = server_end.as_fd().as_raw_fd();
        let mut command = Command::new(binary);
        command
            .args(["--channel-fd", &CHILD_CHANNEL_FD.to_string()])
            .stdin(Stdio::null());
        // SAFETY: dup2 is async-signal-safe and touches only the child's
        // descriptor table; the result is checked.
        unsafe {
            command.pre_exec(move || {
                if nix::libc::dup2(server_fd, CHILD_CHANNEL_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().map_err(|source| SpawnError::Exec {
            path: binary.to_path_buf(),
            source,
        })?;
        drop(server_end);
        let pid = child.id();
        let mut connection = Connection {
            channel: core_end,
            child,
            next_id: 1,
        };
        connection
            .channel
            .handshake(ProcessKind::RtasServer, SETUP_TIMEOUT)
            .map_err(SpawnError::Setup)?;
        let (regions, fds): (Vec<_>, Vec<_>) = ram.regions().into_iter().unzip();
        let reply = connection
            .request(CoreToRtas::SetMemoryTable { regions }, &fds, SETUP_TIMEOUT)
            .map_err(SpawnError::Setup)?;
        if reply != RtasToCore::MemoryTableSet {
            return Err(SpawnError::MemoryTable(format!("{reply:?}")));
        }
        log::info!("RTAS server running as pid {pid}");
        Ok(RtasService {
            connection: Mutex::new(Some(connection)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Option<Connection>> {
        self.connection.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forwards one H_RTAS call and returns what the core must do.
    pub fn call(
        &self,
        caller: u32,
        args_address: u64,
        cpus: CpuSnapshot,
    ) -> Result<Option<PlatformRequest>, RtasFailure> {
        let mut guard = self.lock();
        let Some(connection) = guard.as_mut() else {
            return Err(RtasFailure::Unavailable("it was cut off earlier".into()));
        };
        let request = CoreToRtas::Call {
            caller,
            args_address,
            cpus,
        };
        let outcome = match connection.request(request, &[], CALL_TIMEOUT) {
            Ok(RtasToCore::CallDone { request }) => match &request {
                Some(effect) => effect.validate().map(|()| request).map_err(|why| {
                    RtasFailure::Unavailable(format!("it asked for something invalid: {why}"))
                }),
                None => Ok(None),
            },
            Ok(RtasToCore::CallRefused(refusal)) => return Err(RtasFailure::Refused(refusal)),
            Ok(other) => Err(RtasFailure::Unavailable(format!(
                "it answered a call with {other:?}"
            ))),
            Err(error) => Err(RtasFailure::Unavailable(error.to_string())),
        };
        if let Err(failure) = &outcome {
            log::error!("cutting off the RTAS server: {failure}");
            *guard = None;
        }
        outcome
    }
}

impl Connection {
    /// Sends a request and waits for the reply with the same id; stale
    /// replies (to requests that timed out) are skipped.
    fn request(
        &mut self,
        body: CoreToRtas,
        fds: &[std::os::fd::BorrowedFd<'_>],
        timeout: Duration,
    ) -> Result<RtasToCore, ChannelError> {
        let id = self.next_id;
        self.next_id += 1;
        self.channel.send(&Envelope { id, body }, fds)?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let (reply, received_fds) = self.channel.recv::<RtasToCore>(Some(left))?;
            if !received_fds.is_empty() {
                return Err(ChannelError::TooManyFds);
            }
            if reply.id == id {
                return Ok(reply.body);
            }
            log::warn!(
                "RTAS server: dropping a reply to request {} while waiting for {id}",
                reply.id
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc_proto::channel::encode;

    /// A service whose "server" is a thread of this test, speaking raw frames.
    fn fake_service(server: impl FnOnce(Channel) + Send + 'static) -> RtasService {
        let (core_end, server_end) = Channel::pair().unwrap();
        std::thread::spawn(move || server(server_end));
        // Any child works as the process to kill when cutting off.
        let child = Command::new("sleep").arg("30").spawn().unwrap();
        RtasService {
            connection: Mutex::new(Some(Connection {
                channel: core_end,
                child,
                next_id: 1,
            })),
        }
    }

    fn call(service: &RtasService) -> Result<Option<PlatformRequest>, RtasFailure> {
        service.call(0, 0x1000, CpuSnapshot::default())
    }

    #[test]
    fn garbage_truncated_and_invalid_replies_cut_the_server_off() {
        let valid = encode(&Envelope {
            id: 1,
            body: RtasToCore::CallDone {
                request: Some(PlatformRequest::PowerOff),
            },
        })
        .unwrap();
        let invalid_request = encode(&Envelope {
            id: 1,
            body: RtasToCore::CallDone {
                request: Some(PlatformRequest::StartCpu {
                    cpu: 999,
                    entry: 0,
                    r3: 0,
                }),
            },
        })
        .unwrap();
        let replies: Vec<Vec<u8>> = vec![
            vec![0xff; 40],
            valid[..valid.len() - 3].to_vec(),
            [valid.clone(), vec![0]].concat(),
            invalid_request,
        ];
        for reply in replies {
            let service = fake_service(move |channel| {
                let _ = channel.recv_frame(None);
                let _ = channel.send_frame(&reply, &[]);
                let _ = channel.recv_frame(None);
            });
            assert!(matches!(call(&service), Err(RtasFailure::Unavailable(_))));
            // Cut off: later calls fail at once instead of waiting.
            assert!(matches!(call(&service), Err(RtasFailure::Unavailable(_))));
        }
    }

    #[test]
    fn a_valid_reply_is_returned_and_stale_replies_are_skipped() {
        let service = fake_service(|channel| {
            let _ = channel.recv_frame(None);
            for id in [0, 1] {
                let reply = Envelope {
                    id,
                    body: RtasToCore::CallDone {
                        request: Some(PlatformRequest::Reboot),
                    },
                };
                channel.send(&reply, &[]).unwrap();
            }
            let _ = channel.recv_frame(None);
        });
        assert_eq!(call(&service).unwrap(), Some(PlatformRequest::Reboot));
    }

    #[test]
    fn a_silent_server_times_out_and_a_dead_one_fails_fast() {
        let service = fake_service(|channel| {
            let _ = channel.recv_frame(None);
            std::thread::sleep(CALL_TIMEOUT + Duration::from_secs(1));
        });
        let started = std::time::Instant::now();
        assert!(matches!(call(&service), Err(RtasFailure::Unavailable(_))));
        assert!(started.elapsed() < CALL_TIMEOUT + Duration::from_secs(1));

        let service = fake_service(drop);
        assert!(matches!(call(&service), Err(RtasFailure::Unavailable(_))));
    }

    #[test]
    fn refusals_pass_through_without_cutting_off() {
        let service = fake_service(|channel| {
            for id in 1..=2 {
                let _ = channel.recv_frame(None);
                let reply = Envelope {
                    id,
                    body: RtasToCore::CallRefused(CallRefusal::BadCellCount { nargs: 20, nret: 1 }),
                };
                channel.send(&reply, &[]).unwrap();
            }
        });
        for _ in 0..2 {
            assert!(matches!(call(&service), Err(RtasFailure::Refused(_))));
        }
    }
}
