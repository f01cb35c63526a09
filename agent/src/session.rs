//! Session tracking: turns the stream of state changes into TCP socket sessions, each a
//! sequence of timed states from its first seen transition to CLOSE.
//!
//! A session is keyed by the socket's cookie, which the kernel never reuses, so two sockets that
//! had the same kernel address one after the other can never be mixed up. A socket whose first
//! transition shows up at the address of a session whose CLOSE was never seen (it was lost) ends
//! that stale session. The table is bounded; when it is full the session idle longest is ended
//! early (and counted), so a flood of half-seen sockets cannot grow it. An evicted socket that
//! lives on continues its trace when it shows up again: its later states hang under a span of
//! their own below the first part's root, whose id is the next state-span id, so no two spans of
//! the trace share an id. A stale session ended by address reuse is remembered the same way, in
//! case a late change of it still comes. As many evicted sessions are remembered as the table
//! holds open; one forgotten before its socket returns starts its trace over (counted,
//! [`SessionTable::forgotten`]). `agent/src/session/props.rs` checks these bounds on generated
//! streams.
//!
//! An accepted socket's session begins at its second transition: at its first (LISTEN →
//! SYN_RECV) some kernels (Debian's 6.1 and 6.12, see the kernel matrix) still show the new socket with
//! its listener's cookie, and its own only from the next one, so the first transition waits for
//! the socket's next one to say whose it is.

use foldhash::{HashMap, HashMapExt as _};
use std::{
    net::{IpAddr, SocketAddr},
    num::NonZeroUsize,
};

use agent_common::{
    correlation::{BootId, ConnectionIds},
    decode::{Close, Comm, Owner, Retransmit, RetransmitKind, StateChange, TcpState},
    state::{CLOSE, LISTEN, SYN_RECV, SYN_SENT, starts_socket},
};

use crate::failure::Failure;
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
    /// The connection failed, for this reason.
    Failed(Failure),
}

impl Outcome {
    /// The outcome a transition to CLOSE tells, for a socket seen sending a reset or not.
    fn of_close(change: &StateChange, reset_sent: bool) -> Self {
        Failure::of_close(change, reset_sent).map_or(Self::Normal, Self::Failed)
    }

    /// The outcome once the socket was seen sending a reset after its CLOSE.
    pub fn with_reset_sent(self) -> Self {
        let failure = match self {
            Self::Normal => None,
            Self::Failed(failure) => Some(failure),
        };
        Self::Failed(Failure::with_reset_sent(failure))
    }

    /// The failure, if the connection failed.
    pub fn failure(self) -> Option<Failure> {
        match self {
            Self::Normal => None,
            Self::Failed(failure) => Some(failure),
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

    /// `ipv4` or `ipv6` (`network.type`): the protocol on the wire, as the local address tells
    /// (an IPv6 socket's IPv4-mapped address is IPv4).
    pub fn network_type(&self) -> &'static str {
        if self.local_addr.to_canonical().is_ipv4() {
            "ipv4"
        } else {
            "ipv6"
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

/// Who owns a socket and where it lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Context {
    /// The owning process, when its `connect()` or `listen()` was seen.
    pub owner: Option<Owner>,
    /// The socket's uid.
    pub uid: u32,
    /// Inode number of its network namespace.
    pub netns: u32,
    /// Id of its cgroup (v2).
    pub cgroup_id: u64,
}

impl Context {
    /// The context a state change reports.
    pub fn of(change: &StateChange) -> Self {
        Self {
            owner: change.owner,
            uid: change.uid,
            netns: change.netns,
            cgroup_id: change.cgroup_id,
        }
    }
}

/// A session being tracked.
#[derive(Clone, Debug)]
pub struct Session {
    /// Trace identifiers.
    pub ids: ConnectionIds,
    /// The socket's cookie.
    pub cookie: u64,
    /// Kernel address of the socket.
    pub skaddr: u64,
    /// Owner and location.
    pub context: Context,
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
    /// States completed so far: the index of the next state span.
    pub(crate) states_done: u32,
    /// Set when this session continues one evicted while its socket lived on: the state-span
    /// index whose id its own span takes, under the first part's root.
    pub continues: Option<u32>,
    /// The socket was seen sending a reset.
    pub reset_sent: bool,
    /// The socket was open when tracing started (found then, not seen beginning): the session
    /// starts when it was found.
    pub found_at_start: bool,
    /// The state it is in began before tracing did: its start is when the socket was found.
    pub(crate) state_start_unknown: bool,
    /// What the socket sent again in the state it is in.
    pub(crate) retransmits: Retransmits,
    /// Sessions it is related to, by their trace ids: an accepted socket's listener, and the
    /// other end of a connection both of whose ends are on this host.
    pub links: Links,
    /// Its ends are in the table's index of connections (entered once, at the first change
    /// that shows both ports).
    pub(crate) indexed: bool,
}

/// Most retransmissions one state keeps (a span event each); more are only counted.
pub const MAX_RETRANSMITS_PER_STATE: usize = 128;

/// The retransmissions of one state, in the order they happened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Retransmits {
    /// (kernel time, what was sent again), at most [`MAX_RETRANSMITS_PER_STATE`].
    pub kept: Vec<(u64, RetransmitKind)>,
    /// Retransmissions beyond those kept.
    pub beyond: u32,
}

impl Retransmits {
    fn push(&mut self, ts_ns: u64, kind: RetransmitKind) {
        if self.kept.len() < MAX_RETRANSMITS_PER_STATE {
            self.kept.push((ts_ns, kind));
        } else {
            self.beyond = self.beyond.saturating_add(1);
        }
    }
}

/// A socket found open when tracing started, waiting for its first transition, which tells its
/// cookie.
#[derive(Clone, Debug)]
struct Found {
    /// The socket as found (a transition from its state to itself).
    change: StateChange,
    role: Role,
}

impl Found {
    fn began(&self) -> SessionBegan {
        SessionBegan {
            state: self.change.newstate,
            ts_ns: self.change.ts_ns,
            endpoints: Endpoints::of(&self.change),
            context: Context::of(&self.change),
            role: self.role,
        }
    }
}

/// A connection request (not yet a socket) whose SYN-ACK was sent again, waiting for the socket
/// the kernel makes of it when the handshake completes.
#[derive(Clone, Debug)]
struct Request {
    /// Kernel time of its first SYN-ACK.
    requested_ns: u64,
    retransmits: Retransmits,
}

/// A session's relations to other sessions' traces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Links {
    /// An accepted socket's listener (open when the socket was accepted).
    pub listener: Option<ConnectionIds>,
    /// The other end of the connection, when it is a socket of this host too (loopback, two
    /// pods of a node) and was open at the same time.
    pub peer: Option<ConnectionIds>,
}

/// Where a connection's socket is: its network namespace and its two ends, as the peer socket
/// of the same connection sees them swapped.
type Tuple = (u32, SocketAddr, SocketAddr);

impl Session {
    /// The id of the session's own span: the trace's root, or a continuation's span.
    pub fn span_id(&self) -> [u8; 8] {
        match self.continues {
            Some(index) => self.ids.state_span_id(index),
            None => self.ids.root_span_id,
        }
    }

