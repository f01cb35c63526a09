//! The `sock:inet_sock_set_state` programs and the maps they use.
//!
//! Both are BTF tracepoint programs: they get the tracepoint's own arguments (the socket and
//! the two states) and read the socket's fields at offsets user space found in the kernel's BTF.
//! The kernel runs a BTF program only if that same program is not already running on the CPU, so
//! a state change made by a softirq that interrupted the main program is skipped for it (and
//! counted in its `recursion_misses`). The backstop program has a guard of its own: when it finds
//! the main program running on its CPU, the hit is one the main program misses, and it records it
//! instead; otherwise it returns at once.
//!
//! An accepted socket's owner is its listener's. The kernel makes the accepted socket as a copy
//! of the listener, with the listener's bound address and port, before it fills in its own; its
//! first transition (LISTEN → SYN_RECV) looks that key up in [`LISTENERS`], which each listener
//! entered at its `listen()`. Listeners that key cannot tell apart (`SO_REUSEPORT` groups, a
//! port not yet bound at `listen()`, a full table) keep their owner in socket storage the kernel
//! copies into every socket they accept ([`INHERITED_OWNERS`]); copying storage costs an
//! allocation and an RCU-deferred free per accepted socket, so it is kept for those.

use core::ffi::c_void;

use agent_common::{
    counters::Counter,
    event::{
        COMM_LEN, FLAG_OWNER_KNOWN, FLAG_RESET_RECEIVED, RETRANSMIT_DATA, RETRANSMIT_SYN,
        RETRANSMIT_SYNACK, RawClose, RawClosed, RawResetSent, RawRetransmit, RawStateChange,
    },
    filter::{Filter, PORT_BITMAP_WORDS, port_mask, port_word},
    listener::{ListenerKey, Owner},
    offsets::FieldOffsets,
    state::{
        AF_INET, AF_INET6, CLOSE, IPPROTO_TCP, LISTEN, NEW_SYN_RECV, SYN_RECV, SYN_SENT, TIME_WAIT,
        runs_as_owner, starts_socket,
    },
};
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::{
            bpf_get_current_task_btf, bpf_get_socket_cookie, bpf_sk_storage_get,
            bpf_skc_to_tcp_sock,
        },
    },
    macros::{btf_map, btf_tracepoint, map},
    maps::{Array, HashMap, PerCpuArray, RingBuf, ring_buf::RingBufEntry},
    programs::BtfTracePointContext,
};

/// Default ring buffer size; user space may resize it before load.
const RING_BYTES: u32 = 8 << 20;

/// `BPF_SK_STORAGE_GET_F_CREATE`.
const STORAGE_CREATE: u64 = 1;

/// `BPF_F_NO_PREALLOC`.
const NO_PREALLOC: u32 = 1;

/// Listening sockets [`LISTENERS`] holds at most; beyond, owners go to [`INHERITED_OWNERS`].
const MAX_LISTENERS: u32 = 65536;

/// Events to user space.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// Bitmap of local ports to keep when `Filter::local_ports` is set.
#[map]
static LOCAL_PORTS: Array<u64> = Array::with_max_entries(PORT_BITMAP_WORDS, 0);

/// Bitmap of remote ports to keep when `Filter::remote_ports` is set.
#[map]
static REMOTE_PORTS: Array<u64> = Array::with_max_entries(PORT_BITMAP_WORDS, 0);

/// Counters indexed by [`Counter`].
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Per CPU: 1 while the main program runs on that CPU.
#[map]
static MAIN_RUNNING: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// What the kernel keeps with each socket for the program.
#[repr(C)]
struct SocketState {
    /// Kernel time of the socket's last transition; 0 before the first one seen.
    last_ns: u64,
    /// Owner's thread-group id, with `FLAG_OWNER_KNOWN` in `flags`.
    owner_pid: u32,
    /// `FLAG_*` bits of [`RawStateChange::flags`].
    flags: u32,
    /// Owner's command name.
    owner_comm: [u8; COMM_LEN],
}

