//! Runs the load generator briefly on loopback and checks its result line.

use std::process::Command;

#[test]
fn loadgen_completes_connections_and_reports_them() {
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--port", "0", "--seconds", "0.3"])
        .output()
        .expect("loadgen starts");
    assert!(output.status.success(), "loadgen failed: {output:?}");
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 output");
    let line = stdout.lines().last().expect("a result line");
    let field = |key: &str| -> f64 {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
            .parse()
            .unwrap_or_else(|e| panic!("bad {key}= in {line:?}: {e}"))
    };
    assert!(field("connections") > 0.0, "{line}");
    assert_eq!(field("failed"), 0.0, "{line}");
    assert!(field("seconds") >= 0.3, "{line}");
    assert!(field("rate") > 0.0, "{line}");
}

#[test]
fn loadgen_refuses_a_non_loopback_address() {
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--addr", "192.0.2.1", "--seconds", "0.1"])
        .output()
        .expect("loadgen starts");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a loopback address"));
}
