//! The kernel matrix: the release agent on Debian's own kernels, booted under qemu.
//!
//! Each guest (see `xtask/src/matrix/guest-init.sh`) runs three agents as uid 65534 with only
//! CAP_BPF + CAP_PERFMON — `-x`, `--json`, `--otlp` to a rotel collector inside the guest —
//! while busybox `nc` listens on 127.0.0.1:8080, connects to it once, and connects to port 9
//! where nothing listens; the classic tracepoint's own records are captured alongside. On every
//! supported kernel each output must tell the same story, the owners must be the `nc`
//! processes, every address and port must be what the kernel's own record says, and every
//! session must arrive as a well-formed trace. A kernel older than the agent supports must get
//! its one-line refusal and exit 1, nothing else.
//!
//! Each test is named `kernel_<role>_…` (dots and dashes as underscores), which is how
//! `cargo xtask matrix --kernel ROLE` selects it.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use integration_tests::events::{self, HasEvent, JsonEvent};
use integration_tests::otlp;
use integration_tests::traces::{self, Role};
use integration_tests::traffic::{self, Closer, Transitions};
use integration_tests::vm::{self, Console, Matrix};

/// The port busybox `nc` listens on in the guest.
const SERVER_PORT: u16 = 8080;
/// A client whose server closes at the same time (both FINs cross).
const CLIENT_CLOSING_WITH_PEER: Transitions = &[
    ("CLOSE", "SYN_SENT"),
    ("SYN_SENT", "ESTABLISHED"),
    ("ESTABLISHED", "FIN_WAIT1"),
    ("FIN_WAIT1", "CLOSING"),
    ("CLOSING", "CLOSE"),
];
/// An accepted socket whose client closes at the same time.
const SERVER_CLOSING_WITH_PEER: Transitions = &[
    ("LISTEN", "SYN_RECV"),
    ("SYN_RECV", "ESTABLISHED"),
    ("ESTABLISHED", "FIN_WAIT1"),
    ("FIN_WAIT1", "CLOSING"),
    ("CLOSING", "CLOSE"),
];
/// Where the guest's listener older than the agents listens.
const EARLY_PORT: u16 = 8081;
/// The port the guest connects to where nothing listens.
const REFUSED_PORT: u16 = 9;
/// The command name of every socket owner in the guest.
const NC: &str = "nc";

#[test]
fn kernel_6_1_oldest_traces_every_output_as_the_host_does() {
    check_supported("6.1-oldest");
}

#[test]
fn kernel_6_1_newest_traces_every_output_as_the_host_does() {
    check_supported("6.1-newest");
}

#[test]
fn kernel_6_12_traces_every_output_as_the_host_does() {
    check_supported("6.12");
}

#[test]
fn kernel_5_10_is_refused_with_one_line() {
    let matrix = Matrix::from_env();
    let kernel = matrix.kernel("5.10");
    assert!(!kernel.supported);
    let console = vm::boot(kernel, &matrix.initramfs);
    report(kernel, &console);
    assert!(console.finished(), "the guest did not finish\n{console}");
    assert_eq!(console.value("text.status"), "1", "{console}");
    let err = console.section("text.err").expect("text.err");
    assert_eq!(
        err.len(),
        1,
        "the refusal must be one line, not a verifier log\n{console}"
    );
    assert!(
        err[0].starts_with("tcpstates: ") && err[0].contains("needs Linux >= 5.12"),
        "unexpected refusal {:?}",
        err[0]
    );
}

/// Boots the kernel of `role` and checks everything the guest printed.
fn check_supported(role: &str) {
    let matrix = Matrix::from_env();
    let kernel = matrix.kernel(role);
    assert!(kernel.supported);
    let console = vm::boot(kernel, &matrix.initramfs);
    report(kernel, &console);
    assert!(console.finished(), "the guest did not finish\n{console}");
    for agent in ["text", "json", "otlp"] {
        assert_eq!(
            console.value(&format!("{agent}.status")),
            "0",
            "the {agent} agent did not exit cleanly after SIGINT\n{console}"
        );
    }
    let pids = Pids::of(&console);
    let json = events::parse_json_lines(&console.section("json").expect("json"));
    let json: Vec<JsonEvent> = json
        .into_iter()
        .filter(|event| is_traffic(event.event()))
        .collect();
    let lives = Lives::of(&json);
    check_owners(&lives, &pids);
    check_text(&console, &json, &pids);
    check_classic(&console, &json);
    check_traces(&console, &lives, &pids);
}

/// Prints the kernel and how long its guest ran (shown with `--nocapture`).
fn report(kernel: &vm::MatrixKernel, console: &Console) {
    println!(
        "kernel {} ({} {}): guest ran {:.1} s",
        kernel.role,
        kernel.package,
        kernel.version,
        console.elapsed.as_secs_f64()
    );
}

/// Whether `event` belongs to the guest's test traffic.
fn is_traffic(event: &events::Event) -> bool {
    event.has_port(SERVER_PORT) || event.rport == REFUSED_PORT
}

/// The pids of the guest's `nc` processes.
struct Pids {
    server: u32,
    client: u32,
    refused: u32,
    /// The listener started before the agents.
    early: u32,
}

