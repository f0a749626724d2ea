//! Papervisor managed by the distribution's libvirt, unmodified, through
//! `papervisor-qemu`, driven with `virsh` only: the capability probe, a
//! domain's start, its console, CPU and DIMM hot-plug (with a refusal that
//! reaches virsh), pause, a guest power-off, a second start and destroy,
//! with nothing left behind. libvirt runs the emulator as its own
//! unprivileged user (libvirt-qemu). Needs a running libvirtd:
//! `scripts/libvirt-daemon` starts one (CI does); the device mode comes
//! from the suite's variable, passed with libvirt's `<qemu:env>`.

use papervisor_tests::{
    binary, disks, in_process, root_and_kvm, say_skipped, DEVICE_MODE_VARIABLE,
};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const CONNECTION: &str = "qemu:///system";
/// Where `scripts/libvirt-daemon` has libvirtd log its monitor traffic.
const MONITOR_LOG: &str = "/var/log/libvirt/papervisor-libvirtd.log";
const PROMPT: &str = "guest> ";
const TIMEOUT: Duration = Duration::from_secs(30);
/// The binaries the front end runs, copied where libvirt's user reads them.
const BINARIES: [&str; 9] = [
    "papervisor-qemu",
    "papervisor",
    "papervisor-spawner",
    "papervisor-rtas",
    "papervisor-hotplug",
    "papervisor-eventlog",
    "papervisor-block",
    "papervisor-reaper",
    "jailer",
];

fn virsh(args: &[&str]) -> Output {
    Command::new("virsh")
        .arg("-c")
        .arg(CONNECTION)
        .args(args)
        .output()
        .expect("virsh (libvirt-clients) is needed")
}

