//! `--otlp` against collectors that fail: a real rotel (see `integration_tests::otlp`) killed
//! and restarted under a steady load, and receivers this file controls: one that accepts and
//! never answers, one that refuses every request for good (HTTP 415, saying why), one that is
//! unavailable for a while (HTTP 503, with Retry-After), one that accepts every request but
//! rejects one span of each (partial success); and over gRPC (HTTP/2, h2) one that refuses
//! every request (`INVALID_ARGUMENT` with a message) and one answering partial successes.
//!
//! What must hold: every span the agent made is exported, dropped (queue full), failed or
//! rejected, and the account says which; a collector that comes and goes loses nothing
//! (batches are kept until acknowledged and sent again); exit after SIGINT takes at most the
//! documented 10 s (plus the ring buffer's drain) whatever the collector does; a permanent
//! rejection is not retried and is reported with its status and the receiver's message; a 503
//! is retried; spans a partial success rejects are counted rejected, with its message.
//!
//! The tests' sessions use ports 28060..28070 (servers), 28400..28479 and 28500..28999
//! (clients), each agent filtering (`-L`) on exactly its own.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use prost::Message as _;

use integration_tests::agent::{self, Agent, EVENT_TIMEOUT, Finished};
use integration_tests::netns::Netns;
use integration_tests::otlp::{Ports, ReceivedSpan, Receiver};
use integration_tests::traces::ARRIVAL_TIMEOUT;
use integration_tests::traffic::{self, Closer, LISTENER, Transitions};

/// How the agent reaches its collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Grpc,
    Http,
}

/// The agent exporting to `port` over `transport`, tracing only `ports`' sessions, `-q`.
fn agent_command(transport: Transport, port: u16, ports: &[u16]) -> Command {
    let endpoint = format!("http://127.0.0.1:{port}");
    let filter = ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut command = agent::command(&["--otlp", &endpoint, "-q", "-L", &filter]);
    if transport == Transport::Http {
        command.env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf");
    }
    command
}

/// The socket lives of `connections` connections made by
/// [`traffic::connect_from_each_and_close`] in `calls` calls (a listener each).
fn lives(calls: usize, connections: usize) -> Vec<Transitions> {
    let mut lives = vec![LISTENER; calls];
    for _ in 0..connections {
        lives.extend([
            Closer::Client.client_transitions(),
            Closer::Client.server_transitions(),
        ]);
    }
    lives
}

/// The spans the agent makes of `lives`: one per transition (a root and a child per state).
fn span_count(lives: &[Transitions]) -> u64 {
    lives.iter().map(|life| life.len() as u64).sum()
}

/// `count` client addresses from port `first` on, on loopback.
fn clients(first: u16, count: u16) -> Vec<SocketAddr> {
    (0..count)
        .map(|i| SocketAddr::from((Ipv4Addr::LOCALHOST, first + i)))
        .collect()
}

/// Checks that the account adds up to `made` spans, and returns it with stderr for messages.
fn account(finished: &Finished, made: u64) -> (agent::OtlpSummary, String) {
    let summary = finished.otlp_summary();
    let context = format!(
        "made {made}, {summary:?}; stderr:\n{}",
        finished.stderr.join("\n")
    );
    assert_eq!(finished.code(), 0, "{context}");
    assert_eq!(
        summary.spans + summary.dropped + summary.failed + summary.rejected,
        made,
        "exported + dropped + failed + rejected = made: {context}"
    );
    (summary, context)
}