/// Declares a `BPF_MAP_TYPE_SK_STORAGE` (24) map in the BTF map format: values live and die
/// with their socket. `FLAGS` is `BPF_F_NO_PREALLOC` (1), plus `BPF_F_CLONE` (512) for a map
/// whose value the kernel copies from a listener into each socket it accepts. aya-ebpf's own
/// socket storage type takes only a `sock_addr` context and fixes the flags.
#[repr(C)]
struct SocketStorage<V, const FLAGS: usize> {
    r#type: *const [i32; 24],
    key: *const i32,
    value: *const V,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; FLAGS],
}

// SAFETY: the fields only describe the map to the loader; nothing reads or writes them.
unsafe impl<V, const FLAGS: usize> Sync for SocketStorage<V, FLAGS> {}

impl<V, const FLAGS: usize> SocketStorage<V, FLAGS> {
    const fn new() -> Self {
        Self {
            r#type: core::ptr::null(),
            key: core::ptr::null(),
            value: core::ptr::null(),
            max_entries: core::ptr::null(),
            map_flags: core::ptr::null(),
        }
    }

    /// The socket's value in `map`, created on first sight if `create`; `None` if it has
    /// none (or the kernel could not allocate it). `map` is one of the storage statics.
    fn value(map: *const Self, sk: *const u8, create: bool) -> Option<&'static mut V> {
        let map = map.cast_mut().cast::<c_void>();
        // SAFETY: `sk` is the tracepoint's socket argument (a trusted BTF pointer); the helper
        // returns the socket's value or NULL.
        let value = unsafe {
            bpf_sk_storage_get(
                map,
                sk.cast_mut().cast(),
                core::ptr::null_mut(),
                if create { STORAGE_CREATE } else { 0 },
            )
        };
        // SAFETY: a non-NULL result points to this socket's value, which lives as long as the
        // socket; transitions of one socket are serialised by the kernel.
        unsafe { value.cast::<V>().as_mut() }
    }
}

/// Per-socket state, for the sockets whose durations or owners the kernel must keep.
#[btf_map]
static SOCKETS: SocketStorage<SocketState, 1> = SocketStorage::new();

/// Owners of the listening sockets [`LISTENERS`] cannot hold, copied by the kernel into each
/// socket they accept.
#[btf_map]
static INHERITED_OWNERS: SocketStorage<Owner, 513> = SocketStorage::new();

/// Owners of listening sockets by where they listen; entered at `listen()`, removed at close.
#[map]
static LISTENERS: HashMap<ListenerKey, Owner> =
    HashMap::with_max_entries(MAX_LISTENERS, NO_PREALLOC);

/// Filter settings, set by user space at load time.
#[unsafe(no_mangle)]
static FILTER: Filter = Filter {
    family: 0,
    local_ports: 0,
    remote_ports: 0,
    wakeup_bytes: 0,
    owner_pid: 0,
    netns: 0,
    cgroup_id: 0,
    cgroup_level: 0,
    full_records: 0,
    pad: [0; 3],
};

/// Offsets of the fields read from the socket, set by user space at load time.
#[unsafe(no_mangle)]
pub(crate) static FIELD_OFFSETS: FieldOffsets = FieldOffsets {
    family: 0,
    protocol: 0,
    num: 0,
    sport: 0,
    dport: 0,
    rcv_saddr: 0,
    daddr: 0,
    rcv_saddr_v6: 0,
    daddr_v6: 0,
    uid: 0,
    net: 0,
    net_inum: 0,
    cgroup: 0,
    cgroup_kn: 0,
    cgroup_level: 0,
    cgroup_ancestors: 0,
    kn_id: 0,
    task_tgid: 0,
    task_comm: 0,
    reuseport_bit: 0,
    state: 0,
    sk_err: 0,
    sk_err_soft: 0,
    bytes_sent: 0,
    bytes_retrans: 0,
    bytes_received: 0,
    peer_fin_bit: 0,
    srtt_us: 0,
    min_rtt_us: 0,
    total_retrans: 0,
    snt_synack: 0,
    sk_type: 0,
    socket_sk: 0,
    iter_seq: 0,
    sk_cookie: 0,
};

