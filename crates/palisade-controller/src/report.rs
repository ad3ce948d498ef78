//! `palisade status` against the API server: is each policy in force, where, since
//! when, and if not, why. Reads what the controller and the agents wrote
//! (`NetworkPolicyStatus`, the admin policies' `palisade.io/InForce` condition,
//! `NodePolicyStatus`); writes nothing.

use std::fmt::Write as _;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::{Client, ResourceExt};
use palisade_crds::{NetworkPolicyStatus, NodePolicyStatus, IN_FORCE_CONDITION};
use serde::Serialize;

/// One policy's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyLine {
    /// `NetworkPolicy ns/name`, `AdminNetworkPolicy name`, ...
    pub policy: String,
    /// `K/M`, or `-` when the controller has not written an answer.
    pub in_force: String,
    /// `InForce`, `Pending`, `Invalid`, or `Unknown` (no answer yet).
    pub reason: String,
    /// The resourceVersion the answer is about.
    pub resource_version: String,
    /// Since when the reason holds.
    pub since: String,
    /// Why (the controller's message), or what to check.
    pub message: String,
}

/// One node's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeLine {
    /// Node.
    pub node: String,
    /// Generation in force.
    pub generation: u64,
    /// Policies in force.
    pub policies: u32,
    /// Objects rejected.
    pub errors: u32,
    /// When its content last changed.
    pub last_pass: String,
    /// The last pass's error.
    pub last_error: String,
}

/// Everything `palisade status` prints.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Per policy.
    pub policies: Vec<PolicyLine>,
    /// Per node.
    pub nodes: Vec<NodeLine>,
}

const NO_ANSWER: &str = "no answer from palisade controller yet (is it running, and leading?)";

fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Reads the answers for the NetworkPolicies of `namespace` (all namespaces when
/// `None`) and every admin policy; only `policy` (a name, or `Kind/name`) when given.
pub async fn fetch(
    client: &Client,
    namespace: Option<&str>,
    policy: Option<&str>,
) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let (nps, statuses): (Api<NetworkPolicy>, Api<NetworkPolicyStatus>) = match namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let wanted = |kind: &str, name: &str| match policy {
        None => true,
        Some(p) => p == name || p == format!("{kind}/{name}"),
    };
    let statuses = statuses.list(&ListParams::default()).await?.items;
    for np in nps.list(&ListParams::default()).await?.items {
        let (ns, name) = (np.namespace().unwrap_or_default(), np.name_any());
        if !wanted("NetworkPolicy", &name) {
            continue;
        }
        let status = statuses
            .iter()
            .find(|s| s.namespace().as_deref() == Some(ns.as_str()) && s.name_any() == name);
        let rv = np.resource_version().unwrap_or_default();
        report.policies.push(match status {
            Some(s) => {
                let a = &s.spec.aggregate;
                let mut message = a.message.clone();
                if a.resource_version != rv {
                    message = format!("the answer is about resourceVersion {} but the policy is at {rv} now: {message}", a.resource_version);
                }
                PolicyLine {
                    policy: format!("NetworkPolicy {ns}/{name}"),
                    in_force: a.in_force.clone(),
                    reason: a.reason.clone(),
                    resource_version: a.resource_version.clone(),
                    since: a.since.clone(),
                    message,
                }
            }
            None => unknown(format!("NetworkPolicy {ns}/{name}"), rv),
        });
    }
    for (version, kind, plural) in [
        ("v1alpha2", "ClusterNetworkPolicy", "clusternetworkpolicies"),
        ("v1alpha1", "AdminNetworkPolicy", "adminnetworkpolicies"),
        (
            "v1alpha1",
            "BaselineAdminNetworkPolicy",
            "baselineadminnetworkpolicies",
        ),
    ] {
        let gvk = GroupVersionKind::gvk("policy.networking.k8s.io", version, kind);
        let ar = ApiResource::from_gvk_with_plural(&gvk, plural);
        let api = Api::<DynamicObject>::all_with(client.clone(), &ar);
        let items = match api.list(&ListParams::default()).await {
            Ok(l) => l.items,
            Err(e) if not_found(&e) => continue, // CRD not installed
            Err(e) => return Err(e.into()),
        };
        for o in items {
            let name = o.name_any();
            if !wanted(kind, &name) {
                continue;
            }
            let rv = o.resource_version().unwrap_or_default();
            let condition = o.data["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == IN_FORCE_CONDITION))
                .cloned();
            report.policies.push(match condition {
                Some(c) => {
                    let message = c["message"].as_str().unwrap_or_default().to_string();
                    PolicyLine {
                        policy: format!("{kind} {name}"),
                        in_force: in_force_of(&message),
                        reason: c["reason"].as_str().unwrap_or_default().to_string(),
                        resource_version: resource_version_of(&message).unwrap_or(rv),
                        since: c["lastTransitionTime"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        message,
                    }
                }
                None => unknown(format!("{kind} {name}"), rv),
            });
        }
    }
    let nodes = Api::<NodePolicyStatus>::all(client.clone());
    match nodes.list(&ListParams::default()).await {
        Ok(list) => {
            for n in list.items {
                report.nodes.push(NodeLine {
                    node: n.name_any(),
                    generation: n.spec.generation,
                    policies: n.spec.counts.policies,
                    errors: n.spec.counts.errors,
                    last_pass: n.spec.last_pass_time.clone().unwrap_or_default(),
                    last_error: n.spec.last_error.clone().unwrap_or_default(),
                });
            }
        }
        Err(e) if not_found(&e) => {}
        Err(e) => return Err(e.into()),
    }
    if let Some(p) = policy {
        if report.policies.is_empty() {
            anyhow::bail!(
                "no policy named {p:?} (NetworkPolicy in {}, or an admin policy)",
                namespace.unwrap_or("any namespace")
            );
        }
    }
    Ok(report)
}

fn unknown(policy: String, rv: String) -> PolicyLine {
    PolicyLine {
        policy,
        in_force: "-".into(),
        reason: "Unknown".into(),
        resource_version: rv,
        since: String::new(),
        message: NO_ANSWER.into(),
    }
}

/// `K/M` from "in force on K of M nodes ...".
fn in_force_of(message: &str) -> String {
    let mut words = message
        .strip_prefix("in force on ")
        .unwrap_or("")
        .split(' ');
    match (words.next(), words.next(), words.next()) {
        (Some(k), Some("of"), Some(m)) => format!("{k}/{m}"),
        _ => "-".into(),
    }
}

/// R from "... as of resourceVersion R[;...]".
fn resource_version_of(message: &str) -> Option<String> {
    let rest = message.split("as of resourceVersion ").nth(1)?;
    Some(rest.split(';').next()?.trim().to_string())
}

/// The report as text tables (stdout).
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let rows: Vec<[String; 5]> = r
        .policies
        .iter()
        .map(|p| {
            [
                p.policy.clone(),
                p.in_force.clone(),
                p.reason.clone(),
                p.resource_version.clone(),
                if p.since.is_empty() {
                    "-".into()
                } else {
                    p.since.clone()
                },
            ]
        })
        .collect();
    let header = ["POLICY", "IN-FORCE", "REASON", "RESOURCE-VERSION", "SINCE"];
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].len())
            .chain([header[i].len()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..5).map(width).collect();
    let line = |cells: [&str; 6], out: &mut String| {
        for (i, w) in widths.iter().enumerate() {
            let _ = write!(out, "{:<w$}  ", cells[i], w = w);
        }
        let _ = writeln!(out, "{}", cells[5]);
    };
    line(
        [header[0], header[1], header[2], header[3], header[4], "WHY"],
        &mut out,
    );
    for (row, p) in rows.iter().zip(&r.policies) {
        let why = if p.reason == "InForce" {
            ""
        } else {
            p.message.as_str()
        };
        line([&row[0], &row[1], &row[2], &row[3], &row[4], why], &mut out);
    }
    if !r.nodes.is_empty() {
        let _ = writeln!(
            out,
            "\nNODE  GENERATION  POLICIES  ERRORS  LAST-CHANGE  LAST-ERROR"
        );
        for n in &r.nodes {
            let _ = writeln!(
                out,
                "{}  {}  {}  {}  {}  {}",
                n.node,
                n.generation,
                n.policies,
                n.errors,
                if n.last_pass.is_empty() {
                    "-"
                } else {
                    &n.last_pass
                },
                n.last_error
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_resource_version_are_read_back_from_the_condition_message() {
        let m = "in force on 3 of 4 nodes that have selected pods, as of resourceVersion 812; not yet on n4";
        assert_eq!(in_force_of(m), "3/4");
        assert_eq!(resource_version_of(m).as_deref(), Some("812"));
        assert_eq!(in_force_of("something else"), "-");
        assert_eq!(resource_version_of("something else"), None);
    }
}