/// A collector killed (SIGTERM) and restarted three times, down 2 s each time, while a
/// connection is made every 100 ms for 20 s: nothing is lost but what overflowed the queue,
/// every exported span arrives, and each time the collector is back the backlog starts to
/// arrive within a second or so.
fn delivery_through_restarts(transport: Transport, server_port: u16, first_client: u16) {
    /// Connections made, one per [`PACE`].
    const CONNECTIONS: u16 = 200;
    const PACE: Duration = Duration::from_millis(100);
    /// When the collector goes down, after the load starts, and for how long.
    const OUTAGES: [Duration; 3] = [
        Duration::from_secs(3),
        Duration::from_secs(9),
        Duration::from_secs(15),
    ];
    const DOWN: Duration = Duration::from_secs(2);
    /// How soon spans must arrive once the collector listens again: the agent's next attempt
    /// comes within a second; the rest is scheduling slack on a busy CI host.
    const BACK_WITHIN: Duration = Duration::from_secs(3);
    let ns = Netns::create();
    let ports = Ports::free();
    let mut receiver = Receiver::start_on(ports);
    let server = SocketAddr::from((Ipv4Addr::LOCALHOST, server_port));
    let clients = clients(first_client, CONNECTIONS);
    let traced: Vec<u16> = std::iter::once(server_port)
        .chain(clients.iter().map(SocketAddr::port))
        .collect();
    let port = match transport {
        Transport::Grpc => ports.grpc,
        Transport::Http => ports.http,
    };
    let agent = Agent::start_command(agent_command(transport, port, &traced));
    let started = Instant::now();
    let control = thread::spawn(move || {
        let mut back_after = Vec::new();
        for at in OUTAGES {
            // The outages' schedule is the scenario.
            thread::sleep(at.saturating_sub(started.elapsed()));
            receiver.stop();
            thread::sleep(DOWN);
            let before = receiver.spans().len();
            receiver.restart();
            let listening = Instant::now();
            receiver.wait_for(|spans| spans.len() > before, ARRIVAL_TIMEOUT);
            back_after.push(listening.elapsed());
        }
        (receiver, back_after)
    });
    for (i, client) in clients.iter().enumerate() {
        // The steady pace is the load.
        thread::sleep((PACE * i as u32).saturating_sub(started.elapsed()));
        traffic::connect_from_each_and_close(&ns, server, &[*client], Closer::Client);
    }
    ns.await_no_tcp_sockets(EVENT_TIMEOUT);
    let (receiver, back_after) = control.join().expect("the collector's control thread");
    let finished = agent.stop_within(libc::SIGINT, Duration::from_secs(60));
    let made = span_count(&lives(clients.len(), clients.len()));
    let (summary, context) = account(&finished, made);
    assert_eq!(
        (summary.failed, summary.rejected),
        (0, 0),
        "nothing lost but what overflowed the queue: {context}"
    );
    let unique = |spans: &[ReceivedSpan]| {
        spans
            .iter()
            .map(|span| (span.trace_id.clone(), span.span_id.clone()))
            .collect::<BTreeSet<_>>()
            .len() as u64
    };
    let received = receiver.wait_for(|spans| unique(spans) >= summary.spans, ARRIVAL_TIMEOUT);
    assert_eq!(
        unique(&received),
        summary.spans,
        "every exported span arrived, and no other: {context}"
    );
    eprintln!(
        "{transport:?}: delivered {} of {made} spans ({:.1} %), {} dropped, {} received twice \
         ({} counted as possible duplicates); spans arrived {back_after:?} after each restart",
        summary.spans,
        summary.spans as f64 * 100.0 / made as f64,
        summary.dropped,
        received.len() as u64 - unique(&received),
        summary.possible_duplicates,
    );
    for back in back_after {
        assert!(
            back < BACK_WITHIN,
            "spans arrived {back:?} after the collector came back: {context}"
        );
    }
}

#[test]
fn grpc_collector_restarts_lose_nothing() {
    delivery_through_restarts(Transport::Grpc, 28060, 28600);
}

#[test]
fn http_collector_restarts_lose_nothing() {
    delivery_through_restarts(Transport::Http, 28061, 28800);
}

/// How a [`TestReceiver`] answers.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// Reads everything, answers nothing.
    Never,
    /// Every request with this status line, e.g. `415 Unsupported Media Type`, and a
    /// `google.rpc.Status` body with this message, as the OTLP specification asks.
    Always(&'static str, &'static str),
    /// Every request `200 OK` with a partial success: one span rejected, with this message.
    RejectOneSpan(&'static str),
    /// `503 Service Unavailable` (with `Retry-After: 1` if `retry_after`) until a request body
    /// has come `times` times, then `200 OK`.
    UnavailableUntilSeen { times: usize, retry_after: bool },
    /// The first time a body comes, `200 OK` only after this long (past the agent's request
    /// timeout: the request was delivered, the agent does not know it); at once after that.
    LateFirst(Duration),
}

