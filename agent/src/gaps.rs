//! Inferred loss: transitions the kernel never reported, seen as gaps in each socket's chain of
//! states.
//!
//! The kernel counts what its programs could not deliver (ring buffer full, BPF recursion), but
//! not a state change for which it ran no program at all. Such a loss still leaves a mark in the
//! stream, and [`GapTracker`] — fed every decoded change, with or without `--otlp` — counts
//! the marks it can prove, the *gaps*, each hiding at least one transition:
//!
//! - **chain break**: a transition whose old state is not the new state of the socket's previous
//!   transition. A self-transition (FIN_WAIT1 → FIN_WAIT1: `shutdown()` then `close()`) chains.
//! - **address reused before CLOSE**: a socket's first transition (from CLOSE, or LISTEN →
//!   SYN_RECV) at the kernel address of a socket whose CLOSE was never seen. Every TCP socket
//!   reaches CLOSE through `tcp_set_state()` before it is freed (orderly, reset, failed connect,
//!   an accepted socket its listener dropped, FIN_WAIT2 → CLOSE where TIME_WAIT would be), so
//!   its CLOSE was lost.
//! - **start not seen**: a socket seen for the first time mid-way (not at a first transition)
//!   although the kernel program timed its previous state (`span_ns` ≠ 0): the program keeps
//!   that time in socket storage only it writes, from a transition it ran for, so that earlier
//!   transition was never delivered. This check is off when a filter may hide a socket's
//!   first transitions (`--local-port` drops an active open's CLOSE → SYN_SENT, whose port is
//!   still 0) and once the tracker has forgotten a socket.
//!
//! How many transitions a gap hides is counted as the length of the shortest *orderly* path
//! between the states on either side of it ([`orderly_path`]): the way sockets go when nothing
//! aborts them. The loss seen under load (a server socket's FIN_WAIT1 → FIN_WAIT2 and
//! FIN_WAIT2 → CLOSE, lost together) is counted as exactly those two. A socket that was in
//! fact reset in the gap went a shorter way, so the count is an estimate; the number of gaps is
//! the proven lower bound, and both are reported.
//!
//! What it cannot prove it does not count: a socket first seen mid-way without a timed previous
//! state may have been opened before the agent started — the cookie does not tell, since the
//! kernel gives a socket its cookie only when first asked, so an old socket first traced now
//! gets as new a cookie as a socket whose first transition was lost. Nor is the session table
//! ending a session because it was full a sign of loss.
//!
//! Sockets are keyed by kernel address, which one socket keeps for its life and no two live
//! sockets share: so the first transition of an accepted socket, which some kernels (Debian's
//! 6.1 and 6.12) report with its listener's cookie, is matched to the socket's own cookie at
//! its next transition. A socket is forgotten at its CLOSE; the tracker holds at most its
//! capacity of sockets, forgetting the one idle longest (and counting it) when full.

use std::num::NonZeroUsize;

use agent_common::{
    decode::{StateChange, TcpState},
    state::{
        CLOSE, CLOSE_WAIT, CLOSING, ESTABLISHED, FIN_WAIT1, FIN_WAIT2, LAST_ACK, LISTEN, SYN_RECV,
        SYN_SENT, starts_socket,
    },
};
use lru::LruCache;

/// What the tracker knows of a live socket.
#[derive(Clone, Copy, Debug)]
struct Socket {
    /// Its cookie, as last reported.
    cookie: u64,
    /// The state its last transition entered.
    state: TcpState,
    /// Seen only at LISTEN → SYN_RECV, whose cookie may be its listener's.
    accepting: bool,
}

