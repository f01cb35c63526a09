//! The results of the bench's runs and the table that summarises them.

mod otlp;

pub use self::otlp::LEGEND as OTLP_LEGEND;

use std::collections::BTreeMap;
use std::time::Duration;

use super::count::LineCounts;
use super::load::LoadResult;
use super::summary::{OtlpSummary, Summary};

/// The state changes the kernel reports for each load-generator connection: the client's, then
/// the server's accepted socket's.
pub(super) const CONNECTION_TRANSITIONS: [&str; 10] = [
    "CLOSE->SYN_SENT",
    "SYN_SENT->ESTABLISHED",
    "ESTABLISHED->CLOSE_WAIT",
    "CLOSE_WAIT->LAST_ACK",
    "LAST_ACK->CLOSE",
    "LISTEN->SYN_RECV",
    "SYN_RECV->ESTABLISHED",
    "ESTABLISHED->FIN_WAIT1",
    "FIN_WAIT1->FIN_WAIT2",
    "FIN_WAIT2->CLOSE",
];
/// The state changes of the load generator's listener, once per run.
pub(super) const LISTENER_TRANSITIONS: [&str; 2] = ["CLOSE->LISTEN", "LISTEN->CLOSE"];

/// State changes the kernel reports per load-generator connection (5 per side).
pub const EVENTS_PER_CONNECTION: u64 = CONNECTION_TRANSITIONS.len() as u64;
/// State changes of the load generator's listener per run.
pub const LISTENER_EVENTS: u64 = LISTENER_TRANSITIONS.len() as u64;
/// Sessions per load-generator connection (its two ends; a listener is no `--life` line).
pub const SESSIONS_PER_CONNECTION: u64 = 2;

/// What a tracer's output lines are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineUnit {
    /// One line per state change (tcpstates, bcc's tcpstates).
    Transitions,
    /// One line per closed session (`tcpstates --life`, tcplife).
    Sessions,
}

/// What the table's ratio, event and CPU rows mean.
pub const LEGEND: &str = "ratio to no tracer = median rate / the no-tracer median rate; median of \
    round ratios = the median over rounds of each run's rate / the no-tracer rate of its round \
    (robust to the machine's speed drifting between rounds); events expected = 10 per connection \
    + 2 for the listener (for --life, sessions: 2 per connection); printed = output lines with the port as LPORT or RPORT; written and \
    lost = tcpstates' own exit summary (written: events handled, printed or turned into spans); \
    CPU time = user + system time of the tracer process (wait4), start to exit, and its share of \
    one core over the load's seconds; CPU per connection = its CPU time under load (from its ready \
    line to the drain pause's end, all threads' /proc/PID/task/TID/schedstat; start-up and exit \
    left out) / the load's connections; SIGINT to exit = the slowest stop (the OTLP agent flushes \
    its queue then)";

/// What a tracer did during one run.
#[derive(Debug)]
pub struct TracerRun {
    /// Its user plus system CPU time over the whole run, start to exit.
    pub cpu: Duration,
    /// Its CPU time from attached until the load was over and drained: its work on the load,
    /// its start-up and exit left out.
    pub cpu_under_load: Duration,
    /// How it ended.
    pub exit: String,
    /// Time from SIGINT to its exit.
    pub stopping: Duration,
    /// Its output's line counts; `None` for a tracer that prints nothing (`tcpstates --otlp -q`).
    pub lines: Option<LineCounts>,
    /// What its lines are.
    pub unit: LineUnit,
    /// Its own event counts (tcpstates only; peers print none).
    pub summary: Option<Summary>,
    /// The bench's sockets still closing when it was stopped, by `ss` state: their last state
    /// changes came too late to be counted.
    pub closing: BTreeMap<String, u64>,
    /// What it exported, for tcpstates exporting over OTLP.
    pub otlp: Option<OtlpRun>,
}

/// The export side of a run of `tcpstates --otlp`.
#[derive(Debug)]
pub struct OtlpRun {
    /// The agent's OTLP summary line, if it printed one.
    pub summary: Option<OtlpSummary>,
    /// The receiver's user plus system CPU time from the agent's start to its exit.
    pub receiver_cpu: Duration,
}

/// One run of one configuration.
#[derive(Debug)]
pub struct Run {
    /// What the load generator reported.
    pub load: LoadResult,
    /// The tracer's side, if one ran.
    pub tracer: Option<TracerRun>,
}

