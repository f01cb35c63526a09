//! `--metrics`: OpenTelemetry metrics made from every session, whatever becomes of its trace.
//!
//! A [`SessionSink`]: the session stage hands it each session's beginning, each state a session
//! left and each session's end, and it records them in the SDK's instruments, which the pipeline
//! ([`export`]) exports over OTLP. Every duration is the kernel's, to the nanosecond:
//!
//! - `system.network.tcp.handshake.duration` (s): SYN_SENT → ESTABLISHED for a client,
//!   SYN_RECV → ESTABLISHED for a server (`network.tcp.handshake.role`); each also counts in
//!   `system.network.tcp.connection.successes`.
//! - `system.network.tcp.connection.duration` (s): a connection's first transition to its CLOSE.
//! - `system.network.tcp.connection.failures`, by `error.type`: connections that failed, in the
//!   handshake (refused, timed out, unreachable) or later (reset, timed out).
//! - `tcpstates.state.duration` (s), by `network.connection.state`: time in each state.
//! - `system.network.connection.count`, by `network.connection.state`: the sockets in each
//!   state now, from every session's beginning and transitions.
//! - the agent's health, as its exit account says it: `tcpstates.events.lost` by reason,
//!   `tcpstates.spans.dropped`, `tcpstates.sessions.evicted`, `tcpstates.export.failures`.
//!
//! Attributes are bounded by design: the role, `network.type`, `server.port` (the listening
//! port of the connection), the owner's `process.executable.name` and `container.id`; the peer's
//! address only with `--metrics-peer-address`.

pub mod export;

use std::sync::{Arc, Mutex, PoisonError};

use agent_common::{
    decode::TcpState,
    state::{CLOSE, ESTABLISHED, SYN_RECV, SYN_SENT},
};
use opentelemetry::{
    KeyValue,
    metrics::{
        AsyncInstrument, Counter, Histogram, Meter, ObservableCounter, ObservableUpDownCounter,
    },
};
use opentelemetry_semantic_conventions::attribute::{
    CONTAINER_ID, ERROR_TYPE, NETWORK_CONNECTION_STATE, NETWORK_PEER_ADDRESS, NETWORK_TRANSPORT,
    NETWORK_TYPE, PROCESS_EXECUTABLE_NAME, SERVER_PORT,
};

use self::export::MetricsExport;
use super::{Health, SessionSink, SessionSinkAccount, otlp::spans::connection_state};
use crate::{
    details::{Describe, SessionDetails},
    session::{Context, Endpoints, Incomplete, Role, SessionBegan, SessionEnded, StateEnded},
};

/// Attribute of the handshake metrics and of the connection counters: `client` or `server`
/// (semantic-conventions proposal #3682).
pub const HANDSHAKE_ROLE: &str = "network.tcp.handshake.role";

/// Histogram buckets for TCP durations, in seconds: from 100 µs (a handshake on loopback or in
/// a rack) through the SYN retransmission times (1 s, 3 s, 7 s…) to an hour.
pub const DURATION_BUCKETS: [f64; 22] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// The instruments sessions are recorded in.
struct Instruments {
    handshake: Histogram<f64>,
    connection: Histogram<f64>,
    state: Histogram<f64>,
    successes: Counter<u64>,
    failures: Counter<u64>,
    /// The sockets in each state, read from the sink's [`SocketCounts`] by the SDK at each
    /// collection; kept alive here.
    _count: ObservableUpDownCounter<i64>,
    /// The agent's health, read by the SDK at each collection; kept alive here.
    _health: [ObservableCounter<u64>; 5],
}

