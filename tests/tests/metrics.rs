//! `--metrics` against the real kernel and a real rotel: the handshake and connection
//! histograms and the success and failure counters of connections made in a namespace the test
//! creates, checked against the same sessions' `--json` lines; the sockets-by-state count; and
//! the agent-health metrics against the exit account.
//!
//! Ports: 36001..36099 (block 36xxx).

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};

use integration_tests::agent::{self, Agent, EVENT_TIMEOUT, Finished};
use integration_tests::events::{JsonEvent, parse_json_lines};
use integration_tests::metrics::ReceivedMetric;
use integration_tests::netns::Netns;
use integration_tests::otlp::{AttrValue, Receiver};
use integration_tests::traces::ARRIVAL_TIMEOUT;

/// Connections the test makes, and connects to a closed port.
const CONNECTIONS: usize = 200;
const REFUSED: usize = 20;

/// An agent printing `--json` for `ns` and exporting metrics (and with `extra`, more) to
/// `receiver`.
fn start_agent(ns: &Netns, receiver: &Receiver, extra: &[&str]) -> Agent {
    let path = format!("/run/netns/{}", ns.name());
    let endpoint = receiver.grpc_endpoint();
    let mut args = vec!["--json", "--netns", &path, "--metrics", &endpoint];
    args.extend_from_slice(extra);
    Agent::start_command(agent::command(&args))
}

/// The metric `name` of the last export (every export of a cumulative metric holds all that
/// was recorded since the start), once an export of it has arrived.
fn last(receiver: &Receiver, name: &str) -> ReceivedMetric {
    receiver
        .wait_for_metrics(
            |metrics| metrics.iter().any(|m| m.name == name),
            ARRIVAL_TIMEOUT,
        )
        .into_iter()
        .rev()
        .find(|m| m.name == name)
        .expect("found above")
}

/// `network.tcp.handshake.role` and `server.port` attributes of a connection metric, with the
/// ones every connection metric of this test has (the owner is this test's executable).
fn connection_attributes(role: &str, port: u16) -> Vec<(&'static str, AttrValue)> {
    let executable = std::env::current_exe()
        .expect("current exe")
        .file_name()
        .expect("file name")
        .to_string_lossy()
        .into_owned();
    vec![
        ("network.transport", AttrValue::Str("tcp".into())),
        ("network.type", AttrValue::Str("ipv4".into())),
        ("network.tcp.handshake.role", AttrValue::Str(role.into())),
        ("server.port", AttrValue::Int(i64::from(port))),
        ("process.executable.name", AttrValue::Str(executable)),
    ]
}

/// (count, sum) of the histogram point with `attributes`.
fn histogram_point(metric: &ReceivedMetric, attributes: &[(&str, AttrValue)]) -> (u64, f64) {
    let point = metric
        .point(attributes)
        .unwrap_or_else(|| panic!("no point {attributes:?} in {metric:#?}"));
    let histogram = point.histogram().expect("a histogram");
    (histogram.count, histogram.sum.expect("a sum"))
}

/// The value of the sum's point with `attributes`.
fn sum_point(metric: &ReceivedMetric, attributes: &[(&str, AttrValue)]) -> i64 {
    let point = metric
        .point(attributes)
        .unwrap_or_else(|| panic!("no point {attributes:?} in {metric:#?}"));
    point.number().expect("a number").as_f64() as i64
}

/// The lines of the sockets of `port` (local or remote), by cookie.
fn sockets_on(finished: &Finished, port: u16) -> BTreeMap<u64, Vec<JsonEvent>> {
    let mut sockets: BTreeMap<u64, Vec<JsonEvent>> = BTreeMap::new();
    for line in parse_json_lines(&finished.stdout) {
        if line.event.lport == port || line.event.rport == port {
            sockets.entry(line.cookie).or_default().push(line);
        }
    }
    sockets
}

/// Sum over the sockets whose first line is `first` of (`span_ns` of their `state ->
/// ESTABLISHED` line, CLOSE time minus first time), in seconds; and how many there were.
fn durations(sockets: &BTreeMap<u64, Vec<JsonEvent>>, first: (&str, &str)) -> (usize, f64, f64) {
    let (mut n, mut handshakes, mut lives) = (0, 0u64, 0u64);
    for lines in sockets.values() {
        let start = &lines[0];
        if (start.event.oldstate.as_str(), start.event.newstate.as_str()) != first {
            continue;
        }
        let established = lines
            .iter()
            .find(|l| l.event.newstate == "ESTABLISHED")
            .unwrap_or_else(|| panic!("an ESTABLISHED line: {lines:#?}"));
        let close = lines
            .iter()
            .find(|l| l.event.newstate == "CLOSE")
            .unwrap_or_else(|| panic!("a CLOSE line: {lines:#?}"));
        n += 1;
        handshakes += established.span_ns;
        lives += close.ts_ns - start.ts_ns;
    }
    (n, handshakes as f64 / 1e9, lives as f64 / 1e9)
}

