//! QMP, the QEMU Machine Protocol, on a Unix socket: QEMU's greeting,
//! capabilities negotiation, framing, ids and error classes, so that existing
//! clients (such as the `qemu.qmp` Python package) drive Papervisor unchanged.
//!
//! Input is untrusted: it is split into JSON values by a bounded scanner
//! ([`JsonSplitter`]) before parsing, so no client can make the core buffer
//! more than [`MAX_REQUEST`] bytes, and every bad request gets an error reply.

pub mod arguments;
pub mod catalog;
pub mod hmp;
pub mod outbox;
pub mod schema;

use crate::control::ControlMessage;
use crate::request::{MachineRequest, QmpError};
use outbox::{Outbox, Refused};
use schema::Command;
use serde_json::{json, Map, Value};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The largest request accepted.
pub const MAX_REQUEST: usize = 64 * 1024;
/// How long a command that needs the machine may wait for it.
const MACHINE_TIMEOUT: Duration = Duration::from_secs(30);
/// Clients served at once. When all slots are taken, the oldest client
/// that never negotiated is dropped to make room; if every client has
/// negotiated, the new one is refused with a message.
const MAX_CLIENTS: usize = 16;
/// How long a client has to negotiate capabilities.
const NEGOTIATION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one write to a client may block before it is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// The pause after a failed accept (e.g. no descriptor left), so that the
/// accept thread does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What the QMP server needs from the VM.
#[derive(Clone)]
pub struct QmpContext {
    /// Where commands that need the machine go.
    pub control: Sender<ControlMessage>,
    /// For query-status, answered without the control loop.
    pub cpus: Arc<crate::vcpu::CpuTable>,
    /// `--name`, for query-name.
    pub name: Option<String>,
    /// `--uuid`, for query-uuid.
    pub uuid: Option<String>,
    /// A machine runs on KVM (not `--no-machine`), for query-kvm.
    pub machine: bool,
    /// /dev/kvm could be opened at start, for query-kvm (a QMP thread
    /// opens no file).
    pub kvm_present: bool,
    /// The migration capability `events`, as a client set it.
    pub migration_events: Arc<std::sync::atomic::AtomicBool>,
}

/// One connected client, as the server sees it.
struct Client {
    id: u64,
    /// Replies and events, written in order by the client's writer thread.
    outbox: Arc<Outbox>,
    /// To disconnect it from another thread.
    socket: UnixStream,
    negotiated: bool,
}

impl Client {
    fn disconnect(&self) {
        self.outbox.close();
        let _ = self.socket.shutdown(Shutdown::Both);
    }
}

/// Serves QMP clients and sends them events. Nothing waits for a client:
/// each has a bounded queue drained by a writer thread of its own.
#[derive(Default)]
pub struct QmpServer {
    clients: Mutex<Vec<Client>>,
    next_id: AtomicU64,
}

impl QmpServer {
    /// Serves `listener` from a thread of its own.
    pub fn serve(
        self: &Arc<Self>,
        listener: UnixListener,
        context: QmpContext,
    ) -> std::io::Result<()> {
        let acceptor = Arc::clone(self);
        thread::Builder::new()
            .name("qmp-accept".into())
            .spawn(move || {
                crate::seccomp::confine_or_exit(crate::seccomp::ThreadKind::Qmp);
                acceptor.accept_loop(listener, context)
            })?;
        Ok(())
    }