/// Reads one offset of [`FIELD_OFFSETS`] on its own, so the verifier sees it as the constant of
/// the frozen read-only global and can check the load it is used for against the kernel's BTF.
macro_rules! offset {
    ($field:ident) => {
        // SAFETY: a read-only global; the volatile read keeps its load-time value.
        unsafe {
            core::ptr::read_volatile(core::ptr::addr_of!(
                $crate::tracepoint::FIELD_OFFSETS.$field
            )) as usize
        }
    };
}
pub(crate) use offset;

/// Entry point of the main program.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    set_main_running(1);
    record(&ctx);
    set_main_running(0);
    0
}

/// Entry point of the backstop program: records a hit only if the main program is running on
/// this CPU, i.e. the hit interrupted it and the kernel skips the main program for it.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_backstop(ctx: BtfTracePointContext) -> i32 {
    if MAIN_RUNNING.get(0).copied() != Some(1) {
        return 0;
    }
    record(&ctx);
    count(Counter::Recovered);
    0
}

/// Entry point of `tcp:tcp_receive_reset`: marks the socket as reset by its peer; its CLOSE,
/// which follows, reports it.
#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    if !sk.is_null() {
        match SocketStorage::value(&raw const SOCKETS, sk, true) {
            Some(state) => state.flags |= u32::from(FLAG_RESET_RECEIVED),
            None => count(Counter::NoStorage),
        }
    }
    0
}

/// Entry point of `tcp:tcp_send_reset`: reports a reset a full TCP socket sent, as a record of
/// its own (an `SO_LINGER` 0 close sends it after the socket's CLOSE). Resets sent for no
/// socket (a SYN to a closed port) or for a TIME_WAIT or request socket are not reported.
#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    if sk.is_null() {
        return 0;
    }
    let sock = Kernel(sk);
    let state = u32::from(sock.load::<u8>(offset!(state)));
    if state == TIME_WAIT
        || state == NEW_SYN_RECV
        || sock.load::<u16>(offset!(protocol)) != IPPROTO_TCP
    {
        return 0;
    }
    let Some(mut entry) = EVENTS.reserve::<RawResetSent>(0) else {
        count(Counter::RingFull);
        return 0;
    };
    // SAFETY: a helper without arguments or side effects.
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    entry.write(RawResetSent {
        ts_ns,
        skaddr: sk as u64,
        cookie: cookie(sk),
    });
    // SAFETY: FILTER is a read-only global, read as `try_record` does.
    let filter = unsafe { core::ptr::read_volatile(&FILTER) };
    submit(entry, &filter);
    0
}

/// Entry point of `tcp:tcp_retransmit_skb`: reports a segment a full socket sent again, as a
/// record of its own; what it was follows from the socket's state (a SYN while connecting, a
/// SYN-ACK for a Fast Open socket in SYN_RECV, data otherwise). Retransmissions are rare, so
/// the record goes out unfiltered: user space keeps those of the sessions it traces.
#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    if sk.is_null() {
        return 0;
    }
    let state = u32::from(Kernel(sk).load::<u8>(offset!(state)));
    let kind = match state {
        SYN_SENT => RETRANSMIT_SYN,
        SYN_RECV => RETRANSMIT_SYNACK,
        _ => RETRANSMIT_DATA,
    };
    report_retransmit(sk, kind, state, 0);
    0
}

/// Entry point of `tcp:tcp_retransmit_synack`: a SYN-ACK sent again for a connection request
/// (a `request_sock`, not yet a socket). The socket the kernel makes of the request when the
/// handshake completes takes the request's cookie, which the record carries, with the time of
/// the request's first SYN-ACK (read with `bpf_probe_read_kernel`: the field lies beyond the
/// `request_sock` the verifier knows the argument as).
#[btf_tracepoint(function = "tcp_retransmit_synack")]
pub fn tcp_retransmit_synack(ctx: BtfTracePointContext) -> i32 {
    let req: *const u8 = ctx.arg(1);
    if req.is_null() {
        return 0;
    }
    let slot = req as usize + offset!(snt_synack);
    // SAFETY: bpf_probe_read_kernel copies from kernel memory and cannot fault.
    let first_us = unsafe { bpf_probe_read_kernel(slot as *const u64) }.unwrap_or(0);
    report_retransmit(req, RETRANSMIT_SYNACK, NEW_SYN_RECV, first_us * 1000);
    0
}

