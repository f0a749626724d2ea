//! Helpers for the end-to-end tests: build and find Papervisor's binaries,
//! start a VM, talk to its console socket.
#![deny(missing_docs)]

pub mod disks;
pub mod vhost_driver;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The guest shell's prompt.
pub const PROMPT: &str = "guest> ";
/// Generous: the guest kernel is emulated instruction by instruction here.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one shell command may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// The directory cargo puts this build's binaries in (target/<profile>).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash>
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps")
        .to_path_buf()
}

/// The path of one of the workspace's binaries, built first if needed.
///
/// Cargo builds only the binaries of the package under test, so the e2e
/// tests build the workspace's once per test process, with fault injection
/// (`x-inject-fault`) built in; when nothing changed that is a no-op.
///
/// With `PAPERVISOR_BIN_DIR` set, the binaries are taken from there as they
/// are (built beforehand, e.g. for a run as an unprivileged user who has no
/// toolchain).
pub fn binary(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("PAPERVISOR_BIN_DIR") {
        let path = Path::new(&dir).join(name);
        assert!(path.exists(), "{} does not exist", path.display());
        return path;
    }
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = profile_dir();
        let mut build = Command::new(env!("CARGO"));
        build
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .args([
                "build",
                "--workspace",
                "--bins",
                "--features",
                "fault-injection",
            ]);
        if dir.file_name().is_some_and(|p| p == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("cannot run cargo build");
        assert!(status.success(), "building the workspace binaries failed");
    });
    let path = profile_dir().join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// A copy of binary `name` at `dir/copy_name`, mode 0755 in a directory of
/// mode 0755: what an upgrade may name.
pub fn copy_binary(name: &str, dir: &std::path::Path, copy_name: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let copy = dir.join(copy_name);
    std::fs::copy(binary(name), &copy).expect("copy a binary");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    copy
}

/// The path of one of the workspace's binaries as the README's plain build
/// makes them: without the `fault-injection` feature, optimised when this
/// is (a benchmark). Built once, into target/plain, so that it never
/// replaces the binaries the other tests use.
pub fn plain_binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    separate_build(&BUILT, "plain", &[], name)
}

/// The path of one of the workspace's binaries as the README's hardened
/// build makes them: without the default features, so that the core does
/// not link the device code (no in-process mode). Built once, into
/// target/hardened.
pub fn hardened_binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    separate_build(&BUILT, "hardened", &["--no-default-features"], name)
}

/// Builds the workspace's binaries once (`built`) with `options` into
/// target/`dir`, optimised when this build is; the path of binary `name`.
fn separate_build(built: &OnceLock<()>, dir: &str, options: &[&str], name: &str) -> PathBuf {
    let target_dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")).join(dir);
    let profile = profile_dir();
    let release = profile.file_name().is_some_and(|p| p == "release");
    built.get_or_init(|| {
        let mut build = Command::new(env!("CARGO"));
        build
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .args(["build", "--workspace", "--bins", "--target-dir"])
            .arg(&target_dir)
            .args(options);
        if release {
            build.arg("--release");
        }
        let status = build.status().expect("cannot run cargo build");
        assert!(status.success(), "the {dir} build failed");
    });
    // Binaries land in <target dir>/<triple>/<profile>, as for this build.
    let triple = profile
        .parent()
        .and_then(Path::file_name)
        .expect("binaries live in target/<triple>/<profile>");
    let profile_name = if release { "release" } else { "debug" };
    let path = target_dir.join(triple).join(profile_name).join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// Whether this runs as root (the jail mounts and changes ids) with a usable
/// /dev/kvm. When not, prints why, loudly.
pub fn root_and_kvm(test: &str) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let is_root = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .is_some_and(|l| l.split_whitespace().nth(2) == Some("0"));
    if !is_root {
        say_skipped(&format!(
            "SKIPPED {test}: needs root to jail device processes"
        ));
    }
    is_root && kvm_usable(test)
}

