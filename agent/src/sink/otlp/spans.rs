//! Turning completed sessions and states into OTLP spans, encoded at once in the protocol's
//! protobuf wire format ([`super::wire`]) with no SDK span or message structs in between,
//! following the semantic conventions for network attributes.
//!
//! A session's root span covers the whole session; each state it was in is a child span named
//! after the state. Times are the kernel's, moved to wall-clock time by one offset, so a
//! child's duration is exactly the kernel's delta.
//!
//! Each span is what opentelemetry-otlp's conversion of the SDK's span would be: sampled, its
//! parent local, its trace state empty. Its instrumentation scope is not on it but on the
//! `ScopeSpans` that carries it: [`scope`].

use std::{
    borrow::Cow,
    fmt::{self, Write as _},
    net::SocketAddr,
};

use agent_common::{
    correlation::ConnectionIds,
    decode::{Close, TcpState},
};
use arrayvec::ArrayString;
use opentelemetry::trace::{SpanId, TraceFlags};
use opentelemetry_proto::tonic::{
    common::v1::InstrumentationScope,
    trace::v1::{SpanFlags, span::SpanKind, status::StatusCode},
};
use opentelemetry_semantic_conventions::attribute::{
    CLIENT_ADDRESS, CLIENT_PORT, CONTAINER_ID, ERROR_TYPE, NETWORK_CONNECTION_STATE,
    NETWORK_LOCAL_ADDRESS, NETWORK_LOCAL_PORT, NETWORK_PEER_ADDRESS, NETWORK_PEER_PORT,
    NETWORK_TRANSPORT, NETWORK_TYPE, PROCESS_COMMAND_LINE, PROCESS_EXECUTABLE_NAME, PROCESS_OWNER,
    PROCESS_PID, SERVER_ADDRESS, SERVER_PORT,
};

use super::wire::{EncodedSpan, SpanEncoder};
use crate::{
    clock::WallClock,
    details::SessionDetails,
    session::{Context, Endpoints, Incomplete, Role, Session, SessionEnded, StateEnded},
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

/// Room first made for a span's encoding, in bytes: a session span with its links and a long
/// cgroup path (a later state span is about 120, a first one about 300).
const SPAN_BYTES: usize = 2048;

/// The instrumentation scope of every span built here, for the `ScopeSpans` that carries them:
/// this crate's name and version (no attributes, and no schema URL on the `ScopeSpans`).
pub fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: env!("CARGO_PKG_NAME").to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        attributes: Vec::new(),
        dropped_attributes_count: 0,
    }
}

/// Builds OTLP spans for one exporter, each in the buffer the one before it was built in.
pub struct SpanFactory {
    clock: WallClock,
    buf: Vec<u8>,
}

impl SpanFactory {
    /// A factory converting kernel times with `clock`.
    pub fn new(clock: WallClock) -> Self {
        Self {
            clock,
            buf: Vec::with_capacity(SPAN_BYTES),
        }
    }

