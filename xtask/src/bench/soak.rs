//! `cargo xtask soak`: one agent left running for minutes under a steady, moderate loopback load,
//! to see whether its memory and CPU stay flat and whether everything the load made was written
//! and exported. A measuring tool: it reports, it never asserts.
//!
//! The load is the bench's `loadgen`, paced to `--rate` connections a second (default 2,000) in
//! a network namespace of its own (`tcpstates-soak`), unpinned, for `--minutes` (default 10).
//! One release `tcpstates` runs in the host namespace, attached as it is on any host, but with
//! `--netns /run/netns/tcpstates-soak` so the machine's own connections (builds, CI) are filtered
//! out in the kernel and every count below is the load's alone. It writes its default text to a
//! file (as in the bench; about 1.5 GB for 10 minutes at 2,000 connections/s, removed at the end)
//! that the soak counts line by line as it grows, and with `--otlp` (the default) it also exports
//! every session over OTLP/gRPC to a local rotel (the bench's receiver, blackhole exporter). A file
//! rather than a pipe, so that a busy machine starving the soak's reader cannot block the agent.
//!
//! Every 10 s it prints a sample: the agent's resident memory (`VmRSS` of /proc/PID/status), its
//! CPU over the last interval (`utime + stime` of /proc/PID/stat), rotel's CPU, and the lines
//! printed so far. At the end it stops the agent with SIGINT, reads its exit account (events
//! written, lost to a full ring buffer or to BPF recursion, an account of events it inferred
//! missing if this agent prints one, and the OTLP line), and prints one table:
//!
//! - made: the state changes the load made, 10 per complete connection (5 on the client socket,
//!   5 on the server's accepted one) + 2 for the listener; sessions, 2 per connection + 1;
//! - written: the agent's own count of events handled; printed: the lines counted in its output;
//! - exported: the sessions the agent's OTLP line says were exported;
//! - lost reported: what the agent's account says it lost (and, for sessions, spans dropped at
//!   the export queue or failed);
//! - lost inferred: the transitions the agent infers it never received (`N transitions missing in
//!   G gaps (inferred: …)`), and of them those beyond the lost reported (the kernel's counted
//!   losses leave gaps too): the silent loss; `n/a` if it printed no such line (it prints none
//!   when it inferred none, and older agents never do);
//! - missing unexplained: made − written − lost reported − the silent loss (sessions: made −
//!   exported), which a complete account makes 0.
//!
//! Then the transitions printed more or fewer times than made, by name, and the agent's RSS
//! (idle, then min and max under load) and CPU (mean over the load, the samples' range, rotel's).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;

use super::count::{self, LineCounts};
use super::load::{self, LoadResult};
use super::netns::Netns;
use super::receiver::{Receiver, clock_ticks, cpu_of_stat};
use super::report::{
    self, CONNECTION_TRANSITIONS, EVENTS_PER_CONNECTION, LISTENER_EVENTS, LISTENER_TRANSITIONS,
};
use super::scratch::Scratch;
use super::summary::Summary;
use super::tracer::{Readiness, Running};
use super::{READY_LINE, RUNNING_ACCOUNTS, interrupt, last_parsed, others};
use crate::paths::{self, Profile};
use crate::{cargo, process, setup};

/// Name of the soak's network namespace (not the bench's, so both can run at once).
const NETNS: &str = "tcpstates-soak";
/// Time between two samples of the agent's memory and CPU.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// How often the soak checks whether the load has ended or Ctrl-C was pressed.
const POLL: Duration = Duration::from_millis(200);
/// How long the output counter waits at the end of the agent's output file for more.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// Wait between the end of the load and stopping the agent, for the last retransmitted
/// segments' state changes (as the bench's drain, a little longer for an unpinned machine).
const DRAIN: Duration = Duration::from_secs(2);
/// Sessions per load-generator connection: the client socket's and the accepted socket's.
const SESSIONS_PER_CONNECTION: u64 = 2;
/// Sessions of the load generator's listener.
const LISTENER_SESSIONS: u64 = 1;
/// What the agent's running accounts contain besides the bench's [`RUNNING_ACCOUNTS`]: `N more
/// transitions missing (inferred; …); M so far`. The table shows the totals.
const RUNNING_TOTAL: &str = " so far";
/// What the table's columns mean, printed under it.
const LEGEND: &str = "made = 10 state changes per connection + 2 for the listener (sessions: 2 + 1); \
    written, lost reported, lost inferred, exported = the agent's exit account; printed = output \
    lines with the load's port; lost inferred (silent) = inferred beyond lost reported; missing \
    unexplained = made - written - lost reported - silent (sessions: made - exported)";