    /// The id of the span the session's own span hangs under: none for the trace's root, the
    /// root for a continuation.
    pub fn parent_span_id(&self) -> Option<[u8; 8]> {
        self.continues.map(|_| self.ids.root_span_id)
    }
}

/// A session began: the state its socket is in when first seen.
#[derive(Clone, Debug)]
pub struct SessionBegan {
    /// The state it is in.
    pub state: TcpState,
    /// Kernel time it was first seen.
    pub ts_ns: u64,
    /// The session's ends, as first seen.
    pub endpoints: Endpoints,
    /// The session's owner and location.
    pub context: Context,
    /// How it began.
    pub role: Role,
}

/// A session left a state: one state span.
#[derive(Clone, Debug)]
pub struct StateEnded {
    /// The session's trace identifiers.
    pub ids: ConnectionIds,
    /// Which of the trace's state spans this is: 0 for the first.
    pub index: u32,
    /// The span it belongs under: its session's ([`Session::span_id`]).
    pub parent_span_id: [u8; 8],
    /// The state left.
    pub state: TcpState,
    /// The state entered; `None` when the session was ended early in `state`.
    pub next_state: Option<TcpState>,
    /// Kernel time the state was entered.
    pub start_ns: u64,
    /// Kernel time it was left.
    pub end_ns: u64,
    /// The state was still current when the session was ended early.
    pub incomplete: Option<Incomplete>,
    /// The state began before tracing did: `start_ns` is when the socket was found.
    pub start_unknown: bool,
    /// What the socket sent again while in the state.
    pub retransmits: Retransmits,
    /// The connection failed as it left this state (its CLOSE): why.
    pub failure: Option<Failure>,
    /// The session's ends, as known when the state ended.
    pub endpoints: Endpoints,
    /// The session's owner and location.
    pub context: Context,
    /// How the session began.
    pub role: Role,
}

/// A session ended: closed, or ended early (evicted, or at shutdown).
#[derive(Clone, Debug)]
pub struct SessionEnded {
    /// The session.
    pub session: Session,
    /// Kernel time of its CLOSE (or of its early end).
    pub end_ns: u64,
    /// The state it left at its CLOSE (or was in at its early end).
    pub last_state: TcpState,
    /// What its socket reported as it closed; `None` when ended early.
    pub close: Option<Close>,
    /// How it ended.
    pub outcome: Outcome,
    /// Set when it was ended before its CLOSE was seen.
    pub incomplete: Option<Incomplete>,
}

/// Something that finished, in the order it did: one state of a session, or a session.
///
/// Not boxed: these live only in the stage's reused buffer between a change and its hand-on,
/// and a box would cost an allocation per session on the event path.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Completed {
    /// A session began.
    Began(SessionBegan),
    /// A socket found open when tracing started is gone without a transition seen (its address
    /// is a new socket's).
    Vanished(SessionBegan),
    /// The session left a state.
    State(StateEnded),
    /// The session ended. Boxed: the largest of these by far, and completions are moved
    /// through a list and held a while.
    Session(Box<SessionEnded>),
}

/// Open sessions, keyed by socket cookie, bounded.
pub struct SessionTable {
    open: LruCache<u64, Session>,
    /// Socket address → cookie of the open session there.
    by_address: HashMap<u64, u64>,
    /// Sockets whose session was evicted, as long as they have not shown up again: cookie → the
    /// next free state-span index, which a continuation's own span takes. As bounded as `open`.
    evicted: LruCache<u64, u32>,
    /// Accepted sockets seen only at their first transition, by address, waiting for the next
    /// one to tell their own cookie. As bounded as `open`: one whose next transition was lost
    /// at an address never reused would otherwise stay for ever.
    accepting: LruCache<u64, StateChange>,
    /// Connection requests whose SYN-ACK was sent again, by the cookie their socket will have.
    /// As bounded as `open`: most requests of a SYN flood never become sockets.
    requests: LruCache<u64, Request>,
    /// Sockets found open when tracing started, by address, until their first transition. At
    /// most as many as `open` holds.
    found: HashMap<u64, Found>,
    evictions: u64,
    /// Evicted sockets pushed out of `evicted` (full) before they showed up again.
    forgotten: u64,
    /// Open connections' ends (network namespace, local, remote) → cookie, to link the two
    /// ends of a connection on this host. As bounded as `open`.
    by_tuple: HashMap<Tuple, u64>,
    /// Open listeners by (network namespace, port) → cookie, to link the sockets they accept.
    listeners: HashMap<(u32, u16), u64>,
    /// The host's boot id: with a socket's cookie, its trace's ids.
    boot_id: BootId,
}

impl SessionTable {
    /// A table holding at most `capacity` open sessions, whose trace ids derive from
    /// `boot_id` and each socket's cookie.
    pub fn new(capacity: NonZeroUsize, boot_id: BootId) -> Self {
        Self {
            open: crate::bounded::lru(capacity),
            by_address: HashMap::new(),
            evicted: crate::bounded::lru(capacity),
            accepting: crate::bounded::lru(capacity),
            requests: crate::bounded::lru(capacity),
            found: HashMap::new(),
            evictions: 0,
            forgotten: 0,
            by_tuple: HashMap::new(),
            listeners: HashMap::new(),
            boot_id,
        }
    }

