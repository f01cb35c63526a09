//! The `sock:inet_sock_set_state` program and the maps it uses.

use agent_common::{
    counters::Counter,
    event::RawStateChange,
    filter::{Filter, PORT_BITMAP_WORDS, port_mask, port_word},
    sock::SockOffsets,
    state::{AF_INET, AF_INET6, CLOSE, IPPROTO_TCP, starts_socket},
    tracepoint as tp,
};
use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::{btf_tracepoint, map, tracepoint},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, TracePointContext},
};

/// Default ring buffer size; user space may resize it before load.
const RING_BYTES: u32 = 8 << 20;
/// Default number of sockets whose last transition time is kept; user space may resize it.
const MAX_SOCKETS: u32 = 65_536;

/// Events to user space.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// Socket address → kernel time of its last transition.
#[map]
static LAST_TRANSITION: LruHashMap<u64, u64> = LruHashMap::with_max_entries(MAX_SOCKETS, 0);

/// Bitmap of local ports to keep when `Filter::local_ports` is set.
#[map]
static LOCAL_PORTS: Array<u64> = Array::with_max_entries(PORT_BITMAP_WORDS, 0);

/// Bitmap of remote ports to keep when `Filter::remote_ports` is set.
#[map]
static REMOTE_PORTS: Array<u64> = Array::with_max_entries(PORT_BITMAP_WORDS, 0);

/// Counters indexed by [`Counter`].
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Filter settings, set by user space at load time.
#[unsafe(no_mangle)]
static FILTER: Filter = Filter {
    family: 0,
    local_ports: 0,
    remote_ports: 0,
    wakeup_bytes: 0,
};

/// Offsets of `struct sock` fields for the BTF program, set by user space at load time.
#[unsafe(no_mangle)]
static SOCK_OFFSETS: SockOffsets = SockOffsets {
    family: 0,
    protocol: 0,
    sport: 0,
    dport: 0,
    saddr: 0,
    daddr: 0,
    saddr_v6: 0,
    daddr_v6: 0,
};

/// Per CPU: 1 while the classic program runs on that CPU.
#[map]
static CLASSIC_RUNNING: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Entry point of the classic tracepoint program: see the crate documentation.
#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    set_classic_running(1);
    if record(&Classic(&ctx)).is_err() {
        count(Counter::ReadError);
    }
    set_classic_running(0);
    0
}

/// Entry point of the BTF tracepoint program, the classic program's backstop.
///
/// The kernel runs a classic tracepoint program only if no such program already runs on the
/// CPU (`bpf_prog_active`), so a state change made by a softirq that interrupted the classic
/// program is dropped for it. The BTF program has a recursion guard of its own, so it still
/// runs: when it finds the classic program running on its CPU, this hit is one the classic
/// program will miss, and it records it instead; otherwise it returns at once.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_btf(ctx: BtfTracePointContext) -> i32 {
    if CLASSIC_RUNNING.get(0).copied() != Some(1) {
        return 0;
    }
    let source = Btf {
        sk: ctx.arg(0),
        oldstate: ctx.arg(1),
        newstate: ctx.arg(2),
    };
    match record(&source) {
        Ok(()) => count(Counter::Recovered),
        Err(_) => count(Counter::ReadError),
    }
    0
}

fn set_classic_running(value: u32) {
    if let Some(slot) = CLASSIC_RUNNING.get_ptr_mut(0) {
        // SAFETY: per-CPU slot of this CPU; programs do not migrate while they run.
        unsafe { *slot = value };
    }
}

/// Where a state change's fields come from.
trait Source {
    fn protocol(&self) -> Result<u16, i32>;
    fn family(&self) -> Result<u16, i32>;
    fn skaddr(&self) -> Result<u64, i32>;
    /// Local and remote port, host order.
    fn ports(&self) -> Result<(u16, u16), i32>;
    fn states(&self) -> Result<(u32, u32), i32>;
    /// Local and remote address of an `AF_INET` socket, in the first 4 bytes.
    fn addrs_v4(&self) -> Result<([u8; 16], [u8; 16]), i32>;
    /// Local and remote address of an `AF_INET6` socket.
    fn addrs_v6(&self) -> Result<([u8; 16], [u8; 16]), i32>;
}

