//! Publishing what this node enforces: its `NodePolicyStatus` (palisade.io/v1alpha1),
//! one cluster-scoped object per node, named after it (`--publish-status`).
//!
//! The reconciler offers a report after every pass ([`Publisher::offer`], never
//! blocking the pass). One task writes it:
//!
//! 1. only when it differs from what was last written (the pass time alone is no change);
//! 2. at most once per [`MIN_WRITE_INTERVAL`]: reports offered meanwhile are coalesced,
//!    the latest wins;
//! 3. the first write of a run is a server-side apply of the whole object (it creates
//!    the object or takes over its fields); every later one is a JSON merge patch of
//!    only what changed (`policies` is a map, so one policy changing costs one entry);
//! 4. a write that fails is retried after the interval with the latest report (as a
//!    whole-object apply, since what the server holds is then unknown).

use std::collections::BTreeMap;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use palisade_crds::{
    NodeCounts, NodePolicyStatus, NodePolicyStatusSpec, ObjectError, PolicyInForce, PolicyRef,
};
use palisade_policy::manifest::ManifestError;
use serde_json::Value;
use tokio::sync::watch;

use crate::kube_source::WatchedKind;
use crate::reconcile::Reconciler;
use crate::source::Snapshot;

/// At most one write of the node's object per this interval (a burst of passes, e.g.
/// a rollout creating pods, costs one write).
pub const MIN_WRITE_INTERVAL: Duration = Duration::from_secs(1);

/// Most rejected-object entries one node's object carries (`counts.errors` has the
/// total): a flood of bad objects must not push the object past etcd's 1.5 MiB limit.
pub const MAX_ERRORS: usize = 100;
/// Longest error message kept, in bytes (longer ones are cut, marked `...`).
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// The field manager of the agent's writes.
pub const FIELD_MANAGER: &str = "palisade-agent";

/// What the Kubernetes source keeps per policy object: the API version of its version
/// in force and the problems of its current version.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Versions {
    in_force: Option<PolicyInForce>,
    errors: Vec<ObjectError>,
    /// With `errors`: the rejected object's uid and apiVersion.
    rejected_ref: Option<crate::source::RejectedRef>,
}

