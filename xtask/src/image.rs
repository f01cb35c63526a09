//! `cargo xtask image`: the container image (`deploy/container/Containerfile`), built offline.
//!
//! The image is `FROM scratch` plus a root filesystem this module assembles under
//! `target/image/context/rootfs/`: the stripped release binary at `/usr/bin/tcpstates`, every
//! shared library `ldd` lists for it at the path `ldd` gives (so the binary's interpreter and
//! search path work unchanged), and the system's CA bundle for `https://` OTLP endpoints. No
//! shell, no package manager. `podman build --network=none` then needs no registry.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::paths::{self, Profile};
use crate::process;
use crate::{cargo, setup};

/// The repository of the image in local storage; the tag defaults to the workspace version.
const REPOSITORY: &str = "localhost/tcpstates";

/// The Containerfile, relative to the workspace root.
const CONTAINERFILE: &str = "deploy/container/Containerfile";

/// Where the agent lives in the image (the Containerfile's `ENTRYPOINT`).
const BINARY_IN_IMAGE: &str = "usr/bin/tcpstates";

/// The CA bundle Debian's `ca-certificates` maintains, which rustls' native roots read.
const CA_BUNDLE: &str = "etc/ssl/certs/ca-certificates.crt";

/// Options of `image`.
#[derive(Debug, Default, Args)]
pub struct ImageArgs {
    /// Image reference to build [default: localhost/tcpstates:<workspace version>].
    #[arg(long, value_name = "REFERENCE")]
    pub tag: Option<String>,
    /// Also write the image to FILE as an OCI archive (`podman save --format oci-archive`),
    /// e.g. to import it into a cluster's container runtime.
    #[arg(long, value_name = "FILE")]
    pub save: Option<PathBuf>,
}

/// Sets up, builds the release agent, assembles the build context and builds the image with
/// podman, offline; returns its reference.
pub fn build(args: &ImageArgs) -> Result<String> {
    setup::setup()?;
    cargo::build_agent(Profile::Release)?;
    let reference = args
        .tag
        .clone()
        .unwrap_or_else(|| format!("{REPOSITORY}:{}", env!("CARGO_PKG_VERSION")));
    let context = paths::target_dir().join("image").join("context");
    assemble(&context)?;
    let root = paths::workspace_root();
    process::run(
        Command::new("podman")
            .current_dir(root)
            .args(["build", "--network=none", "--pull=never", "--file"])
            .arg(root.join(CONTAINERFILE))
            .arg("--build-arg")
            .arg(format!("VERSION={}", env!("CARGO_PKG_VERSION")))
            .args(["--tag", &reference])
            .arg(&context),
    )?;
    let size = process::stdout_of(Command::new("podman").args([
        "image",
        "inspect",
        "--format",
        "{{.Size}}",
        &reference,
    ]))
    .and_then(|out| out.trim().parse::<u64>().ok())
    .context("podman image inspect: the image's size")?;
    println!(
        "image: {reference}, {:.1} MB ({size} bytes)",
        size as f64 / 1e6
    );
    if let Some(file) = &args.save {
        // podman refuses to overwrite an existing archive.
        if file.exists() {
            fs::remove_file(file).with_context(|| format!("removing {}", file.display()))?;
        }
        process::run(
            Command::new("podman")
                .args(["save", "--format", "oci-archive", "--output"])
                .arg(file)
                .arg(&reference),
        )?;
        let saved = fs::metadata(file)
            .with_context(|| format!("reading {}", file.display()))?
            .len();
        println!(
            "image: saved to {} ({:.1} MB)",
            file.display(),
            saved as f64 / 1e6
        );
    }
    Ok(reference)
}

/// Makes `context/rootfs/` afresh: the stripped binary, its libraries and the CA bundle.
fn assemble(context: &Path) -> Result<()> {
    if context.exists() {
        fs::remove_dir_all(context).with_context(|| format!("removing {}", context.display()))?;
    }
    let rootfs = context.join("rootfs");
    let binary = rootfs.join(BINARY_IN_IMAGE);
    copy_file(&paths::binary(Profile::Release, "tcpstates"), &binary)?;
    process::run(Command::new("strip").arg(&binary))?;
    set_file_capabilities(&binary)?;
    for library in libraries(&binary)? {
        let relative = library
            .strip_prefix("/")
            .with_context(|| format!("ldd gave a relative path: {}", library.display()))?;
        // fs::copy follows symbolic links: the image gets the file under the name ldd gave.
        copy_file(&library, &rootfs.join(relative))?;
    }
    let bundle = Path::new("/").join(CA_BUNDLE);
    if bundle.is_file() {
        copy_file(&bundle, &rootfs.join(CA_BUNDLE))?;
    } else {
        println!(
            "image: {} is missing (Debian package ca-certificates): https:// OTLP endpoints \
             will need OTEL_EXPORTER_OTLP_CERTIFICATE",
            bundle.display()
        );
    }
    Ok(())
}