    /// The OTLP span of a state a session left. The first of a trace (the handshake: SYN_SENT,
    /// SYN_RECV, or LISTEN) also says whose connection it is — the ends and the owner, which
    /// `details` describe — as a UI shows state spans long before their root, which comes at
    /// CLOSE; the later ones share its trace. (Every state span carrying them halved the export
    /// rate at the bench's load: 95,000 spans/s instead of 166,000, 2026-12-02.)
    pub fn state_span(
        &mut self,
        ended: &StateEnded,
        details: &SessionDetails<'_>,
    ) -> EncodedSpan<'_> {
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
        let clock = self.clock;
        let mut span = self.span(
            ids,
            ids.state_span_id(*index),
            Some(*parent_span_id),
            SpanKind::Internal,
            &state
                .name()
                .map_or_else(|| state.to_string().into(), Cow::Borrowed),
            (*start_ns, *end_ns),
        );
        if let Some(value) = connection_state(*state) {
            span.string(NETWORK_CONNECTION_STATE, value);
        }
        if *index == 0 {
            push_identity(&mut span, *role, endpoints, context, details);
        }
        push_incomplete(&mut span, *incomplete);
        if *start_unknown {
            span.boolean(STATE_START_UNKNOWN, true);
        }
        // The state in which the connection failed says so too, as its root does.
        if let Some(failure) = failure {
            span.string(ERROR_TYPE, &failure.error_type());
        }
        // One `retransmit` event per retransmission kept, at its kernel time; those beyond are
        // the span's dropped events.
        for (ts_ns, kind) in &retransmits.kept {
            span.event(
                clock.unix_nanos(*ts_ns),
                RETRANSMIT_EVENT,
                (RETRANSMIT_KIND, kind.as_str()),
            );
        }
        span.dropped_events(retransmits.beyond);
        match failure {
            Some(failure) => span.status(StatusCode::Error, &failure.description()),
            None => span.status(StatusCode::Unset, ""),
        }
        span.finish()
    }

    /// The OTLP span of a session that ended (its trace's root, or a continuation's span);
    /// `details` describe its owner and location.
    pub fn session_span(
        &mut self,
        ended: &SessionEnded,
        details: &SessionDetails<'_>,
    ) -> EncodedSpan<'_> {
        let SessionEnded {
            session,
            end_ns,
            outcome,
            incomplete,
            close,
            ..
        } = ended;
        let (name, kind) = root_name_and_kind(session.role, &session.endpoints);
        let mut span = self.span(
            &session.ids,
            session.span_id(),
            session.parent_span_id(),
            kind,
            &name,
            (session.start_ns, *end_ns),
        );
        push_session(&mut span, session);
        push_context(&mut span, session, details);
        let failure = outcome.failure();
        if let Some(failure) = &failure {
            span.string(ERROR_TYPE, &failure.error_type());
            if let Some(direction) = failure.reset_direction() {
                span.string(RESET_DIRECTION, direction.as_str());
            }
        }
        if let Some(close) = close {
            push_close(&mut span, close);
        }
        push_incomplete(&mut span, *incomplete);
        if session.found_at_start {
            span.boolean(FOUND_AT_START, true);
        }
        // An accepted socket's root links to its listener's, and the two ends of a connection
        // on this host link to each other: a UI can go from one to the other.
        for ids in [session.links.listener, session.links.peer]
            .into_iter()
            .flatten()
        {
            span.link(&ids.trace_id, &ids.root_span_id, sampled_local_flags());
        }
        match failure {
            Some(failure) => span.status(StatusCode::Error, &failure.description()),
            None => span.status(StatusCode::Unset, ""),
        }
        span.finish()
    }

    /// A span of the trace of `ids`, its header written. A parent id of zeros (the W3C
    /// invalid span id) is no parent, as in the SDK's conversion.
    fn span(
        &mut self,
        ids: &ConnectionIds,
        span_id: [u8; 8],
        parent_span_id: Option<[u8; 8]>,
        kind: SpanKind,
        name: &str,
        (start_ns, end_ns): (u64, u64),
    ) -> SpanEncoder<'_> {
        let parent = parent_span_id.filter(|parent| SpanId::from_bytes(*parent) != SpanId::INVALID);
        let times = (
            self.clock.unix_nanos(start_ns),
            self.clock.unix_nanos(end_ns),
        );
        let mut span = SpanEncoder::new(&mut self.buf, &ids.trace_id, &span_id, parent.as_ref());
        span.header(name, kind, times, sampled_local_flags());
        span
    }
}

/// The flags of every span and link: the W3C trace flags (sampled), and that whether the parent
/// is remote is known (it is not remote).
fn sampled_local_flags() -> u32 {
    u32::from(TraceFlags::SAMPLED.to_u8()) | SpanFlags::ContextHasIsRemoteMask as u32
}