impl Instruments {
    fn new(meter: &Meter, counts: &Arc<Mutex<SocketCounts>>, health: &Arc<Mutex<Health>>) -> Self {
        let duration = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build()
        };
        let connections = |name: &'static str, description: &'static str| {
            meter
                .u64_counter(name)
                .with_unit("{connection}")
                .with_description(description)
                .build()
        };
        Self {
            handshake: duration(
                "system.network.tcp.handshake.duration",
                "TCP handshakes, SYN_SENT (client) or SYN_RECV (server) to ESTABLISHED",
            ),
            connection: duration(
                "system.network.tcp.connection.duration",
                "TCP connections, from their first transition to CLOSE",
            ),
            state: duration(
                "tcpstates.state.duration",
                "Time TCP sockets spent in each state",
            ),
            successes: connections(
                "system.network.tcp.connection.successes",
                "TCP handshakes completed",
            ),
            failures: connections(
                "system.network.tcp.connection.failures",
                "TCP connections that failed, by error.type",
            ),
            _count: {
                let counts = Arc::clone(counts);
                meter
                    .i64_observable_up_down_counter("system.network.connection.count")
                    .with_unit("{connection}")
                    .with_description("TCP sockets, by state")
                    .with_callback(move |observer| {
                        counts
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .observe(observer);
                    })
                    .build()
            },
            _health: health_instruments(meter, health),
        }
    }
}

/// What a health instrument reads from the agent's health: values with their attributes.
type Observe = fn(&Health) -> Vec<(u64, Vec<KeyValue>)>;

/// The observable counters of the agent's health, read from `health` at each collection.
fn health_instruments(meter: &Meter, health: &Arc<Mutex<Health>>) -> [ObservableCounter<u64>; 5] {
    let observed =
        |name: &'static str, unit: &'static str, description: &'static str, values: Observe| {
            let health = Arc::clone(health);
            meter
                .u64_observable_counter(name)
                .with_unit(unit)
                .with_description(description)
                .with_callback(move |observer| {
                    let health = *health.lock().unwrap_or_else(PoisonError::into_inner);
                    for (value, attributes) in values(&health) {
                        observer.observe(value, &attributes);
                    }
                })
                .build()
        };
    [
        observed(
            "tcpstates.events.lost",
            "{event}",
            "Events the kernel could not deliver, by reason",
            |health| {
                vec![
                    (
                        health.kernel.ring_full,
                        vec![KeyValue::new("reason", "ring_buffer_full")],
                    ),
                    (
                        health.kernel.recursion.unwrap_or(0),
                        vec![KeyValue::new("reason", "bpf_recursion")],
                    ),
                ]
            },
        ),
        observed(
            "tcpstates.spans.dropped",
            "{span}",
            "Spans dropped because the export queue was full",
            |health| vec![(health.spans.map_or(0, |spans| spans.dropped), Vec::new())],
        ),
        observed(
            "tcpstates.sessions.sampled",
            "{session}",
            "Sessions by what became of their trace: kept by the sampler or a keep rule, or \
             sampled out",
            |health| {
                let counts = health.sampling.unwrap_or_default();
                [
                    (counts.by_sampler, "kept_by_sampler"),
                    (counts.by_rule, "kept_by_rule"),
                    (counts.sampled_out, "sampled_out"),
                    (counts.rate_limited, "rate_limited"),
                ]
                .into_iter()
                .map(|(value, decision)| (value, vec![KeyValue::new("decision", decision)]))
                .collect()
            },
        ),
        observed(
            "tcpstates.sessions.evicted",
            "{session}",
            "Sessions ended early: the session table was full, or their CLOSE was lost",
            |health| vec![(health.evictions, Vec::new())],
        ),
        observed(
            "tcpstates.export.failures",
            "{span}",
            "Spans the collector did not take: failed after retries, or rejected",
            |health| {
                vec![(
                    health
                        .spans
                        .map_or(0, |spans| spans.failed + spans.rejected),
                    Vec::new(),
                )]
            },
        ),
    ]
}

/// The values of `network.connection.state` ([`connection_state`]'s, and `unknown`).
const STATE_NAMES: [&str; 12] = [
    "established",
    "syn_sent",
    "syn_received",
    "fin_wait_1",
    "fin_wait_2",
    "time_wait",
    "closed",
    "close_wait",
    "last_ack",
    "listen",
    "closing",
    "unknown",
];
/// The values of `network.type`.
const NETWORK_TYPES: [&str; 2] = ["ipv4", "ipv6"];

/// The sockets in each state, by network type: counted by the sink as sessions move, read by
/// the SDK at each collection. (Counted through the SDK's up-down counter, each of the two
/// counts of a state change looked its attributes up in the SDK's map: a tenth of the agent
/// exporting spans and metrics.)
#[derive(Debug, Default)]
struct SocketCounts {
    /// By [`NETWORK_TYPES`] and [`STATE_NAMES`]; `None` for a state never counted.
    counts: [[Option<i64>; STATE_NAMES.len()]; NETWORK_TYPES.len()],
}

