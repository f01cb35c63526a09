//! Where the workspace and the built binaries are.

use std::env;
use std::path::{Path, PathBuf};

/// A cargo build profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// `dev`, built into `target/debug`.
    Debug,
    /// `release`, built into `target/release`.
    Release,
}

impl Profile {
    /// `Release` if `release` is set, else `Debug`.
    pub fn from_release(release: bool) -> Self {
        if release { Self::Release } else { Self::Debug }
    }

    /// The directory under the target directory that holds this profile's binaries.
    pub fn dir_name(self) -> &'static str {
        match self {
            Self::Debug => "debug",
            Self::Release => "release",
        }
    }

    /// The `cargo build` flags that select this profile.
    pub fn cargo_flags(self) -> &'static [&'static str] {
        match self {
            Self::Debug => &[],
            Self::Release => &["--release"],
        }
    }
}

/// The workspace root (the parent of the xtask crate).
pub fn workspace_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Cargo's target directory: `CARGO_TARGET_DIR` if set, else `target/` in the workspace.
pub fn target_dir() -> PathBuf {
    let root = workspace_root();
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// The path of binary `name` built with `profile`, made absolute and free of `..`.
pub fn binary(profile: Profile, name: &str) -> PathBuf {
    let path = target_dir().join(profile.dir_name()).join(name);
    path.canonicalize().unwrap_or(path)
}