impl Run {
    /// Lines the tracer should have printed for the bench's port: state changes, or sessions.
    pub fn expected_events(&self) -> u64 {
        match self.tracer.as_ref().map(|tracer| tracer.unit) {
            Some(LineUnit::Sessions) => SESSIONS_PER_CONNECTION * self.load.connections,
            _ => EVENTS_PER_CONNECTION * self.load.connections + LISTENER_EVENTS,
        }
    }
}

/// A configuration (no tracer, tcpstates, a peer) and its runs.
#[derive(Debug)]
pub struct Config {
    /// Column title.
    pub name: String,
    /// Its runs, one per round.
    pub runs: Vec<Run>,
}

impl Config {
    /// A configuration named `name`, without runs yet.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            runs: Vec::new(),
        }
    }

    /// Median connection rate of its runs.
    pub fn median_rate(&self) -> f64 {
        median(self.runs.iter().map(|run| run.load.rate).collect())
    }

    /// Median over the rounds of its rate divided by `baseline`'s rate in the same round:
    /// pairs runs made minutes apart at most, so a slow drift of the machine's speed cancels.
    /// `None` without a round that both ran with a non-zero baseline rate.
    pub fn median_round_ratio(&self, baseline: &Config) -> Option<f64> {
        let ratios: Vec<f64> = self
            .runs
            .iter()
            .zip(&baseline.runs)
            .filter(|(_, base)| base.load.rate > 0.0)
            .map(|(run, base)| run.load.rate / base.load.rate)
            .collect();
        (!ratios.is_empty()).then(|| median(ratios))
    }
}

/// The median of `values` (mean of the middle two for an even count; 0 if empty).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// One line of progress for a finished run.
pub fn progress(round: u32, rounds: u32, name: &str, run: &Run) -> String {
    let mut line = format!(
        "bench: round {round}/{rounds} {name}: {:.0} conn/s ({} connections, {} failed)",
        run.load.rate, run.load.connections, run.load.failed
    );
    if let Some(tracer) = &run.tracer {
        if let Some(lines) = &tracer.lines {
            line.push_str(&format!(
                ", {} of {} events printed",
                lines.matched,
                run.expected_events()
            ));
        }
        line.push_str(&format!(
            ", cpu {:.2} s, {} after {:.1} s",
            tracer.cpu.as_secs_f64(),
            tracer.exit,
            tracer.stopping.as_secs_f64()
        ));
        if let Some(summary) = &tracer.summary {
            line.push_str(&format!(
                ", {} written, {} lost",
                summary.written, summary.lost
            ));
        }
        if let Some(export) = &tracer.otlp {
            line.push_str(&otlp::progress(run, export));
        }
    }
    line
}