    fn clients(&self) -> MutexGuard<'_, Vec<Client>> {
        common::lock(&self.clients)
    }

    fn accept_loop(self: Arc<Self>, listener: UnixListener, context: QmpContext) {
        loop {
            let stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(error) => {
                    log::warn!("qmp: accept failed: {error}; pausing {ACCEPT_BACKOFF:?}");
                    thread::sleep(ACCEPT_BACKOFF);
                    continue;
                }
            };
            if let Err(error) = self.start_client(stream, &context) {
                log::warn!("qmp: cannot serve a new client: {error}");
            }
        }
    }

    fn start_client(
        self: &Arc<Self>,
        stream: UnixStream,
        context: &QmpContext,
    ) -> std::io::Result<()> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let outbox = Outbox::new();
        let admitted = {
            let mut clients = self.clients();
            if clients.len() >= MAX_CLIENTS {
                if let Some(oldest) = clients.iter().find(|c| !c.negotiated) {
                    log::warn!("qmp: all {MAX_CLIENTS} slots taken; dropping client {} that never negotiated", oldest.id);
                    oldest.disconnect();
                    let oldest = oldest.id;
                    clients.retain(|c| c.id != oldest);
                }
            }
            let admitted = clients.len() < MAX_CLIENTS;
            if admitted {
                clients.push(Client {
                    id,
                    outbox: Arc::clone(&outbox),
                    socket: stream.try_clone()?,
                    negotiated: false,
                });
            }
            admitted
        };
        if !admitted {
            // Refused outside the lock, in a write that waits WRITE_TIMEOUT
            // at most: the accept thread alone waits for this client.
            let mut stream = stream;
            let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
            let refusal = error_reply(None, "GenericError", "too many QMP clients");
            let _ = stream.write_all(frame(&refusal).as_bytes());
            return Ok(());
        }
        let writer = stream.try_clone()?;
        writer.set_write_timeout(Some(WRITE_TIMEOUT))?;
        let queue = Arc::clone(&outbox);
        let spawned = thread::Builder::new()
            .name("qmp-writer".into())
            .spawn(move || write_loop(id, writer, &queue));
        if let Err(error) = spawned {
            self.forget(id);
            return Err(error);
        }
        let server = Arc::clone(self);
        let context = context.clone();
        let spawned = thread::Builder::new()
            .name("qmp-client".into())
            .spawn(move || {
                if let Err(error) = server.serve_client(id, &stream, &outbox, &context) {
                    log::debug!("qmp: client {id} gone: {error}");
                }
                let _ = stream.shutdown(Shutdown::Both);
                server.forget(id);
            });
        if let Err(error) = spawned {
            self.forget(id);
            return Err(error);
        }
        Ok(())
    }

    /// Removes a client: its outbox closes, so its writer ends, and with it
    /// the last descriptor of its socket.
    fn forget(&self, id: u64) {
        self.clients().retain(|c| {
            if c.id == id {
                c.disconnect();
            }
            c.id != id
        });
    }

    /// Queues an event for every negotiated client. A client whose queue is
    /// full is not reading: it is disconnected, and nobody waits for it.
    pub fn emit(&self, event: &str, data: Value) {
        crate::trace::record(
            ipc_proto::control::trace_point::QMP_EVENT,
            || json!({"event": event, "data": data}),
        );
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let message = json!({
            "event": event,
            "data": data,
            "timestamp": {"seconds": now.as_secs(), "microseconds": now.subsec_micros()},
        });
        let text: Arc<str> = frame(&message).into();
        self.clients().retain(|client| {
            if !client.negotiated {
                return true;
            }
            match client.outbox.offer(Arc::clone(&text)) {
                Ok(()) => true,
                Err(Refused::Full) => {
                    log::warn!(
                        "qmp: client {} does not read ({} bytes wait for it): disconnecting it",
                        client.id,
                        client.outbox.queued_bytes()
                    );
                    client.disconnect();
                    false
                }
                Err(Refused::Closed) => false,
            }
        });
    }

    fn serve_client(
        &self,
        id: u64,
        stream: &UnixStream,
        outbox: &Outbox,
        context: &QmpContext,
    ) -> std::io::Result<()> {
        let refused = |_| std::io::Error::other("the client does not read its replies");
        // Waits for room: the next request is read once the client has
        // read enough of what it was sent.
        let send = |text: Arc<str>| outbox.send(text).map_err(refused);
        send(frame(&greeting()).into())?;
        stream.set_read_timeout(Some(NEGOTIATION_TIMEOUT))?;
        let mut session = Session::new(context);
        let mut splitter = JsonSplitter::default();
        let mut buf = [0u8; 4096];
        let mut reader = stream;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(n) => n,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    log::info!("qmp: client {id} did not negotiate within {NEGOTIATION_TIMEOUT:?}: disconnecting it");
                    return Ok(());
                }
                Err(error) => return Err(error),
            };
            if n == 0 {
                return Ok(());
            }
            for item in splitter.push(&buf[..n]) {
                let (reply, after) = match item {
                    Ok(text) => session.handle(&text),
                    Err(too_long) => (error_reply(None, "GenericError", &too_long), None),
                };
                // Only the text is kept while it waits for room.
                let reply: Arc<str> = frame(&reply).into();
                match after {
                    Some(After::Negotiated) => {
                        // The reply is queued and the client starts getting
                        // events under one lock: no event is lost in between,
                        // and none comes before the reply.
                        let mut clients = self.clients();
                        // Under the lock, nothing may wait.
                        outbox.offer(reply).map_err(refused)?;
                        if let Some(client) = clients.iter_mut().find(|c| c.id == id) {
                            client.negotiated = true;
                        }
                        drop(clients);
                        reader.set_read_timeout(None)?;
                    }
                    Some(After::Send(message)) => {
                        send(reply)?;
                        let _ = context.control.send(message);
                    }
                    None => send(reply)?,
                }
            }
        }
    }
}

