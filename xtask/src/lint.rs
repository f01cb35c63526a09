//! `cargo xtask lint`: formatting, clippy on the host crates, and clippy on the kernel program
//! for the BPF target (with the pinned nightly, as the agent's build.rs builds it).

use std::process::Command;

use anyhow::Result;

use crate::{paths, process, setup, setup::BPF_TOOLCHAIN};

/// Runs every check; fails on the first finding.
pub fn lint() -> Result<()> {
    setup::setup()?;
    println!("lint: clippy for {BPF_TOOLCHAIN}");
    process::run(Command::new("rustup").args([
        "component",
        "add",
        "--toolchain",
        BPF_TOOLCHAIN,
        "clippy",
    ]))?;
    let cargo = |toolchain: Option<&str>| {
        let mut cmd = Command::new("cargo");
        if let Some(toolchain) = toolchain {
            cmd.arg(format!("+{toolchain}"));
        }
        cmd.current_dir(paths::workspace_root());
        cmd
    };
    process::run(cargo(None).args(["fmt", "--all", "--", "--check"]))?;
    process::run(cargo(None).args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    process::run(
        cargo(Some(BPF_TOOLCHAIN))
            .args(["clippy", "-p", "agent-ebpf", "--release"])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .arg("--target-dir")
            .arg(paths::target_dir().join("bpf-lint"))
            .args(["--", "-D", "warnings", "-C", "panic=abort"]),
    )
}
