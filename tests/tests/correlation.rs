//! Correlation with application traces: the example application of `agent-common`
//! (`link_to_connection`, instrumented with OpenTelemetry) makes a request over a TCP connection
//! and links its request span to the connection's trace, computing the ids itself from the
//! socket; the agent exports that connection's trace to the same receiver. The link must point
//! at exactly the agent's root span.
//!
//! The example exports to the receiver on the host's loopback, so the connection is made there
//! too (a namespace of its own would cut it off from the receiver); the agent keeps only
//! connections to the test's port, 30021 (30022 for the sampling test; block 30xxx).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use integration_tests::agent::{self, Agent};
use integration_tests::otlp::{ReceivedSpan, Receiver};
use integration_tests::traces::{ARRIVAL_TIMEOUT, COOKIE, check_ids};

/// Path of the example: `$LINK_TO_CONNECTION_BIN` (set by `cargo xtask test`), else where a
/// debug build of it lands.
fn example_binary() -> PathBuf {
    let path = match std::env::var_os("LINK_TO_CONNECTION_BIN") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/debug/examples/link_to_connection"),
    };
    assert!(
        path.is_file(),
        "{} not found: build it (cargo build -p agent-common --example link_to_connection \
         --features opentelemetry) or set LINK_TO_CONNECTION_BIN",
        path.display()
    );
    path
}

/// The value of `key=` in the example's result line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

#[test]
fn an_application_span_links_to_its_connections_root_span() {
    let server = SocketAddr::from((Ipv4Addr::LOCALHOST, 30021));
    let receiver = Receiver::start();
    let endpoint = receiver.grpc_endpoint();
    let port = server.port().to_string();
    let agent = Agent::start_command(agent::command(&["--otlp", &endpoint, "-q", "-D", &port]));

    // A server answers one request and closes.
    let listener = TcpListener::bind(server).expect("bind");
    let answering = thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut request = [0; 256];
        let _ = stream.read(&mut request).expect("read the request");
        stream
            .write_all(b"HTTP/1.0 200 OK\r\n\r\n")
            .expect("answer");
    });

    let mut command = Command::new(example_binary());
    command
        .args(["--connect", &server.to_string()])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env("OTEL_SERVICE_NAME", "link-test")
        .stdin(Stdio::null());
    let output = command.output().expect("run link_to_connection");
    answering.join().expect("the server thread");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "link_to_connection: {}\n{stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout.lines().last().expect("a result line");
    let cookie: i64 = field(line, "cookie").parse().expect("cookie");
    let request_span_id = field(line, "request_span_id").to_owned();

    let is_request = |span: &ReceivedSpan| span.span_id == request_span_id;
    let is_connection = |span: &ReceivedSpan| {
        span.parent_span_id.is_none() && span.int_attr(COOKIE) == Some(cookie)
    };
    let spans = receiver.wait_for(
        |spans| spans.iter().any(is_request) && spans.iter().any(is_connection),
        ARRIVAL_TIMEOUT,
    );
    let request = spans.iter().find(|span| is_request(span)).expect("request");
    let root = spans.iter().find(|span| is_connection(span)).expect("root");
    assert_eq!(request.name, "request", "{request:#?}");
    assert_eq!(
        request
            .resource
            .get("service.name")
            .and_then(|v| v.as_str()),
        Some("link-test")
    );
    assert_eq!(root.name, format!("tcp connect {server}"), "{root:#?}");
    assert_eq!(
        request.links,
        [(root.trace_id.clone(), root.span_id.clone())],
        "the request links to the agent's root span of its connection: {request:#?}\n{root:#?}"
    );
    assert_eq!(
        (field(line, "trace_id"), field(line, "root_span_id")),
        (root.trace_id.as_str(), root.span_id.as_str())
    );
    assert_eq!(check_ids(root), u64::try_from(cookie).expect("cookie"));
    assert_eq!(
        field(line, "agent_kept"),
        "true",
        "the agent samples everything"
    );
    let finished = agent.stop(libc::SIGINT);
    assert_eq!(finished.code(), 0, "{finished:#?}");
}

/// With the agent sampling half its traces, the application knows which of its connections'
/// traces the agent exports: over 8 connections, the roots exported are exactly those of the
/// connections the example says are kept.
#[test]
fn the_application_knows_whether_the_agent_kept_its_connections_trace() {
    const CONNECTIONS: usize = 8;
    let server = SocketAddr::from((Ipv4Addr::LOCALHOST, 30022));
    let receiver = Receiver::start();
    let endpoint = receiver.grpc_endpoint();
    let port = server.port().to_string();
    let mut command = agent::command(&["--otlp", &endpoint, "-q", "-D", &port]);
    command
        .env("OTEL_TRACES_SAMPLER", "traceidratio")
        .env("OTEL_TRACES_SAMPLER_ARG", "0.5");
    let agent = Agent::start_command(command);
    let listener = TcpListener::bind(server).expect("bind");
    let answering = thread::spawn(move || {
        for _ in 0..CONNECTIONS {
            let (mut stream, _) = listener.accept().expect("accept");
            let _ = stream.read(&mut [0; 256]).expect("read the request");
            stream
                .write_all(b"HTTP/1.0 200 OK\r\n\r\n")
                .expect("answer");
        }
    });
    let mut kept = Vec::new();
    for _ in 0..CONNECTIONS {
        let output = Command::new(example_binary())
            .args([
                "--connect",
                &server.to_string(),
                "--agent-sampler-ratio",
                "0.5",
            ])
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            .stdin(Stdio::null())
            .output()
            .expect("run link_to_connection");
        assert!(output.status.success(), "{output:?}");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout.lines().last().expect("a result line");
        if field(line, "agent_kept") == "true" {
            kept.push(field(line, "trace_id").to_owned());
        }
    }
    answering.join().expect("the server thread");
    let finished = agent.stop(libc::SIGINT);
    assert_eq!(finished.code(), 0, "{finished:#?}");
    // The agent watched only these connections: its exit account says how many it exported.
    let exported = finished.otlp_summary().sessions as usize;
    assert_eq!(exported, kept.len(), "{:#?}", finished.stderr);
    let roots = |spans: &[ReceivedSpan]| -> Vec<String> {
        let mut ids: Vec<String> = spans
            .iter()
            .filter(|span| span.parent_span_id.is_none() && span.name.starts_with("tcp connect"))
            .map(|span| span.trace_id.clone())
            .collect();
        ids.sort();
        ids
    };
    let spans = receiver.wait_for(|spans| roots(spans).len() >= kept.len(), ARRIVAL_TIMEOUT);
    kept.sort();
    assert_eq!(roots(&spans), kept);
}
