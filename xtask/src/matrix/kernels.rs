//! The kernels of the matrix: Debian's own kernel packages, found and fetched with a private apt
//! configuration under the target directory (the host's apt sources and state are not touched),
//! and their `vmlinuz` extracted.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::process;

/// Debian suites the kernels come from: bookworm (6.1, and 6.12 from bookworm-security) and
/// bullseye (5.10, older than the agent supports).
const SOURCES: &str = "\
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main
";

/// Which of the packages a pattern matches a kernel of the matrix is.
#[derive(Debug, Clone, Copy)]
enum Pick {
    /// The lowest ABI number: the oldest point release the archive still serves.
    Oldest,
    /// The highest ABI number.
    Newest,
}

/// A kernel of the matrix, as a rule for finding its package.
#[derive(Debug)]
struct KernelRule {
    /// What it stands for, and the name its test has.
    role: &'static str,
    /// Package names it is picked from: `linux-image-PREFIX<number>SUFFIX`.
    prefix: &'static str,
    suffix: &'static str,
    pick: Pick,
    /// Whether the agent must trace on it (or refuse it with its one-line message).
    supported: bool,
}

/// The matrix. 6.1.0-47 … -53 (6.1.170 – 6.1.187) once refused the backstop program.
const RULES: &[KernelRule] = &[
    KernelRule {
        role: "6.1-oldest",
        prefix: "linux-image-6.1.0-",
        suffix: "-cloud-amd64",
        pick: Pick::Oldest,
        supported: true,
    },
    KernelRule {
        role: "6.1-newest",
        prefix: "linux-image-6.1.0-",
        suffix: "-cloud-amd64",
        pick: Pick::Newest,
        supported: true,
    },
    KernelRule {
        role: "6.12",
        prefix: "linux-image-6.12.",
        suffix: "+deb12-cloud-amd64",
        pick: Pick::Newest,
        supported: true,
    },
    KernelRule {
        role: "5.10",
        prefix: "linux-image-5.10.0-",
        suffix: "-cloud-amd64",
        pick: Pick::Newest,
        supported: false,
    },
];

/// A kernel of the matrix, ready to boot.
#[derive(Debug)]
pub struct Kernel {
    /// Its role in the matrix (`6.1-oldest`, …).
    pub role: &'static str,
    /// The Debian package it comes from.
    pub package: String,
    /// The package's version (the upstream point release first, e.g. `6.1.170-3`).
    pub version: String,
    /// The extracted kernel image.
    pub vmlinuz: PathBuf,
    /// Whether the agent must trace on it.
    pub supported: bool,
}

/// Finds, downloads (once) and extracts every kernel of the matrix whose role contains `only`
/// (all when `None`) into `dir`.
pub fn fetch(dir: &Path, only: Option<&str>) -> Result<Vec<Kernel>> {
    let apt = PrivateApt::new(&dir.join("apt"))?;
    let mut kernels = Vec::new();
    for rule in RULES
        .iter()
        .filter(|rule| only.is_none_or(|only| rule.role.contains(only)))
    {
        let package = apt.pick(rule)?;
        let version = apt.version(&package)?;
        let vmlinuz = extract_vmlinuz(&apt.download(&package, &dir.join("debs"))?, dir)?;
        println!(
            "matrix: {}: {package} {version} ({})",
            rule.role,
            vmlinuz.display()
        );
        kernels.push(Kernel {
            role: rule.role,
            package,
            version,
            vmlinuz,
            supported: rule.supported,
        });
    }
    if kernels.is_empty() {
        bail!("no kernel of the matrix has a role containing {only:?}");
    }
    Ok(kernels)
}

/// apt with its own sources list, package lists and cache in one directory.
struct PrivateApt {
    options: Vec<String>,
}

impl PrivateApt {
    /// Sets the directory up and fetches the package lists unless it has them.
    fn new(dir: &Path) -> Result<Self> {
        let lists = dir.join("lists");
        let cache = dir.join("cache");
        for sub in [lists.join("partial"), cache.join("archives/partial")] {
            fs::create_dir_all(&sub).with_context(|| format!("creating {}", sub.display()))?;
        }
        let sources = dir.join("sources.list");
        fs::write(&sources, SOURCES).with_context(|| format!("writing {}", sources.display()))?;
        let options = [
            format!("Dir::Etc::SourceList={}", sources.display()),
            "Dir::Etc::SourceParts=/dev/null".to_owned(),
            format!("Dir::State::Lists={}", lists.display()),
            format!("Dir::Cache={}", cache.display()),
            "Dir::State::status=/dev/null".to_owned(),
            // Files under the target directory are root's; apt's sandbox user could not write them.
            "APT::Sandbox::User=root".to_owned(),
        ]
        .into_iter()
        .flat_map(|option| ["-o".to_owned(), option])
        .collect();
        let apt = Self { options };
        let has_lists = fs::read_dir(&lists)?
            .filter_map(Result::ok)
            .any(|entry| entry.file_name().to_string_lossy().ends_with("_Packages"));
        if !has_lists {
            process::run(apt.command("apt-get").arg("update"))?;
        }
        Ok(apt)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(&self.options);
        cmd
    }

