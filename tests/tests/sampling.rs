//! Trace sampling against the real kernel and a real rotel: the SDK's `traceidratio` sampler
//! decides by trace id (recomputed here from each socket's cookie), and the keep rules export
//! the sessions the sampler dropped that failed or were slow — whole, and counted.
//!
//! Ports: 37001..37099 (block 37xxx).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use agent_common::correlation::{BootId, ConnectionIds};
use integration_tests::agent::{self, Agent, EVENT_TIMEOUT, Finished};
use integration_tests::events::{JsonEvent, parse_json_lines};
use integration_tests::netns::Netns;
use integration_tests::otlp::{AttrValue, ReceivedSpan, Receiver};
use integration_tests::traces::{ARRIVAL_TIMEOUT, is_root_on_port};
use opentelemetry::trace::{SpanKind, TraceId};
use opentelemetry_sdk::trace::{Sampler, SamplingDecision, ShouldSample as _};

/// An agent printing `--json` for `ns`, exporting to `receiver` with the sampler `vars` name
/// and the flags `extra`.
fn start_agent(ns: &Netns, receiver: &Receiver, vars: &[(&str, &str)], extra: &[&str]) -> Agent {
    let path = format!("/run/netns/{}", ns.name());
    let endpoint = receiver.grpc_endpoint();
    let mut args = vec!["--json", "--netns", &path, "--otlp", &endpoint];
    args.extend_from_slice(extra);
    let mut command = agent::command(&args);
    command.envs(vars.iter().copied());
    Agent::start_command(command)
}

/// The `--json` lines of each socket whose ends include `port`, by cookie.
fn sessions_on(finished: &Finished, port: u16) -> BTreeMap<u64, Vec<JsonEvent>> {
    let mut sessions: BTreeMap<u64, Vec<JsonEvent>> = BTreeMap::new();
    for line in parse_json_lines(&finished.stdout) {
        if line.event.lport == port || line.event.rport == port {
            sessions.entry(line.cookie).or_default().push(line);
        }
    }
    sessions
}

/// The roots on `port` once `count` have arrived (the agent has exited, its last export done).
fn roots_on(receiver: &Receiver, port: u16, count: usize) -> Vec<ReceivedSpan> {
    let roots = |spans: &[ReceivedSpan]| -> Vec<ReceivedSpan> {
        spans
            .iter()
            .filter(|span| is_root_on_port(span, port))
            .cloned()
            .collect()
    };
    let spans = receiver
        .try_wait_for(|spans| roots(spans).len() >= count, ARRIVAL_TIMEOUT)
        .unwrap_or_else(|spans| panic!("{} of {count} roots on {port}", roots(&spans).len()));
    roots(&spans)
}

/// The sampling line of the exit account.
fn sampling_line(finished: &Finished) -> &str {
    finished
        .stderr
        .iter()
        .find(|line| line.starts_with("tcpstates: OTLP sampling: "))
        .unwrap_or_else(|| panic!("no sampling line: {:#?}", finished.stderr))
}

