//! Raw command-line flags, as the user typed them. [`crate::config::Config`] validates them.

use std::{path::Path, time::Duration};

use agent_common::decode::TcpState;
use clap::{ArgGroup, Parser};

use crate::{
    cgroup::{self, CgroupRef},
    config::PortList,
};

/// The examples `--help` ends with, one `command  # what it does` a line after the heading; the
/// man page's EXAMPLES section is made from them too.
pub const EXAMPLES: &str = "\
examples:
    tcpstates           # trace all TCP state changes
    tcpstates -t        # include timestamp column
    tcpstates -T        # include time column (HH:MM:SS)
    tcpstates -w        # wider columns (fit IPv6)
    tcpstates -stT      # csv output, with times & timestamps
    tcpstates -Y        # log events to the systemd journal
    tcpstates -L 80     # only trace local port 80
    tcpstates -L 80,81  # only trace local ports 80 and 81
    tcpstates -D 80     # only trace remote port 80
    tcpstates -4        # trace IPv4 family only
    tcpstates -6        # trace IPv6 family only
    tcpstates -x        # add the owner's PID, COMM, UID and the socket's NETNS, CGROUP
    tcpstates --pid 181 # only sockets owned by process 181
    tcpstates --cgroup /sys/fs/cgroup/system.slice/nginx.service
    tcpstates --netns /run/netns/blue   # only sockets in that network namespace
    tcpstates --json    # one JSON object per line, for scripts
    tcpstates --otlp -q # export sessions as traces to $OTEL_EXPORTER_OTLP_ENDPOINT only
    tcpstates --otlp --metrics -q   # traces and metrics
    tcpstates --metrics -q          # metrics only
    OTEL_TRACES_SAMPLER=always_off tcpstates --otlp --keep-errors -q   # only failed sessions
    tcpstates --life    # one line per closed session, as tcplife (also: invoked as tcplife)";

/// What `--version` prints after the name: the crate's version and the commit it was built from
/// (`unknown` when not built from a git checkout; see build.rs).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("TCPSTATES_COMMIT"),
    ")"
);

