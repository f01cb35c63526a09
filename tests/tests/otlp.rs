//! `--otlp`: every TCP socket session becomes one trace, exported to a real OTLP receiver
//! (rotel, see `integration_tests::otlp`) over gRPC or HTTP. A root span per socket, named,
//! kinded and attributed after the connection the test made; a child per state, end to end,
//! lasting exactly what the text output's MS says; errors on refused and reset connections;
//! a handshake visible while the connection is still open; a collector that comes up late; a
//! full span queue (drops counted and reported) and a full session table (evictions counted, the
//! trace going on); the standard exporter variables (headers, timeout) on the wire; and nothing
//! lost at SIGTERM or SIGINT, open sessions included.
//!
//! The tests pick their sessions out by the ports of their own block, 28xxx. Most also bind
//! their clients to ports of that block and pass `-L` with exactly their ports, so that the
//! agent traces, queues and counts their sessions alone, however busy the host (a benchmark's
//! load generator next door overflows the ring buffer and the span queue). The one-trace-per-
//! socket and reset tests trace the whole host instead: their clients get ephemeral ports (the
//! first transition's local port 0 is filled in from later ones), and the agent's own connection
//! to the receiver is traced alongside.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agent_common::correlation::{BootId, ConnectionIds};
use integration_tests::agent::{self, Agent, EVENT_TIMEOUT, Finished, assert_usage_error};
use integration_tests::events::{
    Event, Format, Layout, closed_sessions_on_port, expect_lives, on_port, parse_json, sessions,
};
use integration_tests::netns::{Netns, THREAD_NAME};
use integration_tests::otlp::{AttrValue, Ports, ReceivedSpan, Receiver, SpanKind, StatusCode};
use integration_tests::traces::{
    ARRIVAL_TIMEOUT, CLOSE_COUNTERS, COOKIE, END_REASON, ERROR_TYPE, INCOMPLETE, RESET_DIRECTION,
    RTT_MIN, RTT_SMOOTHED, Role, Trace, await_traces_on_port, check_ids, check_trace, hex,
    host_name, made_by_this_process, open_states, timed_states, trace_of_life, traces_on_port,
};
use integration_tests::traffic::{
    self, CLIENT_CLOSING_FIRST, CLIENT_RESET, Closer, LISTENER, REFUSED, SERVER_CLOSED_BY_PEER,
    SERVER_RESET, Transitions,
};

/// The default text layout, which the agent prints alongside the export unless `-q`.
const TEXT: Format = Format::Text(Layout {
    time: false,
    timestamp: false,
    wide: false,
    csv: false,
});

/// How the agent reaches the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// `--otlp http://127.0.0.1:GRPC` (gRPC is the default protocol).
    Grpc,
    /// `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf --otlp http://127.0.0.1:HTTP` (a base URL, to
    /// which the agent appends `/v1/traces`).
    Http,
    /// `OTEL_EXPORTER_OTLP_PROTOCOL=http/json --otlp http://127.0.0.1:HTTP`.
    HttpJson,
}

impl Transport {
    /// The command that runs the agent with `args`, exporting to `ports` this way.
    fn command(self, ports: Ports, args: &[&str]) -> Command {
        let endpoint = match self {
            Transport::Grpc => format!("http://127.0.0.1:{}", ports.grpc),
            Transport::Http | Transport::HttpJson => format!("http://127.0.0.1:{}", ports.http),
        };
        let mut all = vec!["--otlp", endpoint.as_str()];
        all.extend_from_slice(args);
        let mut command = agent::command(&all);
        match self {
            Transport::Grpc => {}
            Transport::Http => {
                command.env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf");
            }
            Transport::HttpJson => {
                command.env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json");
            }
        }
        command
    }
}

/// Starts the agent with `args`, exporting to `receiver` over gRPC.
fn start_agent(receiver: &Receiver, args: &[&str]) -> Agent {
    Agent::start_command(Transport::Grpc.command(receiver.ports(), args))
}

/// How long the agent may take to exit: it exports every span still queued first, and its
/// queue holds every session on the host, which a busy host (a benchmark's load generator) fills.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// Stops the agent with `signal` and checks that it exited with 0.
fn stop(agent: Agent, signal: libc::c_int) -> Finished {
    let finished = agent.stop_within(signal, FLUSH_TIMEOUT);
    assert_eq!(
        finished.code(),
        0,
        "stderr:\n{}",
        finished.stderr.join("\n")
    );
    finished
}

/// The text output's socket lives on `port`, checked to be exactly `expected`, in that order.
fn text_lives(finished: &Finished, port: u16, expected: &[Transitions]) -> Vec<Vec<Event>> {
    expect_lives(
        &sessions(&on_port(&TEXT.events(&finished.stdout), port)),
        expected,
    )
}

/// Waits until the text output shows `count` closed socket lives on `port`.
fn await_text_lives(agent: &Agent, port: u16, count: usize) {
    agent.await_stdout(
        &format!("{count} closed socket lives on port {port}"),
        EVENT_TIMEOUT,
        |lines| closed_sessions_on_port(&TEXT.events(lines), port, count),
    );
}

/// The address a listener's peer fields hold: the unspecified address of `addr`'s family,
/// port 0.
fn no_peer(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    SocketAddr::new(ip, 0)
}

/// Checks the shape of a trace of a connection closed first by `closer` (or of its listener),
/// telling the three sockets apart by their root's kind.
fn check_trace_by_kind(trace: &Trace, closer: Closer) {
    let transitions = match trace.root.kind {
        SpanKind::Client => closer.client_transitions(),
        SpanKind::Server => closer.server_transitions(),
        _ => LISTENER,
    };
    check_trace(trace, &timed_states(transitions), None);
}

/// What a socket's root span must be.
#[derive(Debug, Clone, Copy)]
struct Root {
    role: Role,
    local: SocketAddr,
    peer: SocketAddr,
    /// `error.type` of an abnormal end (status Error), if it is one.
    error: Option<&'static str>,
    /// `tcpstates.reset.direction` of a reset: `received` or `sent`.
    reset: Option<&'static str>,
}

/// The roots of one connection's three traces, in the order listener, client, accepted
/// socket; `error` is the `error.type` of both ends of the connection, if it ended abnormally.
fn connection_roots(
    server: SocketAddr,
    client: SocketAddr,
    error: Option<&'static str>,
) -> [Root; 3] {
    [
        Root {
            role: Role::Listen,
            local: server,
            peer: no_peer(server),
            error: None,
            reset: None,
        },
        Root {
            role: Role::Connect,
            local: client,
            peer: server,
            error,
            reset: None,
        },
        Root {
            role: Role::Accept,
            local: server,
            peer: client,
            error,
            reset: None,
        },
    ]
}

/// Finds the one trace of `life` among `traces` and checks all of it: the shape of
/// [`check_trace`] with a child per state `transitions` times, and the root's name, kind,
/// status and exact attributes (`root`; the socket address and on-CPU task from the life's
/// first line), plus the default resource and scope. Returns the trace.
fn check_session(
    traces: &[Trace],
    ns: &Netns,
    life: &[Event],
    transitions: Transitions,
    root: Root,
) -> Trace {
    let trace = trace_of_life(traces, life);
    check_trace(trace, &timed_states(transitions), None);
    let span = &trace.root;
    let context = format!("{root:?}, life:\n{life:#?}\ntrace: {trace:#?}");
    assert_eq!(
        span.name,
        root.role.root_name(root.local, root.peer),
        "{context}"
    );
    assert_eq!(span.kind, root.role.kind(), "{context}");
    let mut attributes = root.role.root_attributes(root.local, root.peer, &life[0]);
    attributes.extend(made_by_this_process(ns));
    attributes.insert(COOKIE.to_owned(), AttrValue::Int(check_ids(span) as i64));
    match root.error {
        Some(error) => {
            assert_eq!(span.status_code, StatusCode::Error, "{context}");
            attributes.insert(ERROR_TYPE.to_owned(), AttrValue::Str(error.into()));
        }
        None => assert_eq!(span.status_code, StatusCode::Unset, "{context}"),
    }
    if let Some(direction) = root.reset {
        attributes.insert(RESET_DIRECTION.to_owned(), AttrValue::Str(direction.into()));
    }
    // What the socket reported at its CLOSE: its counters, whatever their values here.
    let mut got = span.attributes.clone();
    if life.last().is_some_and(|line| line.newstate == "CLOSE") {
        for key in CLOSE_COUNTERS {
            assert!(
                matches!(got.remove(key), Some(AttrValue::Int(n)) if n >= 0),
                "{key} at CLOSE: {context}"
            );
        }
        got.remove(RTT_SMOOTHED);
        got.remove(RTT_MIN);
    }
    assert_eq!(got, attributes, "{context}");
    for span in std::iter::once(span).chain(&trace.children) {
        assert_eq!(span.scope_name, "tcpstates", "{context}");
        assert_eq!(
            span.resource.get("service.name"),
            Some(&AttrValue::Str("tcpstates".into())),
            "{context}"
        );
        assert_eq!(
            span.resource.get("host.name"),
            Some(&AttrValue::Str(host_name())),
            "{context}"
        );
    }
    trace.clone()
}

