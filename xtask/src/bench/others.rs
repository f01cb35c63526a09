//! Finding other tracers on the machine: their programs run on the same events and slow the
//! load, so the bench names them before it measures.

use std::fs;

/// Processes other than this one that hold a BPF link or a perf event (an attached tracer),
/// as `PID (COMM)`.
pub fn attached_tracers() -> Vec<String> {
    let own = std::process::id().to_string();
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<(u32, String)> = procs
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_str()?.to_owned();
            let pid: u32 = name.parse().ok()?;
            if name == own || !holds_tracer_fd(pid) {
                return None;
            }
            let comm = fs::read_to_string(format!("/proc/{name}/comm")).unwrap_or_default();
            Some((pid, format!("{pid} ({})", comm.trim())))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, text)| text).collect()
}

/// Whether process `pid` holds a BPF link or a perf event, i.e. has a BPF program attached.
pub fn holds_tracer_fd(pid: u32) -> bool {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        fs::read_link(fd.path()).is_ok_and(|target| {
            matches!(
                target.to_str(),
                Some("anon_inode:bpf_link" | "anon_inode:[perf_event]")
            )
        })
    })
}
