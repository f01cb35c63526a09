//! Offsets of `struct sock` fields, found in the kernel's BTF by user space and written into
//! the BTF tracepoint program's read-only `SOCK_OFFSETS` global at load (aya-ebpf has no CO-RE
//! field relocations).

/// Byte offsets from a `struct sock *` of the fields the classic tracepoint record carries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOffsets {
    /// `__sk_common.skc_family` (u16).
    pub family: u32,
    /// `sk_protocol` (u16).
    pub protocol: u32,
    /// `inet_sock.inet_sport` (u16, network order).
    pub sport: u32,
    /// `__sk_common.skc_dport` (u16, network order).
    pub dport: u32,
    /// `inet_sock.inet_saddr` (4 bytes).
    pub saddr: u32,
    /// `__sk_common.skc_daddr` (4 bytes).
    pub daddr: u32,
    /// `__sk_common.skc_v6_rcv_saddr` (16 bytes).
    pub saddr_v6: u32,
    /// `__sk_common.skc_v6_daddr` (16 bytes).
    pub daddr_v6: u32,
}

#[cfg(feature = "user")]
// SAFETY: `SockOffsets` is `repr(C)`, `Copy`, eight u32 without padding; any bit pattern is valid.
unsafe impl aya::Pod for SockOffsets {}
