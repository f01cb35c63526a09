//! The client side: connect, wait for the server's close, close.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Longest wait for a connection to be set up or for the server's close.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// What one client thread did.
#[derive(Debug, Default)]
pub struct Tally {
    /// Connections that went through the whole sequence.
    pub connections: u64,
    /// Connections that failed at some step.
    pub failed: u64,
    /// The first failure, to tell the user why.
    pub first_error: Option<io::Error>,
}

impl Tally {
    /// Adds another thread's tally to this one.
    pub fn add(&mut self, other: &Self) {
        self.connections += other.connections;
        self.failed += other.failed;
        if self.first_error.is_none()
            && let Some(e) = &other.first_error
        {
            self.first_error = Some(io::Error::new(e.kind(), e.to_string()));
        }
    }
}

/// Runs connections one after another until `deadline`, or until `stop` is set.
pub fn run(addr: SocketAddr, deadline: Instant, stop: &AtomicBool) -> Tally {
    let mut tally = Tally::default();
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        match one_connection(addr) {
            Ok(()) => tally.connections += 1,
            Err(e) => {
                tally.failed += 1;
                tally.first_error.get_or_insert(e);
            }
        }
    }
    tally
}

/// Connects, reads until the server's end-of-file, then closes.
fn one_connection(addr: SocketAddr) -> io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut byte = [0u8; 1];
    match stream.read(&mut byte)? {
        0 => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the server sent data instead of closing",
        )),
    }
}
