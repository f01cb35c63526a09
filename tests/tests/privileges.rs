//! Least privilege: the agent traces as an unprivileged user (`nobody`) holding exactly CAP_BPF
//! and CAP_PERFMON, in every output mode (text `-x`, `--json`, `--otlp`, `-Y`), with the owner of
//! each socket right; the filters that take paths (`--netns /run/netns/NAME`, `--cgroup`) work
//! too, and `--netns` of another user's `/proc/PID/ns/net` is a usage error that says what is
//! missing. Without both capabilities it says so in one line and exits 1. Under a `/proc`
//! mounted with `hidepid=invisible` it still traces, and the owner's command line is absent
//! from its traces (the process is hidden from it), not wrong.
//!
//! The sockets are made by `tcp_peer`s (root's processes) in a network namespace and a cgroup the
//! test creates, so their details are another user's as the agent sees them. Ports: block 32xxx.

use std::net::{Ipv4Addr, SocketAddr};

use integration_tests::agent::{
    self, Agent, EVENT_TIMEOUT, FAIL_TIMEOUT, NOBODY, Privileges, READY,
};
use integration_tests::events::{JsonEvent, parse_json_lines};
use integration_tests::journald::Journald;
use integration_tests::netns::Netns;
use integration_tests::otlp::{AttrValue, ReceivedSpan, Receiver};
use integration_tests::owners::{Announced, Cgroup, Peer, netns_inode};
use integration_tests::traces::{ARRIVAL_TIMEOUT, COOKIE};

/// The least the agent needs: `nobody` with CAP_BPF and CAP_PERFMON.
const LEAST: Privileges = Privileges::CapsOnly { uid: NOBODY };

/// The name of the peers' executable, which is also their `comm`.
const PEER: &str = "tcp_peer";

/// A namespace and a cgroup for the peers of one test.
struct Site {
    ns: Netns,
    cgroup: Cgroup,
}

/// What one exchange made: a listener, the connection it accepted, the client's socket; and
/// the server, still running (its listener open) until [`Exchanged::stop_server`].
#[derive(Debug)]
struct Exchanged {
    server: Option<Peer>,
    server_pid: u32,
    client_pid: u32,
    /// The server's `/proc/PID/cmdline`, NULs as spaces.
    server_command_line: String,
    /// The client's `/proc/PID/cmdline`, NULs as spaces.
    client_command_line: String,
    listener: Announced,
    accepted: Announced,
    client: Announced,
}

impl Site {
    fn new() -> Site {
        Site {
            ns: Netns::create(),
            cgroup: Cgroup::create(),
        }
    }

    /// A server peer listening on `port` accepts one connection from a client peer; returns
    /// once the client has exited and the server has announced the connection. The server
    /// lives on, so the agent reads its details from /proc whenever it gets to them (the
    /// client's may be gone by then: its command line is then absent, whatever the privileges).
    fn exchange(&self, port: u16) -> Exchanged {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut server = Peer::share(&self.ns, &self.cgroup, addr);
        server.go();
        let listener = server.next("listener");
        let mut client = Peer::connect(&self.ns, &self.cgroup, addr);
        let client_pid = client.pid();
        let client_command_line = command_line(client_pid);
        client.go();
        let connected = client.next("connected");
        let accepted = server.next("accepted");
        let server_pid = server.pid();
        client.wait();
        Exchanged {
            server_command_line: command_line(server_pid),
            server: Some(server),
            server_pid,
            client_pid,
            client_command_line,
            listener,
            accepted,
            client: connected,
        }
    }
}