/// Gaps in sockets' chains of states, by cause, and the transitions they hide.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gaps {
    /// Transitions whose old state is not the socket's previous new state.
    pub chain_breaks: u64,
    /// Sockets whose address was taken by a new socket before their CLOSE was seen.
    pub reused: u64,
    /// Sockets first seen mid-way whose previous transition the kernel program ran for.
    pub unseen_starts: u64,
    /// Transitions the gaps hide, each gap counted as the orderly path across it.
    pub transitions: u64,
    /// Sockets forgotten while open because the tracker was full (not a loss: their later
    /// transitions are no longer checked).
    pub forgotten: u64,
}

impl Gaps {
    /// Gaps seen: each hides at least one transition.
    pub fn count(&self) -> u64 {
        self.chain_breaks + self.reused + self.unseen_starts
    }

    /// Transitions missing, estimated: each gap counted as the orderly path across it.
    pub fn missing(&self) -> u64 {
        self.transitions
    }

    /// Of the transitions missing, those beyond `counted` the kernel reported lost: as the
    /// kernel's counted losses leave gaps too, the ones it ran no program for.
    pub fn uncounted(&self, counted: u64) -> u64 {
        self.transitions.saturating_sub(counted)
    }
}

/// Where a socket's life may begin, before its first transition.
const NEW: usize = 0;

/// The transitions sockets make when nothing aborts them, as `(old, new)`; [`NEW`] stands for a
/// socket not yet born. A reset (ESTABLISHED, FIN_WAIT1 or CLOSE_WAIT → CLOSE) is left out:
/// with it every gap before CLOSE would count one.
const ORDERLY: [(usize, u32); 18] = [
    (NEW, SYN_SENT),
    (NEW, LISTEN),
    (NEW, SYN_RECV),
    (CLOSE as usize, SYN_SENT),
    (CLOSE as usize, LISTEN),
    (LISTEN as usize, CLOSE),
    (SYN_SENT as usize, ESTABLISHED),
    (SYN_SENT as usize, CLOSE),
    (SYN_RECV as usize, ESTABLISHED),
    (SYN_RECV as usize, CLOSE),
    (ESTABLISHED as usize, FIN_WAIT1),
    (ESTABLISHED as usize, CLOSE_WAIT),
    (FIN_WAIT1 as usize, FIN_WAIT2),
    (FIN_WAIT1 as usize, CLOSING),
    (FIN_WAIT2 as usize, CLOSE),
    (CLOSING as usize, CLOSE),
    (CLOSE_WAIT as usize, LAST_ACK),
    (LAST_ACK as usize, CLOSE),
];

/// The number of transitions on the shortest orderly path from state `from` ([`NEW`] for a
/// socket not yet born) to state `to`; 1 when there is none (a gap hides at least one).
fn orderly_path(from: usize, to: TcpState) -> u64 {
    const STATES: usize = 16;
    let to = to.0 as usize;
    if from == to || from >= STATES || to >= STATES {
        return 1;
    }
    let mut distance = [u64::MAX; STATES];
    distance[from] = 0;
    let mut frontier = vec![from];
    while !frontier.is_empty() {
        let mut next = Vec::new();
        for state in frontier {
            for &(old, new) in &ORDERLY {
                let new = new as usize;
                if old == state && distance[new] == u64::MAX {
                    distance[new] = distance[state] + 1;
                    if new == to {
                        return distance[new];
                    }
                    next.push(new);
                }
            }
        }
        frontier = next;
    }
    1
}

/// Per-socket last state, by kernel address, bounded.
pub struct GapTracker {
    sockets: LruCache<u64, Socket>,
    check_starts: bool,
    gaps: Gaps,
}

impl GapTracker {
    /// A tracker of at most `capacity` live sockets; `check_starts` enables the *start not seen*
    /// check, sound only when no filter can hide a socket's first transitions.
    pub fn new(capacity: NonZeroUsize, check_starts: bool) -> Self {
        Self {
            sockets: crate::bounded::lru(capacity),
            check_starts,
            gaps: Gaps::default(),
        }
    }

    /// The counts so far.
    pub fn gaps(&self) -> Gaps {
        self.gaps
    }

