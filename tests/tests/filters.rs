//! The kernel-side filters `-L`, `-D`, `-4` and `-6` keep exactly the sessions they should: every
//! event printed passes the filter (whatever else runs on the machine), the filtered-in sockets
//! of the test's own traffic are complete, and the filtered-out ones are absent.
//!
//! The traffic that must be filtered out is always made first: events leave the kernel through
//! one ring buffer in the order they happen, so once the last expected event is printed, an event
//! the filter wrongly let through would have been printed already.

use std::net::SocketAddr;
use std::time::Duration;

use integration_tests::agent::Finished;
use integration_tests::events::{Event, Format, Layout, expect_lives, on_port, sessions};
use integration_tests::netns::Netns;
use integration_tests::scenario::trace_port;
use integration_tests::traffic::{self, Closer, LISTENER, Transitions};

const WIDE: Format = Format::Text(Layout {
    time: false,
    timestamp: false,
    wide: true,
    csv: false,
});

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("socket address")
}

/// A full connection to `server` where the server closes first.
fn connection(ns: &Netns, server: SocketAddr) {
    traffic::connect_and_close(ns, server, Duration::ZERO, Closer::Server);
}

/// All events printed (`-w` layout), after checking that there is at least one.
fn all_events(finished: &Finished) -> Vec<Event> {
    let events = WIDE.events(&finished.stdout);
    assert!(
        !events.is_empty(),
        "no events printed: {:?}",
        finished.stdout
    );
    events
}

/// Asserts that the events on `port` are exactly the socket lives `expected`.
fn assert_lives_on_port(events: &[Event], port: u16, expected: &[Transitions]) {
    expect_lives(&sessions(&on_port(events, port)), expected);
}

#[test]
fn local_port_filter_keeps_only_that_listener_and_its_accepted_socket() {
    let ns = Netns::create();
    let (a, b) = (addr("127.0.0.1:22001"), addr("127.0.0.1:22002"));
    let ((), finished) = trace_port(&["-w", "-L", "22001"], WIDE, a.port(), 2, || {
        connection(&ns, b);
        connection(&ns, a);
    });
    let events = all_events(&finished);
    for event in &events {
        assert_eq!(event.lport, 22001, "-L 22001 let through {event:?}");
    }
    // The clients' sockets have ephemeral local ports: only the server side remains.
    assert_lives_on_port(
        &events,
        a.port(),
        &[LISTENER, Closer::Server.server_transitions()],
    );
    assert_lives_on_port(&events, b.port(), &[]);
}

#[test]
fn local_port_list_keeps_every_listed_port() {
    let ns = Netns::create();
    let (a, b, c) = (
        addr("127.0.0.1:22011"),
        addr("127.0.0.1:22012"),
        addr("127.0.0.1:22013"),
    );
    let ((), finished) = trace_port(&["-w", "-L", "22011,22012"], WIDE, b.port(), 2, || {
        connection(&ns, c);
        connection(&ns, a);
        connection(&ns, b);
    });
    let events = all_events(&finished);
    for event in &events {
        assert!(
            [22011, 22012].contains(&event.lport),
            "-L 22011,22012 let through {event:?}"
        );
    }
    for kept in [a, b] {
        assert_lives_on_port(
            &events,
            kept.port(),
            &[LISTENER, Closer::Server.server_transitions()],
        );
    }
    assert_lives_on_port(&events, c.port(), &[]);
}

