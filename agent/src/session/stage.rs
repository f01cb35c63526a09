//! The session stage: between decoding and the per-session sinks.
//!
//! It owns what a session is — its identity (the trace ids, from the host's boot id and the
//! socket's cookie, computed by the [`SessionTable`] alone), its timing (each state from the
//! kernel's timestamps), and its enrichment (the owner's process and the socket's cgroup, read
//! by the [`DetailsCache`] when the session begins) — and hands each of its sinks every state a
//! session left and every session's end (closed, evicted, or at shutdown). The sinks only
//! format and deliver; nothing they do reaches back into the stage.
//!
//! A session that closed from a state in which the socket may still send a reset (an
//! `SO_LINGER` 0 close sends it just after the CLOSE) is held until the end of the next drain
//! of the ring buffer after the one that brought its CLOSE: the reset, if any, is in the ring
//! by then, and the session is handed on as reset by this end. That delays such sessions by one
//! drain interval (20 ms); the states they left are handed on at once.

use foldhash::{HashMap, HashMapExt as _};
use std::{collections::VecDeque, net::SocketAddr};

use agent_common::{
    decode::{ResetSent, Retransmit, StateChange},
    state::{CLOSE, LISTEN, SYN_SENT},
};

use super::{Completed, Outcome, SessionEnded, SessionTable, StateEnded};
use crate::{
    counters::Counts,
    details::{Describe, DetailsCache, SessionDetails},
    sink::{Health, SessionSink, SessionSinkAccount},
};

/// The account of the session stage at exit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionsSummary {
    /// Sessions ended early because the session table was full (or their CLOSE was lost).
    pub evictions: u64,
    /// Each sink's own account, in the order the sinks were given.
    pub sinks: Vec<SessionSinkAccount>,
}

/// A closed session held for a reset its socket may still send, with the state it closed from.
struct Held {
    /// The drain of the ring buffer its CLOSE came in.
    drain: u64,
    /// The state it left at its CLOSE, which says how it failed as its root does.
    last_state: Option<StateEnded>,
    ended: Box<SessionEnded>,
}

/// Sessions, made from state changes and handed to sinks.
pub struct SessionStage {
    table: SessionTable,
    details: DetailsCache,
    sinks: Vec<Box<dyn SessionSink>>,
    /// What the table completed and the sinks have not yet had.
    completed: Vec<Completed>,
    /// Closed sessions waiting for a reset their socket may send.
    held: VecDeque<Held>,
    /// Drains of the ring buffer so far.
    drains: u64,
    /// The sockets left out, when any are.
    left_out: Option<LeftOut>,
}

/// The sockets left out of the sessions: those of one process (tcpstates' own connections to
/// the collector) and, when the collector runs on this host, the collector's ends of them.
struct LeftOut {
    pid: u32,
    /// The sockets left out, by cookie, from their first transition (or, for a collector's
    /// end, the first that shows both its ends) to their CLOSE: whether each is the process's
    /// own (its later transitions may not name their owner).
    cookies: HashMap<u64, bool>,
    /// The ends of the process's connections as their peer sockets see them (local, remote;
    /// IPv4-mapped addresses as IPv4), with the process's socket's cookie.
    peers: HashMap<(SocketAddr, SocketAddr), u64>,
}

impl LeftOut {
    /// Whether `change` is of a socket left out; keeps track of those.
    fn takes(&mut self, change: &StateChange) -> bool {
        let local = SocketAddr::new(change.local_addr.to_canonical(), change.local_port);
        let remote = SocketAddr::new(change.remote_addr.to_canonical(), change.remote_port);
        let own = match self.cookies.get(&change.cookie) {
            Some(&own) => own,
            None if change.owner.is_some_and(|owner| owner.pid == self.pid) => true,
            None if self.peers.remove(&(local, remote)).is_some() => false,
            None => return false,
        };
        if change.newstate.0 == CLOSE {
            self.cookies.remove(&change.cookie);
            self.peers.retain(|_, cookie| *cookie != change.cookie);
        } else {
            self.cookies.insert(change.cookie, own);
            if own && change.local_port != 0 && change.remote_port != 0 {
                self.peers.insert((remote, local), change.cookie);
            }
        }
        true
    }
}

