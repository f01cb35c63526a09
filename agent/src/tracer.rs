//! The event loop: drain the ring buffer, decode each record, hand it to the sinks; report
//! every loss as it happens; on SIGINT or SIGTERM detach, drain what is left and account for
//! every event.

use std::{
    io::{self, ErrorKind},
    mem::size_of,
    time::Duration,
};

use agent_common::{
    decode::{StateChange, decode},
    event::RawStateChange,
};
use aya::maps::{MapData, MapError, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    time::{MissedTickBehavior, interval},
};

use crate::{
    clock::monotonic_now_ns,
    counters::Counts,
    details::DetailsCache,
    gaps::{GapTracker, Gaps},
    probe::Probe,
    session::{Completed, SessionTable},
    sink::{
        Sink,
        journal::JournalSink,
        otlp::{OtlpSink, export::ExportCounts, spans::SessionDetails},
    },
};

/// How often the ring buffer is drained when the kernel has not woken us (it only does when
/// the buffer fills past its wake-up mark): the bound on how late a line can appear.
const DRAIN_INTERVAL: Duration = Duration::from_millis(20);
/// Most records delivered before the loop looks at its signals and timers again: under a load
/// faster than the output, SIGINT and SIGTERM are still seen within one batch.
const DRAIN_BATCH: usize = 4096;
/// How often the loss counters are checked.
const LOSS_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Why tracing stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// Writing the output failed (other than the reader going away).
    #[error("writing output: {0}")]
    Output(#[source] io::Error),
    /// Polling the ring buffer or installing signal handlers failed.
    #[error("event loop: {0}")]
    Poll(#[source] io::Error),
    /// The kernel counters could not be read.
    #[error("reading the kernel counters: {0}")]
    Counters(#[source] MapError),
}

/// The account of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Events handed to the output.
    pub written: u64,
    /// Records that could not be decoded (too short or of an unknown family).
    pub undecodable: u64,
    /// Journal entries that could not be sent.
    pub journal_failures: u64,
    /// The kernel counters at the end.
    pub counts: Counts,
    /// Transitions inferred missing from gaps in sockets' chains of states.
    pub gaps: Gaps,
    /// With `--otlp`: what became of the spans.
    pub otlp: Option<OtlpSummary>,
}

/// The account of the OTLP export.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OtlpSummary {
    /// Span counts.
    pub spans: ExportCounts,
    /// Sessions ended early because the session table was full (or their CLOSE was lost).
    pub evictions: u64,
}

/// Session tracking and the OTLP sink it feeds.
pub struct Traces {
    sessions: SessionTable,
    details: DetailsCache,
    sink: OtlpSink,
    completed: Vec<Completed>,
    reported: ExportCounts,
}

impl Traces {
    /// Tracks sessions in `sessions`, describes their owners and locations with `details`, and
    /// exports them through `sink`.
    pub fn new(sessions: SessionTable, details: DetailsCache, sink: OtlpSink) -> Self {
        Self {
            sessions,
            details,
            sink,
            completed: Vec::new(),
            reported: ExportCounts::default(),
        }
    }

    fn observe(&mut self, change: &agent_common::decode::StateChange) {
        self.details.learn(change);
        let sink = &self.sink;
        self.sessions.observe(
            change,
            |cookie| sink.session_ids(cookie),
            &mut self.completed,
        );
        self.export_completed();
    }

    fn export_completed(&mut self) {
        for completed in self.completed.drain(..) {
            let details = match &completed {
                Completed::Session { session, .. } => self.details.describe(&session.context),
                Completed::State { .. } => SessionDetails::default(),
            };
            self.sink.export(&completed, details);
        }
    }

    /// Says on standard error how many more spans were dropped since the last report.
    fn report_drops(&mut self) {
        let counts = self.sink.counts();
        if counts.dropped > self.reported.dropped {
            eprintln!(
                "tcpstates: {} more spans dropped (OTLP queue full); {} so far",
                counts.dropped - self.reported.dropped,
                counts.dropped
            );
        }
        self.reported = counts;
    }

