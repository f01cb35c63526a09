//! TCP traffic the tests make inside their own namespace, and the exact transitions the kernel
//! reports for each scenario (measured on this machine; see shared/NOTES.md).
//!
//! Every scenario closes its sockets in a fixed order (the second end closes only after it has
//! read the first end's FIN or RST), so no simultaneous close makes the sequences vary.

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::thread;
use std::time::{Duration, Instant};

use crate::agent::EVENT_TIMEOUT;
use crate::netns::Netns;

/// A socket life as `(OLDSTATE, NEWSTATE)` pairs, in order.
pub type Transitions = &'static [(&'static str, &'static str)];

/// A listening socket, from `listen()` to `close()`.
pub const LISTENER: Transitions = &[("CLOSE", "LISTEN"), ("LISTEN", "CLOSE")];

/// A client whose `connect()` is refused (nothing listens on the port).
pub const REFUSED: Transitions = &[("CLOSE", "SYN_SENT"), ("SYN_SENT", "CLOSE")];

/// A client that closes first.
pub const CLIENT_CLOSING_FIRST: Transitions = &[
    ("CLOSE", "SYN_SENT"),
    ("SYN_SENT", "ESTABLISHED"),
    ("ESTABLISHED", "FIN_WAIT1"),
    ("FIN_WAIT1", "FIN_WAIT2"),
    ("FIN_WAIT2", "CLOSE"),
];

/// A client whose server closes first.
pub const CLIENT_CLOSED_BY_PEER: Transitions = &[
    ("CLOSE", "SYN_SENT"),
    ("SYN_SENT", "ESTABLISHED"),
    ("ESTABLISHED", "CLOSE_WAIT"),
    ("CLOSE_WAIT", "LAST_ACK"),
    ("LAST_ACK", "CLOSE"),
];

/// An accepted (server child) socket that closes first.
pub const SERVER_CLOSING_FIRST: Transitions = &[
    ("LISTEN", "SYN_RECV"),
    ("SYN_RECV", "ESTABLISHED"),
    ("ESTABLISHED", "FIN_WAIT1"),
    ("FIN_WAIT1", "FIN_WAIT2"),
    ("FIN_WAIT2", "CLOSE"),
];

/// An accepted socket whose client closes first.
pub const SERVER_CLOSED_BY_PEER: Transitions = &[
    ("LISTEN", "SYN_RECV"),
    ("SYN_RECV", "ESTABLISHED"),
    ("ESTABLISHED", "CLOSE_WAIT"),
    ("CLOSE_WAIT", "LAST_ACK"),
    ("LAST_ACK", "CLOSE"),
];

/// A client that aborts an established connection (SO_LINGER 0, then close: an RST).
pub const CLIENT_RESET: Transitions = &[
    ("CLOSE", "SYN_SENT"),
    ("SYN_SENT", "ESTABLISHED"),
    ("ESTABLISHED", "CLOSE"),
];

/// The accepted socket that receives that RST.
pub const SERVER_RESET: Transitions = &[
    ("LISTEN", "SYN_RECV"),
    ("SYN_RECV", "ESTABLISHED"),
    ("ESTABLISHED", "CLOSE"),
];

/// Which end of a connection closes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closer {
    /// The connecting end.
    Client,
    /// The accepted socket.
    Server,
}

impl Closer {
    /// The transitions of the client socket when this end closes first.
    pub fn client_transitions(self) -> Transitions {
        match self {
            Closer::Client => CLIENT_CLOSING_FIRST,
            Closer::Server => CLIENT_CLOSED_BY_PEER,
        }
    }

    /// The transitions of the accepted socket when this end closes first.
    pub fn server_transitions(self) -> Transitions {
        match self {
            Closer::Client => SERVER_CLOSED_BY_PEER,
            Closer::Server => SERVER_CLOSING_FIRST,
        }
    }
}

/// The two ends of a connection a scenario made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    /// The client socket's local address (its ephemeral port).
    pub client: SocketAddr,
    /// The address the server listened on.
    pub server: SocketAddr,
}

/// In `ns`: listens on `server`, connects to it, accepts, keeps both ends ESTABLISHED for `hold`,
/// closes the `closer` end, closes the other end once it has read the FIN, then closes the
/// listener. Produces [`LISTENER`] plus the `closer`'s client and server transitions.
pub fn connect_and_close(
    ns: &Netns,
    server: SocketAddr,
    hold: Duration,
    closer: Closer,
) -> Connection {
    ns.run(|| {
        let open = OpenConnection::here(server, None);
        if !hold.is_zero() {
            // Holding the connection open is what a timing test measures.
            thread::sleep(hold);
        }
        open.close(closer)
    })
}