/// The classic tracepoint's record.
struct Classic<'a>(&'a TracePointContext);

impl Classic<'_> {
    /// Loads `field` straight from the record: the verifier allows aligned loads from a
    /// tracepoint's context, which cost far less than a `bpf_probe_read` call each.
    fn read<T: Copy>(&self, field: tp::Field) -> T {
        // SAFETY: the offsets come from the tracepoint layout that user space checked against
        // the kernel's format file before loading; each field is aligned to its size, and the
        // volatile read keeps the load at exactly that size.
        unsafe {
            core::ptr::read_volatile(self.0.as_ptr().cast::<u8>().add(field.offset).cast::<T>())
        }
    }

    /// A 16-byte address field, loaded as two aligned 8-byte words.
    fn read_v6(&self, field: tp::Field) -> [u8; 16] {
        let high = tp::Field {
            offset: field.offset + 8,
            ..field
        };
        let mut bytes = [0; 16];
        bytes[..8].copy_from_slice(&self.read::<u64>(field).to_ne_bytes());
        bytes[8..].copy_from_slice(&self.read::<u64>(high).to_ne_bytes());
        bytes
    }
}

impl Source for Classic<'_> {
    fn protocol(&self) -> Result<u16, i32> {
        Ok(self.read(tp::PROTOCOL))
    }
    fn family(&self) -> Result<u16, i32> {
        Ok(self.read(tp::FAMILY))
    }
    fn skaddr(&self) -> Result<u64, i32> {
        Ok(self.read(tp::SKADDR))
    }
    fn ports(&self) -> Result<(u16, u16), i32> {
        Ok((self.read(tp::SPORT), self.read(tp::DPORT)))
    }
    fn states(&self) -> Result<(u32, u32), i32> {
        Ok((
            self.read::<i32>(tp::OLDSTATE) as u32,
            self.read::<i32>(tp::NEWSTATE) as u32,
        ))
    }
    fn addrs_v4(&self) -> Result<([u8; 16], [u8; 16]), i32> {
        let (saddr, daddr) = (self.read::<u32>(tp::SADDR), self.read::<u32>(tp::DADDR));
        Ok((widen(saddr.to_ne_bytes()), widen(daddr.to_ne_bytes())))
    }
    fn addrs_v6(&self) -> Result<([u8; 16], [u8; 16]), i32> {
        Ok((self.read_v6(tp::SADDR_V6), self.read_v6(tp::DADDR_V6)))
    }
}

/// The BTF tracepoint's arguments: the socket, read at the offsets user space found in BTF.
struct Btf {
    sk: *const u8,
    oldstate: i32,
    newstate: i32,
}

impl Btf {
    fn read<T>(&self, offset: u32) -> Result<T, i32> {
        // SAFETY: bpf_probe_read_kernel copies from kernel memory and cannot fault; `sk` is the
        // tracepoint's socket and `offset` one of its fields per the kernel's BTF.
        unsafe { bpf_probe_read_kernel(self.sk.wrapping_add(offset as usize).cast::<T>()) }
    }

    fn offsets() -> SockOffsets {
        // SAFETY: a read-only global; the volatile read keeps its load-time value.
        unsafe { core::ptr::read_volatile(&SOCK_OFFSETS) }
    }
}

impl Source for Btf {
    fn protocol(&self) -> Result<u16, i32> {
        self.read(Self::offsets().protocol)
    }
    fn family(&self) -> Result<u16, i32> {
        self.read(Self::offsets().family)
    }
    fn skaddr(&self) -> Result<u64, i32> {
        Ok(self.sk as u64)
    }
    fn ports(&self) -> Result<(u16, u16), i32> {
        let offsets = Self::offsets();
        Ok((
            u16::from_be(self.read(offsets.sport)?),
            u16::from_be(self.read(offsets.dport)?),
        ))
    }
    fn states(&self) -> Result<(u32, u32), i32> {
        Ok((self.oldstate as u32, self.newstate as u32))
    }
    fn addrs_v4(&self) -> Result<([u8; 16], [u8; 16]), i32> {
        let offsets = Self::offsets();
        Ok((
            widen(self.read(offsets.saddr)?),
            widen(self.read(offsets.daddr)?),
        ))
    }
    fn addrs_v6(&self) -> Result<([u8; 16], [u8; 16]), i32> {
        let offsets = Self::offsets();
        Ok((self.read(offsets.saddr_v6)?, self.read(offsets.daddr_v6)?))
    }
}

