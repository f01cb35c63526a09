//! Turning completed sessions and states into OpenTelemetry spans, following the semantic
//! conventions for network attributes.
//!
//! A session's root span covers the whole session; each state it was in is a child span named
//! after the state. Times are the kernel's, moved to wall-clock time by one offset, so a
//! child's duration is exactly the kernel's delta.

use std::{borrow::Cow, net::SocketAddr};

use agent_common::{
    correlation::ConnectionIds,
    decode::{Close, TcpState},
};
use opentelemetry::{
    KeyValue,
    trace::{Event, Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use opentelemetry_semantic_conventions::attribute::{
    CLIENT_ADDRESS, CLIENT_PORT, CONTAINER_ID, ERROR_TYPE, NETWORK_CONNECTION_STATE,
    NETWORK_LOCAL_ADDRESS, NETWORK_LOCAL_PORT, NETWORK_PEER_ADDRESS, NETWORK_PEER_PORT,
    NETWORK_TRANSPORT, NETWORK_TYPE, PROCESS_COMMAND_LINE, PROCESS_EXECUTABLE_NAME, PROCESS_OWNER,
    PROCESS_PID, SERVER_ADDRESS, SERVER_PORT,
};

use crate::{
    clock::WallClock,
    details::SessionDetails,
    session::{
        Context, Endpoints, Incomplete, Retransmits, Role, Session, SessionEnded, StateEnded,
    },
};

/// Vendor attribute: kernel address of the socket, hex.
pub const SKADDR: &str = "tcpstates.skaddr";
/// Vendor attribute: pid on the CPU at the session's first seen transition.
pub const ONCPU_PID: &str = "tcpstates.oncpu.pid";
/// Vendor attribute: command on the CPU at the session's first seen transition.
pub const ONCPU_COMM: &str = "tcpstates.oncpu.comm";
/// Vendor attribute: whether the socket's owner is known (its `connect()` or `listen()`, or its
/// listener's, was seen); when false the `process.*` attributes are absent.
pub const OWNER_KNOWN: &str = "tcpstates.owner.known";
/// Vendor attribute: the socket's cookie (`SO_COOKIE`), from which the trace id is derived.
pub const COOKIE: &str = "tcpstates.socket.cookie";
/// Vendor attribute: the socket's uid.
pub const SOCKET_UID: &str = "tcpstates.socket.uid";
/// Vendor attribute: inode number of the socket's network namespace.
pub const NETNS: &str = "tcpstates.netns.inode";
/// Vendor attribute: id of the socket's cgroup (v2).
pub const CGROUP_ID: &str = "tcpstates.cgroup.id";
/// Vendor attribute: the socket's cgroup path, relative to the cgroup2 mount.
pub const CGROUP_PATH: &str = "tcpstates.cgroup.path";
/// Vendor attribute: the session (or state) was ended before its CLOSE was seen.
pub const INCOMPLETE: &str = "tcpstates.session.incomplete";
/// Vendor attribute: the socket was open when tracing started; the session starts when it was
/// found.
pub const FOUND_AT_START: &str = "tcpstates.session.found_at_start";
/// Vendor attribute of a state span: the state began before tracing did; the span starts when
/// the socket was found.
pub const STATE_START_UNKNOWN: &str = "tcpstates.state.start_unknown";
/// Vendor attribute: why it was ended early (`shutdown` or `evicted`).
pub const END_REASON: &str = "tcpstates.session.end_reason";
/// Vendor attribute: which end reset the connection (`received`: the peer; `sent`: this end).
pub const RESET_DIRECTION: &str = "tcpstates.reset.direction";
/// Vendor attribute: bytes sent and acknowledged by the peer, at CLOSE.
pub const BYTES_SENT: &str = "tcpstates.bytes.sent";
/// Vendor attribute: bytes received, at CLOSE.
pub const BYTES_RECEIVED: &str = "tcpstates.bytes.received";
/// Vendor attribute: segments retransmitted over the connection's life, at CLOSE.
pub const RETRANSMITS: &str = "tcpstates.retransmits";
/// Name of the span event of a retransmission, on the state span it happened in.
pub const RETRANSMIT_EVENT: &str = "retransmit";
/// Vendor attribute of a retransmission event: what was sent again (`syn`, `synack`, `data`).
pub const RETRANSMIT_KIND: &str = "tcpstates.retransmit.kind";
/// Vendor attribute: the smoothed round-trip time at CLOSE, µs.
pub const RTT_SMOOTHED: &str = "tcpstates.rtt.smoothed_us";
/// Vendor attribute: the minimum round-trip time seen, µs.
pub const RTT_MIN: &str = "tcpstates.rtt.min_us";

/// Builds spans for one exporter.
pub struct SpanFactory {
    clock: WallClock,
    scope: opentelemetry::InstrumentationScope,
}

impl SpanFactory {
    /// A factory converting kernel times with `clock`.
    pub fn new(clock: WallClock) -> Self {
        let scope = opentelemetry::InstrumentationScope::builder(env!("CARGO_PKG_NAME"))
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        Self { clock, scope }
    }

    /// The span of a state a session left. The first of a trace (the handshake: SYN_SENT,
    /// SYN_RECV, or LISTEN) also says whose connection it is — the ends and the owner, which
    /// `details` describe — as a UI shows state spans long before their root, which comes at
    /// CLOSE; the later ones share its trace. (Every state span carrying them halved the export
    /// rate at the bench's load: 95,000 spans/s instead of 166,000, 2026-12-02.)
    pub fn state_span(&self, ended: &StateEnded, details: &SessionDetails<'_>) -> SpanData {
        let StateEnded {
            ids,
            index,
            parent_span_id,
            state,
            next_state: _,
            start_ns,
            end_ns,
            incomplete,
            start_unknown,
            retransmits,
            failure,
            endpoints,
            context,
            role,
        } = ended;
        let mut attributes = Vec::with_capacity(if *index == 0 { 8 } else { 1 });
        if let Some(value) = connection_state(*state) {
            attributes.push(KeyValue::new(NETWORK_CONNECTION_STATE, value));
        }
        if *index == 0 {
            push_identity(&mut attributes, *role, endpoints, context, details);
        }
        push_incomplete(&mut attributes, *incomplete);
        if *start_unknown {
            attributes.push(KeyValue::new(STATE_START_UNKNOWN, true));
        }
        // The state in which the connection failed says so too, as its root does.
        let status = match failure {
            Some(failure) => {
                attributes.push(KeyValue::new(ERROR_TYPE, failure.error_type()));
                Status::error(failure.description())
            }
            None => Status::Unset,
        };
        let name = match state.name() {
            Some(name) => Cow::Borrowed(name),
            None => Cow::Owned(state.to_string()),
        };
        let mut span = self.data(
            ids,
            SpanId::from_bytes(ids.state_span_id(*index)),
            SpanId::from_bytes(*parent_span_id),
            SpanKind::Internal,
            name,
            (*start_ns, *end_ns),
            attributes,
            status,
        );
        span.events = self.retransmit_events(retransmits);
        span
    }

    /// One `retransmit` event per retransmission kept, at its kernel time; those beyond are
    /// counted as dropped events.
    fn retransmit_events(&self, retransmits: &Retransmits) -> SpanEvents {
        let mut events = SpanEvents::default();
        events.events = retransmits
            .kept
            .iter()
            .map(|(ts_ns, kind)| {
                Event::new(
                    RETRANSMIT_EVENT,
                    self.clock.system_time(*ts_ns),
                    vec![KeyValue::new(RETRANSMIT_KIND, kind.as_str())],
                    0,
                )
            })
            .collect();
        events.dropped_count = retransmits.beyond;
        events
    }

    /// The span of a session that ended (its trace's root, or a continuation's span);
    /// `details` describe its owner and location.
    pub fn session_span(&self, ended: &SessionEnded, details: &SessionDetails<'_>) -> SpanData {
        let SessionEnded {
            session,
            end_ns,
            outcome,
            incomplete,
            close,
            ..
        } = ended;
        let mut attributes = session_attributes(session);
        push_context(&mut attributes, session, details);
        let status = match outcome.failure() {
            None => Status::Unset,
            Some(failure) => {
                attributes.push(KeyValue::new(ERROR_TYPE, failure.error_type()));
                if let Some(direction) = failure.reset_direction() {
                    attributes.push(KeyValue::new(RESET_DIRECTION, direction.as_str()));
                }
                Status::error(failure.description())
            }
        };
        if let Some(close) = close {
            push_close(&mut attributes, close);
        }
        push_incomplete(&mut attributes, *incomplete);
        if session.found_at_start {
            attributes.push(KeyValue::new(FOUND_AT_START, true));
        }
        let (name, kind) = root_name_and_kind(session.role, &session.endpoints);
        let mut span = self.data(
            &session.ids,
            SpanId::from_bytes(session.span_id()),
            session
                .parent_span_id()
                .map_or(SpanId::INVALID, SpanId::from_bytes),
            kind,
            Cow::Owned(name),
            (session.start_ns, *end_ns),
            attributes,
            status,
        );
        // An accepted socket's root links to its listener's, and the two ends of a connection
        // on this host link to each other: a UI can go from one to the other.
        span.links.links = [session.links.listener, session.links.peer]
            .into_iter()
            .flatten()
            .map(|ids| {
                Link::with_context(SpanContext::new(
                    TraceId::from_bytes(ids.trace_id),
                    SpanId::from_bytes(ids.root_span_id),
                    TraceFlags::SAMPLED,
                    false,
                    TraceState::NONE,
                ))
            })
            .collect();
        span
    }

    #[allow(clippy::too_many_arguments)]
    fn data(
        &self,
        ids: &ConnectionIds,
        span_id: SpanId,
        parent_span_id: SpanId,
        span_kind: SpanKind,
        name: Cow<'static, str>,
        (start_ns, end_ns): (u64, u64),
        attributes: Vec<KeyValue>,
        status: Status,
    ) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes(ids.trace_id),
                span_id,
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ),
            parent_span_id,
            parent_span_is_remote: false,
            span_kind,
            name,
            start_time: self.clock.system_time(start_ns),
            end_time: self.clock.system_time(end_ns),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: self.scope.clone(),
        }
    }
}

