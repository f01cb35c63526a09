//! The tracefs side of attaching: making sure tracefs is mounted, that the tracepoint exists,
//! and that its record layout is the one the kernel program was compiled for.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use agent_common::tracepoint::{self as tp, Field};
use nix::mount::{MsFlags, mount};

/// Where tracefs is mounted on current systems, and where older ones expose it.
const MOUNT_POINTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// What is wrong with tracefs or the tracepoint.
#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    /// tracefs is not mounted and mounting it failed.
    #[error("tracefs is not mounted and mounting it at {path} failed: {source}")]
    Mount {
        /// Where the mount was attempted.
        path: &'static str,
        /// Why it failed.
        #[source]
        source: nix::Error,
    },
    /// The tracepoint does not exist.
    #[error(
        "the sock:inet_sock_set_state tracepoint is missing (no {path}): tcpstates needs Linux ≥ 4.16"
    )]
    Missing {
        /// The format file that was looked for.
        path: PathBuf,
    },
    /// The format file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The format file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A field is not where the kernel program reads it.
    #[error(
        "the sock:inet_sock_set_state record has {field} at offset {found_offset} size {found_size}, \
         not offset {} size {}: tcpstates needs the layout of Linux ≥ 5.6",
        expected.offset,
        expected.size
    )]
    Layout {
        /// The field.
        field: &'static str,
        /// What the program expects.
        expected: Field,
        /// Offset in the kernel's format (0 when absent).
        found_offset: usize,
        /// Size in the kernel's format (0 when absent).
        found_size: usize,
    },
}

/// Returns the tracefs root, mounting tracefs at `/sys/kernel/tracing` when it is nowhere.
pub fn ensure_mounted() -> Result<PathBuf, TracefsError> {
    if let Some(root) = MOUNT_POINTS
        .iter()
        .map(Path::new)
        .find(|root| root.join("events").is_dir())
    {
        return Ok(root.to_path_buf());
    }
    let path = MOUNT_POINTS[0];
    mount(
        Some("nodev"),
        path,
        Some("tracefs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| TracefsError::Mount { path, source })?;
    Ok(PathBuf::from(path))
}

/// Checks that the tracepoint exists under `root` and that every field the kernel program
/// reads is at the offset and of the size it was compiled for.
pub fn check_tracepoint(root: &Path) -> Result<(), TracefsError> {
    let path = root
        .join("events")
        .join(tp::CATEGORY)
        .join(tp::NAME)
        .join("format");
    let format = match fs::read_to_string(&path) {
        Ok(format) => format,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(TracefsError::Missing { path });
        }
        Err(source) => return Err(TracefsError::Read { path, source }),
    };
    check_layout(&format)
}

fn check_layout(format: &str) -> Result<(), TracefsError> {
    for expected in tp::FIELDS {
        let (found_offset, found_size) = find_field(format, expected.name).unwrap_or((0, 0));
        if (found_offset, found_size) != (expected.offset, expected.size) {
            return Err(TracefsError::Layout {
                field: expected.name,
                expected,
                found_offset,
                found_size,
            });
        }
    }
    Ok(())
}

/// Offset and size of `name` in a tracepoint format file, whose field lines look like
/// `field:__u8 saddr[4];` then tab-separated `offset:32;` and `size:4;`.
fn find_field(format: &str, name: &str) -> Option<(usize, usize)> {
    format.lines().find_map(|line| {
        let mut parts = line.trim().split(';').map(str::trim);
        let declaration = parts.next()?.strip_prefix("field:")?;
        let declared = declaration.rsplit(' ').next()?;
        let declared = declared.split('[').next()?;
        if declared != name {
            return None;
        }
        let mut offset = None;
        let mut size = None;
        for part in parts {
            if let Some(value) = part.strip_prefix("offset:") {
                offset = value.parse().ok();
            } else if let Some(value) = part.strip_prefix("size:") {
                size = value.parse().ok();
            }
        }
        Some((offset?, size?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The format file of Linux 6.18, as read on the CI machine kind.
    const FORMAT_6_18: &str = "name: inet_sock_set_state
ID: 1571
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:const void * skaddr;	offset:8;	size:8;	signed:0;
	field:int oldstate;	offset:16;	size:4;	signed:1;
	field:int newstate;	offset:20;	size:4;	signed:1;
	field:__u16 sport;	offset:24;	size:2;	signed:0;
	field:__u16 dport;	offset:26;	size:2;	signed:0;
	field:__u16 family;	offset:28;	size:2;	signed:0;
	field:__u16 protocol;	offset:30;	size:2;	signed:0;
	field:__u8 saddr[4];	offset:32;	size:4;	signed:0;
	field:__u8 daddr[4];	offset:36;	size:4;	signed:0;
	field:__u8 saddr_v6[16];	offset:40;	size:16;	signed:0;
	field:__u8 daddr_v6[16];	offset:56;	size:16;	signed:0;
";

    #[test]
    fn current_layout_is_accepted() {
        check_layout(FORMAT_6_18).expect("6.18 layout matches");
    }

    #[test]
    fn pre_5_6_layout_is_refused_with_a_clear_message() {
        // Linux 4.16–5.5: no family field, protocol a u8 at 28.
        let old = FORMAT_6_18
            .replace(
                "\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;\n",
                "",
            )
            .replace(
                "field:__u16 protocol;\toffset:30;\tsize:2;",
                "field:__u8 protocol;\toffset:28;\tsize:1;",
            );
        let err = check_layout(&old).expect_err("old layout refused");
        let message = err.to_string();
        assert!(message.contains("family at offset 0 size 0"), "{message}");
        assert!(message.contains("Linux ≥ 5.6"), "{message}");
    }

    #[test]
    fn a_missing_tracepoint_names_the_kernel_version_needed() {
        let root =
            std::env::temp_dir().join(format!("tcpstates-no-tracefs-{}", std::process::id()));
        let err = check_tracepoint(&root).expect_err("no format file");
        assert!(matches!(err, TracefsError::Missing { .. }));
        assert!(
            err.to_string().ends_with("tcpstates needs Linux ≥ 4.16"),
            "{err}"
        );
    }

    #[test]
    fn fields_are_found_by_exact_name() {
        assert_eq!(find_field(FORMAT_6_18, "saddr"), Some((32, 4)));
        assert_eq!(find_field(FORMAT_6_18, "saddr_v6"), Some((40, 16)));
        assert_eq!(find_field(FORMAT_6_18, "addr"), None);
    }
}
