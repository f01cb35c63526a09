//! The real `tcpstates` binary, run as a child process.
//!
//! Its stdout and stderr are read line by line on background threads, so a test can wait for the
//! lines it expects (with a timeout) while the agent keeps running, then stop it with a signal and
//! get everything it wrote.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
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
        for line in BufReader::new(source).split(b'\n').map_while(Result::ok) {
            self.lock()
                .lines
                .push(String::from_utf8_lossy(&line).into_owned());
            self.changed.notify_all();
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

/// A command that runs the agent with `args`, for a test to add environment variables to. It
/// inherits no `OTEL_*` variable from the test's own environment, so only what the test sets
/// configures the OTLP export.
pub fn command(args: &[&str]) -> Command {
    command_as(&Privileges::Root, args)
}

/// The uid (and gid) of `nobody`, an unprivileged user that owns no file.
pub const NOBODY: u32 = 65534;

/// Who the agent runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privileges {
    /// As the test runs: root, every capability.
    Root,
    /// As `uid` (gid the same, no supplementary groups) with exactly CAP_BPF and CAP_PERFMON,
    /// the least the agent needs (Linux >= 5.8).
    CapsOnly {
        /// The uid and gid.
        uid: u32,
    },
    /// As `uid` (gid the same, no supplementary groups) with exactly `caps`: capability names
    /// as `setpriv` spells them, without `cap_` (e.g. `&["bpf"]`; `&[]` for none).
    Caps {
        /// The uid and gid.
        uid: u32,
        /// The capabilities it keeps.
        caps: &'static [&'static str],
    },
}

impl Privileges {
    /// The capabilities of [`Privileges::CapsOnly`].
    pub const TRACING_CAPS: &'static [&'static str] = &["bpf", "perfmon"];

    /// The words that run `program` with these privileges: `program` alone as root; otherwise
    /// (`program` and the directories above it must then be open to `uid`, as `target/` is)
    /// `setpriv` switching uid and gid, clearing the groups, and leaving exactly the
    /// capabilities in the inheritable, ambient and bounding sets (the ambient set becomes the
    /// permitted and effective sets when `setpriv` executes `program`, which keeps its pid).
    pub fn argv(&self, program: &Path) -> Vec<OsString> {
        let (uid, caps) = match *self {
            Privileges::Root => return vec![program.into()],
            Privileges::CapsOnly { uid } => (uid, Privileges::TRACING_CAPS),
            Privileges::Caps { uid, caps } => (uid, caps),
        };
        let set: String = std::iter::once("-all".to_owned())
            .chain(caps.iter().map(|cap| format!("+{cap}")))
            .collect::<Vec<_>>()
            .join(",");
        let mut argv: Vec<OsString> = [
            "setpriv".to_owned(),
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".to_owned(),
            format!("--inh-caps={set}"),
            format!("--ambient-caps={set}"),
            format!("--bounding-set={set}"),
            "--".to_owned(),
        ]
        .into_iter()
        .map(OsString::from)
        .collect();
        argv.push(program.into());
        argv
    }
}

/// Like [`command`], running the agent with `privileges` (see [`Privileges::argv`]).
pub fn command_as(privileges: &Privileges, args: &[&str]) -> Command {
    wrapped_command(&[], privileges, args)
}

/// Like [`command_as`], the whole behind `prefix`, a command that ends by executing its
/// arguments (e.g. `unshare --mount --`): runs `prefix... [setpriv ...] tcpstates args...`. A
/// prefix that executes rather than forks keeps the agent's pid that of the child.
pub fn wrapped_command(prefix: &[&str], privileges: &Privileges, args: &[&str]) -> Command {
    let mut argv: Vec<OsString> = prefix.iter().map(OsString::from).collect();
    argv.extend(privileges.argv(&binary()));
    let mut command = Command::new(&argv[0]);
    command.args(&argv[1..]).args(args);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("OTEL_") {
            command.env_remove(name);
        }
    }
    command
}

impl Agent {
    /// Runs the agent with `args` and waits until it reports that it is attached
    /// ([`READY`] on stderr). Panics, with its stderr, if it exits or times out first.
    pub fn start(args: &[&str]) -> Agent {
        Agent::start_command(command(args))
    }

