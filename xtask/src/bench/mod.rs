//! `cargo xtask bench`: the connection rate of a loopback load with and without a tracer, and
//! whether the tracer printed every event. A measuring tool: it reports, it never asserts.
//!
//! The load runs in the bench's own network namespace; the tracers run in the host namespace
//! (they see every namespace) with their text output in a file. With `--otlp`, tcpstates also
//! runs exporting every session over OTLP/gRPC, without text, to a local receiver started once
//! for the whole bench. Configurations are interleaved (no tracer, tcpstates, [tcpstates --otlp],
//! [peer], then again) so slow drifts of the machine hit each alike. With `--pin` the load and
//! the observers (tracers, receiver) run on CPUs of their own (see [`cpus`]).

pub mod bpf_stats;
mod count;
mod cpus;
mod interrupt;
mod load;
mod netns;
mod others;
mod receiver;
mod report;
mod scratch;
pub mod soak;
mod summary;
mod tracer;

use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use self::count::count_file;
use self::cpus::Pinning;
use self::netns::Netns;
use self::receiver::Receiver;
use self::report::{Config, LineUnit, OtlpRun, Run, TracerRun};
use self::scratch::Scratch;
use self::summary::{OtlpSummary, Summary};
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
    /// Whether it is tcpstates exporting to the receiver instead of printing text.
    exports: bool,
    /// What its output lines are.
    unit: LineUnit,
}

/// How many of its unexpected stderr lines (or of its last ones) the bench shows after a run.
const SHOWN_STDERR_LINES: usize = 5;
/// What tcpstates' running accounts of losses contain (`N more events lost; …`, `N more spans
/// dropped (OTLP queue full); …`): the table shows the totals, so the bench does not repeat them.
const RUNNING_ACCOUNTS: [&str; 2] = [" more events lost; ", " more spans dropped "];

