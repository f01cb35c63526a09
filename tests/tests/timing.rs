//! Durations: MS is the time the socket spent in OLDSTATE, measured from kernel timestamps, so a
//! connection held open shows that time, and a socket's durations add up to its lifetime.

use std::net::SocketAddr;
use std::time::Duration;

use integration_tests::events::{
    Format, Layout, expect_lives, on_port, parse_json_lines, sessions,
};
use integration_tests::netns::Netns;
use integration_tests::scenario::trace_port;
use integration_tests::traffic::{self, Closer, LISTENER};

#[test]
fn connection_held_200_ms_shows_200_ms_established() {
    let ns = Netns::create();
    let server: SocketAddr = "127.0.0.1:23001".parse().expect("address");
    let format = Format::Text(Layout::default());
    let ((), finished) = trace_port(&[], format, server.port(), 3, || {
        traffic::connect_and_close(&ns, server, Duration::from_millis(200), Closer::Client);
    });
    let lives = expect_lives(
        &sessions(&on_port(&format.events(&finished.stdout), server.port())),
        &[
            LISTENER,
            Closer::Client.client_transitions(),
            Closer::Client.server_transitions(),
        ],
    );
    for life in &lives[1..] {
        let established = life
            .iter()
            .find(|e| e.oldstate == "ESTABLISHED")
            .expect("an ESTABLISHED -> ... line");
        assert!(
            (180.0..=220.0).contains(&established.ms),
            "held ESTABLISHED for 200 ms, MS says {}: {established:?}",
            established.ms
        );
    }
}

#[test]
fn durations_add_up_to_socket_lifetime() {
    let ns = Netns::create();
    let server: SocketAddr = "127.0.0.1:23002".parse().expect("address");
    let ((), finished) = trace_port(&["--json"], Format::Json, server.port(), 3, || {
        traffic::connect_and_close(&ns, server, Duration::from_millis(50), Closer::Server);
    });
    let events = parse_json_lines(&finished.stdout);
    let lives = expect_lives(
        &sessions(&on_port(&events, server.port())),
        &[
            LISTENER,
            Closer::Server.client_transitions(),
            Closer::Server.server_transitions(),
        ],
    );
    for life in &lives {
        let (first, last) = (&life[0], &life[life.len() - 1]);
        assert!(
            life.windows(2).all(|pair| pair[0].ts_ns <= pair[1].ts_ns),
            "timestamps go back within one socket: {life:?}"
        );
        let lifetime_ms = (last.ts_ns - first.ts_ns) as f64 / 1e6;
        let total_ms: f64 = life.iter().map(|e| e.event.ms).sum();
        assert!(
            (total_ms - lifetime_ms).abs() <= 1.0,
            "MS adds up to {total_ms} but the socket lived {lifetime_ms} ms: {life:?}"
        );
        assert!(
            lifetime_ms >= 50.0,
            "held for 50 ms, lived {lifetime_ms} ms: {life:?}"
        );
    }
}