/// `traceidratio` 0.1 over 2,001 sessions (1,000 connections and their listener): 7 % to 13 %
/// exported, exactly those the SDK's sampler keeps for their trace ids, each whole.
#[test]
fn a_ratio_sampler_exports_exactly_the_sessions_the_sdk_keeps_each_whole() {
    let server = SocketAddr::from((Ipv4Addr::LOCALHOST, 37001));
    let ns = Netns::create();
    let receiver = Receiver::start();
    let agent = start_agent(
        &ns,
        &receiver,
        &[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
        ],
        &[],
    );
    ns.run(|| {
        let listener = TcpListener::bind(server).expect("listen");
        for _ in 0..1_000 {
            let client = TcpStream::connect(server).expect("connect");
            let (accepted, _) = listener.accept().expect("accept");
            drop((client, accepted));
        }
    });
    ns.await_no_tcp_sockets(EVENT_TIMEOUT);
    let finished = agent.stop(libc::SIGINT);
    assert_eq!(finished.code(), 0, "{}", finished.stderr.join("\n"));
    let sessions = sessions_on(&finished, server.port());
    assert_eq!(sessions.len(), 2_001, "sessions in --json");
    let boot_id = BootId::read().expect("boot id");
    let sampler = Sampler::TraceIdRatioBased(0.1);
    let kept: BTreeMap<String, usize> = sessions
        .iter()
        .filter_map(|(cookie, lines)| {
            let ids = ConnectionIds::new(&boot_id, *cookie);
            let decision = sampler
                .should_sample(
                    None,
                    TraceId::from_bytes(ids.trace_id),
                    "",
                    &SpanKind::Internal,
                    &[],
                    &[],
                )
                .decision;
            (decision == SamplingDecision::RecordAndSample).then(|| {
                let trace_id: String = ids.trace_id.iter().map(|b| format!("{b:02x}")).collect();
                // Every transition but the first ends a state: one child each.
                (trace_id, lines.len() - 1)
            })
        })
        .collect();
    assert!(
        (140..=260).contains(&kept.len()),
        "{} of 2,001 kept by the SDK's sampler",
        kept.len()
    );
    let roots = roots_on(&receiver, server.port(), kept.len());
    let exported: BTreeSet<&str> = roots.iter().map(|root| root.trace_id.as_str()).collect();
    assert_eq!(
        exported,
        kept.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        "exported exactly the sessions the sampler keeps"
    );
    let spans = receiver.spans();
    for (trace_id, children) in &kept {
        let got = spans
            .iter()
            .filter(|span| &span.trace_id == trace_id && span.parent_span_id.is_some())
            .count();
        assert_eq!(got, *children, "trace {trace_id} exported whole");
    }
    assert_eq!(
        sampling_line(&finished),
        format!(
            "tcpstates: OTLP sampling: {} sessions kept by the sampler, 0 by a keep rule, {} \
             sampled out, 0 refused by the rate limit",
            kept.len(),
            2_001 - kept.len()
        )
    );
}

/// `always_off` with `--keep-errors`: of 20 refused connects and 20 good connections, exactly
/// the 20 failed sessions are exported; the exit account and the health metric say so.
#[test]
fn always_off_with_keep_errors_exports_exactly_the_failed_sessions() {
    let server = SocketAddr::from((Ipv4Addr::LOCALHOST, 37002));
    let closed = SocketAddr::from((Ipv4Addr::LOCALHOST, 37003));
    let ns = Netns::create();
    let receiver = Receiver::start();
    let agent = start_agent(
        &ns,
        &receiver,
        &[("OTEL_TRACES_SAMPLER", "always_off")],
        &["--keep-errors", "--metrics"],
    );
    ns.run(|| {
        let listener = TcpListener::bind(server).expect("listen");
        for _ in 0..20 {
            let client = TcpStream::connect(server).expect("connect");
            let (accepted, _) = listener.accept().expect("accept");
            drop((client, accepted));
            TcpStream::connect(closed).expect_err("refused");
        }
    });
    ns.await_no_tcp_sockets(EVENT_TIMEOUT);
    let finished = agent.stop(libc::SIGINT);
    assert_eq!(finished.code(), 0, "{}", finished.stderr.join("\n"));
    let refused = roots_on(&receiver, closed.port(), 20);
    assert!(
        refused
            .iter()
            .all(|root| root.str_attr("error.type") == Some("connection_refused")),
        "{refused:#?}"
    );
    // The good sessions ended before the refused ones that followed them, and were exported
    // (or not) in the same exports: none came.
    let good: Vec<_> = receiver
        .spans()
        .into_iter()
        .filter(|span| is_root_on_port(span, server.port()))
        .collect();
    assert!(good.is_empty(), "{good:#?}");
    // 20 clients, 20 accepted sockets and the listener sampled out.
    assert_eq!(
        sampling_line(&finished),
        "tcpstates: OTLP sampling: 0 sessions kept by the sampler, 20 by a keep rule, 41 \
         sampled out, 0 refused by the rate limit"
    );
    let metric = receiver
        .wait_for_metrics(
            |metrics| {
                metrics
                    .iter()
                    .any(|m| m.name == "tcpstates.sessions.sampled")
            },
            ARRIVAL_TIMEOUT,
        )
        .into_iter()
        .rev()
        .find(|m| m.name == "tcpstates.sessions.sampled")
        .expect("found above");
    let value = |decision: &str| {
        metric
            .point(&[("decision", AttrValue::Str(decision.into()))])
            .and_then(|point| point.number())
            .map(|number| number.as_f64() as u64)
    };
    assert_eq!(
        (value("kept_by_rule"), value("sampled_out")),
        (Some(20), Some(41))
    );
}

