//! Where a socket lives: cgroup v2 ids and network-namespace inodes, the numbers the kernel
//! program reports, turned into cgroup paths and container ids; and the paths a user gives as
//! filter arguments turned into those numbers.
//!
//! A cgroup v2 id is the inode number of the cgroup's directory on the cgroup2 filesystem (on a
//! 64-bit kernel; a 32-bit one shows only the id's low 32 bits). A network namespace is known by
//! the inode number of its nsfs file, such as `/proc/PID/ns/net` or `/run/netns/NAME`.

use std::{
    fs::{self, File, OpenOptions},
    io,
    num::NonZeroUsize,
    os::{
        fd::AsRawFd,
        unix::fs::{DirEntryExt, MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use lru::LruCache;

/// Where cgroup2 is mounted: alone (the unified hierarchy), then beside cgroup v1 hierarchies
/// (systemd's hybrid layout).
pub const CGROUP2_MOUNTS: [&str; 2] = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"];

/// Deepest level below the cgroup2 root that [`CgroupPaths`] walks to. The root is level 0; a
/// Kubernetes container, `/kubepods.slice/kubepods-burstable.slice/…-podUID.slice/…-ID.scope`,
/// is level 4.
pub const MAX_DEPTH: usize = 16;

/// Most cgroups one walk of [`CgroupPaths`] visits.
pub const MAX_CGROUPS: usize = 65_536;

/// Shortest time between two walks of [`CgroupPaths`] after a cache miss.
pub const REWALK_INTERVAL: Duration = Duration::from_secs(1);

/// `statfs` magic of cgroup2 (`CGROUP2_SUPER_MAGIC`).
const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;

/// `statfs` magic of nsfs (`NSFS_MAGIC`).
const NSFS_MAGIC: u64 = 0x6e73_6673;

/// A cgroup or network-namespace path that does not name one.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The path could not be opened or examined.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A cgroup path is not a directory.
    #[error(
        "{} is not a directory: a cgroup is a directory under the cgroup2 mount, \
         e.g. /sys/fs/cgroup/system.slice",
        path.display()
    )]
    NotDirectory {
        /// The path.
        path: PathBuf,
    },
    /// A cgroup path is not on cgroup2.
    #[error(
        "{} is not on a cgroup2 filesystem: a cgroup is a directory under the cgroup2 mount, \
         e.g. /sys/fs/cgroup/system.slice",
        path.display()
    )]
    NotCgroup2 {
        /// The path.
        path: PathBuf,
    },
    /// cgroup2 is mounted at none of [`CGROUP2_MOUNTS`].
    #[error("cgroup2 is mounted neither at /sys/fs/cgroup nor at /sys/fs/cgroup/unified")]
    NoCgroup2Mount,
    /// A network-namespace path is not an nsfs file.
    #[error(
        "{} is not a namespace file: give /proc/PID/ns/net or a bind mount of one \
         such as /run/netns/NAME",
        path.display()
    )]
    NotNamespace {
        /// The path.
        path: PathBuf,
    },
    /// A network-namespace file could not be opened for want of permission: a process's
    /// `/proc/PID/ns/net` opens only with ptrace access to that process.
    #[error(
        "{}: permission denied: /proc/PID/ns/net of another user's process opens only with \
         ptrace access to it (root or CAP_SYS_PTRACE); without it, give a bind mount of the \
         namespace readable by this user, such as /run/netns/NAME",
        path.display()
    )]
    NamespaceDenied {
        /// The path.
        path: PathBuf,
    },
    /// A network-namespace path names a namespace of another type.
    #[error("{} is a namespace but not a network namespace", path.display())]
    NotNetworkNamespace {
        /// The path.
        path: PathBuf,
    },
}

/// Where cgroup2 is mounted: the first of [`CGROUP2_MOUNTS`] that is a cgroup2 directory.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    CGROUP2_MOUNTS
        .iter()
        .map(Path::new)
        .find(|path| cgroup_id_of(path).is_ok())
        .map(Path::to_path_buf)
        .ok_or(CgroupError::NoCgroup2Mount)
}

