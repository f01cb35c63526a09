//! Loading the kernel programs with the run's filters and attaching them to the tracepoint.

use std::{collections::HashMap, net::IpAddr};

use agent_common::{
    decode::StateChange,
    event::COMM_LEN,
    filter::{Filter, PORT_BITMAP_WORDS, port_mask, port_word},
    listener::{ListenerKey, Owner as ListenerOwner},
    state::{AF_INET, AF_INET6, LISTEN},
};
use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{Array, MapData, MapError, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, ProgramError, ProgramFd, tp_btf::BtfTracePointLink},
};

use crate::{
    btf::{self, BtfError},
    config::{Config, PortList},
    counters::KernelCounters,
    existing::{self, ExistingSocketsError},
};

/// The tracepoint both programs attach to (`sock:inet_sock_set_state`, by its BTF name).
const TRACEPOINT: &str = "inet_sock_set_state";
/// Name of the main program in the object.
const MAIN: &str = "inet_sock_set_state";
/// Name of the backstop program in the object.
const BACKSTOP: &str = "inet_sock_set_state_backstop";
/// The program on `tcp:tcp_receive_reset`, and that tracepoint's BTF name.
const RESET_RECEIVED: &str = "tcp_receive_reset";
/// The kernel's table of listeners' owners.
const LISTENERS: &str = "LISTENERS";
/// `BPF_NOEXIST`: insert only a key that is not there yet.
const BPF_NOEXIST: u64 = 1;
/// The program on `tcp:tcp_send_reset`, and that tracepoint's BTF name.
const RESET_SENT: &str = "tcp_send_reset";
/// The program on `tcp:tcp_retransmit_skb`, and that tracepoint's BTF name.
const RETRANSMIT: &str = "tcp_retransmit_skb";
/// The program on `tcp:tcp_retransmit_synack`, and that tracepoint's BTF name.
const RETRANSMIT_SYNACK: &str = "tcp_retransmit_synack";

/// The oldest kernel that gives BTF tracepoint programs every helper these call: socket storage
/// and the current task as a BTF pointer (Linux 5.11), the socket cookie (5.12).
pub const MIN_KERNEL: (u32, u32) = (5, 12);

/// Where the kernel names its release.
const OSRELEASE: &str = "/proc/sys/kernel/osrelease";

/// This process's status, which names its seccomp mode.
const SELF_STATUS: &str = "/proc/self/status";

/// The compiled kernel program (built by build.rs).
static PROGRAM_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-ebpf"));

/// Why the programs could not be loaded or attached.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The kernel is older than the programs need (whatever else failed with it).
    #[error(
        "Linux {release} is too old: tcpstates needs Linux >= {}.{} with BTF",
        MIN_KERNEL.0,
        MIN_KERNEL.1
    )]
    KernelTooOld {
        /// The kernel's release, as `uname -r` prints it.
        release: String,
    },
    /// A seccomp filter refused a BPF call the capabilities allow (container runtimes' default
    /// profiles allow `bpf()` only with CAP_SYS_ADMIN).
    #[error(
        "{0} (this process runs under a seccomp filter that refuses bpf(): give the container \
         deploy/container/seccomp.json, see deploy/container/README.md)"
    )]
    Seccomp(#[source] Box<ProbeError>),
    /// The kernel's BTF is missing or lacks a field the program reads.
    #[error(
        "tcpstates needs the kernel's BTF ({path}) and Linux >= 5.12: {0}",
        path = btf::VMLINUX
    )]
    Btf(#[from] BtfError),
    /// The kernel's verifier refused a program; `reason` is the log's verdict, the whole log
    /// would be hundreds of lines.
    #[error("the kernel's verifier refused BPF program {name}: {reason}")]
    Refused {
        /// The program.
        name: &'static str,
        /// The last line of the verifier's log that says what is wrong.
        reason: String,
    },
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
    /// A program is missing from the object, or the verifier or attach refused it.
    #[error("BPF program {name}: {source}")]
    Program {
        /// The program.
        name: &'static str,
        /// Why.
        #[source]
        source: ProgramError,
    },
}

