//! The text layouts on real events: bcc's exact headers; columns that stay aligned under their
//! headings (`-w` with a full 39-character IPv6 address); `-s` rows of 11 comma-separated fields;
//! `-t` seconds since the first event; `-T` local wall-clock time.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use chrono::{Local, NaiveTime, Timelike};
use integration_tests::agent::Finished;
use integration_tests::events::{Format, Layout, Row, expect_lives, parse_row, sessions};
use integration_tests::netns::Netns;
use integration_tests::scenario::trace_port;
use integration_tests::traffic::{self, Closer, Connection, LISTENER};

const COLUMNS: [&str; 11] = [
    "SKADDR", "C-PID", "C-COMM", "IP", "LADDR", "LPORT", "RADDR", "RPORT", "OLDSTATE", "NEWSTATE",
    "MS",
];

fn default_header() -> String {
    let c = COLUMNS;
    format!(
        "{:<16} {:<5} {:<10.10} {:<15} {:<5} {:<15} {:<5} {:<11} -> {:<11} {}",
        c[0], c[1], c[2], c[4], c[5], c[6], c[7], c[8], c[9], c[10]
    )
}

fn wide_header() -> String {
    let c = COLUMNS;
    format!(
        "{:<16} {:<5} {:<16.16} {:<2} {:<39} {:<5} {:<39} {:<5} {:<11} -> {:<11} {}",
        c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10]
    )
}

/// A full connection to `server` traced with `args`; returns it, the agent's output, and the
/// rows (with their lines) that touch the server's port, checked to be the three expected lives.
fn traced(
    args: &[&str],
    layout: Layout,
    server: SocketAddr,
    setup: impl FnOnce(&Netns),
) -> (Connection, Finished, Vec<(String, Row)>) {
    let ns = Netns::create();
    setup(&ns);
    let (connection, finished) = trace_port(args, Format::Text(layout), server.port(), 3, || {
        traffic::connect_and_close(&ns, server, Duration::ZERO, Closer::Server)
    });
    let mine: Vec<(String, Row)> = finished
        .stdout
        .iter()
        .filter_map(|line| parse_row(line, layout).map(|row| (line.clone(), row)))
        .filter(|(_, row)| row.event.has_port(server.port()))
        .collect();
    let rows: Vec<Row> = mine.iter().map(|(_, row)| row.clone()).collect();
    expect_lives(
        &sessions(&rows),
        &[
            LISTENER,
            Closer::Server.client_transitions(),
            Closer::Server.server_transitions(),
        ],
    );
    (connection, finished, mine)
}

/// Each heading of `header` with the character position where it starts.
fn headings(header: &str) -> Vec<(String, usize)> {
    let chars: Vec<char> = header.chars().collect();
    (0..chars.len())
        .filter(|&i| chars[i] != ' ' && (i == 0 || chars[i - 1] == ' '))
        .map(|i| {
            let word: String = chars[i..].iter().take_while(|c| **c != ' ').collect();
            (word, i)
        })
        .collect()
}

/// Asserts that every value of `line` starts exactly under its heading in `header`.
fn assert_aligned(header: &str, line: &str, row: &Row) {
    let chars: Vec<char> = line.chars().collect();
    let e = &row.event;
    for (heading, at) in headings(header) {
        let expected = match heading.as_str() {
            "TIME" => row.time.clone().expect("TIME column"),
            "TIME(s)" => format!("{:.6}", row.timestamp.expect("TIME(s) column")),
            "SKADDR" => e.skaddr.clone(),
            "C-PID" => e.pid.to_string(),
            "C-COMM" => e.comm.split(' ').next().unwrap_or_default().to_owned(),
            "IP" => e.ip.expect("IP column").to_string(),
            "LADDR" => e.laddr.to_string(),
            "LPORT" => e.lport.to_string(),
            "RADDR" => e.raddr.to_string(),
            "RPORT" => e.rport.to_string(),
            "OLDSTATE" => e.oldstate.clone(),
            "->" => "->".to_owned(),
            "NEWSTATE" => e.newstate.clone(),
            "MS" => format!("{:.3}", e.ms),
            other => panic!("unknown heading {other:?} in {header:?}"),
        };
        let found: String = chars
            .get(at..)
            .unwrap_or_default()
            .iter()
            .take_while(|c| **c != ' ')
            .collect();
        let starts_here = at == 0 || chars.get(at - 1) == Some(&' ');
        assert!(
            starts_here && found == expected,
            "{heading} should be {expected:?} at column {at}:\n{header}\n{line}"
        );
    }
    assert!(
        line.ends_with(&format!("{:.3}", e.ms)),
        "MS ends the row: {line:?}"
    );
}

#[test]
fn default_layout_has_bccs_header_and_aligned_columns() {
    let server: SocketAddr = "127.0.0.1:26001".parse().expect("address");
    let (_, finished, mine) = traced(&[], Layout::default(), server, |_| {});
    assert_eq!(finished.stdout[0], default_header());
    for (line, row) in &mine {
        assert_aligned(&default_header(), line, row);
        assert!(
            row.event.comm.chars().count() <= 10,
            "C-COMM is cut at 10: {line:?}"
        );
    }
}

