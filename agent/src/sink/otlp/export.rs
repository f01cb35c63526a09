//! The export side: a bounded queue the event path pushes spans into without ever waiting,
//! and a thread of its own that batches them, encodes each batch's request once and sends it
//! ([`super::transport`]).
//!
//! Delivery is at least once: a request is kept until the collector acknowledges it,
//! counted in the queue's bound until then (new spans are dropped while the queue is full),
//! and after a failure the OTLP specification calls retryable it goes back to the head of the
//! queue to be sent again, as it is, after the pause the collector asked for (HTTP
//! `Retry-After`, gRPC `RetryInfo`) if any. A request that timed out may still have been
//! delivered, so its batch may arrive twice; such spans are counted as possible duplicates. A failure the
//! specification calls permanent (an HTTP 4xx other than 429, gRPC `INVALID_ARGUMENT`, …) drops
//! the batch at once, counted as rejected. After exit begins, what is left gets at most
//! [`FLUSH_DEADLINE`]. Every span is accounted for: exported, dropped because the queue was full,
//! rejected, or given up on (failed).

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest, common::v1::InstrumentationScope,
    resource::v1::Resource,
};
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use prost::Message as _;
use tokio::{
    sync::mpsc,
    task::{self, JoinSet},
    time::Instant,
};

use super::{
    settings::ExportSettings,
    transport::{Accepted, Body, Failure, Refusal, TraceTransport},
    wire::{self, EncodedSpan, SpanChunk},
};

/// Spans sent in one export request at most (about 170 KiB of protobuf), the SDK's default
/// (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`). A collector spends less per span on such requests than on
/// bigger ones: rotel took a quarter less CPU for the same spans than with 2,048 a request
/// (2026-12-02, 10,000 connections/s), the agent the same.
const MAX_BATCH: usize = 512;
/// Spans the event thread gathers before it hands them to the export thread, which it also
/// does at the end of every drain of the ring buffer. Handed over one at a time, each span
/// woke the export thread: a context switch per span, a quarter of the agent's CPU.
const CHUNK: usize = 256;
/// Room first made for a chunk's spans, in bytes: a full chunk is about 90 KiB, but most are a
/// drain's worth, far fewer spans.
const CHUNK_BYTES: usize = 16 * 1024;
/// Export requests out at once while the collector answers: collectors answer a request
/// only once it has gone through their pipeline, so one at a time caps the span rate at
/// batch size / pipeline latency.
const MAX_IN_FLIGHT: usize = 32;
/// How long a partial batch waits for more spans.
const BATCH_DELAY: Duration = Duration::from_millis(200);
/// First and longest pause before the next attempt while the collector is unreachable: a
/// collector that comes back gets a request within half a second (unless it asked for a longer
/// pause).
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_millis(500);
/// After shutdown, how long exporting what is queued may take (retries included); then
/// requests still out are abandoned.
pub const FLUSH_DEADLINE: Duration = Duration::from_secs(10);
/// How long the runtime may take to stop once the export is over (a name lookup of a
/// request abandoned at the deadline runs on a blocking thread).
const RUNTIME_SHUTDOWN: Duration = Duration::from_millis(200);

/// The exporter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The OTLP exporter refused its configuration.
    #[error("OTLP exporter: {0}")]
    Build(#[from] opentelemetry_otlp::ExporterBuildError),
    /// The HTTP client for the TLS files could not be built.
    #[error("OTLP/HTTP client: {0}")]
    HttpClient(#[from] reqwest::Error),
    /// The collector's endpoint cannot be used.
    #[error("OTLP endpoint '{0}': {1}")]
    Endpoint(String, String),
    /// The export thread or its runtime could not start.
    #[error("starting the OTLP export thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Counts of what happened to spans, shared with the export thread.
#[derive(Debug, Default)]
struct Stats {
    /// Spans in the queue, being batched, waiting to be sent (again) or in flight: every span
    /// not yet settled, what `--otlp-queue` bounds.
    pending: AtomicUsize,
    queued: AtomicU64,
    dropped: AtomicU64,
    exported: AtomicU64,
    exported_sessions: AtomicU64,
    failed: AtomicU64,
    failed_requests: AtomicU64,
    rejected: AtomicU64,
    possible_duplicates: AtomicU64,
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
    /// Spans given up on: still unacknowledged when the exit deadline passed.
    pub failed: u64,
    /// Export requests that failed (retried, rejected, or abandoned).
    pub failed_requests: u64,
    /// Spans the collector refused with a non-retryable status: dropped without a retry.
    pub rejected: u64,
    /// Of the exported spans, those sent again after a request that timed out: the collector
    /// may have received them twice.
    pub possible_duplicates: u64,
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
            rejected: self.rejected.load(Ordering::Relaxed),
            possible_duplicates: self.possible_duplicates.load(Ordering::Relaxed),
        }
    }

    /// `spans` left the queue's bound: sent, or given up on.
    fn unqueued(&self, spans: usize) {
        self.pending.fetch_sub(spans, Ordering::Relaxed);
    }
}