/// Makes one connection to `server` (the client closes first) with the agent exporting over
/// `transport`, and checks the three traces: the listener's, the client's and the accepted
/// socket's, each exactly once and whole.
fn one_trace_per_socket(transport: Transport, server: SocketAddr) {
    let ns = Netns::create();
    let receiver = Receiver::start();
    let agent = Agent::start_command(transport.command(receiver.ports(), &[]));
    let connection = traffic::connect_and_close(&ns, server, Duration::ZERO, Closer::Client);
    let expected = [
        LISTENER,
        Closer::Client.client_transitions(),
        Closer::Client.server_transitions(),
    ];
    await_traces_on_port(&receiver, server.port(), &expected, ARRIVAL_TIMEOUT);
    await_text_lives(&agent, server.port(), expected.len());
    let finished = stop(agent, libc::SIGINT);

    let lives = text_lives(&finished, server.port(), &expected);
    let traces = traces_on_port(&receiver.spans(), server.port());
    assert_eq!(traces.len(), 3, "one trace per socket: {traces:#?}");
    let roots = connection_roots(server, connection.client, None);
    for ((life, transitions), root) in lives.iter().zip(expected).zip(roots) {
        check_session(&traces, &ns, life, transitions, root);
    }
    // connect() runs in the test's thread: the client's root names it.
    let first = &lives[1][0];
    assert_eq!(
        (first.pid, first.comm.as_str()),
        (std::process::id(), THREAD_NAME)
    );
}

#[test]
fn grpc_one_trace_per_socket() {
    one_trace_per_socket(Transport::Grpc, "127.0.0.1:28001".parse().expect("address"));
}

#[test]
fn http_one_trace_per_socket() {
    one_trace_per_socket(Transport::Http, "[::1]:28002".parse().expect("address"));
}

#[test]
fn http_json_one_trace_per_socket() {
    one_trace_per_socket(
        Transport::HttpJson,
        "127.0.0.1:28009".parse().expect("address"),
    );
}

/// `--otlp` without an endpoint sends where the variables say: over OTLP/HTTP,
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is a base URL the agent appends `/v1/traces` to, and
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is taken as it is, before the generic one (which names a
/// port nothing listens on here); over gRPC the generic one is taken as it is.
#[test]
fn otlp_endpoint_variables_say_where_spans_go() {
    let ns = Netns::create();
    let receiver = Receiver::start();
    let ports = receiver.ports();
    let http = format!("http://127.0.0.1:{}", ports.http);
    let traces_url = format!("{http}/v1/traces");
    let grpc = format!("http://127.0.0.1:{}", ports.grpc);
    /// The port a case traces, what it shows, and the variables it sets.
    type Case<'a> = (u16, &'a str, &'a [(&'a str, &'a str)]);
    let cases: [Case; 3] = [
        (
            28017,
            "OTEL_EXPORTER_OTLP_ENDPOINT over http/protobuf",
            &[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", &http),
            ],
        ),
        (
            28018,
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT first",
            &[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &traces_url),
            ],
        ),
        (
            28019,
            "OTEL_EXPORTER_OTLP_ENDPOINT over gRPC",
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", &grpc)],
        ),
    ];
    for (port, case, env) in cases {
        let filter = port.to_string();
        let mut command = agent::command(&["--otlp", "-q", "-L", &filter]);
        command.envs(env.iter().copied());
        let agent = Agent::start_command(command);
        let server = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        traffic::connect_and_close(&ns, server, Duration::ZERO, Closer::Client);
        let expected = [LISTENER, Closer::Client.server_transitions()];
        let traces = await_traces_on_port(&receiver, port, &expected, ARRIVAL_TIMEOUT);
        assert_eq!(traces.len(), 2, "{case}: one trace per socket: {traces:#?}");
        stop(agent, libc::SIGTERM);
    }
}

/// MS as printed (three decimals), in whole microseconds.
fn micros(ms: f64) -> u64 {
    (ms * 1000.0).round() as u64
}

#[test]
fn child_durations_equal_text_ms() {
    let ns = Netns::create();
    let receiver = Receiver::start();
    let address = |text: &str| -> SocketAddr { text.parse().expect("address") };
    // (server, client)
    let closed = (address("127.0.0.1:28003"), address("127.0.0.1:28030"));
    let refused = (address("127.0.0.1:28005"), address("127.0.0.1:28031"));
    let filter = local_port_filter([closed.0, closed.1, refused.0, refused.1].map(|a| a.port()));
    let agent = start_agent(&receiver, &["-L", &filter]);
    traffic::connect_from_each_and_close(&ns, closed.0, &[closed.1], Closer::Server);
    traffic::connect_refused_from(&ns, refused.1, refused.0);
    let cases: [(u16, Vec<Transitions>); 2] = [
        (
            closed.0.port(),
            vec![
                LISTENER,
                Closer::Server.client_transitions(),
                Closer::Server.server_transitions(),
            ],
        ),
        (refused.0.port(), vec![REFUSED]),
    ];
    for (port, expected) in &cases {
        await_traces_on_port(&receiver, *port, expected, ARRIVAL_TIMEOUT);
        await_text_lives(&agent, *port, expected.len());
    }
    let finished = stop(agent, libc::SIGINT);

    let spans = receiver.spans();
    let mut compared = 0;
    for (port, expected) in &cases {
        let traces = traces_on_port(&spans, *port);
        for life in text_lives(&finished, *port, expected) {
            let trace = trace_of_life(&traces, &life);
            assert_eq!(
                trace.children.len(),
                life.len() - 1,
                "{life:#?}\n{trace:#?}"
            );
            // The k-th line's MS is the time spent in its OLDSTATE: the (k-1)-th child.
            for (line, child) in life[1..].iter().zip(&trace.children) {
                assert_eq!(child.name, line.oldstate, "{line:?}\n{trace:#?}");
                assert_eq!(
                    child.duration_nanos() / 1000,
                    micros(line.ms),
                    "µs of the {} span ({} ns) vs MS {:.3} of {line:?}",
                    child.name,
                    child.duration_nanos(),
                    line.ms
                );
                compared += 1;
            }
        }
    }
    assert_eq!(compared, 1 + 4 + 4 + 1, "durations compared");
}