impl Pids {
    fn of(console: &Console) -> Pids {
        let section = console.section("pids").unwrap_or_else(|| {
            panic!("the guest made no traffic (an agent did not start)\n{console}")
        });
        let pid = |name: &str| -> u32 {
            section
                .iter()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or_else(|| panic!("no pid for {name} in {section:?}"))
        };
        Pids {
            server: pid("server"),
            client: pid("client"),
            refused: pid("refused"),
            early: pid("early"),
        }
    }
}

/// The four socket lives of the guest's traffic, as `--json` printed them.
struct Lives {
    listener: Vec<JsonEvent>,
    client: Vec<JsonEvent>,
    accepted: Vec<JsonEvent>,
    refused: Vec<JsonEvent>,
    /// The client's and the accepted socket's transitions: which end closed first, or both at
    /// once.
    closing: (Transitions, Transitions),
}

impl Lives {
    fn of(json: &[JsonEvent]) -> Lives {
        let lives = events::sessions(json);
        let closed = |transitions: Transitions| {
            lives.iter().any(|life| {
                events::transitions(life)
                    .iter()
                    .map(|(old, new)| (old.as_str(), new.as_str()))
                    .eq(transitions.iter().copied())
            })
        };
        // Both `nc`s close as soon as the line is through: either may be first, or both at
        // once (a simultaneous close, through CLOSING on each side).
        let closing = if closed(Closer::Client.client_transitions()) {
            (
                Closer::Client.client_transitions(),
                Closer::Client.server_transitions(),
            )
        } else if closed(CLIENT_CLOSING_WITH_PEER) {
            (CLIENT_CLOSING_WITH_PEER, SERVER_CLOSING_WITH_PEER)
        } else {
            (
                Closer::Server.client_transitions(),
                Closer::Server.server_transitions(),
            )
        };
        let [listener, client, accepted, refused] = events::expect_lives(
            &lives,
            &[traffic::LISTENER, closing.0, closing.1, traffic::REFUSED],
        )
        .try_into()
        .expect("four lives");
        Lives {
            listener,
            client,
            accepted,
            refused,
            closing,
        }
    }
}

/// Every event of a life carries its owner: the listener's and the accepted socket's are the
/// listening `nc`, the client's and the refused one's the `nc` that connected.
fn check_owners(lives: &Lives, pids: &Pids) {
    for (life, pid, what) in [
        (&lives.listener, pids.server, "listener"),
        (&lives.accepted, pids.server, "accepted socket"),
        (&lives.client, pids.client, "client"),
        (&lives.refused, pids.refused, "refused connect"),
    ] {
        for event in life {
            assert_eq!(
                (event.owner_pid, event.owner_comm.as_deref()),
                (Some(pid), Some(NC)),
                "owner of the {what}: {event:?}"
            );
            assert_eq!(event.uid, 0, "the {what}'s socket uid: {event:?}");
        }
    }
}

/// The `-x` table shows the same transitions as `--json`, in the same order, each with the same
/// owner (`PID`, `COMM`) and socket uid.
fn check_text(console: &Console, json: &[JsonEvent], pids: &Pids) {
    let lines = console.section("text").expect("text");
    let header = lines.first().expect("the -x table's header");
    assert!(
        header.starts_with("SKADDR           C-PID C-COMM     PID     COMM       UID    NETNS"),
        "{header}"
    );
    let rows: Vec<Vec<&str>> = lines[1..]
        .iter()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|cols| {
            // SKADDR C-PID C-COMM PID COMM UID NETNS CGROUP ERROR LADDR LPORT RADDR RPORT OLD ->
            // NEW MS
            cols.len() == 17
                && (cols[10] == SERVER_PORT.to_string()
                    || cols[12] == SERVER_PORT.to_string()
                    || cols[12] == REFUSED_PORT.to_string())
        })
        .collect();
    let shown = |event: &JsonEvent| -> Vec<String> {
        let e = event.event();
        [
            e.skaddr.clone(),
            event.owner_pid.map_or("-".into(), |pid| pid.to_string()),
            event.owner_comm.clone().unwrap_or("-".into()),
            event.uid.to_string(),
            event.error.clone().unwrap_or("-".into()),
            e.laddr.to_string(),
            e.lport.to_string(),
            e.raddr.to_string(),
            e.rport.to_string(),
            e.oldstate.clone(),
            e.newstate.clone(),
        ]
        .to_vec()
    };
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|cols| {
            [0, 3, 4, 5, 8, 9, 10, 11, 12, 13, 15]
                .map(|i| cols[i].to_owned())
                .to_vec()
        })
        .collect();
    let expected: Vec<Vec<String>> = json.iter().map(shown).collect();
    assert_eq!(table, expected, "the -x table and --json differ");
    assert!(
        table
            .iter()
            .any(|row| row[1] == pids.server.to_string() && row[9] == "LISTEN"),
        "no -x row owned by the listening nc"
    );
}

/// One state change as the classic tracepoint recorded it: family, local and remote address
/// and port, old and new state.
type Record = (u8, IpAddr, u16, IpAddr, u16, String, String);