/// The attached programs and the user-space ends of their maps.
pub struct Probe {
    /// The programs and their attachments to the tracepoint.
    pub attachment: Attachment,
    /// Where the programs send events.
    pub events: RingBuf<MapData>,
    /// The programs' loss counters.
    pub counters: KernelCounters,
}

impl Probe {
    /// The TCP sockets processes already hold: see [`existing::existing_sockets`]. Called while
    /// the tracepoint programs are attached (before [`Attachment::detach`]), so each socket is
    /// listed, or has its next transition traced, or both.
    pub fn existing_sockets(&mut self) -> Result<Vec<StateChange>, ExistingSocketsError> {
        let btf = aya::Btf::from_sys_fs().map_err(ExistingSocketsError::Btf)?;
        existing::existing_sockets(&mut self.attachment.ebpf, &btf)
    }

    /// Enters the listeners among `sockets` (found open at start, each with the process that
    /// holds it) in the kernel's listener table, so the sockets they accept from now on are
    /// given that owner, as those of a listener that called `listen()` under tracing are. A
    /// listener already entered keeps its entry; listeners sharing a key (an `SO_REUSEPORT`
    /// group, which the table cannot tell apart) are left out. Returns how many were entered.
    pub fn remember_listeners(&mut self, sockets: &[StateChange]) -> Result<usize, ProbeError> {
        let mut keys: HashMap<ListenerKey, Option<ListenerOwner>> = HashMap::new();
        for socket in sockets {
            if socket.newstate.0 != LISTEN {
                continue;
            }
            let Some(owner) = socket.owner else {
                continue;
            };
            let mut comm = [0; COMM_LEN];
            comm[..owner.comm.as_bytes().len()].copy_from_slice(owner.comm.as_bytes());
            let owner = ListenerOwner {
                pid: owner.pid,
                comm,
            };
            keys.entry(listener_key(socket))
                .and_modify(|shared| *shared = None)
                .or_insert(Some(owner));
        }
        let map = self
            .attachment
            .ebpf
            .map_mut(LISTENERS)
            .ok_or(ProbeError::Map {
                name: LISTENERS,
                source: MapError::InvalidName {
                    name: LISTENERS.to_owned(),
                },
            })?;
        let mut table: aya::maps::HashMap<_, ListenerKey, ListenerOwner> =
            aya::maps::HashMap::try_from(map).map_err(|source| ProbeError::Map {
                name: LISTENERS,
                source,
            })?;
        let mut entered = 0;
        for (key, owner) in keys {
            // An entry already there is a listener's own, or a full table: either way kept.
            if let Some(owner) = owner
                && table.insert(key, owner, BPF_NOEXIST).is_ok()
            {
                entered += 1;
            }
        }
        Ok(entered)
    }
}

/// The kernel listener table's key of a listening socket: where it listens, its address as the
/// socket holds it (4 bytes for IPv4).
fn listener_key(socket: &StateChange) -> ListenerKey {
    let mut addr = [0; 16];
    let family = match socket.local_addr {
        IpAddr::V4(v4) => {
            addr[..4].copy_from_slice(&v4.octets());
            AF_INET
        }
        IpAddr::V6(v6) => {
            addr.copy_from_slice(&v6.octets());
            AF_INET6
        }
    };
    ListenerKey {
        netns: socket.netns,
        port: socket.local_port,
        family,
        addr,
    }
}

/// Ring-buffer fill at which the kernel wakes the reader: a quarter of the buffer, so a burst
/// is drained long before it fills; below it the reader drains on its own timer.
fn wakeup_bytes(ring_bytes: u32) -> u32 {
    ring_bytes / 4
}