/// Without text, the kernel program keeps no state for client sockets (session tracking times
/// their states and remembers their owners from the `connect()` transition): an OTLP-only
/// agent's traces name the same owners as a text agent's lines, and last as long as its MS
/// says, up to the time between the two agents' programs reading the clock at each transition.
#[test]
fn otlp_alone_times_states_and_names_owners_as_the_text_agent_does() {
    const CLOCK_READS_APART: Duration = Duration::from_millis(1);
    let ns = Netns::create();
    let receiver = Receiver::start();
    let server: SocketAddr = "127.0.0.1:28004".parse().expect("address");
    let text = Agent::start_command(agent::command(&[]));
    let otlp = start_agent(&receiver, &["-q"]);
    let connection =
        traffic::connect_and_close(&ns, server, Duration::from_millis(20), Closer::Server);
    let expected = [
        LISTENER,
        Closer::Server.client_transitions(),
        Closer::Server.server_transitions(),
    ];
    await_traces_on_port(&receiver, server.port(), &expected, ARRIVAL_TIMEOUT);
    await_text_lives(&text, server.port(), expected.len());
    stop(otlp, libc::SIGINT);
    let finished = stop(text, libc::SIGINT);

    let lives = text_lives(&finished, server.port(), &expected);
    let traces = traces_on_port(&receiver.spans(), server.port());
    assert_eq!(traces.len(), 3, "one trace per socket: {traces:#?}");
    let roots = connection_roots(server, connection.client, None);
    let mut compared = 0;
    for ((life, transitions), root) in lives.iter().zip(expected).zip(roots) {
        let trace = check_session(&traces, &ns, life, transitions, root);
        for (line, child) in life[1..].iter().zip(&trace.children) {
            let span_us = child.duration_nanos() / 1000;
            assert!(
                span_us.abs_diff(micros(line.ms)) < CLOCK_READS_APART.as_micros() as u64,
                "{} span of {span_us} µs vs MS of {line:?}",
                child.name
            );
            compared += 1;
        }
    }
    assert_eq!(compared, 1 + 4 + 4, "durations compared");
}

/// `--pid` without text: the kernel keeps the owner of a client socket it is told to keep, so
/// the client's transitions after `connect()` (made in softirqs for the peer) still pass the
/// filter and its trace is whole.
#[test]
fn otlp_alone_with_pid_keeps_every_transition_of_the_owners_sockets() {
    let ns = Netns::create();
    let receiver = Receiver::start();
    let server: SocketAddr = "127.0.0.1:28016".parse().expect("address");
    let pid = std::process::id().to_string();
    let agent = start_agent(&receiver, &["-q", "--pid", &pid]);
    let connection = traffic::connect_and_close(&ns, server, Duration::ZERO, Closer::Client);
    let expected = [
        LISTENER,
        Closer::Client.client_transitions(),
        Closer::Client.server_transitions(),
    ];
    let traces = await_traces_on_port(&receiver, server.port(), &expected, ARRIVAL_TIMEOUT);
    stop(agent, libc::SIGINT);

    let client = traces
        .iter()
        .find(|trace| {
            trace.root.attributes.get("network.local.port")
                == Some(&AttrValue::Int(i64::from(connection.client.port())))
        })
        .unwrap_or_else(|| panic!("the client's trace: {traces:#?}"));
    check_trace(
        client,
        &timed_states(Closer::Client.client_transitions()),
        None,
    );
    assert_eq!(
        client.root.attributes.get("process.pid"),
        Some(&AttrValue::Int(i64::from(std::process::id()))),
        "{client:#?}"
    );
}

#[test]
fn refused_connect_is_one_error_trace() {
    let ns = Netns::create();
    let receiver = Receiver::start();
    let server: SocketAddr = "127.0.0.1:28006".parse().expect("address");
    let client: SocketAddr = "127.0.0.1:28032".parse().expect("address");
    let filter = local_port_filter([server.port(), client.port()]);
    let agent = start_agent(&receiver, &["-L", &filter]);
    traffic::connect_refused_from(&ns, client, server);
    await_traces_on_port(&receiver, server.port(), &[REFUSED], ARRIVAL_TIMEOUT);
    await_text_lives(&agent, server.port(), 1);
    let finished = stop(agent, libc::SIGINT);

    let lives = text_lives(&finished, server.port(), &[REFUSED]);
    let traces = traces_on_port(&receiver.spans(), server.port());
    assert_eq!(traces.len(), 1, "one trace: {traces:#?}");
    let trace = check_session(
        &traces,
        &ns,
        &lives[0],
        REFUSED,
        Root {
            role: Role::Connect,
            local: client,
            peer: server,
            error: Some("connection_refused"),
            reset: None,
        },
    );
    assert_eq!(trace.states(), ["SYN_SENT"]);
}

#[test]
fn reset_is_an_error_on_both_ends() {
    let ns = Netns::create();
    let receiver = Receiver::start();
    let agent = start_agent(&receiver, &[]);
    let server: SocketAddr = "127.0.0.1:28007".parse().expect("address");
    let connection = traffic::connect_and_reset(&ns, server);
    let expected = [LISTENER, CLIENT_RESET, SERVER_RESET];
    await_traces_on_port(&receiver, server.port(), &expected, ARRIVAL_TIMEOUT);
    await_text_lives(&agent, server.port(), expected.len());
    let finished = stop(agent, libc::SIGINT);

    let lives = text_lives(&finished, server.port(), &expected);
    let traces = traces_on_port(&receiver.spans(), server.port());
    assert_eq!(traces.len(), 3, "one trace per socket: {traces:#?}");
    let [listener, mut client, mut accepted] =
        connection_roots(server, connection.client, Some("connection_reset"));
    // The client aborted (SO_LINGER 0): it sent the reset, the accepted socket received it.
    client.reset = Some("sent");
    accepted.reset = Some("received");
    for ((life, transitions), root) in lives.iter().zip(expected).zip([listener, client, accepted])
    {
        check_session(&traces, &ns, life, transitions, root);
    }
}

/// The one span named `state` among `spans` that lasted exactly `nanos`, if it has arrived.
fn span_lasting<'a>(
    spans: &'a [ReceivedSpan],
    state: &str,
    nanos: u64,
) -> Option<&'a ReceivedSpan> {
    let found: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|span| span.name == state && span.duration_nanos() == nanos)
        .collect();
    assert!(
        found.len() <= 1,
        "several {state} spans of {nanos} ns: {found:#?}"
    );
    found.first().copied()
}

#[test]
fn handshake_arrives_while_the_connection_is_open() {
    let ns = Netns::create();
    let receiver = Receiver::start();
    let server: SocketAddr = "127.0.0.1:28008".parse().expect("address");
    let client: SocketAddr = "127.0.0.1:28033".parse().expect("address");
    let filter = local_port_filter([server.port(), client.port()]);
    let agent = start_agent(&receiver, &["--json", "-L", &filter]);
    let open = traffic::open_connection_from(&ns, client, server);

    // The kernel's time in SYN_SENT and in SYN_RECV, to the nanosecond, as --json prints it.
    let transition = |old: &'static str, local_port: u16| {
        agent.await_stdout(&format!("{old} -> ESTABLISHED"), EVENT_TIMEOUT, |lines| {
            lines
                .iter()
                .filter_map(|line| parse_json(line).ok())
                .find(|json| {
                    json.event.transition() == (old, "ESTABLISHED")
                        && json.event.lport == local_port
                })
        })
    };
    let syn_sent = transition("SYN_SENT", open.connection.client.port());
    let syn_recv = transition("SYN_RECV", server.port());
    let handshake = receiver.wait_for(
        |spans| {
            span_lasting(spans, "SYN_SENT", syn_sent.span_ns).is_some()
                && span_lasting(spans, "SYN_RECV", syn_recv.span_ns).is_some()
        },
        ARRIVAL_TIMEOUT,
    );
    let client_syn = span_lasting(&handshake, "SYN_SENT", syn_sent.span_ns)
        .expect("waited for")
        .clone();
    let server_syn = span_lasting(&handshake, "SYN_RECV", syn_recv.span_ns)
        .expect("waited for")
        .clone();
    // Hold the connection open for longer than a batch takes to arrive: still nothing but the
    // handshake may have come of these two sockets.
    thread::sleep(Duration::from_secs(1));
    let before_close = receiver.spans();
    for syn in [&client_syn, &server_syn] {
        let of_trace: Vec<&ReceivedSpan> = before_close
            .iter()
            .filter(|span| span.trace_id == syn.trace_id)
            .collect();
        assert_eq!(of_trace, [syn], "only the handshake before the close");
    }
    assert!(
        traces_on_port(&before_close, server.port()).is_empty(),
        "no root span on port {} before the close",
        server.port()
    );

    open.close(Closer::Client);
    let expected = [LISTENER, CLIENT_CLOSING_FIRST, SERVER_CLOSED_BY_PEER];
    let traces = await_traces_on_port(&receiver, server.port(), &expected, ARRIVAL_TIMEOUT);
    stop(agent, libc::SIGINT);
    for (syn, transitions) in [
        (&client_syn, CLIENT_CLOSING_FIRST),
        (&server_syn, SERVER_CLOSED_BY_PEER),
    ] {
        let trace = traces
            .iter()
            .find(|trace| trace.root.trace_id == syn.trace_id)
            .unwrap_or_else(|| panic!("no root for {syn:#?} in {traces:#?}"));
        check_trace(trace, &timed_states(transitions), None);
        assert_eq!(
            &trace.children[0], syn,
            "the handshake span is the first child"
        );
        let established = &trace.children[1];
        assert!(
            !before_close.contains(established),
            "ESTABLISHED arrived before the close: {established:#?}"
        );
    }
}

