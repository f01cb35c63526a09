//! Processes of their own, in namespaces and cgroups the test creates, that make TCP sockets and
//! say which (the `tcp_peer` binary of this crate), for the tests of socket owners and of the
//! `--pid`, `--netns` and `--cgroup` filters.

use std::ffi::CString;
use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::netns::Netns;

/// How long a peer may take to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Distinguishes the cgroups one test process creates.
static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a
/// host in hybrid mode), from /proc/self/mountinfo.
pub fn cgroup2_root() -> PathBuf {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    mountinfo
        .lines()
        .find_map(|line| {
            let (fields, rest) = line.split_once(" - ")?;
            (rest.split_whitespace().next() == Some("cgroup2"))
                .then(|| fields.split_whitespace().nth(4).map(PathBuf::from))
                .flatten()
        })
        .expect("a cgroup2 mount (the agent's cgroup ids are cgroup v2 ids)")
}

/// A cgroup made for one test, removed on drop (once its processes have exited).
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates `tcpstates-test-<pid>-<n>` under the cgroup2 root.
    pub fn create() -> Cgroup {
        Cgroup::create_under(&cgroup2_root())
    }

    /// Creates `tcpstates-test-<pid>-<n>` below `parent` (drop it before its parent).
    pub fn create_in(parent: &Cgroup) -> Cgroup {
        Cgroup::create_under(&parent.path)
    }

    fn create_under(dir: &Path) -> Cgroup {
        let path = dir.join(format!(
            "tcpstates-test-{}-{}",
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Cgroup { path }
    }

    /// Its directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its id: the inode number of its directory.
    pub fn id(&self) -> u64 {
        fs::metadata(&self.path).expect("stat cgroup").ino()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir(&self.path) {
            eprintln!("could not remove cgroup {}: {e}", self.path.display());
        }
    }
}

/// Inode number of a network namespace.
pub fn netns_inode(ns: &Netns) -> u64 {
    fs::metadata(format!("/run/netns/{}", ns.name()))
        .expect("stat the namespace file")
        .ino()
}

/// The `tcp_peer` binary cargo builds beside the test executables (which run from
/// `target/<profile>/deps/`) for the integration tests of this crate.
fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    profile_dir.join("tcp_peer")
}

/// Makes the process `command` starts enter network namespace `ns`, and `cgroup` if given,
/// before it runs anything. Returns the namespace file, which must stay open until the process
/// is spawned.
pub fn confine(command: &mut Command, ns: &Netns, cgroup: Option<&Cgroup>) -> fs::File {
    let netns = fs::File::open(format!("/run/netns/{}", ns.name())).expect("open netns");
    let netns_fd = netns.as_raw_fd();
    let procs = cgroup.map(|cgroup| {
        CString::new(
            cgroup
                .path()
                .join("cgroup.procs")
                .into_os_string()
                .into_vec(),
        )
        .expect("a path without NUL")
    });
    // SAFETY: runs in the forked child before exec and only makes system calls on memory
    // prepared before the fork: "0" written to cgroup.procs moves the writing process; setns on
    // an fd the parent keeps open until the spawn returns.
    unsafe {
        command.pre_exec(move || {
            if let Some(procs) = &procs {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
                libc::close(fd);
            }
            if libc::setns(netns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    netns
}

/// A socket a peer announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announced {
    /// The peer's pid.
    pub pid: u32,
    /// The socket's cookie.
    pub cookie: u64,
    /// Its local port.
    pub port: u16,
}

/// A running `tcp_peer`.
#[derive(Debug)]
pub struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Peer {
    /// Starts `tcp_peer ARGS` in `ns` and in `cgroup`, both entered before it runs, so every
    /// socket it makes belongs to them. It makes none until [`Peer::go`].
    pub fn start(ns: &Netns, cgroup: &Cgroup, args: &[&str]) -> Peer {
        let mut command = Command::new(binary());
        command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let netns = confine(&mut command, ns, Some(cgroup));
        let mut child = command.spawn().expect("start tcp_peer");
        drop(netns);
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let stdin = child.stdin.take();
        Peer {
            child,
            stdin,
            stdout,
        }
    }

    /// Lets the peer go on and make its sockets.
    pub fn go(&mut self) {
        let mut stdin = self.stdin.take().expect("go once");
        stdin.write_all(b"go\n").expect("write to tcp_peer");
    }

    /// Starts a peer listening on `addr` that accepts `count` connections.
    pub fn listen(ns: &Netns, cgroup: &Cgroup, addr: SocketAddr, count: usize) -> Peer {
        Peer::start(
            ns,
            cgroup,
            &["listen", &addr.to_string(), &count.to_string()],
        )
    }

    /// Starts a peer listening on `addr` with `SO_REUSEPORT`, sharing it with other such
    /// peers; it accepts connections until [`Peer::stop`].
    pub fn share(ns: &Netns, cgroup: &Cgroup, addr: SocketAddr) -> Peer {
        Peer::start(ns, cgroup, &["share", &addr.to_string()])
    }

    /// Starts a peer connecting to `addr`.
    pub fn connect(ns: &Netns, cgroup: &Cgroup, addr: SocketAddr) -> Peer {
        Peer::start(ns, cgroup, &["connect", &addr.to_string()])
    }

    /// The peer's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads the peer's next announcement, which must be of a socket of kind `what`
    /// (`listener`, `accepted` or `connected`). The peer's own timeouts bound the wait.
    pub fn next(&mut self, what: &str) -> Announced {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read tcp_peer");
        let rest = line
            .trim_end()
            .strip_prefix(what)
            .and_then(|rest| rest.strip_prefix(' '))
            .unwrap_or_else(|| panic!("expected a {what} line from tcp_peer, got {line:?}"));
        let field = |key: &str| -> u64 {
            rest.split_whitespace()
                .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
                .and_then(|value| value.parse().ok())
                .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        };
        Announced {
            pid: u32::try_from(field("pid")).expect("pid"),
            cookie: field("cookie"),
            port: u16::try_from(field("port")).expect("port"),
        }
    }

    /// Kills a sharing listener (see [`Peer::share`]) and returns the sockets it announced
    /// accepting.
    pub fn stop(mut self) -> Vec<Announced> {
        self.child.kill().expect("kill tcp_peer");
        self.child.wait().expect("wait for tcp_peer");
        let mut accepted = Vec::new();
        while !self.stdout.fill_buf().expect("read tcp_peer").is_empty() {
            accepted.push(self.next("accepted"));
        }
        accepted
    }

    /// Waits for the peer to exit successfully.
    pub fn wait(mut self) {
        let deadline = std::time::Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait tcp_peer") {
                assert!(status.success(), "tcp_peer failed: {status}");
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "tcp_peer still running after {EXIT_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
