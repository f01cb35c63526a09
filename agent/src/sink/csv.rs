//! bcc's comma-separated layout (`-s`), optionally led by `TIME` and `TIME(s)`. Fields are
//! quoted only when they must be (a command name can hold a comma).

use std::io::{self, Write};

use agent_common::decode::StateChange;
use chrono::{DateTime, TimeZone};

use super::{EXTENDED_COLUMNS, Elapsed, Millis, Sink, extended_fields};
use crate::{clock::WallClock, config::TimeColumns};

/// Writes state changes as CSV records.
pub struct CsvSink<W: Write, Tz> {
    out: csv::Writer<W>,
    time_columns: TimeColumns,
    extended: bool,
    clock: WallClock,
    zone: Tz,
    elapsed: Elapsed,
    fields: Vec<String>,
}

impl<W: Write, Tz: TimeZone> CsvSink<W, Tz>
where
    Tz::Offset: std::fmt::Display,
{
    /// A sink writing to `out`, with the `-x` columns after `C-COMM` when `extended`; `zone` is
    /// the time zone of the `TIME` column.
    pub fn new(
        out: W,
        time_columns: TimeColumns,
        extended: bool,
        clock: WallClock,
        zone: Tz,
    ) -> Self {
        Self {
            out: csv::WriterBuilder::new().flexible(false).from_writer(out),
            time_columns,
            extended,
            clock,
            zone,
            elapsed: Elapsed::default(),
            fields: Vec::with_capacity(13),
        }
    }
}

impl<W: Write, Tz: TimeZone> Sink for CsvSink<W, Tz>
where
    Tz::Offset: std::fmt::Display,
{
    fn start(&mut self) -> io::Result<()> {
        let time = ["TIME"].into_iter().filter(|_| self.time_columns.clock);
        let elapsed = ["TIME(s)"]
            .into_iter()
            .filter(|_| self.time_columns.elapsed);
        let extended = EXTENDED_COLUMNS.into_iter().filter(|_| self.extended);
        let columns = [
            "IP", "LADDR", "LPORT", "RADDR", "RPORT", "OLDSTATE", "NEWSTATE", "MS",
        ];
        self.out.write_record(
            time.chain(elapsed)
                .chain(["SKADDR", "C-PID", "C-COMM"])
                .chain(extended)
                .chain(columns),
        )?;
        self.flush()
    }

    fn write(&mut self, change: &StateChange) -> io::Result<()> {
        self.fields.clear();
        if self.time_columns.clock {
            let time: DateTime<Tz> = self.clock.utc(change.ts_ns).with_timezone(&self.zone);
            self.fields.push(time.format("%H:%M:%S").to_string());
        }
        if self.time_columns.elapsed {
            self.fields
                .push(format!("{:.6}", self.elapsed.seconds(change.ts_ns)));
        }
        self.fields.extend([
            format!("{:x}", change.skaddr),
            change.pid.to_string(),
            change.comm.to_str_lossy().into_owned(),
        ]);
        if self.extended {
            self.fields.extend(extended_fields(change));
        }
        self.fields.extend([
            change.ip_version().to_string(),
            change.local_addr.to_string(),
            change.local_port.to_string(),
            change.remote_addr.to_string(),
            change.remote_port.to_string(),
            change.oldstate.to_string(),
            change.newstate.to_string(),
            Millis(change.span_us()).to_string(),
        ]);
        self.out.write_record(&self.fields)?;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use agent_common::{decode::Comm, event::COMM_LEN};
    use chrono::Utc;

    use super::*;
    use crate::sink::fixtures::{self, SharedBuf};

    fn render(time_columns: TimeColumns) -> String {
        render_extended(time_columns, false)
    }

    fn render_extended(time_columns: TimeColumns, extended: bool) -> String {
        let buf = SharedBuf::default();
        fixtures::render(
            CsvSink::new(buf.clone(), time_columns, extended, fixtures::clock(), Utc),
            &buf,
        )
    }

    #[test]
    fn csv_with_extended_columns() {
        assert_eq!(
            render_extended(TimeColumns::default(), true),
            include_str!("fixtures/csv_extended.txt")
        );
    }

    #[test]
    fn csv_layout() {
        assert_eq!(
            render(TimeColumns::default()),
            include_str!("fixtures/csv.txt")
        );
    }

    #[test]
    fn csv_with_time_and_timestamp_columns() {
        let both = TimeColumns {
            clock: true,
            elapsed: true,
        };
        assert_eq!(
            render(both),
            include_str!("fixtures/csv_time_timestamp.txt")
        );
    }

    #[test]
    fn a_comma_in_a_command_name_is_quoted() {
        let buf = SharedBuf::default();
        let mut sink = CsvSink::new(
            buf.clone(),
            TimeColumns::default(),
            false,
            fixtures::clock(),
            Utc,
        );
        let mut change = fixtures::example()[0];
        let mut comm = [0; COMM_LEN];
        comm[..3].copy_from_slice(b"a,b");
        change.comm = Comm::new(comm);
        sink.write(&change).expect("write");
        sink.flush().expect("flush");
        assert!(buf.text().starts_with("ffff9fd7e8192000,22384,\"a,b\",4,"));
    }
}
