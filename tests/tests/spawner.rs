//! The spawner process on its own, driven as a compromised core would
//! drive it: requests with the wrong descriptors, an untrusted binary,
//! a generation it started already, garbage, a kill of what it did not
//! start. It refuses each, says why, and starts nothing; when its core's
//! socket closes, it kills what it started and exits.

use ipc_proto::channel::{Channel, Envelope};
use ipc_proto::spawner::{descriptors_of, DeviceStart, SpawnReply, SpawnRequest, Started};
use ipc_proto::ProcessKind;
use papervisor_tests::{binary, children_of, runs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(20);

/// A spawner started as a core starts it (unjailed devices: no ids are
/// claimed), and its two sockets.
struct Spawner {
    pid: u32,
    requests: Channel,
    _events: Channel,
    next_id: u64,
}

impl Spawner {
    fn start() -> Spawner {
        let (requests, its_requests) = Channel::pair().unwrap();
        let (events, its_events) = Channel::pair().unwrap();
        let program = binary("papervisor-spawner");
        let bin_dir = program.parent().unwrap().display().to_string();
        let args = [
            "--bin-dir",
            &bin_dir,
            "--jail",
            "off",
            "--uid",
            "65534",
            "--gid",
            "65534",
            "--jail-dir",
            "/nonexistent",
            "--guest-memory",
            "536870912",
            "--owner",
            "0",
        ];
        let fds = [
            its_requests.as_fd().as_raw_fd(),
            its_events.as_fd().as_raw_fd(),
        ];
        let pid = jailer::spawn::spawn_with_descriptors(
            &program,
            &args,
            &fds,
            ipc_proto::FIRST_CHANNEL_FD,
            None,
        )
        .expect("the spawner starts");
        Spawner {
            pid,
            requests,
            _events: events,
            next_id: 1,
        }
    }

    fn ask(
        &mut self,
        request: &SpawnRequest,
        fds: &[BorrowedFd<'_>],
    ) -> (SpawnReply, Vec<OwnedFd>) {
        let id = self.next_id;
        self.next_id += 1;
        self.requests
            .send(
                &Envelope {
                    id,
                    body: request.clone(),
                },
                fds,
            )
            .unwrap();
        let (reply, fds) = self.requests.recv::<SpawnReply>(Some(TIMEOUT)).unwrap();
        assert_eq!(reply.id, id);
        (reply.body, fds)
    }

    fn refused(&mut self, request: &SpawnRequest, fds: &[BorrowedFd<'_>]) -> String {
        match self.ask(request, fds) {
            (SpawnReply::Refused(why), fds) => {
                assert!(fds.is_empty());
                why
            }
            other => panic!("{request:?} was not refused: {other:?}"),
        }
    }

    /// A start the spawner took, but whose one process it did not start:
    /// why.
    fn not_started(&mut self, request: &SpawnRequest, fds: &[BorrowedFd<'_>]) -> String {
        match self.ask(request, fds) {
            (SpawnReply::Devices(outcomes), fds) => {
                assert!(fds.is_empty());
                match &outcomes[..] {
                    [Err(why)] => why.clone(),
                    other => panic!("{request:?} started: {other:?}"),
                }
            }
            other => panic!("{request:?} was refused or started: {other:?}"),
        }
    }
}

/// What an event log is started with — its links, its interrupts and its
/// state region — as stand-ins, and the test's ends of them (held, so that
/// the process waits for its handshakes).
fn event_log_descriptors() -> (Vec<OwnedFd>, Vec<Channel>) {
    let mut fds = Vec::new();
    let mut ours = Vec::new();
    for _ in ProcessKind::EventLog.links() {
        let (end, theirs) = Channel::pair().unwrap();
        ours.push(end);
        fds.push(theirs.as_fd().try_clone_to_owned().unwrap());
    }
    // Its interrupts, and its state region.
    for _ in 0..2 {
        let interrupt = nix::sys::eventfd::EventFd::new().unwrap();
        fds.push(interrupt.into());
    }
    let region =
        nix::sys::memfd::memfd_create(c"state", nix::sys::memfd::MFdFlags::empty()).unwrap();
    nix::unistd::ftruncate(
        &region,
        ipc_proto::link::core_eventlog::STATE_REGION_BYTES as i64,
    )
    .unwrap();
    fds.push(region);
    assert_eq!(fds.len(), descriptors_of(ProcessKind::EventLog));
    (fds, ours)
}

fn start(kind: ProcessKind, generation: u64, upgrade: Option<String>) -> SpawnRequest {
    SpawnRequest::Start(vec![DeviceStart {
        kind,
        generation,
        resume: false,
        upgrade,
    }])
}

#[test]
fn the_spawner_refuses_what_is_not_a_device_of_its_vm_and_ends_with_its_core() {
    let mut spawner = Spawner::start();
    let (fds, _ours) = event_log_descriptors();
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();

    // The wrong descriptors for the kind.
    let why = spawner.refused(&start(ProcessKind::EventLog, 1, None), &borrowed[1..]);
    assert!(why.contains("descriptors"), "{why}");
    // A binary others could have replaced.
    let dir = papervisor_tests::scratch_dir();
    let untrusted = dir.join("papervisor-eventlog");
    std::fs::copy(binary("papervisor-eventlog"), &untrusted).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let request = start(
        ProcessKind::EventLog,
        1,
        Some(untrusted.display().to_string()),
    );
    let why = spawner.not_started(&request, &borrowed);
    assert!(why.contains("is writable by anyone"), "{why}");
    // A relative path; a path that is no file.
    let request = start(ProcessKind::EventLog, 2, Some("papervisor-eventlog".into()));
    spawner.refused(&request, &borrowed);
    let request = start(
        ProcessKind::EventLog,
        3,
        Some("/nonexistent/papervisor-eventlog".into()),
    );
    spawner.not_started(&request, &borrowed);
    // A directory where its state region belongs (it would lead out of
    // the jail), a file where a link belongs.
    let directory = std::fs::File::open("/").unwrap();
    let mut with_directory = borrowed.clone();
    *with_directory.last_mut().unwrap() = directory.as_fd();
    let request = start(ProcessKind::EventLog, 4, None);
    let why = spawner.not_started(&request, &with_directory);
    assert!(why.contains("is a directory"), "{why}");
    let mut with_file = borrowed.clone();
    with_file[0] = directory.as_fd();
    let why = spawner.not_started(&start(ProcessKind::EventLog, 5, None), &with_file);
    assert!(
        why.contains("descriptor 0 of the event-log is not a socket"),
        "{why}"
    );
    // Garbage, and a frame that is no request.
    spawner.requests.send_frame(&[0xff; 32], &[]).unwrap();
    let (reply, _) = spawner.requests.recv::<SpawnReply>(Some(TIMEOUT)).unwrap();
    assert!(matches!(reply.body, SpawnReply::Refused(_)), "{reply:?}");
    // Nothing was started by any of it.
    assert_eq!(children_of(spawner.pid), []);

    // A device process of the VM: started, and held.
    let (reply, pidfds) = spawner.ask(&start(ProcessKind::EventLog, 6, None), &borrowed);
    let SpawnReply::Devices(outcomes) = reply else {
        panic!("{reply:?}");
    };
    let [Ok(pid)] = outcomes[..] else {
        panic!("{outcomes:?}");
    };
    assert_eq!(pidfds.len(), 1);
    assert!(children_of(spawner.pid)
        .iter()
        .any(|(child, _)| *child == pid));
    // Then, idle, it starts a standby of the kind, which the next start of
    // the kind becomes: no jail to wait for.
    let deadline = Instant::now() + TIMEOUT;
    let standby = loop {
        let others: Vec<u32> = children_of(spawner.pid)
            .into_iter()
            .map(|(child, _)| child)
            .filter(|child| *child != pid)
            .collect();
        if let [standby] = others[..] {
            break standby;
        }
        assert!(Instant::now() < deadline, "no standby: {others:?}");
        std::thread::sleep(Duration::from_millis(10));
    };
    let (second_fds, _second_ours) = event_log_descriptors();
    let second: Vec<BorrowedFd<'_>> = second_fds.iter().map(AsFd::as_fd).collect();
    let (reply, _) = spawner.ask(&start(ProcessKind::EventLog, 7, None), &second);
    assert_eq!(reply, SpawnReply::Devices(vec![Ok(standby)]));
    // A generation it started, or an earlier one: refused.
    for generation in [7, 6, 5] {
        let why = spawner.refused(&start(ProcessKind::EventLog, generation, None), &borrowed);
        assert!(why.contains("is not after"), "{why}");
    }
    // A kill of what it did not start does nothing.
    let stranger = Started::Device {
        kind: ProcessKind::RtasServer,
        generation: 77,
    };
    assert!(matches!(
        spawner.ask(&SpawnRequest::Kill(stranger), &[]),
        (SpawnReply::Done, _)
    ));
    let kill_with_a_descriptor = SpawnRequest::Kill(stranger);
    spawner.refused(&kill_with_a_descriptor, &borrowed[..1]);

    // The core goes: the spawner kills what it started and exits.
    let spawner_pid = spawner.pid;
    drop(spawner);
    let deadline = Instant::now() + TIMEOUT;
    while [spawner_pid, pid, standby]
        .into_iter()
        .any(|pid| runs(u64::from(pid)))
    {
        assert!(
            Instant::now() < deadline,
            "the spawner or its child outlived its core"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Reap the spawner (this test is its parent).
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(spawner_pid as i32), None);
    let _ = std::fs::remove_dir_all(dir);
}
