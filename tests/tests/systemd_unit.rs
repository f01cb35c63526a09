//! The systemd unit (`deploy/systemd/tcpstates.service`) and its settings
//! (`deploy/systemd/tcpstates.env`): `systemd-analyze verify` finds nothing to say; the unit asks
//! for exactly what the agent needs — CAP_BPF and CAP_PERFMON, ambient and bounding, as a
//! non-root user without new privileges — and nothing that would break it; its
//! `systemd-analyze security` exposure is no worse than the one recorded in
//! `deploy/systemd/README.md`; and the agent, run as the unit runs it (an unprivileged user with
//! only those capabilities, the settings file's flags and variables), attaches, exports a
//! connection's trace to the collector the settings name, and stops cleanly on SIGTERM within
//! the unit's `TimeoutStopSec`.
//!
//! systemd is not PID 1 on the CI machine, so the unit itself cannot be started: its sandboxing
//! is checked by reading it, and its seccomp filter against every system call the agent makes
//! in that run (recorded with strace, the filter expanded by `systemd-analyze syscall-filter`).
//! Ports: block 20xxx (20501).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use integration_tests::agent::{self, Agent};
use integration_tests::netns::Netns;
use integration_tests::otlp::{Ports, Receiver, SpanKind};
use integration_tests::traffic::{self, Closer};

/// The path the unit runs the agent from (the tarball of `cargo xtask dist` unpacked into
/// `/usr/local`).
const INSTALLED_BINARY: &str = "/usr/local/bin/tcpstates";

/// The exposure `systemd-analyze security` gave the unit when it was last reviewed (see
/// deploy/systemd/README.md): a change that raises it must be deliberate.
const RECORDED_EXPOSURE: f64 = 1.6;

/// The capabilities the agent needs, in systemd's spelling.
const NEEDED_CAPABILITIES: [&str; 2] = ["CAP_BPF", "CAP_PERFMON"];

fn deploy_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/systemd")
        .join(name)
}

fn unit_text() -> String {
    let path = deploy_file("tcpstates.service");
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The `[Service]` settings of a unit: each key with its assignments in order.
fn service_settings(unit: &str) -> BTreeMap<String, Vec<String>> {
    let mut settings: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut in_service = false;
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if line.starts_with('[') {
            in_service = line == "[Service]";
            continue;
        }
        assert!(!line.ends_with('\\'), "no continuation lines: {line}");
        if in_service {
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("not a setting: {line}"));
            settings
                .entry(key.trim().to_owned())
                .or_default()
                .push(value.trim().to_owned());
        }
    }
    settings
}

/// The single value of `key`; panics unless it is set exactly once.
fn single<'a>(settings: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    match settings.get(key).map(Vec::as_slice) {
        Some([value]) => value,
        other => panic!("{key} should be set once, is {other:?}"),
    }
}

/// A capability set as systemd reads its assignments: lists accumulate, an empty one resets, a
/// leading `~` inverts (which the unit must not use: it would grant everything else).
fn capability_set(settings: &BTreeMap<String, Vec<String>>, key: &str) -> BTreeSet<String> {
    let mut set = BTreeSet::new();
    for value in settings.get(key).into_iter().flatten() {
        assert!(
            !value.starts_with('~'),
            "{key}={value}: a deny list grants the rest"
        );
        if value.is_empty() {
            set.clear();
        }
        set.extend(value.split_whitespace().map(str::to_owned));
    }
    set
}

/// The `VAR=value` lines of the settings file (quotes around a value removed).
fn env_file() -> Vec<(String, String)> {
    let path = deploy_file("tcpstates.env");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with(['#', ';']))
        .map(|line| {
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("not VAR=value: {line}"));
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            (key.trim().to_owned(), value.to_owned())
        })
        .collect()
}

