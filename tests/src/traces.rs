//! The agent's traces as a receiver ([`crate::otlp`]) got them: spans grouped into one trace per
//! socket session, found by port or by the socket a text line names, the root span each kind of
//! session must have, and the shape every session's trace must have (one child span per state,
//! in order, end to end, covering the root exactly).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use agent_common::correlation::{BootId, ConnectionIds};

use crate::events::HasEvent;
use crate::netns::Netns;
use crate::otlp::{AttrValue, ReceivedSpan, Receiver, SpanKind, StatusCode};
use crate::owners::{cgroup2_root, netns_inode};
use crate::traffic::Transitions;

/// How long a test waits for the spans of traffic it has made. On a quiet host they arrive
/// within half a second (the agent batches spans for 200 ms, rotel for as long again, and the
/// harness waits [`crate::otlp::QUIET`] for the last); on a busy one they queue behind every
/// other session the agent traces.
pub const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(30);

/// Root attribute: the socket's kernel address, in hex like the text output's SKADDR.
pub const SKADDR: &str = "tcpstates.skaddr";
/// Root attribute: pid on the CPU at the session's first transition.
pub const ONCPU_PID: &str = "tcpstates.oncpu.pid";
/// Root attribute: command on the CPU at the session's first transition.
pub const ONCPU_COMM: &str = "tcpstates.oncpu.comm";
/// Root attribute: the socket's cookie, from which the trace and root span ids derive.
pub const COOKIE: &str = "tcpstates.socket.cookie";
/// Attribute of a root or child ended before its CLOSE was seen: `true`.
pub const INCOMPLETE: &str = "tcpstates.session.incomplete";
/// Attribute of a root or child ended before its CLOSE was seen: why (`shutdown`, `evicted`).
pub const END_REASON: &str = "tcpstates.session.end_reason";
/// Root attribute of an abnormal end (with status Error).
pub const ERROR_TYPE: &str = "error.type";
/// Attributes the first state span repeats from its root: the connection's ends and its owner.
pub const IDENTITY: [&str; 6] = [
    "network.local.address",
    "network.local.port",
    "network.peer.address",
    "network.peer.port",
    "process.pid",
    "process.executable.name",
];
/// Root attribute: which end reset the connection (`received`, `sent`).
pub const RESET_DIRECTION: &str = "tcpstates.reset.direction";
/// Root attribute: the smoothed round-trip time at CLOSE, µs (absent when never measured).
pub const RTT_SMOOTHED: &str = "tcpstates.rtt.smoothed_us";
/// Root attribute: the minimum round-trip time, µs (absent when never measured).
pub const RTT_MIN: &str = "tcpstates.rtt.min_us";
/// Root attributes every session closed at CLOSE carries: bytes sent (acknowledged) and
/// received, segments retransmitted.
pub const CLOSE_COUNTERS: [&str; 3] = [
    "tcpstates.bytes.sent",
    "tcpstates.bytes.received",
    "tcpstates.retransmits",
];

/// One session's trace: its root span and the other spans of its trace id.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// The root span.
    pub root: ReceivedSpan,
    /// Every other span of the trace, by start time (then end time).
    pub children: Vec<ReceivedSpan>,
}

impl Trace {
    /// The trace of `root` among `spans`.
    pub fn of(root: &ReceivedSpan, spans: &[ReceivedSpan]) -> Trace {
        let mut children: Vec<ReceivedSpan> = spans
            .iter()
            .filter(|span| span.trace_id == root.trace_id && span.span_id != root.span_id)
            .cloned()
            .collect();
        children.sort_by_key(|span| (span.start_unix_nano, span.end_unix_nano));
        Trace {
            root: root.clone(),
            children,
        }
    }

    /// The children's names (the states), in order.
    pub fn states(&self) -> Vec<&str> {
        self.children
            .iter()
            .map(|span| span.name.as_str())
            .collect()
    }

    /// Number of spans, the root included.
    pub fn span_count(&self) -> usize {
        1 + self.children.len()
    }
}

/// The root's port attribute `key` (`network.local.port`, …), if it is a port number.
pub fn port_attr(root: &ReceivedSpan, key: &str) -> Option<u16> {
    root.int_attr(key).and_then(|port| u16::try_from(port).ok())
}

/// Whether `span` is a root span whose local or peer port is `port`.
pub fn is_root_on_port(span: &ReceivedSpan, port: u16) -> bool {
    span.parent_span_id.is_none()
        && (port_attr(span, "network.local.port") == Some(port)
            || port_attr(span, "network.peer.port") == Some(port))
}

