//! An application span linked to the tcpstates agent's trace of its TCP connection.
//!
//! ```text
//! link_to_connection --connect HOST:PORT [--line TEXT] [--agent-sampler-ratio R]
//! ```
//!
//! Connects to `HOST:PORT`, computes the connection's `SpanContext` with
//! `agent_common::correlation` (from the host's boot id and the socket's cookie, the same
//! ids the agent derives in the kernel's view), starts a `request` span (kind Client) with a
//! link to it (`tcpstates.link=connection`), writes `TEXT` and a blank line (CRLF each; by
//! default an HTTP/1.0 request, so a web server answers and closes), reads until end of file
//! or for 1 s, ends the span and exports it over OTLP.
//!
//! The exporter follows the standard variables: `OTEL_EXPORTER_OTLP_{,TRACES_}PROTOCOL`
//! (`http/protobuf` by default, `http/json` or `grpc`), `OTEL_EXPORTER_OTLP_{,TRACES_}ENDPOINT`,
//! `_HEADERS`, `_TIMEOUT`; the service name is `OTEL_SERVICE_NAME`, else `link-to-connection`.
//!
//! On success it prints one line on stdout:
//!
//! ```text
//! cookie=N trace_id=<32 hex> root_span_id=<16 hex> request_trace_id=<32 hex> request_span_id=<16 hex> agent_kept=<true|false>
//! ```
//!
//! `agent_kept` says whether the agent exports the connection's trace when it samples with
//! `OTEL_TRACES_SAMPLER=traceidratio` and `OTEL_TRACES_SAMPLER_ARG=R` (`--agent-sampler-ratio
//! R`, default 1): the agent's sampler is the SDK's, deciding on the trace id alone, so the
//! application asks the same sampler about the same id (a keep rule may still keep a session
//! the sampler dropped).
//!
//! and exits 0; on any failure (connecting, the exchange, the export) it prints one line on
//! stderr and exits 1. Every wait is bounded: connect 5 s, write 5 s, read 1 s, export 15 s.

