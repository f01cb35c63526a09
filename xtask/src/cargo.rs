//! Building the workspace's binaries with cargo.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Result, bail};

use crate::paths::{self, Profile};
use crate::process;

/// Builds the agent (`tcpstates`) and checks that its binary is where `paths::binary` says.
pub fn build_agent(profile: Profile) -> Result<()> {
    build(profile, &["-p", "tcpstates"])?;
    let bin = paths::binary(profile, "tcpstates");
    if !bin.is_file() {
        bail!("cargo built tcpstates but {} is not there", bin.display());
    }
    Ok(())
}

/// Builds the correlation example (`agent-common`'s `link_to_connection`) and returns the path of
/// its binary.
pub fn build_link_example(profile: Profile) -> Result<PathBuf> {
    build(
        profile,
        &[
            "-p",
            "agent-common",
            "--example",
            "link_to_connection",
            "--features",
            "opentelemetry",
        ],
    )?;
    let bin = paths::target_dir()
        .join(profile.dir_name())
        .join("examples")
        .join("link_to_connection");
    if !bin.is_file() {
        bail!(
            "cargo built link_to_connection but {} is not there",
            bin.display()
        );
    }
    Ok(bin)
}

/// Builds the load generator (release) and returns the path of its binary.
pub fn build_loadgen() -> Result<PathBuf> {
    build(Profile::Release, &["-p", "xtask", "--bin", "loadgen"])?;
    let bin = paths::binary(Profile::Release, "loadgen");
    if !bin.is_file() {
        bail!("cargo built loadgen but {} is not there", bin.display());
    }
    Ok(bin)
}

/// Runs `cargo build` in the workspace root with `profile` and `args`.
fn build(profile: Profile, args: &[&str]) -> Result<()> {
    process::run(
        Command::new("cargo")
            .current_dir(paths::workspace_root())
            .arg("build")
            .args(profile.cargo_flags())
            .args(args),
    )
}
