//! Starting inputs for each target: well-formed cases an engine mutates
//! from (scripts/fuzz writes them out), replayed by the tests too.

use ipc_proto::channel::{encode, Envelope};
use ipc_proto::control::{
    Answer, ArmedFault, ControlReply, Fault, FaultAction, FaultPoint, FaultRecord, PendingFault,
    Reply, Request, TraceRecord,
};
use ipc_proto::link::hotplug_eventlog::{HotplugAction, HotplugEvent, HotplugTarget};
use ipc_proto::link::{core_hotplug, core_rtas, hotplug_eventlog, rtas_eventlog, rtas_hotplug};
use ipc_proto::papr::{DrcIndex, RtasCall};
use serde::Serialize;

fn frame<T: Serialize>(selector: u8, body: T) -> Vec<u8> {
    let mut bytes = vec![selector];
    bytes.extend(encode(&Envelope { id: 7, body }).expect("encodes"));
    bytes
}

/// The selector byte of `ipc_frames`: link number, reply or request.
const fn selector(link: u8, reply: bool) -> u8 {
    link << 3 | reply as u8
}

fn ipc_frames() -> Vec<Vec<u8>> {
    let event = HotplugEvent {
        action: HotplugAction::Remove,
        target: HotplugTarget::LmbsCountIndexed {
            count: 2,
            first: DrcIndex(0x8000_0004),
        },
    };
    vec![
        frame(
            selector(0, false),
            Request::Link(core_rtas::Request::Call {
                caller: 0,
                args_address: 0x1000,
                cpus: core_rtas::CpuSnapshot {
                    present: 1,
                    running: 1,
                },
            }),
        ),
        frame(
            selector(1, false),
            Request::Link(core_hotplug::Request::Plug {
                drcs: vec![DrcIndex(0x1000_0001)],
                device: "core1".into(),
                cold: false,
            }),
        ),
        frame(
            selector(1, false),
            Request::Link(core_hotplug::Request::ListDrcs { from: 0 }),
        ),
        frame(
            selector(3, false),
            Request::Link(rtas_hotplug::Request::SetIndicator {
                indicator: 9001,
                drc: 0x1000_0001,
                value: 1,
            }),
        ),
        frame(
            selector(3, true),
            Reply::new(Answer::Link(rtas_hotplug::Reply::Status {
                status: ipc_proto::papr::RtasStatus::Success,
                value: 2,
            })),
        ),
        frame(
            selector(4, false),
            Request::Link(hotplug_eventlog::Request::Queue(event)),
        ),
        frame(
            selector(5, false),
            Request::Link(rtas_eventlog::Request::CheckException {
                mask: 0x0400_0000,
                max_len: 2048,
            }),
        ),
        frame(
            selector(5, true),
            Reply::new(Answer::Link(rtas_eventlog::Reply::Event(vec![0; 116]))),
        ),
        frame(
            selector(1, true),
            Reply::<core_hotplug::Reply>::new(Answer::Control(ControlReply::Trace {
                records: vec![TraceRecord {
                    us: 1,
                    point: "drc-transition".into(),
                    fields: vec![("drc".into(), "0x10000001".into())],
                }],
                dropped: 2,
                more: false,
            })),
        ),
        frame(
            selector(1, true),
            Reply::<core_hotplug::Reply>::new(Answer::Control(ControlReply::Faults {
                armed: Some(FaultRecord {
                    fault: ArmedFault {
                        point: FaultPoint::Received,
                        action: FaultAction::Delay,
                        request: Some("SetIndicator".into()),
                    },
                    fired: 1,
                }),
                pending: vec![PendingFault {
                    fault: Fault::LoseState,
                    left: 1,
                }],
            })),
        ),
    ]
}

/// A `rtas_call` step that writes `cells` at 0x1000 and calls there.
fn call(cells: &[u32]) -> Vec<u8> {
    let mut block: Vec<u8> = cells.iter().flat_map(|c| c.to_be_bytes()).collect();
    block.truncate(255);
    let mut step = vec![3, 0x10, 0x00, 0x10, 0x00, block.len() as u8];
    step.extend(block);
    step
}