/// `google.rpc.Status`: an OTLP/HTTP error response's body.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// `opentelemetry.proto.collector.trace.v1.ExportTraceServiceResponse`.
#[derive(Clone, PartialEq, prost::Message)]
struct ExportTraceServiceResponse {
    #[prost(message, optional, tag = "1")]
    partial_success: Option<ExportTracePartialSuccess>,
}

/// `opentelemetry.proto.collector.trace.v1.ExportTracePartialSuccess`.
#[derive(Clone, PartialEq, prost::Message)]
struct ExportTracePartialSuccess {
    #[prost(int64, tag = "1")]
    rejected_spans: i64,
    #[prost(string, tag = "2")]
    error_message: String,
}

/// A request a [`TestReceiver`] got: when, and its body.
#[derive(Debug, Clone)]
struct Request {
    at: Instant,
    body: Vec<u8>,
}

/// An OTLP/HTTP receiver on a loopback port that answers as the test says, on plain threads.
/// It stops serving when dropped, or [`RECEIVER_LIFETIME`] after it started.
struct TestReceiver {
    port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
    /// Bytes read in all (a never-answering receiver's requests are not parsed).
    bytes: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The longest a [`TestReceiver`] serves.
const RECEIVER_LIFETIME: Duration = Duration::from_secs(120);
/// How often its threads look at the stop flag.
const POLL: Duration = Duration::from_millis(50);

impl TestReceiver {
    fn start(answer: Answer) -> TestReceiver {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("address").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let bytes = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (requests, bytes, stop) = (requests.clone(), bytes.clone(), stop.clone());
            thread::spawn(move || {
                let until = Instant::now() + RECEIVER_LIFETIME;
                let mut connections = Vec::new();
                while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let (requests, bytes, stop) =
                                (requests.clone(), bytes.clone(), stop.clone());
                            connections.push(thread::spawn(move || {
                                serve(stream, answer, &requests, &bytes, &stop, until);
                            }));
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(POLL),
                        Err(e) => panic!("accept: {e}"),
                    }
                }
                stop.store(true, Ordering::Relaxed);
                for connection in connections {
                    let _ = connection.join();
                }
            })
        };
        TestReceiver {
            port,
            requests,
            bytes,
            stop,
            thread: Some(thread),
        }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

impl Drop for TestReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How many times each distinct body came.
fn times_seen(requests: &[Request]) -> BTreeMap<&[u8], usize> {
    let mut seen = BTreeMap::new();
    for request in requests {
        *seen.entry(request.body.as_slice()).or_default() += 1;
    }
    seen
}