/// Puts a [`RawRetransmit`] of `sk` in the ring buffer.
fn report_retransmit(sk: *const u8, kind: u32, state: u32, requested_ns: u64) {
    let Some(mut entry) = EVENTS.reserve::<RawRetransmit>(0) else {
        count(Counter::RingFull);
        return;
    };
    // SAFETY: a helper without arguments or side effects.
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    entry.write(RawRetransmit {
        ts_ns,
        skaddr: sk as u64,
        cookie: cookie(sk),
        requested_ns,
        kind,
        state,
    });
    // SAFETY: FILTER is a read-only global, read as `try_record` does.
    let filter = unsafe { core::ptr::read_volatile(&FILTER) };
    submit(entry, &filter);
}

fn set_main_running(value: u32) {
    if let Some(slot) = MAIN_RUNNING.get_ptr_mut(0) {
        // SAFETY: per-CPU slot of this CPU; programs do not migrate while they run.
        unsafe { *slot = value };
    }
}

fn count(counter: Counter) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs (no preemption).
        unsafe { *value += 1 };
    }
}

fn port_in(set: &Array<u64>, port: u16) -> bool {
    set.get(port_word(port))
        .is_some_and(|word| word & port_mask(port) != 0)
}

/// A kernel object the tracepoint handed over, read with typed loads the verifier checks
/// against BTF (a faulting load reads 0 instead of faulting).
#[derive(Clone, Copy)]
pub(crate) struct Kernel(pub(crate) *const u8);

impl Kernel {
    pub(crate) fn load<T: Copy>(self, offset: usize) -> T {
        // SAFETY: `offset` is the offset of a field of type `T` per the kernel's BTF, and the
        // verifier rewrites loads from BTF pointers into fault-tolerant ones.
        unsafe { core::ptr::read_volatile(self.0.wrapping_add(offset).cast::<T>()) }
    }

    pub(crate) fn follow(self, offset: usize) -> Self {
        Self(self.load::<*const u8>(offset))
    }

    /// A 4-byte IPv4 address, in the first 4 bytes of an event's 16-byte address slot.
    fn addr_v4(self, offset: usize) -> [u8; 16] {
        let mut bytes = [0; 16];
        bytes[..4].copy_from_slice(&self.load::<u32>(offset).to_ne_bytes());
        bytes
    }

    /// A 16-byte IPv6 address, loaded as two 8-byte words.
    fn addr_v6(self, offset: usize) -> [u8; 16] {
        self.bytes16(offset)
    }

    /// 16 bytes, loaded as two 8-byte words.
    fn bytes16(self, offset: usize) -> [u8; 16] {
        let mut bytes = [0; 16];
        bytes[..8].copy_from_slice(&self.load::<u64>(offset).to_ne_bytes());
        bytes[8..].copy_from_slice(&self.load::<u64>(offset + 8).to_ne_bytes());
        bytes
    }
}

/// The task on the CPU: a trusted BTF pointer, read with the same typed loads as the socket.
/// Two loads of its `comm` cost a fraction of `bpf_get_current_comm`, which copies the name
/// byte by byte and pads it.
#[derive(Clone, Copy)]
pub(crate) struct Task(pub(crate) Kernel);

impl Task {
    fn current() -> Self {
        // SAFETY: a helper without arguments; it returns the current task, never NULL.
        Self(Kernel(
            unsafe { bpf_get_current_task_btf() }.cast_const().cast(),
        ))
    }

    /// The process id (the kernel's `tgid`).
    pub(crate) fn pid(self) -> u32 {
        self.0.load::<i32>(offset!(task_tgid)) as u32
    }

    /// The command name as the kernel keeps it, NUL-padded (`set_task_comm` pads).
    pub(crate) fn comm(self) -> [u8; COMM_LEN] {
        self.0.bytes16(offset!(task_comm))
    }
}

