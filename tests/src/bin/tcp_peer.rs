//! `tcp_peer`: a process of its own that makes TCP sockets for the owner tests, and says which.
//!
//! It first waits for one line on stdin (so a test can learn its pid, and start an agent that
//! filters on it, before it makes any socket). Then `tcp_peer listen ADDR COUNT` listens on ADDR,
//! accepts COUNT connections (reading each to end-of-file, then closing it) and exits;
//! `tcp_peer share ADDR` listens on ADDR with `SO_REUSEPORT` (so several peers can share it) and
//! accepts connections the same way until it is killed (or its 20 s are up);
//! `tcp_peer connect ADDR` connects to ADDR, sends a line, reads to end-of-file and exits. Each socket is announced on stdout as it is made:
//! `listener|accepted|connected pid=P cookie=C port=LOCAL_PORT`, with the socket's cookie
//! (`SO_COOKIE`). Every wait is bounded (20 s in all), so a test that goes wrong cannot hang it.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use agent_common::correlation::socket_cookie;
use integration_tests::traffic;

/// Longest wait for anything.
const TIMEOUT: Duration = Duration::from_secs(20);

fn main() -> ExitCode {
    let mut go = String::new();
    if let Err(err) = io::stdin().read_line(&mut go) {
        eprintln!("tcp_peer: reading stdin: {err}");
        return ExitCode::FAILURE;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["listen", addr, count] => parse(addr).and_then(|addr| {
            let count = count
                .parse()
                .map_err(|_| io::Error::other(format!("bad count {count:?}")))?;
            listen(TcpListener::bind(addr)?, Some(count))
        }),
        ["share", addr] => parse(addr)
            .and_then(bind_reusing_port)
            .and_then(|listener| listen(listener, None)),
        ["connect", addr] => parse(addr).and_then(connect),
        _ => Err(io::Error::other(
            "usage: tcp_peer listen ADDR COUNT | tcp_peer share ADDR | tcp_peer connect ADDR",
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tcp_peer: {err}");
            ExitCode::FAILURE
        }
    }
}

fn parse(addr: &str) -> io::Result<SocketAddr> {
    addr.parse()
        .map_err(|_| io::Error::other(format!("bad address {addr:?}")))
}

fn announce(what: &str, socket: impl AsFd, port: u16) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "{what} pid={} cookie={} port={port}",
        std::process::id(),
        socket_cookie(socket)?
    )?;
    out.flush()
}

/// A listening socket on `addr` with `SO_REUSEPORT` set before it binds (the standard
/// library's listener cannot set it).
fn bind_reusing_port(addr: SocketAddr) -> io::Result<TcpListener> {
    let check = |result: libc::c_int| {
        if result < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(result)
        }
    };
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let (sockaddr, len) = traffic::sockaddr(addr);
    // SAFETY: plain system calls on a socket this function owns from its creation; the
    // address and option are locals that outlive the calls.
    unsafe {
        let fd = check(libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
        ))?;
        let socket = OwnedFd::from_raw_fd(fd);
        let one: libc::c_int = 1;
        check(libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEPORT,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        ))?;
        check(libc::bind(fd, (&raw const sockaddr).cast(), len))?;
        check(libc::listen(fd, 128))?;
        Ok(TcpListener::from(socket))
    }
}

/// Accepts `count` connections (all it gets until its time is up if `None`), reading each to
/// end-of-file and closing it.
fn listen(listener: TcpListener, count: Option<usize>) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    announce("listener", &listener, listener.local_addr()?.port())?;
    let deadline = Instant::now() + TIMEOUT;
    let mut accepted = 0;
    while count.is_none_or(|count| accepted < count) {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                announce("accepted", &stream, stream.local_addr()?.port())?;
                drain(stream, deadline)?;
                accepted += 1;
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return match count {
                        None => Ok(()),
                        Some(count) => Err(io::Error::other(format!(
                            "accepted {accepted} of {count} connections in {TIMEOUT:?}"
                        ))),
                    };
                }
                thread::sleep(Duration::from_millis(5));
            }
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

fn connect(addr: SocketAddr) -> io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    announce("connected", &stream, stream.local_addr()?.port())?;
    stream.write_all(b"hello\n")?;
    stream.shutdown(Shutdown::Write)?;
    drain(stream, Instant::now() + TIMEOUT)
}

/// Reads to end-of-file (at most until `deadline`), then closes.
fn drain(mut stream: TcpStream, deadline: Instant) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    stream.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
    let mut buf = [0; 512];
    while stream.read(&mut buf)? > 0 {}
    Ok(())
}