/// Options of `soak`.
#[derive(Debug, Args)]
#[command(
    after_help = "The load (loadgen paced to --rate, unpinned) runs in the network namespace \
                  tcpstates-soak; one release tcpstates runs in the host namespace with --netns \
                  on it, its text to a file counted as it grows, and with --otlp (the default) also exporting \
                  to a local rotel. Every 10 s: the agent's RSS and CPU, rotel's CPU, lines so \
                  far. At the end: events and sessions made / written / printed / exported / \
                  lost reported / lost inferred / missing unexplained, RSS min/max and CPU. It \
                  reports, never asserts.\n\n\
                  Example: cargo xtask soak --minutes 10 (and with a collector that crashes \
                  every 5 s: --minutes 2 --flap 5)"
)]
pub struct SoakArgs {
    /// Length of the load, in minutes.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=60))]
    pub minutes: u32,
    /// Connections a second the load makes, steadily.
    #[arg(long, value_name = "CONN_PER_S", default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate: u32,
    /// Server port of the load (inside the soak's own network namespace).
    #[arg(long, default_value_t = 9099)]
    pub port: u16,
    /// Also export every session over OTLP/gRPC to a local rotel (the default).
    #[arg(long, overrides_with = "no_otlp")]
    pub otlp: bool,
    /// Do not export: the agent only prints its text.
    #[arg(long, overrides_with = "otlp")]
    pub no_otlp: bool,
    /// Flap the collector: kill rotel (SIGKILL) every SECONDS and start it again on the same
    /// ports SECONDS later, for the whole load (it is up half the time).
    #[arg(long, value_name = "SECONDS", conflicts_with = "no_otlp", value_parser = clap::value_parser!(u64).range(1..=600))]
    pub flap: Option<u64>,
}

impl SoakArgs {
    /// Whether the agent exports over OTLP (unless `--no-otlp`).
    fn exports(&self) -> bool {
        !self.no_otlp
    }
}

/// One sample of the agent's process.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// When it was taken.
    at: Instant,
    /// Resident memory, in KiB.
    rss_kib: u64,
    /// User plus system CPU time so far.
    cpu: Duration,
}

/// The samples taken under load, summarised.
#[derive(Debug, Default)]
struct Samples {
    rss_min_kib: Option<u64>,
    rss_max_kib: u64,
    cpu_min: Option<f64>,
    cpu_max: f64,
}

impl Samples {
    /// Adds a sample's resident memory and share of a core since the previous sample.
    fn add(&mut self, rss_kib: u64, cpu_share: f64) {
        self.add_rss(rss_kib);
        self.cpu_min = Some(self.cpu_min.map_or(cpu_share, |min| min.min(cpu_share)));
        self.cpu_max = self.cpu_max.max(cpu_share);
    }

    /// Adds a resident memory sample alone.
    fn add_rss(&mut self, rss_kib: u64) {
        self.rss_min_kib = Some(self.rss_min_kib.map_or(rss_kib, |min| min.min(rss_kib)));
        self.rss_max_kib = self.rss_max_kib.max(rss_kib);
    }
}