impl SocketCounts {
    /// Adds `delta` sockets to `state`'s count for the family of `ends`.
    fn add(&mut self, state: TcpState, ends: &Endpoints, delta: i64) {
        let network = NETWORK_TYPES
            .iter()
            .position(|name| *name == ends.network_type())
            .unwrap_or(0);
        let name = connection_state(state).unwrap_or("unknown");
        let slot = STATE_NAMES
            .iter()
            .position(|known| *known == name)
            .unwrap_or(STATE_NAMES.len() - 1);
        *self.counts[network][slot].get_or_insert(0) += delta;
    }

    /// Tells `observer` every count ever made, with its attributes.
    fn observe(&self, observer: &dyn AsyncInstrument<i64>) {
        for (network, counts) in NETWORK_TYPES.iter().zip(&self.counts) {
            for (state, count) in STATE_NAMES.iter().zip(counts) {
                if let Some(count) = count {
                    observer.observe(*count, &count_attributes(network, state));
                }
            }
        }
    }
}

/// Records sessions in metrics.
pub struct MetricsSink {
    export: MetricsExport,
    instruments: Instruments,
    /// The sockets in each state, read by the count instrument.
    counts: Arc<Mutex<SocketCounts>>,
    /// The agent's health, as last told; read by the health instruments.
    health: Arc<Mutex<Health>>,
    /// Whether the connection metrics carry the peer's address.
    peer_address: bool,
}

impl MetricsSink {
    /// Records into the instruments of `export`'s meter; `peer_address` adds the peer's
    /// address to the connection metrics.
    pub fn new(export: MetricsExport, peer_address: bool) -> Self {
        let health = Arc::new(Mutex::new(Health::default()));
        let counts = Arc::new(Mutex::new(SocketCounts::default()));
        let instruments = Instruments::new(&export.meter(), &counts, &health);
        Self {
            export,
            instruments,
            counts,
            health,
            peer_address,
        }
    }

    fn set_health(&self, health: &Health) {
        *self.health.lock().unwrap_or_else(PoisonError::into_inner) = *health;
    }

    /// The attributes of a connection's metrics: its role (`server`/`client`, when known), the
    /// family, the listening port, the owner's executable, its container, and with
    /// `--metrics-peer-address` the peer.
    fn connection_attributes(
        &self,
        role: Option<&'static str>,
        ends: &Endpoints,
        context: &Context,
        details: &SessionDetails<'_>,
    ) -> Vec<KeyValue> {
        let mut attributes = Vec::with_capacity(7);
        attributes.push(KeyValue::new(NETWORK_TRANSPORT, "tcp"));
        attributes.push(KeyValue::new(NETWORK_TYPE, ends.network_type()));
        if let Some(role) = role {
            attributes.push(KeyValue::new(HANDSHAKE_ROLE, role));
            let port = if role == "client" {
                ends.remote_port
            } else {
                ends.local_port
            };
            attributes.push(KeyValue::new(SERVER_PORT, i64::from(port)));
        }
        let executable = match (details.process, &context.owner) {
            (Some(process), _) => Some(process.executable_name.clone()),
            (None, Some(owner)) => Some(owner.comm.to_str_lossy().into_owned()),
            (None, None) => None,
        };
        if let Some(executable) = executable {
            attributes.push(KeyValue::new(PROCESS_EXECUTABLE_NAME, executable));
        }
        if let Some(id) = details.container_id {
            attributes.push(KeyValue::new(CONTAINER_ID, id.to_owned()));
        }
        if self.peer_address {
            attributes.push(KeyValue::new(
                NETWORK_PEER_ADDRESS,
                ends.remote_addr.to_canonical().to_string(),
            ));
        }
        attributes
    }

    /// Adds `delta` sockets to `state`'s count.
    fn count(&self, state: TcpState, ends: &Endpoints, delta: i64) {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .add(state, ends, delta);
    }
}

/// The attributes of the per-state metrics.
fn state_attributes(state: TcpState, ends: &Endpoints) -> [KeyValue; 3] {
    count_attributes(
        ends.network_type(),
        connection_state(state).unwrap_or("unknown"),
    )
}

