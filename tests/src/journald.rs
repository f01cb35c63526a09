//! A systemd journal to test `-Y` against, and reading it back with `journalctl`.
//!
//! If a journald already answers on [`SOCKET`] (a systemd machine), it is used as it is.
//! Otherwise Debian's `systemd-journald` is started directly: without socket activation it
//! creates `/run/systemd/journal/{socket,stdout,dev-log}` itself and writes a volatile journal
//! under `/run/log/journal/<machine-id>/` (there is no `journalctl --flush` to move it to
//! `/var`), which `journalctl` reads by default. It reports readiness with `READY=1` on
//! `$NOTIFY_SOCKET`, a datagram socket this module binds. It must not be given arguments: its
//! only argument is a journal *namespace* name. It stops on SIGTERM, leaving its socket files
//! behind; a stale socket refuses connections, which is how [`Journald::ensure`] tells it from a
//! live one.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

/// The native-protocol socket that `sd_journal_send` (and the agent's `-Y`) writes to.
pub const SOCKET: &str = "/run/systemd/journal/socket";

/// Debian's journald binary.
pub const JOURNALD: &str = "/usr/lib/systemd/systemd-journald";

/// How long journald may take to start, or to stop after SIGTERM.
const START_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Serializes the tests of one process that use the journal (only one may start journald).
static IN_USE: Mutex<()> = Mutex::new(());

/// A journald serving [`SOCKET`]; stopped on drop if this value started it.
#[derive(Debug)]
pub struct Journald {
    started: Option<Started>,
    _in_use: MutexGuard<'static, ()>,
}

#[derive(Debug)]
struct Started {
    child: Child,
    notify_path: PathBuf,
}

impl Journald {
    /// Uses the journald that answers on [`SOCKET`], or starts one and waits until it is ready.
    pub fn ensure() -> Journald {
        let in_use = IN_USE
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let started = if is_live() { None } else { Some(start()) };
        Journald {
            started,
            _in_use: in_use,
        }
    }

    /// The journal entries that match every `FIELD=value` in `matches`, as the JSON objects of
    /// `journalctl -o json` (field values are strings).
    pub fn entries(&self, matches: &[String]) -> Vec<Map<String, Value>> {
        let output = Command::new("journalctl")
            .args(["--no-pager", "-o", "json"])
            .args(matches)
            .output()
            .unwrap_or_else(|e| panic!("run journalctl: {e}"));
        assert!(
            output.status.success(),
            "journalctl {matches:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| match serde_json::from_str(line) {
                Ok(Value::Object(entry)) => entry,
                other => panic!("journalctl printed {other:?} for {line}"),
            })
            .collect()
    }

    /// Polls [`Journald::entries`] until at least `count` entries match (journald may take a
    /// moment to write them) and returns them; panics after `timeout`.
    pub fn await_entries(
        &self,
        matches: &[String],
        count: usize,
        timeout: Duration,
    ) -> Vec<Map<String, Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let entries = self.entries(matches);
            if entries.len() >= count {
                return entries;
            }
            assert!(
                Instant::now() < deadline,
                "journal has {} entries matching {matches:?} after {timeout:?}, expected {count}: {entries:#?}",
                entries.len()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Journald {
    fn drop(&mut self) {
        if let Some(mut started) = self.started.take() {
            stop(&mut started.child);
            let _ = std::fs::remove_file(&started.notify_path);
        }
    }
}

/// Whether a journald accepts datagrams on [`SOCKET`].
fn is_live() -> bool {
    UnixDatagram::unbound()
        .and_then(|socket| socket.connect(SOCKET))
        .is_ok()
}

/// Starts [`JOURNALD`] and waits for its `READY=1`.
fn start() -> Started {
    let notify_path = std::env::temp_dir().join(format!(
        "tcpstates-tests-journald-{}.sock",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&notify_path);
    let notify = UnixDatagram::bind(&notify_path)
        .unwrap_or_else(|e| panic!("bind {}: {e}", notify_path.display()));
    notify
        .set_read_timeout(Some(START_STOP_TIMEOUT))
        .expect("set a read timeout");
    let mut child = Command::new(JOURNALD)
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start {JOURNALD}: {e}"));
    let deadline = Instant::now() + START_STOP_TIMEOUT;
    let mut buf = [0; 4096];
    loop {
        match notify.recv(&mut buf) {
            Ok(len)
                if String::from_utf8_lossy(&buf[..len])
                    .lines()
                    .any(|l| l == "READY=1") =>
            {
                break;
            }
            Ok(_) if Instant::now() < deadline => {}
            outcome => {
                stop(&mut child);
                panic!(
                    "{JOURNALD} did not report READY=1 within {START_STOP_TIMEOUT:?}: {outcome:?}"
                );
            }
        }
    }
    assert!(
        is_live(),
        "{JOURNALD} is ready but {SOCKET} refuses datagrams"
    );
    Started { child, notify_path }
}

/// SIGTERM, then SIGKILL if journald has not exited in time.
fn stop(child: &mut Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + START_STOP_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
    eprintln!("warning: {JOURNALD} ignored SIGTERM; killing it");
    let _ = child.kill();
    let _ = child.wait();
}
