//! The OTLP receiver the bench's `--otlp` configuration exports to: rotel (`rotel-agent`, PyPI
//! `rotel`, which `cargo xtask setup` installs), started once in the host namespace on free
//! loopback ports with its blackhole exporter and no debug log, and stopped when the guard drops.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::cpus;
use crate::process;

/// Environment variable that overrides where the `rotel-agent` executable is (as in the tests).
const AGENT_ENV: &str = "ROTEL_AGENT";
/// Asks Python where pip put `rotel-agent` (inside the `rotel` package, not on `PATH`).
const AGENT_PROBE: &str =
    "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))";
/// How long rotel may take to listen on both ports, or to exit after SIGTERM.
const START_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Polling period while waiting for it.
const POLL: Duration = Duration::from_millis(20);

/// A running rotel; stopped (SIGTERM, then SIGKILL) on drop.
pub struct Receiver {
    child: Child,
    grpc: u16,
    http: u16,
    cpu: Option<usize>,
    /// Whether `child` runs (not between [`Self::kill`] and [`Self::restart`]).
    running: bool,
}

impl Receiver {
    /// Starts rotel on two free loopback ports, on `cpu` only if given, and waits until both
    /// accept connections.
    pub fn start(cpu: Option<usize>) -> Result<Self> {
        let (grpc, http) = (free_port()?, free_port()?);
        let child = spawn(cpu, grpc, http)?;
        Ok(Self {
            child,
            grpc,
            http,
            cpu,
            running: true,
        })
    }

    /// Kills rotel at once (SIGKILL: a collector that crashes), as a collector restart begins.
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill().context("killing rotel")?;
        self.running = false;
        self.child.wait().context("reaping rotel")?;
        Ok(())
    }

    /// Starts rotel again, on the same ports, after [`Self::kill`].
    pub fn restart(&mut self) -> Result<()> {
        self.child = spawn(self.cpu, self.grpc, self.http)?;
        self.running = true;
        Ok(())
    }

    /// `http://127.0.0.1:PORT` of its OTLP/gRPC listener, for `tcpstates --otlp`.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc)
    }

    /// Its user plus system CPU time so far, all threads (`utime + stime` of /proc/PID/stat).
    pub fn cpu(&self) -> Result<Duration> {
        let path = format!("/proc/{}/stat", self.child.id());
        let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        cpu_of_stat(&stat, clock_ticks()).with_context(|| format!("parsing {path}: {stat:?}"))
    }
}

/// Starts rotel on `grpc` and `http`, on `cpu` only if given, and waits until both ports accept
/// connections.
fn spawn(cpu: Option<usize>, grpc: u16, http: u16) -> Result<Child> {
    let program = agent_binary()?;
    let mut cmd = Command::new(&program);
    cpus::pin_to(&mut cmd, cpu);
    cmd.arg("start")
        .arg("--otlp-grpc-endpoint")
        .arg(format!("127.0.0.1:{grpc}"))
        .arg("--otlp-http-endpoint")
        .arg(format!("127.0.0.1:{http}"))
        .args(["--exporter", "blackhole"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let line = process::describe(&cmd);
    println!("bench: OTLP receiver: {line}");
    let mut child = cmd.spawn().with_context(|| format!("starting `{line}`"))?;
    let deadline = Instant::now() + START_STOP_TIMEOUT;
    while !(listening(grpc) && listening(http)) {
        if let Some(status) = child.try_wait()? {
            bail!("rotel exited at start ({status})");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("rotel does not listen on ports {grpc} and {http} after {START_STOP_TIMEOUT:?}");
        }
        thread::sleep(POLL);
    }
    Ok(child)
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if !self.running {
            return;
        }
        let Ok(pid) = libc::pid_t::try_from(self.child.id()) else {
            return;
        };
        // SAFETY: kill has no memory-safety preconditions; `pid` is our own unreaped child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + START_STOP_TIMEOUT;
        while matches!(self.child.try_wait(), Ok(None)) {
            if Instant::now() > deadline {
                eprintln!(
                    "bench: rotel still running {START_STOP_TIMEOUT:?} after SIGTERM: killing it"
                );
                let _ = self.child.kill();
                break;
            }
            thread::sleep(POLL);
        }
        let _ = self.child.wait();
    }
}

/// Path of rotel's executable: `$ROTEL_AGENT`, else the one in the `rotel` package that
/// `python3` imports (where `cargo xtask setup` installs it).
fn agent_binary() -> Result<PathBuf> {
    let path = match std::env::var_os(AGENT_ENV) {
        Some(path) => PathBuf::from(path),
        None => {
            let stdout = process::stdout_of(Command::new("python3").args(["-c", AGENT_PROBE]))
                .with_context(|| {
                    format!(
                        "python3 cannot import rotel: run `cargo xtask setup` or set {AGENT_ENV}"
                    )
                })?;
            PathBuf::from(stdout.trim())
        }
    };
    if !path.is_file() {
        bail!(
            "rotel-agent {} not found: run `cargo xtask setup` or set {AGENT_ENV}",
            path.display()
        );
    }
    Ok(path)
}

/// A port free on 127.0.0.1 right now (the kernel's pick for port 0).
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Whether something accepts connections on 127.0.0.1:`port`.
fn listening(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Clock ticks per second, the unit of /proc/PID/stat's times.
pub(super) fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// `utime + stime` (fields 14 and 15) of a /proc/PID/stat line, at `ticks` per second. The
/// fields are counted after the `)` that ends the command name, which may hold spaces.
pub(super) fn cpu_of_stat(stat: &str, ticks: u64) -> Option<Duration> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / ticks as f64,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_utime_and_stime_after_the_command_name() {
        let stat = "4242 (rotel agent) S 1 4242 4242 0 -1 4194560 2200 0 0 0 150 50 0 0 20 0 \
                    9 0 12345 1000000 3000 18446744073709551615";
        assert_eq!(cpu_of_stat(stat, 100), Some(Duration::from_secs(2)));
    }

    #[test]
    fn rejects_a_short_line() {
        assert_eq!(cpu_of_stat("4242 (rotel) S 1", 100), None);
    }
}
