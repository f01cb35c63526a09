//! The real `tcpstates` binary, run as a child process.
//!
//! Its stdout and stderr are read line by line on background threads, so a test can wait for the
//! lines it expects (with a timeout) while the agent keeps running, then stop it with a signal and
//! get everything it wrote.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// What the agent prints on stderr once its program is attached: the readiness signal.
pub const READY: &str = "Tracing TCP state changes. Hit Ctrl-C to end.";

/// How long the agent may take to load and attach its program.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a test waits for the events of traffic it has just made.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the agent may take to exit after a signal.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Path of the agent binary: `$TCPSTATES_BIN` (set by `cargo xtask test`), else
/// `<workspace>/target/debug/tcpstates`. Panics if there is no file there.
pub fn binary() -> PathBuf {
    let path = match std::env::var_os("TCPSTATES_BIN") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/tcpstates"),
    };
    assert!(
        path.is_file(),
        "agent binary {} not found: build it (cargo build -p tcpstates) or set TCPSTATES_BIN",
        path.display()
    );
    path
}

/// Lines of one output stream, shared with the thread that reads them.
#[derive(Debug, Default)]
struct Stream {
    state: Mutex<StreamState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct StreamState {
    lines: Vec<String>,
    closed: bool,
}

impl Stream {
    fn lock(&self) -> MutexGuard<'_, StreamState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reads `source` to its end, one line at a time (invalid UTF-8 replaced).
    fn fill(&self, source: impl Read) {
        let mut reader = BufReader::new(source);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if buf.last() == Some(&b'\n') {
                        buf.pop();
                    }
                    self.lock()
                        .lines
                        .push(String::from_utf8_lossy(&buf).into_owned());
                    self.changed.notify_all();
                }
            }
        }
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// Calls `check` on the lines so far, each time they change, until it returns `Some` or the
    /// stream is closed or `timeout` has passed; `Err` carries the lines at that point.
    fn wait<T>(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&[String]) -> Option<T>,
    ) -> Result<T, Vec<String>> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if let Some(found) = check(&state.lines) {
                return Ok(found);
            }
            let now = Instant::now();
            if state.closed || now >= deadline {
                return Err(state.lines.clone());
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    fn snapshot(&self) -> Vec<String> {
        self.lock().lines.clone()
    }
}

/// A running agent. Dropping it kills the process if it is still running.
#[derive(Debug)]
pub struct Agent {
    child: Child,
    stdout: Arc<Stream>,
    stderr: Arc<Stream>,
    readers: Vec<JoinHandle<()>>,
}

/// What a finished agent left behind.
#[derive(Debug)]
pub struct Finished {
    /// How it exited.
    pub status: ExitStatus,
    /// Every line it wrote to stdout.
    pub stdout: Vec<String>,
    /// Every line it wrote to stderr.
    pub stderr: Vec<String>,
}

impl Agent {
    /// Runs the agent with `args` and waits until it reports that it is attached
    /// ([`READY`] on stderr). Panics, with its stderr, if it exits or times out first.
    pub fn start(args: &[&str]) -> Agent {
        let agent = Agent::spawn(args);
        if let Err(lines) = agent.stderr.wait(ATTACH_TIMEOUT, |lines| {
            lines.iter().any(|l| l == READY).then_some(())
        }) {
            panic!(
                "tcpstates {args:?} did not print {READY:?} within {ATTACH_TIMEOUT:?}; stderr:\n{}",
                lines.join("\n")
            );
        }
        agent
    }

    /// Runs the agent with `args` without waiting for anything.
    pub fn spawn(args: &[&str]) -> Agent {
        let mut command = Command::new(binary());
        command.args(args);
        Agent::spawn_command(command)
    }

