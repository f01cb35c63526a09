//! `--life` (and the binary invoked as `tcplife`): one line per closed session, as bcc's tcplife
//! prints them, against the real kernel in a namespace the test makes: connections carrying
//! known bytes each way and a refused connect, each a line with this process as its owner, its
//! bytes in KB and, with `-x`, why it failed.
//!
//! Ports: 34001..34010 (block 34xxx).

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::symlink;
use std::process::Command;

use integration_tests::agent::{self, Agent, EVENT_TIMEOUT, Finished};
use integration_tests::netns::Netns;

/// Bytes each client sends, and each accepted socket answers.
const TO_SERVER: usize = 100_000;
const TO_CLIENT: usize = 5_000;

/// One line of the `-x` table: `PID COMM LADDR LPORT RADDR RPORT TX_KB RX_KB ERROR RETRANS MS`.
#[derive(Debug, PartialEq)]
struct Life {
    pid: String,
    comm: String,
    lport: u16,
    rport: u16,
    tx_kb: u64,
    rx_kb: u64,
    error: String,
}

fn parse(line: &str) -> Option<Life> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let &[pid, comm, _, lport, _, rport, tx, rx, error, _retrans, ms] = fields.as_slice() else {
        return None;
    };
    ms.parse::<f64>().ok()?;
    Some(Life {
        pid: pid.to_owned(),
        comm: comm.to_owned(),
        lport: lport.parse().ok()?,
        rport: rport.parse().ok()?,
        tx_kb: tx.parse().ok()?,
        rx_kb: rx.parse().ok()?,
        error: error.to_owned(),
    })
}

/// In `ns`: `count` connections to `server` carrying [`TO_SERVER`] and [`TO_CLIENT`] bytes,
/// then a connect to `refused`, where nothing listens.
fn traffic(ns: &Netns, server: SocketAddr, refused: SocketAddr, count: usize) {
    ns.run(|| {
        let listener = TcpListener::bind(server).expect("listen");
        for _ in 0..count {
            let mut client = TcpStream::connect(server).expect("connect");
            let (mut accepted, _) = listener.accept().expect("accept");
            client.write_all(&[1; TO_SERVER]).expect("send");
            client
                .shutdown(std::net::Shutdown::Write)
                .expect("shutdown");
            let mut got = Vec::new();
            accepted.read_to_end(&mut got).expect("read");
            assert_eq!(got.len(), TO_SERVER);
            accepted.write_all(&[2; TO_CLIENT]).expect("answer");
            drop(accepted);
            got.clear();
            client.read_to_end(&mut got).expect("read the answer");
            assert_eq!(got.len(), TO_CLIENT);
        }
        assert!(
            TcpStream::connect(refused).is_err(),
            "nothing listens there"
        );
    });
    ns.await_no_tcp_sockets(EVENT_TIMEOUT);
}

fn lives(finished: &Finished) -> Vec<Life> {
    finished.stdout.iter().filter_map(|l| parse(l)).collect()
}

#[test]
fn each_closed_session_is_one_line_with_its_owner_bytes_and_error() {
    let server = SocketAddr::from((Ipv4Addr::LOCALHOST, 34001));
    let refused = SocketAddr::from((Ipv4Addr::LOCALHOST, 34002));
    let ns = Netns::create();
    let path = format!("/run/netns/{}", ns.name());
    let agent = Agent::start(&["--life", "-x", "--netns", &path]);
    traffic(&ns, server, refused, 3);
    let finished = agent.stop(libc::SIGINT);
    let context = format!(
        "stdout:\n{}\nstderr:\n{}",
        finished.stdout.join("\n"),
        finished.stderr.join("\n")
    );
    assert_eq!(finished.code(), 0, "{context}");
    let header = format!(
        "PID   COMM       LADDR           LPORT RADDR           RPORT TX_KB RX_KB {:<19} \
         RETRANS MS",
        "ERROR"
    );
    assert_eq!(finished.stdout.first(), Some(&header), "{context}");
    let lives = lives(&finished);
    let me = std::process::id().to_string();
    let clients: Vec<&Life> = lives.iter().filter(|l| l.rport == server.port()).collect();
    let accepted: Vec<&Life> = lives.iter().filter(|l| l.lport == server.port()).collect();
    assert_eq!((clients.len(), accepted.len()), (3, 3), "{context}");
    let kb = |bytes: usize| bytes as u64 / 1024;
    for life in &clients {
        assert_eq!(
            (&life.pid, life.tx_kb, life.rx_kb, life.error.as_str()),
            (&me, kb(TO_SERVER), kb(TO_CLIENT), "-"),
            "{context}"
        );
    }
    for life in &accepted {
        // The owner of an accepted socket is its listener's: this process too.
        assert_eq!(
            (&life.pid, life.tx_kb, life.rx_kb, life.error.as_str()),
            (&me, kb(TO_CLIENT), kb(TO_SERVER), "-"),
            "{context}"
        );
    }
    let refused_lines: Vec<&Life> = lives.iter().filter(|l| l.rport == refused.port()).collect();
    assert_eq!(refused_lines.len(), 1, "{context}");
    assert_eq!(refused_lines[0].error, "connection_refused", "{context}");
    // The listener is no line; 7 sessions in all.
    assert_eq!(lives.len(), 7, "{context}");
    assert!(
        finished
            .stderr
            .iter()
            .any(|l| l == "tcpstates: 7 sessions printed"),
        "{context}"
    );
}

#[test]
fn invoked_as_tcplife_it_prints_lives() {
    let server = SocketAddr::from((Ipv4Addr::LOCALHOST, 34003));
    let refused = SocketAddr::from((Ipv4Addr::LOCALHOST, 34004));
    let dir = std::env::temp_dir().join(format!("tcplife-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory for the link");
    let link = dir.join("tcplife");
    let _ = std::fs::remove_file(&link);
    symlink(agent::binary(), &link).expect("tcplife -> tcpstates");
    let ns = Netns::create();
    let path = format!("/run/netns/{}", ns.name());
    let mut command = Command::new(&link);
    command.args(["--netns", &path]);
    let agent = Agent::start_command(command);
    traffic(&ns, server, refused, 1);
    let finished = agent.stop(libc::SIGINT);
    let _ = std::fs::remove_dir_all(&dir);
    let context = finished.stdout.join("\n");
    assert_eq!(finished.code(), 0, "{context}");
    assert_eq!(
        finished.stdout.first().map(String::as_str),
        Some("PID   COMM       LADDR           LPORT RADDR           RPORT TX_KB RX_KB MS"),
        "{context}"
    );
    // The connection's two ends and the refused connect.
    assert_eq!(finished.stdout.len(), 1 + 3, "{context}");
}
