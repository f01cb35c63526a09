//! `cargo xtask bpf-stats`: what each of tcpstates' kernel programs costs per run, in ns, for one
//! or more agent binaries measured side by side. A measuring tool: it reports, never asserts.
//!
//! With `kernel.bpf_stats_enabled` set to 1 (the previous value is restored at the end, also on
//! errors), the kernel adds to each program's `run_time_ns` and `run_cnt` on every run. For each
//! round and each binary in turn (so slow drifts of the machine hit each alike), it starts the
//! binary as the bench starts tcpstates (text output, here to /dev/null), waits for its ready
//! line, reads the counters of every BPF program the process holds from `/proc/PID/fdinfo`, runs
//! the bench's loopback load for the given seconds, reads them again and stops the agent with
//! SIGINT. A program is named by its `bpf_prog_TAG_NAME` symbol in /proc/kallsyms (full names;
//! the name in `bpf_prog_info` is cut at 15 characters, where both programs look alike), else
//! by its tag. The report gives, per binary and program, the runs, ns/run of each round, the
//! median over rounds and its ratio to the first binary's median for the program of that name.
//!
//! The stats themselves add two clock reads per run, alike for every binary. With `--pin` the
//! load runs on CPU 0, where the programs run too (in the load's context), and the agent on the
//! last CPU (see [`super::cpus`]).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::cpus::Pinning;
use super::load::LoadResult;
use super::netns::Netns;
use super::report::{median, render};
use super::tracer::{Readiness, Running};
use super::{READY_LINE, WARM_UP_SECONDS, interrupt, load, others};
use crate::cli::BpfStatsArgs;
use crate::{cargo, process, setup};

/// Name of this tool's network namespace (not the bench's, so both can run at once).
const NETNS: &str = "tcpstates-bpf-stats";
/// The sysctl that turns the kernel's per-program run time accounting on.
const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";
/// Where the agents' text output goes.
const DEV_NULL: &str = "/dev/null";

/// Runs the measurement and prints its table.
pub fn bpf_stats(args: &BpfStatsArgs) -> Result<()> {
    if !process::is_root() {
        bail!("bpf-stats needs root: it sets a sysctl, creates a network namespace and loads BPF");
    }
    let agents: Vec<PathBuf> = args
        .agents
        .iter()
        .map(|agent| {
            agent
                .canonicalize()
                .with_context(|| format!("no agent binary at {}", agent.display()))
        })
        .collect::<Result<_>>()?;
    setup::setup()?;
    let loadgen = cargo::build_loadgen()?;
    let pinning = Pinning::asked(args.pin, "bpf-stats", "the agent")?;
    let others = others::attached_tracers();
    if !others.is_empty() {
        println!(
            "bpf-stats: warning: other tracers are attached ({}); they compete for the CPUs",
            others.join(", ")
        );
    }

    interrupt::install().context("installing the SIGINT handler")?;
    let netns = Netns::create(NETNS)?;
    let _stats = StatsEnabled::enable()?;
    println!("bpf-stats: warm-up, {WARM_UP_SECONDS} s without an agent (not reported)");
    let load_cpu = pinning.map(|p| p.load);
    load::run(
        &netns,
        &loadgen,
        (args.port, WARM_UP_SECONDS, None),
        load_cpu,
    )?;

    let names: Vec<String> = agents
        .iter()
        .enumerate()
        .map(|(i, agent)| format!("#{} {}", i + 1, agent.display()))
        .collect();
    let mut measured: Vec<Vec<Measurement>> = vec![Vec::new(); agents.len()];
    for round in 1..=args.rounds {
        for ((agent, name), runs) in agents.iter().zip(&names).zip(&mut measured) {
            interrupt::check()?;
            let run = measure(agent, name, &netns, &loadgen, args, pinning)?;
            println!("{}", progress(round, args.rounds, name, &run));
            runs.push(run);
        }
    }
    println!();
    println!(
        "tcpstates-otel bpf-stats: {} rounds of {} s, loopback connections on port {} in network \
         namespace {NETNS}{}; ns/run = run_time_ns / run_cnt of the program over the load \
         (kernel.bpf_stats_enabled=1); median over rounds; ratio = median / binary #1's median",
        args.rounds,
        args.seconds,
        args.port,
        if args.pin { ", pinned" } else { "" }
    );
    print!("{}", table(&names, &measured));
    Ok(())
}

