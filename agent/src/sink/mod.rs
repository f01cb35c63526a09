//! Sinks: where decoded state changes and sessions go. A sink formats and writes; it never
//! parses, and never calls back upstream.
//!
//! Two kinds, each behind one trait: per-event sinks ([`Sink`]) get every state change as it
//! is decoded — standard output gets one of [`table`], [`csv`] or [`json`] (or nothing, with
//! `-q`), and [`journal`] can be added beside it with `-Y`; per-session sinks ([`SessionSink`])
//! get what the session stage ([`crate::session::stage`]) hands on — each state a session left
//! and each session's end — [`otlp`] with `--otlp`, [`metrics`] with `--metrics`, [`life`] with
//! `--life`.

pub mod csv;
pub mod journal;
pub mod json;
pub mod life;
pub mod metrics;
pub mod otlp;
pub mod table;

use std::{
    borrow::Cow,
    io::{self, Write},
};

use agent_common::decode::StateChange;
use chrono::Local;

use crate::{
    clock::WallClock,
    config::{Config, Format},
    counters::Counts,
    details::Describe,
    failure::Failure,
    session::{SessionBegan, SessionEnded, StateEnded},
    sink::{
        metrics::export::MetricsCounts,
        otlp::{export::ExportCounts, sampling::SamplingCounts},
    },
};

/// A destination for state changes, one by one.
pub trait Sink {
    /// Writes what precedes the first change, such as a header.
    fn start(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// Writes one change. An error stops tracing, but for a closed pipe (the reader went
    /// away), which stops this sink only.
    fn write(&mut self, change: &StateChange) -> io::Result<()>;
    /// Pushes out whatever is buffered.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// Its line in the exit account, if it has anything to say.
    fn report(&self) -> Option<String> {
        None
    }
}

/// How the agent is doing: what its exit account says, so far. The session stage hands it to
/// its sinks every second and as they finish.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// The kernel's counts of events lost and skipped.
    pub kernel: Counts,
    /// Sessions ended early (the session table full, or their CLOSE lost).
    pub evictions: u64,
    /// With `--otlp`: what became of the spans.
    pub spans: Option<ExportCounts>,
    /// With `--otlp`: which sessions the sampler and the keep rules kept.
    pub sampling: Option<SamplingCounts>,
}

/// A destination for sessions: what the session stage hands on.
pub trait SessionSink {
    /// A session began, in the state its socket is in.
    fn session_began(&mut self, _began: &SessionBegan) {}
    /// A socket found open when tracing started (and told as begun) is gone without a
    /// transition seen: no session came of it.
    fn session_vanished(&mut self, _found: &SessionBegan) {}
    /// A session left a state; `details` describe the session's owner and location for the
    /// first state of a trace (empty for the later ones), when asked.
    fn state_ended(&mut self, state: &StateEnded, details: &mut dyn Describe);
    /// A session ended (closed, evicted, or at shutdown); `details` describe its owner and
    /// where its socket lives, when asked.
    fn session_ended(&mut self, session: &SessionEnded, details: &mut dyn Describe);
    /// A drain of the ring buffer is over (at least every 20 ms): push out what is buffered.
    fn end_of_drain(&mut self) {}
    /// Says on standard error what went wrong since it was last asked (called every second,
    /// with the agent's `health` so far).
    fn report_growth(&mut self, health: &Health);
    /// Its account so far.
    fn account(&self) -> SessionSinkAccount;
    /// Delivers what it still holds (within its own deadline) and returns its account;
    /// `health` is the agent's at the end, with the accounts of the sinks finished before it.
    fn finish(self: Box<Self>, health: &Health) -> SessionSinkAccount;
}

/// The exit account of a [`SessionSink`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionSinkAccount {
    /// `--otlp`: what became of the spans, and which sessions were sampled out.
    Otlp {
        /// The spans.
        spans: ExportCounts,
        /// The sessions, by the sampler's and the keep rules' decision.
        sampling: SamplingCounts,
    },
    /// `--life`: the session lines printed.
    Life {
        /// Sessions printed.
        printed: u64,
    },
    /// `--metrics`: what became of the metric exports.
    Metrics(MetricsCounts),
}

/// The standard-output sink that `config` asks for, writing to `out`; none with `-q` or
/// `--life` (see [`life_output`]).
pub fn output<W: Write + 'static>(
    config: &Config,
    clock: WallClock,
    out: W,
) -> Option<Box<dyn Sink>> {
    if config.life {
        return None;
    }
    Some(match config.format {
        Format::Quiet => return None,
        Format::Table => Box::new(table::TableSink::new(
            out,
            table::Layout {
                wide: config.wide,
                extended: config.extended,
                time_columns: config.time_columns,
            },
            clock,
            Local,
        )),
        Format::Csv => Box::new(csv::CsvSink::new(
            out,
            config.time_columns,
            config.extended,
            clock,
            Local,
        )),
        Format::Json => Box::new(json::JsonSink::new(out, clock)),
    })
}

/// With `--life`: the session sink writing `config`'s format to `out`.
pub fn life_output<W: Write + 'static>(
    config: &Config,
    clock: WallClock,
    out: W,
) -> Option<Box<dyn SessionSink>> {
    let format = match config.format {
        Format::Quiet => return None,
        Format::Table => life::LifeFormat::Table { wide: config.wide },
        Format::Csv => life::LifeFormat::Csv,
        Format::Json => life::LifeFormat::Json,
    };
    config.life.then(|| {
        Box::new(life::LifeSink::new(
            out,
            format,
            config.extended,
            config.time_columns,
            clock,
            Local,
        )) as Box<dyn SessionSink>
    })
}

