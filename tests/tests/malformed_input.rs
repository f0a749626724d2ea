//! Malformed input from every side is answered with an error and the
//! receiver keeps serving: IPC frames sent to the RTAS server process by a
//! fake core, and bad QMP sent to the core. (Malformed replies sent to the
//! core by a fake device process are unit tests in vmm/src/devices/proxy.rs.)

use ipc_proto::channel::{encode, Channel, Envelope, MAX_FDS, MAX_FRAME};
use ipc_proto::control::{Answer, Refusal, Reply, Request};
use ipc_proto::link::core_rtas::{
    CallRefusal, CpuSnapshot, MemoryRegion, Reply as RtasReply, Request as RtasRequest,
};
use ipc_proto::ProcessKind;
use nix::sys::wait::WaitStatus;
use papervisor_tests::{binary, kvm_usable, plain_binary, Vm};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

const REPLY_TIMEOUT: Option<Duration> = Some(Duration::from_secs(5));

/// Starts papervisor-rtas (unjailed, with its filter) with channels whose
/// other ends this test holds, in the order of its links.
fn spawn_rtas_server() -> (Vec<Channel>, Child) {
    spawn_rtas_program(&binary("papervisor-rtas"))
}

fn spawn_rtas_program(program: &std::path::Path) -> (Vec<Channel>, Child) {
    let links = ProcessKind::RtasServer.links();
    let pairs: Vec<(Channel, Channel)> = links.iter().map(|_| Channel::pair().unwrap()).collect();
    let fds: Vec<_> = pairs
        .iter()
        .map(|(_, theirs)| theirs.as_fd().as_raw_fd())
        .collect();
    // As the core starts it.
    let pid = jailer::spawn::spawn_with_descriptors(
        program,
        &[] as &[&str],
        &fds,
        ipc_proto::FIRST_CHANNEL_FD,
        None,
    )
    .unwrap();
    (
        pairs.into_iter().map(|(ours, _)| ours).collect(),
        Child(pid),
    )
}

/// A device process this test started; killed if the test ends first.
struct Child(u32);

impl Child {
    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.0 as i32)
    }

    /// Its end, once it comes.
    fn wait(&mut self) -> WaitStatus {
        let status = nix::sys::wait::waitpid(self.pid(), None).unwrap();
        self.0 = 0;
        status
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.0 != 0 {
            let _ = nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(self.pid(), None);
        }
    }
}

/// Starts papervisor-rtas with this test as its core, hotplug controller
/// and event log; returns the core's channel.
fn start_rtas_server() -> (Channel, Vec<Channel>, Child) {
    start_rtas_program(&binary("papervisor-rtas"))
}

fn start_rtas_program(program: &std::path::Path) -> (Channel, Vec<Channel>, Child) {
    let links = ProcessKind::RtasServer.links();
    let (mut ours, child) = spawn_rtas_program(program);
    for (channel, &link) in ours.iter().zip(links) {
        channel.handshake(link, Duration::from_secs(5)).unwrap();
    }
    let core = ours.remove(0);
    (core, ours, child)
}

fn reply(channel: &Channel) -> Envelope<Reply<RtasReply>> {
    channel.recv::<Reply<RtasReply>>(REPLY_TIMEOUT).unwrap().0
}

fn refused(answer: &Envelope<Reply<RtasReply>>) -> bool {
    matches!(answer.body.answer, Answer::Refused(_))
}

fn request(id: u64, body: RtasRequest) -> Envelope<Request<RtasRequest>> {
    Envelope {
        id,
        body: Request::Link(body),
    }
}

fn assert_alive(child: &mut Child) {
    let now = nix::sys::wait::waitpid(child.pid(), Some(nix::sys::wait::WaitPidFlag::WNOHANG));
    assert_eq!(now, Ok(WaitStatus::StillAlive), "the RTAS server died");
}

