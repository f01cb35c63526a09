//! SIGINT and SIGTERM: a clean exit (0) with every event captured so far written out, and a last
//! stderr line that counts the events written and lost.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use integration_tests::agent::{Agent, EVENT_TIMEOUT};
use integration_tests::events::{Format, Layout, expect_lives, on_port, sessions};
use integration_tests::netns::Netns;
use integration_tests::traffic::{self, Closer, LISTENER};

/// The longest the overload test's load runs, should the agent never exit.
const LOAD_LIMIT: Duration = Duration::from_secs(30);

/// Makes a connection, waits only until the kernel is done with its sockets (not for any
/// output), sends `signal`, and checks that the whole connection was still written out.
fn signal_test(signal: libc::c_int, server: SocketAddr) {
    let ns = Netns::create();
    // Only its own namespace: the overload test's flood, running beside it, is not its concern.
    let netns = format!("/run/netns/{}", ns.name());
    let agent = Agent::start(&["--netns", &netns]);
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

    // The account; lines about events the backstop recovered may follow it.
    let summary = finished.summary();
    let stderr = finished.stderr.join("\n");
    assert_eq!(
        summary.written,
        u64::try_from(finished.stdout.len() - 1).expect("count"),
        "events written vs rows on stdout (after the header): {stderr}"
    );
    assert_eq!(
        summary.lost,
        summary.ring_buffer_full + summary.recursion,
        "{stderr}"
    );
    assert_eq!(
        summary.lost, 0,
        "a handful of connections loses nothing: {stderr}"
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

/// Under a load faster than the agent delivers (its ring buffer full while it was stopped), SIGINT
/// still ends it within the exit timeout, with every drop counted in its account.
#[test]
fn sigint_ends_an_overloaded_agent_promptly_and_counts_what_it_dropped() {
    let ns = Netns::create();
    let netns = format!("/run/netns/{}", ns.name());
    let agent = Agent::start(&["--json", "--ring-buffer-mib", "1", "--netns", &netns]);
    let pid = libc::pid_t::try_from(agent.pid()).expect("pid fits pid_t");
    // Four loads against one agent on this machine's two CPUs: more than the agent delivers.
    let servers: Vec<SocketAddr> = (27003..27007)
        .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
        .collect();
    let stop = AtomicBool::new(false);
    let finished = thread::scope(|scope| {
        let loads: Vec<_> = servers
            .iter()
            .map(|&server| {
                let (ns, stop) = (&ns, &stop);
                scope.spawn(move || ns.run(|| traffic::connect_until(server, stop, LOAD_LIMIT)))
            })
            .collect();
        // SAFETY: kill(2) on our own child, not reaped yet: it stops reading while the loads
        // fill its 1 MiB ring buffer (some 8,000 records).
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        thread::sleep(Duration::from_secs(1));
        // SAFETY: as above.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
        let finished = agent.stop(libc::SIGINT);
        stop.store(true, Ordering::Relaxed);
        for load in loads {
            let connections = load.join().expect("a load thread panicked");
            assert!(connections > 0, "a load made no connection");
        }
        finished
    });
    let context = finished.stderr.join("\n");
    assert_eq!(finished.code(), 0, "{context}");
    let summary = finished.summary();
    assert!(
        summary.ring_buffer_full > 0,
        "a stopped agent's full ring drops records, and says so: {context}"
    );
    assert_eq!(
        summary.lost,
        summary.ring_buffer_full + summary.recursion,
        "{context}"
    );
}