/// `kernel.bpf_stats_enabled` set to 1 until drop, which writes back the value it had.
struct StatsEnabled {
    previous: String,
}

impl StatsEnabled {
    fn enable() -> Result<Self> {
        let previous = fs::read_to_string(STATS_SYSCTL)
            .with_context(|| format!("reading {STATS_SYSCTL}"))?
            .trim()
            .to_owned();
        fs::write(STATS_SYSCTL, "1").with_context(|| format!("writing 1 to {STATS_SYSCTL}"))?;
        Ok(Self { previous })
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        if let Err(e) = fs::write(STATS_SYSCTL, &self.previous) {
            eprintln!(
                "bpf-stats: could not restore {STATS_SYSCTL} to {}: {e}",
                self.previous
            );
        }
    }
}

/// One agent's run: the load's result and what each of its programs did during the load.
#[derive(Debug, Clone)]
struct Measurement {
    load: LoadResult,
    programs: Vec<ProgramRun>,
}

/// What one program did during a load.
#[derive(Debug, Clone, PartialEq)]
struct ProgramRun {
    name: String,
    runs: u64,
    run_time_ns: u64,
}

impl ProgramRun {
    /// Mean ns per run; `None` without runs.
    #[expect(
        clippy::cast_precision_loss,
        reason = "counts far below 2^52 in a bench"
    )]
    fn ns_per_run(&self) -> Option<f64> {
        (self.runs > 0).then(|| self.run_time_ns as f64 / self.runs as f64)
    }
}

/// Starts `agent`, waits until attached, runs the load and reads its programs' counters before
/// and after it, then stops the agent.
fn measure(
    agent: &Path,
    name: &str,
    netns: &Netns,
    loadgen: &Path,
    args: &BpfStatsArgs,
    pinning: Option<Pinning>,
) -> Result<Measurement> {
    let argv = vec![agent.to_string_lossy().into_owned()];
    let mut running = Running::start(
        name,
        &argv,
        Path::new(DEV_NULL),
        pinning.map(|p| p.observers),
    )?;
    running.wait_ready(Readiness::StderrLine(READY_LINE))?;
    let pid = running.pid();
    let before = programs_of(pid)?;
    if before.is_empty() {
        bail!("{name} (pid {pid}) holds no BPF program");
    }
    // While the programs are loaded: their symbols go with them.
    let symbols = fs::read_to_string("/proc/kallsyms").unwrap_or_default();
    let names = program_names(&symbols);
    let load = load::run(
        netns,
        loadgen,
        (args.port, args.seconds, None),
        pinning.map(|p| p.load),
    )?;
    let after = programs_of(pid)?;
    let stopped = running.stop()?;
    if stopped.exit != "exit 0" {
        eprintln!("bpf-stats: {name} ended with {}", stopped.exit);
    }
    let programs = before
        .iter()
        .filter_map(|(id, start)| {
            let end = after.get(id)?;
            Some(ProgramRun {
                name: names
                    .get(&start.tag)
                    .cloned()
                    .unwrap_or_else(|| format!("tag {}", start.tag)),
                runs: end.run_cnt.saturating_sub(start.run_cnt),
                run_time_ns: end.run_time_ns.saturating_sub(start.run_time_ns),
            })
        })
        .collect();
    Ok(Measurement { load, programs })
}