/// A 4-byte IPv4 address in the 16-byte address slot of an event.
fn widen(v4: [u8; 4]) -> [u8; 16] {
    let mut bytes = [0; 16];
    bytes[..4].copy_from_slice(&v4);
    bytes
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

/// Time since the socket's last transition, moving its entry to `ts_ns` in place (cheaper than
/// a map update); `None` when there is no entry to use: none kept, or a transition that starts
/// a socket (an entry left by a missed CLOSE is stale).
fn since_last(skaddr: u64, oldstate: u32, newstate: u32, ts_ns: u64) -> Option<u64> {
    if starts_socket(oldstate, newstate) {
        return None;
    }
    let last = LAST_TRANSITION.get_ptr_mut(skaddr)?;
    // SAFETY: the entry is only written by transitions of this socket, which the kernel
    // serialises; an LRU eviction meanwhile leaves the memory valid until the program ends.
    let previous = unsafe { core::mem::replace(&mut *last, ts_ns) };
    Some(ts_ns.saturating_sub(previous))
}

/// Filters, times and submits one state change.
fn record<S: Source>(source: &S) -> Result<(), i32> {
    if source.protocol()? != IPPROTO_TCP {
        return Ok(());
    }
    // SAFETY: FILTER is a read-only global; the volatile read keeps the compiler from folding
    // the load-time value away.
    let filter = unsafe { core::ptr::read_volatile(&FILTER) };
    let family = source.family()?;
    if filter.family != 0 && family != filter.family {
        return Ok(());
    }
    let skaddr = source.skaddr()?;
    let (sport, dport) = source.ports()?;
    if (filter.local_ports != 0 && !port_in(&LOCAL_PORTS, sport))
        || (filter.remote_ports != 0 && !port_in(&REMOTE_PORTS, dport))
    {
        let _ = LAST_TRANSITION.remove(skaddr);
        return Ok(());
    }
    let (oldstate, newstate) = source.states()?;

    // SAFETY: a helper without arguments or side effects.
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    let span_ns = if newstate == CLOSE {
        let span_ns = since_last(skaddr, oldstate, newstate, ts_ns).unwrap_or(0);
        let _ = LAST_TRANSITION.remove(skaddr);
        span_ns
    } else if let Some(span_ns) = since_last(skaddr, oldstate, newstate, ts_ns) {
        span_ns
    } else {
        let _ = LAST_TRANSITION.insert(skaddr, ts_ns, 0);
        0
    };

    count(Counter::Seen);
    let (saddr, daddr) = match family {
        AF_INET => source.addrs_v4()?,
        AF_INET6 => source.addrs_v6()?,
        _ => {
            count(Counter::UnknownFamily);
            return Ok(());
        }
    };
    let Some(mut entry) = EVENTS.reserve::<RawStateChange>(0) else {
        count(Counter::RingFull);
        return Ok(());
    };
    entry.write(RawStateChange {
        ts_ns,
        skaddr,
        span_ns,
        pid: (bpf_get_current_pid_tgid() >> 32) as u32,
        oldstate,
        newstate,
        sport,
        dport,
        family,
        pad: 0,
        saddr,
        daddr,
        comm: bpf_get_current_comm().unwrap_or_default(),
    });
    let wakeup = match filter.wakeup_bytes {
        0 => 0,
        bytes if EVENTS.query(BPF_RB_AVAIL_DATA.into()) >= u64::from(bytes) => {
            BPF_RB_FORCE_WAKEUP.into()
        }
        _ => BPF_RB_NO_WAKEUP.into(),
    };
    entry.submit(wakeup);
    Ok(())
}