/// Headers of the `-x` columns, which follow `C-COMM`: the socket's owner (the process that
/// connected or listened), its uid, network namespace inode and cgroup id, and at CLOSE why the
/// connection failed (its `error.type`).
const EXTENDED_COLUMNS: [&str; 6] = ["PID", "COMM", "UID", "NETNS", "CGROUP", "ERROR"];

/// What the `-x` columns show for `change`: `-` for the PID and COMM of an unknown owner, and
/// for no error.
fn extended_fields(change: &StateChange) -> [String; 6] {
    let (pid, comm) = match &change.owner {
        Some(owner) => (
            owner.pid.to_string(),
            owner.comm.to_str_lossy().into_owned(),
        ),
        None => ("-".to_owned(), "-".to_owned()),
    };
    [
        pid,
        comm,
        change.uid.to_string(),
        change.netns.to_string(),
        change.cgroup_id.to_string(),
        error_type(change).map_or_else(|| "-".to_owned(), Cow::into_owned),
    ]
}

/// Why the connection failed, on its CLOSE line: what the socket reported as it closed (a reset
/// this end sends after its CLOSE, as an `SO_LINGER` 0 close does, is not known yet).
fn error_type(change: &StateChange) -> Option<Cow<'static, str>> {
    Failure::of_close(change, false).map(Failure::error_type)
}

/// Seconds since the first event, as the `TIME(s)` column shows them.
#[derive(Debug, Default)]
struct Elapsed {
    first_ns: Option<u64>,
}

impl Elapsed {
    fn seconds(&mut self, ts_ns: u64) -> f64 {
        let first = *self.first_ns.get_or_insert(ts_ns);
        ts_ns.saturating_sub(first) as f64 / 1e9
    }
}

/// Duration in milliseconds with three decimals, from whole microseconds (bcc's `MS`).
struct Millis(u64);

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:03}", self.0 / 1_000, self.0 % 1_000)
    }
}

#[cfg(test)]
mod fixtures {
    //! The example session of the seeds' `tcpstates_example.txt`, as kernel events.
    use std::{
        cell::RefCell,
        io::{self, Write},
        net::{IpAddr, Ipv4Addr},
        rc::Rc,
    };

    use agent_common::{
        decode::{Comm, Owner, StateChange, TcpState},
        event::COMM_LEN,
    };

    use crate::clock::WallClock;

    /// Kernel time of the first event.
    pub const FIRST_NS: u64 = 3_600_000_000_000;

    /// A clock that puts [`FIRST_NS`] at 2018-03-20 09:41:07.250 UTC.
    pub fn clock() -> WallClock {
        WallClock::from_epoch_at_boot_ns(1_521_538_867_250_000_000 - i128::from(FIRST_NS))
    }

    fn comm(name: &str) -> Comm {
        let mut bytes = [0; COMM_LEN];
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        Comm::new(bytes)
    }

    /// (pid, comm, lport, oldstate, newstate, span µs) of each line of the example.
    const LINES: [(u32, &str, u16, u32, u32, u64); 5] = [
        (22384, "curl", 0, 7, 2, 0),
        (0, "swapper/5", 63446, 2, 1, 1_373),
        (22384, "curl", 63446, 1, 4, 176_042),
        (0, "swapper/5", 63446, 4, 5, 536),
        (0, "swapper/5", 63446, 5, 7, 6),
    ];

    /// The example's five events; each happens `span` after the previous one.
    pub fn example() -> Vec<StateChange> {
        let mut ts_ns = FIRST_NS;
        LINES
            .iter()
            .map(|&(pid, name, lport, old, new, span_us)| {
                ts_ns += span_us * 1_000;
                StateChange {
                    ts_ns,
                    skaddr: 0xffff_9fd7_e819_2000,
                    cookie: 4122,
                    owner: Some(Owner {
                        pid: 22384,
                        comm: comm("curl"),
                    }),
                    uid: 1000,
                    netns: 4_026_531_840,
                    cgroup_id: 7859,
                    span_ns: span_us * 1_000 + 999,
                    pid,
                    comm: comm(name),
                    local_addr: IpAddr::V4(Ipv4Addr::new(100, 66, 100, 185)),
                    local_port: lport,
                    remote_addr: IpAddr::V4(Ipv4Addr::new(52, 33, 159, 26)),
                    remote_port: 80,
                    oldstate: TcpState(old),
                    newstate: TcpState(new),
                    reset_received: false,
                    close: None,
                }
            })
            .collect()
    }

    /// A writer whose bytes stay readable after the sink that owns a clone of it is gone.
    #[derive(Clone, Default)]
    pub struct SharedBuf(Rc<RefCell<Vec<u8>>>);

    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.borrow_mut().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl SharedBuf {
        /// Takes what was written so far.
        pub fn text(&self) -> String {
            String::from_utf8(self.0.take()).expect("UTF-8 output")
        }
    }

    /// Runs `sink`, which writes to `buf`, over the example and returns what it wrote.
    pub fn render(mut sink: impl super::Sink, buf: &SharedBuf) -> String {
        sink.start().expect("start");
        for change in example() {
            sink.write(&change).expect("write");
        }
        sink.flush().expect("flush");
        buf.text()
    }
}
