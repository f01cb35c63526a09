//! Counting a tracer's output lines that belong to the bench's connections, per transition.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

/// Line counts of one output file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LineCounts {
    /// Every line, header included.
    pub total: u64,
    /// Lines whose LPORT or RPORT is the bench's port.
    pub matched: u64,
    /// The matched lines by transition, keyed `OLDSTATE->NEWSTATE`.
    pub transitions: BTreeMap<String, u64>,
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
        let columns: Vec<&str> = line.split_whitespace().collect();
        if columns.iter().skip(2).any(|column| *column == port) {
            counts.matched += 1;
            *counts.transitions.entry(transition(&columns)).or_default() += 1;
        }
    }
    Ok(counts)
}

/// `OLDSTATE->NEWSTATE`: the columns around the last `->` (`?` if there is none).
fn transition(columns: &[&str]) -> String {
    match columns.iter().rposition(|column| *column == "->") {
        Some(arrow) if arrow > 0 && arrow + 1 < columns.len() => {
            format!("{}->{}", columns[arrow - 1], columns[arrow + 1])
        }
        _ => "?".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "\
SKADDR           C-PID C-COMM     LADDR           LPORT RADDR           RPORT OLDSTATE    -> NEWSTATE    MS
ffff9fd7e8192000 9099  loadgen    127.0.0.1       0     127.0.0.1       9099  CLOSE       -> SYN_SENT    0.000
ffff9fd7e8192400 0     swapper/1  127.0.0.1       9099  127.0.0.1       40000 LISTEN      -> SYN_RECV    0.000
ffff9fd7e8192800 9099  sshd       10.0.0.1        22    10.0.0.2        90990 ESTABLISHED -> FIN_WAIT1   9099.000
ffff9fd7e8192c00 0     Web Content 127.0.0.1      9099  127.0.0.1       40002 LISTEN      -> SYN_RECV    0.000
";

    #[test]
    fn counts_lines_with_the_port_as_lport_or_rport() {
        let counts = count(OUTPUT.as_bytes(), 9099).unwrap();
        assert_eq!((counts.total, counts.matched), (5, 3));
    }

    #[test]
    fn counts_matched_lines_by_transition() {
        let counts = count(OUTPUT.as_bytes(), 9099).unwrap();
        let transitions: Vec<(&str, u64)> = counts
            .transitions
            .iter()
            .map(|(name, n)| (name.as_str(), *n))
            .collect();
        assert_eq!(
            transitions,
            [("CLOSE->SYN_SENT", 1), ("LISTEN->SYN_RECV", 2)]
        );
    }
}
