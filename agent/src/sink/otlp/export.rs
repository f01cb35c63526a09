//! The export side: a bounded queue the event path pushes spans into without ever waiting,
//! and a thread of its own that batches them and sends them with the OTLP exporter,
//! retrying while the collector is unreachable. Every span is accounted for: exported,
//! dropped because the queue was full, or given up on.

use std::{
    cell::OnceCell,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use opentelemetry::trace::SpanId;
use opentelemetry_otlp::{
    SpanExporter, WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _,
};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    trace::{SpanData, SpanExporter as _},
};
use tokio::{
    sync::mpsc::{self, error::TrySendError},
    task::JoinSet,
};

use super::{
    settings::{ExportSettings, Protocol},
    tls,
};

/// Spans sent in one export request at most (about 0.5 MiB of protobuf).
const MAX_BATCH: usize = 2048;
/// Export requests out at once while the collector answers: collectors answer a request
/// only once it has gone through their pipeline, so one at a time caps the span rate at
/// batch size / pipeline latency.
const MAX_IN_FLIGHT: usize = 32;
/// How long a partial batch waits for more spans.
const BATCH_DELAY: Duration = Duration::from_millis(200);
/// First and longest pause between attempts while the collector is unreachable.
const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// After shutdown, how long exporting what is queued may take (retries included).
const FLUSH_DEADLINE: Duration = Duration::from_secs(10);

/// The exporter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The OTLP exporter refused its configuration.
    #[error("OTLP exporter: {0}")]
    Build(#[from] opentelemetry_otlp::ExporterBuildError),
    /// The HTTP client for the TLS files could not be built.
    #[error("OTLP/HTTP client: {0}")]
    HttpClient(#[from] reqwest::Error),
    /// The export thread or its runtime could not start.
    #[error("starting the OTLP export thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Counts of what happened to spans, shared with the export thread.
#[derive(Debug, Default)]
struct Stats {
    queued: AtomicU64,
    dropped: AtomicU64,
    exported: AtomicU64,
    exported_sessions: AtomicU64,
    failed: AtomicU64,
    failed_requests: AtomicU64,
}

/// A snapshot of the export counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportCounts {
    /// Spans accepted into the queue.
    pub queued: u64,
    /// Spans dropped because the queue was full.
    pub dropped: u64,
    /// Spans the collector accepted.
    pub exported: u64,
    /// Of those, root spans: whole sessions.
    pub exported_sessions: u64,
    /// Spans given up on after failed requests.
    pub failed: u64,
    /// Export requests that failed (and were retried, or whose spans were given up).
    pub failed_requests: u64,
}

impl Stats {
    fn snapshot(&self) -> ExportCounts {
        ExportCounts {
            queued: self.queued.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            exported: self.exported.load(Ordering::Relaxed),
            exported_sessions: self.exported_sessions.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            failed_requests: self.failed_requests.load(Ordering::Relaxed),
        }
    }
}

/// The event path's handle on the export thread.
pub struct SpanExport {
    queue: mpsc::Sender<SpanData>,
    stats: Arc<Stats>,
    thread: thread::JoinHandle<()>,
}

impl SpanExport {
    /// Starts the export thread; at most `capacity` spans wait for it.
    pub fn start(
        settings: &ExportSettings,
        resource: Resource,
        capacity: usize,
    ) -> Result<Self, ExportError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ExportError::Thread)?;
        let mut exporter = {
            // The gRPC client needs the runtime it will run on while it is built.
            let _entered = runtime.enter();
            build_exporter(settings)?
        };
        exporter.set_resource(&resource);
        let (queue, receiver) = mpsc::channel(capacity);
        let stats = Arc::new(Stats::default());
        let thread_stats = Arc::clone(&stats);
        let thread = thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || runtime.block_on(export_loop(exporter, receiver, &thread_stats)))
            .map_err(ExportError::Thread)?;
        Ok(Self {
            queue,
            stats,
            thread,
        })
    }

    /// Queues a span, or counts it dropped when the queue is full. Never waits.
    pub fn push(&self, span: SpanData) {
        match self.queue.try_send(span) {
            Ok(()) => self.stats.queued.fetch_add(1, Ordering::Relaxed),
            Err(TrySendError::Full(_) | TrySendError::Closed(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed)
            }
        };
    }

    /// The counts so far.
    pub fn counts(&self) -> ExportCounts {
        self.stats.snapshot()
    }

    /// Closes the queue and waits until everything queued is exported or given up on (at most
    /// about 10 s, `FLUSH_DEADLINE`, while the collector is unreachable).
    pub fn finish(self) -> ExportCounts {
        drop(self.queue);
        // A panicking export thread has nothing more to export; its counts stand.
        let _ = self.thread.join();
        self.stats.snapshot()
    }
}

