//! When `lab apply` against the Kubernetes lab may return: once every node's agent has
//! the applied objects in force, observed through the agent's own account of what it
//! enforces, not inferred from time or from a pass having run.
//!
//! The agent reports, per watched kind, `resource_version_in_force`: the highest
//! resourceVersion its watch had delivered before its last successful pass began
//! (`palisade_api::WatchStatus`). An object written at resourceVersion R is in force
//! on a node once that node's figure for the object's kind is at least R. So:
//!
//! 1. after the write (and after the pods are Ready: their addresses, written by the
//!    kubelets, are what the other nodes' tables need), read back the applied objects
//!    and, when pods or workloads were applied, every pod of their namespaces; per
//!    kind, the highest resourceVersion is the target ([`targets`]);
//! 2. ask every node's agent for a pass (`sync`: a pass that re-reads its source),
//!    then for its status; a node has converged when the pass succeeded, every watch
//!    is healthy and every target kind is in force at its target ([`lagging`]);
//! 3. until a deadline; then fail naming every node that has not, and why.
//!
//! A deletion has no resourceVersion to read back (the object is gone), so `lab delete`
//! waits for a pass and for each deleted policy to leave every node's
//! `NodePolicyStatus` (`kube_lab::delete`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::bail;
use palisade_agent::api::WatchStatus;
use palisade_agent::kube_source::WatchedKind;
use palisade_kube_lab::persistent::PersistentControlPlane;
use serde_json::Value;

use crate::kube_lab::KubeLab;

/// Kinds whose objects, when applied, make every pod of their namespace a target.
const WORKLOADS: &[&str] = &[
    "Pod",
    "Deployment",
    "ReplicaSet",
    "StatefulSet",
    "DaemonSet",
    "Job",
];

/// The name the agents report `o`'s kind under (`WatchStatus::kind`, the Debug name of
/// the agent's `WatchedKind`), found by group and kind: Calico's `NetworkPolicy` is
/// `CalicoNetworkPolicy`, never networking.k8s.io's `NetworkPolicy` (taking one for
/// the other made `lab apply` of a Calico policy wait for a kind with no such object).
/// A kind the agent does not watch keeps its own name.
fn reported_kind(o: &Value) -> Option<String> {
    let kind = o["kind"].as_str()?;
    let group = o["apiVersion"]
        .as_str()
        .and_then(|v| v.rsplit_once('/'))
        .map_or("", |(g, _)| g);
    let watched = WatchedKind::ALL.iter().find(|k| {
        let r = k.api_resource();
        r.group == group && r.kind == kind
    });
    Some(watched.map_or_else(|| kind.to_string(), |k| format!("{k:?}")))
}

/// The highest `metadata.resourceVersion` per reported kind ([`reported_kind`]) among
/// `items` (objects as the API server returned them).
pub fn max_by_kind<'a>(
    items: impl IntoIterator<Item = &'a Value>,
    out: &mut BTreeMap<String, u64>,
) {
    for o in items {
        let (Some(kind), Some(rv)) = (
            reported_kind(o),
            o["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|r| r.parse::<u64>().ok()),
        ) else {
            continue;
        };
        let e = out.entry(kind).or_insert(0);
        *e = (*e).max(rv);
    }
}

/// What a node still lacks: each target kind it has not in force at its target, each
/// watch that is not healthy. Empty: converged.
pub fn lagging(targets: &BTreeMap<String, u64>, watches: &[WatchStatus]) -> Vec<String> {
    let mut out = Vec::new();
    for w in watches.iter().filter(|w| !w.healthy) {
        out.push(format!(
            "watch of {} not healthy ({})",
            w.kind,
            w.last_error.as_deref().unwrap_or("not listed yet")
        ));
    }
    for (kind, want) in targets {
        match watches.iter().find(|w| &w.kind == kind) {
            // A kind the agent does not watch (a Deployment, a ConfigMap) is not its
            // business; its effects (pods) are targets of their own.
            None => {}
            Some(w) => match w.resource_version_in_force {
                Some(have) if have >= *want => {}
                have => out.push(format!(
                    "{kind} in force at resourceVersion {} of {want}",
                    have.map_or("none".to_string(), |h| h.to_string())
                )),
            },
        }
    }
    out
}

/// The targets of an apply of `applied` (step 1 of the module doc).
pub fn targets(
    cp: &PersistentControlPlane,
    applied: &[Value],
) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    if applied.is_empty() {
        return Ok(out);
    }
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": applied});
    let now: Value = serde_json::from_str(&cp.kubectl(
        &["get", "--ignore-not-found", "-f", "-", "-o", "json"],
        Some(&list.to_string()),
    )?)?;
    // One object comes back as itself, several as a List.
    match now["items"].as_array() {
        Some(items) => max_by_kind(items, &mut out),
        None => max_by_kind([&now], &mut out),
    }
    let namespaces: BTreeSet<&str> = applied
        .iter()
        .filter(|o| WORKLOADS.contains(&o["kind"].as_str().unwrap_or_default()))
        .map(|o| o["metadata"]["namespace"].as_str().unwrap_or("default"))
        .collect();
    for ns in namespaces {
        let pods: Value =
            serde_json::from_str(&cp.kubectl(&["get", "pods", "-n", ns, "-o", "json"], None)?)?;
        let items = pods["items"].as_array().cloned().unwrap_or_default();
        // A list's items carry no kind: they are pods.
        let items: Vec<Value> = items
            .into_iter()
            .map(|mut p| {
                p["kind"] = "Pod".into();
                p
            })
            .collect();
        max_by_kind(&items, &mut out);
    }
    Ok(out)
}

