//! The table rows and progress of the `tcpstates --otlp` configuration: sessions and spans
//! expected against those the agent says it exported, the export rate, and the receiver's CPU.

use super::{Config, OtlpRun, Run, TracerRun, cpu};
use crate::bench::summary::OtlpSummary;

/// Sessions per load-generator connection: the client's socket and the accepted one.
const SESSIONS_PER_CONNECTION: u64 = 2;
/// Sessions of the load generator's listener per run.
const LISTENER_SESSIONS: u64 = 1;
/// Spans per load-generator connection: per side a root and one child per state the socket was
/// in (client SYN_SENT, ESTABLISHED, CLOSE_WAIT, LAST_ACK; server SYN_RECV, ESTABLISHED,
/// FIN_WAIT1, FIN_WAIT2).
const SPANS_PER_CONNECTION: u64 = 10;
/// Spans of the listener per run: its root and its LISTEN child.
const LISTENER_SPANS: u64 = 2;

/// What the OTLP rows mean.
pub const LEGEND: &str = "OTLP rows (tcpstates --otlp ENDPOINT -q to a local rotel, blackhole \
    exporter): sessions expected = 2 per connection + 1 for the listener; spans expected = a root \
    and a child per state, 10 per connection + 2 for the listener; exported, dropped, failed and \
    evicted = the agent's OTLP exit summary, which counts every session on the host (other \
    traffic, the agent's own OTLP connection), so exported may exceed expected by a few; spans/s = \
    spans exported / the load's seconds (the spans are made during the load; the export may end \
    up to the drain pause and the exit flush later); receiver CPU time = rotel's user + system \
    time (/proc/PID/stat) from the agent's start to its exit; CPU per exported span = the \
    tracer's CPU time under load (kernel events, sessions, spans, export; start-up and exit left \
    out) / spans exported";

/// Whether `config` is tcpstates exporting over OTLP.
pub fn exports(config: &Config) -> bool {
    config
        .runs
        .iter()
        .any(|r| r.tracer.as_ref().is_some_and(|t| t.otlp.is_some()))
}

/// The progress-line tail of an exporting run.
pub fn progress(run: &Run, export: &OtlpRun) -> String {
    let mut line = format!(", receiver cpu {:.2} s", export.receiver_cpu.as_secs_f64());
    match &export.summary {
        Some(s) => line.push_str(&format!(
            ", OTLP: {} of {} sessions in {} spans, {} dropped, {} failed, {} evicted",
            s.sessions,
            expected_sessions(run),
            s.spans,
            s.dropped,
            s.failed,
            s.evicted
        )),
        None => line.push_str(", no OTLP summary"),
    }
    line
}

/// The OTLP rows of the table, `-` for configurations that do not export.
pub fn rows(configs: &[Config], seconds: u32) -> Vec<(String, Vec<String>)> {
    let per_config = |f: &dyn Fn(&Config) -> String| {
        configs
            .iter()
            .map(|c| if exports(c) { f(c) } else { "-".into() })
            .collect::<Vec<_>>()
    };
    let summed = |f: fn(&OtlpSummary) -> u64| {
        per_config(&|c| total(c).map_or("-".into(), |s| f(&s).to_string()))
    };
    vec![
        (
            "sessions expected".into(),
            per_config(&|c| sum(c, expected_sessions).to_string()),
        ),
        (
            "sessions exported (all host)".into(),
            summed(|s| s.sessions),
        ),
        (
            "  exported minus expected".into(),
            per_config(&|c| {
                total(c).map_or("-".into(), |s| {
                    format!(
                        "{:+}",
                        i128::from(s.sessions) - i128::from(sum(c, expected_sessions))
                    )
                })
            }),
        ),
        (
            "spans expected".into(),
            per_config(&|c| sum(c, expected_spans).to_string()),
        ),
        ("spans exported (all host)".into(), summed(|s| s.spans)),
        (
            "spans/s over the load".into(),
            per_config(&|c| {
                let load: f64 = exporting(c).map(|(r, _)| r.load.seconds).sum();
                match total(c) {
                    Some(s) if load > 0.0 => format!("{:.0}", s.spans as f64 / load),
                    _ => "-".into(),
                }
            }),
        ),
        (
            "spans dropped / failed / sessions evicted".into(),
            per_config(&|c| {
                total(c).map_or("-".into(), |s| {
                    format!("{} / {} / {}", s.dropped, s.failed, s.evicted)
                })
            }),
        ),
        (
            "receiver CPU time (s)".into(),
            per_config(&|c| cpu(c, seconds, |t| Some(t.otlp.as_ref()?.receiver_cpu))),
        ),
        (
            "tracer CPU per exported span (µs)".into(),
            per_config(&cpu_per_span),
        ),
    ]
}

/// The tracer's CPU time under load over its exporting runs divided by the spans they exported, or `-`.
fn cpu_per_span(config: &Config) -> String {
    let cpu: f64 = config
        .runs
        .iter()
        .filter_map(|r| Some(r.tracer.as_ref()?.cpu_under_load.as_secs_f64()))
        .sum();
    match total(config) {
        Some(s) if s.spans > 0 => format!("{:.2}", cpu * 1e6 / s.spans as f64),
        _ => "-".into(),
    }
}

/// Sessions of the bench's connections in `run`.
fn expected_sessions(run: &Run) -> u64 {
    SESSIONS_PER_CONNECTION * run.load.connections + LISTENER_SESSIONS
}

/// Spans of the bench's connections in `run`.
fn expected_spans(run: &Run) -> u64 {
    SPANS_PER_CONNECTION * run.load.connections + LISTENER_SPANS
}

/// The runs of `config` that exported, with their export side.
fn exporting(config: &Config) -> impl Iterator<Item = (&Run, &OtlpRun)> {
    config.runs.iter().filter_map(|r| {
        let tracer: &TracerRun = r.tracer.as_ref()?;
        Some((r, tracer.otlp.as_ref()?))
    })
}

/// Sum of `f` over the exporting runs of `config`.
fn sum(config: &Config, f: fn(&Run) -> u64) -> u64 {
    exporting(config).map(|(r, _)| f(r)).sum()
}

/// The OTLP summaries of `config`'s exporting runs added up, if every one printed its summary.
fn total(config: &Config) -> Option<OtlpSummary> {
    let mut total = OtlpSummary::default();
    for (_, export) in exporting(config) {
        total.add(export.summary.as_ref()?);
    }
    Some(total)
}
