//! The guest's initramfs: busybox (static), the stripped release agent, rotel's collector (the
//! OTLP receiver inside the guest), util-linux's `setpriv`, the libraries `ldd` says they load, and `/init`
//! (`guest-init.sh`), packed as a gzipped newc cpio archive.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{PermissionsExt as _, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::process;

/// PID 1 of the guest.
const INIT: &str = include_str!("guest-init.sh");

/// busybox-static's binary: the guest's shell and tools.
const BUSYBOX: &str = "/bin/busybox";

/// util-linux's `setpriv`, which runs the agent as an unprivileged uid with only CAP_BPF +
/// CAP_PERFMON (busybox's cannot change the uid); the guest has it at the same path.
const SETPRIV: &str = "/usr/bin/setpriv";

/// Builds `dir/initramfs.gz` holding `agent` (stripped on the way) and `rotel_agent`; returns
/// its path.
pub fn build(dir: &Path, agent: &Path, rotel_agent: &Path) -> Result<PathBuf> {
    let root = dir.join("initramfs");
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    let bin = root.join("bin");
    for sub in ["bin", "proc", "sys", "dev", "tmp", "usr/bin"] {
        fs::create_dir_all(root.join(sub))?;
    }
    copy(Path::new(BUSYBOX), &bin.join("busybox"))?;
    symlink("busybox", bin.join("sh"))?;
    let init = root.join("init");
    fs::write(&init, INIT)?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;
    let guest_agent = root.join("tcpstates");
    process::run(Command::new("strip").arg("-o").arg(&guest_agent).arg(agent))?;
    copy(rotel_agent, &root.join("rotel-agent"))?;
    let setpriv = Path::new(SETPRIV);
    copy(setpriv, &root.join("usr/bin/setpriv"))?;
    for library in libraries(&[agent, rotel_agent, setpriv])? {
        let inside = root.join(library.strip_prefix("/").unwrap_or(&library));
        if let Some(parent) = inside.parent() {
            fs::create_dir_all(parent)?;
        }
        copy(&library, &inside)?;
    }
    let archive = dir.join("initramfs.gz");
    process::run(
        Command::new("sh")
            .current_dir(&root)
            .args([
                "-c",
                "find . | cpio --quiet -o -H newc -R 0:0 | gzip -1 > \"$1\"",
                "pack",
            ])
            .arg(&archive),
    )?;
    let size = fs::metadata(&archive)?.len();
    println!(
        "matrix: initramfs {} ({:.1} MB)",
        archive.display(),
        size as f64 / 1e6
    );
    Ok(archive)
}

/// Copies `from` to `to`, following symlinks, keeping the mode.
fn copy(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to)
        .map(drop)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))
}

/// The shared libraries (with the dynamic loader) that `binaries` load, by the paths `ldd`
/// resolves them to.
fn libraries(binaries: &[&Path]) -> Result<BTreeSet<PathBuf>> {
    let mut found = BTreeSet::new();
    for binary in binaries {
        let out = process::stdout_of(Command::new("ldd").arg(binary))
            .with_context(|| format!("ldd {}", binary.display()))?;
        for line in out.lines() {
            // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or `/lib64/ld-linux… (0x…)`.
            let path = match line.split_once("=>") {
                Some((_, resolved)) => resolved.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            match path {
                Some(path) if path.starts_with('/') => {
                    found.insert(PathBuf::from(path));
                }
                Some("not") | Some("not found") => {
                    bail!("{}: a library is missing: {line}", binary.display())
                }
                _ => {}
            }
        }
    }
    Ok(found)
}