/// `-L` with `ports`: the agent then traces only the test's own sockets, so what it queues and
/// counts is the test's alone, however busy the host (a load generator next door fills any
/// queue while the collector is down).
fn local_port_filter(ports: impl IntoIterator<Item = u16>) -> String {
    ports
        .into_iter()
        .map(|port| port.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Checks the agent's OTLP account against the `sessions` sessions in `spans` spans the test
/// made (the agent traced nothing else): all exported, nothing dropped, failed or evicted; and
/// that the receiver got exactly those spans.
fn assert_all_exported(finished: &Finished, receiver: &Receiver, sessions: usize, spans: usize) {
    let summary = finished.otlp_summary();
    let context = format!("{summary:?}; stderr:\n{}", finished.stderr.join("\n"));
    assert_eq!(
        (summary.dropped, summary.failed, summary.evicted),
        (0, 0, 0),
        "{context}"
    );
    assert_eq!(
        (summary.sessions, summary.spans),
        (
            u64::try_from(sessions).expect("count"),
            u64::try_from(spans).expect("count")
        ),
        "{context}"
    );
    let received = receiver.wait_for(|all| all.len() >= spans, ARRIVAL_TIMEOUT);
    assert_eq!(received.len(), spans, "spans received; {context}");
}

#[test]
fn collector_down_at_start_up_10_s_later() {
    /// How long the collector stays down after the agent starts.
    const DOWN_FOR: Duration = Duration::from_secs(10);
    /// How long the agent may take to export what it queued meanwhile, once the collector is
    /// up: its next retry comes at most 5 s later.
    const RECOVERY_TIMEOUT: Duration = Duration::from_secs(20);
    let ns = Netns::create();
    let ports = Ports::free();
    let address = |text: &str| -> SocketAddr { text.parse().expect("address") };
    // (server, client) before and after the collector comes up.
    let before = (address("127.0.0.1:28010"), address("127.0.0.1:28020"));
    let after = (address("127.0.0.1:28011"), address("127.0.0.1:28021"));
    let filter = local_port_filter([before.0, before.1, after.0, after.1].map(|a| a.port()));
    let agent = Agent::start_command(Transport::Grpc.command(ports, &["-q", "-L", &filter]));
    let started = Instant::now();
    let expected = [
        LISTENER,
        Closer::Server.client_transitions(),
        Closer::Server.server_transitions(),
    ];
    traffic::connect_from_each_and_close(&ns, before.0, &[before.1], Closer::Server);
    agent.await_stderr("an export failure", EVENT_TIMEOUT, |lines| {
        lines
            .iter()
            .any(|line| line.starts_with("tcpstates: OTLP export failing, will retry: "))
            .then_some(())
    });
    // The collector being down this long is the scenario.
    thread::sleep(DOWN_FOR.saturating_sub(started.elapsed()));
    let receiver = Receiver::start_on(ports);
    traffic::connect_from_each_and_close(&ns, after.0, &[after.1], Closer::Server);
    agent.await_stderr("the export's recovery", RECOVERY_TIMEOUT, |lines| {
        lines
            .iter()
            .any(|line| line == "tcpstates: OTLP export recovered")
            .then_some(())
    });
    let mut spans = 0;
    for (server, client) in [before, after] {
        let traces = await_traces_on_port(&receiver, server.port(), &expected, RECOVERY_TIMEOUT);
        assert_eq!(traces.len(), 3, "one trace per socket: {traces:#?}");
        let connect = traces
            .iter()
            .find(|trace| trace.root.name == format!("tcp connect {server}"))
            .unwrap_or_else(|| panic!("no client trace: {traces:#?}"));
        assert_eq!(
            connect.root.int_attr("client.port"),
            Some(i64::from(client.port()))
        );
        for trace in &traces {
            check_trace_by_kind(trace, Closer::Server);
        }
        spans += traces.iter().map(Trace::span_count).sum::<usize>();
    }
    let finished = stop(agent, libc::SIGINT);
    assert!(
        finished.stdout.is_empty(),
        "-q prints no events: {:?}",
        finished.stdout
    );
    assert_all_exported(&finished, &receiver, 6, spans);
}

#[test]
fn sigterm_loses_nothing_queued() {
    /// Connections made right before the signal.
    const CONNECTIONS: u16 = 200;
    /// Their clients' ports: 28100, 28101, ...
    const FIRST_CLIENT_PORT: u16 = 28100;
    let ns = Netns::create();
    let receiver = Receiver::start();
    let server: SocketAddr = "127.0.0.1:28012".parse().expect("address");
    let clients: Vec<SocketAddr> = (0..CONNECTIONS)
        .map(|i| SocketAddr::new(server.ip(), FIRST_CLIENT_PORT + i))
        .collect();
    let filter = local_port_filter(
        std::iter::once(server.port()).chain(clients.iter().map(SocketAddr::port)),
    );
    let agent = start_agent(&receiver, &["-q", "-L", &filter]);
    traffic::connect_from_each_and_close(&ns, server, &clients, Closer::Client);
    // Once no socket is left, the kernel has emitted every transition to CLOSE; no span is
    // waited for.
    ns.await_no_tcp_sockets(EVENT_TIMEOUT);
    let finished = stop(agent, libc::SIGTERM);

    let mut expected = vec![LISTENER];
    for _ in &clients {
        expected.extend([
            Closer::Client.client_transitions(),
            Closer::Client.server_transitions(),
        ]);
    }
    let traces = await_traces_on_port(&receiver, server.port(), &expected, ARRIVAL_TIMEOUT);
    assert_eq!(traces.len(), expected.len(), "one trace per socket");
    for trace in &traces {
        check_trace_by_kind(trace, Closer::Client);
    }
    let client_ports: BTreeSet<i64> = traces
        .iter()
        .filter(|trace| trace.root.kind == SpanKind::Client)
        .filter_map(|trace| trace.root.int_attr("client.port"))
        .collect();
    let made: BTreeSet<i64> = clients.iter().map(|c| i64::from(c.port())).collect();
    assert_eq!(client_ports, made, "a client trace for every connection");
    let spans: usize = expected.iter().map(|life| life.len()).sum();
    assert_all_exported(&finished, &receiver, expected.len(), spans);
}

/// The spans' total in the agent's running reports of dropped spans (`tcpstates: N more spans
/// dropped (OTLP queue full); M so far`), and the last `M`.
fn reported_drops(stderr: &[String]) -> (u64, Option<u64>) {
    let mut more = 0;
    let mut so_far = None;
    for line in stderr {
        let Some(rest) = line.strip_prefix("tcpstates: ") else {
            continue;
        };
        let Some((count, total)) = rest.split_once(" more spans dropped (OTLP queue full); ")
        else {
            continue;
        };
        more += count.parse::<u64>().expect("a count");
        so_far = Some(
            total
                .strip_suffix(" so far")
                .and_then(|total| total.parse().ok())
                .expect("a total"),
        );
    }
    (more, so_far)
}

#[test]
fn a_full_queue_drops_and_reports_spans_while_the_collector_is_down() {
    /// Spans the agent may queue (`--otlp-queue`): room for the first connection's 12 spans,
    /// which can come in one burst, before the export thread takes any; far less than the 200
    /// spans of the connections made while it is failing.
    const QUEUE: usize = 16;
    /// Connections made while the export is failing; their clients' ports: 28300, 28301, ...
    const CONNECTIONS: u16 = 20;
    const FIRST_CLIENT_PORT: u16 = 28300;
    let ns = Netns::create();
    let ports = Ports::free();
    let server: SocketAddr = "127.0.0.1:28014".parse().expect("address");
    let clients: Vec<SocketAddr> = (0..=CONNECTIONS)
        .map(|i| SocketAddr::new(server.ip(), FIRST_CLIENT_PORT + i))
        .collect();
    let filter = local_port_filter(
        std::iter::once(server.port()).chain(clients.iter().map(SocketAddr::port)),
    );
    let queue = QUEUE.to_string();
    let agent = Agent::start_command(
        Transport::Grpc.command(ports, &["-q", "-L", &filter, "--otlp-queue", &queue]),
    );
    let lives = |connections: usize| {
        let mut lives = vec![LISTENER];
        for _ in 0..connections {
            lives.extend([
                Closer::Client.client_transitions(),
                Closer::Client.server_transitions(),
            ]);
        }
        lives
    };
    let span_count = |lives: &[Transitions]| lives.iter().map(|life| life.len()).sum::<usize>();
    // One connection, whose spans the export thread takes as its first batch and then holds,
    // retrying, while the collector is down; then many more, for a queue of QUEUE spans.
    traffic::connect_from_each_and_close(&ns, server, &clients[..1], Closer::Client);
    // Its last transitions can come late (a retransmitted FIN); they must be queued before the
    // many connections' spans are.
    ns.await_no_tcp_sockets(EVENT_TIMEOUT);
    agent.await_stderr("an export failure", EVENT_TIMEOUT, |lines| {
        lines
            .iter()
            .any(|line| line.starts_with("tcpstates: OTLP export failing, will retry: "))
            .then_some(())
    });
    traffic::connect_from_each_and_close(&ns, server, &clients[1..], Closer::Client);
    let first = lives(1);
    let made = span_count(&first) + span_count(&lives(clients.len() - 1));
    agent.await_stderr("a report of dropped spans", EVENT_TIMEOUT, |lines| {
        (reported_drops(lines).0 > 0).then_some(())
    });

    let receiver = Receiver::start_on(ports);
    agent.await_stderr("the export's recovery", Duration::from_secs(20), |lines| {
        lines
            .iter()
            .any(|line| line == "tcpstates: OTLP export recovered")
            .then_some(())
    });
    // The first connection's traces were held all along: they arrive whole.
    let traces = await_traces_on_port(&receiver, server.port(), &first, ARRIVAL_TIMEOUT);
    let first_client = i64::from(clients[0].port());
    for trace in traces.iter().filter(|trace| {
        trace
            .root
            .int_attr("client.port")
            .is_none_or(|port| port == first_client)
    }) {
        check_trace_by_kind(trace, Closer::Client);
    }
    let finished = stop(agent, libc::SIGTERM);
    let summary = finished.otlp_summary();
    let context = format!("{summary:?}; stderr:\n{}", finished.stderr.join("\n"));
    assert_eq!(summary.failed, 0, "{context}");
    assert_eq!(
        summary.spans + summary.dropped,
        u64::try_from(made).expect("count"),
        "every span the agent made is exported or counted dropped: {context}"
    );
    assert!(
        summary.spans <= u64::try_from(span_count(&first) + QUEUE).expect("count"),
        "no more than the held batch and a full queue are kept: {context}"
    );
    assert_eq!(
        reported_drops(&finished.stderr),
        (summary.dropped, Some(summary.dropped)),
        "every drop reported while running: {context}"
    );
    let received = receiver.wait_for(
        |all| all.len() >= usize::try_from(summary.spans).expect("count"),
        ARRIVAL_TIMEOUT,
    );
    assert_eq!(
        u64::try_from(received.len()).expect("count"),
        summary.spans,
        "{context}"
    );
}

#[test]
fn a_full_session_table_evicts_the_session_idle_longest_and_its_trace_goes_on() {
    let ns = Netns::create();
    let receiver = Receiver::start();
    let server: SocketAddr = "127.0.0.1:28016".parse().expect("address");
    let client: SocketAddr = "127.0.0.1:28036".parse().expect("address");
    let filter = local_port_filter([server.port(), client.port()]);
    // Room for two sessions: the listener's and the client's. The accepted socket's first
    // transition ends the listener's, idle longest.
    let agent = start_agent(&receiver, &["-L", &filter, "--max-sessions", "2"]);
    let open = traffic::open_connection_from(&ns, client, server);
    let listen_name = Role::Listen.root_name(server, no_peer(server));
    receiver.wait_for(
        |spans| spans.iter().any(|span| span.name == listen_name),
        ARRIVAL_TIMEOUT,
    );
    open.close(Closer::Client);
    let expected = [
        LISTENER,
        Closer::Client.client_transitions(),
        Closer::Client.server_transitions(),
    ];
    await_text_lives(&agent, server.port(), expected.len());
    let finished = stop(agent, libc::SIGINT);
    let summary = finished.otlp_summary();
    assert_eq!(
        (summary.evicted, summary.dropped, summary.failed),
        (1, 0, 0),
        "{summary:?}"
    );

    let lives = text_lives(&finished, server.port(), &expected);
    // The listener's trace: the root and its LISTEN ended at the eviction, then the span of its
    // LISTEN -> CLOSE, under the root.
    let spans = receiver.wait_for(
        |spans| {
            let traces = traces_on_port(spans, server.port());
            traces.len() == 3 && traces.iter().map(Trace::span_count).sum::<usize>() == 5 + 5 + 3
        },
        ARRIVAL_TIMEOUT,
    );
    let traces = traces_on_port(&spans, server.port());
    for (life, transitions) in lives.iter().zip(expected).skip(1) {
        check_trace(
            trace_of_life(&traces, life),
            &timed_states(transitions),
            None,
        );
    }
    let accepted = trace_of_life(&traces, &lives[2]);
    let listener = traces
        .iter()
        .find(|trace| trace.root.name == listen_name)
        .unwrap_or_else(|| panic!("no listener trace: {traces:#?}"));
    let context = format!("{listener:#?}");
    let root = &listener.root;
    let cookie = check_ids(root);
    assert_eq!(
        (
            root.attributes.get(INCOMPLETE),
            root.attributes.get(END_REASON)
        ),
        (
            Some(&AttrValue::Bool(true)),
            Some(&AttrValue::Str("evicted".into()))
        ),
        "{context}"
    );
    assert_eq!(
        root.end_unix_nano, accepted.root.start_unix_nano,
        "evicted at the accepted socket's first transition: {context}"
    );
    let [listen, rest] = listener.children.as_slice() else {
        panic!("the LISTEN state and the rest of the session: {context}");
    };
    assert_eq!(
        (listen.name.as_str(), listen.end_unix_nano),
        ("LISTEN", root.end_unix_nano),
        "{context}"
    );
    assert_eq!(
        listen.attributes.get(END_REASON),
        Some(&AttrValue::Str("evicted".into())),
        "{context}"
    );
    let ids = ConnectionIds::new(&BootId::read().expect("boot id"), cookie);
    assert_eq!(
        (
            rest.name.as_str(),
            rest.kind,
            rest.parent_span_id.as_deref(),
            rest.span_id.as_str(),
        ),
        (
            "tcp session",
            SpanKind::Internal,
            Some(root.span_id.as_str()),
            hex(&ids.state_span_id(1)).as_str(),
        ),
        "the rest of the session: under the root, with the next state span's id: {context}"
    );
    assert_eq!(rest.attributes.get(INCOMPLETE), None, "{context}");
    assert!(
        rest.start_unix_nano > root.end_unix_nano && rest.end_unix_nano == rest.start_unix_nano,
        "the listener's close, after the eviction, with no state timed since: {context}"
    );
}

#[test]
fn sigint_ends_open_sessions_as_incomplete() {
    let ns = Netns::create();
    let receiver = Receiver::start();
    let server: SocketAddr = "127.0.0.1:28013".parse().expect("address");
    let client: SocketAddr = "127.0.0.1:28034".parse().expect("address");
    let filter = local_port_filter([server.port(), client.port()]);
    let agent = start_agent(&receiver, &["-L", &filter]);
    let open = traffic::open_connection_from(&ns, client, server);
    // accept() returned: both ends are ESTABLISHED, their transitions emitted.
    let expected: [Transitions; 3] = [
        &LISTENER[..1],
        &CLIENT_CLOSING_FIRST[..2],
        &SERVER_CLOSED_BY_PEER[..2],
    ];
    await_text_lives_open(&agent, server.port());
    let signalled = unix_nanos(SystemTime::now());
    let finished = stop(agent, libc::SIGINT);
    let exited = unix_nanos(SystemTime::now());

    let lives = text_lives(&finished, server.port(), &expected);
    let traces = await_traces_on_port(&receiver, server.port(), &expected, ARRIVAL_TIMEOUT);
    assert_eq!(traces.len(), 3, "one trace per socket: {traces:#?}");
    let client = open.connection.client;
    let roots = [
        (Role::Listen, server, no_peer(server)),
        (Role::Connect, client, server),
        (Role::Accept, server, client),
    ];
    for ((life, transitions), (role, local, peer)) in lives.iter().zip(expected).zip(roots) {
        let trace = trace_of_life(&traces, life);
        check_trace(trace, &open_states(transitions), Some("shutdown"));
        let root = &trace.root;
        let context = format!("{role:?}: {trace:#?}");
        assert_eq!(root.name, role.root_name(local, peer), "{context}");
        assert_eq!(root.kind, role.kind(), "{context}");
        assert_eq!(root.status_code, StatusCode::Unset, "{context}");
        let mut attributes = role.root_attributes(local, peer, &life[0]);
        attributes.extend(made_by_this_process(&ns));
        attributes.insert(COOKIE.to_owned(), AttrValue::Int(check_ids(root) as i64));
        attributes.insert(INCOMPLETE.to_owned(), AttrValue::Bool(true));
        attributes.insert(END_REASON.to_owned(), AttrValue::Str("shutdown".into()));
        assert_eq!(root.attributes, attributes, "{context}");
        // It ends at shutdown, between the signal and the exit (give or take the agent's
        // reading of the two clocks).
        let slack = 50_000_000;
        assert!(
            (signalled - slack..=exited + slack).contains(&root.end_unix_nano),
            "ends at {} ns, signalled at {signalled}, exited at {exited}: {context}",
            root.end_unix_nano
        );
    }
    // Held open until the agent was gone.
    drop(open);
}

/// Waits until the text output shows the three sockets of an open connection on `port`: the
/// listener's CLOSE -> LISTEN, and both ends' SYN -> ESTABLISHED.
fn await_text_lives_open(agent: &Agent, port: u16) {
    agent.await_stdout(
        &format!("an open connection on port {port}"),
        EVENT_TIMEOUT,
        |lines| {
            let events = on_port(&TEXT.events(lines), port);
            let established = events
                .iter()
                .filter(|event| event.newstate == "ESTABLISHED")
                .count();
            let listening = events.iter().any(|event| event.newstate == "LISTEN");
            (listening && established == 2).then_some(())
        },
    );
}

/// `time` in nanoseconds since the Unix epoch.
fn unix_nanos(time: SystemTime) -> u64 {
    let since = time.duration_since(UNIX_EPOCH).expect("after the epoch");
    u64::try_from(since.as_nanos()).expect("fits u64")
}

/// Makes a refused connect from `client` to `server` with the agent exporting over gRPC with
/// `env` set, and returns the resource its trace was exported with.
fn resource_of_a_session(
    env: &[(&str, &str)],
    client: SocketAddr,
    server: SocketAddr,
) -> BTreeMap<String, AttrValue> {
    let ns = Netns::create();
    let receiver = Receiver::start();
    let filter = local_port_filter([server.port(), client.port()]);
    let mut command = Transport::Grpc.command(receiver.ports(), &["-q", "-L", &filter]);
    command.envs(env.iter().copied());
    let agent = Agent::start_command(command);
    traffic::connect_refused_from(&ns, client, server);
    let traces = await_traces_on_port(&receiver, server.port(), &[REFUSED], ARRIVAL_TIMEOUT);
    stop(agent, libc::SIGINT);
    let [trace] = traces.as_slice() else {
        panic!("one trace: {traces:#?}");
    };
    for child in &trace.children {
        assert_eq!(
            child.resource, trace.root.resource,
            "one resource: {trace:#?}"
        );
    }
    trace.root.resource.clone()
}

#[test]
fn resource_defaults_to_service_tcpstates_on_this_host() {
    let resource = resource_of_a_session(
        &[],
        "127.0.0.1:28035".parse().expect("address"),
        "127.0.0.1:28014".parse().expect("address"),
    );
    for (key, value) in [("service.name", "tcpstates"), ("host.name", &host_name())] {
        assert_eq!(
            resource.get(key),
            Some(&AttrValue::Str(value.into())),
            "{key} in {resource:#?}"
        );
    }
}

#[test]
fn resource_follows_otel_service_name_and_resource_attributes() {
    let resource = resource_of_a_session(
        &[
            ("OTEL_SERVICE_NAME", "x"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test"),
        ],
        "127.0.0.1:28036".parse().expect("address"),
        "127.0.0.1:28015".parse().expect("address"),
    );
    for (key, value) in [
        ("service.name", "x"),
        ("deployment.environment", "test"),
        ("host.name", &host_name()),
    ] {
        assert_eq!(
            resource.get(key),
            Some(&AttrValue::Str(value.into())),
            "{key} in {resource:#?}"
        );
    }
}

#[test]
fn unknown_protocol_is_a_usage_error_naming_the_variable() {
    let mut command = agent::command(&["--otlp"]);
    command.env("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift");
    assert_usage_error(command, "OTEL_EXPORTER_OTLP_PROTOCOL");
}

#[test]
fn unknown_compression_is_a_usage_error_naming_the_variable() {
    let mut command = agent::command(&["--otlp"]);
    command.env("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd");
    assert_usage_error(command, "OTEL_EXPORTER_OTLP_COMPRESSION");
}

#[test]
fn unknown_traces_protocol_is_a_usage_error_naming_that_variable() {
    let mut command = agent::command(&["--otlp"]);
    command.env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "thrift");
    assert_usage_error(command, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL");
}

#[test]
fn endpoint_without_scheme_is_a_usage_error() {
    assert_usage_error(
        agent::command(&["--otlp", "localhost:4317"]),
        "localhost:4317",
    );
}

/// `OTEL_EXPORTER_OTLP_HEADERS` reaches the wire: rotel does not show request headers, so this
/// test takes the receiver's place on a loopback port and reads the agent's OTLP/HTTP request
/// itself (head only), then answers it as a receiver would.
#[test]
fn otel_exporter_otlp_headers_are_sent_with_each_request() {
    let request = take_http_export(
        28041,
        &[(
            "OTEL_EXPORTER_OTLP_HEADERS",
            "x-tenant=blue,x-api-key=s3cret",
        )],
    );
    let head = &request.head;
    assert!(head.starts_with("post /v1/traces "), "{head}");
    for header in [
        "x-tenant: blue\r\n",
        "x-api-key: s3cret\r\n",
        "content-type: application/x-protobuf\r\n",
    ] {
        assert!(head.contains(header), "no {header:?} in:\n{head}");
    }
    request.answer_and_stop();
}

/// `OTEL_EXPORTER_OTLP_COMPRESSION=gzip` compresses each OTLP/HTTP request: the request read on a
/// loopback port says `content-encoding: gzip` and its body is a gzip stream.
#[test]
fn otel_exporter_otlp_compression_gzip_compresses_each_http_request() {
    use std::io::Read;

    let mut request = take_http_export(28045, &[("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")]);
    let head = &request.head;
    assert!(head.contains("content-encoding: gzip\r\n"), "{head}");
    let mut magic = [0; 2];
    request
        .stream
        .read_exact(&mut magic)
        .expect("the body's first bytes");
    assert_eq!(magic, [0x1f, 0x8b], "a gzip stream's magic; head:\n{head}");
    request.answer_and_stop();
}

/// Over gRPC, `OTEL_EXPORTER_OTLP_COMPRESSION=gzip` marks each request `grpc-encoding: gzip`
/// (read by an HTTP/2 server in the receiver's place), and a real receiver takes the compressed
/// requests: the listener's and the accepted socket's traces reach rotel whole.
#[test]
fn otel_exporter_otlp_compression_gzip_over_grpc() {
    use std::sync::mpsc;

    /// Starts an agent exporting with gzip to `endpoint`, tracing local port `port` alone, and
    /// makes one connection to that port.
    fn connect_traced_with_gzip(ns: &Netns, endpoint: &str, port: u16) -> Agent {
        let filter = port.to_string();
        let mut command = agent::command(&["--otlp", endpoint, "-q", "-L", &filter]);
        command.env("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip");
        let agent = Agent::start_command(command);
        let server = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        traffic::connect_and_close(ns, server, Duration::ZERO, Closer::Client);
        agent
    }

    let ns = Netns::create();
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("address"));
    listener.set_nonblocking(true).expect("non-blocking");
    let (heads, head) = mpsc::channel();
    thread::spawn(move || serve_grpc_exports(listener, heads));
    let agent = connect_traced_with_gzip(&ns, &endpoint, 28046);
    let head: http::request::Parts = head
        .recv_timeout(ARRIVAL_TIMEOUT)
        .expect("no export request within the arrival timeout");
    assert_eq!(
        head.headers
            .get("grpc-encoding")
            .and_then(|v| v.to_str().ok()),
        Some("gzip"),
        "{:?}",
        head.headers
    );
    stop(agent, libc::SIGTERM);

    let receiver = Receiver::start();
    let agent = connect_traced_with_gzip(&ns, &receiver.grpc_endpoint(), 28047);
    // The client's ephemeral port is not traced (-L).
    let expected = [LISTENER, Closer::Client.server_transitions()];
    let traces = await_traces_on_port(&receiver, 28047, &expected, ARRIVAL_TIMEOUT);
    assert_eq!(traces.len(), 2, "one trace per socket: {traces:#?}");
    for trace in &traces {
        check_trace_by_kind(trace, Closer::Client);
    }
    stop(agent, libc::SIGTERM);
}

/// An OTLP/HTTP export request the test took in the receiver's place.
struct HttpExport {
    /// The agent that sent it.
    agent: Agent,
    /// Its connection, read up to the body.
    stream: std::net::TcpStream,
    /// Its head, lowercase.
    head: String,
}

/// Starts the agent exporting over OTLP/HTTP to a loopback listener of the test's, with `env`
/// set and tracing local port `port` alone; makes a connection to that port and reads the head
/// of the export request it causes.
fn take_http_export(port: u16, env: &[(&str, &str)]) -> HttpExport {
    use std::io::Read;

    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("address"));
    let filter = port.to_string();
    let mut command = agent::command(&["--otlp", &endpoint, "-q", "-L", &filter]);
    command
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .envs(env.iter().copied());
    let agent = Agent::start_command(command);
    let ns = Netns::create();
    let server = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    traffic::connect_and_close(&ns, server, Duration::ZERO, Closer::Client);

    let mut stream = accept_export(&listener);
    stream
        .set_read_timeout(Some(EVENT_TIMEOUT))
        .expect("read timeout");
    let mut head = Vec::new();
    let mut byte = [0; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let read = stream.read(&mut byte).expect("read the request head");
        assert_eq!(read, 1, "the request ended early: {head:?}");
        head.push(byte[0]);
    }
    HttpExport {
        agent,
        stream,
        head: String::from_utf8_lossy(&head).to_ascii_lowercase(),
    }
}

impl HttpExport {
    /// Answers the request as a receiver would, stops the agent and checks it exited with 0.
    fn answer_and_stop(mut self) {
        use std::io::Write;

        self.stream
            .write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
            )
            .expect("answer");
        stop(self.agent, libc::SIGTERM);
    }
}

