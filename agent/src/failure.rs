//! Why a connection failed, from what its socket reported as it closed: the socket's error
//! (`sk_err`, which the kernel sets before the CLOSE of a refused, timed-out, unreachable or
//! reset connection) and the reset tracepoints (`tcp:tcp_receive_reset` before the CLOSE;
//! `tcp:tcp_send_reset`, which for an `SO_LINGER` 0 close comes after it).

use std::borrow::Cow;

use agent_common::{
    decode::StateChange,
    state::{CLOSE, SYN_SENT},
};

/// Which end of the connection sent the reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetDirection {
    /// The peer reset the connection.
    Received,
    /// This socket reset it (an abortive close: `SO_LINGER` 0, unread data, an abort).
    Sent,
}

impl ResetDirection {
    /// `received` or `sent`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Received => "received",
            Self::Sent => "sent",
        }
    }
}

/// Why a connection failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The peer answered the SYN with a reset (`ECONNREFUSED`).
    ConnectionRefused,
    /// The SYNs went unanswered (`ETIMEDOUT` in SYN_SENT): dropped on the way, or a silent
    /// firewall.
    ConnectTimeout,
    /// An ICMP host-unreachable answer (`EHOSTUNREACH`).
    HostUnreachable,
    /// An ICMP network-unreachable answer (`ENETUNREACH`).
    NetworkUnreachable,
    /// The connecting socket was closed before the handshake completed, without an error.
    ConnectAborted,
    /// The connection was reset; by which end, when the tracepoints said.
    ConnectionReset(Option<ResetDirection>),
    /// An established connection timed out (`ETIMEDOUT`: retransmissions or keepalives
    /// unanswered).
    Timeout,
    /// Any other error the socket reported, as its errno.
    Errno(u32),
}

impl Failure {
    /// At a transition to CLOSE: why the connection failed, if it did. `reset_sent` says whether
    /// the socket was seen sending a reset before it.
    pub fn of_close(change: &StateChange, reset_sent: bool) -> Option<Self> {
        if change.newstate.0 != CLOSE {
            return None;
        }
        let error = change.close.and_then(|close| close.error);
        let errno = |e: u32| i32::try_from(e).unwrap_or(0);
        if change.oldstate.0 == SYN_SENT {
            // An error the application has read (connect()'s result) is gone from `sk_err`;
            // one kept while connect() held the socket (an ICMP answer on loopback) is soft.
            let error = error.or_else(|| change.close.and_then(|close| close.soft_error));
            return Some(match error.map(errno) {
                Some(libc::ECONNREFUSED) => Self::ConnectionRefused,
                Some(libc::ETIMEDOUT) => Self::ConnectTimeout,
                Some(libc::EHOSTUNREACH) => Self::HostUnreachable,
                Some(libc::ENETUNREACH) => Self::NetworkUnreachable,
                Some(_) if change.reset_received => Self::ConnectionRefused,
                Some(e) => Self::Errno(e.unsigned_abs()),
                None => Self::ConnectAborted,
            });
        }
        if change.reset_received {
            return Some(Self::ConnectionReset(Some(ResetDirection::Received)));
        }
        if reset_sent {
            return Some(Self::ConnectionReset(Some(ResetDirection::Sent)));
        }
        Some(match error.map(errno)? {
            libc::EHOSTUNREACH => Self::HostUnreachable,
            libc::ENETUNREACH => Self::NetworkUnreachable,
            libc::ECONNRESET | libc::EPIPE => Self::ConnectionReset(None),
            libc::ETIMEDOUT => Self::Timeout,
            e => Self::Errno(e.unsigned_abs()),
        })
    }

    /// This failure once the socket was seen sending a reset after its CLOSE: a connection
    /// that ended without a failure, or with one that does not say who reset it, was reset by
    /// this end.
    pub fn with_reset_sent(failure: Option<Self>) -> Self {
        match failure {
            None | Some(Self::ConnectionReset(None)) => {
                Self::ConnectionReset(Some(ResetDirection::Sent))
            }
            Some(other) => other,
        }
    }

