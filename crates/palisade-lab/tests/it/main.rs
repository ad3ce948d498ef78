//! Privileged lab tests: real namespaces, real CNI plugins, real packets.
//! Skipped (with a message) when not root or when the CNI plugins are missing.

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

/// Whether the machine can run lab tests.
pub fn can_run() -> bool {
    let ok = nix::unistd::geteuid().is_root() && std::path::Path::new("/usr/lib/cni/ptp").exists();
    if !ok {
        eprintln!("skipped: needs root and /usr/lib/cni (scripts/setup.sh)");
    }
    ok
}
