//! The directory that receives the tracers' output files.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A directory for output files; removed on drop if this bench created it.
pub struct Scratch {
    dir: PathBuf,
    /// Whether the bench made the directory (then files are removed once counted, and the
    /// directory at the end) or the user named it (then files are kept for inspection).
    owned: bool,
}

impl Scratch {
    /// Uses `dir` if given (created if needed, kept at the end), else a new directory under the
    /// system's temporary directory (removed at the end).
    pub fn new(dir: Option<&Path>) -> Result<Self> {
        let (dir, owned) = match dir {
            Some(dir) => (dir.to_path_buf(), false),
            None => {
                let name = format!("tcpstates-bench-{}", std::process::id());
                (std::env::temp_dir().join(name), true)
            }
        };
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self { dir, owned })
    }

    /// The path of file `name` in the directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Removes a counted file unless the user asked to keep them (by naming the directory).
    pub fn discard(&self, path: &Path) -> Result<()> {
        if self.owned {
            fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
        }
        Ok(())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.owned
            && let Err(e) = fs::remove_dir_all(&self.dir)
        {
            eprintln!("bench: could not remove {}: {e}", self.dir.display());
        }
    }
}