/// Writes a client's messages in order until its outbox closes or a write
/// fails (or blocks longer than [`WRITE_TIMEOUT`]), which closes it.
fn write_loop(id: u64, mut stream: UnixStream, outbox: &Outbox) {
    while let Some(text) = outbox.next() {
        if let Err(error) = stream.write_all(text.as_bytes()) {
            if matches!(
                error.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) {
                log::warn!(
                    "qmp: client {id} read nothing for {WRITE_TIMEOUT:?} ({} bytes wait for it): disconnecting it",
                    outbox.queued_bytes()
                );
            } else {
                log::debug!("qmp: client {id} gone while written to: {error}");
            }
            outbox.close();
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
        outbox.written(&text);
    }
}

/// A message as it goes on the wire.
fn frame(message: &Value) -> String {
    let mut text = message.to_string();
    text.push_str("\r\n");
    text
}

/// What the greeting and query-version say: the QEMU version whose QMP
/// commands Papervisor follows, and what it is.
fn version() -> Value {
    json!({
        "qemu": {"major": 9, "minor": 0, "micro": 0},
        "package": concat!(
            "papervisor ",
            env!("CARGO_PKG_VERSION"),
            " (a multi-process PAPR VMM; QEMU's QMP, the commands of query-commands)"
        ),
    })
}

/// query-stats' answer with only the providers and vCPUs (by QOM path) the
/// client named, if it named any.
fn filter_stats(answer: Value, arguments: &Map<String, Value>) -> Value {
    let vcpus: Option<Vec<&str>> = arguments
        .get("vcpus")
        .and_then(Value::as_array)
        .map(|paths| paths.iter().filter_map(Value::as_str).collect());
    let providers: Option<Vec<&str>> = arguments
        .get("providers")
        .and_then(Value::as_array)
        .map(|list| list.iter().filter_map(|p| p["provider"].as_str()).collect());
    let Value::Array(results) = answer else {
        return answer;
    };
    Value::Array(
        results
            .into_iter()
            .filter(|result| {
                let path = result["qom-path"].as_str();
                vcpus
                    .as_ref()
                    .is_none_or(|wanted| path.is_some_and(|p| wanted.contains(&p)))
            })
            .filter(|result| {
                let provider = result["provider"].as_str().unwrap_or_default();
                providers
                    .as_ref()
                    .is_none_or(|wanted| wanted.contains(&provider))
            })
            .collect(),
    )
}

/// query-uuid of a VM started without `--uuid`, as QEMU answers.
const NO_UUID: &str = "00000000-0000-0000-0000-000000000000";

/// Whether this process can open /dev/kvm.
pub fn kvm_present() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

fn greeting() -> Value {
    json!({"QMP": {"version": version(), "capabilities": []}})
}

fn error_reply(id: Option<&Value>, class: &str, desc: &str) -> Value {
    let mut reply = json!({"error": {"class": class, "desc": desc}});
    if let Some(id) = id {
        reply["id"] = id.clone();
    }
    reply
}

/// What the connection does after writing a reply.
pub enum After {
    /// The client negotiated capabilities: commands are accepted now.
    Negotiated,
    /// A message for the control loop.
    Send(ControlMessage),
}

/// One client's conversation: negotiation, then commands, each line of
/// text answered with one reply.
pub struct Session<'a> {
    negotiated: bool,
    context: &'a QmpContext,
}

type CommandResult = Result<(Value, Option<After>), QmpError>;