fn policy_ref(kind: WatchedKind, v: &Value) -> Option<PolicyRef> {
    let policy = matches!(
        kind,
        WatchedKind::NetworkPolicy
            | WatchedKind::ClusterNetworkPolicy
            | WatchedKind::AdminNetworkPolicy
            | WatchedKind::BaselineAdminNetworkPolicy
            | WatchedKind::CalicoNetworkPolicy
            | WatchedKind::CalicoGlobalNetworkPolicy
            | WatchedKind::CalicoStoredNetworkPolicy
            | WatchedKind::CalicoStoredGlobalNetworkPolicy
    );
    policy.then(|| PolicyRef {
        kind: kind.report_kind(),
        namespace: v["metadata"]["namespace"].as_str().map(str::to_string),
        name: v["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    })
}

fn meta(v: &Value, field: &str) -> String {
    v["metadata"][field]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

impl Versions {
    /// `v` (an object of `kind` as the API returned it) decoded cleanly. A status
    /// write changes an object's resourceVersion but not its generation: the version
    /// keeps the resourceVersion its generation was first seen at, so a status write
    /// is not a new version (nor a new report to publish).
    pub(crate) fn accepted(kind: WatchedKind, v: &Value, previous: Option<&Versions>) -> Self {
        let uid = meta(v, "uid");
        let generation = v["metadata"]["generation"].as_i64().unwrap_or(0);
        let resource_version = previous
            .and_then(|p| p.in_force.as_ref())
            .filter(|p| generation > 0 && p.uid == uid && p.generation == generation)
            .map(|p| p.resource_version.clone())
            .unwrap_or_else(|| meta(v, "resourceVersion"));
        Versions {
            in_force: policy_ref(kind, v).map(|policy| PolicyInForce {
                policy,
                uid,
                resource_version,
                generation,
            }),
            errors: Vec::new(),
            rejected_ref: None,
        }
    }

    /// `v` was rejected with `errors`; the version before it (if any) stays in force.
    pub(crate) fn rejected(
        kind: WatchedKind,
        v: &Value,
        previous: Option<Versions>,
        errors: &[ManifestError],
    ) -> Self {
        let Some(object) = policy_ref(kind, v) else {
            return Versions::default();
        };
        let generation = v["metadata"]["generation"].as_i64().unwrap_or(0);
        let resource_version = previous
            .as_ref()
            .and_then(|p| p.errors.first())
            .filter(|e| generation > 0 && e.generation == generation)
            .map(|e| e.resource_version.clone())
            .unwrap_or_else(|| meta(v, "resourceVersion"));
        Versions {
            in_force: previous.and_then(|p| p.in_force),
            rejected_ref: Some(crate::source::RejectedRef {
                uid: meta(v, "uid"),
                api_version: v["apiVersion"].as_str().unwrap_or_default().to_string(),
            }),
            errors: errors
                .iter()
                .map(|e| ObjectError {
                    object: object.clone(),
                    resource_version: resource_version.clone(),
                    generation,
                    file: e.file().to_string(),
                    field: e.field().unwrap_or_default().to_string(),
                    message: e.message().to_string(),
                })
                .collect(),
        }
    }

    /// Adds this object's entries to a snapshot being assembled.
    pub(crate) fn add_to(&self, snap: &mut Snapshot) {
        snap.versions.extend(self.in_force.iter().cloned());
        snap.rejected.extend(self.errors.iter().cloned());
        if let (Some(r), Some(e)) = (&self.rejected_ref, self.errors.first()) {
            snap.rejected_refs.insert(e.object.key(), r.clone());
        }
    }
}

/// The node's report after a pass: what the kernel holds (the last successful pass's
/// snapshot) and the last pass's error, if it failed.
pub fn report(node: &str, reconciler: &Reconciler) -> NodePolicyStatusSpec {
    let snap = reconciler.snapshot();
    let policies: BTreeMap<_, _> = snap
        .versions
        .iter()
        .map(|v| {
            (
                v.policy.key(),
                palisade_crds::PolicyVersion {
                    uid: v.uid.clone(),
                    resource_version: v.resource_version.clone(),
                    generation: v.generation,
                },
            )
        })
        .collect();
    let mut errors = snap.rejected.clone();
    errors.sort();
    let error_count = errors.len() as u32;
    errors.truncate(MAX_ERRORS);
    for e in &mut errors {
        if e.message.len() > MAX_MESSAGE_BYTES {
            let cut = (0..=MAX_MESSAGE_BYTES)
                .rev()
                .find(|i| e.message.is_char_boundary(*i))
                .unwrap_or(0);
            e.message.truncate(cut);
            e.message.push_str("...");
        }
    }
    NodePolicyStatusSpec {
        node_name: node.to_string(),
        generation: reconciler.generation(),
        counts: NodeCounts {
            policies: policies.len() as u32,
            endpoints: reconciler.in_force_all().len() as u32,
            errors: error_count,
        },
        policies,
        errors,
        last_pass_time: Some(
            humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        ),
        last_error: reconciler.last_error().map(str::to_string),
    }
}

/// Whether two reports say the same thing. The generation and the pass time are not
/// compared: every pass (a full one every 30 s) has a new generation, so what is
/// written is the generation and time of the pass that put the rest in force.
fn same(a: &NodePolicyStatusSpec, b: &NodePolicyStatusSpec) -> bool {
    let strip = |s: &NodePolicyStatusSpec| NodePolicyStatusSpec {
        last_pass_time: None,
        generation: 0,
        ..s.clone()
    };
    strip(a) == strip(b)
}

/// The JSON merge patch (RFC 7386) that turns `old` into `new`: changed and added keys
/// with their new values, removed keys as `null`; `None` when they are equal.
pub fn merge_patch(old: &Value, new: &Value) -> Option<Value> {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut patch = serde_json::Map::new();
            for (k, nv) in n {
                match o.get(k) {
                    Some(ov) => {
                        if let Some(p) = merge_patch(ov, nv) {
                            patch.insert(k.clone(), p);
                        }
                    }
                    None => {
                        patch.insert(k.clone(), nv.clone());
                    }
                }
            }
            for k in o.keys() {
                if !n.contains_key(k) {
                    patch.insert(k.clone(), Value::Null);
                }
            }
            (!patch.is_empty()).then_some(Value::Object(patch))
        }
        _ if old == new => None,
        _ => Some(new.clone()),
    }
}

/// The publisher `config` asks for: with `publish_status` and a node name, one for that
/// node; with `publish_status` but no node name, an error (there is no object to
/// write); otherwise none.
pub fn for_config(
    config: &crate::run::AgentConfig,
    client: &Client,
) -> anyhow::Result<Option<Publisher>> {
    match (&config.node_name, config.publish_status) {
        (Some(node), true) => Ok(Some(Publisher::start(client.clone(), node.clone()))),
        (None, true) => anyhow::bail!(
            "--publish-status needs --node-name (the NodePolicyStatus object is named after the node); pass --publish-status=false to run without it"
        ),
        (_, false) => Ok(None),
    }
}

/// Hands reports to the writer task; see the module doc.
#[derive(Clone)]
pub struct Publisher {
    tx: watch::Sender<Option<NodePolicyStatusSpec>>,
    node: String,
}

impl Publisher {
    /// Starts the writer for `node`'s object on the current tokio runtime.
    pub fn start(client: Client, node: String) -> Self {
        let (tx, rx) = watch::channel(None);
        let api = Api::<NodePolicyStatus>::all(client);
        tokio::spawn(write_loop(api, node.clone(), rx));
        Publisher { tx, node }
    }

    /// The node this publisher writes for.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Offers the report of a pass; returns at once. Ignored when it says the same as
    /// the report already waiting.
    pub fn offer(&self, spec: NodePolicyStatusSpec) {
        self.tx.send_if_modified(|current| {
            if current.as_ref().is_some_and(|c| same(c, &spec)) {
                return false;
            }
            *current = Some(spec);
            true
        });
    }
}

async fn write_loop(
    api: Api<NodePolicyStatus>,
    node: String,
    mut rx: watch::Receiver<Option<NodePolicyStatusSpec>>,
) {
    // What the server holds, as far as this run knows (`None`: unknown).
    let mut written: Option<NodePolicyStatusSpec> = None;
    let mut retry = false;
    // A write refused every second (RBAC, CRD not installed) is logged once a minute.
    let mut failures = crate::ratelog::RateLog::new(Duration::from_secs(60));
    loop {
        if !retry && rx.changed().await.is_err() {
            return; // the agent is shutting down
        }
        let Some(spec) = rx.borrow_and_update().clone() else {
            continue;
        };
        retry = false;
        if written.as_ref().is_some_and(|w| same(w, &spec)) {
            continue;
        }
        match write(&api, &node, written.as_ref(), &spec).await {
            Ok(()) => written = Some(spec),
            Err(e) => {
                if let Some(unlogged) = failures.ready() {
                    tracing::warn!(node = %node, error = %format!("{e:#}"), unlogged, "could not publish the node's NodePolicyStatus; retrying every second");
                }
                written = None;
                retry = true;
            }
        }
        tokio::time::sleep(MIN_WRITE_INTERVAL).await;
    }
}

async fn write(
    api: &Api<NodePolicyStatus>,
    node: &str,
    written: Option<&NodePolicyStatusSpec>,
    spec: &NodePolicyStatusSpec,
) -> anyhow::Result<()> {
    match written {
        Some(old) => {
            let patch = merge_patch(&serde_json::to_value(old)?, &serde_json::to_value(spec)?);
            if let Some(patch) = patch {
                let body = serde_json::json!({ "spec": patch });
                let params = PatchParams {
                    field_manager: Some(FIELD_MANAGER.to_string()),
                    ..Default::default()
                };
                api.patch(node, &params, &Patch::Merge(body)).await?;
            }
        }
        None => {
            let object = serde_json::json!({
                "apiVersion": "palisade.io/v1alpha1",
                "kind": "NodePolicyStatus",
                "metadata": { "name": node },
                "spec": spec,
            });
            api.patch(
                node,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(object),
            )
            .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// RFC 7386 apply, to check `merge_patch` against.
    fn apply(target: &Value, patch: &Value) -> Value {
        match (target, patch) {
            (Value::Object(t), Value::Object(p)) => {
                let mut out = t.clone();
                for (k, v) in p {
                    if v.is_null() {
                        out.remove(k);
                    } else {
                        let merged = apply(t.get(k).unwrap_or(&Value::Null), v);
                        out.insert(k.clone(), merged);
                    }
                }
                Value::Object(out)
            }
            (_, p) => p.clone(),
        }
    }

    #[test]
    fn a_merge_patch_carries_only_what_changed_and_turns_old_into_new() {
        let old = json!({"generation": 4, "policies": {"NetworkPolicy/a/web": {"uid": "u1", "resourceVersion": "10"},
                         "NetworkPolicy/a/db": {"uid": "u2", "resourceVersion": "11"}}, "errors": []});
        let new = json!({"generation": 5, "policies": {"NetworkPolicy/a/web": {"uid": "u1", "resourceVersion": "12"},
                         "NetworkPolicy/a/new": {"uid": "u3", "resourceVersion": "13"}}, "errors": []});
        let patch = merge_patch(&old, &new).expect("they differ");
        assert_eq!(
            patch,
            json!({"generation": 5, "policies": {"NetworkPolicy/a/web": {"resourceVersion": "12"},
                   "NetworkPolicy/a/new": {"uid": "u3", "resourceVersion": "13"}, "NetworkPolicy/a/db": null}})
        );
        assert_eq!(apply(&old, &patch), new);
        assert_eq!(merge_patch(&new, &new), None);
    }

    #[test]
    fn reports_differing_only_in_generation_and_pass_time_are_the_same() {
        let a = NodePolicyStatusSpec {
            node_name: "n".into(),
            generation: 3,
            last_pass_time: Some("2026-01-01T00:00:00Z".into()),
            ..Default::default()
        };
        let b = NodePolicyStatusSpec {
            last_pass_time: Some("2026-01-01T00:00:09Z".into()),
            ..a.clone()
        };
        assert!(same(
            &a,
            &NodePolicyStatusSpec {
                generation: 4,
                ..b.clone()
            }
        ));
        let mut c = b.clone();
        c.policies.insert(
            "NetworkPolicy/a/web".into(),
            palisade_crds::PolicyVersion {
                uid: "u".into(),
                resource_version: "1".into(),
                generation: 1,
            },
        );
        assert!(!same(&a, &c));
        assert!(!same(
            &a,
            &NodePolicyStatusSpec {
                last_error: Some("x".into()),
                ..b
            }
        ));
    }
}
