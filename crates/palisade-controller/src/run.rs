//! The controller's loop: watch, and while leading, aggregate and write what changed.
//!
//! Inputs are three watches: the desired state (the agent's Kubernetes source, with
//! the same decoder, so a policy rejected on the nodes is rejected here too and its
//! current resourceVersion is known), the nodes' `NodePolicyStatus` objects, and Pods
//! (for their readiness gates and conditions). A pass runs when one of them changed
//! (checked every [`POLL`]), on the leader only. Each pass computes every answer and
//! writes only those that differ from what this replica last wrote (pods: from what
//! the Pod says), so a quiet cluster costs no writes. A replica that becomes leader
//! writes every answer once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use palisade_agent::kube_source::KubeSource;
use palisade_agent::source::{Snapshot, Source};
use palisade_crds::{NodePolicyStatus, NodePolicyStatusSpec, READINESS_GATE};

use crate::aggregate::{self, Current};
use crate::lease::{self, LeaseConfig};
use crate::status::Writer;

/// How often the loop looks for changes (a pass runs only when something changed).
pub const POLL: Duration = Duration::from_millis(200);

/// Everything `palisade controller` is configured with.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Leader election.
    pub lease: LeaseConfig,
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Starts a watch whose every event sets `dirty`; returns its store.
fn reflect<K>(api: Api<K>, dirty: Arc<AtomicBool>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    tokio::spawn(async move {
        let mut stream = stream.boxed();
        while let Some(ev) = stream.next().await {
            if let Err(e) = ev {
                tracing::warn!(error = %e, "watch failed; retrying with backoff");
            }
            dirty.store(true, Ordering::SeqCst);
        }
    });
    reader
}

/// The current version of every policy (`aggregate` rule 1), by policy key.
pub fn current_versions(snap: &Snapshot) -> BTreeMap<String, Current> {
    let mut out = BTreeMap::new();
    for v in &snap.versions {
        out.insert(
            v.policy.key(),
            Current {
                policy: v.policy.clone(),
                uid: v.uid.clone(),
                resource_version: v.resource_version.clone(),
                generation: v.generation,
            },
        );
    }
    // A rejected version is newer than the good one kept in force.
    for e in &snap.rejected {
        let key = e.object.key();
        let uid = out
            .get(&key)
            .map(|c: &Current| c.uid.clone())
            .unwrap_or_default();
        out.insert(
            key,
            Current {
                policy: e.object.clone(),
                uid,
                resource_version: e.resource_version.clone(),
                generation: e.generation,
            },
        );
    }
    out
}

/// What one replica remembers between passes.
#[derive(Default)]
struct Memory {
    /// Per policy key: (reason, since).
    since: BTreeMap<String, (String, String)>,
    /// Per policy key: what was last written.
    written: BTreeMap<String, serde_json::Value>,
}

/// Runs the controller until the process ends.
pub async fn run(client: Client, config: ControllerConfig) -> anyhow::Result<()> {
    let mut leading = lease::start(client.clone(), config.lease.clone());
    let dirty = Arc::new(AtomicBool::new(true));
    let nodes = reflect(Api::<NodePolicyStatus>::all(client.clone()), dirty.clone());
    let pods = reflect(Api::<Pod>::all(client.clone()), dirty.clone());
    let mut source = KubeSource::start(client.clone());
    let writer = Writer::new(client.clone());
    let mut memory = Memory::default();
    loop {
        if !*leading.borrow_and_update() {
            // Not leading: forget what was written, so a new term re-asserts all.
            memory = Memory::default();
            if leading.changed().await.is_err() {
                anyhow::bail!("leader election stopped");
            }
            continue;
        }
        let changed = dirty.swap(false, Ordering::SeqCst) | source.changed();
        if !changed {
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = leading.changed() => {}
            }
            continue;
        }
        let snap = match source.load() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %format!("{e:#}"), "desired state not complete yet");
                dirty.store(true, Ordering::SeqCst);
                tokio::time::sleep(POLL).await;
                continue;
            }
        };
        let reports: BTreeMap<String, NodePolicyStatusSpec> = nodes
            .state()
            .iter()
            .map(|o| (o.name_any(), o.spec.clone()))
            .collect();
        pass(&writer, &snap, &reports, &pods, &mut memory).await;
    }
}

async fn pass(
    writer: &Writer,
    snap: &Snapshot,
    reports: &BTreeMap<String, NodePolicyStatusSpec>,
    pods: &Store<Pod>,
    memory: &mut Memory,
) {
    let current = current_versions(snap);
    let selected = aggregate::selected_nodes(&snap.cluster);
    memory.since.retain(|k, _| current.contains_key(k));
    memory.written.retain(|k, _| current.contains_key(k));
    for (key, cur) in &current {
        let mut agg = aggregate::policy(cur, selected.get(key), reports);
        let since = match memory.since.get(key) {
            Some((reason, since)) if *reason == agg.reason => since.clone(),
            _ => now(),
        };
        memory
            .since
            .insert(key.clone(), (agg.reason.clone(), since.clone()));
        agg.since = since;
        let body = serde_json::to_value(&agg).unwrap_or_default();
        if memory.written.get(key) != Some(&body) {
            match writer.policy(cur, &agg).await {
                Ok(()) => {
                    memory.written.insert(key.clone(), body);
                }
                Err(e) => {
                    tracing::warn!(policy = %cur.policy, error = %format!("{e:#}"), "could not write the policy's status")
                }
            }
        }
    }
    for pod in pods.state() {
        let gated = pod
            .spec
            .as_ref()
            .and_then(|s| s.readiness_gates.as_ref())
            .is_some_and(|g| g.iter().any(|g| g.condition_type == READINESS_GATE));
        if !gated {
            continue;
        }
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let Some(r) = aggregate::pod(&snap.cluster, &format!("{ns}/{name}"), &current, reports)
        else {
            continue;
        };
        let existing = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == READINESS_GATE));
        let status = if r.ready { "True" } else { "False" };
        if existing.is_some_and(|c| {
            c.status == status
                && c.reason.as_deref() == Some(r.reason)
                && c.message.as_deref() == Some(r.message.as_str())
        }) {
            continue;
        }
        let since = match existing {
            Some(c) if c.status == status => c
                .last_transition_time
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_else(now),
            _ => now(),
        };
        if let Err(e) = writer.pod_condition(&ns, &name, &r, &since).await {
            tracing::warn!(pod = %format!("{ns}/{name}"), error = %format!("{e:#}"), "could not set the readiness condition");
        }
    }
}
