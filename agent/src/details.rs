//! What user space adds to a session's root span: its owner's executable, command line and user
//! name from /proc, and its cgroup's path and container id from /sys/fs/cgroup.
//!
//! Both are read when the session begins (its first transition), while the owner process and
//! the cgroup still exist, and cached (bounded) for when the session ends.

use std::num::NonZeroUsize;

use agent_common::{decode::StateChange, state::starts_socket};
use lru::LruCache;

use crate::{
    cgroup::{CgroupPaths, container_id},
    process_info::{ProcessInfo, ProcessTable},
    session::Context,
};

/// What user space found out about a session's owner and location, for its root span.
#[derive(Clone, Copy, Debug, Default)]
pub struct SessionDetails<'a> {
    /// The owner process, as read from /proc when the session began.
    pub process: Option<&'a ProcessInfo>,
    /// The socket's cgroup path, relative to the cgroup2 mount.
    pub cgroup_path: Option<&'a str>,
    /// The container id found in that path.
    pub container_id: Option<&'a str>,
}

/// A session's details as a sink gets them: described only when it asks (a sampler drops most
/// sessions without asking).
pub trait Describe {
    /// The details.
    fn details(&mut self) -> SessionDetails<'_>;
}

/// Details already described.
impl Describe for SessionDetails<'_> {
    fn details(&mut self) -> SessionDetails<'_> {
        *self
    }
}

/// The details of one session's owner and location, described from the cache when asked.
pub struct Described<'a> {
    cache: &'a mut DetailsCache,
    context: &'a Context,
}

impl Describe for Described<'_> {
    fn details(&mut self) -> SessionDetails<'_> {
        self.cache.describe(self.context)
    }
}

/// A cgroup's path and the container id in it.
#[derive(Clone, Debug, Default)]
struct CgroupInfo {
    path: Option<String>,
    container_id: Option<String>,
}

/// Bounded caches of process and cgroup descriptions.
pub struct DetailsCache {
    processes: ProcessTable,
    /// `None` without a cgroup2 mount: no paths, no container ids.
    cgroup_paths: Option<CgroupPaths>,
    cgroups: LruCache<u64, CgroupInfo>,
}

impl DetailsCache {
    /// Caches describing at most `capacity` processes and as many cgroups.
    pub fn new(capacity: NonZeroUsize) -> Self {
        Self {
            processes: ProcessTable::new(capacity),
            cgroup_paths: CgroupPaths::new(capacity).ok(),
            cgroups: crate::bounded::lru(capacity),
        }
    }

    /// At a socket's first transition, reads what describes its owner and cgroup.
    pub fn learn(&mut self, change: &StateChange) {
        if !starts_socket(change.oldstate.0, change.newstate.0) {
            return;
        }
        if let Some(owner) = &change.owner {
            self.processes
                .get(owner.pid, change.uid, &owner.comm.to_str_lossy());
        }
        cgroup(&mut self.cgroups, &mut self.cgroup_paths, change.cgroup_id);
    }

    /// The details of a session with `context`, described when a sink asks.
    pub fn of<'a>(&'a mut self, context: &'a Context) -> Described<'a> {
        Described {
            cache: self,
            context,
        }
    }

    /// The details of a session with `context` (from the caches, or read now).
    pub fn describe(&mut self, context: &Context) -> SessionDetails<'_> {
        let Self {
            processes,
            cgroup_paths,
            cgroups,
        } = self;
        let cgroup = cgroup(cgroups, cgroup_paths, context.cgroup_id);
        let process = context
            .owner
            .as_ref()
            .map(|owner| processes.get(owner.pid, context.uid, &owner.comm.to_str_lossy()));
        SessionDetails {
            process,
            cgroup_path: cgroup.path.as_deref(),
            container_id: cgroup.container_id.as_deref(),
        }
    }
}

/// The description of cgroup `id`, cached in `cgroups` or read through `paths` now.
fn cgroup<'a>(
    cgroups: &'a mut LruCache<u64, CgroupInfo>,
    paths: &mut Option<CgroupPaths>,
    id: u64,
) -> &'a CgroupInfo {
    cgroups.get_or_insert(id, || {
        let path = paths
            .as_mut()
            .and_then(|paths| paths.path(id))
            .map(str::to_owned);
        let container_id = path.as_deref().and_then(container_id);
        CgroupInfo { path, container_id }
    })
}
