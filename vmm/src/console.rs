//! The guest console (the PAPR vty): a bounded input queue filled from stdio or
//! a Unix socket, and output to the same place. New input after the guest found
//! the queue empty raises the vty interrupt, so the guest can sleep meanwhile.
//! Output goes through a buffer that a writer thread drains, so a slow or
//! absent reader never stalls a vCPU; output written while no socket client is
//! connected waits for the next one.

use common::lock;
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use thiserror::Error;
use vmm_sys_util::eventfd::EventFd;

/// Input waiting for the guest; a writer blocks (nothing is dropped) when full.
const INPUT_CAPACITY: usize = 4096;
/// Output not yet written (no client yet, or a slow one); past this the
/// oldest bytes go first.
const BACKLOG_CAPACITY: usize = 1024 * 1024;
/// H_GET_TERM_CHAR returns at most 16 bytes.
pub const MAX_READ: usize = 16;
/// Ctrl-a: on the stdio console, `Ctrl-a x` ends the VM (as in QEMU) and
/// `Ctrl-a Ctrl-a` sends one Ctrl-a to the guest.
const ESCAPE: u8 = 0x01;

/// Why the console cannot be served.
#[derive(Debug, Error)]
pub enum ConsoleError {
    /// Its socket cannot be bound.
    #[error("cannot serve the console on {path}")]
    Bind {
        /// The socket's path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Its thread cannot be started.
    #[error("cannot start the console thread")]
    Thread(#[source] std::io::Error),
    /// The terminal cannot be put in raw mode (stdio console).
    #[error("cannot put the terminal in raw mode")]
    Terminal(#[source] nix::Error),
    /// No pseudo-terminal can be opened (pty console).
    #[error("cannot open a pseudo-terminal for the console")]
    Pty(#[source] nix::Error),
}

/// The stdio terminal in raw mode (no echo, no line editing, Ctrl-C a byte
/// for the guest) until dropped, when its settings come back.
pub struct RawTerminal {
    saved: nix::sys::termios::Termios,
}

impl RawTerminal {
    /// Raw mode for stdin, if it is a terminal.
    pub fn enter() -> Result<Option<RawTerminal>, ConsoleError> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        if !nix::unistd::isatty(&stdin).unwrap_or(false) {
            return Ok(None);
        }
        let saved = tcgetattr(&stdin).map_err(ConsoleError::Terminal)?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).map_err(ConsoleError::Terminal)?;
        Ok(Some(RawTerminal { saved }))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        use nix::sys::termios::{tcsetattr, SetArg};
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved);
    }
}

/// Watches stdio input for `Ctrl-a x`; what it returns goes to the guest.
#[derive(Default)]
struct EscapeScanner {
    after_escape: bool,
}

/// What one chunk of stdio input holds.
#[derive(Debug, PartialEq, Eq)]
enum Scanned {
    Input(Vec<u8>),
    /// `Ctrl-a x`: the input before it, then end the VM.
    Quit(Vec<u8>),
}

impl EscapeScanner {
    fn scan(&mut self, bytes: &[u8]) -> Scanned {
        let mut input = Vec::with_capacity(bytes.len());
        for &byte in bytes {
            if std::mem::take(&mut self.after_escape) {
                match byte {
                    b'x' => return Scanned::Quit(input),
                    ESCAPE => input.push(ESCAPE),
                    other => input.extend([ESCAPE, other]),
                }
            } else if byte == ESCAPE {
                self.after_escape = true;
            } else {
                input.push(byte);
            }
        }
        Scanned::Input(input)
    }
}

enum Target {
    Stdout,
    /// A pseudo-terminal's master side.
    Pty(std::fs::File),
    /// The connected client, if any, with its number.
    Socket(Option<(u64, UnixStream)>),
}

struct Output {
    target: Target,
    /// The number the next socket client gets: a failed write detaches the
    /// client it was written to, never one that replaced it meanwhile.
    next_client: u64,
    backlog: VecDeque<u8>,
    /// Bytes dropped because the backlog was full, not yet reported.
    dropped: usize,
    /// A terminal shows the output: a line feed goes as CR LF (the
    /// terminal is in raw mode, which does not add the CR), unless the
    /// guest sent the CR itself.
    crlf: bool,
    /// The last byte the guest wrote was a CR.
    after_cr: bool,
}

struct Input {
    queue: VecDeque<u8>,
    /// The guest found the queue empty and may be asleep waiting for input.
    guest_waiting: bool,
}

/// The guest's console (hvc0): bytes from the stdio terminal or a socket
/// client to the guest, and the guest's output back, through bounded
/// buffers that never make a vCPU wait on a slow reader.
pub struct Console {
    input: Mutex<Input>,
    space: Condvar,
    output: Mutex<Output>,
    output_ready: Condvar,
    interrupt: EventFd,
}

impl Console {
    fn new(target: Target, interrupt: EventFd) -> Arc<Console> {
        let crlf = match &target {
            Target::Stdout => nix::unistd::isatty(std::io::stdout()).unwrap_or(false),
            Target::Pty(_) => true,
            Target::Socket(_) => false,
        };
        Arc::new(Console {
            input: Mutex::new(Input {
                queue: VecDeque::new(),
                guest_waiting: true,
            }),
            space: Condvar::new(),
            output: Mutex::new(Output {
                target,
                next_client: 0,
                backlog: VecDeque::new(),
                dropped: 0,
                crlf,
                after_cr: false,
            }),
            output_ready: Condvar::new(),
            interrupt,
        })
    }