    /// Ends every open session now, exports what is queued and accounts for it.
    fn finish(mut self) -> OtlpSummary {
        let now_ns = monotonic_now_ns().unwrap_or(u64::MAX);
        let sink = &self.sink;
        self.sessions.end_all(
            now_ns,
            |cookie| sink.session_ids(cookie),
            &mut self.completed,
        );
        self.export_completed();
        let evictions = self.sessions.evictions();
        OtlpSummary {
            spans: self.sink.finish(),
            evictions,
        }
    }
}

/// Where decoded events go, and what happened to them.
struct Delivery {
    output: Option<Box<dyn Sink>>,
    journal: Option<JournalSink>,
    traces: Option<Traces>,
    gaps: GapTracker,
    summary: Summary,
    /// The reader of standard output went away: stop quietly.
    closed: bool,
}

impl Delivery {
    /// Delivers what the ring holds, at most `limit` records; returns whether it stopped at the
    /// limit with records left.
    fn drain(&mut self, ring: &mut RingBuf<MapData>, limit: usize) -> Result<bool, TraceError> {
        let mut any = false;
        let mut left = limit;
        while left > 0
            && let Some(item) = ring.next()
        {
            left -= 1;
            let decoded = decode_record(&item);
            drop(item);
            let Some(change) = decoded else {
                self.summary.undecodable += 1;
                continue;
            };
            self.gaps.observe(&change);
            if let Some(output) = &mut self.output
                && !self.closed
            {
                let written = output.write(&change);
                self.output_result(written)?;
            }
            if let Some(traces) = &mut self.traces {
                traces.observe(&change);
            }
            if let Some(journal) = &mut self.journal
                && let Err(err) = journal.write(&change)
            {
                if self.summary.journal_failures == 0 {
                    eprintln!("tcpstates: cannot log to the journal: {err}");
                }
                self.summary.journal_failures += 1;
            }
            self.summary.written += 1;
            any = true;
        }
        if let Some(output) = &mut self.output
            && any
            && !self.closed
        {
            let flushed = output.flush();
            self.output_result(flushed)?;
        }
        Ok(left == 0)
    }

    fn output_result(&mut self, result: io::Result<()>) -> Result<(), TraceError> {
        match result {
            Err(err) if err.kind() == ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            other => other.map_err(TraceError::Output),
        }
    }
}

/// Decodes one ring buffer record; `None` if it is too short or of an unknown family.
fn decode_record(item: &[u8]) -> Option<StateChange> {
    if item.len() < size_of::<RawStateChange>() {
        return None;
    }
    // SAFETY: the record is at least as long as `RawStateChange`, which is plain old data (any
    // bytes are a valid value); the read copes with any alignment.
    let raw = unsafe { item.as_ptr().cast::<RawStateChange>().read_unaligned() };
    decode(&raw).ok()
}