/// `always_off` with `--keep-slower SYN_SENT:1s`: a connect whose SYNs are dropped for 1.5 s is
/// exported, whole; three fast ones are not.
#[test]
fn always_off_with_keep_slower_exports_the_slow_handshake_only() {
    let fast = SocketAddr::from((Ipv4Addr::LOCALHOST, 37004));
    let slow = SocketAddr::from((Ipv4Addr::LOCALHOST, 37005));
    let ns = Netns::create();
    let receiver = Receiver::start();
    let agent = start_agent(
        &ns,
        &receiver,
        &[("OTEL_TRACES_SAMPLER", "always_off")],
        &["--keep-slower", "SYN_SENT:1s"],
    );
    ns.run(|| {
        let fast_listener = TcpListener::bind(fast).expect("listen");
        let slow_listener = TcpListener::bind(slow).expect("listen");
        for _ in 0..3 {
            let client = TcpStream::connect(fast).expect("connect");
            drop((client, fast_listener.accept().expect("accept")));
        }
        ns.nft(
            "table inet slow { chain input { type filter hook input priority 0; \
             tcp dport 37005 tcp flags syn drop; }; }",
        );
        let connecting = std::thread::spawn(move || TcpStream::connect(slow));
        std::thread::sleep(Duration::from_millis(1500));
        ns.nft("delete table inet slow");
        let client = connecting
            .join()
            .expect("thread")
            .expect("connects at last");
        drop((client, slow_listener.accept().expect("accept")));
    });
    ns.await_no_tcp_sockets(EVENT_TIMEOUT);
    let finished = agent.stop(libc::SIGINT);
    assert_eq!(finished.code(), 0, "{}", finished.stderr.join("\n"));
    let roots = roots_on(&receiver, slow.port(), 1);
    let slow_roots: Vec<_> = roots
        .iter()
        .filter(|root| root.name == format!("tcp connect {slow}"))
        .collect();
    assert_eq!(slow_roots.len(), 1, "{roots:#?}");
    assert_eq!(roots.len(), 1, "only the slow client's session: {roots:#?}");
    let fast_roots: Vec<_> = receiver
        .spans()
        .into_iter()
        .filter(|span| is_root_on_port(span, fast.port()))
        .collect();
    assert!(fast_roots.is_empty(), "{fast_roots:#?}");
    let children = receiver
        .spans()
        .iter()
        .filter(|span| span.trace_id == slow_roots[0].trace_id && span.parent_span_id.is_some())
        .count();
    assert_eq!(
        children, 4,
        "exported whole: SYN_SENT, ESTABLISHED, FIN_WAIT1, FIN_WAIT2"
    );
}

/// `--max-traces-per-second 100` under as many sessions as loopback makes (about 2,000 a
/// second): at most 100 a second are exported, plus one burst of 100; the rest are refused,
/// counted, and every session is accounted for.
#[test]
fn the_rate_limit_exports_at_most_its_rate_and_counts_the_rest() {
    const CONNECTIONS: usize = 2_000;
    let server = SocketAddr::from((Ipv4Addr::LOCALHOST, 37006));
    let ns = Netns::create();
    let receiver = Receiver::start();
    let agent = start_agent(&ns, &receiver, &[], &["--max-traces-per-second", "100"]);
    let started = std::time::Instant::now();
    ns.run(|| {
        let listener = TcpListener::bind(server).expect("listen");
        for _ in 0..CONNECTIONS {
            let client = TcpStream::connect(server).expect("connect");
            drop((client, listener.accept().expect("accept")));
        }
    });
    ns.await_no_tcp_sockets(EVENT_TIMEOUT);
    let finished = agent.stop(libc::SIGINT);
    // From the agent's start to its stop: every session was decided within it.
    let seconds = started.elapsed().as_secs_f64() + 1.0;
    assert_eq!(finished.code(), 0, "{}", finished.stderr.join("\n"));
    let line = sampling_line(&finished);
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    let [kept, by_rule, sampled_out, refused] = numbers[..] else {
        panic!("{line}");
    };
    assert_eq!((by_rule, sampled_out), (0, 0), "{line}");
    let sessions = 2 * CONNECTIONS as u64 + 1;
    assert_eq!(
        kept + refused,
        sessions,
        "every session accounted for: {line}"
    );
    let bound = (100.0 * seconds) as u64 + 100;
    assert!(
        kept <= bound && refused > 0,
        "{kept} kept in {seconds:.1} s (at most {bound}): {line}"
    );
    let roots = roots_on(&receiver, server.port(), kept as usize);
    assert_eq!(
        roots.len() as u64,
        kept,
        "the kept ones, and only them, exported"
    );
}
