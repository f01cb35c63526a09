//! Why a connection failed and what it carried, against the real kernel, in namespaces the tests
//! make: a refused connect, SYNs dropped (nft) until the connect times out, SYNs answered with
//! an ICMP host-unreachable (nft `reject`), an abortive close (`SO_LINGER` 0) and an orderly
//! connection that carries a known number of bytes each way. Each must show in `--json` (its
//! CLOSE line's `error` and `close`) and on its trace (`error.type`, `tcpstates.reset.direction`,
//! `tcpstates.bytes.*`, `tcpstates.retransmits`), exported to a real rotel.
//!
//! Handshakes slowed by dropped SYNs or SYN-ACKs show each retransmission as a `retransmit`
//! event, at its kernel time, on the state span it happened in.
//!
//! Ports: 33001..33010 (block 33xxx).

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use integration_tests::agent::{self, Agent, EVENT_TIMEOUT, Finished};
use integration_tests::events::{JsonEvent, parse_json_lines};
use integration_tests::netns::Netns;
use integration_tests::otlp::{ReceivedSpan, Receiver};
use integration_tests::traces::Trace;
use integration_tests::traces::{ARRIVAL_TIMEOUT, ERROR_TYPE, RESET_DIRECTION, is_root_on_port};

/// An agent printing `--json` and exporting to `receiver`, watching only `ns`.
fn start_agent(ns: &Netns, receiver: &Receiver) -> Agent {
    let path = format!("/run/netns/{}", ns.name());
    Agent::start_command(agent::command(&[
        "--json",
        "--netns",
        &path,
        "--otlp",
        &receiver.grpc_endpoint(),
    ]))
}

/// Sets a sysctl of `ns` (`/proc/sys/...` as seen from inside it).
fn sysctl(ns: &Netns, path: &str, value: &str) {
    ns.run(|| std::fs::write(path, value).unwrap_or_else(|e| panic!("{path}: {e}")));
}

/// The `--json` lines of the socket whose port `port` is the remote or local one.
fn on_port(finished: &Finished, port: u16) -> Vec<JsonEvent> {
    parse_json_lines(&finished.stdout)
        .into_iter()
        .filter(|e| e.event.lport == port || e.event.rport == port)
        .collect()
}

/// The root span of the one trace of a session on `port` whose `tcpstates.skaddr` is
/// `skaddr`, once it has arrived.
fn root_of(receiver: &Receiver, port: u16, skaddr: &str) -> ReceivedSpan {
    let found = receiver.try_wait_for(
        |spans| {
            spans.iter().any(|span| {
                is_root_on_port(span, port) && span.str_attr("tcpstates.skaddr") == Some(skaddr)
            })
        },
        ARRIVAL_TIMEOUT,
    );
    let spans = found
        .unwrap_or_else(|spans| panic!("no root for {skaddr} on port {port}; spans: {spans:#?}"));
    spans
        .into_iter()
        .find(|span| {
            is_root_on_port(span, port) && span.str_attr("tcpstates.skaddr") == Some(skaddr)
        })
        .expect("found above")
}

/// The CLOSE line among `lines` (exactly one).
fn close_line(lines: &[JsonEvent]) -> &JsonEvent {
    let closes: Vec<&JsonEvent> = lines
        .iter()
        .filter(|e| e.event.newstate == "CLOSE")
        .collect();
    assert_eq!(closes.len(), 1, "one CLOSE: {lines:#?}");
    closes[0]
}

