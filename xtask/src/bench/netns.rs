//! The bench's own network namespace, removed when the guard drops (also on errors and panics).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::process;

/// A network namespace with its loopback up; deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates namespace `name` (deleting a stale one left by an earlier run) and brings `lo` up.
    pub fn create(name: &str) -> Result<Self> {
        if Path::new("/run/netns").join(name).exists() {
            println!("bench: deleting the stale network namespace {name}");
            process::run(Command::new("ip").args(["netns", "del", name]))?;
        }
        process::run(Command::new("ip").args(["netns", "add", name]))?;
        let netns = Self {
            name: name.to_owned(),
        };
        process::run(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]))?;
        Ok(netns)
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// The TCP sockets in the namespace other than TIME_WAIT ones, counted by state (as `ss`
    /// names them). Once the load has ended these are connections still closing, whose last
    /// state changes are yet to come.
    pub fn tcp_sockets(&self) -> Result<BTreeMap<String, u64>> {
        let mut cmd = self.command("ss");
        cmd.args(["-H", "-t", "-a", "-n", "exclude", "time-wait"]);
        let line = process::describe(&cmd);
        let output = cmd.output().with_context(|| format!("starting `{line}`"))?;
        if !output.status.success() {
            bail!("`{line}` failed ({})", output.status);
        }
        let mut states = BTreeMap::new();
        for state in String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.split_whitespace().next())
        {
            *states.entry(state.to_owned()).or_default() += 1;
        }
        Ok(states)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = process::run(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!(
                "bench: could not delete network namespace {}: {e:#}",
                self.name
            );
        }
    }
}
