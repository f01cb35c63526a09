//! Ctrl-C during the bench: remember it so the bench stops at the next step and its guards
//! (network namespace, scratch directory) clean up, instead of dying on the spot.

use std::io;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Result, bail};

/// Set by the SIGINT handler.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs the SIGINT handler. The children (tracers, load generator) keep the default action,
/// since exec resets handled signals, and stop on Ctrl-C as usual.
pub fn install() -> io::Result<()> {
    // SAFETY: an all-zero `sigaction` is a valid value (empty mask, no flags) that is then filled in.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t;
    action.sa_flags = libc::SA_RESTART;
    // SAFETY: `action` is initialised, the handler only stores to an atomic (async-signal-safe),
    // and a null old-action pointer is allowed.
    let rc = unsafe { libc::sigaction(libc::SIGINT, &raw const action, ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Fails if Ctrl-C was pressed.
pub fn check() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}
