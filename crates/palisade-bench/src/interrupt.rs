//! Ctrl-C handling: a SIGINT handler that only sets a flag, checked between steps.
//!
//! Why a flag and not cleanup in the handler: deleting namespaces means running `ip`,
//! which is not async-signal-safe. Instead every blocking call in a run has a timeout of
//! at most one second, the runner calls [`check`] between steps, and returns
//! [`BenchError::Interrupted`]; unwinding drops the test bed guard, which deletes the
//! namespaces (and with them rules and attachments).

use std::sync::atomic::{AtomicBool, Ordering};

use crate::BenchError;

/// Set by the handler; cleared when a guard is installed.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Returns [`BenchError::Interrupted`] once SIGINT has arrived.
pub fn check() -> Result<(), BenchError> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err(BenchError::Interrupted)
    } else {
        Ok(())
    }
}

/// The installed handler; the previous disposition is restored on drop.
pub struct Guard {
    previous: libc::sigaction,
}

impl Guard {
    /// Installs the flag-setting SIGINT handler.
    pub fn install() -> Guard {
        INTERRUPTED.store(false, Ordering::SeqCst);
        // SAFETY: sigaction with a zeroed struct, an async-signal-safe handler (one
        // atomic store) and a valid out-pointer for the old action.
        unsafe {
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = on_sigint as *const () as usize;
            libc::sigemptyset(&mut new.sa_mask);
            let mut previous: libc::sigaction = std::mem::zeroed();
            libc::sigaction(libc::SIGINT, &new, &mut previous);
            Guard { previous }
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: restores the disposition saved by `install`.
        unsafe {
            libc::sigaction(libc::SIGINT, &self.previous, std::ptr::null_mut());
        }
    }
}