/// Whether `cgroup` descends from the cgroup `id` at depth `level`: its ancestor at that depth
/// (`cgroup->ancestors[level]`) is that cgroup. The verifier checks typed loads only up to the
/// flexible `ancestors` array, so the walk reads with `bpf_probe_read_kernel`.
fn under_cgroup(cgroup: Kernel, id: u64, level: u32) -> bool {
    if cgroup.load::<i32>(offset!(cgroup_level)) < level as i32 {
        return false;
    }
    let read = |address: usize| -> Option<u64> {
        // SAFETY: bpf_probe_read_kernel copies from kernel memory and cannot fault.
        unsafe { bpf_probe_read_kernel(address as *const u64) }.ok()
    };
    let slot = cgroup.0 as usize + offset!(cgroup_ancestors) + 8 * level as usize;
    let ancestor_id = read(slot)
        .and_then(|ancestor| read(ancestor as usize + offset!(cgroup_kn)))
        .and_then(|kn| read(kn as usize + offset!(kn_id)));
    ancestor_id == Some(id)
}

/// Whether the socket has `SO_REUSEPORT`.
fn reuses_port(sock: Kernel) -> bool {
    let bit = offset!(reuseport_bit);
    sock.load::<u8>(bit / 8) & (1 << (bit % 8)) != 0
}

/// Where the socket listens, or listened: its bound address and `port`. Without a port, or for
/// a family the program does not know, the key has port 0 and identifies nothing.
///
/// Keys are plain values, every byte written on every path, rather than `Option`s: LLVM may
/// load an `Option`'s payload before it tests the variant, and verifiers before Linux 6.1.192
/// (which do not let a program read stack it never wrote) refuse the program for it.
fn listener_key(sock: Kernel, family: u16, netns: u32, port: u16) -> ListenerKey {
    let (addr, port) = match family {
        AF_INET => (sock.addr_v4(offset!(rcv_saddr)), port),
        AF_INET6 => (sock.addr_v6(offset!(rcv_saddr_v6)), port),
        _ => ([0; 16], 0),
    };
    ListenerKey {
        netns,
        port,
        family,
        addr,
    }
}

/// Keeps a new listener's owner where the sockets it accepts will find it: in [`LISTENERS`]
/// under `key` when that identifies it, otherwise in its [`INHERITED_OWNERS`] storage.
fn remember_listener(sk: *const u8, key: &ListenerKey, owner: &Owner) {
    let entered =
        !reuses_port(Kernel(sk)) && key.identifies() && LISTENERS.insert(key, owner, 0).is_ok();
    if !entered {
        match SocketStorage::value(&raw const INHERITED_OWNERS, sk, true) {
            Some(slot) => *slot = *owner,
            None => count(Counter::NoStorage),
        }
    }
}

/// The owner of a socket just accepted (at its LISTEN → SYN_RECV): the listener's, from the
/// storage the kernel copied from it or by the listener's key, which the new socket still holds.
fn inherited_owner(sk: *const u8, key: &ListenerKey) -> Option<Owner> {
    if let Some(owner) = SocketStorage::value(&raw const INHERITED_OWNERS, sk, false) {
        return Some(*owner);
    }
    if !key.identifies() {
        return None;
    }
    // SAFETY: the value is copied out at once; entries are only replaced whole.
    unsafe { LISTENERS.get(key) }.copied()
}

/// Why a hit of the tracepoint was not recorded: one reason per check of [`try_record`].
#[derive(Clone, Copy)]
pub(crate) enum Skip {
    /// Not a TCP socket.
    NotTcp,
    /// Another address family than `-4` or `-6` asks for.
    Family,
    /// Outside the port, owner, network namespace or cgroup filters.
    Filtered,
    /// Neither IPv4 nor IPv6, so no addresses to report (counted).
    UnknownFamily,
    /// No room in the ring buffer (counted).
    RingFull,
}

impl Skip {
    /// The counter that accounts for it, for a skip user space must report as a loss.
    fn counter(self) -> Option<Counter> {
        match self {
            Self::UnknownFamily => Some(Counter::UnknownFamily),
            Self::RingFull => Some(Counter::RingFull),
            Self::NotTcp | Self::Family | Self::Filtered => None,
        }
    }
}

/// Filters, times and submits one state change, counting a skip that is a loss.
fn record(ctx: &BtfTracePointContext) {
    if let Err(skip) = try_record(ctx)
        && let Some(counter) = skip.counter()
    {
        count(counter);
    }
}

/// One hit of the tracepoint: the socket and the two states.
#[derive(Clone, Copy)]
pub(crate) struct Transition {
    pub(crate) sk: *const u8,
    pub(crate) sock: Kernel,
    pub(crate) oldstate: u32,
    pub(crate) newstate: u32,
    pub(crate) family: u16,
}