/// What the kernel's own `sock:inet_sock_set_state` record says of the traffic is exactly what
/// `--json` says: the same transitions with the same addresses and ports (on 6.12 an accepted
/// socket's LISTEN -> SYN_RECV names no peer yet; the agent must then say so too).
fn check_classic(console: &Console, json: &[JsonEvent]) {
    let lines = console.section("classic").expect("classic");
    let mut classic: Vec<Record> = lines
        .iter()
        .filter_map(|line| parse_classic(line))
        .filter(|record| {
            record.2 == SERVER_PORT || record.4 == SERVER_PORT || record.4 == REFUSED_PORT
        })
        .collect();
    let mut ours: Vec<Record> = json
        .iter()
        .map(|event| {
            let e = event.event();
            (
                e.ip.expect("--json has ip"),
                e.laddr,
                e.lport,
                e.raddr,
                e.rport,
                e.oldstate.clone(),
                e.newstate.clone(),
            )
        })
        .collect();
    classic.sort();
    ours.sort();
    assert!(
        !classic.is_empty(),
        "no classic record of the traffic\n{console}"
    );
    assert_eq!(ours, classic, "--json and the kernel's own records differ");
}

/// Parses a line of tracefs's `trace` file for `inet_sock_set_state` of a TCP socket.
fn parse_classic(line: &str) -> Option<Record> {
    let (_, fields) = line.split_once("inet_sock_set_state: ")?;
    let fields: BTreeMap<&str, &str> = fields
        .split_whitespace()
        .filter_map(|field| field.split_once('='))
        .collect();
    if fields.get("protocol") != Some(&"IPPROTO_TCP") {
        return None;
    }
    let (family, saddr, daddr) = match *fields.get("family")? {
        "AF_INET" => (4, "saddr", "daddr"),
        "AF_INET6" => (6, "saddrv6", "daddrv6"),
        _ => return None,
    };
    let state = |key: &str| fields.get(key)?.strip_prefix("TCP_").map(str::to_owned);
    Some((
        family,
        fields.get(saddr)?.parse().ok()?,
        fields.get("sport")?.parse().ok()?,
        fields.get(daddr)?.parse().ok()?,
        fields.get("dport")?.parse().ok()?,
        state("oldstate")?,
        state("newstate")?,
    ))
}

/// Every session of the traffic arrived at rotel as one well-formed trace: its root named for
/// its role, owned by its `nc`, one child per state; the refused connect with its error.
fn check_traces(console: &Console, lives: &Lives, pids: &Pids) {
    let spans = otlp::spans_in_output(&console.section("rotel").expect("rotel"));
    let on_server = traces::traces_on_port(&spans, SERVER_PORT);
    let on_refused = traces::traces_on_port(&spans, REFUSED_PORT);
    let cases = [
        (&lives.listener, Role::Listen, traffic::LISTENER),
        (&lives.client, Role::Connect, lives.closing.0),
        (&lives.accepted, Role::Accept, lives.closing.1),
        (&lives.refused, Role::Connect, traffic::REFUSED),
    ];
    let owners = [pids.server, pids.client, pids.server, pids.refused];
    for ((life, role, transitions), pid) in cases.into_iter().zip(owners) {
        // The ends as the kernel last reported them (busybox `nc` listens on `[::]`, so the
        // accepted socket is IPv6 with a v4-mapped address).
        let last = life.last().expect("a life has events").event();
        let local = SocketAddr::new(last.laddr, last.lport);
        let peer = SocketAddr::new(last.raddr, last.rport);
        let found = if peer.port() == REFUSED_PORT {
            &on_refused
        } else {
            &on_server
        };
        let trace = traces::trace_of_life(found, life);
        assert_eq!(
            trace.root.name,
            role.root_name(local, peer),
            "root of {transitions:?}"
        );
        assert_eq!(
            trace.root.int_attr("process.pid"),
            Some(i64::from(pid)),
            "process.pid of {transitions:?}"
        );
        traces::check_trace(trace, &traces::timed_states(transitions), None);
    }
    let refused = traces::trace_of_life(&on_refused, &lives.refused);
    assert_eq!(
        refused.root.str_attr("error.type"),
        Some("connection_refused"),
        "the refused connect's root"
    );
    // The listener older than the agents was found at start: the socket it accepted has its
    // owner (the OTLP agent lists sockets; a failure to would be said on its stderr).
    let errors = console.section("otlp.err").expect("otlp.err");
    assert!(
        !errors
            .iter()
            .any(|line| line.contains("could not be listed") || line.contains("not known")),
        "{errors:?}"
    );
    let early = format!("tcp accept 127.0.0.1:{EARLY_PORT}");
    let accepted: Vec<_> = spans
        .iter()
        .filter(|span| span.parent_span_id.is_none() && span.name == early)
        .collect();
    assert_eq!(accepted.len(), 1, "{early}: {accepted:#?}");
    assert_eq!(
        accepted[0].int_attr("process.pid"),
        Some(i64::from(pids.early)),
        "owned by the listener found at start: {:#?}",
        accepted[0]
    );
}