/// Loads the programs configured for `config` and attaches them to `sock:inet_sock_set_state`.
/// On a kernel older than [`MIN_KERNEL`] any failure is reported as that; a call refused with
/// EPERM under a seccomp filter says so.
pub fn attach(config: &Config) -> Result<Probe, ProbeError> {
    load_and_attach(config).map_err(|err| {
        let release = std::fs::read_to_string(OSRELEASE).unwrap_or_default();
        match kernel_version(&release) {
            Some(version) if version < MIN_KERNEL => ProbeError::KernelTooOld {
                release: release.trim().to_owned(),
            },
            _ if refused_by_permission(&err) && under_seccomp_filter() => {
                ProbeError::Seccomp(Box::new(err))
            }
            _ => err,
        }
    })
}

/// Whether `err` comes from a call the kernel refused with EPERM.
fn refused_by_permission(err: &ProbeError) -> bool {
    let mut cause: Option<&dyn std::error::Error> = Some(err);
    while let Some(error) = cause {
        if error
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::EPERM))
        {
            return true;
        }
        cause = error.source();
    }
    false
}

/// Whether this process runs under a seccomp filter (`Seccomp: 2` in its status).
fn under_seccomp_filter() -> bool {
    std::fs::read_to_string(SELF_STATUS).is_ok_and(|status| seccomp_filtered(&status))
}

/// Whether a `/proc/PID/status` text says the process has a seccomp filter.
fn seccomp_filtered(status: &str) -> bool {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Seccomp:"))
        .is_some_and(|mode| mode.trim() == "2")
}

/// `(major, minor)` of a kernel release such as `6.1.0-47-cloud-amd64`.
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut numbers = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(str::parse::<u32>);
    Some((numbers.next()?.ok()?, numbers.next()?.ok()?))
}

/// The verdict of a verifier log: its last line that is not a statistic.
pub(crate) fn verdict(log: &str) -> String {
    log.lines()
        .map(str::trim)
        .rfind(|line| {
            !line.is_empty()
                && !line.starts_with("processed ")
                && !line.starts_with("verification time")
                && !line.starts_with("stack depth")
        })
        .unwrap_or("no log")
        .to_owned()
}

fn load_and_attach(config: &Config) -> Result<Probe, ProbeError> {
    let filter = Filter {
        family: config.family.unwrap_or(0),
        local_ports: u8::from(config.local_ports.is_some()),
        remote_ports: u8::from(config.remote_ports.is_some()),
        wakeup_bytes: wakeup_bytes(config.ring_buffer_bytes),
        owner_pid: config.owner_pid.unwrap_or(0),
        netns: config.netns.unwrap_or(0),
        cgroup_id: config.cgroup.map_or(0, |cgroup| cgroup.id),
        cgroup_level: config.cgroup.map_or(0, |cgroup| cgroup.level),
        full_records: u8::from(config.prints_transitions()),
        pad: [0; 3],
    };
    let field_offsets = btf::field_offsets(&btf::Btf::from_file(btf::VMLINUX)?)?;
    let mut ebpf = EbpfLoader::new()
        .override_global("FILTER", &filter, true)
        .override_global("FIELD_OFFSETS", &field_offsets, true)
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

    let btf = aya::Btf::from_sys_fs().map_err(EbpfError::from)?;
    // The resets first, then the backstop: from its attachment on, every hit the main program
    // misses is caught.
    let (reset_received, _) = attach_program(&mut ebpf, RESET_RECEIVED, RESET_RECEIVED, &btf)?;
    let (reset_sent, _) = attach_program(&mut ebpf, RESET_SENT, RESET_SENT, &btf)?;
    let (retransmit, _) = attach_program(&mut ebpf, RETRANSMIT, RETRANSMIT, &btf)?;
    let (retransmit_synack, _) =
        attach_program(&mut ebpf, RETRANSMIT_SYNACK, RETRANSMIT_SYNACK, &btf)?;
    let (backstop, _) = attach_program(&mut ebpf, BACKSTOP, TRACEPOINT, &btf)?;
    let (main, main_fd) = attach_program(&mut ebpf, MAIN, TRACEPOINT, &btf)?;

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
            ebpf,
            links: vec![
                main,
                backstop,
                reset_sent,
                reset_received,
                retransmit,
                retransmit_synack,
            ],
        },
        events,
        counters: KernelCounters::new(counters, main_fd),
    })
}

