//! Session tracking: turns the stream of state changes into TCP socket sessions, each a
//! sequence of timed states from its first seen transition to CLOSE.
//!
//! A session is keyed by the socket's kernel address, which the kernel reuses only after the
//! socket is freed, i.e. after its CLOSE. The table is bounded; when it is full the session
//! idle longest is ended early (and counted), so a flood of half-seen sockets cannot grow it.

use std::{net::IpAddr, num::NonZeroUsize};

use agent_common::{
    decode::{Comm, StateChange, TcpState},
    state::{CLOSE, ESTABLISHED, LISTEN, SYN_RECV, SYN_SENT, starts_socket},
};
use lru::LruCache;

/// How a session began, which decides its name and span kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Active open: CLOSE → SYN_SENT (`connect()`).
    Connect,
    /// A socket accepted from a listener: LISTEN → SYN_RECV.
    Accept,
    /// A listening socket: CLOSE → LISTEN.
    Listen,
    /// First seen mid-way, e.g. opened before tracing started.
    Unknown,
}

impl Role {
    fn of_first(change: &StateChange) -> Self {
        match (change.oldstate.0, change.newstate.0) {
            (CLOSE, SYN_SENT) => Self::Connect,
            (LISTEN, SYN_RECV) => Self::Accept,
            (CLOSE, LISTEN) => Self::Listen,
            _ => Self::Unknown,
        }
    }
}

/// How a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// An orderly close, or still open.
    Normal,
    /// A connect that never got established: SYN_SENT → CLOSE (refused or timed out).
    ConnectFailed,
    /// A reset: ESTABLISHED or SYN_RECV straight to CLOSE.
    Reset,
}

impl Outcome {
    fn of_last(change: &StateChange) -> Self {
        match (change.oldstate.0, change.newstate.0) {
            (SYN_SENT, CLOSE) => Self::ConnectFailed,
            (ESTABLISHED | SYN_RECV, CLOSE) => Self::Reset,
            _ => Self::Normal,
        }
    }
}

/// Why a session was ended before its CLOSE was seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Incomplete {
    /// Tracing stopped.
    Shutdown,
    /// The table was full and this session had been idle longest.
    Evicted,
}

/// Identifiers of a session's trace, chosen when the session is first seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionIds {
    /// Trace id (non-zero).
    pub trace_id: u128,
    /// Span id of the root span (non-zero).
    pub root_span_id: u64,
}

/// The two ends of a socket, as last reported (the first event of an active open has local
/// port 0; later events fill it in).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoints {
    /// Local address.
    pub local_addr: IpAddr,
    /// Local port.
    pub local_port: u16,
    /// Remote address.
    pub remote_addr: IpAddr,
    /// Remote port.
    pub remote_port: u16,
}

impl Endpoints {
    fn of(change: &StateChange) -> Self {
        Self {
            local_addr: change.local_addr,
            local_port: change.local_port,
            remote_addr: change.remote_addr,
            remote_port: change.remote_port,
        }
    }

    /// Takes the newer values, keeping known ones where the newer event has none.
    fn update(&mut self, newer: Self) {
        if newer.local_port != 0 {
            self.local_port = newer.local_port;
        }
        if newer.remote_port != 0 {
            self.remote_port = newer.remote_port;
        }
        if !newer.local_addr.is_unspecified() {
            self.local_addr = newer.local_addr;
        }
        if !newer.remote_addr.is_unspecified() {
            self.remote_addr = newer.remote_addr;
        }
    }
}

/// A session being tracked.
#[derive(Clone, Debug)]
pub struct Session {
    /// Trace identifiers.
    pub ids: SessionIds,
    /// Kernel address of the socket.
    pub skaddr: u64,
    /// How it began.
    pub role: Role,
    /// Kernel time of its first seen transition.
    pub start_ns: u64,
    /// The ends of the socket, as last known.
    pub endpoints: Endpoints,
    /// On-CPU pid at the first seen transition.
    pub first_pid: u32,
    /// On-CPU command at the first seen transition.
    pub first_comm: Comm,
    /// The state it is in.
    pub(crate) state: TcpState,
    /// Kernel time it entered `state`; `None` when that was not seen (a session first seen
    /// mid-way has not timed its first state).
    pub(crate) state_since_ns: Option<u64>,
}