/// In `ns`: listens on `server`, then for each address of `clients` in turn connects to it from
/// that address (bound before the connect, so that even the client socket's first transition
/// shows its local port and a local port filter, `-L`, keeps its whole life) and closes the
/// connection as [`connect_and_close`] does, without holding it; then closes the listener.
/// Produces [`LISTENER`] plus, for each client, the `closer`'s client and server transitions.
pub fn connect_from_each_and_close(
    ns: &Netns,
    server: SocketAddr,
    clients: &[SocketAddr],
    closer: Closer,
) -> Vec<Connection> {
    ns.run(|| {
        let listener = listen(server);
        let connections = clients
            .iter()
            .map(|&client_addr| {
                let (client, accepted) = connect_and_accept(&listener, server, Some(client_addr));
                close_in_order(client, accepted, closer);
                Connection {
                    client: client_addr,
                    server,
                }
            })
            .collect();
        drop(listener);
        connections
    })
}

/// In `ns`: listens on `server`, connects to it from `client` (bound before the connect, as
/// [`connect_from_each_and_close`] binds it) and accepts, and leaves all three sockets open
/// (both ends ESTABLISHED) until [`OpenConnection::close`], or until it is dropped.
pub fn open_connection_from(ns: &Netns, client: SocketAddr, server: SocketAddr) -> OpenConnection {
    ns.run(|| OpenConnection::here(server, Some(client)))
}

/// A connection left open: the listener, the client and the accepted socket.
#[derive(Debug)]
pub struct OpenConnection {
    /// Its two ends.
    pub connection: Connection,
    listener: TcpListener,
    client: TcpStream,
    accepted: TcpStream,
}

impl OpenConnection {
    /// Opens the connection in the calling thread's namespace, from `from` if given.
    pub fn here(server: SocketAddr, from: Option<SocketAddr>) -> OpenConnection {
        let listener = listen(server);
        let (client, accepted) = connect_and_accept(&listener, server, from);
        OpenConnection {
            connection: Connection {
                client: client.local_addr().expect("client address"),
                server,
            },
            listener,
            client,
            accepted,
        }
    }

    /// Closes the `closer` end, the other end once it has read the FIN, then the listener (the
    /// sockets stay in their namespace, whatever thread this runs on). Completes [`LISTENER`]
    /// and the `closer`'s client and server transitions.
    pub fn close(self, closer: Closer) -> Connection {
        close_in_order(self.client, self.accepted, closer);
        drop(self.listener);
        self.connection
    }
}

/// Connects to `server` (from `from` if given) and accepts the connection on `listener`:
/// (client, accepted).
fn connect_and_accept(
    listener: &TcpListener,
    server: SocketAddr,
    from: Option<SocketAddr>,
) -> (TcpStream, TcpStream) {
    let client = connect(server, from).unwrap_or_else(|e| panic!("connect {server}: {e}"));
    let (accepted, _) = listener.accept().expect("accept");
    (client, accepted)
}

/// Closes the `closer` end, then the other end once it has read the FIN.
fn close_in_order(client: TcpStream, accepted: TcpStream, closer: Closer) {
    let (first, second) = match closer {
        Closer::Client => (client, accepted),
        Closer::Server => (accepted, client),
    };
    drop(first);
    let read = read_once(&second).expect("read the peer's FIN");
    assert_eq!(read, 0, "expected end of stream after the peer closed");
    drop(second);
}

/// In `ns`: connects to `server`, where nothing listens, and checks that the connection is
/// refused. Produces [`REFUSED`].
pub fn connect_refused(ns: &Netns, server: SocketAddr) {
    ns.run(|| expect_refusal(server, None))
}

/// Like [`connect_refused`], from `client` (bound before the connect, as
/// [`connect_from_each_and_close`] binds it).
pub fn connect_refused_from(ns: &Netns, client: SocketAddr, server: SocketAddr) {
    ns.run(|| expect_refusal(server, Some(client)))
}

fn expect_refusal(server: SocketAddr, from: Option<SocketAddr>) {
    match connect(server, from) {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
        other => panic!("connect {server}: expected a refusal, got {other:?}"),
    }
}

