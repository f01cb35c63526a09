//! The validated configuration a run is made of, built from [`crate::cli::Cli`].

use std::{collections::BTreeSet, fmt, num::NonZeroUsize, str::FromStr};

use agent_common::{
    decode::StateChange,
    state::{AF_INET, AF_INET6},
};
use opentelemetry_sdk::metrics::Temporality;

use crate::{
    cgroup::CgroupRef,
    cli::Cli,
    sink::otlp::{
        sampling::{KeepRules, SamplerChoice},
        settings::{ExportSettings, SettingsError, Signal},
    },
};

/// A non-empty set of TCP ports, parsed from a comma-separated list such as `80,443`.
///
/// Any number of distinct ports is accepted (at most all 65,536); duplicates are merged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortList(BTreeSet<u16>);

impl PortList {
    /// Whether `port` is one of them.
    pub fn contains(&self, port: u16) -> bool {
        self.0.contains(&port)
    }

    /// The ports, in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        self.0.iter().copied()
    }
}

impl FromStr for PortList {
    type Err = String;

    fn from_str(list: &str) -> Result<Self, Self::Err> {
        let ports = list
            .split(',')
            .map(|item| {
                let item = item.trim();
                item.parse::<u16>()
                    .map_err(|_| format!("'{item}' is not a port number (0-65535)"))
            })
            .collect::<Result<BTreeSet<_>, _>>()?;
        Ok(Self(ports))
    }
}

impl fmt::Display for PortList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for port in self.iter() {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{port}")?;
        }
        Ok(())
    }
}

/// How each state change is written to standard output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Nothing (`-q`).
    Quiet,
    /// bcc's columns (`-w` for the wide layout).
    Table,
    /// Comma-separated values (`-s`).
    Csv,
    /// One JSON object per line (`--json`).
    Json,
}

/// Extra leading time columns of the table and CSV formats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeColumns {
    /// `TIME`: wall-clock HH:MM:SS of the change (`-T`).
    pub clock: bool,
    /// `TIME(s)`: seconds since the first event (`-t`).
    pub elapsed: bool,
}

/// Everything a run needs, validated.
#[derive(Clone, Debug)]
pub struct Config {
    /// Output format on standard output.
    pub format: Format,
    /// Wide table layout with the IP column and full IPv6 addresses.
    pub wide: bool,
    /// Extended table and CSV layouts with the owner and the socket's location (`-x`).
    pub extended: bool,
    /// Leading time columns.
    pub time_columns: TimeColumns,
    /// Also log each change to the systemd journal.
    pub journal: bool,
    /// Only this address family (`AF_INET`/`AF_INET6`), or both.
    pub family: Option<u16>,
    /// Only these local ports.
    pub local_ports: Option<PortList>,
    /// Only these remote ports.
    pub remote_ports: Option<PortList>,
    /// Only sockets owned by this process.
    pub owner_pid: Option<u32>,
    /// Only sockets in the network namespace with this inode number.
    pub netns: Option<u32>,
    /// Only sockets of this cgroup or of its descendants.
    pub cgroup: Option<CgroupRef>,
    /// Ring buffer size in bytes.
    pub ring_buffer_bytes: u32,
    /// `--life`: the output format prints one line per closed session, not per state change.
    pub life: bool,
    /// Most sessions tracked at once (with `--otlp` or `--life`).
    pub max_sessions: NonZeroUsize,
    /// OpenTelemetry export, with `--otlp`.
    pub otlp: Option<OtlpConfig>,
    /// OpenTelemetry metrics, with `--metrics`.
    pub metrics: Option<MetricsConfig>,
}

/// `--metrics` settings.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricsConfig {
    /// Transport and endpoint.
    pub export: ExportSettings,
    /// Delta or cumulative (`OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`).
    pub temporality: Temporality,
    /// Whether the connection metrics carry the peer's address.
    pub peer_address: bool,
}