/// The cgroup v2 id of the cgroup whose directory is `path`, a file-system path such as
/// `/sys/fs/cgroup/system.slice/nginx.service` (not a path relative to the cgroup2 mount, as
/// `/proc/PID/cgroup` shows; join that to [`cgroup2_mount`] first).
pub fn cgroup_id_of(path: &Path) -> Result<u64, CgroupError> {
    let io = |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(path)
    {
        Ok(dir) => dir,
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
            return Err(CgroupError::NotDirectory {
                path: path.to_path_buf(),
            });
        }
        Err(e) => return Err(io(e)),
    };
    if filesystem_magic(&dir).map_err(io)? != CGROUP2_SUPER_MAGIC {
        return Err(CgroupError::NotCgroup2 {
            path: path.to_path_buf(),
        });
    }
    Ok(dir.metadata().map_err(io)?.ino())
}

/// A cgroup v2 as the kernel program filters on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupRef {
    /// Its id (the inode number of its directory).
    pub id: u64,
    /// Its depth in the hierarchy: 0 for the root, 1 for its children, …
    pub level: u32,
}

/// The cgroup v2 whose directory is `path` (as for [`cgroup_id_of`]), with its depth: the
/// number of its ancestors that are cgroup2 directories.
pub fn cgroup_of(path: &Path) -> Result<CgroupRef, CgroupError> {
    let id = cgroup_id_of(path)?;
    let canonical = path.canonicalize().map_err(|source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let ancestors = canonical
        .ancestors()
        .skip(1)
        .take_while(|dir| cgroup_id_of(dir).is_ok())
        .count();
    Ok(CgroupRef {
        id,
        level: u32::try_from(ancestors).unwrap_or(u32::MAX),
    })
}

/// The inode number of the network namespace whose nsfs file is `path`, such as
/// `/proc/PID/ns/net` or `/run/netns/NAME`.
pub fn netns_inode_of(path: &Path) -> Result<u64, CgroupError> {
    let io = |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    };
    // Non-blocking so that a FIFO given by mistake does not hang the open.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|source| match source.kind() {
            io::ErrorKind::PermissionDenied => CgroupError::NamespaceDenied {
                path: path.to_path_buf(),
            },
            _ => io(source),
        })?;
    if filesystem_magic(&file).map_err(io)? != NSFS_MAGIC {
        return Err(CgroupError::NotNamespace {
            path: path.to_path_buf(),
        });
    }
    // SAFETY: NS_GET_NSTYPE takes no argument; the descriptor is open for the whole call.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), libc::NS_GET_NSTYPE) };
    if kind < 0 {
        return Err(io(io::Error::last_os_error()));
    }
    if kind != libc::CLONE_NEWNET {
        return Err(CgroupError::NotNetworkNamespace {
            path: path.to_path_buf(),
        });
    }
    Ok(file.metadata().map_err(io)?.ino())
}

