//! A real OTLP receiver for the export tests: rotel, started as a child process.
//!
//! rotel (PyPI `rotel`, an OpenTelemetry collector written in Rust; `cargo xtask setup` installs
//! the pinned release) listens for OTLP over gRPC and over HTTP/protobuf, and with
//! `--debug-log traces --debug-log-verbosity detailed` prints every span it receives on stdout,
//! one batch at a time:
//!
//! ```text
//! ResourceSpans #0
//! Resource SchemaURL:
//! Resource attributes:
//!      -> service.name: Str(tcpstates)
//! ScopeSpans #0
//! ScopeSpans SchemaURL:
//! InstrumentationScope tcpstates 0.1.0
//! Span #0
//!     Trace ID       : 6a0ab877ea339ba8f01dba2fa9266267
//!     Parent ID      : 4fbfa82759a23e7c
//!     ID             : b5cb487f25e1524b
//!     Name           : SYN_SENT
//!     Kind           : SPAN_KIND_INTERNAL
//! Start time: 1700000000123457789
//! End time: 1700000000123458790
//!     Status code    : STATUS_CODE_ERROR
//!     Status message : connection refused
//! Attributes:
//!      -> network.peer.port: Int(8080)
//! ```
//!
//! Times are the spans' own `start_time_unix_nano`/`end_time_unix_nano`, so durations compare
//! to the nanosecond. `Events:` and `Links:` sections follow the attributes when a span has any:
//!
//! ```text
//! Events:
//! SpanEvent #0
//!      -> Name: retransmit
//!      -> Timestamp: 1700000000123458001
//!      -> DroppedAttributesCount: 0
//!      -> Attributes::
//!           -> tcpstates.retransmit.kind: Str(syn)
//! ```
//!
//! [`Receiver`] records both. It also logs metrics (`--debug-log metrics`: see
//! [`crate::metrics`] for that format), and parses those batches into [`ReceivedMetric`]s. A
//! batch has no end marker: the last span or metric of a burst of output is taken as complete once
//! stdout stays quiet for [`QUIET`].
//!
//! Each receiver listens on its own loopback ports (free ones by default, see [`Ports::free`]), so
//! tests using it run in parallel. It keeps every span and metric it parsed, across
//! [`Receiver::stop`] and [`Receiver::restart`] on the same ports.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver as LineReceiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::metrics::{MetricParser, ReceivedMetric};

/// Environment variable that overrides where the `rotel-agent` executable is.
pub const AGENT_ENV: &str = "ROTEL_AGENT";

/// How long rotel may take to listen on both ports, or to exit after SIGTERM.
pub const START_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long stdout must stay quiet for the last span or metric printed to count as complete.
pub const QUIET: Duration = Duration::from_millis(100);

/// How many of the spans or metrics received (the last ones) a wait that timed out shows: on a
/// busy host the agent exports other sessions than the test's, many more than a message can hold.
pub const SHOWN_ON_TIMEOUT: usize = 200;

/// Asks Python where pip put `rotel-agent` (inside the `rotel` package, not on `PATH`).
const AGENT_PROBE: &str =
    "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))";

/// Path of rotel's executable: `$ROTEL_AGENT`, else the one in the `rotel` package that
/// `python3` imports. Panics if there is none.
pub fn agent_binary() -> PathBuf {
    let path = match std::env::var_os(AGENT_ENV) {
        Some(path) => PathBuf::from(path),
        None => {
            let output = Command::new("python3")
                .args(["-c", AGENT_PROBE])
                .output()
                .unwrap_or_else(|e| panic!("run python3 to find rotel-agent: {e}"));
            assert!(
                output.status.success(),
                "python3 cannot import rotel ({}): run `cargo xtask setup` or set {AGENT_ENV}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
            PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
        }
    };
    assert!(
        path.is_file(),
        "rotel-agent {} not found: run `cargo xtask setup` or set {AGENT_ENV}",
        path.display()
    );
    path
}

/// The two loopback ports a receiver listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// OTLP over gRPC.
    pub grpc: u16,
    /// OTLP over HTTP/protobuf.
    pub http: u16,
}

impl Ports {
    /// Two distinct ports that are free on 127.0.0.1 right now (the kernel's picks for port 0),
    /// for a receiver that starts now or later.
    pub fn free() -> Ports {
        let bind = || {
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .unwrap_or_else(|e| panic!("bind 127.0.0.1:0: {e}"))
        };
        let (grpc, http) = (bind(), bind());
        let port = |listener: &TcpListener| {
            listener
                .local_addr()
                .unwrap_or_else(|e| panic!("local address of a listener: {e}"))
                .port()
        };
        Ports {
            grpc: port(&grpc),
            http: port(&http),
        }
    }
}

/// Kind of a span, as rotel prints it (`SPAN_KIND_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// `SPAN_KIND_UNSPECIFIED`.
    Unspecified,
    /// `SPAN_KIND_INTERNAL`.
    Internal,
    /// `SPAN_KIND_SERVER`.
    Server,
    /// `SPAN_KIND_CLIENT`.
    Client,
    /// `SPAN_KIND_PRODUCER`.
    Producer,
    /// `SPAN_KIND_CONSUMER`.
    Consumer,
}

/// Status code of a span (`STATUS_CODE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusCode {
    /// `STATUS_CODE_UNSET`.
    Unset,
    /// `STATUS_CODE_OK`.
    Ok,
    /// `STATUS_CODE_ERROR`.
    Error,
}

/// An attribute value with its OTLP type.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    /// `string_value`.
    Str(String),
    /// `int_value`.
    Int(i64),
    /// `double_value`.
    Double(f64),
    /// `bool_value`.
    Bool(bool),
    /// Arrays, maps, bytes and empty values, as rotel renders them (`Slice(Str(a), Int(1))`,
    /// `Map(k:Str(v))`, `Bytes([1, 2])`, `Empty`): their elements cannot be split reliably.
    Other(String),
}

