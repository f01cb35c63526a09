//! Real connections in a namespace the test creates, traced in the default layout: every socket
//! (client, accepted socket, listener) shows exactly the transitions the kernel makes, with the
//! addresses and ports of the connection.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use integration_tests::events::{Event, Format, Layout, expect_lives, on_port, sessions};
use integration_tests::netns::{Netns, THREAD_NAME};
use integration_tests::scenario::trace_port;
use integration_tests::traffic::{
    self, CLIENT_RESET, Closer, Connection, LISTENER, REFUSED, SERVER_RESET,
};

const DEFAULT: Format = Format::Text(Layout {
    time: false,
    timestamp: false,
    wide: false,
    csv: false,
});

/// The events the agent printed (default layout) that touch `port`, as socket lives.
fn lives_on_port(stdout: &[String], port: u16) -> Vec<Vec<Event>> {
    sessions(&on_port(&DEFAULT.events(stdout), port))
}

/// Checks a full connection whose `closer` end closed first: one listener, one client and one
/// accepted socket, each with its exact transitions, addresses and ports.
fn check_connection(stdout: &[String], connection: Connection, closer: Closer, any_addr: IpAddr) {
    let port = connection.server.port();
    let lives = expect_lives(
        &lives_on_port(stdout, port),
        &[
            LISTENER,
            closer.client_transitions(),
            closer.server_transitions(),
        ],
    );
    let (listener, client, server) = (&lives[0], &lives[1], &lives[2]);
    let local = connection.server.ip();
    let client_port = connection.client.port();

    for event in listener {
        assert_eq!((event.laddr, event.lport), (local, port), "{event:?}");
        assert_eq!((event.raddr, event.rport), (any_addr, 0), "{event:?}");
    }
    for (index, event) in client.iter().enumerate() {
        // The first transition (CLOSE -> SYN_SENT) comes before the kernel picks the port.
        let lport = if index == 0 { 0 } else { client_port };
        assert_eq!(
            (event.laddr, event.lport),
            (connection.client.ip(), lport),
            "{event:?}"
        );
        assert_eq!((event.raddr, event.rport), (local, port), "{event:?}");
    }
    for event in server {
        assert_eq!((event.laddr, event.lport), (local, port), "{event:?}");
        assert_eq!(
            (event.raddr, event.rport),
            (connection.client.ip(), client_port),
            "{event:?}"
        );
    }
    for life in &lives {
        assert_eq!(
            life[0].ms, 0.0,
            "a socket's first transition has no previous state: {:?}",
            life[0]
        );
        assert!(
            life.iter().all(|e| e.ms.is_finite() && e.ms >= 0.0),
            "{life:?}"
        );
    }
    // connect() and listen() change the state in the calling thread's context.
    for first in [&client[0], &listener[0]] {
        assert_eq!(first.pid, std::process::id(), "C-PID of {first:?}");
        assert_eq!(first.comm, THREAD_NAME, "C-COMM of {first:?}");
    }
}

fn connection_test(server: SocketAddr, closer: Closer, any_addr: IpAddr) {
    let ns = Netns::create();
    let (connection, finished) = trace_port(&[], DEFAULT, server.port(), 3, || {
        traffic::connect_and_close(&ns, server, Duration::ZERO, closer)
    });
    check_connection(&finished.stdout, connection, closer, any_addr);
}

#[test]
fn ipv4_client_and_server_sequences() {
    connection_test(
        "127.0.0.1:21001".parse().expect("address"),
        Closer::Server,
        "0.0.0.0".parse().expect("address"),
    );
}

#[test]
fn ipv6_client_and_server_sequences() {
    connection_test(
        "[::1]:21002".parse().expect("address"),
        Closer::Server,
        "::".parse().expect("address"),
    );
}

#[test]
fn client_closing_first_goes_through_fin_wait() {
    connection_test(
        "127.0.0.1:21003".parse().expect("address"),
        Closer::Client,
        "0.0.0.0".parse().expect("address"),
    );
}

#[test]
fn refused_connection_goes_syn_sent_to_close() {
    let ns = Netns::create();
    let v4: SocketAddr = "127.0.0.1:21004".parse().expect("address");
    let v6: SocketAddr = "[::1]:21005".parse().expect("address");
    // The IPv6 attempt is made last, so once it is seen the IPv4 one has been printed too.
    let ((), finished) = trace_port(&[], DEFAULT, v6.port(), 1, || {
        traffic::connect_refused(&ns, v4);
        traffic::connect_refused(&ns, v6);
    });
    for server in [v4, v6] {
        let lives = expect_lives(&lives_on_port(&finished.stdout, server.port()), &[REFUSED]);
        let (syn_sent, closed) = (&lives[0][0], &lives[0][1]);
        assert_eq!(syn_sent.lport, 0, "{syn_sent:?}");
        assert_ne!(
            closed.lport, 0,
            "the kernel picked a port before sending the SYN: {closed:?}"
        );
        for event in &lives[0] {
            assert_eq!(
                (event.laddr, event.raddr),
                (server.ip(), server.ip()),
                "{event:?}"
            );
            assert_eq!(event.rport, server.port(), "{event:?}");
        }
    }
}

#[test]
fn listener_goes_listen_then_close() {
    let ns = Netns::create();
    let addr: SocketAddr = "127.0.0.1:21006".parse().expect("address");
    let ((), finished) = trace_port(&[], DEFAULT, addr.port(), 1, || {
        traffic::listen_and_close(&ns, addr)
    });
    let lives = expect_lives(&lives_on_port(&finished.stdout, addr.port()), &[LISTENER]);
    for event in &lives[0] {
        assert_eq!(
            (event.laddr, event.lport),
            (addr.ip(), addr.port()),
            "{event:?}"
        );
        assert_eq!(event.rport, 0, "{event:?}");
    }
}

#[test]
fn reset_closes_established_sockets_at_once() {
    let ns = Netns::create();
    let server: SocketAddr = "127.0.0.1:21007".parse().expect("address");
    let (connection, finished) = trace_port(&[], DEFAULT, server.port(), 3, || {
        traffic::connect_and_reset(&ns, server)
    });
    let lives = expect_lives(
        &lives_on_port(&finished.stdout, server.port()),
        &[LISTENER, CLIENT_RESET, SERVER_RESET],
    );
    let (client, accepted) = (&lives[1], &lives[2]);
    assert_eq!(client[2].lport, connection.client.port(), "{:?}", client[2]);
    assert_eq!(
        accepted[2].rport,
        connection.client.port(),
        "{:?}",
        accepted[2]
    );
}
