//! `tcpstates --version` names the crate's version and the commit the binary was built from:
//! `tcpstates 0.1.0 (commit 0123456789ab)`, the commit as `git rev-parse --short=12` gives it.

use std::path::Path;
use std::process::Command;

use integration_tests::agent;

/// What `git ARGS` prints in the workspace, trimmed; panics if it fails.
fn git(args: &[&str]) -> String {
    let output = Command::new("git")
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("run git");
    assert!(output.status.success(), "git {args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Whether `git ARGS` exits 0.
fn git_succeeds(args: &[&str]) -> bool {
    Command::new("git")
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .status()
        .expect("run git")
        .success()
}

/// Seconds since the epoch of the file's last change.
fn mtime(path: &Path) -> u64 {
    std::fs::metadata(path)
        .and_then(|meta| meta.modified())
        .expect("binary mtime")
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch")
        .as_secs()
}

#[test]
fn version_names_the_version_and_the_commit() {
    let binary = agent::binary();
    let output = Command::new(&binary)
        .arg("--version")
        .output()
        .expect("run tcpstates --version");
    assert!(output.status.success(), "{output:?}");
    let line = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let prefix = format!("tcpstates {} (commit ", env!("CARGO_PKG_VERSION"));
    let commit = line
        .strip_prefix(&prefix)
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{line:?} is not `{prefix}COMMIT)`"));
    let head = git(&["rev-parse", "--short=12", "HEAD"]);
    if commit != head {
        // Built before the last commit (engineers commit while tests run): then the binary must
        // be older than that commit and name one of its ancestors; a binary built after a
        // commit that still names the one before is the bug this test is for.
        assert_eq!(commit.len(), 12, "{line:?}");
        assert!(
            git_succeeds(&["merge-base", "--is-ancestor", commit, "HEAD"]),
            "{line:?} names no ancestor of HEAD ({head})"
        );
        let committed: u64 = git(&["log", "-1", "--format=%ct", "HEAD"])
            .parse()
            .expect("commit time");
        assert!(
            mtime(&binary) <= committed,
            "{} was built after HEAD ({head}) but names {commit}",
            binary.display()
        );
    }
}