/// The summary table, first column the row names, one column per configuration.
pub fn table(configs: &[Config], seconds: u32) -> String {
    let Some(baseline) = configs.first() else {
        return String::new();
    };
    let base_rate = baseline.median_rate();
    let rounds = configs.iter().map(|c| c.runs.len()).max().unwrap_or(0);
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    rows.push((
        String::new(),
        configs.iter().map(|c| c.name.clone()).collect(),
    ));
    for round in 0..rounds {
        rows.push((
            format!("round {} rate (conn/s)", round + 1),
            configs
                .iter()
                .map(|c| {
                    c.runs
                        .get(round)
                        .map_or("-".into(), |r| format!("{:.0}", r.load.rate))
                })
                .collect(),
        ));
    }
    let per_config = |f: &dyn Fn(&Config) -> String| configs.iter().map(f).collect::<Vec<_>>();
    rows.push((
        "median rate (conn/s)".into(),
        per_config(&|c| format!("{:.0}", c.median_rate())),
    ));
    rows.push((
        "ratio to no tracer".into(),
        per_config(&|c| {
            if base_rate > 0.0 {
                format!("{:.3}", c.median_rate() / base_rate)
            } else {
                "-".into()
            }
        }),
    ));
    rows.push((
        "median of round ratios".into(),
        per_config(&|c| {
            c.median_round_ratio(baseline)
                .map_or("-".into(), |ratio| format!("{ratio:.3}"))
        }),
    ));
    rows.push((
        "failed connections".into(),
        per_config(&|c| {
            c.runs
                .iter()
                .map(|r| r.load.failed)
                .sum::<u64>()
                .to_string()
        }),
    ));
    rows.push((
        "events expected".into(),
        per_config(&|c| printed(c, |r, _| r.expected_events())),
    ));
    rows.push((
        "events printed (port)".into(),
        per_config(&|c| printed(c, |_, lines| lines.matched)),
    ));
    rows.push(("missing".into(), per_config(&missing)));
    rows.push((
        "written (all ports)".into(),
        per_config(&|c| summed(c, |s| s.written)),
    ));
    rows.push(("lost".into(), per_config(&|c| summed(c, |s| s.lost))));
    rows.push((
        "  ring buffer full / recursion".into(),
        per_config(&|c| {
            total_summary(c).map_or("-".into(), |s| format!("{} / {}", s.ring_full, s.recursion))
        }),
    ));
    rows.push((
        "sockets still closing at stop".into(),
        per_config(&|c| traced(c, |_, t| t.closing.values().sum())),
    ));
    if configs.iter().any(otlp::exports) {
        rows.extend(otlp::rows(configs, seconds));
    }
    rows.push((
        "tracer CPU time (s)".into(),
        per_config(&|c| cpu(c, seconds, |t| Some(t.cpu))),
    ));
    rows.push((
        "tracer CPU per connection (µs)".into(),
        per_config(&cpu_per_connection),
    ));
    rows.push((
        "SIGINT to exit (s, slowest)".into(),
        per_config(&|c| {
            c.runs
                .iter()
                .filter_map(|r| Some(r.tracer.as_ref()?.stopping))
                .max()
                .map_or("-".into(), |d| format!("{:.1}", d.as_secs_f64()))
        }),
    ));
    rows.push((
        "tracer exits".into(),
        per_config(&|c| {
            let exits: Vec<&str> = c
                .runs
                .iter()
                .filter_map(|r| Some(r.tracer.as_ref()?.exit.as_str()))
                .collect();
            if exits.is_empty() {
                "-".into()
            } else {
                exits.join(", ")
            }
        }),
    ));
    render(&rows)
}

/// Sum of `f` over the runs that had a tracer, or `-`.
fn traced(config: &Config, f: impl Fn(&Run, &TracerRun) -> u64) -> String {
    let mut any = false;
    let mut sum = 0;
    for run in &config.runs {
        if let Some(tracer) = &run.tracer {
            any = true;
            sum += f(run, tracer);
        }
    }
    if any { sum.to_string() } else { "-".into() }
}

/// Sum of `f` over the runs whose tracer printed text, or `-`.
fn printed(config: &Config, f: impl Fn(&Run, &LineCounts) -> u64) -> String {
    let mut any = false;
    let mut sum = 0;
    for run in &config.runs {
        if let Some(lines) = run.tracer.as_ref().and_then(|t| t.lines.as_ref()) {
            any = true;
            sum += f(run, lines);
        }
    }
    if any { sum.to_string() } else { "-".into() }
}

/// Expected minus printed events, with the share of expected, or `-`.
fn missing(config: &Config) -> String {
    let (mut expected, mut printed, mut any) = (0u64, 0u64, false);
    for run in &config.runs {
        if let Some(lines) = run.tracer.as_ref().and_then(|t| t.lines.as_ref()) {
            any = true;
            expected += run.expected_events();
            printed += lines.matched;
        }
    }
    if !any || expected == 0 {
        return "-".into();
    }
    let missing = i128::from(expected) - i128::from(printed);
    format!(
        "{missing} ({:.3} %)",
        missing as f64 * 100.0 / expected as f64
    )
}

/// The agent's counts added over all runs, if every run reported them.
fn total_summary(config: &Config) -> Option<Summary> {
    let mut total = Summary::default();
    for run in &config.runs {
        total.add(run.tracer.as_ref()?.summary.as_ref()?);
    }
    (!config.runs.is_empty()).then_some(total)
}

fn summed(config: &Config, f: impl Fn(&Summary) -> u64) -> String {
    total_summary(config).map_or("-".into(), |s| f(&s).to_string())
}

/// Total of a CPU time `f` takes from each traced run (where it has one) and its share of one
/// core over the load's duration, or `-`.
fn cpu(config: &Config, seconds: u32, f: impl Fn(&TracerRun) -> Option<Duration>) -> String {
    let times: Vec<Duration> = config
        .runs
        .iter()
        .filter_map(|r| f(r.tracer.as_ref()?))
        .collect();
    if times.is_empty() {
        return "-".into();
    }
    let total: f64 = times.iter().map(Duration::as_secs_f64).sum();
    let wall = f64::from(seconds) * times.len() as f64;
    format!("{total:.2} ({:.0} % of a core)", total * 100.0 / wall)
}