impl AttrValue {
    /// The string, if this is a string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttrValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is an integer value.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            AttrValue::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// Parses rotel's rendering of a value (`Str(…)`, `Int(…)`, `Double(…)`, `Bool(…)`, else
    /// [`AttrValue::Other`]).
    pub(crate) fn parse(text: &str) -> Result<AttrValue, String> {
        let inner = |tag: &str| text.strip_prefix(tag)?.strip_suffix(')');
        let bad = |what: &str| format!("bad {what} value {text:?}");
        if let Some(s) = inner("Str(") {
            Ok(AttrValue::Str(s.to_owned()))
        } else if let Some(i) = inner("Int(") {
            i.parse().map(AttrValue::Int).map_err(|_| bad("Int"))
        } else if let Some(d) = inner("Double(") {
            d.parse().map(AttrValue::Double).map_err(|_| bad("Double"))
        } else if let Some(b) = inner("Bool(") {
            b.parse().map(AttrValue::Bool).map_err(|_| bad("Bool"))
        } else {
            Ok(AttrValue::Other(text.to_owned()))
        }
    }
}

/// One span as the receiver got it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// The parent's span id; `None` for a root span.
    pub parent_span_id: Option<String>,
    /// Span name.
    pub name: String,
    /// Span kind.
    pub kind: SpanKind,
    /// Start, in nanoseconds since the Unix epoch.
    pub start_unix_nano: u64,
    /// End, in nanoseconds since the Unix epoch.
    pub end_unix_nano: u64,
    /// Status code.
    pub status_code: StatusCode,
    /// Status message (empty when there is none).
    pub status_message: String,
    /// The span's attributes.
    pub attributes: BTreeMap<String, AttrValue>,
    /// The attributes of the resource that sent it (`service.name`, …).
    pub resource: BTreeMap<String, AttrValue>,
    /// (trace id, span id) of each span it links to.
    pub links: Vec<(String, String)>,
    /// Its events, in the order rotel printed them.
    pub events: Vec<ReceivedEvent>,
    /// Name of the instrumentation scope.
    pub scope_name: String,
    /// Version of the instrumentation scope (empty when there is none).
    pub scope_version: String,
}

/// One event of a span.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedEvent {
    /// Event name.
    pub name: String,
    /// Its time, in nanoseconds since the Unix epoch.
    pub time_unix_nano: u64,
    /// Its attributes.
    pub attributes: BTreeMap<String, AttrValue>,
}

impl ReceivedSpan {
    /// End minus start, in nanoseconds (saturating at 0).
    pub fn duration_nanos(&self) -> u64 {
        self.end_unix_nano.saturating_sub(self.start_unix_nano)
    }

    /// The string attribute `key`, if there is one.
    pub fn str_attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).and_then(AttrValue::as_str)
    }

    /// The integer attribute `key`, if there is one.
    pub fn int_attr(&self, key: &str) -> Option<i64> {
        self.attributes.get(key).and_then(AttrValue::as_i64)
    }
}

/// What the output threads collected, shared with the [`Receiver`].
#[derive(Debug, Default)]
struct Collected {
    spans: Vec<ReceivedSpan>,
    metrics: Vec<ReceivedMetric>,
    /// Lines the parser could not make sense of where it expected span or metric fields.
    errors: Vec<String>,
    /// Everything rotel printed (stdout and stderr), for failure messages.
    output: Vec<String>,
}

/// A running (or stopped) rotel. Dropping it stops the process.
#[derive(Debug)]
pub struct Receiver {
    ports: Ports,
    forward_to: Option<String>,
    collected: Arc<Mutex<Collected>>,
    process: Option<Running>,
}

/// The child process and the threads reading it.
#[derive(Debug)]
struct Running {
    child: Child,
    threads: Vec<JoinHandle<()>>,
}

impl Receiver {
    /// Starts a receiver on free loopback ports and waits until it listens.
    pub fn start() -> Receiver {
        Receiver::start_on(Ports::free())
    }

    /// Starts a receiver on `ports` (e.g. chosen earlier with [`Ports::free`], for a collector
    /// that comes up after the agent) and waits until it listens.
    pub fn start_on(ports: Ports) -> Receiver {
        Receiver::launch(ports, None)
    }

    /// Starts a receiver on `ports` that also forwards every span over OTLP/gRPC to `endpoint`
    /// (`http://127.0.0.1:PORT`, e.g. another receiver's [`Receiver::grpc_endpoint`]): a collector
    /// chain. It still records what it receives.
    pub fn start_forwarding(ports: Ports, endpoint: &str) -> Receiver {
        Receiver::launch(ports, Some(endpoint.to_owned()))
    }

    fn launch(ports: Ports, forward_to: Option<String>) -> Receiver {
        let mut receiver = Receiver {
            ports,
            forward_to,
            collected: Arc::default(),
            process: None,
        };
        receiver.restart();
        receiver
    }

    /// The ports it listens on.
    pub fn ports(&self) -> Ports {
        self.ports
    }

