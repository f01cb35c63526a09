//! The export side: a bounded queue the event path pushes spans into without ever waiting,
//! and a thread of its own that batches them and sends them with the OTLP exporter.
//!
//! Delivery is at least once: a batch is kept until the collector acknowledges its request,
//! counted in the queue's bound until then (new spans are dropped while the queue is full),
//! and after a failure the OTLP specification calls retryable it goes back to the head of the
//! queue to be sent again. A request that timed out may still have been delivered, so its
//! batch may arrive twice; such spans are counted as possible duplicates. A failure the
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

use opentelemetry::trace::SpanId;
use opentelemetry_otlp::{
    RetryPolicy, SpanExporter, WithExportConfig, WithHttpConfig, WithTonicConfig,
};
use opentelemetry_sdk::{
    Resource,
    error::{OTelSdkError, OTelSdkResult},
    trace::{SpanData, SpanExporter as _},
};
use tokio::{
    sync::mpsc,
    task::{self, JoinSet},
    time::Instant,
};
use tracing::Instrument as _;
use tracing_subscriber::{Registry, layer::SubscriberExt as _};

use super::{
    answers::{Answer, Answers, REQUEST_SPAN},
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
/// First and longest pause before the next attempt while the collector is unreachable. With
/// the exporter's own retries within a request (at most 0.5 s apart, [`retry_policy`]), a
/// collector that comes back gets a request within a second.
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
    queue: mpsc::UnboundedSender<SpanData>,
    capacity: usize,
    stats: Arc<Stats>,
    thread: thread::JoinHandle<()>,
}

impl SpanExport {
    /// Starts the export thread; at most `capacity` spans wait for it, those kept to be sent
    /// again included (those in flight are not).
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
        let (queue, receiver) = mpsc::unbounded_channel();
        let stats = Arc::new(Stats::default());
        let thread_stats = Arc::clone(&stats);
        let timeout = settings.timeout;
        let thread = thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || {
                // The collector's messages, read from the exporter's events on this thread.
                let answers = Answers::default();
                let _events =
                    tracing::subscriber::set_default(Registry::default().with(answers.layer()));
                runtime.block_on(export_loop(
                    exporter,
                    timeout,
                    receiver,
                    &thread_stats,
                    answers,
                ));
                runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
            })
            .map_err(ExportError::Thread)?;
        Ok(Self {
            queue,
            capacity,
            stats,
            thread,
        })
    }

    /// Queues a span, or counts it dropped when the queue is full. Never waits.
    pub fn push(&self, span: SpanData) {
        let stats = &self.stats;
        if stats.pending.fetch_add(1, Ordering::Relaxed) >= self.capacity
            || self.queue.send(span).is_err()
        {
            stats.unqueued(1);
            stats.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            stats.queued.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counts so far.
    pub fn counts(&self) -> ExportCounts {
        self.stats.snapshot()
    }

    /// Closes the queue and waits until everything queued is exported, rejected or given up
    /// on: at most [`FLUSH_DEADLINE`] whatever the collector does.
    pub fn finish(self) -> ExportCounts {
        drop(self.queue);
        // A panicking export thread has nothing more to export; its counts stand.
        let _ = self.thread.join();
        self.stats.snapshot()
    }
}

/// Retries within one request, by the exporter: on the failures the OTLP specification calls
/// retryable, honouring the collector's Retry-After (HTTP) or RetryInfo (gRPC), within the
/// request timeout; at most 0.5 s apart otherwise.
pub fn retry_policy() -> RetryPolicy {
    RetryPolicy::recommended().with_max_delay(Duration::from_millis(500))
}

fn build_exporter(settings: &ExportSettings) -> Result<SpanExporter, ExportError> {
    tls::install_crypto_provider();
    let builder = SpanExporter::builder();
    let exporter = match settings.protocol {
        Protocol::Grpc => configure_grpc(builder.with_tonic(), settings).build(),
        Protocol::HttpProtobuf | Protocol::HttpJson => {
            configure_http(builder.with_http(), settings)?.build()
        }
    };
    Ok(exporter?)
}

/// A gRPC exporter builder (of spans or metrics) set up as `settings` say.
pub fn configure_grpc<B: WithExportConfig + WithTonicConfig>(
    builder: B,
    settings: &ExportSettings,
) -> B {
    let mut builder = builder
        .with_timeout(settings.timeout)
        .with_retry_policy(retry_policy());
    if settings.secure {
        builder = builder.with_tls_config(tls::grpc_config(&settings.tls));
    }
    match &settings.endpoint {
        Some(endpoint) => builder.with_endpoint(endpoint),
        None => builder,
    }
}

/// An HTTP exporter builder (of spans or metrics) set up as `settings` say.
pub fn configure_http<B: WithExportConfig + WithHttpConfig>(
    builder: B,
    settings: &ExportSettings,
) -> Result<B, ExportError> {
    let protocol = if settings.protocol == Protocol::HttpJson {
        opentelemetry_otlp::Protocol::HttpJson
    } else {
        opentelemetry_otlp::Protocol::HttpBinary
    };
    let mut builder = builder
        .with_protocol(protocol)
        .with_timeout(settings.timeout)
        .with_retry_policy(retry_policy());
    if !settings.tls.is_empty() {
        builder = builder.with_http_client(tls::http_client(&settings.tls, settings.timeout)?);
    }
    Ok(match &settings.endpoint {
        Some(endpoint) => builder.with_endpoint(endpoint),
        None => builder,
    })
}

/// What a failed export request means for its batch.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// Worth sending again: the collector was unreachable, overloaded or timed out.
    Retryable,
    /// Refused for good, with this status (`HTTP 415`, `gRPC InvalidArgument`).
    Rejected(String),
}

