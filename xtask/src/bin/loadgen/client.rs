//! The client side: connect, wait for the server's close, close.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
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

/// Most a paced client falls behind its schedule before it forgets the rest: it then bursts
/// by at most this much of its connections to catch up.
const MAX_LAG: Duration = Duration::from_secs(1);

/// When a client starts its next connection: at once, or on a schedule of evenly spaced slots.
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    /// Time between two of this client's connections; `None`: no pacing.
    interval: Option<Duration>,
    /// When the next connection is due.
    next: Instant,
}

impl Pacing {
    /// Client `index` of `clients` sharing `rate` connections a second from `start` (0: no
    /// pacing); the clients' slots are staggered evenly within one interval.
    pub fn new(rate: f64, clients: usize, index: usize, start: Instant) -> Self {
        if rate <= 0.0 || clients == 0 {
            return Self {
                interval: None,
                next: start,
            };
        }
        let interval = Duration::from_secs_f64(clients as f64 / rate);
        Self {
            interval: Some(interval),
            next: start + interval.mul_f64(index as f64 / clients as f64),
        }
    }

    /// Sleeps until the next slot, if there is a schedule, and books the one after it.
    fn wait(&mut self) {
        let Some(interval) = self.interval else {
            return;
        };
        let now = Instant::now();
        if let Some(ahead) = self.next.checked_duration_since(now) {
            thread::sleep(ahead);
        } else if now.duration_since(self.next) > MAX_LAG {
            self.next = now;
        }
        self.next += interval;
    }
}

/// Runs connections one after another, paced by `pacing`, until `deadline`, or until `stop` is
/// set.
pub fn run(addr: SocketAddr, deadline: Instant, mut pacing: Pacing, stop: &AtomicBool) -> Tally {
    let mut tally = Tally::default();
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        pacing.wait();
        if Instant::now() >= deadline || stop.load(Ordering::Relaxed) {
            break;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paced_clients_share_the_rate_and_stagger_their_slots() {
        let start = Instant::now();
        let first = Pacing::new(2000.0, 8, 0, start);
        let third = Pacing::new(2000.0, 8, 2, start);
        assert_eq!(first.interval, Some(Duration::from_millis(4)));
        assert_eq!(first.next, start);
        assert_eq!(third.next, start + Duration::from_millis(1));
        assert_eq!(Pacing::new(0.0, 8, 2, start).interval, None);
    }
}
