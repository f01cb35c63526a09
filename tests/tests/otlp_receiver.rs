//! Self-test of the OTLP receiver harness (`integration_tests::otlp`), without the agent: spans
//! with known ids, times, kinds, statuses, attributes, links and events are exported with the
//! OpenTelemetry Rust SDK's own OTLP exporter, over gRPC and over HTTP, to a real rotel process,
//! and must come back parsed exactly; so must metrics of every kind the SDK's meter provider
//! exports with opentelemetry-otlp's metric exporter, with delta and with cumulative temporality.
//! Also covers a receiver that stops and restarts on the same ports, and a chain of two receivers.
//! No root needed; ports are free ones the kernel picks.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use integration_tests::metrics::{
    DataPoint, HistogramValue, MetricKind, NumberValue, PointValue, ReceivedMetric, Temporality,
};
use integration_tests::otlp::{
    AttrValue, Ports, ReceivedEvent, ReceivedSpan, Receiver, SpanKind, StatusCode,
};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::{
    Event, Link, SpanContext, SpanId, SpanKind as OtelKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{MetricExporter, Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality as SdkTemporality};
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

/// The metrics of [`MetricsSample`], in the order they are created.
const METRIC_NAMES: [&str; 4] = [
    "selftest.rtt",
    "selftest.bytes",
    "selftest.open",
    "selftest.cwnd",
];

/// The upper bounds of the histogram's buckets but the last.
const RTT_BOUNDS: [f64; 3] = [0.001, 0.01, 0.1];

/// opentelemetry-otlp's metric exporter, each export run on a tokio runtime: the periodic reader
/// exports from a thread of its own, outside any runtime, which neither transport's client can
/// work from (reqwest's panics, "there is no reactor running").
#[derive(Debug)]
struct OnRuntime {
    exporter: MetricExporter,
    runtime: tokio::runtime::Handle,
}

impl PushMetricExporter for OnRuntime {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        self.runtime.block_on(self.exporter.export(metrics))
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.exporter.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.exporter.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> SdkTemporality {
        self.exporter.temporality()
    }
}

/// A histogram, a counter, an up-down counter and a gauge, shaped like the agent's, measured in
/// two rounds, each exported in one request of its own: `service` tells samples apart.
struct MetricsSample {
    temporality: SdkTemporality,
    service: &'static str,
}

impl MetricsSample {
    /// Records both rounds, exporting each to `endpoint` and waiting for the answer, then shuts
    /// the meter provider down (which may export once more).
    fn export(&self, transport: Transport, endpoint: &str) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("tokio runtime: {e}"));
        let builder = MetricExporter::builder();
        let built = {
            let _entered = runtime.enter();
            match transport {
                Transport::Grpc => builder
                    .with_tonic()
                    .with_endpoint(endpoint)
                    .with_temporality(self.temporality)
                    .build(),
                Transport::Http => builder
                    .with_http()
                    .with_protocol(Protocol::HttpBinary)
                    .with_endpoint(endpoint)
                    .with_temporality(self.temporality)
                    .build(),
            }
        };
        let exporter =
            built.unwrap_or_else(|e| panic!("{transport:?} exporter to {endpoint}: {e}"));
        let reader = PeriodicReader::builder(OnRuntime {
            exporter,
            runtime: runtime.handle().clone(),
        })
        .with_interval(Duration::from_secs(3600))
        .build();
        let provider = SdkMeterProvider::builder()
            .with_reader(reader)
            .with_resource(
                Resource::builder_empty()
                    .with_service_name(self.service)
                    .with_attribute(KeyValue::new("host.name", "selftest-host"))
                    .build(),
            )
            .build();
        let meter = provider.meter_with_scope(
            InstrumentationScope::builder("otlp-selftest")
                .with_version("1.2.3")
                .build(),
        );
        let rtt = meter
            .f64_histogram(METRIC_NAMES[0])
            .with_description("Round trip time")
            .with_unit("s")
            .with_boundaries(RTT_BOUNDS.to_vec())
            .build();
        let bytes = meter
            .u64_counter(METRIC_NAMES[1])
            .with_description("Bytes sent")
            .with_unit("By")
            .build();
        let open = meter
            .i64_up_down_counter(METRIC_NAMES[2])
            .with_description("Open connections")
            .with_unit("{connection}")
            .build();
        let cwnd = meter
            .f64_gauge(METRIC_NAMES[3])
            .with_description("Congestion window")
            .with_unit("{segment}")
            .build();
        let established = [
            KeyValue::new("network.peer.port", 8080_i64),
            KeyValue::new("state", "ESTABLISHED"),
            KeyValue::new("ok", true),
        ];
        let flush = |round: &str| {
            provider
                .force_flush()
                .unwrap_or_else(|e| panic!("{transport:?} export of the {round} round: {e}"))
        };

        rtt.record(0.0005, &established);
        rtt.record(0.05, &established);
        rtt.record(2.5, &established);
        rtt.record(0.002, &[KeyValue::new("state", "SYN_SENT")]);
        bytes.add(100, &[KeyValue::new("direction", "tx")]);
        bytes.add(7, &[KeyValue::new("direction", "rx")]);
        open.add(3, &[]);
        open.add(-5, &[]);
        cwnd.record(14.5, &[KeyValue::new("peer", "a")]);
        flush("first");

        rtt.record(0.05, &established);
        bytes.add(10, &[KeyValue::new("direction", "tx")]);
        open.add(1, &[]);
        cwnd.record(20.25, &[KeyValue::new("peer", "a")]);
        flush("second");

        provider
            .shutdown()
            .unwrap_or_else(|e| panic!("{transport:?} meter provider shutdown: {e}"));
    }

    /// The temporality of the receiver's report for metrics exported with `self.temporality`.
    fn temporality(&self) -> Temporality {
        match self.temporality {
            SdkTemporality::Delta => Temporality::Delta,
            _ => Temporality::Cumulative,
        }
    }

    /// What the receiver must report for each of [`METRIC_NAMES`]: its two exports, their times
    /// zeroed and their points in [`sorted_points`] order.
    fn expected(&self) -> [[ReceivedMetric; 2]; 4] {
        let delta = self.temporality() == Temporality::Delta;
        let metric =
            |name: &str, description: &str, unit: &str, kind, temporality| ReceivedMetric {
                name: name.into(),
                description: description.into(),
                unit: unit.into(),
                kind,
                temporality,
                data_points: Vec::new(),
                resource: BTreeMap::from([
                    (
                        "service.name".to_owned(),
                        AttrValue::Str(self.service.into()),
                    ),
                    (
                        "host.name".to_owned(),
                        AttrValue::Str("selftest-host".into()),
                    ),
                ]),
                scope_name: "otlp-selftest".into(),
                scope_version: "1.2.3".into(),
            };
        let point = |attributes: &[(&str, AttrValue)], value| DataPoint {
            attributes: attributes
                .iter()
                .map(|(key, value)| ((*key).to_owned(), value.clone()))
                .collect(),
            start_unix_nano: 0,
            time_unix_nano: 0,
            value,
        };
        let with_points = |metric: &ReceivedMetric, points: Vec<DataPoint>| ReceivedMetric {
            data_points: sorted_points(points),
            ..metric.clone()
        };
        let histogram = |count, sum, min, max, bucket_counts: [u64; 4]| {
            PointValue::Histogram(HistogramValue {
                count,
                sum: Some(sum),
                min: Some(min),
                max: Some(max),
                explicit_bounds: RTT_BOUNDS.to_vec(),
                bucket_counts: bucket_counts.to_vec(),
            })
        };
        let int = |value| PointValue::Number(NumberValue::Int(value));
        let double = |value| PointValue::Number(NumberValue::Double(value));
        let established = [
            ("network.peer.port", AttrValue::Int(8080)),
            ("ok", AttrValue::Bool(true)),
            ("state", AttrValue::Str("ESTABLISHED".into())),
        ];
        let syn_sent = [("state", AttrValue::Str("SYN_SENT".into()))];
        let tx = [("direction", AttrValue::Str("tx".into()))];
        let rx = [("direction", AttrValue::Str("rx".into()))];
        let peer = [("peer", AttrValue::Str("a".into()))];
        // The SDK adds measurements in the order they were made, from 0.
        let first_sum = 0.0005 + 0.05 + 2.5;

        let rtt = metric(
            METRIC_NAMES[0],
            "Round trip time",
            "s",
            MetricKind::Histogram,
            Some(self.temporality()),
        );
        let rtt_first = vec![
            point(
                &established,
                histogram(3, first_sum, 0.0005, 2.5, [1, 0, 1, 1]),
            ),
            point(&syn_sent, histogram(1, 0.002, 0.002, 0.002, [0, 1, 0, 0])),
        ];
        let rtt_second = if delta {
            vec![point(
                &established,
                histogram(1, 0.05, 0.05, 0.05, [0, 0, 1, 0]),
            )]
        } else {
            vec![
                point(
                    &established,
                    histogram(4, first_sum + 0.05, 0.0005, 2.5, [1, 0, 2, 1]),
                ),
                point(&syn_sent, histogram(1, 0.002, 0.002, 0.002, [0, 1, 0, 0])),
            ]
        };

        let bytes = metric(
            METRIC_NAMES[1],
            "Bytes sent",
            "By",
            MetricKind::Sum { monotonic: true },
            Some(self.temporality()),
        );
        let bytes_first = vec![point(&tx, int(100)), point(&rx, int(7))];
        let bytes_second = if delta {
            vec![point(&tx, int(10))]
        } else {
            vec![point(&tx, int(110)), point(&rx, int(7))]
        };

        // The SDK keeps up-down counters cumulative whatever the exporter asks for.
        let open = metric(
            METRIC_NAMES[2],
            "Open connections",
            "{connection}",
            MetricKind::Sum { monotonic: false },
            Some(Temporality::Cumulative),
        );
        let cwnd = metric(
            METRIC_NAMES[3],
            "Congestion window",
            "{segment}",
            MetricKind::Gauge,
            None,
        );
        [
            [with_points(&rtt, rtt_first), with_points(&rtt, rtt_second)],
            [
                with_points(&bytes, bytes_first),
                with_points(&bytes, bytes_second),
            ],
            [
                with_points(&open, vec![point(&[], int(-2))]),
                with_points(&open, vec![point(&[], int(-1))]),
            ],
            [
                with_points(&cwnd, vec![point(&peer, double(14.5))]),
                with_points(&cwnd, vec![point(&peer, double(20.25))]),
            ],
        ]
    }
}

