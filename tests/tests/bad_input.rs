//! Bad input and environment: a bad port list, flag combination or OTLP endpoint is a usage
//! error (exit 2, one `error:` line naming the problem, nothing traced); missing privileges are
//! one line naming what is needed (exit 1); the extreme valid ports are accepted.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use integration_tests::agent::{self, Agent, FAIL_TIMEOUT, Finished};

/// Runs the agent with `args`, expecting a usage error whose message contains `needle`.
fn assert_usage_error(args: &[&str], needle: &str) {
    agent::assert_usage_error(agent::command(args), needle);
}

#[test]
fn local_port_that_is_not_a_number() {
    assert_usage_error(&["-L", "80,x"], "x");
}

#[test]
fn local_port_out_of_range() {
    assert_usage_error(&["-L", "70000"], "70000");
}

#[test]
fn empty_local_port_list() {
    assert_usage_error(&["-L", ""], "error:");
}

#[test]
fn remote_port_out_of_range() {
    assert_usage_error(&["-D", "65536"], "65536");
}

#[test]
fn empty_item_in_remote_port_list() {
    assert_usage_error(&["-D", "80,,81"], "80,,81");
}

#[test]
fn both_families_at_once() {
    assert_usage_error(&["-4", "-6"], "error:");
}

#[test]
fn unknown_flag() {
    assert_usage_error(&["--bogus"], "--bogus");
}

#[test]
fn otlp_endpoint_of_another_scheme_than_http() {
    // Accepted once, it failed only at the first export, as a failed name lookup.
    assert_usage_error(
        &["--otlp", "ftp://collector:4317"],
        "'ftp://collector:4317' is not an http:// or https:// URL",
    );
}

#[test]
fn otlp_endpoint_variable_of_another_scheme_than_http() {
    for variable in [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ] {
        let mut command = agent::command(&["--otlp", "-q"]);
        command.env(variable, "ftp://collector:4317");
        agent::assert_usage_error(command, &format!("{variable}=ftp://collector:4317"));
    }
}

#[test]
fn a_metrics_temporality_the_sdk_does_not_know_is_a_usage_error_naming_the_variable() {
    let mut command = agent::command(&["--metrics", "-q"]);
    command.env(
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
        "weekly",
    );
    agent::assert_usage_error(
        command,
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=weekly",
    );
}

#[test]
fn lowest_and_highest_ports_are_accepted() {
    let agent = Agent::start(&["-L", "0,65535", "-D", "0,65535"]);
    let finished = agent.stop(libc::SIGINT);
    assert_eq!(finished.code(), 0, "{finished:#?}");
}

/// A copy of the agent binary that any user can run, removed on drop.
struct PublicCopy {
    dir: std::path::PathBuf,
}

impl PublicCopy {
    fn new() -> PublicCopy {
        let dir = std::env::temp_dir().join(format!("tcpstates-tests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        let copy = PublicCopy { dir };
        std::fs::set_permissions(&copy.dir, std::fs::Permissions::from_mode(0o755))
            .expect("chmod the directory");
        std::fs::copy(agent::binary(), copy.binary()).expect("copy the agent binary");
        std::fs::set_permissions(copy.binary(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod the binary");
        copy
    }

    fn binary(&self) -> std::path::PathBuf {
        self.dir.join("tcpstates")
    }
}

impl Drop for PublicCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn unprivileged_user_is_told_what_is_needed() {
    let copy = PublicCopy::new();
    let mut command = Command::new("setpriv");
    command
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
        ])
        .arg(copy.binary());
    let finished: Finished = Agent::spawn_command(command).wait_exit(FAIL_TIMEOUT);
    let context = format!("tcpstates as nobody: {finished:#?}");
    assert_eq!(finished.code(), 1, "{context}");
    assert!(finished.stdout.is_empty(), "{context}");
    let lines: Vec<&String> = finished
        .stderr
        .iter()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "one line; {context}");
    for needed in ["root", "CAP_BPF", "CAP_PERFMON"] {
        assert!(lines[0].contains(needed), "should name {needed}; {context}");
    }
}