/// Runs the soak and prints its samples and table.
pub fn soak(args: &SoakArgs) -> Result<()> {
    if !process::is_root() {
        bail!("the soak needs root: it creates a network namespace and loads BPF programs");
    }
    setup::setup()?;
    cargo::build_agent(Profile::Release)?;
    let loadgen = cargo::build_loadgen()?;
    let agent = paths::binary(Profile::Release, "tcpstates");
    let version = process::stdout_of(Command::new(&agent).arg("--version")).map_or_else(
        || "tcpstates (version unknown)".into(),
        |v| v.trim().to_owned(),
    );
    let mut receiver = args.exports().then(|| Receiver::start(None)).transpose()?;
    let others = others::attached_tracers();
    if !others.is_empty() {
        println!(
            "soak: warning: other tracers are attached ({}); their programs run on the same \
             events",
            others.join(", ")
        );
    }

    interrupt::install().context("installing the SIGINT handler")?;
    let scratch = Scratch::new(None)?;
    let netns = Netns::create(NETNS)?;
    let output = scratch.file("agent-stdout.txt");
    let mut argv = vec![
        agent.to_string_lossy().into_owned(),
        "--netns".into(),
        format!("/run/netns/{NETNS}"),
    ];
    if let Some(receiver) = &receiver {
        argv.extend(["--otlp".into(), receiver.grpc_endpoint()]);
    }
    println!("soak: agent: {} >{}", argv.join(" "), output.display());
    let mut tracer = Running::start("tcpstates", &argv, &output, None)?;
    let newlines = Arc::new(AtomicU64::new(0));
    let agent_done = Arc::new(AtomicBool::new(false));
    let counter = {
        let follow = Follow {
            file: File::open(&output).with_context(|| format!("opening {}", output.display()))?,
            done: Arc::clone(&agent_done),
            last: false,
        };
        let (newlines, port) = (Arc::clone(&newlines), args.port);
        thread::Builder::new()
            .name("soak-count".into())
            .spawn(move || -> io::Result<LineCounts> {
                let reader = Counting {
                    inner: follow,
                    newlines,
                };
                count::count(BufReader::with_capacity(1 << 20, reader), port)
            })
            .context("spawning the output counter")?
    };
    tracer.wait_ready(Readiness::StderrLine(READY_LINE))?;
    let pid = tracer.pid();
    let idle = sample(pid)?;
    // A flapping rotel's CPU cannot be followed across its restarts.
    let receiver_start = match (&receiver, args.flap) {
        (Some(receiver), None) => Some(receiver.cpu()?),
        _ => None,
    };
    println!(
        "soak: {} min at {} connections/s on port {} in network namespace {NETNS}; agent idle: \
         RSS {}",
        args.minutes,
        args.rate,
        args.port,
        mib(idle.rss_kib)
    );

    let mut samples = Samples::default();
    let mut flaps = Flaps::new(args.flap.map(Duration::from_secs));
    let load = thread::scope(|scope| -> Result<LoadResult> {
        let load = scope.spawn(|| run_load(&netns, &loadgen, args));
        let (mut last, mut receiver_last) = (idle, receiver_start);
        let mut next = idle.at + SAMPLE_EVERY;
        while !load.is_finished() {
            thread::sleep(POLL);
            if let Some(receiver) = &mut receiver {
                flaps.step(receiver)?;
            }
            if interrupt::check().is_err() || Instant::now() < next {
                continue;
            }
            next += SAMPLE_EVERY;
            let now = match sample(pid) {
                Ok(now) => now,
                Err(e) => {
                    eprintln!("soak: sampling the agent: {e:#}");
                    continue;
                }
            };
            let seconds = now.at.duration_since(last.at).as_secs_f64();
            let share = now.cpu.saturating_sub(last.cpu).as_secs_f64() / seconds;
            samples.add(now.rss_kib, share);
            let rotel = match (&receiver, receiver_last) {
                (Some(receiver), Some(before)) => match receiver.cpu() {
                    Ok(cpu) => {
                        receiver_last = Some(cpu);
                        let share = cpu.saturating_sub(before).as_secs_f64() / seconds;
                        format!(", rotel CPU {}", percent(share))
                    }
                    Err(_) => ", rotel CPU ?".into(),
                },
                _ => String::new(),
            };
            let lines = newlines.load(Ordering::Relaxed);
            println!(
                "soak: {:>5}  agent RSS {}, CPU {} of a core{rotel}; {} lines printed so far",
                clock(now.at.duration_since(idle.at)),
                mib(now.rss_kib),
                percent(share),
                thousands(lines)
            );
            last = now;
        }
        load.join()
            .map_err(|_| anyhow::anyhow!("the load thread panicked"))?
    });
    interrupt::check()?;
    let load = load?;
    if let Some(receiver) = &mut receiver {
        flaps.end(receiver)?;
    }
    thread::sleep(DRAIN);
    let closing: u64 = netns.tcp_sockets()?.values().sum();
    let before_stop = sample(pid)?;
    samples.add_rss(before_stop.rss_kib);
    let receiver_cpu = match (&receiver, receiver_start) {
        _ if args.flap.is_some() => None,
        (Some(receiver), Some(start)) => Some(receiver.cpu()?.saturating_sub(start)),
        _ => None,
    };
    let stopped = tracer.stop()?;
    agent_done.store(true, Ordering::Release);
    let lines = counter
        .join()
        .map_err(|_| anyhow::anyhow!("the output counter panicked"))?
        .context("reading the agent's output")?;
    let wall = before_stop.at.duration_since(idle.at);

    println!();
    println!(
        "soak: the agent {} after SIGINT in {:.1} s; its stderr:",
        stopped.exit,
        stopped.stopping.as_secs_f64()
    );
    let mut running_accounts = 0;
    for line in &stopped.stderr {
        if RUNNING_ACCOUNTS.iter().any(|text| line.contains(text)) || line.ends_with(RUNNING_TOTAL)
        {
            running_accounts += 1;
        } else if !line.contains(READY_LINE) {
            println!("  {line}");
        }
    }
    if running_accounts > 0 {
        println!("  (and {running_accounts} running accounts of losses)");
    }
    let account = Account {
        load,
        printed: lines.matched,
        summary: last_parsed(&stopped.stderr, Summary::parse),
        otlp: last_parsed(&stopped.stderr, Exported::parse),
        inferred: last_parsed(&stopped.stderr, parse_inferred),
        exports: receiver.is_some(),
    };
    println!();
    println!(
        "tcpstates-otel soak: {version}; {} min, loadgen --rate {} on port {} in network \
         namespace {NETNS} (unpinned); one agent --netns on it, text to a file{}",
        args.minutes,
        args.rate,
        args.port,
        match (account.exports, args.flap) {
            (true, Some(period)) => format!(
                ", --otlp to rotel (blackhole) killed every {period} s and restarted {period} s \
                 later"
            ),
            (true, None) => ", --otlp to rotel (blackhole)".into(),
            (false, _) => String::new(),
        }
    );
    println!(
        "load: {} connections made, {} failed, {:.1} s, {:.1} connections/s",
        thousands(load.connections),
        thousands(load.failed),
        load.seconds,
        load.rate
    );
    print!("{}", report::render(&account.rows()));
    println!("{LEGEND}");
    println!(
        "agent RSS: {} idle before the load; under load min {}, max {} (every {} s)",
        mib(idle.rss_kib),
        mib(samples.rss_min_kib.unwrap_or(idle.rss_kib)),
        mib(samples.rss_max_kib),
        SAMPLE_EVERY.as_secs()
    );
    println!(
        "agent CPU: {} of a core over the load (samples {}–{}); {} start to exit{}",
        percent(before_stop.cpu.saturating_sub(idle.cpu).as_secs_f64() / wall.as_secs_f64()),
        percent(samples.cpu_min.unwrap_or(0.0)),
        percent(samples.cpu_max),
        duration(stopped.cpu),
        receiver_cpu.map_or_else(String::new, |cpu| format!(
            "; rotel {} of a core",
            percent(cpu.as_secs_f64() / wall.as_secs_f64())
        ))
    );
    if load.failed > 0 {
        println!(
            "note: {} connections failed; their state changes are not in made, so written may \
             exceed it",
            thousands(load.failed)
        );
    }
    if closing > 0 {
        println!(
            "note: {closing} of the load's sockets were still closing when the agent stopped; \
             their last state changes are missing from written"
        );
    }
    let deviations = deviations(&lines.transitions, load.connections);
    if !deviations.is_empty() {
        println!("printed minus made, by transition: {deviations}");
    }
    if lines.total > lines.matched + 1 {
        println!(
            "note: {} printed lines (besides the header) do not have port {}",
            thousands(lines.total - lines.matched - 1),
            args.port
        );
    }
    Ok(())
}