/// The traces among `spans` whose root is on `port`, in the order the roots arrived.
pub fn traces_on_port(spans: &[ReceivedSpan], port: u16) -> Vec<Trace> {
    let roots: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|span| is_root_on_port(span, port))
        .collect();
    // One pass over every span: a busy host's agent sends many more than the test's.
    let mut children: HashMap<&str, Vec<ReceivedSpan>> = roots
        .iter()
        .map(|root| (root.trace_id.as_str(), Vec::new()))
        .collect();
    for span in spans {
        if let Some(of_trace) = children.get_mut(span.trace_id.as_str()) {
            of_trace.push(span.clone());
        }
    }
    roots
        .into_iter()
        .map(|root| {
            let of_trace = children
                .get(root.trace_id.as_str())
                .map_or(&[][..], Vec::as_slice);
            Trace::of(root, of_trace)
        })
        .collect()
}

/// Waits until `receiver` holds a trace on `port` for each of the socket lives `lives`, with a
/// span for each transition (the root, and a child for every state after the first), and
/// returns the traces on `port`. Panics after `timeout`, showing the traces on `port` so far.
pub fn await_traces_on_port(
    receiver: &Receiver,
    port: u16,
    lives: &[Transitions],
    timeout: Duration,
) -> Vec<Trace> {
    let spans: usize = lives.iter().map(|life| life.len()).sum();
    let done = |all: &[ReceivedSpan]| {
        let traces = traces_on_port(all, port);
        traces.len() >= lives.len() && traces.iter().map(Trace::span_count).sum::<usize>() >= spans
    };
    match receiver.try_wait_for(done, timeout) {
        Ok(all) => traces_on_port(&all, port),
        Err(all) => panic!(
            "{} sessions on port {port} in {spans} spans did not arrive within {timeout:?} \
             ({} spans received in all); those that did: {:#?}",
            lives.len(),
            all.len(),
            traces_on_port(&all, port)
        ),
    }
}

/// The one trace among `traces` of the socket life `life` (its events as the agent printed
/// them): the root's `tcpstates.skaddr` and ports are those of its last event (the first event
/// of an active open has local port 0). Panics unless there is exactly one.
pub fn trace_of_life<'a, T: HasEvent>(traces: &'a [Trace], life: &[T]) -> &'a Trace {
    let last = life.last().expect("a socket life has events").event();
    let matching: Vec<&Trace> = traces
        .iter()
        .filter(|trace| {
            trace.root.str_attr(SKADDR) == Some(last.skaddr.as_str())
                && port_attr(&trace.root, "network.local.port") == Some(last.lport)
                // A listener's root has no peer; its last line shows RPORT 0.
                && port_attr(&trace.root, "network.peer.port").unwrap_or(0) == last.rport
        })
        .collect();
    match matching.as_slice() {
        [trace] => trace,
        _ => panic!(
            "{} traces of socket {} ({}:{} -> {}:{}) instead of one; traces:\n{traces:#?}",
            matching.len(),
            last.skaddr,
            last.laddr,
            last.lport,
            last.raddr,
            last.rport
        ),
    }
}

/// The states a socket that makes `transitions` spends time in, i.e. its trace's children: the
/// OLDSTATE of every transition after the first (the first one's was not timed).
pub fn timed_states(transitions: Transitions) -> Vec<&'static str> {
    transitions.iter().skip(1).map(|(old, _)| *old).collect()
}

/// The states a socket that made `transitions` and is still open has been in, the current one
/// last: its trace's children when the agent ends it early.
pub fn open_states(transitions: Transitions) -> Vec<&'static str> {
    let mut states = timed_states(transitions);
    states.extend(transitions.last().map(|(_, new)| *new));
    states
}

/// The semantic conventions' `network.connection.state` value of a kernel state name.
pub fn connection_state(state: &str) -> &'static str {
    match state {
        "ESTABLISHED" => "established",
        "SYN_SENT" => "syn_sent",
        "SYN_RECV" => "syn_received",
        "FIN_WAIT1" => "fin_wait_1",
        "FIN_WAIT2" => "fin_wait_2",
        "TIME_WAIT" => "time_wait",
        "CLOSE" => "closed",
        "CLOSE_WAIT" => "close_wait",
        "LAST_ACK" => "last_ack",
        "LISTEN" => "listen",
        "CLOSING" => "closing",
        other => panic!("no network.connection.state for {other:?}"),
    }
}

/// How a session began, which names its root span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `connect()`: CLOSE -> SYN_SENT.
    Connect,
    /// A socket accepted from a listener: LISTEN -> SYN_RECV.
    Accept,
    /// A listener: CLOSE -> LISTEN.
    Listen,
}

impl Role {
    /// The root span's name for a socket of this role at `local` talking to `peer`.
    pub fn root_name(self, local: SocketAddr, peer: SocketAddr) -> String {
        // An IPv4 address of a dual-stack socket (`::ffff:127.0.0.1`) reads as IPv4.
        let canonical = |addr: SocketAddr| SocketAddr::new(addr.ip().to_canonical(), addr.port());
        let (local, peer) = (canonical(local), canonical(peer));
        match self {
            Role::Connect => format!("tcp connect {peer}"),
            Role::Accept => format!("tcp accept {local}"),
            Role::Listen => format!("tcp listen {local}"),
        }
    }