/// A span-shaped record of something that finished: one state of a session, or a session.
#[derive(Clone, Debug)]
pub enum Completed {
    /// The session left a state.
    State {
        /// The session's trace identifiers.
        ids: SessionIds,
        /// The state left.
        state: TcpState,
        /// Kernel time the state was entered.
        start_ns: u64,
        /// Kernel time it was left.
        end_ns: u64,
        /// The state was still current when the session was ended early.
        incomplete: Option<Incomplete>,
    },
    /// The session ended.
    Session {
        /// The session.
        session: Session,
        /// Kernel time of its CLOSE (or of its early end).
        end_ns: u64,
        /// How it ended.
        outcome: Outcome,
        /// Set when it was ended before its CLOSE was seen.
        incomplete: Option<Incomplete>,
    },
}

/// Open sessions, keyed by socket address, bounded.
pub struct SessionTable {
    open: LruCache<u64, Session>,
    evictions: u64,
}

impl SessionTable {
    /// A table holding at most `capacity` open sessions.
    pub fn new(capacity: NonZeroUsize) -> Self {
        Self {
            open: LruCache::new(capacity),
            evictions: 0,
        }
    }

    /// Sessions ended early because the table was full.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Open sessions.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Applies one state change; what it completes is appended to `out`. `new_ids` is called
    /// once for each new session.
    pub fn observe(
        &mut self,
        change: &StateChange,
        new_ids: impl FnOnce() -> SessionIds,
        out: &mut Vec<Completed>,
    ) {
        // A socket's first transition starts a new session even if an old one at the same
        // address was never seen to close (its CLOSE was lost): that one ends here.
        if starts_socket(change.oldstate.0, change.newstate.0)
            && let Some(stale) = self.open.pop(&change.skaddr)
        {
            end_early(stale, change.ts_ns, Incomplete::Evicted, out);
            self.evictions += 1;
        }
        if !self.open.contains(&change.skaddr)
            && self.open.len() == self.open.cap().get()
            && let Some((_, evicted)) = self.open.pop_lru()
        {
            end_early(evicted, change.ts_ns, Incomplete::Evicted, out);
            self.evictions += 1;
        }
        let session = self.open.get_or_insert_mut(change.skaddr, || Session {
            ids: new_ids(),
            skaddr: change.skaddr,
            role: Role::of_first(change),
            start_ns: change.ts_ns,
            endpoints: Endpoints::of(change),
            first_pid: change.pid,
            first_comm: change.comm,
            state: change.oldstate,
            state_since_ns: None,
        });
        session.endpoints.update(Endpoints::of(change));
        if let Some(start_ns) = session.state_since_ns {
            out.push(Completed::State {
                ids: session.ids,
                state: change.oldstate,
                start_ns,
                end_ns: change.ts_ns,
                incomplete: None,
            });
        }
        session.state = change.newstate;
        session.state_since_ns = Some(change.ts_ns);
        if change.newstate == TcpState(CLOSE)
            && let Some(session) = self.open.pop(&change.skaddr)
        {
            out.push(Completed::Session {
                session,
                end_ns: change.ts_ns,
                outcome: Outcome::of_last(change),
                incomplete: None,
            });
        }
    }

    /// Ends every open session at `now_ns` (tracing is stopping).
    pub fn end_all(&mut self, now_ns: u64, out: &mut Vec<Completed>) {
        while let Some((_, session)) = self.open.pop_lru() {
            end_early(session, now_ns, Incomplete::Shutdown, out);
        }
    }
}