/// Serves one connection: reads HTTP/1.1 requests (Content-Length bodies) and answers each as
/// `answer` says, until the peer closes, `stop` is set or `until` passes.
fn serve(
    mut stream: TcpStream,
    answer: Answer,
    requests: &Mutex<Vec<Request>>,
    bytes: &AtomicUsize,
    stop: &AtomicBool,
    until: Instant,
) {
    stream.set_nonblocking(false).expect("blocking");
    stream.set_read_timeout(Some(POLL)).expect("read timeout");
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => {
                bytes.fetch_add(n, Ordering::Relaxed);
                if matches!(answer, Answer::Never) {
                    continue;
                }
                buffer.extend_from_slice(&chunk[..n]);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => return,
        }
        // Every complete request in the buffer.
        while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse().ok())
                .unwrap_or(0);
            let body_start = end + 4;
            if buffer.len() < body_start + length {
                break;
            }
            let body = buffer[body_start..body_start + length].to_vec();
            buffer.drain(..body_start + length);
            let seen = {
                let mut requests = requests.lock().unwrap_or_else(|p| p.into_inner());
                requests.push(Request {
                    at: Instant::now(),
                    body: body.clone(),
                });
                requests.iter().filter(|r| r.body == body).count()
            };
            const OK: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\n\
                              content-length: 0\r\n\r\n";
            let response = match answer {
                Answer::Never => unreachable!("not parsed"),
                Answer::Always(status, message) => {
                    let body = RpcStatus {
                        code: 3,
                        message: message.into(),
                    }
                    .encode_to_vec();
                    if !write_protobuf(&mut stream, status, &body) {
                        return;
                    }
                    continue;
                }
                Answer::RejectOneSpan(message) => {
                    let body = ExportTraceServiceResponse {
                        partial_success: Some(ExportTracePartialSuccess {
                            rejected_spans: 1,
                            error_message: message.into(),
                        }),
                    }
                    .encode_to_vec();
                    if !write_protobuf(&mut stream, "200 OK", &body) {
                        return;
                    }
                    continue;
                }
                Answer::UnavailableUntilSeen { times, retry_after } if seen < times => format!(
                    "HTTP/1.1 503 Service Unavailable\r\n{}content-length: 0\r\n\r\n",
                    if retry_after {
                        "retry-after: 1\r\n"
                    } else {
                        ""
                    }
                ),
                Answer::UnavailableUntilSeen { .. } => OK.to_owned(),
                Answer::LateFirst(late) => {
                    if seen == 1 {
                        // Answering late is the scenario.
                        thread::sleep(late);
                    }
                    OK.to_owned()
                }
            };
            if stream.write_all(response.as_bytes()).is_err() {
                return;
            }
        }
    }
}

/// Answers a request with `status` and a protobuf `body`; false when the peer went away.
fn write_protobuf(stream: &mut TcpStream, status: &str, body: &[u8]) -> bool {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body))
        .is_ok()
}

/// Makes `count` connections from port `first_client` on to `server_port`, with an agent
/// exporting to `port` over `transport`; returns the agent and the spans it made of them.
fn agent_with_sessions(
    transport: Transport,
    port: u16,
    server_port: u16,
    first_client: u16,
    count: u16,
    env: &[(&str, &str)],
) -> (Agent, Netns, u64) {
    let ns = Netns::create();
    let server = SocketAddr::from((Ipv4Addr::LOCALHOST, server_port));
    let clients = clients(first_client, count);
    let traced: Vec<u16> = std::iter::once(server_port)
        .chain(clients.iter().map(SocketAddr::port))
        .collect();
    let mut command = agent_command(transport, port, &traced);
    command.envs(env.iter().copied());
    let agent = Agent::start_command(command);
    traffic::connect_from_each_and_close(&ns, server, &clients, Closer::Client);
    ns.await_no_tcp_sockets(EVENT_TIMEOUT);
    (agent, ns, span_count(&lives(1, clients.len())))
}

/// A receiver that accepts and never answers: exit after SIGINT takes at most 10 s plus the
/// ring buffer's drain, and the spans still unacknowledged are counted failed.
fn exit_within_the_bound(transport: Transport, server_port: u16, first_client: u16) {
    /// The documented bound (10 s after the ring buffer's drain), with slack for the drain,
    /// the detaching of the programs and a busy host (measured: 10.0–11.1 s).
    const BOUND: Duration = Duration::from_secs(13);
    let receiver = TestReceiver::start(Answer::Never);
    let (agent, _ns, made) =
        agent_with_sessions(transport, receiver.port, server_port, first_client, 20, &[]);
    // A request is out, unanswered, when exit begins.
    let deadline = Instant::now() + ARRIVAL_TIMEOUT;
    while receiver.bytes.load(Ordering::Relaxed) == 0 {
        assert!(
            Instant::now() < deadline,
            "no request within {ARRIVAL_TIMEOUT:?}"
        );
        thread::sleep(POLL);
    }
    let signalled = Instant::now();
    let finished = agent.stop_within(libc::SIGINT, Duration::from_secs(60));
    let took = signalled.elapsed();
    let (summary, context) = account(&finished, made);
    eprintln!("{transport:?}: exit took {took:?} with a never-answering receiver");
    assert!(took < BOUND, "exit took {took:?}: {context}");
    assert_eq!(
        (summary.spans, summary.failed + summary.dropped),
        (0, made),
        "{context}"
    );
    assert!(
        finished
            .stderr
            .iter()
            .any(|line| line.starts_with("tcpstates: OTLP export unfinished 10s after exit began")),
        "{context}"
    );
}