    /// Runs `command` (made with [`command`]) and waits, like [`Agent::start`], until the agent
    /// is attached.
    pub fn start_command(command: Command) -> Agent {
        let described = format!("{command:?}");
        let agent = Agent::spawn_command(command);
        if let Err(lines) = agent.stderr.wait(ATTACH_TIMEOUT, |lines| {
            lines.iter().any(|l| l == READY).then_some(())
        }) {
            panic!(
                "{described} did not print {READY:?} within {ATTACH_TIMEOUT:?}; stderr:\n{}",
                lines.join("\n")
            );
        }
        agent
    }

    /// Runs the agent with `args` without waiting for anything.
    pub fn spawn(args: &[&str]) -> Agent {
        Agent::spawn_command(command(args))
    }

    /// Like [`Agent::start`], with `privileges`: e.g.
    /// `Agent::start_as(Privileges::CapsOnly { uid: NOBODY }, &["-x"])` runs it as `nobody`
    /// with only CAP_BPF and CAP_PERFMON.
    pub fn start_as(privileges: Privileges, args: &[&str]) -> Agent {
        Agent::start_command(command_as(&privileges, args))
    }

    /// Like [`Agent::spawn`], with `privileges`.
    pub fn spawn_as(privileges: Privileges, args: &[&str]) -> Agent {
        Agent::spawn_command(command_as(&privileges, args))
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

    /// Like [`Agent::await_stdout`], on the lines of stderr.
    pub fn await_stderr<T>(
        &self,
        what: &str,
        timeout: Duration,
        check: impl FnMut(&[String]) -> Option<T>,
    ) -> T {
        self.stderr.wait(timeout, check).unwrap_or_else(|lines| {
            panic!(
                "timed out after {timeout:?} waiting for {what}; stderr:\n{}",
                lines.join("\n")
            )
        })
    }

    /// Sends `signal` (e.g. `libc::SIGINT`) and waits for the agent to exit.
    pub fn stop(self, signal: libc::c_int) -> Finished {
        self.stop_within(signal, EXIT_TIMEOUT)
    }

    /// Sends `signal` and waits at most `timeout` for the agent to exit (with `--otlp` it first
    /// exports every span still queued, which on a busy host may take longer than
    /// [`EXIT_TIMEOUT`]).
    pub fn stop_within(mut self, signal: libc::c_int, timeout: Duration) -> Finished {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: plain kill(2) on our own child, which has not been reaped yet.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
        self.finish(timeout)
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

    /// The account among the stderr lines (see [`parse_summary`]; lines about what was
    /// recovered or inferred may follow it); panics unless there is one.
    pub fn summary(&self) -> Summary {
        self.stderr
            .iter()
            .find_map(|line| parse_summary(line))
            .unwrap_or_else(|| panic!("no account on stderr:\n{}", self.stderr.join("\n")))
    }

    /// The OTLP account among the stderr lines (see [`parse_otlp_summary`]); panics unless
    /// there is exactly one such line.
    pub fn otlp_summary(&self) -> OtlpSummary {
        let found: Vec<OtlpSummary> = self
            .stderr
            .iter()
            .filter_map(|line| parse_otlp_summary(line))
            .collect();
        match found.as_slice() {
            [summary] => *summary,
            _ => panic!(
                "expected one OTLP account line on stderr, found {}:\n{}",
                found.len(),
                self.stderr.join("\n")
            ),
        }
    }
}

/// The counts of the agent's last stderr line,
/// `tcpstates: N events written, M lost (A ring buffer full, B BPF recursion)`.
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
}

/// Parses the summary line; `None` if `line` does not have exactly that shape.
pub fn parse_summary(line: &str) -> Option<Summary> {
    let numbers = numbers_in_shape(
        line,
        "tcpstates: # events written, # lost (# ring buffer full, # BPF recursion)",
    )?;
    match numbers.as_slice() {
        &[written, lost, ring_buffer_full, recursion] => Some(Summary {
            written,
            lost,
            ring_buffer_full,
            recursion,
        }),
        _ => None,
    }
}

/// The counts of the agent's OTLP account on stderr (after the [`Summary`] line, with `--otlp`),
/// `tcpstates: OTLP: N sessions exported in M spans, D spans dropped (queue full), F failed,
/// R rejected, P possible duplicates, E sessions evicted` (R and P are 0 in the older line
/// without them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OtlpSummary {
    /// N: sessions exported (root spans the collector accepted).
    pub sessions: u64,
    /// M: spans exported, roots and children.
    pub spans: u64,
    /// D: spans dropped because the export queue was full.
    pub dropped: u64,
    /// F: spans given up on after failed export requests.
    pub failed: u64,
    /// R: spans the collector rejected with a non-retryable status (not retried).
    pub rejected: u64,
    /// P: exported spans sent again after a request that timed out (maybe received twice).
    pub possible_duplicates: u64,
    /// E: sessions ended early because the session table was full.
    pub evicted: u64,
}