/// `/proc/PID/cmdline` of process `pid` with its NULs as spaces, as the agent reports it.
fn command_line(pid: u32) -> String {
    let path = format!("/proc/{pid}/cmdline");
    let cmdline = std::fs::read(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    String::from_utf8_lossy(&cmdline)
        .trim_end_matches('\0')
        .replace('\0', " ")
}

impl Exchanged {
    /// Stops the server and waits until `site`'s namespace holds no socket: every CLOSE,
    /// the listener's included, has happened.
    fn stop_server(&mut self, site: &Site) {
        if let Some(server) = self.server.take() {
            server.stop();
        }
        site.ns.await_no_tcp_sockets(EVENT_TIMEOUT);
    }
}

/// Stops `agent` with SIGINT and checks that it exited with 0.
fn stop_cleanly(agent: Agent) {
    let finished = agent.stop(libc::SIGINT);
    assert_eq!(
        finished.code(),
        0,
        "stderr:\n{}",
        finished.stderr.join("\n")
    );
}

/// One row of the `-x` table: `SKADDR C-PID C-COMM PID COMM UID NETNS CGROUP ERROR LADDR LPORT
/// RADDR RPORT OLDSTATE -> NEWSTATE MS`.
#[derive(Debug, Clone, PartialEq)]
struct ExtendedRow {
    owner_pid: String,
    owner_comm: String,
    uid: u32,
    netns: u64,
    cgroup: u64,
    lport: u16,
    rport: u16,
    oldstate: String,
    newstate: String,
}

/// Parses a `-x` row; `None` for the header, a row of another shape (a `comm` with a space) or
/// anything else.
fn parse_extended(line: &str) -> Option<ExtendedRow> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let &[
        _,
        _,
        _,
        pid,
        comm,
        uid,
        netns,
        cgroup,
        _error,
        _,
        lport,
        _,
        rport,
        old,
        "->",
        new,
        _,
    ] = fields.as_slice()
    else {
        return None;
    };
    Some(ExtendedRow {
        owner_pid: pid.to_owned(),
        owner_comm: comm.to_owned(),
        uid: uid.parse().ok()?,
        netns: netns.parse().ok()?,
        cgroup: cgroup.parse().ok()?,
        lport: lport.parse().ok()?,
        rport: rport.parse().ok()?,
        oldstate: old.to_owned(),
        newstate: new.to_owned(),
    })
}

#[test]
fn extended_text_as_nobody_names_the_owners() {
    const PORT: u16 = 32001;
    let site = Site::new();
    let agent = Agent::start_as(LEAST, &["-x"]);
    let mut made = site.exchange(PORT);
    made.stop_server(&site);
    // Three socket lives end on the port: the listener, the accepted socket and the client.
    let rows = agent.await_stdout("three closes on the port", EVENT_TIMEOUT, |lines| {
        let rows: Vec<ExtendedRow> = lines
            .iter()
            .filter_map(|line| parse_extended(line))
            .filter(|row| row.lport == PORT || row.rport == PORT)
            .collect();
        let closes = rows.iter().filter(|row| row.newstate == "CLOSE").count();
        (closes >= 3).then_some(rows)
    });
    let of = |local: u16, remote: u16| -> Vec<&ExtendedRow> {
        rows.iter()
            .filter(|row| row.lport == local && row.rport == remote)
            .collect()
    };
    // The client's first row, in connect(), precedes its port: LPORT 0.
    let client_rows = [of(0, PORT), of(made.client.port, PORT)].concat();
    let accepted_rows = of(PORT, made.client.port);
    let listener_rows = of(PORT, 0);
    for (rows, pid, what) in [
        (&client_rows, made.client_pid, "client"),
        (&accepted_rows, made.server_pid, "accepted"),
        (&listener_rows, made.server_pid, "listener"),
    ] {
        assert!(!rows.is_empty(), "no {what} rows: {rows:#?}");
        for row in rows {
            assert_eq!(
                (row.owner_pid.as_str(), row.owner_comm.as_str()),
                (pid.to_string().as_str(), PEER),
                "{what}: {row:#?}"
            );
            assert_eq!(
                (row.uid, row.netns, row.cgroup),
                (0, netns_inode(&site.ns), site.cgroup.id()),
                "{what}: {row:#?}"
            );
        }
    }
    assert_eq!(
        client_rows.last().map(|row| row.newstate.as_str()),
        Some("CLOSE")
    );
    stop_cleanly(agent);
}

#[test]
fn json_as_nobody_with_path_filters_and_a_large_ring() {
    const PORT: u16 = 32002;
    let site = Site::new();
    let netns = format!("/run/netns/{}", site.ns.name());
    let cgroup = site.cgroup.path().to_str().expect("UTF-8 path").to_owned();
    let agent = Agent::start_as(
        LEAST,
        &[
            "--json",
            "--netns",
            &netns,
            "--cgroup",
            &cgroup,
            "--ring-buffer-mib",
            "64",
        ],
    );
    let mut made = site.exchange(PORT);
    made.stop_server(&site);
    let cookies = [
        made.listener.cookie,
        made.accepted.cookie,
        made.client.cookie,
    ];
    let events = agent.await_stdout("each socket's CLOSE", EVENT_TIMEOUT, |lines| {
        let events = parse_json_lines(lines);
        cookies
            .iter()
            .all(|&cookie| {
                events
                    .iter()
                    .any(|e| e.cookie == cookie && e.event.newstate == "CLOSE")
            })
            .then_some(events)
    });
    let inode = netns_inode(&site.ns);
    assert!(
        events
            .iter()
            .all(|e| e.netns == inode && e.cgroup_id == site.cgroup.id()),
        "only the namespace's and cgroup's sockets: {events:#?}"
    );
    for (cookie, pid) in [
        (made.listener.cookie, made.server_pid),
        (made.accepted.cookie, made.server_pid),
        (made.client.cookie, made.client_pid),
    ] {
        let life: Vec<&JsonEvent> = events.iter().filter(|e| e.cookie == cookie).collect();
        for event in &life {
            assert_eq!(
                (event.owner_pid, event.owner_comm.as_deref()),
                (Some(pid), Some(PEER)),
                "{event:#?}"
            );
        }
    }
    stop_cleanly(agent);
}