/// A directory of this test's own, world-readable, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("tcpstates-systemd-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create a temporary directory");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod 755");
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A copy of the unit in `dir` whose ExecStart runs the built agent (verification needs the
/// command to exist; the unit names where the tarball installs it).
fn unit_copy_running_the_built_agent(dir: &Path) -> PathBuf {
    let unit = unit_text();
    let installed = format!("ExecStart={INSTALLED_BINARY} ");
    assert_eq!(
        unit.matches(&installed).count(),
        1,
        "the unit runs {INSTALLED_BINARY} once"
    );
    let built = format!("ExecStart={} ", agent::binary().display());
    let path = dir.join("tcpstates.service");
    fs::write(&path, unit.replace(&installed, &built)).expect("write the unit's copy");
    path
}

/// Runs `systemd-analyze ARGS`, returning (exit code, stdout and stderr together).
fn systemd_analyze(args: &[&str], unit: &Path) -> (Option<i32>, String) {
    let output = Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .output()
        .expect("run systemd-analyze (Debian package systemd)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

#[test]
fn unit_verifies_without_a_word() {
    let dir = TempDir::new("verify");
    let unit = unit_copy_running_the_built_agent(dir.path());
    // The man page the unit's Documentation= names is installed by the tarball, not here;
    // `cargo xtask dist` checks it is in the tarball.
    let (code, output) = systemd_analyze(&["verify", "--man=no"], &unit);
    assert_eq!(code, Some(0), "systemd-analyze verify:\n{output}");
    assert_eq!(output.trim(), "", "systemd-analyze verify says something");
}

#[test]
fn unit_asks_for_exactly_bpf_and_perfmon_as_a_non_root_user() {
    let settings = service_settings(&unit_text());
    let needed: BTreeSet<String> = NEEDED_CAPABILITIES.map(str::to_owned).into();
    assert_eq!(capability_set(&settings, "AmbientCapabilities"), needed);
    assert_eq!(capability_set(&settings, "CapabilityBoundingSet"), needed);
    let dynamic = settings
        .get("DynamicUser")
        .is_some_and(|values| values.last().is_some_and(|v| v == "yes"));
    let user = settings
        .get("User")
        .and_then(|values| values.last())
        .filter(|user| !user.is_empty());
    assert!(
        dynamic || user.is_some_and(|user| user != "root" && user != "0"),
        "the unit must run as a non-root user (DynamicUser=yes or User=): {settings:#?}"
    );
    assert_eq!(single(&settings, "NoNewPrivileges"), "yes");
    // `+` and `!` run the command with full privileges, past every line above.
    let exec_start = single(&settings, "ExecStart");
    assert!(
        exec_start.starts_with(&format!("{INSTALLED_BINARY} ")),
        "ExecStart={exec_start}"
    );
    assert!(
        !settings.contains_key("ExecStartPre") && !settings.contains_key("ExecStartPost"),
        "no other command runs with the unit's credentials"
    );
    // Nothing more than the agent needs.
    for (key, reason) in [
        (
            "LimitMEMLOCK",
            "BPF memory is charged to the memory cgroup (Linux >= 5.11)",
        ),
        ("SupplementaryGroups", "no group gives the agent anything"),
        ("SecureBits", "ambient capabilities need no securebits"),
    ] {
        assert!(!settings.contains_key(key), "{key} is not needed: {reason}");
    }
    // Nothing that would stop the agent from working.
    for (key, breaking, reason) in [
        (
            "PrivateUsers",
            "yes",
            "capabilities in a user namespace of its own do not reach the kernel's BPF",
        ),
        ("PrivateNetwork", "yes", "the collector is on the network"),
        (
            "ProtectProc",
            "invisible",
            "owners' command lines are read from /proc/PID",
        ),
        (
            "ProcSubset",
            "pid",
            "trace ids need /proc/sys/kernel/random/boot_id",
        ),
    ] {
        assert!(
            settings
                .get(key)
                .is_none_or(|values| values.iter().all(|v| v != breaking)),
            "{key}={breaking} breaks the agent: {reason}"
        );
    }
    // The seccomp filter: an allow list, @system-service plus the one call it lacks (bpf, in
    // @privileged); removals (`~`) only narrow it.
    let filter = settings
        .get("SystemCallFilter")
        .expect("a SystemCallFilter allow list");
    assert!(
        filter.first().is_some_and(|first| !first.starts_with('~')),
        "the first SystemCallFilter= makes it an allow list: {filter:?}"
    );
    let allowed: BTreeSet<&str> = filter
        .iter()
        .filter(|value| !value.starts_with('~'))
        .flat_map(|value| value.split_whitespace())
        .collect();
    assert_eq!(allowed, BTreeSet::from(["@system-service", "bpf"]));
    // IP to the collector; Unix sockets to the journal (-Y) and for user-name lookups.
    let families: BTreeSet<&str> = single(&settings, "RestrictAddressFamilies")
        .split_whitespace()
        .collect();
    assert_eq!(families, BTreeSet::from(["AF_INET", "AF_INET6", "AF_UNIX"]));
}

#[test]
fn security_exposure_is_no_worse_than_recorded() {
    let dir = TempDir::new("security");
    let unit = unit_copy_running_the_built_agent(dir.path());
    let (code, output) = systemd_analyze(&["security", "--offline=yes", "--no-pager"], &unit);
    assert_eq!(code, Some(0), "systemd-analyze security:\n{output}");
    let exposure: f64 = output
        .lines()
        .find_map(|line| line.split_once("Overall exposure level for tcpstates.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure in:\n{output}"));
    assert!(
        exposure <= RECORDED_EXPOSURE,
        "exposure {exposure} is worse than the recorded {RECORDED_EXPOSURE}:\n{output}"
    );
}

/// `30s`, `1min 30s`, `90` (seconds) as systemd reads a time span (the units the unit uses).
fn time_span(text: &str) -> Duration {
    text.split_whitespace()
        .map(|part| {
            let digits = part.trim_end_matches(|c: char| c.is_ascii_alphabetic());
            let number: u64 = digits
                .parse()
                .unwrap_or_else(|_| panic!("not a time span: {text}"));
            match &part[digits.len()..] {
                "" | "s" | "sec" => Duration::from_secs(number),
                "min" | "m" => Duration::from_secs(60 * number),
                "ms" | "msec" => Duration::from_millis(number),
                unit => panic!("time unit {unit} in {text}"),
            }
        })
        .sum()
}

#[test]
fn agent_runs_as_the_unit_runs_it() {
    let settings = service_settings(&unit_text());
    let env = env_file();
    let value = |key: &str| -> &str {
        env.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("the settings file sets no {key}"))
    };
    // The collector the settings name, on its port (a receiver of this test's own).
    let endpoint = value("OTEL_EXPORTER_OTLP_ENDPOINT");
    let port: u16 = endpoint
        .rsplit_once(':')
        .and_then(|(_, port)| port.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("no port in {endpoint}"));
    let receiver = Receiver::start_on(Ports {
        grpc: port,
        http: Ports::free().http,
    });

    let dir = TempDir::new("run");
    let binary = dir.path().join("tcpstates");
    fs::copy(agent::binary(), &binary).expect("copy the agent binary");
    fs::set_permissions(&binary, fs::Permissions::from_mode(0o755)).expect("chmod 755");
    let caps = NEEDED_CAPABILITIES
        .map(|cap| format!("+{}", cap.trim_start_matches("CAP_").to_lowercase()))
        .join(",");
    // Under strace, to check every system call it makes against the unit's seccomp filter
    // (which only systemd as PID 1 could apply).
    let trace = dir.path().join("syscalls");
    let mut command = Command::new("strace");
    command
        .args(["-f", "-qq", "-o"])
        .arg(&trace)
        .args(["--", "setpriv"])
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(format!("--inh-caps=-all,{caps}"))
        .arg(format!("--ambient-caps=-all,{caps}"))
        .arg(format!("--bounding-set=-all,{caps}"))
        .arg("--no-new-privs")
        .arg("--")
        .arg(&binary)
        .args(value("TCPSTATES_ARGS").split_whitespace());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("OTEL_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().map(|(k, v)| (k, v)));
    let agent = Agent::start_command(command);

    let ns = Netns::create();
    let server = "127.0.0.1:20501".parse().expect("address");
    traffic::connect_and_close(&ns, server, Duration::ZERO, Closer::Client);
    let spans = receiver.wait_for(
        |spans| {
            spans.iter().any(|span| {
                span.kind == SpanKind::Client && span.int_attr("network.peer.port") == Some(20501)
            })
        },
        agent::EVENT_TIMEOUT,
    );
    let root = spans
        .iter()
        .find(|span| {
            span.kind == SpanKind::Client && span.int_attr("network.peer.port") == Some(20501)
        })
        .expect("the client's root span");
    assert_eq!(
        root.resource
            .get("service.name")
            .and_then(|name| name.as_str()),
        Some(value("OTEL_SERVICE_NAME")),
        "{root:#?}"
    );
    // The owner (this test, root) is seen by the unprivileged agent, command line included.
    assert_eq!(
        root.int_attr("process.pid"),
        Some(i64::from(std::process::id())),
        "{root:#?}"
    );
    assert!(root.str_attr("process.command_line").is_some(), "{root:#?}");

    // SIGTERM to the agent itself (strace's child), as systemd stops it.
    let stop_timeout = time_span(single(&settings, "TimeoutStopSec"));
    let children = format!("/proc/{0}/task/{0}/children", agent.pid());
    let agent_pid: libc::pid_t = fs::read_to_string(&children)
        .unwrap_or_else(|e| panic!("read {children}: {e}"))
        .split_whitespace()
        .next()
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("strace has no child in {children}"));
    // SAFETY: kill(2) with a pid read just now from our own child's children; it exits only
    // after this signal.
    let rc = unsafe { libc::kill(agent_pid, libc::SIGTERM) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    let finished = agent.wait_exit(stop_timeout);
    assert_eq!(finished.code(), 0, "{finished:#?}");
    assert!(
        finished.stdout.is_empty(),
        "-q prints nothing: {finished:#?}"
    );
    let otlp = finished.otlp_summary();
    assert_eq!((otlp.dropped, otlp.failed), (0, 0), "{finished:#?}");

    let trace = fs::read_to_string(&trace).expect("read strace's output");
    let used = syscalls_after_exec(&trace, &binary);
    for call in ["bpf", "connect", "openat"] {
        assert!(used.contains(call), "strace recorded no {call}: {used:?}");
    }
    let allowed = unit_syscall_allow_list(&settings);
    let denied: Vec<&String> = used.difference(&allowed).collect();
    assert!(
        denied.is_empty(),
        "the agent made system calls the unit's SystemCallFilter denies: {denied:?}"
    );
}

/// The system calls strace recorded (`-f -o`) from the `execve` of `binary` on.
fn syscalls_after_exec(trace: &str, binary: &Path) -> BTreeSet<String> {
    let exec = format!("execve(\"{}\"", binary.display());
    let start = trace
        .find(&exec)
        .unwrap_or_else(|| panic!("no {exec} in strace's output"));
    trace[start..]
        .lines()
        .filter_map(|line| {
            // `PID name(args) = result`, the pid padded to five columns (`5690  brk(…)`);
            // `PID <... name resumed>`, `--- SIG…`, `+++ exited` skipped.
            let call = line
                .split_once(' ')
                .map_or(line, |(_, rest)| rest)
                .trim_start();
            let name = call.split_once('(')?.0;
            (!name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
                .then(|| name.to_owned())
        })
        .collect()
}

/// The system calls of `group` (`@name`, nested groups expanded) as `systemd-analyze
/// syscall-filter` lists them, or `group` itself when it names one call.
fn syscall_group(group: &str) -> BTreeSet<String> {
    if !group.starts_with('@') {
        return BTreeSet::from([group.to_owned()]);
    }
    let output = Command::new("systemd-analyze")
        .args(["syscall-filter", "--no-pager", group])
        .output()
        .expect("run systemd-analyze syscall-filter");
    assert!(
        output.status.success(),
        "syscall-filter {group}: {output:?}"
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#') && *line != group)
        .flat_map(syscall_group)
        .collect()
}

/// The calls the unit's `SystemCallFilter=` lines allow, read as systemd reads them: the first
/// line, an allow list, sets them; a later `~` line removes, a later plain one adds.
fn unit_syscall_allow_list(settings: &BTreeMap<String, Vec<String>>) -> BTreeSet<String> {
    let mut allowed = BTreeSet::new();
    for value in settings.get("SystemCallFilter").into_iter().flatten() {
        let (remove, names) = match value.strip_prefix('~') {
            Some(names) => (true, names),
            None => (false, value.as_str()),
        };
        for call in names.split_whitespace().flat_map(syscall_group) {
            if remove {
                allowed.remove(&call);
            } else {
                allowed.insert(call);
            }
        }
    }
    assert!(allowed.contains("bpf"), "bpf allowed: {allowed:?}");
    allowed
}

#[test]
fn strace_lines_are_read_whatever_the_width_of_their_pid() {
    let trace = "5690  execve(\"/bin/x\", [\"x\"], 0x0 /* 1 var */) = 0\n\
                 5690  brk(NULL)                         = 0x56370a1b9000\n\
                 12345 bpf(BPF_MAP_CREATE, {}, 72) = 3\n\
                 12345 <... openat resumed>) = 4\n\
                 --- SIGTERM {si_signo=SIGTERM} ---\n";
    assert_eq!(
        syscalls_after_exec(trace, Path::new("/bin/x")),
        BTreeSet::from(["brk", "bpf"].map(str::to_owned))
    );
}