/// Whether /dev/kvm can be used. When it cannot, prints why, loudly, so a
/// skipped test is never mistaken for a passing one.
pub fn kvm_usable(test: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(error) => {
            say_skipped(&format!("SKIPPED {test}: /dev/kvm is not usable ({error})"));
            false
        }
    }
}

/// Sends `signal` to process `pid`; panics when it cannot.
pub fn send_signal(pid: u64, signal: nix::sys::signal::Signal) {
    let target = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("a pid"));
    nix::sys::signal::kill(target, signal)
        .unwrap_or_else(|error| panic!("cannot send {signal} to {pid}: {error}"));
}

/// The VM's log file once `complete` holds for it (at most 10 s): a line a
/// process logged reaches the file through the core's log drain, a moment
/// after the process wrote it.
pub fn log_once(path: &Path, complete: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if complete(&log) || Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A fresh, short directory for sockets (Unix socket paths are limited to 108 bytes).
pub fn scratch_dir() -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    // A directory left by an earlier process of the same pid is removed;
    // one this user cannot remove (another user's) is passed over.
    for _ in 0..1000 {
        let dir = std::env::temp_dir().join(format!(
            "pv-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        if std::fs::create_dir(&dir).is_ok() {
            return dir;
        }
    }
    panic!(
        "cannot create a scratch directory in {}",
        std::env::temp_dir().display()
    );
}

/// The machine the hot-plug tests use: one boot core of four, 512 MiB of
/// boot RAM and room for two DIMMs (LMBs 0x80000004 on, at 1 GiB).
pub const HOTPLUG_MACHINE: [&str; 4] = [
    "--smp",
    "cpus=1,maxcpus=4",
    "--memory",
    "size=512M,maxmem=2G,slots=2",
];

/// The variable that runs the end-to-end suite with another device mode:
/// `PAPERVISOR_DEVICE_MODE=in-process cargo test -p papervisor-tests`.
pub const DEVICE_MODE_VARIABLE: &str = "PAPERVISOR_DEVICE_MODE";

/// Whether the suite runs with the devices as threads of the core.
pub fn in_process() -> bool {
    std::env::var(DEVICE_MODE_VARIABLE).is_ok_and(|mode| mode == "in-process")
}

/// The `--device-mode` the suite runs with, unless the test chose one.
fn device_mode_args(args: &[&str]) -> Vec<String> {
    match std::env::var(DEVICE_MODE_VARIABLE) {
        Ok(mode) if !args.contains(&"--device-mode") => vec!["--device-mode".into(), mode],
        _ => vec![],
    }
}

/// A command that runs the core binary in the suite's device mode.
pub fn papervisor_command() -> Command {
    let mut command = Command::new(binary("papervisor"));
    command.args(device_mode_args(&[]));
    command
}

/// Says loudly that a test does not run in-process (it kills, restarts or
/// jails a device process, which a device thread is not) and whether to
/// skip it.
pub fn skip_in_process(test: &str, why: &str) -> bool {
    if in_process() {
        say_skipped(&format!(
            "SKIPPED {test} with --device-mode in-process: {why}"
        ));
    }
    in_process()
}

/// Prints `line` on stderr past the test harness, which keeps what a
/// passing test prints to itself: a skip must show.
pub fn say_skipped(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Whether a process's command name is the reaper's (a command name keeps
/// the first 15 bytes of `papervisor-reaper`).
pub fn is_reaper(command_name: &str) -> bool {
    command_name == "papervisor-reap"
}

/// Whether process `pid` still runs (a zombie has ended).
pub fn runs(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_string())
        })
        .is_some_and(|rest| !rest.starts_with('Z'))
}

/// Whether a process's command name is the spawner's (`papervisor-spawner`).
pub fn is_spawner(command_name: &str) -> bool {
    command_name == "papervisor-spaw"
}