/// The attributes of the sockets of `network` type in `state` (a `network.connection.state`).
fn count_attributes(network: &'static str, state: &'static str) -> [KeyValue; 3] {
    [
        KeyValue::new(NETWORK_TRANSPORT, "tcp"),
        KeyValue::new(NETWORK_TYPE, network),
        KeyValue::new(NETWORK_CONNECTION_STATE, state),
    ]
}

/// `client` or `server`, for a session that connected or was accepted.
fn role_name(role: Role) -> Option<&'static str> {
    match role {
        Role::Connect => Some("client"),
        Role::Accept => Some("server"),
        Role::Listen | Role::Unknown => None,
    }
}

/// Nanoseconds as seconds.
fn seconds(nanos: u64) -> f64 {
    nanos as f64 / 1e9
}

impl SessionSink for MetricsSink {
    fn session_began(&mut self, began: &SessionBegan) {
        self.count(began.state, &began.endpoints, 1);
    }

    fn session_vanished(&mut self, found: &SessionBegan) {
        self.count(found.state, &found.endpoints, -1);
    }

    fn state_ended(&mut self, ended: &StateEnded, details: &mut dyn Describe) {
        match (ended.next_state, ended.incomplete) {
            (Some(next), _) => {
                self.count(ended.state, &ended.endpoints, -1);
                if next != TcpState(CLOSE) {
                    self.count(next, &ended.endpoints, 1);
                }
            }
            // An evicted session is no longer followed: its socket is counted again when it
            // shows up. At shutdown the counts stay as they were, for the last export.
            (None, Some(Incomplete::Evicted)) => self.count(ended.state, &ended.endpoints, -1),
            (None, _) => {}
        }
        // A state that began before tracing did has no duration to tell.
        if ended.incomplete.is_some() || ended.start_unknown {
            return;
        }
        let duration = seconds(ended.end_ns.saturating_sub(ended.start_ns));
        self.instruments
            .state
            .record(duration, &state_attributes(ended.state, &ended.endpoints));
        let role = match ended.state.0 {
            SYN_SENT => "client",
            SYN_RECV => "server",
            _ => return,
        };
        if ended.next_state == Some(TcpState(ESTABLISHED)) {
            let attributes = self.connection_attributes(
                Some(role),
                &ended.endpoints,
                &ended.context,
                &details.details(),
            );
            self.instruments.handshake.record(duration, &attributes);
            self.instruments.successes.add(1, &attributes);
        }
    }

    fn session_ended(&mut self, ended: &SessionEnded, details: &mut dyn Describe) {
        let session = &ended.session;
        if ended.incomplete.is_some() || session.role == Role::Listen {
            return;
        }
        let mut attributes = self.connection_attributes(
            role_name(session.role),
            &session.endpoints,
            &session.context,
            &details.details(),
        );
        if !session.found_at_start {
            self.instruments.connection.record(
                seconds(ended.end_ns.saturating_sub(session.start_ns)),
                &attributes,
            );
        }
        if let Some(failure) = ended.outcome.failure() {
            attributes.push(KeyValue::new(ERROR_TYPE, failure.error_type()));
            self.instruments.failures.add(1, &attributes);
        }
    }

    fn report_growth(&mut self, health: &Health) {
        self.set_health(health);
    }

    fn account(&self) -> SessionSinkAccount {
        SessionSinkAccount::Metrics(self.export.counts())
    }

    fn finish(self: Box<Self>, health: &Health) -> SessionSinkAccount {
        self.set_health(health);
        SessionSinkAccount::Metrics(self.export.finish())
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeMap,
        net::{IpAddr, Ipv4Addr},
        num::NonZeroUsize,
    };

    use agent_common::{
        correlation::BootId,
        decode::{Close, Comm, StateChange},
        event::COMM_LEN,
        state::{CLOSE_WAIT, FIN_WAIT1, FIN_WAIT2, LAST_ACK, LISTEN},
    };
    use opentelemetry_sdk::metrics::{
        InMemoryMetricExporter, PeriodicReader, SdkMeterProvider,
        data::{AggregatedMetrics, MetricData, ResourceMetrics},
    };

