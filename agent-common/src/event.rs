//! The record the kernel program writes to the ring buffer for each TCP state change.

/// Length of a task's command name in the kernel (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// One `sock:inet_sock_set_state` hit on a TCP socket, as the kernel program saw it.
///
/// Addresses are copied as the tracepoint holds them: 4 bytes for `AF_INET`, 16 for
/// `AF_INET6`, in network byte order; ports are in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawStateChange {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at the transition.
    pub ts_ns: u64,
    /// Kernel address of the `struct sock`; identifies the socket while it lives.
    pub skaddr: u64,
    /// Nanoseconds the socket spent in `oldstate`; 0 when its entry into it was not seen.
    pub span_ns: u64,
    /// Thread-group id of the task on the CPU (not necessarily the socket's owner).
    pub pid: u32,
    /// State before the transition (`TCP_*` number, see [`crate::state`]).
    pub oldstate: u32,
    /// State after the transition.
    pub newstate: u32,
    /// Local port.
    pub sport: u16,
    /// Remote port.
    pub dport: u16,
    /// Address family: `AF_INET` (2) or `AF_INET6` (10).
    pub family: u16,
    /// Explicit padding, always zero.
    pub pad: u16,
    /// Local address.
    pub saddr: [u8; 16],
    /// Remote address.
    pub daddr: [u8; 16],
    /// Command name of the task on the CPU, NUL-padded.
    pub comm: [u8; COMM_LEN],
}

#[cfg(feature = "user")]
// SAFETY: `RawStateChange` is `repr(C)`, `Copy`, has no implicit padding and every bit
// pattern is a valid value.
unsafe impl aya::Pod for RawStateChange {}
