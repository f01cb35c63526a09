//! bcc's column layouts: the default one, and `-w` with an IP column and room for any IPv6
//! address (39 characters), each optionally led by `TIME` (`-T`) and `TIME(s)` (`-t`), and
//! optionally extended (`-x`) with the owner and location columns after `C-COMM`.

use std::io::{self, Write};

use agent_common::decode::StateChange;
use chrono::{DateTime, TimeZone};

use super::{EXTENDED_COLUMNS, Elapsed, Millis, Sink, extended_fields};
use crate::{clock::WallClock, config::TimeColumns};

/// Width of an address column in the wide layout: the longest IPv6 text form.
const WIDE_ADDR: usize = 39;

/// Which columns a table has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    /// `-w`: the IP column and room for IPv6 addresses.
    pub wide: bool,
    /// `-x`: owner PID and COMM, UID, NETNS, CGROUP and ERROR after `C-COMM`.
    pub extended: bool,
    /// Leading time columns.
    pub time_columns: TimeColumns,
}

/// Writes state changes as aligned columns.
pub struct TableSink<W, Tz> {
    out: W,
    wide: bool,
    extended: bool,
    time_columns: TimeColumns,
    clock: WallClock,
    zone: Tz,
    elapsed: Elapsed,
}

impl<W: Write, Tz: TimeZone> TableSink<W, Tz>
where
    Tz::Offset: std::fmt::Display,
{
    /// A sink writing to `out`; `zone` is the time zone of the `TIME` column.
    pub fn new(out: W, layout: Layout, clock: WallClock, zone: Tz) -> Self {
        Self {
            out,
            wide: layout.wide,
            extended: layout.extended,
            time_columns: layout.time_columns,
            clock,
            zone,
            elapsed: Elapsed::default(),
        }
    }

    fn write_time_columns(&mut self, ts_ns: u64) -> io::Result<()> {
        if self.time_columns.clock {
            let time: DateTime<Tz> = self.clock.utc(ts_ns).with_timezone(&self.zone);
            write!(self.out, "{:<8} ", time.format("%H:%M:%S"))?;
        }
        if self.time_columns.elapsed {
            write!(self.out, "{:<9.6} ", self.elapsed.seconds(ts_ns))?;
        }
        Ok(())
    }

    /// The `-x` columns, each followed by a space.
    fn write_extended<T: std::fmt::Display>(
        &mut self,
        [pid, comm, uid, netns, cgroup, error]: [T; 6],
    ) -> io::Result<()> {
        if !self.extended {
            return Ok(());
        }
        if self.wide {
            write!(
                self.out,
                "{pid:<7} {comm:<16.16} {uid:<6} {netns:<10} {cgroup:<8} {error:<19} "
            )
        } else {
            write!(
                self.out,
                "{pid:<7} {comm:<10.10} {uid:<6} {netns:<10} {cgroup:<8} {error:<19} "
            )
        }
    }
}