#[test]
fn the_rtas_server_rejects_bad_frames_and_keeps_serving() {
    let (channel, _peers, mut child) = start_rtas_server();
    let call = request(
        7,
        RtasRequest::Call {
            caller: 0,
            args_address: 0x1000,
            cpus: CpuSnapshot::default(),
        },
    );
    let good = encode(&call).unwrap();
    let bad_frames: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 7],
        good[..good.len() - 1].to_vec(),
        [good.clone(), vec![1, 2, 3]].concat(),
        // A vCPU id out of range.
        encode(&request(
            8,
            RtasRequest::Call {
                caller: 1000,
                args_address: 0,
                cpus: CpuSnapshot::default(),
            },
        ))
        .unwrap(),
        // A memory table without its descriptors.
        encode(&request(
            9,
            RtasRequest::SetMemoryTable {
                regions: vec![MemoryRegion {
                    guest_address: 0,
                    size: 4096,
                    file_offset: 0,
                }],
            },
        ))
        .unwrap(),
        // A re-link of a link that is the core's.
        encode(&Envelope {
            id: 10,
            body: Request::<RtasRequest>::Control(ipc_proto::control::ControlRequest::ReplaceLink(
                ipc_proto::Link::CoreHotplug,
            )),
        })
        .unwrap(),
    ];
    for frame in &bad_frames {
        channel.send_frame(frame, &[]).unwrap();
        let answer = reply(&channel);
        assert!(refused(&answer), "{frame:?} got {answer:?}");
        assert_alive(&mut child);
    }
    // Random frames, deterministic.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..300 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let len = 1 + (state % 48) as usize;
        let frame: Vec<u8> = (0..len).map(|i| (state >> ((i % 8) * 8)) as u8).collect();
        channel.send_frame(&frame, &[]).unwrap();
        let _ = reply(&channel);
    }
    assert_alive(&mut child);

    // An oversized frame (sent raw, past our own sender's check).
    nix::sys::socket::send(
        channel.as_fd().as_raw_fd(),
        &vec![0u8; MAX_FRAME + 100],
        nix::sys::socket::MsgFlags::empty(),
    )
    .unwrap();
    assert!(refused(&reply(&channel)));

    // Too many descriptors: the kernel cuts them, the server says so.
    let memfd = nix::sys::memfd::memfd_create("t", nix::sys::memfd::MFdFlags::empty()).unwrap();
    let many: Vec<_> = (0..MAX_FDS).map(|_| memfd.as_fd()).collect();
    channel.send_frame(&good, &many).unwrap();
    assert!(refused(&reply(&channel)));

    // A call before any memory table: refused, not a crash.
    channel.send(&call, &[]).unwrap();
    let answer = reply(&channel);
    assert_eq!(answer.id, 7);
    assert_eq!(
        answer.body.answer,
        Answer::Link(RtasReply::CallRefused(CallRefusal::NoMemory))
    );

    // A memory table whose file is too short to back it.
    let file = std::fs::File::from(memfd);
    file.set_len(4096).unwrap();
    let table = |size| {
        request(
            10,
            RtasRequest::SetMemoryTable {
                regions: vec![MemoryRegion {
                    guest_address: 0,
                    size,
                    file_offset: 0,
                }],
            },
        )
    };
    channel.send(&table(1 << 20), &[file.as_fd()]).unwrap();
    let answer = reply(&channel);
    assert!(
        matches!(&answer.body.answer, Answer::Refused(Refusal::Rejected { reason }) if reason.contains("4096-byte file")),
        "{answer:?}"
    );

    // And after all that, real work: map 64 KiB and make a real call.
    file.set_len(64 * 1024).unwrap();
    channel.send(&table(64 * 1024), &[file.as_fd()]).unwrap();
    assert_eq!(reply(&channel).body.answer, Answer::Ack);
    // rtas_args at 0x1000: token get-time-of-day, nargs 0, nret 8.
    use std::os::unix::fs::FileExt;
    let header: Vec<u8> = [0x2001u32, 0, 8]
        .iter()
        .flat_map(|c| c.to_be_bytes())
        .collect();
    file.write_all_at(&header, 0x1000).unwrap();
    channel.send(&call, &[]).unwrap();
    assert_eq!(
        reply(&channel).body.answer,
        Answer::Link(RtasReply::CallDone { request: None })
    );
    let mut status = [0xffu8; 4];
    file.read_exact_at(&mut status, 0x1000 + 12).unwrap();
    assert_eq!(u32::from_be_bytes(status), 0, "get-time-of-day status");
    let mut year = [0u8; 4];
    file.read_exact_at(&mut year, 0x1000 + 16).unwrap();
    assert!(u32::from_be_bytes(year) >= 2024);

    drop(channel);
    let status = child.wait();
    assert!(
        matches!(status, WaitStatus::Exited(_, 0)),
        "the server exits cleanly when the core hangs up: {status:?}"
    );
}