/// What the socket's storage (or the transition itself) says of its owner and last state.
#[derive(Clone, Copy)]
struct Kept {
    /// Time in the state it leaves; 0 when not known.
    span_ns: u64,
    owner_pid: u32,
    /// `FLAG_*` bits of [`RawStateChange::flags`].
    flags: u16,
    owner_comm: [u8; COMM_LEN],
}

/// The stages of one state change: what it is, what the kernel keeps about its socket (even for
/// a change the filters drop), the filters, and the record.
fn try_record(ctx: &BtfTracePointContext) -> Result<(), Skip> {
    // SAFETY: FILTER is a read-only global; the volatile read keeps the compiler from folding
    // the load-time value away.
    let filter = unsafe { core::ptr::read_volatile(&FILTER) };
    let change = try_transition(ctx, &filter)?;
    // SAFETY: a helper without arguments or side effects.
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    let task = Task::current();
    let pid = task.pid();
    let num = change.sock.load::<u16>(offset!(num));
    let tcp = tcp_sock(change, num);
    let sport = local_port(num, tcp);
    let netns = change
        .sock
        .follow(offset!(net))
        .load::<u32>(offset!(net_inum));
    let kept = keep_socket_state(change, &filter, ts_ns, task, pid, sport, netns);
    let dport = u16::from_be(change.sock.load::<u16>(offset!(dport)));
    try_filters(&filter, sport, dport, netns, &kept)?;
    let cgroup_id = try_cgroup(change.sock, &filter)?;
    let (saddr, daddr) = try_addresses(change)?;
    try_submit(
        &filter,
        RawStateChange {
            ts_ns,
            skaddr: change.sk as u64,
            span_ns: kept.span_ns,
            cookie: 0,
            cgroup_id,
            pid,
            oldstate: change.oldstate,
            newstate: change.newstate,
            owner_pid: kept.owner_pid,
            uid: change.sock.load::<u32>(offset!(uid)),
            netns,
            sport,
            dport,
            family: change.family,
            flags: kept.flags,
            saddr,
            daddr,
            // Read only for a transition that passed the filters.
            comm: task.comm(),
            owner_comm: kept.owner_comm,
        },
        change.sk,
        tcp,
    )
}

/// The hit's socket and states, if it is a TCP socket of the family asked for.
fn try_transition(ctx: &BtfTracePointContext, filter: &Filter) -> Result<Transition, Skip> {
    let sk: *const u8 = ctx.arg(0);
    let sock = Kernel(sk);
    if sock.load::<u16>(offset!(protocol)) != IPPROTO_TCP {
        return Err(Skip::NotTcp);
    }
    let family = sock.load::<u16>(offset!(family));
    if filter.family != 0 && family != filter.family {
        return Err(Skip::Family);
    }
    Ok(Transition {
        sk,
        sock,
        oldstate: ctx.arg::<i32>(1) as u32,
        newstate: ctx.arg::<i32>(2) as u32,
        family,
    })
}

/// The socket as a `tcp_sock`, for what lies beyond `struct sock`: asked for (a helper call)
/// only at CLOSE, and when the local port must be read from there.
fn tcp_sock(change: Transition, num: u16) -> Option<Kernel> {
    if num != 0 && change.newstate != CLOSE {
        return None;
    }
    // SAFETY: `sk` is the tracepoint's socket argument; the helper returns NULL or the socket
    // as a trusted `tcp_sock` pointer.
    let tcp = unsafe { bpf_skc_to_tcp_sock(change.sk.cast_mut().cast()) };
    (!tcp.is_null()).then(|| Kernel(tcp.cast()))
}

/// The local port, as the tracepoint's own record reports it (`inet_sport`). While the socket
/// holds its port that is `num` (`skc_num`); once the port is released at CLOSE `skc_num` is 0
/// but `inet_sport` stays, and it lies beyond `struct sock`, so it is then read through `tcp`.
fn local_port(num: u16, tcp: Option<Kernel>) -> u16 {
    if num != 0 {
        return num;
    }
    tcp.map_or(0, |tcp| u16::from_be(tcp.load::<u16>(offset!(sport))))
}