    /// Sessions ended early because the table was full, and accepted sockets never seen past
    /// a first transition that carried their listener's cookie (no trace can be theirs).
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Evicted sessions forgotten (too many evicted at once) before their socket showed up
    /// again: such a socket's later states start its trace over, so their spans take ids its
    /// first part's spans already had.
    pub fn forgotten(&self) -> u64 {
        self.forgotten
    }

    /// Open sessions.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Applies one state change; what it completes is appended to `out`.
    pub fn observe(&mut self, change: &StateChange, out: &mut Vec<Completed>) {
        if change.oldstate == TcpState(LISTEN) && change.newstate == TcpState(SYN_RECV) {
            // Replaced at its address, or the oldest when full: either way never seen again.
            if let Some((_, earlier)) = self.accepting.push(change.skaddr, *change) {
                self.apply_first_alone(&earlier, out);
            }
            return;
        }
        if let Some(first) = self.accepting.pop(&change.skaddr) {
            let first = StateChange {
                cookie: change.cookie,
                ..first
            };
            self.apply(&first, out);
        }
        self.apply(change, out);
    }

    /// Forgets the first transition of the accepted socket at `skaddr`, if it is waiting for
    /// its next one: the socket is left out.
    pub fn forget_accepted(&mut self, skaddr: u64) {
        self.accepting.pop(&skaddr);
    }

    /// Applies the first transition of an accepted socket never seen again: under the cookie it
    /// carried, unless that cookie is another open socket's (its listener's), in which case it
    /// cannot be given a trace of its own and is counted with the evictions.
    fn apply_first_alone(&mut self, first: &StateChange, out: &mut Vec<Completed>) {
        let borrowed = self
            .open
            .peek(&first.cookie)
            .is_some_and(|session| session.skaddr != first.skaddr);
        if borrowed {
            self.evictions += 1;
        } else {
            self.apply(first, out);
        }
    }

    /// [`Self::observe`] for a change whose cookie is its socket's own.
    fn apply(&mut self, change: &StateChange, out: &mut Vec<Completed>) {
        let cookie = change.cookie;
        // A socket's first transition at the address of a session whose CLOSE was lost ends that
        // stale session here.
        if starts_socket(change.oldstate.0, change.newstate.0)
            && let Some(&stale) = self.by_address.get(&change.skaddr)
            && stale != cookie
        {
            // Remembered as evicted ones are: should a late change of it still come (the
            // stream out of order), it continues its trace instead of starting it over.
            self.evict(stale, change.ts_ns, out);
        }
        // Whether the socket has an open session: nothing below changes that until its session
        // is entered (the sessions ended here are other sockets').
        let open = self.open.contains(&cookie);
        // Only a socket that was under way can be one evicted earlier; the check keeps the
        // lookup off the path of every new socket while nothing is evicted. Taken before the
        // eviction below, which could otherwise push this very socket's entry out of `evicted`.
        let continues = (!self.evicted.is_empty()
            && !starts_socket(change.oldstate.0, change.newstate.0)
            && !open)
            .then(|| self.evicted.pop(&cookie))
            .flatten();
        // A socket found open at the start shows its cookie at its first transition after it
        // was found. One whose address a new socket has is gone; one whose transition came
        // before it was found (between the programs' attachment and the listing) is taken back,
        // and followed from its transitions as any other.
        let found = (!self.found.is_empty() && !open)
            .then(|| self.found.remove(&change.skaddr))
            .flatten()
            .filter(|found| {
                let superseded = starts_socket(change.oldstate.0, change.newstate.0)
                    || change.ts_ns < found.change.ts_ns;
                if superseded {
                    out.push(Completed::Vanished(found.began()));
                }
                !superseded
            });
        if !open
            && self.open.len() == self.open.cap().get()
            && let Some((&oldest, _)) = self.open.peek_lru()
        {
            self.evict(oldest, change.ts_ns, out);
        }
        let created = !open;
        let session = self.open.get_or_insert_mut(cookie, || {
            // As found, when it was (its owner known, its state timed from then on).
            let (first, role) = match &found {
                Some(found) => (&found.change, found.role),
                None => (change, Role::of_first(change)),
            };
            Session {
                ids: ConnectionIds::new(&self.boot_id, cookie),
                cookie,
                skaddr: change.skaddr,
                context: Context::of(first),
                role,
                start_ns: first.ts_ns,
                endpoints: Endpoints::of(first),
                first_pid: first.pid,
                first_comm: first.comm,
                state: first.oldstate,
                state_since_ns: found.as_ref().map(|found| found.change.ts_ns),
                states_done: continues.map_or(0, |index| index + 1),
                continues,
                reset_sent: false,
                found_at_start: found.is_some(),
                state_start_unknown: found.is_some(),
                retransmits: Retransmits::default(),
                links: Links::default(),
                indexed: false,
            }
        });
        if created {
            self.by_address.insert(change.skaddr, cookie);
        }
        session.endpoints.update(Endpoints::of(change));
        // Looked up again only when relating it needed the whole table.
        let session = if created || !session.indexed {
            let (role, netns, ends) = (session.role, session.context.netns, session.endpoints);
            self.relate(cookie, role, netns, &ends, created);
            let Some(session) = self.open.peek_mut(&cookie) else {
                return;
            };
            session
        } else {
            session
        };
        if session.context.owner.is_none() {
            session.context.owner = change.owner;
        }
        if let Some(start_ns) = session.state_since_ns {
            out.push(Completed::State(StateEnded {
                ids: session.ids,
                index: session.states_done,
                parent_span_id: session.span_id(),
                state: change.oldstate,
                next_state: Some(change.newstate),
                start_ns,
                end_ns: change.ts_ns,
                incomplete: None,
                start_unknown: session.state_start_unknown,
                retransmits: std::mem::take(&mut session.retransmits),
                failure: Failure::of_close(change, session.reset_sent),
                endpoints: session.endpoints,
                context: session.context,
                role: session.role,
            }));
            session.states_done += 1;
            session.state_start_unknown = false;
        }
        session.state = change.newstate;
        session.state_since_ns = Some(change.ts_ns);
        // The kernel makes an accepted socket only when the handshake's last ACK arrives; the
        // request it was made of, whose SYN-ACKs had to be sent again, began at its first one.
        if created && let Some(request) = self.requests.pop(&cookie) {
            session.retransmits = request.retransmits;
            if request.requested_ns < change.ts_ns {
                session.state_since_ns = Some(request.requested_ns);
                session.start_ns = session.start_ns.min(request.requested_ns);
            }
        }
        if created && found.is_none() && change.newstate != TcpState(CLOSE) {
            out.push(Completed::Began(SessionBegan {
                state: change.newstate,
                ts_ns: change.ts_ns,
                endpoints: session.endpoints,
                context: session.context,
                role: session.role,
            }));
        }
        if change.newstate == TcpState(CLOSE)
            && let Some(session) = self.remove(cookie)
        {
            out.push(Completed::Session(Box::new(SessionEnded {
                outcome: Outcome::of_close(change, session.reset_sent),
                session,
                end_ns: change.ts_ns,
                last_state: change.oldstate,
                close: change.close,
                incomplete: None,
            })));
        }
    }