impl<'a> Session<'a> {
    /// A client that has not negotiated yet.
    pub fn new(context: &'a QmpContext) -> Session<'a> {
        Session {
            negotiated: false,
            context,
        }
    }

    /// Answers one request (a JSON text the splitter cut out).
    pub fn handle(&mut self, text: &str) -> (Value, Option<After>) {
        let request: Value = match serde_json::from_str(text) {
            Ok(value) => value,
            Err(error) => {
                return (
                    error_reply(None, "GenericError", &format!("JSON parse error, {error}")),
                    None,
                )
            }
        };
        let Value::Object(request) = request else {
            return (
                error_reply(None, "GenericError", "QMP input must be a JSON object"),
                None,
            );
        };
        let id = request.get("id");
        match self.dispatch(&request) {
            Ok((value, after)) => {
                let mut reply = json!({"return": value});
                if let Some(id) = id {
                    reply["id"] = id.clone();
                }
                (reply, after)
            }
            Err(QmpError { class, desc }) => (error_reply(id, class, &desc), None),
        }
    }

    fn dispatch(&mut self, request: &Map<String, Value>) -> CommandResult {
        for key in request.keys() {
            if !matches!(key.as_str(), "execute" | "arguments" | "id") {
                return Err(QmpError::generic(format!(
                    "QMP input member '{key}' is unexpected"
                )));
            }
        }
        let name = match request.get("execute") {
            Some(Value::String(name)) => name.as_str(),
            Some(_) => {
                return Err(QmpError::generic(
                    "QMP input member 'execute' must be a string",
                ))
            }
            None => return Err(QmpError::generic("QMP input lacks member 'execute'")),
        };
        let empty = Map::new();
        let arguments = match request.get("arguments") {
            None => &empty,
            Some(Value::Object(arguments)) => arguments,
            Some(_) => {
                return Err(QmpError::generic(
                    "QMP input member 'arguments' must be an object",
                ))
            }
        };
        let Some(command) = Command::from_name(name) else {
            return Err(QmpError::command_not_found(format!(
                "The command {name} has not been found"
            )));
        };
        if !self.negotiated && command != Command::QmpCapabilities {
            return Err(QmpError::command_not_found(
                "Expecting capabilities negotiation with 'qmp_capabilities'",
            ));
        }
        command.check(arguments)?;
        let done = |value: Value| Ok((value, None));
        match command {
            Command::QmpCapabilities => {
                if self.negotiated {
                    return Err(QmpError::command_not_found(
                        "Capabilities negotiation is already complete, command ignored",
                    ));
                }
                if let Some(Value::Array(enable)) = arguments.get("enable") {
                    if let Some(capability) = enable.first() {
                        return Err(QmpError::generic(format!(
                            "Capability {capability} is not supported"
                        )));
                    }
                }
                self.negotiated = true;
                Ok((json!({}), Some(After::Negotiated)))
            }
            Command::QueryStatus => {
                let status = self.context.cpus.status();
                done(json!({
                    "status": status.qmp_name(),
                    "singlestep": false,
                    "running": status == crate::vcpu::RunStatus::Running,
                }))
            }
            Command::QueryUuid => done(json!({
                "UUID": self.context.uuid.as_deref().unwrap_or(NO_UUID)
            })),
            Command::QueryTarget => done(catalog::query_target()),
            Command::QueryMachines => done(catalog::query_machines()),
            Command::QueryEvents => done(schema::query_events()),
            Command::QomListTypes => done(catalog::qom_list_types(arguments)),
            Command::DeviceListProperties => done(catalog::device_list_properties(arguments)?),
            Command::QomListProperties => done(catalog::qom_list_properties(arguments)?),
            Command::QomList => done(catalog::qom_list(arguments)?),
            Command::QueryCommandLineOptions => {
                done(catalog::query_command_line_options(arguments)?)
            }
            Command::QueryCpuDefinitions => done(catalog::query_cpu_definitions()),
            Command::QueryStatsSchemas => done(crate::stats::schemas()),
            Command::XQueryTrace => {
                // What the device processes recorded since the last take.
                if crate::trace::enabled() {
                    if let Err(error) = self.ask_machine(command, MachineRequest::CollectTrace) {
                        log::debug!(
                            "x-query-trace without the device processes' records: {}",
                            error.desc
                        );
                    }
                }
                done(crate::trace::query(
                    arguments.get("filter").and_then(Value::as_str),
                    arguments
                        .get("last")
                        .and_then(Value::as_u64)
                        .map(|last| usize::try_from(last).unwrap_or(usize::MAX)),
                ))
            }
            Command::QueryStats => {
                let request = arguments::machine_request(command, arguments)?
                    .ok_or_else(|| QmpError::generic("query-stats has no answer"))?;
                let (answer, after) = self.ask_machine(command, request)?;
                Ok((filter_stats(answer, arguments), after))
            }
            Command::HumanMonitorCommand => {
                let line = arguments
                    .get("command-line")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                done(Value::String(match hmp::parse(line) {
                    hmp::Request::Help => hmp::help(),
                    hmp::Request::Unknown(line) => hmp::unknown(&line),
                    hmp::Request::Info(topic) => {
                        let mut query = Map::new();
                        query.insert("execute".into(), json!(topic.query()));
                        let (answer, _) = self.dispatch(&query)?;
                        hmp::render(topic, &answer)
                    }
                }))
            }
            // No TPM, no migration, no I/O threads: empty lists, as QEMU
            // built without them answers.
            // No block jobs (no mirror, backup or commit here): libvirt asks
            // when it reconnects, and a missing command ends its domain.
            Command::QueryTpmModels
            | Command::QueryTpmTypes
            | Command::QueryIothreads
            | Command::QueryJobs => done(json!([])),
            // Nothing migrates: `events` (MIGRATION events, which libvirt
            // turns on at every start) is the one capability, and there
            // is never an event to send.
            Command::QueryMigrateCapabilities => done(json!([{
                "capability": "events",
                "state": self.context.migration_events.load(Ordering::Relaxed),
            }])),
            Command::MigrateSetCapabilities => {
                let capabilities = arguments
                    .get("capabilities")
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let mut events = None;
                for capability in capabilities {
                    match (&capability["capability"], capability["state"].as_bool()) {
                        (Value::String(name), Some(state)) if name == "events" => {
                            events = Some(state)
                        }
                        (name, _) => {
                            return Err(QmpError::generic(format!(
                                "Capability {name} is not supported: this machine does not migrate"
                            )))
                        }
                    }
                }
                if let Some(state) = events {
                    self.context
                        .migration_events
                        .store(state, Ordering::Relaxed);
                }
                done(json!({}))
            }
            Command::QueryVersion => done(version()),
            Command::QueryName => done(match &self.context.name {
                Some(name) => json!({"name": name}),
                None => json!({}),
            }),
            Command::QueryKvm => done(json!({
                "enabled": self.context.machine,
                "present": self.context.machine || self.context.kvm_present,
            })),
            Command::QueryCommands => done(schema::query_commands()),
            Command::QueryQmpSchema => done(schema::query_qmp_schema()),
            Command::SystemReset => Ok((
                json!({}),
                Some(After::Send(ControlMessage::Reset { by_guest: false })),
            )),
            Command::Quit => Ok((json!({}), Some(After::Send(ControlMessage::Quit)))),
            machine => match arguments::machine_request(machine, arguments)? {
                Some(request) => self.ask_machine(machine, request),
                None => Err(QmpError::generic(format!(
                    "{} has no answer (an internal error)",
                    machine.name()
                ))),
            },
        }
    }

    /// Runs a command on the control loop and waits for its answer.
    fn ask_machine(&self, command: Command, request: MachineRequest) -> CommandResult {
        let (reply, answer) = std::sync::mpsc::channel();
        let message = ControlMessage::Qmp { request, reply };
        if self.context.control.send(message).is_err() {
            return Err(QmpError::generic("the machine is shutting down"));
        }
        match answer.recv_timeout(MACHINE_TIMEOUT) {
            Ok(answer) => answer.map(|value| (value, None)),
            Err(_) => Err(QmpError::generic(format!(
                "the machine did not answer {} within {MACHINE_TIMEOUT:?}",
                command.name()
            ))),
        }
    }
}

/// Cuts a byte stream into top-level JSON values without parsing them, so
/// that a request's size is bounded before the parser sees it.
#[derive(Default)]
pub struct JsonSplitter {
    current: Vec<u8>,
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// Inside top-level text that is not an object or array (up to a newline).
    in_scalar: bool,
    /// Skipping the rest of a value that was too long.
    discarding: bool,
}

impl JsonSplitter {
    /// Feeds bytes; returns each complete value, or an error for a value
    /// longer than [`MAX_REQUEST`].
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Result<String, String>> {
        let mut out = Vec::new();
        for &byte in bytes {
            if self.depth == 0 && !self.in_scalar {
                match byte {
                    b' ' | b'\t' | b'\r' | b'\n' => continue,
                    b'{' | b'[' => {}
                    _ => self.in_scalar = true,
                }
            }
            if self.in_scalar && self.depth == 0 {
                // Anything at top level that is not an object or array runs
                // to the end of the line and is answered once, as an error.
                if byte == b'\n' {
                    self.finish(&mut out);
                    continue;
                }
            }
            if !self.discarding {
                self.current.push(byte);
            }
            if self.in_string {
                match (self.escaped, byte) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => self.in_string = false,
                    _ => {}
                }
            } else if !self.in_scalar {
                match byte {
                    b'"' => self.in_string = true,
                    b'{' | b'[' => self.depth += 1,
                    b'}' | b']' => {
                        self.depth = self.depth.saturating_sub(1);
                        if self.depth == 0 {
                            self.finish(&mut out);
                        }
                    }
                    _ => {}
                }
            }
            if self.current.len() > MAX_REQUEST && !self.discarding {
                self.discarding = true;
                self.current = Vec::new();
                out.push(Err(format!("QMP input exceeds {MAX_REQUEST} bytes")));
            }
        }
        out
    }