/// Runs virsh; its stdout, or a panic with what it said.
fn virsh_ok(args: &[&str]) -> String {
    let output = virsh(args);
    assert!(
        output.status.success(),
        "virsh {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn domain_state(domain: &str) -> String {
    virsh_ok(&["domstate", domain]).trim().to_string()
}

fn wait_state(domain: &str, state: &str) {
    let deadline = Instant::now() + TIMEOUT;
    while domain_state(domain) != state {
        assert!(
            Instant::now() < deadline,
            "{domain} is {}, not {state}",
            domain_state(domain)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `virsh console` on a pseudo-terminal of its own, as an operator runs it.
struct VirshConsole {
    master: std::fs::File,
    child: std::process::Child,
    seen: String,
}

impl VirshConsole {
    fn open(domain: &str) -> VirshConsole {
        let pty = nix::pty::openpty(None, None).expect("a pseudo-terminal");
        let terminal = std::fs::File::from(pty.slave);
        let stdio = |file: &std::fs::File| Stdio::from(file.try_clone().unwrap());
        let mut command = Command::new("virsh");
        command
            .args(["-c", CONNECTION, "console", domain, "--force"])
            .stdin(stdio(&terminal))
            .stdout(stdio(&terminal))
            .stderr(stdio(&terminal));
        // SAFETY: between fork and exec the child only calls setsid and
        // ioctl, which are async-signal-safe; stdin is the terminal.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                nix::unistd::setsid()?;
                if nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("virsh console");
        drop(terminal);
        let mut console = VirshConsole {
            master: std::fs::File::from(pty.master),
            child,
            seen: String::new(),
        };
        // Connected. virsh makes its terminal raw only after this line,
        // flushing what was typed before: the first key is typed by
        // `wait_for_prompt`, which types again until it is heard.
        console.read_until("Escape character is");
        console.read_until("\n");
        console
    }

    /// Reads until `pattern` appears; what came before it and it.
    fn read_until(&mut self, pattern: &str) -> String {
        match self.read_until_within(pattern, TIMEOUT) {
            Some(before) => before,
            None => panic!(
                "the console never showed {pattern:?}; it showed:\n{}",
                self.seen
            ),
        }
    }

    /// Types Enter until the guest's shell answers with a prompt. A key
    /// typed before virsh has made its terminal raw is flushed by it, and
    /// virsh says "Escape character is" before that: one Enter may be lost.
    fn wait_for_prompt(&mut self) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            self.master.write_all(b"\r").unwrap();
            if self
                .read_until_within(PROMPT, Duration::from_secs(1))
                .is_some()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the console never showed a prompt; it showed:\n{}",
                self.seen
            );
        }
    }

    /// Reads until `pattern` appears or `within` has passed.
    fn read_until_within(&mut self, pattern: &str, within: Duration) -> Option<String> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let deadline = Instant::now() + within;
        loop {
            if let Some(at) = self.seen.find(pattern) {
                let end = at + pattern.len();
                let before = self.seen[..end].to_string();
                self.seen.drain(..end);
                return Some(before);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            // SAFETY: `master` is open for the whole call.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.master.as_raw_fd()) };
            let mut ready = [PollFd::new(fd, PollFlags::POLLIN)];
            let wait = PollTimeout::try_from(left.min(Duration::from_millis(200))).unwrap();
            if poll(&mut ready, wait).unwrap_or(0) == 0 {
                continue;
            }
            let mut buffer = [0u8; 4096];
            match self.master.read(&mut buffer) {
                Ok(0) | Err(_) => panic!("virsh console ended; it showed:\n{}", self.seen),
                Ok(n) => self
                    .seen
                    .push_str(&String::from_utf8_lossy(&buffer[..n]).replace('\r', "")),
            }
        }
    }

    /// Runs a guest shell command; its output lines.
    fn command(&mut self, line: &str) -> Vec<String> {
        self.read_pending();
        self.master
            .write_all(format!("{line}\r").as_bytes())
            .unwrap();
        let echoed = self.read_until(&format!("{line}\n"));
        drop(echoed);
        let output = self.read_until(PROMPT);
        output
            .trim_end_matches(PROMPT)
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Drops what arrived before a command (a prompt, hot-plug lines).
    fn read_pending(&mut self) {
        self.seen.clear();
    }
}

impl Drop for VirshConsole {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binaries, copied into a directory libvirt's user can read and run.
fn copied_binaries() -> PathBuf {
    let dir = papervisor_tests::scratch_dir().join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    // The scratch directory and this one, never the temporary directory
    // itself (other users' files live there).
    for path in [dir.as_path(), dir.parent().expect("the scratch directory")] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for name in BINARIES {
        papervisor_tests::copy_binary(name, &dir, name);
        assert!(binary(name).exists());
    }
    dir
}

fn domain_xml(name: &str, emulator: &Path, disk: &Path) -> String {
    let env = if in_process() {
        format!(
            "<qemu:commandline><qemu:env name='{DEVICE_MODE_VARIABLE}' value='in-process'/></qemu:commandline>"
        )
    } else {
        String::new()
    };
    format!(
        "<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <memory unit='MiB'>512</memory>
  <maxMemory slots='4' unit='MiB'>2048</maxMemory>
  <vcpu placement='static' current='1'>4</vcpu>
  <os><type arch='ppc64' machine='pseries'>hvm</type></os>
  <cpu><numa><cell id='0' cpus='0-3' memory='512' unit='MiB'/></numa></cpu>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>{}</emulator>
    <controller type='usb' model='none'/>
    <console type='pty'><target type='serial'/></console>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <memballoon model='none'/>
  </devices>
  {env}
</domain>
",
        emulator.display(),
        disk.display()
    )
}

const DIMM_XML: &str =
    "<memory model='dimm'><target><size unit='MiB'>256</size><node>0</node></target></memory>\n";

/// The pids of processes running one of the binaries in `dir`.
fn processes_from(dir: &Path) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe.starts_with(dir))
        })
        .collect()
}

