//! `papervisor`: the core process.

use vmm::{
    config, console, daemon, devices, logging, machine, qmp, runtime, seccomp, signals, vcpu,
};

use config::Cli;
use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit status when the VM could not be run or the guest crashed.
const EXIT_FAILURE: u8 = 1;
/// How long the last lines of a VM that ends may take to reach the log.
const LOG_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);
/// glibc's malloc arenas at most (its default for 2 CPUs would be 16).
const MALLOC_ARENAS: i32 = 8;

fn main() -> ExitCode {
    vmm::STARTED.get_or_init(std::time::Instant::now);
    let cli: Cli = match common::parse_cli("papervisor") {
        Ok(cli) => cli,
        Err(exit) => return exit,
    };
    // Before any thread starts: the parent waits for the child to serve.
    let detached = if cli.daemonize {
        match daemon::daemonize() {
            Ok(detached) => Some(detached),
            Err(error) => {
                eprintln!("papervisor: cannot detach: {error}");
                return ExitCode::from(EXIT_FAILURE);
            }
        }
    } else {
        None
    };
    // Before any thread starts: it changes the environment.
    let notifier = match daemon::Notifier::from_environment() {
        Ok(notifier) => notifier,
        Err(error) => {
            eprintln!("papervisor: {error}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let no_machine = cli.no_machine;
    let trace = (cli.trace.clone(), cli.trace_filter.clone());
    let qmp_fd = cli.qmp_fd;
    let pid_file = match cli
        .pidfile
        .as_deref()
        .map(daemon::PidFile::write)
        .transpose()
    {
        Ok(pid_file) => pid_file,
        Err(error) => {
            eprintln!("papervisor: {error}");
            return ExitCode::from(common::EXIT_USAGE);
        }
    };
    let log_level = cli
        .log_level
        .as_deref()
        .and_then(|level| level.parse().ok());
    let keep_log = cli.keep_log;
    let (log_file, interactive_log) = match open_log(&cli) {
        Ok(log_file) => log_file,
        Err(error) => {
            eprintln!("papervisor: {error}");
            return ExitCode::from(common::EXIT_USAGE);
        }
    };
    // Every process of the VM logs into one pipe that never makes a writer
    // wait; a thread of the core drains it into the log (see `logging`).
    let log_pipe = match logging::LogPipe::new() {
        Ok(pipe) => pipe,
        Err(error) => {
            eprintln!("papervisor: cannot create the log pipe: {error}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let (core_log, shared_log) = match (log_pipe.writer(), log_pipe.writer()) {
        (Ok(core), Ok(shared)) => (core, std::sync::Arc::new(shared)),
        (Err(error), _) | (_, Err(error)) => {
            eprintln!("papervisor: cannot share the log pipe: {error}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    common::init_logging("core", log_level, Some(core_log));

    let cold_plugs = cli
        .blockdev
        .iter()
        .map(|text| ("--blockdev", text))
        .chain(cli.object.iter().map(|text| ("--object", text)))
        .chain(cli.device.iter().map(|text| ("--device", text)))
        .map(|(option, text)| vmm::qmp::arguments::command_line_request(option, text))
        .collect::<Result<Vec<_>, _>>();
    let cold_plugs = match cold_plugs {
        Ok(requests) => requests,
        Err(error) => {
            eprintln!("papervisor: {error}");
            return ExitCode::from(common::EXIT_USAGE);
        }
    };
    let mut config = match config::VmConfig::from_cli(cli) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("papervisor: {error}");
            return ExitCode::from(common::EXIT_USAGE);
        }
    };
    config.cold_plugs = cold_plugs;
    if let Some(dir) = config.helper_dir.clone() {
        devices::spawn::set_helper_dir(dir);
    }
    // The QMP listener: the socket claimed at its path, or the one handed
    // over; either way a descriptor no device process inherits.
    let qmp_listener = match (&config.qmp_socket, qmp_fd) {
        (Some(socket), _) => socket
            .listener()
            .map(Some)
            .map_err(|error| format!("cannot serve QMP on {}: {error}", socket.path().display())),
        (None, Some(fd)) => daemon::inherited_listener(fd).map(Some),
        (None, None) => Ok(None),
    };
    let qmp_listener = match qmp_listener {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("papervisor: {error}");
            return ExitCode::from(common::EXIT_USAGE);
        }
    };
    config.sandbox.log_level = log::max_level();
    config.sandbox.log_file = Some(shared_log);
    raise_descriptor_limit();
    if let Err(error) = install_kick_handler() {
        eprintln!("papervisor: {}", common::describe(&error));
        return ExitCode::from(EXIT_FAILURE);
    }
    // Termination signals end the VM like quit does; they are taken by one
    // thread (see `signals`), so every thread started from here blocks them.
    let signals = match signals::block() {
        Ok(signals) => signals,
        Err(error) => {
            eprintln!("papervisor: cannot block termination signals: {error}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    // glibc's malloc opens files lazily: the CPU count (/sys) the first time
    // a thread needs a new arena, and /proc/sys/vm/overcommit_memory the
    // first time it shrinks a thread's heap. Under a thread's seccomp filter
    // either open would kill the core: fixed limits mean it never does.
    for (parameter, value) in [
        (nix::libc::M_ARENA_MAX, MALLOC_ARENAS),
        (nix::libc::M_TRIM_THRESHOLD, i32::MAX),
    ] {
        // SAFETY: mallopt only sets an allocator parameter; no thread runs yet.
        if unsafe { nix::libc::mallopt(parameter, value) } != 1 {
            eprintln!("papervisor: cannot set malloc parameter {parameter}");
            return ExitCode::from(EXIT_FAILURE);
        }
    }
    // Set before any thread starts: each installs its filter in this mode
    // (one that starts before would install none).
    seccomp::set_mode(&config.sandbox.seccomp);
    // Its writer is the first thread: it installs its filter in that mode.
    if let Err(error) = start_trace(&trace) {
        eprintln!("papervisor: {error}");
        return ExitCode::from(common::EXIT_USAGE);
    }
    if no_machine {
        let log_drain = match log_pipe.drain_into(log_file, vm_label(&config)) {
            Ok(drain) => drain,
            Err(error) => {
                eprintln!("papervisor: cannot start the log thread: {error}");
                return ExitCode::from(EXIT_FAILURE);
            }
        };
        let sockets = config.qmp_socket.take();
        let result = serve_without_machine(&config, signals, qmp_listener, detached, notifier);
        drop(sockets);
        drop(pid_file);
        log_drain.flush(LOG_FLUSH);
        settle_interactive_log(interactive_log, result.is_ok(), keep_log);
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("papervisor: {error}");
                ExitCode::from(EXIT_FAILURE)
            }
        };
    }
    // What the device processes run as, and where their jails go: fixed
    // before the spawner starts, since it takes them from its command line.
    let jail_dir = config.sandbox.jail_dir.clone();
    let runtime = match claim_runtime(&mut config) {
        Ok(runtime) => runtime,
        Err(error) => {
            use runtime::RuntimeError;
            // A value of the command line that cannot serve: named, exit 2.
            let (option, status) = match &error {
                RuntimeError::Create(..) | RuntimeError::NotPrivate(_) => (
                    format!("--jail-dir {}: ", jail_dir.display()),
                    common::EXIT_USAGE,
                ),
                RuntimeError::UidInUse(_)
                | RuntimeError::GidInUse(_)
                | RuntimeError::IdsNeedRoot => (String::new(), common::EXIT_USAGE),
                _ => (String::new(), EXIT_FAILURE),
            };
            eprintln!("papervisor: {option}{}", common::describe(&error));
            return ExitCode::from(status);
        }
    };
    // Privileges: only the spawner process keeps some, and only what
    // starting jails needs; the core (every thread of it) drops them all.
    if config.sandbox.device_mode == devices::DeviceMode::OutOfProcess {
        let args = devices::spawn::SpawnerArgs {
            sandbox: &config.sandbox,
            guest_memory: config.memory.max_size,
            owner: nix::unistd::geteuid().as_raw(),
        };
        if let Err(error) = devices::spawn::start_spawner(&args) {
            eprintln!("papervisor: {}", common::describe(&error));
            return ExitCode::from(EXIT_FAILURE);
        }
    }
    if let Err(error) = jailer::privileges::drop_all() {
        eprintln!("papervisor: {}", common::describe(&error));
        return ExitCode::from(EXIT_FAILURE);
    }
    // No other process of the same uid may read the core's memory (guest RAM).
    if let Err(error) = nix::sys::prctl::set_dumpable(false) {
        eprintln!("papervisor: cannot make the core non-dumpable: {error}");
        return ExitCode::from(EXIT_FAILURE);
    }
    let log_drain = match log_pipe.drain_into(log_file, vm_label(&config)) {
        Ok(drain) => drain,
        Err(error) => {
            eprintln!("papervisor: cannot start the log thread: {error}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    // The stdio console: the terminal in raw mode while the VM runs.
    let terminal = match config.console {
        config::ConsoleConfig::Stdio => match console::RawTerminal::enter() {
            Ok(terminal) => terminal,
            Err(error) => {
                eprintln!("papervisor: {}", common::describe(&error));
                return ExitCode::from(EXIT_FAILURE);
            }
        },
        config::ConsoleConfig::Socket(_) | config::ConsoleConfig::Pty => None,
    };
    // Sockets this VM bound go when it ends, and only those.
    let sockets = (config.console_socket.take(), config.qmp_socket.take());
    let result = run(
        config,
        signals,
        qmp_listener,
        sockets.0.as_ref(),
        detached,
        notifier,
    );
    drop(terminal);
    drop(sockets);
    drop(runtime);
    drop(pid_file);
    let exit = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            log::error!("{}", common::describe(error.as_ref()));
            ExitCode::from(EXIT_FAILURE)
        }
    };
    vmm::trace::flush(LOG_FLUSH);
    log_drain.flush(LOG_FLUSH);
    settle_interactive_log(interactive_log, exit == ExitCode::SUCCESS, keep_log);
    exit
}

/// `--trace` and `--trace-filter`.
fn start_trace((target, trace_filter): &(Option<PathBuf>, Option<String>)) -> Result<(), String> {
    let Some(target) = target else {
        if trace_filter.is_some() {
            return Err("--trace-filter: without --trace there is nothing to filter".into());
        }
        return Ok(());
    };
    let sink = if target.as_os_str() == "ring" {
        vmm::trace::Sink::Ring
    } else {
        vmm::trace::Sink::File(vmm::line_stream::open_for_append(target, "--trace")?)
    };
    let filter = match trace_filter {
        Some(text) => vmm::trace::parse_filter(text)?,
        None => Vec::new(),
    };
    vmm::trace::start(sink, filter)
        .map_err(|error| format!("--trace: cannot start its thread: {error}"))
}

/// What every log line starts with: the VM's name, or its pid.
fn vm_label(config: &config::VmConfig) -> String {
    config
        .name
        .clone()
        .unwrap_or_else(|| format!("vm-{}", std::process::id()))
}

/// Where the logs go: `--log-file` (a file, or `stderr`); by default stderr,
/// unless the console is this terminal: then a file beside the runtime
/// directories, named on stderr before the console starts.
/// The interactive file's path comes back too: it goes when the VM ends
/// well, unless `--keep-log`.
fn open_log(cli: &Cli) -> Result<(Option<std::fs::File>, Option<PathBuf>), String> {
    let (path, interactive) = match &cli.log_file {
        Some(path) if path.as_os_str() == "stderr" => return Ok((None, None)),
        Some(path) => (path.clone(), false),
        None => {
            let stdio = matches!(cli.console, config::ConsoleConfig::Stdio);
            if !stdio || !nix::unistd::isatty(std::io::stderr()).unwrap_or(false) {
                return Ok((None, None));
            }
            let base = cli.jail_dir.clone().unwrap_or_else(runtime::default_base);
            runtime::create_private_dir(&base).map_err(|error| common::describe(&error))?;
            let path = base.join(format!("papervisor-{}.log", std::process::id()));
            eprintln!(
                "papervisor: the console is this terminal; logs go to {}",
                path.display()
            );
            (path, true)
        }
    };
    let file = vmm::line_stream::open_for_append(&path, "--log-file")?;
    Ok((Some(file), interactive.then_some(path)))
}

/// The interactive log goes with a VM that ended well (unless
/// `--keep-log`); one that failed keeps it, and says where.
fn settle_interactive_log(path: Option<PathBuf>, ended_well: bool, keep: bool) {
    let Some(path) = path else {
        return;
    };
    if ended_well && !keep {
        let _ = std::fs::remove_file(&path);
    } else {
        eprintln!("papervisor: the log is kept in {}", path.display());
    }
}

/// The runtime directory (every VM's: its disks' vhost-user sockets are
/// made there) and, for a jailed VM, the device processes' ids; held until
/// the VM ends.
fn claim_runtime(
    config: &mut config::VmConfig,
) -> Result<Option<(runtime::RunDir, runtime::Identity)>, runtime::RuntimeError> {
    let base = config.sandbox.jail_dir.clone();
    let run_dir = runtime::RunDir::create(&base)?;
    if !config.sandbox.jail {
        log::info!("runtime directory {}", run_dir.path().display());
        config.sandbox.jail_dir = run_dir.jails();
        return Ok(Some((run_dir, runtime::Identity::unprivileged())));
    }
    let identity = if nix::unistd::geteuid().is_root() {
        runtime::Identity::claim(
            std::path::Path::new(runtime::IDS_DIR),
            config.uid,
            config.gid,
        )?
    } else if config.uid.is_some() || config.gid.is_some() {
        return Err(runtime::RuntimeError::IdsNeedRoot);
    } else {
        runtime::Identity::unprivileged()
    };
    log::info!(
        "runtime directory {}; device processes run as uid {} gid {}{}",
        run_dir.path().display(),
        identity.uid,
        identity.gid,
        if nix::unistd::geteuid().is_root() {
            ""
        } else {
            " in their user namespace (this user's ids outside)"
        }
    );
    config.sandbox.jail_dir = run_dir.jails();
    config.sandbox.uid = identity.uid;
    config.sandbox.gid = identity.gid;
    Ok(Some((run_dir, identity)))
}

/// Builds the VM, serves QMP, and runs the guest to the end.
fn run(
    config: config::VmConfig,
    signals: signals::Blocked,
    qmp_listener: Option<std::os::unix::net::UnixListener>,
    console_socket: Option<&vmm::sockets::ClaimedSocket>,
    detached: Option<daemon::Detached>,
    notifier: Option<daemon::Notifier>,
) -> Result<(), Box<dyn Error>> {
    let qmp = std::sync::Arc::new(qmp::QmpServer::default());
    let vm = machine::Vm::new(config, console_socket, std::sync::Arc::clone(&qmp))?;
    signals.forward_to(vm.qmp_context().control)?;
    if let Some(listener) = qmp_listener {
        qmp.serve(listener, vm.qmp_context())
            .map_err(|error| format!("cannot serve QMP: {error}"))?;
    }
    if let Some(detached) = detached {
        detached.serving();
    }
    // Set up: from here this thread is the control loop, under its filter.
    seccomp::confine_thread(seccomp::ThreadKind::Control)?;
    Ok(vm.run(|| {
        if let Some(notifier) = notifier {
            notifier.ready();
        }
    })?)
}

/// `--no-machine`: QMP alone, its descriptions of this VMM answered and
/// every command that needs a machine refused, until `quit` or a signal.
fn serve_without_machine(
    config: &config::VmConfig,
    signals: signals::Blocked,
    qmp_listener: Option<std::os::unix::net::UnixListener>,
    detached: Option<daemon::Detached>,
    notifier: Option<daemon::Notifier>,
) -> Result<(), Box<dyn Error>> {
    use vmm::control::ControlMessage;
    let (control, inbox) = std::sync::mpsc::channel();
    let cpus = std::sync::Arc::new(vcpu::CpuTable::new(0));
    cpus.set_status(vcpu::RunStatus::Prelaunch);
    let context = qmp::QmpContext {
        control: control.clone(),
        cpus,
        name: config.name.clone(),
        uuid: config.uuid.clone(),
        machine: false,
        kvm_present: qmp::kvm_present(),
        migration_events: Default::default(),
    };
    signals.forward_to(control)?;
    let qmp = std::sync::Arc::new(qmp::QmpServer::default());
    if let Some(listener) = qmp_listener {
        qmp.serve(listener, context)
            .map_err(|error| format!("cannot serve QMP: {error}"))?;
    }
    if let Some(detached) = detached {
        detached.serving();
    }
    log::info!("no machine: serving QMP only");
    if let Some(notifier) = notifier {
        notifier.ready();
    }
    seccomp::confine_thread(seccomp::ThreadKind::Control)?;
    for message in inbox {
        match message {
            ControlMessage::Quit | ControlMessage::HostSignal(_) => break,
            ControlMessage::Qmp { reply, .. } => {
                let _ = reply.send(Err(vmm::request::QmpError::generic(
                    "this command needs a machine, and there is none (-machine none)",
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

/// vCPU threads are kicked out of KVM_RUN with a signal; it must not kill us.
fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    extern "C" fn ignore(_: i32, _: *mut nix::libc::siginfo_t, _: *mut std::ffi::c_void) {}
    vmm_sys_util::signal::register_signal_handler(vcpu::kick_signal(), ignore)
}

/// The core holds a descriptor per vCPU, channel, memory backend and
/// client, all bounded, and needs more for every restart of a device
/// process: it takes every descriptor its hard limit allows (glibc and
/// systemd leave the soft limit at 1024 for select(), which nothing here
/// uses).
fn raise_descriptor_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(error) = setrlimit(Resource::Nofile, limit) {
            log::warn!("cannot raise the descriptor limit: {error}");
        }
    }
}