/// The agent's connection to `listener`, taking the receiver's place, accepted within the arrival
/// timeout.
fn accept_export(listener: &std::net::TcpListener) -> std::net::TcpStream {
    listener.set_nonblocking(true).expect("non-blocking");
    let deadline = Instant::now() + ARRIVAL_TIMEOUT;
    let stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "no export request within {ARRIVAL_TIMEOUT:?}"
                );
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    stream.set_nonblocking(false).expect("blocking");
    stream
}

/// `OTEL_EXPORTER_OTLP_TIMEOUT` bounds each export request over `transport`: a receiver that
/// takes the connection and never answers fails a request well before the default 10 s with
/// the 300 ms asked for; the agent says so, keeps its spans for the retry, and counts them
/// failed when it gives up at exit. The test's sessions are on local port `port`.
fn otel_exporter_otlp_timeout_bounds_each_request(transport: Transport, port: u16) {
    /// The timeout asked for, and the default one it replaces.
    const TIMEOUT_MS: u64 = 300;
    const DEFAULT: Duration = Duration::from_secs(10);
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let listening = listener.local_addr().expect("address").port();
    let server = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let filter = port.to_string();
    let mut command = transport.command(
        Ports {
            grpc: listening,
            http: listening,
        },
        &["-q", "-L", &filter],
    );
    command.env("OTEL_EXPORTER_OTLP_TIMEOUT", TIMEOUT_MS.to_string());
    let agent = Agent::start_command(command);
    let ns = Netns::create();
    traffic::connect_and_close(&ns, server, Duration::ZERO, Closer::Client);

    // Held open, unanswered, until the agent has given up on the request.
    let _silent = accept_export(&listener);
    let accepted = Instant::now();
    let failure = agent.await_stderr("the request's failure", DEFAULT, |lines| {
        lines
            .iter()
            .find(|line| line.starts_with("tcpstates: OTLP export failing, will retry: "))
            .cloned()
    });
    let waited = accepted.elapsed();
    assert!(
        waited < DEFAULT / 2,
        "failed {waited:?} after the connection, with a {TIMEOUT_MS} ms timeout: {failure}"
    );
    let finished = agent.stop_within(libc::SIGTERM, FLUSH_TIMEOUT);
    let summary = finished.otlp_summary();
    assert_eq!(
        (summary.spans, summary.dropped),
        (0, 0),
        "nothing exported, nothing dropped: {summary:?}"
    );
    assert!(
        summary.failed > 0,
        "given up at exit, and counted: {summary:?}"
    );
}

