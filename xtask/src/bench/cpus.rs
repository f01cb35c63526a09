//! `--pin`: the load on one CPU, every tracer and the receiver on another, so the connection
//! rate measures what tracing costs the traced application's own CPU (the BPF program runs
//! there, in the application's context) while the agent and the collector work on a core of
//! their own, as they would on a host with spare cores.

use std::io;
use std::os::unix::process::CommandExt as _;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Which CPU each side of a pinned bench runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pinning {
    /// The load generator's CPU.
    pub load: usize,
    /// The tracers' and the receiver's CPU.
    pub observers: usize,
}

impl Pinning {
    /// With `pin`, the split of this machine's CPUs, announced as `what` puts it (`"the load runs
    /// on CPU 0, {observers} on CPU 1"`); `None` without.
    pub fn asked(pin: bool, what: &str, observers: &str) -> Result<Option<Self>> {
        if !pin {
            return Ok(None);
        }
        let cpus = std::thread::available_parallelism().context("counting CPUs")?;
        let pinning = Self::split(cpus.get())?;
        println!(
            "{what}: the load runs on CPU {}, {observers} on CPU {}",
            pinning.load, pinning.observers
        );
        Ok(Some(pinning))
    }

    /// The load on CPU 0, the observers on the machine's last CPU; an error on one CPU.
    pub fn split(cpus: usize) -> Result<Self> {
        if cpus < 2 {
            bail!("--pin needs at least 2 CPUs, this machine has {cpus}");
        }
        Ok(Self {
            load: 0,
            observers: cpus - 1,
        })
    }
}

/// Makes `cmd`'s process (and everything it starts) run only on `cpu`.
pub fn pin(cmd: &mut Command, cpu: usize) {
    // SAFETY: the closure runs in the forked child before exec and only calls
    // async-signal-safe functions (CPU_ZERO/CPU_SET are plain bit operations).
    unsafe {
        cmd.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_ZERO(&mut set);
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Pins `cmd` to `cpu` when there is one.
pub fn pin_to(cmd: &mut Command, cpu: Option<usize>) {
    if let Some(cpu) = cpu {
        pin(cmd, cpu);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_load_and_observers() {
        assert_eq!(
            Pinning::split(2).unwrap(),
            Pinning {
                load: 0,
                observers: 1
            }
        );
        assert_eq!(Pinning::split(8).unwrap().observers, 7);
        assert!(Pinning::split(1).is_err());
    }

    #[test]
    fn a_pinned_child_runs_on_its_cpu_only() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "grep Cpus_allowed_list /proc/self/status"]);
        pin(&mut cmd, 0);
        let output = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        assert_eq!(text.split_whitespace().last(), Some("0"), "{text}");
    }
}