impl SessionStage {
    /// Sessions tracked in `table`, described by `details`, handed to `sinks`.
    pub fn new(
        table: SessionTable,
        details: DetailsCache,
        sinks: Vec<Box<dyn SessionSink>>,
    ) -> Self {
        Self {
            table,
            details,
            sinks,
            completed: Vec::new(),
            held: VecDeque::new(),
            drains: 0,
            left_out: None,
        }
    }

    /// The same stage, leaving out the sockets process `pid` made (tcpstates' own: its
    /// connections to the collector would otherwise be traced, and exported over themselves),
    /// and the other ends of its connections when they are sockets of this host too (a
    /// collector on this host).
    pub fn leaving_out(self, pid: u32) -> Self {
        Self {
            left_out: Some(LeftOut {
                pid,
                cookies: HashMap::new(),
                peers: HashMap::new(),
            }),
            ..self
        }
    }

    /// A socket sent a reset: its open session, or its session held since its CLOSE (and the
    /// state it closed from), is marked reset by this end.
    pub fn reset_sent(&mut self, reset: &ResetSent) {
        if self.table.reset_sent(reset.cookie) {
            return;
        }
        if let Some(held) = self
            .held
            .iter_mut()
            .find(|held| held.ended.session.cookie == reset.cookie)
        {
            held.ended.outcome = held.ended.outcome.with_reset_sent();
            if let Some(state) = &mut held.last_state {
                state.failure = held.ended.outcome.failure();
            }
        }
    }

    /// A socket sent a segment again: an event of its session's state in progress.
    pub fn retransmitted(&mut self, retransmit: &Retransmit) {
        self.table.retransmitted(retransmit);
    }

    /// A drain of the ring buffer is over: hands on the sessions held since the one before,
    /// and lets the sinks push out what they buffer.
    pub fn end_of_drain(&mut self) {
        self.drains += 1;
        while let Some(held) = self.held.front()
            && held.drain + 1 < self.drains
        {
            if let Some(held) = self.held.pop_front() {
                self.hand_on_held(held);
            }
        }
        for sink in &mut self.sinks {
            sink.end_of_drain();
        }
    }

    /// The sockets open when tracing started (found by listing them, after the programs were
    /// attached): each is handed on as begun in its state, and becomes a session at its first
    /// transition. tcpstates' own are left out.
    pub fn found_at_start(&mut self, sockets: &[StateChange]) {
        let own = |socket: &StateChange| {
            let pid = self.left_out.as_ref().map(|left_out| left_out.pid);
            socket.owner.is_some_and(|owner| Some(owner.pid) == pid)
        };
        let kept: Vec<StateChange> = sockets.iter().filter(|s| !own(s)).copied().collect();
        self.table.found_at_start(&kept, &mut self.completed);
        self.hand_on();
    }

    /// Applies one state change and hands on what it completes.
    pub fn observe(&mut self, change: &StateChange) {
        if let Some(left_out) = &mut self.left_out
            && left_out.takes(change)
        {
            // A collector's end may have shown its first transition before its ends did.
            self.table.forget_accepted(change.skaddr);
            return;
        }
        self.details.learn(change);
        self.table.observe(change, &mut self.completed);
        self.hand_on();
    }

    /// Has each sink say what went wrong since it was last asked; `kernel` are the kernel's
    /// counts so far.
    pub fn report_growth(&mut self, kernel: &Counts) {
        let mut health = Health {
            kernel: *kernel,
            evictions: self.table.evictions(),
            spans: None,
            sampling: None,
        };
        for sink in &self.sinks {
            note_account(&mut health, sink.account());
        }
        for sink in &mut self.sinks {
            sink.report_growth(&health);
        }
    }

