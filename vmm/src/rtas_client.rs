//! The core's side of the RTAS server: forwards H_RTAS calls and checks
//! every reply.
//!
//! The server is untrusted: a reply that does not decode, does not validate,
//! or does not come within [`CALL_TIMEOUT`] cuts the server off (it is
//! killed, and the supervisor restarts it). Meanwhile calls fail with an
//! error the guest sees: "busy" while a new server is on its way, "hardware
//! error" once the supervisor gave up.

use ipc_proto::channel::{ChannelError, Client};
use ipc_proto::rtas::{CallRefusal, CoreToRtas, CpuSnapshot, PlatformRequest, RtasToCore};
use ipc_proto::{Fault, Link};
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use thiserror::Error;

/// How long a vCPU waits for the RTAS server before giving up on it.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum RtasFailure {
    /// The server answered, refusing the call: the hcall fails with H_PARAMETER.
    #[error("{0}")]
    Refused(CallRefusal),
    /// The server is being restarted: the hcall fails with H_BUSY.
    #[error("the RTAS server is restarting")]
    Busy,
    /// The server is gone for good or misbehaved: the hcall fails with H_HARDWARE.
    #[error("the RTAS server is unavailable: {0}")]
    Unavailable(String),
}

/// The RTAS server as the vCPUs see it. Calls are serialised, as PAPR
/// requires of RTAS anyway.
pub struct RtasService {
    client: Mutex<Option<Client>>,
    /// The process to kill when cutting the server off (0: none).
    pid: AtomicU32,
    failed: AtomicBool,
}

impl RtasService {
    /// No server yet.
    pub fn unavailable() -> RtasService {
        RtasService {
            client: Mutex::new(None),
            pid: AtomicU32::new(0),
            failed: AtomicBool::new(false),
        }
    }

    #[cfg(test)]
    pub fn new(client: Client, pid: u32) -> RtasService {
        let service = RtasService::unavailable();
        service.connect(client, pid);
        service
    }

    /// A (new) server is ready.
    pub fn connect(&self, client: Client, pid: u32) {
        *self.lock() = Some(client);
        self.pid.store(pid, Ordering::SeqCst);
        self.failed.store(false, Ordering::SeqCst);
    }

    pub fn disconnect(&self) {
        *self.lock() = None;
    }

    /// The supervisor gave up on the server.
    pub fn set_failed(&self, failed: bool) {
        if failed {
            self.failed.store(true, Ordering::SeqCst);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Client>> {
        self.client.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn not_connected(&self) -> RtasFailure {
        if self.failed.load(Ordering::SeqCst) {
            RtasFailure::Unavailable("the supervisor gave up on it".into())
        } else {
            RtasFailure::Busy
        }
    }

    fn kill(&self) {
        let pid = self.pid.swap(0, Ordering::SeqCst);
        if pid != 0 {
            // It may be hung or hostile: make sure it is gone.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// Forwards one H_RTAS call and returns what the core must do.
    pub fn call(
        &self,
        caller: u32,
        args_address: u64,
        cpus: CpuSnapshot,
    ) -> Result<Option<PlatformRequest>, RtasFailure> {
        let mut guard = self.lock();
        let Some(client) = guard.as_mut() else {
            return Err(self.not_connected());
        };
        let request = CoreToRtas::Call {
            caller,
            args_address,
            cpus,
        };
        let outcome = match client.request(request, &[], CALL_TIMEOUT) {
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
            self.kill();
            // The supervisor restarts it: the guest may try again.
            return Err(self.not_connected());
        }
        outcome
    }

    /// Hands the server the new end of `link`.
    pub fn replace_link(&self, link: Link, fds: &[BorrowedFd<'_>]) -> Result<(), String> {
        let mut guard = self.lock();
        let client = guard.as_mut().ok_or("not running")?;
        match client.request::<_, RtasToCore>(CoreToRtas::ReplaceLink(link), fds, CALL_TIMEOUT) {
            Ok(RtasToCore::MemoryTableSet) => Ok(()),
            Ok(other) => Err(format!("{other:?}")),
            Err(error) => Err(error.to_string()),
        }
    }

    /// x-inject-fault on the server.
    pub fn inject(&self, fault: Fault, timeout: Duration) -> Result<RtasToCore, ChannelError> {
        let mut guard = self.lock();
        let client = guard.as_mut().ok_or(ChannelError::HungUp)?;
        client.request(CoreToRtas::InjectFault(fault), &[], timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc_proto::channel::{encode, Channel, Envelope};

    /// A service whose "server" is a thread of this test, speaking raw frames.
    fn fake_service(server: impl FnOnce(Channel) + Send + 'static) -> RtasService {
        let (core_end, server_end) = Channel::pair().unwrap();
        std::thread::spawn(move || server(server_end));
        RtasService::new(Client::new(core_end), 0)
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
            // Cut off: the guest is told to retry while a new server comes.
            assert!(matches!(call(&service), Err(RtasFailure::Busy)));
            assert!(matches!(call(&service), Err(RtasFailure::Busy)));
            // Once the supervisor gives up, calls fail for good.
            service.set_failed(true);
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
        assert!(matches!(call(&service), Err(RtasFailure::Busy)));
        assert!(started.elapsed() < CALL_TIMEOUT + Duration::from_secs(1));

        let service = fake_service(drop);
        assert!(matches!(call(&service), Err(RtasFailure::Busy)));
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
