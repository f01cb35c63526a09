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
    process_info::ProcessTable,
    session::Context,
    sink::otlp::spans::SessionDetails,
};

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
            cgroups: LruCache::new(capacity),
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
        self.cgroup(change.cgroup_id);
    }

    /// The details of a session with `context` (from the caches, or read now).
    pub fn describe(&mut self, context: &Context) -> SessionDetails<'_> {
        let cgroup = self.cgroup(context.cgroup_id).clone();
        let process = context.owner.as_ref().map(|owner| {
            self.processes
                .get(owner.pid, context.uid, &owner.comm.to_str_lossy())
        });
        SessionDetails {
            process,
            cgroup_path: cgroup.path,
            container_id: cgroup.container_id,
        }
    }

    fn cgroup(&mut self, id: u64) -> &CgroupInfo {
        let paths = &mut self.cgroup_paths;
        self.cgroups.get_or_insert(id, || {
            let path = paths
                .as_mut()
                .and_then(|paths| paths.path(id))
                .map(str::to_owned);
            let container_id = path.as_deref().and_then(container_id);
            CgroupInfo { path, container_id }
        })
    }
}
