//! The event loop: drain the ring buffer, decode each record, hand it to the gap tracker, the
//! per-event sinks and the session stage; report every loss as it happens; on SIGINT or SIGTERM
//! detach, drain what is left and account for every event.

use std::{
    io::{self, ErrorKind},
    mem::size_of,
    time::Duration,
};

use agent_common::{
    decode::{Close, ResetSent, Retransmit, StateChange, decode},
    event::{RawClosed, RawResetSent, RawRetransmit, RawStateChange},
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
    gaps::{GapTracker, Gaps},
    probe::Probe,
    session::stage::{SessionStage, SessionsSummary},
    sink::Sink,
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
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Events handed to the output.
    pub written: u64,
    /// Records that could not be decoded (too short or of an unknown family).
    pub undecodable: u64,
    /// The kernel counters at the end.
    pub counts: Counts,
    /// Transitions inferred missing from gaps in sockets' chains of states.
    pub gaps: Gaps,
    /// What the per-event sinks had to say.
    pub sink_reports: Vec<String>,
    /// With per-session sinks: the session stage's account and theirs.
    pub sessions: Option<SessionsSummary>,
}

/// Where decoded events go, and what happened to them.
struct Delivery {
    sinks: Vec<Box<dyn Sink>>,
    sessions: Option<SessionStage>,
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
            let change = match decoded {
                Some(Record::Change(change)) => change,
                Some(Record::ResetSent(reset)) => {
                    if let Some(sessions) = &mut self.sessions {
                        sessions.reset_sent(&reset);
                    }
                    continue;
                }
                Some(Record::Retransmit(retransmit)) => {
                    if let Some(sessions) = &mut self.sessions {
                        sessions.retransmitted(&retransmit);
                    }
                    continue;
                }
                None => {
                    self.summary.undecodable += 1;
                    continue;
                }
            };
            self.gaps.observe(&change);
            for sink in &mut self.sinks {
                if !self.closed {
                    let written = sink.write(&change);
                    output_result(&mut self.closed, written)?;
                }
            }
            if let Some(sessions) = &mut self.sessions {
                sessions.observe(&change);
            }
            self.summary.written += 1;
            any = true;
        }
        if any && !self.closed {
            for sink in &mut self.sinks {
                let flushed = sink.flush();
                output_result(&mut self.closed, flushed)?;
            }
        }
        if let Some(sessions) = &mut self.sessions {
            sessions.end_of_drain();
        }
        Ok(left == 0)
    }
}

/// Passes on a sink's error, but for a closed pipe, which sets `closed`: the reader went away.
fn output_result(closed: &mut bool, result: io::Result<()>) -> Result<(), TraceError> {
    match result {
        Err(err) if err.kind() == ErrorKind::BrokenPipe => {
            *closed = true;
            Ok(())
        }
        other => other.map_err(TraceError::Output),
    }
}

/// A ring buffer record, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Record {
    /// A state change (with what the socket reported, at CLOSE).
    Change(StateChange),
    /// A socket sent a reset.
    ResetSent(ResetSent),
    /// A socket (or a connection request) sent a segment again.
    Retransmit(Retransmit),
}

/// Decodes one ring buffer record, told apart by its length; `None` for a length no record has
/// or an unknown family.
fn decode_record(item: &[u8]) -> Option<Record> {
    /// The record at the start of `item`, which is exactly as long.
    fn read<T: Copy>(item: &[u8]) -> T {
        debug_assert_eq!(item.len(), size_of::<T>());
        // SAFETY: callers pass only the plain-old-data record types of `agent_common::event`
        // (any bytes are a valid value) for an `item` of exactly their size; the read copes
        // with any alignment.
        unsafe { item.as_ptr().cast::<T>().read_unaligned() }
    }
    match item.len() {
        len if len == size_of::<RawStateChange>() => decode(&read::<RawStateChange>(item))
            .ok()
            .map(Record::Change),
        len if len == size_of::<RawClosed>() => {
            let raw = read::<RawClosed>(item);
            let change = decode(&raw.change).ok()?;
            Some(Record::Change(StateChange {
                close: Some(Close::decode(&raw.close)),
                ..change
            }))
        }
        len if len == size_of::<RawResetSent>() => {
            let raw = read::<RawResetSent>(item);
            Some(Record::ResetSent(ResetSent {
                ts_ns: raw.ts_ns,
                skaddr: raw.skaddr,
                cookie: raw.cookie,
            }))
        }
        len if len == size_of::<RawRetransmit>() => Some(Record::Retransmit(Retransmit::decode(
            &read::<RawRetransmit>(item),
        ))),
        _ => None,
    }
}

