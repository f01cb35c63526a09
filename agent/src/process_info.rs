//! Who owns a socket: the executable, command line and user of the process the kernel program
//! saw open it, read from `/proc` once and kept in a bounded cache.
//!
//! The kernel program reports the process's pid (its tgid in the initial pid namespace), uid and
//! `comm`, so the `/proc` read here must be the initial pid namespace's. An agent in a pid
//! namespace of its own (a container without `hostPID`) would find other processes, or none, at
//! those pids in its `/proc`: there it reads nothing from `/proc`, and every process is
//! described by what the kernel program reported (executable name = `comm`, no command line).
//!
//! Without root, what `/proc` shows of another user's process is less, and each part degrades
//! to what is known rather than failing:
//! - `/proc/PID/exe` reads only with ptrace access to the process (root, CAP_SYS_PTRACE or the
//!   same uid): otherwise the executable name is the process's `comm` (at most 15 bytes);
//! - a `/proc` mounted with `hidepid=invisible` (2) hides the process altogether, one with
//!   `hidepid=noaccess` (1) refuses its files: the executable name is then the `comm` the kernel
//!   program reported and the command line is empty (absent from traces), as for a process that
//!   has exited;
//! - the user name comes from the user database (NSS), which any user may read.

use std::{
    ffi::OsStr,
    fs::{self, File},
    io::{self, Read},
    num::NonZeroUsize,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use lru::LruCache;
use nix::unistd::{Uid, User};

/// Where procfs is mounted.
pub const PROC: &str = "/proc";

/// Longest command line kept, in bytes; longer ones are cut (and an incomplete UTF-8 sequence
/// at the cut is replaced).
pub const MAX_COMMAND_LINE: usize = 4096;

/// The inode of the initial pid namespace (`PROC_PID_INIT_INO`), as `/proc/self/ns/pid` names
/// it: `pid:[4026531836]`.
const INITIAL_PID_NAMESPACE: &str = "pid:[4026531836]";

/// How many uid → user name lookups are kept.
const USERS: NonZeroUsize = NonZeroUsize::new(256).expect("256 is not zero");

/// Length of a kernel `comm` buffer (`TASK_COMM_LEN`), which bounds the `comm` in a cache key.
const COMM_LEN: usize = 16;

/// A cache key: pid, uid and `comm`, the latter cut to [`COMM_LEN`] bytes and NUL-padded.
type Key = (u32, u32, [u8; COMM_LEN]);

/// What is known about the process that owns a socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    /// File name of the executable (the target of `/proc/PID/exe`, without a ` (deleted)`
    /// suffix); else `/proc/PID/comm`; else the `comm` the kernel program reported.
    pub executable_name: String,
    /// The arguments (`/proc/PID/cmdline`) separated by spaces, at most [`MAX_COMMAND_LINE`]
    /// bytes; empty for kernel threads, zombies, exited processes and processes `/proc` hides or
    /// refuses (`hidepid`).
    pub command_line: String,
    /// Name of the user the kernel program reported; `None` when the uid has no name.
    pub owner: Option<String>,
    /// `/proc` had no such process when it was read (it had exited, or `hidepid=invisible`
    /// hides it from this user): `executable_name` is the `comm` the kernel program reported
    /// and `command_line` is empty.
    pub exited: bool,
}

/// A bounded cache of [`ProcessInfo`], each read from `/proc` on its first lookup.
///
/// Entries are keyed by pid, uid and `comm`: a pid seen again with another uid or `comm` (the
/// pid was reused, the process changed user, or a thread of another name opened the socket) is
/// read again. When the cache is full the entry used longest ago is dropped. User names are
/// cached per uid as well.
pub struct ProcessTable {
    /// The procfs to read; `None` when it does not show the initial pid namespace's pids.
    root: Option<PathBuf>,
    processes: LruCache<Key, ProcessInfo>,
    users: LruCache<u32, Option<String>>,
}

impl ProcessTable {
    /// A table reading [`PROC`] that keeps at most `capacity` processes, if this process runs
    /// in the initial pid namespace; otherwise one that reads nothing.
    pub fn new(capacity: NonZeroUsize) -> Self {
        let host_pids = fs::read_link(Path::new(PROC).join("self/ns/pid"))
            .is_ok_and(|namespace| namespace.as_os_str() == INITIAL_PID_NAMESPACE);
        Self::with_root(host_pids.then_some(PROC), capacity)
    }

    /// A table reading a procfs found at `root` (none: nothing is read) that keeps at most
    /// `capacity` processes.
    pub fn with_root(root: Option<impl Into<PathBuf>>, capacity: NonZeroUsize) -> Self {
        Self {
            root: root.map(Into::into),
            processes: crate::bounded::lru(capacity),
            users: LruCache::new(USERS),
        }
    }

