//! `cargo xtask setup`: installs, only when missing, what building and testing tcpstates need.
//!
//! Each step prints one line saying what it found or what it does; installers print their own
//! output below it.

use std::path::Path;
use std::process::Command;

use anyhow::Result;

use crate::process::{self, as_root};

/// The nightly toolchain that builds the kernel program, from the file `agent/build.rs` reads
/// too: its LLVM (22) is the one bpf-linker 0.10.4 loads.
pub const BPF_TOOLCHAIN: &str = include_str!("../../agent-ebpf/bpf-toolchain").trim_ascii_end();

/// The bpf-linker release that works with the pinned nightly (later ones want a system LLVM 23).
const BPF_LINKER_VERSION: &str = "0.10.4";

/// Debian packages the build, the tests and the bench use, with what for.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    (
        "buildah",
        "building the container image (cargo xtask image)",
    ),
    (
        "busybox-static",
        "the kernel matrix's initramfs (cargo xtask matrix)",
    ),
    ("cpio", "packing the kernel matrix's initramfs"),
    ("iproute2", "ip netns"),
    (
        "libbpf-tools",
        "tcpstates of libbpf-tools, the bench's --peer",
    ),
    ("libpython3.11", "rotel-agent (OTLP receiver)"),
    ("make", "building jemalloc (the agent's allocator)"),
    (
        "nftables",
        "nft: the failure tests' dropped and ICMP-rejected SYNs",
    ),
    ("podman", "running the container image in the tests"),
    ("qemu-system-x86", "booting the kernel matrix's kernels"),
    ("runc", "the container runtime podman uses here"),
    (
        "strace",
        "recording the system calls the systemd unit's filter must allow",
    ),
    ("systemd", "systemd-journald, journalctl"),
    ("util-linux", "setpriv"),
];

/// Where tracefs is mounted: the peer tracers the bench compares with attach classic tracepoints,
/// which needs it (tcpstates itself attaches BTF tracepoints and does not).
const TRACEFS: &str = "/sys/kernel/tracing";

/// Runs every setup step.
pub fn setup() -> Result<()> {
    toolchain()?;
    bpf_linker()?;
    debian_packages()?;
    ensure_rotel()?;
    ensure_kubernetes_validate()?;
    tracefs()
}

