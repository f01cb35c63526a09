//! The command line of `cargo xtask`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::bench::soak::SoakArgs;
use crate::dist::DistArgs;
use crate::image::ImageArgs;
use crate::matrix::MatrixArgs;
use crate::paths::Profile;

/// `cargo xtask`: developer tasks for tcpstates.
#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Developer tasks for tcpstates"
)]
pub struct Cli {
    /// The task to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The tasks.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Install what building and testing need and is missing: the pinned nightly with rust-src,
    /// bpf-linker, the Debian packages the tests use; mount tracefs if it is not mounted.
    Setup,
    /// Set up, then build the agent (`tcpstates`).
    Build(BuildArgs),
    /// Set up, build, then run `tcpstates` with ARGS (through sudo when not root).
    #[command(override_usage = "cargo xtask run [--release] [-- ARGS...]")]
    Run(RunArgs),
    /// Set up, build the agent, then run every test: unit tests and the privileged integration
    /// tests (one at a time, against the real kernel).
    #[command(override_usage = "cargo xtask test [CARGO_TEST_ARGS]... [-- TEST_BINARY_ARGS...]")]
    Test(TestArgs),
    /// Set up, then check formatting and run clippy on every crate, the kernel program included
    /// (for the BPF target).
    Lint,
    /// Measure the connection rate of a loopback load with and without tcpstates tracing it,
    /// and whether tcpstates printed every event (with `--otlp`, also exporting over OTLP). Needs root.
    Bench(BenchArgs),
    /// Measure each kernel program's cost (ns per run, from kernel.bpf_stats_enabled) for one or
    /// more tcpstates binaries, interleaved under the bench's loopback load. Needs root.
    BpfStats(BpfStatsArgs),
    /// Run one agent for minutes under a steady loopback load (default 2,000 connections/s,
    /// `--otlp` to rotel), sampling its RSS and CPU; end with events made / written / exported /
    /// lost side by side. Needs root.
    Soak(SoakArgs),
    /// Boot Debian's kernels under qemu and run the end-to-end smoke test inside each.
    Matrix(MatrixArgs),
    /// Build the container image (`deploy/container/Containerfile`) offline.
    Image(ImageArgs),
    /// Build the release tarball: binary, man page, completions, systemd unit, deploy files.
    Dist(DistArgs),
}

/// Options of `build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Build with the release profile.
    #[arg(long)]
    pub release: bool,
}

impl BenchArgs {
    /// The load of each run: its port, seconds and fixed rate if any.
    pub fn load(&self) -> (u16, u32, Option<u32>) {
        (self.port, self.seconds, self.rate)
    }
}

impl BuildArgs {
    /// The cargo profile these options ask for.
    pub fn profile(&self) -> Profile {
        Profile::from_release(self.release)
    }
}

/// Options of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Build and run the release binary.
    #[arg(long)]
    pub release: bool,
    /// Arguments for `tcpstates` (put them after `--`).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    pub args: Vec<OsString>,
}

/// Options of `test`: `cargo xtask test [CARGO_TEST_ARGS]... [-- TEST_BINARY_ARGS]...`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Arguments for `cargo test` (e.g. `-p integration-tests`).
    #[arg(
        allow_hyphen_values = true,
        value_terminator = "--",
        value_name = "CARGO_TEST_ARGS"
    )]
    pub cargo_args: Vec<OsString>,
    /// Arguments for the test binaries, after `--` (e.g. a name filter, `--nocapture`).
    #[arg(allow_hyphen_values = true, value_name = "TEST_BINARY_ARGS")]
    pub harness_args: Vec<OsString>,
}

/// Options of `bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Length of each load run, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=600))]
    pub seconds: u32,
    /// Rounds; each round runs every configuration once, interleaved.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// Server port of the load (inside the bench's own network namespace).
    #[arg(long, default_value_t = 9099)]
    pub port: u16,
    /// Make this many connections a second instead of as many as the machine can: every
    /// tracer then sees the same work, the rate ratios say nothing and the CPU rows (per
    /// connection, per exported span) compare the tracers.
    #[arg(long, value_name = "CONN_PER_S", value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: Option<u32>,
    /// Measure only the tracer configuration named NAME, or if none is, those whose names
    /// contain it (repeatable; the no-tracer runs always go), e.g. `--only 'tcpstates --otlp'`
    /// (that one) or `--only --metrics` (every one with metrics).
    #[arg(long, value_name = "NAME")]
    pub only: Vec<String>,
    /// Another tracer to compare with, run the same way, e.g. `/usr/sbin/tcpstates-bpfcc`
    /// (a command line; words separated by spaces).
    #[arg(long, value_name = "CMD")]
    pub peer: Option<String>,
    /// Also measure tcpstates exporting every session over OTLP/gRPC without text
    /// (`--otlp ENDPOINT -q`) to a local rotel receiver (blackhole exporter), started once.
    #[arg(long)]
    pub otlp: bool,
    /// With --otlp: also measure another tcpstates binary (an earlier build) exporting the same
    /// way to the same receiver, as a row of its own (named by its file name): builds side by
    /// side in one run. Repeatable.
    #[arg(long, value_name = "PATH", requires = "otlp")]
    pub otlp_peer: Vec<PathBuf>,
    /// Run the load on CPU 0 and every tracer and the receiver on the last CPU: the rate then
    /// measures what tracing costs the traced application's own CPU, with the agent and the
    /// collector on a core of their own.
    #[arg(long)]
    pub pin: bool,
    /// Directory for the tracers' output files, kept there (default: a new directory under the
    /// system's temporary directory, each file removed once counted).
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
}

/// Options of `bpf-stats`.
#[derive(Debug, Args)]
#[command(
    after_help = "For each round, each binary in turn runs as `BIN >/dev/null` (the bench's \
                  text run) while the load runs; the run_time_ns and run_cnt of each of its BPF \
                  programs (from /proc/PID/fdinfo, named by /proc/kallsyms) are read before and \
                  after the load. kernel.bpf_stats_enabled is 1 meanwhile and restored after. \
                  Prints, per binary and program, the runs, ns/run of each round, the median and \
                  its ratio to the first binary's. It reports, never asserts.\n\n\
                  Example (A/A, to see the noise): cargo xtask bpf-stats --agent /tmp/before \
                  --agent /tmp/before --rounds 5 --seconds 5 --pin"
)]
pub struct BpfStatsArgs {
    /// A tcpstates binary to measure; give it several times (the first is the baseline of the
    /// ratios; the same binary twice shows the noise).
    #[arg(long = "agent", value_name = "BIN", required = true)]
    pub agents: Vec<PathBuf>,
    /// Rounds; each round runs every binary once, interleaved.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// Length of each load run, in seconds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=600))]
    pub seconds: u32,
    /// Server port of the load (inside this tool's own network namespace).
    #[arg(long, default_value_t = 9099)]
    pub port: u16,
    /// Run the load (and so the programs, which run in its context) on CPU 0 and the agent on
    /// the last CPU, as `bench --pin` does.
    #[arg(long)]
    pub pin: bool,
}
