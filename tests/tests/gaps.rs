//! Inferred loss on a clean run: thousands of real connections (orderly closes from either end,
//! resets, refused connects), whose sockets the kernel reuses the addresses of again and again,
//! leave no gap in any socket's chain of states, so the agent infers nothing missing: the gap
//! tracker's rules have no false positive on what the kernel really reports.
//!
//! The bound is exact (0), not statistical: every rule counts only what a complete stream
//! cannot show (a transition not continuing its socket's last state, a new socket at the address
//! of one whose CLOSE was not seen), and a run this size loses nothing the kernel counts either
//! (asserted), nor, in thousands of runs of the other tests, anything uncounted (the known
//! uncounted loss, about 2 per million transitions, needs the maximum loopback rate across
//! every CPU; this run is one thread). The agent watches only the test's namespace, so the
//! host's own traffic cannot add to the count.

use std::io::Read as _;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;

use integration_tests::agent::{Agent, EVENT_TIMEOUT, parse_summary};
use integration_tests::netns::Netns;

/// Connections made (each also followed by a refused connect).
const CONNECTIONS: u32 = 1_000;

/// The agent's inferred-loss line, if it printed one.
fn gap_lines(stderr: &[String]) -> Vec<&String> {
    stderr
        .iter()
        .filter(|line| line.contains("transitions missing") || line.contains("no longer checked"))
        .collect()
}

/// Connects to `listener` and closes the connection: orderly from the client or the server, or
/// with a reset from the client, by `round`.
fn one_connection(listener: &TcpListener, server: SocketAddr, round: u32) {
    let client = TcpStream::connect(server).expect("connect");
    let (accepted, _) = listener.accept().expect("accept");
    let mut buf = [0u8; 1];
    match round % 3 {
        0 => {
            drop(client);
            assert_eq!((&accepted).read(&mut buf).expect("read FIN"), 0);
        }
        1 => {
            // shutdown() then close(): the server's FIN_WAIT1 -> FIN_WAIT1 self-transition.
            accepted.shutdown(Shutdown::Write).expect("shutdown");
            assert_eq!((&client).read(&mut buf).expect("read FIN"), 0);
            drop(accepted);
            drop(client);
        }
        _ => {
            abort(client);
            let _ = (&accepted).read(&mut buf);
            drop(accepted);
        }
    }
}

/// Closes `stream` with SO_LINGER 0: an RST instead of a FIN.
fn abort(stream: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a `linger` of the size given.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
    drop(stream);
}

fn clean_run(server: SocketAddr, refused: SocketAddr) {
    let ns = Netns::create();
    let path = format!("/run/netns/{}", ns.name());
    let agent = Agent::start(&["--netns", &path]);
    ns.run(|| {
        let listener = TcpListener::bind(server).expect("listen");
        for round in 0..CONNECTIONS {
            one_connection(&listener, server, round);
            assert!(
                TcpStream::connect(refused).is_err(),
                "nothing listens there"
            );
        }
    });
    ns.await_no_tcp_sockets(EVENT_TIMEOUT);
    let finished = agent.stop(libc::SIGINT);
    let context = finished.stderr.join("\n");
    assert_eq!(finished.code(), 0, "{context}");
    let summary = finished
        .stderr
        .iter()
        .find_map(|line| parse_summary(line))
        .unwrap_or_else(|| panic!("no account line:\n{context}"));
    // Each round: at least 3 + 3 transitions of the connection, 2 of the refused connect.
    assert!(
        summary.written >= u64::from(CONNECTIONS) * 8,
        "{summary:?}\n{context}"
    );
    assert_eq!(summary.lost, 0, "{context}");
    assert!(
        gap_lines(&finished.stderr).is_empty(),
        "a clean run infers nothing missing:\n{context}"
    );
}

#[test]
fn a_clean_ipv4_run_infers_no_missing_transition() {
    clean_run(
        "127.0.0.1:19001".parse().expect("address"),
        "127.0.0.1:19002".parse().expect("address"),
    );
}

#[test]
fn a_clean_ipv6_run_infers_no_missing_transition() {
    clean_run(
        "[::1]:19003".parse().expect("address"),
        "[::1]:19004".parse().expect("address"),
    );
}
