//! The sockets that exist before the agent starts: `Probe::existing_sockets` lists every TCP
//! socket a process holds, each exactly once, with its current state, ends, network namespace,
//! cgroup and a process that holds it; not UDP sockets, nor raw sockets of protocol
//! IPPROTO_TCP. The tests call the agent's library in this process after making the sockets in
//! a namespace of their own, and pick out that namespace's sockets. Ports: block 35xxx.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};

use agent_common::correlation::socket_cookie;
use agent_common::decode::StateChange;
use clap::Parser as _;
use integration_tests::netns::Netns;
use integration_tests::owners::{Cgroup, Peer, netns_inode};
use tcpstates::{cli::Cli, config::Config, probe};

/// The IPv4 listener the test's own connections go to.
const PORT_V4: u16 = 35001;
/// The IPv6 listener the test's own connection goes to.
const PORT_V6: u16 = 35002;
/// The listener of another process.
const PORT_PEER: u16 = 35003;
/// Connections to the IPv4 listener.
const CONNECTIONS: usize = 50;

/// A socket as it should be listed: state, local end, remote end.
type Listing = (String, SocketAddr, SocketAddr);

/// The TCP sockets this process holds in the namespace, and sockets that must not be listed.
struct Held {
    /// The IPv4 and the IPv6 listener.
    listeners: Vec<TcpListener>,
    /// Both ends of each connection: the client's socket and the accepted one.
    connections: Vec<(TcpStream, TcpStream)>,
    /// A second descriptor of the first client socket, which must not list it twice.
    duplicate: TcpStream,
    /// A UDP socket and a raw socket of protocol IPPROTO_TCP, held only to be left out.
    _not_tcp: Vec<OwnedFd>,
}

impl Held {
    /// Makes the sockets, in the calling thread's network namespace.
    fn make() -> Held {
        let v4 = TcpListener::bind((Ipv4Addr::LOCALHOST, PORT_V4)).expect("bind IPv4");
        let v6 = TcpListener::bind((Ipv6Addr::LOCALHOST, PORT_V6)).expect("bind IPv6");
        let mut connections: Vec<_> = (0..CONNECTIONS).map(|_| connect(&v4)).collect();
        connections.push(connect(&v6));
        let duplicate = connections[0].0.try_clone().expect("dup a client socket");
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, PORT_V4)).expect("bind UDP");
        Held {
            listeners: vec![v4, v6],
            connections,
            duplicate,
            _not_tcp: vec![
                udp.into(),
                raw_tcp_socket().expect("a raw socket (as root)"),
            ],
        }
    }

    /// How each TCP socket should be listed, with its cookie (which `SO_COOKIE` makes if the
    /// socket had none).
    fn listings(&self) -> HashMap<Listing, u64> {
        let mut listings = HashMap::new();
        for listener in &self.listeners {
            let local = listener.local_addr().expect("listener address");
            let anywhere = match local.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            };
            let listing = ("LISTEN".to_owned(), local, SocketAddr::new(anywhere, 0));
            listings.insert(listing, cookie(listener));
        }
        for stream in self
            .connections
            .iter()
            .flat_map(|(client, accepted)| [client, accepted])
        {
            let listing = (
                "ESTABLISHED".to_owned(),
                stream.local_addr().expect("local address"),
                stream.peer_addr().expect("peer address"),
            );
            listings.insert(listing, cookie(stream));
        }
        listings
    }
}

/// A connection to `listener`: the client's socket and the accepted one.
fn connect(listener: &TcpListener) -> (TcpStream, TcpStream) {
    let client =
        TcpStream::connect(listener.local_addr().expect("listener address")).expect("connect");
    let (accepted, _) = listener.accept().expect("accept");
    (client, accepted)
}

/// A raw IPv4 socket of protocol IPPROTO_TCP: a socket whose protocol is TCP but that is not a
/// TCP socket.
fn raw_tcp_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain system call; a non-negative result is a new descriptor this function owns.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn cookie(socket: impl AsFd) -> u64 {
    socket_cookie(socket).expect("SO_COOKIE")
}

