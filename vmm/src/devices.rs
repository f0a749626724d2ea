//! The device processes, as the core starts and reaches them: one socketpair
//! per link (created here and handed out, vhost-user style), guest RAM's memfd
//! to the RTAS server, the hot-plug interrupt's eventfd to the event log.
//! Everything a device process sends back is checked by the caller.

use crate::interrupts::{InterruptError, InterruptRouter};
use crate::memory::GuestRam;
use crate::rtas_client::RtasService;
use ipc_proto::channel::{Channel, ChannelError, Client};
use ipc_proto::eventlog::{CoreToEventLog, EventLogToCore};
use ipc_proto::hotplug::{CoreToHotplug, DrcRange, HotplugToCore};
use ipc_proto::papr::irq;
use ipc_proto::rtas::{CoreToRtas, RtasToCore};
use ipc_proto::{Link, ProcessKind};
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;
use thiserror::Error;

/// How long a device process has to answer the core.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum DeviceError {
    #[error("cannot create the {0:?} channel")]
    Channel(Link, #[source] ChannelError),
    #[error("cannot start {path}")]
    Exec {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{kind} did not set up")]
    Setup {
        kind: &'static str,
        #[source]
        source: ChannelError,
    },
    #[error("{kind} refused its set-up: {reason}")]
    Refused { kind: &'static str, reason: String },
    #[error("interrupts")]
    Interrupt(#[from] InterruptError),
}

/// The binary of a device process: beside the core's own executable.
pub fn sibling_binary(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .unwrap_or_default()
        .join(name)
}

/// Starts `binary` with `fds` as descriptors 3, 4, ...
fn spawn_with_fds(binary: &Path, fds: &[RawFd]) -> std::io::Result<Child> {
    let mut command = Command::new(binary);
    command.stdin(Stdio::null());
    ipc_proto::pass_fds(&mut command, fds);
    command.spawn()
}

/// The core's ends of its links, and the children.
pub struct DeviceProcesses {
    pub rtas: RtasService,
    pub hotplug: Mutex<Client>,
    pub eventlog: Mutex<Client>,
    /// Unsolicited messages from the hotplug controller; read by one thread.
    pub notify: Option<Channel>,
    children: Vec<(ProcessKind, Child)>,
}

impl Drop for DeviceProcesses {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl DeviceProcesses {
    /// Starts every device process, wires them together, and sets each up.
    pub fn spawn(
        ram: &GuestRam,
        interrupts: &InterruptRouter,
        threads_per_core: u32,
        drcs: Vec<DrcRange>,
    ) -> Result<DeviceProcesses, DeviceError> {
        // Both ends of every link: (the first-named process's, the other's).
        let mut ends: HashMap<Link, (Option<Channel>, Option<Channel>)> = HashMap::new();
        let all_links = [
            Link::CoreRtas,
            Link::CoreHotplug,
            Link::HotplugNotify,
            Link::RtasHotplug,
            Link::HotplugEventLog,
            Link::RtasEventLog,
            Link::CoreEventLog,
        ];
        for link in all_links {
            let (a, b) = Channel::pair().map_err(|error| DeviceError::Channel(link, error))?;
            ends.insert(link, (Some(a), Some(b)));
        }
        let hotplug_interrupt = interrupts.eventfd(irq::HOTPLUG)?;

        let mut children = Vec::new();
        let mut spawned_ends: Vec<Channel> = Vec::new();
        for kind in ProcessKind::ALL {
            let mut fds: Vec<RawFd> = Vec::new();
            for &link in kind.links() {
                let (first, second) = ends.get_mut(&link).expect("every link has a pair");
                // The core always holds the first end of its own links; a
                // device process the first end of a device-to-device link
                // when it is named first.
                let first_is_ours = link_owner(link) == Some(kind);
                let end = if first_is_ours {
                    first.take()
                } else {
                    second.take()
                };
                let end = end.expect("each end is handed out once");
                fds.push(end.as_fd().as_raw_fd());
                spawned_ends.push(end);
            }
            if kind == ProcessKind::EventLog {
                fds.push(hotplug_interrupt.as_raw_fd());
            }
            let path = sibling_binary(kind.binary());
            let child = spawn_with_fds(&path, &fds).map_err(|source| DeviceError::Exec {
                path: path.clone(),
                source,
            })?;
            log::info!("{} running as pid {}", kind.name(), child.id());
            children.push((kind, child));
        }
        // The children hold their ends now.
        drop(spawned_ends);
        drop(hotplug_interrupt);

        let mut core_end = |link: Link| -> Channel {
            ends.get_mut(&link)
                .and_then(|(first, _)| first.take())
                .expect("the core's end of its link")
        };
        let rtas_channel = core_end(Link::CoreRtas);
        let hotplug_channel = core_end(Link::CoreHotplug);
        let eventlog_channel = core_end(Link::CoreEventLog);
        // The notify link is the controller's to send on: the core holds its second end.
        let notify = ends
            .get_mut(&Link::HotplugNotify)
            .and_then(|(_, second)| second.take())
            .expect("the core's end of the notify link");

        let ours = [
            (&rtas_channel, Link::CoreRtas, ProcessKind::RtasServer),
            (
                &hotplug_channel,
                Link::CoreHotplug,
                ProcessKind::HotplugController,
            ),
            (&notify, Link::HotplugNotify, ProcessKind::HotplugController),
            (&eventlog_channel, Link::CoreEventLog, ProcessKind::EventLog),
        ];
        for (channel, link, kind) in ours {
            channel
                .send_hello(link)
                .map_err(|source| DeviceError::Setup {
                    kind: kind.name(),
                    source,
                })?;
        }
        for (channel, link, kind) in ours {
            channel
                .expect_hello(link, SETUP_TIMEOUT)
                .map_err(|source| DeviceError::Setup {
                    kind: kind.name(),
                    source,
                })?;
        }

        let mut rtas = Client::new(rtas_channel);
        let (regions, memfds): (Vec<_>, Vec<_>) = ram.regions().into_iter().unzip();
        for (request, fds) in [
            (CoreToRtas::SetMemoryTable { regions }, memfds),
            (CoreToRtas::SetTopology { threads_per_core }, vec![]),
        ] {
            let answer: RtasToCore =
                rtas.request(request, &fds, SETUP_TIMEOUT)
                    .map_err(|source| DeviceError::Setup {
                        kind: ProcessKind::RtasServer.name(),
                        source,
                    })?;
            if answer != RtasToCore::MemoryTableSet {
                return Err(DeviceError::Refused {
                    kind: ProcessKind::RtasServer.name(),
                    reason: format!("{answer:?}"),
                });
            }
        }
        let mut hotplug = Client::new(hotplug_channel);
        let answer: HotplugToCore = hotplug
            .request(
                CoreToHotplug::DefineDrcs { ranges: drcs },
                &[],
                SETUP_TIMEOUT,
            )
            .map_err(|source| DeviceError::Setup {
                kind: ProcessKind::HotplugController.name(),
                source,
            })?;
        if let HotplugToCore::Refused { reason } = answer {
            return Err(DeviceError::Refused {
                kind: ProcessKind::HotplugController.name(),
                reason,
            });
        }

        let rtas_pid = children
            .iter()
            .find(|(kind, _)| *kind == ProcessKind::RtasServer)
            .map(|(_, child)| child.id())
            .unwrap_or_default();
        Ok(DeviceProcesses {
            rtas: RtasService::new(rtas, rtas_pid),
            hotplug: Mutex::new(hotplug),
            eventlog: Mutex::new(Client::new(eventlog_channel)),
            notify: Some(notify),
            children,
        })
    }

    /// A request to the hotplug controller.
    pub fn hotplug(&self, request: CoreToHotplug) -> Result<HotplugToCore, ChannelError> {
        let mut client = self.hotplug.lock().unwrap_or_else(|p| p.into_inner());
        client.request(request, &[], REQUEST_TIMEOUT)
    }

    /// A request to the event log.
    pub fn eventlog(&self, request: CoreToEventLog) -> Result<EventLogToCore, ChannelError> {
        let mut client = self.eventlog.lock().unwrap_or_else(|p| p.into_inner());
        client.request(request, &[], REQUEST_TIMEOUT)
    }
}

/// The device process that holds the first end of a device-to-device link
/// (the requester); `None` for the core's links.
fn link_owner(link: Link) -> Option<ProcessKind> {
    match link {
        Link::RtasHotplug | Link::RtasEventLog => Some(ProcessKind::RtasServer),
        Link::HotplugEventLog => Some(ProcessKind::HotplugController),
        // The notify link's first end is the controller's: it sends.
        Link::HotplugNotify => Some(ProcessKind::HotplugController),
        Link::CoreRtas | Link::CoreHotplug | Link::CoreEventLog => None,
    }
}
