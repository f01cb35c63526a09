//! Decoding of [`RawStateChange`] records into typed values (user space only).

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::borrow::Cow;
use std::string::{String, ToString};

use crate::event::{
    COMM_LEN, FLAG_OWNER_KNOWN, FLAG_RESET_RECEIVED, RETRANSMIT_SYN, RETRANSMIT_SYNACK, RawClose,
    RawRetransmit, RawStateChange,
};
use crate::state::{self, AF_INET, AF_INET6};

/// A TCP state number, known to the kernel or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TcpState(pub u32);

impl TcpState {
    /// The kernel's name (`ESTABLISHED`, …), or `None` for an unknown number.
    pub fn name(self) -> Option<&'static str> {
        state::name(self.0)
    }
}

impl fmt::Display for TcpState {
    /// The state's name, or its number when the kernel gave one we do not know.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.pad(name),
            None => f.pad(&self.0.to_string()),
        }
    }
}

/// A task's command name as the kernel stores it: up to 16 bytes, NUL-padded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Comm([u8; COMM_LEN]);

impl Comm {
    /// Wraps a kernel `comm` buffer.
    pub fn new(bytes: [u8; COMM_LEN]) -> Self {
        Self(bytes)
    }

    /// The bytes up to the first NUL.
    pub fn as_bytes(&self) -> &[u8] {
        let len = self.0.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        &self.0[..len]
    }

    /// The name as text, invalid UTF-8 replaced.
    pub fn to_str_lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(self.as_bytes())
    }
}

/// Why a raw record could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The family is neither `AF_INET` nor `AF_INET6`.
    UnknownFamily(u16),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownFamily(family) => write!(f, "unknown address family {family}"),
        }
    }
}

impl core::error::Error for DecodeError {}

/// The process that owns a socket: the one that connected or listened (for an accepted
/// socket, its listener's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// Thread-group id.
    pub pid: u32,
    /// Command name at `connect()` or `listen()`.
    pub comm: Comm,
}

/// One TCP state change, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateChange {
    /// Kernel CLOCK_MONOTONIC time of the transition, in nanoseconds.
    pub ts_ns: u64,
    /// Kernel address of the socket.
    pub skaddr: u64,
    /// The socket's cookie (`SO_COOKIE`), unique for the host's boot.
    pub cookie: u64,
    /// The socket's owner; `None` when the socket predates the agent (its `connect()` or
    /// `listen()` was not seen).
    pub owner: Option<Owner>,
    /// The socket's uid.
    pub uid: u32,
    /// Inode number of the socket's network namespace.
    pub netns: u32,
    /// Id of the socket's cgroup (v2).
    pub cgroup_id: u64,
    /// Time spent in `oldstate`, in nanoseconds (0 when its start was not seen).
    pub span_ns: u64,
    /// On-CPU process id at the transition.
    pub pid: u32,
    /// On-CPU command name at the transition.
    pub comm: Comm,
    /// Local address.
    pub local_addr: IpAddr,
    /// Local port.
    pub local_port: u16,
    /// Remote address.
    pub remote_addr: IpAddr,
    /// Remote port.
    pub remote_port: u16,
    /// State left.
    pub oldstate: TcpState,
    /// State entered.
    pub newstate: TcpState,
    /// The socket received a reset before this transition (`tcp:tcp_receive_reset`).
    pub reset_received: bool,
    /// At a transition to CLOSE: what the socket reported as it closed.
    pub close: Option<Close>,
}

/// A socket sent a reset (`tcp:tcp_send_reset`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResetSent {
    /// Kernel CLOCK_MONOTONIC time of the reset, in nanoseconds.
    pub ts_ns: u64,
    /// Kernel address of the socket.
    pub skaddr: u64,
    /// The socket's cookie.
    pub cookie: u64,
}

/// What a socket sent again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetransmitKind {
    /// A SYN: the connect's SYN went unanswered.
    Syn,
    /// A SYN-ACK: the client's answer to it did not come.
    SynAck,
    /// Data (or a FIN) that was not acknowledged in time.
    Data,
}

impl RetransmitKind {
    /// `syn`, `synack` or `data`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Syn => "syn",
            Self::SynAck => "synack",
            Self::Data => "data",
        }
    }
}