    /// What is known about process `pid`, whose user and `comm` the kernel program reported as
    /// `uid` and `comm`; read from `/proc` unless cached. A process that is gone still gets an
    /// entry, with [`ProcessInfo::exited`] set.
    pub fn get(&mut self, pid: u32, uid: u32, comm: &str) -> &ProcessInfo {
        let Self {
            root,
            processes,
            users,
        } = self;
        processes.get_or_insert((pid, uid, comm_key(comm)), || {
            let owner = users.get_or_insert(uid, || user_name(uid)).clone();
            match root {
                Some(root) => read(&root.join(pid.to_string()), owner, comm),
                None => ProcessInfo {
                    executable_name: comm.to_owned(),
                    command_line: String::new(),
                    owner,
                    exited: false,
                },
            }
        })
    }

    /// How many processes are cached.
    pub fn len(&self) -> usize {
        self.processes.len()
    }

    /// Whether no process is cached.
    pub fn is_empty(&self) -> bool {
        self.processes.is_empty()
    }
}

fn comm_key(comm: &str) -> [u8; COMM_LEN] {
    let mut key = [0; COMM_LEN];
    let len = comm.len().min(COMM_LEN);
    key[..len].copy_from_slice(&comm.as_bytes()[..len]);
    key
}

/// The name of user `uid`, if it has one; a failed lookup counts as none.
fn user_name(uid: u32) -> Option<String> {
    User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|user| user.name)
}

/// Reads the process whose `/proc` directory is `dir`.
fn read(dir: &Path, owner: Option<String>, comm: &str) -> ProcessInfo {
    let command_line = match command_line(dir) {
        Ok(line) => line,
        Err(e) if is_gone(&e) => {
            return ProcessInfo {
                executable_name: comm.to_owned(),
                command_line: String::new(),
                owner,
                exited: true,
            };
        }
        Err(_) => String::new(),
    };
    let executable_name = executable_name(dir)
        .or_else(|| proc_comm(dir))
        .unwrap_or_else(|| comm.to_owned());
    ProcessInfo {
        executable_name,
        command_line,
        owner,
        exited: false,
    }
}

/// Whether a read in `/proc/PID` failed because the process is gone.
fn is_gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
}

