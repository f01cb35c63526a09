//! No event lost silently under load: at the highest loopback connection rate, the kernel skips
//! some runs of the main program (BPF recursion: a state change made in a softirq that
//! interrupted it on the same CPU). The backstop program records those instead, so
//! every expected event is printed or counted as lost — but for a residue of at most 1 in
//! 10,000 whose cause is not found yet — and the recovered ones carry the right addresses,
//! ports and states (a wrong field would make them miss the port filter of this test or break
//! their socket's chain of states). Ports 29xxx.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use integration_tests::agent::{Agent, parse_summary};
use integration_tests::events::{Layout, Row, on_port, parse_rows, sessions};
use integration_tests::netns::Netns;

/// Server port of the load.
const PORT: u16 = 29001;
/// Client threads of the load (the machine has 2 cores; more threads keep both busy).
const CLIENTS: usize = 6;
/// How long one round of load lasts.
const ROUND: Duration = Duration::from_secs(3);
/// Rounds at most, until the backstop program has recovered something.
const MAX_ROUNDS: usize = 3;
/// State changes of one connection (client and accepted socket) when the server closes first.
const EVENTS_PER_CONNECTION: u64 = 10;

/// Opens and closes connections to `PORT` from `CLIENTS` threads for `ROUND`; the server
/// accepts and closes first. Returns the number of connections completed.
fn load() -> u64 {
    let server = SocketAddr::from((Ipv4Addr::LOCALHOST, PORT));
    let listener = TcpListener::bind(server).expect("bind the load's listener");
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let clients_left = AtomicUsize::new(CLIENTS);
    let connections = AtomicU64::new(0);
    let deadline = Instant::now() + ROUND;
    thread::scope(|scope| {
        for _ in 0..CLIENTS {
            scope.spawn(|| {
                let mut sink = [0u8; 16];
                while Instant::now() < deadline {
                    let Ok(mut client) = TcpStream::connect(server) else {
                        continue;
                    };
                    client
                        .set_read_timeout(Some(Duration::from_secs(5)))
                        .expect("read timeout");
                    if matches!(client.read(&mut sink), Ok(0)) {
                        connections.fetch_add(1, Ordering::Relaxed);
                    }
                }
                clients_left.fetch_sub(1, Ordering::Relaxed);
            });
        }
        // Accept until every client is done; each client's loop ends at the deadline.
        while clients_left.load(Ordering::Relaxed) > 0 {
            match listener.accept() {
                Ok((accepted, _)) => drop(accepted),
                Err(_) => thread::yield_now(),
            }
        }
    });
    connections.load(Ordering::Relaxed)
}

/// The number in the agent's "N events … were recovered by the backstop program" line (0 if
/// absent).
fn recovered(stderr: &[String]) -> u64 {
    stderr
        .iter()
        .find(|line| line.ends_with("were recovered by the backstop program"))
        .and_then(|line| line.strip_prefix("tcpstates: "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Transitions in `life` that do not start where the previous one ended.
fn chain_breaks(life: &[Row]) -> u64 {
    life.windows(2)
        .filter(|pair| pair[0].event.newstate != pair[1].event.oldstate)
        .count() as u64
}

#[test]
fn events_skipped_to_bpf_recursion_are_recovered_or_reported() {
    let ns = Netns::create();
    let mut rounds = Vec::new();
    for _ in 0..MAX_ROUNDS {
        let agent = Agent::start(&[]);
        let connections = ns.run(load);
        ns.await_no_tcp_sockets(Duration::from_secs(30));
        let finished = agent.stop(libc::SIGINT);
        assert_eq!(finished.code(), 0, "{:?}", finished.stderr);
        let summary = finished
            .stderr
            .iter()
            .rev()
            .find_map(|line| parse_summary(line))
            .unwrap_or_else(|| panic!("no summary line: {:?}", finished.stderr));
        let rows = on_port(&parse_rows(&finished.stdout, Layout::default()), PORT);
        let expected = EVENTS_PER_CONNECTION * connections + 2;
        let printed = rows.len() as u64;
        let missing = expected.saturating_sub(printed);
        assert!(
            printed <= expected,
            "{printed} events printed for {connections} connections, more than {expected}"
        );
        // Known residue, cause not found yet: about 1 server-side FIN_WAIT1→FIN_WAIT2 /
        // FIN_WAIT2→CLOSE pair per 100,000 connections is neither printed nor counted lost
        // (the peers miss such events too). Anything beyond that bound fails.
        let unaccounted = missing.saturating_sub(summary.lost);
        assert!(
            unaccounted * 10_000 <= expected,
            "{unaccounted} of {expected} events neither printed nor reported lost (more than \
             1 in 10,000): {summary:?}"
        );
        let lives = sessions(&rows);
        let breaks: u64 = lives.iter().map(|life| chain_breaks(life)).sum();
        assert!(
            breaks <= missing,
            "{breaks} broken chains of states for {missing} missing events: a recovered event \
             carries wrong states"
        );
        let recovered = recovered(&finished.stderr);
        rounds.push((connections, printed, summary.lost, recovered));
        if recovered > 0 {
            return;
        }
    }
    panic!(
        "the backstop program recovered nothing in {MAX_ROUNDS} rounds of load \
         (connections, printed, lost, recovered): {rounds:?}"
    );
}
