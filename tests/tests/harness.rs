//! The harness itself, without the agent: namespaces isolate sockets and go away, journald
//! starts (or is found) and gives back what is written to its native socket, and the parsers
//! read the layouts they claim to.

use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use integration_tests::agent::parse_summary;
use integration_tests::events::{Layout, parse_json, parse_row, sessions};
use integration_tests::journald::{Journald, SOCKET};
use integration_tests::netns::Netns;

#[test]
fn namespace_holds_its_own_sockets_and_is_deleted() {
    let ns = Netns::create();
    let name = ns.name().to_owned();
    assert!(Path::new("/run/netns").join(&name).exists());
    assert_eq!(ns.live_tcp_sockets(), 0, "a new namespace has no sockets");
    let listener = ns.run(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listen"));
    assert_eq!(
        ns.live_tcp_sockets(),
        1,
        "the listener lives in the namespace"
    );
    drop(listener);
    ns.await_no_tcp_sockets(Duration::from_secs(5));
    drop(ns);
    assert!(!Path::new("/run/netns").join(&name).exists());
}

#[test]
fn journald_returns_a_native_entry() {
    let journal = Journald::ensure();
    let id = format!(
        "{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos()
    );
    let datagram = format!(
        "MESSAGE=harness check\nSYSLOG_IDENTIFIER=tcpstates-tests\nTCPSTATES_TEST_ID={id}\n"
    );
    UnixDatagram::unbound()
        .expect("socket")
        .send_to(datagram.as_bytes(), SOCKET)
        .expect("send to journald");
    let entries = journal.await_entries(
        &[format!("TCPSTATES_TEST_ID={id}")],
        1,
        Duration::from_secs(10),
    );
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["MESSAGE"], "harness check");
    assert_eq!(entries[0]["_TRANSPORT"], "journal");
}

#[test]
fn parsers_read_the_example_layouts() {
    let default = "ffff9fd7e8192000 0     swapper/5  100.66.100.185  63446 52.33.159.26    80    SYN_SENT    -> ESTABLISHED 1.373";
    let row = parse_row(default, Layout::default()).expect("default row");
    assert_eq!(row.event.comm, "swapper/5");
    assert_eq!(row.event.lport, 63446);
    assert_eq!(row.event.transition(), ("SYN_SENT", "ESTABLISHED"));
    assert!((row.event.ms - 1.373).abs() < 1e-9);

    let wide = "1.100439  ffff8881068b0940 29659 curl             4  127.0.0.1                  0     127.0.0.1                  18080 CLOSE       -> SYN_SENT    0.000";
    let layout = Layout {
        timestamp: true,
        wide: true,
        ..Layout::default()
    };
    let row = parse_row(wide, layout).expect("wide row");
    assert_eq!(row.timestamp, Some(1.100439));
    assert_eq!(row.event.ip, Some(4));
    assert_eq!(row.event.rport, 18080);

    let csv = "04:11:56,0.000000,ffff888102e42500,9924,curl,6,::1,0,::1,18099,CLOSE,SYN_SENT,0.000";
    let layout = Layout {
        time: true,
        timestamp: true,
        csv: true,
        ..Layout::default()
    };
    let row = parse_row(csv, layout).expect("csv row");
    assert_eq!(row.time.as_deref(), Some("04:11:56"));
    assert_eq!(row.event.raddr.to_string(), "::1");

    let json = r#"{"ts_ns":5,"time":"2026-01-01T00:00:00Z","skaddr":"ffff888102e42500","cookie":4122,"pid":1,"comm":"x","owner_pid":7,"owner_comm":"curl","uid":0,"netns":4026531840,"cgroup_id":1,"ip":4,"laddr":"127.0.0.1","lport":0,"raddr":"127.0.0.1","rport":80,"oldstate":"CLOSE","newstate":"SYN_SENT","span_ns":0,"ms":0.0,"error":null,"close":null}"#;
    let parsed = parse_json(json).expect("json");
    assert_eq!(parsed.event.rport, 80);
    assert_eq!(
        (parsed.error.as_deref(), parsed.close.is_none()),
        (None, true)
    );
    assert_eq!(
        (
            parsed.cookie,
            parsed.owner_pid,
            parsed.owner_comm.as_deref()
        ),
        (4122, Some(7), Some("curl"))
    );
    let unknown = json
        .replace("\"owner_pid\":7", "\"owner_pid\":null")
        .replace("\"owner_comm\":\"curl\"", "\"owner_comm\":null");
    assert_eq!(parse_json(&unknown).expect("json").owner_pid, None);
    assert!(parse_json(&json.replace("\"ip\":4", "\"ip\":5")).is_err());
    assert!(parse_json(&json.replace("\"cookie\":4122,", "")).is_err());

    let header = "SKADDR           C-PID C-COMM     LADDR           LPORT RADDR           RPORT OLDSTATE    -> NEWSTATE    MS";
    assert!(parse_row(header, Layout::default()).is_none());
}

#[test]
fn sessions_split_at_close() {
    let line = |old: &str, new: &str| {
        let text = format!(
            "ffff000000000001 1     x          127.0.0.1       1     127.0.0.1       2     {old:<11} -> {new:<11} 0.000"
        );
        parse_row(&text, Layout::default()).expect("row").event
    };
    let events = [
        line("CLOSE", "SYN_SENT"),
        line("SYN_SENT", "CLOSE"),
        line("CLOSE", "LISTEN"),
    ];
    let lives = sessions(&events);
    assert_eq!(lives.len(), 2, "a transition to CLOSE ends a life");
    assert_eq!(lives[1][0].transition(), ("CLOSE", "LISTEN"));
}

#[test]
fn summary_line_parses() {
    let summary =
        parse_summary("tcpstates: 12 events written, 3 lost (1 ring buffer full, 2 BPF recursion)")
            .expect("summary");
    assert_eq!(
        (summary.written, summary.lost, summary.recursion),
        (12, 3, 2)
    );
    assert!(parse_summary("tcpstates: 12 events written").is_none());
}