use std::{
    env,
    io::{self, Read as _, Write as _},
    net::{TcpStream, ToSocketAddrs as _},
    process::ExitCode,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use agent_common::correlation::ConnectionIds;
use anyhow::{Context as _, anyhow, bail};
use clap::Parser;
use opentelemetry::{
    KeyValue,
    trace::{Link, Span as _, SpanKind, Status, TraceId, Tracer as _, TracerProvider as _},
};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::{
    Resource,
    error::{OTelSdkError, OTelSdkResult},
    trace::{
        Sampler, SamplingDecision, SdkTracerProvider, ShouldSample as _, SpanData, SpanExporter,
    },
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to read the answer at most.
const READ_TIMEOUT: Duration = Duration::from_secs(1);
/// Bound on the export of the span, on top of the exporter's own `OTEL_EXPORTER_OTLP_TIMEOUT`.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(15);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_SERVICE_NAME: &str = "link-to-connection";

/// Link a request span to the tcpstates agent's trace of its TCP connection.
#[derive(Debug, Parser)]
struct Args {
    /// Where to connect.
    #[arg(long, value_name = "HOST:PORT")]
    connect: String,
    /// The line written to the connection, followed by a blank line.
    #[arg(long, value_name = "TEXT", default_value = "GET / HTTP/1.0")]
    line: String,
    /// The ratio the agent samples traces with (its `OTEL_TRACES_SAMPLER_ARG` with
    /// `traceidratio`).
    #[arg(long, value_name = "R", default_value_t = 1.0)]
    agent_sampler_ratio: f64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("link_to_connection: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<String> {
    // The OTLP clients (reqwest, tonic) do their I/O on this runtime. The simple span
    // processor exports on the thread that ends a span, this one, which therefore enters
    // the runtime's context without being one of its workers.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let _runtime = runtime.enter();

    let outcome = Arc::new(Mutex::new(None));
    let exporter = CheckedExporter {
        inner: build_exporter()?,
        outcome: Arc::clone(&outcome),
    };
    let provider = SdkTracerProvider::builder()
        .with_resource(resource())
        .with_simple_exporter(exporter)
        .build();
    let tracer = provider.tracer("link_to_connection");

    let stream = connect(&args.connect)?;
    let peer = stream.peer_addr().context("peer address")?;
    let connection = ConnectionIds::of_socket(&stream).context("the connection's ids")?;

    let mut span = tracer
        .span_builder("request")
        .with_kind(SpanKind::Client)
        .with_links(vec![Link::new(
            connection.span_context(),
            vec![KeyValue::new("tcpstates.link", "connection")],
            0,
        )])
        .with_attributes([
            KeyValue::new("network.transport", "tcp"),
            KeyValue::new("network.peer.address", peer.ip().to_string()),
            KeyValue::new("network.peer.port", i64::from(peer.port())),
        ])
        .start(&tracer);
    let request = span.span_context().clone();
    let exchanged = exchange(&stream, &args.line);
    match &exchanged {
        Ok(received) => span.set_attribute(KeyValue::new("tcpstates.example.received_bytes", {
            i64::try_from(*received).unwrap_or(i64::MAX)
        })),
        Err(error) => span.set_status(Status::error(error.to_string())),
    }
    span.end();
    drop(stream);
    let shutdown = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT);

    exchanged.with_context(|| format!("talking to {peer}"))?;
    match outcome
        .lock()
        .map_err(|_| anyhow!("export outcome lock poisoned"))?
        .take()
    {
        Some(Ok(())) => {}
        Some(Err(error)) => bail!("exporting the span: {error}"),
        None => bail!("the span was not exported"),
    }
    shutdown.context("shutting the tracer provider down")?;

    // The agent's decision: the SDK's sampler on the connection's trace id.
    let agent_kept = Sampler::TraceIdRatioBased(args.agent_sampler_ratio)
        .should_sample(
            None,
            TraceId::from(connection.trace_id_u128()),
            "",
            &SpanKind::Internal,
            &[],
            &[],
        )
        .decision
        == SamplingDecision::RecordAndSample;
    Ok(format!(
        "cookie={} trace_id={:032x} root_span_id={:016x} request_trace_id={} request_span_id={} \
         agent_kept={agent_kept}",
        connection.cookie(),
        connection.trace_id_u128(),
        connection.root_span_id_u64(),
        request.trace_id(),
        request.span_id(),
    ))
}

/// The OTLP exporter for the protocol the environment asks for; it reads the endpoint,
/// headers and timeout from the environment itself.
fn build_exporter() -> anyhow::Result<opentelemetry_otlp::SpanExporter> {
    let protocol = [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]
    .into_iter()
    .find_map(|variable| env::var(variable).ok().map(|value| (variable, value)));
    let builder = opentelemetry_otlp::SpanExporter::builder();
    let exporter = match protocol
        .as_ref()
        .map(|(variable, value)| (*variable, value.trim()))
    {
        None | Some((_, "http/protobuf")) => builder
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .build(),
        Some((_, "http/json")) => builder
            .with_http()
            .with_protocol(Protocol::HttpJson)
            .build(),
        Some((_, "grpc")) => builder.with_tonic().build(),
        Some((variable, value)) => {
            bail!("{variable}={value}: the protocol must be http/protobuf, http/json or grpc")
        }
    };
    exporter.context("building the OTLP exporter")
}

/// `service.name` from `OTEL_SERVICE_NAME`, else [`DEFAULT_SERVICE_NAME`], and what
/// `OTEL_RESOURCE_ATTRIBUTES` adds.
fn resource() -> Resource {
    let name = env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned());
    Resource::builder().with_service_name(name).build()
}

/// Connects to the first address of `target` that answers within [`CONNECT_TIMEOUT`].
fn connect(target: &str) -> anyhow::Result<TcpStream> {
    let addresses = target
        .to_socket_addrs()
        .with_context(|| format!("resolving {target} (expected HOST:PORT)"))?;
    let mut last_error = None;
    for address in addresses {
        match TcpStream::connect_timeout(&address, CONNECT_TIMEOUT) {
            Ok(stream) => return Ok(stream),
            Err(error) => {
                last_error = Some(anyhow!(error).context(format!("connecting to {address}")))
            }
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow!("{target} resolves to no address")))
}

/// Writes `line` and a blank line, then reads until end of file or [`READ_TIMEOUT`];
/// returns the bytes received.
fn exchange(mut stream: &TcpStream, line: &str) -> io::Result<usize> {
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    stream.write_all(format!("{line}\r\n\r\n").as_bytes())?;
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut buffer = [0u8; 4096];
    let mut received = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(received);
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buffer) {
            Ok(0) => return Ok(received),
            Ok(n) => received += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(received);
            }
            Err(error) => return Err(error),
        }
    }
}

/// The OTLP exporter, each export bounded by [`EXPORT_TIMEOUT`] and its outcome kept: the
/// SDK's span processors only log export failures, and this program reports them.
#[derive(Debug)]
struct CheckedExporter {
    inner: opentelemetry_otlp::SpanExporter,
    /// `None` until an export ends; then `Ok`, or the first failure's message.
    outcome: Arc<Mutex<Option<Result<(), String>>>>,
}

impl SpanExporter for CheckedExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let result = tokio::time::timeout(EXPORT_TIMEOUT, self.inner.export(batch))
            .await
            .unwrap_or(Err(OTelSdkError::Timeout(EXPORT_TIMEOUT)));
        if let Ok(mut outcome) = self.outcome.lock() {
            // The first failure is the one to report.
            if !matches!(*outcome, Some(Err(_))) {
                *outcome = Some(result.as_ref().map_err(ToString::to_string).copied());
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
