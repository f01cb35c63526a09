//! Counting a tracer's output lines that belong to the bench's connections.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

/// Line counts of one output file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LineCounts {
    /// Every line, header included.
    pub total: u64,
    /// Lines whose LPORT or RPORT is the bench's port.
    pub matched: u64,
}

/// Counts the lines of the file at `path`, and those that belong to `port`.
pub fn count_file(path: &Path, port: u16) -> io::Result<LineCounts> {
    count(BufReader::new(File::open(path)?), port)
}

/// Counts lines, and lines that have `port` as a whole column after the first two (SKADDR and
/// C-PID): in the default tcpstates layout (`SKADDR C-PID C-COMM LADDR LPORT RADDR RPORT OLDSTATE
/// -> NEWSTATE MS`) only LPORT and RPORT can hold a bare port number, since MS has decimals.
pub fn count(reader: impl BufRead, port: u16) -> io::Result<LineCounts> {
    let port = port.to_string();
    let mut counts = LineCounts::default();
    for line in reader.split(b'\n') {
        let line = line?;
        counts.total += 1;
        let line = String::from_utf8_lossy(&line);
        if line.split_whitespace().skip(2).any(|column| column == port) {
            counts.matched += 1;
        }
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "\
SKADDR           C-PID C-COMM     LADDR           LPORT RADDR           RPORT OLDSTATE    -> NEWSTATE    MS
ffff9fd7e8192000 9099  loadgen    127.0.0.1       0     127.0.0.1       9099  CLOSE       -> SYN_SENT    0.000
ffff9fd7e8192400 0     swapper/1  127.0.0.1       9099  127.0.0.1       40000 LISTEN      -> SYN_RECV    0.000
ffff9fd7e8192800 9099  sshd       10.0.0.1        22    10.0.0.2        90990 ESTABLISHED -> FIN_WAIT1   9099.000
";

    #[test]
    fn counts_lines_with_the_port_as_lport_or_rport() {
        let counts = count(OUTPUT.as_bytes(), 9099).unwrap();
        assert_eq!(
            counts,
            LineCounts {
                total: 4,
                matched: 2
            }
        );
    }
}