/// `/proc/PID/cmdline` with its NULs turned into spaces, trailing NULs dropped.
fn command_line(dir: &Path) -> io::Result<String> {
    let mut line = Vec::new();
    File::open(dir.join("cmdline"))?
        .take(MAX_COMMAND_LINE as u64)
        .read_to_end(&mut line)?;
    while line.last() == Some(&0) {
        line.pop();
    }
    for byte in &mut line {
        if *byte == 0 {
            *byte = b' ';
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// File name of the target of `/proc/PID/exe`, which the kernel suffixes with ` (deleted)` when
/// the file was removed (e.g. replaced by an upgrade); `None` for kernel threads and zombies.
fn executable_name(dir: &Path) -> Option<String> {
    let target = fs::read_link(dir.join("exe")).ok()?;
    let target = target.as_os_str().as_bytes();
    let target = target.strip_suffix(b" (deleted)").unwrap_or(target);
    let name = Path::new(OsStr::from_bytes(target)).file_name()?;
    Some(name.to_string_lossy().into_owned())
}

/// `/proc/PID/comm` without its newline, if it is not empty.
fn proc_comm(dir: &Path) -> Option<String> {
    let comm = fs::read(dir.join("comm")).ok()?;
    let comm = comm.strip_suffix(b"\n").unwrap_or(&comm);
    (!comm.is_empty()).then(|| String::from_utf8_lossy(comm).into_owned())
}

#[cfg(test)]
mod tests {
    use std::{
        os::unix::fs::symlink,
        sync::atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    /// A directory under the system's temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "tcpstates-process-info-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&path).unwrap();
            Self(path)
        }

        /// Creates `/proc/PID` with the given files; `exe` becomes a symbolic link.
        fn process(
            &self,
            pid: u32,
            exe: Option<&str>,
            comm: Option<&str>,
            cmdline: &[u8],
        ) -> PathBuf {
            let dir = self.0.join(pid.to_string());
            fs::create_dir(&dir).unwrap();
            if let Some(exe) = exe {
                symlink(exe, dir.join("exe")).unwrap();
            }
            if let Some(comm) = comm {
                fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
            }
            fs::write(dir.join("cmdline"), cmdline).unwrap();
            dir
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn capacity(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).unwrap()
    }

    #[test]
    fn reads_executable_command_line_and_owner() {
        let proc = TempDir::new();
        proc.process(
            42,
            Some("/usr/bin/curl"),
            Some("curl"),
            b"curl\0-s\0https://example.com/\0",
        );
        let mut table = ProcessTable::with_root(Some(&proc.0), capacity(8));
        assert_eq!(
            table.get(42, 0, "curl"),
            &ProcessInfo {
                executable_name: "curl".into(),
                command_line: "curl -s https://example.com/".into(),
                owner: user_name(0),
                exited: false,
            }
        );
        assert!(user_name(0).is_some(), "uid 0 has a name");
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn executable_name_is_that_of_the_link_target_even_deleted() {
        let proc = TempDir::new();
        proc.process(
            7,
            Some("/usr/sbin/nginx (deleted)"),
            Some("nginx"),
            b"nginx: worker process\0\0\0\0",
        );
        proc.process(8, Some("/opt/my app/bin/serve"), Some("serve"), b"");
        let mut table = ProcessTable::with_root(Some(&proc.0), capacity(8));
        let nginx = table.get(7, 0, "nginx").clone();
        assert_eq!(nginx.executable_name, "nginx");
        assert_eq!(nginx.command_line, "nginx: worker process");
        assert_eq!(table.get(8, 0, "serve").executable_name, "serve");
    }

    #[test]
    fn falls_back_to_proc_comm_then_to_the_reported_comm() {
        let proc = TempDir::new();
        proc.process(2, None, Some("kthreadd"), b"");
        proc.process(3, None, None, b"");
        let mut table = ProcessTable::with_root(Some(&proc.0), capacity(8));
        let kthreadd = table.get(2, 0, "ignored").clone();
        assert_eq!(kthreadd.executable_name, "kthreadd");
        assert_eq!(kthreadd.command_line, "");
        assert!(!kthreadd.exited);
        let bare = table.get(3, 0, "reported").clone();
        assert_eq!(bare.executable_name, "reported");
        assert!(!bare.exited);
    }

    #[test]
    fn an_exited_process_is_described_by_what_the_kernel_reported() {
        let proc = TempDir::new();
        let mut table = ProcessTable::with_root(Some(&proc.0), capacity(8));
        assert_eq!(
            table.get(1234, u32::MAX, "short-lived"),
            &ProcessInfo {
                executable_name: "short-lived".into(),
                command_line: String::new(),
                owner: None,
                exited: true,
            }
        );
    }

    #[test]
    fn a_process_whose_files_are_refused_is_described_by_what_the_kernel_reported() {
        // As with `hidepid=noaccess`, or without ptrace access for `exe`: the directory is
        // there but its files cannot be read (here: directories where files should be, as
        // root reads any file whatever its mode).
        let proc = TempDir::new();
        let dir = proc.0.join("77");
        for name in ["cmdline", "comm", "exe"] {
            fs::create_dir_all(dir.join(name)).unwrap();
        }
        let mut table = ProcessTable::with_root(Some(&proc.0), capacity(8));
        assert_eq!(
            table.get(77, 0, "reported"),
            &ProcessInfo {
                executable_name: "reported".into(),
                command_line: String::new(),
                owner: user_name(0),
                exited: false,
            }
        );
    }

    #[test]
    fn long_command_lines_are_cut() {
        let proc = TempDir::new();
        let mut cmdline = b"sh\0-c\0".to_vec();
        cmdline.resize(3 * MAX_COMMAND_LINE, b'x');
        proc.process(9, Some("/bin/sh"), Some("sh"), &cmdline);
        let mut table = ProcessTable::with_root(Some(&proc.0), capacity(8));
        let line = &table.get(9, 0, "sh").command_line;
        assert_eq!(line.len(), MAX_COMMAND_LINE);
        assert!(line.starts_with("sh -c xxx"));
    }

    #[test]
    fn reads_once_per_pid_uid_and_comm() {
        let proc = TempDir::new();
        let dir = proc.process(10, Some("/usr/bin/old"), Some("old"), b"old\0");
        let mut table = ProcessTable::with_root(Some(&proc.0), capacity(8));
        assert_eq!(table.get(10, 0, "old").command_line, "old");
        fs::write(dir.join("cmdline"), b"new\0").unwrap();
        assert_eq!(table.get(10, 0, "old").command_line, "old", "cached");
        assert_eq!(table.len(), 1);
        assert_eq!(table.get(10, 0, "new").command_line, "new", "pid reused");
        assert_eq!(table.get(10, 1, "new").command_line, "new");
        assert_eq!(table.get(10, 1, "new").owner, user_name(1));
        assert_eq!(table.len(), 3);
    }

    #[test]
    fn the_cache_is_bounded() {
        let proc = TempDir::new();
        let mut table = ProcessTable::with_root(Some(&proc.0), capacity(2));
        for pid in 1..=5 {
            table.get(pid, 0, "gone");
        }
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn reads_this_process_from_the_real_proc() {
        let mut table = ProcessTable::new(capacity(8));
        let uid = nix::unistd::getuid().as_raw();
        let info = table.get(std::process::id(), uid, "ignored").clone();
        let exe = std::env::current_exe().unwrap();
        assert_eq!(
            info.executable_name,
            exe.file_name().unwrap().to_string_lossy()
        );
        assert_eq!(
            info.command_line,
            std::env::args().collect::<Vec<_>>().join(" ")
        );
        assert_eq!(info.owner, user_name(uid));
        assert!(!info.exited);
    }

    #[test]
    fn without_the_hosts_pids_nothing_is_read_from_proc() {
        let proc = TempDir::new();
        // What a container's own /proc shows at a host pid: another process.
        proc.process(1, Some("/usr/bin/other"), Some("other"), b"other\0--flag\0");
        let mut table = ProcessTable::with_root(None::<&Path>, capacity(8));
        let info = table.get(1, 0, "nginx").clone();
        assert_eq!(info.executable_name, "nginx");
        assert_eq!(info.command_line, "");
        assert!(!info.exited);
    }
}
