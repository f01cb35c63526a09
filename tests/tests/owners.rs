//! Socket owners and locations: every session names the process that made its socket (for an
//! accepted socket, the listener's process, although the kernel makes its first transitions in a
//! softirq on behalf of the connecting peer), its network namespace and its cgroup; `--pid`,
//! `--netns` and `--cgroup` keep exactly the sessions of that process, namespace or cgroup; and a
//! socket address the kernel hands to a new socket starts a new session.
//!
//! The processes are `tcp_peer`s (this crate's helper binary), each started inside a network
//! namespace and a cgroup the test creates. Ports: block 30xxx.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};

use integration_tests::agent::{Agent, EVENT_TIMEOUT};
use integration_tests::events::{JsonEvent, parse_json, parse_json_lines};
use integration_tests::netns::Netns;
use integration_tests::owners::{Announced, Cgroup, Peer, netns_inode};
use integration_tests::traffic::{Closer, OpenConnection};

/// One namespace and cgroup with a server process and a client process talking in it.
struct Site {
    ns: Netns,
    cgroup: Cgroup,
    server: Peer,
    port: u16,
}

/// The sockets one site made, as its processes announced them.
#[derive(Debug)]
struct Made {
    server_pid: u32,
    client_pid: u32,
    listener: Announced,
    accepted: Announced,
    client: Announced,
}

impl Site {
    /// A namespace, a cgroup (below `parent`, if given), and a server that will listen on
    /// `port` there (not yet).
    fn new(port: u16, parent: Option<&Cgroup>) -> Site {
        let ns = Netns::create();
        let cgroup = parent.map_or_else(Cgroup::create, Cgroup::create_in);
        let server = Peer::listen(&ns, &cgroup, addr(port), 1);
        Site {
            ns,
            cgroup,
            server,
            port,
        }
    }