/// The tracer's CPU time under load over its runs divided by the connections the load made in
/// them, or `-`.
fn cpu_per_connection(config: &Config) -> String {
    let (mut cpu, mut connections) = (Duration::ZERO, 0u64);
    for run in &config.runs {
        if let Some(tracer) = &run.tracer {
            cpu += tracer.cpu_under_load;
            connections += run.load.connections;
        }
    }
    if connections == 0 {
        return "-".into();
    }
    format!("{:.2}", cpu.as_secs_f64() * 1e6 / connections as f64)
}

/// For each tracer that prints text, the transitions printed more or fewer times than expected
/// (printed minus expected, over all its runs), one line per tracer; empty if every count is
/// exact.
pub fn transition_deviations(configs: &[Config]) -> String {
    let mut out = String::new();
    for config in configs {
        let mut deviations: BTreeMap<&str, i128> = BTreeMap::new();
        let mut closing: BTreeMap<&str, u64> = BTreeMap::new();
        let mut traced = false;
        for run in &config.runs {
            let Some(tracer) = &run.tracer else { continue };
            let Some(lines) = &tracer.lines else { continue };
            if tracer.unit == LineUnit::Sessions {
                continue;
            }
            traced = true;
            for (state, n) in &tracer.closing {
                *closing.entry(state).or_default() += n;
            }
            let connections = i128::from(run.load.connections);
            for name in CONNECTION_TRANSITIONS {
                *deviations.entry(name).or_default() -= connections;
            }
            for name in LISTENER_TRANSITIONS {
                *deviations.entry(name).or_default() -= 1;
            }
            for (name, count) in &lines.transitions {
                *deviations.entry(name).or_default() += i128::from(*count);
            }
        }
        let off: Vec<String> = deviations
            .iter()
            .filter(|(_, n)| **n != 0)
            .map(|(name, n)| format!("{name} {n:+}"))
            .collect();
        if traced && !off.is_empty() {
            out.push_str(&format!(
                "{}: printed minus expected, by transition: {}",
                config.name,
                off.join(", ")
            ));
            if !closing.is_empty() {
                let states: Vec<String> = closing
                    .iter()
                    .map(|(state, n)| format!("{state} {n}"))
                    .collect();
                out.push_str(&format!(
                    " (sockets still closing at stop: {})",
                    states.join(", ")
                ));
            }
            out.push('\n');
        }
    }
    out
}