#[test]
fn http_exit_within_the_bound_when_the_receiver_never_answers() {
    exit_within_the_bound(Transport::Http, 28062, 28500);
}

#[test]
fn grpc_exit_within_the_bound_when_the_receiver_never_answers() {
    exit_within_the_bound(Transport::Grpc, 28063, 28520);
}

#[test]
fn http_415_is_rejected_at_once_and_reported_with_its_status_and_message() {
    let receiver = TestReceiver::start(Answer::Always(
        "415 Unsupported Media Type",
        "tcpstates test: protobuf only",
    ));
    let (agent, _ns, made) =
        agent_with_sessions(Transport::Http, receiver.port, 28064, 28540, 20, &[]);
    let line = await_rejection(&agent);
    assert!(
        line.contains("(HTTP 415: tcpstates test: protobuf only)"),
        "{line}"
    );
    let signalled = Instant::now();
    let finished = agent.stop_within(libc::SIGINT, Duration::from_secs(60));
    let took = signalled.elapsed();
    let (summary, context) = account(&finished, made);
    assert_eq!(
        (
            summary.spans,
            summary.failed,
            summary.rejected + summary.dropped
        ),
        (0, 0, made),
        "{context}"
    );
    assert!(
        took < Duration::from_secs(5),
        "exit took {took:?}: {context}"
    );
    let requests = receiver.requests();
    let seen = times_seen(&requests);
    assert!(
        seen.values().all(|&times| times == 1),
        "no request sent twice: {:?}; {context}",
        seen.values().collect::<Vec<_>>()
    );
    assert!(
        !finished
            .stderr
            .iter()
            .any(|line| line.contains("will retry") || line.contains("unreachable")),
        "{context}"
    );
}

/// The agent's run over HTTP against a receiver answering `answer`, with `env` set, for 20
/// connections, stopped with SIGINT once they are closed (it goes on exporting for at most 10 s):
/// the account (checked to add up), its context for messages, and the requests the receiver
/// got.
fn against(
    answer: Answer,
    env: &[(&str, &str)],
    server_port: u16,
    first_client: u16,
) -> (agent::OtlpSummary, String, Vec<Request>, u64) {
    let receiver = TestReceiver::start(answer);
    let (agent, _ns, made) = agent_with_sessions(
        Transport::Http,
        receiver.port,
        server_port,
        first_client,
        20,
        env,
    );
    let finished = agent.stop_within(libc::SIGINT, Duration::from_secs(60));
    let (summary, context) = account(&finished, made);
    (summary, context, receiver.requests(), made)
}

/// The agent's first report of a rejection, once it is printed.
fn await_rejection(agent: &Agent) -> String {
    agent.await_stderr("a rejection", ARRIVAL_TIMEOUT, |lines| {
        lines
            .iter()
            .find(|line| line.starts_with("tcpstates: OTLP collector rejected "))
            .cloned()
    })
}

/// Whether the agent printed a line starting with `start`.
fn printed(context: &str, start: &str) -> bool {
    context.lines().any(|line| line.starts_with(start))
}

#[test]
fn http_503_with_retry_after_is_retried_after_the_pause_asked_for() {
    /// Each request body is refused this many times minus one, within one request's timeout.
    const SEEN: usize = 3;
    let answer = Answer::UnavailableUntilSeen {
        times: SEEN,
        retry_after: true,
    };
    let (summary, context, requests, made) = against(answer, &[], 28065, 28560);
    assert_eq!(
        (summary.spans, summary.failed, summary.rejected),
        (made, 0, 0),
        "{context}"
    );
    let seen = times_seen(&requests);
    assert!(
        seen.values().all(|&times| times == SEEN),
        "each batch sent until accepted: {:?}; {context}",
        seen.values().collect::<Vec<_>>()
    );
    for body in seen.keys() {
        let at: Vec<Instant> = requests
            .iter()
            .filter(|r| r.body.as_slice() == *body)
            .map(|r| r.at)
            .collect();
        for pair in at.windows(2) {
            let pause = pair[1] - pair[0];
            assert!(
                pause >= Duration::from_millis(900),
                "retried {pause:?} after a 503 with Retry-After: 1; {context}"
            );
        }
    }
}

