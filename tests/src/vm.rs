//! The kernel matrix: Debian's kernels booted under qemu with the guest `cargo xtask matrix`
//! builds (see `xtask/src/matrix/`), and what the guest printed on its console.
//!
//! `cargo xtask test` and `cargo xtask matrix` prepare the kernels and the initramfs and name
//! their directory in `$TCPSTATES_MATRIX`; its `kernels.tsv` lists the kernels by role.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// The environment variable naming the prepared matrix.
pub const MATRIX_ENV: &str = "TCPSTATES_MATRIX";

/// How long one guest may run, boot to power-off: ~10 s on a quiet machine under TCG, several
/// times that on a busy one.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// A kernel of the matrix.
#[derive(Debug, Clone)]
pub struct MatrixKernel {
    /// Its role: `6.1-oldest`, `6.1-newest`, `6.12`, `5.10`.
    pub role: String,
    /// The Debian package it comes from.
    pub package: String,
    /// The package version (point release first).
    pub version: String,
    /// The kernel image.
    pub vmlinuz: PathBuf,
    /// Whether the agent must trace on it (else refuse it with its one-line message).
    pub supported: bool,
}

/// The prepared matrix: the guest's initramfs and the kernels.
#[derive(Debug)]
pub struct Matrix {
    /// The initramfs every guest boots.
    pub initramfs: PathBuf,
    /// The kernels.
    pub kernels: Vec<MatrixKernel>,
}

impl Matrix {
    /// The matrix `$TCPSTATES_MATRIX` names. Panics if it is not set or unreadable: the matrix
    /// tests run through `cargo xtask test` or `cargo xtask matrix`, which prepare it.
    pub fn from_env() -> Matrix {
        let dir = std::env::var_os(MATRIX_ENV).unwrap_or_else(|| {
            panic!("{MATRIX_ENV} is not set: run `cargo xtask test` or `cargo xtask matrix`")
        });
        let manifest = Path::new(&dir).join("kernels.tsv");
        let text = std::fs::read_to_string(&manifest)
            .unwrap_or_else(|err| panic!("reading {}: {err}", manifest.display()));
        Matrix::parse(&text)
    }

    fn parse(text: &str) -> Matrix {
        let mut initramfs = None;
        let mut kernels = Vec::new();
        for line in text.lines() {
            let fields: Vec<&str> = line.split('\t').collect();
            match fields.as_slice() {
                ["# initramfs", path] => initramfs = Some(PathBuf::from(path)),
                [role, package, version, vmlinuz, support] => kernels.push(MatrixKernel {
                    role: role.to_string(),
                    package: package.to_string(),
                    version: version.to_string(),
                    vmlinuz: PathBuf::from(vmlinuz),
                    supported: *support == "supported",
                }),
                _ => panic!("bad line in the matrix manifest: {line:?}"),
            }
        }
        Matrix {
            initramfs: initramfs.expect("the matrix manifest names no initramfs"),
            kernels,
        }
    }

    /// The kernel of `role`. Panics if the matrix has none (it was prepared for other roles).
    pub fn kernel(&self, role: &str) -> &MatrixKernel {
        self.kernels
            .iter()
            .find(|kernel| kernel.role == role)
            .unwrap_or_else(|| {
                panic!(
                    "the prepared matrix has no {role} kernel (prepare it with \
                     `cargo xtask matrix` without --kernel)"
                )
            })
    }
}

/// What a guest printed on its console, and how long it ran.
#[derive(Debug)]
pub struct Console {
    /// The console's lines (carriage returns removed).
    pub lines: Vec<String>,
    /// Boot to power-off.
    pub elapsed: Duration,
}

impl Console {
    /// The lines between `=== BEGIN name` and `=== END name`; `None` if the guest printed no
    /// such section.
    pub fn section(&self, name: &str) -> Option<Vec<String>> {
        let begin = format!("=== BEGIN {name}");
        let end = format!("=== END {name}");
        let start = self.lines.iter().position(|line| *line == begin)? + 1;
        let len = self.lines[start..].iter().position(|line| *line == end)?;
        Some(self.lines[start..start + len].to_vec())
    }