/// The `statfs` magic of the file system `file` is on.
fn filesystem_magic(file: &File) -> io::Result<u64> {
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: the descriptor is open for the whole call and `stat` is a `struct statfs` for the
    // kernel to write.
    if unsafe { libc::fstatfs(file.as_raw_fd(), stat.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstatfs succeeded, so it filled `stat` in.
    let stat = unsafe { stat.assume_init() };
    // `f_type` is signed on some targets and 32 bits wide on others; the magics fit in 32 bits.
    Ok(stat.f_type as u64 & 0xffff_ffff)
}

/// The id of the container a cgroup belongs to: the last component of `cgroup_path` that is a
/// 64-hex-digit id, alone or as `PREFIX-ID` or `PREFIX-ID.scope`.
///
/// That covers Docker (`/docker/ID`, `/system.slice/docker-ID.scope`), containerd and CRI-O
/// under Kubernetes (`/kubepods/burstable/podUID/ID`,
/// `/kubepods.slice/…/kubepods-burstable-podUID.slice/cri-containerd-ID.scope`, `crio-ID.scope`)
/// and Podman (`libpod-ID.scope`). The scopes of the conmon monitors of CRI-O and Podman
/// (`crio-conmon-ID.scope`, `libpod-conmon-ID.scope`) are not containers.
pub fn container_id(cgroup_path: &str) -> Option<String> {
    cgroup_path
        .rsplit('/')
        .find_map(container_id_in)
        .map(str::to_owned)
}

fn container_id_in(component: &str) -> Option<&str> {
    let name = component.strip_suffix(".scope").unwrap_or(component);
    let (prefix, id) = name.rsplit_once('-').unwrap_or(("", name));
    let is_id = id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    (is_id && !prefix.ends_with("conmon")).then_some(id)
}

/// Cgroup paths by cgroup id, found by walking the cgroup2 file system and kept in a bounded
/// cache.
///
/// A path is relative to the cgroup2 mount, as in `/proc/PID/cgroup`: `/` for the root,
/// `/system.slice/docker-….scope` below it. An id not in the cache starts a walk of the tree
/// ([`MAX_DEPTH`] levels, [`MAX_CGROUPS`] cgroups) that caches every cgroup it meets, but at
/// most one walk per [`REWALK_INTERVAL`]; when the cache is full the path used longest ago is
/// dropped. Cgroup ids are never reused, so a cached path stays right, if perhaps removed.
pub struct CgroupPaths {
    root: PathBuf,
    cache: LruCache<u64, String>,
    last_walk: Option<Instant>,
    max_depth: usize,
    max_cgroups: usize,
}

impl CgroupPaths {
    /// Paths under the system's cgroup2 mount ([`cgroup2_mount`]), keeping at most `capacity`.
    pub fn new(capacity: NonZeroUsize) -> Result<Self, CgroupError> {
        Ok(Self::with_root(cgroup2_mount()?, capacity))
    }

    /// Paths under a cgroup2 file system mounted at `root`, keeping at most `capacity`.
    pub fn with_root(root: impl Into<PathBuf>, capacity: NonZeroUsize) -> Self {
        Self {
            root: root.into(),
            cache: crate::bounded::lru(capacity),
            last_walk: None,
            max_depth: MAX_DEPTH,
            max_cgroups: MAX_CGROUPS,
        }
    }

    /// Where the cgroup2 file system walked is mounted.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of cgroup `id` relative to the root; `None` when the walk did not find it, or
    /// when it is not cached and the last walk was less than [`REWALK_INTERVAL`] ago.
    pub fn path(&mut self, id: u64) -> Option<&str> {
        self.path_at(id, Instant::now())
    }

    /// How many paths are cached.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Whether no path is cached.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    fn path_at(&mut self, id: u64, now: Instant) -> Option<&str> {
        if !self.cache.contains(&id) {
            if self
                .last_walk
                .is_some_and(|last| now.saturating_duration_since(last) < REWALK_INTERVAL)
            {
                return None;
            }
            self.last_walk = Some(now);
            self.walk(id);
        }
        self.cache.get(&id).map(String::as_str)
    }

    /// Walks the tree depth first, caching every cgroup met and `wanted` last, so that a full
    /// cache still keeps it.
    fn walk(&mut self, wanted: u64) {
        let Ok(root) = fs::metadata(&self.root) else {
            return;
        };
        let mut found = None;
        let mut record = |cache: &mut LruCache<u64, String>, id, path| {
            if id == wanted {
                found = Some(path);
            } else {
                cache.put(id, path);
            }
        };
        record(&mut self.cache, root.ino(), "/".to_owned());
        let mut visited = 1;
        // Directories to list: file-system path, cgroup path ("" for the root), level.
        let mut pending = vec![(self.root.clone(), String::new(), 0)];
        'walk: while let Some((dir, path, depth)) = pending.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if !entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                    continue;
                }
                if visited == self.max_cgroups {
                    break 'walk;
                }
                visited += 1;
                let child = format!("{path}/{}", entry.file_name().to_string_lossy());
                if depth + 1 < self.max_depth {
                    pending.push((entry.path(), child.clone(), depth + 1));
                }
                // The inode number readdir gives, which on cgroup2 is the cgroup id.
                record(&mut self.cache, entry.ino(), child);
            }
        }
        if let Some(path) = found {
            self.cache.put(wanted, path);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A directory under the system's temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "tcpstates-cgroup-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&path).unwrap();
            Self(path)
        }

        /// Creates the directory `relative` (with its parents) and returns its inode number.
        fn mkdir(&self, relative: &str) -> u64 {
            let path = self.0.join(relative);
            fs::create_dir_all(&path).unwrap();
            fs::metadata(&path).unwrap().ino()
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

    const ID: &str = "4f0a3c8be1d2a7f6c5b4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2";
    const OTHER: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn container_ids_of_real_world_cgroup_paths() {
        let cases = [
            // Docker, cgroupfs driver, and nested (docker in docker).
            (format!("/docker/{ID}"), Some(ID)),
            (format!("/docker/{OTHER}/docker/{ID}"), Some(ID)),
            // Docker, systemd driver, and a systemd inside the container.
            (format!("/system.slice/docker-{ID}.scope"), Some(ID)),
            (
                format!("/system.slice/docker-{ID}.scope/init.scope"),
                Some(ID),
            ),
            // Kubernetes, cgroupfs driver.
            (
                format!("/kubepods/burstable/pod0f2ab5c4-1d3e-4f5a-8b6c-7d8e9f0a1b2c/{ID}"),
                Some(ID),
            ),
            (
                format!("/kubepods/besteffort/pod0f2ab5c4-1d3e-4f5a-8b6c-7d8e9f0a1b2c/{ID}"),
                Some(ID),
            ),
            // Kubernetes, systemd driver: containerd, CRI-O and its conmon.
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/\
                     kubepods-burstable-pod0f2ab5c4_1d3e_4f5a_8b6c_7d8e9f0a1b2c.slice/\
                     cri-containerd-{ID}.scope"
                ),
                Some(ID),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-pod0f2ab5c4_1d3e_4f5a_8b6c_7d8e9f0a1b2c.slice/\
                     crio-{ID}.scope"
                ),
                Some(ID),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/\
                     kubepods-besteffort-pod0f2ab5c4_1d3e_4f5a_8b6c_7d8e9f0a1b2c.slice/\
                     crio-conmon-{ID}.scope"
                ),
                None,
            ),
            // Podman, rootful and rootless, and its conmon.
            (format!("/machine.slice/libpod-{ID}.scope"), Some(ID)),
            (
                format!(
                    "/user.slice/user-1000.slice/user@1000.service/user.slice/\
                     libpod-{ID}.scope/container"
                ),
                Some(ID),
            ),
            (format!("/machine.slice/libpod-conmon-{ID}.scope"), None),
            // No container.
            ("/".to_owned(), None),
            (String::new(), None),
            ("/system.slice/sshd.service".to_owned(), None),
            (
                "/user.slice/user-1000.slice/session-3.scope".to_owned(),
                None,
            ),
            ("/kubepods.slice/kubepods-burstable.slice".to_owned(), None),
            // Not quite ids.
            (format!("/docker/{}", &ID[1..]), None),
            (format!("/docker/{ID}0"), None),
            (format!("/docker/{}", ID.to_uppercase()), None),
            (format!("/system.slice/docker-{ID}.service.d"), None),
        ];
        for (path, expected) in cases {
            assert_eq!(container_id(&path).as_deref(), expected, "{path}");
        }
    }

    #[test]
    fn walks_to_the_path_of_an_id() {
        let root = TempDir::new();
        let scope = root.mkdir("system.slice/docker-abc.scope");
        let service = root.mkdir("system.slice/sshd.service");
        let user = root.mkdir("user.slice");
        fs::write(root.0.join("system.slice/cgroup.procs"), "").unwrap();
        let mut paths = CgroupPaths::with_root(&root.0, capacity(16));
        assert_eq!(paths.path(scope), Some("/system.slice/docker-abc.scope"));
        assert_eq!(paths.path(service), Some("/system.slice/sshd.service"));
        assert_eq!(paths.path(user), Some("/user.slice"));
        let root_id = fs::metadata(&root.0).unwrap().ino();
        assert_eq!(paths.path(root_id), Some("/"));
        assert_eq!(paths.len(), 5, "the root, three cgroups and system.slice");
    }

    #[test]
    fn rewalks_on_a_miss_at_most_once_per_interval() {
        let root = TempDir::new();
        root.mkdir("a");
        let mut paths = CgroupPaths::with_root(&root.0, capacity(16));
        let start = Instant::now();
        assert_eq!(paths.path_at(u64::MAX, start), None);
        let late = root.mkdir("a/late");
        let soon = start + REWALK_INTERVAL / 2;
        assert_eq!(paths.path_at(late, soon), None, "walked too recently");
        let later = start + REWALK_INTERVAL;
        assert_eq!(paths.path_at(late, later), Some("/a/late"));
    }

    #[test]
    fn walks_are_bounded() {
        let root = TempDir::new();
        let deep = root.mkdir("1/2/3");
        let mut paths = CgroupPaths::with_root(&root.0, capacity(16));
        paths.max_depth = 2;
        assert_eq!(paths.path(deep), None);
        assert_eq!(paths.len(), 3, "the root, /1 and /1/2");

        let root = TempDir::new();
        for name in ["a", "b", "c", "d"] {
            root.mkdir(name);
        }
        let mut paths = CgroupPaths::with_root(&root.0, capacity(16));
        paths.max_cgroups = 3;
        assert_eq!(paths.path(u64::MAX), None);
        assert_eq!(paths.len(), 3);
    }

    #[test]
    fn a_full_cache_keeps_the_path_looked_up() {
        let root = TempDir::new();
        let ids: Vec<_> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|name| (root.mkdir(name), format!("/{name}")))
            .collect();
        for (id, path) in &ids {
            let mut paths = CgroupPaths::with_root(&root.0, capacity(2));
            assert_eq!(paths.path(*id), Some(path.as_str()));
            assert_eq!(paths.len(), 2);
        }
    }

    #[test]
    fn the_real_cgroup2_root_and_this_process_s_cgroup() {
        let mount = cgroup2_mount().expect("cgroup2 is mounted");
        let root_id = cgroup_id_of(&mount).unwrap();
        let mut paths = CgroupPaths::with_root(&mount, capacity(64));
        assert_eq!(paths.path(root_id), Some("/"));
        assert_eq!(root_id, fs::metadata(&mount).unwrap().ino());

        // "0::PATH" is the cgroup2 line of /proc/PID/cgroup.
        let own = fs::read_to_string("/proc/self/cgroup").unwrap();
        let own = own
            .lines()
            .find_map(|line| line.strip_prefix("0::"))
            .expect("a cgroup2 line");
        let id = cgroup_id_of(&mount.join(own.trim_start_matches('/'))).unwrap();
        let mut paths = CgroupPaths::with_root(&mount, capacity(64));
        assert_eq!(paths.path(id), Some(own));

        assert_eq!(
            cgroup_of(&mount).unwrap(),
            CgroupRef {
                id: root_id,
                level: 0
            }
        );
        let depth = own.split('/').filter(|part| !part.is_empty()).count();
        let level = u32::try_from(depth).unwrap();
        assert_eq!(
            cgroup_of(&mount.join(own.trim_start_matches('/'))).unwrap(),
            CgroupRef { id, level }
        );
    }

    #[test]
    fn cgroup_id_of_rejects_what_is_not_a_cgroup2_directory() {
        let dir = TempDir::new();
        assert!(matches!(
            cgroup_id_of(&dir.0),
            Err(CgroupError::NotCgroup2 { .. })
        ));
        let file = dir.0.join("file");
        fs::write(&file, "").unwrap();
        assert!(matches!(
            cgroup_id_of(&file),
            Err(CgroupError::NotDirectory { .. })
        ));
        let error = cgroup_id_of(&dir.0.join("missing")).unwrap_err();
        let CgroupError::Io { source, .. } = &error else {
            panic!("{error:?}");
        };
        assert_eq!(source.kind(), io::ErrorKind::NotFound);
        assert!(
            error
                .to_string()
                .ends_with("/missing: No such file or directory (os error 2)")
        );
    }

    #[test]
    fn netns_inode_of_this_process() {
        let link = fs::read_link("/proc/self/ns/net").unwrap();
        let expected: u64 = link
            .to_str()
            .and_then(|link| link.strip_prefix("net:["))
            .and_then(|link| link.strip_suffix(']'))
            .and_then(|inode| inode.parse().ok())
            .expect("net:[INODE]");
        assert_eq!(
            netns_inode_of(Path::new("/proc/self/ns/net")).unwrap(),
            expected
        );
    }

    #[test]
    fn netns_inode_of_rejects_what_is_not_a_network_namespace() {
        assert!(matches!(
            netns_inode_of(Path::new("/proc/self/ns/uts")),
            Err(CgroupError::NotNetworkNamespace { .. })
        ));
        let dir = TempDir::new();
        let file = dir.0.join("netns");
        fs::write(&file, "").unwrap();
        assert!(matches!(
            netns_inode_of(&file),
            Err(CgroupError::NotNamespace { .. })
        ));
        assert!(matches!(
            netns_inode_of(&dir.0.join("missing")),
            Err(CgroupError::Io { .. })
        ));
    }
}
