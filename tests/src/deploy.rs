//! What the deployment files (`deploy/container/`, `deploy/kubernetes/`) grant the agent, in one
//! place: the container test (`tests/container.rs`) runs the image with exactly this, and the
//! manifest test (`tests/deploy_manifests.rs`) checks that every manifest asks for exactly this,
//! so a manifest never asks for more than the container test proved enough.

use std::path::PathBuf;

/// The uid the agent runs as: `nobody`, not root (the image's `USER` too).
pub const RUN_AS_USER: u32 = 65534;

/// The gid the agent runs as.
pub const RUN_AS_GROUP: u32 = 65534;

/// The only capabilities the agent keeps, as Kubernetes and podman name them: `BPF` (load the
/// programs, create the maps) and `PERFMON` (tracing programs read kernel memory).
pub const CAPABILITIES: [&str; 2] = ["BPF", "PERFMON"];

/// The seccomp profile shipped with the image, relative to the workspace root: the runtime
/// default plus `bpf` and `perf_event_open`.
pub const SECCOMP_PROFILE: &str = "deploy/container/seccomp.json";

/// Where the Kubernetes manifests expect the profile, relative to the kubelet's seccomp
/// directory (`/var/lib/kubelet/seccomp/`): `seccompProfile.localhostProfile`.
pub const LOCALHOST_PROFILE: &str = "tcpstates/seccomp.json";

/// The directory of the Kubernetes manifests, relative to the workspace root.
pub const KUBERNETES_DIR: &str = "deploy/kubernetes";

/// The image `cargo xtask image` builds by default, which the manifests run.
pub const IMAGE: &str = concat!("localhost/tcpstates:", env!("CARGO_PKG_VERSION"));

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .canonicalize()
        .expect("the workspace root exists")
}

/// The absolute path of [`SECCOMP_PROFILE`].
pub fn seccomp_profile() -> PathBuf {
    workspace_root().join(SECCOMP_PROFILE)
}