/// `--flap`: the collector killed and started again in turn, every `period`.
struct Flaps {
    period: Option<Duration>,
    next: Instant,
    down: bool,
    kills: u32,
}

impl Flaps {
    fn new(period: Option<Duration>) -> Self {
        Self {
            period,
            next: Instant::now() + period.unwrap_or_default(),
            down: false,
            kills: 0,
        }
    }

    /// Kills or restarts `receiver` when its time has come.
    fn step(&mut self, receiver: &mut Receiver) -> Result<()> {
        let Some(period) = self.period else {
            return Ok(());
        };
        if Instant::now() < self.next {
            return Ok(());
        }
        if self.down {
            receiver.restart()?;
        } else {
            receiver.kill()?;
            self.kills += 1;
        }
        self.down = !self.down;
        self.next += period;
        Ok(())
    }

    /// Leaves `receiver` up for the agent's last exports, and says how often it was killed.
    fn end(&mut self, receiver: &mut Receiver) -> Result<()> {
        if self.down {
            receiver.restart()?;
            self.down = false;
        }
        if let Some(period) = self.period {
            println!(
                "soak: the collector was killed {} times, down {period:?} each time",
                self.kills
            );
        }
        Ok(())
    }
}

/// What the load made and what the agent accounted for.
#[derive(Debug)]
struct Account {
    load: LoadResult,
    /// Output lines with the load's port.
    printed: u64,
    summary: Option<Summary>,
    otlp: Option<Exported>,
    inferred: Option<u64>,
    /// Whether the agent exported over OTLP.
    exports: bool,
}