/// `tcp connect 10.0.0.2:443` (CLIENT), `tcp accept 10.0.0.1:80` (SERVER),
/// `tcp listen 0.0.0.0:80` or `tcp session` (INTERNAL).
fn root_name_and_kind(role: Role, ends: &Endpoints) -> (String, SpanKind) {
    // An IPv4 peer of a dual-stack socket (`::ffff:127.0.0.1`) reads as the IPv4 address it is.
    let local = SocketAddr::new(ends.local_addr.to_canonical(), ends.local_port);
    let peer = SocketAddr::new(ends.remote_addr.to_canonical(), ends.remote_port);
    match role {
        Role::Connect => (format!("tcp connect {peer}"), SpanKind::Client),
        Role::Accept => (format!("tcp accept {local}"), SpanKind::Server),
        Role::Listen => (format!("tcp listen {local}"), SpanKind::Internal),
        Role::Unknown => ("tcp session".to_owned(), SpanKind::Internal),
    }
}

fn session_attributes(session: &Session) -> Vec<KeyValue> {
    let ends = &session.endpoints;
    let local = (
        ends.local_addr.to_canonical().to_string(),
        i64::from(ends.local_port),
    );
    let peer = (
        ends.remote_addr.to_canonical().to_string(),
        i64::from(ends.remote_port),
    );
    let mut attributes = vec![
        KeyValue::new(NETWORK_TRANSPORT, "tcp"),
        KeyValue::new(NETWORK_TYPE, ends.network_type()),
        KeyValue::new(NETWORK_LOCAL_ADDRESS, local.0.clone()),
        KeyValue::new(NETWORK_LOCAL_PORT, local.1),
        KeyValue::new(SKADDR, format!("{:x}", session.skaddr)),
        KeyValue::new(ONCPU_PID, i64::from(session.first_pid)),
        KeyValue::new(ONCPU_COMM, session.first_comm.to_str_lossy().into_owned()),
    ];
    // A listener has no peer (the kernel reports 0.0.0.0:0).
    if session.role != Role::Listen {
        attributes.push(KeyValue::new(NETWORK_PEER_ADDRESS, peer.0.clone()));
        attributes.push(KeyValue::new(NETWORK_PEER_PORT, peer.1));
    }
    let (server, client) = match session.role {
        Role::Connect => (Some(peer), Some(local)),
        Role::Accept => (Some(local), Some(peer)),
        Role::Listen => (Some(local), None),
        Role::Unknown => (None, None),
    };
    if let Some((address, port)) = server {
        attributes.push(KeyValue::new(SERVER_ADDRESS, address));
        attributes.push(KeyValue::new(SERVER_PORT, port));
    }
    if let Some((address, port)) = client {
        attributes.push(KeyValue::new(CLIENT_ADDRESS, address));
        attributes.push(KeyValue::new(CLIENT_PORT, port));
    }
    attributes
}