/// Lays the rows out in aligned columns.
pub fn render(rows: &[(String, Vec<String>)]) -> String {
    let label_width = rows
        .iter()
        .map(|(label, _)| label.chars().count())
        .max()
        .unwrap_or(0);
    let columns = rows.iter().map(|(_, cells)| cells.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|(_, cells)| cells.get(i))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (label, cells) in rows {
        out.push_str(&format!("{label:<label_width$}"));
        for (cell, width) in cells.iter().zip(&widths) {
            out.push_str(&format!("  {cell:>width$}"));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::summary::OtlpSummary;

    #[test]
    fn legend_states_the_constants() {
        let expected =
            format!("{EVENTS_PER_CONNECTION} per connection + {LISTENER_EVENTS} for the listener");
        assert!(LEGEND.contains(&expected), "{LEGEND}");
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(Vec::new()), 0.0);
    }

    fn load(rate: f64) -> LoadResult {
        LoadResult {
            connections: 100,
            failed: 0,
            seconds: 1.0,
            rate,
        }
    }

    #[test]
    fn a_tracer_of_sessions_expects_a_line_per_end_and_none_for_the_listener() {
        let run = |unit| Run {
            load: load(1.0),
            tracer: Some(TracerRun {
                cpu: Duration::ZERO,
                cpu_under_load: Duration::ZERO,
                exit: "exit 0".into(),
                stopping: Duration::ZERO,
                lines: None,
                unit,
                summary: None,
                closing: BTreeMap::new(),
                otlp: None,
            }),
        };
        assert_eq!(run(LineUnit::Transitions).expected_events(), 100 * 10 + 2);
        assert_eq!(run(LineUnit::Sessions).expected_events(), 100 * 2);
    }

    #[test]
    fn round_ratios_pair_each_run_with_the_baseline_of_its_round() {
        let config = |rates: &[f64]| Config {
            name: "x".into(),
            runs: rates
                .iter()
                .map(|&rate| Run {
                    load: load(rate),
                    tracer: None,
                })
                .collect(),
        };
        // The machine ran at half speed in round 2: the tracer's median run (600, round 3) and
        // the baseline's (900, also round 3) happen to come from the one round where the
        // tracer did worse; the rounds' own ratios are 0.9, 0.9 and 0.667.
        let baseline = config(&[1000.0, 500.0, 900.0]);
        let tracer = config(&[900.0, 450.0, 600.0]);
        assert!((tracer.median_rate() / baseline.median_rate() - 0.667).abs() < 1e-3);
        let ratio = tracer.median_round_ratio(&baseline).expect("three rounds");
        assert!((ratio - 0.9).abs() < 1e-9, "{ratio}");
        assert_eq!(tracer.median_round_ratio(&config(&[])), None);
        assert_eq!(tracer.median_round_ratio(&config(&[0.0])), None);
    }

    #[test]
    fn table_shows_ratio_missing_events_and_exports() {
        let configs = [
            Config {
                name: "no tracer".into(),
                runs: vec![Run {
                    load: load(1000.0),
                    tracer: None,
                }],
            },
            Config {
                name: "tcpstates".into(),
                runs: vec![Run {
                    load: load(800.0),
                    tracer: Some(TracerRun {
                        cpu: Duration::from_millis(500),
                        cpu_under_load: Duration::from_millis(400),
                        exit: "exit 0".into(),
                        stopping: Duration::from_millis(100),
                        lines: Some(LineCounts {
                            total: 1100,
                            matched: 1001,
                            transitions: CONNECTION_TRANSITIONS
                                .iter()
                                .map(|name| match *name {
                                    "LAST_ACK->CLOSE" => (name.to_string(), 99),
                                    _ => (name.to_string(), 100),
                                })
                                .chain(LISTENER_TRANSITIONS.map(|name| (name.to_string(), 1)))
                                .collect(),
                        }),
                        unit: LineUnit::Transitions,
                        closing: BTreeMap::from([("LAST-ACK".to_string(), 1)]),
                        summary: Some(Summary {
                            written: 1099,
                            lost: 1,
                            ring_full: 1,
                            ..Summary::default()
                        }),
                        otlp: None,
                    }),
                }],
            },
            Config {
                name: "tcpstates --otlp".into(),
                runs: vec![Run {
                    load: load(900.0),
                    tracer: Some(TracerRun {
                        cpu: Duration::from_millis(250),
                        cpu_under_load: Duration::from_millis(200),
                        exit: "exit 0".into(),
                        stopping: Duration::from_millis(1500),
                        lines: None,
                        unit: LineUnit::Transitions,
                        closing: BTreeMap::new(),
                        summary: Some(Summary {
                            written: 1010,
                            ..Summary::default()
                        }),
                        otlp: Some(OtlpRun {
                            summary: Some(OtlpSummary {
                                sessions: 203,
                                spans: 1012,
                                dropped: 4,
                                failed: 0,
                                evicted: 1,
                            }),
                            receiver_cpu: Duration::from_millis(100),
                        }),
                    }),
                }],
            },
        ];
        assert_eq!(
            transition_deviations(&configs),
            "tcpstates: printed minus expected, by transition: LAST_ACK->CLOSE -1 \
             (sockets still closing at stop: LAST-ACK 1)\n"
        );
        let table = table(&configs, 1);
        let rows: Vec<String> = table
            .lines()
            .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        for expected in [
            "ratio to no tracer 1.000 0.800 0.900",
            "median of round ratios 1.000 0.800 0.900",
            "events expected - 1002 -",
            "missing - 1 (0.100 %) -",
            "lost - 1 0",
            "sessions expected - - 201",
            "sessions exported (all host) - - 203",
            "exported minus expected - - +2",
            "spans expected - - 1002",
            "spans/s over the load - - 1012",
            "spans dropped / failed / sessions evicted - - 4 / 0 / 1",
            "receiver CPU time (s) - - 0.10 (10 % of a core)",
            "tracer CPU time (s) - 0.50 (50 % of a core) 0.25 (25 % of a core)",
            "SIGINT to exit (s, slowest) - 0.1 1.5",
            // The CPU under load: 400 ms and 200 ms over 100 connections, 1012 spans.
            "tracer CPU per connection (µs) - 4000.00 2000.00",
            "tracer CPU per exported span (µs) - - 197.63",
        ] {
            assert!(
                rows.iter().any(|row| row == expected),
                "{expected}\n{table}"
            );
        }
    }
}
