//! The agent's exit summary: `tcpstates: N events written, M lost (A ring buffer full,
//! B BPF recursion)`, and with `--otlp` `tcpstates: OTLP: S sessions exported in
//! P spans, D spans dropped (queue full), F failed, R rejected, U possible duplicates,
//! E sessions evicted` (R and U absent from older agents' lines).

/// Event counts from the agent's summary line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Events written to the output.
    pub written: u64,
    /// Events lost, all causes.
    pub lost: u64,
    /// Lost because the ring buffer was full.
    pub ring_full: u64,
    /// Lost to the kernel's BPF recursion protection (program not run).
    pub recursion: u64,
}

impl Summary {
    /// Parses a summary line; `None` if `line` is not one.
    pub fn parse(line: &str) -> Option<Self> {
        let rest = line.trim().strip_prefix("tcpstates: ")?;
        let (written, rest) = rest.split_once(" events written, ")?;
        let (lost, rest) = rest.split_once(" lost (")?;
        let (ring_full, rest) = rest.split_once(" ring buffer full, ")?;
        let recursion = rest.strip_suffix(" BPF recursion)")?;
        Some(Self {
            written: written.parse().ok()?,
            lost: lost.parse().ok()?,
            ring_full: ring_full.parse().ok()?,
            recursion: recursion.parse().ok()?,
        })
    }

    /// Adds another run's counts to these.
    pub fn add(&mut self, other: &Self) {
        self.written += other.written;
        self.lost += other.lost;
        self.ring_full += other.ring_full;
        self.recursion += other.recursion;
    }
}

/// Export counts from the agent's OTLP summary line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OtlpSummary {
    /// Sessions whose root span was exported.
    pub sessions: u64,
    /// Spans exported, roots and children.
    pub spans: u64,
    /// Spans dropped because the export queue was full.
    pub dropped: u64,
    /// Spans whose export failed.
    pub failed: u64,
    /// Sessions ended early because the session table was full.
    pub evicted: u64,
}

impl OtlpSummary {
    /// Parses an OTLP summary line; `None` if `line` is not one.
    pub fn parse(line: &str) -> Option<Self> {
        let rest = line.trim().strip_prefix("tcpstates: OTLP: ")?;
        let (sessions, rest) = rest.split_once(" sessions exported in ")?;
        let (spans, rest) = rest.split_once(" spans, ")?;
        let (dropped, rest) = rest.split_once(" spans dropped (queue full), ")?;
        let (failed, rest) = rest.split_once(" failed, ")?;
        // `R rejected, U possible duplicates, ` stands here in newer agents' lines.
        let evicted = rest
            .rsplit(", ")
            .next()?
            .trim_end()
            .strip_suffix(" sessions evicted")?;
        Some(Self {
            sessions: sessions.parse().ok()?,
            spans: spans.parse().ok()?,
            dropped: dropped.parse().ok()?,
            failed: failed.parse().ok()?,
            evicted: evicted.parse().ok()?,
        })
    }

    /// Adds another run's counts to these.
    pub fn add(&mut self, other: &Self) {
        self.sessions += other.sessions;
        self.spans += other.spans;
        self.dropped += other.dropped;
        self.failed += other.failed;
        self.evicted += other.evicted;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_summary_line() {
        let line =
            "tcpstates: 3000020 events written, 7 lost (4 ring buffer full, 2 BPF recursion)\n";
        assert_eq!(
            Summary::parse(line),
            Some(Summary {
                written: 3_000_020,
                lost: 7,
                ring_full: 4,
                recursion: 2,
            })
        );
    }

    #[test]
    fn ignores_other_lines() {
        assert_eq!(
            Summary::parse("Tracing TCP state changes. Hit Ctrl-C to end."),
            None
        );
        assert_eq!(
            Summary::parse(
                "tcpstates: x events written, 0 lost (0 ring buffer full, 0 BPF recursion)"
            ),
            None
        );
    }

    #[test]
    fn parses_the_otlp_summary_line() {
        let line = "tcpstates: OTLP: 1520 sessions exported in 9120 spans, 3 spans dropped \
                    (queue full), 2 failed, 1 sessions evicted\n";
        assert_eq!(
            OtlpSummary::parse(line),
            Some(OtlpSummary {
                sessions: 1520,
                spans: 9120,
                dropped: 3,
                failed: 2,
                evicted: 1
            })
        );
        let newer = "tcpstates: OTLP: 1520 sessions exported in 9120 spans, 3 spans dropped \
                     (queue full), 2 failed, 4 rejected, 5 possible duplicates, 1 sessions evicted";
        assert_eq!(OtlpSummary::parse(newer), OtlpSummary::parse(line));
        let events = "tcpstates: 5 events written, 0 lost (0 ring buffer full, 0 BPF recursion)";
        assert_eq!(OtlpSummary::parse(events), None);
        assert_eq!(Summary::parse(line), None);
    }
}