    /// Notes that the open session of `cookie` sent a reset; whether one is open.
    pub fn reset_sent(&mut self, cookie: u64) -> bool {
        match self.open.peek_mut(&cookie) {
            Some(session) => {
                session.reset_sent = true;
                true
            }
            None => false,
        }
    }

    /// The sockets open when tracing started (`sockets`: each a transition from its state to
    /// itself, with an owner that holds it): each is counted as begun in its state, and becomes
    /// a session at its first transition, which tells its cookie. A socket in a listening
    /// port's namespace and port is taken for an accepted one. At most as many as the table
    /// holds; sockets in CLOSE (not connected) are left out.
    pub fn found_at_start(&mut self, sockets: &[StateChange], out: &mut Vec<Completed>) {
        let listening: std::collections::HashSet<(u32, u16)> = sockets
            .iter()
            .filter(|socket| socket.newstate == TcpState(LISTEN))
            .map(|socket| (socket.netns, socket.local_port))
            .chain(self.listeners.keys().copied())
            .collect();
        for socket in sockets {
            if socket.newstate == TcpState(CLOSE) || self.found.len() >= self.open.cap().get() {
                continue;
            }
            let role = match socket.newstate.0 {
                LISTEN => Role::Listen,
                SYN_SENT => Role::Connect,
                _ if listening.contains(&(socket.netns, socket.local_port)) => Role::Accept,
                _ => Role::Connect,
            };
            let found = Found {
                change: *socket,
                role,
            };
            out.push(Completed::Began(found.began()));
            self.found.insert(socket.skaddr, found);
        }
    }

    /// A socket sent a segment again: a span event of the state its session is in. A SYN-ACK
    /// of a connection request waits for the socket the request becomes.
    pub fn retransmitted(&mut self, retransmit: &Retransmit) {
        if let Some(session) = self.open.peek_mut(&retransmit.cookie) {
            session.retransmits.push(retransmit.ts_ns, retransmit.kind);
        } else if let Some(requested_ns) = retransmit.requested_ns {
            self.requests
                .get_or_insert_mut(retransmit.cookie, || Request {
                    requested_ns,
                    retransmits: Retransmits::default(),
                })
                .retransmits
                .push(retransmit.ts_ns, retransmit.kind);
        }
    }

    /// Ends every open session at `now_ns` (tracing is stopping), accepted sockets seen only at
    /// their first transition included.
    pub fn end_all(&mut self, now_ns: u64, out: &mut Vec<Completed>) {
        while let Some((_, first)) = self.accepting.pop_lru() {
            self.apply_first_alone(&first, out);
        }
        while let Some((_, session)) = self.open.pop_lru() {
            end_early(session, now_ns, Incomplete::Shutdown, out);
        }
        self.by_address.clear();
        self.by_tuple.clear();
        self.listeners.clear();
        self.evicted.clear();
        self.requests.clear();
        self.found.clear();
    }

    /// Ends the open session `cookie` early, counts it, and remembers where its trace is, in
    /// case its socket shows up again.
    fn evict(&mut self, cookie: u64, end_ns: u64, out: &mut Vec<Completed>) {
        if let Some(next_index) = self.end(cookie, end_ns, Incomplete::Evicted, out)
            && let Some((pushed_out, _)) = self.evicted.push(cookie, next_index)
            && pushed_out != cookie
        {
            self.forgotten += 1;
        }
        self.evictions += 1;
    }

    /// Ends the open session `cookie` early; returns the next free state-span index of its
    /// trace, if it was open.
    fn end(
        &mut self,
        cookie: u64,
        end_ns: u64,
        why: Incomplete,
        out: &mut Vec<Completed>,
    ) -> Option<u32> {
        let session = self.remove(cookie)?;
        Some(end_early(session, end_ns, why, out))
    }

    /// Removes the open session `cookie` from every index.
    fn remove(&mut self, cookie: u64) -> Option<Session> {
        let session = self.open.pop(&cookie)?;
        if self.by_address.get(&session.skaddr) == Some(&cookie) {
            self.by_address.remove(&session.skaddr);
        }
        let ends = &session.endpoints;
        let tuple = tuple(session.context.netns, ends);
        if self.by_tuple.get(&tuple) == Some(&cookie) {
            self.by_tuple.remove(&tuple);
        }
        let listening = (session.context.netns, ends.local_port);
        if session.role == Role::Listen && self.listeners.get(&listening) == Some(&cookie) {
            self.listeners.remove(&listening);
        }
        Some(session)
    }