/// The variable naming the metrics' temporality.
const TEMPORALITY_VARIABLE: &str = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE";
/// The variable naming the metrics' export interval, in milliseconds (read by the SDK).
const INTERVAL_VARIABLE: &str = "OTEL_METRIC_EXPORT_INTERVAL";

impl MetricsConfig {
    /// `--metrics [ENDPOINT]` with `otlp_endpoint` (`--otlp`'s, used when `endpoint` is
    /// empty) and the environment; refuses what the SDK would silently ignore.
    fn resolve(
        endpoint: &str,
        otlp_endpoint: Option<&str>,
        peer_address: bool,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, SettingsError> {
        let endpoint = Some(endpoint)
            .filter(|endpoint| !endpoint.is_empty())
            .or(otlp_endpoint.filter(|endpoint| !endpoint.is_empty()));
        let temporality = match var(TEMPORALITY_VARIABLE) {
            None => Temporality::Cumulative,
            Some(value) => match value.trim().to_ascii_lowercase().as_str() {
                "cumulative" => Temporality::Cumulative,
                "delta" => Temporality::Delta,
                "lowmemory" => Temporality::LowMemory,
                _ => {
                    return Err(SettingsError::Variable {
                        variable: TEMPORALITY_VARIABLE,
                        value,
                        expected: "the temporality must be cumulative, delta or lowmemory",
                    });
                }
            },
        };
        if let Some(value) = var(INTERVAL_VARIABLE)
            && !value.trim().parse::<u64>().is_ok_and(|ms| ms > 0)
        {
            return Err(SettingsError::Variable {
                variable: INTERVAL_VARIABLE,
                value,
                expected: "the interval must be a positive number of milliseconds",
            });
        }
        Ok(Self {
            export: ExportSettings::resolve(Signal::Metrics, endpoint, &var)?,
            temporality,
            peer_address,
        })
    }
}

/// `--otlp` settings.
#[derive(Clone, Debug, PartialEq)]
pub struct OtlpConfig {
    /// Transport and endpoint.
    pub export: ExportSettings,
    /// Most spans waiting for the exporter.
    pub queue_capacity: usize,
    /// Whether tcpstates' own connections are traced too.
    pub trace_self: bool,
    /// Which sessions' traces are exported: the sampler (`OTEL_TRACES_SAMPLER`).
    pub sampler: SamplerChoice,
    /// The rules that keep a session the sampler dropped.
    pub keep: KeepRules,
    /// Most traces exported a second.
    pub max_traces_per_second: Option<u32>,
}

impl Config {
    /// The configuration `cli` asks for; `var` reads environment variables (`OTEL_*`).
    pub fn new(cli: Cli, var: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let otlp = cli
            .otlp
            .as_deref()
            .map(|endpoint| {
                let endpoint = Some(endpoint).filter(|endpoint| !endpoint.is_empty());
                Ok::<_, SettingsError>(OtlpConfig {
                    export: ExportSettings::resolve(Signal::Traces, endpoint, &var)?,
                    queue_capacity: cli.otlp_queue as usize,
                    trace_self: cli.trace_self,
                    sampler: SamplerChoice::from_env(&var)?,
                    keep: KeepRules {
                        errors: cli.keep_errors,
                        slower: cli
                            .keep_slower
                            .iter()
                            .map(|k| (k.state, k.duration))
                            .collect(),
                        ports: cli.keep_port.clone(),
                    },
                    max_traces_per_second: cli.max_traces_per_second,
                })
            })
            .transpose()?;
        let metrics = cli
            .metrics
            .as_deref()
            .map(|endpoint| {
                MetricsConfig::resolve(
                    endpoint,
                    cli.otlp.as_deref(),
                    cli.metrics_peer_address,
                    &var,
                )
            })
            .transpose()?;
        let format = if cli.quiet {
            Format::Quiet
        } else if cli.json {
            Format::Json
        } else if cli.csv {
            Format::Csv
        } else {
            Format::Table
        };
        let family = match (cli.ipv4, cli.ipv6) {
            (true, _) => Some(AF_INET),
            (_, true) => Some(AF_INET6),
            _ => None,
        };
        Ok(Self {
            format,
            wide: cli.wide,
            extended: cli.extended,
            time_columns: TimeColumns {
                clock: cli.time,
                elapsed: cli.timestamp,
            },
            journal: cli.journal,
            family,
            local_ports: cli.local_ports,
            remote_ports: cli.remote_ports,
            owner_pid: cli.owner_pid,
            netns: cli.netns,
            cgroup: cli.cgroup,
            ring_buffer_bytes: cli.ring_buffer_mib << 20,
            life: cli.life,
            max_sessions: NonZeroUsize::new(cli.max_sessions as usize).unwrap_or(NonZeroUsize::MIN),
            otlp,
            metrics,
        })
    }