fn build_exporter(settings: &ExportSettings) -> Result<SpanExporter, ExportError> {
    tls::install_crypto_provider();
    let exporter = match settings.protocol {
        Protocol::Grpc => {
            let mut builder = SpanExporter::builder()
                .with_tonic()
                .with_timeout(settings.timeout);
            if settings.secure {
                builder = builder.with_tls_config(tls::grpc_config(&settings.tls));
            }
            match &settings.endpoint {
                Some(endpoint) => builder.with_endpoint(endpoint).build(),
                None => builder.build(),
            }
        }
        Protocol::HttpProtobuf | Protocol::HttpJson => {
            let protocol = if settings.protocol == Protocol::HttpJson {
                opentelemetry_otlp::Protocol::HttpJson
            } else {
                opentelemetry_otlp::Protocol::HttpBinary
            };
            let mut builder = SpanExporter::builder()
                .with_http()
                .with_protocol(protocol)
                .with_timeout(settings.timeout);
            if !settings.tls.is_empty() {
                builder =
                    builder.with_http_client(tls::http_client(&settings.tls, settings.timeout)?);
            }
            match &settings.endpoint {
                Some(endpoint) => builder.with_endpoint(endpoint).build(),
                None => builder.build(),
            }
        }
    };
    Ok(exporter?)
}

/// A batch of spans and what it holds.
struct Batch {
    spans: Vec<SpanData>,
    sessions: u64,
}

impl Batch {
    fn new(spans: Vec<SpanData>) -> Self {
        let sessions = spans
            .iter()
            .filter(|span| span.parent_span_id == SpanId::INVALID)
            .count() as u64;
        Self { spans, sessions }
    }
}

/// The export side's state: requests in flight, and whether the collector is answering.
struct Exporter<'a> {
    exporter: Arc<SpanExporter>,
    stats: &'a Stats,
    in_flight: JoinSet<(u64, u64, OTelSdkResult)>,
    /// The last request succeeded: batches go out concurrently, without a copy.
    healthy: bool,
    /// Failures in a row, for the retry pause.
    failures: u32,
}