#[test]
fn netns_of_another_users_process_is_a_usage_error_naming_ptrace() {
    // This test process is root's: `nobody` has no ptrace access to it.
    let path = format!("/proc/{}/ns/net", std::process::id());
    agent::assert_usage_error(
        agent::command_as(&LEAST, &["--netns", &path]),
        "ptrace access",
    );
}

/// The root span of the session of socket `cookie`, among `spans`.
fn root_of(spans: &[ReceivedSpan], cookie: u64) -> Option<&ReceivedSpan> {
    let cookie = i64::try_from(cookie).ok()?;
    spans
        .iter()
        .find(|span| span.parent_span_id.is_none() && span.int_attr(COOKIE) == Some(cookie))
}

/// What [`exported_roots`] leaves: the roots of the client's and of the accepted socket's
/// sessions, what was made, and the agent still running with its receiver.
struct Exported {
    client: ReceivedSpan,
    accepted: ReceivedSpan,
    made: Exchanged,
    agent: Agent,
    _receiver: Receiver,
    _site: Site,
}

/// Runs the exchange on `port` under an agent, started with `command` given the arguments that
/// export to a receiver started here.
fn exported_roots(command: impl FnOnce(&[&str]) -> std::process::Command, port: u16) -> Exported {
    let receiver = Receiver::start();
    let site = Site::new();
    let endpoint = receiver.grpc_endpoint();
    let agent = Agent::start_command(command(&["--otlp", &endpoint, "-q"]));
    let made = site.exchange(port);
    let cookies = [made.client.cookie, made.accepted.cookie];
    let spans = receiver.wait_for(
        |spans| {
            cookies
                .iter()
                .all(|&cookie| root_of(spans, cookie).is_some())
        },
        ARRIVAL_TIMEOUT,
    );
    let client = root_of(&spans, made.client.cookie)
        .expect("waited for")
        .clone();
    let accepted = root_of(&spans, made.accepted.cookie)
        .expect("waited for")
        .clone();
    Exported {
        client,
        accepted,
        made,
        agent,
        _receiver: receiver,
        _site: site,
    }
}

/// Checks the owner attributes of `root`, owned by `pid` (a root peer), with `command_line`
/// (or none, if `may_be_absent`).
fn check_owner(root: &ReceivedSpan, pid: u32, command_line: Option<&str>, may_be_absent: bool) {
    assert_eq!(
        root.attributes.get("tcpstates.owner.known"),
        Some(&AttrValue::Bool(true)),
        "{root:#?}"
    );
    assert_eq!(
        root.int_attr("process.pid"),
        Some(i64::from(pid)),
        "{root:#?}"
    );
    assert_eq!(
        root.str_attr("process.executable.name"),
        Some(PEER),
        "{root:#?}"
    );
    assert_eq!(root.str_attr("process.owner"), Some("root"), "{root:#?}");
    let found = root.str_attr("process.command_line");
    assert!(
        found == command_line || (may_be_absent && found.is_none()),
        "command line {command_line:?} expected: {root:#?}"
    );
}

#[test]
fn otlp_as_nobody_exports_the_owner_with_its_command_line() {
    let Exported {
        client,
        accepted,
        made,
        agent,
        _receiver,
        _site,
    } = exported_roots(|args| agent::command_as(&LEAST, args), 32003);
    check_owner(
        &client,
        made.client_pid,
        Some(made.client_command_line.as_str()),
        true,
    );
    assert!(
        made.client_command_line
            .contains(" connect 127.0.0.1:32003"),
        "{made:#?}"
    );
    assert!(
        made.server_command_line.contains(" share 127.0.0.1:32003"),
        "{made:#?}"
    );
    check_owner(
        &accepted,
        made.server_pid,
        Some(made.server_command_line.as_str()),
        false,
    );
    stop_cleanly(agent);
}

