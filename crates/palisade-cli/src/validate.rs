//! `palisade validate`: every error and warning, naming file, object and field.

use palisade_policy::manifest::{self, Loaded};

/// Exit code when manifests have errors.
pub const EXIT_INVALID: i32 = 1;

/// Prints errors and warnings; returns the process exit code.
pub fn report(loaded: &Loaded, strict: bool) -> i32 {
    let lint = manifest::lint(&loaded.cluster);
    for e in &loaded.errors {
        println!("error: {e}");
    }
    for w in loaded.warnings.iter().chain(lint.iter()) {
        println!("warning: {w}");
    }
    let c = &loaded.cluster;
    let warnings = loaded.warnings.len() + lint.len();
    println!(
        "{} error(s), {} warning(s); loaded {} NetworkPolicies, {} cluster policies, {} pods, {} namespaces",
        loaded.errors.len(),
        warnings,
        c.network_policies.len(),
        c.cluster_policies.len(),
        c.pods.len(),
        c.namespaces.len()
    );
    if !loaded.errors.is_empty() || (strict && warnings > 0) {
        EXIT_INVALID
    } else {
        0
    }
}