/// 200 connections (the client sends a byte, the server answers) and 20 connects to a closed
/// port: the handshake and connection histograms count each end, with the sums of the same
/// durations the `--json` lines give, to the microsecond; successes count the handshakes and
/// failures the refused connects.
#[test]
fn connection_metrics_count_every_session_with_its_kernel_durations() {
    let server = SocketAddr::from((Ipv4Addr::LOCALHOST, 36001));
    let closed = SocketAddr::from((Ipv4Addr::LOCALHOST, 36002));
    let ns = Netns::create();
    let receiver = Receiver::start();
    let agent = start_agent(&ns, &receiver, &[]);
    ns.run(|| {
        let listener = TcpListener::bind(server).expect("listen");
        for _ in 0..CONNECTIONS {
            let mut client = TcpStream::connect(server).expect("connect");
            let (mut accepted, _) = listener.accept().expect("accept");
            client.write_all(b"x").expect("send");
            accepted.read_exact(&mut [0]).expect("receive");
        }
        for _ in 0..REFUSED {
            TcpStream::connect(closed).expect_err("refused");
        }
    });
    ns.await_no_tcp_sockets(EVENT_TIMEOUT);
    let finished = agent.stop(libc::SIGINT);
    assert_eq!(finished.code(), 0, "{}", finished.stderr.join("\n"));
    assert!(
        finished
            .stderr
            .iter()
            .any(|line| line.starts_with("tcpstates: OTLP metrics: ")
                && line.ends_with(", 0 failed")),
        "{}",
        finished.stderr.join("\n")
    );
    let sockets = sockets_on(&finished, server.port());
    let handshakes = last(&receiver, "system.network.tcp.handshake.duration");
    let lives = last(&receiver, "system.network.tcp.connection.duration");
    let successes = last(&receiver, "system.network.tcp.connection.successes");
    for (role, first) in [
        ("client", ("CLOSE", "SYN_SENT")),
        ("server", ("LISTEN", "SYN_RECV")),
    ] {
        let (n, handshake_sum, life_sum) = durations(&sockets, first);
        assert_eq!(n, CONNECTIONS, "{role}s in --json");
        let attributes = connection_attributes(role, server.port());
        let (count, sum) = histogram_point(&handshakes, &attributes);
        assert_eq!(count, CONNECTIONS as u64, "{role} handshakes");
        assert!(
            (sum - handshake_sum).abs() < 1e-6,
            "{role}: {sum} s vs {handshake_sum} s"
        );
        let (count, sum) = histogram_point(&lives, &attributes);
        assert_eq!(count, CONNECTIONS as u64, "{role} connections");
        assert!(
            (sum - life_sum).abs() < 1e-6,
            "{role}: {sum} s vs {life_sum} s"
        );
        assert_eq!(sum_point(&successes, &attributes), CONNECTIONS as i64);
    }
    let failures = last(&receiver, "system.network.tcp.connection.failures");
    let mut refused = connection_attributes("client", closed.port());
    refused.push(("error.type", AttrValue::Str("connection_refused".into())));
    assert_eq!(
        sum_point(&failures, &refused),
        REFUSED as i64,
        "{failures:#?}"
    );
    assert_eq!(
        failures.data_points.len(),
        1,
        "no other failure: {failures:#?}"
    );
}

/// With a session table of 4 and an export queue of 8 spans, 50 connections held open at once
/// evict sessions and drop spans: the health metrics say what the exit account says.
#[test]
fn the_health_metrics_agree_with_the_exit_account() {
    let server = SocketAddr::from((Ipv4Addr::LOCALHOST, 36003));
    let ns = Netns::create();
    let receiver = Receiver::start();
    let otlp = receiver.grpc_endpoint();
    let agent = start_agent(
        &ns,
        &receiver,
        &["--otlp", &otlp, "--max-sessions", "4", "--otlp-queue", "8"],
    );
    ns.run(|| {
        let listener = TcpListener::bind(server).expect("listen");
        let open: Vec<(TcpStream, TcpStream)> = (0..50)
            .map(|_| {
                let client = TcpStream::connect(server).expect("connect");
                let (accepted, _) = listener.accept().expect("accept");
                (client, accepted)
            })
            .collect();
        drop(open);
    });
    ns.await_no_tcp_sockets(EVENT_TIMEOUT);
    let finished = agent.stop(libc::SIGINT);
    assert_eq!(finished.code(), 0, "{}", finished.stderr.join("\n"));
    let account = finished.summary();
    let spans = finished.otlp_summary();
    assert!(
        spans.evicted > 0 && spans.dropped > 0,
        "the test must make both happen: {spans:?}"
    );
    let value = |name: &str, attributes: &[(&str, AttrValue)]| {
        sum_point(&last(&receiver, name), attributes) as u64
    };
    assert_eq!(value("tcpstates.sessions.evicted", &[]), spans.evicted);
    assert_eq!(value("tcpstates.spans.dropped", &[]), spans.dropped);
    assert_eq!(
        value("tcpstates.export.failures", &[]),
        spans.failed + spans.rejected
    );
    assert_eq!(
        value(
            "tcpstates.events.lost",
            &[("reason", AttrValue::Str("ring_buffer_full".into()))]
        ),
        account.ring_buffer_full
    );
    assert_eq!(
        value(
            "tcpstates.events.lost",
            &[("reason", AttrValue::Str("bpf_recursion".into()))]
        ),
        account.recursion
    );
}

