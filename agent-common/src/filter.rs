//! Filters the agent hands the kernel program: address family, port sets, owner process,
//! network namespace and cgroup.
//!
//! A port set is a bitmap of all 65,536 ports stored in an array map of `u64` words, so
//! `-L`/`-D` lists may hold any number of ports and a lookup costs one map access.

/// Words in a port bitmap: 65,536 bits.
pub const PORT_BITMAP_WORDS: u32 = 65_536 / 64;

/// Index of the bitmap word that holds `port`.
pub const fn port_word(port: u16) -> u32 {
    (port / 64) as u32
}

/// Mask of `port`'s bit within its word.
pub const fn port_mask(port: u16) -> u64 {
    1 << (port % 64)
}

/// Filter settings, written into the kernel program's read-only `FILTER` global at load.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this address family (`AF_INET` or `AF_INET6`); 0 keeps both.
    pub family: u16,
    /// Non-zero: keep only local ports present in the `LOCAL_PORTS` bitmap.
    pub local_ports: u8,
    /// Non-zero: keep only remote ports present in the `REMOTE_PORTS` bitmap.
    pub remote_ports: u8,
    /// Ring-buffer fill (bytes) whose multiples, when a submit crosses one, wake the reader;
    /// otherwise the reader drains on its own timer. 0 wakes it on every event.
    pub wakeup_bytes: u32,
    /// Non-zero: keep only sockets whose owner is this process (thread-group id).
    pub owner_pid: u32,
    /// Non-zero: keep only sockets in the network namespace with this inode number.
    pub netns: u32,
    /// Non-zero: keep only sockets of the cgroup (v2) with this id or of its descendants.
    pub cgroup_id: u64,
    /// Depth of that cgroup in the hierarchy (0 for the root).
    pub cgroup_level: u32,
    /// Non-zero: every record carries its socket's time in the state it left and its owner,
    /// because an output prints them with each transition, so the program keeps state for
    /// every socket it sees. Zero (OTLP export alone): session tracking times the states and
    /// keeps the owners itself; the program keeps state only for listening sockets (their
    /// accepted sockets inherit their owner) and, when `owner_pid` or `local_ports` may drop
    /// a client socket's `connect()` transition but keep later ones, for client sockets.
    pub full_records: u8,
    /// Explicit padding, always zero.
    pub pad: [u8; 3],
}

#[cfg(feature = "user")]
// SAFETY: `Filter` is `repr(C)`, `Copy`, has no implicit padding (2+1+1+4+4+4+8+4+1+3 bytes) and
// every bit pattern is a valid value.
unsafe impl aya::Pod for Filter {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_port_has_its_own_bit() {
        assert_eq!(port_word(0), 0);
        assert_eq!(port_mask(0), 1);
        assert_eq!(port_word(65_535), PORT_BITMAP_WORDS - 1);
        assert_eq!(port_mask(65_535), 1 << 63);
        assert_eq!(port_word(80), 1);
        assert_eq!(port_mask(80), 1 << 16);
    }
}
