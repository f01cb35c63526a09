//! `-Y`: every state change also goes to the systemd journal with structured fields (read back
//! with `journalctl` from a real journald), while the text output continues on stdout.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use integration_tests::agent::{Agent, EVENT_TIMEOUT};
use integration_tests::events::{Event, Format, Layout, closed_sessions_on_port, expect_lives};
use integration_tests::journald::Journald;
use integration_tests::netns::Netns;
use integration_tests::traffic::{self, Closer, LISTENER};
use serde_json::{Map, Value};

fn field<'a>(entry: &'a Map<String, Value>, name: &str) -> &'a str {
    entry
        .get(name)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("journal entry without a string {name}: {entry:#?}"))
}

fn journal_test(server: SocketAddr) {
    let journal = Journald::ensure();
    let ns = Netns::create();
    let format = Format::Text(Layout::default());
    let agent = Agent::start(&["-Y"]);
    let agent_pid = agent.pid();
    traffic::connect_and_close(&ns, server, Duration::ZERO, Closer::Server);
    let lives = agent.await_stdout("the connection on stdout", EVENT_TIMEOUT, |lines| {
        closed_sessions_on_port(&format.events(lines), server.port(), 3)
    });
    let lives = expect_lives(
        &lives,
        &[
            LISTENER,
            Closer::Server.client_transitions(),
            Closer::Server.server_transitions(),
        ],
    );
    let family = if server.is_ipv4() { "IPV4" } else { "IPV6" };
    let other_family = if server.is_ipv4() { "IPV6" } else { "IPV4" };
    for (life, port_field) in [
        (&lives[0], "OBJECT_TCP_SOURCE_PORT"),
        (&lives[1], "OBJECT_TCP_DESTINATION_PORT"),
        (&lives[2], "OBJECT_TCP_SOURCE_PORT"),
    ] {
        let matches = [
            format!("_PID={agent_pid}"),
            format!("TCPSTATES_SKADDR={}", life[0].skaddr),
            format!("{port_field}={}", server.port()),
        ];
        let entries = journal.await_entries(&matches, life.len(), EVENT_TIMEOUT);
        assert_eq!(
            entries.len(),
            life.len(),
            "one entry per change: {entries:#?}"
        );
        for entry in &entries {
            let (old, new) = (
                field(entry, "OBJECT_TCP_OLD_STATE"),
                field(entry, "OBJECT_TCP_NEW_STATE"),
            );
            let event: &Event = life
                .iter()
                .find(|e| e.transition() == (old, new))
                .unwrap_or_else(|| {
                    panic!("journal has {old} -> {new}, stdout has not: {entry:#?}")
                });
            check_entry(entry, event, family, other_family);
        }
    }
    let finished = agent.stop(libc::SIGINT);
    assert_eq!(
        finished.code(),
        0,
        "stderr:\n{}",
        finished.stderr.join("\n")
    );
    drop(journal);
}

fn check_entry(entry: &Map<String, Value>, event: &Event, family: &str, other_family: &str) {
    let addr = |name: &str| {
        field(entry, name)
            .parse::<IpAddr>()
            .unwrap_or_else(|e| panic!("{name}: {e}: {entry:#?}"))
    };
    assert_eq!(field(entry, "SYSLOG_IDENTIFIER"), "tcpstates");
    assert_eq!(field(entry, "PRIORITY"), "5");
    assert_eq!(
        field(entry, "_TRANSPORT"),
        "journal",
        "sent with the native protocol"
    );
    assert_eq!(field(entry, "OBJECT_PID"), event.pid.to_string());
    assert_eq!(
        addr(&format!("OBJECT_{family}_SOURCE_ADDRESS")),
        event.laddr
    );
    assert_eq!(
        field(entry, "OBJECT_TCP_SOURCE_PORT"),
        event.lport.to_string()
    );
    assert_eq!(
        addr(&format!("OBJECT_{family}_DESTINATION_ADDRESS")),
        event.raddr
    );
    assert_eq!(
        field(entry, "OBJECT_TCP_DESTINATION_PORT"),
        event.rport.to_string()
    );
    for absent in ["SOURCE", "DESTINATION"] {
        let name = format!("OBJECT_{other_family}_{absent}_ADDRESS");
        assert!(
            !entry.contains_key(&name),
            "{name} in an {family} entry: {entry:#?}"
        );
    }
    let span_us: f64 = field(entry, "OBJECT_TCP_SPAN_TIME")
        .parse()
        .unwrap_or_else(|e| panic!("OBJECT_TCP_SPAN_TIME: {e}: {entry:#?}"));
    assert!(
        (span_us - event.ms * 1000.0).abs() <= 1.0,
        "OBJECT_TCP_SPAN_TIME {span_us} µs but MS {} on stdout: {entry:#?}",
        event.ms
    );
    let message = field(entry, "MESSAGE");
    assert!(
        message.contains(&event.oldstate) && message.contains(&event.newstate),
        "MESSAGE {message:?} does not name the change {} -> {}",
        event.oldstate,
        event.newstate
    );
}

#[test]
fn journal_gets_every_ipv4_change_with_its_fields() {
    journal_test("127.0.0.1:25001".parse().expect("address"));
}

#[test]
fn journal_gets_every_ipv6_change_with_its_fields() {
    journal_test("[::1]:25002".parse().expect("address"));
}
