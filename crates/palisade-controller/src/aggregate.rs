//! From the nodes' reports and the desired state to answers: per policy "in force on K
//! of M nodes that have selected pods, as of resourceVersion R", and per pod whether
//! every policy selecting it is in force on its node. Pure: no I/O, so every rule here
//! is unit-tested.
//!
//! Rules:
//!
//! 1. A policy's *current version* is its `metadata.uid` and `resourceVersion` as the
//!    controller's own watch has it now (a version the decoder rejected included).
//! 2. M is the set of nodes running pods the policy selects
//!    ([`palisade_policy::verdict::selecting`], the evaluator's rule), as decoded from
//!    the last good version of the policy; a policy that never decoded selects nothing.
//! 3. A node has the policy in force when its `NodePolicyStatus` lists the policy's key
//!    with the current uid and resourceVersion. An older version in force there counts
//!    as pending.
//! 4. Reason, first match wins: `Invalid` when some node rejected the current version;
//!    `Pending` when some node of M does not have it in force; else `InForce`.

use std::collections::{BTreeMap, BTreeSet};

use palisade_crds::{NodeError, NodePolicyStatusSpec, PolicyAggregate, PolicyRef};
use palisade_policy::model::Cluster;

/// Most pending nodes named in a message (a condition message is at most 32 KiB; the
/// full list is in `pendingNodes`).
pub const MESSAGE_NODES: usize = 10;
/// Most characters of the first error quoted in a message.
pub const MESSAGE_ERROR_CHARS: usize = 1000;