#[test]
fn otel_exporter_otlp_timeout_bounds_each_http_request() {
    otel_exporter_otlp_timeout_bounds_each_request(Transport::Http, 28043);
}

#[test]
fn otel_exporter_otlp_timeout_bounds_each_grpc_request() {
    otel_exporter_otlp_timeout_bounds_each_request(Transport::Grpc, 28044);
}

/// `OTEL_EXPORTER_OTLP_HEADERS` reaches the wire over gRPC too: the headers travel
/// HPACK-encoded in HTTP/2 frames, so an HTTP/2 server (the h2 crate, which tonic itself is built
/// on) takes the receiver's place on a loopback port, reads each request's headers and answers
/// it as an OTLP receiver would (an empty `ExportTraceServiceResponse`, `grpc-status: 0`).
#[test]
fn otel_exporter_otlp_headers_are_sent_with_each_grpc_request() {
    use std::sync::mpsc;

    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("address"));
    listener.set_nonblocking(true).expect("non-blocking");
    let (heads, head) = mpsc::channel();
    thread::spawn(move || serve_grpc_exports(listener, heads));

    let server = SocketAddr::from((Ipv4Addr::LOCALHOST, 28042));
    let mut command = agent::command(&["--otlp", &endpoint, "-q", "-L", "28042"]);
    command.env(
        "OTEL_EXPORTER_OTLP_HEADERS",
        "x-tenant=blue,x-api-key=s3cret",
    );
    let agent = Agent::start_command(command);
    let ns = Netns::create();
    traffic::connect_and_close(&ns, server, Duration::ZERO, Closer::Client);

    let head: http::request::Parts = head
        .recv_timeout(ARRIVAL_TIMEOUT)
        .expect("no export request within the arrival timeout");
    assert_eq!(
        head.uri.path(),
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
    );
    for (name, value) in [
        ("x-tenant", "blue"),
        ("x-api-key", "s3cret"),
        ("content-type", "application/grpc"),
    ] {
        assert_eq!(
            head.headers.get(name).and_then(|v| v.to_str().ok()),
            Some(value),
            "{name} in {:?}",
            head.headers
        );
    }
    let finished = stop(agent, libc::SIGTERM);
    assert_eq!(finished.code(), 0, "{finished:#?}");
}