/// The existing sockets, as a run of the agent with default settings sees them once its
/// tracepoint programs are attached.
fn existing_sockets() -> Vec<StateChange> {
    let cli = Cli::try_parse_from(["tcpstates", "-q"]).expect("tcpstates -q");
    let config = Config::new(cli, |_| None).expect("no OTEL_* variables");
    let mut probe = probe::attach(&config).expect("attach (as root)");
    probe.existing_sockets().expect("existing sockets")
}

/// The listing of `change`.
fn listing(change: &StateChange) -> Listing {
    (
        change.newstate.to_string(),
        SocketAddr::new(change.local_addr, change.local_port),
        SocketAddr::new(change.remote_addr, change.remote_port),
    )
}

#[test]
fn every_socket_this_process_holds_is_listed_once() {
    let ns = Netns::create();
    let held = ns.run(Held::make);
    // The cookie of one socket is asked for now, before the listing: it must be listed with it.
    let known_cookie = cookie(&held.duplicate);

    let found = existing_sockets();

    let netns = u32::try_from(netns_inode(&ns)).expect("a 32-bit inode number");
    let in_namespace: Vec<&StateChange> = found
        .iter()
        .filter(|change| change.netns == netns)
        .collect();
    let expected = held.listings();
    let mut listed: Vec<Listing> = in_namespace.iter().map(|change| listing(change)).collect();
    listed.sort();
    let mut wanted: Vec<Listing> = expected.keys().cloned().collect();
    wanted.sort();
    // A socket missed, listed twice, or a socket that is not TCP listed, all differ here.
    assert_eq!(listed, wanted);
    assert_eq!(listed.len(), 2 + 2 * (CONNECTIONS + 1));

    let pid = std::process::id();
    // SAFETY: a system call without arguments.
    let uid = unsafe { libc::getuid() };
    for change in &in_namespace {
        assert_eq!(change.oldstate, change.newstate, "{change:?}");
        assert_eq!(change.owner.map(|owner| owner.pid), Some(pid), "{change:?}");
        assert_eq!(change.pid, pid, "{change:?}");
        assert_eq!(change.uid, uid, "{change:?}");
        // A cookie no one had asked for is 0; one asked for is the socket's.
        let cookie = expected[&listing(change)];
        assert!(
            change.cookie == 0 || change.cookie == cookie,
            "{change:?}: {cookie}"
        );
    }
    let duplicated = held.duplicate.local_addr().expect("address");
    let listed_duplicate = in_namespace
        .iter()
        .find(|change| listing(change).1 == duplicated)
        .expect("the duplicated socket");
    assert_eq!(listed_duplicate.cookie, known_cookie);
}

#[test]
fn the_holder_of_a_socket_is_its_owner_with_its_cgroup() {
    let ns = Netns::create();
    let cgroup = Cgroup::create();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, PORT_PEER));
    let mut peer = Peer::listen(&ns, &cgroup, addr, 1);
    peer.go();
    let announced = peer.next("listener");

    let found = existing_sockets();

    let netns = u32::try_from(netns_inode(&ns)).expect("a 32-bit inode number");
    let listed: Vec<&StateChange> = found
        .iter()
        .filter(|change| change.netns == netns)
        .collect();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let listener = listed[0];
    assert_eq!(listing(listener).0, "LISTEN");
    assert_eq!(
        (listener.local_addr, listener.local_port),
        (addr.ip(), PORT_PEER)
    );
    let owner = listener.owner.expect("an owner");
    assert_eq!(
        (owner.pid, owner.comm.to_str_lossy().as_ref()),
        (announced.pid, "tcp_peer")
    );
    // The peer asked for the cookie (SO_COOKIE) when it announced the socket.
    assert_eq!(listener.cookie, announced.cookie);
    assert_eq!(listener.cgroup_id, cgroup.id());
    drop(peer);
}