fn rtas_call() -> Vec<Vec<u8>> {
    let token = |call: RtasCall| call.token();
    let core1 = 0x1000_0001;
    let lmb = 0x8000_0004;
    let mut seeds = vec![
        [vec![0x33, 0], call(&[token(RtasCall::GetTimeOfDay), 0, 8])].concat(),
        [
            vec![0x33, 0],
            call(&[token(RtasCall::QueryCpuStoppedState), 1, 2, 1]),
        ]
        .concat(),
        [
            vec![0x13, 0],
            call(&[token(RtasCall::StartCpu), 3, 1, 1, 0x100, 0]),
        ]
        .concat(),
        [
            vec![0x11, 0],
            call(&[token(RtasCall::SetXive), 3, 1, 0x1001, 0, 5]),
        ]
        .concat(),
        [
            vec![0x11, 0],
            call(&[
                token(RtasCall::EventScan),
                4,
                1,
                0xffff_ffff,
                0,
                0x2000,
                2048,
            ]),
        ]
        .concat(),
        [
            vec![0x11, 0],
            call(&[token(RtasCall::OsTerm), 1, 1, 0x2000]),
        ]
        .concat(),
    ];
    // A hot plug the guest takes: the add event, sensor, allocate,
    // unisolate, configure-connector walk, then device_del and give back.
    let mut plug = vec![0x33, 0, 0, 1];
    for step in [
        call(&[
            token(RtasCall::CheckException),
            6,
            1,
            0,
            0,
            0x0400_0000,
            0,
            0x2000,
            2048,
        ]),
        call(&[token(RtasCall::GetSensorState), 2, 2, 9003, core1]),
        call(&[token(RtasCall::SetIndicator), 3, 1, 9003, core1, 1]),
        call(&[token(RtasCall::SetIndicator), 3, 1, 9001, core1, 1]),
        call(&[token(RtasCall::ConfigureConnector), 2, 1, 0x3000, 0]),
        call(&[token(RtasCall::ConfigureConnector), 2, 1, 0x3000, 0]),
        call(&[token(RtasCall::ConfigureConnector), 2, 1, 0x3000, 0]),
        vec![1, 1],
        call(&[token(RtasCall::SetIndicator), 3, 1, 9001, core1, 0]),
        call(&[token(RtasCall::SetIndicator), 3, 1, 9003, core1, 0]),
    ] {
        plug.extend(step);
    }
    seeds.push(plug);
    // A DIMM's LMB: plug, then the configure-connector work area.
    let mut dimm = vec![0x11, 0, 0, 4];
    for step in [
        call(&[token(RtasCall::SetIndicator), 3, 1, 9003, lmb, 1]),
        call(&[token(RtasCall::SetIndicator), 3, 1, 9001, lmb, 1]),
        call(&[token(RtasCall::ConfigureConnector), 2, 1, 0x3000, 0]),
    ] {
        dimm.extend(step);
    }
    seeds.push(dimm);
    seeds
}

