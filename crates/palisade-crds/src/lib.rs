//! # palisade-crds: Palisade's own API objects (`palisade.io/v1alpha1`)
//!
//! Plain data shared by the agent (which writes its node's [`NodePolicyStatus`]), the
//! controller (which reads those and writes [`NetworkPolicyStatus`] objects and the
//! admin policies' conditions) and the CLI (`palisade status`). No client code lives
//! here: these are the types and the CRD manifests generated from them
//! ([`crd_files`], written to `deploy/helm/palisade/crds/`).
//!
//! Start with [`NodePolicyStatusSpec`]: what one node says it enforces.
#![deny(missing_docs)]

pub mod calico;

use kube::CustomResource;
use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of Palisade's own objects.
pub const GROUP: &str = "palisade.io";
/// Their version.
pub const VERSION: &str = "v1alpha1";
/// The Pod readiness gate (and condition type) the controller sets once every policy
/// selecting the pod is in force on its node.
pub const READINESS_GATE: &str = "palisade.io/policy-enforced";
/// The condition type the controller writes on ClusterNetworkPolicy and
/// AdminNetworkPolicy objects.
pub const IN_FORCE_CONDITION: &str = "palisade.io/InForce";

/// Which policy an entry is about, as the API names it.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRef {
    /// `NetworkPolicy`, `ClusterNetworkPolicy`, `AdminNetworkPolicy` or
    /// `BaselineAdminNetworkPolicy`.
    pub kind: String,
    /// Namespace (NetworkPolicy only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

impl PolicyRef {
    /// The key of this policy in [`NodePolicyStatusSpec::policies`]:
    /// `Kind/namespace/name`, or `Kind/name` for cluster-scoped kinds.
    pub fn key(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{}/{ns}/{}", self.kind, self.name),
            None => format!("{}/{}", self.kind, self.name),
        }
    }
}

impl std::fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// One policy a node enforces: the API version of it that is in the kernel.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyInForce {
    /// The policy.
    #[serde(flatten)]
    pub policy: PolicyRef,
    /// `metadata.uid` of the version in force (a policy deleted and recreated under the
    /// same name is another policy).
    pub uid: String,
    /// `metadata.resourceVersion` at which the version in force (this generation) was
    /// first seen. A newer version that was rejected leaves the last good one here.
    pub resource_version: String,
    /// `metadata.generation` of the version in force (0 when the API sets none). Status
    /// writes change the resourceVersion of the admin policies but not their
    /// generation, so this is what "the same version" is decided by.
    #[serde(default)]
    pub generation: i64,
}

