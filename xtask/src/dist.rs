//! `cargo xtask dist`: the release tarball,
//! `target/dist/tcpstates-<version>-<arch>-linux.tar.gz`, to unpack into `/usr/local` with
//! `--strip-components=1` (the unit's `ExecStart` is `/usr/local/bin/tcpstates`):
//!
//! ```text
//! bin/tcpstates                                   stripped release binary
//! share/man/man8/tcpstates.8                      man page
//! share/bash-completion/completions/tcpstates     completions
//! share/zsh/site-functions/_tcpstates
//! share/fish/vendor_completions.d/tcpstates.fish
//! lib/systemd/system/tcpstates.service            systemd unit
//! etc/default/tcpstates                           its settings (copy to /etc/default)
//! share/tcpstates/deploy/...                      deploy/ as it is (systemd, container, kubernetes)
//! share/doc/tcpstates/README.md
//! ```
//!
//! The man page and completions come from the agent's clap definition through the agent's
//! `gen-docs` example (see `agent/examples/gen-docs.rs` for why an example). The archive is
//! reproducible: sorted entries owned by root, every mtime the commit's time. Before it is
//! written, the staged tree is checked: every entry present, the binary stripped and naming the
//! version, the man page with its sections, the completions non-empty.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use clap::Args;

use crate::paths::{self, Profile};
use crate::{cargo, process, setup};

/// Options of `dist`.
#[derive(Debug, Args)]
pub struct DistArgs {}

/// Where each generated or copied file goes in the tarball, relative to its top directory.
const BINARY: &str = "bin/tcpstates";
const MAN_PAGE: &str = "share/man/man8/tcpstates.8";
const BASH: &str = "share/bash-completion/completions/tcpstates";
const ZSH: &str = "share/zsh/site-functions/_tcpstates";
const FISH: &str = "share/fish/vendor_completions.d/tcpstates.fish";
const UNIT: &str = "lib/systemd/system/tcpstates.service";
const ENV_FILE: &str = "etc/default/tcpstates";
const DEPLOY: &str = "share/tcpstates/deploy";
const README: &str = "share/doc/tcpstates/README.md";

/// The sections the man page must have (bcc's, plus ours).
const MAN_SECTIONS: &[&str] = &[
    "NAME",
    "SYNOPSIS",
    "DESCRIPTION",
    "OPTIONS",
    "EXAMPLES",
    "FIELDS",
    "ENVIRONMENT",
    "\"EXIT STATUS\"",
    "OVERHEAD",
    "SOURCE",
    "VERSION",
    "\"SEE ALSO\"",
];

/// Builds the tarball and prints its path.
pub fn dist(_args: &DistArgs) -> Result<()> {
    setup::setup()?;
    cargo::build_agent(Profile::Release)?;
    let root = &paths::workspace_root().canonicalize()?;
    let built = paths::binary(Profile::Release, "tcpstates");
    let version_line = version_line(&built)?;
    let version = version_line
        .split_whitespace()
        .nth(1)
        .with_context(|| format!("no version in `tcpstates --version`: {version_line:?}"))?;
    let name = format!("tcpstates-{version}-{}-linux", std::env::consts::ARCH);
    let dist_dir = paths::target_dir().join("dist");
    fs::create_dir_all(&dist_dir)?;
    let dist_dir = dist_dir.canonicalize()?;
    let stage = dist_dir.join(&name);
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    fs::create_dir_all(&stage)?;

    let into = |relative: &str| -> Result<PathBuf> {
        let path = stage.join(relative);
        let parent = path.parent().context("a path in the stage has a parent")?;
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        Ok(path)
    };
    process::run(
        Command::new("strip")
            .arg("--strip-all")
            .arg("-o")
            .arg(into(BINARY)?)
            .arg(&built),
    )?;

    let generated = dist_dir.join(format!("{name}.generated"));
    let mut gen_docs = Command::new("cargo");
    gen_docs
        .current_dir(root)
        .args(["run", "--quiet"])
        .args(Profile::Release.cargo_flags())
        .args(["-p", "tcpstates", "--example", "gen-docs", "--"])
        .arg(&generated);
    if let Some(date) = git(root, &["log", "-1", "--format=%cs"]) {
        gen_docs.arg(date);
    }
    process::run(&mut gen_docs)?;
    for (file, relative) in [
        ("tcpstates.8", MAN_PAGE),
        ("tcpstates.bash", BASH),
        ("_tcpstates", ZSH),
        ("tcpstates.fish", FISH),
    ] {
        copy(&generated.join(file), &into(relative)?)?;
    }
    fs::remove_dir_all(&generated)?;

    copy(&root.join("deploy/systemd/tcpstates.service"), &into(UNIT)?)?;
    copy(&root.join("deploy/systemd/tcpstates.env"), &into(ENV_FILE)?)?;
    copy_tree(&root.join("deploy"), &stage.join(DEPLOY))?;
    copy(&root.join("README.md"), &into(README)?)?;

    check_stage(&stage, &version_line)?;

    let tarball = dist_dir.join(format!("{name}.tar.gz"));
    let mut tar = Command::new("tar");
    tar.args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner"]);
    if let Some(time) = git(root, &["log", "-1", "--format=%ct"]) {
        tar.arg(format!("--mtime=@{time}"));
    }
    tar.arg("-czf")
        .arg(&tarball)
        .arg("-C")
        .arg(&dist_dir)
        .arg(&name);
    process::run(&mut tar)?;
    let size = fs::metadata(&tarball)?.len();
    println!("{} ({} KiB)", tarball.display(), size.div_ceil(1024));
    Ok(())
}

