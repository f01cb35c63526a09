//! Conversion of kernel timestamps (CLOCK_MONOTONIC, what `bpf_ktime_get_ns` returns) to
//! wall-clock time, with one offset taken at start so that differences are preserved exactly.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use nix::time::{ClockId, clock_gettime};

/// Maps kernel monotonic nanoseconds to wall-clock time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WallClock {
    /// Wall-clock nanoseconds since the Unix epoch at monotonic time 0.
    epoch_at_boot_ns: i128,
}

impl WallClock {
    /// Reads both clocks now. The realtime clock is read on both sides of the monotonic one
    /// and averaged, which bounds the offset's error by the time between the reads.
    pub fn now() -> nix::Result<Self> {
        let before = clock_gettime(ClockId::CLOCK_REALTIME)?;
        let mono = clock_gettime(ClockId::CLOCK_MONOTONIC)?;
        let after = clock_gettime(ClockId::CLOCK_REALTIME)?;
        let ns = |t: nix::sys::time::TimeSpec| {
            i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec())
        };
        let realtime = (ns(before) + ns(after)) / 2;
        Ok(Self::from_epoch_at_boot_ns(realtime - ns(mono)))
    }

    /// A clock whose monotonic zero is `epoch_at_boot_ns` after the Unix epoch.
    pub fn from_epoch_at_boot_ns(epoch_at_boot_ns: i128) -> Self {
        Self { epoch_at_boot_ns }
    }

    /// Wall-clock time of a kernel timestamp.
    pub fn system_time(&self, ts_ns: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.unix_nanos(ts_ns))
    }

    /// Wall-clock time of a kernel timestamp in nanoseconds since the Unix epoch (OTLP's
    /// time), 0 before it and `u64::MAX` beyond 2554.
    pub fn unix_nanos(&self, ts_ns: u64) -> u64 {
        let since_epoch = self.epoch_at_boot_ns + i128::from(ts_ns);
        u64::try_from(since_epoch.max(0)).unwrap_or(u64::MAX)
    }

    /// Wall-clock time of a kernel timestamp, as a UTC date-time.
    pub fn utc(&self, ts_ns: u64) -> DateTime<Utc> {
        self.system_time(ts_ns).into()
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds: the kernel program's clock.
pub fn monotonic_now_ns() -> nix::Result<u64> {
    let now = clock_gettime(ClockId::CLOCK_MONOTONIC)?;
    let ns = i128::from(now.tv_sec()) * 1_000_000_000 + i128::from(now.tv_nsec());
    Ok(u64::try_from(ns).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_are_preserved_to_the_nanosecond() {
        let clock = WallClock::from_epoch_at_boot_ns(1_700_000_000_123_456_789);
        let a = clock.system_time(5_000_000_001);
        let b = clock.system_time(5_200_000_003);
        assert_eq!(
            b.duration_since(a).expect("b after a"),
            Duration::from_nanos(200_000_002)
        );
    }

    #[test]
    fn unix_nanos_is_the_system_time_in_nanoseconds_clamped_at_the_epoch() {
        let clock = WallClock::from_epoch_at_boot_ns(1_700_000_000_123_456_789);
        assert_eq!(clock.unix_nanos(5), 1_700_000_000_123_456_794);
        let since = clock.system_time(5).duration_since(UNIX_EPOCH).ok();
        assert_eq!(
            since.map(|since| since.as_nanos()),
            Some(1_700_000_000_123_456_794)
        );
        let before_the_epoch = WallClock::from_epoch_at_boot_ns(-10);
        assert_eq!(before_the_epoch.unix_nanos(5), 0);
        assert_eq!(before_the_epoch.unix_nanos(15), 5);
    }

    #[test]
    fn now_agrees_with_the_system_clock() {
        let clock = WallClock::now().expect("clocks readable");
        let mono_ns = monotonic_now_ns().expect("monotonic clock");
        let skew = SystemTime::now()
            .duration_since(clock.system_time(mono_ns))
            .unwrap_or_else(|e| e.duration());
        assert!(skew < Duration::from_millis(50), "skew {skew:?}");
    }
}