/// The API version of a policy that a node has in force.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyVersion {
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.resourceVersion` at which this generation was first seen.
    pub resource_version: String,
    /// `metadata.generation` (see [`PolicyInForce::generation`]).
    #[serde(default)]
    pub generation: i64,
}

/// One problem with one object, as the node's decoder reported it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectError {
    /// The object (for a policy, the same fields as [`PolicyRef`]).
    #[serde(flatten)]
    pub object: PolicyRef,
    /// `metadata.resourceVersion` at which the version rejected was first seen.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource_version: String,
    /// `metadata.generation` of the version rejected.
    #[serde(default)]
    pub generation: i64,
    /// Where the decoder read it (`api:NetworkPolicy/ns/name` for the API source).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub file: String,
    /// Field path (`spec.ingress[0].ports[1].endPort`), empty when the object as a whole
    /// did not decode.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Sizes of what the node enforces.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeCounts {
    /// Policies in force.
    pub policies: u32,
    /// Pods of this node with programmed endpoints.
    pub endpoints: u32,
    /// Objects rejected.
    pub errors: u32,
}

/// What one node's agent enforces. Written only by that node's agent.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "palisade.io",
    version = "v1alpha1",
    kind = "NodePolicyStatus",
    plural = "nodepolicystatuses",
    shortname = "pnode",
    doc = "What one node's Palisade agent enforces (one object per node, named after it)",
    printcolumn = r#"{"name":"Generation","type":"integer","jsonPath":".spec.generation","description":"reconcile pass in force"}"#,
    printcolumn = r#"{"name":"Policies","type":"integer","jsonPath":".spec.counts.policies"}"#,
    printcolumn = r#"{"name":"Endpoints","type":"integer","jsonPath":".spec.counts.endpoints"}"#,
    printcolumn = r#"{"name":"Errors","type":"integer","jsonPath":".spec.counts.errors"}"#,
    printcolumn = r#"{"name":"Last-Pass","type":"date","jsonPath":".spec.lastPassTime"}"#,
    printcolumn = r#"{"name":"Last-Error","type":"string","jsonPath":".spec.lastError","priority":1}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NodePolicyStatusSpec {
    /// The node (also the object's name).
    pub node_name: String,
    /// The agent's generation in force: the number of its last successful pass.
    pub generation: u64,
    /// Every policy of that pass, by [`PolicyRef::key`]. A map rather than a list so
    /// that a JSON merge patch carries only the entries that changed (`null` removes
    /// one).
    #[serde(default)]
    pub policies: std::collections::BTreeMap<String, PolicyVersion>,
    /// Objects rejected (their last good version, if any, is in `policies`).
    #[serde(default)]
    pub errors: Vec<ObjectError>,
    /// Counts.
    #[serde(default)]
    pub counts: NodeCounts,
    /// When the pass that last changed what this object says ended (RFC 3339). Passes
    /// that change nothing are not written (they would cost a write each).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_pass_time: Option<String>,
    /// The last pass's error, when it failed (the kernel keeps what `policies` says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// One node's view of one policy, in the aggregate.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeError {
    /// The node.
    pub node: String,
    /// The error it reported for the policy's current version.
    pub message: String,
}

/// The aggregate for one policy, as the controller computed it. Shared by the
/// [`NetworkPolicyStatus`] object and the admin policies' condition message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyAggregate {
    /// `metadata.uid` of the policy now.
    pub uid: String,
    /// `metadata.resourceVersion` at which the policy's current generation was first
    /// seen: what "in force" is measured against.
    pub resource_version: String,
    /// `metadata.generation` of the policy now.
    #[serde(default)]
    pub generation: i64,
    /// Nodes that have pods the policy selects (M).
    pub nodes_selected: u32,
    /// Of those, nodes that enforce this resourceVersion (K).
    pub nodes_in_force: u32,
    /// `K/M`, for `kubectl get`.
    pub in_force: String,
    /// Nodes with selected pods that do not enforce this version yet.
    #[serde(default)]
    pub pending_nodes: Vec<String>,
    /// Nodes that rejected this version, and why.
    #[serde(default)]
    pub errors: Vec<NodeError>,
    /// `InForce`, `Pending` or `Invalid`.
    pub reason: String,
    /// One line for people: "in force on K of M nodes that have selected pods, as of
    /// resourceVersion R" (and the first error).
    pub message: String,
    /// Since when `reason` has been what it is (RFC 3339).
    pub since: String,
}

/// The status of one NetworkPolicy (which has no status of its own), written by the
/// controller under the same namespace and name.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "palisade.io",
    version = "v1alpha1",
    kind = "NetworkPolicyStatus",
    plural = "networkpolicystatuses",
    shortname = "pnp",
    namespaced,
    doc = "Where a NetworkPolicy of the same name is in force (written by palisade controller)",
    printcolumn = r#"{"name":"In-Force","type":"string","jsonPath":".spec.inForce","description":"nodes enforcing the current version / nodes with selected pods"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".spec.reason"}"#,
    printcolumn = r#"{"name":"Resource-Version","type":"string","jsonPath":".spec.resourceVersion"}"#,
    printcolumn = r#"{"name":"Since","type":"date","jsonPath":".spec.since"}"#,
    printcolumn = r#"{"name":"Message","type":"string","jsonPath":".spec.message","priority":1}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicyStatusSpec {
    /// The aggregate.
    #[serde(flatten)]
    pub aggregate: PolicyAggregate,
}

/// The CRD manifests, as `(file name, YAML)`, in a fixed order. The chart's
/// `crds/` directory holds exactly these (checked by a test).
pub fn crd_files() -> Vec<(String, String)> {
    let crds = [NodePolicyStatus::crd(), NetworkPolicyStatus::crd()];
    crds.iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let yaml = serde_saphyr::to_string(crd).expect("a CRD serialises");
            (
                format!("{name}.yaml"),
                format!("# Generated from crates/palisade-crds (cargo run -p palisade-crds --bin palisade-crds-gen); do not edit.\n{yaml}"),
            )
        })
        .collect()
}
