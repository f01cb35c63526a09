//! Network namespaces owned by one test.
//!
//! The tests drive their traffic over the loopback device of a namespace they create, so nothing
//! else on the machine shares their sockets. The tracepoint sees every namespace, so the agent
//! (which stays in the root namespace) still reports all of it.

use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Distinguishes the namespaces one test process creates.
static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// Name given to the threads that run inside a namespace: it is their `comm`, which the agent
/// reports for transitions made in process context (e.g. CLOSE -> SYN_SENT in `connect()`).
pub const THREAD_NAME: &str = "netns-run";

/// A network namespace made with `ip netns add`, its `lo` up; deleted again on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a uniquely named namespace (`tcpst-<pid>-<n>`) and brings its loopback device up.
    ///
    /// Panics if `ip` fails: the tests need root.
    pub fn create() -> Netns {
        let name = format!(
            "tcpst-{}-{}",
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        // Built before the next command so that a failure still deletes the namespace.
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds `addr` to the namespace's `lo` (IPv6 without duplicate address detection, so it can
    /// be bound at once).
    pub fn add_loopback_address(&self, addr: IpAddr) {
        let cidr = match addr {
            IpAddr::V4(_) => format!("{addr}/32"),
            IpAddr::V6(_) => format!("{addr}/128"),
        };
        let mut args = vec!["-n", &self.name, "addr", "add", &cidr, "dev", "lo"];
        if addr.is_ipv6() {
            args.push("nodad");
        }
        ip(&args);
    }

    /// Runs `f` on a new thread (named [`THREAD_NAME`]) that has entered the namespace, and
    /// returns its result. Sockets `f` creates belong to the namespace and stay there when used
    /// Runs `nft -f -` with `rules` inside the namespace; panics if nft refuses them.
    pub fn nft(&self, rules: &str) {
        use std::io::Write as _;
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", self.name(), "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("nft (cargo xtask setup installs nftables)");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(rules.as_bytes())
            .expect("rules to nft");
        assert!(
            child.wait().expect("nft").success(),
            "nft refused:\n{rules}"
        );
    }

    /// from other threads later. A panic in `f` is propagated.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        thread::scope(|scope| {
            let handle = thread::Builder::new()
                .name(THREAD_NAME.to_owned())
                .spawn_scoped(scope, move || {
                    // SAFETY: `file` is an open namespace file owned by this closure; CLONE_NEWNET
                    // changes the network namespace of the calling thread only.
                    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(rc, 0, "setns({path}): {}", io::Error::last_os_error());
                    f()
                })
                .expect("spawn a thread for the namespace");
            handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Number of TCP sockets (IPv4 and IPv6, listeners included) the namespace still holds,
    /// not counting TIME_WAIT mini-sockets, which the tracepoint never reports on.
    pub fn live_tcp_sockets(&self) -> usize {
        self.run(|| {
            ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"]
                .iter()
                .map(|path| {
                    let table = std::fs::read_to_string(path)
                        .unwrap_or_else(|e| panic!("read {path}: {e}"));
                    // Columns: sl local_address rem_address st ...; TIME_WAIT is state 06.
                    table
                        .lines()
                        .skip(1)
                        .filter(|line| line.split_whitespace().nth(3) != Some("06"))
                        .count()
                })
                .sum()
        })
    }

    /// Waits until every TCP socket of the namespace is gone (TIME_WAIT aside), which means the
    /// kernel has already emitted their last transition (to CLOSE). Panics after `timeout`.
    pub fn await_no_tcp_sockets(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let live = self.live_tcp_sockets();
            if live == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{live} TCP sockets still open in namespace {} after {timeout:?}",
                self.name
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let status = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        match status {
            Ok(status) if status.success() => {}
            other => eprintln!("warning: ip netns del {}: {other:?}", self.name),
        }
    }
}

/// Runs `ip ARGS`, panicking with its stderr if it fails.
fn ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run ip {args:?}: {e}"));
    assert!(
        output.status.success(),
        "ip {args:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
}