    fn start_writer(self: &Arc<Self>) -> Result<(), ConsoleError> {
        let writer = Arc::clone(self);
        thread::Builder::new()
            .name("console-out".into())
            .spawn(move || {
                crate::seccomp::confine_or_exit(crate::seccomp::ThreadKind::Console);
                writer.write_loop()
            })
            .map(|_| ())
            .map_err(ConsoleError::Thread)
    }

    /// Drains the backlog to stdout or the client, outside any vCPU.
    fn write_loop(&self) {
        loop {
            let (chunk, mut client, pty) = {
                let mut output = lock(&self.output);
                loop {
                    let writable = match &output.target {
                        Target::Stdout | Target::Pty(_) => true,
                        Target::Socket(client) => client.is_some(),
                    };
                    if writable && !output.backlog.is_empty() {
                        break;
                    }
                    output = self
                        .output_ready
                        .wait(output)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
                if std::mem::take(&mut output.dropped) > 0 {
                    log::warn!("console: the reader fell {BACKLOG_CAPACITY} bytes behind; the oldest output was dropped");
                }
                let n = output.backlog.len().min(64 * 1024);
                let chunk: Vec<u8> = output.backlog.drain(..n).collect();
                let client = match &output.target {
                    Target::Socket(Some((id, stream))) => {
                        stream.try_clone().ok().map(|stream| (*id, stream))
                    }
                    _ => None,
                };
                let pty = match &output.target {
                    Target::Pty(master) => master.try_clone().ok(),
                    _ => None,
                };
                (chunk, client, pty)
            };
            let written = match (client.as_mut(), pty) {
                (Some((_, stream)), _) => stream.write_all(&chunk),
                (None, Some(mut master)) => master.write_all(&chunk),
                (None, None) => {
                    let mut stdout = std::io::stdout().lock();
                    stdout.write_all(&chunk).and_then(|()| stdout.flush())
                }
            };
            if let Err(error) = written {
                let mut output = lock(&self.output);
                let failed = client.map(|(id, _)| id);
                match &mut output.target {
                    Target::Socket(current) => {
                        if current.as_ref().map(|(id, _)| *id) == failed {
                            log::info!(
                                "console: client gone ({error}); keeping output for the next one"
                            );
                            *current = None;
                        }
                        // Not written to anyone: the current client, or the
                        // next one, gets it.
                        for &byte in chunk.iter().rev() {
                            output.backlog.push_front(byte);
                        }
                    }
                    // Nowhere to write: the bytes are gone with stdout.
                    Target::Stdout | Target::Pty(_) => {}
                }
            }
        }
    }

    /// A console on the process's stdin and stdout; `Ctrl-a x` on stdin
    /// calls `quit`.
    pub fn stdio(
        interrupt: EventFd,
        quit: impl Fn() + Send + 'static,
    ) -> Result<Arc<Console>, ConsoleError> {
        let console = Console::new(Target::Stdout, interrupt);
        console.start_writer()?;
        let reader = Arc::clone(&console);
        thread::Builder::new()
            .name("console-stdin".into())
            .spawn(move || {
                crate::seccomp::confine_or_exit(crate::seccomp::ThreadKind::Console);
                reader.pump_stdio(std::io::stdin().lock(), quit)
            })
            .map_err(ConsoleError::Thread)?;
        Ok(console)
    }

    /// [`Console::pump`] for stdio, which watches for the escape.
    fn pump_stdio(&self, mut source: impl Read, quit: impl Fn()) {
        let mut scanner = EscapeScanner::default();
        let mut buf = [0u8; 512];
        loop {
            match source.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => match scanner.scan(&buf[..n]) {
                    Scanned::Input(bytes) => self.push_input(&bytes),
                    Scanned::Quit(bytes) => {
                        self.push_input(&bytes);
                        log::info!("console: Ctrl-a x: ending the VM");
                        quit();
                        break;
                    }
                },
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    log::debug!("console: input closed: {error}");
                    break;
                }
            }
        }
    }