/// The event path's handle on the export thread.
pub struct SpanExport {
    queue: mpsc::UnboundedSender<SpanChunk>,
    /// Spans queued and not yet handed over.
    chunk: SpanChunk,
    capacity: usize,
    stats: Arc<Stats>,
    thread: thread::JoinHandle<()>,
}

impl SpanExport {
    /// Starts the export thread; at most `capacity` spans wait for it, those kept to be sent
    /// again included (those in flight are not).
    pub fn start(
        settings: &ExportSettings,
        origin: Origin,
        capacity: usize,
    ) -> Result<Self, ExportError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ExportError::Thread)?;
        let transport = {
            // The gRPC client needs the runtime it will run on while it is built.
            let _entered = runtime.enter();
            TraceTransport::new(settings, |name| std::env::var(name).ok())?
        };
        let (queue, receiver) = mpsc::unbounded_channel();
        let stats = Arc::new(Stats::default());
        let thread_stats = Arc::clone(&stats);
        let thread = thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || {
                runtime.block_on(export_loop(transport, origin, receiver, &thread_stats));
                runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
            })
            .map_err(ExportError::Thread)?;
        Ok(Self {
            queue,
            chunk: SpanChunk::with_capacity(CHUNK_BYTES),
            capacity,
            stats,
            thread,
        })
    }

    /// Queues the span `encode` makes, or counts it dropped when the queue is full, without
    /// making it: a collector that cannot keep up costs the event path no spans it would
    /// drop. Never waits. Queued spans reach the export thread in chunks: at most [`CHUNK`]
    /// wait for [`Self::hand_over`].
    pub fn push<'a>(&mut self, encode: impl FnOnce() -> EncodedSpan<'a>) {
        let stats = &self.stats;
        if stats.pending.fetch_add(1, Ordering::Relaxed) >= self.capacity {
            stats.unqueued(1);
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        stats.queued.fetch_add(1, Ordering::Relaxed);
        self.chunk.push(encode());
        if self.chunk.spans() >= CHUNK {
            self.hand_over();
        }
    }

    /// Hands the spans queued so far to the export thread.
    pub fn hand_over(&mut self) {
        if self.chunk.is_empty() {
            return;
        }
        let chunk = std::mem::replace(&mut self.chunk, SpanChunk::with_capacity(CHUNK_BYTES));
        if let Err(mpsc::error::SendError(chunk)) = self.queue.send(chunk) {
            // The export thread is gone (it panicked): what it never got is dropped.
            let stats = &self.stats;
            let spans = chunk.spans();
            stats.unqueued(spans);
            stats.queued.fetch_sub(spans as u64, Ordering::Relaxed);
            stats.dropped.fetch_add(spans as u64, Ordering::Relaxed);
        }
    }

    /// The counts so far.
    pub fn counts(&self) -> ExportCounts {
        self.stats.snapshot()
    }

    /// Closes the queue and waits until everything queued is exported, rejected or given up
    /// on: at most [`FLUSH_DEADLINE`] whatever the collector does.
    pub fn finish(mut self) -> ExportCounts {
        self.hand_over();
        drop(self.queue);
        // A panicking export thread has nothing more to export; its counts stand.
        let _ = self.thread.join();
        self.stats.snapshot()
    }
}

/// Where the spans come from: the resource and instrumentation scope every request names.
#[derive(Clone, Debug, Default)]
pub struct Origin {
    /// The agent's resource (service, host, SDK).
    pub resource: Resource,
    /// Its schema URL, if any.
    pub schema_url: String,
    /// The agent as the instrumentation scope.
    pub scope: InstrumentationScope,
}

impl Origin {
    /// The origin of spans the agent with `resource` makes as `scope`.
    pub fn new(resource: &opentelemetry_sdk::Resource, scope: InstrumentationScope) -> Self {
        let ResourceAttributesWithSchema {
            attributes,
            schema_url,
        } = resource.into();
        Self {
            resource: Resource {
                attributes: attributes.0,
                dropped_attributes_count: 0,
                entity_refs: Vec::new(),
            },
            schema_url: schema_url.unwrap_or_default(),
            scope,
        }
    }