/// The first line `tcpstates --version` prints, e.g. `tcpstates 0.1.0 (commit 0123456789ab)`.
fn version_line(binary: &Path) -> Result<String> {
    let out = process::stdout_of(Command::new(binary).arg("--version"))
        .with_context(|| format!("`{} --version` failed", binary.display()))?;
    Ok(out.lines().next().unwrap_or_default().to_owned())
}

/// What `git ARGS` prints in `root`, trimmed; `None` outside a git checkout.
fn git(root: &Path, args: &[&str]) -> Option<String> {
    process::stdout_of(Command::new("git").current_dir(root).args(args))
        .map(|out| out.trim().to_owned())
        .filter(|out| !out.is_empty())
}

/// Copies a file, failing with both paths named.
fn copy(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// Copies the directory `from` to `to`, files and subdirectories (symbolic links followed).
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    let mut entries = fs::read_dir(from)
        .with_context(|| format!("reading {}", from.display()))?
        .collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        if source.is_dir() {
            copy_tree(&source, &target)?;
        } else {
            copy(&source, &target)?;
        }
    }
    Ok(())
}

/// Fails unless the staged tree has everything the tarball promises.
fn check_stage(stage: &Path, built_version: &str) -> Result<()> {
    for relative in [
        BINARY,
        MAN_PAGE,
        BASH,
        ZSH,
        FISH,
        UNIT,
        ENV_FILE,
        README,
        &format!("{DEPLOY}/systemd/tcpstates.service"),
    ] {
        let path = stage.join(relative);
        let len = fs::metadata(&path)
            .with_context(|| format!("{relative} is missing from the tarball"))?
            .len();
        ensure!(len > 0, "{relative} is empty");
    }
    let binary = stage.join(BINARY);
    let staged_version = version_line(&binary)?;
    ensure!(
        staged_version == built_version,
        "the stripped binary says {staged_version:?}, the built one {built_version:?}"
    );
    let sections = process::stdout_of(Command::new("readelf").args(["-S", "-W"]).arg(&binary))
        .context("readelf -S on the stripped binary")?;
    // (`.debug_gdb_scripts` is loaded data, which strip keeps.)
    let left: Vec<&str> = [".debug_info", ".debug_line", ".symtab"]
        .into_iter()
        .filter(|section| sections.contains(&format!(" {section} ")))
        .collect();
    ensure!(left.is_empty(), "{BINARY} still has {left:?}");
    for completion in [BASH, ZSH, FISH] {
        let script = fs::read_to_string(stage.join(completion))?;
        ensure!(
            script.contains("ring-buffer-mib"),
            "{completion} does not complete the agent's flags"
        );
    }
    let unit = fs::read_to_string(stage.join(UNIT))?;
    ensure!(
        unit.contains(&format!("\nExecStart=/usr/local/{BINARY} ")),
        "{UNIT} does not run /usr/local/{BINARY}, where the tarball unpacks it"
    );
    let man = fs::read_to_string(stage.join(MAN_PAGE))?;
    check_man_page(&man)
}

/// Fails unless `man` (roff) is a section 8 page with every section of [`MAN_SECTIONS`].
fn check_man_page(man: &str) -> Result<()> {
    if !man.lines().any(|line| line.starts_with(".TH tcpstates 8 ")) {
        bail!("the man page has no `.TH tcpstates 8` title");
    }
    let missing: Vec<&str> = MAN_SECTIONS
        .iter()
        .copied()
        .filter(|section| {
            !man.lines()
                .any(|line| line.strip_prefix(".SH ") == Some(section))
        })
        .collect();
    ensure!(
        missing.is_empty(),
        "the man page lacks the sections {missing:?}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_page_needs_its_title_and_every_section() {
        let mut page = String::from(".TH tcpstates 8 \"2026-12-01\" \"tcpstates 0.1.0\"\n");
        for section in MAN_SECTIONS {
            page.push_str(&format!(".SH {section}\ntext\n"));
        }
        check_man_page(&page).expect("complete page");
        let without_fields = page.replace(".SH FIELDS\n", "");
        let err = check_man_page(&without_fields).expect_err("no FIELDS");
        assert!(err.to_string().contains("FIELDS"), "{err}");
        let err = check_man_page(&page.replace(".TH tcpstates 8", ".TH tcpstates 1"))
            .expect_err("section 1");
        assert!(err.to_string().contains(".TH"), "{err}");
    }
}