    /// Ends every open session at `now_ns` (tracing is stopping), hands them on, and lets each
    /// sink finish in turn, telling it the agent's health at the end (`kernel`: the kernel's
    /// final counts) with the accounts of those finished before it.
    pub fn finish(mut self, now_ns: u64, kernel: &Counts) -> SessionsSummary {
        self.table.end_all(now_ns, &mut self.completed);
        self.hand_on();
        while let Some(held) = self.held.pop_front() {
            self.hand_on_held(held);
        }
        let mut health = Health {
            kernel: *kernel,
            evictions: self.table.evictions(),
            spans: None,
            sampling: None,
        };
        let mut sinks = Vec::with_capacity(self.sinks.len());
        for sink in self.sinks {
            let account = sink.finish(&health);
            note_account(&mut health, account);
            sinks.push(account);
        }
        SessionsSummary {
            evictions: health.evictions,
            sinks,
        }
    }

    fn hand_on(&mut self) {
        let mut completed = std::mem::take(&mut self.completed);
        // Looked ahead through `as_slice`, not `Peekable`, which would move each item once more.
        let mut items = completed.drain(..);
        while let Some(item) = items.next() {
            match item {
                Completed::Began(began) => {
                    for sink in &mut self.sinks {
                        sink.session_began(&began);
                    }
                }
                Completed::Vanished(found) => {
                    for sink in &mut self.sinks {
                        sink.session_vanished(&found);
                    }
                }
                // The state a session closed from comes just before the session; both are held
                // while a reset may follow, so that the state says so too.
                Completed::State(state)
                    if matches!(items.as_slice().first(), Some(Completed::Session(ended))
                        if ended.session.ids == state.ids && may_send_reset_after_close(ended)) =>
                {
                    if let Some(Completed::Session(ended)) = items.next() {
                        self.hold(Some(state), ended);
                    }
                }
                Completed::State(state) => self.hand_on_state(&state),
                Completed::Session(ended) if may_send_reset_after_close(&ended) => {
                    self.hold(None, ended);
                }
                Completed::Session(ended) => self.hand_on_session(&ended),
            }
        }
        drop(items);
        // The buffer's capacity is kept for the next change.
        self.completed = completed;
    }

    fn hold(&mut self, last_state: Option<StateEnded>, ended: Box<SessionEnded>) {
        self.held.push_back(Held {
            drain: self.drains,
            last_state,
            ended,
        });
    }

    fn hand_on_held(&mut self, held: Held) {
        if let Some(state) = &held.last_state {
            self.hand_on_state(state);
        }
        self.hand_on_session(&held.ended);
    }

    fn hand_on_state(&mut self, state: &StateEnded) {
        // Only the state that begins a trace carries the owner's details (the later ones
        // share its trace): the cache is not asked for every state.
        let mut none = SessionDetails::default();
        let mut described = self.details.of(&state.context);
        let details: &mut dyn Describe = if state.index == 0 {
            &mut described
        } else {
            &mut none
        };
        for sink in &mut self.sinks {
            sink.state_ended(state, details);
        }
    }

    fn hand_on_session(&mut self, ended: &SessionEnded) {
        let mut details = self.details.of(&ended.session.context);
        for sink in &mut self.sinks {
            sink.session_ended(ended, &mut details);
        }
    }
}

/// Puts what a sink's `account` says of the agent's health into `health`.
fn note_account(health: &mut Health, account: SessionSinkAccount) {
    if let SessionSinkAccount::Otlp { spans, sampling } = account {
        health.spans = Some(spans);
        health.sampling = Some(sampling);
    }
}

/// Whether a session that ended may still get a reset its socket sends after its CLOSE: it
/// closed (not ended early) from a state other than SYN_SENT or LISTEN, with no reset seen yet.
fn may_send_reset_after_close(ended: &SessionEnded) -> bool {
    ended.incomplete.is_none()
        && !matches!(ended.last_state.0, SYN_SENT | LISTEN)
        && !matches!(ended.outcome, Outcome::Failed(failure) if failure.reset_direction().is_some())
}

#[cfg(test)]
mod tests {
    use std::{
        cell::RefCell,
        net::{IpAddr, Ipv4Addr},
        num::NonZeroUsize,
        rc::Rc,
    };