/// Trace TCP session state changes and durations.
#[derive(Debug, Parser)]
#[command(
    name = "tcpstates",
    version = VERSION,
    about = "Trace TCP session state changes and durations",
    after_help = EXAMPLES,
    group(ArgGroup::new("family").args(["ipv4", "ipv6"])),
    group(ArgGroup::new("format").args(["csv", "json"])),
)]
pub struct Cli {
    /// Include time column on output (HH:MM:SS).
    #[arg(short = 'T', long = "time")]
    pub time: bool,
    /// Include timestamp on output (seconds since the first event).
    #[arg(short = 't', long = "timestamp")]
    pub timestamp: bool,
    /// Wide column output (fits IPv6 addresses).
    #[arg(short = 'w', long = "wide")]
    pub wide: bool,
    /// Comma separated values output.
    #[arg(short = 's', long = "csv")]
    pub csv: bool,
    /// Comma-separated list of local ports to trace (filtered in-kernel).
    #[arg(short = 'L', long = "localport", value_name = "PORTS")]
    pub local_ports: Option<PortList>,
    /// Comma-separated list of remote ports to trace (filtered in-kernel).
    #[arg(short = 'D', long = "remoteport", value_name = "PORTS")]
    pub remote_ports: Option<PortList>,
    /// Log session state changes to the systemd journal.
    #[arg(short = 'Y', long = "journal")]
    pub journal: bool,
    /// Trace IPv4 family only.
    #[arg(short = '4', long = "ipv4")]
    pub ipv4: bool,
    /// Trace IPv6 family only.
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,
    /// Extended columns: the owner's PID and COMM (the process that connected or listened),
    /// the socket's UID, network namespace and cgroup.
    #[arg(short = 'x', long = "extended")]
    pub extended: bool,
    /// Only sockets owned by this process (filtered in-kernel; sockets older than the agent
    /// have no known owner and are left out).
    #[arg(long = "pid", value_name = "PID", value_parser = clap::value_parser!(u32).range(1..))]
    pub owner_pid: Option<u32>,
    /// Only sockets of this cgroup (v2) or of cgroups below it, e.g.
    /// /sys/fs/cgroup/system.slice/nginx.service (filtered in-kernel).
    #[arg(long, value_name = "PATH", value_parser = parse_cgroup)]
    pub cgroup: Option<CgroupRef>,
    /// Only sockets in this network namespace, e.g. /proc/PID/ns/net or /run/netns/NAME
    /// (filtered in-kernel).
    #[arg(long, value_name = "PATH", value_parser = parse_netns)]
    pub netns: Option<u32>,
    /// One JSON object per line (all fields, kernel timestamp in ns) instead of columns.
    #[arg(long)]
    pub json: bool,
    /// Export every TCP session as an OpenTelemetry trace over OTLP, to ENDPOINT or to
    /// OTEL_EXPORTER_OTLP_ENDPOINT (default http://localhost:4317 for grpc, :4318 for http);
    /// OTEL_EXPORTER_OTLP_PROTOCOL picks grpc (default), http/protobuf or http/json.
    #[arg(long, value_name = "ENDPOINT", num_args = 0..=1, default_missing_value = "")]
    pub otlp: Option<String>,
    /// Export OpenTelemetry metrics of every session over OTLP (handshake and connection
    /// durations, successes and failures, time in each state, sockets by state, the agent's
    /// health), to ENDPOINT, else to --otlp's, else to OTEL_EXPORTER_OTLP_METRICS_ENDPOINT or
    /// OTEL_EXPORTER_OTLP_ENDPOINT; every OTEL_METRIC_EXPORT_INTERVAL ms (default 60000).
    #[arg(long, value_name = "ENDPOINT", num_args = 0..=1, default_missing_value = "")]
    pub metrics: Option<String>,
    /// With --metrics: the connection metrics also carry the peer's address (one series per
    /// peer: mind the cardinality).
    #[arg(long, requires = "metrics")]
    pub metrics_peer_address: bool,
    /// One line per closed session instead of one per state change, as bcc's tcplife prints
    /// them (PID COMM LADDR LPORT RADDR RPORT TX_KB RX_KB MS; -x adds ERROR and RETRANS);
    /// the default when invoked as `tcplife`.
    #[arg(long, conflicts_with_all = ["quiet", "journal"])]
    pub life: bool,
    /// Print no state changes on standard output (e.g. when only exporting with --otlp).
    #[arg(short = 'q', long, conflicts_with_all = ["csv", "json", "wide", "time", "timestamp", "extended"])]
    pub quiet: bool,
    /// With --otlp: most sessions tracked at once; beyond it the one idle longest is ended
    /// early (counted).
    #[arg(long, value_name = "N", default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_sessions: u32,
    /// With --otlp: also trace tcpstates' own connections (its exports to the collector), which
    /// are left out otherwise.
    #[arg(long)]
    pub trace_self: bool,
    /// With --otlp: export the sessions the sampler dropped that failed (refused, timed out,
    /// unreachable, reset…) or were evicted.
    #[arg(long, requires = "otlp")]
    pub keep_errors: bool,
    /// With --otlp: export the sessions the sampler dropped that spent longer than DURATION in
    /// STATE, e.g. SYN_SENT:100ms or ESTABLISHED:30s (repeatable).
    #[arg(long, value_name = "STATE:DURATION", requires = "otlp", value_parser = parse_keep_slower)]
    pub keep_slower: Vec<KeepSlower>,
    /// With --otlp: export the sessions the sampler dropped that have one of these ports at
    /// either end.
    #[arg(long, value_name = "PORTS", requires = "otlp")]
    pub keep_port: Option<PortList>,
    /// With --otlp: most traces (sessions) exported a second, in bursts of as many; the
    /// sessions beyond are refused whole (counted).
    #[arg(long, value_name = "N", requires = "otlp", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_traces_per_second: Option<u32>,
    /// With --otlp: most spans held for the exporter (waiting, being sent, or kept to be sent
    /// again until the collector acknowledges them); beyond it spans are dropped (counted).
    #[arg(long, value_name = "N", default_value_t = 131_072, value_parser = clap::value_parser!(u32).range(1..))]
    pub otlp_queue: u32,
    /// Size of the kernel-to-user ring buffer, in MiB (a power of two).
    #[arg(long, value_name = "MIB", default_value_t = 8, value_parser = parse_ring_mib)]
    pub ring_buffer_mib: u32,
}

/// `--keep-slower STATE:DURATION`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeepSlower {
    /// The state.
    pub state: TcpState,
    /// The time in it beyond which a session is kept.
    pub duration: Duration,
}

fn parse_keep_slower(arg: &str) -> Result<KeepSlower, String> {
    let (state, duration) = arg
        .split_once(':')
        .ok_or_else(|| format!("'{arg}' is not STATE:DURATION, e.g. SYN_SENT:100ms"))?;
    let state = (0..=u32::from(u8::MAX))
        .map(TcpState)
        .find(|known| known.name() == Some(state))
        .ok_or_else(|| format!("'{state}' is no TCP state (SYN_SENT, ESTABLISHED, …)"))?;
    let duration = humantime::parse_duration(duration)
        .map_err(|err| format!("'{duration}' is no duration (100ms, 30s): {err}"))?;
    Ok(KeepSlower { state, duration })
}

fn parse_cgroup(path: &str) -> Result<CgroupRef, String> {
    cgroup::cgroup_of(Path::new(path)).map_err(|err| err.to_string())
}

fn parse_netns(path: &str) -> Result<u32, String> {
    let inode = cgroup::netns_inode_of(Path::new(path)).map_err(|err| err.to_string())?;
    u32::try_from(inode).map_err(|_| format!("{path}: inode {inode} is not a namespace inode"))
}

fn parse_ring_mib(arg: &str) -> Result<u32, String> {
    let mib: u32 = arg
        .parse()
        .map_err(|_| format!("'{arg}' is not a whole number of MiB"))?;
    if mib.is_power_of_two() && mib <= 1024 {
        Ok(mib)
    } else {
        Err(format!("{mib} is not a power of two between 1 and 1024"))
    }
}