fn qmp() -> Vec<Vec<u8>> {
    let text = |t: &str| [&[7u8][..], t.as_bytes()].concat();
    vec![
        text(r#"{"execute": "qmp_capabilities"}"#),
        text(concat!(
            r#"{"execute": "qmp_capabilities", "id": 1}"#,
            "\n",
            r#"{"execute": "device_add", "arguments": {"driver": "host-spapr-cpu-core", "core-id": 1, "id": "c1"}, "id": "x"}"#,
            "\n",
            r#"{"execute": "object-add", "arguments": {"qom-type": "memory-backend-memfd", "id": "m", "size": 268435456}}"#,
            r#"{"execute": "query-status"} [1, 2] "text" 12"#,
            "\n",
            r#"{"execute": "device_del", "arguments": {"id": "c1"}}"#,
        )),
        text(r#"{"execute": "query-version", "id": {"a": [1, {"b": null}]}}"#),
        // What libvirt 9.0 asks: its probe, then a DIMM as it plugs one.
        text(concat!(
            r#"{"execute":"qmp_capabilities","id":"libvirt-1"}"#,
            r#"{"execute":"qom-list-types","id":"libvirt-7"}"#,
            r#"{"execute":"device-list-properties","arguments":{"typename":"pc-dimm"},"id":"libvirt-8"}"#,
            r#"{"execute":"qom-list-properties","arguments":{"typename":"memory-backend-file"},"id":"libvirt-18"}"#,
            r#"{"execute":"query-command-line-options","arguments":{"option":"machine"}}"#,
            r#"{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"events","state":true}]}}"#,
            r#"{"execute":"qom-list","arguments":{"path":"/machine/peripheral"}}"#,
            r#"{"execute":"object-add","arguments":{"qom-type":"memory-backend-ram","id":"memdimm0","props":{"size":268435456}}}"#,
            r#"{"execute":"device_add","arguments":{"driver":"pc-dimm","memdev":"memdimm0","id":"dimm0","slot":0,"node":0}}"#,
        )),
    ]
}

/// libvirt's command lines: its probe, and a domain's start.
fn qemu_command_line() -> Vec<Vec<u8>> {
    let line = |words: &[&str]| words.join("\0").into_bytes();
    vec![
        line(&[
            "-S",
            "-no-user-config",
            "-nodefaults",
            "-nographic",
            "-machine",
            "none,accel=kvm:tcg",
            "-qmp",
            "unix:/q,server=on,wait=off",
            "-pidfile",
            "/p",
            "-daemonize",
        ]),
        line(&[
            "-name",
            "guest=pv1,debug-threads=on",
            "-S",
            "-object",
            r#"{"qom-type":"secret","id":"masterKey0","format":"raw","file":"/k"}"#,
            "-machine",
            "pseries,usb=off,dump-guest-core=off",
            "-accel",
            "tcg",
            "-m",
            "size=524288k,slots=4,maxmem=2097152k",
            "-smp",
            "1,maxcpus=4,sockets=4,cores=1,threads=1",
            "-chardev",
            "socket,id=charmonitor,fd=31,server=on,wait=off",
            "-mon",
            "chardev=charmonitor,id=monitor,mode=control",
            "-chardev",
            "pty,id=charserial0",
            "-device",
            r#"{"driver":"spapr-vty","chardev":"charserial0","id":"serial0","reg":805306368}"#,
        ]),
    ]
}

/// One request of each kind, each with the descriptors it takes (a start
/// of each kind alone, and of all three at once), and one with one too many.
fn spawner_requests() -> Vec<Vec<u8>> {
    use ipc_proto::spawner::{descriptors_of, DeviceStart, SpawnRequest, Started};
    use ipc_proto::ProcessKind;
    let frame = |fds: usize, request: SpawnRequest| {
        let bytes = ipc_proto::channel::encode(&ipc_proto::channel::Envelope {
            id: 7,
            body: request,
        })
        .expect("a seed encodes");
        [vec![fds as u8], bytes].concat()
    };
    let device = |kind, generation| DeviceStart {
        kind,
        generation,
        resume: true,
        upgrade: Some("/opt/papervisor/papervisor-rtas".into()),
    };
    let mut seeds: Vec<Vec<u8>> = ProcessKind::ALL
        .into_iter()
        .map(|kind| {
            frame(
                descriptors_of(kind),
                SpawnRequest::Start(vec![device(kind, 3)]),
            )
        })
        .collect();
    seeds.push(frame(
        ProcessKind::ALL.into_iter().map(descriptors_of).sum(),
        SpawnRequest::Start(
            ProcessKind::ALL
                .into_iter()
                .zip(4..)
                .map(|(kind, generation)| device(kind, generation))
                .collect(),
        ),
    ));
    seeds.push(frame(1, SpawnRequest::StartReaper { generation: 1 }));
    seeds.push(frame(
        0,
        SpawnRequest::Kill(Started::Device {
            kind: ProcessKind::EventLog,
            generation: 2,
        }),
    ));
    seeds.push(frame(
        2,
        SpawnRequest::Kill(Started::Reaper { generation: 1 }),
    ));
    seeds
}

/// A guest's first steps on a function: size BAR 4 (both halves), place
/// it, turn memory decoding on, enable MSI-X; and one access of each bad
/// kind.
fn pci_config() -> Vec<Vec<u8>> {
    let access = |write: bool, register: u16, size: u8, value: u32| {
        let mut bytes = vec![u8::from(write)];
        bytes.extend_from_slice(&register.to_le_bytes());
        bytes.push(size);
        bytes.extend_from_slice(&value.to_le_bytes());
        bytes.extend_from_slice(&[0, 0]);
        bytes
    };
    let driver = [
        access(true, 0x20, 4, u32::MAX),
        access(true, 0x24, 4, u32::MAX),
        access(false, 0x20, 4, 0),
        access(true, 0x20, 4, 0x8000_0000),
        access(true, 0x24, 4, 0x210),
        access(true, 0x04, 2, 0x0006),
        access(true, 0x42, 2, 0x8000),
    ]
    .concat();
    let bad = [
        access(false, 0x02, 4, 0),
        access(true, 0x10, 3, 0),
        access(false, 0x0fff, 2, 0),
        access(true, 0xffff, 1, 0),
    ]
    .concat();
    vec![driver, bad]
}

/// A driver's bring-up of queue 0 (negotiation, setup, DRIVER_OK), then
/// a reset; and accesses at no register.
/// Requests as a driver lays them out: header, data, status.
fn blk_request() -> Vec<Vec<u8>> {
    let descriptor = |addr: u32, units: u16, flags: u8| {
        let mut bytes = addr.to_le_bytes().to_vec();
        bytes.extend_from_slice(&(units - 1).to_le_bytes());
        bytes.extend_from_slice(&[flags, 0]);
        bytes
    };
    let request = |read_only: u8, kind: u32, sector: u64, data_units: u16, to_guest: bool| {
        let mut bytes = vec![2 | read_only << 3];
        bytes.extend(descriptor(0x8_0000, 1, 0));
        bytes.extend(descriptor(
            0x9_0000,
            data_units,
            if to_guest { 2 } else { 0 },
        ));
        bytes.extend(descriptor(0xa_0000, 1, 2));
        bytes.extend_from_slice(&kind.to_le_bytes());
        bytes.extend_from_slice(&[0; 4]);
        bytes.extend_from_slice(&sector.to_le_bytes());
        bytes
    };
    vec![
        request(0, 0, 3, 32, true),
        request(0, 1, 3, 32, false),
        request(1, 1, 0, 32, false),
        request(0, 4, 0, 1, false),
        request(0, 8, 0, 2, true),
        request(0, 11, 0, 1, false),
        request(0, 13, 0, 1, false),
        request(0, 1, 127, 64, false),
    ]
}

fn virtio_common() -> Vec<Vec<u8>> {
    let write = |offset: u8, size: u8, value: u32| {
        let mut bytes = vec![1, offset, size, 0];
        bytes.extend_from_slice(&value.to_le_bytes());
        bytes
    };
    let bring_up = [
        write(0x14, 1, 1),
        write(0x14, 1, 3),
        write(0x08, 4, 1),
        write(0x0c, 4, 1),
        write(0x14, 1, 11),
        write(0x16, 2, 0),
        write(0x18, 2, 128),
        write(0x20, 4, 0x1000),
        write(0x28, 4, 0x2000),
        write(0x30, 4, 0x3000),
        write(0x1c, 2, 1),
        write(0x14, 1, 15),
        write(0x14, 1, 0),
    ]
    .concat();
    let nowhere = [write(0x02, 2, 1), write(0x14, 4, 15), write(0x40, 4, 0)].concat();
    vec![bring_up, nowhere]
}

/// A vhost-user reply to request `code` carrying `payload`.
fn vhost_reply(code: u32, payload: &[u8]) -> Vec<u8> {
    // Version 1, a reply.
    let mut bytes = [code, 0x5, payload.len() as u32]
        .iter()
        .flat_map(|word| word.to_le_bytes())
        .collect::<Vec<u8>>();
    bytes.extend_from_slice(payload);
    bytes
}

/// A backend's replies to a connect, a start and a stop: with and without
/// REPLY_ACK (which acknowledges every message that has no reply).
fn vhost_user_replies() -> Vec<Vec<u8>> {
    const GET_FEATURES: u32 = 1;
    const GET_PROTOCOL_FEATURES: u32 = 15;
    const GET_CONFIG: u32 = 24;
    const GET_VRING_BASE: u32 = 11;
    let features = ((1u64 << 32) | (1 << 30) | (1 << 9)).to_le_bytes();
    let config = {
        let mut payload = [0u32, 0x3c, 0]
            .iter()
            .flat_map(|word| word.to_le_bytes())
            .collect::<Vec<u8>>();
        let mut space = vec![0u8; 0x3c];
        space[..8].copy_from_slice(&2048u64.to_le_bytes());
        payload.extend(space);
        payload
    };
    let base = [0u32, 5]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect::<Vec<u8>>();
    let plain = [
        vhost_reply(GET_FEATURES, &features),
        vhost_reply(GET_PROTOCOL_FEATURES, &(1u64 << 9).to_le_bytes()),
        vhost_reply(GET_CONFIG, &config),
        vhost_reply(GET_VRING_BASE, &base),
    ]
    .concat();
    // CONFIG | REPLY_ACK: set-owner and every set afterwards is acknowledged.
    let ack = |code: u32| vhost_reply(code, &0u64.to_le_bytes());
    let mut acked = vec![
        vhost_reply(GET_FEATURES, &features),
        vhost_reply(
            GET_PROTOCOL_FEATURES,
            &((1u64 << 9) | (1 << 3)).to_le_bytes(),
        ),
        vhost_reply(GET_CONFIG, &config),
    ];
    // SET_FEATURES, SET_VRING_NUM, _BASE, _ADDR, _CALL, _KICK, _ENABLE.
    for code in [2u32, 8, 10, 9, 13, 12, 18, 18] {
        acked.push(ack(code));
    }
    acked.push(vhost_reply(GET_VRING_BASE, &base));
    vec![plain, acked.concat(), vhost_reply(GET_FEATURES, &[0; 4])]
}

/// A region whose every entry claims to be in flight, one fresh, one of a
/// queue of 4 that recorded two requests.
fn inflight_region() -> Vec<Vec<u8>> {
    let mut lying = vec![255u8, 3, 0];
    lying.extend(std::iter::repeat_n(1u8, 16 + 16 * 255));
    let mut two = vec![4u8, 2, 0];
    // Version 1, 4 entries, last head 1, used index 1.
    two.extend([0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 4, 0, 1, 0, 1, 0]);
    for (inflight, counter) in [(1u8, 1u64), (0, 2), (1, 3), (0, 0)] {
        two.extend([inflight, 0, 0, 0, 0, 0, 0, 0]);
        two.extend(counter.to_le_bytes());
    }
    vec![lying, vec![16, 0, 0], two]
}

/// Seeds for target `name`.
pub fn seeds(name: &str) -> Vec<Vec<u8>> {
    match name {
        "ipc_frames" => ipc_frames(),
        "rtas_call" => rtas_call(),
        "qmp" => qmp(),
        "qemu_command_line" => qemu_command_line(),
        "event_roundtrip" => vec![vec![0; 40], vec![3; 40], vec![4; 40], (0..40).collect()],
        "spawner_requests" => spawner_requests(),
        "pci_config" => pci_config(),
        "virtio_common" => virtio_common(),
        "blk_request" => blk_request(),
        "vhost_user_replies" => vhost_user_replies(),
        "inflight_region" => inflight_region(),
        // Plug at slot 3, read the ids, enable memory, MSI-X for two.
        "pci_bridge" => vec![
            [
                0u8, 0x18, 0, 0, 0, 0, 0, 0, 2, 0x18, 0, 0, 4, 0, 0, 0, 3, 0x18, 4, 0, 2, 6, 0, 0,
                4, 0x18, 0, 0, 4, 2, 0, 0, 5, 0x18, 0, 0, 0, 1, 0, 0,
            ]
            .to_vec(),
            [
                0u8, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 4, 8, 0, 0, 4, 8, 0,
                0, 4, 8, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0,
            ]
            .to_vec(),
            // Plug at slot 3, decode memory, BAR 4 at bus 0x8080_0000;
            // read the common configuration, drive the status to
            // DRIVER_OK, ring the queue.
            [
                [0u8, 0x18, 0, 0, 0, 0, 0, 0],
                [3, 0x18, 4, 0, 2, 6, 0, 0],
                [3, 0x18, 0x20, 0, 4, 0, 0, 0x80],
                [6, 0x18, 0, 0, 2, 0x80, 0, 0],
                [7, 0x18, 0x14, 0, 0, 0x80, 1, 0],
                [7, 0x18, 0x14, 0, 0, 0x80, 3, 0],
                [7, 0x18, 0x14, 0, 0, 0x80, 11, 0],
                [7, 0x18, 0x1c, 0, 1, 0x80, 1, 0],
                [7, 0x18, 0x14, 0, 0, 0x80, 15, 0],
                [7, 0x18, 0x00, 0x30, 1, 0x80, 0, 0],
                [6, 0x18, 0x00, 0x20, 2, 0x80, 0, 0],
            ]
            .concat(),
        ],
        "fdt_roundtrip" => vec![
            vec![1, 1, 3, 1, 8, 4, 0xff, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 2],
            vec![0; 20],
        ],
        _ => Vec::new(),
    }
}