fn end_early(session: Session, end_ns: u64, why: Incomplete, out: &mut Vec<Completed>) {
    if let Some(start_ns) = session.state_since_ns {
        out.push(Completed::State {
            ids: session.ids,
            state: session.state,
            start_ns,
            end_ns: end_ns.max(start_ns),
            incomplete: Some(why),
        });
    }
    out.push(Completed::Session {
        end_ns: end_ns.max(session.start_ns),
        session,
        outcome: Outcome::Normal,
        incomplete: Some(why),
    });
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use agent_common::{
        event::COMM_LEN,
        state::{CLOSE_WAIT, FIN_WAIT1, FIN_WAIT2, LAST_ACK},
    };

    use super::*;

    fn change(skaddr: u64, ts_ns: u64, old: u32, new: u32, lport: u16) -> StateChange {
        StateChange {
            ts_ns,
            skaddr,
            span_ns: 0,
            pid: 7,
            comm: Comm::new([b'x'; COMM_LEN]),
            local_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            local_port: lport,
            remote_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            remote_port: 80,
            oldstate: TcpState(old),
            newstate: TcpState(new),
        }
    }

    /// Feeds `changes` to a table of `capacity`; returns what completed.
    fn run(capacity: usize, changes: &[StateChange]) -> (SessionTable, Vec<Completed>) {
        let mut table = SessionTable::new(NonZeroUsize::new(capacity).expect("non-zero"));
        let mut out = Vec::new();
        let mut next = 0;
        for change in changes {
            table.observe(
                change,
                || {
                    next += 1;
                    SessionIds {
                        trace_id: next,
                        root_span_id: next as u64,
                    }
                },
                &mut out,
            );
        }
        (table, out)
    }

    fn states(out: &[Completed]) -> Vec<(String, u64, u64)> {
        out.iter()
            .filter_map(|c| match c {
                Completed::State {
                    state,
                    start_ns,
                    end_ns,
                    ..
                } => Some((state.to_string(), *start_ns, *end_ns)),
                Completed::Session { .. } => None,
            })
            .collect()
    }

    fn sessions(out: &[Completed]) -> Vec<(&Session, u64, Outcome, Option<Incomplete>)> {
        out.iter()
            .filter_map(|c| match c {
                Completed::Session {
                    session,
                    end_ns,
                    outcome,
                    incomplete,
                } => Some((session, *end_ns, *outcome, *incomplete)),
                Completed::State { .. } => None,
            })
            .collect()
    }

    #[test]
    fn an_active_open_is_one_session_with_a_span_per_state() {
        let (table, out) = run(
            8,
            &[
                change(1, 100, CLOSE, SYN_SENT, 0),
                change(1, 150, SYN_SENT, ESTABLISHED, 5000),
                change(1, 400, ESTABLISHED, CLOSE_WAIT, 5000),
                change(1, 410, CLOSE_WAIT, LAST_ACK, 5000),
                change(1, 415, LAST_ACK, CLOSE, 5000),
            ],
        );
        assert!(table.is_empty());
        assert_eq!(
            states(&out),
            [
                ("SYN_SENT".into(), 100, 150),
                ("ESTABLISHED".into(), 150, 400),
                ("CLOSE_WAIT".into(), 400, 410),
                ("LAST_ACK".into(), 410, 415),
            ]
        );
        let ended = sessions(&out);
        assert_eq!(ended.len(), 1);
        let (session, end_ns, outcome, incomplete) = ended[0];
        assert_eq!(
            (session.role, session.start_ns, end_ns),
            (Role::Connect, 100, 415)
        );
        assert_eq!((outcome, incomplete), (Outcome::Normal, None));
        assert_eq!(
            session.endpoints.local_port, 5000,
            "filled in from later events"
        );
        assert!(
            matches!(out.last(), Some(Completed::Session { .. })),
            "root last"
        );
    }

    #[test]
    fn accepted_listening_and_mid_way_sessions_are_told_apart() {
        let (table, out) = run(
            8,
            &[
                change(1, 10, CLOSE, LISTEN, 80),
                change(2, 20, LISTEN, SYN_RECV, 80),
                change(3, 30, ESTABLISHED, FIN_WAIT1, 81),
                change(2, 40, SYN_RECV, ESTABLISHED, 80),
                change(1, 50, LISTEN, CLOSE, 80),
                change(3, 60, FIN_WAIT1, FIN_WAIT2, 81),
            ],
        );
        let ended = sessions(&out);
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].0.role, Role::Listen);
        assert_eq!(
            states(&out),
            [
                ("SYN_RECV".into(), 20, 40),
                ("LISTEN".into(), 10, 50),
                ("FIN_WAIT1".into(), 30, 60),
            ],
            "the state a mid-way session was first seen leaving is not timed"
        );
        assert_eq!(table.len(), 2);
        let mut out = Vec::new();
        let mut table = table;
        table.end_all(99, &mut out);
        let roles: Vec<_> = sessions(&out)
            .iter()
            .map(|s| (s.0.role, s.1, s.3))
            .collect();
        assert!(roles.contains(&(Role::Accept, 99, Some(Incomplete::Shutdown))));
        assert!(roles.contains(&(Role::Unknown, 99, Some(Incomplete::Shutdown))));
        assert!(states(&out).contains(&("ESTABLISHED".into(), 40, 99)));
        assert!(states(&out).contains(&("FIN_WAIT2".into(), 60, 99)));
        assert!(table.is_empty());
    }

    #[test]
    fn refused_connects_and_resets_are_errors() {
        let (_, out) = run(
            8,
            &[
                change(1, 1, CLOSE, SYN_SENT, 0),
                change(1, 2, SYN_SENT, CLOSE, 4000),
                change(2, 3, CLOSE, SYN_SENT, 0),
                change(2, 4, SYN_SENT, ESTABLISHED, 4001),
                change(2, 5, ESTABLISHED, CLOSE, 4001),
            ],
        );
        let outcomes: Vec<_> = sessions(&out).iter().map(|s| s.2).collect();
        assert_eq!(outcomes, [Outcome::ConnectFailed, Outcome::Reset]);
    }

    #[test]
    fn a_reused_address_starts_a_new_session_and_ends_the_stale_one() {
        let (table, out) = run(
            8,
            &[
                change(1, 10, CLOSE, SYN_SENT, 0),
                change(1, 20, SYN_SENT, ESTABLISHED, 4000),
                // Its CLOSE was lost; a new socket gets the same address.
                change(1, 1_000, CLOSE, SYN_SENT, 0),
                change(1, 1_005, SYN_SENT, ESTABLISHED, 4001),
            ],
        );
        let ended = sessions(&out);
        assert_eq!(ended.len(), 1);
        assert_eq!(
            (ended[0].0.ids.trace_id, ended[0].3),
            (1, Some(Incomplete::Evicted))
        );
        assert_eq!(table.evictions(), 1);
        assert_eq!(
            states(&out),
            [
                ("SYN_SENT".into(), 10, 20),
                ("ESTABLISHED".into(), 20, 1_000),
                ("SYN_SENT".into(), 1_000, 1_005)
            ],
            "the stale session's state ends where the new one's first span starts"
        );
    }

    #[test]
    fn a_full_table_ends_the_session_idle_longest() {
        let (table, out) = run(
            2,
            &[
                change(1, 10, CLOSE, SYN_SENT, 0),
                change(2, 20, CLOSE, SYN_SENT, 0),
                change(1, 30, SYN_SENT, ESTABLISHED, 4000),
                change(3, 40, CLOSE, SYN_SENT, 0),
            ],
        );
        let ended = sessions(&out);
        assert_eq!(ended.len(), 1);
        assert_eq!(
            (ended[0].0.skaddr, ended[0].3),
            (2, Some(Incomplete::Evicted))
        );
        assert_eq!((table.len(), table.evictions()), (2, 1));
    }
}
