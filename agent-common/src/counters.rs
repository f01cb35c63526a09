//! Per-CPU counters the kernel program keeps, so no event is ever lost silently.

/// Index of a counter in the kernel program's `COUNTERS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Transitions that could not be delivered because the ring buffer was full.
    RingFull = 0,
    /// Transitions of a socket whose family is neither `AF_INET` nor `AF_INET6`.
    UnknownFamily = 1,
    /// Transitions of a socket the kernel could not give storage: their duration and owner
    /// are unknown (delivered with 0 and no owner).
    NoStorage = 2,
    /// Hits the main program missed to BPF recursion protection that the backstop program
    /// handled instead.
    Recovered = 3,
}

impl Counter {
    /// Number of counters; the size of the `COUNTERS` array.
    pub const COUNT: u32 = 4;
}
