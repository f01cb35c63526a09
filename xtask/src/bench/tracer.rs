//! A tracer under test (tcpstates or a peer): started with its output in a file, awaited until
//! attached, stopped with SIGINT, and reaped with its CPU time.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::cpus;
use super::others::holds_tracer_fd;

/// How long a tracer may take to attach.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a tracer may take to flush and exit after SIGINT before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// Extra wait after a peer opened its perf event, for it to finish attaching.
const PEER_SETTLE: Duration = Duration::from_millis(1500);
/// How long the rest of a tracer's stderr may take to arrive once it has exited.
const STDERR_TIMEOUT: Duration = Duration::from_secs(5);
/// Polling period while waiting for a child.
const POLL: Duration = Duration::from_millis(20);
/// How many of its last stderr lines are shown when a tracer fails.
const SHOWN_LINES: usize = 10;

/// How to tell that a tracer has attached.
#[derive(Debug, Clone, Copy)]
pub enum Readiness {
    /// It prints a stderr line containing this text.
    StderrLine(&'static str),
    /// It has a perf event or a BPF link open (`anon_inode:[perf_event]` or `anon_inode:bpf_link`
    /// in /proc/PID/fd); then wait a little for the rest of its setup.
    PerfEvent,
}

/// A started tracer.
pub struct Running {
    name: String,
    pid: libc::pid_t,
    // Kept so its stdio handles live as long as the process; never waited through std, since
    // `reap` collects the exit status and resource usage itself.
    _child: Child,
    stderr: Receiver<String>,
    lines: Vec<String>,
    reaped: bool,
    /// Its CPU time when it had attached ([`Self::cpu_now`]): what starting cost it.
    cpu_at_ready: Duration,
}

/// What a tracer did once stopped.
#[derive(Debug)]
pub struct Stopped {
    /// User plus system CPU time, from `wait4`'s resource usage of the process.
    pub cpu: Duration,
    /// How it ended, e.g. `exit 0` or `signal 9`.
    pub exit: String,
    /// Time from SIGINT to its exit.
    pub stopping: Duration,
    /// Everything it wrote to stderr.
    pub stderr: Vec<String>,
}

impl Running {
    /// Starts `argv` with stdout into `output` and stderr captured, on `cpu` only if given.
    pub fn start(name: &str, argv: &[String], output: &Path, cpu: Option<usize>) -> Result<Self> {
        let (program, args) = argv.split_first().context("empty tracer command")?;
        let file =
            File::create(output).with_context(|| format!("creating {}", output.display()))?;
        let mut cmd = Command::new(program);
        cpus::pin_to(&mut cmd, cpu);
        let mut child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {name} (`{}`)", argv.join(" ")))?;
        let pid = libc::pid_t::try_from(child.id()).context("process id out of range")?;
        let stderr = child.stderr.take().context("tracer stderr not captured")?;
        let (sender, receiver) = mpsc::channel();
        thread::Builder::new()
            .name(format!("{name}-stderr"))
            .spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if sender.send(line).is_err() {
                        break;
                    }
                }
            })
            .context("spawning a stderr reader")?;
        Ok(Self {
            name: name.to_owned(),
            pid,
            _child: child,
            stderr: receiver,
            lines: Vec::new(),
            reaped: false,
            cpu_at_ready: Duration::ZERO,
        })
    }

    /// The tracer's process id.
    pub fn pid(&self) -> u32 {
        self.pid.unsigned_abs()
    }

    /// Waits until the tracer has attached, or fails if it exits or takes too long; notes the
    /// CPU time attaching took.
    pub fn wait_ready(&mut self, readiness: Readiness) -> Result<()> {
        self.await_attached(readiness)?;
        self.cpu_at_ready = self.cpu_now()?;
        Ok(())
    }

    /// Its CPU time so far, to the nanosecond: the time on a CPU of each of its threads
    /// (the first field of /proc/PID/task/TID/schedstat), added. A thread that has exited no
    /// longer counts.
    fn cpu_now(&self) -> Result<Duration> {
        let tasks = format!("/proc/{}/task", self.pid);
        let mut total = Duration::ZERO;
        for task in fs::read_dir(&tasks).with_context(|| format!("reading {tasks}"))? {
            let path = task?.path().join("schedstat");
            // A thread may exit between the listing and the read.
            let Ok(schedstat) = fs::read_to_string(&path) else {
                continue;
            };
            total += on_cpu(&schedstat)
                .with_context(|| format!("parsing {}: {schedstat:?}", path.display()))?;
        }
        Ok(total)
    }

    /// Its CPU time since it attached ([`Self::cpu_now`] then and now).
    pub fn cpu_since_ready(&self) -> Result<Duration> {
        Ok(self.cpu_now()?.saturating_sub(self.cpu_at_ready))
    }

    /// Waits until the tracer has attached, or fails if it exits or takes too long.
    fn await_attached(&mut self, readiness: Readiness) -> Result<()> {
        let deadline = Instant::now() + ATTACH_TIMEOUT;
        match readiness {
            Readiness::StderrLine(text) => loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.stderr.recv_timeout(left) {
                    Ok(line) => {
                        let ready = line.contains(text);
                        self.lines.push(line);
                        if ready {
                            return Ok(());
                        }
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        bail!(
                            "{} closed stderr before attaching{}",
                            self.name,
                            self.tail()
                        );
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        bail!(
                            "{} did not attach within {ATTACH_TIMEOUT:?}{}",
                            self.name,
                            self.tail()
                        );
                    }
                }
            },
            Readiness::PerfEvent => {
                while !holds_tracer_fd(self.pid.unsigned_abs()) {
                    self.drain_stderr();
                    if reap(self.pid, false)?.is_some() {
                        self.reaped = true;
                        bail!("{} exited before attaching{}", self.name, self.tail());
                    }
                    if Instant::now() > deadline {
                        bail!(
                            "{} did not attach within {ATTACH_TIMEOUT:?}{}",
                            self.name,
                            self.tail()
                        );
                    }
                    thread::sleep(POLL);
                }
                thread::sleep(PEER_SETTLE);
                Ok(())
            }
        }
    }

    /// Sends SIGINT, waits for the tracer to flush and exit (killing it after a timeout), and
    /// returns its CPU time, exit and stderr.
    pub fn stop(mut self) -> Result<Stopped> {
        signal(self.pid, libc::SIGINT)
            .with_context(|| format!("sending SIGINT to {}", self.name))?;
        let signalled = Instant::now();
        let deadline = signalled + STOP_TIMEOUT;
        let (status, usage) = loop {
            if let Some(done) = reap(self.pid, false)? {
                break done;
            }
            if Instant::now() > deadline {
                eprintln!(
                    "bench: {} still running {STOP_TIMEOUT:?} after SIGINT: killing it",
                    self.name
                );
                signal(self.pid, libc::SIGKILL)?;
                break reap(self.pid, true)?.context("wait4 returned no status")?;
            }
            self.drain_stderr();
            thread::sleep(POLL);
        };
        let stopping = signalled.elapsed();
        self.reaped = true;
        self.collect_stderr_until_closed();
        Ok(Stopped {
            cpu: timeval(usage.ru_utime) + timeval(usage.ru_stime),
            exit: describe_status(status),
            stopping,
            stderr: std::mem::take(&mut self.lines),
        })
    }

    /// Moves the stderr lines received so far into `lines`.
    fn drain_stderr(&mut self) {
        self.lines.extend(self.stderr.try_iter());
    }

    /// Receives the rest of stderr: the reader thread ends at end-of-file, which closes the
    /// channel. Bounded in time, in case a leftover grandchild keeps the pipe open.
    fn collect_stderr_until_closed(&mut self) {
        let deadline = Instant::now() + STDERR_TIMEOUT;
        while let Ok(line) = self
            .stderr
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.lines.push(line);
        }
    }

    /// The last stderr lines, for an error message.
    fn tail(&self) -> String {
        let start = self.lines.len().saturating_sub(SHOWN_LINES);
        self.lines[start..]
            .iter()
            .map(|line| format!("\n  {line}"))
            .collect()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Only on an error path: do not leave a tracer attached.
        if !self.reaped {
            let _ = signal(self.pid, libc::SIGKILL);
            let _ = reap(self.pid, true);
        }
    }
}

