//! The container image (`deploy/container/`), run with podman the way the Kubernetes manifests
//! run it ([`integration_tests::deploy`]): uid 65534, every capability dropped but BPF and
//! PERFMON, the shipped seccomp profile. It traces a connection made on the host and exports its
//! trace to a receiver on the host; under the runtime's default seccomp profile it cannot load
//! its program and says so; with `--netns /proc/self/ns/net` in a container of its own network
//! namespace it traces that namespace only (the sidecar); and the image holds no shell.
//!
//! The image is `$TCPSTATES_IMAGE`, else the one `cargo xtask image` builds (run once per test
//! binary). This sandbox's workarounds stay here, not in the image: `--runtime runc` (crun
//! refuses its hybrid cgroups) and explicit `--ulimit`s (root lacks CAP_SYS_RESOURCE, so
//! podman cannot raise them to its defaults). Ports: block 31xxx.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt as _;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::Duration;

use integration_tests::agent::{Agent, EVENT_TIMEOUT, FAIL_TIMEOUT, Finished, READY};
use integration_tests::deploy::{
    CAPABILITIES, RUN_AS_GROUP, RUN_AS_USER, seccomp_profile, workspace_root,
};
use integration_tests::events::{
    Event, Format, Layout, closed_sessions_on_port, expect_lives, on_port, parse_json_lines,
    sessions,
};
use integration_tests::netns::Netns;
use integration_tests::otlp::Receiver;
use integration_tests::traces::{
    ARRIVAL_TIMEOUT, await_traces_on_port, check_trace, timed_states, trace_of_life,
};
use integration_tests::traffic::{self, Closer, LISTENER, OpenConnection, Transitions};

/// The agent's default text layout.
const TEXT: Format = Format::Text(Layout {
    time: false,
    timestamp: false,
    wide: false,
    csv: false,
});

/// Environment variable naming an image already built (skips `cargo xtask image`).
const IMAGE_ENV: &str = "TCPSTATES_IMAGE";

/// How long the agent in its container may take to exit after SIGINT: podman passes the
/// signal on, the agent exports what is queued, podman removes the container.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// The image to test: `$TCPSTATES_IMAGE`, else the reference `cargo xtask image` prints last.
fn image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        if let Some(image) = std::env::var_os(IMAGE_ENV) {
            return image.to_string_lossy().into_owned();
        }
        let output = Command::new("cargo")
            .args(["xtask", "image"])
            .current_dir(workspace_root())
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("run cargo xtask image: {e}"));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "cargo xtask image failed ({}):\n{stdout}",
            output.status
        );
        stdout
            .lines()
            .rev()
            .find(|line| !line.trim().is_empty())
            .expect("cargo xtask image prints the image reference last")
            .trim()
            .to_owned()
    })
}

/// Which seccomp profile the container runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seccomp {
    /// `deploy/container/seccomp.json`.
    Shipped,
    /// The runtime's default (no `--security-opt seccomp=`).
    RuntimeDefault,
}

/// A container this test runs, removed (if still there) on drop, e.g. after a failed assertion
/// killed its `podman run`.
#[derive(Debug)]
struct Container {
    name: String,
}