/// A connect to `server` in `ns` that fails as `rules` (nft) make it fail: its CLOSE line's
/// `error` and its root's `error.type` are both `expected`; returns the CLOSE line.
/// `tcp_syn_retries` is 1 in its namespace: the SYN and one retransmission 1 s later, then 2 s
/// more before the kernel gives up on unanswered SYNs.
fn failed_connect(server: SocketAddr, rules: &str, expected: &str, errno: i32) -> JsonEvent {
    let ns = Netns::create();
    sysctl(&ns, "/proc/sys/net/ipv4/tcp_syn_retries", "1");
    if !rules.is_empty() {
        ns.nft(rules);
    }
    let receiver = Receiver::start();
    let agent = start_agent(&ns, &receiver);
    // A blocking connect: the kernel gives up on its own, with the error on the socket as it
    // closes. (A non-blocking connect that reads the error with SO_ERROR before closing can
    // take a soft error off the socket first: docs/known-issues.md.)
    let err = ns
        .run(|| TcpStream::connect(server))
        .expect_err("the connect fails");
    assert_eq!(err.raw_os_error(), Some(errno), "{err}");
    let finished = agent.stop(libc::SIGINT);
    assert_eq!(finished.code(), 0, "{}", finished.stderr.join("\n"));
    let lines = on_port(&finished, server.port());
    let close = close_line(&lines).clone();
    assert_eq!(
        (close.event.oldstate.as_str(), close.error.as_deref()),
        ("SYN_SENT", Some(expected)),
        "{lines:#?}"
    );
    let root = root_of(&receiver, server.port(), &close.event.skaddr);
    assert_eq!(root.str_attr(ERROR_TYPE), Some(expected), "{root:#?}");
    assert_eq!(root.str_attr(RESET_DIRECTION), None, "{root:#?}");
    close
}

#[test]
fn a_refused_connect_is_connection_refused() {
    failed_connect(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 33001)),
        "",
        "connection_refused",
        libc::ECONNREFUSED,
    );
}

#[test]
fn syns_dropped_until_the_connect_gives_up_are_a_connect_timeout() {
    let close = failed_connect(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 33002)),
        "table inet failures { chain input { type filter hook input priority 0; \
         tcp dport 33002 tcp flags syn drop; }; }",
        "connect_timeout",
        libc::ETIMEDOUT,
    );
    // The SYN was sent again before the kernel gave up.
    let retransmits = close
        .close
        .as_ref()
        .and_then(|c| c["retransmits"].as_u64())
        .expect("close.retransmits");
    assert!(retransmits >= 1, "{close:#?}");
}

#[test]
fn an_icmp_host_unreachable_answer_is_host_unreachable() {
    failed_connect(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 33003)),
        "table inet failures { chain input { type filter hook input priority 0; \
         tcp dport 33003 reject with icmp type host-unreachable; }; }",
        "host_unreachable",
        libc::EHOSTUNREACH,
    );
}

/// A client that aborts with `SO_LINGER` 0: it sent the reset, the accepted socket received
/// it; both roots say so, and the accepted socket's CLOSE line says `connection_reset` (the
/// client's reset goes out after its CLOSE, so its own line cannot).
#[test]
fn an_abortive_close_is_a_reset_sent_by_one_end_and_received_by_the_other() {
    let server = SocketAddr::from((Ipv4Addr::LOCALHOST, 33004));
    let ns = Netns::create();
    let receiver = Receiver::start();
    let agent = start_agent(&ns, &receiver);
    ns.run(|| {
        let listener = TcpListener::bind(server).expect("listen");
        let mut client = TcpStream::connect(server).expect("connect");
        let (mut accepted, _) = listener.accept().expect("accept");
        // The client receives data before it aborts: its count must not lose a byte to a FIN
        // that never came (its own close() marks its receiving side shut down too).
        accepted.write_all(&[9; 5]).expect("send to the client");
        client.read_exact(&mut [0; 5]).expect("the client reads");
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: a valid socket and a `linger` of the size given.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&client),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const linger).cast(),
                size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
        drop(client);
        let mut byte = [0u8; 1];
        let read = accepted.read(&mut byte);
        assert_eq!(
            read.map_err(|e| e.kind()).err(),
            Some(ErrorKind::ConnectionReset),
            "the accepted socket reads the reset"
        );
    });
    ns.await_no_tcp_sockets(EVENT_TIMEOUT);
    let finished = agent.stop(libc::SIGINT);
    assert_eq!(finished.code(), 0, "{}", finished.stderr.join("\n"));
    let lines = on_port(&finished, server.port());
    let accepted_close = lines
        .iter()
        .find(|e| {
            e.event.lport == server.port()
                && e.event.newstate == "CLOSE"
                && e.event.oldstate != "LISTEN"
        })
        .unwrap_or_else(|| panic!("the accepted socket's CLOSE: {lines:#?}"));
    assert_eq!(accepted_close.error.as_deref(), Some("connection_reset"));
    let client_close = lines
        .iter()
        .find(|e| e.event.rport == server.port() && e.event.newstate == "CLOSE")
        .unwrap_or_else(|| panic!("the client's CLOSE: {lines:#?}"));
    assert_eq!(
        client_close
            .close
            .as_ref()
            .and_then(|c| c["bytes_received"].as_u64()),
        Some(5),
        "{client_close:#?}"
    );
    for (close, direction) in [(accepted_close, "received"), (client_close, "sent")] {
        let root = root_of(&receiver, server.port(), &close.event.skaddr);
        assert_eq!(
            (root.str_attr(ERROR_TYPE), root.str_attr(RESET_DIRECTION)),
            (Some("connection_reset"), Some(direction)),
            "{root:#?}"
        );
    }
}

