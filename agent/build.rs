//! Builds the kernel program (`agent-ebpf`) for the BPF target with the pinned nightly
//! toolchain and leaves the object in `OUT_DIR` for `include_bytes_aligned!`; and sets
//! `TCPSTATES_COMMIT`, the commit `tcpstates --version` names.

use aya_build::{Package, Toolchain};

/// The nightly whose LLVM matches bpf-linker 0.10.4 (see CONTRIBUTING.md, "Toolchain"); xtask's setup
/// installs the same one from the same file.
const BPF_TOOLCHAIN: &str = include_str!("../agent-ebpf/bpf-toolchain").trim_ascii_end();

fn main() -> aya_build::Result<()> {
    emit_commit();
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../agent-ebpf");
    aya_build::build_ebpf(
        [Package {
            name: "agent-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::Custom(BPF_TOOLCHAIN),
    )
}

/// Sets `TCPSTATES_COMMIT` to the short hash of the checked-out commit (`unknown` outside a git
/// checkout, e.g. built from a source tarball) and asks cargo to run this script again when
/// `HEAD` or the branch it points to moves.
fn emit_commit() {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|output| output.status.success())
            .and_then(|output| String::from_utf8(output.stdout).ok())
            .map(|text| text.trim().to_owned())
            .filter(|text| !text.is_empty())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]);
    println!(
        "cargo:rustc-env=TCPSTATES_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
    if commit.is_none() {
        return;
    }
    // HEAD, the branch's loose ref and packed-refs, the ones that exist (cargo reruns on every
    // build for a path that does not).
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    for name in ["HEAD", "packed-refs"].into_iter().chain(branch.as_deref()) {
        if let Some(path) = git(&["rev-parse", "--path-format=absolute", "--git-path", name])
            && std::path::Path::new(&path).exists()
        {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