impl Container {
    /// A container name of this test process's own.
    fn new() -> Container {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        Container {
            name: format!(
                "tcpstates-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ),
        }
    }

    /// `podman run` of the image as the manifests run it, in `network` (`host`, `none`), under
    /// `seccomp`, with the agent's `args`.
    fn run(&self, network: &str, seccomp: Seccomp, args: &[&str]) -> Command {
        let mut command = Command::new("podman");
        command
            .args(["run", "--rm", "--name", &self.name])
            // This sandbox's: crun refuses its cgroups; podman cannot raise the limits.
            .args(["--runtime", "runc"])
            .args([
                "--ulimit",
                "nofile=20000:20000",
                "--ulimit",
                "nproc=32768:32768",
            ])
            .args(["--network", network])
            .arg("--cap-drop=all")
            .arg(format!("--cap-add={}", CAPABILITIES.join(",")))
            .arg(format!("--user={RUN_AS_USER}"))
            .arg("--read-only");
        if seccomp == Seccomp::Shipped {
            command
                .arg("--security-opt")
                .arg(format!("seccomp={}", seccomp_profile().display()));
        }
        command.arg(image()).args(args);
        command
    }

    /// The host pid of the container's first process.
    fn pid(&self) -> u32 {
        let output = Command::new("podman")
            .args(["inspect", "--format", "{{.State.Pid}}", &self.name])
            .output()
            .unwrap_or_else(|e| panic!("run podman inspect: {e}"));
        assert!(output.status.success(), "podman inspect {}", self.name);
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .expect("podman inspect prints the pid")
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // Quiet: after a normal exit `--rm` has removed it already.
        let _ = Command::new("podman")
            .args(["rm", "--force", "--ignore", "--time", "0", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Stops the agent with SIGINT (podman passes it on) and checks that it exited with 0.
fn stop(agent: Agent) -> Finished {
    let finished = agent.stop_within(libc::SIGINT, STOP_TIMEOUT);
    assert_eq!(
        finished.code(),
        0,
        "stderr:\n{}",
        finished.stderr.join("\n")
    );
    finished
}

/// Waits until the text output shows `count` closed socket lives on `port`.
fn await_text_lives(agent: &Agent, port: u16, count: usize) {
    agent.await_stdout(
        &format!("{count} closed socket lives on port {port}"),
        EVENT_TIMEOUT,
        |lines| closed_sessions_on_port(&TEXT.events(lines), port, count),
    );
}

/// The text output's socket lives on `port`, checked to be exactly `expected`.
fn text_lives(finished: &Finished, port: u16, expected: &[Transitions]) -> Vec<Vec<Event>> {
    expect_lives(
        &sessions(&on_port(&TEXT.events(&finished.stdout), port)),
        expected,
    )
}

#[test]
fn traces_a_host_connection_and_exports_it_to_a_receiver_on_the_host() {
    let server: SocketAddr = "127.0.0.1:31001".parse().expect("address");
    let client: SocketAddr = "127.0.0.1:31011".parse().expect("address");
    let ns = Netns::create();
    let receiver = Receiver::start();
    let container = Container::new();
    let endpoint = receiver.grpc_endpoint();
    // Only the test's sockets, however busy the host: the client is bound to a port of its own.
    let ports = format!("{},{}", server.port(), client.port());
    let agent = Agent::start_command(container.run(
        "host",
        Seccomp::Shipped,
        &["--otlp", &endpoint, "-L", &ports],
    ));
    traffic::connect_from_each_and_close(&ns, server, &[client], Closer::Client);
    let expected = [
        LISTENER,
        Closer::Client.client_transitions(),
        Closer::Client.server_transitions(),
    ];
    await_text_lives(&agent, server.port(), expected.len());
    let traces = await_traces_on_port(&receiver, server.port(), &expected, ARRIVAL_TIMEOUT);
    let finished = stop(agent);
    let lives = text_lives(&finished, server.port(), &expected);
    for (life, transitions) in lives.iter().zip(expected) {
        check_trace(
            trace_of_life(&traces, life),
            &timed_states(transitions),
            None,
        );
    }
    let summary = finished.otlp_summary();
    assert_eq!(
        (summary.dropped, summary.failed),
        (0, 0),
        "{:?}",
        finished.stderr
    );
}

#[test]
fn under_the_runtime_default_seccomp_profile_the_agent_says_it_cannot_load() {
    let container = Container::new();
    let finished = Agent::spawn_command(container.run("host", Seccomp::RuntimeDefault, &[]))
        .wait_exit(FAIL_TIMEOUT);
    let context = format!("{finished:#?}");
    assert_eq!(finished.code(), 1, "{context}");
    assert!(finished.stdout.is_empty(), "{context}");
    assert!(!finished.stderr.iter().any(|l| l == READY), "{context}");
    // The runtime's filter answers bpf() with EPERM although the capabilities are there.
    let last = finished.stderr.last().map_or("", String::as_str);
    assert!(
        last.contains("failed to create map") && last.contains("Operation not permitted"),
        "the error names the refused call; {context}"
    );
    assert!(
        last.contains("seccomp filter") && last.contains("deploy/container/seccomp.json"),
        "the error says a seccomp filter refused it and what to give instead; {context}"
    );
}

/// Runs `f` on a thread that has entered the network namespace of process `pid`.
fn in_netns_of<R: Send>(pid: u32, f: impl FnOnce() -> R + Send) -> R {
    let path = format!("/proc/{pid}/ns/net");
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    thread::scope(|scope| {
        scope
            .spawn(move || {
                use std::os::fd::AsRawFd as _;
                // SAFETY: `file` is an open namespace file; CLONE_NEWNET changes the network
                // namespace of this thread only.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns({path}): {}", io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

#[test]
fn as_a_sidecar_it_traces_its_own_network_namespace_only() {
    // The same port in both namespaces: only the namespace filter tells them apart.
    let server: SocketAddr = "127.0.0.1:31002".parse().expect("address");
    let client: SocketAddr = "127.0.0.1:31012".parse().expect("address");
    let host_ns = Netns::create();
    let container = Container::new();
    let ports = format!("{},{}", server.port(), client.port());
    let agent = Agent::start_command(container.run(
        "none",
        Seccomp::Shipped,
        &["--netns", "/proc/self/ns/net", "--json", "-L", &ports],
    ));
    let pid = container.pid();
    let container_netns = std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .expect("the container's network namespace")
        .ino();
    // Outside the container first: were the filter to let it through, its lines would come
    // before the container's, which the wait below ends with.
    traffic::connect_from_each_and_close(&host_ns, server, &[client], Closer::Client);
    in_netns_of(pid, || {
        OpenConnection::here(server, Some(client)).close(Closer::Client);
    });
    let expected = [
        LISTENER,
        Closer::Client.client_transitions(),
        Closer::Client.server_transitions(),
    ];
    agent.await_stdout(
        &format!("3 closed socket lives on port {}", server.port()),
        EVENT_TIMEOUT,
        |lines| closed_sessions_on_port(&Format::Json.events(lines), server.port(), 3),
    );
    let finished = stop(agent);
    let events = on_port(&parse_json_lines(&finished.stdout), server.port());
    expect_lives(&sessions(&events), &expected);
    for event in &events {
        assert_eq!(event.netns, container_netns, "{event:?}");
    }
}

#[test]
fn the_image_holds_the_agent_and_its_libraries_and_no_shell() {
    let finished = Agent::spawn_command({
        let mut command = Command::new("podman");
        command.args([
            "run",
            "--rm",
            "--runtime",
            "runc",
            "--network",
            "none",
            "--entrypoint",
            "/bin/sh",
            image(),
            "-c",
            "true",
        ]);
        command
    })
    .wait_exit(FAIL_TIMEOUT);
    assert_ne!(finished.status.code(), Some(0), "{finished:#?}");

    let created = Command::new("podman")
        .args(["create", image()])
        .output()
        .expect("run podman create");
    assert!(created.status.success(), "{created:?}");
    let id = String::from_utf8_lossy(&created.stdout).trim().to_owned();
    let export = Command::new("sh")
        .args(["-c", &format!("podman export {id} | tar -t")])
        .output()
        .expect("run podman export");
    let removed = Command::new("podman")
        .args(["rm", &id])
        .stdout(Stdio::null())
        .status()
        .expect("run podman rm");
    assert!(export.status.success(), "{export:?}");
    assert!(removed.success());
    let files: Vec<String> = String::from_utf8_lossy(&export.stdout)
        .lines()
        .filter(|entry| !entry.ends_with('/'))
        .map(str::to_owned)
        .collect();
    assert!(files.iter().any(|f| f == "usr/bin/tcpstates"), "{files:#?}");
    assert!(
        files.iter().any(|f| f.ends_with("/libc.so.6")),
        "{files:#?}"
    );
    let shells: Vec<&String> = files
        .iter()
        .filter(|f| {
            ["sh", "bash", "busybox", "dash", "apt", "dpkg"]
                .iter()
                .any(|s| f.ends_with(&format!("/{s}")))
        })
        .collect();
    assert!(shells.is_empty(), "{shells:?} in {files:#?}");
}

/// The OCI runtime form of a containers-common/Docker seccomp profile, for a container whose
/// capabilities are `caps` (`CAP_…`) on x86-64: what containerd and CRI-O hand runc for a
/// `Localhost` profile. Rules are kept when their `includes` hold and their `excludes` do not.
fn oci_seccomp(profile: &serde_json::Value, caps: &[String]) -> serde_json::Value {
    use serde_json::{Value, json};
    let strings = |value: &Value| -> Vec<String> {
        value
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let applies = |rule: &Value| {
        let (includes, excludes) = (&rule["includes"], &rule["excludes"]);
        let arch_ok = |arches: Vec<String>| arches.iter().any(|a| a == "amd64");
        strings(&includes["caps"]).iter().all(|c| caps.contains(c))
            && (includes["arches"].is_null() || arch_ok(strings(&includes["arches"])))
            && !strings(&excludes["caps"]).iter().any(|c| caps.contains(c))
            && !(excludes["arches"].is_array() && arch_ok(strings(&excludes["arches"])))
    };
    let syscalls: Vec<Value> = profile["syscalls"]
        .as_array()
        .expect("syscalls")
        .iter()
        .filter(|rule| applies(rule))
        .map(|rule| {
            let mut converted = json!({"names": rule["names"], "action": rule["action"]});
            if rule["args"].as_array().is_some_and(|args| !args.is_empty()) {
                converted["args"] = rule["args"].clone();
            }
            if rule["errnoRet"].is_number() {
                converted["errnoRet"] = rule["errnoRet"].clone();
            }
            converted
        })
        .collect();
    let x86_64 = profile["archMap"]
        .as_array()
        .expect("archMap")
        .iter()
        .find(|arch| arch["architecture"] == "SCMP_ARCH_X86_64")
        .expect("an x86-64 entry");
    let mut architectures = vec![x86_64["architecture"].clone()];
    architectures.extend(
        x86_64["subArchitectures"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
    );
    json!({
        "defaultAction": profile["defaultAction"],
        "defaultErrnoRet": profile["defaultErrnoRet"],
        "architectures": architectures,
        "syscalls": syscalls,
    })
}

/// An OCI bundle holding a copy of the image's root filesystem (extended attributes, i.e. the
/// binary's file capabilities, kept), removed on drop.
struct Bundle {
    dir: std::path::PathBuf,
}

impl Bundle {
    /// Copies the image's files into a new bundle and writes runc's default `config.json`.
    fn of_image() -> Bundle {
        let dir = std::env::temp_dir().join(format!("tcpstates-bundle-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the bundle directory");
        let bundle = Bundle { dir };
        let mounted = podman_stdout(&["image", "mount", image()]);
        let copied = Command::new("cp")
            .args(["-a", "--preserve=all"])
            .arg(format!("{}/.", mounted.trim()))
            .arg(bundle.dir.join("rootfs"))
            .status()
            .expect("run cp");
        podman_stdout(&["image", "unmount", image()]);
        assert!(copied.success(), "copy the image's files");
        let spec = Command::new("runc")
            .args(["spec", "--bundle"])
            .arg(&bundle.dir)
            .status()
            .expect("run runc spec");
        assert!(spec.success(), "runc spec");
        bundle
    }

    fn config_path(&self) -> std::path::PathBuf {
        self.dir.join("config.json")
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `podman ARGS`, panicking unless it succeeds; returns its stdout.
fn podman_stdout(args: &[&str]) -> String {
    let output = Command::new("podman")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run podman {args:?}: {e}"));
    assert!(
        output.status.success(),
        "podman {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A runc container, deleted (if still there) on drop.
struct RuncContainer(String);

impl Drop for RuncContainer {
    fn drop(&mut self) {
        let _ = Command::new("runc")
            .args(["delete", "--force", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn runs_with_only_the_capabilities_kubernetes_gives_a_non_root_container() {
    // What containerd and CRI-O make of the manifests' security context: the added capabilities
    // in the bounding, permitted and effective sets but not the ambient one (which podman also
    // sets), no_new_privs (allowPrivilegeEscalation: false), a read-only root, the shipped
    // profile. The binary's file capabilities are what give uid 65534 its two capabilities.
    let server: SocketAddr = "127.0.0.1:31003".parse().expect("address");
    let client: SocketAddr = "127.0.0.1:31013".parse().expect("address");
    let ns = Netns::create();
    let bundle = Bundle::of_image();
    let caps: Vec<String> = CAPABILITIES.iter().map(|c| format!("CAP_{c}")).collect();
    let profile: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(seccomp_profile()).expect("read the seccomp profile"),
    )
    .expect("the profile is JSON");
    let mut config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(bundle.config_path()).expect("read config.json"),
    )
    .expect("config.json is JSON");
    let ports = format!("{},{}", server.port(), client.port());
    config["root"] = serde_json::json!({"path": "rootfs", "readonly": true});
    let process = &mut config["process"];
    process["terminal"] = false.into();
    process["args"] = serde_json::json!(["/usr/bin/tcpstates", "-L", ports]);
    process["user"] = serde_json::json!({"uid": RUN_AS_USER, "gid": RUN_AS_GROUP});
    process["capabilities"] =
        serde_json::json!({"bounding": caps, "permitted": caps, "effective": caps});
    process["noNewPrivileges"] = true.into();
    process["rlimits"] =
        serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": 20000, "hard": 20000}]);
    config["linux"]["seccomp"] = oci_seccomp(&profile, &caps);
    std::fs::write(
        bundle.config_path(),
        serde_json::to_vec_pretty(&config).expect("serialise config.json"),
    )
    .expect("write config.json");

    let container = RuncContainer(format!("tcpstates-test-runc-{}", std::process::id()));
    let mut command = Command::new("runc");
    command
        .args(["run", "--bundle"])
        .arg(&bundle.dir)
        .arg(&container.0);
    let agent = Agent::start_command(command);
    traffic::connect_from_each_and_close(&ns, server, &[client], Closer::Client);
    let expected = [
        LISTENER,
        Closer::Client.client_transitions(),
        Closer::Client.server_transitions(),
    ];
    await_text_lives(&agent, server.port(), expected.len());
    let finished = stop(agent);
    text_lives(&finished, server.port(), &expected);
}
