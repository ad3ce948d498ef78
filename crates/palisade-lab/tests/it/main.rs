//! Privileged lab tests: real namespaces, real CNI plugins, real packets.
//! Without root or the CNI plugins they fail as root or in CI, and are skipped
//! (with a `SKIPPED` line) only for a developer (`palisade_testkit::require`).

mod chain;
mod lab;

use std::sync::atomic::{AtomicUsize, Ordering};

/// A lab name unique to this process and call: `plt<pid>x<n>`.
pub fn unique_name() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "plt{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether this lab test runs: panics as root or in CI when the machine lacks root,
/// `ip` or a CNI plugin; `false` (after printing `SKIPPED`) only for a developer.
pub fn can_run() -> bool {
    palisade_testkit::require(palisade_testkit::LAB)
}