/// Steps 2 and 3 of the module doc: every node of `lab` converged on `targets` within
/// `timeout`. Prints the objects each node rejected (as warnings: the rest is in
/// force). Returns the highest generation in force.
pub fn wait(
    lab: &KubeLab,
    targets: &BTreeMap<String, u64>,
    timeout: Duration,
) -> anyhow::Result<u64> {
    let deadline = Instant::now() + timeout;
    let mut waiting: BTreeMap<&str, (&std::path::Path, Vec<String>)> = lab
        .nodes
        .iter()
        .map(|n| {
            (
                n.net.name.as_str(),
                (n.socket.as_path(), vec!["not asked yet".to_string()]),
            )
        })
        .collect();
    let mut highest = 0;
    loop {
        for (node, (socket, why)) in waiting.iter_mut() {
            *why = match converged(socket, targets) {
                Ok((generation, errors)) => {
                    for e in errors {
                        eprintln!("warning: node {node}: rejected by the agent: {e}");
                    }
                    highest = highest.max(generation);
                    Vec::new()
                }
                Err(lag) => lag,
            };
        }
        waiting.retain(|_, (_, why)| !why.is_empty());
        if waiting.is_empty() {
            return Ok(highest);
        }
        if Instant::now() > deadline {
            let nodes: Vec<String> = waiting
                .iter()
                .map(|(node, (_, why))| format!("{node} ({})", why.join("; ")))
                .collect();
            bail!(
                "not in force after {}s on {} of {} nodes: {}",
                timeout.as_secs(),
                nodes.len(),
                lab.nodes.len(),
                nodes.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One node: a pass, then its status. `Ok((generation, rejected))` once converged,
/// else what it lacks.
fn converged(
    socket: &std::path::Path,
    targets: &BTreeMap<String, u64>,
) -> Result<(u64, Vec<String>), Vec<String>> {
    let sync = crate::inspect::call(socket, &palisade_agent::api::Sync { full: false })
        .map_err(|e| vec![format!("pass failed: {e:#}")])?;
    let status = crate::inspect::call(socket, &palisade_agent::api::Status)
        .map_err(|e| vec![format!("status: {e:#}")])?
        .data;
    let lag = lagging(targets, &status.watches);
    if lag.is_empty() {
        Ok((status.generation.max(sync.generation), sync.data.errors))
    } else {
        Err(lag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(kind: &str, healthy: bool, in_force: Option<u64>) -> WatchStatus {
        WatchStatus {
            kind: kind.into(),
            healthy,
            synced: true,
            resource_version_in_force: in_force,
            ..Default::default()
        }
    }

    #[test]
    fn targets_are_the_highest_resource_version_per_kind() {
        let items = [
            serde_json::json!({"kind": "Pod", "metadata": {"resourceVersion": "12"}}),
            serde_json::json!({"kind": "Pod", "metadata": {"resourceVersion": "30"}}),
            serde_json::json!({"kind": "NetworkPolicy", "metadata": {"resourceVersion": "25"}}),
            serde_json::json!({"kind": "Namespace", "metadata": {}}),
        ];
        let mut t = BTreeMap::new();
        max_by_kind(&items, &mut t);
        assert_eq!(
            t,
            BTreeMap::from([("Pod".to_string(), 30), ("NetworkPolicy".to_string(), 25)])
        );
    }

    #[test]
    fn a_calico_network_policy_is_a_target_of_the_calico_watch_not_of_networking_k8s_io() {
        let items = [
            serde_json::json!({"apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy",
                "metadata": {"resourceVersion": "351"}}),
            serde_json::json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"resourceVersion": "20"}}),
            serde_json::json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"resourceVersion": "30"}}),
            serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"resourceVersion": "40"}}),
        ];
        let mut t = BTreeMap::new();
        max_by_kind(&items, &mut t);
        assert_eq!(
            t,
            BTreeMap::from([
                ("CalicoNetworkPolicy".to_string(), 351),
                ("NetworkPolicy".to_string(), 20),
                ("Pod".to_string(), 30),
                ("Deployment".to_string(), 40),
            ])
        );
    }

    #[test]
    fn a_node_converges_once_each_target_kind_is_in_force_at_its_target_and_watches_are_healthy() {
        let targets = BTreeMap::from([
            ("NetworkPolicy".to_string(), 25),
            ("Pod".to_string(), 30),
            ("Deployment".to_string(), 40),
        ]);
        let mut w = vec![
            watch("NetworkPolicy", true, Some(25)),
            watch("Pod", true, Some(29)),
            watch("Namespace", true, None),
        ];
        let lag = lagging(&targets, &w);
        assert_eq!(lag, ["Pod in force at resourceVersion 29 of 30"]);
        w[1].resource_version_in_force = Some(31);
        assert!(
            lagging(&targets, &w).is_empty(),
            "a kind the agent does not watch (Deployment) is no target"
        );
        w[2].healthy = false;
        assert_eq!(
            lagging(&targets, &w),
            ["watch of Namespace not healthy (not listed yet)"]
        );
        let never = vec![watch("NetworkPolicy", true, None), watch("Pod", true, None)];
        assert_eq!(lagging(&targets, &never).len(), 2);
    }
}
