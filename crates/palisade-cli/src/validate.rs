//! `palisade validate`: every error and warning, naming file, object and field.

use palisade_policy::manifest::Loaded;
use palisade_policy::model::workload::Simulation;

use crate::EXIT_INVALID;

/// Prints errors and warnings (lint warnings too, each naming its file); returns the
/// process exit code: [`EXIT_INVALID`] on any error, or any warning with `strict`.
pub fn report(loaded: &Loaded, sim: &Simulation, strict: bool) -> i32 {
    let lint = loaded.lint();
    for e in &loaded.errors {
        println!("error: {e}");
    }
    for w in loaded.warnings.iter().chain(lint.iter()) {
        println!("warning: {w}");
    }
    let c = &loaded.cluster;
    let warnings = loaded.warnings.len() + lint.len();
    println!(
        "{} error(s), {} warning(s); loaded {} NetworkPolicies, {} cluster policies, {} Calico policies, {} Calico network sets, {} pods, {} namespaces",
        loaded.errors.len(),
        warnings,
        c.network_policies.len(),
        c.cluster_policies.len(),
        c.calico_policies.len(),
        c.network_sets.len(),
        c.pods.len(),
        c.namespaces.len()
    );
    if !sim.workloads.is_empty() {
        println!(
            "{} workload(s) counted as {} pod(s); {} pod(s) given simulated addresses",
            sim.workloads.len(),
            sim.workloads.iter().map(|w| w.pods.len()).sum::<usize>(),
            sim.addressed.len()
        );
    }
    if !loaded.errors.is_empty() || (strict && warnings > 0) {
        EXIT_INVALID
    } else {
        0
    }
}