/// Classifies a failed export request as the OTLP specification does.
///
/// opentelemetry-otlp 0.33 applies that classification to its own retries within a request
/// but returns the outcome only as text in [`OTelSdkError::InternalFailure`]:
/// `HTTP export failed with status code: 415`, `HTTP export failed: network error`,
/// `TonicTracesClient export failed with gRPC code: Unavailable[: cause]` (it keeps the
/// collector's message out on purpose). So the status is read back from that text, here only.
/// Anything else (a network error, a timeout) is retryable. `RESOURCE_EXHAUSTED` is retryable
/// here: the exporter has already failed it at once when the collector gave no RetryInfo, and
/// the text no longer says which.
fn classify(err: &OTelSdkError) -> Failure {
    let OTelSdkError::InternalFailure(text) = err else {
        return Failure::Retryable;
    };
    if let Some(code) = text.strip_prefix("HTTP export failed with status code: ") {
        return match code.trim().parse::<u16>() {
            Ok(429 | 502 | 503 | 504) | Err(_) => Failure::Retryable,
            Ok(code) => Failure::Rejected(format!("HTTP {code}")),
        };
    }
    if let Some((_, rest)) = text.split_once(" export failed with gRPC code: ") {
        let (code, source) = rest.split_once(':').unwrap_or((rest, ""));
        if source.trim_start().starts_with("transport error") {
            // Not the collector's answer: tonic's own, for a request the connection failed
            // under (a collector killed mid-request gives `Unknown: transport error`). A
            // network error, retryable whatever code tonic put on it.
            return Failure::Retryable;
        }
        return match code.trim() {
            "Unavailable" | "Cancelled" | "DeadlineExceeded" | "Aborted" | "OutOfRange"
            | "DataLoss" | "ResourceExhausted" => Failure::Retryable,
            _ => Failure::Rejected(format!("gRPC {code}")),
        };
    }
    Failure::Retryable
}

/// Whether a request that failed may still have reached the collector: a gRPC request whose
/// connection broke once it was made (not one that could not connect). (The HTTP exporter
/// says only `network error`, which mostly means no connection: not counted.)
fn may_have_arrived(err: &OTelSdkError) -> bool {
    matches!(err, OTelSdkError::InternalFailure(text)
        if text.contains(": transport error") && !text.contains("connect error"))
}

/// A batch of spans and what it holds.
struct Batch {
    spans: Vec<SpanData>,
    sessions: u64,
    /// An earlier request with this batch timed out: the collector may have it already.
    maybe_delivered: bool,
}

impl Batch {
    fn new(spans: Vec<SpanData>) -> Self {
        let sessions = spans
            .iter()
            .filter(|span| span.parent_span_id == SpanId::INVALID)
            .count() as u64;
        Self {
            spans,
            sessions,
            maybe_delivered: false,
        }
    }
}

/// A settled request: its batch, the exporter's answer, and how it went.
struct Attempt {
    batch: Batch,
    result: OTelSdkResult,
    /// The request ran into the request timeout.
    timed_out: bool,
    /// It was sent alone to see whether the collector is back.
    probe: bool,
    /// Its number, under which [`Answers`] files what the collector said.
    request: u64,
}

