//! Warnings about valid objects that probably do not do what their author meant.
//!
//! 1. A policy (NetworkPolicy `spec.podSelector`, cluster policy `spec.subject`) that
//!    selects no pod.
//! 2. A peer that matches no pod, namespace or node. Pods and namespaces come and go, so
//!    this may be intended; it is often a typo in a label.
//! 3. A `domainNames` peer: it only matches in the agent, which learns the addresses
//!    from DNS answers; offline evaluation (`explain`, `simulate`) treats it as matching
//!    no address.
//!
//! Host-network pods are not counted: selectors do not select them as policy endpoints.

use super::Warning;
use crate::model::{
    Cluster, ClusterPeer, Direction, NamespaceMatch, NetworkPolicyPeer, Pod, Subject,
};
use crate::selector::LabelSelector;

/// Lints a loaded cluster. Warnings carry no file (a [`Cluster`] does not record one);
/// [`super::Loaded::lint`] adds it.
pub fn lint(cluster: &Cluster) -> Vec<Warning> {
    let mut out = Vec::new();
    let mut warn = |object: &str, field: String, message: String| {
        out.push(Warning {
            file: None,
            at: None,
            object: object.to_string(),
            field,
            message,
        })
    };
    let pods: Vec<&Pod> = cluster.pods.values().filter(|p| !p.host_network).collect();
    let ns_matches = |ns: &str, m: &NamespaceMatch| match m {
        NamespaceMatch::Named(n) => n == ns,
        NamespaceMatch::Selector(s) => s.matches(&cluster.namespace_labels(ns)),
    };
    let any_pod = |ns_sel: &dyn Fn(&str) -> bool, pod_sel: &LabelSelector| {
        pods.iter()
            .any(|p| ns_sel(&p.namespace) && pod_sel.matches(&p.labels))
    };
    let any_namespace = |sel: &LabelSelector| {
        cluster
            .namespaces
            .keys()
            .chain(pods.iter().map(|p| &p.namespace))
            .any(|n| sel.matches(&cluster.namespace_labels(n)))
    };

    for np in cluster.network_policies.values() {
        let object = format!("NetworkPolicy {}/{}", np.namespace, np.name);
        if !any_pod(&|ns| ns == np.namespace, &np.pod_selector) {
            warn(
                &object,
                "spec.podSelector".into(),
                format!(
                    "selects no pod in namespace {} ({})",
                    np.namespace, np.pod_selector
                ),
            );
        }
        for dir in [Direction::Ingress, Direction::Egress] {
            let (field, peers_field) = match dir {
                Direction::Ingress => ("spec.ingress", "from"),
                Direction::Egress => ("spec.egress", "to"),
            };
            for (i, rule) in np.rules(dir).unwrap_or_default().iter().enumerate() {
                for (j, peer) in rule.peers.iter().flatten().enumerate() {
                    let NetworkPolicyPeer::Pods { namespaces, pods } = peer else {
                        continue;
                    };
                    if !any_pod(&|ns| ns_matches(ns, namespaces), pods) {
                        warn(
                            &object,
                            format!("{field}[{i}].{peers_field}[{j}]"),
                            "matches no pod".into(),
                        );
                    }
                }
            }
        }
    }

    for cp in cluster.cluster_policies.values() {
        let object = format!("{} {}", cp.kind.as_str(), cp.name);
        let selects = match &cp.subject {
            Subject::Namespaces(ns) => any_pod(
                &|n| ns.matches(&cluster.namespace_labels(n)),
                &LabelSelector::everything(),
            ),
            Subject::Pods { namespaces, pods } => {
                any_pod(&|n| namespaces.matches(&cluster.namespace_labels(n)), pods)
            }
        };
        if !selects {
            warn(&object, "spec.subject".into(), "selects no pod".into());
        }
        for dir in [Direction::Ingress, Direction::Egress] {
            let (field, peers_field) = match dir {
                Direction::Ingress => ("spec.ingress", "from"),
                Direction::Egress => ("spec.egress", "to"),
            };
            for (i, rule) in cp.rules(dir).iter().enumerate() {
                for (j, peer) in rule.peers.iter().enumerate() {
                    let f = format!("{field}[{i}].{peers_field}[{j}]");
                    match peer {
                        ClusterPeer::Namespaces(sel) => {
                            if !any_namespace(sel) {
                                warn(&object, f, "matches no namespace".into());
                            }
                        }
                        ClusterPeer::Pods { namespaces, pods } => {
                            if !any_pod(&|n| namespaces.matches(&cluster.namespace_labels(n)), pods) {
                                warn(&object, f, "matches no pod".into());
                            }
                        }
                        ClusterPeer::Nodes(sel) => {
                            if !cluster.nodes.values().any(|n| sel.matches(&n.labels)) {
                                warn(&object, f, "matches no node".into());
                            }
                        }
                        ClusterPeer::Networks(_) => {}
                        ClusterPeer::DomainNames(names) => warn(
                            &object,
                            format!("{f}.domainNames"),
                            format!(
                                "{} only match in the node agent, which learns their addresses from the DNS answers pods receive; offline evaluation (explain, simulate) treats them as matching no address",
                                names.join(", ")
                            ),
                        ),
                    }
                }
            }
        }
    }
    out
}