/// Keeps what the kernel holds about owners and sockets up to date — the listener table, the
/// socket's owner and the time of its last transition — and returns what the record needs of
/// it. Done even for transitions the filters then drop, so a socket's owner and durations stay
/// right when later ones pass.
fn keep_socket_state(
    change: Transition,
    filter: &Filter,
    ts_ns: u64,
    task: Task,
    pid: u32,
    sport: u16,
    netns: u32,
) -> Kept {
    let Transition {
        sk,
        sock,
        oldstate,
        newstate,
        family,
    } = change;
    let owner_runs = runs_as_owner(oldstate, newstate);
    let listens = owner_runs && newstate == LISTEN;
    let accepted = oldstate == LISTEN && newstate == SYN_RECV;
    let key = if listens || accepted || (oldstate == LISTEN && newstate == CLOSE) {
        listener_key(sock, family, netns, sport)
    } else {
        ListenerKey::NONE
    };
    let owner = if owner_runs {
        Some(Owner {
            pid,
            comm: task.comm(),
        })
    } else if accepted {
        inherited_owner(sk, &key)
    } else {
        None
    };
    if listens && let Some(owner) = &owner {
        remember_listener(sk, &key, owner);
    } else if oldstate == LISTEN && newstate == CLOSE && key.identifies() {
        // Absent for a listener older than the program or kept in its socket storage.
        let _ = LISTENERS.remove(key);
    }
    let create = filter.full_records != 0
        || ((owner_runs || accepted) && (filter.owner_pid != 0 || filter.local_ports != 0));
    match SocketStorage::value(&raw const SOCKETS, sk, create) {
        Some(state) => {
            if let Some(owner) = owner {
                state.owner_pid = owner.pid;
                state.owner_comm = owner.comm;
                state.flags |= u32::from(FLAG_OWNER_KNOWN);
            }
            let span_ns = if starts_socket(oldstate, newstate) || state.last_ns == 0 {
                0
            } else {
                ts_ns.saturating_sub(state.last_ns)
            };
            state.last_ns = ts_ns;
            Kept {
                span_ns,
                owner_pid: state.owner_pid,
                flags: state.flags as u16,
                owner_comm: state.owner_comm,
            }
        }
        None => {
            if create {
                count(Counter::NoStorage);
            }
            match owner {
                Some(owner) => Kept {
                    span_ns: 0,
                    owner_pid: owner.pid,
                    flags: FLAG_OWNER_KNOWN,
                    owner_comm: owner.comm,
                },
                None => Kept {
                    span_ns: 0,
                    owner_pid: 0,
                    flags: 0,
                    owner_comm: [0; COMM_LEN],
                },
            }
        }
    }
}

/// The port, owner and network namespace filters.
fn try_filters(
    filter: &Filter,
    sport: u16,
    dport: u16,
    netns: u32,
    kept: &Kept,
) -> Result<(), Skip> {
    if (filter.local_ports != 0 && !port_in(&LOCAL_PORTS, sport))
        || (filter.remote_ports != 0 && !port_in(&REMOTE_PORTS, dport))
        || (filter.owner_pid != 0
            && (kept.flags & FLAG_OWNER_KNOWN == 0 || kept.owner_pid != filter.owner_pid))
        || (filter.netns != 0 && netns != filter.netns)
    {
        return Err(Skip::Filtered);
    }
    Ok(())
}

/// The socket's cgroup id, if the cgroup filter keeps it.
fn try_cgroup(sock: Kernel, filter: &Filter) -> Result<u64, Skip> {
    let cgroup = sock.follow(offset!(cgroup));
    let cgroup_id = cgroup
        .follow(offset!(cgroup_kn))
        .load::<u64>(offset!(kn_id));
    if filter.cgroup_id != 0
        && cgroup_id != filter.cgroup_id
        && !under_cgroup(cgroup, filter.cgroup_id, filter.cgroup_level)
    {
        return Err(Skip::Filtered);
    }
    Ok(cgroup_id)
}

