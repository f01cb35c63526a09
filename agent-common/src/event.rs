//! The record the kernel program writes to the ring buffer for each TCP state change.

/// Length of a task's command name in the kernel (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// [`RawStateChange::flags`]: the owner fields hold the process that made the socket.
pub const FLAG_OWNER_KNOWN: u16 = 1;
/// [`RawStateChange::flags`]: the socket received a reset (`tcp:tcp_receive_reset`) before
/// this transition.
pub const FLAG_RESET_RECEIVED: u16 = 2;

/// One `sock:inet_sock_set_state` hit on a TCP socket, as the kernel program saw it.
///
/// Addresses are copied as the socket holds them: 4 bytes for `AF_INET`, 16 for `AF_INET6`, in
/// network byte order; ports are in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawStateChange {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at the transition.
    pub ts_ns: u64,
    /// Kernel address of the `struct sock`; identifies the socket while it lives.
    pub skaddr: u64,
    /// Nanoseconds the socket spent in `oldstate`; 0 when its entry into it was not seen.
    pub span_ns: u64,
    /// The socket's cookie (`SO_COOKIE`): unique for the life of the host's boot, never reused.
    pub cookie: u64,
    /// Id of the socket's cgroup (v2): the inode number of the cgroup's directory.
    pub cgroup_id: u64,
    /// Thread-group id of the task on the CPU (not necessarily the socket's owner).
    pub pid: u32,
    /// State before the transition (`TCP_*` number, see [`crate::state`]).
    pub oldstate: u32,
    /// State after the transition.
    pub newstate: u32,
    /// Thread-group id of the owner, the process that connected or listened (valid with
    /// [`FLAG_OWNER_KNOWN`]; an accepted socket has its listener's owner).
    pub owner_pid: u32,
    /// The socket's uid (`sk_uid`): the user that created it.
    pub uid: u32,
    /// Inode number of the socket's network namespace.
    pub netns: u32,
    /// Local port.
    pub sport: u16,
    /// Remote port.
    pub dport: u16,
    /// Address family: `AF_INET` (2) or `AF_INET6` (10).
    pub family: u16,
    /// `FLAG_*` bits.
    pub flags: u16,
    /// Local address.
    pub saddr: [u8; 16],
    /// Remote address.
    pub daddr: [u8; 16],
    /// Command name of the task on the CPU, NUL-padded.
    pub comm: [u8; COMM_LEN],
    /// Command name of the owner (valid with [`FLAG_OWNER_KNOWN`]), NUL-padded.
    pub owner_comm: [u8; COMM_LEN],
}

#[cfg(feature = "user")]
// SAFETY: `RawStateChange` is `repr(C)`, `Copy`, has no implicit padding (5×8 + 6×4 + 4×2 +
// 4×16 bytes, 8-aligned) and every bit pattern is a valid value.
unsafe impl aya::Pod for RawStateChange {}

/// What a socket's CLOSE tells about the connection, read from the socket as it closes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawClose {
    /// Data bytes sent, retransmissions included (`tcp_sock.bytes_sent`).
    pub bytes_sent: u64,
    /// Data bytes retransmitted (`tcp_sock.bytes_retrans`).
    pub bytes_retrans: u64,
    /// Sequence space received, the peer's FIN included (`tcp_sock.bytes_received`).
    pub bytes_received: u64,
    /// Smoothed round-trip time, µs (`tcp_sock.srtt_us >> 3`); 0 when never measured.
    pub srtt_us: u32,
    /// Minimum round-trip time seen, µs (`tcp_sock.rtt_min`); `u32::MAX` or 0 when never
    /// measured.
    pub min_rtt_us: u32,
    /// Segments retransmitted over the connection's life (`tcp_sock.total_retrans`).
    pub total_retrans: u32,
    /// The socket's error (`sk_err`, a positive errno; 0 for none): why the connection failed.
    pub sk_err: u32,
    /// 1 when the peer's FIN had arrived (`sk_flags`' `SOCK_DONE`), 0 otherwise.
    pub peer_fin: u32,
    /// The socket's soft error (`sk_err_soft`): an error kept while the socket was busy, such
    /// as an ICMP answer to a SYN while `connect()` held the socket; `sk_err` itself is cleared
    /// once the application has read it (`connect()`'s result, `SO_ERROR`).
    pub sk_err_soft: u32,
}

/// The record of a transition to CLOSE: the state change and what the CLOSE tells.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawClosed {
    /// The state change.
    pub change: RawStateChange,
    /// What the socket reported as it closed.
    pub close: RawClose,
}

/// `tcp:tcp_send_reset` on a full socket: the socket sent a reset (a reset an `SO_LINGER` 0
/// close sends comes after the socket's CLOSE).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawResetSent {
    /// `bpf_ktime_get_ns()` at the reset.
    pub ts_ns: u64,
    /// Kernel address of the socket.
    pub skaddr: u64,
    /// The socket's cookie.
    pub cookie: u64,
}

/// [`RawRetransmit::kind`]: a data segment (or a FIN) sent again.
pub const RETRANSMIT_DATA: u32 = 0;
/// [`RawRetransmit::kind`]: a SYN sent again (the socket is connecting).
pub const RETRANSMIT_SYN: u32 = 1;
/// [`RawRetransmit::kind`]: a SYN-ACK sent again, for a connection request not yet accepted
/// (`tcp:tcp_retransmit_synack`) or by a Fast Open socket.
pub const RETRANSMIT_SYNACK: u32 = 2;

/// `tcp:tcp_retransmit_skb` or `tcp:tcp_retransmit_synack`: a socket sent a segment again.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawRetransmit {
    /// `bpf_ktime_get_ns()` at the retransmission.
    pub ts_ns: u64,
    /// Kernel address of the socket (of the request, for a SYN-ACK of a request).
    pub skaddr: u64,
    /// The socket's cookie; a request's is the one the socket made from it when accepted gets.
    pub cookie: u64,
    /// For a SYN-ACK of a request: kernel time its first SYN-ACK was sent (`snt_synack`), when
    /// the connection was requested; 0 otherwise.
    pub requested_ns: u64,
    /// `RETRANSMIT_*`.
    pub kind: u32,
    /// The socket's state (`TCP_*`).
    pub state: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_no_implicit_padding() {
        assert_eq!(
            core::mem::size_of::<RawStateChange>(),
            5 * 8 + 6 * 4 + 4 * 2 + 4 * 16
        );
        assert_eq!(core::mem::size_of::<RawClose>(), 3 * 8 + 6 * 4);
        assert_eq!(
            core::mem::size_of::<RawClosed>(),
            core::mem::size_of::<RawStateChange>() + core::mem::size_of::<RawClose>()
        );
        assert_eq!(core::mem::size_of::<RawResetSent>(), 3 * 8);
        assert_eq!(core::mem::size_of::<RawRetransmit>(), 4 * 8 + 2 * 4);
    }
}