    /// A console served on the Unix socket `socket`: one client at a time,
    /// a new client replaces the previous one.
    pub fn socket(
        socket: &crate::sockets::ClaimedSocket,
        interrupt: EventFd,
    ) -> Result<Arc<Console>, ConsoleError> {
        let listener = socket.listener().map_err(|source| ConsoleError::Bind {
            path: socket.path().to_path_buf(),
            source,
        })?;
        let console = Console::new(Target::Socket(None), interrupt);
        console.start_writer()?;
        let acceptor = Arc::clone(&console);
        thread::Builder::new()
            .name("console-accept".into())
            .spawn(move || {
                crate::seccomp::confine_or_exit(crate::seccomp::ThreadKind::Console);
                acceptor.accept_loop(listener)
            })
            .map_err(ConsoleError::Thread)?;
        Ok(console)
    }

    /// A console on a new pseudo-terminal, in raw mode, and its path:
    /// output to its master side, input from it. The core holds the other
    /// side open too, so that the master never ends (EIO) between two users
    /// of the terminal, such as two `virsh console` sessions.
    pub fn pty(interrupt: EventFd) -> Result<(Arc<Console>, PathBuf), ConsoleError> {
        use nix::fcntl::{open, OFlag};
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let terminal = |source: nix::Error| ConsoleError::Pty(source);
        let flags = OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
        let master = nix::pty::posix_openpt(flags).map_err(terminal)?;
        nix::pty::grantpt(&master).map_err(terminal)?;
        nix::pty::unlockpt(&master).map_err(terminal)?;
        let path = PathBuf::from(nix::pty::ptsname_r(&master).map_err(terminal)?);
        let peer = open(&path, flags, nix::sys::stat::Mode::empty()).map_err(terminal)?;
        let mut raw = tcgetattr(&peer).map_err(terminal)?;
        cfmakeraw(&mut raw);
        tcsetattr(&peer, SetArg::TCSANOW, &raw).map_err(terminal)?;
        let master = std::fs::File::from(std::os::fd::OwnedFd::from(master));
        let reader = master.try_clone().map_err(ConsoleError::Thread)?;
        let console = Console::new(Target::Pty(master), interrupt);
        console.start_writer()?;
        let pump = Arc::clone(&console);
        thread::Builder::new()
            .name("console-pty".into())
            .spawn(move || {
                crate::seccomp::confine_or_exit(crate::seccomp::ThreadKind::Console);
                // Held for as long as the master is read.
                let _peer = peer;
                pump.pump(reader)
            })
            .map_err(ConsoleError::Thread)?;
        Ok((console, path))
    }

    fn accept_loop(self: Arc<Self>, listener: UnixListener) {
        // One client at a time: a new one replaces the previous, which is
        // disconnected (its input must not reach the guest any more).
        let mut current: Option<UnixStream> = None;
        for stream in listener.incoming() {
            let stream = match stream {
                Ok(stream) => stream,
                Err(error) => {
                    log::warn!("console: accept failed: {error}");
                    continue;
                }
            };
            if let Err(error) = self.replace_client(&mut current, &stream) {
                log::warn!("console: cannot set up client: {error}");
                continue;
            }
            log::info!("console: client connected");
            let reader = Arc::clone(&self);
            let spawned = thread::Builder::new()
                .name("console-client".into())
                .spawn(move || reader.pump(stream));
            if let Err(error) = spawned {
                log::warn!("console: cannot start client reader: {error}");
            }
        }
    }

