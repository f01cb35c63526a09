//! SIGINT and SIGTERM: a clean exit (0) with every event captured so far written out, and a last
//! stderr line that counts the events written and lost.

use std::net::SocketAddr;
use std::time::Duration;

use integration_tests::agent::{Agent, EVENT_TIMEOUT, parse_summary};
use integration_tests::events::{Format, Layout, expect_lives, on_port, sessions};
use integration_tests::netns::Netns;
use integration_tests::traffic::{self, Closer, LISTENER};

/// Makes a connection, waits only until the kernel is done with its sockets (not for any
/// output), sends `signal`, and checks that the whole connection was still written out.
fn signal_test(signal: libc::c_int, server: SocketAddr) {
    let ns = Netns::create();
    let agent = Agent::start(&[]);
    traffic::connect_and_close(&ns, server, Duration::ZERO, Closer::Server);
    // Once no socket is left, the kernel has emitted every transition to CLOSE.
    ns.await_no_tcp_sockets(EVENT_TIMEOUT);
    let finished = agent.stop(signal);
    assert_eq!(
        finished.code(),
        0,
        "stderr:\n{}",
        finished.stderr.join("\n")
    );

    let format = Format::Text(Layout::default());
    let events = format.events(&finished.stdout);
    expect_lives(
        &sessions(&on_port(&events, server.port())),
        &[
            LISTENER,
            Closer::Server.client_transitions(),
            Closer::Server.server_transitions(),
        ],
    );

    let last = finished.stderr.last().expect("a summary line on stderr");
    let summary = parse_summary(last).unwrap_or_else(|| panic!("last stderr line: {last:?}"));
    assert_eq!(
        summary.written,
        u64::try_from(finished.stdout.len() - 1).expect("count"),
        "events written vs rows on stdout (after the header): {last:?}"
    );
    assert_eq!(
        summary.lost,
        summary.ring_buffer_full + summary.recursion,
        "{last:?}"
    );
    assert_eq!(
        summary.lost, 0,
        "a handful of connections loses nothing: {last:?}"
    );
}

#[test]
fn sigint_writes_everything_and_exits_cleanly() {
    signal_test(libc::SIGINT, "127.0.0.1:27001".parse().expect("address"));
}

#[test]
fn sigterm_writes_everything_and_exits_cleanly() {
    signal_test(libc::SIGTERM, "[::1]:27002".parse().expect("address"));
}
