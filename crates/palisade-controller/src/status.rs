//! Writing the answers where users look. Each writer sends only what the controller
//! owns (field manager [`FIELD_MANAGER`]):
//!
//! - `NetworkPolicyStatus` objects: server-side apply of the whole object, with an owner
//!   reference to the NetworkPolicy (the garbage collector deletes it with the policy);
//! - ClusterNetworkPolicy / AdminNetworkPolicy / BaselineAdminNetworkPolicy: server-side
//!   apply of one condition on the status subresource. ClusterNetworkPolicy (v1alpha2)
//!   declares `conditions` a map keyed by `type`, so the apply touches only ours and is
//!   forced; the v1alpha1 CRDs declare it an atomic list, so the apply is *not* forced
//!   there: if another implementation owns the list, the conflict is reported, not
//!   overwritten;
//! - Pods: a strategic merge patch of one condition (merge key `type`) on `pods/status`.
//!
//! Events on rejected policies are not written here but by the agents that reject
//! them (`palisade_agent::kube_events`): one per rejected version, cluster-wide.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::Client;
use palisade_crds::{
    NetworkPolicyStatus, PolicyAggregate, PolicyRef, IN_FORCE_CONDITION, READINESS_GATE,
};
use serde_json::json;

use crate::aggregate::{Current, PodReadiness};

/// The field manager of every controller write.
pub const FIELD_MANAGER: &str = "palisade-controller";

/// The writers, sharing one client.
pub struct Writer {
    client: Client,
}

fn cluster_resource(kind: &str) -> Option<(ApiResource, bool)> {
    let (version, plural, forced) = match kind {
        "ClusterNetworkPolicy" => ("v1alpha2", "clusternetworkpolicies", true),
        "AdminNetworkPolicy" => ("v1alpha1", "adminnetworkpolicies", false),
        "BaselineAdminNetworkPolicy" => ("v1alpha1", "baselineadminnetworkpolicies", false),
        _ => return None,
    };
    let gvk = GroupVersionKind::gvk("policy.networking.k8s.io", version, kind);
    Some((ApiResource::from_gvk_with_plural(&gvk, plural), forced))
}

impl Writer {
    /// Writers sharing `client`.
    pub fn new(client: Client) -> Self {
        Writer { client }
    }

    /// Writes a policy's aggregate where its kind keeps status.
    pub async fn policy(&self, p: &Current, agg: &PolicyAggregate) -> anyhow::Result<()> {
        let PolicyRef {
            kind,
            namespace,
            name,
        } = &p.policy;
        if kind == "NetworkPolicy" {
            let ns = namespace.as_deref().unwrap_or("default");
            let api = Api::<NetworkPolicyStatus>::namespaced(self.client.clone(), ns);
            let object = json!({
                "apiVersion": "palisade.io/v1alpha1",
                "kind": "NetworkPolicyStatus",
                "metadata": {
                    "name": name,
                    "namespace": ns,
                    "ownerReferences": [{
                        "apiVersion": "networking.k8s.io/v1",
                        "kind": "NetworkPolicy",
                        "name": name,
                        "uid": p.uid,
                    }],
                },
                "spec": agg,
            });
            api.patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(object),
            )
            .await?;
            return Ok(());
        }
        let Some((ar, forced)) = cluster_resource(kind) else {
            anyhow::bail!("{kind} {name}: not a policy kind the controller knows");
        };
        let api = Api::<DynamicObject>::all_with(self.client.clone(), &ar);
        let status = if agg.reason == "InForce" {
            "True"
        } else {
            "False"
        };
        let object = json!({
            "apiVersion": ar.api_version,
            "kind": kind,
            "metadata": { "name": name },
            "status": { "conditions": [{
                "type": IN_FORCE_CONDITION,
                "status": status,
                "reason": agg.reason,
                "message": agg.message,
                "lastTransitionTime": agg.since,
            }]},
        });
        let mut params = PatchParams::apply(FIELD_MANAGER);
        params.force = forced;
        api.patch_status(name, &params, &Patch::Apply(object))
            .await?;
        Ok(())
    }

    /// Sets the readiness-gate condition of pod `namespace/name`.
    pub async fn pod_condition(
        &self,
        namespace: &str,
        name: &str,
        r: &PodReadiness,
        since: &str,
    ) -> anyhow::Result<()> {
        let api = Api::<Pod>::namespaced(self.client.clone(), namespace);
        let patch = json!({ "status": { "conditions": [{
            "type": READINESS_GATE,
            "status": if r.ready { "True" } else { "False" },
            "reason": r.reason,
            "message": r.message,
            "lastTransitionTime": since,
        }]}});
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..Default::default()
        };
        api.patch_status(name, &params, &Patch::Strategic(patch))
            .await?;
        Ok(())
    }
}