    /// `stream` becomes the client; `current`, the previous one, is
    /// disconnected (a writer blocked on it fails, and keeps its output for
    /// the new one).
    fn replace_client(
        &self,
        current: &mut Option<UnixStream>,
        stream: &UnixStream,
    ) -> std::io::Result<()> {
        let writer = stream.try_clone()?;
        let kept = stream.try_clone()?;
        if let Some(previous) = current.replace(kept) {
            log::info!("console: a new client replaces the previous one");
            let _ = previous.shutdown(std::net::Shutdown::Both);
        }
        let mut output = lock(&self.output);
        let id = output.next_client;
        output.next_client += 1;
        output.target = Target::Socket(Some((id, writer)));
        self.output_ready.notify_all();
        Ok(())
    }

    /// Moves bytes from `source` to the guest's input queue until EOF.
    fn pump(&self, mut source: impl Read) {
        let mut buf = [0u8; 512];
        loop {
            match source.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => self.push_input(&buf[..n]),
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    log::debug!("console: input closed: {error}");
                    break;
                }
            }
        }
    }

    /// Queues input for the guest, waiting for room when the queue is full.
    pub fn push_input(&self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let mut input = lock(&self.input);
            while input.queue.len() >= INPUT_CAPACITY {
                input = self
                    .space
                    .wait(input)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            let room = INPUT_CAPACITY - input.queue.len();
            let (now, later) = bytes.split_at(room.min(bytes.len()));
            input.queue.extend(now);
            bytes = later;
            if std::mem::take(&mut input.guest_waiting) {
                if let Err(error) = self.interrupt.write(1) {
                    log::warn!("console: cannot raise the vty interrupt: {error}");
                }
            }
        }
    }

    /// H_GET_TERM_CHAR: up to 16 bytes of input. Finding the queue empty arms
    /// the interrupt for the next input.
    pub fn read(&self, out: &mut [u8; MAX_READ]) -> usize {
        let mut input = lock(&self.input);
        let n = input.queue.len().min(MAX_READ);
        for (slot, byte) in out.iter_mut().zip(input.queue.drain(..n)) {
            *slot = byte;
        }
        if input.queue.is_empty() {
            input.guest_waiting = true;
        }
        drop(input);
        self.space.notify_all();
        n
    }

    /// H_PUT_TERM_CHAR and display-character: never blocks the vCPU.
    pub fn write(&self, bytes: &[u8]) {
        let mut output = lock(&self.output);
        if output.crlf {
            for &byte in bytes {
                if byte == b'\n' && !output.after_cr {
                    output.backlog.push_back(b'\r');
                }
                output.after_cr = byte == b'\r';
                output.backlog.push_back(byte);
            }
        } else {
            output.backlog.extend(bytes);
        }
        let excess = output.backlog.len().saturating_sub(BACKLOG_CAPACITY);
        if excess > 0 {
            output.backlog.drain(..excess);
            output.dropped += excess;
        }
        self.output_ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn console() -> Arc<Console> {
        Console::new(Target::Socket(None), EventFd::new(EFD_NONBLOCK).unwrap())
    }

    /// A terminal gets CR LF for the guest's LF (a CR the guest sent is not
    /// doubled, also across writes); a socket client gets the bytes as
    /// they are.
    #[test]
    fn a_terminal_gets_cr_lf_and_a_socket_the_guests_bytes() {
        let terminal = std::fs::File::open("/dev/null").unwrap();
        let pty = Console::new(Target::Pty(terminal), EventFd::new(EFD_NONBLOCK).unwrap());
        let socket = console();
        for chunk in [&b"a\n"[..], b"b\r", b"\nc\n\n"] {
            pty.write(chunk);
            socket.write(chunk);
        }
        let shown = |console: &Console| -> Vec<u8> {
            lock(&console.output).backlog.iter().copied().collect()
        };
        assert_eq!(shown(&pty), b"a\r\nb\r\nc\r\n\r\n");
        assert_eq!(shown(&socket), b"a\nb\r\nc\n\n");
    }

    #[test]
    fn ctrl_a_x_quits_and_ctrl_a_twice_is_one_ctrl_a() {
        let mut scanner = EscapeScanner::default();
        assert_eq!(scanner.scan(b"ls\r"), Scanned::Input(b"ls\r".to_vec()));
        assert_eq!(
            scanner.scan(b"a\x01\x01b"),
            Scanned::Input(b"a\x01b".to_vec())
        );
        assert_eq!(scanner.scan(b"\x01c"), Scanned::Input(b"\x01c".to_vec()));
        // Split across reads.
        assert_eq!(scanner.scan(b"q\x01"), Scanned::Input(b"q".to_vec()));
        assert_eq!(scanner.scan(b"x rest"), Scanned::Quit(vec![]));
        // Ctrl-C is the guest's.
        let mut scanner = EscapeScanner::default();
        assert_eq!(scanner.scan(b"\x03"), Scanned::Input(vec![3]));
    }

    #[test]
    fn interrupt_fires_only_when_the_guest_found_the_queue_empty() {
        let c = console();
        c.push_input(b"ab");
        assert_eq!(c.interrupt.read().unwrap(), 1);
        c.push_input(b"cd");
        assert!(
            c.interrupt.read().is_err(),
            "no second interrupt before the guest read"
        );
        let mut out = [0u8; MAX_READ];
        assert_eq!(c.read(&mut out), 4);
        assert_eq!(&out[..4], b"abcd");
        c.push_input(b"e");
        assert_eq!(c.interrupt.read().unwrap(), 1);
    }

    #[test]
    fn reads_are_at_most_sixteen_bytes_and_keep_order() {
        let c = console();
        c.push_input(b"0123456789abcdefXYZ");
        let mut out = [0u8; MAX_READ];
        assert_eq!(c.read(&mut out), 16);
        assert_eq!(&out, b"0123456789abcdef");
        assert_eq!(c.read(&mut out), 3);
        assert_eq!(&out[..3], b"XYZ");
        assert_eq!(c.read(&mut out), 0);
    }

    #[test]
    fn a_full_queue_blocks_the_writer_instead_of_dropping() {
        let c = console();
        let writer = {
            let c = Arc::clone(&c);
            thread::spawn(move || c.push_input(&[b'x'; INPUT_CAPACITY + 100]))
        };
        let mut total = 0;
        let mut out = [0u8; MAX_READ];
        while total < INPUT_CAPACITY + 100 {
            total += c.read(&mut out);
            thread::yield_now();
        }
        writer.join().unwrap();
        assert_eq!(total, INPUT_CAPACITY + 100);
    }

    /// A client that never reads is replaced while the writer is blocked
    /// on it: the new client gets the output, every time.
    #[test]
    fn the_client_that_replaces_a_stalled_one_gets_the_output() {
        let c = console();
        c.start_writer().unwrap();
        let mut current = None;
        let mut stalled = Vec::new();
        for round in 0..5u8 {
            let (ours, theirs) = UnixStream::pair().unwrap();
            c.replace_client(&mut current, &ours).unwrap();
            // More than a socket buffer: the writer blocks on this client.
            c.write(&vec![b'a' + round; 512 * 1024]);
            thread::sleep(std::time::Duration::from_millis(50));
            stalled.push(theirs);
        }
        let (ours, mut reader) = UnixStream::pair().unwrap();
        c.replace_client(&mut current, &ours).unwrap();
        c.write(b"END");
        reader
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 65536];
        while !seen.ends_with(b"END") {
            let n = reader.read(&mut buf).expect("output for the new client");
            assert!(n > 0, "the new client was disconnected");
            seen.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn output_waits_for_a_client_in_a_bounded_backlog() {
        let c = console();
        c.write(b"banner\n");
        c.write(&vec![b'y'; BACKLOG_CAPACITY]);
        let output = lock(&c.output);
        assert_eq!(output.backlog.len(), BACKLOG_CAPACITY);
        assert!(output.backlog.iter().all(|&b| b == b'y'));
        assert_eq!(output.dropped, "banner\n".len());
    }
}