/// Accepts up to a few HTTP/2 connections on `listener` (each within the arrival timeout), sends
/// the head of every request to `heads` and answers it with an empty, successful OTLP export
/// response.
fn serve_grpc_exports(
    listener: std::net::TcpListener,
    heads: std::sync::mpsc::Sender<http::request::Parts>,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        for _ in 0..4 {
            let Ok(Ok((socket, _))) =
                tokio::time::timeout(ARRIVAL_TIMEOUT, listener.accept()).await
            else {
                return;
            };
            let heads = heads.clone();
            tokio::spawn(async move {
                let mut connection = h2::server::handshake(socket).await.expect("HTTP/2");
                while let Some(Ok((request, mut respond))) = connection.accept().await {
                    let _ = heads.send(request.into_parts().0);
                    let response = http::Response::builder()
                        .status(200)
                        .header("content-type", "application/grpc")
                        .body(())
                        .expect("response head");
                    let mut body = respond.send_response(response, false).expect("head");
                    // One gRPC message: not compressed, 0 bytes long (an empty response).
                    body.send_data(bytes::Bytes::from_static(&[0; 5]), false)
                        .expect("message");
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                    body.send_trailers(trailers).expect("trailers");
                }
            });
        }
    });
}

/// tcpstates' own connection to the collector, and the collector's end of it, are left out of
/// the traces unless `--trace-self`. The agent watches every port (a port filter would hide its
/// own socket's transitions, by which it knows the collector's end). A first client's trace is
/// exported (the export connection is open from then on); a second client is still connected
/// when the agent stops. Both the second client's session and the export connection's ends end
/// at the stop and go out in the same last export, so the second client's root arriving shows
/// the export connection's would have too. Returns the agent's pid and the roots of the agent's
/// end and of the collector's end, if they came.
fn own_connection(
    trace_self: bool,
    port: u16,
) -> (u32, Option<ReceivedSpan>, Option<ReceivedSpan>) {
    let receiver = Receiver::start();
    let ports = receiver.ports();
    let mut args = vec!["-q"];
    if trace_self {
        args.push("--trace-self");
    }
    let agent = start_agent(&receiver, &args);
    let pid = agent.pid();
    let server = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let listener = std::net::TcpListener::bind(server).expect("listen");
    let is_client_root = |span: &ReceivedSpan, incomplete: bool| {
        span.parent_span_id.is_none()
            && span.int_attr("network.peer.port") == Some(i64::from(port))
            && span.attributes.contains_key(INCOMPLETE) == incomplete
    };
    drop(std::net::TcpStream::connect(server).expect("connect"));
    receiver.wait_for(
        |all| all.iter().any(|span| is_client_root(span, false)),
        ARRIVAL_TIMEOUT,
    );
    let held = std::net::TcpStream::connect(server).expect("connect");
    let finished = stop(agent, libc::SIGINT);
    let spans = receiver.wait_for(
        |all| all.iter().any(|span| is_client_root(span, true)),
        ARRIVAL_TIMEOUT,
    );
    drop((held, listener));
    let grpc = Some(i64::from(ports.grpc));
    let roots = |port_key: &str| -> Vec<&ReceivedSpan> {
        spans
            .iter()
            .filter(|span| span.parent_span_id.is_none() && span.int_attr(port_key) == grpc)
            .collect()
    };
    let (own, collector) = (roots("network.peer.port"), roots("network.local.port"));
    assert!(
        own.len() <= 1 && collector.len() <= 1,
        "{own:#?} {collector:#?}; stderr:\n{}",
        finished.stderr.join("\n")
    );
    (
        pid,
        own.first().map(|span| (*span).clone()),
        collector.first().map(|span| (*span).clone()),
    )
}