    /// Finds the sessions the open session `cookie` relates to: a new listener is entered by
    /// its port; a new accepted socket links to the listener on its port; a connection's end,
    /// once both its ports are known, is entered by its ends and linked with the other end's
    /// session if that one is open too (both get the link).
    fn relate(&mut self, cookie: u64, role: Role, netns: u32, ends: &Endpoints, created: bool) {
        match role {
            Role::Listen if created => {
                self.listeners.insert((netns, ends.local_port), cookie);
            }
            Role::Accept if created => {
                let listener = self
                    .listeners
                    .get(&(netns, ends.local_port))
                    .and_then(|listener| self.open.peek(listener))
                    .map(|listener| listener.ids);
                if let Some(session) = self.open.peek_mut(&cookie) {
                    session.links.listener = listener;
                }
            }
            _ => {}
        }
        let linkable = matches!(role, Role::Connect | Role::Accept)
            && ends.local_port != 0
            && ends.remote_port != 0;
        let tuple = tuple(netns, ends);
        if !linkable || self.by_tuple.contains_key(&tuple) {
            return;
        }
        self.by_tuple.insert(tuple, cookie);
        if let Some(session) = self.open.peek_mut(&cookie) {
            session.indexed = true;
        }
        let (_, local, remote) = tuple;
        let Some(&other) = self.by_tuple.get(&(netns, remote, local)) else {
            return;
        };
        let Some(other_ids) = self.open.peek(&other).map(|session| session.ids) else {
            return;
        };
        let Some(ids) = self.open.peek_mut(&cookie).map(|session| {
            session.links.peer = Some(other_ids);
            session.ids
        }) else {
            return;
        };
        if let Some(session) = self.open.peek_mut(&other) {
            session.links.peer = Some(ids);
        }
    }
}

/// The index key of a connection's end.
fn tuple(netns: u32, ends: &Endpoints) -> Tuple {
    (
        netns,
        SocketAddr::new(ends.local_addr.to_canonical(), ends.local_port),
        SocketAddr::new(ends.remote_addr.to_canonical(), ends.remote_port),
    )
}

/// Ends `session` at `end_ns`, its current state included; returns the next free state-span
/// index of its trace.
fn end_early(mut session: Session, end_ns: u64, why: Incomplete, out: &mut Vec<Completed>) -> u32 {
    let mut next_index = session.states_done;
    if let Some(start_ns) = session.state_since_ns {
        out.push(Completed::State(StateEnded {
            ids: session.ids,
            index: next_index,
            parent_span_id: session.span_id(),
            state: session.state,
            next_state: None,
            start_ns,
            end_ns: end_ns.max(start_ns),
            incomplete: Some(why),
            start_unknown: session.state_start_unknown,
            retransmits: std::mem::take(&mut session.retransmits),
            failure: None,
            endpoints: session.endpoints,
            context: session.context,
            role: session.role,
        }));
        next_index += 1;
    }
    out.push(Completed::Session(Box::new(SessionEnded {
        end_ns: end_ns.max(session.start_ns),
        last_state: session.state,
        close: None,
        session,
        outcome: Outcome::Normal,
        incomplete: Some(why),
    })));
    next_index
}