    /// The export request of the spans of `chunks`, encoded in protobuf, or in JSON when
    /// `json`.
    fn request(&self, chunks: &[SpanChunk], json: bool) -> Vec<u8> {
        let encoded = wire::encode_request(&self.resource, &self.schema_url, &self.scope, chunks);
        if !json {
            return encoded;
        }
        let request = ExportTraceServiceRequest::decode(encoded.as_slice())
            .expect("requests encoded here decode");
        serde_json::to_vec(&request).expect("OTLP messages serialize to JSON")
    }
}

/// A batch's request, encoded, and what it holds.
struct Batch {
    body: Body,
    spans: usize,
    sessions: u64,
    /// An earlier attempt may have reached the collector (it timed out, or its connection
    /// broke once it was sent): the collector may have it already.
    maybe_delivered: bool,
    /// Not to be sent again before then: the pause the collector asked for.
    not_before: Option<Instant>,
}

impl Batch {
    fn new(chunks: &[SpanChunk], origin: &Origin, transport: &TraceTransport) -> Self {
        Self {
            body: transport.body(origin.request(chunks, transport.json())),
            spans: chunks.iter().map(SpanChunk::spans).sum(),
            sessions: chunks.iter().map(SpanChunk::roots).sum(),
            maybe_delivered: false,
            not_before: None,
        }
    }
}

/// A settled request: its batch, the collector's answer, and how it went.
struct Attempt {
    batch: Batch,
    result: Result<Accepted, Refusal>,
    /// It was sent alone to see whether the collector is back.
    probe: bool,
}

/// The export thread's state: the batch being filled, the batches waiting to be sent (the
/// retried ones first), the requests in flight, and whether the collector is answering.
struct Exporter<'a> {
    transport: Arc<TraceTransport>,
    origin: Origin,
    stats: &'a Stats,
    /// The chunks of spans gathered for the next batches, and how many spans they hold.
    filling: VecDeque<SpanChunk>,
    filling_spans: usize,
    /// When the first span of `filling` came.
    filling_since: Option<Instant>,
    waiting: VecDeque<Batch>,
    in_flight: JoinSet<Attempt>,
    /// Spans of each request in flight, to account for them if a task is lost.
    in_flight_spans: HashMap<task::Id, usize>,
    /// The collector answered the last request settled: batches go out concurrently.
    healthy: bool,
    /// Failed probes in a row, for the pause before the next one.
    failures: u32,
    /// When the next probe may go while the collector is not answering.
    retry_at: Instant,
    /// The status of the last rejection reported, to report each new one once.
    last_rejection: Option<String>,
    /// The message of the last partial success reported, likewise.
    last_partial: Option<String>,
}