/// Sends `sig` to process `pid`.
fn signal(pid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: kill has no memory-safety preconditions; `pid` is our own unreaped child, so the
    // id cannot have been reused by another process.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Collects child `pid`'s exit status and resource usage; `None` if it is still running and
/// `block` is false.
fn reap(pid: libc::pid_t, block: bool) -> io::Result<Option<(libc::c_int, libc::rusage)>> {
    let flags = if block { 0 } else { libc::WNOHANG };
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers refer to live, writable locals of the right types.
        let rc = unsafe { libc::wait4(pid, &raw mut status, flags, &raw mut usage) };
        match rc {
            0 => return Ok(None),
            rc if rc == pid => return Ok(Some((status, usage))),
            _ => {
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::Interrupted {
                    return Err(error);
                }
            }
        }
    }
}

/// The time on a CPU a /proc/.../schedstat line gives (its first field, in nanoseconds).
fn on_cpu(schedstat: &str) -> Option<Duration> {
    let nanos = schedstat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(nanos))
}

fn timeval(tv: libc::timeval) -> Duration {
    let secs = u64::try_from(tv.tv_sec).unwrap_or(0);
    let micros = u64::try_from(tv.tv_usec).unwrap_or(0);
    Duration::from_secs(secs) + Duration::from_micros(micros)
}

fn describe_status(status: libc::c_int) -> String {
    if libc::WIFEXITED(status) {
        format!("exit {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("signal {}", libc::WTERMSIG(status))
    } else {
        format!("status {status:#x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_gives_the_nanoseconds_on_a_cpu() {
        assert_eq!(on_cpu("464133 0 2\n"), Some(Duration::from_nanos(464_133)));
        assert_eq!(on_cpu(""), None);
    }

    #[test]
    fn a_process_cpu_time_grows_as_it_works() {
        let output = std::env::temp_dir().join(format!("tracer-cpu-{}", std::process::id()));
        // Busy from its ready line until SIGINT.
        let argv = ["sh", "-c", "echo ready >&2; while :; do :; done"].map(str::to_owned);
        let mut running = Running::start("busy", &argv, &output, None).unwrap();
        running.wait_ready(Readiness::StderrLine("ready")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while running.cpu_since_ready().unwrap() == Duration::ZERO && Instant::now() < deadline {
            thread::sleep(POLL);
        }
        assert!(running.cpu_since_ready().unwrap() > Duration::ZERO);
        assert!(running.stop().unwrap().cpu > Duration::ZERO);
        let _ = fs::remove_file(output);
    }
}