    use agent_common::{
        correlation::{BootId, ConnectionIds},
        decode::{Comm, TcpState},
        event::COMM_LEN,
        state::{CLOSE, ESTABLISHED, FIN_WAIT1, FIN_WAIT2, SYN_RECV, SYN_SENT},
    };

    use super::*;
    use crate::{
        counters::Counts,
        session::{Incomplete, Role, SessionEnded, StateEnded},
        sink::otlp::export::ExportCounts,
    };

    const BOOT_ID: BootId = BootId([3; 16]);

    /// What an in-memory sink saw, shared with the test.
    #[derive(Default)]
    struct Seen {
        states: Vec<StateEnded>,
        sessions: Vec<(SessionEnded, Option<String>)>,
        began: Vec<(u64, TcpState)>,
        /// The health told at each report, then at the finish.
        healths: Vec<Health>,
        finished: bool,
    }

    /// A session sink that records what it is handed; its account says `dropped` spans.
    struct Recorder(Rc<RefCell<Seen>>, u64);

    impl SessionSink for Recorder {
        fn session_began(&mut self, began: &crate::session::SessionBegan) {
            self.0.borrow_mut().began.push((began.ts_ns, began.state));
        }

        fn state_ended(&mut self, state: &StateEnded, _details: &mut dyn Describe) {
            self.0.borrow_mut().states.push(state.clone());
        }

        fn session_ended(&mut self, session: &SessionEnded, details: &mut dyn Describe) {
            let executable = details.details().process.map(|p| p.executable_name.clone());
            self.0
                .borrow_mut()
                .sessions
                .push((session.clone(), executable));
        }

        fn report_growth(&mut self, health: &Health) {
            self.0.borrow_mut().healths.push(*health);
        }

        fn account(&self) -> SessionSinkAccount {
            SessionSinkAccount::Otlp {
                spans: ExportCounts {
                    dropped: self.1,
                    ..ExportCounts::default()
                },
                sampling: crate::sink::otlp::sampling::SamplingCounts::default(),
            }
        }

        fn finish(self: Box<Self>, health: &Health) -> SessionSinkAccount {
            let mut seen = self.0.borrow_mut();
            seen.healths.push(*health);
            seen.finished = true;
            self.account()
        }
    }

    fn change(cookie: u64, ts_ns: u64, old: u32, new: u32) -> StateChange {
        StateChange {
            ts_ns,
            skaddr: cookie * 0x100,
            cookie,
            owner: None,
            uid: 0,
            netns: 1,
            cgroup_id: 1,
            span_ns: 0,
            pid: 0,
            comm: Comm::new([b'x'; COMM_LEN]),
            local_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            local_port: 40_000,
            remote_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            remote_port: 8080,
            oldstate: TcpState(old),
            newstate: TcpState(new),
            reset_received: false,
            close: None,
        }
    }

    fn stage(capacity: usize, sinks: usize) -> (SessionStage, Vec<Rc<RefCell<Seen>>>) {
        let seen: Vec<_> = (0..sinks).map(|_| Rc::default()).collect();
        let capacity = NonZeroUsize::new(capacity).expect("non-zero");
        let stage = SessionStage::new(
            SessionTable::new(capacity, BOOT_ID),
            DetailsCache::new(capacity),
            seen.iter()
                .enumerate()
                .map(|(i, seen)| {
                    Box::new(Recorder(Rc::clone(seen), i as u64 + 1)) as Box<dyn SessionSink>
                })
                .collect(),
        );
        (stage, seen)
    }