/// The export thread's state: the batch being filled, the batches waiting to be sent (the
/// retried ones first), the requests in flight, and whether the collector is answering.
struct Exporter<'a> {
    exporter: Arc<SpanExporter>,
    timeout: Duration,
    stats: &'a Stats,
    filling: Vec<SpanData>,
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
    /// What the collector said about each request in flight.
    answers: Answers,
    /// The number of the next request.
    next_request: u64,
}

impl Exporter<'_> {
    /// Moves the batch being filled to the waiting ones once it is full, has waited
    /// [`BATCH_DELAY`], or `now_or_never` (the queue is closed).
    fn close_batch(&mut self, now_or_never: bool) {
        let due = self
            .filling_since
            .is_some_and(|since| since.elapsed() >= BATCH_DELAY);
        if !self.filling.is_empty() && (now_or_never || due || self.filling.len() >= MAX_BATCH) {
            let spans = std::mem::replace(&mut self.filling, Vec::with_capacity(MAX_BATCH));
            self.waiting.push_back(Batch::new(spans));
            self.filling_since = None;
        }
    }

    /// Sends waiting batches: while the collector answers, up to [`MAX_IN_FLIGHT`] at once;
    /// otherwise one probe at a time, after the retry pause.
    fn send_waiting(&mut self) {
        loop {
            let may_send = if self.healthy {
                self.in_flight.len() < MAX_IN_FLIGHT
            } else {
                self.in_flight.is_empty() && Instant::now() >= self.retry_at
            };
            if !may_send {
                return;
            }
            let Some(batch) = self.waiting.pop_front() else {
                return;
            };
            let exporter = Arc::clone(&self.exporter);
            let (timeout, probe) = (self.timeout, !self.healthy);
            let request = self.next_request;
            self.next_request += 1;
            let spans = batch.spans.len();
            let span = tracing::debug_span!(target: "tcpstates", REQUEST_SPAN, request);
            let handle = self.in_flight.spawn(
                async move {
                    let started = Instant::now();
                    // The batch is kept until the answer: the request gets a copy.
                    let result = exporter.export(batch.spans.clone()).await;
                    Attempt {
                        batch,
                        timed_out: result.is_err() && started.elapsed() >= timeout,
                        result,
                        probe,
                        request,
                    }
                }
                .instrument(span),
            );
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
            timed_out,
            probe,
            request,
        } = attempt;
        let spans = batch.spans.len();
        let stats = self.stats;
        let answer = self.answers.take(request);
        if !matches!(&result, Err(err) if classify(err) == Failure::Retryable) {
            // Settled for good: out of the queue's bound.
            stats.unqueued(spans);
        }
        let err = match result {
            Ok(()) => {
                self.answered();
                let rejected = self.partially_rejected(spans, answer);
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
            Err(err) => err,
        };
        stats.failed_requests.fetch_add(1, Ordering::Relaxed);
        match classify(&err) {
            Failure::Rejected(status) => {
                self.answered();
                if self.last_rejection.as_ref() != Some(&status) {
                    let said = answer
                        .message
                        .map_or_else(String::new, |message| format!(": {message}"));
                    eprintln!(
                        "tcpstates: OTLP collector rejected {spans} spans ({status}{said}), not \
                         retrying rejected requests"
                    );
                    self.last_rejection = Some(status);
                }
                stats.rejected.fetch_add(spans as u64, Ordering::Relaxed);
            }
            Failure::Retryable => {
                batch.maybe_delivered |= timed_out || may_have_arrived(&err);
                // Still in the queue's bound, first to go again.
                self.waiting.push_front(batch);
                // Only the first failure and failed probes lengthen the pause: the other
                // requests that were out when the collector went away fail as well.
                if self.healthy || probe {
                    self.failures += 1;
                    if self.failures == 1 {
                        let said = answer
                            .message
                            .map_or_else(String::new, |message| format!(" ({message})"));
                        eprintln!("tcpstates: OTLP export failing, will retry: {err}{said}");
                    }
                    self.retry_at = Instant::now() + retry_delay(self.failures);
                }
                self.healthy = false;
            }
        }
    }

    /// Of an accepted request's `spans`, those the collector said it rejected (partial
    /// success), reported when its message is new.
    fn partially_rejected(&mut self, spans: usize, answer: Answer) -> u64 {
        let rejected = answer.rejected_spans.min(spans as u64);
        if rejected > 0 && self.last_partial != answer.message {
            eprintln!(
                "tcpstates: OTLP collector accepted a request but rejected {rejected} of its \
                 {spans} spans (partial success): {}",
                answer.message.as_deref().unwrap_or("no reason given")
            );
            self.last_partial = answer.message;
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
        self.filling.len()
            + self
                .waiting
                .iter()
                .map(|batch| batch.spans.len())
                .sum::<usize>()
            + self.in_flight_spans.values().sum::<usize>()
    }

    /// Abandons every request in flight and counts every unsettled span failed.
    fn give_up(&mut self) {
        self.in_flight.abort_all();
        self.answers.clear();
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
/// [`RETRY_MAX`], until one succeeds. A rejected batch is dropped and counted.
async fn export_loop(
    exporter: SpanExporter,
    timeout: Duration,
    mut queue: mpsc::UnboundedReceiver<SpanData>,
    stats: &Stats,
    answers: Answers,
) {
    let mut export = Exporter {
        exporter: Arc::new(exporter),
        timeout,
        stats,
        filling: Vec::with_capacity(MAX_BATCH),
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
        answers,
        next_request: 0,
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
        let room = MAX_BATCH - export.filling.len();
        tokio::select! {
            biased;
            () = sleep_until(deadline) => {
                export.give_up();
                break;
            }
            Some(joined) = export.in_flight.join_next_with_id() => export.settle(joined),
            received = queue.recv_many(&mut export.filling, room), if deadline.is_none() && room > 0 => {
                if received == 0 {
                    // Exit began: the queue is closed and empty.
                    deadline = Some(Instant::now() + FLUSH_DEADLINE);
                } else if export.filling_since.is_none() {
                    export.filling_since = Some(Instant::now());
                }
            }
            () = sleep_until(batch_due) => {}
            () = sleep_until(probe_due) => {}
        }
    }
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

    fn failure(text: &str) -> Failure {
        classify(&OTelSdkError::InternalFailure(text.to_owned()))
    }

    #[test]
    fn retryable_http_statuses_and_network_errors() {
        for code in [429, 502, 503, 504] {
            let text = format!("HTTP export failed with status code: {code}");
            assert_eq!(failure(&text), Failure::Retryable, "{text}");
        }
        assert_eq!(
            failure("HTTP export failed: network error"),
            Failure::Retryable
        );
        assert_eq!(
            classify(&OTelSdkError::Timeout(RETRY_MAX)),
            Failure::Retryable
        );
    }

    #[test]
    fn other_http_statuses_are_rejections() {
        for code in [400, 401, 403, 404, 413, 415, 500] {
            let text = format!("HTTP export failed with status code: {code}");
            assert_eq!(
                failure(&text),
                Failure::Rejected(format!("HTTP {code}")),
                "{text}"
            );
        }
    }

    #[test]
    fn grpc_codes_as_the_otlp_specification_classes_them() {
        for code in [
            "Unavailable",
            "Cancelled",
            "DeadlineExceeded",
            "Aborted",
            "OutOfRange",
            "DataLoss",
            "ResourceExhausted",
        ] {
            let text =
                format!("TonicTracesClient export failed with gRPC code: {code}: transport error");
            assert_eq!(failure(&text), Failure::Retryable, "{text}");
        }
        for code in [
            "InvalidArgument",
            "PermissionDenied",
            "Unauthenticated",
            "Unimplemented",
            "Internal",
            "Unknown",
        ] {
            let text = format!("TonicTracesClient export failed with gRPC code: {code}");
            assert_eq!(
                failure(&text),
                Failure::Rejected(format!("gRPC {code}")),
                "{text}"
            );
            // The same code put by tonic on a connection that failed is a network error.
            let text = format!(
                "TonicTracesClient export failed with gRPC code: {code}: transport error: \
                 connection reset"
            );
            assert_eq!(failure(&text), Failure::Retryable, "{text}");
        }
    }

    #[test]
    fn a_broken_grpc_connection_may_have_delivered_its_request_a_refused_one_not() {
        let err = |text: &str| OTelSdkError::InternalFailure(text.into());
        assert!(may_have_arrived(&err(
            "TonicTracesClient export failed with gRPC code: Unknown: transport error"
        )));
        assert!(!may_have_arrived(&err(
            "TonicTracesClient export failed with gRPC code: Unavailable: transport error: tcp \
             connect error: Connection refused (os error 111)"
        )));
        assert!(!may_have_arrived(&err("HTTP export failed: network error")));
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