/// A BPF program's counters as `/proc/PID/fdinfo/FD` shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ProgramCounters {
    id: u32,
    tag: String,
    run_time_ns: u64,
    run_cnt: u64,
}

/// Parses the fdinfo of a BPF program fd; `None` for any other fd.
fn parse_fdinfo(text: &str) -> Option<ProgramCounters> {
    let field = |key: &str| {
        text.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            (name.trim() == key).then(|| value.trim())
        })
    };
    Some(ProgramCounters {
        id: field("prog_id")?.parse().ok()?,
        tag: field("prog_tag")?.to_owned(),
        run_time_ns: field("run_time_ns")?.parse().ok()?,
        run_cnt: field("run_cnt")?.parse().ok()?,
    })
}

/// The counters of every BPF program process `pid` holds an fd of, by program id.
fn programs_of(pid: u32) -> Result<BTreeMap<u32, ProgramCounters>> {
    let dir = format!("/proc/{pid}/fd");
    let mut programs = BTreeMap::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        let entry = entry.with_context(|| format!("listing {dir}"))?;
        let is_program = fs::read_link(entry.path())
            .is_ok_and(|target| target.to_str() == Some("anon_inode:bpf-prog"));
        if !is_program {
            continue;
        }
        let info = format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy());
        let text = fs::read_to_string(&info).with_context(|| format!("reading {info}"))?;
        let counters = parse_fdinfo(&text).with_context(|| {
            format!("{info} lacks prog_id, prog_tag, run_time_ns or run_cnt:\n{text}")
        })?;
        programs.insert(counters.id, counters);
    }
    Ok(programs)
}

/// Program names by tag, from the `bpf_prog_TAG_NAME` symbols of /proc/kallsyms.
fn program_names(kallsyms: &str) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    for line in kallsyms.lines() {
        let Some(symbol) = line.split_whitespace().nth(2) else {
            continue;
        };
        let Some((tag, name)) = symbol
            .strip_prefix("bpf_prog_")
            .and_then(|rest| rest.split_once('_'))
        else {
            continue;
        };
        if tag.len() == 16 && tag.bytes().all(|b| b.is_ascii_hexdigit()) && !name.is_empty() {
            names
                .entry(tag.to_owned())
                .or_insert_with(|| name.to_owned());
        }
    }
    names
}

/// One line of progress for a finished run.
fn progress(round: u32, rounds: u32, name: &str, run: &Measurement) -> String {
    let mut line = format!(
        "bpf-stats: round {round}/{rounds} {name}: {:.0} conn/s",
        run.load.rate
    );
    for program in &run.programs {
        line.push_str(&format!(
            "; {} {} runs {}",
            program.name,
            program.runs,
            ns(program.ns_per_run())
        ));
    }
    line
}

/// The table: a row per binary and program with its runs over every round, ns/run of each
/// round, the median and its ratio to the first binary's median for the same program name.
fn table(names: &[String], measured: &[Vec<Measurement>]) -> String {
    let medians: Vec<BTreeMap<&str, f64>> = measured
        .iter()
        .map(|runs| {
            program_names_in(runs)
                .into_iter()
                .map(|program| (program, median(ns_per_run(runs, program))))
                .collect()
        })
        .collect();
    let mut rows = vec![(
        "binary / program".to_owned(),
        vec![
            "runs".to_owned(),
            "ns/run per round".to_owned(),
            "median ns/run".to_owned(),
            "ratio to #1".to_owned(),
        ],
    )];
    for ((name, runs), binary_medians) in names.iter().zip(measured).zip(&medians) {
        let rates: Vec<f64> = runs.iter().map(|run| run.load.rate).collect();
        rows.push((
            format!("{name} (median {:.0} conn/s)", median(rates)),
            Vec::new(),
        ));
        for (program, &own) in binary_medians {
            let total: u64 = runs
                .iter()
                .flat_map(|run| &run.programs)
                .filter(|p| p.name == *program)
                .map(|p| p.runs)
                .sum();
            let rounds: Vec<String> = runs
                .iter()
                .map(|run| {
                    let found = run.programs.iter().find(|p| p.name == *program);
                    ns(found.and_then(ProgramRun::ns_per_run))
                })
                .collect();
            let ratio = medians
                .first()
                .and_then(|first| first.get(program))
                .filter(|&&base| base > 0.0)
                .map_or_else(|| "-".to_owned(), |base| format!("{:.3}", own / base));
            rows.push((
                format!("  {program}"),
                vec![
                    total.to_string(),
                    rounds.join(" "),
                    format!("{own:.1}"),
                    ratio,
                ],
            ));
        }
    }
    render(&rows)
}