/// The direct children of process `parent`, with their command names.
pub fn children_of(parent: u32) -> Vec<(u32, String)> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...; comm may hold spaces, so split at the last ')'.
        let Some((head, tail)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map(|(_, c)| c).unwrap_or_default();
        let ppid = tail
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            children.push((pid, comm.to_string()));
        }
    }
    children
}

/// A running `papervisor` with its console and QMP on Unix sockets.
pub struct Vm {
    child: Option<Child>,
    dir: PathBuf,
    /// The console connection.
    pub console: Console,
}

impl Vm {
    /// Starts `papervisor` with `args` plus console and QMP sockets, and
    /// connects to the console.
    pub fn start(args: &[&str]) -> Vm {
        Vm::start_program(&binary("papervisor"), args)
    }

    /// Starts the core binary `program` as [`Vm::start`] does.
    pub fn start_program(program: &Path, args: &[&str]) -> Vm {
        Vm::start_in(program, scratch_dir(), args)
    }

    /// Starts `program` with its console and QMP sockets in `dir`
    /// (`console.sock`, `qmp.sock`).
    pub fn start_in(program: &Path, dir: PathBuf, args: &[&str]) -> Vm {
        Vm::start_with_stderr(program, dir, args, Stdio::inherit())
    }

    /// Starts `program` as [`Vm::start_in`] does, its stderr `stderr` (a
    /// pipe that is kept, unread, while the VM runs: a log reader that
    /// stopped reading).
    pub fn start_with_stderr(program: &Path, dir: PathBuf, args: &[&str], stderr: Stdio) -> Vm {
        Vm::start_with_env(program, dir, args, stderr, &[])
    }