/// The socket's local and remote addresses, for IPv4 and IPv6.
pub(crate) fn try_addresses(change: Transition) -> Result<([u8; 16], [u8; 16]), Skip> {
    let sock = change.sock;
    match change.family {
        AF_INET => Ok((
            sock.addr_v4(offset!(rcv_saddr)),
            sock.addr_v4(offset!(daddr)),
        )),
        AF_INET6 => Ok((
            sock.addr_v6(offset!(rcv_saddr_v6)),
            sock.addr_v6(offset!(daddr_v6)),
        )),
        _ => Err(Skip::UnknownFamily),
    }
}

/// Puts `record` in the ring buffer with the socket's cookie (asked for only now, the ring
/// having room) and, at CLOSE, what the socket (and `tcp`, the same as a `tcp_sock`) reports
/// as it closes.
fn try_submit(
    filter: &Filter,
    record: RawStateChange,
    sk: *const u8,
    tcp: Option<Kernel>,
) -> Result<(), Skip> {
    if record.newstate == CLOSE {
        let Some(mut entry) = EVENTS.reserve::<RawClosed>(0) else {
            return Err(Skip::RingFull);
        };
        entry.write(RawClosed {
            change: RawStateChange {
                cookie: cookie(sk),
                ..record
            },
            close: closing(sk, tcp),
        });
        submit(entry, filter);
    } else {
        let Some(mut entry) = EVENTS.reserve::<RawStateChange>(0) else {
            return Err(Skip::RingFull);
        };
        entry.write(RawStateChange {
            cookie: cookie(sk),
            ..record
        });
        submit(entry, filter);
    }
    Ok(())
}

/// What a socket reports as it closes: its errors and, from `tcp`, its `tcp_sock` counters.
fn closing(sk: *const u8, tcp: Option<Kernel>) -> RawClose {
    let sk_err = Kernel(sk).load::<i32>(offset!(sk_err)).unsigned_abs();
    let Some(tcp) = tcp else {
        return RawClose {
            sk_err,
            ..RawClose::default()
        };
    };
    let bit = offset!(peer_fin_bit);
    RawClose {
        bytes_sent: tcp.load::<u64>(offset!(bytes_sent)),
        bytes_retrans: tcp.load::<u64>(offset!(bytes_retrans)),
        bytes_received: tcp.load::<u64>(offset!(bytes_received)),
        srtt_us: tcp.load::<u32>(offset!(srtt_us)) >> 3,
        min_rtt_us: tcp.load::<u32>(offset!(min_rtt_us)),
        total_retrans: tcp.load::<u32>(offset!(total_retrans)),
        sk_err,
        peer_fin: u32::from(Kernel(sk).load::<u8>(bit / 8) & (1 << (bit % 8)) != 0),
        sk_err_soft: Kernel(sk).load::<i32>(offset!(sk_err_soft)).unsigned_abs(),
    }
}

/// The socket's cookie.
fn cookie(sk: *const u8) -> u64 {
    // SAFETY: `sk` is a trusted BTF socket pointer, not NULL.
    unsafe { bpf_get_socket_cookie(sk.cast_mut().cast()) }
}

/// Submits a reserved record, waking user space as `filter` says: when this record takes the
/// unread data past a multiple of the wake-up mark. Not on every record beyond the mark: a
/// reader that is behind is awake already and drains until the buffer is empty, and each
/// wake-up is an interrupt raised on this CPU (a VM exit in a guest), which at the mark on
/// every record cost a quarter of the traced application's CPU (docs/known-issues.md). A
/// wake-up lost to a race with another CPU's record comes at the next multiple, or the
/// reader's own timer drains.
fn submit<T>(entry: RingBufEntry<T>, filter: &Filter) {
    let wakeup = match u64::from(filter.wakeup_bytes) {
        0 => 0,
        mark => {
            let unread = EVENTS.query(BPF_RB_AVAIL_DATA.into());
            // This record's share of it: its length and the ring's 8-byte header, rounded up
            // to 8 bytes as the ring lays records out.
            let this = (core::mem::size_of::<T>() as u64 + 8).next_multiple_of(8);
            if unread >= mark && unread / mark != unread.saturating_sub(this) / mark {
                BPF_RB_FORCE_WAKEUP.into()
            } else {
                BPF_RB_NO_WAKEUP.into()
            }
        }
    };
    entry.submit(wakeup);
}