/// Whether a `--json` line is of one end of a connection.
type IsEnd<'a> = dyn Fn(&JsonEvent) -> bool + 'a;

/// An orderly connection: the client sends exactly 100,000 bytes, the server 5,000; each end's
/// CLOSE line and root count them, sent (acknowledged) and received.
#[test]
fn the_bytes_a_connection_carried_are_counted_at_close() {
    const TO_SERVER: usize = 100_000;
    const TO_CLIENT: usize = 5_000;
    let server = SocketAddr::from((Ipv4Addr::LOCALHOST, 33005));
    let ns = Netns::create();
    let receiver = Receiver::start();
    let agent = start_agent(&ns, &receiver);
    ns.run(|| {
        let listener = TcpListener::bind(server).expect("listen");
        let mut client = TcpStream::connect(server).expect("connect");
        let (mut accepted, _) = listener.accept().expect("accept");
        let serving = std::thread::spawn(move || {
            let mut got = Vec::new();
            accepted
                .read_to_end(&mut got)
                .expect("read the client's bytes");
            assert_eq!(got.len(), TO_SERVER);
            accepted.write_all(&[7; TO_CLIENT]).expect("answer");
        });
        client.write_all(&[1; TO_SERVER]).expect("send");
        client
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown");
        let mut got = Vec::new();
        client.read_to_end(&mut got).expect("read the answer");
        assert_eq!(got.len(), TO_CLIENT);
        serving.join().expect("server");
    });
    ns.await_no_tcp_sockets(EVENT_TIMEOUT);
    let finished = agent.stop(libc::SIGINT);
    assert_eq!(finished.code(), 0, "{}", finished.stderr.join("\n"));
    let lines = on_port(&finished, server.port());
    // (whether a line is this end's, bytes it sent, bytes it received): the client, then the
    // accepted socket.
    let port = server.port();
    let ends: [(&IsEnd<'_>, usize, usize); 2] = [
        (&|e| e.event.rport == port, TO_SERVER, TO_CLIENT),
        (
            &|e| e.event.lport == port && e.event.oldstate != "LISTEN",
            TO_CLIENT,
            TO_SERVER,
        ),
    ];
    for (is_end, sent, received) in ends {
        let close = lines
            .iter()
            .find(|e| is_end(e) && e.event.newstate == "CLOSE")
            .unwrap_or_else(|| panic!("a CLOSE line: {lines:#?}"));
        let counted = close.close.as_ref().expect("close");
        assert_eq!(
            (
                counted["bytes_sent"].as_u64(),
                counted["bytes_received"].as_u64()
            ),
            (Some(sent as u64), Some(received as u64)),
            "{close:#?}"
        );
        assert!(close.error.is_none(), "{close:#?}");
        let root = root_of(&receiver, server.port(), &close.event.skaddr);
        assert_eq!(
            (
                root.int_attr("tcpstates.bytes.sent"),
                root.int_attr("tcpstates.bytes.received")
            ),
            (Some(sent as i64), Some(received as i64)),
            "{root:#?}"
        );
        assert!(
            root.int_attr("tcpstates.rtt.smoothed_us")
                .is_some_and(|us| us > 0),
            "{root:#?}"
        );
    }
}

/// How long the handshake tests drop SYNs or SYN-ACKs: the first SYN and the SYN-ACK answering
/// it are lost; the kernel sends each again after 1 s (and 2 s more), so the handshake
/// completes about 3 s in.
const DROPPED_FOR: Duration = Duration::from_millis(1500);

/// The trace of the socket whose `--json` lines are `lines` and which is an end of the
/// connection `is_end` says, once its root has arrived.
fn trace_of(receiver: &Receiver, port: u16, lines: &[JsonEvent], is_end: &IsEnd<'_>) -> Trace {
    let close = lines
        .iter()
        .find(|e| is_end(e) && e.event.newstate == "CLOSE")
        .unwrap_or_else(|| panic!("a CLOSE line: {lines:#?}"));
    let root = root_of(receiver, port, &close.event.skaddr);
    Trace::of(&root, &receiver.spans())
}

/// The state span `state` of `trace` has at least one `retransmit` event, every one of kind
/// `kind` and at a time inside the span; its root counts at least one retransmission.
fn assert_retransmitted_in(trace: &Trace, state: &str, kind: &str) {
    let span = trace
        .children
        .iter()
        .find(|span| span.name == state)
        .unwrap_or_else(|| panic!("a {state} span: {trace:#?}"));
    assert!(!span.events.is_empty(), "no retransmit event: {span:#?}");
    for event in &span.events {
        assert_eq!(
            (
                event.name.as_str(),
                event
                    .attributes
                    .get("tcpstates.retransmit.kind")
                    .and_then(|v| v.as_str())
            ),
            ("retransmit", Some(kind)),
            "{span:#?}"
        );
        assert!(
            (span.start_unix_nano..=span.end_unix_nano).contains(&event.time_unix_nano),
            "event outside its span: {span:#?}"
        );
    }
    assert!(
        trace
            .root
            .int_attr("tcpstates.retransmits")
            .is_some_and(|n| n >= 1),
        "{:#?}",
        trace.root
    );
}

/// A connection to `server` in a namespace where `rules` (nft) drop part of the handshake for
/// [`DROPPED_FOR`]; returns the client's and the accepted socket's traces.
fn slowed_handshake(server: SocketAddr, rules: &str) -> (Trace, Trace) {
    let ns = Netns::create();
    let receiver = Receiver::start();
    let agent = start_agent(&ns, &receiver);
    ns.run(|| {
        let listener = TcpListener::bind(server).expect("listen");
        ns.nft(rules);
        let connecting = std::thread::spawn(move || TcpStream::connect(server));
        std::thread::sleep(DROPPED_FOR);
        ns.nft("delete table inet slow");
        let client = connecting
            .join()
            .expect("connect thread")
            .expect("the connect completes once the rule is gone");
        let (accepted, _) = listener.accept().expect("accept");
        drop((client, accepted));
    });
    ns.await_no_tcp_sockets(EVENT_TIMEOUT);
    let finished = agent.stop(libc::SIGINT);
    assert_eq!(finished.code(), 0, "{}", finished.stderr.join("\n"));
    let port = server.port();
    let lines = on_port(&finished, port);
    (
        trace_of(&receiver, port, &lines, &|e| e.event.rport == port),
        trace_of(&receiver, port, &lines, &|e| {
            e.event.lport == port && e.event.oldstate != "LISTEN"
        }),
    )
}

/// SYNs dropped for 1.5 s: the client's SYN_SENT span carries its SYNs sent again.
#[test]
fn syns_sent_again_are_retransmit_events_of_the_syn_sent_span() {
    let (client, _) = slowed_handshake(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 33006)),
        "table inet slow { chain input { type filter hook input priority 0; \
         tcp dport 33006 tcp flags syn drop; }; }",
    );
    assert_retransmitted_in(&client, "SYN_SENT", "syn");
}

/// SYN-ACKs dropped for 1.5 s: the server sends them again for the connection request, before
/// the kernel makes the accepted socket; its SYN_RECV span begins at the request's first SYN-ACK
/// and carries them.
#[test]
fn syn_acks_sent_again_are_retransmit_events_of_the_accepted_syn_recv_span() {
    let (client, accepted) = slowed_handshake(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 33007)),
        "table inet slow { chain output { type filter hook output priority 0; \
         tcp sport 33007 tcp flags & (syn | ack) == syn | ack drop; }; }",
    );
    assert_retransmitted_in(&accepted, "SYN_RECV", "synack");
    assert_retransmitted_in(&client, "SYN_SENT", "syn");
}