    /// Starts `program` as [`Vm::start_with_stderr`] does, with `env` added
    /// to its environment.
    pub fn start_with_env(
        program: &Path,
        dir: PathBuf,
        args: &[&str],
        stderr: Stdio,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Vm {
        let socket = dir.join("console.sock");
        let child = Command::new(program)
            .envs(env.iter().copied())
            .args(args)
            .args(device_mode_args(args))
            .arg("--qmp")
            .arg(dir.join("qmp.sock"))
            .arg("--console")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(stderr)
            .spawn()
            .expect("cannot start papervisor");
        let mut vm = Vm {
            child: Some(child),
            dir,
            console: Console::placeholder(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match UnixStream::connect(&socket) {
                Ok(stream) => break stream,
                Err(error) => {
                    if let Some(status) = vm.try_exit_status() {
                        panic!("papervisor exited with {status} before serving the console");
                    }
                    assert!(
                        Instant::now() < deadline,
                        "console socket {} never appeared: {error}",
                        socket.display()
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        vm.console = Console::new(stream);
        vm
    }

    /// The core's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The console socket's path.
    pub fn console_socket(&self) -> PathBuf {
        self.dir.join("console.sock")
    }

    /// The QMP socket's path.
    pub fn qmp_socket(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }

    /// Runs QMP steps through the `qemu.qmp` Python client (see
    /// tests/qmp/drive.py) and returns one JSON value per step.
    pub fn qmp(&self, steps: &[&str]) -> Vec<serde_json::Value> {
        let output = Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/qmp/drive.py"))
            .arg(self.qmp_socket())
            .args(steps)
            .output()
            .expect("python3 is needed for the QMP tests");
        assert!(
            output.status.success(),
            "the qemu.qmp driver failed ({}): {}\n(`pip install qemu.qmp` provides the client)",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| serde_json::from_str(line).expect("the driver prints JSON lines"))
            .collect()
    }

    /// Every device process as `x-query-device-processes` lists it.
    pub fn device_processes(&self) -> Vec<serde_json::Value> {
        self.qmp(&["x-query-device-processes"])[0]["return"]
            .as_array()
            .expect("a process list")
            .clone()
    }

    /// Hot-plugs CPU core `core_id` as device `id` over QMP and waits until
    /// the guest has taken it (one thread per core, as the tests run).
    pub fn plug_core(&mut self, core_id: u32, id: &str) {
        let add = format!(
            r#"device_add={{"driver": "host-spapr-cpu-core", "core-id": {core_id}, "id": "{id}"}}"#
        );
        let replies = self.qmp(&[&add]);
        assert_eq!(replies[0], serde_json::json!({"return": {}}), "{add}");
        let drc = 0x1000_0000 + core_id;
        self.console.expect_async(
            &format!("dlpar: cpu add {drc:#010x}: ok"),
            Duration::from_secs(60),
        );
    }

    /// The pids of the device processes, in `x-query-device-processes` order.
    pub fn device_pids(&self) -> Vec<u64> {
        self.device_processes()
            .iter()
            .map(|p| p["pid"].as_u64().expect("a pid"))
            .collect()
    }

    /// The device process of `kind` as `x-query-device-processes` lists it.
    pub fn device_process(&self, kind: &str) -> serde_json::Value {
        self.device_processes()
            .into_iter()
            .find(|p| p["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
    }

    /// SIGKILLs the device process of `kind` and waits until its successor
    /// runs (one more restart).
    pub fn kill_and_await_restart(&self, kind: &str) {
        let before = self.device_process(kind);
        let restarts = before["restarts"].as_u64().expect("a restart count");
        send_signal(
            before["pid"].as_u64().expect("a pid"),
            nix::sys::signal::Signal::SIGKILL,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let now = self.device_process(kind);
            if now["state"] == "running" && now["restarts"] == restarts + 1 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the {kind} did not come back: {now}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Injects `fault` (`x-inject-fault`) into the device of `kind`, which
    /// must not survive it, and waits for its successor. Returns what the
    /// core answered of it (`outcome`) and the `X_DEVICE_PROCESS_EXITED`
    /// event's data.
    pub fn inject_and_await_restart(&self, kind: &str, fault: &str) -> (String, serde_json::Value) {
        let inject = format!(r#"x-inject-fault={{"process": "{kind}", "fault": "{fault}"}}"#);
        let replies = self.qmp(&[
            &inject,
            "wait-event:X_DEVICE_PROCESS_EXITED",
            "wait-event:X_DEVICE_PROCESS_RESTARTED",
        ]);
        assert_eq!(replies[0]["return"]["survived"], false, "{kind} {fault}");
        assert_eq!(replies[2]["data"]["process"], kind, "{kind} {fault}");
        let outcome = replies[0]["return"]["outcome"].as_str().unwrap_or_default();
        (outcome.to_string(), replies[1]["data"].clone())
    }

    /// The row of DRC `index` in `x-query-drcs`.
    pub fn drc(&self, index: u32) -> serde_json::Value {
        let replies = self.qmp(&["x-query-drcs"]);
        replies[0]["return"]
            .as_array()
            .expect("a DRC list")
            .iter()
            .find(|row| row["index"] == index)
            .unwrap_or_else(|| panic!("no DRC {index:#x}: {}", replies[0]))
            .clone()
    }

    /// Kills `kind` with forbidden calls until the supervisor gives up on it;
    /// returns the last `X_DEVICE_PROCESS_EXITED` data.
    pub fn make_fail(&self, kind: &str) -> serde_json::Value {
        let inject = format!(r#"x-inject-fault={{"process": "{kind}", "fault": "open-socket"}}"#);
        let mut last = serde_json::Value::Null;
        for round in 0..6 {
            // The restart backoff doubles from 100 ms: 4 s covers each wait.
            let replies = self.qmp(&[
                &inject,
                "wait-event:X_DEVICE_PROCESS_EXITED",
                "events-for:4",
            ]);
            last = replies[1]["data"].clone();
            let restarted = replies[2]["events"]
                .as_array()
                .expect("an event list")
                .iter()
                .any(|e| e["event"] == "X_DEVICE_PROCESS_RESTARTED");
            if last["action"] == "failed" {
                assert!(!restarted);
                break;
            }
            assert!(restarted, "round {round}: {replies:?}");
        }
        last
    }

    /// Pids of the VM's reapers (what the spawner started that is not a
    /// device process).
    pub fn reapers(&self) -> Vec<u32> {
        self.children()
            .into_iter()
            .filter(|(_, name)| is_reaper(name))
            .map(|(pid, _)| pid)
            .collect()
    }

    /// The processes the VM's spawner started — its device processes and
    /// its reaper — with their command names (none in-process, where there
    /// is no spawner).
    pub fn children(&self) -> Vec<(u32, String)> {
        match self.spawner() {
            Some(spawner) => children_of(spawner),
            None => children_of(self.pid()),
        }
    }

    /// Every process of the VM: the core, its spawner, and what the spawner
    /// started.
    pub fn processes(&self) -> Vec<u32> {
        std::iter::once(self.pid())
            .chain(self.spawner())
            .chain(self.children().into_iter().map(|(pid, _)| pid))
            .collect()
    }

    /// The pid of the VM's spawner process (the core's child), if it runs.
    pub fn spawner(&self) -> Option<u32> {
        children_of(self.pid())
            .into_iter()
            .find(|(_, name)| is_spawner(name))
            .map(|(pid, _)| pid)
    }

    fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "papervisor did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Boots to the first prompt and returns the banner.
    pub fn boot(&mut self) -> String {
        self.console.read_until(PROMPT, BOOT_TIMEOUT)
    }
}

/// A process a test started, killed and reaped when the test ends (a
/// failed one too).
pub struct KilledOnDrop(pub std::process::Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The guest console: everything read so far, and a way to run commands.
pub struct Console {
    stream: Option<UnixStream>,
    seen: String,
    /// Lines the guest printed by itself (hot-plug work) that `command`
    /// skipped, in order.
    pub async_lines: Vec<String>,
}

impl Console {
    fn placeholder() -> Console {
        Console {
            stream: None,
            seen: String::new(),
            async_lines: Vec::new(),
        }
    }

    fn new(stream: UnixStream) -> Console {
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("set console read timeout");
        Console {
            stream: Some(stream),
            seen: String::new(),
            async_lines: Vec::new(),
        }
    }

    /// Reads until `pattern` appears; returns everything before and including it.
    pub fn read_until(&mut self, pattern: &str, timeout: Duration) -> String {
        match self.read_until_or_timeout(pattern, timeout) {
            Some(text) => text,
            None => panic!(
                "console: {pattern:?} did not appear within {timeout:?}; got so far:\n{}",
                self.seen
            ),
        }
    }

    /// Adds what arrives within the stream's read timeout to `seen`;
    /// `Ok(false)` once the VM closed the connection. A timed read is not
    /// restarted after a signal, and even a SIGCHLD left at its default
    /// interrupts it when it arrived while the forking thread had signals
    /// blocked (as around posix_spawn): that is retried like a time-out.
    fn read_more(&mut self) -> std::io::Result<bool> {
        let stream = self.stream.as_mut().expect("console connected");
        let mut buf = [0u8; 4096];
        match stream.read(&mut buf) {
            Ok(0) => Ok(false),
            Ok(n) => {
                self.seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                Ok(true)
            }
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                Ok(true)
            }
            Err(error) => Err(error),
        }
    }

    /// Whether the VM closed this connection (waits up to `timeout`).
    pub fn is_closed(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !matches!(self.read_more(), Ok(true)) {
                return true;
            }
        }
        false
    }

    /// As [`Console::read_until`], but `None` when `pattern` did not appear
    /// within `timeout` (what was read stays for the next read).
    pub fn read_until_or_timeout(&mut self, pattern: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(at) = self.seen.find(pattern) {
                let rest = self.seen.split_off(at + pattern.len());
                return Some(std::mem::replace(&mut self.seen, rest));
            }
            if Instant::now() >= deadline {
                return None;
            }
            match self.read_more() {
                Ok(true) => {}
                Ok(false) => panic!("console closed; got so far:\n{}", self.seen),
                Err(error) => panic!("console read failed: {error}"),
            }
        }
    }

    /// Waits for a line the guest prints by itself (hot-plug work) containing
    /// `text`; returns that line, and consumes the prompt printed after it.
    pub fn expect_async(&mut self, text: &str, timeout: Duration) -> String {
        let before = self.read_until(text, timeout);
        let rest = self.read_until("\n", COMMAND_TIMEOUT);
        self.read_until(PROMPT, COMMAND_TIMEOUT);
        let start = before.rfind('\n').map_or(0, |i| i + 1);
        format!("{}{}", &before[start..], rest.trim_end())
    }

    /// Sends one line.
    pub fn send_line(&mut self, line: &str) {
        let stream = self.stream.as_mut().expect("console connected");
        stream
            .write_all(format!("{line}\n").as_bytes())
            .expect("console write");
    }

    /// Runs a shell command and returns its output lines, without the
    /// echoed command and the next prompt. Lines the guest printed by itself
    /// before the echo (hot-plug work, each followed by a fresh prompt) are
    /// skipped.
    pub fn command(&mut self, line: &str) -> Vec<String> {
        self.send_line(line);
        let echo = format!("{line}\n");
        let through_echo = self.read_until(&echo, COMMAND_TIMEOUT);
        let before = through_echo.strip_suffix(&echo).unwrap_or_default();
        // Prompts printed after hot-plug work start the lines they share.
        let lines: Vec<String> = before
            .lines()
            .map(|l| {
                let mut l = l;
                while let Some(rest) = l.strip_prefix(PROMPT) {
                    l = rest;
                }
                l.trim_end().to_string()
            })
            .filter(|l| !l.is_empty() && l != PROMPT.trim_end())
            .collect();
        let unexpected: Vec<&String> = lines.iter().filter(|l| !l.starts_with("dlpar: ")).collect();
        assert!(
            unexpected.is_empty(),
            "before the echo of {line:?} the guest printed {unexpected:?}"
        );
        self.async_lines.extend(lines.iter().cloned());
        let output = self.read_until(PROMPT, COMMAND_TIMEOUT);
        let body = output
            .strip_suffix(PROMPT)
            .expect("read_until ends at the prompt");
        body.lines().map(str::to_string).collect()
    }
}

/// A minimal QMP client for benchmarks, where a Python process per step
/// would dominate what is measured. The tests use the `qemu.qmp` client.
pub struct QmpClient {
    reader: std::io::BufReader<UnixStream>,
    writer: UnixStream,
    events: Vec<serde_json::Value>,
}

impl QmpClient {
    /// Connects and negotiates capabilities.
    pub fn connect(path: &Path) -> QmpClient {
        let stream = UnixStream::connect(path).expect("connect to QMP");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("set QMP read timeout");
        let mut client = QmpClient {
            reader: std::io::BufReader::new(stream.try_clone().expect("clone QMP stream")),
            writer: stream,
            events: Vec::new(),
        };
        let greeting = client.next_message();
        assert!(greeting.get("QMP").is_some(), "{greeting}");
        client.execute("qmp_capabilities", serde_json::json!({}));
        client
    }

    fn next_message(&mut self) -> serde_json::Value {
        use std::io::BufRead;
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read from QMP");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("QMP sent {line:?}: {e}"))
    }

    /// Runs a command; returns its `return` or `error` object.
    pub fn execute(&mut self, command: &str, arguments: serde_json::Value) -> serde_json::Value {
        let request = serde_json::json!({"execute": command, "arguments": arguments});
        self.writer
            .write_all(format!("{request}\n").as_bytes())
            .expect("write to QMP");
        loop {
            let message = self.next_message();
            if message.get("event").is_some() {
                self.events.push(message);
                continue;
            }
            return message;
        }
    }

    /// The events received so far and those that arrive within `window`;
    /// they are not kept.
    pub fn events_within(&mut self, window: Duration) -> Vec<serde_json::Value> {
        use std::io::BufRead;
        let mut events = std::mem::take(&mut self.events);
        let deadline = Instant::now() + window;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.writer
                .set_read_timeout(Some(left))
                .expect("set QMP read timeout");
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => break,
                Ok(_) => {
                    let message: serde_json::Value = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("QMP sent {line:?}: {e}"));
                    if message.get("event").is_some() {
                        events.push(message);
                    }
                }
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(error) => panic!("read from QMP: {error}"),
            }
        }
        self.writer
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("set QMP read timeout");
        events
    }

    /// Waits for the event `name` (events received earlier count).
    pub fn wait_event(&mut self, name: &str) -> serde_json::Value {
        self.wait_any_event(&[name])
    }

    /// Waits for the first event named in `names` (events received
    /// earlier count).
    pub fn wait_any_event(&mut self, names: &[&str]) -> serde_json::Value {
        let wanted = |event: &serde_json::Value| names.iter().any(|name| event["event"] == *name);
        if let Some(at) = self.events.iter().position(wanted) {
            return self.events.remove(at);
        }
        loop {
            let message = self.next_message();
            if wanted(&message) {
                return message;
            }
            if message.get("event").is_some() {
                self.events.push(message);
            }
        }
    }
}

/// Asserts that every refusal the guest printed (console lines starting
/// with `refusal`) got exactly one `DEVICE_UNPLUG_GUEST_ERROR` among
/// `events` (a driver's `events-for` list), and that there was at least one;
/// returns how many.
pub fn assert_one_error_per_refusal(
    vm: &mut Vm,
    events: &serde_json::Value,
    refusal: &str,
) -> usize {
    let errors = events
        .as_array()
        .expect("an event list")
        .iter()
        .filter(|e| e["event"] == "DEVICE_UNPLUG_GUEST_ERROR")
        .count();
    // Reads whatever the guest printed meanwhile.
    vm.console.command("events");
    let refusals = vm
        .console
        .async_lines
        .iter()
        .filter(|l| l.starts_with(refusal))
        .count();
    assert!(refusals >= 1, "the guest refused at least once");
    assert_eq!(
        errors, refusals,
        "one DEVICE_UNPLUG_GUEST_ERROR per refusal"
    );
    refusals
}

/// Helpers shared by the benchmark binaries.
pub mod bench {
    /// The median (sorts `values`).
    pub fn median(values: &mut [f64]) -> f64 {
        values.sort_by(|a, b| a.total_cmp(b));
        values[values.len() / 2]
    }

    /// The `p`th percentile, nearest rank (sorts `values`).
    pub fn percentile(values: &mut [f64], p: f64) -> f64 {
        values.sort_by(|a, b| a.total_cmp(b));
        let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
        values[rank.clamp(1, values.len()) - 1]
    }

    /// The first numeric command-line argument (`cargo bench ... -- N`), or `default`.
    pub fn count_arg(default: usize) -> usize {
        std::env::args()
            .skip(1)
            .find_map(|arg| arg.parse().ok())
            .unwrap_or(default)
    }

    /// The proportional set size of process `pid`, in KiB: its private
    /// pages, and its share of each page it shares (what it costs the host).
    pub fn pss_kib(pid: u32) -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .ok()
            .and_then(|rollup| {
                rollup.lines().find_map(|line| {
                    line.strip_prefix("Pss:")
                        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                })
            })
            .unwrap_or(0)
    }

    /// A guest call that needs the device process `kind` (the RTAS server
    /// alone, the controller through it, the event log through it), as a
    /// command of the test guest.
    pub fn guest_call(kind: &str) -> &'static str {
        match kind {
            "rtas-server" => "time",
            "hotplug-controller" => "rtas-raw 0x2000000 0x201d 2 2 9003 0x10000000",
            _ => "rtas-raw 0x2000000 0x200f 4 1 1073741824 0 0 0",
        }
    }

    /// A kB field of /proc/PID/status (`VmRSS:`, `VmHWM:`), in KiB.
    pub fn status_kib(pid: u32, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
    }
}