    #[test]
    fn every_sink_gets_each_state_then_the_session_with_its_identity() {
        let (mut stage, seen) = stage(8, 2);
        for (ts, old, new) in [
            (10, CLOSE, SYN_SENT),
            (20, SYN_SENT, ESTABLISHED),
            (50, ESTABLISHED, FIN_WAIT1),
            (60, FIN_WAIT1, FIN_WAIT2),
            (90, FIN_WAIT2, CLOSE),
        ] {
            stage.observe(&change(7, ts, old, new));
        }
        let summary = stage.finish(100, &Counts::default());
        assert_eq!(summary.evictions, 0);
        assert_eq!(summary.sinks.len(), 2);
        let ids = ConnectionIds::new(&BOOT_ID, 7);
        for seen in &seen {
            let seen = seen.borrow();
            assert!(seen.finished);
            assert_eq!(
                seen.began,
                [(10, TcpState(SYN_SENT))],
                "it began connecting"
            );
            let states: Vec<_> = seen
                .states
                .iter()
                .map(|s| (s.state.0, s.start_ns, s.end_ns, s.index, s.ids))
                .collect();
            assert_eq!(
                states,
                [
                    (SYN_SENT, 10, 20, 0, ids),
                    (ESTABLISHED, 20, 50, 1, ids),
                    (FIN_WAIT1, 50, 60, 2, ids),
                    (FIN_WAIT2, 60, 90, 3, ids),
                ]
            );
            let [(session, _)] = seen.sessions.as_slice() else {
                panic!("one session");
            };
            assert_eq!(
                (session.session.ids, session.session.role, session.end_ns),
                (ids, Role::Connect, 90)
            );
            assert_eq!(session.incomplete, None);
        }
    }

    #[test]
    fn a_reset_sent_after_the_close_marks_the_session_and_the_state_it_closed_from() {
        let (mut stage, seen) = stage(8, 1);
        for (ts, old, new) in [
            (10, CLOSE, SYN_SENT),
            (20, SYN_SENT, ESTABLISHED),
            (50, ESTABLISHED, CLOSE),
        ] {
            stage.observe(&change(7, ts, old, new));
        }
        stage.end_of_drain();
        assert_eq!(
            seen[0].borrow().states.len(),
            1,
            "the state it closed from is held with the session"
        );
        // An SO_LINGER 0 close: the reset comes after the CLOSE, in the next drain.
        stage.reset_sent(&ResetSent {
            ts_ns: 51,
            skaddr: 7 * 0x100,
            cookie: 7,
        });
        stage.end_of_drain();
        stage.end_of_drain();
        let seen = seen[0].borrow();
        let sent = Some(crate::failure::Failure::ConnectionReset(Some(
            crate::failure::ResetDirection::Sent,
        )));
        let failures: Vec<_> = seen.states.iter().map(|s| (s.state.0, s.failure)).collect();
        assert_eq!(failures, [(SYN_SENT, None), (ESTABLISHED, sent)]);
        let [(session, _)] = seen.sessions.as_slice() else {
            panic!("one session: {:?}", seen.sessions.len());
        };
        assert_eq!(session.outcome.failure(), sent);
    }

    #[test]
    fn sinks_finish_in_turn_each_told_the_accounts_of_those_before() {
        let (stage, seen) = stage(8, 2);
        stage.finish(10, &Counts::default());
        let dropped_told = |i: usize| -> Vec<Option<u64>> {
            seen[i]
                .borrow()
                .healths
                .iter()
                .map(|h| h.spans.map(|spans| spans.dropped))
                .collect()
        };
        assert_eq!(dropped_told(0), [None], "the first finishes first");
        assert_eq!(
            dropped_told(1),
            [Some(1)],
            "the second hears the first's account"
        );
    }

    #[test]
    fn the_sockets_of_the_process_left_out_are_not_handed_on() {
        let (stage, seen) = stage(8, 1);
        let mut stage = stage.leaving_out(4242);
        let own = |ts, old, new| StateChange {
            owner: Some(agent_common::decode::Owner {
                pid: 4242,
                comm: Comm::new([b't'; COMM_LEN]),
            }),
            ..change(5, ts, old, new)
        };
        // Its connect names it; its later transitions (owner unknown without socket storage)
        // are left out by cookie.
        stage.observe(&own(10, CLOSE, SYN_SENT));
        stage.observe(&change(5, 20, SYN_SENT, ESTABLISHED));
        stage.observe(&change(5, 30, ESTABLISHED, CLOSE));
        // Another socket is traced as ever.
        stage.observe(&change(6, 40, CLOSE, SYN_SENT));
        stage.observe(&change(6, 50, SYN_SENT, CLOSE));
        stage.finish(60, &Counts::default());
        let seen = seen[0].borrow();
        let cookies: Vec<u64> = seen
            .sessions
            .iter()
            .map(|(s, _)| s.session.cookie)
            .collect();
        assert_eq!(cookies, [6]);
        assert!(seen.states.iter().all(|s| s.ids.cookie() == 6));
    }

