//! Checks, before touching the kernel, that this process may load and attach BPF programs.
//!
//! Root (CAP_SYS_ADMIN) may; so may any uid with CAP_BPF (creating maps and loading programs)
//! together with CAP_PERFMON (loading tracing programs, which read kernel memory and pointers),
//! both in its effective set (Linux >= 5.8). Nothing else is needed to trace: neither
//! `kernel.unprivileged_bpf_disabled` nor `kernel.perf_event_paranoid` applies to a process
//! with those capabilities, and the ring buffer is charged to the memory cgroup, not to
//! `RLIMIT_MEMLOCK` (Linux >= 5.11). See docs/capabilities.md for what each feature needs.

use caps::{CapSet, Capability, CapsHashSet};

/// The capabilities that, together, allow tracing without root.
const NEEDED: [Capability; 2] = [Capability::CAP_BPF, Capability::CAP_PERFMON];

/// The process lacks the capabilities to trace.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// Neither root (CAP_SYS_ADMIN) nor CAP_BPF together with CAP_PERFMON.
    #[error(
        "not privileged enough to load BPF programs: run as root, or with the CAP_BPF and \
         CAP_PERFMON capabilities (Linux >= 5.8); this process lacks {lacking}"
    )]
    Missing {
        /// The needed capabilities missing from the effective set, e.g. `CAP_PERFMON`.
        lacking: String,
    },
    /// The effective capability set could not be read.
    #[error("cannot read this process's capabilities: {0}")]
    Unreadable(#[source] caps::errors::CapsError),
}

/// Fails unless the effective capabilities allow loading and attaching the program.
pub fn check() -> Result<(), PrivilegeError> {
    let effective = caps::read(None, CapSet::Effective).map_err(PrivilegeError::Unreadable)?;
    match lacking(&effective) {
        None => Ok(()),
        Some(lacking) => Err(PrivilegeError::Missing { lacking }),
    }
}

/// `None` when `effective` allows tracing: CAP_SYS_ADMIN covers everything; otherwise loading
/// needs CAP_BPF and loading a tracing program CAP_PERFMON. Else the missing ones, named.
fn lacking(effective: &CapsHashSet) -> Option<String> {
    if effective.contains(&Capability::CAP_SYS_ADMIN) {
        return None;
    }
    let missing: Vec<String> = NEEDED
        .iter()
        .filter(|cap| !effective.contains(cap))
        .map(ToString::to_string)
        .collect();
    (!missing.is_empty()).then(|| missing.join(" and "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(caps: &[Capability]) -> CapsHashSet {
        caps.iter().copied().collect()
    }

    #[test]
    fn root_or_bpf_plus_perfmon_suffice() {
        assert_eq!(lacking(&set(&[Capability::CAP_SYS_ADMIN])), None);
        assert_eq!(
            lacking(&set(&[Capability::CAP_BPF, Capability::CAP_PERFMON])),
            None
        );
    }

    #[test]
    fn the_missing_capabilities_are_named() {
        assert_eq!(
            lacking(&set(&[Capability::CAP_BPF])).as_deref(),
            Some("CAP_PERFMON")
        );
        assert_eq!(
            lacking(&set(&[Capability::CAP_PERFMON, Capability::CAP_NET_ADMIN])).as_deref(),
            Some("CAP_BPF")
        );
        assert_eq!(
            lacking(&set(&[])).as_deref(),
            Some("CAP_BPF and CAP_PERFMON")
        );
    }

    #[test]
    fn the_message_is_one_line_naming_what_is_missing() {
        let message = PrivilegeError::Missing {
            lacking: "CAP_PERFMON".into(),
        }
        .to_string();
        assert!(!message.contains('\n'), "{message}");
        assert!(
            message.ends_with("this process lacks CAP_PERFMON"),
            "{message}"
        );
    }
}