/// Traces until SIGINT or SIGTERM (or until standard output is closed), then detaches and
/// drains what is left. Prints the header and the ready line once tracing has started. `gaps`
/// checks every change for signs of transitions the kernel never reported.
pub async fn trace(
    probe: Probe,
    mut output: Option<Box<dyn Sink>>,
    journal: Option<JournalSink>,
    traces: Option<Traces>,
    gaps: GapTracker,
) -> Result<Summary, TraceError> {
    let mut interrupt = signal(SignalKind::interrupt()).map_err(TraceError::Poll)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(TraceError::Poll)?;
    if let Some(output) = &mut output {
        output.start().map_err(TraceError::Output)?;
    }
    eprintln!("Tracing TCP state changes. Hit Ctrl-C to end.");

    let mut delivery = Delivery {
        output,
        journal,
        traces,
        gaps,
        summary: Summary::default(),
        closed: false,
    };
    let mut reported = Counts::default();
    let mut reported_gaps = Gaps::default();
    let mut drain_tick = interval(DRAIN_INTERVAL);
    drain_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut loss_tick = interval(LOSS_CHECK_INTERVAL);
    loss_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);

    let Probe {
        mut attachment,
        events,
        counters,
    } = probe;
    // SAFETY: `RingBuf` owns its map's file descriptor, keeps it open while it lives, and
    // `as_raw_fd` always returns that descriptor; the `AsyncFd` owns the `RingBuf`.
    let mut events = unsafe { AsyncFd::register_with_interest(events, Interest::READABLE) }
        .map_err(|err| TraceError::Poll(err.into_parts().1))?;
    loop {
        tokio::select! {
            readable = events.readable_mut() => {
                let mut guard = readable.map_err(TraceError::Poll)?;
                // Left ready while records remain, so the loop comes back for them after
                // looking at the signals: a load faster than the output never starves them.
                if !delivery.drain(guard.get_inner_mut(), DRAIN_BATCH)? {
                    guard.clear_ready();
                }
            }
            _ = drain_tick.tick() => {
                delivery.drain(events.get_mut(), DRAIN_BATCH)?;
            }
            _ = loss_tick.tick() => {
                let counts = counters.read().map_err(TraceError::Counters)?;
                report_growth(&reported, &counts);
                reported = counts;
                let gaps = delivery.gaps.gaps();
                report_gap_growth(&reported_gaps, &gaps);
                reported_gaps = gaps;
                if let Some(traces) = &mut delivery.traces {
                    traces.report_drops();
                }
            }
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
        }
        if delivery.closed {
            break;
        }
    }
    attachment.detach();
    // Detached, the ring holds a bounded number of records: deliver them all.
    delivery.drain(events.get_mut(), usize::MAX)?;
    delivery.summary.counts = counters.read().map_err(TraceError::Counters)?;
    report_growth(&reported, &delivery.summary.counts);
    delivery.summary.gaps = delivery.gaps.gaps();
    report_gap_growth(&reported_gaps, &delivery.summary.gaps);
    delivery.summary.otlp = delivery.traces.take().map(Traces::finish);
    Ok(delivery.summary)
}

/// Says on standard error how many more events were lost since the last report.
fn report_growth(before: &Counts, now: &Counts) {
    if now.lost() > before.lost() {
        eprintln!(
            "tcpstates: {} more events lost; {now} so far",
            now.lost() - before.lost()
        );
    }
}

/// Says on standard error how many more transitions were inferred missing since the last report.
fn report_gap_growth(before: &Gaps, now: &Gaps) {
    if now.missing() > before.missing() {
        eprintln!(
            "tcpstates: {} more transitions missing (inferred; the kernel ran no program for \
             them); {} so far",
            now.missing() - before.missing(),
            now.missing()
        );
    }
}

#[cfg(test)]
mod tests {
    use agent_common::state::{AF_INET, AF_INET6};
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 1024,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// Any bytes the ring buffer could hold, of any length: decoded or refused, never a
        /// panic, and a decoded record says what its bytes say.
        #[test]
        fn any_record_decodes_or_is_refused(
            bytes in prop::collection::vec(any::<u8>(), 0..2 * size_of::<RawStateChange>()),
            family in prop_oneof![Just(AF_INET), Just(AF_INET6), any::<u16>()],
        ) {
            let mut bytes = bytes;
            let offset = core::mem::offset_of!(RawStateChange, family);
            if bytes.len() >= offset + 2 {
                bytes[offset..offset + 2].copy_from_slice(&family.to_ne_bytes());
            }
            let decoded = decode_record(&bytes);
            if bytes.len() < size_of::<RawStateChange>() {
                prop_assert!(decoded.is_none());
            } else {
                prop_assert_eq!(decoded.is_some(), family == AF_INET || family == AF_INET6);
                if let Some(change) = decoded {
                    // SAFETY: as in `decode_record`: long enough, plain old data, unaligned read.
                    let raw = unsafe { bytes.as_ptr().cast::<RawStateChange>().read_unaligned() };
                    prop_assert_eq!((change.cookie, change.skaddr), (raw.cookie, raw.skaddr));
                    prop_assert_eq!((change.oldstate.0, change.newstate.0), (raw.oldstate, raw.newstate));
                    prop_assert_eq!(change.ip_version(), if family == AF_INET { 4 } else { 6 });
                    // Printing never panics either, whatever the states and command.
                    let _ = (change.oldstate.to_string(), change.comm.to_str_lossy());
                }
            }
        }
    }
}