/// Installs the pinned nightly with rust-src unless both are there.
fn toolchain() -> Result<()> {
    let installed = process::stdout_of(Command::new("rustup").args(["toolchain", "list"]))
        .is_some_and(|list| list.lines().any(|line| line.starts_with(BPF_TOOLCHAIN)));
    let has_rust_src = installed
        && process::stdout_of(Command::new("rustup").args([
            "component",
            "list",
            "--installed",
            "--toolchain",
            BPF_TOOLCHAIN,
        ]))
        .is_some_and(|list| list.lines().any(|line| line.starts_with("rust-src")));
    if has_rust_src {
        println!("setup: toolchain {BPF_TOOLCHAIN} with rust-src: present");
        return Ok(());
    }
    println!("setup: toolchain {BPF_TOOLCHAIN} with rust-src: installing");
    process::run(Command::new("rustup").args([
        "toolchain",
        "install",
        BPF_TOOLCHAIN,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
}

/// Installs bpf-linker unless `bpf-linker --version` names the wanted release.
fn bpf_linker() -> Result<()> {
    let found = process::stdout_of(Command::new("bpf-linker").arg("--version"));
    let wanted = found.as_deref().is_some_and(|out| {
        out.split_whitespace()
            .any(|word| word == BPF_LINKER_VERSION)
    });
    if wanted {
        println!("setup: bpf-linker {BPF_LINKER_VERSION}: present");
        return Ok(());
    }
    match found {
        Some(out) => println!(
            "setup: bpf-linker: found `{}`, installing {BPF_LINKER_VERSION}",
            out.trim()
        ),
        None => println!("setup: bpf-linker {BPF_LINKER_VERSION}: installing"),
    }
    process::run(Command::new("cargo").args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--locked",
    ]))
}

/// Installs the Debian packages that are missing, with one `apt-get update` first.
fn debian_packages() -> Result<()> {
    let names: Vec<&str> = DEBIAN_PACKAGES.iter().map(|(name, _)| *name).collect();
    if process::find_in_path("dpkg-query").is_none() {
        println!(
            "setup: not a Debian system (no dpkg-query): make sure these are installed: {}",
            DEBIAN_PACKAGES
                .iter()
                .map(|(_, what)| *what)
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(());
    }
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|name| !is_installed(name))
        .collect();
    if missing.is_empty() {
        println!("setup: Debian packages {}: present", names.join(", "));
        return Ok(());
    }
    println!("setup: Debian packages {}: installing", missing.join(", "));
    process::run(as_root("apt-get").arg("update"))?;
    process::run(
        as_root("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
    )
}

/// Whether dpkg lists `package` as installed.
fn is_installed(package: &str) -> bool {
    process::stdout_of(Command::new("dpkg-query").args(["-W", "-f=${db:Status-Abbrev}", package]))
        .is_some_and(|status| status.starts_with("ii"))
}

/// The rotel release (PyPI `rotel`, an OpenTelemetry collector in Rust) that the OTLP tests
/// receive spans with; its `rotel-agent` executable lands inside the package, not on `PATH`.
/// `tests/src/otlp.rs` finds it the same way as [`ensure_rotel`], or through `$ROTEL_AGENT`.
const ROTEL_VERSION: &str = "0.0.1a15";

/// Prints the installed rotel version and the path of its `rotel-agent` (nothing if rotel is
/// missing).
const ROTEL_PROBE: &str = "import importlib.metadata, os, rotel; \
    print(importlib.metadata.version('rotel'), \
    os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))";

/// The path of the installed rotel's `rotel-agent`, if rotel is installed.
pub fn rotel_agent() -> Option<std::path::PathBuf> {
    let found = process::stdout_of(Command::new("python3").args(["-c", ROTEL_PROBE]))?;
    let (_, agent) = found.trim().split_once(' ')?;
    Path::new(agent).is_file().then(|| agent.into())
}

/// Installs the pinned rotel with pip unless `python3` already imports that version and its
/// `rotel-agent` is there (it also needs `libpython3.11`, a Debian package above).
fn ensure_rotel() -> Result<()> {
    let found = process::stdout_of(Command::new("python3").args(["-c", ROTEL_PROBE]));
    let present = found.as_deref().and_then(|out| out.trim().split_once(' '));
    if let Some((version, agent)) = present
        && version == ROTEL_VERSION
        && Path::new(agent).is_file()
    {
        println!("setup: rotel {ROTEL_VERSION}: present ({agent})");
        return Ok(());
    }
    match present {
        Some((version, _)) => {
            println!("setup: rotel: found {version}, installing {ROTEL_VERSION}");
        }
        None => println!("setup: rotel {ROTEL_VERSION}: installing"),
    }
    process::run(Command::new("python3").args([
        "-m",
        "pip",
        "install",
        "--pre",
        &format!("rotel=={ROTEL_VERSION}"),
    ]))
}

/// The kubernetes-validate release (PyPI) that `tests/tests/deploy_manifests.rs` checks the
/// Kubernetes manifests of `deploy/kubernetes/` with, offline: its schemas go up to 1.37.
const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";

/// Installs the pinned kubernetes-validate with pip unless `python3` already has that version.
fn ensure_kubernetes_validate() -> Result<()> {
    let found = process::stdout_of(Command::new("python3").args([
        "-c",
        "import importlib.metadata; print(importlib.metadata.version('kubernetes-validate'))",
    ]));
    match found.as_deref().map(str::trim) {
        Some(version) if version == KUBERNETES_VALIDATE_VERSION => {
            println!("setup: kubernetes-validate {KUBERNETES_VALIDATE_VERSION}: present");
            return Ok(());
        }
        Some(version) => println!(
            "setup: kubernetes-validate: found {version}, installing {KUBERNETES_VALIDATE_VERSION}"
        ),
        None => println!("setup: kubernetes-validate {KUBERNETES_VALIDATE_VERSION}: installing"),
    }
    process::run(Command::new("python3").args([
        "-m",
        "pip",
        "install",
        &format!("kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}"),
    ]))
}

/// Mounts tracefs unless its `events` directory is already there.
fn tracefs() -> Result<()> {
    if Path::new(TRACEFS).join("events").is_dir() {
        println!("setup: tracefs at {TRACEFS}: mounted");
        return Ok(());
    }
    println!("setup: tracefs at {TRACEFS}: mounting");
    process::run(as_root("mount").args(["-t", "tracefs", "nodev", TRACEFS]))
}
