//! `--json`: one object per line, no header, every field present with its type, and the values
//! those of the connection the test made (kernel CLOCK_MONOTONIC timestamps, wall-clock time,
//! span in ns, addresses, ports, state names).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use chrono::{DateTime, Utc};
use integration_tests::events::Format;
use integration_tests::events::{JsonEvent, expect_lives, on_port, parse_json_lines, sessions};
use integration_tests::netns::{Netns, THREAD_NAME};
use integration_tests::scenario::trace_port;
use integration_tests::traffic::{self, Closer, LISTENER};

/// CLOCK_MONOTONIC now, in ns: the clock the kernel stamps events with (bpf_ktime_get_ns).
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to the valid pointer given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    assert_eq!(rc, 0, "clock_gettime: {}", std::io::Error::last_os_error());
    u64::try_from(now.tv_sec).expect("positive seconds") * 1_000_000_000
        + u64::try_from(now.tv_nsec).expect("positive ns")
}

fn json_test(server: SocketAddr, family: u8, any_addr: IpAddr) {
    let ns = Netns::create();
    let mut window = None;
    let (connection, finished) = trace_port(&["--json"], Format::Json, server.port(), 3, || {
        let (mono, wall) = (monotonic_ns(), Utc::now());
        let connection =
            traffic::connect_and_close(&ns, server, Duration::from_millis(20), Closer::Server);
        window = Some((mono, monotonic_ns(), wall, Utc::now()));
        connection
    });
    let (mono_start, mono_end, wall_start, wall_end) = window.expect("traffic ran");
    // Every line is an object with every field: no header, nothing else.
    let events = parse_json_lines(&finished.stdout);
    let lives = expect_lives(
        &sessions(&on_port(&events, server.port())),
        &[
            LISTENER,
            Closer::Server.client_transitions(),
            Closer::Server.server_transitions(),
        ],
    );
    let (listener, client, accepted) = (&lives[0], &lives[1], &lives[2]);
    let (ip, port, client_port) = (server.ip(), server.port(), connection.client.port());

    let check_endpoints = |life: &[JsonEvent], local: (IpAddr, u16), remote: (IpAddr, u16)| {
        for e in life {
            assert_eq!((e.event.laddr, e.event.lport), local, "{e:?}");
            assert_eq!((e.event.raddr, e.event.rport), remote, "{e:?}");
        }
    };
    check_endpoints(listener, (ip, port), (any_addr, 0));
    assert_eq!(
        client[0].event.lport, 0,
        "before the port is picked: {:?}",
        client[0]
    );
    check_endpoints(&client[1..], (ip, client_port), (ip, port));
    check_endpoints(accepted, (ip, port), (ip, client_port));

    for life in &lives {
        assert_eq!(
            life[0].span_ns, 0,
            "first transition of a socket: {:?}",
            life[0]
        );
        for (index, e) in life.iter().enumerate() {
            assert_eq!(e.event.ip, Some(family), "{e:?}");
            assert_eq!(
                e.event.skaddr.len(),
                16,
                "skaddr is a 64-bit kernel address: {e:?}"
            );
            assert!(
                (mono_start..=mono_end).contains(&e.ts_ns),
                "ts_ns {} outside CLOCK_MONOTONIC {mono_start}..={mono_end}: {e:?}",
                e.ts_ns
            );
            let time = DateTime::parse_from_rfc3339(&e.time)
                .unwrap_or_else(|err| panic!("time {:?} is not RFC 3339: {err}", e.time));
            let slack = chrono::Duration::seconds(1);
            assert!(
                time >= wall_start - slack && time <= wall_end + slack,
                "time {time} outside {wall_start}..{wall_end}: {e:?}"
            );
            assert!(
                (e.event.ms - e.span_ns as f64 / 1e6).abs() < 0.001,
                "ms {} does not match span_ns {}: {e:?}",
                e.event.ms,
                e.span_ns
            );
            if index > 0 {
                let since_previous = e.ts_ns - life[index - 1].ts_ns;
                assert!(
                    e.span_ns.abs_diff(since_previous) < 1_000_000,
                    "span_ns {} but {since_previous} ns since the socket's previous change: {e:?}",
                    e.span_ns
                );
            }
        }
    }
    // connect() and listen() run in the test's thread: its pid and name.
    for first in [&client[0], &listener[0]] {
        assert_eq!(first.event.pid, std::process::id(), "{first:?}");
        assert_eq!(first.event.comm, THREAD_NAME, "{first:?}");
    }
    let established = accepted
        .iter()
        .find(|e| e.event.oldstate == "ESTABLISHED")
        .expect("accepted socket leaves ESTABLISHED");
    assert!(
        established.span_ns >= 20_000_000,
        "held 20 ms: {established:?}"
    );
}

#[test]
fn json_ipv4_connection_has_every_field() {
    json_test(
        "127.0.0.1:24001".parse().expect("address"),
        4,
        "0.0.0.0".parse().expect("address"),
    );
}

#[test]
fn json_ipv6_connection_has_every_field() {
    json_test(
        "[::1]:24002".parse().expect("address"),
        6,
        "::".parse().expect("address"),
    );
}