/// Runs the bench and prints its table.
pub fn bench(args: &BenchArgs) -> Result<()> {
    if !process::is_root() {
        bail!("the bench needs root: it creates a network namespace and loads BPF programs");
    }
    setup::setup()?;
    cargo::build_agent(Profile::Release)?;
    let loadgen = cargo::build_loadgen()?;
    let pinning = Pinning::asked(args.pin, "bench", "tracers and the receiver")?;
    let load_cpu = pinning.map(|p| p.load);
    let observer_cpu = pinning.map(|p| p.observers);
    let receiver = args
        .otlp
        .then(|| Receiver::start(observer_cpu))
        .transpose()?;
    let tracers = chosen(
        tracer_specs(
            &paths::binary(Profile::Release, "tcpstates"),
            receiver.as_ref(),
            &args.otlp_peer,
            args.peer.as_deref(),
        )?,
        &args.only,
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
    load::run(
        &netns,
        &loadgen,
        (args.port, WARM_UP_SECONDS, args.rate),
        load_cpu,
    )?;

    let mut untraced = Config::new("no tracer");
    let mut traced: Vec<Config> = tracers.iter().map(|t| Config::new(&t.name)).collect();
    for round in 1..=args.rounds {
        interrupt::check()?;
        let run = Run {
            load: load::run(&netns, &loadgen, args.load(), load_cpu)?,
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
            let exports_to = receiver.as_ref().filter(|_| spec.exports);
            let run = traced_run(spec, &netns, &loadgen, args, &output, exports_to, pinning)?;
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
        "tcpstates-otel bench: {} rounds of {} s, loopback connections{} on port {} in network \
         namespace {NETNS}; tracers write their default text output to a file{}",
        args.rounds,
        args.seconds,
        args.rate
            .map_or_else(String::new, |rate| format!(" at {rate} a second")),
        args.port,
        if receiver.is_some() {
            ", but tcpstates --otlp exports to rotel instead"
        } else {
            ""
        }
    );
    println!("{}", report::LEGEND);
    if receiver.is_some() {
        println!("{}", report::OTLP_LEGEND);
    }
    let mut configs = vec![untraced];
    configs.append(&mut traced);
    print!("{}", report::table(&configs, args.seconds));
    print!("{}", report::transition_deviations(&configs));
    Ok(())
}

/// tcpstates (the release binary at `agent`), then tcpstates exporting to `receiver` without
/// text if there is one (and each tcpstates of `otlp_peers` exporting likewise), then the peer's
/// command line if there is one.
fn tracer_specs(
    agent: &Path,
    receiver: Option<&Receiver>,
    otlp_peers: &[PathBuf],
    peer: Option<&str>,
) -> Result<Vec<TracerSpec>> {
    let agent = agent.to_string_lossy().into_owned();
    let mut tracers = vec![
        TracerSpec {
            name: "tcpstates".into(),
            argv: vec![agent.clone()],
            readiness: Readiness::StderrLine(READY_LINE),
            has_summary: true,
            exports: false,
            unit: LineUnit::Transitions,
        },
        TracerSpec {
            name: "tcpstates --life".into(),
            argv: vec![agent.clone(), "--life".into()],
            readiness: Readiness::StderrLine(READY_LINE),
            has_summary: true,
            exports: false,
            unit: LineUnit::Sessions,
        },
    ];
    if let Some(receiver) = receiver {
        let endpoint = receiver.grpc_endpoint();
        // Metrics every second (the default is every minute): the most a deployment would ask.
        let every_second = ["/usr/bin/env", "OTEL_METRIC_EXPORT_INTERVAL=1000"];
        let exporting = [
            ("tcpstates --otlp", &[][..], &["--otlp", &endpoint][..]),
            (
                "tcpstates --otlp --metrics (1 s)",
                &every_second[..],
                &["--otlp", &endpoint, "--metrics"][..],
            ),
            (
                "tcpstates --metrics (1 s)",
                &every_second[..],
                &["--metrics", &endpoint][..],
            ),
            (
                "tcpstates --metrics (60 s)",
                &[][..],
                &["--metrics", &endpoint][..],
            ),
            (
                "tcpstates --otlp, traceidratio 0.01",
                &[
                    "/usr/bin/env",
                    "OTEL_TRACES_SAMPLER=traceidratio",
                    "OTEL_TRACES_SAMPLER_ARG=0.01",
                ][..],
                &["--otlp", &endpoint][..],
            ),
            (
                "tcpstates --otlp, always_off --keep-errors",
                &["/usr/bin/env", "OTEL_TRACES_SAMPLER=always_off"][..],
                &["--otlp", &endpoint, "--keep-errors"][..],
            ),
        ];
        for (name, prefix, args) in exporting {
            let argv = prefix
                .iter()
                .map(|arg| (*arg).to_owned())
                .chain([agent.clone()])
                .chain(args.iter().map(|arg| (*arg).to_owned()))
                .chain(["-q".to_owned()])
                .collect();
            tracers.push(TracerSpec {
                name: name.into(),
                argv,
                readiness: Readiness::StderrLine(READY_LINE),
                has_summary: true,
                exports: true,
                unit: LineUnit::Transitions,
            });
        }
        for other in otlp_peers {
            let name = other.file_name().map_or_else(
                || other.display().to_string(),
                |name| name.to_string_lossy().into_owned(),
            );
            tracers.push(TracerSpec {
                name: format!("{name} --otlp"),
                argv: vec![
                    other.to_string_lossy().into_owned(),
                    "--otlp".into(),
                    endpoint.clone(),
                    "-q".into(),
                ],
                readiness: Readiness::StderrLine(READY_LINE),
                has_summary: true,
                exports: true,
                unit: LineUnit::Transitions,
            });
        }
    }
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
            exports: false,
            unit: if name.contains("tcplife") {
                LineUnit::Sessions
            } else {
                LineUnit::Transitions
            },
        });
    }
    Ok(tracers)
}

/// The configurations of `specs` one of `only` names (the one of that name, or else every one
/// whose name contains it), or all of them when `only` is empty; an error naming the
/// configurations when none is left.
fn chosen(specs: Vec<TracerSpec>, only: &[String]) -> Result<Vec<TracerSpec>> {
    if only.is_empty() {
        return Ok(specs);
    }
    let names: Vec<String> = specs
        .iter()
        .map(|spec| format!("'{}'", spec.name))
        .collect();
    let named = |spec: &TracerSpec, name: &str| {
        if specs.iter().any(|spec| spec.name == name) {
            spec.name == name
        } else {
            spec.name.contains(name)
        }
    };
    let keep: Vec<bool> = specs
        .iter()
        .map(|spec| only.iter().any(|name| named(spec, name)))
        .collect();
    let chosen: Vec<TracerSpec> = specs
        .into_iter()
        .zip(keep)
        .filter_map(|(spec, keep)| keep.then_some(spec))
        .collect();
    if chosen.is_empty() {
        bail!(
            "--only {} matches none of the configurations: {}",
            only.join(", "),
            names.join(", ")
        );
    }
    Ok(chosen)
}

