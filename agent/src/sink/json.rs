//! One JSON object per line (`--json`), with every field and the kernel timestamp in ns.

use std::{
    borrow::Cow,
    io::{self, Write},
};

use agent_common::decode::StateChange;
use serde::Serialize;

use super::Sink;
use crate::clock::WallClock;

/// Writes state changes as JSON lines.
pub struct JsonSink<W> {
    out: W,
    clock: WallClock,
}

/// The JSON form of a [`StateChange`].
#[derive(Serialize)]
struct Record<'a> {
    /// Kernel CLOCK_MONOTONIC nanoseconds.
    ts_ns: u64,
    /// Wall-clock time, RFC 3339 in UTC with nanoseconds.
    time: String,
    skaddr: String,
    /// The socket's cookie (`SO_COOKIE`).
    cookie: u64,
    pid: u32,
    comm: &'a str,
    /// The owner's pid and command, `null` when unknown.
    owner_pid: Option<u32>,
    owner_comm: Option<String>,
    uid: u32,
    netns: u32,
    cgroup_id: u64,
    ip: u8,
    laddr: String,
    lport: u16,
    raddr: String,
    rport: u16,
    oldstate: String,
    newstate: String,
    span_ns: u64,
    ms: f64,
    /// At CLOSE: why the connection failed (its `error.type`), `null` when it did not.
    error: Option<Cow<'static, str>>,
    /// At CLOSE: what the socket reported as it closed; `null` on other transitions.
    close: Option<CloseRecord>,
}

/// The JSON form of what a socket reported as it closed.
#[derive(Serialize)]
struct CloseRecord {
    bytes_sent: u64,
    bytes_received: u64,
    retransmits: u32,
    srtt_us: Option<u32>,
    min_rtt_us: Option<u32>,
    /// The socket's errno (`sk_err`), `null` for none.
    errno: Option<u32>,
}

impl<W: Write> JsonSink<W> {
    /// A sink writing to `out`.
    pub fn new(out: W, clock: WallClock) -> Self {
        Self { out, clock }
    }
}

impl<W: Write> Sink for JsonSink<W> {
    fn start(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn write(&mut self, change: &StateChange) -> io::Result<()> {
        let comm = change.comm.to_str_lossy();
        let record = Record {
            ts_ns: change.ts_ns,
            time: self
                .clock
                .utc(change.ts_ns)
                .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            skaddr: format!("{:x}", change.skaddr),
            cookie: change.cookie,
            pid: change.pid,
            comm: &comm,
            owner_pid: change.owner.map(|owner| owner.pid),
            owner_comm: change
                .owner
                .map(|owner| owner.comm.to_str_lossy().into_owned()),
            uid: change.uid,
            netns: change.netns,
            cgroup_id: change.cgroup_id,
            ip: change.ip_version(),
            laddr: change.local_addr.to_string(),
            lport: change.local_port,
            raddr: change.remote_addr.to_string(),
            rport: change.remote_port,
            oldstate: change.oldstate.to_string(),
            newstate: change.newstate.to_string(),
            span_ns: change.span_ns,
            ms: change.span_ns as f64 / 1e6,
            error: super::error_type(change),
            close: change.close.map(|close| CloseRecord {
                bytes_sent: close.bytes_sent,
                bytes_received: close.bytes_received,
                retransmits: close.retransmits,
                srtt_us: close.srtt_us,
                min_rtt_us: close.min_rtt_us,
                errno: close.error,
            }),
        };
        serde_json::to_writer(&mut self.out, &record)?;
        self.out.write_all(b"\n")
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use agent_common::{
        decode::{Close, TcpState},
        state::{CLOSE, SYN_SENT},
    };

    use super::*;
    use crate::sink::fixtures::{self, SharedBuf};

    #[test]
    fn one_object_per_line_with_every_field() {
        let buf = SharedBuf::default();
        let text = fixtures::render(JsonSink::new(buf.clone(), fixtures::clock()), &buf);
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).expect("each line is JSON"))
            .collect();
        assert_eq!(lines.len(), 5);
        let second = &lines[1];
        assert_eq!(second["ts_ns"], fixtures::FIRST_NS + 1_373_000);
        assert_eq!(second["time"], "2018-03-20T09:41:07.251373000Z");
        assert_eq!(second["skaddr"], "ffff9fd7e8192000");
        assert_eq!(second["pid"], 0);
        assert_eq!(second["comm"], "swapper/5");
        assert_eq!(second["ip"], 4);
        assert_eq!(second["laddr"], "100.66.100.185");
        assert_eq!(second["lport"], 63446);
        assert_eq!(second["raddr"], "52.33.159.26");
        assert_eq!(second["rport"], 80);
        assert_eq!(second["oldstate"], "SYN_SENT");
        assert_eq!(second["newstate"], "ESTABLISHED");
        assert_eq!(second["span_ns"], 1_373_999);
        assert_eq!(second["ms"], 1.373999);
        assert_eq!(second["cookie"], 4122);
        assert_eq!(second["owner_pid"], 22384);
        assert_eq!(second["owner_comm"], "curl");
        assert_eq!(second["uid"], 1000);
        assert_eq!(second["netns"], 4_026_531_840u64);
        assert_eq!(second["cgroup_id"], 7859);
    }

    #[test]
    fn an_unknown_owner_is_null() {
        let buf = SharedBuf::default();
        let mut sink = JsonSink::new(buf.clone(), fixtures::clock());
        let mut change = fixtures::example()[1];
        change.owner = None;
        sink.write(&change).expect("write");
        let line: serde_json::Value = serde_json::from_str(&buf.text()).expect("JSON");
        assert!(line["owner_pid"].is_null() && line["owner_comm"].is_null());
    }

    #[test]
    fn a_close_line_says_why_the_connection_failed_and_what_it_carried() {
        let buf = SharedBuf::default();
        let mut sink = JsonSink::new(buf.clone(), fixtures::clock());
        let refused = StateChange {
            oldstate: TcpState(SYN_SENT),
            newstate: TcpState(CLOSE),
            close: Some(Close {
                error: Some(libc::ECONNREFUSED.unsigned_abs()),
                ..Close::default()
            }),
            ..fixtures::example()[0]
        };
        let closed = StateChange {
            newstate: TcpState(CLOSE),
            close: Some(Close {
                bytes_sent: 100_000,
                bytes_received: 5_000,
                srtt_us: Some(40),
                ..Close::default()
            }),
            ..fixtures::example()[4]
        };
        for change in [refused, closed, fixtures::example()[1]] {
            sink.write(&change).expect("write");
        }
        let lines: Vec<serde_json::Value> = buf
            .text()
            .lines()
            .map(|line| serde_json::from_str(line).expect("JSON"))
            .collect();
        assert_eq!(lines[0]["error"], "connection_refused");
        assert_eq!(lines[0]["close"]["errno"], libc::ECONNREFUSED);
        assert!(lines[1]["error"].is_null());
        assert_eq!(lines[1]["close"]["bytes_sent"], 100_000);
        assert_eq!(lines[1]["close"]["bytes_received"], 5_000);
        assert_eq!(lines[1]["close"]["srtt_us"], 40);
        assert!(lines[1]["close"]["min_rtt_us"].is_null());
        assert!(lines[2]["error"].is_null() && lines[2]["close"].is_null());
    }
}
