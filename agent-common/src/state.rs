//! TCP states as the kernel numbers them (`include/net/tcp_states.h`) and address families.

/// `AF_INET`.
pub const AF_INET: u16 = 2;
/// `AF_INET6`.
pub const AF_INET6: u16 = 10;
/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u16 = 6;
/// `SOCK_STREAM`.
pub const SOCK_STREAM: u16 = 1;

/// `TCP_ESTABLISHED`.
pub const ESTABLISHED: u32 = 1;
/// `TCP_SYN_SENT`.
pub const SYN_SENT: u32 = 2;
/// `TCP_SYN_RECV`.
pub const SYN_RECV: u32 = 3;
/// `TCP_FIN_WAIT1`.
pub const FIN_WAIT1: u32 = 4;
/// `TCP_FIN_WAIT2`.
pub const FIN_WAIT2: u32 = 5;
/// `TCP_TIME_WAIT`.
pub const TIME_WAIT: u32 = 6;
/// `TCP_CLOSE`.
pub const CLOSE: u32 = 7;
/// `TCP_CLOSE_WAIT`.
pub const CLOSE_WAIT: u32 = 8;
/// `TCP_LAST_ACK`.
pub const LAST_ACK: u32 = 9;
/// `TCP_LISTEN`.
pub const LISTEN: u32 = 10;
/// `TCP_CLOSING`.
pub const CLOSING: u32 = 11;
/// `TCP_NEW_SYN_RECV`.
pub const NEW_SYN_RECV: u32 = 12;
/// `TCP_BOUND_INACTIVE`.
pub const BOUND_INACTIVE: u32 = 13;

/// The kernel's name of a TCP state, without the `TCP_` prefix, or `None` for a number the
/// kernel does not define (a caller prints the number instead, as bcc does).
pub const fn name(state: u32) -> Option<&'static str> {
    Some(match state {
        ESTABLISHED => "ESTABLISHED",
        SYN_SENT => "SYN_SENT",
        SYN_RECV => "SYN_RECV",
        FIN_WAIT1 => "FIN_WAIT1",
        FIN_WAIT2 => "FIN_WAIT2",
        TIME_WAIT => "TIME_WAIT",
        CLOSE => "CLOSE",
        CLOSE_WAIT => "CLOSE_WAIT",
        LAST_ACK => "LAST_ACK",
        LISTEN => "LISTEN",
        CLOSING => "CLOSING",
        NEW_SYN_RECV => "NEW_SYN_RECV",
        BOUND_INACTIVE => "BOUND_INACTIVE",
        _ => return None,
    })
}

/// Whether a transition is the first one of a new socket: an active or passive open of a
/// fresh socket, or a child socket born from a listener. A duration recorded earlier for
/// the same socket address belongs to a previous socket and must not be used.
pub const fn starts_socket(oldstate: u32, newstate: u32) -> bool {
    oldstate == CLOSE || (oldstate == LISTEN && newstate == SYN_RECV)
}

/// Whether a transition runs in the context of the process that owns the socket: `connect()`
/// (CLOSE → SYN_SENT) or `listen()` (CLOSE → LISTEN). Every other transition may run in a
/// softirq, on behalf of whatever task the CPU happened to be running.
pub const fn runs_as_owner(oldstate: u32, newstate: u32) -> bool {
    oldstate == CLOSE && (newstate == SYN_SENT || newstate == LISTEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_known_states_and_rejects_others() {
        assert_eq!(name(ESTABLISHED), Some("ESTABLISHED"));
        assert_eq!(name(12), Some("NEW_SYN_RECV"));
        assert_eq!(name(0), None);
        assert_eq!(name(99), None);
    }

    #[test]
    fn a_new_socket_starts_on_open_or_on_accept() {
        assert!(starts_socket(CLOSE, SYN_SENT));
        assert!(starts_socket(CLOSE, LISTEN));
        assert!(starts_socket(LISTEN, SYN_RECV));
        assert!(!starts_socket(LISTEN, CLOSE));
        assert!(!starts_socket(SYN_SENT, ESTABLISHED));
    }

    #[test]
    fn only_connect_and_listen_run_as_the_owner() {
        assert!(runs_as_owner(CLOSE, SYN_SENT));
        assert!(runs_as_owner(CLOSE, LISTEN));
        assert!(!runs_as_owner(LISTEN, SYN_RECV));
        assert!(!runs_as_owner(ESTABLISHED, FIN_WAIT1));
    }
}