impl Exporter<'_> {
    /// Moves the spans being gathered to the waiting batches, each request encoded, in
    /// batches of whole chunks up to [`MAX_BATCH`] spans, and the rest too once it has waited
    /// [`BATCH_DELAY`] or `now_or_never` (the queue is closed).
    fn close_batch(&mut self, now_or_never: bool) {
        let due = self
            .filling_since
            .is_some_and(|since| since.elapsed() >= BATCH_DELAY);
        while self.filling_spans > 0 && (now_or_never || due || self.filling_spans >= MAX_BATCH) {
            let chunks = batch_chunks(self.filling.iter().map(SpanChunk::spans));
            let chunks: Vec<SpanChunk> = self.filling.drain(..chunks).collect();
            let batch = Batch::new(&chunks, &self.origin, &self.transport);
            self.filling_spans -= batch.spans;
            self.waiting.push_back(batch);
        }
        if self.filling_spans == 0 {
            self.filling_since = None;
        }
    }

    /// Sends waiting batches: while the collector answers, up to [`MAX_IN_FLIGHT`] at once;
    /// otherwise one probe at a time, after the retry pause. None goes before the pause its
    /// collector asked for.
    fn send_waiting(&mut self) {
        loop {
            let now = Instant::now();
            let may_send = if self.healthy {
                self.in_flight.len() < MAX_IN_FLIGHT
            } else {
                self.in_flight.is_empty() && now >= self.retry_at
            };
            let paused = self
                .waiting
                .front()
                .and_then(|batch| batch.not_before)
                .is_some_and(|not_before| now < not_before);
            if !may_send || paused {
                return;
            }
            let Some(batch) = self.waiting.pop_front() else {
                return;
            };
            let transport = Arc::clone(&self.transport);
            let probe = !self.healthy;
            let spans = batch.spans;
            let handle = self.in_flight.spawn(async move {
                // The encoded request is kept until the answer: the attempt shares its bytes.
                let result = transport.send(batch.body.clone()).await;
                Attempt {
                    batch,
                    result,
                    probe,
                }
            });
            self.in_flight_spans.insert(handle.id(), spans);
        }
    }

    /// Accounts for a settled request.
    fn settle(&mut self, joined: Result<(task::Id, Attempt), task::JoinError>) {
        let attempt = match joined {
            Ok((id, attempt)) => {
                self.in_flight_spans.remove(&id);
                attempt
            }
            Err(err) => {
                // The request's task panicked: its batch is gone.
                let spans = self.in_flight_spans.remove(&err.id()).unwrap_or(0);
                self.stats.failed.fetch_add(spans as u64, Ordering::Relaxed);
                self.stats.unqueued(spans);
                return;
            }
        };
        let Attempt {
            mut batch,
            result,
            probe,
        } = attempt;
        let spans = batch.spans;
        let stats = self.stats;
        if !matches!(&result, Err(refusal) if refusal.failure == Failure::Retryable) {
            // Settled for good: out of the queue's bound.
            stats.unqueued(spans);
        }
        let refusal = match result {
            Ok(accepted) => {
                self.answered();
                let rejected = self.partially_rejected(spans, accepted);
                stats.rejected.fetch_add(rejected, Ordering::Relaxed);
                stats
                    .exported
                    .fetch_add(spans as u64 - rejected, Ordering::Relaxed);
                stats
                    .exported_sessions
                    .fetch_add(batch.sessions, Ordering::Relaxed);
                if batch.maybe_delivered {
                    stats
                        .possible_duplicates
                        .fetch_add(spans as u64, Ordering::Relaxed);
                }
                return;
            }
            Err(refusal) => refusal,
        };
        stats.failed_requests.fetch_add(1, Ordering::Relaxed);
        let said = |separator: &str, closing: &str| {
            refusal
                .message
                .as_ref()
                .map_or_else(String::new, |message| {
                    format!("{separator}{message}{closing}")
                })
        };
        match &refusal.failure {
            Failure::Rejected(status) => {
                self.answered();
                if self.last_rejection.as_ref() != Some(status) {
                    eprintln!(
                        "tcpstates: OTLP collector rejected {spans} spans ({status}{}), not \
                         retrying rejected requests",
                        said(": ", "")
                    );
                    self.last_rejection = Some(status.clone());
                }
                stats.rejected.fetch_add(spans as u64, Ordering::Relaxed);
            }
            Failure::Retryable => {
                batch.maybe_delivered |= refusal.may_have_arrived;
                let now = Instant::now();
                batch.not_before = refusal.retry_after.map(|pause| now + pause);
                // Still in the queue's bound, first to go again.
                self.waiting.push_front(batch);
                // Only the first failure and failed probes lengthen the pause: the other
                // requests that were out when the collector went away fail as well.
                if self.healthy || probe {
                    self.failures += 1;
                    if self.failures == 1 {
                        eprintln!(
                            "tcpstates: OTLP export failing, will retry: {}{}",
                            refusal.description,
                            said(" (", ")")
                        );
                    }
                    self.retry_at = now + retry_delay(self.failures);
                }
                self.healthy = false;
            }
        }
    }

    /// Of an accepted request's `spans`, those the collector said it rejected (partial
    /// success), reported when its message is new.
    fn partially_rejected(&mut self, spans: usize, accepted: Accepted) -> u64 {
        let rejected = accepted.rejected_spans.min(spans as u64);
        if rejected > 0 && self.last_partial != accepted.message {
            eprintln!(
                "tcpstates: OTLP collector accepted a request but rejected {rejected} of its \
                 {spans} spans (partial success): {}",
                accepted.message.as_deref().unwrap_or("no reason given")
            );
            self.last_partial = accepted.message;
        }
        rejected
    }

    /// The collector answered: back to concurrent requests, and the pause starts over.
    fn answered(&mut self) {
        if self.failures > 0 {
            eprintln!("tcpstates: OTLP export recovered");
        }
        self.healthy = true;
        self.failures = 0;
    }

    /// Spans not yet settled: being filled, waiting, or in flight.
    fn unsettled(&self) -> usize {
        self.filling_spans
            + self.waiting.iter().map(|batch| batch.spans).sum::<usize>()
            + self.in_flight_spans.values().sum::<usize>()
    }

    /// Abandons every request in flight and counts every unsettled span failed.
    fn give_up(&mut self) {
        self.in_flight.abort_all();
        let spans = self.unsettled();
        self.stats.failed.fetch_add(spans as u64, Ordering::Relaxed);
        self.stats.unqueued(spans);
        eprintln!(
            "tcpstates: OTLP export unfinished {FLUSH_DEADLINE:?} after exit began \
             (collector unreachable or not answering), {spans} spans not exported"
        );
    }
}

