//! `cargo xtask image`: the container image (`deploy/container/Containerfile`), built offline.

use anyhow::{Result, bail};
use clap::Args;

/// Options of `image`.
#[derive(Debug, Default, Args)]
pub struct ImageArgs {}

/// Builds the image; returns its reference.
pub fn build(_args: &ImageArgs) -> Result<String> {
    bail!("cargo xtask image is not built yet")
}