#[test]
fn http_503_beyond_one_request_is_kept_and_retried_until_accepted() {
    /// Each request body is refused this many times minus one: more than the exporter's own
    /// retries within a request (four attempts), so the batch fails and is sent again.
    const SEEN: usize = 8;
    let answer = Answer::UnavailableUntilSeen {
        times: SEEN,
        retry_after: false,
    };
    let (summary, context, requests, made) = against(answer, &[], 28066, 28580);
    assert_eq!(
        (summary.spans, summary.failed, summary.rejected),
        (made, 0, 0),
        "{context}"
    );
    let seen = times_seen(&requests);
    assert!(
        seen.values().all(|&times| times == SEEN),
        "each batch sent until accepted: {:?}; {context}",
        seen.values().collect::<Vec<_>>()
    );
    assert!(
        printed(&context, "tcpstates: OTLP export failing, will retry: "),
        "{context}"
    );
    assert!(
        printed(&context, "tcpstates: OTLP export recovered"),
        "{context}"
    );
}

#[test]
fn a_request_that_timed_out_is_sent_again_and_counted_as_possible_duplicates() {
    let answer = Answer::LateFirst(Duration::from_millis(1500));
    let (summary, context, requests, made) = against(
        answer,
        &[("OTEL_EXPORTER_OTLP_TIMEOUT", "500")],
        28067,
        28400,
    );
    assert_eq!(
        (summary.spans, summary.failed, summary.rejected),
        (made, 0, 0),
        "{context}"
    );
    assert_eq!(summary.possible_duplicates, made, "{context}");
    let seen = times_seen(&requests);
    assert!(
        seen.values().all(|&times| times == 2),
        "each batch delivered twice: {:?}; {context}",
        seen.values().collect::<Vec<_>>()
    );
}

/// A receiver that accepts every request but rejects one span of each (partial success): the
/// agent counts those spans rejected, not exported, says why once, and does not send them again.
#[test]
fn spans_a_partial_success_rejects_are_counted_rejected_with_the_message() {
    let answer = Answer::RejectOneSpan("tcpstates test: one span too old");
    let (summary, context, requests, made) = against(answer, &[], 28068, 28420);
    assert!(!requests.is_empty(), "{context}");
    assert_eq!(
        (summary.rejected, summary.spans, summary.failed),
        (requests.len() as u64, made - requests.len() as u64, 0),
        "one span of each request rejected: {} requests; {context}",
        requests.len()
    );
    let reports: Vec<&str> = context
        .lines()
        .filter(|line| line.contains("(partial success): tcpstates test: one span too old"))
        .collect();
    assert_eq!(reports.len(), 1, "reported once: {context}");
    assert!(
        times_seen(&requests).values().all(|&times| times == 1),
        "nothing sent again: {context}"
    );
}

/// How a [`grpc_receiver`] answers every export request.
#[derive(Debug, Clone, Copy)]
enum GrpcAnswer {
    /// `grpc-status: 3` (`INVALID_ARGUMENT`) with this `grpc-message`.
    InvalidArgument(&'static str),
    /// Success, with a partial success rejecting one span for this reason.
    RejectOneSpan(&'static str),
}

/// An OTLP/gRPC receiver on a loopback port answering every export request as `answer` says,
/// on a thread of its own, for at most [`RECEIVER_LIFETIME`]; returns its port and the number
/// of requests it has answered.
fn grpc_receiver(answer: GrpcAnswer) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("address").port();
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .expect("runtime");
        let serve = async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            while let Ok((socket, _)) = listener.accept().await {
                let requests = counted.clone();
                tokio::spawn(async move {
                    let Ok(mut connection) = h2::server::handshake(socket).await else {
                        return;
                    };
                    while let Some(Ok((request, respond))) = connection.accept().await {
                        // Answered on a task of its own: the connection must go on being
                        // polled for the request's body to arrive.
                        tokio::spawn(answer_grpc(request, respond, answer, requests.clone()));
                    }
                });
            }
        };
        runtime.block_on(async {
            let _ = tokio::time::timeout(RECEIVER_LIFETIME, serve).await;
        });
    });
    (port, requests)
}

