//! `cargo xtask bench`: the connection rate of a loopback load with and without a tracer, and
//! whether the tracer printed every event. A measuring tool: it reports, it never asserts.
//!
//! The load runs in the bench's own network namespace; the tracers run in the host namespace
//! (they see every namespace) with their text output in a file. Configurations are interleaved
//! (no tracer, tcpstates, [peer], then again) so slow drifts of the machine hit each alike.

mod count;
mod interrupt;
mod load;
mod netns;
mod others;
mod report;
mod scratch;
mod summary;
mod tracer;

use std::path::Path;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use self::count::count_file;
use self::netns::Netns;
use self::report::{Config, Run, TracerRun};
use self::scratch::Scratch;
use self::summary::Summary;
use self::tracer::{Readiness, Running};
use crate::cli::BenchArgs;
use crate::paths::{self, Profile};
use crate::{cargo, process, setup};

/// Name of the bench's network namespace.
const NETNS: &str = "tcpstates-bench";
/// The stderr line tcpstates prints once attached.
const READY_LINE: &str = "Tracing TCP state changes. Hit Ctrl-C to end.";
/// Length of the unreported first load run, which brings the namespace's TIME_WAIT table to the
/// steady state every later run sees.
const WARM_UP_SECONDS: u32 = 3;

/// Wait between the end of the load and stopping a tracer: the kernel still retransmits a few
/// segments the loopback dropped (tail-loss probes, RTO ≥ 200 ms), and the state changes that
/// follow belong to the run.
const DRAIN: Duration = Duration::from_secs(1);

/// A tracer configuration to measure.
struct TracerSpec {
    name: String,
    argv: Vec<String>,
    readiness: Readiness,
    /// Whether it prints tcpstates' exit summary.
    has_summary: bool,
}

/// Runs the bench and prints its table.
pub fn bench(args: &BenchArgs) -> Result<()> {
    if !process::is_root() {
        bail!("the bench needs root: it creates a network namespace and loads BPF programs");
    }
    setup::setup()?;
    cargo::build_agent(Profile::Release)?;
    let loadgen = cargo::build_loadgen()?;
    let tracers = tracer_specs(
        &paths::binary(Profile::Release, "tcpstates"),
        args.peer.as_deref(),
    )?;
    let others = others::attached_tracers();
    if !others.is_empty() {
        println!(
            "bench: warning: other tracers are attached ({}); their programs run on the same \
             events, so every rate is lower than on a quiet machine",
            others.join(", ")
        );
    }

    interrupt::install().context("installing the SIGINT handler")?;
    let scratch = Scratch::new(args.output_dir.as_deref())?;
    let netns = Netns::create(NETNS)?;
    println!("bench: warm-up, {WARM_UP_SECONDS} s without a tracer (not reported)");
    load::run(&netns, &loadgen, args.port, WARM_UP_SECONDS)?;

    let mut untraced = Config::new("no tracer");
    let mut traced: Vec<Config> = tracers.iter().map(|t| Config::new(&t.name)).collect();
    for round in 1..=args.rounds {
        interrupt::check()?;
        let run = Run {
            load: load::run(&netns, &loadgen, args.port, args.seconds)?,
            tracer: None,
        };
        println!(
            "{}",
            report::progress(round, args.rounds, &untraced.name, &run)
        );
        untraced.runs.push(run);
        for (i, (spec, config)) in tracers.iter().zip(&mut traced).enumerate() {
            interrupt::check()?;
            let output = scratch.file(&format!("tracer{i}-round{round}.txt"));
            let run = traced_run(spec, &netns, &loadgen, args, &output)?;
            scratch.discard(&output)?;
            println!(
                "{}",
                report::progress(round, args.rounds, &config.name, &run)
            );
            config.runs.push(run);
        }
    }
    println!();
    println!(
        "tcpstates-otel bench: {} rounds of {} s, loopback connections on port {} in network \
         namespace {NETNS}; tracers write their default text output to a file",
        args.rounds, args.seconds, args.port
    );
    println!("{}", report::LEGEND);
    let mut configs = vec![untraced];
    configs.append(&mut traced);
    print!("{}", report::table(&configs, args.seconds));
    print!("{}", report::transition_deviations(&configs));
    Ok(())
}

/// tcpstates (the release binary at `agent`), then the peer's command line if there is one.
fn tracer_specs(agent: &Path, peer: Option<&str>) -> Result<Vec<TracerSpec>> {
    let mut tracers = vec![TracerSpec {
        name: "tcpstates".into(),
        argv: vec![agent.to_string_lossy().into_owned()],
        readiness: Readiness::StderrLine(READY_LINE),
        has_summary: true,
    }];
    if let Some(peer) = peer {
        let argv: Vec<String> = peer.split_whitespace().map(str::to_owned).collect();
        let program = argv.first().context("--peer is empty")?;
        let name = Path::new(program).file_name().map_or_else(
            || program.clone(),
            |name| name.to_string_lossy().into_owned(),
        );
        tracers.push(TracerSpec {
            name: format!("peer {name}"),
            argv,
            readiness: Readiness::PerfEvent,
            has_summary: false,
        });
    }
    Ok(tracers)
}

/// One run with `spec` tracing: start it, wait until attached, run the load, stop it, count.
fn traced_run(
    spec: &TracerSpec,
    netns: &Netns,
    loadgen: &Path,
    args: &BenchArgs,
    output: &Path,
) -> Result<Run> {
    let mut tracer = Running::start(&spec.name, &spec.argv, output)?;
    tracer.wait_ready(spec.readiness)?;
    let load = load::run(netns, loadgen, args.port, args.seconds)?;
    thread::sleep(DRAIN);
    let closing = netns.tcp_sockets()?;
    let stopped = tracer.stop()?;
    let lines =
        count_file(output, args.port).with_context(|| format!("reading {}", output.display()))?;
    let summary = stopped
        .stderr
        .iter()
        .rev()
        .find_map(|line| Summary::parse(line));
    if spec.has_summary && summary.is_none() {
        eprintln!(
            "bench: {} printed no summary line; its stderr ended with:",
            spec.name
        );
        let start = stopped.stderr.len().saturating_sub(5);
        for line in &stopped.stderr[start..] {
            eprintln!("  {line}");
        }
    }
    Ok(Run {
        load,
        tracer: Some(TracerRun {
            cpu: stopped.cpu,
            exit: stopped.exit,
            lines,
            summary,
            closing,
        }),
    })
}