    /// The root span's kind.
    pub fn kind(self) -> SpanKind {
        match self {
            Role::Connect => SpanKind::Client,
            Role::Accept => SpanKind::Server,
            Role::Listen => SpanKind::Internal,
        }
    }

    /// Every attribute the root span of a socket of this role at `local`, talking to `peer`,
    /// must carry when it ends normally: `network.*` (no peer for a listener),
    /// `server.*`/`client.*` by role, and
    /// `tcpstates.*` with the socket address and the on-CPU task of its first transition
    /// (`first`, as the agent printed it).
    pub fn root_attributes<T: HasEvent>(
        self,
        local: SocketAddr,
        peer: SocketAddr,
        first: &T,
    ) -> BTreeMap<String, AttrValue> {
        let first = first.event();
        let str = |value: String| AttrValue::Str(value);
        let port = |addr: SocketAddr| AttrValue::Int(i64::from(addr.port()));
        let network_type = if local.is_ipv4() { "ipv4" } else { "ipv6" };
        let mut attributes = BTreeMap::from([
            ("network.transport".to_owned(), str("tcp".into())),
            ("network.type".to_owned(), str(network_type.into())),
            (
                "network.local.address".to_owned(),
                str(local.ip().to_string()),
            ),
            ("network.local.port".to_owned(), port(local)),
            (SKADDR.to_owned(), str(first.skaddr.clone())),
            (ONCPU_PID.to_owned(), AttrValue::Int(i64::from(first.pid))),
            (ONCPU_COMM.to_owned(), str(first.comm.clone())),
        ]);
        // A listener has no peer.
        if self != Role::Listen {
            attributes.insert(
                "network.peer.address".to_owned(),
                str(peer.ip().to_string()),
            );
            attributes.insert("network.peer.port".to_owned(), port(peer));
        }
        let (server, client) = match self {
            Role::Connect => (Some(peer), Some(local)),
            Role::Accept => (Some(local), Some(peer)),
            Role::Listen => (Some(local), None),
        };
        for (prefix, end) in [("server", server), ("client", client)] {
            if let Some(end) = end {
                attributes.insert(format!("{prefix}.address"), str(end.ip().to_string()));
                attributes.insert(format!("{prefix}.port"), port(end));
            }
        }
        attributes
    }
}

/// Checks the shape of a session's trace: a root without parent; one child per state of
/// `states`, in that order, each INTERNAL, status unset, a child of the root, with
/// its `network.connection.state` and nothing else (the connection's own attributes are the
/// root's); the children
/// end to end (each starts where the previous one ended), the first starting with the root and
/// the last ending with it. `ended_early` is the end reason of a session ended before its CLOSE
/// (`shutdown`): then the root and the last child carry `tcpstates.session.incomplete=true`
/// and that reason; otherwise no span carries them.
pub fn check_trace(trace: &Trace, states: &[&str], ended_early: Option<&str>) {
    let root = &trace.root;
    assert_eq!(root.parent_span_id, None, "root has no parent: {trace:#?}");
    assert_eq!(trace.states(), states, "children of {trace:#?}");
    let early_attributes = (
        root.attributes.get(INCOMPLETE).cloned(),
        root.attributes.get(END_REASON).cloned(),
    );
    let expected_early = match ended_early {
        Some(reason) => (
            Some(AttrValue::Bool(true)),
            Some(AttrValue::Str(reason.into())),
        ),
        None => (None, None),
    };
    assert_eq!(early_attributes, expected_early, "root of {trace:#?}");
    for (index, child) in trace.children.iter().enumerate() {
        let context = format!("child {index} ({}) of {trace:#?}", child.name);
        assert_eq!(child.trace_id, root.trace_id, "{context}");
        assert_eq!(
            child.parent_span_id.as_deref(),
            Some(root.span_id.as_str()),
            "{context}"
        );
        assert_eq!(child.kind, SpanKind::Internal, "{context}");
        let last = index + 1 == trace.children.len();
        let mut expected = BTreeMap::from([(
            "network.connection.state".to_owned(),
            AttrValue::Str(connection_state(&child.name).into()),
        )]);
        // The first state span (the handshake) says whose connection it is on its own, as
        // its root does.
        if index == 0 {
            for key in IDENTITY {
                if let Some(value) = root.attributes.get(key) {
                    expected.insert(key.to_owned(), value.clone());
                }
            }
        }
        // The state the connection failed in carries the root's error (a reset this end sent
        // after its CLOSE too: that state is held with its session for it).
        let failed_in = last && root.attributes.contains_key(ERROR_TYPE);
        if failed_in {
            expected.insert(ERROR_TYPE.to_owned(), root.attributes[ERROR_TYPE].clone());
        }
        let status = if failed_in {
            StatusCode::Error
        } else {
            StatusCode::Unset
        };
        assert_eq!(child.status_code, status, "{context}");
        if let (true, Some(reason)) = (last, ended_early) {
            expected.insert(INCOMPLETE.to_owned(), AttrValue::Bool(true));
            expected.insert(END_REASON.to_owned(), AttrValue::Str(reason.into()));
        }
        assert_eq!(child.attributes, expected, "{context}");
        assert!(
            child.end_unix_nano >= child.start_unix_nano,
            "ends before it starts: {context}"
        );
        let previous_end = match index {
            0 => root.start_unix_nano,
            _ => trace.children[index - 1].end_unix_nano,
        };
        assert_eq!(
            child.start_unix_nano, previous_end,
            "starts where the previous state (or the root) ended: {context}"
        );
    }
    if let Some(last) = trace.children.last() {
        assert_eq!(
            last.end_unix_nano, root.end_unix_nano,
            "the last state ends with the root: {trace:#?}"
        );
    }
}