#[test]
fn the_agents_own_export_connection_is_not_traced_nor_the_collectors_end() {
    let (_, own, collector) = own_connection(false, 28050);
    assert_eq!((own, collector), (None, None));
}

#[test]
fn trace_self_traces_the_agents_own_export_connection_too() {
    let (pid, own, collector) = own_connection(true, 28051);
    let own = own.expect("the export connection's root");
    assert_eq!(
        own.int_attr("process.pid"),
        Some(i64::from(pid)),
        "owned by the agent: {own:#?}"
    );
    assert_eq!(own.str_attr(END_REASON), Some("shutdown"), "{own:#?}");
    assert!(collector.is_some(), "and the collector's end");
}

/// The accepted socket's root links to its listener's root, and the two ends of a loopback
/// connection link to each other's roots.
#[test]
fn roots_link_an_accepted_socket_to_its_listener_and_a_connections_ends_to_each_other() {
    let server = SocketAddr::from((Ipv4Addr::LOCALHOST, 28052));
    let ns = Netns::create();
    let receiver = Receiver::start();
    let path = format!("/run/netns/{}", ns.name());
    let agent = start_agent(&receiver, &["-q", "--netns", &path]);
    let client_port = ns.run(|| {
        let listener = std::net::TcpListener::bind(server).expect("listen");
        let client = std::net::TcpStream::connect(server).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        let port = client.local_addr().expect("client address").port();
        drop(client);
        drop(accepted);
        drop(listener);
        port
    });
    ns.await_no_tcp_sockets(EVENT_TIMEOUT);
    let expected = [LISTENER, CLIENT_CLOSING_FIRST, SERVER_CLOSED_BY_PEER];
    let traces = await_traces_on_port(&receiver, server.port(), &expected, ARRIVAL_TIMEOUT);
    let finished = stop(agent, libc::SIGINT);
    let context = format!("{traces:#?}; stderr:\n{}", finished.stderr.join("\n"));
    let root_named = |prefix: &str| {
        traces
            .iter()
            .map(|trace| &trace.root)
            .find(|root| root.name.starts_with(prefix))
            .unwrap_or_else(|| panic!("a root named {prefix}…: {context}"))
    };
    let (listener, client, accepted) = (
        root_named("tcp listen"),
        root_named("tcp connect"),
        root_named("tcp accept"),
    );
    assert_eq!(
        client.int_attr("network.local.port"),
        Some(i64::from(client_port)),
        "{context}"
    );
    let id = |root: &ReceivedSpan| (root.trace_id.clone(), root.span_id.clone());
    assert_eq!(listener.links, [], "{context}");
    assert_eq!(client.links, [id(accepted)], "{context}");
    let mut accepted_links = accepted.links.clone();
    accepted_links.sort();
    let mut expected_links = vec![id(listener), id(client)];
    expected_links.sort();
    assert_eq!(accepted_links, expected_links, "{context}");
}
