//! `cargo xtask run`: set up, build, then replace this process with `tcpstates`.

use std::os::unix::process::CommandExt;

use anyhow::{Context, Result};

use crate::cli::RunArgs;
use crate::paths;
use crate::process::{self, as_root};
use crate::{cargo, setup};

/// Builds `tcpstates` and executes it with the given arguments, as root (through sudo if needed).
pub fn run(args: &RunArgs) -> Result<()> {
    setup::setup()?;
    let profile = paths::Profile::from_release(args.release);
    cargo::build_agent(profile)?;
    let mut cmd = as_root(paths::binary(profile, "tcpstates"));
    cmd.args(&args.args);
    println!("+ {}", process::describe(&cmd));
    // `exec` only returns on failure.
    let error = cmd.exec();
    Err(error).with_context(|| format!("executing `{}`", process::describe(&cmd)))
}
