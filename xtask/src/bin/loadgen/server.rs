//! The server side: a listener and threads that accept each connection and close it at once.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};

/// How long one `accept` waits before the thread checks whether it should stop.
const ACCEPT_TIMEOUT: Duration = Duration::from_millis(50);

/// A listening socket and its accepting threads.
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Listens on `addr` with `backlog` and starts `acceptors` threads that accept and close.
    pub fn start(addr: SocketAddr, backlog: i32, acceptors: usize) -> Result<Self> {
        let listener = TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))?;
        set_backlog(&listener, backlog).context("raising the listen backlog")?;
        set_accept_timeout(&listener, ACCEPT_TIMEOUT).context("setting the accept timeout")?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut server = Self {
            addr: listener
                .local_addr()
                .context("reading the listener's address")?,
            stop: Arc::clone(&stop),
            threads: Vec::with_capacity(acceptors),
        };
        for i in 0..acceptors {
            let listener = listener.try_clone().context("cloning the listener")?;
            let stop = Arc::clone(&stop);
            let handle = thread::Builder::new()
                .name(format!("acceptor-{i}"))
                .spawn(move || accept_and_close(&listener, &stop))
                .context("spawning an acceptor thread")?;
            server.threads.push(handle);
        }
        Ok(server)
    }

    /// The address it listens on (with the port the kernel chose if asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the accepting threads (within one accept timeout) and closes the listener.
    pub fn stop(mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        for handle in self.threads.drain(..) {
            handle
                .join()
                .map_err(|_| anyhow!("an acceptor thread panicked"))?;
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Reached without `stop` only on an error path: let the threads end by themselves.
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Accepts connections and drops each at once (the server closes first), until told to stop.
fn accept_and_close(listener: &TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => drop(stream),
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("loadgen: accept: {e}");
                thread::sleep(ACCEPT_TIMEOUT);
            }
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Calls `listen` again with a larger backlog than the standard library's 128.
fn set_backlog(listener: &TcpListener, backlog: i32) -> io::Result<()> {
    // SAFETY: the descriptor is a valid, bound TCP socket owned by `listener`; calling `listen`
    // again on a listening socket only changes its backlog.
    let rc = unsafe { libc::listen(listener.as_raw_fd(), backlog) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes a blocking `accept` on this socket return `EAGAIN` after `timeout` (`SO_RCVTIMEO`).
fn set_accept_timeout(listener: &TcpListener, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs().try_into().unwrap_or(libc::time_t::MAX),
        tv_usec: timeout.subsec_micros().into(),
    };
    // SAFETY: `tv` is a valid `timeval` that outlives the call, and its size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