    /// Runs `command` (which runs the agent, possibly through a wrapper such as `setpriv`),
    /// with stdin closed and both output streams captured.
    pub fn spawn_command(mut command: Command) -> Agent {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
        let stdout = Arc::new(Stream::default());
        let stderr = Arc::new(Stream::default());
        let out_pipe = child.stdout.take().expect("piped stdout");
        let err_pipe = child.stderr.take().expect("piped stderr");
        let readers = vec![
            reader_thread("agent-stdout", Arc::clone(&stdout), out_pipe),
            reader_thread("agent-stderr", Arc::clone(&stderr), err_pipe),
        ];
        Agent {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `check`, called on all stdout lines so far each time a line arrives, returns
    /// `Some`, and returns that. Panics after `timeout` (or if stdout closes) with `what` and the
    /// output so far.
    pub fn await_stdout<T>(
        &self,
        what: &str,
        timeout: Duration,
        check: impl FnMut(&[String]) -> Option<T>,
    ) -> T {
        self.stdout.wait(timeout, check).unwrap_or_else(|lines| {
            panic!(
                "timed out after {timeout:?} waiting for {what}; stdout:\n{}\nstderr:\n{}",
                lines.join("\n"),
                self.stderr.snapshot().join("\n")
            )
        })
    }

    /// Sends `signal` (e.g. `libc::SIGINT`) and waits for the agent to exit.
    pub fn stop(mut self, signal: libc::c_int) -> Finished {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: plain kill(2) on our own child, which has not been reaped yet.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
        self.finish(EXIT_TIMEOUT)
    }

    /// Waits (at most `timeout`) for the agent to exit by itself.
    pub fn wait_exit(mut self, timeout: Duration) -> Finished {
        self.finish(timeout)
    }

    fn finish(&mut self, timeout: Duration) -> Finished {
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Ok(None) => panic!(
                    "tcpstates did not exit within {timeout:?}; stderr so far:\n{}",
                    self.stderr.snapshot().join("\n")
                ),
                Err(e) => panic!("wait for tcpstates: {e}"),
            }
        };
        for reader in self.readers.drain(..) {
            reader.join().expect("output reader thread");
        }
        Finished {
            status,
            stdout: self.stdout.snapshot(),
            stderr: self.stderr.snapshot(),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // Only reached when a test panicked before stopping the agent.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn reader_thread(
    name: &str,
    stream: Arc<Stream>,
    source: impl Read + Send + 'static,
) -> JoinHandle<()> {
    thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || stream.fill(source))
        .expect("spawn an output reader thread")
}

impl Finished {
    /// The exit code; panics (with stderr) if the agent was killed by a signal.
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or_else(|| {
            panic!(
                "tcpstates was killed: {}; stderr:\n{}",
                self.status,
                self.stderr.join("\n")
            )
        })
    }
}

/// The counts of the agent's last stderr line,
/// `tcpstates: N events written, M lost (A ring buffer full, B BPF recursion, C unreadable)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// N: events written to the output.
    pub written: u64,
    /// M: events lost in all.
    pub lost: u64,
    /// A: lost because the ring buffer was full.
    pub ring_buffer_full: u64,
    /// B: lost to BPF recursion protection.
    pub recursion: u64,
    /// C: lost because they could not be read.
    pub unreadable: u64,
}

/// Parses the summary line; `None` if `line` does not have exactly that shape.
pub fn parse_summary(line: &str) -> Option<Summary> {
    const SHAPE: &str =
        "tcpstates: # events written, # lost (# ring buffer full, # BPF recursion, # unreadable)";
    let mut shape = String::new();
    let mut numbers = Vec::new();
    let mut digits = String::new();
    for c in line.chars().chain(std::iter::once('\n')) {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        if !digits.is_empty() {
            numbers.push(digits.parse::<u64>().ok()?);
            digits.clear();
            shape.push('#');
        }
        if c != '\n' {
            shape.push(c);
        }
    }
    match (shape == SHAPE, numbers.as_slice()) {
        (true, &[written, lost, ring_buffer_full, recursion, unreadable]) => Some(Summary {
            written,
            lost,
            ring_buffer_full,
            recursion,
            unreadable,
        }),
        _ => None,
    }
}