    /// Whether the filters keep `socket`, as the kernel program applies them to transitions:
    /// for sockets found open at the start, which no program filtered. `cgroup_path` gives a
    /// cgroup's path from its id (for the cgroup filter, which keeps descendants too).
    pub fn keeps(
        &self,
        socket: &StateChange,
        mut cgroup_path: impl FnMut(u64) -> Option<String>,
    ) -> bool {
        let family = if socket.local_addr.is_ipv4() {
            AF_INET
        } else {
            AF_INET6
        };
        let in_ports =
            |ports: &Option<PortList>, port: u16| ports.as_ref().is_none_or(|p| p.contains(port));
        let in_cgroup = |filter: &CgroupRef| {
            filter.id == socket.cgroup_id
                || match (cgroup_path(filter.id), cgroup_path(socket.cgroup_id)) {
                    (Some(filter), Some(path)) => path
                        .strip_prefix(&filter)
                        .is_some_and(|rest| rest.starts_with('/')),
                    _ => false,
                }
        };
        self.family.is_none_or(|wanted| wanted == family)
            && in_ports(&self.local_ports, socket.local_port)
            && in_ports(&self.remote_ports, socket.remote_port)
            && self
                .owner_pid
                .is_none_or(|pid| socket.owner.is_some_and(|owner| owner.pid == pid))
            && self.netns.is_none_or(|netns| netns == socket.netns)
            && self.cgroup.as_ref().is_none_or(in_cgroup)
    }

    /// Whether an output shows each transition with its socket's owner and time in the
    /// previous state (text, CSV, JSON, journal), rather than only sessions (OTLP).
    pub fn prints_transitions(&self) -> bool {
        (self.format != Format::Quiet && !self.life) || self.journal
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("tcpstates").chain(args.iter().copied()))?;
        Ok(Config::new(cli, |_| None).expect("no OTEL_* variables, so no settings error"))
    }

    #[test]
    fn port_lists_take_any_number_of_ports() {
        let all: Vec<String> = (0..=65_535u32).map(|p| p.to_string()).collect();
        let list: PortList = all.join(",").parse().expect("every port parses");
        assert_eq!(list.iter().count(), 65_536);
        let list: PortList = "81, 80,81".parse().expect("spaces and duplicates are fine");
        assert_eq!(list.to_string(), "80,81");
    }

    #[test]
    fn bad_port_lists_are_rejected_with_the_culprit() {
        for (list, culprit) in [
            ("80,x", "'x'"),
            ("70000", "'70000'"),
            ("", "''"),
            ("80,", "''"),
            ("-1", "'-1'"),
        ] {
            let err = list.parse::<PortList>().expect_err(list);
            assert!(err.contains(culprit), "{list}: {err}");
        }
    }