/// In `ns`: listens on `addr`, then closes the listener. Produces [`LISTENER`].
pub fn listen_and_close(ns: &Netns, addr: SocketAddr) {
    ns.run(|| drop(listen(addr)))
}

/// In `ns`: connects to a listener on `server`, then the client aborts with SO_LINGER 0 and
/// `close()`; the accepted socket reads the reset before it is closed, then the listener.
/// Produces [`LISTENER`], [`CLIENT_RESET`] and [`SERVER_RESET`].
pub fn connect_and_reset(ns: &Netns, server: SocketAddr) -> Connection {
    ns.run(|| {
        let listener = listen(server);
        let (client, accepted) = connect_and_accept(&listener, server, None);
        let connection = Connection {
            client: client.local_addr().expect("client address"),
            server,
        };
        set_linger_zero(&client);
        drop(client);
        match read_once(&accepted) {
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            other => panic!("expected a reset on the accepted socket, got {other:?}"),
        }
        drop(accepted);
        drop(listener);
        connection
    })
}

/// Connects to `server`, from `from` if given (see [`connect_from`]).
fn connect(server: SocketAddr, from: Option<SocketAddr>) -> std::io::Result<TcpStream> {
    match from {
        Some(client) => connect_from(client, server),
        None => TcpStream::connect(server),
    }
}

/// Connects to `server` from `client`, binding the socket to it first (std's `connect` binds
/// only while connecting). Panics if it cannot bind.
fn connect_from(client: SocketAddr, server: SocketAddr) -> std::io::Result<TcpStream> {
    let family = match server {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain socket(2); the descriptor is checked before use.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a new socket that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let (local, local_len) = sockaddr(client);
    // SAFETY: the address points to a sockaddr of the length passed, for the socket's family.
    let rc = unsafe { libc::bind(socket.as_raw_fd(), (&raw const local).cast(), local_len) };
    assert_eq!(rc, 0, "bind {client}: {}", std::io::Error::last_os_error());
    let (remote, remote_len) = sockaddr(server);
    // SAFETY: as for bind.
    let rc = unsafe { libc::connect(socket.as_raw_fd(), (&raw const remote).cast(), remote_len) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(TcpStream::from(socket))
}

/// `addr` as a C socket address, and its length.
pub fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all zeroes is a valid (empty) sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is large and aligned enough for any socket address.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in>().write(sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: as above.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in6>().write(sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, libc::socklen_t::try_from(len).expect("small size"))
}

/// Listens on `addr`. A listener this process just closed on the same port may still be open
/// for a moment: a child another test forks holds every open socket of the process until it
/// execs, so "address in use" is retried until [`EVENT_TIMEOUT`].
fn listen(addr: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        match TcpListener::bind(addr) {
            Ok(listener) => return listener,
            Err(e) if e.kind() == ErrorKind::AddrInUse && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("listen on {addr}: {e}"),
        }
    }
}

/// One `read()` of up to 16 bytes, waiting at most [`EVENT_TIMEOUT`].
fn read_once(mut stream: &TcpStream) -> std::io::Result<usize> {
    stream.set_read_timeout(Some(EVENT_TIMEOUT))?;
    stream.read(&mut [0; 16])
}

/// SO_LINGER {on, 0 s}: `close()` then sends an RST instead of a FIN (std's `set_linger` is
/// still unstable).
fn set_linger_zero(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::linger>()).expect("small size");
    // SAFETY: the fd is a live socket owned by `stream`; the option value points to a `linger`
    // of the length passed.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            len,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
}

/// Opens and closes connections to `server`, whose listener it binds itself in the calling
/// thread's network namespace, one after the other as fast as it can, until `stop` is set or
/// `limit` has passed; returns how many it made.
pub fn connect_until(
    server: SocketAddr,
    stop: &std::sync::atomic::AtomicBool,
    limit: Duration,
) -> u64 {
    let listener = std::net::TcpListener::bind(server)
        .unwrap_or_else(|e| panic!("bind the load's listener {server}: {e}"));
    let deadline = std::time::Instant::now() + limit;
    let mut made = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && std::time::Instant::now() < deadline {
        let client = std::net::TcpStream::connect(server)
            .unwrap_or_else(|e| panic!("connect to the load's listener {server}: {e}"));
        let (accepted, _) = listener.accept().expect("accept a load connection");
        drop(client);
        drop(accepted);
        made += 1;
    }
    made
}