/// The program names seen in `runs`, in order of first appearance.
fn program_names_in(runs: &[Measurement]) -> Vec<&str> {
    let mut names: Vec<&str> = Vec::new();
    for program in runs.iter().flat_map(|run| &run.programs) {
        if !names.contains(&program.name.as_str()) {
            names.push(&program.name);
        }
    }
    names
}

/// ns/run of `program` in each run that ran it.
fn ns_per_run(runs: &[Measurement], program: &str) -> Vec<f64> {
    runs.iter()
        .flat_map(|run| &run.programs)
        .filter(|p| p.name == program)
        .filter_map(ProgramRun::ns_per_run)
        .collect()
}

/// `12.3` or `-` without runs.
fn ns(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROGRAM_FDINFO: &str = "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1030\n\
        prog_type:\t26\nprog_jited:\t1\nprog_tag:\t1e700a08ec659496\nmemlock:\t8192\n\
        prog_id:\t654\nrun_time_ns:\t123456\nrun_cnt:\t789\nrecursion_misses:\t0\n\
        verified_insns:\t1898\n";

    #[test]
    fn parses_a_program_fdinfo() {
        assert_eq!(
            parse_fdinfo(PROGRAM_FDINFO),
            Some(ProgramCounters {
                id: 654,
                tag: "1e700a08ec659496".into(),
                run_time_ns: 123_456,
                run_cnt: 789,
            })
        );
    }

    #[test]
    fn a_link_or_map_fdinfo_is_no_program() {
        let link = "pos:\t0\nflags:\t02000000\nlink_type:\traw_tracepoint\nlink_id:\t274\n\
            prog_tag:\t1e700a08ec659496\nprog_id:\t654\ntp_name:\tinet_sock_set_state\n";
        assert_eq!(parse_fdinfo(link), None);
        assert_eq!(parse_fdinfo("pos:\t0\nmap_type:\t2\nmap_id:\t1046\n"), None);
    }

    #[test]
    fn names_programs_by_tag_from_kallsyms() {
        let kallsyms = "ffffffff814df8d0 T __pfx_bpf_prog_free\n\
            ffffffffc0026ae8 t bpf_prog_726426d147de53a2_record\t[bpf]\n\
            ffffffffc0023050 t bpf_prog_03b17cc432595742_inet_sock_set_state_backstop\t[bpf]\n\
            ffffffffc0027878 t bpf_prog_1e700a08ec659496_inet_sock_set_state\t[bpf]\n\
            ffffffff81241378 t bpf_prog_test_run_skb.cold\n";
        let names = program_names(kallsyms);
        assert_eq!(names.len(), 3, "{names:?}");
        assert_eq!(names["1e700a08ec659496"], "inet_sock_set_state");
        assert_eq!(names["03b17cc432595742"], "inet_sock_set_state_backstop");
    }

    #[test]
    fn ns_per_run_needs_runs() {
        let program = |runs, run_time_ns| ProgramRun {
            name: "p".into(),
            runs,
            run_time_ns,
        };
        assert_eq!(program(4, 1000).ns_per_run(), Some(250.0));
        assert_eq!(program(0, 0).ns_per_run(), None);
    }
}