impl Account {
    /// The table: a header, then events and sessions.
    fn rows(&self) -> Vec<(String, Vec<String>)> {
        let header = [
            "made",
            "written",
            "printed",
            "exported",
            "lost reported",
            "lost inferred",
            "missing unexplained",
        ]
        .map(str::to_owned)
        .to_vec();
        let made = EVENTS_PER_CONNECTION * self.load.connections + LISTENER_EVENTS;
        let events = vec![
            thousands(made),
            self.summary.map_or("?".into(), |s| thousands(s.written)),
            thousands(self.printed),
            "–".into(),
            self.summary.map_or("?".into(), |s| {
                format!(
                    "{} ({} ring full, {} recursion)",
                    thousands(s.lost),
                    s.ring_full,
                    s.recursion
                )
            }),
            match (self.inferred, self.summary) {
                (Some(inferred), Some(s)) => format!(
                    "{} ({} silent)",
                    thousands(inferred),
                    thousands(inferred.saturating_sub(s.lost))
                ),
                (Some(inferred), None) => thousands(inferred),
                (None, _) => "n/a".into(),
            },
            self.summary.map_or("?".into(), |s| {
                let silent = self.inferred.unwrap_or(0).saturating_sub(s.lost);
                signed(
                    i128::from(made)
                        - i128::from(s.written)
                        - i128::from(s.lost)
                        - i128::from(silent),
                )
            }),
        ];
        let mut rows = vec![(String::new(), header), ("events".into(), events)];
        if self.exports {
            let made = SESSIONS_PER_CONNECTION * self.load.connections + LISTENER_SESSIONS;
            let sessions = vec![
                thousands(made),
                "–".into(),
                "–".into(),
                self.otlp
                    .as_ref()
                    .map_or("?".into(), |o| thousands(o.sessions)),
                self.otlp.as_ref().map_or("?".into(), |o| o.rest.clone()),
                "–".into(),
                self.otlp.as_ref().map_or("?".into(), |o| {
                    signed(i128::from(made) - i128::from(o.sessions))
                }),
            ];
            rows.push(("sessions".into(), sessions));
        }
        rows
    }
}