/// The owner's `process.*` attributes (only when it is known) and the socket's location.
fn push_context(attributes: &mut Vec<KeyValue>, session: &Session, details: &SessionDetails<'_>) {
    let context = &session.context;
    attributes.push(KeyValue::new(OWNER_KNOWN, context.owner.is_some()));
    if let Some(owner) = &context.owner {
        attributes.push(KeyValue::new(PROCESS_PID, i64::from(owner.pid)));
        match details.process {
            Some(process) => {
                attributes.push(KeyValue::new(
                    PROCESS_EXECUTABLE_NAME,
                    process.executable_name.clone(),
                ));
                if !process.command_line.is_empty() {
                    attributes.push(KeyValue::new(
                        PROCESS_COMMAND_LINE,
                        process.command_line.clone(),
                    ));
                }
            }
            None => attributes.push(KeyValue::new(
                PROCESS_EXECUTABLE_NAME,
                owner.comm.to_str_lossy().into_owned(),
            )),
        }
    }
    if let Some(name) = details.process.and_then(|process| process.owner.clone()) {
        attributes.push(KeyValue::new(PROCESS_OWNER, name));
    }
    attributes.extend([
        KeyValue::new(COOKIE, session.cookie as i64),
        KeyValue::new(SOCKET_UID, i64::from(context.uid)),
        KeyValue::new(NETNS, i64::from(context.netns)),
        KeyValue::new(CGROUP_ID, context.cgroup_id as i64),
    ]);
    if let Some(path) = details.cgroup_path {
        attributes.push(KeyValue::new(CGROUP_PATH, path.to_owned()));
    }
    if let Some(id) = details.container_id {
        attributes.push(KeyValue::new(CONTAINER_ID, id.to_owned()));
    }
}