#[test]
fn a_plain_build_refuses_to_arm_a_fault_and_a_fault_injection_build_commits_it() {
    let arm = Envelope {
        id: 3,
        body: Request::<RtasRequest>::Control(ipc_proto::control::ControlRequest::ArmFault(
            ipc_proto::control::Fault::OpenHostFile,
        )),
    };
    let (channel, _peers, mut child) = start_rtas_program(&plain_binary("papervisor-rtas"));
    channel.send(&arm, &[]).unwrap();
    let answer = reply(&channel);
    assert_eq!(answer.id, 3);
    assert_eq!(
        answer.body.answer,
        Answer::Refused(Refusal::FaultInjectionNotBuilt)
    );
    assert_alive(&mut child);
    drop(channel);
    assert!(matches!(child.wait(), WaitStatus::Exited(_, 0)));

    let (channel, _peers, mut child) = start_rtas_server();
    channel.send(&arm, &[]).unwrap();
    // Killed by its filter for the attempt: no answer, a hang-up.
    assert!(matches!(
        channel.recv::<Reply<RtasReply>>(REPLY_TIMEOUT),
        Err(ipc_proto::channel::ChannelError::HungUp)
    ));
    assert!(matches!(
        child.wait(),
        WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGSYS, _)
    ));
}

#[test]
fn the_rtas_server_refuses_a_wrong_handshake() {
    let links = ProcessKind::RtasServer.links();
    let (ours, mut child) = spawn_rtas_server();
    ours[0]
        .send(
            &Envelope {
                id: 0,
                body: ipc_proto::hello::Hello {
                    version: ipc_proto::PROTOCOL_VERSION + 1,
                    link: ipc_proto::Link::CoreRtas,
                },
            },
            &[],
        )
        .unwrap();
    for (channel, &link) in ours.iter().zip(links).skip(1) {
        channel.send_hello(link).unwrap();
    }
    let status = child.wait();
    assert!(
        !matches!(status, WaitStatus::Exited(_, 0)),
        "a server speaking another version must not serve: {status:?}"
    );
}

#[test]
fn qmp_answers_malformed_input_with_errors_and_keeps_serving() {
    if !kvm_usable("qmp_answers_malformed_input_with_errors_and_keeps_serving") {
        return;
    }
    let mut vm = Vm::start(&[]);
    vm.boot();
    let stream = UnixStream::connect(vm.qmp_socket()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut next = || -> serde_json::Value {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    };
    assert!(next()["QMP"]["version"].is_object(), "greeting");
    let huge = format!("{{\"execute\": \"{}\"}}", "x".repeat(100_000));
    let inputs: Vec<(&str, &str)> = vec![
        ("{\"execute\": \"query-status\"}", "CommandNotFound"),
        ("this is not json", "GenericError"),
        ("{\"execute\": \"qmp_capabilities\"}", ""),
        ("{\"execute\": }", "GenericError"),
        ("[\"execute\", \"quit\"]", "GenericError"),
        ("{\"execute\": [1]}", "GenericError"),
        ("{\"exec\": \"quit\"}", "GenericError"),
        (
            "{\"execute\": \"no-such-command\", \"id\": 5}",
            "CommandNotFound",
        ),
        (
            "{\"execute\": \"system_reset\", \"arguments\": {\"x\": 1}}",
            "GenericError",
        ),
        (huge.as_str(), "GenericError"),
        ("\u{0}\u{1}\u{2}", "GenericError"),
    ];
    for (input, class) in inputs {
        writer.write_all(input.as_bytes()).unwrap();
        writer.write_all(b"\n").unwrap();
        let reply = next();
        if class.is_empty() {
            assert_eq!(reply["return"], serde_json::json!({}), "{input}");
        } else {
            assert_eq!(
                reply["error"]["class"],
                class,
                "{} -> {reply}",
                &input[..input.len().min(40)]
            );
        }
    }
    writer
        .write_all(b"{\"execute\": \"query-status\", \"id\": \"after\"}\n")
        .unwrap();
    let reply = next();
    assert_eq!(reply["id"], "after");
    assert_eq!(reply["return"]["status"], "running");
    // The guest did not notice.
    assert!(vm.console.command("time")[0].starts_with("time: 20"));
}