    /// The package `rule` picks among those the lists name.
    fn pick(&self, rule: &KernelRule) -> Result<String> {
        let pattern = format!(
            "^{}[0-9]+{}$",
            regex_escape(rule.prefix),
            regex_escape(rule.suffix)
        );
        let found = process::stdout_of(self.command("apt-cache").args([
            "search",
            "--names-only",
            &pattern,
        ]))
        .with_context(|| format!("apt-cache search {pattern}"))?;
        let numbered = found.lines().filter_map(|line| {
            let name = line.split(" - ").next()?.trim();
            let number: u32 = name
                .strip_prefix(rule.prefix)?
                .strip_suffix(rule.suffix)?
                .parse()
                .ok()?;
            Some((number, name.to_owned()))
        });
        let chosen = match rule.pick {
            Pick::Oldest => numbered.min(),
            Pick::Newest => numbered.max(),
        };
        chosen
            .map(|(_, name)| name)
            .with_context(|| format!("no package matches {pattern} for kernel {}", rule.role))
    }

    /// The candidate version of `package`.
    fn version(&self, package: &str) -> Result<String> {
        let shown = process::stdout_of(self.command("apt-cache").args([
            "show",
            "--no-all-versions",
            package,
        ]))
        .with_context(|| format!("apt-cache show {package}"))?;
        shown
            .lines()
            .find_map(|line| line.strip_prefix("Version: "))
            .map(str::to_owned)
            .with_context(|| format!("apt-cache show {package}: no version"))
    }

    /// The `.deb` of `package` in `dir`, downloaded unless it is there.
    fn download(&self, package: &str, dir: &Path) -> Result<PathBuf> {
        fs::create_dir_all(dir)?;
        let find = || -> Result<Option<PathBuf>> {
            Ok(fs::read_dir(dir)?
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .find(|path| {
                    path.file_name()
                        .and_then(|name| name.to_str())
                        .is_some_and(|name| name.starts_with(&format!("{package}_")))
                }))
        };
        if let Some(deb) = find()? {
            return Ok(deb);
        }
        process::run(
            self.command("apt-get")
                .current_dir(dir)
                .args(["download", package]),
        )?;
        find()?.with_context(|| format!("apt-get downloaded no .deb of {package}"))
    }
}

/// Extracts the `boot/vmlinuz-*` of `deb` into `dir/<package>/` and returns its path.
fn extract_vmlinuz(deb: &Path, dir: &Path) -> Result<PathBuf> {
    let stem = deb
        .file_stem()
        .and_then(|stem| stem.to_str())
        .context("a .deb without a name")?;
    let out = dir.join("kernels").join(stem);
    let boot = out.join("boot");
    let existing = || -> Option<PathBuf> {
        fs::read_dir(&boot)
            .ok()?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .find(|path| {
                path.file_name()
                    .is_some_and(|name| name.to_string_lossy().starts_with("vmlinuz-"))
            })
    };
    if let Some(vmlinuz) = existing() {
        return Ok(vmlinuz);
    }
    fs::create_dir_all(&out)?;
    process::run(Command::new("sh").args([
        "-c",
        "dpkg-deb --fsys-tarfile \"$1\" | tar -x -C \"$2\" --wildcards './boot/vmlinuz-*'",
        "extract",
        &deb.to_string_lossy(),
        &out.to_string_lossy(),
    ]))?;
    existing().with_context(|| format!("{} holds no boot/vmlinuz-*", deb.display()))
}

/// `text` with the characters an extended regular expression gives a meaning escaped.
fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escape = ".+*?()[]{}|^$\\".contains(c);
            escape.then_some('\\').into_iter().chain([c])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names_are_escaped_for_apt_cache_search() {
        assert_eq!(regex_escape("linux-image-6.12."), "linux-image-6\\.12\\.");
        assert_eq!(regex_escape("+deb12-cloud"), "\\+deb12-cloud");
    }
}