/// `points` in the order of their attributes' rendering (the SDK's order is a hash map's).
fn sorted_points(mut points: Vec<DataPoint>) -> Vec<DataPoint> {
    points.sort_by_cached_key(|point| format!("{:?}", point.attributes));
    points
}

/// Exports a metrics sample over `transport` and checks that its first two exports come back
/// exactly, their times included: each point's start before its time; a delta point (a gauge's
/// too, when exported with delta temporality) starting when the one before was taken, a
/// cumulative one when the first one started.
fn metrics_round_trip(transport: Transport, sample: &MetricsSample) {
    let receiver = Receiver::start();
    let endpoint = match transport {
        Transport::Grpc => receiver.grpc_endpoint(),
        Transport::Http => receiver.http_metrics_endpoint(),
    };
    sample.export(transport, &endpoint);
    let exports_of = |metrics: &[ReceivedMetric], name: &str| -> Vec<ReceivedMetric> {
        metrics
            .iter()
            .filter(|metric| {
                metric.name == name
                    && metric.resource.get("service.name")
                        == Some(&AttrValue::Str(sample.service.into()))
            })
            .cloned()
            .collect()
    };
    let received = receiver.wait_for_metrics(
        |metrics| {
            METRIC_NAMES
                .iter()
                .all(|name| exports_of(metrics, name).len() >= 2)
        },
        ARRIVAL_TIMEOUT,
    );
    for (name, expected) in METRIC_NAMES.iter().zip(sample.expected()) {
        let exports = exports_of(&received, name);
        let [first, second] = [&exports[0], &exports[1]];
        let delta = first.temporality.unwrap_or(sample.temporality()) == Temporality::Delta;
        for point in first.data_points.iter().chain(&second.data_points) {
            assert!(
                0 < point.start_unix_nano && point.start_unix_nano <= point.time_unix_nano,
                "{name}: {point:?}"
            );
        }
        for later in &second.data_points {
            let earlier = first
                .data_points
                .iter()
                .find(|point| point.attributes == later.attributes)
                .unwrap_or_else(|| panic!("{name}: {later:?} was not in the first export"));
            let start = if delta {
                earlier.time_unix_nano
            } else {
                earlier.start_unix_nano
            };
            assert_eq!(
                later.start_unix_nano, start,
                "{name}: {later:?} after {earlier:?}"
            );
        }
        let without_times = |metric: &ReceivedMetric| ReceivedMetric {
            data_points: sorted_points(
                metric
                    .data_points
                    .iter()
                    .map(|point| DataPoint {
                        start_unix_nano: 0,
                        time_unix_nano: 0,
                        ..point.clone()
                    })
                    .collect(),
            ),
            ..metric.clone()
        };
        assert_eq!([without_times(first), without_times(second)], expected);
    }
}

#[test]
fn grpc_delta_metrics_come_back_exactly() {
    metrics_round_trip(
        Transport::Grpc,
        &MetricsSample {
            temporality: SdkTemporality::Delta,
            service: "selftest-grpc-delta",
        },
    );
}

#[test]
fn grpc_cumulative_metrics_come_back_exactly() {
    metrics_round_trip(
        Transport::Grpc,
        &MetricsSample {
            temporality: SdkTemporality::Cumulative,
            service: "selftest-grpc-cumulative",
        },
    );
}

#[test]
fn http_delta_metrics_come_back_exactly() {
    metrics_round_trip(
        Transport::Http,
        &MetricsSample {
            temporality: SdkTemporality::Delta,
            service: "selftest-http-delta",
        },
    );
}

#[test]
fn http_cumulative_metrics_come_back_exactly() {
    metrics_round_trip(
        Transport::Http,
        &MetricsSample {
            temporality: SdkTemporality::Cumulative,
            service: "selftest-http-cumulative",
        },
    );
}