/// Mounts a procfs with `hidepid=invisible` over /proc in a mount namespace of its own, then
/// executes its arguments (`sh -c SCRIPT sh ARGS...` runs SCRIPT with ARGS as `$@`).
const HIDEPID_PREFIX: &[&str] = &[
    "unshare",
    "--mount",
    "--propagation",
    "private",
    "--",
    "sh",
    "-c",
    "mount -t proc -o hidepid=invisible proc /proc && exec \"$@\"",
    "sh",
];

/// Whether the /proc that process `pid` sees is mounted with `hidepid=invisible` (the last
/// mount on /proc in its mountinfo is the one on top).
fn sees_hidepid_proc(pid: u32) -> bool {
    let path = format!("/proc/{pid}/mountinfo");
    let mountinfo = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    mountinfo
        .lines()
        .rfind(|line| line.split_whitespace().nth(4) == Some("/proc"))
        .is_some_and(|line| line.contains("hidepid=invisible"))
}

#[test]
fn under_hidepid_the_command_line_is_absent_and_tracing_goes_on() {
    let Exported {
        client,
        accepted,
        made,
        agent,
        _receiver,
        _site,
    } = exported_roots(
        |args| agent::wrapped_command(HIDEPID_PREFIX, &LEAST, args),
        32004,
    );
    assert!(
        sees_hidepid_proc(agent.pid()),
        "the agent's /proc is not hidepid=invisible"
    );
    check_owner(&client, made.client_pid, None, false);
    check_owner(&accepted, made.server_pid, None, false);
    stop_cleanly(agent);
}

#[test]
fn journal_as_nobody_logs_the_owner() {
    const PORT: u16 = 32005;
    let journal = Journald::ensure();
    let site = Site::new();
    let agent = Agent::start_as(LEAST, &["-Y", "-q"]);
    let agent_pid = agent.pid();
    let made = site.exchange(PORT);
    let of_client = |more: &[&str]| -> Vec<String> {
        [
            format!("_PID={agent_pid}"),
            format!("TCPSTATES_COOKIE={}", made.client.cookie),
        ]
        .into_iter()
        .chain(more.iter().map(|m| (*m).to_owned()))
        .collect()
    };
    // The client's last change is logged once every earlier one is.
    journal.await_entries(
        &of_client(&["OBJECT_TCP_NEW_STATE=CLOSE"]),
        1,
        EVENT_TIMEOUT,
    );
    let entries = journal.entries(&of_client(&[]));
    assert!(entries.len() >= 2, "{entries:#?}");
    for entry in &entries {
        let field = |name: &str| entry.get(name).and_then(|value| value.as_str());
        assert_eq!(field("_UID"), Some("65534"), "{entry:#?}");
        assert_eq!(
            field("TCPSTATES_OWNER_PID"),
            Some(made.client_pid.to_string().as_str()),
            "{entry:#?}"
        );
        assert_eq!(field("TCPSTATES_OWNER_COMM"), Some(PEER), "{entry:#?}");
        assert!(field("OBJECT_COMM").is_some(), "{entry:#?}");
    }
    stop_cleanly(agent);
    drop(journal);
}

#[test]
fn without_both_capabilities_it_says_which_are_missing_and_exits_1() {
    for (caps, lacking) in [
        (&[][..], "CAP_BPF and CAP_PERFMON"),
        (&["bpf"][..], "CAP_PERFMON"),
        (&["perfmon"][..], "CAP_BPF"),
    ] {
        let privileges = Privileges::Caps { uid: NOBODY, caps };
        let finished = Agent::spawn_as(privileges, &["-x"]).wait_exit(FAIL_TIMEOUT);
        let context = format!("{privileges:?}: {finished:#?}");
        assert_eq!(finished.code(), 1, "{context}");
        assert!(finished.stdout.is_empty(), "{context}");
        assert!(!finished.stderr.iter().any(|l| l == READY), "{context}");
        let [line] = finished.stderr.as_slice() else {
            panic!("one line on stderr; {context}");
        };
        assert!(
            line.starts_with("tcpstates: not privileged enough to load BPF programs: "),
            "{context}"
        );
        assert!(line.contains("CAP_BPF and CAP_PERFMON"), "{context}");
        assert!(
            line.ends_with(&format!("this process lacks {lacking}")),
            "{context}"
        );
    }
}