/// Parses the OTLP account line; `None` if `line` does not have exactly that shape.
pub fn parse_otlp_summary(line: &str) -> Option<OtlpSummary> {
    let prefix = "tcpstates: OTLP: # sessions exported in # spans, # spans dropped (queue full), \
                  # failed, ";
    if let Some(numbers) = numbers_in_shape(
        line,
        &format!("{prefix}# rejected, # possible duplicates, # sessions evicted"),
    ) && let &[
        sessions,
        spans,
        dropped,
        failed,
        rejected,
        possible_duplicates,
        evicted,
    ] = numbers.as_slice()
    {
        return Some(OtlpSummary {
            sessions,
            spans,
            dropped,
            failed,
            rejected,
            possible_duplicates,
            evicted,
        });
    }
    let numbers = numbers_in_shape(line, &format!("{prefix}# sessions evicted"))?;
    match numbers.as_slice() {
        &[sessions, spans, dropped, failed, evicted] => Some(OtlpSummary {
            sessions,
            spans,
            dropped,
            failed,
            rejected: 0,
            possible_duplicates: 0,
            evicted,
        }),
        _ => None,
    }
}

/// The numbers in `line` if, each run of digits replaced by `#`, it is exactly `shape`.
fn numbers_in_shape(line: &str, shape: &str) -> Option<Vec<u64>> {
    let mut found = String::new();
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
            found.push('#');
        }
        if c != '\n' {
            found.push(c);
        }
    }
    (found == shape).then_some(numbers)
}

/// How long a run that must fail at once may take.
pub const FAIL_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `command`, expecting a usage error: exit 2, nothing traced, and one `error:` line,
/// the first on stderr, that contains `needle`.
pub fn assert_usage_error(command: Command, needle: &str) {
    let described = format!("{command:?}");
    let finished = Agent::spawn_command(command).wait_exit(FAIL_TIMEOUT);
    let context = format!("{described}: {finished:#?}");
    assert_eq!(finished.code(), 2, "{context}");
    assert!(finished.stdout.is_empty(), "{context}");
    assert!(!finished.stderr.iter().any(|l| l == READY), "{context}");
    let errors: Vec<&String> = finished
        .stderr
        .iter()
        .filter(|line| line.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "one error: line; {context}");
    assert_eq!(finished.stderr.first(), Some(errors[0]), "{context}");
    assert!(
        errors[0].contains(needle),
        "the error should mention {needle:?}; {context}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otlp_summary_line_parses() {
        let line = "tcpstates: OTLP: 401 sessions exported in 2003 spans, 4 spans dropped \
                    (queue full), 2 failed, 1 sessions evicted";
        assert_eq!(
            parse_otlp_summary(line),
            Some(OtlpSummary {
                sessions: 401,
                spans: 2003,
                dropped: 4,
                failed: 2,
                rejected: 0,
                possible_duplicates: 0,
                evicted: 1,
            })
        );
        let line = "tcpstates: OTLP: 401 sessions exported in 2003 spans, 4 spans dropped \
                    (queue full), 2 failed, 7 rejected, 5 possible duplicates, 1 sessions evicted";
        assert_eq!(
            parse_otlp_summary(line),
            Some(OtlpSummary {
                sessions: 401,
                spans: 2003,
                dropped: 4,
                failed: 2,
                rejected: 7,
                possible_duplicates: 5,
                evicted: 1,
            })
        );
        assert_eq!(
            parse_otlp_summary("tcpstates: OTLP: 1 sessions exported"),
            None
        );
        assert_eq!(
            parse_summary(line),
            None,
            "the event account does not take the OTLP line"
        );
    }
}
