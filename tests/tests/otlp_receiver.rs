//! Self-test of the OTLP receiver harness (`integration_tests::otlp`), without the agent: spans
//! with known ids, times, kinds, statuses, attributes, links and events are exported with the OpenTelemetry Rust
//! SDK's own OTLP exporter, over gRPC and over HTTP, to a real rotel process, and must come back
//! parsed exactly. Also covers a receiver that stops and restarts on the same ports, and a chain
//! of two receivers. No root needed; ports are free ones the kernel picks.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use integration_tests::otlp::{
    AttrValue, Ports, ReceivedEvent, ReceivedSpan, Receiver, SpanKind, StatusCode,
};
use opentelemetry::trace::{
    Event, Link, SpanContext, SpanId, SpanKind as OtelKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};

/// How long spans may take from export to rotel's log (it batches for 200 ms).
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Start of the root span: 2023-11-14T22:13:20.123456789Z, nanoseconds that a microsecond
/// rounding anywhere would change.
const ROOT_START: u64 = 1_700_000_000_123_456_789;

/// How to reach the receiver.
#[derive(Debug, Clone, Copy)]
enum Transport {
    Grpc,
    Http,
}

/// A trace of a root span (CLIENT, status Ok) and one child (INTERNAL, status Error), shaped like
/// the agent's: `trace` and `service` tell traces apart.
struct Sample {
    trace_id: u128,
    service: &'static str,
}

impl Sample {
    fn trace_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// Root span id: derived from the trace id so that samples differ.
    fn root_id(&self) -> u64 {
        (self.trace_id as u64) | 1
    }

    fn child_id(&self) -> u64 {
        self.root_id().rotate_left(17) | 1
    }

    fn spans(&self) -> Vec<SpanData> {
        let at = |nanos: u64| SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos);
        let context = |span_id: u64| {
            SpanContext::new(
                TraceId::from(self.trace_id),
                SpanId::from(span_id),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            )
        };
        let scope = InstrumentationScope::builder("otlp-selftest")
            .with_version("1.2.3")
            .build();
        let root = SpanData {
            span_context: context(self.root_id()),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: OtelKind::Client,
            name: "tcp connect 127.0.0.1:8080".into(),
            start_time: at(ROOT_START),
            end_time: at(ROOT_START + 5_000_001),
            attributes: vec![
                KeyValue::new("network.transport", "tcp"),
                KeyValue::new("network.peer.port", 8080_i64),
                KeyValue::new("ratio", 0.25_f64),
                KeyValue::new("tcpstates.session.incomplete", false),
                KeyValue::new("quoted", "a \"b\", c=d: e)"),
            ],
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Ok,
            instrumentation_scope: scope.clone(),
        };
        let child = SpanData {
            span_context: context(self.child_id()),
            parent_span_id: SpanId::from(self.root_id()),
            span_kind: OtelKind::Internal,
            name: "SYN_SENT".into(),
            start_time: at(ROOT_START + 1),
            end_time: at(ROOT_START + 1_234_568),
            attributes: vec![KeyValue::new("network.connection.state", "syn_sent")],
            events: {
                let mut events = SpanEvents::default();
                events.events.push(Event::new(
                    "retransmit",
                    at(ROOT_START + 1_000_003),
                    vec![KeyValue::new("tcpstates.retransmit.kind", "syn")],
                    0,
                ));
                events
            },
            links: {
                let mut links = SpanLinks::default();
                links
                    .links
                    .push(Link::with_context(context(self.root_id())));
                links
            },
            status: Status::error("connection refused"),
            instrumentation_scope: scope,
            ..root.clone()
        };
        vec![child, root]
    }

    /// What the receiver must report for [`Sample::spans`], in the same order.
    fn expected(&self) -> Vec<ReceivedSpan> {
        let resource = BTreeMap::from([
            (
                "service.name".to_owned(),
                AttrValue::Str(self.service.into()),
            ),
            (
                "host.name".to_owned(),
                AttrValue::Str("selftest-host".into()),
            ),
        ]);
        let root = ReceivedSpan {
            trace_id: self.trace_hex(),
            span_id: format!("{:016x}", self.root_id()),
            parent_span_id: None,
            name: "tcp connect 127.0.0.1:8080".into(),
            kind: SpanKind::Client,
            start_unix_nano: ROOT_START,
            end_unix_nano: ROOT_START + 5_000_001,
            status_code: StatusCode::Ok,
            status_message: String::new(),
            attributes: BTreeMap::from([
                ("network.transport".to_owned(), AttrValue::Str("tcp".into())),
                ("network.peer.port".to_owned(), AttrValue::Int(8080)),
                ("ratio".to_owned(), AttrValue::Double(0.25)),
                (
                    "tcpstates.session.incomplete".to_owned(),
                    AttrValue::Bool(false),
                ),
                (
                    "quoted".to_owned(),
                    AttrValue::Str("a \"b\", c=d: e)".into()),
                ),
            ]),
            resource,
            links: Vec::new(),
            events: Vec::new(),
            scope_name: "otlp-selftest".into(),
            scope_version: "1.2.3".into(),
        };
        let child = ReceivedSpan {
            span_id: format!("{:016x}", self.child_id()),
            parent_span_id: Some(root.span_id.clone()),
            name: "SYN_SENT".into(),
            kind: SpanKind::Internal,
            start_unix_nano: ROOT_START + 1,
            end_unix_nano: ROOT_START + 1_234_568,
            status_code: StatusCode::Error,
            status_message: "connection refused".into(),
            attributes: BTreeMap::from([(
                "network.connection.state".to_owned(),
                AttrValue::Str("syn_sent".into()),
            )]),
            links: vec![(self.trace_hex(), format!("{:016x}", self.root_id()))],
            events: vec![ReceivedEvent {
                name: "retransmit".into(),
                time_unix_nano: ROOT_START + 1_000_003,
                attributes: BTreeMap::from([(
                    "tcpstates.retransmit.kind".to_owned(),
                    AttrValue::Str("syn".into()),
                )]),
            }],
            ..root.clone()
        };
        vec![child, root]
    }

    /// Exports the sample's spans in one request to `endpoint` and waits for the answer.
    fn export(&self, transport: Transport, endpoint: &str) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("tokio runtime: {e}"));
        runtime.block_on(async {
            let builder = opentelemetry_otlp::SpanExporter::builder();
            let built = match transport {
                Transport::Grpc => builder.with_tonic().with_endpoint(endpoint).build(),
                Transport::Http => builder
                    .with_http()
                    .with_protocol(Protocol::HttpBinary)
                    .with_endpoint(endpoint)
                    .build(),
            };
            let mut exporter =
                built.unwrap_or_else(|e| panic!("{transport:?} exporter to {endpoint}: {e}"));
            exporter.set_resource(
                &Resource::builder_empty()
                    .with_service_name(self.service)
                    .with_attribute(KeyValue::new("host.name", "selftest-host"))
                    .build(),
            );
            exporter
                .export(self.spans())
                .await
                .unwrap_or_else(|e| panic!("{transport:?} export to {endpoint}: {e}"));
        });
    }
}