/// A span's name or an attribute's text formatted on the stack, not in a `String` of its own:
/// the longest, `tcp connect ` and an IPv6 address with its port, is 60 bytes.
type ShortText = ArrayString<96>;

/// `args` formatted as [`ShortText`] (nothing formatted with it is longer; were it, the text
/// would be cut short).
fn short_text(args: fmt::Arguments<'_>) -> ShortText {
    let mut text = ShortText::new();
    let _ = text.write_fmt(args);
    text
}

/// `tcp connect 10.0.0.2:443` (CLIENT), `tcp accept 10.0.0.1:80` (SERVER),
/// `tcp listen 0.0.0.0:80` or `tcp session` (INTERNAL).
fn root_name_and_kind(role: Role, ends: &Endpoints) -> (ShortText, SpanKind) {
    // An IPv4 peer of a dual-stack socket (`::ffff:127.0.0.1`) reads as the IPv4 address it is.
    let local = SocketAddr::new(ends.local_addr.to_canonical(), ends.local_port);
    let peer = SocketAddr::new(ends.remote_addr.to_canonical(), ends.remote_port);
    match role {
        Role::Connect => (
            short_text(format_args!("tcp connect {peer}")),
            SpanKind::Client,
        ),
        Role::Accept => (
            short_text(format_args!("tcp accept {local}")),
            SpanKind::Server,
        ),
        Role::Listen => (
            short_text(format_args!("tcp listen {local}")),
            SpanKind::Internal,
        ),
        Role::Unknown => (short_text(format_args!("tcp session")), SpanKind::Internal),
    }
}

/// The network attributes of a session's span.
fn push_session(span: &mut SpanEncoder, session: &Session) {
    let ends = &session.endpoints;
    let local = (
        short_text(format_args!("{}", ends.local_addr.to_canonical())),
        i64::from(ends.local_port),
    );
    let peer = (
        short_text(format_args!("{}", ends.remote_addr.to_canonical())),
        i64::from(ends.remote_port),
    );
    span.string(NETWORK_TRANSPORT, "tcp");
    span.string(NETWORK_TYPE, ends.network_type());
    span.string(NETWORK_LOCAL_ADDRESS, &local.0);
    span.int(NETWORK_LOCAL_PORT, local.1);
    span.string(SKADDR, &short_text(format_args!("{:x}", session.skaddr)));
    span.int(ONCPU_PID, i64::from(session.first_pid));
    span.string(ONCPU_COMM, &session.first_comm.to_str_lossy());
    // A listener has no peer (the kernel reports 0.0.0.0:0).
    if session.role != Role::Listen {
        span.string(NETWORK_PEER_ADDRESS, &peer.0);
        span.int(NETWORK_PEER_PORT, peer.1);
    }
    let (server, client) = match session.role {
        Role::Connect => (Some(&peer), Some(&local)),
        Role::Accept => (Some(&local), Some(&peer)),
        Role::Listen => (Some(&local), None),
        Role::Unknown => (None, None),
    };
    if let Some((address, port)) = server {
        span.string(SERVER_ADDRESS, address);
        span.int(SERVER_PORT, *port);
    }
    if let Some((address, port)) = client {
        span.string(CLIENT_ADDRESS, address);
        span.int(CLIENT_PORT, *port);
    }
}