    /// The one line of section `name`; panics unless there is exactly one.
    pub fn value(&self, name: &str) -> String {
        match self.section(name).as_deref() {
            Some([line]) => line.clone(),
            other => panic!("section {name}: expected one line, got {other:?}\n{self}"),
        }
    }

    /// Whether the guest ran its script to the end.
    pub fn finished(&self) -> bool {
        self.lines.iter().any(|line| line == "=== DONE")
    }
}

impl std::fmt::Display for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "--- guest console ({:.1} s) ---",
            self.elapsed.as_secs_f64()
        )?;
        for line in &self.lines {
            writeln!(f, "{line}")?;
        }
        write!(f, "--- end of guest console ---")
    }
}

/// Boots `kernel` with `initramfs` under qemu (TCG, one CPU, no network device: the guest's
/// traffic stays on its own loopback) and returns its console once it powers off; the console is
/// also kept as `<role>.console` beside the initramfs. Panics if qemu cannot start or the guest
/// runs longer than [`BOOT_TIMEOUT`] (qemu is killed then).
pub fn boot(kernel: &MatrixKernel, initramfs: &Path) -> Console {
    let started = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "1024"])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .args([
            "-append",
            "console=ttyS0 quiet loglevel=1 panic=-1 rdinit=/init",
            "-nographic",
            "-no-reboot",
            "-nic",
            "none",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting qemu-system-x86_64 (cargo xtask setup installs it)");
    let mut stdout = qemu.stdout.take().expect("qemu's stdout");
    let (done, finished) = mpsc::channel();
    let reader = thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stdout.read_to_end(&mut bytes);
        let _ = done.send(());
        bytes
    });
    if finished.recv_timeout(BOOT_TIMEOUT).is_err() {
        let _ = qemu.kill();
    }
    let _ = qemu.wait();
    let bytes = reader.join().expect("the console reader panicked");
    let console = Console {
        lines: String::from_utf8_lossy(&bytes)
            .lines()
            .map(|line| line.trim_end_matches('\r').to_owned())
            .collect(),
        elapsed: started.elapsed(),
    };
    if let Some(dir) = initramfs.parent() {
        let _ = std::fs::write(dir.join(format!("{}.console", kernel.role)), &bytes);
    }
    assert!(
        console.elapsed < BOOT_TIMEOUT,
        "the {} guest ran longer than {BOOT_TIMEOUT:?}\n{console}",
        kernel.role
    );
    console
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_the_lines_between_their_markers() {
        let console = Console {
            lines: [
                "noise",
                "=== BEGIN a",
                "1",
                "2",
                "=== END a",
                "=== BEGIN b",
                "=== END b",
            ]
            .map(str::to_owned)
            .to_vec(),
            elapsed: Duration::ZERO,
        };
        assert_eq!(console.section("a"), Some(vec!["1".into(), "2".into()]));
        assert_eq!(console.section("b"), Some(vec![]));
        assert_eq!(console.section("c"), None);
        assert!(!console.finished());
    }

    #[test]
    fn the_manifest_lists_the_initramfs_and_each_kernel() {
        let matrix = Matrix::parse(
            "# initramfs\t/m/initramfs.gz\n\
             6.1-oldest\tlinux-image-6.1.0-47-cloud-amd64\t6.1.170-3\t/m/vmlinuz\tsupported\n\
             5.10\tlinux-image-5.10.0-32-cloud-amd64\t5.10.223-1\t/m/v5\tunsupported\n",
        );
        assert_eq!(matrix.initramfs, PathBuf::from("/m/initramfs.gz"));
        assert!(matrix.kernel("6.1-oldest").supported);
        assert!(!matrix.kernel("5.10").supported);
        assert_eq!(matrix.kernel("5.10").version, "5.10.223-1");
    }
}