/// Traces until SIGINT or SIGTERM (or until standard output is closed), then detaches and
/// drains what is left. Prints the header and the ready line once tracing has started. `gaps`
/// checks every change for signs of transitions the kernel never reported; `sinks` get every
/// change, `sessions` turns them into sessions for its own sinks.
pub async fn trace(
    probe: Probe,
    mut sinks: Vec<Box<dyn Sink>>,
    sessions: Option<SessionStage>,
    gaps: GapTracker,
) -> Result<Summary, TraceError> {
    let mut interrupt = signal(SignalKind::interrupt()).map_err(TraceError::Poll)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(TraceError::Poll)?;
    for sink in &mut sinks {
        sink.start().map_err(TraceError::Output)?;
    }
    eprintln!("Tracing TCP state changes. Hit Ctrl-C to end.");

    let mut delivery = Delivery {
        sinks,
        sessions,
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
        let mut more = false;
        tokio::select! {
            readable = events.readable_mut() => {
                let mut guard = readable.map_err(TraceError::Poll)?;
                // Left ready while records remain, so the loop comes back for them.
                more = delivery.drain(guard.get_inner_mut(), DRAIN_BATCH)?;
                if !more {
                    guard.clear_ready();
                }
            }
            _ = drain_tick.tick() => {
                more = delivery.drain(events.get_mut(), DRAIN_BATCH)?;
            }
            _ = loss_tick.tick() => {
                let counts = counters.read().map_err(TraceError::Counters)?;
                report_growth(&reported, &counts);
                let gaps = delivery.gaps.gaps();
                report_gap_growth(&reported_gaps, &gaps);
                reported_gaps = gaps;
                if let Some(sessions) = &mut delivery.sessions {
                    sessions.report_growth(&counts);
                }
                reported = counts;
            }
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
        }
        if delivery.closed {
            break;
        }
        if more {
            // The runtime reads signals and fires timers only when this task yields, and a
            // ring that stays ready never makes it: under a load faster than the output,
            // SIGINT would wait for the load to stop.
            tokio::task::yield_now().await;
        }
    }
    attachment.detach();
    // Detached, the ring holds a bounded number of records: deliver them all.
    delivery.drain(events.get_mut(), usize::MAX)?;
    delivery.summary.counts = counters.read().map_err(TraceError::Counters)?;
    report_growth(&reported, &delivery.summary.counts);
    delivery.summary.gaps = delivery.gaps.gaps();
    report_gap_growth(&reported_gaps, &delivery.summary.gaps);
    delivery.summary.sink_reports = delivery
        .sinks
        .iter()
        .filter_map(|sink| sink.report())
        .collect();
    let now_ns = monotonic_now_ns().unwrap_or(u64::MAX);
    let kernel = delivery.summary.counts;
    delivery.summary.sessions = delivery
        .sessions
        .take()
        .map(|stage| stage.finish(now_ns, &kernel));
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

        /// Any bytes the ring buffer could hold, of any length (the records' own lengths
        /// most often): decoded or refused, never a panic, and a decoded record says what its
        /// bytes say.
        #[test]
        fn any_record_decodes_or_is_refused(
            bytes in prop::collection::vec(any::<u8>(), 2 * size_of::<RawClosed>()),
            len in prop_oneof![
                Just(size_of::<RawStateChange>()),
                Just(size_of::<RawClosed>()),
                Just(size_of::<RawResetSent>()),
                Just(size_of::<RawRetransmit>()),
                0..2 * size_of::<RawClosed>(),
            ],
            family in prop_oneof![Just(AF_INET), Just(AF_INET6), any::<u16>()],
        ) {
            let mut bytes = bytes[..len].to_vec();
            let is_change = len == size_of::<RawStateChange>() || len == size_of::<RawClosed>();
            if is_change {
                let offset = core::mem::offset_of!(RawStateChange, family);
                bytes[offset..offset + 2].copy_from_slice(&family.to_ne_bytes());
            }
            match decode_record(&bytes) {
                None => prop_assert!(
                    !(is_change && (family == AF_INET || family == AF_INET6))
                        && len != size_of::<RawResetSent>()
                        && len != size_of::<RawRetransmit>()
                ),
                Some(Record::Change(change)) => {
                    prop_assert!(is_change);
                    // SAFETY: as in `decode_record`: long enough, plain old data, unaligned read.
                    let raw = unsafe { bytes.as_ptr().cast::<RawStateChange>().read_unaligned() };
                    prop_assert_eq!((change.cookie, change.skaddr), (raw.cookie, raw.skaddr));
                    prop_assert_eq!((change.oldstate.0, change.newstate.0), (raw.oldstate, raw.newstate));
                    prop_assert_eq!(change.ip_version(), if family == AF_INET { 4 } else { 6 });
                    prop_assert_eq!(change.close.is_some(), len == size_of::<RawClosed>());
                    if let Some(close) = change.close {
                        // SAFETY: as above, for the whole CLOSE record.
                        let raw = unsafe { bytes.as_ptr().cast::<RawClosed>().read_unaligned() };
                        prop_assert_eq!(close.error.unwrap_or(0), raw.close.sk_err);
                        prop_assert!(close.bytes_sent <= raw.close.bytes_sent);
                    }
                    // Printing never panics either, whatever the states and command.
                    let _ = (change.oldstate.to_string(), change.comm.to_str_lossy());
                }
                Some(Record::ResetSent(reset)) => {
                    prop_assert_eq!(len, size_of::<RawResetSent>());
                    // SAFETY: as above, for a reset record.
                    let raw = unsafe { bytes.as_ptr().cast::<RawResetSent>().read_unaligned() };
                    prop_assert_eq!((reset.ts_ns, reset.skaddr, reset.cookie), (raw.ts_ns, raw.skaddr, raw.cookie));
                }
                Some(Record::Retransmit(retransmit)) => {
                    prop_assert_eq!(len, size_of::<RawRetransmit>());
                    // SAFETY: as above, for a retransmit record.
                    let raw = unsafe { bytes.as_ptr().cast::<RawRetransmit>().read_unaligned() };
                    prop_assert_eq!((retransmit.ts_ns, retransmit.cookie), (raw.ts_ns, raw.cookie));
                    prop_assert_eq!(retransmit.requested_ns.unwrap_or(0), raw.requested_ns);
                }
            }
        }
    }
}