    /// `http://127.0.0.1:PORT` of the OTLP/gRPC listener.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.grpc)
    }

    /// `http://127.0.0.1:PORT` of the OTLP/HTTP listener: the base URL, as
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` takes it (traces go to [`Receiver::http_traces_endpoint`]).
    pub fn http_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.http)
    }

    /// `http://127.0.0.1:PORT/v1/traces`: the URL traces are posted to over HTTP.
    pub fn http_traces_endpoint(&self) -> String {
        format!("{}/v1/traces", self.http_endpoint())
    }

    /// `http://127.0.0.1:PORT/v1/metrics`: the URL metrics are posted to over HTTP.
    pub fn http_metrics_endpoint(&self) -> String {
        format!("{}/v1/metrics", self.http_endpoint())
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// Starts rotel again on the same ports after [`Receiver::stop`] (spans and metrics received
    /// before are kept) and waits until it listens. Panics if it is running, or does not listen
    /// within [`START_STOP_TIMEOUT`].
    pub fn restart(&mut self) {
        assert!(self.process.is_none(), "rotel is already running");
        let mut cmd = Command::new(agent_binary());
        cmd.arg("start")
            .arg("--otlp-grpc-endpoint")
            .arg(format!("127.0.0.1:{}", self.ports.grpc))
            .arg("--otlp-http-endpoint")
            .arg(format!("127.0.0.1:{}", self.ports.http))
            .args(["--debug-log", "traces", "--debug-log", "metrics"])
            .args(["--debug-log-verbosity", "detailed"])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match &self.forward_to {
            Some(endpoint) => {
                cmd.args(["--exporter", "otlp", "--otlp-exporter-endpoint", endpoint])
            }
            None => cmd.args(["--exporter", "blackhole"]),
        };
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", cmd.get_program().to_string_lossy()));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (lines, parsed) = mpsc::channel();
        let threads = vec![
            spawn_reader(stdout, lines.clone()),
            spawn_reader(stderr, lines),
            spawn_parser(parsed, Arc::clone(&self.collected)),
        ];
        self.process = Some(Running { child, threads });
        self.await_listening();
    }

    /// Polls both ports until they accept connections; panics with rotel's output if it exits
    /// or [`START_STOP_TIMEOUT`] passes first.
    fn await_listening(&mut self) {
        let deadline = Instant::now() + START_STOP_TIMEOUT;
        let listening = |port: u16| {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        };
        loop {
            let running = self.process.as_mut().expect("started above");
            if let Ok(Some(status)) = running.child.try_wait() {
                self.stop();
                panic!(
                    "rotel exited at start ({status}):\n{}",
                    self.output().join("\n")
                );
            }
            if listening(self.ports.grpc) && listening(self.ports.http) {
                return;
            }
            if Instant::now() >= deadline {
                self.stop();
                panic!(
                    "rotel does not listen on {:?} after {START_STOP_TIMEOUT:?}:\n{}",
                    self.ports,
                    self.output().join("\n")
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops rotel with SIGTERM (SIGKILL after [`START_STOP_TIMEOUT`]) and waits until it has
    /// exited and its output is parsed. Does nothing if it is not running.
    pub fn stop(&mut self) {
        let Some(mut running) = self.process.take() else {
            return;
        };
        let pid = running.child.id() as libc::pid_t;
        // SAFETY: plain kill(2) on our own child, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + START_STOP_TIMEOUT;
        while matches!(running.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        let _ = running.child.kill();
        let _ = running.child.wait();
        for thread in running.threads {
            let _ = thread.join();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Collected> {
        self.collected
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every line rotel printed so far, stdout and stderr interleaved.
    pub fn output(&self) -> Vec<String> {
        self.lock().output.clone()
    }

    /// Every span received so far, in the order rotel printed them. Panics if some of its output
    /// could not be parsed.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        parsed(&self.lock()).0.clone()
    }

    /// Every metric received so far (each export of a metric is one), in the order rotel printed
    /// them. Panics if some of its output could not be parsed.
    pub fn metrics(&self) -> Vec<ReceivedMetric> {
        parsed(&self.lock()).1.clone()
    }

    /// Calls `done` on the spans received so far (in the order rotel printed them), each time
    /// more have arrived, until it holds, and returns them; `Err` with the spans received after
    /// `timeout`. `done` runs while the receiver's parser waits, so it should be quick; nothing
    /// is copied until it holds, so waiting stays cheap when a busy host sends many spans.
    /// Panics if some of rotel's output could not be parsed.
    pub fn try_wait_for(
        &self,
        done: impl FnMut(&[ReceivedSpan]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<ReceivedSpan>, Vec<ReceivedSpan>> {
        self.try_wait_for_parsed(|collected| parsed(collected).0, done, timeout)
    }

    /// Like [`Receiver::try_wait_for`], for metrics: calls `done` on the metrics received so far
    /// each time more have arrived, until it holds, and returns them; `Err` with the metrics
    /// received after `timeout`.
    pub fn try_wait_for_metrics(
        &self,
        done: impl FnMut(&[ReceivedMetric]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<ReceivedMetric>, Vec<ReceivedMetric>> {
        self.try_wait_for_parsed(|collected| parsed(collected).1, done, timeout)
    }

    /// Like [`Receiver::try_wait_for_metrics`], but panics after `timeout`, with the metrics
    /// received (the last [`SHOWN_ON_TIMEOUT`] of them).
    pub fn wait_for_metrics(
        &self,
        done: impl FnMut(&[ReceivedMetric]) -> bool,
        timeout: Duration,
    ) -> Vec<ReceivedMetric> {
        self.try_wait_for_metrics(done, timeout).unwrap_or_else(|metrics| {
            panic!(
                "the metrics wanted did not arrive within {timeout:?}; received {}, the last: {:#?}",
                metrics.len(),
                &metrics[metrics.len().saturating_sub(SHOWN_ON_TIMEOUT)..]
            )
        })
    }

    /// Calls `done` on the list `of` selects each time it has grown, until `done` holds or
    /// `timeout` passes.
    fn try_wait_for_parsed<T: Clone>(
        &self,
        of: impl Fn(&Collected) -> &Vec<T>,
        mut done: impl FnMut(&[T]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<T>, Vec<T>> {
        let deadline = Instant::now() + timeout;
        let mut checked = None;
        loop {
            {
                let collected = self.lock();
                let items = of(&collected);
                if checked != Some(items.len()) {
                    checked = Some(items.len());
                    if done(items) {
                        return Ok(items.clone());
                    }
                }
                if Instant::now() >= deadline {
                    return Err(items.clone());
                }
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Like [`Receiver::try_wait_for`], but panics after `timeout`, with the spans received
    /// (the last [`SHOWN_ON_TIMEOUT`] of them).
    pub fn wait_for(
        &self,
        done: impl FnMut(&[ReceivedSpan]) -> bool,
        timeout: Duration,
    ) -> Vec<ReceivedSpan> {
        self.try_wait_for(done, timeout).unwrap_or_else(|spans| {
            panic!(
                "the spans wanted did not arrive within {timeout:?}; received {}, the last: {:#?}",
                spans.len(),
                &spans[spans.len().saturating_sub(SHOWN_ON_TIMEOUT)..]
            )
        })
    }

    /// Waits (like [`Receiver::wait_for`]) until `count` spans of trace `trace_id` arrived and
    /// returns those.
    pub fn wait_for_trace(
        &self,
        trace_id: &str,
        count: usize,
        timeout: Duration,
    ) -> Vec<ReceivedSpan> {
        let of_trace = |spans: &[ReceivedSpan]| -> Vec<ReceivedSpan> {
            spans
                .iter()
                .filter(|span| span.trace_id == trace_id)
                .cloned()
                .collect()
        };
        of_trace(&self.wait_for(|spans| of_trace(spans).len() >= count, timeout))
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The spans in `lines`, rotel's whole output captured elsewhere (e.g. a guest's console);
/// panics if some of it could not be parsed.
pub fn spans_in_output(lines: &[String]) -> Vec<ReceivedSpan> {
    let mut collected = Collected::default();
    let mut parser = Parser::default();
    for line in lines {
        parser.line(line, &mut collected);
    }
    parser.finish(&mut collected);
    parsed(&collected).0.clone()
}

/// The spans and the metrics `collected` holds; panics if some of rotel's output could not be
/// parsed.
fn parsed(collected: &Collected) -> (&Vec<ReceivedSpan>, &Vec<ReceivedMetric>) {
    assert!(
        collected.errors.is_empty(),
        "cannot parse rotel's output: {:#?}",
        collected.errors
    );
    (&collected.spans, &collected.metrics)
}

/// Sends each line of `source` (invalid UTF-8 replaced) until it ends.
fn spawn_reader(source: impl Read + Send + 'static, lines: Sender<String>) -> JoinHandle<()> {
    thread::spawn(move || {
        for line in BufReader::new(source).split(b'\n').map_while(Result::ok) {
            if lines
                .send(String::from_utf8_lossy(&line).into_owned())
                .is_err()
            {
                break;
            }
        }
    })
}

/// Feeds the lines to a [`Parser`], publishing the span or metric in progress once output pauses
/// for [`QUIET`], until both readers are done.
fn spawn_parser(lines: LineReceiver<String>, collected: Arc<Mutex<Collected>>) -> JoinHandle<()> {
    thread::spawn(move || {
        let lock = || collected.lock().unwrap_or_else(|p| p.into_inner());
        let mut parser = Parser::default();
        loop {
            match lines.recv_timeout(QUIET) {
                Ok(line) => {
                    let mut collected = lock();
                    collected.output.push(line.clone());
                    parser.line(&line, &mut collected);
                }
                Err(RecvTimeoutError::Timeout) => parser.finish(&mut lock()),
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        parser.finish(&mut lock());
    })
}

/// Which kind of batch rotel is printing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Signal {
    /// Spans (`ResourceSpans #N`), or nothing yet.
    #[default]
    Traces,
    /// Metrics (`ResourceMetrics #N`).
    Metrics,
}

/// A line-by-line parser of rotel's detailed log of spans and metrics, each batch handed to the
/// parser of its signal.
#[derive(Debug, Default)]
struct Parser {
    signal: Signal,
    spans: SpanParser,
    metrics: MetricParser,
}

impl Parser {
    fn line(&mut self, line: &str, out: &mut Collected) {
        let signal = if line.starts_with("ResourceSpans #") {
            Signal::Traces
        } else if line.starts_with("ResourceMetrics #") {
            Signal::Metrics
        } else {
            self.signal
        };
        if signal != self.signal {
            self.finish(out);
            self.signal = signal;
        }
        match self.signal {
            Signal::Traces => self.spans.line(line, out),
            Signal::Metrics => self.metrics.line(line, &mut out.metrics, &mut out.errors),
        }
    }

    /// Publishes the span or the metric in progress, if any.
    fn finish(&mut self, out: &mut Collected) {
        self.spans.finish_span(out);
        self.metrics
            .finish_metric(&mut out.metrics, &mut out.errors);
    }
}

/// Which list the `     -> key: value` lines belong to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Section {
    #[default]
    None,
    Resource,
    Span,
    /// A span's links: `-> Trace ID:` and `-> ID:` lines after each `SpanLink #N`.
    Links,
    /// A span's events: `-> Name:`, `-> Timestamp:` and, further in, the attributes of each
    /// `SpanEvent #N`.
    Events,
    /// Scope attributes: not recorded.
    Skipped,
}

/// A span whose lines are still coming, with its attributes unparsed (a string value may go on
/// over several lines).
#[derive(Debug, Default)]
struct Partial {
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    kind: String,
    start: String,
    end: String,
    status_code: String,
    status_message: String,
    attributes: Vec<(String, String)>,
    /// (trace id, span id) of each link.
    links: Vec<(String, String)>,
    events: Vec<PartialEvent>,
}

/// An event of a [`Partial`] span, its fields unparsed.
#[derive(Debug, Default)]
struct PartialEvent {
    name: String,
    timestamp: String,
    attributes: Vec<(String, String)>,
}

/// A line-by-line parser of rotel's detailed trace log.
#[derive(Debug, Default)]
struct SpanParser {
    resource_raw: Vec<(String, String)>,
    resource: BTreeMap<String, AttrValue>,
    scope_name: String,
    scope_version: String,
    section: Section,
    span: Option<Partial>,
}

impl SpanParser {
    fn line(&mut self, line: &str, out: &mut Collected) {
        if let Some(attr) = line.strip_prefix("     -> ") {
            let (key, value) = attr.split_once(": ").unwrap_or((attr, ""));
            let entry = (key.to_owned(), value.to_owned());
            match (self.section, self.span.as_mut()) {
                (Section::Resource, _) => self.resource_raw.push(entry),
                (Section::Span, Some(span)) => span.attributes.push(entry),
                (Section::Links, Some(span)) => match entry.0.as_str() {
                    "Trace ID" => span.links.push((entry.1, String::new())),
                    "ID" => {
                        if let Some(link) = span.links.last_mut() {
                            link.1 = entry.1;
                        }
                    }
                    _ => {}
                },
                (Section::Events, Some(span)) => {
                    if let Some(event) = span.events.last_mut() {
                        match entry.0.as_str() {
                            "Name" => event.name = entry.1,
                            "Timestamp" => event.timestamp = entry.1,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        } else if let Some(attr) = line.strip_prefix("          -> ")
            && self.section == Section::Events
            && let Some(event) = self.span.as_mut().and_then(|span| span.events.last_mut())
        {
            let (key, value) = attr.split_once(": ").unwrap_or((attr, ""));
            event.attributes.push((key.to_owned(), value.to_owned()));
        } else if line.starts_with("ResourceSpans #") {
            self.finish_span(out);
            self.resource_raw.clear();
            self.section = Section::None;
        } else if line == "Resource attributes:" {
            self.section = Section::Resource;
        } else if line.starts_with("ScopeSpans #") {
            self.finish_span(out);
            self.finish_resource(out);
            self.section = Section::None;
        } else if let Some(scope) = line.strip_prefix("InstrumentationScope ") {
            if scope == "attributes:" {
                self.section = Section::Skipped;
            } else {
                let (name, version) = scope.split_once(' ').unwrap_or((scope, ""));
                self.scope_name = name.to_owned();
                self.scope_version = version.to_owned();
            }
        } else if line.starts_with("Span #") {
            self.finish_span(out);
            self.span = Some(Partial::default());
            self.section = Section::None;
        } else if let Some(span) = self.span.as_mut() {
            if !span.field(line, &mut self.section) {
                self.other_line(line, out);
            }
        } else {
            self.other_line(line, out);
        }
    }

    /// A line that is no span field: the continuation of a multi-line string attribute, a
    /// section rotel prints and this parser skips, or one of rotel's own log lines.
    fn other_line(&mut self, line: &str, out: &mut Collected) {
        if is_log_line(line) {
            return;
        }
        let in_span = self.span.is_some();
        let last = match (self.section, self.span.as_mut()) {
            (Section::Resource, _) => self.resource_raw.last_mut(),
            (Section::Span, Some(span)) => span.attributes.last_mut(),
            _ => None,
        };
        if let Some((_, value)) = last {
            value.push('\n');
            value.push_str(line);
        } else if in_span && self.section == Section::None {
            out.errors
                .push(format!("unexpected line in a span: {line:?}"));
        }
    }

    fn finish_resource(&mut self, out: &mut Collected) {
        self.resource = parse_attributes(&self.resource_raw, &mut out.errors);
    }

    /// Publishes the span in progress, if any.
    fn finish_span(&mut self, out: &mut Collected) {
        let Some(partial) = self.span.take() else {
            return;
        };
        self.section = Section::None;
        match partial.build(self, out) {
            Ok(span) => out.spans.push(span),
            Err(error) => out.errors.push(format!("{error} in {partial:?}")),
        }
    }
}

impl Partial {
    /// Takes `line` if it is one of a span's own lines; `section` follows the section headers.
    fn field(&mut self, line: &str, section: &mut Section) -> bool {
        if let Some(start) = line.strip_prefix("Start time: ") {
            self.start = start.to_owned();
        } else if let Some(end) = line.strip_prefix("End time: ") {
            self.end = end.to_owned();
        } else if line == "Attributes:" {
            *section = Section::Span;
        } else if line == "Links:" || (line.starts_with("SpanLink #") && *section == Section::Links)
        {
            *section = Section::Links;
        } else if line == "Events:" {
            *section = Section::Events;
        } else if line.starts_with("SpanEvent #") && *section == Section::Events {
            self.events.push(Default::default());
        } else if let Some((key, value)) = line
            .strip_prefix("    ")
            .and_then(|field| field.split_once(": "))
        {
            let slot = match key.trim_end() {
                "Trace ID" => &mut self.trace_id,
                "Parent ID" => &mut self.parent_span_id,
                "ID" => &mut self.span_id,
                "Name" => &mut self.name,
                "Kind" => &mut self.kind,
                "Status code" => &mut self.status_code,
                "Status message" => &mut self.status_message,
                _ => return false,
            };
            *slot = value.to_owned();
        } else {
            return false;
        }
        true
    }

    fn build(&self, parser: &SpanParser, out: &mut Collected) -> Result<ReceivedSpan, String> {
        let kind = match self.kind.as_str() {
            "SPAN_KIND_UNSPECIFIED" => SpanKind::Unspecified,
            "SPAN_KIND_INTERNAL" => SpanKind::Internal,
            "SPAN_KIND_SERVER" => SpanKind::Server,
            "SPAN_KIND_CLIENT" => SpanKind::Client,
            "SPAN_KIND_PRODUCER" => SpanKind::Producer,
            "SPAN_KIND_CONSUMER" => SpanKind::Consumer,
            other => return Err(format!("unknown kind {other:?}")),
        };
        let status_code = match self.status_code.as_str() {
            "STATUS_CODE_UNSET" => StatusCode::Unset,
            "STATUS_CODE_OK" => StatusCode::Ok,
            "STATUS_CODE_ERROR" => StatusCode::Error,
            other => return Err(format!("unknown status code {other:?}")),
        };
        let nanos = |what: &str, text: &str| {
            text.parse::<u64>()
                .map_err(|_| format!("bad {what} time {text:?}"))
        };
        let hex = |what: &str, text: &str, len: usize| {
            if text.len() == len && text.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(text.to_owned())
            } else {
                Err(format!("bad {what} {text:?}"))
            }
        };
        Ok(ReceivedSpan {
            trace_id: hex("trace id", &self.trace_id, 32)?,
            span_id: hex("span id", &self.span_id, 16)?,
            parent_span_id: match self.parent_span_id.as_str() {
                "" => None,
                parent => Some(hex("parent id", parent, 16)?),
            },
            name: self.name.clone(),
            kind,
            start_unix_nano: nanos("start", &self.start)?,
            end_unix_nano: nanos("end", &self.end)?,
            status_code,
            status_message: self.status_message.clone(),
            attributes: parse_attributes(&self.attributes, &mut out.errors),
            resource: parser.resource.clone(),
            links: self
                .links
                .iter()
                .map(|(trace, span)| {
                    Ok((
                        hex("link trace id", trace, 32)?,
                        hex("link span id", span, 16)?,
                    ))
                })
                .collect::<Result<_, String>>()?,
            events: self
                .events
                .iter()
                .map(|event| {
                    Ok(ReceivedEvent {
                        name: event.name.clone(),
                        time_unix_nano: nanos("event", &event.timestamp)?,
                        attributes: parse_attributes(&event.attributes, &mut out.errors),
                    })
                })
                .collect::<Result<_, String>>()?,
            scope_name: parser.scope_name.clone(),
            scope_version: parser.scope_version.clone(),
        })
    }
}

/// Parses `key: value` pairs; values that do not parse are reported in `errors`.
pub(crate) fn parse_attributes(
    raw: &[(String, String)],
    errors: &mut Vec<String>,
) -> BTreeMap<String, AttrValue> {
    let mut attributes = BTreeMap::new();
    for (key, value) in raw {
        match AttrValue::parse(value) {
            Ok(value) => {
                attributes.insert(key.clone(), value);
            }
            Err(error) => errors.push(format!("attribute {key}: {error}")),
        }
    }
    attributes
}

/// Whether `line` is one of rotel's own log lines (`2026-11-23T04:33:43.655699Z  INFO …`), its
/// colours included (rotel colours them even into a pipe inside the matrix's guests).
pub(crate) fn is_log_line(line: &str) -> bool {
    let mut line = line;
    while let Some(escape) = line.strip_prefix("\x1b[") {
        line = escape.split_once('m').map_or("", |(_, rest)| rest);
    }
    let bytes = line.as_bytes();
    bytes.len() > 20
        && bytes[..4].iter().all(u8::is_ascii_digit)
        && bytes[4] == b'-'
        && bytes[10] == b'T'
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{ExponentialBucket, MetricKind, NumberValue, Temporality};

    /// Parses `text` as one burst of output.
    fn parse(text: &str) -> Collected {
        let mut out = Collected::default();
        let mut parser = Parser::default();
        for line in text.lines() {
            parser.line(line, &mut out);
        }
        parser.finish(&mut out);
        out
    }

    #[test]
    fn coloured_log_lines_are_log_lines() {
        assert!(is_log_line(
            "\x1b[2m2026-12-01T23:58:49.765091Z\x1b[0m \x1b[32m INFO\x1b[0m Shutdown signal received."
        ));
        assert!(!is_log_line("     -> error.type: Str(connect_failed)"));
    }

    /// Two batches as rotel 0.0.1a15 printed them (trailing spaces included).
    const SAMPLE: &str = "\
2026-11-23T04:33:43.655699Z  INFO Starting Rotel. grpc_endpoint=\"127.0.0.1:14317\"
ResourceSpans #0
Resource SchemaURL: 
Resource attributes:
     -> service.name: Str(svc)
     -> num: Int(7)
ScopeSpans #0
ScopeSpans SchemaURL: 
InstrumentationScope t 1.2.3
Span #0
    Trace ID       : d94f48b1836af78d1a1bda2267cadf96
    Parent ID      : 89a407f8bd8959c9
    ID             : 37c276545a5704e2
    Name           : b: with colon
    Kind           : SPAN_KIND_PRODUCER
Start time: 1795408386891641099
End time: 1795408386891656202
    Status code    : STATUS_CODE_ERROR
    Status message : refused
Links:
SpanLink #0
     -> Trace ID: d94f48b1836af78d1a1bda2267cadf96
     -> ID: 89a407f8bd8959c9
Span #1
    Trace ID       : d94f48b1836af78d1a1bda2267cadf96
    Parent ID      : 
    ID             : 89a407f8bd8959c9
    Name           : a
    Kind           : SPAN_KIND_SERVER
Start time: 1795408386891537836
End time: 1795408386891729791
    Status code    : STATUS_CODE_UNSET
    Status message : 
Attributes:
     -> multi: Str(line1
line2)
     -> f: Double(1.5)
     -> b: Bool(true)
     -> arr: Slice(Str(a), Str(b))
Events:
SpanEvent #0
     -> Name: ev1
     -> Timestamp: 1795408386891640000
     -> DroppedAttributesCount: 0
     -> Attributes::
          -> k: Str(v)
SpanEvent #1
     -> Name: ev2
     -> Timestamp: 1795408386891650000
     -> DroppedAttributesCount: 0
2026-11-23T04:33:44.987022Z  INFO Shutdown signal received.
";

    #[test]
    fn parses_spans_resource_and_typed_attributes() {
        let out = parse(SAMPLE);
        assert_eq!(out.errors, Vec::<String>::new());
        let [child, root] = out.spans.as_slice() else {
            panic!("expected 2 spans: {:#?}", out.spans);
        };
        assert_eq!(child.name, "b: with colon");
        assert_eq!(child.kind, SpanKind::Producer);
        assert_eq!(child.parent_span_id.as_deref(), Some("89a407f8bd8959c9"));
        assert_eq!(child.duration_nanos(), 15103);
        assert_eq!(child.status_code, StatusCode::Error);
        assert_eq!(child.status_message, "refused");
        assert!(child.attributes.is_empty(), "links are not attributes");
        assert_eq!(
            child.links,
            [(
                "d94f48b1836af78d1a1bda2267cadf96".to_owned(),
                "89a407f8bd8959c9".to_owned()
            )]
        );
        assert!(root.links.is_empty());
        assert_eq!(root.parent_span_id, None);
        assert_eq!(root.status_code, StatusCode::Unset);
        assert_eq!(root.status_message, "");
        assert_eq!(root.str_attr("multi"), Some("line1\nline2"));
        assert_eq!(root.attributes["f"], AttrValue::Double(1.5));
        assert_eq!(root.attributes["b"], AttrValue::Bool(true));
        assert_eq!(
            root.attributes["arr"],
            AttrValue::Other("Slice(Str(a), Str(b))".into())
        );
        assert!(
            !root.attributes.contains_key("k"),
            "event attributes are the event's"
        );
        assert!(child.events.is_empty());
        let [ev1, ev2] = root.events.as_slice() else {
            panic!("expected 2 events: {:#?}", root.events);
        };
        assert_eq!(
            (ev1.name.as_str(), ev1.time_unix_nano),
            ("ev1", 1795408386891640000)
        );
        assert_eq!(ev1.attributes["k"].as_str(), Some("v"));
        assert_eq!(
            (ev2.name.as_str(), ev2.time_unix_nano, ev2.attributes.len()),
            ("ev2", 1795408386891650000, 0)
        );
        for span in [child, root] {
            assert_eq!(span.resource["service.name"].as_str(), Some("svc"));
            assert_eq!(span.resource["num"].as_i64(), Some(7));
            assert_eq!(
                (span.scope_name.as_str(), span.scope_version.as_str()),
                ("t", "1.2.3")
            );
        }
    }

    #[test]
    fn reports_what_it_cannot_parse() {
        let out = parse(&SAMPLE.replace("SPAN_KIND_SERVER", "SPAN_KIND_BOGUS"));
        assert_eq!(out.spans.len(), 1);
        assert!(
            out.errors[0].starts_with("unknown kind"),
            "{:?}",
            out.errors
        );
    }

    /// Metrics and spans as one rotel 0.0.1a15 logging both printed them, batch after batch:
    /// metrics, spans, metrics (the first of its three), spans. opentelemetry-otlp 0.33.1 sent
    /// them over gRPC, the metrics with delta temporality, with a resource the spans do not have.
    const INTERLEAVED: &str = "\
2026-12-02T06:16:24.027814Z  INFO Starting Rotel. grpc_endpoint=\"127.0.0.1:14417\" http_endpoint=\"127.0.0.1:14418\"
ResourceMetrics #0
Resource SchemaURL: 
Resource attributes:
     -> service.name: Str(metricgen)
     -> host.name: Str(h1)
ScopeMetrics #0
ScopeMetrics SchemaURL: 
InstrumentationScope gen-scope 9.8.7
InstrumentationScope attributes:
     -> scope.attr: Str(x)
Metric #0
Descriptor:
     -> Name: tcp.fcounter
     -> Description: 
     -> Unit: 
     -> DataType: Sum
     -> IsMonotonic: true
     -> AggregationTemporality: AGGREGATION_TEMPORALITY_DELTA
NumberDataPoints #0
Data point attributes:
     -> integral: Bool(true)
StartTimestamp: 1796192185432782333
Timestamp: 1796192185433128009
Value: 2
Metric #1
Descriptor:
     -> Name: tcp.exp
     -> Description: 
     -> Unit: 
     -> DataType: ExponentialHistogram
     -> AggregationTemporality: AGGREGATION_TEMPORALITY_DELTA
ExponentialHistogramDataPoints #0
StartTimestamp: 1796192185432815172
Timestamp: 1796192185433139736
Count: 4
Sum: 18.5
Min: -1.5
Max: 17
Bucket [-1.681792830507429, -1.414213562373095), Count: 1
Bucket [0, 0], Count: 1
Bucket (2.82842712474619, 3.363585661014858], Count: 1
Bucket (3.363585661014858, 4], Count: 0
Bucket (4, 4.756828460010884], Count: 0
Bucket (4.756828460010884, 5.656854249492381], Count: 0
Bucket (5.656854249492381, 6.727171322029717], Count: 0
Bucket (6.727171322029717, 7.999999999999998], Count: 0
Bucket (7.999999999999998, 9.513656920021766], Count: 0
Bucket (9.513656920021766, 11.31370849898476], Count: 0
Bucket (11.31370849898476, 13.454342644059432], Count: 0
Bucket (13.454342644059432, 15.999999999999998], Count: 0
Bucket (15.999999999999998, 19.027313840043536], Count: 1
Metric #2
Descriptor:
     -> Name: tcp.ucounter
     -> Description: 
     -> Unit: 
     -> DataType: Sum
     -> IsMonotonic: true
     -> AggregationTemporality: AGGREGATION_TEMPORALITY_DELTA
NumberDataPoints #0
StartTimestamp: 1796192185432838908
Timestamp: 1796192185433149861
Value: 9223372036854775807
ResourceSpans #0
Resource SchemaURL: 
ScopeSpans #0
ScopeSpans SchemaURL: 
InstrumentationScope span-scope 
Span #0
    Trace ID       : 0000000000000000000000000000abcd
    Parent ID      : 
    ID             : 0000000000001234
    Name           : span-in-between
    Kind           : SPAN_KIND_CLIENT
Start time: 1700000000000000001
End time: 1700000000000000002
    Status code    : STATUS_CODE_UNSET
    Status message : 
Attributes:
     -> a: Int(1)
ResourceMetrics #0
Resource SchemaURL: 
Resource attributes:
     -> service.name: Str(metricgen)
     -> host.name: Str(h1)
ScopeMetrics #0
ScopeMetrics SchemaURL: 
InstrumentationScope gen-scope 9.8.7
InstrumentationScope attributes:
     -> scope.attr: Str(x)
Metric #0
Descriptor:
     -> Name: tcp.fcounter
     -> Description: 
     -> Unit: 
     -> DataType: Sum
     -> IsMonotonic: true
     -> AggregationTemporality: AGGREGATION_TEMPORALITY_DELTA
NumberDataPoints #0
Data point attributes:
     -> integral: Bool(true)
StartTimestamp: 1796192185433128009
Timestamp: 1796192186045502184
Value: 2
ResourceSpans #0
Resource SchemaURL: 
ScopeSpans #0
ScopeSpans SchemaURL: 
InstrumentationScope span-scope 
Span #0
    Trace ID       : 0000000000000000000000000000abcd
    Parent ID      : 
    ID             : 0000000000001234
    Name           : span-in-between
    Kind           : SPAN_KIND_CLIENT
Start time: 1700000000000000001
End time: 1700000000000000002
    Status code    : STATUS_CODE_UNSET
    Status message : 
Attributes:
     -> a: Int(1)
2026-12-02T06:16:27.657104Z  INFO Shutdown signal received.
";

    #[test]
    #[expect(
        clippy::approx_constant,
        reason = "rotel's bound -1.414213562373095 is not -SQRT_2 (1.4142135623730951)"
    )]
    fn spans_and_metrics_batches_interleave() {
        let out = parse(INTERLEAVED);
        assert_eq!(out.errors, Vec::<String>::new());
        let names: Vec<&str> = out.metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            ["tcp.fcounter", "tcp.exp", "tcp.ucounter", "tcp.fcounter"]
        );
        assert_eq!(out.spans.len(), 2);
        for span in &out.spans {
            assert_eq!(span.name, "span-in-between");
            assert!(span.resource.is_empty(), "the metrics' resource is theirs");
            assert_eq!(span.scope_name, "span-scope");
            assert_eq!(span.attributes["a"], AttrValue::Int(1));
        }
        for metric in &out.metrics {
            assert_eq!(metric.resource["service.name"].as_str(), Some("metricgen"));
            assert_eq!(metric.scope_name, "gen-scope");
            assert_eq!(metric.temporality, Some(Temporality::Delta));
        }
        let [first, .., second] = out.metrics.as_slice() else {
            unreachable!("4 metrics");
        };
        let point = |metric: &ReceivedMetric| {
            metric
                .point(&[("integral", AttrValue::Bool(true))])
                .cloned()
                .expect("the point of integral=true")
        };
        let (first, second) = (point(first), point(second));
        assert_eq!(first.number(), Some(NumberValue::Int(2)), "2.0 prints as 2");
        assert_eq!(first.number().map(NumberValue::as_f64), Some(2.0));
        assert_eq!(
            second.start_unix_nano, first.time_unix_nano,
            "a delta point starts where the one before ended"
        );
        assert_eq!(
            out.metrics[2].data_points[0].number(),
            Some(NumberValue::Int(i64::MAX))
        );

        let exp = &out.metrics[1];
        assert_eq!(exp.kind, MetricKind::ExponentialHistogram);
        let histogram = exp.data_points[0]
            .exponential_histogram()
            .expect("an exponential histogram's point");
        assert_eq!(
            (histogram.count, histogram.sum, histogram.min, histogram.max),
            (4, Some(18.5), Some(-1.5), Some(17.0))
        );
        assert_eq!(histogram.buckets.len(), 13);
        assert_eq!(
            histogram.buckets[..3],
            [
                ExponentialBucket {
                    lower: -1.681792830507429,
                    upper: -1.414213562373095,
                    count: 1
                },
                ExponentialBucket {
                    lower: 0.0,
                    upper: 0.0,
                    count: 1
                },
                ExponentialBucket {
                    lower: 2.82842712474619,
                    upper: 3.363585661014858,
                    count: 1
                },
            ]
        );
        assert_eq!(
            histogram.buckets[12],
            ExponentialBucket {
                lower: 15.999999999999998,
                upper: 19.027313840043536,
                count: 1
            }
        );
        let counted: u64 = histogram.buckets.iter().map(|bucket| bucket.count).sum();
        assert_eq!(counted, histogram.count);
    }
}