    /// Sockets tracked now.
    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    /// Whether no socket is tracked.
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// Checks one state change against what was seen of its socket.
    pub fn observe(&mut self, change: &StateChange) {
        let (old, new) = (change.oldstate, change.newstate);
        let accepting = old == TcpState(LISTEN) && new == TcpState(SYN_RECV);
        let known = self.sockets.get(&change.skaddr).copied();
        let first = starts_socket(old.0, new.0);
        match known {
            Some(socket) if first => {
                // A new socket at a live socket's address, or the same socket reopened from
                // CLOSE although its CLOSE was not seen: either way a CLOSE is missing.
                if socket.cookie == change.cookie && !socket.accepting {
                    self.gaps.chain_breaks += 1;
                } else {
                    self.gaps.reused += 1;
                }
                self.gaps.transitions += orderly_path(socket.state.0 as usize, TcpState(CLOSE));
            }
            Some(socket) if socket.cookie == change.cookie || socket.accepting => {
                if old != socket.state {
                    self.gaps.chain_breaks += 1;
                    self.gaps.transitions += orderly_path(socket.state.0 as usize, old);
                }
            }
            Some(socket) => {
                // Another socket took the address mid-way: the old one's CLOSE and the new
                // one's start are both missing; the start is counted as the rule below says.
                self.gaps.reused += 1;
                self.gaps.transitions += orderly_path(socket.state.0 as usize, TcpState(CLOSE));
                self.check_unseen_start(change);
            }
            None if first => {}
            None => self.check_unseen_start(change),
        }
        if new == TcpState(CLOSE) {
            self.sockets.pop(&change.skaddr);
            return;
        }
        let socket = Socket {
            cookie: change.cookie,
            state: new,
            accepting,
        };
        if let Some((skaddr, _)) = self.sockets.push(change.skaddr, socket)
            && skaddr != change.skaddr
        {
            self.gaps.forgotten += 1;
        }
    }