/// What identifies a state span's connection without its root: the two ends (a listener has
/// no peer) and the owner's pid and executable.
fn push_identity(
    attributes: &mut Vec<KeyValue>,
    role: Role,
    ends: &Endpoints,
    context: &Context,
    details: &SessionDetails<'_>,
) {
    attributes.extend([
        KeyValue::new(
            NETWORK_LOCAL_ADDRESS,
            ends.local_addr.to_canonical().to_string(),
        ),
        KeyValue::new(NETWORK_LOCAL_PORT, i64::from(ends.local_port)),
    ]);
    if role != Role::Listen {
        attributes.extend([
            KeyValue::new(
                NETWORK_PEER_ADDRESS,
                ends.remote_addr.to_canonical().to_string(),
            ),
            KeyValue::new(NETWORK_PEER_PORT, i64::from(ends.remote_port)),
        ]);
    }
    if let Some(owner) = &context.owner {
        attributes.push(KeyValue::new(PROCESS_PID, i64::from(owner.pid)));
        if let Some(process) = details.process {
            attributes.push(KeyValue::new(
                PROCESS_EXECUTABLE_NAME,
                process.executable_name.clone(),
            ));
        }
    }
}

/// What the socket reported as it closed: bytes, round-trip times, retransmissions.
fn push_close(attributes: &mut Vec<KeyValue>, close: &Close) {
    attributes.extend([
        KeyValue::new(
            BYTES_SENT,
            i64::try_from(close.bytes_sent).unwrap_or(i64::MAX),
        ),
        KeyValue::new(
            BYTES_RECEIVED,
            i64::try_from(close.bytes_received).unwrap_or(i64::MAX),
        ),
        KeyValue::new(RETRANSMITS, i64::from(close.retransmits)),
    ]);
    if let Some(srtt) = close.srtt_us {
        attributes.push(KeyValue::new(RTT_SMOOTHED, i64::from(srtt)));
    }
    if let Some(min) = close.min_rtt_us {
        attributes.push(KeyValue::new(RTT_MIN, i64::from(min)));
    }
}