/// The owner's `process.*` attributes (only when it is known) and the socket's location.
fn push_context(span: &mut SpanEncoder, session: &Session, details: &SessionDetails<'_>) {
    let context = &session.context;
    span.boolean(OWNER_KNOWN, context.owner.is_some());
    if let Some(owner) = &context.owner {
        span.int(PROCESS_PID, i64::from(owner.pid));
        match details.process {
            Some(process) => {
                span.string(PROCESS_EXECUTABLE_NAME, &process.executable_name);
                if !process.command_line.is_empty() {
                    span.string(PROCESS_COMMAND_LINE, &process.command_line);
                }
            }
            None => span.string(PROCESS_EXECUTABLE_NAME, &owner.comm.to_str_lossy()),
        }
    }
    if let Some(name) = details.process.and_then(|process| process.owner.as_deref()) {
        span.string(PROCESS_OWNER, name);
    }
    span.int(COOKIE, session.cookie as i64);
    span.int(SOCKET_UID, i64::from(context.uid));
    span.int(NETNS, i64::from(context.netns));
    span.int(CGROUP_ID, context.cgroup_id as i64);
    if let Some(path) = details.cgroup_path {
        span.string(CGROUP_PATH, path);
    }
    if let Some(id) = details.container_id {
        span.string(CONTAINER_ID, id);
    }
}

/// What identifies a state span's connection without its root: the two ends (a listener has
/// no peer) and the owner's pid and executable.
fn push_identity(
    span: &mut SpanEncoder,
    role: Role,
    ends: &Endpoints,
    context: &Context,
    details: &SessionDetails<'_>,
) {
    span.string(
        NETWORK_LOCAL_ADDRESS,
        &short_text(format_args!("{}", ends.local_addr.to_canonical())),
    );
    span.int(NETWORK_LOCAL_PORT, i64::from(ends.local_port));
    if role != Role::Listen {
        span.string(
            NETWORK_PEER_ADDRESS,
            &short_text(format_args!("{}", ends.remote_addr.to_canonical())),
        );
        span.int(NETWORK_PEER_PORT, i64::from(ends.remote_port));
    }
    if let Some(owner) = &context.owner {
        span.int(PROCESS_PID, i64::from(owner.pid));
        if let Some(process) = details.process {
            span.string(PROCESS_EXECUTABLE_NAME, &process.executable_name);
        }
    }
}

/// What the socket reported as it closed: bytes, round-trip times, retransmissions.
fn push_close(span: &mut SpanEncoder, close: &Close) {
    span.int(
        BYTES_SENT,
        i64::try_from(close.bytes_sent).unwrap_or(i64::MAX),
    );
    span.int(
        BYTES_RECEIVED,
        i64::try_from(close.bytes_received).unwrap_or(i64::MAX),
    );
    span.int(RETRANSMITS, i64::from(close.retransmits));
    if let Some(srtt) = close.srtt_us {
        span.int(RTT_SMOOTHED, i64::from(srtt));
    }
    if let Some(min) = close.min_rtt_us {
        span.int(RTT_MIN, i64::from(min));
    }
}