#[test]
fn long_local_port_list_filters_in_the_kernel() {
    // 19,999 ports (10000..=29999 but one): far beyond a fixed handful, and as long as one
    // command-line argument can be (the kernel caps one argument at 128 KiB).
    let (listed, unlisted) = (addr("127.0.0.1:22021"), addr("127.0.0.1:22022"));
    let ports: Vec<String> = (10000..=29999u16)
        .filter(|&port| port != unlisted.port())
        .map(|port| port.to_string())
        .collect();
    let list = ports.join(",");
    let ns = Netns::create();
    let ((), finished) = trace_port(&["-w", "-L", &list], WIDE, listed.port(), 2, || {
        connection(&ns, unlisted);
        connection(&ns, listed);
    });
    let events = all_events(&finished);
    for event in &events {
        assert!(
            (10000..=29999).contains(&event.lport) && event.lport != unlisted.port(),
            "a port outside the list got through: {event:?}"
        );
    }
    assert_lives_on_port(
        &events,
        listed.port(),
        &[LISTENER, Closer::Server.server_transitions()],
    );
    assert_lives_on_port(&events, unlisted.port(), &[]);
}

#[test]
fn remote_port_filter_keeps_only_the_clients_of_that_port() {
    let ns = Netns::create();
    let (a, b) = (addr("127.0.0.1:22031"), addr("127.0.0.1:22032"));
    let ((), finished) = trace_port(&["-w", "-D", "22031"], WIDE, a.port(), 1, || {
        connection(&ns, b);
        connection(&ns, a);
    });
    let events = all_events(&finished);
    for event in &events {
        assert_eq!(event.rport, 22031, "-D 22031 let through {event:?}");
    }
    // Only the client socket has the server's port as its remote port.
    assert_lives_on_port(&events, a.port(), &[Closer::Server.client_transitions()]);
    assert_lives_on_port(&events, b.port(), &[]);
}

#[test]
fn ipv4_filter_keeps_only_ipv4() {
    let ns = Netns::create();
    let (v4, v6) = (addr("127.0.0.1:22041"), addr("[::1]:22042"));
    let ((), finished) = trace_port(&["-w", "-4"], WIDE, v4.port(), 3, || {
        connection(&ns, v6);
        connection(&ns, v4);
    });
    let events = all_events(&finished);
    for event in &events {
        assert_eq!(event.ip, Some(4), "-4 let through {event:?}");
        assert!(event.laddr.is_ipv4() && event.raddr.is_ipv4(), "{event:?}");
    }
    assert_lives_on_port(
        &events,
        v4.port(),
        &[
            LISTENER,
            Closer::Server.client_transitions(),
            Closer::Server.server_transitions(),
        ],
    );
    assert_lives_on_port(&events, v6.port(), &[]);
}

#[test]
fn ipv6_filter_keeps_only_ipv6() {
    let ns = Netns::create();
    let (v4, v6) = (addr("127.0.0.1:22051"), addr("[::1]:22052"));
    let ((), finished) = trace_port(&["-w", "-6"], WIDE, v6.port(), 3, || {
        connection(&ns, v4);
        connection(&ns, v6);
    });
    let events = all_events(&finished);
    for event in &events {
        assert_eq!(event.ip, Some(6), "-6 let through {event:?}");
        assert!(event.laddr.is_ipv6() && event.raddr.is_ipv6(), "{event:?}");
    }
    assert_lives_on_port(
        &events,
        v6.port(),
        &[
            LISTENER,
            Closer::Server.client_transitions(),
            Closer::Server.server_transitions(),
        ],
    );
    assert_lives_on_port(&events, v4.port(), &[]);
}

#[test]
fn local_and_family_filters_combine() {
    let ns = Netns::create();
    let (v4, v6) = (addr("127.0.0.1:22061"), addr("[::1]:22061"));
    let ((), finished) = trace_port(&["-w", "-6", "-L", "22061"], WIDE, v6.port(), 2, || {
        connection(&ns, v4);
        connection(&ns, v6);
    });
    let events = all_events(&finished);
    for event in &events {
        assert_eq!(
            (event.ip, event.lport),
            (Some(6), 22061),
            "-6 -L 22061 let through {event:?}"
        );
    }
    assert_lives_on_port(
        &events,
        v6.port(),
        &[LISTENER, Closer::Server.server_transitions()],
    );
}