/// Capability numbers of `CAP_PERFMON` and `CAP_BPF` (`linux/capability.h`).
const CAP_PERFMON: u32 = 38;
/// See [`CAP_PERFMON`].
const CAP_BPF: u32 = 39;

/// The `security.capability` value granting [`CAP_BPF`] and [`CAP_PERFMON`], permitted and
/// effective (`setcap cap_bpf,cap_perfmon=ep`): a `vfs_cap_data` of revision 2, little-endian
/// `magic_etc` then (permitted, inheritable) for capabilities 0–31 and for 32–63.
fn file_capabilities() -> [u8; 20] {
    const VFS_CAP_REVISION_2: u32 = 0x0200_0000;
    const VFS_CAP_FLAGS_EFFECTIVE: u32 = 0x1;
    let high_permitted = (1u32 << (CAP_PERFMON - 32)) | (1u32 << (CAP_BPF - 32));
    let words = [
        VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE,
        0,
        0,
        high_permitted,
        0,
    ];
    let mut value = [0; 20];
    for (chunk, word) in value.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    value
}

/// Gives `binary` the file capabilities CAP_BPF and CAP_PERFMON (`=ep`). Kubernetes runtimes
/// (containerd, CRI-O) put a non-root container's added capabilities in its bounding, permitted
/// and effective sets but not in the ambient set, so `execve` of a binary without file
/// capabilities as uid 65534 leaves it none; with them it gets exactly those two, as far as the
/// bounding set allows, even under `no_new_privs` (`allowPrivilegeEscalation: false`). podman
/// sets the ambient set as well, so there they change nothing. Needs root (CAP_SETFCAP).
fn set_file_capabilities(binary: &Path) -> Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt as _;

    let path = CString::new(binary.as_os_str().as_bytes())
        .with_context(|| format!("{} holds a NUL byte", binary.display()))?;
    let value = file_capabilities();
    // SAFETY: both strings are NUL-terminated and `value` outlives the call, which reads
    // `value.len()` bytes of it.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            c"security.capability".as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        bail!(
            "setting file capabilities cap_bpf,cap_perfmon=ep on {}: {} (cargo xtask image \
             needs root)",
            binary.display(),
            std::io::Error::last_os_error()
        );
    }
    println!("+ setcap cap_bpf,cap_perfmon=ep {}", binary.display());
    Ok(())
}

/// Copies `from` to `to`, creating `to`'s directory.
fn copy_file(from: &Path, to: &Path) -> Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// The absolute paths of the shared libraries (the interpreter included) `ldd` lists for
/// `binary`; fails on a library `ldd` cannot find.
fn libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .context("starting ldd")?;
    if !output.status.success() {
        bail!(
            "ldd {} failed ({}): {}",
            binary.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    parse_ldd(&String::from_utf8_lossy(&output.stdout))
}

/// The library paths in `ldd`'s output: `name => /path (0x…)` and `/path (0x…)` lines; the
/// vDSO (no path) is skipped, `name => not found` is an error.
fn parse_ldd(output: &str) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for line in output
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
    {
        let target = match line.split_once(" => ") {
            Some((name, rest)) => {
                if rest.trim() == "not found" {
                    bail!("ldd: library {name} not found");
                }
                rest
            }
            None => line,
        };
        let path = target.split_whitespace().next().unwrap_or_default();
        if path.starts_with('/') {
            found.push(PathBuf::from(path));
        }
    }
    if found.is_empty() {
        bail!("ldd listed no library (a static binary needs no image context of this kind)");
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_every_library_and_the_interpreter() {
        let output = "\tlinux-vdso.so.1 (0x00007ffd5c3f2000)\n\
            \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f0c1c5e0000)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0c1c3ff000)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f0c1d1b2000)\n";
        let paths: Vec<PathBuf> = parse_ldd(output).unwrap();
        assert_eq!(
            paths,
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2",
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn file_capabilities_are_what_setcap_writes() {
        // `setcap cap_bpf,cap_perfmon=ep FILE; getfattr -n security.capability -e hex FILE`
        let expected = "010000020000000000000000c000000000000000";
        let hex: String = file_capabilities()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        assert_eq!(hex, expected);
    }

    #[test]
    fn a_missing_library_is_an_error() {
        let output = "\tlibfoo.so.1 => not found\n";
        assert!(parse_ldd(output).is_err());
    }
}