impl<W: Write, Tz: TimeZone> Sink for TableSink<W, Tz>
where
    Tz::Offset: std::fmt::Display,
{
    fn start(&mut self) -> io::Result<()> {
        if self.time_columns.clock {
            write!(self.out, "{:<8} ", "TIME")?;
        }
        if self.time_columns.elapsed {
            write!(self.out, "{:<9} ", "TIME(s)")?;
        }
        let (skaddr, pid, comm, ip, laddr, lport, raddr, rport, old, new, ms) = (
            "SKADDR", "C-PID", "C-COMM", "IP", "LADDR", "LPORT", "RADDR", "RPORT", "OLDSTATE",
            "NEWSTATE", "MS",
        );
        if self.wide {
            write!(self.out, "{skaddr:<16} {pid:<5} {comm:<16.16} ")?;
            self.write_extended(EXTENDED_COLUMNS)?;
            writeln!(
                self.out,
                "{ip:<2} {laddr:<WIDE_ADDR$} {lport:<5} {raddr:<WIDE_ADDR$} {rport:<5} \
                 {old:<11} -> {new:<11} {ms}"
            )?;
        } else {
            write!(self.out, "{skaddr:<16} {pid:<5} {comm:<10.10} ")?;
            self.write_extended(EXTENDED_COLUMNS)?;
            writeln!(
                self.out,
                "{laddr:<15} {lport:<5} {raddr:<15} {rport:<5} {old:<11} -> {new:<11} {ms}"
            )?;
        }
        self.out.flush()
    }

    fn write(&mut self, change: &StateChange) -> io::Result<()> {
        self.write_time_columns(change.ts_ns)?;
        let comm = change.comm.to_str_lossy();
        let ms = Millis(change.span_us());
        if self.wide {
            write!(
                self.out,
                "{:<16x} {:<5} {:<16.16} ",
                change.skaddr, change.pid, comm
            )?;
        } else {
            write!(
                self.out,
                "{:<16x} {:<5} {:<10.10} ",
                change.skaddr, change.pid, comm
            )?;
        }
        self.write_extended(extended_fields(change))?;
        if self.wide {
            writeln!(
                self.out,
                "{:<2} {:<WIDE_ADDR$} {:<5} {:<WIDE_ADDR$} {:<5} {:<11} -> {:<11} {ms}",
                change.ip_version(),
                change.local_addr,
                change.local_port,
                change.remote_addr,
                change.remote_port,
                change.oldstate,
                change.newstate,
            )
        } else {
            writeln!(
                self.out,
                "{:<15} {:<5} {:<15} {:<5} {:<11} -> {:<11} {ms}",
                change.local_addr,
                change.local_port,
                change.remote_addr,
                change.remote_port,
                change.oldstate,
                change.newstate,
            )
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv6Addr};

    use chrono::Utc;

    use super::*;
    use crate::sink::fixtures::{self, SharedBuf};

    fn render(wide: bool, clock: bool, elapsed: bool) -> String {
        render_layout(Layout {
            wide,
            extended: false,
            time_columns: TimeColumns { clock, elapsed },
        })
    }

    fn render_layout(layout: Layout) -> String {
        let buf = SharedBuf::default();
        fixtures::render(
            TableSink::new(buf.clone(), layout, fixtures::clock(), Utc),
            &buf,
        )
    }

    #[test]
    fn extended_layout_adds_owner_and_location_after_the_on_cpu_command() {
        let layout = Layout {
            extended: true,
            ..Layout::default()
        };
        assert_eq!(render_layout(layout), include_str!("fixtures/extended.txt"));
        let wide = Layout {
            wide: true,
            ..layout
        };
        assert_eq!(
            render_layout(wide),
            include_str!("fixtures/wide_extended.txt")
        );
    }

    #[test]
    fn an_unknown_owner_shows_dashes() {
        let buf = SharedBuf::default();
        let layout = Layout {
            extended: true,
            ..Layout::default()
        };
        let mut sink = TableSink::new(buf.clone(), layout, fixtures::clock(), Utc);
        let mut change = fixtures::example()[1];
        change.owner = None;
        sink.write(&change).expect("row");
        let row = buf.text();
        let columns: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            &columns[3..8],
            ["-", "-", "1000", "4026531840", "7859"],
            "{row}"
        );
    }

    #[test]
    fn default_layout_matches_the_seed_example_byte_for_byte() {
        assert_eq!(
            render(false, false, false),
            include_str!("fixtures/default.txt")
        );
    }

    #[test]
    fn wide_layout() {
        assert_eq!(
            render(true, false, false),
            include_str!("fixtures/wide.txt")
        );
    }

    #[test]
    fn elapsed_seconds_column() {
        assert_eq!(
            render(false, false, true),
            include_str!("fixtures/timestamp.txt")
        );
    }

    #[test]
    fn clock_column() {
        assert_eq!(
            render(false, true, false),
            include_str!("fixtures/time.txt")
        );
    }

    #[test]
    fn wide_layout_keeps_the_longest_ipv6_address_whole_and_aligned() {
        let buf = SharedBuf::default();
        let mut sink = TableSink::new(
            buf.clone(),
            Layout {
                wide: true,
                ..Layout::default()
            },
            fixtures::clock(),
            Utc,
        );
        let longest = IpAddr::V6(Ipv6Addr::new(
            0xfe80, 0xabcd, 0x1234, 0x5678, 0x9abc, 0xdef0, 0x1111, 0x2222,
        ));
        let mut change = fixtures::example()[1];
        change.local_addr = longest;
        change.remote_addr = longest;
        sink.start().expect("header");
        sink.write(&change).expect("row");
        let text = buf.text();
        let mut lines = text.lines();
        let header = lines.next().expect("header");
        let row = lines.next().expect("row");
        assert_eq!(longest.to_string().len(), WIDE_ADDR);
        assert!(row.contains(&longest.to_string()));
        for column in ["LPORT", "RADDR", "RPORT", "OLDSTATE", "MS"] {
            let at = header.find(column).expect(column);
            assert_eq!(
                &row[at - 1..at],
                " ",
                "{column} starts a column in the row too"
            );
            assert_ne!(
                &row[at..at + 1],
                " ",
                "{column} value starts where its header does"
            );
        }
    }

    #[test]
    fn the_extended_table_says_why_a_connection_failed_on_its_close_line() {
        let buf = SharedBuf::default();
        let mut sink = TableSink::new(
            buf.clone(),
            Layout {
                wide: false,
                extended: true,
                time_columns: TimeColumns::default(),
            },
            fixtures::clock(),
            chrono::Utc,
        );
        let refused = StateChange {
            oldstate: agent_common::decode::TcpState(agent_common::state::SYN_SENT),
            newstate: agent_common::decode::TcpState(agent_common::state::CLOSE),
            close: Some(agent_common::decode::Close {
                error: Some(libc::ETIMEDOUT.unsigned_abs()),
                ..agent_common::decode::Close::default()
            }),
            ..fixtures::example()[0]
        };
        sink.write(&refused).expect("write");
        let text = buf.text();
        let columns: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(columns[8], "connect_timeout", "{text}");
    }
}