    #[test]
    fn the_collectors_end_of_the_processs_connection_is_left_out_too() {
        let (stage, seen) = stage(8, 1);
        let mut stage = stage.leaving_out(4242);
        let agent = |ts, old, new, local_port| StateChange {
            owner: Some(agent_common::decode::Owner {
                pid: 4242,
                comm: Comm::new([b't'; COMM_LEN]),
            }),
            local_port,
            remote_port: 4317,
            ..change(5, ts, old, new)
        };
        // The collector listens on a dual-stack socket: its ends are IPv4-mapped.
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().expect("address");
        let collector = |ts, old, new| StateChange {
            local_addr: mapped,
            local_port: 4317,
            remote_addr: mapped,
            remote_port: 50_000,
            ..change(6, ts, old, new)
        };
        stage.observe(&agent(10, CLOSE, SYN_SENT, 0));
        // Its later transitions do not name their owner (no socket storage without filters).
        stage.observe(&StateChange {
            owner: None,
            ..agent(20, SYN_SENT, ESTABLISHED, 50_000)
        });
        stage.observe(&collector(21, LISTEN, SYN_RECV));
        stage.observe(&collector(22, SYN_RECV, ESTABLISHED));
        stage.observe(&collector(30, ESTABLISHED, CLOSE));
        // Another connection to the collector (not the agent's) is traced.
        stage.observe(&StateChange {
            remote_port: 50_001,
            ..collector(40, LISTEN, SYN_RECV)
        });
        stage.observe(&StateChange {
            cookie: 8,
            remote_port: 50_001,
            ..collector(41, SYN_RECV, ESTABLISHED)
        });
        stage.finish(60, &Counts::default());
        let seen = seen[0].borrow();
        let cookies: Vec<u64> = seen
            .sessions
            .iter()
            .map(|(s, _)| s.session.cookie)
            .collect();
        assert_eq!(cookies, [8]);
    }

    #[test]
    fn shutdown_ends_open_sessions_and_eviction_is_counted() {
        let (mut stage, seen) = stage(1, 1);
        stage.observe(&change(1, 10, CLOSE, SYN_SENT));
        // The table holds one session: the second evicts the first.
        stage.observe(&change(2, 20, CLOSE, SYN_SENT));
        let kernel = Counts {
            ring_full: 3,
            ..Counts::default()
        };
        stage.report_growth(&kernel);
        let summary = stage.finish(30, &kernel);
        assert_eq!(summary.evictions, 1);
        let seen = seen[0].borrow();
        let told: Vec<(u64, u64)> = seen
            .healths
            .iter()
            .map(|h| (h.kernel.ring_full, h.evictions))
            .collect();
        assert_eq!(told, [(3, 1), (3, 1)], "a report, then the finish");
        let ends: Vec<_> = seen
            .sessions
            .iter()
            .map(|(s, _)| (s.session.cookie, s.end_ns, s.incomplete))
            .collect();
        assert_eq!(
            ends,
            [
                (1, 20, Some(Incomplete::Evicted)),
                (2, 30, Some(Incomplete::Shutdown))
            ]
        );
        // Each session's SYN_SENT ended with it, marked likewise.
        let states: Vec<_> = seen
            .states
            .iter()
            .map(|s| (s.ids.cookie(), s.incomplete))
            .collect();
        assert_eq!(
            states,
            [
                (1, Some(Incomplete::Evicted)),
                (2, Some(Incomplete::Shutdown))
            ]
        );
    }
}