/// A socket sent a segment again (`tcp:tcp_retransmit_skb`, `tcp:tcp_retransmit_synack`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retransmit {
    /// Kernel CLOCK_MONOTONIC time of the retransmission, in nanoseconds.
    pub ts_ns: u64,
    /// The cookie of the socket (of the socket a request becomes, for a SYN-ACK of a request).
    pub cookie: u64,
    /// What was sent again.
    pub kind: RetransmitKind,
    /// For a SYN-ACK of a connection request: kernel time of its first SYN-ACK.
    pub requested_ns: Option<u64>,
}

impl Retransmit {
    /// Decodes the kernel's record.
    pub fn decode(raw: &RawRetransmit) -> Self {
        Self {
            ts_ns: raw.ts_ns,
            cookie: raw.cookie,
            kind: match raw.kind {
                RETRANSMIT_SYN => RetransmitKind::Syn,
                RETRANSMIT_SYNACK => RetransmitKind::SynAck,
                _ => RetransmitKind::Data,
            },
            requested_ns: (raw.requested_ns != 0).then_some(raw.requested_ns),
        }
    }
}

/// What a socket reported as it closed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Close {
    /// Data bytes sent, each once (retransmissions not counted again).
    pub bytes_sent: u64,
    /// Data bytes received (the peer's FIN, which the kernel counts as one, left out).
    pub bytes_received: u64,
    /// Smoothed round-trip time, µs; `None` when never measured.
    pub srtt_us: Option<u32>,
    /// Minimum round-trip time, µs; `None` when never measured.
    pub min_rtt_us: Option<u32>,
    /// Segments retransmitted over the connection's life.
    pub retransmits: u32,
    /// The socket's error (a positive errno): why the connection failed; `None` for none.
    pub error: Option<u32>,
    /// The socket's soft error (an errno kept while the socket was busy, e.g. an ICMP answer
    /// to a SYN); `None` for none. It may be stale on an established connection.
    pub soft_error: Option<u32>,
}

impl Close {
    /// Decodes what the kernel read from the closing socket.
    pub fn decode(raw: &RawClose) -> Self {
        Self {
            bytes_sent: raw.bytes_sent.saturating_sub(raw.bytes_retrans),
            bytes_received: raw
                .bytes_received
                .saturating_sub(u64::from(raw.peer_fin != 0)),
            srtt_us: (raw.srtt_us != 0).then_some(raw.srtt_us),
            min_rtt_us: (raw.min_rtt_us != 0 && raw.min_rtt_us != u32::MAX)
                .then_some(raw.min_rtt_us),
            retransmits: raw.total_retrans,
            error: (raw.sk_err != 0).then_some(raw.sk_err),
            soft_error: (raw.sk_err_soft != 0).then_some(raw.sk_err_soft),
        }
    }
}

impl StateChange {
    /// IP version of the socket: 4 or 6.
    pub fn ip_version(&self) -> u8 {
        match self.local_addr {
            IpAddr::V4(_) => 4,
            IpAddr::V6(_) => 6,
        }
    }

    /// Whole microseconds spent in `oldstate` (the resolution of the `MS` column).
    pub fn span_us(&self) -> u64 {
        self.span_ns / 1_000
    }
}

/// Decodes a raw kernel record.
pub fn decode(raw: &RawStateChange) -> Result<StateChange, DecodeError> {
    let (local_addr, remote_addr) = match raw.family {
        AF_INET => (ipv4(&raw.saddr), ipv4(&raw.daddr)),
        AF_INET6 => (
            IpAddr::V6(Ipv6Addr::from(raw.saddr)),
            IpAddr::V6(Ipv6Addr::from(raw.daddr)),
        ),
        other => return Err(DecodeError::UnknownFamily(other)),
    };
    Ok(StateChange {
        ts_ns: raw.ts_ns,
        skaddr: raw.skaddr,
        cookie: raw.cookie,
        owner: (raw.flags & FLAG_OWNER_KNOWN != 0).then(|| Owner {
            pid: raw.owner_pid,
            comm: Comm::new(raw.owner_comm),
        }),
        uid: raw.uid,
        netns: raw.netns,
        cgroup_id: raw.cgroup_id,
        span_ns: raw.span_ns,
        pid: raw.pid,
        comm: Comm::new(raw.comm),
        local_addr,
        local_port: raw.sport,
        remote_addr,
        remote_port: raw.dport,
        oldstate: TcpState(raw.oldstate),
        newstate: TcpState(raw.newstate),
        reset_received: raw.flags & FLAG_RESET_RECEIVED != 0,
        close: None,
    })
}