/// The agent's OTLP account line: `tcpstates: OTLP: S sessions exported in P spans, REST`, where
/// REST (spans dropped, failed, sessions evicted, and whatever this agent adds) is kept as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Exported {
    /// Sessions whose root span was exported.
    sessions: u64,
    /// The rest of the line after the spans, as the agent wrote it.
    rest: String,
}

impl Exported {
    /// Parses an OTLP account line; `None` if `line` is not one.
    fn parse(line: &str) -> Option<Self> {
        let rest = line.trim().strip_prefix("tcpstates: OTLP: ")?;
        let (sessions, rest) = rest.split_once(" sessions exported in ")?;
        let (_spans, rest) = rest.split_once(" spans, ")?;
        Some(Self {
            sessions: sessions.parse().ok()?,
            rest: rest.to_owned(),
        })
    }
}

/// The transitions printed more or fewer times than the load made them (`connections` times
/// each connection's, once each of the listener's), as `NAME ±N` separated by commas; empty if
/// every count is right.
fn deviations(printed: &BTreeMap<String, u64>, connections: u64) -> String {
    let made = CONNECTION_TRANSITIONS
        .iter()
        .map(|name| (*name, connections))
        .chain(LISTENER_TRANSITIONS.iter().map(|name| (*name, 1)));
    let mut expected: BTreeMap<&str, u64> = made.collect();
    for name in printed.keys() {
        expected.entry(name.as_str()).or_insert(0);
    }
    expected
        .iter()
        .filter_map(|(name, &made)| {
            let printed = printed.get(*name).copied().unwrap_or(0);
            (printed != made)
                .then(|| format!("{name} {}", signed(i128::from(printed) - i128::from(made))))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs `loadgen` in `netns` at the soak's rate for its minutes.
fn run_load(netns: &Netns, loadgen: &Path, args: &SoakArgs) -> Result<LoadResult> {
    let mut cmd = netns.command(loadgen);
    cmd.args([
        "--port",
        &args.port.to_string(),
        "--seconds",
        &(args.minutes * 60).to_string(),
        "--rate",
        &args.rate.to_string(),
    ])
    .stdin(Stdio::null())
    .stderr(Stdio::inherit());
    let line = process::describe(&cmd);
    println!("soak: load: {line}");
    let output = cmd.output().with_context(|| format!("starting `{line}`"))?;
    if !output.status.success() {
        bail!("`{line}` failed ({})", output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    load::parse(last).with_context(|| format!("reading loadgen's result line {last:?}"))
}

/// A file another process is still writing, read as `tail -f` would: at its end, wait for more
/// until `done` is set (the writer has exited), then read what is left and end.
struct Follow {
    file: File,
    done: Arc<AtomicBool>,
    /// Whether `done` was seen set: the next end of the file is the real one.
    last: bool,
}

impl Read for Follow {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.file.read(buf)?;
            if n > 0 || buf.is_empty() || self.last {
                return Ok(n);
            }
            if self.done.load(Ordering::Acquire) {
                self.last = true;
            } else {
                thread::sleep(FOLLOW_POLL);
            }
        }
    }
}

/// A reader that counts the newlines passing through it, for the samples' progress.
struct Counting<R> {
    inner: R,
    newlines: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let newlines = buf[..n].iter().filter(|&&b| b == b'\n').count();
        self.newlines.fetch_add(newlines as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Samples process `pid`'s resident memory and CPU time.
fn sample(pid: u32) -> Result<Sample> {
    let at = Instant::now();
    let status_path = format!("/proc/{pid}/status");
    let status =
        fs::read_to_string(&status_path).with_context(|| format!("reading {status_path}"))?;
    let stat_path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&stat_path).with_context(|| format!("reading {stat_path}"))?;
    Ok(Sample {
        at,
        rss_kib: vm_rss_kib(&status).with_context(|| format!("no VmRSS in {status_path}"))?,
        cpu: cpu_of_stat(&stat, clock_ticks())
            .with_context(|| format!("parsing {stat_path}: {stat:?}"))?,
    })
}

/// `VmRSS` of a /proc/PID/status text, in KiB.
fn vm_rss_kib(status: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix("VmRSS:")?.trim();
        value.strip_suffix("kB")?.trim().parse().ok()
    })
}

/// The number of the agent's final account of events inferred missing (a `tcpstates: ` line with
/// the word `inferred`, not a running account ending `so far`): its first whole number. `None`
/// for any other line.
fn parse_inferred(line: &str) -> Option<u64> {
    let rest = line.trim().strip_prefix("tcpstates: ")?;
    if !rest.contains("inferred") || rest.ends_with(RUNNING_TOTAL) {
        return None;
    }
    rest.split(|c: char| !c.is_ascii_digit() && c != ',')
        .map(|word| word.trim_matches(','))
        .find(|word| !word.is_empty())
        .and_then(|word| word.replace(',', "").parse().ok())
}

/// `n` with a comma every three digits.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// `n` with its sign (`+3`, `-2`, `0`) and thousands separators.
fn signed(n: i128) -> String {
    let magnitude = thousands(u64::try_from(n.unsigned_abs()).unwrap_or(u64::MAX));
    match n {
        0 => "0".into(),
        n if n > 0 => format!("+{magnitude}"),
        _ => format!("-{magnitude}"),
    }
}

/// KiB as MiB, one decimal.
fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// A share of one core as a percentage, one decimal.
fn percent(share: f64) -> String {
    format!("{:.1} %", share * 100.0)
}

/// A duration as seconds, one decimal.
fn duration(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Elapsed time as `M:SS`.
fn clock(elapsed: Duration) -> String {
    let seconds = elapsed.as_secs();
    format!("{}:{:02}", seconds / 60, seconds % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_a_file_until_its_writer_is_done() {
        let path = std::env::temp_dir().join(format!("soak-follow-{}", std::process::id()));
        fs::write(&path, "a\nb\n").unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let mut follow = Follow {
            file: File::open(&path).unwrap(),
            done: Arc::clone(&done),
            last: false,
        };
        let writer = {
            let (path, done) = (path.clone(), Arc::clone(&done));
            thread::spawn(move || {
                thread::sleep(FOLLOW_POLL * 2);
                let mut file = fs::OpenOptions::new().append(true).open(&path).unwrap();
                io::Write::write_all(&mut file, b"c\n").unwrap();
                done.store(true, Ordering::Release);
            })
        };
        let mut text = String::new();
        follow.read_to_string(&mut text).unwrap();
        writer.join().unwrap();
        fs::remove_file(&path).unwrap();
        assert_eq!(text, "a\nb\nc\n");
    }

    #[test]
    fn reads_vm_rss() {
        let status = "Name:\ttcpstates\nVmPeak:\t  200000 kB\nVmRSS:\t   45312 kB\nThreads:\t4\n";
        assert_eq!(vm_rss_kib(status), Some(45_312));
        assert_eq!(vm_rss_kib("Name:\tkthreadd\nThreads:\t1\n"), None);
    }

    #[test]
    fn reads_an_inferred_account_line() {
        assert_eq!(
            parse_inferred(
                "tcpstates: 1,234 events inferred missing from sessions that skipped states"
            ),
            Some(1_234)
        );
        assert_eq!(
            parse_inferred(
                "tcpstates: 9 transitions missing in 7 gaps (inferred: 5 chain breaks, 2 \
                 addresses reused before CLOSE, 0 starts not seen): the kernel ran no program \
                 for them"
            ),
            Some(9)
        );
        assert_eq!(
            parse_inferred(
                "tcpstates: 5 events written, 0 lost (0 ring buffer full, 0 BPF recursion)"
            ),
            None
        );
        assert_eq!(parse_inferred("3 inferred"), None);
    }

    #[test]
    fn formats_numbers() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(12_000_002), "12,000,002");
        assert_eq!(signed(0), "0");
        assert_eq!(signed(3_000), "+3,000");
        assert_eq!(signed(-2), "-2");
        assert_eq!(clock(Duration::from_secs(610)), "10:10");
    }

    #[test]
    fn reads_the_otlp_account_line_whatever_follows_the_spans() {
        let line = "tcpstates: OTLP: 2001 sessions exported in 12000 spans, 0 spans dropped \
                    (queue full), 0 failed, 0 rejected, 0 possible duplicates, 0 sessions evicted";
        assert_eq!(
            Exported::parse(line),
            Some(Exported {
                sessions: 2_001,
                rest: "0 spans dropped (queue full), 0 failed, 0 rejected, 0 possible \
                       duplicates, 0 sessions evicted"
                    .into()
            })
        );
        assert_eq!(
            Exported::parse(
                "tcpstates: 5 events written, 0 lost (0 ring buffer full, 0 BPF recursion)"
            ),
            None
        );
    }

    #[test]
    fn lists_the_transitions_printed_more_or_fewer_times_than_made() {
        let mut printed: BTreeMap<String, u64> = CONNECTION_TRANSITIONS
            .iter()
            .map(|name| ((*name).to_owned(), 100))
            .chain(
                LISTENER_TRANSITIONS
                    .iter()
                    .map(|name| ((*name).to_owned(), 1)),
            )
            .collect();
        assert_eq!(deviations(&printed, 100), "");
        printed.insert("FIN_WAIT2->CLOSE".into(), 98);
        printed.remove("LISTEN->CLOSE");
        printed.insert("SYN_SENT->CLOSE".into(), 2);
        assert_eq!(
            deviations(&printed, 100),
            "FIN_WAIT2->CLOSE -2, LISTEN->CLOSE -1, SYN_SENT->CLOSE +2"
        );
    }

    #[test]
    fn ignores_the_running_accounts_of_inferred_transitions() {
        assert_eq!(
            parse_inferred(
                "tcpstates: 2 more transitions missing (inferred; the kernel ran no program for \
                 them); 5 so far"
            ),
            None
        );
    }

    fn account(summary: Option<Summary>, otlp: Option<Exported>) -> Account {
        Account {
            load: LoadResult {
                connections: 1_000,
                failed: 0,
                seconds: 1.0,
                rate: 1_000.0,
            },
            printed: 9_995,
            summary,
            otlp,
            inferred: None,
            exports: true,
        }
    }

    #[test]
    fn the_table_puts_made_written_exported_and_lost_side_by_side() {
        let summary = Summary {
            written: 9_995,
            lost: 4,
            ring_full: 0,
            recursion: 4,
        };
        let otlp = Exported {
            sessions: 2_001,
            rest: "0 spans dropped (queue full), 0 failed, 0 sessions evicted".into(),
        };
        let table = report::render(&account(Some(summary), Some(otlp)).rows());
        let rows: Vec<Vec<&str>> = table
            .lines()
            .map(|line| {
                line.split("  ")
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .collect()
            })
            .collect();
        assert_eq!(
            rows[1],
            [
                "events",
                "10,002",
                "9,995",
                "9,995",
                "–",
                "4 (0 ring full, 4 recursion)",
                "n/a",
                "+3"
            ]
        );
        // Inferred beyond the reported: the kernel's silent loss, which completes the account.
        let mut inferred = account(Some(summary), None);
        inferred.inferred = Some(6);
        let table = report::render(&inferred.rows());
        let events: Vec<&str> = table
            .lines()
            .nth(1)
            .expect("events row")
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(events[6..], ["6 (2 silent)", "+1"]);
        assert_eq!(
            rows[2],
            [
                "sessions",
                "2,001",
                "–",
                "–",
                "2,001",
                "0 spans dropped (queue full), 0 failed, 0 sessions evicted",
                "–",
                "0"
            ]
        );
    }

    #[test]
    fn the_table_says_what_the_agent_did_not_print() {
        let table = report::render(&account(None, None).rows());
        assert!(table.contains("?"), "{table}");
        assert_eq!(table.lines().count(), 3, "{table}");
    }
}
