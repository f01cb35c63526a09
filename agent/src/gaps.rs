//! Inferred loss: transitions the kernel never reported, seen as gaps in each socket's chain of
//! states.
//!
//! The kernel counts what its programs could not deliver (ring buffer full, BPF recursion), but
//! not a state change for which it ran no program at all. Such a loss still leaves a mark in the
//! stream, and [`GapTracker`] — fed every decoded change, with or without `--otlp` — counts
//! the marks it can prove, each as *at least one* missing transition (how many are missing
//! cannot be known):
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
    state::{CLOSE, LISTEN, SYN_RECV, starts_socket},
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

/// Counts of inferred missing transitions, by cause. Each is a lower bound: every gap hides at
/// least one transition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gaps {
    /// Transitions whose old state is not the socket's previous new state.
    pub chain_breaks: u64,
    /// Sockets whose address was taken by a new socket before their CLOSE was seen.
    pub reused: u64,
    /// Sockets first seen mid-way whose previous transition the kernel program ran for.
    pub unseen_starts: u64,
    /// Sockets forgotten while open because the tracker was full (not a loss: their later
    /// transitions are no longer checked).
    pub forgotten: u64,
}

impl Gaps {
    /// Transitions missing, at least.
    pub fn missing(&self) -> u64 {
        self.chain_breaks + self.reused + self.unseen_starts
    }
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
            sockets: LruCache::new(capacity),
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
            }
            Some(socket) if socket.cookie == change.cookie || socket.accepting => {
                if old != socket.state {
                    self.gaps.chain_breaks += 1;
                }
            }
            Some(_) => {
                // Another socket took the address mid-way: the old one's CLOSE and the new
                // one's start are both missing; the start is counted as the rule below says.
                self.gaps.reused += 1;
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
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use agent_common::{
        decode::Comm,
        event::COMM_LEN,
        state::{CLOSE_WAIT, ESTABLISHED, FIN_WAIT1, FIN_WAIT2, LAST_ACK, SYN_SENT},
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
                ..Gaps::default()
            }
        );
        assert_eq!(tracker.gaps().missing(), 1);
    }

    #[test]
    fn a_missing_middle_transition_breaks_the_chain() {
        let tracker = run(&connection(&[7]));
        assert_eq!(
            tracker.gaps(),
            Gaps {
                chain_breaks: 1,
                ..Gaps::default()
            }
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
                ..Gaps::default()
            }
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
    }
}
