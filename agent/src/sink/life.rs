//! `--life` (and the binary invoked as `tcplife`): one line per closed session, in the layouts of
//! bcc's tcplife — `PID COMM LADDR LPORT RADDR RPORT TX_KB RX_KB MS`, `-w` adding `IP` and
//! widening, `-s` for CSV, `-T`/`-t` for the time columns — or one JSON object per session
//! (`--json`). `-x` adds `ERROR` (why the connection failed, `-` when it did not) and `RETRANS`
//! (segments retransmitted) before `MS`.
//!
//! A session sink: the session stage hands it each session's end. As tcplife, it prints the
//! sessions that opened and closed while tracing, from their `connect()` or accept to their
//! CLOSE (listeners, sessions first seen mid-way and sessions ended early are not lines). Unlike
//! tcplife, `PID`/`COMM` are the socket's owner (tcplife shows whoever was on the CPU at the
//! close), `-` when unknown; `TX_KB`/`RX_KB` count data bytes (tcplife's include the SYN and FIN).

use std::{
    fmt::Display,
    io::{self, ErrorKind, Write},
};

use chrono::{DateTime, TimeZone};
use serde::Serialize;

use super::{Elapsed, Health, SessionSink, SessionSinkAccount};
use crate::{
    clock::WallClock,
    config::TimeColumns,
    details::{Describe, SessionDetails},
    session::{Role, SessionEnded, StateEnded},
};

/// How the lines look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LifeFormat {
    /// tcplife's columns (`-w`: wide).
    Table { wide: bool },
    /// tcplife's `-s`.
    Csv,
    /// One JSON object per session.
    Json,
}

/// Writes one line per closed session.
pub struct LifeSink<W, Tz: TimeZone> {
    out: W,
    format: LifeFormat,
    extended: bool,
    time_columns: TimeColumns,
    clock: WallClock,
    zone: Tz,
    elapsed: Elapsed,
    header_written: bool,
    /// The reader went away, or writing failed (said once): nothing more is written.
    stopped: bool,
    /// Sessions printed.
    printed: u64,
}

/// The columns of a line after the time columns: the header's names, or a session's values.
struct Columns<'a> {
    pid: &'a dyn Display,
    comm: &'a dyn Display,
    ip: &'a dyn Display,
    laddr: &'a dyn Display,
    lport: &'a dyn Display,
    raddr: &'a dyn Display,
    rport: &'a dyn Display,
    tx: &'a dyn Display,
    rx: &'a dyn Display,
    error: &'a dyn Display,
    retransmits: &'a dyn Display,
    ms: &'a dyn Display,
}

/// The JSON form of a session's line.
#[derive(Serialize)]
struct LifeRecord<'a> {
    /// Kernel CLOCK_MONOTONIC ns of the CLOSE.
    ts_ns: u64,
    /// Wall-clock time of the CLOSE, RFC 3339 in UTC with nanoseconds.
    time: String,
    /// The owner's pid and command, `null` when unknown.
    pid: Option<u32>,
    comm: Option<String>,
    ip: u8,
    laddr: String,
    lport: u16,
    raddr: String,
    rport: u16,
    tx_bytes: u64,
    rx_bytes: u64,
    /// Nanoseconds from the first transition to CLOSE.
    span_ns: u64,
    ms: f64,
    retransmits: u32,
    srtt_us: Option<u32>,
    /// Why the connection failed, `null` when it did not.
    error: Option<&'a str>,
    /// Which end reset it, for a reset.
    reset: Option<&'static str>,
    cookie: u64,
    /// The owner's executable, when read from /proc.
    executable: Option<&'a str>,
}