    #[test]
    fn flags_map_to_config() {
        let config = parse(&["-stT", "-L", "80,81", "-D", "443", "-6"]).expect("valid flags");
        assert_eq!(config.format, Format::Csv);
        assert_eq!(
            config.time_columns,
            TimeColumns {
                clock: true,
                elapsed: true
            }
        );
        assert_eq!(config.family, Some(AF_INET6));
        assert_eq!(
            config.local_ports.map(|p| p.to_string()).as_deref(),
            Some("80,81")
        );
        assert_eq!(
            config.remote_ports.map(|p| p.to_string()).as_deref(),
            Some("443")
        );
        assert_eq!(config.ring_buffer_bytes, 8 << 20);
    }

    #[test]
    fn only_text_csv_json_and_the_journal_print_each_transition() {
        for (args, prints) in [
            (&[][..], true),
            (&["-s"][..], true),
            (&["-q", "-Y"][..], true),
            (&["--otlp", "--json"][..], true),
            (&["--otlp", "-q"][..], false),
            (&["--life"][..], false),
            (&["--life", "--json"][..], false),
        ] {
            let config = parse(args).expect("valid flags");
            assert_eq!(config.prints_transitions(), prints, "{args:?}");
        }
    }

    #[test]
    fn otlp_takes_an_optional_endpoint() {
        let bare = parse(&["--otlp", "-q"])
            .expect("valid")
            .otlp
            .expect("--otlp given");
        assert_eq!(bare.export.endpoint, None);
        assert_eq!(
            parse(&["--otlp", "-q"]).expect("valid").max_sessions.get(),
            65_536
        );
        let given = parse(&["--otlp", "http://127.0.0.1:4317"])
            .expect("valid")
            .otlp
            .expect("--otlp given");
        assert_eq!(
            given.export.endpoint.as_deref(),
            Some("http://127.0.0.1:4317")
        );
        assert_eq!(parse(&[]).expect("valid").otlp, None);
        assert_eq!(parse(&["-q"]).expect("valid").format, Format::Quiet);
    }

    #[test]
    fn owner_and_location_filters_resolve_their_paths() {
        let config = parse(&["-x", "--pid", "181", "--netns", "/proc/self/ns/net"]).expect("valid");
        assert!(config.extended);
        assert_eq!(config.owner_pid, Some(181));
        let inode = std::fs::metadata("/proc/self/ns/net")
            .map(|meta| std::os::unix::fs::MetadataExt::ino(&meta))
            .expect("stat");
        assert_eq!(config.netns.map(u64::from), Some(inode));
    }