    fn finish(&mut self, out: &mut Vec<Result<String, String>>) {
        if !self.discarding {
            out.push(Ok(String::from_utf8_lossy(&self.current).into_owned()));
        }
        self.current.clear();
        self.in_scalar = false;
        self.discarding = false;
        self.in_string = false;
        self.escaped = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    fn split(chunks: &[&str]) -> Vec<Result<String, String>> {
        let mut splitter = JsonSplitter::default();
        chunks
            .iter()
            .flat_map(|c| splitter.push(c.as_bytes()))
            .collect()
    }

    #[test]
    fn splitter_cuts_values_across_chunks_and_strings() {
        let values = split(&[r#"{"execute": "a}{"#, r#""}{"x":[1,{"y":"\"}"}]}"#, "\n"]);
        assert_eq!(
            values,
            [
                Ok(r#"{"execute": "a}{"}"#.to_string()),
                Ok(r#"{"x":[1,{"y":"\"}"}]}"#.to_string())
            ]
        );
        assert_eq!(split(&["42\ntrue\n{}"]).len(), 3);
        assert_eq!(split(&["this is not json\n"]).len(), 1);
    }

    #[test]
    fn splitter_bounds_a_huge_value_and_recovers() {
        let mut splitter = JsonSplitter::default();
        let mut results = splitter.push(b"{\"execute\": \"");
        results.extend(splitter.push(&vec![b'a'; MAX_REQUEST * 2]));
        results.extend(splitter.push(b"\"}{\"execute\":\"quit\"}"));
        assert_eq!(results.len(), 2, "{results:?}");
        assert!(results[0].is_err());
        assert_eq!(results[1], Ok("{\"execute\":\"quit\"}".to_string()));
    }

    #[test]
    fn machine_commands_go_to_the_control_loop_and_time_out_cleanly() {
        let (context, receiver) = test_context();
        let answering = thread::spawn(move || {
            let Ok(ControlMessage::Qmp { request, reply }) = receiver.recv() else {
                panic!("no command");
            };
            assert_eq!(request, MachineRequest::Query(crate::request::Query::Drcs));
            reply.send(Ok(json!([]))).unwrap();
        });
        let mut session = Session {
            negotiated: true,
            context: &context,
        };
        let (reply, _) = session.handle(r#"{"execute": "x-query-drcs", "id": 3}"#);
        assert_eq!(reply, json!({"return": [], "id": 3}));
        answering.join().unwrap();
    }

    /// A QMP context whose control loop is the receiver returned.
    fn test_context() -> (QmpContext, std::sync::mpsc::Receiver<ControlMessage>) {
        let (control, receiver) = channel();
        let context = QmpContext {
            control,
            cpus: Arc::new(crate::vcpu::CpuTable::new(1)),
            name: None,
            uuid: None,
            machine: true,
            kvm_present: true,
            migration_events: Default::default(),
        };
        (context, receiver)
    }

    fn session_replies(lines: &[&str]) -> (Vec<Value>, Vec<ControlMessage>) {
        let (context, receiver) = test_context();
        let mut session = Session {
            negotiated: false,
            context: &context,
        };
        let mut replies = Vec::new();
        for line in lines {
            let (reply, after) = session.handle(line);
            if let Some(After::Send(message)) = after {
                context.control.send(message).unwrap();
            }
            replies.push(reply);
        }
        drop(context);
        (replies, receiver.iter().collect())
    }

    #[test]
    fn commands_need_negotiation_first() {
        let (replies, _) = session_replies(&[
            r#"{"execute": "query-status", "id": 1}"#,
            r#"{"execute": "qmp_capabilities"}"#,
            r#"{"execute": "qmp_capabilities", "id": "x"}"#,
            r#"{"execute": "query-status", "id": {"n": 2}}"#,
        ]);
        assert_eq!(replies[0]["error"]["class"], "CommandNotFound");
        assert_eq!(replies[0]["id"], 1);
        assert_eq!(replies[1], json!({"return": {}}));
        assert_eq!(replies[2]["error"]["class"], "CommandNotFound");
        assert_eq!(replies[2]["id"], "x");
        assert_eq!(
            replies[3],
            json!({"return": {"status": "running", "singlestep": false, "running": true}, "id": {"n": 2}})
        );
    }

    #[test]
    fn bad_requests_get_generic_errors() {
        let (replies, messages) = session_replies(&[
            r#"{"execute": "qmp_capabilities"}"#,
            r#"{"execute": "query-status""#,
            r#"[1, 2]"#,
            r#"{"arguments": {}}"#,
            r#"{"execute": 5}"#,
            r#"{"execute": "quit", "arguments": 3}"#,
            r#"{"execute": "quit", "arguments": {"now": true}}"#,
            r#"{"execute": "quit", "bogus": 1}"#,
            r#"{"execute": "frobnicate", "id": 9}"#,
        ]);
        for reply in &replies[1..8] {
            assert_eq!(reply["error"]["class"], "GenericError", "{reply}");
        }
        assert_eq!(replies[8]["error"]["class"], "CommandNotFound");
        assert_eq!(
            replies[8]["error"]["desc"],
            "The command frobnicate has not been found"
        );
        assert!(messages.is_empty(), "a refused quit must not quit");
    }

    #[test]
    fn reset_and_quit_reach_the_control_loop() {
        let (replies, messages) = session_replies(&[
            r#"{"execute": "qmp_capabilities"}"#,
            r#"{"execute": "system_reset"}"#,
            r#"{"execute": "quit"}"#,
        ]);
        assert_eq!(replies[1], json!({"return": {}}));
        assert_eq!(
            messages,
            [
                ControlMessage::Reset { by_guest: false },
                ControlMessage::Quit
            ]
        );
    }

    /// The commands that are no request of the machine are the ones the
    /// session answers itself: none of them reaches the control loop.
    #[test]
    fn what_is_no_machine_request_is_answered_by_the_session() {
        let (context, receiver) = test_context();
        let mut session = Session {
            negotiated: false,
            context: &context,
        };
        session.handle(r#"{"execute": "qmp_capabilities"}"#);
        let mut answered_here = 0;
        for command in Command::ALL {
            let request = arguments::machine_request(*command, &Map::new());
            if request != Ok(None) || *command == Command::QmpCapabilities {
                continue;
            }
            answered_here += 1;
            let line = format!(r#"{{"execute": "{}"}}"#, command.name());
            let (reply, _) = session.handle(&line);
            let needs_arguments = command.args().iter().any(|arg| !arg.optional);
            assert!(
                reply.get("return").is_some() || needs_arguments,
                "{line}: {reply}"
            );
            assert!(
                !matches!(receiver.try_recv(), Ok(ControlMessage::Qmp { .. })),
                "{line} went to the machine"
            );
        }
        assert!(answered_here >= 8, "{answered_here}");
    }
}