    use super::*;
    use crate::{
        counters::Counts,
        details::DetailsCache,
        session::{SessionTable, stage::SessionStage},
        sink::metrics::export::cardinality_limit,
    };

    /// A change of socket `cookie` between ports `local` and `remote` of 127.0.0.1.
    fn change(
        cookie: u64,
        ts_ns: u64,
        (old, new): (u32, u32),
        (local, remote): (u16, u16),
    ) -> StateChange {
        StateChange {
            ts_ns,
            skaddr: cookie,
            cookie,
            owner: None,
            uid: 0,
            netns: 1,
            cgroup_id: 1,
            span_ns: 0,
            pid: 0,
            comm: Comm::new([b'x'; COMM_LEN]),
            local_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            local_port: local,
            remote_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            remote_port: remote,
            oldstate: TcpState(old),
            newstate: TcpState(new),
            reset_received: false,
            close: (new == CLOSE).then(Close::default),
        }
    }

    /// Runs `changes` through a session stage into a metrics sink, ends at `end_ns`, and
    /// returns what the last export held.
    fn recorded(changes: &[StateChange], end_ns: u64) -> ResourceMetrics {
        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(exporter.clone()).build())
            .with_view(cardinality_limit)
            .build();
        let sink = MetricsSink::new(MetricsExport::with_provider(provider), false);
        let capacity = NonZeroUsize::new(16).expect("non-zero");
        let mut stage = SessionStage::new(
            SessionTable::new(capacity, BootId([1; 16])),
            DetailsCache::new(capacity),
            vec![Box::new(sink)],
        );
        for change in changes {
            stage.observe(change);
            stage.end_of_drain();
        }
        stage.end_of_drain();
        stage.end_of_drain();
        stage.finish(end_ns, &Counts::default());
        exporter
            .get_finished_metrics()
            .expect("exported")
            .pop()
            .expect("a last export")
    }

    /// Attributes as text, for comparing.
    type Attributes = BTreeMap<String, String>;

    fn attributes<'a>(kvs: impl Iterator<Item = &'a KeyValue>) -> Attributes {
        kvs.map(|kv| (kv.key.to_string(), kv.value.to_string()))
            .collect()
    }

    fn metric<'a>(metrics: &'a ResourceMetrics, name: &str) -> &'a AggregatedMetrics {
        metrics
            .scope_metrics()
            .flat_map(|scope| scope.metrics())
            .find(|metric| metric.name() == name)
            .unwrap_or_else(|| panic!("no {name}"))
            .data()
    }

    /// (attributes, count, sum) of each data point of the histogram `name`.
    fn histogram(metrics: &ResourceMetrics, name: &str) -> Vec<(Attributes, u64, f64)> {
        let AggregatedMetrics::F64(MetricData::Histogram(histogram)) = metric(metrics, name) else {
            panic!("{name} is no f64 histogram");
        };
        let mut points: Vec<_> = histogram
            .data_points()
            .map(|p| (attributes(p.attributes()), p.count(), p.sum()))
            .collect();
        points.sort_by(|a, b| a.0.cmp(&b.0));
        points
    }

    /// (attributes, value) of each data point of the sum `name`, as i64.
    fn sum(metrics: &ResourceMetrics, name: &str) -> Vec<(Attributes, i64)> {
        let mut points: Vec<(Attributes, i64)> = match metric(metrics, name) {
            AggregatedMetrics::U64(MetricData::Sum(sum)) => sum
                .data_points()
                .map(|p| (attributes(p.attributes()), p.value() as i64))
                .collect(),
            AggregatedMetrics::I64(MetricData::Sum(sum)) => sum
                .data_points()
                .map(|p| (attributes(p.attributes()), p.value()))
                .collect(),
            other => panic!("{name} is no sum: {other:?}"),
        };
        points.sort();
        points
    }

    fn attrs(pairs: &[(&str, &str)]) -> Attributes {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// A listener on 80; a client (cookie 2, port 40000) whose handshake takes 1.5 ms and the
    /// socket it is accepted as (cookie 3, 0.5 ms), both closed; a refused connect (cookie 4).
    fn one_connection_and_a_refused_one() -> Vec<StateChange> {
        let (client, server) = ((40_000, 80), (80, 40_000));
        let refused = StateChange {
            close: Some(Close {
                error: Some(libc::ECONNREFUSED as u32),
                ..Close::default()
            }),
            ..change(4, 9_000_000, (SYN_SENT, CLOSE), (40_001, 81))
        };
        vec![
            change(1, 0, (CLOSE, LISTEN), (80, 0)),
            change(2, 1_000_000, (CLOSE, SYN_SENT), (0, 80)),
            change(3, 2_000_000, (LISTEN, SYN_RECV), server),
            change(2, 2_500_000, (SYN_SENT, ESTABLISHED), client),
            change(3, 2_500_000, (SYN_RECV, ESTABLISHED), server),
            change(2, 5_000_000, (ESTABLISHED, FIN_WAIT1), client),
            change(3, 5_100_000, (ESTABLISHED, CLOSE_WAIT), server),
            change(2, 5_100_000, (FIN_WAIT1, FIN_WAIT2), client),
            change(3, 5_200_000, (CLOSE_WAIT, LAST_ACK), server),
            change(2, 5_200_000, (FIN_WAIT2, CLOSE), client),
            change(3, 5_300_000, (LAST_ACK, CLOSE), server),
            change(4, 8_000_000, (CLOSE, SYN_SENT), (0, 81)),
            refused,
        ]
    }

    #[test]
    fn every_state_name_has_a_count_of_its_own() {
        for state in 0..=u8::MAX {
            if let Some(name) = connection_state(TcpState(state.into())) {
                assert!(
                    STATE_NAMES[..STATE_NAMES.len() - 1].contains(&name),
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn handshakes_connections_and_failures_are_counted_with_their_kernel_durations() {
        let metrics = recorded(&one_connection_and_a_refused_one(), 10_000_000);
        let base = [("network.transport", "tcp"), ("network.type", "ipv4")];
        let with = |role: &str, port: &str| {
            let mut a = attrs(&base);
            a.extend(attrs(&[(HANDSHAKE_ROLE, role), ("server.port", port)]));
            a
        };
        assert_eq!(
            histogram(&metrics, "system.network.tcp.handshake.duration"),
            [
                (with("client", "80"), 1, 0.0015),
                (with("server", "80"), 1, 0.0005),
            ]
        );
        assert_eq!(
            sum(&metrics, "system.network.tcp.connection.successes"),
            [(with("client", "80"), 1), (with("server", "80"), 1)]
        );
        let mut refused = with("client", "81");
        refused.insert("error.type".into(), "connection_refused".into());
        assert_eq!(
            sum(&metrics, "system.network.tcp.connection.failures"),
            [(refused, 1)]
        );
        // First transition to CLOSE: 4.2 ms, 3.3 ms, and 1 ms for the refused connect.
        assert_eq!(
            histogram(&metrics, "system.network.tcp.connection.duration"),
            [
                (with("client", "80"), 1, 0.0042),
                (with("client", "81"), 1, 0.001),
                (with("server", "80"), 1, 0.0033),
            ]
        );
        let established = histogram(&metrics, "tcpstates.state.duration")
            .into_iter()
            .find(|(a, ..)| {
                a.get("network.connection.state").map(String::as_str) == Some("established")
            })
            .expect("established");
        assert_eq!((established.1, established.2), (2, 0.0025 + 0.0026));
    }

    #[test]
    fn sockets_by_state_follow_every_transition_and_stay_as_they_were_at_shutdown() {
        let mut changes = one_connection_and_a_refused_one();
        // A connection first seen mid-way (opened before tracing), still established at the end.
        changes.push(change(5, 9_500_000, (SYN_SENT, ESTABLISHED), (40_002, 443)));
        let metrics = recorded(&changes, 10_000_000);
        let counts: Vec<(String, i64)> = sum(&metrics, "system.network.connection.count")
            .into_iter()
            .map(|(a, n)| (a["network.connection.state"].clone(), n))
            .filter(|(_, n)| *n != 0)
            .collect();
        // The listener and the connection open at shutdown; every closed socket left its states.
        assert_eq!(
            counts,
            [("established".to_owned(), 1), ("listen".to_owned(), 1)]
        );
    }
}