    /// Lets the server listen, connects a client process of the same site, and waits until both
    /// processes are done.
    fn run(mut self) -> (Made, Netns, Cgroup) {
        self.server.go();
        let listener = self.server.next("listener");
        let mut client = Peer::connect(&self.ns, &self.cgroup, addr(self.port));
        let client_pid = client.pid();
        client.go();
        let connected = client.next("connected");
        let accepted = self.server.next("accepted");
        let server_pid = self.server.pid();
        client.wait();
        self.server.wait();
        self.ns.await_no_tcp_sockets(EVENT_TIMEOUT);
        let made = Made {
            server_pid,
            client_pid,
            listener,
            accepted,
            client: connected,
        };
        (made, self.ns, self.cgroup)
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Events an agent printed, grouped by socket cookie, once it has printed `expected` events in
/// all of the sockets of `cookies`.
fn await_sessions(
    agent: &Agent,
    cookies: &BTreeSet<u64>,
    expected: usize,
) -> BTreeMap<u64, Vec<JsonEvent>> {
    agent.await_stdout("the sockets' events", EVENT_TIMEOUT, |lines| {
        let events = parse_json_lines(lines);
        let mine = events
            .iter()
            .filter(|event| cookies.contains(&event.cookie))
            .count();
        (mine >= expected).then_some(())
    });
    let mut sessions: BTreeMap<u64, Vec<JsonEvent>> = BTreeMap::new();
    for line in agent_lines(agent) {
        let event = parse_json(&line).expect("JSON line");
        sessions.entry(event.cookie).or_default().push(event);
    }
    sessions
}

fn agent_lines(agent: &Agent) -> Vec<String> {
    agent.await_stdout("its output", EVENT_TIMEOUT, |lines| Some(lines.to_vec()))
}

/// Checks that every event of socket `cookie` names `owner` as its owner and `ns` and `cgroup`
/// as where the socket lives.
fn check_owner(
    sessions: &BTreeMap<u64, Vec<JsonEvent>>,
    what: &str,
    cookie: u64,
    owner: u32,
    ns: &Netns,
    cgroup: &Cgroup,
) {
    let events = sessions
        .get(&cookie)
        .unwrap_or_else(|| panic!("no event of the {what} (cookie {cookie}): {sessions:#?}"));
    for event in events {
        assert_eq!(
            (
                event.owner_pid,
                event.owner_comm.as_deref(),
                event.netns,
                event.cgroup_id
            ),
            (Some(owner), Some("tcp_peer"), netns_inode(ns), cgroup.id()),
            "{what}: {event:#?}"
        );
    }
}

#[test]
fn owners_namespaces_and_cgroups_are_told_apart_and_filtered_in_the_kernel() {
    let parent_b = Cgroup::create();
    let a = Site::new(30001, None);
    let b = Site::new(30002, Some(&parent_b));
    let netns_a = format!("/run/netns/{}", a.ns.name());
    let cgroup_b = b.cgroup.path().to_string_lossy().into_owned();
    let above_b = parent_b.path().to_string_lossy().into_owned();
    let server_a = a.server.pid().to_string();
    let all = Agent::start(&["--json"]);
    let in_netns_a = Agent::start(&["--json", "--netns", &netns_a]);
    let in_cgroup_b = Agent::start(&["--json", "--cgroup", &cgroup_b]);
    let under_parent_b = Agent::start(&["--json", "--cgroup", &above_b]);
    let of_server_a = Agent::start(&["--json", "--pid", &server_a]);

    let (made_a, ns_a, cgroup_a) = a.run();
    let (made_b, ns_b, cgroup_b) = b.run();
    let cookies = |made: &Made| {
        BTreeSet::from([
            made.listener.cookie,
            made.accepted.cookie,
            made.client.cookie,
        ])
    };
    let (cookies_a, cookies_b) = (cookies(&made_a), cookies(&made_b));
    let both: BTreeSet<u64> = cookies_a.union(&cookies_b).copied().collect();

    // Per site: the listener's 2 transitions and 5 on each end of the connection.
    let sessions = await_sessions(&all, &both, 24);
    for (made, ns, cgroup) in [(&made_a, &ns_a, &cgroup_a), (&made_b, &ns_b, &cgroup_b)] {
        check_owner(
            &sessions,
            "listener",
            made.listener.cookie,
            made.server_pid,
            ns,
            cgroup,
        );
        check_owner(
            &sessions,
            "accepted socket",
            made.accepted.cookie,
            made.server_pid,
            ns,
            cgroup,
        );
        check_owner(
            &sessions,
            "client socket",
            made.client.cookie,
            made.client_pid,
            ns,
            cgroup,
        );
        let accepted = &sessions[&made.accepted.cookie];
        assert_eq!(
            accepted.first().map(|e| e.event.transition()),
            Some(("LISTEN", "SYN_RECV")),
            "{accepted:#?}"
        );
        assert_eq!(accepted.len(), 5, "{accepted:#?}");
        assert_eq!(sessions[&made.client.cookie].len(), 5);
        assert_eq!(sessions[&made.listener.cookie].len(), 2);
    }
    assert_ne!(netns_inode(&ns_a), netns_inode(&ns_b));
    assert_ne!(cgroup_a.id(), cgroup_b.id());

    // The filters: only what is in namespace A, in cgroup B (or below B's parent), or owned by
    // A's server.
    let kept = |agent: &Agent, cookies: &BTreeSet<u64>, expected: usize| -> BTreeSet<u64> {
        await_sessions(agent, cookies, expected)
            .into_keys()
            .collect()
    };
    let of_a_server = BTreeSet::from([made_a.listener.cookie, made_a.accepted.cookie]);
    assert_eq!(
        kept(&in_netns_a, &cookies_a, 12),
        cookies_a,
        "--netns {netns_a}"
    );
    assert_eq!(kept(&in_cgroup_b, &cookies_b, 12), cookies_b, "--cgroup");
    assert_eq!(
        kept(&under_parent_b, &cookies_b, 12),
        cookies_b,
        "--cgroup of the parent"
    );
    assert_eq!(
        kept(&of_server_a, &of_a_server, 7),
        of_a_server,
        "--pid {server_a}"
    );
    for agent in [all, in_netns_a, in_cgroup_b, under_parent_b, of_server_a] {
        let finished = agent.stop(libc::SIGINT);
        assert_eq!(finished.code(), 0, "{finished:#?}");
    }
}

/// Connections made to the two `SO_REUSEPORT` listeners of the shared-port test.
const SHARED_CONNECTIONS: usize = 24;

/// Accepted sockets name the listener's process however listeners share an address: two
/// `SO_REUSEPORT` listeners of two processes on one port (the kernel cannot tell them apart by
/// address, so each keeps its owner in storage copied into what it accepts), and two plain
/// listeners of two more processes on that same address and port in two other namespaces (told
/// apart by namespace), all listening at once.
#[test]
fn accepted_sockets_name_their_listeners_process_when_listeners_share_an_address() {
    let shared = addr(30003);
    let (ns, cgroup) = (Netns::create(), Cgroup::create());
    let plain: Vec<(Netns, Cgroup)> = (0..2)
        .map(|_| (Netns::create(), Cgroup::create()))
        .collect();
    let agent = Agent::start(&["--json"]);

    let mut sharing = [
        Peer::share(&ns, &cgroup, shared),
        Peer::share(&ns, &cgroup, shared),
    ];
    let mut plain_servers: Vec<Peer> = plain
        .iter()
        .map(|(ns, cgroup)| Peer::listen(ns, cgroup, shared, 1))
        .collect();
    for peer in sharing.iter_mut().chain(&mut plain_servers) {
        peer.go();
        peer.next("listener");
    }
    let connect = |ns: &Netns, cgroup: &Cgroup| {
        let mut client = Peer::connect(ns, cgroup, shared);
        client.go();
        client.next("connected");
        client.wait();
    };
    for _ in 0..SHARED_CONNECTIONS {
        connect(&ns, &cgroup);
    }
    let mut accepted: Vec<(u32, Announced, &Netns, &Cgroup)> = Vec::new();
    for (mut server, (ns, cgroup)) in plain_servers.into_iter().zip(&plain) {
        connect(ns, cgroup);
        accepted.push((server.pid(), server.next("accepted"), ns, cgroup));
        server.wait();
    }
    for peer in sharing {
        let pid = peer.pid();
        accepted.extend(peer.stop().into_iter().map(|a| (pid, a, &ns, &cgroup)));
    }

    assert_eq!(accepted.len(), SHARED_CONNECTIONS + 2, "{accepted:#?}");
    let takers: BTreeSet<u32> = accepted.iter().map(|(pid, ..)| *pid).collect();
    assert_eq!(
        takers.len(),
        4,
        "every listener took connections: {accepted:#?}"
    );
    let cookies: BTreeSet<u64> = accepted.iter().map(|(_, a, ..)| a.cookie).collect();
    // Five transitions on each accepted socket.
    let sessions = await_sessions(&agent, &cookies, 5 * cookies.len());
    for (pid, socket, ns, cgroup) in &accepted {
        check_owner(
            &sessions,
            "accepted socket",
            socket.cookie,
            *pid,
            ns,
            cgroup,
        );
    }
    let finished = agent.stop(libc::SIGINT);
    assert_eq!(finished.code(), 0, "{finished:#?}");
}

/// Connections per round of the address-reuse test, and at most in all.
const BATCH: usize = 100;
const MAX_CONNECTIONS: usize = 1000;

/// Keeps the calling thread on `cpu`.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the call only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(
            rc,
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[test]
fn a_reused_socket_address_starts_a_new_session_with_no_leftover_duration() {
    let ns = Netns::create();
    let server = addr(30011);
    let netns = format!("/run/netns/{}", ns.name());
    let agent = Agent::start(&["--json", "--netns", &netns]);
    // Sequential connections from one thread kept on one CPU: the kernel hands a freed socket's
    // memory (from that CPU's free list) to one of the next sockets.
    let mut connections = 0;
    let reused = loop {
        ns.run(|| {
            pin_to_cpu(0);
            for _ in 0..BATCH {
                OpenConnection::here(server, None).close(Closer::Server);
            }
        });
        connections += BATCH;
        // Every socket of every connection so far has ended: the listener, the client and the
        // accepted socket each reached CLOSE.
        let closed = 3 * connections;
        let lines = agent.await_stdout("every socket's CLOSE", EVENT_TIMEOUT, |lines| {
            let ended = parse_json_lines(lines)
                .iter()
                .filter(|event| event.event.newstate == "CLOSE")
                .count();
            (ended >= closed).then(|| lines.to_vec())
        });
        let events = parse_json_lines(&lines);
        let mut cookies_at: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
        for event in &events {
            cookies_at
                .entry(&event.event.skaddr)
                .or_default()
                .insert(event.cookie);
        }
        if cookies_at.values().any(|cookies| cookies.len() > 1) {
            break events;
        }
        assert!(
            connections < MAX_CONNECTIONS,
            "no socket address reused in {connections} connections"
        );
    };
    // Each socket (cookie) is a session of its own: its first transition opens it, with no
    // duration carried over from the socket that had its address before.
    let mut sessions: BTreeMap<u64, Vec<&JsonEvent>> = BTreeMap::new();
    for event in &reused {
        sessions.entry(event.cookie).or_default().push(event);
    }
    for events in sessions.values() {
        let first = events[0];
        assert!(
            matches!(
                first.event.transition(),
                ("CLOSE", _) | ("LISTEN", "SYN_RECV")
            ),
            "{events:#?}"
        );
        assert_eq!(first.span_ns, 0, "{events:#?}");
    }
    let finished = agent.stop(libc::SIGINT);
    assert_eq!(finished.code(), 0, "{finished:#?}");
}