impl Exporter<'_> {
    /// Sends `batch` without waiting for the answer, once fewer than [`MAX_IN_FLIGHT`]
    /// requests are out.
    async fn send(&mut self, batch: Batch) {
        while self.in_flight.len() >= MAX_IN_FLIGHT {
            self.settle_one().await;
        }
        let exporter = Arc::clone(&self.exporter);
        let (spans, sessions) = (batch.spans.len() as u64, batch.sessions);
        self.in_flight
            .spawn(async move { (spans, sessions, exporter.export(batch.spans).await) });
    }

    /// Sends `batch` and waits for the answer, retrying with growing pauses until it is
    /// accepted or `give_up` says to stop; returns the batch if it was not accepted.
    async fn send_until_accepted(
        &mut self,
        batch: Batch,
        give_up: impl Fn() -> bool,
    ) -> Option<Batch> {
        self.settle_all().await;
        loop {
            let result = self.exporter.export(batch.spans.clone()).await;
            let accepted = result.is_ok();
            self.account(batch.spans.len() as u64, batch.sessions, result, false);
            if accepted {
                return None;
            }
            if give_up() {
                return Some(batch);
            }
            tokio::time::sleep(retry_delay(self.failures)).await;
        }
    }

    /// Waits for one request in flight and accounts for it.
    async fn settle_one(&mut self) {
        if let Some(Ok((spans, sessions, result))) = self.in_flight.join_next().await {
            self.account(spans, sessions, result, true);
        }
    }

    /// Waits for every request in flight.
    async fn settle_all(&mut self) {
        while !self.in_flight.is_empty() {
            self.settle_one().await;
        }
    }

    /// Counts a request's outcome; the spans of a failed request that kept no copy are lost.
    fn account(
        &mut self,
        spans: u64,
        sessions: u64,
        result: OTelSdkResult,
        sent_without_copy: bool,
    ) {
        match result {
            Ok(()) => {
                if self.failures > 0 {
                    eprintln!("tcpstates: OTLP export recovered");
                }
                self.healthy = true;
                self.failures = 0;
                self.stats.exported.fetch_add(spans, Ordering::Relaxed);
                self.stats
                    .exported_sessions
                    .fetch_add(sessions, Ordering::Relaxed);
            }
            Err(err) => {
                self.stats.failed_requests.fetch_add(1, Ordering::Relaxed);
                if self.failures == 0 {
                    eprintln!("tcpstates: OTLP export failing, will retry: {err}");
                }
                self.failures += 1;
                self.healthy = false;
                if sent_without_copy {
                    eprintln!("tcpstates: {spans} spans of a failed request are lost");
                    self.stats.failed.fetch_add(spans, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Batches and exports until the queue is closed and empty.
///
/// While the collector answers, up to [`MAX_IN_FLIGHT`] requests are out at once and a batch
/// is handed over without a copy. Until the first success, and after a failure, batches go
/// one at a time with a copy kept so they can be retried, with growing pauses. So a collector
/// that is down at start loses nothing, and one that goes away loses at most the requests in
/// flight when it went away; every such loss is counted.
async fn export_loop(exporter: SpanExporter, mut queue: mpsc::Receiver<SpanData>, stats: &Stats) {
    let mut export = Exporter {
        exporter: Arc::new(exporter),
        stats,
        in_flight: JoinSet::new(),
        healthy: false,
        failures: 0,
    };
    let closed_at: OnceCell<Instant> = OnceCell::new();
    let past_deadline = |queue: &mpsc::Receiver<SpanData>| {
        queue.is_closed() && closed_at.get_or_init(Instant::now).elapsed() >= FLUSH_DEADLINE
    };
    while let Some(batch) = next_batch(&mut queue).await {
        if past_deadline(&queue) {
            let waiting = batch.spans.len() as u64 + queue.len() as u64;
            eprintln!(
                "tcpstates: OTLP export still behind {FLUSH_DEADLINE:?} after exit began, \
                 {waiting} spans not exported"
            );
            stats.failed.fetch_add(waiting, Ordering::Relaxed);
            break;
        }
        if export.healthy {
            export.send(batch).await;
            continue;
        }
        if let Some(unsent) = export
            .send_until_accepted(batch, || past_deadline(&queue))
            .await
        {
            let waiting = unsent.spans.len() as u64 + queue.len() as u64;
            eprintln!(
                "tcpstates: OTLP collector unreachable {FLUSH_DEADLINE:?} after exit began, \
                 {waiting} spans not exported"
            );
            stats.failed.fetch_add(waiting, Ordering::Relaxed);
            break;
        }
    }
    export.settle_all().await;
}

/// Up to [`MAX_BATCH`] spans: what is queued, plus what arrives within [`BATCH_DELAY`] when that
/// is fewer. `None` once the queue is closed and empty.
async fn next_batch(queue: &mut mpsc::Receiver<SpanData>) -> Option<Batch> {
    let mut spans = Vec::with_capacity(MAX_BATCH);
    if queue.recv_many(&mut spans, MAX_BATCH).await == 0 {
        return None;
    }
    let deadline = tokio::time::Instant::now() + BATCH_DELAY;
    while spans.len() < MAX_BATCH {
        let room = MAX_BATCH - spans.len();
        match tokio::time::timeout_at(deadline, queue.recv_many(&mut spans, room)).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    Some(Batch::new(spans))
}

fn retry_delay(failures: u32) -> Duration {
    (RETRY_MIN * 2u32.saturating_pow(failures.saturating_sub(1).min(8))).min(RETRY_MAX)
}
