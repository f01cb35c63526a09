//! Checks, before touching the kernel, that this process may load and attach BPF programs.

use caps::{CapSet, Capability, CapsHashSet};

/// The process lacks the capabilities to trace.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// Neither root (CAP_SYS_ADMIN) nor CAP_BPF together with CAP_PERFMON.
    #[error(
        "tcpstates needs root, or the CAP_BPF and CAP_PERFMON capabilities, to load its BPF program"
    )]
    Missing,
    /// The effective capability set could not be read.
    #[error("cannot read this process's capabilities: {0}")]
    Unreadable(#[source] caps::errors::CapsError),
}

/// Fails unless the effective capabilities allow loading and attaching the program.
pub fn check() -> Result<(), PrivilegeError> {
    let effective = caps::read(None, CapSet::Effective).map_err(PrivilegeError::Unreadable)?;
    if sufficient(&effective) {
        Ok(())
    } else {
        Err(PrivilegeError::Missing)
    }
}

/// CAP_SYS_ADMIN covers everything; otherwise loading needs CAP_BPF and attaching to a
/// tracepoint needs CAP_PERFMON.
fn sufficient(effective: &CapsHashSet) -> bool {
    effective.contains(&Capability::CAP_SYS_ADMIN)
        || (effective.contains(&Capability::CAP_BPF)
            && effective.contains(&Capability::CAP_PERFMON))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_or_bpf_plus_perfmon_suffice() {
        let set = |caps: &[Capability]| caps.iter().copied().collect::<CapsHashSet>();
        assert!(sufficient(&set(&[Capability::CAP_SYS_ADMIN])));
        assert!(sufficient(&set(&[
            Capability::CAP_BPF,
            Capability::CAP_PERFMON
        ])));
        assert!(!sufficient(&set(&[Capability::CAP_BPF])));
        assert!(!sufficient(&set(&[
            Capability::CAP_PERFMON,
            Capability::CAP_NET_ADMIN
        ])));
        assert!(!sufficient(&set(&[])));
    }
}
