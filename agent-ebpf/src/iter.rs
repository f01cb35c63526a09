//! The `iter/task_file` program: the TCP sockets that processes hold open, for user space to
//! start from the connections that existed before the tracepoint programs were attached.
//!
//! The kernel calls the program once for each open file of each task of the reader's pid
//! namespace (threads that share their process's file table are visited once), then once more
//! with neither task nor file. For a file that is an IPv4 or IPv6 TCP socket it writes one
//! [`RawStateChange`] to the iterator's output: the socket's current state as both `oldstate`
//! and `newstate`, read as the tracepoint programs read a socket, and the task's process as the
//! owner. A socket several descriptors or processes hold comes out once for each; user space
//! keeps one.
//!
//! The socket is not a pointer the verifier trusts (`bpf_sock_from_file` returns a plain
//! `struct socket *`, and recent kernels, Linux 6.18 among them, mark what is read through such
//! a pointer, `socket->sk`, untrusted), so no helper may take it: the program reads its fields
//! with typed loads only, its cookie too, which is 0 while nothing has asked for it
//! (`bpf_get_socket_cookie` would make one).

use core::ffi::c_void;

use agent_common::{
    event::{FLAG_OWNER_KNOWN, RawStateChange},
    offsets::{TASK_FILE_FILE, TASK_FILE_META, TASK_FILE_TASK},
    state::{AF_INET, AF_INET6, IPPROTO_TCP, SOCK_STREAM},
};
use aya_ebpf::{
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_seq_write, bpf_sock_from_file},
    },
    programs::BtfTracePointContext,
};

use crate::tracepoint::{Kernel, Task, Transition, offset, try_addresses};

/// Entry point, for each (task, file) of the iteration. Its context is, like a BTF tracepoint
/// program's, the arguments of a kernel function, one 8-byte slot each; the program is named
/// in `agent/src/existing.rs`.
#[unsafe(link_section = "iter/task_file")]
#[unsafe(no_mangle)]
pub extern "C" fn existing_tcp_sockets(ctx: *mut c_void) -> i32 {
    let args = BtfTracePointContext::new(ctx);
    let task: *const u8 = args.arg(TASK_FILE_TASK);
    let file: *const u8 = args.arg(TASK_FILE_FILE);
    if task.is_null() || file.is_null() {
        return 0;
    }
    if let Some(change) = tcp_socket(file) {
        let meta = Kernel(args.arg(TASK_FILE_META));
        write_socket(meta.follow(offset!(iter_seq)), change, Task(Kernel(task)));
    }
    0
}

/// The IPv4 or IPv6 TCP socket `file` is, as a transition from its current state to itself;
/// `None` for any other file.
fn tcp_socket(file: *const u8) -> Option<Transition> {
    // SAFETY: `file` is the iterator's file argument, a BTF `struct file` pointer checked not
    // NULL; the helper returns the file's `struct socket` or NULL if it is not a socket.
    let socket = unsafe { bpf_sock_from_file(file.cast_mut().cast()) };
    if socket.is_null() {
        return None;
    }
    let sock = Kernel(socket.cast_const().cast::<u8>()).follow(offset!(socket_sk));
    if sock.0.is_null()
        || sock.load::<u16>(offset!(protocol)) != IPPROTO_TCP
        || sock.load::<u16>(offset!(sk_type)) != SOCK_STREAM
    {
        return None;
    }
    let family = sock.load::<u16>(offset!(family));
    if family != AF_INET && family != AF_INET6 {
        return None;
    }
    let state = u32::from(sock.load::<u8>(offset!(state)));
    Some(Transition {
        sk: sock.0,
        sock,
        oldstate: state,
        newstate: state,
        family,
    })
}

/// Writes the record of `change`'s socket, held by `task`, to the iterator's output `seq`.
fn write_socket(seq: Kernel, change: Transition, task: Task) {
    let Ok((saddr, daddr)) = try_addresses(change) else {
        return;
    };
    let sock = change.sock;
    let pid = task.pid();
    let comm = task.comm();
    let record = RawStateChange {
        // SAFETY: a helper without arguments or side effects.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        skaddr: change.sk as u64,
        span_ns: 0,
        cookie: sock.load::<u64>(offset!(sk_cookie)),
        cgroup_id: sock
            .follow(offset!(cgroup))
            .follow(offset!(cgroup_kn))
            .load::<u64>(offset!(kn_id)),
        pid,
        oldstate: change.oldstate,
        newstate: change.newstate,
        owner_pid: pid,
        uid: sock.load::<u32>(offset!(uid)),
        netns: sock.follow(offset!(net)).load::<u32>(offset!(net_inum)),
        // The port the socket holds: 0 for one in CLOSE that holds none.
        sport: sock.load::<u16>(offset!(num)),
        dport: u16::from_be(sock.load::<u16>(offset!(dport))),
        family: change.family,
        flags: FLAG_OWNER_KNOWN,
        saddr,
        daddr,
        comm,
        owner_comm: comm,
    };
    // SAFETY: `seq` is the iterator's seq_file; the helper copies the record from the stack. A
    // record that does not fit is written again at the next read, so its error is left out.
    unsafe {
        bpf_seq_write(
            seq.0.cast_mut().cast(),
            core::ptr::addr_of!(record).cast(),
            size_of::<RawStateChange>() as u32,
        )
    };
}