impl<W: Write, Tz: TimeZone> LifeSink<W, Tz>
where
    Tz::Offset: std::fmt::Display,
{
    /// A sink writing `format` to `out`; time columns from `clock` in `zone`.
    pub fn new(
        out: W,
        format: LifeFormat,
        extended: bool,
        time_columns: TimeColumns,
        clock: WallClock,
        zone: Tz,
    ) -> Self {
        Self {
            out,
            format,
            extended,
            time_columns,
            clock,
            zone,
            elapsed: Elapsed::default(),
            header_written: false,
            stopped: false,
            printed: 0,
        }
    }

    fn write_header(&mut self) -> io::Result<()> {
        if self.format == LifeFormat::Json {
            return Ok(());
        }
        let csv = self.format == LifeFormat::Csv;
        if self.time_columns.clock {
            if csv {
                write!(self.out, "TIME,")?;
            } else {
                write!(self.out, "{:<8} ", "TIME")?;
            }
        }
        if self.time_columns.elapsed {
            if csv {
                write!(self.out, "TIME(s),")?;
            } else {
                write!(self.out, "{:<9} ", "TIME(s)")?;
            }
        }
        self.write_columns(&Columns {
            pid: &"PID",
            comm: &"COMM",
            ip: &"IP",
            laddr: &"LADDR",
            lport: &"LPORT",
            raddr: &"RADDR",
            rport: &"RPORT",
            tx: &"TX_KB",
            rx: &"RX_KB",
            error: &"ERROR",
            retransmits: &"RETRANS",
            ms: &"MS",
        })
    }

    /// The columns after the time columns, in the layout's widths: the header's names or a
    /// session's values.
    fn write_columns(&mut self, c: &Columns<'_>) -> io::Result<()> {
        let Columns {
            pid,
            comm,
            ip,
            laddr,
            lport,
            raddr,
            rport,
            tx,
            rx,
            error,
            retransmits,
            ms,
        } = c;
        match self.format {
            LifeFormat::Table { wide: false } => write!(
                self.out,
                "{pid:<5} {comm:<10.10} {laddr:<15} {lport:<5} {raddr:<15} {rport:<5} {tx:>5} \
                 {rx:>5} "
            )?,
            LifeFormat::Table { wide: true } => write!(
                self.out,
                "{pid:<5} {comm:<16.16} {ip:<2} {laddr:<26} {lport:<5} {raddr:<26} {rport:<5} \
                 {tx:>6} {rx:>6} "
            )?,
            LifeFormat::Csv => write!(
                self.out,
                "{pid},{comm},{ip},{laddr},{lport},{raddr},{rport},{tx},{rx},"
            )?,
            LifeFormat::Json => {}
        }
        if self.extended {
            if self.format == LifeFormat::Csv {
                write!(self.out, "{error},{retransmits},")?;
            } else {
                write!(self.out, "{error:<19} {retransmits:>7} ")?;
            }
        }
        writeln!(self.out, "{ms}")
    }

    fn write_session(
        &mut self,
        ended: &SessionEnded,
        details: &SessionDetails<'_>,
    ) -> io::Result<()> {
        if !self.header_written {
            self.write_header()?;
            self.header_written = true;
        }
        let session = &ended.session;
        let ends = &session.endpoints;
        let close = ended.close.unwrap_or_default();
        let span_ns = ended.end_ns.saturating_sub(session.start_ns);
        // tcplife's MS: whole microseconds, as milliseconds with two decimals.
        let ms = (span_ns / 1_000) as f64 / 1_000.0;
        let failure = ended.outcome.failure();
        let error = failure.map(|failure| failure.error_type());
        let owner = session.context.owner;
        if self.format == LifeFormat::Json {
            let record = LifeRecord {
                ts_ns: ended.end_ns,
                time: self
                    .clock
                    .utc(ended.end_ns)
                    .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
                pid: owner.map(|owner| owner.pid),
                comm: owner.map(|owner| owner.comm.to_str_lossy().into_owned()),
                ip: if ends.local_addr.is_ipv4() { 4 } else { 6 },
                laddr: ends.local_addr.to_string(),
                lport: ends.local_port,
                raddr: ends.remote_addr.to_string(),
                rport: ends.remote_port,
                tx_bytes: close.bytes_sent,
                rx_bytes: close.bytes_received,
                span_ns,
                ms,
                retransmits: close.retransmits,
                srtt_us: close.srtt_us,
                error: error.as_deref(),
                reset: failure
                    .and_then(|failure| failure.reset_direction())
                    .map(|direction| direction.as_str()),
                cookie: session.cookie,
                executable: details.process.map(|p| p.executable_name.as_str()),
            };
            serde_json::to_writer(&mut self.out, &record)?;
            return self.out.write_all(b"\n");
        }
        let csv = self.format == LifeFormat::Csv;
        if self.time_columns.clock {
            let time: DateTime<Tz> = self.clock.utc(ended.end_ns).with_timezone(&self.zone);
            if csv {
                write!(self.out, "{},", time.format("%H:%M:%S"))?;
            } else {
                write!(self.out, "{:<8} ", time.format("%H:%M:%S"))?;
            }
        }
        if self.time_columns.elapsed {
            let seconds = self.elapsed.seconds(ended.end_ns);
            if csv {
                write!(self.out, "{seconds:.6},")?;
            } else {
                write!(self.out, "{seconds:<9.6} ")?;
            }
        }
        let pid = owner.map_or_else(|| "-".to_owned(), |owner| owner.pid.to_string());
        let comm = owner.map_or_else(
            || "-".to_owned(),
            |owner| owner.comm.to_str_lossy().into_owned(),
        );
        let ip = if ends.local_addr.is_ipv4() { 4 } else { 6 };
        self.write_columns(&Columns {
            pid: &pid,
            comm: &comm,
            ip: &ip,
            laddr: &ends.local_addr.to_string(),
            lport: &ends.local_port,
            raddr: &ends.remote_addr.to_string(),
            rport: &ends.remote_port,
            tx: &(close.bytes_sent / 1024),
            rx: &(close.bytes_received / 1024),
            error: &error.as_deref().unwrap_or("-"),
            retransmits: &close.retransmits,
            ms: &format!("{ms:.2}"),
        })
    }

    fn result(&mut self, result: io::Result<()>) {
        if let Err(err) = result {
            if err.kind() != ErrorKind::BrokenPipe {
                eprintln!("tcpstates: writing the session lines: {err}");
            }
            self.stopped = true;
        }
    }
}