pub mod stage;

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use agent_common::{
        correlation::BootId,
        event::COMM_LEN,
        state::{CLOSE_WAIT, ESTABLISHED, FIN_WAIT1, FIN_WAIT2, LAST_ACK},
    };

    use super::*;
    use crate::failure::ResetDirection;

    /// A change of the socket at `skaddr` whose cookie is `skaddr` too (see [`reborn`] for a
    /// new socket at an old address).
    fn change(skaddr: u64, ts_ns: u64, old: u32, new: u32, lport: u16) -> StateChange {
        StateChange {
            ts_ns,
            skaddr,
            cookie: skaddr,
            owner: None,
            uid: 0,
            netns: 1,
            cgroup_id: 1,
            span_ns: 0,
            pid: 7,
            comm: Comm::new([b'x'; COMM_LEN]),
            local_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            local_port: lport,
            remote_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            remote_port: 80,
            oldstate: TcpState(old),
            newstate: TcpState(new),
            reset_received: false,
            close: (new == CLOSE).then(Close::default),
        }
    }

    /// `change` for a new socket (cookie `cookie`) at an address an earlier socket had.
    fn reborn(cookie: u64, change: StateChange) -> StateChange {
        StateChange { cookie, ..change }
    }

    /// The boot id of the tests' traces.
    const BOOT_ID: BootId = BootId([7; 16]);

    /// Feeds `changes` to a table of `capacity`; returns what completed.
    fn run(capacity: usize, changes: &[StateChange]) -> (SessionTable, Vec<Completed>) {
        let mut table = SessionTable::new(NonZeroUsize::new(capacity).expect("non-zero"), BOOT_ID);
        let mut out = Vec::new();
        for change in changes {
            table.observe(change, &mut out);
        }
        (table, out)
    }

    #[test]
    fn an_accepted_socket_that_first_carries_its_listeners_cookie_is_a_session_of_its_own() {
        // As Linux 6.1 reports them: the accepted socket (address 2) carries the listener's
        // cookie 1 at LISTEN -> SYN_RECV, its own cookie 3 from then on.
        let (table, out) = run(
            8,
            &[
                change(1, 10, CLOSE, LISTEN, 80),
                StateChange {
                    cookie: 1,
                    ..change(2, 20, LISTEN, SYN_RECV, 80)
                },
                StateChange {
                    cookie: 3,
                    ..change(2, 30, SYN_RECV, ESTABLISHED, 80)
                },
                StateChange {
                    cookie: 3,
                    ..change(2, 40, ESTABLISHED, CLOSE, 80)
                },
                change(1, 50, LISTEN, CLOSE, 80),
            ],
        );
        let ended = sessions(&out);
        let summary: Vec<_> = ended
            .iter()
            .map(|(session, end_ns, _, why)| {
                (
                    session.cookie,
                    session.role,
                    session.start_ns,
                    *end_ns,
                    *why,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (3, Role::Accept, 20, 40, None),
                (1, Role::Listen, 10, 50, None)
            ]
        );
        assert_eq!(
            states(&out),
            [
                ("SYN_RECV".into(), 20, 30),
                ("ESTABLISHED".into(), 30, 40),
                ("LISTEN".into(), 10, 50),
            ],
            "the listener's LISTEN is one state, the accepted socket's states its own"
        );
        assert!(table.is_empty());
        assert_eq!(table.evictions(), 0);
    }

    #[test]
    fn an_accepted_socket_seen_only_at_its_first_transition_ends_with_the_rest() {
        let mut table = SessionTable::new(NonZeroUsize::new(8).expect("non-zero"), BOOT_ID);
        let mut out = Vec::new();
        for change in [
            change(1, 10, CLOSE, LISTEN, 80),
            // Its own cookie (as on 6.18): a session of its own at the end.
            change(2, 20, LISTEN, SYN_RECV, 80),
            // Its listener's cookie (as on 6.1): no trace can be its own; counted.
            StateChange {
                cookie: 1,
                ..change(4, 30, LISTEN, SYN_RECV, 80)
            },
        ] {
            table.observe(&change, &mut out);
        }
        assert!(
            out.iter().all(|c| matches!(c, Completed::Began(_))),
            "nothing ends before the end: {out:?}"
        );
        table.end_all(99, &mut out);
        let mut summary: Vec<_> = sessions(&out)
            .iter()
            .map(|(session, end_ns, _, why)| (session.cookie, session.role, *end_ns, *why))
            .collect();
        summary.sort_by_key(|entry| entry.0);
        assert_eq!(
            summary,
            [
                (1, Role::Listen, 99, Some(Incomplete::Shutdown)),
                (2, Role::Accept, 99, Some(Incomplete::Shutdown)),
            ]
        );
        assert_eq!(table.evictions(), 1);
    }

    fn states(out: &[Completed]) -> Vec<(String, u64, u64)> {
        out.iter()
            .filter_map(|c| match c {
                Completed::State(StateEnded {
                    state,
                    start_ns,
                    end_ns,
                    ..
                }) => Some((state.to_string(), *start_ns, *end_ns)),
                Completed::Began(_) | Completed::Vanished(_) | Completed::Session(_) => None,
            })
            .collect()
    }

    fn sessions(out: &[Completed]) -> Vec<(&Session, u64, Outcome, Option<Incomplete>)> {
        out.iter()
            .filter_map(|c| match c {
                Completed::Session(ended) => Some((
                    &ended.session,
                    ended.end_ns,
                    ended.outcome,
                    ended.incomplete,
                )),
                Completed::Began(_)
                | Completed::Vanished(_)
                | Completed::State(StateEnded { .. }) => None,
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
            matches!(out.last(), Some(Completed::Session(_))),
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
    fn an_accepted_socket_links_to_its_listener_and_the_two_ends_to_each_other() {
        let at = |skaddr, ts, old, new, lport, rport| StateChange {
            remote_port: rport,
            ..change(skaddr, ts, old, new, lport)
        };
        let (_, out) = run(
            8,
            &[
                at(3, 1, CLOSE, LISTEN, 80, 0),
                at(1, 2, CLOSE, SYN_SENT, 0, 80),
                at(2, 3, LISTEN, SYN_RECV, 80, 4000),
                at(1, 4, SYN_SENT, ESTABLISHED, 4000, 80),
                at(2, 5, SYN_RECV, ESTABLISHED, 80, 4000),
                at(1, 6, ESTABLISHED, FIN_WAIT1, 4000, 80),
                at(2, 7, ESTABLISHED, CLOSE_WAIT, 80, 4000),
                at(1, 8, FIN_WAIT1, FIN_WAIT2, 4000, 80),
                at(2, 9, CLOSE_WAIT, LAST_ACK, 80, 4000),
                at(1, 10, FIN_WAIT2, CLOSE, 4000, 80),
                at(2, 11, LAST_ACK, CLOSE, 80, 4000),
                at(3, 12, LISTEN, CLOSE, 80, 0),
            ],
        );
        let links: HashMap<u64, Links> = sessions(&out)
            .iter()
            .map(|(session, ..)| (session.cookie, session.links))
            .collect();
        let ids = |cookie| Some(ConnectionIds::new(&BOOT_ID, cookie));
        assert_eq!(
            links[&1],
            Links {
                listener: None,
                peer: ids(2)
            }
        );
        assert_eq!(
            links[&2],
            Links {
                listener: ids(3),
                peer: ids(1)
            }
        );
        assert_eq!(links[&3], Links::default());
    }

    #[test]
    fn a_failure_is_what_the_socket_reported_at_close() {
        let refused = StateChange {
            close: Some(Close {
                error: Some(libc::ECONNREFUSED.unsigned_abs()),
                ..Close::default()
            }),
            ..change(1, 2, SYN_SENT, CLOSE, 4000)
        };
        let reset = StateChange {
            reset_received: true,
            ..change(2, 5, ESTABLISHED, CLOSE, 4001)
        };
        let mut table = SessionTable::new(NonZeroUsize::new(8).expect("non-zero"), BOOT_ID);
        let mut out = Vec::new();
        for change in [
            change(1, 1, CLOSE, SYN_SENT, 0),
            refused,
            change(2, 3, CLOSE, SYN_SENT, 0),
            change(2, 4, SYN_SENT, ESTABLISHED, 4001),
            reset,
            change(3, 6, CLOSE, SYN_SENT, 0),
            change(3, 7, SYN_SENT, ESTABLISHED, 4002),
        ] {
            table.observe(&change, &mut out);
        }
        // Socket 3 sends a reset (an abort) before its CLOSE; ESTABLISHED -> CLOSE alone is
        // no failure.
        assert!(table.reset_sent(3));
        assert!(!table.reset_sent(99), "no such session");
        table.observe(&change(3, 8, ESTABLISHED, CLOSE, 4002), &mut out);
        table.observe(&change(4, 9, CLOSE, SYN_SENT, 0), &mut out);
        table.observe(&change(4, 10, SYN_SENT, ESTABLISHED, 4003), &mut out);
        table.observe(&change(4, 11, ESTABLISHED, CLOSE, 4003), &mut out);
        let outcomes: Vec<_> = sessions(&out).iter().map(|s| s.2).collect();
        assert_eq!(
            outcomes,
            [
                Outcome::Failed(Failure::ConnectionRefused),
                Outcome::Failed(Failure::ConnectionReset(Some(ResetDirection::Received))),
                Outcome::Failed(Failure::ConnectionReset(Some(ResetDirection::Sent))),
                Outcome::Normal,
            ]
        );
    }

    #[test]
    fn a_reused_address_starts_a_new_session_and_ends_the_stale_one() {
        let (table, out) = run(
            8,
            &[
                change(1, 10, CLOSE, SYN_SENT, 0),
                change(1, 20, SYN_SENT, ESTABLISHED, 4000),
                // Its CLOSE was lost; a new socket gets the same address.
                reborn(9, change(1, 1_000, CLOSE, SYN_SENT, 0)),
                reborn(9, change(1, 1_005, SYN_SENT, ESTABLISHED, 4001)),
            ],
        );
        let ended = sessions(&out);
        assert_eq!(ended.len(), 1);
        assert_eq!(
            (ended[0].0.ids.cookie(), ended[0].3),
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

    /// The spans of the trace `ids` that `out` holds, as (span id, parent span id, index of a
    /// state or `None` for a session's own span), in order.
    fn spans_of(ids: &ConnectionIds, out: &[Completed]) -> Vec<([u8; 8], [u8; 8], Option<u32>)> {
        out.iter()
            .filter_map(|c| match c {
                Completed::State(StateEnded {
                    ids: of,
                    index,
                    parent_span_id,
                    ..
                }) => {
                    (of == ids).then(|| (ids.state_span_id(*index), *parent_span_id, Some(*index)))
                }
                Completed::Session(ended) => (ended.session.ids == *ids).then(|| {
                    let parent = ended.session.parent_span_id().unwrap_or([0; 8]);
                    (ended.session.span_id(), parent, None)
                }),
                Completed::Began(_) | Completed::Vanished(_) => None,
            })
            .collect()
    }

    #[test]
    fn an_evicted_socket_that_lives_on_continues_under_its_root() {
        let (table, out) = run(
            2,
            &[
                change(1, 10, CLOSE, SYN_SENT, 0),
                change(1, 20, SYN_SENT, ESTABLISHED, 4001),
                change(2, 30, CLOSE, SYN_SENT, 0),
                // Evicts socket 1; socket 1 comes back and evicts socket 2.
                change(3, 40, CLOSE, SYN_SENT, 0),
                change(1, 50, ESTABLISHED, FIN_WAIT1, 4001),
                change(1, 60, FIN_WAIT1, FIN_WAIT2, 4001),
                change(3, 65, SYN_SENT, ESTABLISHED, 4003),
                // Evicts socket 1's continuation; its CLOSE then evicts socket 3.
                change(4, 70, CLOSE, SYN_SENT, 0),
                change(1, 80, FIN_WAIT2, CLOSE, 4001),
            ],
        );
        let ids = ConnectionIds::new(&BootId([7; 16]), 1);
        let (root, state) = (ids.root_span_id, |n| ids.state_span_id(n));
        assert_eq!(
            spans_of(&ids, &out),
            [
                (state(0), root, Some(0)),
                (state(1), root, Some(1)),
                (root, [0; 8], None),
                // The first continuation takes span 2; its ESTABLISHED was not timed again.
                (state(3), state(2), Some(3)),
                (state(4), state(2), Some(4)),
                (state(2), root, None),
                // The second takes the next free one and has no state of its own.
                (state(5), root, None),
            ],
            "every span id of socket 1's trace differs; continuations hang under the root"
        );
        assert_eq!(
            states(&out),
            [
                ("SYN_SENT".into(), 10, 20),
                ("ESTABLISHED".into(), 20, 40),
                ("SYN_SENT".into(), 30, 50),
                ("FIN_WAIT1".into(), 50, 60),
                ("SYN_SENT".into(), 40, 65),
                ("FIN_WAIT2".into(), 60, 70),
                ("ESTABLISHED".into(), 65, 80),
            ]
        );
        let ended: Vec<_> = sessions(&out)
            .iter()
            .map(|(session, end_ns, _, why)| (session.cookie, session.continues, *end_ns, *why))
            .collect();
        let evicted = Some(Incomplete::Evicted);
        assert_eq!(
            ended,
            [
                (1, None, 40, evicted),
                (2, None, 50, evicted),
                (1, Some(2), 70, evicted),
                (3, None, 80, evicted),
                (1, Some(5), 80, None),
            ]
        );
        assert_eq!((table.len(), table.evictions()), (1, 4));
    }

    #[test]
    fn a_new_socket_at_a_closed_sockets_address_is_a_new_session() {
        let (table, out) = run(
            8,
            &[
                change(1, 10, CLOSE, SYN_SENT, 0),
                change(1, 20, SYN_SENT, CLOSE, 4000),
                reborn(2, change(1, 30, CLOSE, SYN_SENT, 0)),
                reborn(2, change(1, 45, SYN_SENT, ESTABLISHED, 4001)),
            ],
        );
        let ended = sessions(&out);
        assert_eq!(ended.len(), 1);
        assert_eq!((ended[0].0.cookie, ended[0].0.ids.cookie()), (1, 1));
        assert_eq!(table.evictions(), 0, "nothing stale: the first one closed");
        assert_eq!(
            states(&out),
            [("SYN_SENT".into(), 10, 20), ("SYN_SENT".into(), 30, 45)],
            "the new socket's first state starts at its own open"
        );
        let indexes: Vec<u32> = out
            .iter()
            .filter_map(|c| match c {
                Completed::State(StateEnded { index, .. }) => Some(*index),
                Completed::Began(_) | Completed::Vanished(_) | Completed::Session(_) => None,
            })
            .collect();
        assert_eq!(indexes, [0, 0], "each session numbers its own states");
    }

    /// The state spans of `out`: (state, start, end, retransmissions).
    fn retransmits_by_state(out: &[Completed]) -> Vec<(String, u64, u64, Retransmits)> {
        out.iter()
            .filter_map(|c| match c {
                Completed::State(ended) => Some((
                    ended.state.to_string(),
                    ended.start_ns,
                    ended.end_ns,
                    ended.retransmits.clone(),
                )),
                Completed::Began(_) | Completed::Vanished(_) | Completed::Session(_) => None,
            })
            .collect()
    }

    fn retransmit(cookie: u64, ts_ns: u64, kind: RetransmitKind) -> Retransmit {
        Retransmit {
            ts_ns,
            cookie,
            kind,
            requested_ns: None,
        }
    }

    #[test]
    fn a_retransmission_belongs_to_the_state_its_session_is_in() {
        let mut table = SessionTable::new(NonZeroUsize::new(8).expect("non-zero"), BOOT_ID);
        let mut out = Vec::new();
        table.observe(&change(1, 10, CLOSE, SYN_SENT, 5000), &mut out);
        table.retransmitted(&retransmit(1, 1_010, RetransmitKind::Syn));
        table.retransmitted(&retransmit(1, 3_010, RetransmitKind::Syn));
        // Another socket's, and one of no session: neither is this session's.
        table.retransmitted(&retransmit(2, 3_020, RetransmitKind::Data));
        table.observe(&change(1, 3_100, SYN_SENT, ESTABLISHED, 5000), &mut out);
        for ts_ns in 0..MAX_RETRANSMITS_PER_STATE as u64 + 3 {
            table.retransmitted(&retransmit(1, 4_000 + ts_ns, RetransmitKind::Data));
        }
        table.observe(&change(1, 9_000, ESTABLISHED, CLOSE, 5000), &mut out);
        let states = retransmits_by_state(&out);
        let [(syn_sent, ..), (established, ..)] = states.as_slice() else {
            panic!("two states: {states:#?}");
        };
        assert_eq!(syn_sent, "SYN_SENT");
        assert_eq!(
            states[0].3,
            Retransmits {
                kept: vec![(1_010, RetransmitKind::Syn), (3_010, RetransmitKind::Syn)],
                beyond: 0,
            }
        );
        assert_eq!(established, "ESTABLISHED");
        assert_eq!(states[1].3.kept.len(), MAX_RETRANSMITS_PER_STATE);
        assert_eq!(states[1].3.beyond, 3, "beyond the kept ones, counted");
        assert!(
            states[1]
                .3
                .kept
                .iter()
                .all(|(_, kind)| *kind == RetransmitKind::Data)
        );
    }

    #[test]
    fn syn_acks_of_a_request_go_to_the_socket_it_becomes_whose_syn_recv_begins_at_the_request() {
        let mut table = SessionTable::new(NonZeroUsize::new(8).expect("non-zero"), BOOT_ID);
        let mut out = Vec::new();
        table.observe(&change(1, 10, CLOSE, LISTEN, 80), &mut out);
        // The request that becomes socket 2 (cookie 2): first SYN-ACK at 100, sent again at
        // 1_100 and 3_100; the socket is made at 3_200.
        for ts_ns in [1_100, 3_100] {
            table.retransmitted(&Retransmit {
                requested_ns: Some(100),
                ..retransmit(2, ts_ns, RetransmitKind::SynAck)
            });
        }
        // A request that never becomes a socket stays apart.
        table.retransmitted(&Retransmit {
            requested_ns: Some(150),
            ..retransmit(9, 1_150, RetransmitKind::SynAck)
        });
        table.observe(&change(2, 3_200, LISTEN, SYN_RECV, 80), &mut out);
        table.observe(&change(2, 3_210, SYN_RECV, ESTABLISHED, 80), &mut out);
        table.observe(&change(2, 4_000, ESTABLISHED, CLOSE, 80), &mut out);
        let states = retransmits_by_state(&out);
        assert_eq!(
            states[0],
            (
                "SYN_RECV".to_owned(),
                100,
                3_210,
                Retransmits {
                    kept: vec![
                        (1_100, RetransmitKind::SynAck),
                        (3_100, RetransmitKind::SynAck)
                    ],
                    beyond: 0,
                }
            )
        );
        assert_eq!(states[1].3, Retransmits::default());
        let accepted = sessions(&out)
            .into_iter()
            .find(|(session, ..)| session.cookie == 2)
            .map(|(session, ..)| session.start_ns);
        assert_eq!(accepted, Some(100), "the session begins with its request");
    }

    #[test]
    fn a_socket_found_at_the_start_becomes_a_session_at_its_first_transition_after() {
        let mut table = SessionTable::new(NonZeroUsize::new(8).expect("non-zero"), BOOT_ID);
        let mut out = Vec::new();
        // Found (cookie unknown: 0) at 100: an established connection (address 1) and one
        // whose address a new socket takes (2), and one whose transition came before the
        // listing (3).
        let found = |skaddr, state| StateChange {
            cookie: 0,
            ..change(skaddr, 100, state, state, 5000)
        };
        table.found_at_start(
            &[
                found(1, ESTABLISHED),
                found(2, ESTABLISHED),
                found(3, ESTABLISHED),
            ],
            &mut out,
        );
        assert_eq!(
            out.iter()
                .filter(|c| matches!(c, Completed::Began(b) if b.state == TcpState(ESTABLISHED)))
                .count(),
            3
        );
        out.clear();
        table.observe(&change(1, 200, ESTABLISHED, FIN_WAIT1, 5000), &mut out);
        table.observe(&change(2, 210, CLOSE, SYN_SENT, 5000), &mut out);
        table.observe(&change(3, 90, SYN_SENT, ESTABLISHED, 5000), &mut out);
        let vanished: Vec<TcpState> = out
            .iter()
            .filter_map(|c| match c {
                Completed::Vanished(found) => Some(found.state),
                _ => None,
            })
            .collect();
        assert_eq!(
            vanished,
            [TcpState(ESTABLISHED), TcpState(ESTABLISHED)],
            "2 and 3"
        );
        let states: Vec<(u64, String, u64, u64, bool)> = out
            .iter()
            .filter_map(|c| match c {
                Completed::State(s) => Some((
                    s.ids.cookie(),
                    s.state.to_string(),
                    s.start_ns,
                    s.end_ns,
                    s.start_unknown,
                )),
                _ => None,
            })
            .collect();
        assert_eq!(
            states,
            [(1, "ESTABLISHED".to_owned(), 100, 200, true)],
            "the found state, timed from when it was found"
        );
        let session = table.open.peek(&1).expect("socket 1's session");
        assert!(session.found_at_start);
        assert_eq!((session.start_ns, session.role), (100, Role::Connect));
    }
}
