//! Running the load generator inside the bench's namespace and reading its result line.

use std::path::Path;
use std::process::Stdio;

use anyhow::{Context, Result, bail};

use super::cpus;
use super::netns::Netns;
use crate::process;

/// What one load-generator run reported.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadResult {
    /// Connections that went through the whole sequence.
    pub connections: u64,
    /// Connections that failed.
    pub failed: u64,
    /// Length of the run, in seconds.
    pub seconds: f64,
    /// Connections per second.
    pub rate: f64,
}

/// Runs `loadgen` in `netns` for `seconds` on `port`, as fast as it can or at `rate`
/// connections a second, on `cpu` only if given, and returns its result.
pub fn run(
    netns: &Netns,
    loadgen: &Path,
    (port, seconds, rate): (u16, u32, Option<u32>),
    cpu: Option<usize>,
) -> Result<LoadResult> {
    let mut cmd = netns.command(loadgen);
    cpus::pin_to(&mut cmd, cpu);
    cmd.args([
        "--port",
        &port.to_string(),
        "--seconds",
        &seconds.to_string(),
    ]);
    if let Some(rate) = rate {
        cmd.args(["--rate", &rate.to_string()]);
    }
    cmd.stdin(Stdio::null()).stderr(Stdio::inherit());
    let line = process::describe(&cmd);
    let output = cmd.output().with_context(|| format!("starting `{line}`"))?;
    if !output.status.success() {
        bail!("`{line}` failed ({})", output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    parse(last).with_context(|| format!("reading loadgen's result line {last:?}"))
}

/// Parses `connections=N failed=N seconds=F rate=F`.
pub fn parse(line: &str) -> Result<LoadResult> {
    let field = |key: &str| -> Result<&str> {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
            .with_context(|| format!("no {key}= field"))
    };
    Ok(LoadResult {
        connections: field("connections")?.parse()?,
        failed: field("failed")?.parse()?,
        seconds: field("seconds")?.parse()?,
        rate: field("rate")?.parse()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_result_line() {
        let result = parse("connections=300123 failed=2 seconds=10.001 rate=30009.3").unwrap();
        assert_eq!(
            result,
            LoadResult {
                connections: 300_123,
                failed: 2,
                seconds: 10.001,
                rate: 30_009.3
            }
        );
    }

    #[test]
    fn rejects_a_line_without_a_field() {
        assert!(parse("connections=3 seconds=1.0 rate=3.0").is_err());
    }
}
