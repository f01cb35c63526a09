//! tcpstates: trace TCP session state changes with durations.
//!
//! Data flows one way: the kernel program (`agent-ebpf`) → the ring buffer → [`tracer`]
//! (decoding with `agent_common::decode`) → the per-event [`sink`]s, and the session stage
//! ([`session::stage`]: identity, timing, enrichment) → the per-session sinks. [`run`] wires
//! them from a [`config::Config`].
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod bounded;
pub mod btf;
pub mod cgroup;
pub mod cli;
pub mod clock;
pub mod config;
pub mod counters;
pub mod details;
pub mod existing;
pub mod failure;
pub mod gaps;
pub mod privileges;
pub mod probe;
pub mod process_info;
pub mod session;
pub mod sink;
pub mod tracer;

use std::{
    io::{self, BufWriter},
    num::NonZeroUsize,
};

use agent_common::correlation::BootId;

use crate::{
    clock::WallClock,
    config::Config,
    details::DetailsCache,
    gaps::GapTracker,
    privileges::PrivilegeError,
    probe::ProbeError,
    session::{SessionTable, stage::SessionStage},
    sink::{
        SessionSink, Sink,
        journal::{JournalSink, JournalUnavailable},
        metrics::{MetricsSink, export::MetricsExport},
        otlp::{
            OtlpSink,
            export::ExportError,
            sampling::{RateLimit, TraceSampling},
            settings,
        },
    },
    tracer::{Summary, TraceError},
};

/// Capacity of the standard-output buffer; it is flushed after every drain of the ring.
const OUTPUT_BUFFER: usize = 256 << 10;
/// Most live sockets the gap tracker checks (about 64 bytes each).
const GAP_TRACKER_SOCKETS: NonZeroUsize = NonZeroUsize::new(1 << 16).expect("non-zero");

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not privileged enough.
    #[error(transparent)]
    Privileges(#[from] PrivilegeError),
    /// `-Y` without a journal.
    #[error(transparent)]
    Journal(#[from] JournalUnavailable),
    /// The kernel program could not be loaded or attached.
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// The clocks could not be read.
    #[error("reading the clocks: {0}")]
    Clock(#[source] nix::Error),
    /// The host's boot id, which trace ids derive from, could not be read (a /proc mounted
    /// with `subset=pid`, as systemd's `ProcSubset=pid` mounts it, hides it).
    #[error(
        "reading the boot id ({path}), which --otlp needs (a /proc mounted with subset=pid, \
         e.g. by systemd's ProcSubset=pid, hides it): {0}",
        path = BootId::PATH
    )]
    BootId(#[source] io::Error),
    /// The OTLP exporter could not start.
    #[error(transparent)]
    Export(#[from] ExportError),
    /// The async runtime could not start.
    #[error("starting the event loop: {0}")]
    Runtime(#[source] io::Error),
    /// Tracing stopped with an error.
    #[error(transparent)]
    Trace(#[from] TraceError),
}

/// The error and each of its causes not already spelled out in it, on one line.
pub fn describe(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// Traces TCP state changes as `config` says until SIGINT or SIGTERM.
pub fn run(config: Config) -> Result<Summary, Error> {
    privileges::check()?;
    let journal = config.journal.then(JournalSink::connect).transpose()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(Error::Runtime)?;
    let mut probe = probe::attach(&config)?;
    let clock = WallClock::now().map_err(Error::Clock)?;
    let stdout = BufWriter::with_capacity(OUTPUT_BUFFER, io::stdout().lock());
    let mut session_sinks: Vec<Box<dyn SessionSink>> = Vec::new();
    if let Some(otlp) = &config.otlp {
        let sampling = TraceSampling::new(
            otlp.sampler,
            otlp.keep.clone(),
            config.max_sessions,
            otlp.max_traces_per_second.map(RateLimit::new),
        );
        session_sinks.push(Box::new(OtlpSink::start(
            &otlp.export,
            sampling,
            clock,
            otlp.queue_capacity,
        )?));
    }
    // The per-event output, or with --life the session lines, on standard output.
    let (event_output, life_output) = if config.life {
        (None, sink::life_output(&config, clock, stdout))
    } else {
        (sink::output(&config, clock, stdout), None)
    };
    session_sinks.extend(life_output);
    if let Some(metrics) = &config.metrics {
        let host_name = nix::unistd::gethostname()
            .ok()
            .and_then(|name| name.into_string().ok());
        let resource = settings::resource(host_name, std::env::var("OTEL_SERVICE_NAME").ok());
        let export = MetricsExport::start(&metrics.export, metrics.temporality, resource)?;
        // Last: it finishes after the others, whose accounts its health metrics report.
        session_sinks.push(Box::new(MetricsSink::new(export, metrics.peer_address)));
    }
    let mut sessions = if session_sinks.is_empty() {
        None
    } else {
        // Trace ids derive from the boot id; only traces need them.
        let boot_id = match &config.otlp {
            Some(_) => BootId::read().map_err(Error::BootId)?,
            None => BootId([0; 16]),
        };
        let stage = SessionStage::new(
            SessionTable::new(config.max_sessions, boot_id),
            DetailsCache::new(config.max_sessions),
            session_sinks,
        );
        let trace_self = config.otlp.as_ref().is_some_and(|otlp| otlp.trace_self);
        Some(if trace_self {
            stage
        } else {
            stage.leaving_out(std::process::id())
        })
    };
    if let Some(stage) = &mut sessions {
        found_at_start(&config, &mut probe, stage);
    }
    let sinks: Vec<Box<dyn Sink>> = event_output
        .into_iter()
        .chain(journal.map(|journal| Box::new(journal) as Box<dyn Sink>))
        .collect();
    // A filter on ports, owner, namespace or cgroup can hide a socket's first transitions (an
    // active open's port is 0 at CLOSE -> SYN_SENT), which the gap tracker must then not count.
    let filtered = config.local_ports.is_some()
        || config.remote_ports.is_some()
        || config.owner_pid.is_some()
        || config.netns.is_some()
        || config.cgroup.is_some();
    let gaps = GapTracker::new(GAP_TRACKER_SOCKETS, !filtered);
    Ok(runtime.block_on(tracer::trace(probe, sinks, sessions, gaps))?)
}

/// Hands `stage` the sockets open before tracing started that the filters keep; a listing that
/// fails is said in one line, and those sockets are followed from their next transition.
fn found_at_start(config: &Config, probe: &mut probe::Probe, stage: &mut SessionStage) {
    match probe.existing_sockets() {
        Ok(sockets) => {
            // The sockets they accept from now on get their owner, as under tracing.
            if let Err(err) = probe.remember_listeners(&sockets) {
                eprintln!("tcpstates: the listeners open before the start are not known: {err}");
            }
            let mut cgroups = cgroup::CgroupPaths::new(config.max_sessions).ok();
            let kept: Vec<_> = sockets
                .into_iter()
                .filter(|socket| {
                    config.keeps(socket, |id| cgroups.as_mut()?.path(id).map(str::to_owned))
                })
                .collect();
            stage.found_at_start(&kept);
        }
        Err(err) => eprintln!(
            "tcpstates: the sockets open before the start could not be listed ({err}); each is \
             followed from its next transition"
        ),
    }
}
