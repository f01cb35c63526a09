//! The export side: a bounded queue the event path pushes spans into without ever waiting,
//! and a thread of its own that batches them and sends them with the OTLP exporter,
//! retrying while the collector is unreachable. Every span is accounted for: exported,
//! dropped because the queue was full, or given up on.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use opentelemetry::trace::SpanId;
use opentelemetry_otlp::{SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::{
    Resource,
    trace::{SpanData, SpanExporter as _},
};
use tokio::sync::mpsc::{self, error::TrySendError};

use super::settings::{ExportSettings, Protocol};

/// Spans sent in one export request at most (about 0.5 MiB of protobuf).
const MAX_BATCH: usize = 2048;
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
    /// about [`FLUSH_DEADLINE`] while the collector is unreachable).
    pub fn finish(self) -> ExportCounts {
        drop(self.queue);
        // A panicking export thread has nothing more to export; its counts stand.
        let _ = self.thread.join();
        self.stats.snapshot()
    }
}

fn build_exporter(settings: &ExportSettings) -> Result<SpanExporter, ExportError> {
    let exporter = match settings.protocol {
        Protocol::Grpc => {
            let builder = SpanExporter::builder().with_tonic();
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
            let builder = SpanExporter::builder().with_http().with_protocol(protocol);
            match &settings.endpoint {
                Some(endpoint) => builder.with_endpoint(endpoint).build(),
                None => builder.build(),
            }
        }
    };
    Ok(exporter?)
}

/// Batches and exports until the queue is closed and empty.
///
/// While exports succeed, a batch is handed over without a copy; after a failure (and until
/// the first success) a copy is kept so the batch can be retried, with growing pauses. So a
/// collector that is down at start or goes away loses at most the one batch in flight when
/// it went away, and that loss is counted.
async fn export_loop(exporter: SpanExporter, mut queue: mpsc::Receiver<SpanData>, stats: &Stats) {
    let mut healthy = false;
    let mut failing = false;
    let mut failures = 0u32;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut closed_at: Option<Instant> = None;
    loop {
        if queue.is_closed()
            && closed_at.get_or_insert_with(Instant::now).elapsed() >= FLUSH_DEADLINE
        {
            let waiting = batch.len() as u64 + queue.len() as u64;
            if waiting > 0 {
                eprintln!(
                    "tcpstates: OTLP export still behind after {FLUSH_DEADLINE:?}, {waiting} spans not exported"
                );
                stats.failed.fetch_add(waiting, Ordering::Relaxed);
            }
            return;
        }
        if batch.is_empty() {
            if queue.recv_many(&mut batch, MAX_BATCH).await == 0 {
                return;
            }
            let deadline = tokio::time::Instant::now() + BATCH_DELAY;
            while batch.len() < MAX_BATCH {
                let room = MAX_BATCH - batch.len();
                match tokio::time::timeout_at(deadline, queue.recv_many(&mut batch, room)).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
        let spans = batch.len() as u64;
        let sessions = batch
            .iter()
            .filter(|span| span.parent_span_id == SpanId::INVALID)
            .count() as u64;
        let attempt = if healthy {
            std::mem::take(&mut batch)
        } else {
            batch.clone()
        };
        match exporter.export(attempt).await {
            Ok(()) => {
                batch.clear();
                if failing {
                    eprintln!("tcpstates: OTLP export recovered");
                    failing = false;
                }
                healthy = true;
                failures = 0;
                stats.exported.fetch_add(spans, Ordering::Relaxed);
                stats
                    .exported_sessions
                    .fetch_add(sessions, Ordering::Relaxed);
            }
            Err(err) => {
                stats.failed_requests.fetch_add(1, Ordering::Relaxed);
                failures += 1;
                if !failing {
                    eprintln!("tcpstates: OTLP export failing, will retry: {err}");
                    failing = true;
                }
                if healthy {
                    eprintln!("tcpstates: {spans} spans of the failed request are lost");
                    stats.failed.fetch_add(spans, Ordering::Relaxed);
                    healthy = false;
                    continue;
                }
                tokio::time::sleep(retry_delay(failures)).await;
            }
        }
    }
}

fn retry_delay(failures: u32) -> Duration {
    (RETRY_MIN * 2u32.saturating_pow(failures.saturating_sub(1).min(8))).min(RETRY_MAX)
}
