//! The `sock:inet_sock_set_state` program and the maps it uses.

use agent_common::{
    counters::Counter,
    event::RawStateChange,
    filter::{Filter, PORT_BITMAP_WORDS, port_mask, port_word},
    state::{AF_INET, AF_INET6, CLOSE, IPPROTO_TCP, starts_socket},
    tracepoint as tp,
};
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, tracepoint},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
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

/// Entry point: see the crate documentation.
#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    if try_inet_sock_set_state(&ctx).is_err() {
        count(Counter::ReadError);
    }
    0
}

fn read<T>(ctx: &TracePointContext, field: tp::Field) -> Result<T, i32> {
    // SAFETY: the offsets come from the tracepoint layout that user space checked against the
    // kernel's format file before loading; `read_at` uses bpf_probe_read, which cannot fault.
    unsafe { ctx.read_at::<T>(field.offset) }
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

fn try_inet_sock_set_state(ctx: &TracePointContext) -> Result<(), i32> {
    if read::<u16>(ctx, tp::PROTOCOL)? != IPPROTO_TCP {
        return Ok(());
    }
    // SAFETY: FILTER is a read-only global; the volatile read keeps the compiler from folding
    // the load-time value away.
    let filter = unsafe { core::ptr::read_volatile(&FILTER) };
    let family = read::<u16>(ctx, tp::FAMILY)?;
    if filter.family != 0 && family != filter.family {
        return Ok(());
    }
    let skaddr = read::<u64>(ctx, tp::SKADDR)?;
    let sport = read::<u16>(ctx, tp::SPORT)?;
    let dport = read::<u16>(ctx, tp::DPORT)?;
    if (filter.local_ports != 0 && !port_in(&LOCAL_PORTS, sport))
        || (filter.remote_ports != 0 && !port_in(&REMOTE_PORTS, dport))
    {
        let _ = LAST_TRANSITION.remove(skaddr);
        return Ok(());
    }
    let oldstate = read::<i32>(ctx, tp::OLDSTATE)? as u32;
    let newstate = read::<i32>(ctx, tp::NEWSTATE)? as u32;

    // SAFETY: a helper without arguments or side effects.
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    let span_ns = if starts_socket(oldstate, newstate) {
        0
    } else {
        // SAFETY: the value is copied out at once; a concurrent update of the same key can only
        // come from another transition of the same socket, which the kernel serialises.
        match unsafe { LAST_TRANSITION.get(skaddr) } {
            Some(&last) if last <= ts_ns => ts_ns - last,
            _ => 0,
        }
    };
    if newstate == CLOSE {
        let _ = LAST_TRANSITION.remove(skaddr);
    } else {
        let _ = LAST_TRANSITION.insert(skaddr, ts_ns, 0);
    }

    count(Counter::Seen);
    let (saddr, daddr) = match family {
        AF_INET => (read_v4(ctx, tp::SADDR)?, read_v4(ctx, tp::DADDR)?),
        AF_INET6 => (read(ctx, tp::SADDR_V6)?, read(ctx, tp::DADDR_V6)?),
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

/// Reads a 4-byte IPv4 address field into the 16-byte address slot of an event.
fn read_v4(ctx: &TracePointContext, field: tp::Field) -> Result<[u8; 16], i32> {
    let v4: [u8; 4] = read(ctx, field)?;
    let mut bytes = [0; 16];
    bytes[..4].copy_from_slice(&v4);
    Ok(bytes)
}