#[test]
fn wide_layout_shows_a_full_ipv6_address_aligned() {
    let long: IpAddr = "fd00:1111:2222:3333:4444:5555:6666:7777"
        .parse()
        .expect("address");
    assert_eq!(long.to_string().len(), 39);
    let server = SocketAddr::new(long, 26002);
    let layout = Layout {
        wide: true,
        ..Layout::default()
    };
    let (_, finished, mine) = traced(&["-w"], layout, server, |ns| ns.add_loopback_address(long));
    assert_eq!(finished.stdout[0], wide_header());
    for (line, row) in &mine {
        assert_aligned(&wide_header(), line, row);
        assert_eq!(row.event.ip, Some(6), "{line:?}");
        assert_eq!(row.event.laddr, long, "{line:?}");
        assert!(
            line.contains(&long.to_string()),
            "address in full: {line:?}"
        );
    }
    let both_ends = mine
        .iter()
        .filter(|(_, row)| row.event.raddr == long)
        .count();
    assert_eq!(
        both_ends, 10,
        "client and accepted socket have the long address at both ends"
    );
}

#[test]
fn csv_rows_have_eleven_fields() {
    let server: SocketAddr = "127.0.0.1:26003".parse().expect("address");
    let layout = Layout {
        csv: true,
        ..Layout::default()
    };
    let (_, finished, mine) = traced(&["-s"], layout, server, |_| {});
    assert_eq!(finished.stdout[0], COLUMNS.join(","));
    for (line, row) in &mine {
        let fields: Vec<&str> = line.split(',').collect();
        assert_eq!(fields.len(), 11, "{line:?}");
        assert_eq!(fields[3], "4", "{line:?}");
        assert_eq!(
            fields[10],
            format!("{:.3}", row.event.ms),
            "MS with 3 decimals: {line:?}"
        );
    }
}

#[test]
fn csv_with_time_columns_puts_time_first() {
    let server: SocketAddr = "127.0.0.1:26006".parse().expect("address");
    let layout = Layout {
        time: true,
        timestamp: true,
        csv: true,
        ..Layout::default()
    };
    let (_, finished, mine) = traced(&["-stT"], layout, server, |_| {});
    assert_eq!(
        finished.stdout[0],
        format!("TIME,TIME(s),{}", COLUMNS.join(","))
    );
    for (line, row) in &mine {
        assert_eq!(line.split(',').count(), 13, "{line:?}");
        let time = row.time.as_deref().expect("TIME");
        assert!(
            NaiveTime::parse_from_str(time, "%H:%M:%S").is_ok(),
            "{line:?}"
        );
        assert!(row.timestamp.is_some_and(|t| t >= 0.0), "{line:?}");
    }
}

#[test]
fn timestamp_column_counts_seconds_from_the_first_event() {
    let server: SocketAddr = "127.0.0.1:26004".parse().expect("address");
    let layout = Layout {
        timestamp: true,
        ..Layout::default()
    };
    let (_, finished, mine) = traced(&["-t"], layout, server, |_| {});
    let header = format!("{:<9} {}", "TIME(s)", default_header());
    assert_eq!(finished.stdout[0], header);
    let first = parse_row(&finished.stdout[1], layout).expect("a first row");
    assert_eq!(
        first.timestamp,
        Some(0.0),
        "the first event is at 0 s: {:?}",
        finished.stdout[1]
    );
    for (line, row) in &mine {
        assert_aligned(&header, line, row);
    }
    let rows: Vec<Row> = mine.into_iter().map(|(_, row)| row).collect();
    for life in sessions(&rows) {
        let seconds: Vec<f64> = life.iter().map(|r| r.timestamp.expect("TIME(s)")).collect();
        assert!(
            seconds.windows(2).all(|pair| pair[0] <= pair[1]),
            "TIME(s) goes back within one socket: {seconds:?}"
        );
        let elapsed_ms = (seconds[seconds.len() - 1] - seconds[0]) * 1000.0;
        let total_ms: f64 = life[1..].iter().map(|r| r.event.ms).sum();
        assert!(
            (elapsed_ms - total_ms).abs() <= 1.0,
            "TIME(s) says {elapsed_ms} ms between first and last change, MS says {total_ms}"
        );
    }
}

#[test]
fn time_column_is_local_wall_clock() {
    let server: SocketAddr = "127.0.0.1:26005".parse().expect("address");
    let layout = Layout {
        time: true,
        ..Layout::default()
    };
    let (_, finished, mine) = traced(&["-T"], layout, server, |_| {});
    let header = format!("{:<8} {}", "TIME", default_header());
    assert_eq!(finished.stdout[0], header);
    let now = Local::now().time().num_seconds_from_midnight();
    for (line, row) in &mine {
        assert_aligned(&header, line, row);
        let time = NaiveTime::parse_from_str(row.time.as_deref().expect("TIME"), "%H:%M:%S")
            .unwrap_or_else(|e| panic!("TIME is not HH:MM:SS ({e}): {line:?}"));
        let diff = now.abs_diff(time.num_seconds_from_midnight());
        assert!(
            diff.min(86_400 - diff) <= 5,
            "TIME {time} is not local now: {line:?}"
        );
    }
}