fn push_incomplete(attributes: &mut Vec<KeyValue>, incomplete: Option<Incomplete>) {
    if let Some(why) = incomplete {
        attributes.push(KeyValue::new(INCOMPLETE, true));
        let reason = match why {
            Incomplete::Shutdown => "shutdown",
            Incomplete::Evicted => "evicted",
        };
        attributes.push(KeyValue::new(END_REASON, reason));
    }
}

/// The semantic conventions' `network.connection.state` value of a kernel TCP state.
pub fn connection_state(state: TcpState) -> Option<&'static str> {
    Some(match state.name()? {
        "ESTABLISHED" => "established",
        "SYN_SENT" => "syn_sent",
        "SYN_RECV" | "NEW_SYN_RECV" => "syn_received",
        "FIN_WAIT1" => "fin_wait_1",
        "FIN_WAIT2" => "fin_wait_2",
        "TIME_WAIT" => "time_wait",
        "CLOSE" => "closed",
        "CLOSE_WAIT" => "close_wait",
        "LAST_ACK" => "last_ack",
        "LISTEN" => "listen",
        "CLOSING" => "closing",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use std::{
        net::{IpAddr, Ipv6Addr},
        time::Duration,
    };

    use agent_common::{
        correlation::BootId,
        decode::{Comm, Owner, RetransmitKind},
        event::COMM_LEN,
    };
    use opentelemetry::Value;

    use super::*;
    use crate::session::Context;
    use crate::{
        failure::{Failure, ResetDirection},
        process_info::ProcessInfo,
        session::{Links, Outcome},
    };

    fn session(role: Role) -> Session {
        let mut comm = [0; COMM_LEN];
        comm[..4].copy_from_slice(b"curl");
        Session {
            ids: ConnectionIds::new(&BootId([1; 16]), 77),
            cookie: 77,
            skaddr: 0xffff_8881_0685_e5c0,
            context: Context {
                owner: Some(Owner {
                    pid: 4242,
                    comm: Comm::new(comm),
                }),
                uid: 1000,
                netns: 4_026_531_840,
                cgroup_id: 7859,
            },
            role,
            start_ns: 1_000_000,
            endpoints: Endpoints {
                local_addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
                local_port: 40000,
                remote_addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
                remote_port: 8080,
            },
            first_pid: 42,
            first_comm: Comm::new(comm),
            state: TcpState(agent_common::state::ESTABLISHED),
            state_since_ns: None,
            states_done: 0,
            continues: None,
            reset_sent: false,
            found_at_start: false,
            state_start_unknown: false,
            retransmits: Retransmits::default(),
            links: Links::default(),
            indexed: false,
        }
    }

    fn factory() -> SpanFactory {
        SpanFactory::new(WallClock::from_epoch_at_boot_ns(1_700_000_000_000_000_000))
    }

    fn attr(span: &SpanData, key: &str) -> Option<Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.clone())
    }

    #[test]
    fn a_state_span_lasts_exactly_the_kernel_delta() {
        let ids = session(Role::Connect).ids;
        let span = factory().state_span(
            &StateEnded {
                ids,
                index: 1,
                parent_span_id: ids.root_span_id,
                state: TcpState(agent_common::state::ESTABLISHED),
                next_state: Some(TcpState(agent_common::state::FIN_WAIT1)),
                start_ns: 1_234_567,
                end_ns: 201_234_568,
                incomplete: None,
                start_unknown: false,
                retransmits: Retransmits {
                    kept: vec![
                        (1_234_567 + 1_000, RetransmitKind::Data),
                        (1_234_567 + 3_000, RetransmitKind::Data),
                    ],
                    beyond: 5,
                },
                failure: None,
                endpoints: session(Role::Connect).endpoints,
                context: session(Role::Connect).context,
                role: Role::Connect,
            },
            &SessionDetails::default(),
        );
        assert_eq!(span.name, "ESTABLISHED");
        assert_eq!(span.span_kind, SpanKind::Internal);
        assert_eq!(
            span.span_context.trace_id(),
            TraceId::from_bytes(ids.trace_id)
        );
        assert_eq!(
            span.span_context.span_id(),
            SpanId::from_bytes(ids.state_span_id(1))
        );
        assert_eq!(span.parent_span_id, SpanId::from_bytes(ids.root_span_id));
        let duration = span
            .end_time
            .duration_since(span.start_time)
            .expect("end after start");
        assert_eq!(duration, Duration::from_nanos(200_000_001));
        assert_eq!(
            attr(&span, NETWORK_CONNECTION_STATE),
            Some(Value::from("established"))
        );
        assert_eq!(attr(&span, INCOMPLETE), None);
        assert_eq!(span.status, Status::Unset);
        // A later state span shares its trace with the first, which says whose it is.
        assert_eq!(span.attributes.len(), 1, "{:?}", span.attributes);
        // Its retransmissions, at their kernel times; those not kept counted as dropped.
        let events: Vec<(String, Duration, Option<Value>)> = span
            .events
            .iter()
            .map(|event| {
                (
                    event.name.to_string(),
                    event
                        .timestamp
                        .duration_since(span.start_time)
                        .expect("after the start"),
                    event
                        .attributes
                        .iter()
                        .find(|kv| kv.key.as_str() == RETRANSMIT_KIND)
                        .map(|kv| kv.value.clone()),
                )
            })
            .collect();
        let data = Some(Value::from("data"));
        assert_eq!(
            events,
            [
                (
                    "retransmit".to_owned(),
                    Duration::from_nanos(1_000),
                    data.clone()
                ),
                ("retransmit".to_owned(), Duration::from_nanos(3_000), data),
            ]
        );
        assert_eq!(span.events.dropped_count, 5);
    }

    #[test]
    fn the_state_a_connection_failed_in_carries_the_error() {
        let ids = session(Role::Connect).ids;
        let span = factory().state_span(
            &StateEnded {
                ids,
                index: 0,
                parent_span_id: ids.root_span_id,
                state: TcpState(agent_common::state::SYN_SENT),
                next_state: Some(TcpState(agent_common::state::CLOSE)),
                start_ns: 1,
                end_ns: 3_000_000_001,
                incomplete: None,
                start_unknown: false,
                retransmits: Retransmits::default(),
                failure: Some(Failure::ConnectTimeout),
                endpoints: session(Role::Connect).endpoints,
                context: session(Role::Connect).context,
                role: Role::Connect,
            },
            &SessionDetails::default(),
        );
        assert!(matches!(span.status, Status::Error { .. }), "{span:?}");
        assert_eq!(
            attr(&span, ERROR_TYPE),
            Some(Value::from("connect_timeout"))
        );
        // The handshake span says whose connection it is on its own.
        assert_eq!(attr(&span, NETWORK_PEER_PORT), Some(Value::I64(8080)));
        assert_eq!(attr(&span, NETWORK_LOCAL_PORT), Some(Value::I64(40000)));
        assert_eq!(attr(&span, NETWORK_PEER_ADDRESS), Some(Value::from("::1")));
        assert_eq!(attr(&span, PROCESS_PID), Some(Value::I64(4242)));
    }

    #[test]
    fn an_ipv4_connection_of_a_dual_stack_socket_reads_as_ipv4() {
        let mut mapped = session(Role::Accept);
        mapped.endpoints.local_addr = "::ffff:127.0.0.1".parse().expect("address");
        mapped.endpoints.local_port = 18081;
        mapped.endpoints.remote_addr = "::ffff:127.0.0.2".parse().expect("address");
        let (name, _) = root_name_and_kind(Role::Accept, &mapped.endpoints);
        assert_eq!(name, "tcp accept 127.0.0.1:18081");
        let attributes = session_attributes(&mapped);
        let value = |key: &str| {
            attributes
                .iter()
                .find(|kv| kv.key.as_str() == key)
                .map(|kv| kv.value.to_string())
        };
        assert_eq!(value(NETWORK_TYPE).as_deref(), Some("ipv4"));
        assert_eq!(value(SERVER_ADDRESS).as_deref(), Some("127.0.0.1"));
        assert_eq!(value(NETWORK_PEER_ADDRESS).as_deref(), Some("127.0.0.2"));
    }

    #[test]
    fn a_continuation_of_an_evicted_session_is_a_span_under_the_root() {
        let session = Session {
            continues: Some(3),
            ..session(Role::Unknown)
        };
        let ids = session.ids;
        let span = factory().session_span(
            &SessionEnded {
                session,
                end_ns: 2_000_000,
                last_state: TcpState(agent_common::state::LAST_ACK),
                close: None,
                outcome: Outcome::Normal,
                incomplete: None,
            },
            &SessionDetails::default(),
        );
        assert_eq!(span.name, "tcp session");
        assert_eq!(
            span.span_context.span_id(),
            SpanId::from_bytes(ids.state_span_id(3))
        );
        assert_eq!(span.parent_span_id, SpanId::from_bytes(ids.root_span_id));
        assert_eq!(
            span.span_context.trace_id(),
            TraceId::from_bytes(ids.trace_id)
        );
    }

    #[test]
    fn root_spans_are_named_and_kinded_by_role() {
        let root = |role| {
            factory().session_span(
                &SessionEnded {
                    session: session(role),
                    end_ns: 2_000_000,
                    last_state: TcpState(agent_common::state::LAST_ACK),
                    close: None,
                    outcome: Outcome::Normal,
                    incomplete: None,
                },
                &SessionDetails::default(),
            )
        };
        let connect = root(Role::Connect);
        assert_eq!(connect.name, "tcp connect [::1]:8080");
        assert_eq!(connect.span_kind, SpanKind::Client);
        assert_eq!(connect.parent_span_id, SpanId::INVALID);
        assert_eq!(
            connect.span_context.span_id(),
            SpanId::from_bytes(ConnectionIds::new(&BootId([1; 16]), 77).root_span_id)
        );
        assert_eq!(attr(&connect, SERVER_PORT), Some(Value::I64(8080)));
        assert_eq!(attr(&connect, CLIENT_PORT), Some(Value::I64(40000)));
        assert_eq!(attr(&connect, NETWORK_TYPE), Some(Value::from("ipv6")));
        assert_eq!(
            attr(&connect, NETWORK_PEER_ADDRESS),
            Some(Value::from("::1"))
        );
        assert_eq!(
            attr(&connect, SKADDR),
            Some(Value::from("ffff88810685e5c0"))
        );
        assert_eq!(attr(&connect, ONCPU_PID), Some(Value::I64(42)));
        assert_eq!(attr(&connect, ONCPU_COMM), Some(Value::from("curl")));
        assert_eq!(connect.status, Status::Unset);

        let accept = root(Role::Accept);
        assert_eq!(accept.name, "tcp accept [::1]:40000");
        assert_eq!(accept.span_kind, SpanKind::Server);
        assert_eq!(attr(&accept, SERVER_PORT), Some(Value::I64(40000)));
        assert_eq!(attr(&accept, CLIENT_PORT), Some(Value::I64(8080)));

        let listen = root(Role::Listen);
        assert_eq!(
            (listen.name.as_ref(), listen.span_kind.clone()),
            ("tcp listen [::1]:40000", SpanKind::Internal)
        );
        assert_eq!(attr(&listen, CLIENT_PORT), None);
        assert_eq!(attr(&listen, NETWORK_PEER_PORT), None);

        let unknown = root(Role::Unknown);
        assert_eq!(
            (unknown.name.as_ref(), unknown.span_kind.clone()),
            ("tcp session", SpanKind::Internal)
        );
        assert_eq!(attr(&unknown, SERVER_ADDRESS), None);
    }

    #[test]
    fn the_root_span_names_the_owner_and_where_the_socket_lives() {
        let process = ProcessInfo {
            executable_name: "curl".into(),
            command_line: "curl http://[::1]:8080/".into(),
            owner: Some("alice".into()),
            exited: false,
        };
        let details = SessionDetails {
            process: Some(&process),
            cgroup_path: Some("/system.slice/docker-ab.scope"),
            container_id: Some("ab"),
        };
        let completed = SessionEnded {
            session: session(Role::Connect),
            end_ns: 2_000_000,
            last_state: TcpState(agent_common::state::LAST_ACK),
            close: None,
            outcome: Outcome::Normal,
            incomplete: None,
        };
        let root = factory().session_span(&completed, &details);
        assert_eq!(attr(&root, OWNER_KNOWN), Some(Value::Bool(true)));
        assert_eq!(attr(&root, PROCESS_PID), Some(Value::I64(4242)));
        assert_eq!(
            attr(&root, PROCESS_EXECUTABLE_NAME),
            Some(Value::from("curl"))
        );
        assert_eq!(
            attr(&root, PROCESS_COMMAND_LINE),
            Some(Value::from("curl http://[::1]:8080/"))
        );
        assert_eq!(attr(&root, PROCESS_OWNER), Some(Value::from("alice")));
        assert_eq!(attr(&root, COOKIE), Some(Value::I64(77)));
        assert_eq!(attr(&root, NETNS), Some(Value::I64(4_026_531_840)));
        assert_eq!(attr(&root, CGROUP_ID), Some(Value::I64(7859)));
        assert_eq!(attr(&root, CONTAINER_ID), Some(Value::from("ab")));

        let mut orphan = session(Role::Accept);
        orphan.context.owner = None;
        let root = factory().session_span(
            &SessionEnded {
                session: orphan,
                end_ns: 2_000_000,
                last_state: TcpState(agent_common::state::LAST_ACK),
                close: None,
                outcome: Outcome::Normal,
                incomplete: None,
            },
            &SessionDetails::default(),
        );
        assert_eq!(attr(&root, OWNER_KNOWN), Some(Value::Bool(false)));
        assert_eq!(attr(&root, PROCESS_PID), None, "never a guess");
        assert_eq!(attr(&root, PROCESS_EXECUTABLE_NAME), None);
    }

    #[test]
    fn the_root_carries_what_the_socket_reported_at_close() {
        let root = factory().session_span(
            &SessionEnded {
                session: session(Role::Connect),
                end_ns: 2_000_000,
                last_state: TcpState(agent_common::state::LAST_ACK),
                close: Some(Close {
                    bytes_sent: 100_000,
                    bytes_received: 5_000,
                    srtt_us: Some(42),
                    min_rtt_us: None,
                    retransmits: 2,
                    error: None,
                    soft_error: None,
                }),
                outcome: Outcome::Normal,
                incomplete: None,
            },
            &SessionDetails::default(),
        );
        assert_eq!(attr(&root, BYTES_SENT), Some(Value::I64(100_000)));
        assert_eq!(attr(&root, BYTES_RECEIVED), Some(Value::I64(5_000)));
        assert_eq!(attr(&root, RETRANSMITS), Some(Value::I64(2)));
        assert_eq!(attr(&root, RTT_SMOOTHED), Some(Value::I64(42)));
        assert_eq!(attr(&root, RTT_MIN), None, "never measured");
        assert_eq!(root.status, Status::Unset);
    }

    #[test]
    fn abnormal_ends_are_errors_and_early_ends_are_marked() {
        let end = |outcome, incomplete| {
            factory().session_span(
                &SessionEnded {
                    session: session(Role::Connect),
                    end_ns: 2_000_000,
                    last_state: TcpState(agent_common::state::LAST_ACK),
                    close: None,
                    outcome,
                    incomplete,
                },
                &SessionDetails::default(),
            )
        };
        let refused = end(Outcome::Failed(Failure::ConnectionRefused), None);
        assert!(matches!(refused.status, Status::Error { .. }));
        assert_eq!(
            attr(&refused, ERROR_TYPE),
            Some(Value::from("connection_refused"))
        );
        assert_eq!(attr(&refused, RESET_DIRECTION), None);
        let reset = end(
            Outcome::Failed(Failure::ConnectionReset(Some(ResetDirection::Sent))),
            None,
        );
        assert_eq!(
            attr(&reset, ERROR_TYPE),
            Some(Value::from("connection_reset"))
        );
        assert_eq!(attr(&reset, RESET_DIRECTION), Some(Value::from("sent")));
        let cut = end(Outcome::Normal, Some(Incomplete::Shutdown));
        assert_eq!(cut.status, Status::Unset);
        assert_eq!(attr(&cut, INCOMPLETE), Some(Value::Bool(true)));
        assert_eq!(attr(&cut, END_REASON), Some(Value::from("shutdown")));
    }
}
