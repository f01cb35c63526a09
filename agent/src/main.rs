//! The `tcpstates` command: parse flags, run, report, map the outcome to an exit code.
//! Usage errors exit with 2 (clap), failures with 1.

use std::{ffi::OsString, path::Path, process::ExitCode};

use clap::Parser as _;
use tcpstates::{cli::Cli, config::Config, sink::SessionSinkAccount, tracer::Summary};

/// jemalloc instead of glibc's allocator: with `--otlp` every span is built on the event thread
/// and freed on the export thread, which glibc's arenas handle poorly.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let config = match Config::new(cli(), |name| std::env::var(name).ok()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    match tcpstates::run(config) {
        Ok(summary) => {
            report(&summary);
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("tcpstates: {}", tcpstates::describe(&err));
            ExitCode::FAILURE
        }
    }
}

/// The command line; invoked as `tcplife` (a link to this binary), `--life` is implied.
fn cli() -> Cli {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    let invoked_as = args
        .first()
        .and_then(|arg0| Path::new(arg0).file_name())
        .map(OsString::from);
    if invoked_as.is_some_and(|name| name == "tcplife") {
        args.insert(1, "--life".into());
    }
    Cli::parse_from(args)
}

/// The final account on standard error: every event written, lost or skipped.
fn report(summary: &Summary) {
    eprintln!(
        "tcpstates: {} events written, {}",
        summary.written, summary.counts
    );
    let gaps = &summary.gaps;
    if gaps.count() > 0 {
        // A counted loss leaves a gap too: only what is beyond it is the kernel's silent loss.
        let silent = match summary.counts.lost() {
            0 => "the kernel ran no program for them".to_owned(),
            lost if lost >= gaps.missing() => "the events lost above may account for them".into(),
            lost => format!(
                "the events lost above account for up to {lost} of them, the kernel ran no \
                 program for the other {}",
                gaps.uncounted(lost)
            ),
        };
        eprintln!(
            "tcpstates: {} transitions missing in {} gaps (inferred: {} chain breaks, {} \
             addresses reused before CLOSE, {} starts not seen): {silent}",
            gaps.missing(),
            gaps.count(),
            gaps.chain_breaks,
            gaps.reused,
            gaps.unseen_starts
        );
    }
    if gaps.forgotten > 0 {
        eprintln!(
            "tcpstates: {} open sockets no longer checked for missing transitions (gap tracker \
             full)",
            gaps.forgotten
        );
    }
    if summary.counts.recovered > 0 {
        eprintln!(
            "tcpstates: {} events the kernel skipped for the main program (BPF recursion) \
             were recovered by the backstop program",
            summary.counts.recovered
        );
    }
    if summary.counts.no_storage > 0 {
        eprintln!(
            "tcpstates: {} events of sockets the kernel could not give storage were written \
             without duration or owner",
            summary.counts.no_storage
        );
    }
    if summary.counts.unknown_family > 0 {
        eprintln!(
            "tcpstates: {} events of sockets of unknown address family skipped",
            summary.counts.unknown_family
        );
    }
    if summary.undecodable > 0 {
        eprintln!(
            "tcpstates: {} kernel records could not be decoded",
            summary.undecodable
        );
    }
    if let Some(sessions) = &summary.sessions {
        for account in &sessions.sinks {
            match account {
                SessionSinkAccount::Otlp { spans, sampling } => {
                    eprintln!(
                        "tcpstates: OTLP: {} sessions exported in {} spans, {} spans dropped (queue \
                     full), {} failed, {} rejected, {} possible duplicates, {} sessions evicted",
                        spans.exported_sessions,
                        spans.exported,
                        spans.dropped,
                        spans.failed,
                        spans.rejected,
                        spans.possible_duplicates,
                        sessions.evictions
                    );
                    if sampling.by_rule + sampling.sampled_out + sampling.rate_limited > 0 {
                        eprintln!(
                            "tcpstates: OTLP sampling: {} sessions kept by the sampler, {} by a \
                             keep rule, {} sampled out, {} refused by the rate limit",
                            sampling.by_sampler,
                            sampling.by_rule,
                            sampling.sampled_out,
                            sampling.rate_limited
                        );
                    }
                }
                SessionSinkAccount::Life { printed } => {
                    eprintln!("tcpstates: {printed} sessions printed");
                }
                SessionSinkAccount::Metrics(metrics) => eprintln!(
                    "tcpstates: OTLP metrics: {} exports, {} failed",
                    metrics.exported, metrics.failed
                ),
            }
        }
    }
    for report in &summary.sink_reports {
        eprintln!("tcpstates: {report}");
    }
}