    fn check_unseen_start(&mut self, change: &StateChange) {
        if self.check_starts && self.gaps.forgotten == 0 && change.span_ns != 0 {
            self.gaps.unseen_starts += 1;
            self.gaps.transitions += orderly_path(NEW, change.oldstate);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use agent_common::{
        decode::Comm,
        event::COMM_LEN,
        state::{CLOSE_WAIT, ESTABLISHED, FIN_WAIT1, FIN_WAIT2, LAST_ACK, SYN_SENT, TIME_WAIT},
    };

    use super::*;

    fn change(skaddr: u64, cookie: u64, old: u32, new: u32) -> StateChange {
        StateChange {
            ts_ns: 1,
            skaddr,
            cookie,
            owner: None,
            uid: 0,
            netns: 1,
            cgroup_id: 1,
            span_ns: if starts_socket(old, new) { 0 } else { 5 },
            pid: 7,
            comm: Comm::new([b'x'; COMM_LEN]),
            local_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            local_port: 1,
            remote_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            remote_port: 80,
            oldstate: TcpState(old),
            newstate: TcpState(new),
            reset_received: false,
            close: None,
        }
    }

    fn run(changes: &[StateChange]) -> GapTracker {
        let mut tracker = GapTracker::new(NonZeroUsize::new(16).expect("non-zero"), true);
        for change in changes {
            tracker.observe(change);
        }
        tracker
    }

    /// A client (address 1, cookie 11) and the server socket it connected to (address 2,
    /// accepted from listener 3 and first reported with its cookie 33), the server closing
    /// first, as loopback reports them; `drop` leaves out the changes at those indexes.
    fn connection(drop: &[usize]) -> Vec<StateChange> {
        [
            change(3, 33, CLOSE, LISTEN),
            change(1, 11, CLOSE, SYN_SENT),
            change(2, 33, LISTEN, SYN_RECV),
            change(1, 11, SYN_SENT, ESTABLISHED),
            change(2, 22, SYN_RECV, ESTABLISHED),
            change(2, 22, ESTABLISHED, FIN_WAIT1),
            change(1, 11, ESTABLISHED, CLOSE_WAIT),
            change(2, 22, FIN_WAIT1, FIN_WAIT2),
            change(1, 11, CLOSE_WAIT, LAST_ACK),
            change(2, 22, FIN_WAIT2, CLOSE),
            change(1, 11, LAST_ACK, CLOSE),
        ]
        .into_iter()
        .enumerate()
        .filter(|(index, _)| !drop.contains(index))
        .map(|(_, change)| change)
        .collect()
    }

    #[test]
    fn a_whole_connection_has_no_gap() {
        let tracker = run(&connection(&[]));
        assert_eq!(tracker.gaps(), Gaps::default());
        // Only the listener is left.
        assert_eq!(tracker.len(), 1);
    }

    #[test]
    fn shutdown_then_close_is_a_self_transition_not_a_gap() {
        let tracker = run(&[
            change(1, 11, CLOSE, SYN_SENT),
            change(1, 11, SYN_SENT, ESTABLISHED),
            change(1, 11, ESTABLISHED, FIN_WAIT1),
            change(1, 11, FIN_WAIT1, FIN_WAIT1),
            change(1, 11, FIN_WAIT1, FIN_WAIT2),
            change(1, 11, FIN_WAIT2, CLOSE),
        ]);
        assert_eq!(tracker.gaps().missing(), 0);
        assert!(tracker.is_empty());
    }

    #[test]
    fn the_lost_server_pair_is_counted_when_the_address_is_reused() {
        // The soak's loss: the server's FIN_WAIT1 -> FIN_WAIT2 and FIN_WAIT2 -> CLOSE.
        let mut changes = connection(&[7, 9]);
        changes.push(change(2, 44, CLOSE, SYN_SENT));
        let tracker = run(&changes);
        assert_eq!(
            tracker.gaps(),
            Gaps {
                reused: 1,
                transitions: 2,
                ..Gaps::default()
            }
        );
        assert_eq!((tracker.gaps().count(), tracker.gaps().missing()), (1, 2));
        // Of them, those the kernel did not report lost.
        assert_eq!(tracker.gaps().uncounted(0), 2);
        assert_eq!(tracker.gaps().uncounted(1), 1);
        assert_eq!(tracker.gaps().uncounted(5), 0);
    }

    #[test]
    fn a_missing_middle_transition_breaks_the_chain() {
        let tracker = run(&connection(&[7]));
        assert_eq!(
            tracker.gaps(),
            Gaps {
                chain_breaks: 1,
                transitions: 1,
                ..Gaps::default()
            }
        );
        // Two in a row: the server's ESTABLISHED -> FIN_WAIT1 and FIN_WAIT1 -> FIN_WAIT2; its
        // chain resumes at FIN_WAIT2 -> CLOSE.
        let tracker = run(&connection(&[5, 7]));
        assert_eq!(
            (tracker.gaps().chain_breaks, tracker.gaps().missing()),
            (1, 2)
        );
    }

    #[test]
    fn an_accepted_socket_whose_second_transition_is_lost_breaks_the_chain() {
        let tracker = run(&connection(&[4]));
        assert_eq!(tracker.gaps().chain_breaks, 1);
        assert_eq!(tracker.gaps().missing(), 1);
    }

    #[test]
    fn an_accepted_socket_reported_with_its_own_cookie_has_no_gap() {
        let mut changes = connection(&[]);
        changes[2].cookie = 22;
        assert_eq!(run(&changes).gaps(), Gaps::default());
    }

    #[test]
    fn a_socket_first_seen_mid_way_is_a_gap_only_if_its_previous_state_was_timed() {
        let mut older = change(5, 55, ESTABLISHED, FIN_WAIT1);
        older.span_ns = 0;
        let tracker = run(&[older, change(6, 66, SYN_SENT, ESTABLISHED)]);
        assert_eq!(
            tracker.gaps(),
            Gaps {
                unseen_starts: 1,
                transitions: 1,
                ..Gaps::default()
            }
        );
        // First seen at ESTABLISHED -> FIN_WAIT1: its open and its handshake are missing.
        assert_eq!(
            run(&[change(6, 66, ESTABLISHED, FIN_WAIT1)])
                .gaps()
                .missing(),
            2
        );
        // With a filter that may hide first transitions the check is off.
        let mut filtered = GapTracker::new(NonZeroUsize::new(4).expect("non-zero"), false);
        filtered.observe(&change(6, 66, SYN_SENT, ESTABLISHED));
        assert_eq!(filtered.gaps(), Gaps::default());
    }

    #[test]
    fn a_reopened_socket_whose_close_was_lost_breaks_the_chain() {
        // A failed connect's SYN_SENT -> CLOSE lost, then the same socket connects again.
        let tracker = run(&[
            change(1, 11, CLOSE, SYN_SENT),
            change(1, 11, CLOSE, SYN_SENT),
        ]);
        assert_eq!(tracker.gaps().chain_breaks, 1);
        // With its CLOSE seen, a reconnect is no gap.
        let tracker = run(&[
            change(1, 11, CLOSE, SYN_SENT),
            change(1, 11, SYN_SENT, CLOSE),
            change(1, 11, CLOSE, SYN_SENT),
        ]);
        assert_eq!(tracker.gaps().missing(), 0);
    }

    #[test]
    fn a_full_tracker_forgets_the_idlest_socket_without_calling_it_a_loss() {
        let mut tracker = GapTracker::new(NonZeroUsize::new(2).expect("non-zero"), true);
        for skaddr in 1..=3 {
            tracker.observe(&change(skaddr, skaddr, CLOSE, SYN_SENT));
        }
        assert_eq!(tracker.len(), 2);
        // Socket 1 was forgotten: its next transition is not checked, not even as a start.
        tracker.observe(&change(1, 1, SYN_SENT, ESTABLISHED));
        assert_eq!(
            tracker.gaps(),
            Gaps {
                forgotten: 2,
                ..Gaps::default()
            }
        );
    }

    #[test]
    fn a_lost_accepted_socket_is_counted_when_its_address_is_reused() {
        let tracker = run(&[
            change(2, 33, LISTEN, SYN_RECV),
            change(2, 33, LISTEN, SYN_RECV),
        ]);
        assert_eq!(tracker.gaps().reused, 1);
        // Its SYN_RECV -> CLOSE (a handshake its listener dropped).
        assert_eq!(tracker.gaps().missing(), 1);
    }

    #[test]
    fn a_gap_counts_the_orderly_path_across_it() {
        let path = |from: u32, to: u32| orderly_path(from as usize, TcpState(to));
        assert_eq!(path(FIN_WAIT1, CLOSE), 2);
        assert_eq!(path(ESTABLISHED, CLOSE), 3);
        assert_eq!(path(CLOSE_WAIT, CLOSE), 2);
        assert_eq!(path(LAST_ACK, CLOSE), 1);
        assert_eq!(path(SYN_SENT, CLOSE), 1);
        assert_eq!(path(SYN_SENT, FIN_WAIT2), 3);
        assert_eq!(path(LISTEN, CLOSE), 1);
        assert_eq!(orderly_path(NEW, TcpState(ESTABLISHED)), 2);
        assert_eq!(orderly_path(NEW, TcpState(CLOSE_WAIT)), 3);
        // No orderly way back, or a state the kernel does not define: at least one.
        assert_eq!(path(TIME_WAIT, CLOSE), 1);
        assert_eq!(path(CLOSE, 99), 1);
        assert_eq!(path(99, CLOSE), 1);
    }
}
