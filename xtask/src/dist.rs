//! `cargo xtask dist`: the release tarball.

use anyhow::{Result, bail};
use clap::Args;

/// Options of `dist`.
#[derive(Debug, Args)]
pub struct DistArgs {}

/// Builds the tarball.
pub fn dist(_args: &DistArgs) -> Result<()> {
    bail!("cargo xtask dist is not built yet")
}
