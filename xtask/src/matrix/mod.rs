//! `cargo xtask matrix`: the agent on the kernels its users have, booted under qemu.
//!
//! Debian's own kernel packages ([`kernels`]) boot under `qemu-system-x86_64` (TCG: this
//! machine's KVM cannot run guests) with an initramfs ([`initramfs`]) whose `/init`
//! (`guest-init.sh`) runs the smoke test on the guest's own loopback: the release agent as an
//! unprivileged uid with only CAP_BPF + CAP_PERFMON, in text (`-x`), `--json` and `--otlp` to a
//! rotel collector inside the guest, while a listener, a client connection and a refused connect
//! are made; the classic tracepoint's own records are kept for comparison. The checks are the
//! integration test `tests/tests/kernels.rs`, which boots each kernel and reads the console.

mod initramfs;
mod kernels;

use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, Result};
use clap::Args;

use crate::paths::{self, Profile};
use crate::{cargo, process, setup};

/// Environment variable through which `tests/tests/kernels.rs` finds the matrix
/// ([`MANIFEST`] in that directory).
pub const MATRIX_ENV: &str = "TCPSTATES_MATRIX";

/// The file listing the matrix's kernels, one per line:
/// `role<TAB>package<TAB>version<TAB>vmlinuz<TAB>supported|unsupported`.
const MANIFEST: &str = "kernels.tsv";

/// Options of `matrix`.
#[derive(Debug, Default, Args)]
pub struct MatrixArgs {
    /// Only the kernels whose role contains this (`6.1`, `6.1-oldest`, `6.12`, `5.10`).
    #[arg(long, value_name = "ROLE")]
    pub kernel: Option<String>,
}

/// Sets up, prepares the matrix and runs its test, one kernel at a time.
pub fn matrix(args: &MatrixArgs) -> Result<()> {
    setup::setup()?;
    let dir = prepare(args.kernel.as_deref())?;
    // The tests are named `kernel_<role>_…`, with the role's dots and dashes as underscores.
    let filter = format!(
        "kernel_{}",
        args.kernel
            .as_deref()
            .unwrap_or("")
            .replace(['.', '-'], "_")
    );
    process::run(
        Command::new("cargo")
            .current_dir(paths::workspace_root())
            .env(MATRIX_ENV, &dir)
            .args(["test", "-p", "integration-tests", "--test", "kernels"])
            .args(["--", "--test-threads=1", "--nocapture", &filter]),
    )
}

/// Builds the release agent and the guest's initramfs, fetches the kernels whose role contains
/// `only` (every one when `None`), and writes the manifest; returns the matrix's directory.
pub fn prepare(only: Option<&str>) -> Result<PathBuf> {
    let dir = paths::target_dir().join("matrix");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    cargo::build_agent(Profile::Release)?;
    let rotel_agent = setup::rotel_agent().context("rotel is not installed")?;
    let initramfs = initramfs::build(
        &dir,
        &paths::binary(Profile::Release, "tcpstates"),
        &rotel_agent,
    )?;
    let kernels = kernels::fetch(&dir, only)?;
    let mut manifest = format!("# initramfs\t{}\n", initramfs.display());
    for kernel in &kernels {
        writeln!(
            manifest,
            "{}\t{}\t{}\t{}\t{}",
            kernel.role,
            kernel.package,
            kernel.version,
            kernel.vmlinuz.display(),
            if kernel.supported {
                "supported"
            } else {
                "unsupported"
            }
        )?;
    }
    fs::write(dir.join(MANIFEST), manifest)?;
    Ok(dir)
}