fn push_incomplete(span: &mut SpanEncoder, incomplete: Option<Incomplete>) {
    if let Some(why) = incomplete {
        span.boolean(INCOMPLETE, true);
        let reason = match why {
            Incomplete::Shutdown => "shutdown",
            Incomplete::Evicted => "evicted",
        };
        span.string(END_REASON, reason);
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
    use std::net::{IpAddr, Ipv6Addr};

    use agent_common::{
        correlation::BootId,
        decode::{Comm, Owner, RetransmitKind},
        event::COMM_LEN,
    };

    use opentelemetry_proto::tonic::{
        common::v1::{AnyValue, KeyValue, any_value::Value},
        trace::v1::{
            Span, Status,
            span::{Event, Link},
        },
    };

    use super::*;
    use crate::session::{Context, Retransmits};
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

    /// Unix nanoseconds at the kernel's time 0, for [`factory`].
    const EPOCH_AT_BOOT_NS: u64 = 1_700_000_000_000_000_000;

    /// A factory whose spans come back decoded, as a collector reads them.
    struct Decoding(SpanFactory);

    impl Decoding {
        fn state_span(&mut self, ended: &StateEnded, details: &SessionDetails<'_>) -> Span {
            let encoded = self.0.state_span(ended, details);
            assert!(!encoded.is_root(), "a state span has a parent");
            encoded.decode().expect("a Span")
        }

        fn session_span(&mut self, ended: &SessionEnded, details: &SessionDetails<'_>) -> Span {
            let encoded = self.0.session_span(ended, details);
            let span = encoded.decode().expect("a Span");
            assert_eq!(encoded.is_root(), span.parent_span_id.is_empty());
            span
        }
    }

    fn factory() -> Decoding {
        Decoding(SpanFactory::new(WallClock::from_epoch_at_boot_ns(
            i128::from(EPOCH_AT_BOOT_NS),
        )))
    }

    /// The value of the attribute `key` among `attributes`.
    fn value<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
        attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
    }

    /// The value of the span's attribute `key`.
    fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
        value(&span.attributes, key)
    }

    fn text(value: &str) -> Value {
        Value::StringValue(value.to_owned())
    }

    fn status_code(span: &Span) -> Option<StatusCode> {
        span.status.as_ref().map(Status::code)
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
        assert_eq!(span.kind(), SpanKind::Internal);
        assert_eq!(span.trace_id, ids.trace_id);
        assert_eq!(span.span_id, ids.state_span_id(1));
        assert_eq!(span.parent_span_id, ids.root_span_id);
        assert_eq!(span.start_time_unix_nano, EPOCH_AT_BOOT_NS + 1_234_567);
        assert_eq!(
            span.end_time_unix_nano - span.start_time_unix_nano,
            200_000_001
        );
        assert_eq!(
            attr(&span, NETWORK_CONNECTION_STATE),
            Some(&text("established"))
        );
        assert_eq!(attr(&span, INCOMPLETE), None);
        assert_eq!(status_code(&span), Some(StatusCode::Unset));
        // A later state span shares its trace with the first, which says whose it is.
        assert_eq!(span.attributes.len(), 1, "{:?}", span.attributes);
        // Its retransmissions, at their kernel times; those not kept counted as dropped.
        let events: Vec<(&str, u64, Option<&Value>)> = span
            .events
            .iter()
            .map(|event| {
                (
                    event.name.as_str(),
                    event.time_unix_nano - span.start_time_unix_nano,
                    value(&event.attributes, RETRANSMIT_KIND),
                )
            })
            .collect();
        let data = text("data");
        assert_eq!(
            events,
            [
                ("retransmit", 1_000, Some(&data)),
                ("retransmit", 3_000, Some(&data)),
            ]
        );
        assert_eq!(span.dropped_events_count, 5);
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
        assert_eq!(status_code(&span), Some(StatusCode::Error), "{span:?}");
        assert_eq!(attr(&span, ERROR_TYPE), Some(&text("connect_timeout")));
        // The handshake span says whose connection it is on its own.
        assert_eq!(attr(&span, NETWORK_PEER_PORT), Some(&Value::IntValue(8080)));
        assert_eq!(
            attr(&span, NETWORK_LOCAL_PORT),
            Some(&Value::IntValue(40000))
        );
        assert_eq!(attr(&span, NETWORK_PEER_ADDRESS), Some(&text("::1")));
        assert_eq!(attr(&span, PROCESS_PID), Some(&Value::IntValue(4242)));
    }

    #[test]
    fn an_ipv4_connection_of_a_dual_stack_socket_reads_as_ipv4() {
        let mut mapped = session(Role::Accept);
        mapped.endpoints.local_addr = "::ffff:127.0.0.1".parse().expect("address");
        mapped.endpoints.local_port = 18081;
        mapped.endpoints.remote_addr = "::ffff:127.0.0.2".parse().expect("address");
        let (name, _) = root_name_and_kind(Role::Accept, &mapped.endpoints);
        assert_eq!(name.as_str(), "tcp accept 127.0.0.1:18081");
        let mut buf = Vec::new();
        let mut span = SpanEncoder::new(&mut buf, &[1; 16], &[1; 8], None);
        push_session(&mut span, &mapped);
        let attributes = span.finish().decode().expect("a Span").attributes;
        assert_eq!(value(&attributes, NETWORK_TYPE), Some(&text("ipv4")));
        assert_eq!(value(&attributes, SERVER_ADDRESS), Some(&text("127.0.0.1")));
        assert_eq!(
            value(&attributes, NETWORK_PEER_ADDRESS),
            Some(&text("127.0.0.2"))
        );
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
        assert_eq!(span.span_id, ids.state_span_id(3));
        assert_eq!(span.parent_span_id, ids.root_span_id);
        assert_eq!(span.trace_id, ids.trace_id);
    }

    #[test]
    fn the_longest_name_and_address_are_written_whole() {
        let widest = IpAddr::V6(Ipv6Addr::new(
            0xfe80, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xfffe,
        ));
        let ends = Endpoints {
            local_addr: widest,
            local_port: 65_535,
            remote_addr: widest,
            remote_port: 65_535,
        };
        let (name, _) = root_name_and_kind(Role::Connect, &ends);
        assert_eq!(
            name.as_str(),
            "tcp connect [fe80:ffff:ffff:ffff:ffff:ffff:ffff:fffe]:65535"
        );
        let address = short_text(format_args!("{}", ends.local_addr));
        assert_eq!(address.as_str(), widest.to_string());
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
        assert_eq!(connect.kind(), SpanKind::Client);
        assert!(connect.parent_span_id.is_empty(), "{connect:?}");
        assert_eq!(
            connect.span_id,
            ConnectionIds::new(&BootId([1; 16]), 77).root_span_id
        );
        assert_eq!(attr(&connect, SERVER_PORT), Some(&Value::IntValue(8080)));
        assert_eq!(attr(&connect, CLIENT_PORT), Some(&Value::IntValue(40000)));
        assert_eq!(attr(&connect, NETWORK_TYPE), Some(&text("ipv6")));
        assert_eq!(attr(&connect, NETWORK_PEER_ADDRESS), Some(&text("::1")));
        assert_eq!(attr(&connect, SKADDR), Some(&text("ffff88810685e5c0")));
        assert_eq!(attr(&connect, ONCPU_PID), Some(&Value::IntValue(42)));
        assert_eq!(attr(&connect, ONCPU_COMM), Some(&text("curl")));
        assert_eq!(status_code(&connect), Some(StatusCode::Unset));

        let accept = root(Role::Accept);
        assert_eq!(accept.name, "tcp accept [::1]:40000");
        assert_eq!(accept.kind(), SpanKind::Server);
        assert_eq!(attr(&accept, SERVER_PORT), Some(&Value::IntValue(40000)));
        assert_eq!(attr(&accept, CLIENT_PORT), Some(&Value::IntValue(8080)));

        let listen = root(Role::Listen);
        assert_eq!(
            (listen.name.as_str(), listen.kind()),
            ("tcp listen [::1]:40000", SpanKind::Internal)
        );
        assert_eq!(attr(&listen, CLIENT_PORT), None);
        assert_eq!(attr(&listen, NETWORK_PEER_PORT), None);

        let unknown = root(Role::Unknown);
        assert_eq!(
            (unknown.name.as_str(), unknown.kind()),
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
        assert_eq!(attr(&root, OWNER_KNOWN), Some(&Value::BoolValue(true)));
        assert_eq!(attr(&root, PROCESS_PID), Some(&Value::IntValue(4242)));
        assert_eq!(attr(&root, PROCESS_EXECUTABLE_NAME), Some(&text("curl")));
        assert_eq!(
            attr(&root, PROCESS_COMMAND_LINE),
            Some(&text("curl http://[::1]:8080/"))
        );
        assert_eq!(attr(&root, PROCESS_OWNER), Some(&text("alice")));
        assert_eq!(attr(&root, COOKIE), Some(&Value::IntValue(77)));
        assert_eq!(attr(&root, NETNS), Some(&Value::IntValue(4_026_531_840)));
        assert_eq!(attr(&root, CGROUP_ID), Some(&Value::IntValue(7859)));
        assert_eq!(attr(&root, CONTAINER_ID), Some(&text("ab")));

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
        assert_eq!(attr(&root, OWNER_KNOWN), Some(&Value::BoolValue(false)));
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
        assert_eq!(attr(&root, BYTES_SENT), Some(&Value::IntValue(100_000)));
        assert_eq!(attr(&root, BYTES_RECEIVED), Some(&Value::IntValue(5_000)));
        assert_eq!(attr(&root, RETRANSMITS), Some(&Value::IntValue(2)));
        assert_eq!(attr(&root, RTT_SMOOTHED), Some(&Value::IntValue(42)));
        assert_eq!(attr(&root, RTT_MIN), None, "never measured");
        assert_eq!(status_code(&root), Some(StatusCode::Unset));
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
        assert_eq!(status_code(&refused), Some(StatusCode::Error));
        assert_eq!(
            attr(&refused, ERROR_TYPE),
            Some(&text("connection_refused"))
        );
        assert_eq!(attr(&refused, RESET_DIRECTION), None);
        let reset = end(
            Outcome::Failed(Failure::ConnectionReset(Some(ResetDirection::Sent))),
            None,
        );
        assert_eq!(attr(&reset, ERROR_TYPE), Some(&text("connection_reset")));
        assert_eq!(attr(&reset, RESET_DIRECTION), Some(&text("sent")));
        let cut = end(Outcome::Normal, Some(Incomplete::Shutdown));
        assert_eq!(status_code(&cut), Some(StatusCode::Unset));
        assert_eq!(attr(&cut, INCOMPLETE), Some(&Value::BoolValue(true)));
        assert_eq!(attr(&cut, END_REASON), Some(&text("shutdown")));
    }

    /// The fields opentelemetry-otlp's conversion of the SDK's span gave (`From<SpanData> for
    /// Span`, opentelemetry-proto 0.33.1), as numbers on the wire.
    #[test]
    fn spans_are_what_the_sdk_conversion_gave() {
        // Trace flags sampled (0x01), and "whether the parent is remote is known" (0x100): not
        // remote, so no 0x200.
        const SAMPLED_LOCAL: u32 = 0x101;
        let listener = ConnectionIds::new(&BootId([2; 16]), 5);
        let peer = ConnectionIds::new(&BootId([1; 16]), 78);
        let mut accepted = session(Role::Accept);
        accepted.links = Links {
            listener: Some(listener),
            peer: Some(peer),
        };
        let ids = accepted.ids;
        let root = factory().session_span(
            &SessionEnded {
                session: accepted,
                end_ns: 2_000_000,
                last_state: TcpState(agent_common::state::ESTABLISHED),
                close: None,
                outcome: Outcome::Failed(Failure::ConnectionReset(Some(ResetDirection::Received))),
                incomplete: None,
            },
            &SessionDetails::default(),
        );
        assert_eq!(root.trace_id, ids.trace_id);
        assert_eq!(root.span_id, ids.root_span_id);
        assert_eq!(
            root.parent_span_id,
            Vec::<u8>::new(),
            "a root has no parent"
        );
        assert_eq!(root.trace_state, "");
        assert_eq!(root.flags, SAMPLED_LOCAL);
        assert_eq!(root.kind, 2, "SPAN_KIND_SERVER");
        assert_eq!(root.start_time_unix_nano, EPOCH_AT_BOOT_NS + 1_000_000);
        assert_eq!(root.end_time_unix_nano, EPOCH_AT_BOOT_NS + 2_000_000);
        assert_eq!(
            root.status,
            Some(Status {
                message: "connection reset by the peer".to_owned(),
                code: 2,
            }),
            "STATUS_CODE_ERROR"
        );
        assert_eq!(
            root.links,
            [listener, peer].map(|ids| Link {
                trace_id: ids.trace_id.to_vec(),
                span_id: ids.root_span_id.to_vec(),
                trace_state: String::new(),
                attributes: Vec::new(),
                dropped_attributes_count: 0,
                flags: SAMPLED_LOCAL,
            })
        );
        assert_eq!(
            (
                root.events.len(),
                root.dropped_attributes_count,
                root.dropped_events_count,
                root.dropped_links_count
            ),
            (0, 0, 0, 0)
        );
        assert_eq!(
            root.attributes
                .iter()
                .map(|kv| kv.key.as_str())
                .collect::<Vec<_>>(),
            [
                NETWORK_TRANSPORT,
                NETWORK_TYPE,
                NETWORK_LOCAL_ADDRESS,
                NETWORK_LOCAL_PORT,
                SKADDR,
                ONCPU_PID,
                ONCPU_COMM,
                NETWORK_PEER_ADDRESS,
                NETWORK_PEER_PORT,
                SERVER_ADDRESS,
                SERVER_PORT,
                CLIENT_ADDRESS,
                CLIENT_PORT,
                OWNER_KNOWN,
                PROCESS_PID,
                PROCESS_EXECUTABLE_NAME,
                COOKIE,
                SOCKET_UID,
                NETNS,
                CGROUP_ID,
                ERROR_TYPE,
                RESET_DIRECTION,
            ]
        );

        let state = factory().state_span(
            &StateEnded {
                ids,
                index: 0,
                parent_span_id: ids.root_span_id,
                state: TcpState(agent_common::state::SYN_RECV),
                next_state: Some(TcpState(agent_common::state::ESTABLISHED)),
                start_ns: 1_000_000,
                end_ns: 1_500_000,
                incomplete: None,
                start_unknown: false,
                retransmits: Retransmits {
                    kept: vec![(1_200_000, RetransmitKind::SynAck)],
                    beyond: 0,
                },
                failure: None,
                endpoints: session(Role::Accept).endpoints,
                context: session(Role::Accept).context,
                role: Role::Accept,
            },
            &SessionDetails::default(),
        );
        assert_eq!(state.parent_span_id, ids.root_span_id);
        assert_eq!(state.trace_state, "");
        assert_eq!(state.flags, SAMPLED_LOCAL);
        assert_eq!(state.kind, 1, "SPAN_KIND_INTERNAL");
        assert_eq!(
            state.status,
            Some(Status {
                message: String::new(),
                code: 0,
            }),
            "STATUS_CODE_UNSET"
        );
        assert_eq!(
            state.attributes,
            [
                (NETWORK_CONNECTION_STATE, text("syn_received")),
                (NETWORK_LOCAL_ADDRESS, text("::1")),
                (NETWORK_LOCAL_PORT, Value::IntValue(40000)),
                (NETWORK_PEER_ADDRESS, text("::1")),
                (NETWORK_PEER_PORT, Value::IntValue(8080)),
                (PROCESS_PID, Value::IntValue(4242)),
            ]
            .map(|(key, value)| KeyValue {
                key: key.to_owned(),
                value: Some(AnyValue { value: Some(value) }),
                key_strindex: 0,
            })
        );
        assert_eq!(
            state.events,
            [Event {
                time_unix_nano: EPOCH_AT_BOOT_NS + 1_200_000,
                name: "retransmit".to_owned(),
                attributes: vec![KeyValue {
                    key: "tcpstates.retransmit.kind".to_owned(),
                    value: Some(AnyValue {
                        value: Some(text("synack")),
                    }),
                    key_strindex: 0,
                }],
                dropped_attributes_count: 0,
            }]
        );
        assert_eq!(
            (
                state.links.len(),
                state.dropped_attributes_count,
                state.dropped_events_count,
                state.dropped_links_count
            ),
            (0, 0, 0, 0)
        );
        assert_eq!(
            (scope().name.as_str(), scope().version.as_str()),
            ("tcpstates", env!("CARGO_PKG_VERSION"))
        );
    }
}