fn ipv4(bytes: &[u8; 16]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
}

#[cfg(test)]
mod tests {
    use std::format;
    use std::string::ToString;

    use super::*;

    fn raw(family: u16) -> RawStateChange {
        let mut comm = [0; COMM_LEN];
        comm[..4].copy_from_slice(b"curl");
        let mut saddr = [0; 16];
        saddr[..4].copy_from_slice(&[100, 66, 100, 185]);
        let mut daddr = [0; 16];
        daddr[..4].copy_from_slice(&[52, 33, 159, 26]);
        RawStateChange {
            ts_ns: 5,
            skaddr: 0xffff_9fd7_e819_2000,
            span_ns: 1_373_999,
            cookie: 4122,
            cgroup_id: 44,
            pid: 22384,
            oldstate: 2,
            newstate: 1,
            owner_pid: 22384,
            uid: 1000,
            netns: 4_026_531_833,
            sport: 63446,
            dport: 80,
            family,
            flags: FLAG_OWNER_KNOWN,
            saddr,
            daddr,
            comm,
            owner_comm: comm,
        }
    }

    #[test]
    fn decodes_ipv4() {
        let change = decode(&raw(AF_INET)).expect("AF_INET decodes");
        assert_eq!(
            change.local_addr,
            IpAddr::V4(Ipv4Addr::new(100, 66, 100, 185))
        );
        assert_eq!(
            change.remote_addr,
            IpAddr::V4(Ipv4Addr::new(52, 33, 159, 26))
        );
        assert_eq!((change.local_port, change.remote_port), (63446, 80));
        assert_eq!(change.comm.to_str_lossy(), "curl");
        assert_eq!(change.ip_version(), 4);
        assert_eq!(change.span_us(), 1_373);
        assert_eq!(
            format!("{} {}", change.oldstate, change.newstate),
            "SYN_SENT ESTABLISHED"
        );
    }

    #[test]
    fn decodes_owner_and_location() {
        let change = decode(&raw(AF_INET)).expect("AF_INET decodes");
        let owner = change.owner.expect("flag set");
        assert_eq!(
            (owner.pid, owner.comm.to_str_lossy().as_ref()),
            (22384, "curl")
        );
        assert_eq!(
            (change.cookie, change.uid, change.netns, change.cgroup_id),
            (4122, 1000, 4_026_531_833, 44)
        );
        let mut unknown = raw(AF_INET);
        unknown.flags = 0;
        assert_eq!(decode(&unknown).expect("decodes").owner, None);
    }

    #[test]
    fn decodes_ipv6_with_all_16_bytes() {
        let mut r = raw(AF_INET6);
        r.saddr = [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6];
        let change = decode(&r).expect("AF_INET6 decodes");
        assert_eq!(change.local_addr.to_string(), "2001:db8:1:2:3:4:5:6");
        assert_eq!(change.ip_version(), 6);
    }

    #[test]
    fn unknown_family_is_an_error_not_a_panic() {
        assert_eq!(decode(&raw(1)), Err(DecodeError::UnknownFamily(1)));
    }

    #[test]
    fn unknown_state_prints_its_number() {
        assert_eq!(format!("{:<11}|", TcpState(42)), "42         |");
        assert_eq!(format!("{}", TcpState(0)), "0");
        assert_eq!(format!("{}", TcpState(u32::MAX)), "4294967295");
    }

    #[test]
    fn comm_stops_at_nul_and_survives_bad_utf8() {
        let mut bytes = [0; COMM_LEN];
        bytes[..3].copy_from_slice(&[b'a', 0xff, b'b']);
        assert_eq!(Comm::new(bytes).to_str_lossy(), "a\u{fffd}b");
        assert_eq!(Comm::new([b'x'; COMM_LEN]).as_bytes().len(), COMM_LEN);
    }
}