/// Reads an export request whole, as a collector does, counts it, and answers as `answer` says.
async fn answer_grpc(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<bytes::Bytes>,
    answer: GrpcAnswer,
    requests: Arc<AtomicUsize>,
) {
    let mut body = request.into_body();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    requests.fetch_add(1, Ordering::Relaxed);
    let head = http::Response::builder()
        .status(200)
        .header("content-type", "application/grpc");
    let message = match answer {
        GrpcAnswer::InvalidArgument(message) => {
            // Trailers only: the status in the response's one header block.
            let head = head
                .header("grpc-status", "3")
                .header("grpc-message", message.replace(' ', "%20"))
                .body(())
                .expect("response head");
            let _ = respond.send_response(head, true);
            return;
        }
        GrpcAnswer::RejectOneSpan(reason) => ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 1,
                error_message: reason.into(),
            }),
        }
        .encode_to_vec(),
    };
    let Ok(mut body) = respond.send_response(head.body(()).expect("response head"), false) else {
        return;
    };
    // One gRPC message: not compressed, its length, the response.
    let mut frame = vec![0];
    frame.extend_from_slice(&u32::try_from(message.len()).expect("short").to_be_bytes());
    frame.extend_from_slice(&message);
    let _ = body.send_data(bytes::Bytes::from(frame), false);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let _ = body.send_trailers(trailers);
}

/// A gRPC receiver refusing every request with `INVALID_ARGUMENT`: rejected at once, not
/// retried, reported with the code and the receiver's message.
#[test]
fn grpc_invalid_argument_is_rejected_at_once_with_the_message() {
    let (port, requests) = grpc_receiver(GrpcAnswer::InvalidArgument("tcpstates test: bad spans"));
    let (agent, _ns, made) = agent_with_sessions(Transport::Grpc, port, 28069, 28440, 20, &[]);
    let line = await_rejection(&agent);
    assert!(
        line.contains("(gRPC InvalidArgument: tcpstates test: bad spans)"),
        "{line}"
    );
    let finished = agent.stop_within(libc::SIGINT, Duration::from_secs(60));
    let (summary, context) = account(&finished, made);
    assert_eq!(
        (
            summary.spans,
            summary.failed,
            summary.rejected + summary.dropped
        ),
        (0, 0, made),
        "{context}"
    );
    assert!(requests.load(Ordering::Relaxed) > 0, "{context}");
    assert!(
        !context.contains("will retry"),
        "a permanent refusal is not retried: {context}"
    );
}

/// A gRPC receiver accepting every request with a partial success rejecting one span: those
/// spans counted rejected, the reason said once.
#[test]
fn grpc_partial_success_is_counted_rejected_with_the_message() {
    let (port, requests) = grpc_receiver(GrpcAnswer::RejectOneSpan("tcpstates test: too old"));
    let (agent, _ns, made) = agent_with_sessions(Transport::Grpc, port, 28070, 28460, 20, &[]);
    let finished = agent.stop_within(libc::SIGINT, Duration::from_secs(60));
    let (summary, context) = account(&finished, made);
    let requests = requests.load(Ordering::Relaxed) as u64;
    assert!(requests > 0, "{context}");
    assert_eq!(
        (summary.rejected, summary.spans, summary.failed),
        (requests, made - requests, 0),
        "one span of each of {requests} requests rejected: {context}"
    );
    assert_eq!(
        context
            .lines()
            .filter(|line| line.contains("(partial success): tcpstates test: too old"))
            .count(),
        1,
        "reported once: {context}"
    );
}