/// The loaded programs, attached until [`Attachment::detach`] or drop.
pub struct Attachment {
    /// Keeps the programs and their maps alive; the iterator program runs from it.
    ebpf: Ebpf,
    /// The programs' attachments; empty once detached.
    links: Vec<BtfTracePointLink>,
}

impl Attachment {
    /// Stops the programs from running; the maps stay readable, so what the ring buffer holds
    /// can still be drained and the counters read for a final, exact account.
    pub fn detach(&mut self) {
        self.links.clear();
    }
}

/// Loads program `name` of the object and attaches it to `tracepoint` (its BTF name); returns
/// the attachment and the program's fd (for its `recursion_misses`).
fn attach_program(
    ebpf: &mut Ebpf,
    name: &'static str,
    tracepoint: &str,
    btf: &aya::Btf,
) -> Result<(BtfTracePointLink, ProgramFd), ProbeError> {
    let program: &mut BtfTracePoint = ebpf
        .program_mut(name)
        .ok_or(ProgramError::NotLoaded)
        .and_then(TryInto::try_into)
        .map_err(|source| ProbeError::Program { name, source })?;
    program
        .load(tracepoint, btf)
        .and_then(|()| program.attach())
        .and_then(|id| program.take_link(id))
        .and_then(|link| {
            let fd = program.fd()?.try_clone()?;
            Ok((link, fd))
        })
        .map_err(|source| match source {
            ProgramError::LoadError { verifier_log, .. } => ProbeError::Refused {
                name,
                reason: verdict(&verifier_log.to_string()),
            },
            source => ProbeError::Program { name, source },
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_come_from_the_release() {
        assert_eq!(kernel_version("6.1.0-47-cloud-amd64\n"), Some((6, 1)));
        assert_eq!(kernel_version("5.10.0-32-cloud-amd64"), Some((5, 10)));
        assert_eq!(kernel_version("6.18.44-fc-v1045"), Some((6, 18)));
        assert_eq!(kernel_version("garbage"), None);
        assert!(kernel_version("5.10.0").is_some_and(|v| v < MIN_KERNEL));
        assert!(kernel_version("5.12.0").is_some_and(|v| v >= MIN_KERNEL));
    }

    #[test]
    fn a_seccomp_filter_is_mode_2_in_the_status() {
        assert!(seccomp_filtered(
            "Name:\tx\nSeccomp:\t2\nSeccomp_filters:\t1\n"
        ));
        assert!(!seccomp_filtered("Name:\tx\nSeccomp:\t0\n"));
        assert!(!seccomp_filtered("Name:\tx\n"));
    }

    #[test]
    fn eperm_anywhere_in_the_causes_is_a_refusal() {
        let refused = ProbeError::Map {
            name: "COUNTERS",
            source: MapError::CreateError {
                name: "COUNTERS".into(),
                io_error: std::io::Error::from_raw_os_error(libc::EPERM),
            },
        };
        assert!(refused_by_permission(&refused));
        let other = ProbeError::Map {
            name: "COUNTERS",
            source: MapError::CreateError {
                name: "COUNTERS".into(),
                io_error: std::io::Error::from_raw_os_error(libc::ENOMEM),
            },
        };
        assert!(!refused_by_permission(&other));
    }

    #[test]
    fn the_verdict_is_the_last_line_that_is_not_a_statistic() {
        let log = "func#0 @0\n0: R1=ctx() R10=fp0\n; insn\ninvalid read from stack R10 off=-208 size=8\n\
                   processed 1234 insns (limit 1000000) max_states_per_insn 4\n";
        assert_eq!(verdict(log), "invalid read from stack R10 off=-208 size=8");
        assert_eq!(verdict(""), "no log");
    }
}
