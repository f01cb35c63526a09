//! Offsets of the kernel structure fields the program reads from a `struct sock` and from the
//! task on the CPU, found in the kernel's BTF by user space and written into the program's
//! read-only `FIELD_OFFSETS` global at load (aya-ebpf has no CO-RE field relocations). The
//! verifier sees a frozen read-only global as a constant, so it checks each load at these offsets
//! against the kernel's BTF like any typed access.

/// Byte offsets, each from the start of the structure named in its doc.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FieldOffsets {
    /// `sock.__sk_common.skc_family` (u16).
    pub family: u32,
    /// `sock.sk_protocol` (u16).
    pub protocol: u32,
    /// `sock.__sk_common.skc_num`: the local port (u16, host order) while the port is bound.
    pub num: u32,
    /// `inet_sock.inet_sport`: the local port (u16, network order), kept after the port is
    /// released on the way to CLOSE; read through the socket as a `tcp_sock`.
    pub sport: u32,
    /// `sock.__sk_common.skc_dport` (u16, network order).
    pub dport: u32,
    /// `sock.__sk_common.skc_rcv_saddr`: the local IPv4 address (4 bytes).
    pub rcv_saddr: u32,
    /// `sock.__sk_common.skc_daddr` (4 bytes).
    pub daddr: u32,
    /// `sock.__sk_common.skc_v6_rcv_saddr` (16 bytes).
    pub rcv_saddr_v6: u32,
    /// `sock.__sk_common.skc_v6_daddr` (16 bytes).
    pub daddr_v6: u32,
    /// `sock.sk_uid` (u32).
    pub uid: u32,
    /// `sock.__sk_common.skc_net.net` (pointer to `struct net`).
    pub net: u32,
    /// `net.ns.inum` (u32).
    pub net_inum: u32,
    /// `sock.sk_cgrp_data.cgroup` (pointer to `struct cgroup`).
    pub cgroup: u32,
    /// `cgroup.kn` (pointer to `struct kernfs_node`).
    pub cgroup_kn: u32,
    /// `cgroup.level` (int): depth in the hierarchy.
    pub cgroup_level: u32,
    /// `cgroup.ancestors`: pointers to the cgroup's ancestors and itself, indexed by level.
    pub cgroup_ancestors: u32,
    /// `kernfs_node.id` (u64).
    pub kn_id: u32,
    /// `task_struct.tgid` (i32): the process id.
    pub task_tgid: u32,
    /// `task_struct.comm` (16 bytes, NUL-padded).
    pub task_comm: u32,
    /// `sock.__sk_common.skc_reuseport`, a 1-bit field: its *bit* offset from the start of the
    /// socket, least significant bit of each byte first. Set when the socket has
    /// `SO_REUSEPORT`.
    pub reuseport_bit: u32,
    /// `sock.__sk_common.skc_state` (u8): the socket's TCP state; a socket in TIME_WAIT or
    /// NEW_SYN_RECV is not a full socket.
    pub state: u32,
    /// `sock.sk_err` (int): the error the socket reports, set before its CLOSE when the
    /// connection failed (refused, timed out, unreachable, reset).
    pub sk_err: u32,
    /// `sock.sk_err_soft` (int): an error kept while the socket was busy.
    pub sk_err_soft: u32,
    /// `tcp_sock.bytes_sent` (u64): data bytes sent, retransmissions included.
    pub bytes_sent: u32,
    /// `tcp_sock.bytes_retrans` (u64): data bytes retransmitted.
    pub bytes_retrans: u32,
    /// `tcp_sock.bytes_received` (u64): sequence space received, the peer's FIN included.
    pub bytes_received: u32,
    /// `sock.sk_flags`'s `SOCK_DONE` bit: its *bit* offset from the start of the socket, as
    /// [`Self::reuseport_bit`]. Set when the peer's FIN arrived (`tcp_fin`); unlike
    /// `sk_shutdown`'s `RCV_SHUTDOWN`, which this end's own `close()` sets too.
    pub peer_fin_bit: u32,
    /// `tcp_sock.srtt_us` (u32): the smoothed round-trip time in µs, shifted left by 3.
    pub srtt_us: u32,
    /// `tcp_sock.rtt_min.s[0].v` (u32): the windowed minimum round-trip time in µs.
    pub min_rtt_us: u32,
    /// `tcp_sock.total_retrans` (u32): segments retransmitted over the connection's life.
    pub total_retrans: u32,
    /// `tcp_request_sock.snt_synack` (u64): when a connection request's first SYN-ACK went
    /// out, in µs of CLOCK_MONOTONIC (`tcp_clock_us`).
    pub snt_synack: u32,
    /// `sock.sk_type` (u16): `SOCK_STREAM` for a TCP socket (a raw socket may name
    /// `IPPROTO_TCP` as its protocol too).
    pub sk_type: u32,
    /// `socket.sk` (pointer to `struct sock`): the network half of a socket file.
    pub socket_sk: u32,
    /// `bpf_iter_meta.seq` (pointer to `struct seq_file`): where an iterator program writes.
    pub iter_seq: u32,
    /// `sock.__sk_common.skc_cookie` (u64): the socket's cookie, 0 until something asks for it
    /// (`bpf_get_socket_cookie`, `SO_COOKIE`, a `sock_diag` dump).
    pub sk_cookie: u32,
}

/// Argument slots of the `iter/task_file` program's context, `struct bpf_iter__task_file`: the
/// arguments of the kernel's `bpf_iter_task_file(meta, task, fd, file)`, one 8-byte slot each,
/// read at offsets fixed in the program (the verifier refuses a context read at a variable
/// offset). Slot of the iterator's `struct bpf_iter_meta *`.
pub const TASK_FILE_META: usize = 0;
/// Slot of the `struct task_struct *` whose file it is (NULL on the iterator's last call).
pub const TASK_FILE_TASK: usize = 1;
/// Slot of the `struct file *` (NULL on the iterator's last call).
pub const TASK_FILE_FILE: usize = 3;

#[cfg(feature = "user")]
// SAFETY: `FieldOffsets` is `repr(C)`, `Copy`, u32 fields without padding; any bit pattern is
// valid.
unsafe impl aya::Pod for FieldOffsets {}
