//! `palisade validate`: every error and warning, naming file, object and field.

use palisade_policy::manifest::Loaded;
use palisade_policy::model::workload::Simulation;

use crate::args::Format;
use crate::EXIT_INVALID;

/// Prints errors and warnings (lint warnings too, each naming its file); returns the
/// process exit code: [`EXIT_INVALID`] on any error, a kind `--live` could not list
/// (what it holds went unchecked), or any warning with `strict`.
pub fn report(
    loaded: &Loaded,
    sim: &Simulation,
    live: &crate::inputs::InputSource,
    strict: bool,
    format: Format,
) -> anyhow::Result<i32> {
    let lint = loaded.lint();
    let warnings = loaded.warnings.len() + lint.len();
    let incomplete: Vec<String> = live
        .forbidden
        .iter()
        .map(|k| format!("the input is INCOMPLETE: the credentials may not list {k}"))
        .collect();
    let code = if !loaded.errors.is_empty() || !incomplete.is_empty() || (strict && warnings > 0) {
        EXIT_INVALID
    } else {
        0
    };
    if matches!(format, Format::Json | Format::Yaml) {
        let c = &loaded.cluster;
        let mut errors = crate::inputs::errors_json(loaded);
        if let Some(list) = errors.as_array_mut() {
            for (i, m) in incomplete.iter().enumerate() {
                list.insert(i, serde_json::json!({"file": null, "line": null, "column": null, "object": null, "field": null, "message": m}));
            }
        }
        for n in &live.notes {
            eprintln!("{n}");
        }
        let mut v = serde_json::json!({
            "errors": errors,
            "warnings": loaded.warnings.iter().chain(lint.iter()).map(|w| serde_json::json!({
                "file": w.file,
                "line": w.at.map(|p| p.line),
                "column": w.at.map(|p| p.column),
                "object": w.object,
                "field": w.field,
                "message": w.message,
            })).collect::<Vec<_>>(),
            "source": live.json(loaded),
            "loaded": {
                "networkPolicies": c.network_policies.len(),
                "clusterPolicies": c.cluster_policies.len(),
                "calicoPolicies": c.calico_policies.len(),
                "calicoNetworkSets": c.network_sets.len(),
                "pods": c.pods.len(),
                "namespaces": c.namespaces.len(),
            },
        });
        crate::inputs::add_simulation_json(&mut v, sim);
        crate::select::print_document(&v, format)?;
        return Ok(code);
    }
    for m in &incomplete {
        println!("error: {m}");
    }
    for n in &live.notes {
        println!("{n}");
    }
    for e in &loaded.errors {
        println!("error: {e}");
    }
    for w in loaded.warnings.iter().chain(lint.iter()) {
        println!("warning: {w}");
    }
    let c = &loaded.cluster;
    println!(
        "{} error(s), {} warning(s); loaded {} NetworkPolicies, {} cluster policies, {} Calico policies, {} Calico network sets, {} pods, {} namespaces",
        loaded.errors.len() + incomplete.len(),
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
    Ok(code)
}
