//! Builds the kernel program (`agent-ebpf`) for the BPF target with the pinned nightly
//! toolchain and leaves the object in `OUT_DIR` for `include_bytes_aligned!`.

use aya_build::{Package, Toolchain};

/// The nightly whose LLVM matches bpf-linker 0.10.4 (see README, "Toolchain"); xtask's setup
/// installs the same one from the same file.
const BPF_TOOLCHAIN: &str = include_str!("../agent-ebpf/bpf-toolchain").trim_ascii_end();

fn main() -> aya_build::Result<()> {
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
