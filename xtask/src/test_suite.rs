//! `cargo xtask test`: every test of the workspace, against the real kernel.

use std::ffi::OsStr;
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

use crate::cli::TestArgs;
use crate::matrix;
use crate::paths::{self, Profile};
use crate::process;
use crate::{cargo, setup};

/// Environment variable through which the integration tests find the agent binary.
const AGENT_BIN_ENV: &str = "TCPSTATES_BIN";
/// Where the tests find the correlation example (`link_to_connection`).
const LINK_EXAMPLE_ENV: &str = "LINK_TO_CONNECTION_BIN";

/// Sets up, builds the debug agent and prepares the kernel matrix (release agent, initramfs,
/// kernels), then runs `cargo test` on the default members (every crate but the kernel program,
/// which only builds for the BPF target) one test at a time, since the integration tests share
/// kernel state. Fails if any test fails.
pub fn test(args: &TestArgs) -> Result<()> {
    setup::setup()?;
    cargo::build_agent(Profile::Debug)?;
    let example = cargo::build_link_example(Profile::Debug)?;
    let matrix = matrix::prepare(None)?;
    let mut cmd = Command::new("cargo");
    cmd.current_dir(paths::workspace_root())
        .env(AGENT_BIN_ENV, paths::binary(Profile::Debug, "tcpstates"))
        .env(LINK_EXAMPLE_ENV, example)
        .env(matrix::MATRIX_ENV, matrix)
        .arg("test")
        // Every test binary runs even after one fails, so a run reports every failure.
        .arg("--no-fail-fast")
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
    println!("+ {}", process::describe(&cmd));
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let stdout = child.stdout.take().context("cargo test's stdout")?;
    let mut totals = Totals::default();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test's output")?;
        println!("{line}");
        totals.add(&line);
    }
    let status = child.wait().context("waiting for cargo test")?;
    // One closing line for the whole run (every test binary prints its own).
    println!("{} passed, {} failed", totals.passed, totals.failed);
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    Ok(())
}

/// Tests passed and failed over every test binary of a run.
#[derive(Debug, Default, PartialEq, Eq)]
struct Totals {
    passed: u64,
    failed: u64,
}

impl Totals {
    /// Adds the counts of a `test result: ok. 3 passed; 0 failed; …` line; other lines are
    /// ignored.
    fn add(&mut self, line: &str) {
        let Some(counts) = line.strip_prefix("test result: ") else {
            return;
        };
        let count = |label: &str| {
            counts
                .split(';')
                .find_map(|part| {
                    part.trim()
                        .strip_suffix(label)?
                        .trim()
                        .rsplit(' ')
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .unwrap_or(0)
        };
        self.passed += count(" passed");
        self.failed += count(" failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_up_every_binary() {
        let mut totals = Totals::default();
        totals.add("test result: ok. 8 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s");
        totals.add("running 3 tests");
        totals
            .add("test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out");
        assert_eq!(
            totals,
            Totals {
                passed: 10,
                failed: 1
            }
        );
    }
}