impl<W: Write, Tz: TimeZone> SessionSink for LifeSink<W, Tz>
where
    Tz::Offset: std::fmt::Display,
{
    fn state_ended(&mut self, _state: &StateEnded, _details: &mut dyn Describe) {}

    fn session_ended(&mut self, ended: &SessionEnded, details: &mut dyn Describe) {
        // As tcplife: sessions seen from their open to their CLOSE.
        let opened = matches!(ended.session.role, Role::Connect | Role::Accept);
        if self.stopped
            || !opened
            || ended.incomplete.is_some()
            || ended.session.continues.is_some()
        {
            return;
        }
        let written = self.write_session(ended, &details.details());
        if written.is_ok() {
            self.printed += 1;
        }
        self.result(written);
    }

    fn end_of_drain(&mut self) {
        if self.stopped {
            return;
        }
        // The header as soon as tracing runs (the first drain), as tcplife prints it at start.
        if !self.header_written {
            let header = self.write_header();
            self.header_written = true;
            self.result(header);
        }
        let flushed = self.out.flush();
        self.result(flushed);
    }

    fn report_growth(&mut self, _health: &Health) {}

    fn account(&self) -> SessionSinkAccount {
        SessionSinkAccount::Life {
            printed: self.printed,
        }
    }

    fn finish(mut self: Box<Self>, _health: &Health) -> SessionSinkAccount {
        self.end_of_drain();
        self.account()
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use agent_common::{
        correlation::{BootId, ConnectionIds},
        decode::{Close, Comm, Owner, TcpState},
        event::COMM_LEN,
        state::{ESTABLISHED, LAST_ACK, SYN_SENT},
    };
    use chrono::Utc;

    use super::*;
    use crate::{
        failure::Failure,
        session::{Context, Endpoints, Incomplete, Links, Outcome, Retransmits, Session},
        sink::fixtures::{self, SharedBuf},
    };

    /// A closed session of `role` owned by `pid`/`comm`, from `local` to `peer`, lasting
    /// `span_us`, that sent and received `bytes`.
    fn ended(
        role: Role,
        (pid, comm): (u32, &str),
        local: (&str, u16),
        peer: (&str, u16),
        span_us: u64,
        (sent, received): (u64, u64),
    ) -> SessionEnded {
        let mut name = [0; COMM_LEN];
        name[..comm.len()].copy_from_slice(comm.as_bytes());
        let start_ns = fixtures::FIRST_NS;
        SessionEnded {
            session: Session {
                ids: ConnectionIds::new(&BootId([1; 16]), u64::from(pid)),
                cookie: u64::from(pid),
                skaddr: 0xffff_8881_0685_e5c0,
                context: Context {
                    owner: Some(Owner {
                        pid,
                        comm: Comm::new(name),
                    }),
                    uid: 0,
                    netns: 1,
                    cgroup_id: 1,
                },
                role,
                start_ns,
                endpoints: Endpoints {
                    local_addr: local.0.parse::<IpAddr>().expect("address"),
                    local_port: local.1,
                    remote_addr: peer.0.parse::<IpAddr>().expect("address"),
                    remote_port: peer.1,
                },
                first_pid: 0,
                first_comm: Comm::new([0; COMM_LEN]),
                state: TcpState(ESTABLISHED),
                state_since_ns: None,
                states_done: 0,
                continues: None,
                reset_sent: false,
                found_at_start: false,
                state_start_unknown: false,
                retransmits: Retransmits::default(),
                links: Links::default(),
                indexed: false,
            },
            end_ns: start_ns + span_us * 1_000 + 999,
            last_state: TcpState(LAST_ACK),
            close: Some(Close {
                bytes_sent: sent,
                bytes_received: received,
                ..Close::default()
            }),
            outcome: Outcome::Normal,
            incomplete: None,
        }
    }

    /// bcc's own tcplife example sessions.
    fn examples() -> [SessionEnded; 2] {
        [
            ended(
                Role::Connect,
                (22598, "curl"),
                ("100.66.3.172", 61620),
                ("52.205.89.26", 80),
                91_790,
                (300, 1_500),
            ),
            ended(
                Role::Accept,
                (3277, "redis-server"),
                ("127.0.0.1", 28527),
                ("127.0.0.1", 46644),
                280,
                (0, 0),
            ),
        ]
    }

    fn render(format: LifeFormat, extended: bool, sessions: &[SessionEnded]) -> String {
        let buf = SharedBuf::default();
        let mut sink = Box::new(LifeSink::new(
            buf.clone(),
            format,
            extended,
            TimeColumns::default(),
            fixtures::clock(),
            Utc,
        ));
        sink.end_of_drain();
        for session in sessions {
            sink.session_ended(session, &mut SessionDetails::default());
        }
        let _ = sink.finish(&Health::default());
        buf.text()
    }

    #[test]
    fn lines_are_bccs_tcplife_byte_for_byte() {
        // Expected: bcc's printf formats applied to the same sessions.
        assert_eq!(
            render(LifeFormat::Table { wide: false }, false, &examples()),
            "PID   COMM       LADDR           LPORT RADDR           RPORT TX_KB RX_KB MS\n\
             22598 curl       100.66.3.172    61620 52.205.89.26    80        0     1 91.79\n\
             3277  redis-serv 127.0.0.1       28527 127.0.0.1       46644     0     0 0.28\n"
        );
        assert_eq!(
            render(LifeFormat::Csv, false, &examples()[..1]),
            "PID,COMM,IP,LADDR,LPORT,RADDR,RPORT,TX_KB,RX_KB,MS\n\
             22598,curl,4,100.66.3.172,61620,52.205.89.26,80,0,1,91.79\n"
        );
        let mut v6 = examples()[1].clone();
        v6.session.endpoints.local_addr = "::1".parse().expect("address");
        v6.session.endpoints.remote_addr = "::1".parse().expect("address");
        v6.close = Some(Close {
            bytes_sent: 10_500,
            ..Close::default()
        });
        assert_eq!(
            render(
                LifeFormat::Table { wide: true },
                false,
                &[examples()[0].clone(), v6]
            ),
            "PID   COMM             IP LADDR                      LPORT RADDR                      RPORT  TX_KB  RX_KB MS\n\
             22598 curl             4  100.66.3.172               61620 52.205.89.26               80         0      1 91.79\n\
             3277  redis-server     6  ::1                        28527 ::1                        46644     10      0 0.28\n"
        );
    }

    #[test]
    fn the_extended_layout_says_why_and_how_often_before_ms() {
        let mut refused = ended(
            Role::Connect,
            (501, "nc"),
            ("127.0.0.1", 40000),
            ("127.0.0.1", 9),
            30,
            (0, 0),
        );
        refused.outcome = Outcome::Failed(Failure::ConnectionRefused);
        refused.last_state = TcpState(SYN_SENT);
        let text = render(LifeFormat::Table { wide: false }, true, &[refused]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].ends_with("RX_KB ERROR               RETRANS MS"),
            "{text}"
        );
        let columns: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(columns[8..], ["connection_refused", "0", "0.03"], "{text}");
    }

    #[test]
    fn only_sessions_seen_from_open_to_close_are_lines() {
        let [connect, _] = examples();
        let mut listener = connect.clone();
        listener.session.role = Role::Listen;
        let mut unknown = connect.clone();
        unknown.session.role = Role::Unknown;
        let mut evicted = connect.clone();
        evicted.incomplete = Some(Incomplete::Evicted);
        let text = render(
            LifeFormat::Table { wide: false },
            false,
            &[listener, unknown, evicted, connect],
        );
        assert_eq!(
            text.lines().count(),
            2,
            "the header and the connect: {text}"
        );
    }

    #[test]
    fn json_has_one_object_per_session_with_bytes_and_the_owner() {
        let text = render(LifeFormat::Json, false, &examples()[..1]);
        let line: serde_json::Value = serde_json::from_str(text.trim()).expect("JSON");
        assert_eq!(line["pid"], 22598);
        assert_eq!(line["comm"], "curl");
        assert_eq!(
            (line["tx_bytes"].as_u64(), line["rx_bytes"].as_u64()),
            (Some(300), Some(1_500))
        );
        assert_eq!(line["ms"], 91.79);
        assert!(line["error"].is_null());
    }
}
