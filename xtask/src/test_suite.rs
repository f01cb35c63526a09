//! `cargo xtask test`: every test of the workspace, against the real kernel.

use std::ffi::OsStr;
use std::process::Command;

use anyhow::Result;

use crate::cli::TestArgs;
use crate::paths::{self, Profile};
use crate::process;
use crate::{cargo, setup};

/// Environment variable through which the integration tests find the agent binary.
const AGENT_BIN_ENV: &str = "TCPSTATES_BIN";

/// Sets up, builds the debug agent, then runs `cargo test` on the default members (every crate but
/// the kernel program, which only builds for the BPF target) one test at a time, since the
/// integration tests share kernel state. Fails if any test fails.
pub fn test(args: &TestArgs) -> Result<()> {
    setup::setup()?;
    cargo::build_agent(Profile::Debug)?;
    let mut cmd = Command::new("cargo");
    cmd.current_dir(paths::workspace_root())
        .env(AGENT_BIN_ENV, paths::binary(Profile::Debug, "tcpstates"))
        .arg("test")
        .args(&args.cargo_args)
        .arg("--");
    let threads_given = args
        .harness_args
        .iter()
        .any(|arg| arg.to_string_lossy().starts_with("--test-threads"));
    if !threads_given {
        cmd.arg(OsStr::new("--test-threads=1"));
    }
    cmd.args(&args.harness_args);
    process::run(&mut cmd)
}
