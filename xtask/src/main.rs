//! `cargo xtask`: what cargo alone cannot do for tcpstates.
//!
//! It installs the prerequisites a fresh machine lacks (`setup`), then builds, runs, tests and
//! benchmarks the agent. Every subcommand that builds runs `setup` first, so
//! `cargo xtask test` works on a fresh Debian machine with only stable Rust and rustup.

mod bench;
mod cargo;
mod cli;
mod dist;
mod image;
mod lint;
mod matrix;
mod paths;
mod process;
mod run;
mod setup;
mod test_suite;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Setup => setup::setup(),
        Command::Build(args) => setup::setup().and_then(|()| cargo::build_agent(args.profile())),
        Command::Run(args) => run::run(&args),
        Command::Test(args) => test_suite::test(&args),
        Command::Lint => lint::lint(),
        Command::Bench(args) => bench::bench(&args),
        Command::BpfStats(args) => bench::bpf_stats::bpf_stats(&args),
        Command::Soak(args) => bench::soak::soak(&args),
        Command::Matrix(args) => matrix::matrix(&args),
        Command::Image(args) => image::build(&args).map(|reference| println!("{reference}")),
        Command::Dist(args) => dist::dist(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