/// One run with `spec` tracing: start it, wait until attached, run the load, stop it, count.
/// `receiver` is the one it exports to, whose CPU time is measured over the run; `pinning`
/// says where the tracer and the load run, if anywhere in particular.
fn traced_run(
    spec: &TracerSpec,
    netns: &Netns,
    loadgen: &Path,
    args: &BenchArgs,
    output: &Path,
    receiver: Option<&Receiver>,
    pinning: Option<Pinning>,
) -> Result<Run> {
    let receiver_cpu = receiver.map(Receiver::cpu).transpose()?;
    let mut tracer = Running::start(&spec.name, &spec.argv, output, pinning.map(|p| p.observers))?;
    tracer.wait_ready(spec.readiness)?;
    let load = load::run(netns, loadgen, args.load(), pinning.map(|p| p.load))?;
    thread::sleep(DRAIN);
    let cpu_under_load = tracer.cpu_since_ready()?;
    let closing = netns.tcp_sockets()?;
    let stopped = tracer.stop()?;
    let otlp = match (receiver, receiver_cpu) {
        (Some(receiver), Some(before)) => Some(OtlpRun {
            receiver_cpu: receiver.cpu()?.saturating_sub(before),
            summary: last_parsed(&stopped.stderr, OtlpSummary::parse),
        }),
        _ => None,
    };
    let lines = if spec.exports {
        None
    } else {
        let counts = count_file(output, args.port)
            .with_context(|| format!("reading {}", output.display()))?;
        Some(counts)
    };
    let summary = last_parsed(&stopped.stderr, Summary::parse);
    if spec.has_summary {
        report_stderr(spec, &stopped.stderr, summary.is_some(), otlp.as_ref());
    }
    Ok(Run {
        load,
        tracer: Some(TracerRun {
            cpu: stopped.cpu,
            cpu_under_load,
            exit: stopped.exit,
            stopping: stopped.stopping,
            lines,
            unit: spec.unit,
            summary,
            closing,
            otlp,
        }),
    })
}

/// The last of `lines` that `parse` accepts, parsed.
fn last_parsed<T>(lines: &[String], parse: fn(&str) -> Option<T>) -> Option<T> {
    lines.iter().rev().find_map(|line| parse(line))
}

/// Shows what tcpstates said on stderr besides its readiness line, running accounts of losses
/// and summary lines (export errors, say), and its last lines if a summary it owed is missing.
fn report_stderr(spec: &TracerSpec, stderr: &[String], has_summary: bool, otlp: Option<&OtlpRun>) {
    let missing_otlp = otlp.is_some_and(|o| o.summary.is_none());
    if !has_summary || missing_otlp {
        eprintln!(
            "bench: {} printed no {}summary line; its stderr ended with:",
            spec.name,
            if has_summary { "OTLP " } else { "" }
        );
        let start = stderr.len().saturating_sub(SHOWN_STDERR_LINES);
        for line in &stderr[start..] {
            eprintln!("  {line}");
        }
        return;
    }
    let other: Vec<&String> = stderr
        .iter()
        .filter(|line| {
            !line.contains(READY_LINE)
                && !RUNNING_ACCOUNTS.iter().any(|text| line.contains(text))
                && Summary::parse(line).is_none()
                && OtlpSummary::parse(line).is_none()
        })
        .collect();
    if !other.is_empty() {
        eprintln!(
            "bench: {} also said on stderr ({} lines besides its accounts of losses):",
            spec.name,
            other.len()
        );
        for line in other.iter().take(SHOWN_STDERR_LINES) {
            eprintln!("  {line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(specs: &[TracerSpec]) -> Vec<&str> {
        specs.iter().map(|spec| spec.name.as_str()).collect()
    }

    #[test]
    fn only_keeps_the_configurations_it_names() {
        let receiver_less = |only: &[&str]| {
            let only: Vec<String> = only.iter().map(|name| (*name).to_owned()).collect();
            chosen(
                tracer_specs(Path::new("/bin/tcpstates"), None, &[], None).unwrap(),
                &only,
            )
        };
        assert_eq!(
            names(&receiver_less(&[]).unwrap()),
            ["tcpstates", "tcpstates --life"]
        );
        assert_eq!(
            names(&receiver_less(&["--life"]).unwrap()),
            ["tcpstates --life"]
        );
        // A whole name is that configuration alone, not every one it is part of.
        assert_eq!(
            names(&receiver_less(&["tcpstates"]).unwrap()),
            ["tcpstates"]
        );
        let none = receiver_less(&["--otlp"]).err().unwrap().to_string();
        assert!(none.contains("'tcpstates --life'"), "{none}");
    }
}
