//! The kernel program's table of listening sockets' owners (`LISTENERS`): its key and value,
//! which user space also writes for listeners older than the agent.

use crate::event::COMM_LEN;

/// The process that made a socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// Thread-group id.
    pub pid: u32,
    /// Command name, NUL-padded.
    pub comm: [u8; COMM_LEN],
}

/// What tells listening sockets apart: where they listen. The kernel allows one listener per
/// key unless they share it through `SO_REUSEPORT`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenerKey {
    /// Inode number of the socket's network namespace.
    pub netns: u32,
    /// Bound port.
    pub port: u16,
    /// Address family.
    pub family: u16,
    /// Bound address as the socket holds it (4 bytes for `AF_INET`, 16 for `AF_INET6`), all
    /// zeros for a wildcard.
    pub addr: [u8; 16],
}

impl ListenerKey {
    /// The key of no listener.
    pub const NONE: Self = Self {
        netns: 0,
        port: 0,
        family: 0,
        addr: [0; 16],
    };

    /// Whether the key names a listener (it has a port).
    pub fn identifies(&self) -> bool {
        self.port != 0
    }
}

#[cfg(feature = "user")]
// SAFETY: `repr(C)`, `Copy`, no padding (4 + 16 bytes), any bit pattern is valid.
unsafe impl aya::Pod for Owner {}

#[cfg(feature = "user")]
// SAFETY: `repr(C)`, `Copy`, no padding (4 + 2 + 2 + 16 bytes), any bit pattern is valid.
unsafe impl aya::Pod for ListenerKey {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<Owner>(), 4 + COMM_LEN);
        assert_eq!(core::mem::size_of::<ListenerKey>(), 4 + 2 + 2 + 16);
    }
}