    #[test]
    fn conflicting_flags_are_usage_errors() {
        for args in [
            &["-4", "-6"][..],
            &["-s", "--json"],
            &["-L", "80,x"],
            &["--ring-buffer-mib", "3"],
            &["-z"],
            &["-q", "-s"],
            &["-q", "-x"],
            &["--pid", "0"],
            &["--pid", "x"],
            &["--cgroup", "/no/such/cgroup"],
            &["--cgroup", "/etc"],
            &["--netns", "/proc/self/ns/uts"],
            &["--netns", "/no/such/netns"],
            &["--max-sessions", "0"],
        ] {
            let err = parse(args).expect_err("must be rejected");
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }

    /// The configuration `args` and the variables `vars` ask for.
    fn with_vars(args: &[&str], vars: &[(&str, &str)]) -> Result<Config, SettingsError> {
        let cli = Cli::try_parse_from(std::iter::once("tcpstates").chain(args.iter().copied()))
            .expect("valid flags");
        Config::new(cli, |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn metrics_go_where_asked_else_where_the_traces_go() {
        let metrics = |args: &[&str], vars: &[(&str, &str)]| {
            with_vars(args, vars)
                .expect("valid")
                .metrics
                .expect("--metrics given")
        };
        let alone = metrics(&["--metrics", "-q"], &[]);
        assert_eq!(alone.export.endpoint, None, "the variables, or the default");
        assert_eq!(alone.temporality, Temporality::Cumulative);
        assert!(!alone.peer_address);
        let with_traces = metrics(&["--otlp", "http://c:4317", "--metrics"], &[]);
        assert_eq!(
            with_traces.export.endpoint.as_deref(),
            Some("http://c:4317")
        );
        let own = metrics(
            &["--otlp", "http://c:4317", "--metrics", "http://m:4317"],
            &[],
        );
        assert_eq!(own.export.endpoint.as_deref(), Some("http://m:4317"));
        // Over HTTP the base URL gets the metrics' path; the metrics' own variable wins.
        let http = metrics(
            &[
                "--otlp",
                "http://c:4318",
                "--metrics",
                "--metrics-peer-address",
            ],
            &[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf"),
                ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "Delta"),
            ],
        );
        assert_eq!(
            http.export.endpoint.as_deref(),
            Some("http://c:4318/v1/metrics")
        );
        assert_eq!(http.temporality, Temporality::Delta);
        assert!(http.peer_address);
        assert_eq!(with_vars(&["-q"], &[]).expect("valid").metrics, None);
    }

    #[test]
    fn metric_settings_the_sdk_would_ignore_are_refused_naming_the_variable() {
        for (variable, value) in [
            (
                "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
                "weekly",
            ),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1s"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "0"),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "carrier-pigeon"),
        ] {
            let err =
                with_vars(&["--metrics", "-q"], &[(variable, value)]).expect_err("must be refused");
            assert!(
                err.to_string()
                    .starts_with(&format!("{variable}={value}: ")),
                "{err}"
            );
        }
        // Traces alone do not read the metrics' variables.
        with_vars(
            &["--otlp", "-q"],
            &[(
                "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
                "weekly",
            )],
        )
        .expect("not read");
    }

    #[test]
    fn sockets_found_at_start_are_filtered_as_transitions_are() {
        use agent_common::decode::{Comm, Owner, TcpState};
        let socket = StateChange {
            ts_ns: 1,
            skaddr: 1,
            cookie: 0,
            owner: Some(Owner {
                pid: 181,
                comm: Comm::new([b'x'; agent_common::event::COMM_LEN]),
            }),
            uid: 0,
            netns: 7,
            cgroup_id: 30,
            span_ns: 0,
            pid: 181,
            comm: Comm::new([b'x'; agent_common::event::COMM_LEN]),
            local_addr: std::net::Ipv4Addr::LOCALHOST.into(),
            local_port: 80,
            remote_addr: std::net::Ipv4Addr::LOCALHOST.into(),
            remote_port: 40_000,
            oldstate: TcpState(agent_common::state::ESTABLISHED),
            newstate: TcpState(agent_common::state::ESTABLISHED),
            reset_received: false,
            close: None,
        };
        // Cgroup 30 is /a/b, below 20 (/a); 40 is /ab, not below it.
        let paths = |id: u64| match id {
            20 => Some("/a".to_owned()),
            30 => Some("/a/b".to_owned()),
            40 => Some("/ab".to_owned()),
            _ => None,
        };
        let keeps = |args: &[&str], change: &StateChange, cgroup: Option<u64>| {
            let mut config = parse(args).expect("valid");
            config.cgroup = cgroup.map(|id| CgroupRef { id, level: 1 });
            config.keeps(change, paths)
        };
        assert!(keeps(&[], &socket, None));
        assert!(keeps(
            &["-4", "-L", "80", "-D", "40000", "--pid", "181"],
            &socket,
            None
        ));
        assert!(!keeps(&["-6"], &socket, None));
        assert!(!keeps(&["-L", "81"], &socket, None));
        assert!(!keeps(&["-D", "80"], &socket, None));
        assert!(!keeps(&["--pid", "182"], &socket, None));
        assert!(keeps(&[], &socket, Some(20)), "a descendant");
        assert!(keeps(&[], &socket, Some(30)), "the cgroup itself");
        let elsewhere = StateChange {
            cgroup_id: 40,
            ..socket
        };
        assert!(!keeps(&[], &elsewhere, Some(20)), "a prefix is no ancestor");
    }
}
