//! Loading the kernel program with the run's filters and attaching it to the tracepoint.

use agent_common::{
    filter::{Filter, PORT_BITMAP_WORDS, port_mask, port_word},
    tracepoint as tp,
};
use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{Array, MapData, MapError, PerCpuArray, RingBuf},
    programs::{
        BtfTracePoint, ProgramError, TracePoint, tp_btf::BtfTracePointLink,
        trace_point::TracePointLink,
    },
};

use crate::{
    btf,
    config::{Config, PortList},
    counters::KernelCounters,
    tracefs::{self, TracefsError},
};

/// Name of the BTF tracepoint program in the object.
const BACKSTOP: &str = "inet_sock_set_state_btf";

/// The compiled kernel program (built by build.rs).
static PROGRAM_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-ebpf"));

/// Why the program could not be loaded or attached.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// tracefs or the tracepoint is not usable.
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    /// The object could not be loaded into the kernel.
    #[error("loading the BPF object: {0}")]
    Load(#[from] EbpfError),
    /// A map the program needs is missing or could not be written.
    #[error("BPF map {name}: {source}")]
    Map {
        /// The map.
        name: &'static str,
        /// Why.
        #[source]
        source: MapError,
    },
    /// The program is missing from the object, or the verifier or attach refused it.
    #[error("BPF program {}: {source}", tp::NAME)]
    Program {
        /// Why.
        #[source]
        source: ProgramError,
    },
}

/// The attached program and the user-space ends of its maps.
pub struct Probe {
    /// The program and its attachment to the tracepoint.
    pub attachment: Attachment,
    /// Where the program sends events.
    pub events: RingBuf<MapData>,
    /// The program's loss counters.
    pub counters: KernelCounters,
}

/// Ring-buffer fill at which the kernel wakes the reader: a quarter of the buffer, so a burst
/// is drained long before it fills; below it the reader drains on its own timer.
fn wakeup_bytes(ring_bytes: u32) -> u32 {
    ring_bytes / 4
}

/// Loads the program configured for `config` and attaches it to `sock:inet_sock_set_state`.
pub fn attach(config: &Config) -> Result<Probe, ProbeError> {
    let root = tracefs::ensure_mounted()?;
    tracefs::check_tracepoint(&root)?;

    let filter = Filter {
        family: config.family.unwrap_or(0),
        local_ports: u8::from(config.local_ports.is_some()),
        remote_ports: u8::from(config.remote_ports.is_some()),
        wakeup_bytes: wakeup_bytes(config.ring_buffer_bytes),
    };
    let offsets = btf::Btf::from_file(btf::VMLINUX).and_then(|btf| btf::sock_offsets(&btf));
    let sock_offsets = offsets.as_ref().copied().unwrap_or_default();
    let mut ebpf = EbpfLoader::new()
        .override_global("FILTER", &filter, true)
        .override_global("SOCK_OFFSETS", &sock_offsets, true)
        .map_max_entries("EVENTS", config.ring_buffer_bytes)
        .load(PROGRAM_OBJECT)?;

    for (name, ports) in [
        ("LOCAL_PORTS", &config.local_ports),
        ("REMOTE_PORTS", &config.remote_ports),
    ] {
        if let Some(ports) = ports {
            fill_port_bitmap(&mut ebpf, name, ports)?;
        }
    }

    let program: &mut TracePoint = ebpf
        .program_mut(tp::NAME)
        .ok_or(ProgramError::NotLoaded)
        .and_then(TryInto::try_into)
        .map_err(|source| ProbeError::Program { source })?;
    program
        .load()
        .map_err(|source| ProbeError::Program { source })?;
    let link = program
        .attach(tp::CATEGORY, tp::NAME)
        .and_then(|id| program.take_link(id))
        .map_err(|source| ProbeError::Program { source })?;
    let program_fd = program
        .fd()
        .and_then(|fd| fd.try_clone().map_err(ProgramError::from))
        .map_err(|source| ProbeError::Program { source })?;
    let backstop = match offsets {
        Ok(_) => attach_backstop(&mut ebpf),
        Err(err) => Err(err.to_string()),
    };
    let backstop = backstop
        .map_err(|why| {
            eprintln!(
                "tcpstates: the BTF tracepoint is unavailable ({why}); state changes the kernel \
                 skips to BPF recursion cannot be recovered (they are counted)"
            );
        })
        .ok();

    let events =
        RingBuf::try_from(take_map(&mut ebpf, "EVENTS")?).map_err(|source| ProbeError::Map {
            name: "EVENTS",
            source,
        })?;
    let counters = PerCpuArray::try_from(take_map(&mut ebpf, "COUNTERS")?).map_err(|source| {
        ProbeError::Map {
            name: "COUNTERS",
            source,
        }
    })?;
    Ok(Probe {
        attachment: Attachment {
            _ebpf: ebpf,
            link: Some(link),
            backstop,
        },
        events,
        counters: KernelCounters::new(counters, program_fd),
    })
}

/// The loaded program, attached until [`Attachment::detach`] or drop.
pub struct Attachment {
    /// Keeps the program and its maps alive.
    _ebpf: Ebpf,
    /// The classic program's attachment; `None` once detached.
    link: Option<TracePointLink>,
    /// The BTF program's attachment, when the kernel offers it; `None` once detached.
    backstop: Option<BtfTracePointLink>,
}

impl Attachment {
    /// Stops the program from running; the maps stay readable, so what the ring buffer holds
    /// can still be drained and the counters read for a final, exact account.
    pub fn detach(&mut self) {
        self.link = None;
        self.backstop = None;
    }
}

/// Loads and attaches the BTF tracepoint program that records what the classic one misses.
fn attach_backstop(ebpf: &mut Ebpf) -> Result<BtfTracePointLink, String> {
    let btf = aya::Btf::from_sys_fs().map_err(|err| err.to_string())?;
    let program: &mut BtfTracePoint = ebpf
        .program_mut(BACKSTOP)
        .ok_or(ProgramError::NotLoaded)
        .and_then(TryInto::try_into)
        .map_err(|err| err.to_string())?;
    program
        .load(tp::NAME, &btf)
        .and_then(|()| program.attach())
        .and_then(|id| program.take_link(id))
        .map_err(|err| err.to_string())
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, ProbeError> {
    ebpf.take_map(name).ok_or(ProbeError::Map {
        name,
        source: MapError::InvalidName {
            name: name.to_owned(),
        },
    })
}

fn fill_port_bitmap(
    ebpf: &mut Ebpf,
    name: &'static str,
    ports: &PortList,
) -> Result<(), ProbeError> {
    let map = ebpf.map_mut(name).ok_or(ProbeError::Map {
        name,
        source: MapError::InvalidName {
            name: name.to_owned(),
        },
    })?;
    let mut bitmap: Array<_, u64> =
        Array::try_from(map).map_err(|source| ProbeError::Map { name, source })?;
    let mut words = vec![0u64; PORT_BITMAP_WORDS as usize];
    for port in ports.iter() {
        words[port_word(port) as usize] |= port_mask(port);
    }
    for (index, word) in (0u32..).zip(words) {
        if word != 0 {
            bitmap
                .set(index, word, 0)
                .map_err(|source| ProbeError::Map { name, source })?;
        }
    }
    Ok(())
}
