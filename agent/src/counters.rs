//! Loss accounting: the kernel program's own counters plus the kernel's count of runs of the
//! program it skipped (BPF recursion protection), so that no event is ever lost silently.

use std::{
    fmt, fs, io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use agent_common::counters::Counter;
use aya::{
    maps::{MapData, MapError, PerCpuArray},
    programs::ProgramFd,
};

/// Reads the counters of a loaded program.
pub struct KernelCounters {
    map: PerCpuArray<MapData, u64>,
    program: ProgramFd,
}

/// A snapshot of the counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Transitions dropped because the ring buffer was full.
    pub ring_full: u64,
    /// Runs of the main program the kernel skipped because it was already running on that CPU,
    /// less those the backstop program recovered; `None` if the kernel does not report them.
    pub recursion: Option<u64>,
    /// Transitions the main program missed that the backstop program handled.
    pub recovered: u64,
    /// Transitions of sockets the kernel could not give storage (delivered without duration
    /// or owner, not lost).
    pub no_storage: u64,
    /// Transitions of sockets of an unknown address family (skipped, not lost).
    pub unknown_family: u64,
}

impl Counts {
    /// Every event the kernel side could not deliver.
    pub fn lost(&self) -> u64 {
        self.ring_full + self.recursion.unwrap_or(0)
    }
}

impl fmt::Display for Counts {
    /// `L lost (A ring buffer full, B BPF recursion)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} lost ({} ring buffer full, ",
            self.lost(),
            self.ring_full
        )?;
        match self.recursion {
            Some(recursion) => write!(f, "{recursion} BPF recursion)"),
            None => write!(f, "BPF recursion not reported by this kernel)"),
        }
    }
}

impl KernelCounters {
    /// Wraps the program's `COUNTERS` map and the program itself.
    pub fn new(map: PerCpuArray<MapData, u64>, program: ProgramFd) -> Self {
        Self { map, program }
    }

    /// Reads every counter.
    pub fn read(&self) -> Result<Counts, MapError> {
        let sum = |counter: Counter| -> Result<u64, MapError> {
            Ok(self.map.get(&(counter as u32), 0)?.iter().sum())
        };
        let recovered = sum(Counter::Recovered)?;
        Ok(Counts {
            ring_full: sum(Counter::RingFull)?,
            recursion: recursion_misses(&self.program)
                .ok()
                .flatten()
                .map(|misses| misses.saturating_sub(recovered)),
            recovered,
            no_storage: sum(Counter::NoStorage)?,
            unknown_family: sum(Counter::UnknownFamily)?,
        })
    }
}

/// The program's `recursion_misses` from its fdinfo (Linux ≥ 5.12).
fn recursion_misses(program: &ProgramFd) -> io::Result<Option<u64>> {
    let fd = program.as_fd().as_raw_fd();
    let fdinfo = fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    Ok(fdinfo_field(&fdinfo, "recursion_misses"))
}

fn fdinfo_field(fdinfo: &str, name: &str) -> Option<u64> {
    fdinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then(|| value.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recursion_misses_is_read_from_fdinfo() {
        let fdinfo = "pos:\t0\nflags:\t02000002\nprog_type:\t5\nrun_cnt:\t0\nrecursion_misses:\t17\nverified_insns:\t90\n";
        assert_eq!(fdinfo_field(fdinfo, "recursion_misses"), Some(17));
        assert_eq!(fdinfo_field("prog_type:\t5\n", "recursion_misses"), None);
    }

    #[test]
    fn summary_names_every_cause() {
        let counts = Counts {
            ring_full: 2,
            recursion: Some(3),
            recovered: 4,
            no_storage: 1,
            unknown_family: 0,
        };
        assert_eq!(
            counts.to_string(),
            "5 lost (2 ring buffer full, 3 BPF recursion)"
        );
        let unreported = Counts {
            recursion: None,
            ..counts
        };
        assert_eq!(unreported.lost(), 2);
    }
}