/// The monitor commands libvirt sent since `offset` of its log, in order,
/// and the replies that said a command was not found.
fn monitor_traffic(offset: u64) -> (Vec<String>, Vec<String>) {
    let mut log = std::fs::File::open(MONITOR_LOG).expect("libvirtd's monitor log");
    let mut text = String::new();
    std::io::Seek::seek(&mut log, std::io::SeekFrom::Start(offset)).unwrap();
    log.read_to_string(&mut text).unwrap();
    let mut sent = Vec::new();
    let mut not_found = Vec::new();
    for line in text.lines() {
        if line.contains("QEMU_MONITOR_IO_WRITE") {
            if let Some(name) = line
                .split("\"execute\":\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
            {
                sent.push(name.to_string());
            }
        }
        if line.contains("QEMU_MONITOR_RECV_REPLY") && line.contains("CommandNotFound") {
            not_found.push(line.to_string());
        }
    }
    (sent, not_found)
}

#[test]
fn libvirt_probes_starts_hotplugs_and_stops_papervisor() {
    if !root_and_kvm("libvirt_probes_starts_hotplugs_and_stops_papervisor") {
        return;
    }
    if !virsh(&["list", "--all"]).status.success() {
        say_skipped(
            "SKIPPED libvirt_probes_starts_hotplugs_and_stops_papervisor: no libvirtd answers on qemu:///system (scripts/libvirt-daemon starts one)",
        );
        return;
    }
    let daemon = Command::new("libvirtd").arg("--version").output();
    eprintln!(
        "{}",
        daemon.map_or_else(
            |error| error.to_string(),
            |o| String::from_utf8_lossy(&o.stdout).into_owned()
        )
    );
    let log_offset = std::fs::metadata(MONITOR_LOG).map(|m| m.len()).unwrap_or(0);
    let bin = copied_binaries();
    let emulator = bin.join("papervisor-qemu");
    let emulator_arg = emulator.to_str().unwrap();

    // The probe: libvirt runs the front end with -machine none, as its own
    // user, and asks what it is.
    let capabilities = virsh_ok(&[
        "domcapabilities",
        "--emulatorbin",
        emulator_arg,
        "--arch",
        "ppc64",
        "--machine",
        "pseries",
        "--virttype",
        "qemu",
    ]);
    for expected in [
        "<domain>qemu</domain>",
        "<machine>pseries</machine>",
        "<arch>ppc64</arch>",
        "<vcpu max='64'/>",
    ] {
        assert!(
            capabilities.contains(expected),
            "{expected}:\n{capabilities}"
        );
    }

    let name = format!(
        "papervisor-test-{}-{}",
        if in_process() { "threads" } else { "processes" },
        std::process::id()
    );
    // Images: libvirt gives its user the image (and takes it back).
    let boot_disk = disks::image(&bin, "boot.raw", 16 << 20);
    let hot_disk = disks::image(&bin, "hot.raw", 8 << 20);
    let xml_path = bin.join("domain.xml");
    std::fs::write(&xml_path, domain_xml(&name, &emulator, &boot_disk)).unwrap();
    let dimm_path = bin.join("dimm.xml");
    std::fs::write(&dimm_path, DIMM_XML).unwrap();
    let dimm = dimm_path.to_str().unwrap();
    virsh_ok(&["define", xml_path.to_str().unwrap()]);
    let undefine = Undefine(name.clone());

    virsh_ok(&["start", &name]);
    assert_eq!(domain_state(&name), "running");
    let pid = core_pid(&name);
    let mut console = VirshConsole::open(&name);
    console.wait_for_prompt();
    assert_eq!(console.command("cpus"), ["cpu 0 online"]);

    // Disks: the domain's, there at boot (libvirt's -blockdev pair and
    // -device), written; one more attached and detached while it runs.
    assert_eq!(console.command("blk"), ["blk 0: 32768 sectors"]);
    assert_eq!(
        console.command("blk write 0 8 16 7"),
        ["blk write: 16 sectors"]
    );
    assert_eq!(
        console.command("blk check 0 8 16 7"),
        ["blk check: 16 sectors, ok"]
    );
    let hot = hot_disk.to_str().unwrap();
    virsh_ok(&[
        "attach-disk",
        &name,
        hot,
        "vdb",
        "--live",
        "--targetbus",
        "virtio",
    ]);
    console.read_until("dlpar: pci add");
    assert_eq!(console.command("pci").len(), 2, "the hot-plugged disk");
    virsh_ok(&["detach-disk", &name, "vdb", "--live"]);
    console.read_until("dlpar: pci remove");
    assert_eq!(console.command("pci").len(), 1);

    // libvirtd restarts (an upgrade, say) while the domain runs: the new
    // daemon reconnects to its monitor, and the domain goes on.
    if restart_libvirtd() {
        assert_eq!(domain_state(&name), "running");
        assert_eq!(core_pid(&name), pid);
        console = VirshConsole::open(&name);
        console.wait_for_prompt();
    }

    // CPUs: one more, then back; the guest refuses first (the CPU to
    // remove is its last online one), and virsh says so.
    virsh_ok(&["setvcpus", &name, "2", "--live"]);
    console.read_until("dlpar: cpu add");
    assert_eq!(console.command("cpus"), ["cpu 0 online", "cpu 1 online"]);
    console.command("cpu offline 0");
    let refused = virsh(&["setvcpus", &name, "1", "--live"]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("rejected by the guest"), "{said}");
    assert!(virsh_ok(&["vcpucount", &name, "--live", "--active"]).trim() == "2");
    console.command("cpu online 0");
    virsh_ok(&["setvcpus", &name, "1", "--live"]);
    assert_eq!(
        virsh_ok(&["vcpucount", &name, "--live", "--active"]).trim(),
        "1"
    );
    assert_eq!(console.command("cpus"), ["cpu 0 online"]);

    // A DIMM: the guest onlines it, and gives it back.
    virsh_ok(&["attach-device", &name, dimm, "--live"]);
    console.read_until("dlpar: memory add count 1 from 0x80000004: ok");
    let lmbs = console.command("mem");
    assert_eq!(lmbs[0], "lmb 0x80000004 at 0x40000000: assigned online");
    virsh_ok(&["detach-device", &name, dimm, "--live"]);
    console.read_until("dlpar: memory remove count 1 from 0x80000004: ok");
    assert_eq!(
        console.command("mem")[0],
        "lmb 0x80000004 at 0x40000000: free"
    );
    assert!(!virsh_ok(&["dumpxml", &name]).contains("model='dimm'"));

    // Pause, then a guest power-off.
    virsh_ok(&["suspend", &name]);
    assert_eq!(domain_state(&name), "paused");
    virsh_ok(&["resume", &name]);
    assert_eq!(domain_state(&name), "running");
    assert_eq!(console.command("cpus"), ["cpu 0 online"]);
    virsh_ok(&["shutdown", &name]);
    wait_state(&name, "shut off");
    drop(console);
    assert_nothing_left(&bin, pid);

    // Started again with a DIMM in its definition: there at boot (libvirt
    // puts it on the command line), then destroyed.
    virsh_ok(&["attach-device", &name, dimm, "--config"]);
    virsh_ok(&["start", &name]);
    let pid = core_pid(&name);
    let mut console = VirshConsole::open(&name);
    console.wait_for_prompt();
    assert_eq!(
        console.command("mem")[0],
        "lmb 0x80000004 at 0x40000000: assigned online"
    );
    virsh_ok(&["destroy", &name]);
    assert_eq!(domain_state(&name), "shut off");
    drop(console);
    assert_nothing_left(&bin, pid);
    drop(undefine);
    let image = std::fs::read(&boot_disk).unwrap();
    assert_eq!(
        image[8 * 512..24 * 512],
        disks::sectors_of_pattern(8, 16, 7)[..],
        "the image holds what the guest wrote"
    );

    let (sent, not_found) = monitor_traffic(log_offset);
    eprintln!("libvirt's monitor commands, in order: {}", sent.join(" "));
    for command in [
        "query-target",
        "qom-list-types",
        "query-machines",
        "device_add",
        "cont",
    ] {
        assert!(sent.iter().any(|c| c == command), "{command} never sent");
    }
    assert!(
        not_found.is_empty(),
        "commands libvirt sent that were not found:\n{}",
        not_found.join("\n")
    );
    let _ = std::fs::remove_dir_all(bin.parent().unwrap());
}

/// Restarts libvirtd if it is the tests' own (`scripts/libvirt-daemon`
/// started it); says so loudly when it is not.
fn restart_libvirtd() -> bool {
    if !Path::new("/run/libvirt/papervisor-test-daemon").exists() {
        say_skipped("SKIPPED the libvirtd restart: this libvirtd is not the tests' own");
        return false;
    }
    let _ = Command::new("pkill")
        .args(["-TERM", "-x", "libvirtd"])
        .status();
    let deadline = Instant::now() + TIMEOUT;
    while Command::new("pgrep")
        .args(["-x", "libvirtd"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        assert!(Instant::now() < deadline, "libvirtd did not end");
        std::thread::sleep(Duration::from_millis(100));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/libvirt-daemon");
    assert!(
        Command::new(script).status().unwrap().success(),
        "libvirtd did not start again"
    );
    true
}

/// The core's pid of a running domain, as libvirt records it.
fn core_pid(domain: &str) -> u32 {
    std::fs::read_to_string(format!("/run/libvirt/qemu/{domain}.pid"))
        .expect("libvirt's pid file of the domain")
        .trim()
        .parse()
        .expect("a pid")
}

/// No process runs the copied binaries (the probe's, which libvirt ends
/// itself, included), and the runtime directory of the core `pid` is gone.
fn assert_nothing_left(bin: &Path, pid: u32) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let left = processes_from(bin);
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "still running: {left:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let user = nix::unistd::User::from_name("libvirt-qemu")
        .unwrap()
        .expect("libvirt's user");
    let runtime = PathBuf::from(format!("/tmp/papervisor-{}/vm-{pid}", user.uid));
    assert!(!runtime.exists(), "{} is left", runtime.display());
}

/// Undefines the domain (destroying it first) however the test ends.
struct Undefine(String);

impl Drop for Undefine {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.0]);
        let _ = virsh(&["undefine", &self.0]);
    }
}