/// The current version of one policy (rule 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    /// The policy.
    pub policy: PolicyRef,
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.resourceVersion` at which this generation was first seen.
    pub resource_version: String,
    /// `metadata.generation` (0: none).
    pub generation: i64,
}

impl Current {
    /// Whether a node's version (or error) is about this version: the same generation
    /// when the API sets one (status writes change the resourceVersion, not the
    /// generation), else the same resourceVersion.
    pub fn is(&self, resource_version: &str, generation: i64) -> bool {
        if self.generation > 0 && generation > 0 {
            generation == self.generation
        } else {
            resource_version == self.resource_version
        }
    }
}

/// The key of a policy in [`Cluster`]'s maps (`network_policies`: `namespace/name`,
/// `cluster_policies`: `Kind/name`).
pub fn model_key(p: &PolicyRef) -> String {
    match &p.namespace {
        Some(ns) if p.kind == "NetworkPolicy" => format!("{ns}/{}", p.name),
        _ => format!("{}/{}", p.kind, p.name),
    }
}

/// The policy keys ([`PolicyRef::key`]) selecting a model pod.
fn selecting_keys(cluster: &Cluster, pod: &palisade_policy::model::Pod) -> Vec<String> {
    let s = palisade_policy::verdict::selecting(cluster, pod);
    s.network_policies
        .into_iter()
        .map(|k| format!("NetworkPolicy/{k}"))
        .chain(s.cluster_policies)
        .collect()
}

/// Nodes with pods each policy selects (rule 2), by policy key.
pub fn selected_nodes(cluster: &Cluster) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for pod in cluster.pods.values() {
        let Some(node) = &pod.node_name else { continue };
        for key in selecting_keys(cluster, pod) {
            out.entry(key).or_default().insert(node.clone());
        }
    }
    out
}

/// Whether `node`'s report has `current` in force (rule 3).
pub fn in_force_on(node: Option<&NodePolicyStatusSpec>, current: &Current) -> bool {
    node.and_then(|n| n.policies.get(&current.policy.key()))
        .is_some_and(|v| v.uid == current.uid && current.is(&v.resource_version, v.generation))
}

/// The aggregate of one policy. `since` is left empty: the caller keeps it across passes.
pub fn policy(
    current: &Current,
    selected: Option<&BTreeSet<String>>,
    nodes: &BTreeMap<String, NodePolicyStatusSpec>,
) -> PolicyAggregate {
    let empty = BTreeSet::new();
    let selected = selected.unwrap_or(&empty);
    let key = current.policy.key();
    let in_force: Vec<&String> = selected
        .iter()
        .filter(|n| in_force_on(nodes.get(*n), current))
        .collect();
    let pending: Vec<String> = selected
        .iter()
        .filter(|n| !in_force_on(nodes.get(*n), current))
        .cloned()
        .collect();
    let mut errors = Vec::new();
    for (node, report) in nodes {
        let messages: Vec<String> = report
            .errors
            .iter()
            .filter(|e| e.object.key() == key && current.is(&e.resource_version, e.generation))
            .map(|e| match e.field.as_str() {
                "" => e.message.clone(),
                f => format!("{f}: {}", e.message),
            })
            .collect();
        if !messages.is_empty() {
            errors.push(NodeError {
                node: node.clone(),
                message: messages.join("; "),
            });
        }
    }
    let reason = if !errors.is_empty() {
        "Invalid"
    } else if !pending.is_empty() {
        "Pending"
    } else {
        "InForce"
    };
    let mut message = format!(
        "in force on {} of {} nodes that have selected pods, as of resourceVersion {}",
        in_force.len(),
        selected.len(),
        current.resource_version
    );
    if let Some(e) = errors.first() {
        let first: String = e.message.chars().take(MESSAGE_ERROR_CHARS).collect();
        message.push_str(&format!(
            "; rejected by {} node(s), e.g. {}: {first}",
            errors.len(),
            e.node,
        ));
    }
    if !pending.is_empty() {
        let named: Vec<&str> = pending
            .iter()
            .take(MESSAGE_NODES)
            .map(String::as_str)
            .collect();
        message.push_str(&format!("; not yet on {}", named.join(", ")));
        if pending.len() > MESSAGE_NODES {
            message.push_str(&format!(" and {} more", pending.len() - MESSAGE_NODES));
        }
    }
    PolicyAggregate {
        uid: current.uid.clone(),
        resource_version: current.resource_version.clone(),
        generation: current.generation,
        nodes_selected: selected.len() as u32,
        nodes_in_force: in_force.len() as u32,
        in_force: format!("{}/{}", in_force.len(), selected.len()),
        pending_nodes: pending,
        errors,
        reason: reason.to_string(),
        message,
        since: String::new(),
    }
}

/// The readiness answer for one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodReadiness {
    /// Every policy selecting the pod is in force on its node.
    pub ready: bool,
    /// `PoliciesInForce` or `PoliciesPending`.
    pub reason: &'static str,
    /// For people: which policies, on which node.
    pub message: String,
}

/// Whether every policy selecting pod `key` (`namespace/name`) is in force at its
/// current version on the pod's node. `None` when the pod is not in the desired state
/// or not scheduled (nothing to say yet).
pub fn pod(
    cluster: &Cluster,
    key: &str,
    current: &BTreeMap<String, Current>,
    nodes: &BTreeMap<String, NodePolicyStatusSpec>,
) -> Option<PodReadiness> {
    let pod = cluster.pods.get(key)?;
    let node = pod.node_name.as_ref()?;
    let report = nodes.get(node);
    let selecting = selecting_keys(cluster, pod);
    let missing: Vec<String> = selecting
        .iter()
        .filter(|k| !current.get(*k).is_some_and(|c| in_force_on(report, c)))
        .map(|k| match current.get(k) {
            Some(c) => format!("{} (resourceVersion {})", c.policy, c.resource_version),
            None => k.clone(),
        })
        .collect();
    Some(if report.is_none() {
        PodReadiness {
            ready: false,
            reason: "PoliciesPending",
            message: format!("node {node} has not published a NodePolicyStatus yet"),
        }
    } else if missing.is_empty() {
        PodReadiness {
            ready: true,
            reason: "PoliciesInForce",
            message: format!(
                "{} selecting policies in force on node {node}",
                selecting.len()
            ),
        }
    } else {
        PodReadiness {
            ready: false,
            reason: "PoliciesPending",
            message: format!("not yet in force on node {node}: {}", missing.join(", ")),
        }
    })
}

#[cfg(test)]
mod tests;