/// Exports a sample over `transport` and checks that it comes back exactly.
fn round_trip(transport: Transport, sample: &Sample) {
    let receiver = Receiver::start();
    let endpoint = match transport {
        Transport::Grpc => receiver.grpc_endpoint(),
        Transport::Http => receiver.http_traces_endpoint(),
    };
    sample.export(transport, &endpoint);
    let received = receiver.wait_for_trace(&sample.trace_hex(), 2, ARRIVAL_TIMEOUT);
    assert_eq!(received, sample.expected());
    let [child, root] = received.as_slice() else {
        unreachable!("compared above");
    };
    assert_eq!(child.duration_nanos(), 1_234_567);
    assert_eq!(root.duration_nanos(), 5_000_001);
}

#[test]
fn grpc_spans_come_back_exactly() {
    round_trip(
        Transport::Grpc,
        &Sample {
            trace_id: 0x0af7651916cd43dd8448eb211c80319c,
            service: "selftest-grpc",
        },
    );
}

#[test]
fn http_spans_come_back_exactly() {
    round_trip(
        Transport::Http,
        &Sample {
            trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736,
            service: "selftest-http",
        },
    );
}

#[test]
fn receiver_starts_late_and_restarts_on_the_same_ports() {
    let ports = Ports::free();
    let mut receiver = Receiver::start_on(ports);
    assert_eq!(receiver.ports(), ports);
    let first = Sample {
        trace_id: 0x11111111111111111111111111111111,
        service: "selftest-restart",
    };
    first.export(Transport::Grpc, &receiver.grpc_endpoint());
    receiver.wait_for_trace(&first.trace_hex(), 2, ARRIVAL_TIMEOUT);

    receiver.stop();
    assert!(!receiver.is_running());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", ports.grpc)).is_err(),
        "port {} still accepts after stop",
        ports.grpc
    );

    receiver.restart();
    let second = Sample {
        trace_id: 0x22222222222222222222222222222222,
        service: "selftest-restart",
    };
    second.export(Transport::Http, &receiver.http_traces_endpoint());
    let received = receiver.wait_for_trace(&second.trace_hex(), 2, ARRIVAL_TIMEOUT);
    assert_eq!(received, second.expected());
    assert_eq!(
        receiver.spans().len(),
        4,
        "spans from before the restart are kept"
    );
}

#[test]
fn chained_receiver_forwards_every_span() {
    let last = Receiver::start();
    let first = Receiver::start_forwarding(Ports::free(), &last.grpc_endpoint());
    let sample = Sample {
        trace_id: 0x33333333333333333333333333333333,
        service: "selftest-chain",
    };
    sample.export(Transport::Http, &first.http_traces_endpoint());
    assert_eq!(
        first.wait_for_trace(&sample.trace_hex(), 2, ARRIVAL_TIMEOUT),
        sample.expected()
    );
    assert_eq!(
        last.wait_for_trace(&sample.trace_hex(), 2, ARRIVAL_TIMEOUT),
        sample.expected()
    );
}