/// The host's name, as the agent's resource must report it (`host.name`).
pub fn host_name() -> String {
    let path = "/proc/sys/kernel/hostname";
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {path}: {e}"))
        .trim()
        .to_owned()
}

/// The root attributes that describe a socket the test process itself made in `ns`: its owner
/// is this process (`process.*`, read here the way the agent reads them from /proc), the socket's
/// uid is this process's, and it lives in `ns` and in this process's cgroup. The cookie is not
/// among them: see [`check_ids`].
pub fn made_by_this_process(ns: &Netns) -> BTreeMap<String, AttrValue> {
    let exe = std::env::current_exe().expect("the test executable");
    let cmdline = std::fs::read("/proc/self/cmdline").expect("read /proc/self/cmdline");
    let command_line = String::from_utf8_lossy(&cmdline)
        .trim_end_matches('\0')
        .replace('\0', " ");
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let cgroup_path = own_cgroup_path();
    let cgroup_dir = cgroup2_root().join(cgroup_path.trim_start_matches('/'));
    let cgroup_id = std::fs::metadata(&cgroup_dir)
        .unwrap_or_else(|e| panic!("stat {}: {e}", cgroup_dir.display()))
        .ino();
    let int = |value: u64| AttrValue::Int(i64::try_from(value).expect("fits an i64"));
    let mut attributes = BTreeMap::from([
        ("tcpstates.owner.known".to_owned(), AttrValue::Bool(true)),
        ("process.pid".to_owned(), int(u64::from(std::process::id()))),
        (
            "process.executable.name".to_owned(),
            AttrValue::Str(
                exe.file_name()
                    .expect("a file name")
                    .to_string_lossy()
                    .into_owned(),
            ),
        ),
        (
            "process.command_line".to_owned(),
            AttrValue::Str(command_line),
        ),
        ("tcpstates.socket.uid".to_owned(), int(u64::from(uid))),
        ("tcpstates.netns.inode".to_owned(), int(netns_inode(ns))),
        ("tcpstates.cgroup.id".to_owned(), int(cgroup_id)),
        (
            "tcpstates.cgroup.path".to_owned(),
            AttrValue::Str(cgroup_path),
        ),
    ]);
    if let Some(name) = user_name(uid) {
        attributes.insert("process.owner".to_owned(), AttrValue::Str(name));
    }
    attributes
}

/// This process's cgroup v2 path (the `0::` line of /proc/self/cgroup).
fn own_cgroup_path() -> String {
    let text = std::fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .expect("a cgroup v2 line in /proc/self/cgroup")
        .to_owned()
}

/// The name /etc/passwd gives `uid`.
fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        (fields.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_owned())
    })
}

/// Checks that a root span's trace id and span id are the ones derived from this host's boot id
/// and the socket cookie the span carries (`tcpstates.socket.cookie`), as an application holding
/// the socket would derive them; returns the cookie.
pub fn check_ids(root: &ReceivedSpan) -> u64 {
    let cookie = root
        .int_attr(COOKIE)
        .and_then(|cookie| u64::try_from(cookie).ok())
        .unwrap_or_else(|| panic!("no {COOKIE} on {root:#?}"));
    let ids = ConnectionIds::new(&BootId::read().expect("read the boot id"), cookie);
    assert_eq!(
        (root.trace_id.as_str(), root.span_id.as_str()),
        (hex(&ids.trace_id).as_str(), hex(&ids.root_span_id).as_str()),
        "ids derived from the boot id and cookie {cookie}: {root:#?}"
    );
    cookie
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