    /// The `error.type` of the failure: a name of the OpenTelemetry kind (`connection_refused`,
    /// `connect_timeout`, …), or the errno's name (`ECONNABORTED`).
    pub fn error_type(self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            Self::ConnectionRefused => "connection_refused",
            Self::ConnectTimeout => "connect_timeout",
            Self::HostUnreachable => "host_unreachable",
            Self::NetworkUnreachable => "network_unreachable",
            Self::ConnectAborted => "connect_aborted",
            Self::ConnectionReset(_) => "connection_reset",
            Self::Timeout => "timeout",
            Self::Errno(errno) => {
                return Cow::Owned(format!(
                    "{:?}",
                    nix::errno::Errno::from_raw(i32::try_from(errno).unwrap_or(0))
                ));
            }
        })
    }

    /// Which end reset the connection, when it was reset and the tracepoints said.
    pub fn reset_direction(self) -> Option<ResetDirection> {
        match self {
            Self::ConnectionReset(direction) => direction,
            _ => None,
        }
    }

    /// A sentence for a span's status.
    pub fn description(self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            Self::ConnectionRefused => "connection refused: the peer reset the SYN",
            Self::ConnectTimeout => "connect timed out: SYNs unanswered",
            Self::HostUnreachable => "host unreachable (ICMP)",
            Self::NetworkUnreachable => "network unreachable (ICMP)",
            Self::ConnectAborted => "connect aborted: closed before the handshake completed",
            Self::ConnectionReset(Some(ResetDirection::Received)) => "connection reset by the peer",
            Self::ConnectionReset(Some(ResetDirection::Sent)) => "connection reset by this end",
            Self::ConnectionReset(None) => "connection reset",
            Self::Timeout => "connection timed out",
            Self::Errno(_) => return Cow::Owned(format!("socket error {}", self.error_type())),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use agent_common::{
        decode::{Close, Comm, TcpState},
        event::COMM_LEN,
        state::{CLOSE_WAIT, ESTABLISHED, FIN_WAIT2, LAST_ACK},
    };

    use super::*;

    fn close(old: u32, error: Option<i32>, reset_received: bool) -> StateChange {
        StateChange {
            ts_ns: 1,
            skaddr: 1,
            cookie: 1,
            owner: None,
            uid: 0,
            netns: 1,
            cgroup_id: 1,
            span_ns: 0,
            pid: 0,
            comm: Comm::new([0; COMM_LEN]),
            local_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            local_port: 1,
            remote_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            remote_port: 2,
            oldstate: TcpState(old),
            newstate: TcpState(CLOSE),
            reset_received,
            close: Some(Close {
                error: error.map(i32::unsigned_abs),
                ..Close::default()
            }),
        }
    }

    fn error_type(change: &StateChange, reset_sent: bool) -> Option<String> {
        Failure::of_close(change, reset_sent).map(|f| f.error_type().into_owned())
    }

    #[test]
    fn a_failed_connect_says_why() {
        for (error, expected) in [
            (Some(libc::ECONNREFUSED), "connection_refused"),
            (Some(libc::ETIMEDOUT), "connect_timeout"),
            (Some(libc::EHOSTUNREACH), "host_unreachable"),
            (Some(libc::ENETUNREACH), "network_unreachable"),
            (Some(libc::ECONNABORTED), "ECONNABORTED"),
            (None, "connect_aborted"),
        ] {
            assert_eq!(
                error_type(&close(SYN_SENT, error, false), false).as_deref(),
                Some(expected)
            );
        }
    }

    #[test]
    fn a_connect_whose_error_was_read_says_its_soft_error() {
        let mut change = close(SYN_SENT, None, false);
        change.close = Some(Close {
            soft_error: Some(libc::EHOSTUNREACH.unsigned_abs()),
            ..Close::default()
        });
        assert_eq!(
            error_type(&change, false).as_deref(),
            Some("host_unreachable")
        );
        // A stale soft error of an established connection is no failure.
        change.oldstate = TcpState(ESTABLISHED);
        assert_eq!(error_type(&change, false), None);
    }

    #[test]
    fn a_reset_says_which_end_sent_it() {
        let received = Failure::of_close(&close(ESTABLISHED, Some(libc::ECONNRESET), true), false);
        assert_eq!(
            received.and_then(Failure::reset_direction),
            Some(ResetDirection::Received)
        );
        // An abortive close of this end: no error on the socket, the reset seen being sent.
        let sent = Failure::of_close(&close(CLOSE_WAIT, None, false), true);
        assert_eq!(
            sent.map(|f| (f.error_type().into_owned(), f.reset_direction())),
            Some(("connection_reset".into(), Some(ResetDirection::Sent)))
        );
        // The reset an SO_LINGER 0 close sends comes after the CLOSE.
        let orderly = Failure::of_close(&close(ESTABLISHED, None, false), false);
        assert_eq!(orderly, None);
        assert_eq!(
            Failure::with_reset_sent(orderly),
            Failure::ConnectionReset(Some(ResetDirection::Sent))
        );
        // A failure of another kind stays what it was.
        assert_eq!(
            Failure::with_reset_sent(Some(Failure::Timeout)),
            Failure::Timeout
        );
    }

    #[test]
    fn an_orderly_close_or_another_transition_is_no_failure() {
        assert_eq!(
            Failure::of_close(&close(LAST_ACK, None, false), false),
            None
        );
        assert_eq!(
            Failure::of_close(&close(FIN_WAIT2, None, false), false),
            None
        );
        let mut not_close = close(ESTABLISHED, Some(libc::ECONNRESET), true);
        not_close.newstate = TcpState(FIN_WAIT2);
        assert_eq!(Failure::of_close(&not_close, false), None);
        assert_eq!(
            error_type(&close(ESTABLISHED, Some(libc::ETIMEDOUT), false), false).as_deref(),
            Some("timeout")
        );
    }
}