/// Batches and exports until the queue is closed and everything is settled, or
/// [`FLUSH_DEADLINE`] after it closed.
///
/// While the collector answers, up to [`MAX_IN_FLIGHT`] requests are out at once, and their
/// answers are taken as they come. A retryable failure puts the batch back at the head of the
/// waiting ones; then one request goes at a time, after a pause growing from [`RETRY_MIN`] to
/// [`RETRY_MAX`] (or the collector's, if longer), until one succeeds. A rejected batch is
/// dropped and counted.
async fn export_loop(
    transport: TraceTransport,
    origin: Origin,
    mut queue: mpsc::UnboundedReceiver<SpanChunk>,
    stats: &Stats,
) {
    let mut export = Exporter {
        transport: Arc::new(transport),
        origin,
        stats,
        filling: VecDeque::new(),
        filling_spans: 0,
        filling_since: None,
        waiting: VecDeque::new(),
        in_flight: JoinSet::new(),
        in_flight_spans: HashMap::new(),
        // Until the first success, one request at a time.
        healthy: false,
        failures: 0,
        retry_at: Instant::now(),
        last_rejection: None,
        last_partial: None,
    };
    let mut deadline: Option<Instant> = None;
    loop {
        export.close_batch(deadline.is_some());
        export.send_waiting();
        if deadline.is_some() && export.unsettled() == 0 {
            break;
        }
        let batch_due = export.filling_since.map(|since| since + BATCH_DELAY);
        let probe_due =
            (!export.healthy && export.in_flight.is_empty() && !export.waiting.is_empty())
                .then_some(export.retry_at);
        let pause_over = export.waiting.front().and_then(|batch| batch.not_before);
        let room = export.filling_spans < MAX_BATCH;
        tokio::select! {
            biased;
            () = sleep_until(deadline) => {
                export.give_up();
                break;
            }
            Some(joined) = export.in_flight.join_next_with_id() => export.settle(joined),
            received = queue.recv(), if deadline.is_none() && room => match received {
                // Exit began: the queue is closed and empty.
                None => deadline = Some(Instant::now() + FLUSH_DEADLINE),
                Some(chunk) => {
                    export.filling_spans += chunk.spans();
                    export.filling.push_back(chunk);
                    export.filling_since.get_or_insert_with(Instant::now);
                }
            },
            () = sleep_until(batch_due) => {}
            () = sleep_until(probe_due) => {}
            () = sleep_until(pause_over) => {}
        }
    }
}

/// How many of the first chunks, holding `spans` spans each, make the next batch: as many as
/// [`MAX_BATCH`] allows, and at least one.
fn batch_chunks(spans: impl Iterator<Item = usize>) -> usize {
    let mut total = 0;
    let mut chunks = 0;
    for spans in spans {
        if chunks > 0 && total + spans > MAX_BATCH {
            break;
        }
        total += spans;
        chunks += 1;
    }
    chunks
}

/// Waits until `at`, or forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The pause after `failures` failed attempts in a row: [`RETRY_MIN`], doubling up to
/// [`RETRY_MAX`].
fn retry_delay(failures: u32) -> Duration {
    (RETRY_MIN * 2u32.saturating_pow(failures.saturating_sub(1).min(8))).min(RETRY_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_takes_whole_chunks_up_to_its_bound() {
        assert_eq!(batch_chunks([CHUNK; 10].into_iter()), MAX_BATCH / CHUNK);
        assert_eq!(batch_chunks([MAX_BATCH - 1, 1, 1].into_iter()), 2);
        assert_eq!(batch_chunks([MAX_BATCH - 1, 2].into_iter()), 1);
        assert_eq!(batch_chunks([3, 4].into_iter()), 2);
        assert_eq!(batch_chunks(std::iter::empty()), 0);
    }

    #[test]
    fn retry_pause_grows_to_half_a_second() {
        assert_eq!(retry_delay(1), RETRY_MIN);
        assert_eq!(retry_delay(2), RETRY_MIN * 2);
        assert_eq!(retry_delay(3), RETRY_MIN * 4);
        assert_eq!(retry_delay(4), RETRY_MAX);
        assert_eq!(retry_delay(u32::MAX), RETRY_MAX);
    }
}