/// The count of sockets by state in `metric`'s point for `state` (0 when it has none).
fn sockets_in(metric: &ReceivedMetric, state: &str) -> i64 {
    metric
        .point(&[
            ("network.connection.state", AttrValue::Str(state.into())),
            ("network.transport", AttrValue::Str("tcp".into())),
            ("network.type", AttrValue::Str("ipv4".into())),
        ])
        .and_then(|point| point.number())
        .map_or(0, |number| number.as_f64() as i64)
}

/// 50 connections and their listener opened before the agent starts: the sockets-by-state count
/// includes all of them at once, and returns to nothing when they are closed; their traces
/// start from their state and owner when the agent found them, and a connection the old
/// listener accepts later has the listener's owner.
#[test]
fn sockets_open_before_the_start_are_counted_and_traced_with_their_owner() {
    const HELD: usize = 50;
    let server = SocketAddr::from((Ipv4Addr::LOCALHOST, 36004));
    let ns = Netns::create();
    let receiver = Receiver::start();
    let (listener, held) = ns.run(|| {
        let listener = TcpListener::bind(server).expect("listen");
        let held: Vec<(TcpStream, TcpStream)> = (0..HELD)
            .map(|_| {
                let client = TcpStream::connect(server).expect("connect");
                let (accepted, _) = listener.accept().expect("accept");
                (client, accepted)
            })
            .collect();
        (listener, held)
    });
    let path = format!("/run/netns/{}", ns.name());
    let endpoint = receiver.grpc_endpoint();
    let mut command = agent::command(&["-q", "--netns", &path, "--otlp", &endpoint, "--metrics"]);
    command.env("OTEL_METRIC_EXPORT_INTERVAL", "200");
    let agent = Agent::start_command(command);
    let counted = |established: i64, listening: i64| {
        move |metrics: &[ReceivedMetric]| {
            metrics
                .iter()
                .rev()
                .find(|m| m.name == "system.network.connection.count")
                .is_some_and(|m| {
                    sockets_in(m, "established") == established
                        && sockets_in(m, "listen") == listening
                })
        }
    };
    // A connection the old listener accepts under tracing: its owner is the listener's.
    let later = ns.run(|| {
        let client = TcpStream::connect(server).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        (client, accepted)
    });
    receiver
        .try_wait_for_metrics(counted(2 * HELD as i64 + 2, 1), ARRIVAL_TIMEOUT)
        .unwrap_or_else(|metrics| {
            panic!(
                "never 102 established and 1 listening: {:#?}",
                metrics.last()
            )
        });
    drop((held, listener, later));
    ns.await_no_tcp_sockets(EVENT_TIMEOUT);
    receiver
        .try_wait_for_metrics(counted(0, 0), ARRIVAL_TIMEOUT)
        .unwrap_or_else(|metrics| panic!("the count never came back: {:#?}", metrics.last()));
    let finished = agent.stop(libc::SIGINT);
    assert_eq!(finished.code(), 0, "{}", finished.stderr.join("\n"));
    let found_roots = |name: String| {
        move |spans: &[integration_tests::otlp::ReceivedSpan]| {
            spans
                .iter()
                .filter(|span| {
                    span.parent_span_id.is_none()
                        && span.name == name
                        && span.attributes.get("tcpstates.session.found_at_start")
                            == Some(&AttrValue::Bool(true))
                        && span.int_attr("process.pid") == Some(i64::from(std::process::id()))
                })
                .count()
        }
    };
    let accepted_later = |spans: &[integration_tests::otlp::ReceivedSpan]| {
        spans.iter().any(|span| {
            span.parent_span_id.is_none()
                && span.name == format!("tcp accept {server}")
                && !span
                    .attributes
                    .contains_key("tcpstates.session.found_at_start")
                && span.int_attr("process.pid") == Some(i64::from(std::process::id()))
        })
    };
    receiver
        .try_wait_for(accepted_later, ARRIVAL_TIMEOUT)
        .unwrap_or_else(|spans| panic!("no owned later accept: {:#?}", spans.last()));
    for name in [
        format!("tcp connect {server}"),
        format!("tcp accept {server}"),
        format!("tcp listen {server}"),
    ] {
        let expected = if name.contains("listen") { 1 } else { HELD };
        let count = found_roots(name.clone());
        receiver
            .try_wait_for(|spans| count(spans) == expected, ARRIVAL_TIMEOUT)
            .unwrap_or_else(|spans| {
                panic!(
                    "{} of {expected} {name} roots: {:#?}",
                    count(&spans),
                    spans.last()
                )
            });
    }
}
