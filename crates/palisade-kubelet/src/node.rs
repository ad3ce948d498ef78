//! The Node object and its heartbeats, as a kubelet with node leases keeps them:
//!
//! - registration creates the Node with its addresses, capacity, `spec.podCIDR(s)`
//!   and `Ready=True` (or, when it exists, e.g. after a restart, updates its status);
//! - a Lease `kube-node-lease/NAME` is renewed every [`LEASE_RENEW`]: the node
//!   lifecycle controller of kube-controller-manager judges health by it and would
//!   mark the node `NotReady` (and taint it) after its grace period without;
//! - the node status (`Ready` with a fresh `lastHeartbeatTime`) is reported every
//!   [`STATUS_REPORT`], less often than the lease, as kubelet's
//!   `nodeStatusReportFrequency` does, since every Node update reaches every watcher.
//!
//! Only what the Node authorizer and NodeRestriction let a node do: its own Node and
//! its own Lease.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::{json, Value};

use crate::config::Config;

/// How often the Lease is renewed (kubelet: `nodeLeaseDurationSeconds` × 0.25).
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
/// The Lease's duration, as kubelet's default.
pub const LEASE_DURATION_SECONDS: i32 = 40;
/// How often the Node status is reported when nothing changed.
pub const STATUS_REPORT: Duration = Duration::from_secs(60);
/// The namespace of node leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// Pods per node (kubelet's default `maxPods`).
pub const MAX_PODS: u32 = 110;

/// `Time` as the API serializes it (RFC 3339, seconds).
pub fn time_now() -> Value {
    serde_json::to_value(Time(Timestamp::now())).expect("serializes")
}

/// The node's capacity: pods, this machine's CPUs and memory.
fn capacity() -> Value {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(1 << 20);
    json!({"pods": MAX_PODS.to_string(), "cpu": cpus.to_string(), "memory": format!("{mem_kib}Ki")})
}

fn addresses(cfg: &Config) -> Value {
    let mut a: Vec<Value> = cfg
        .node_ips
        .iter()
        .map(|ip| json!({"type": "InternalIP", "address": ip.to_string()}))
        .collect();
    a.push(json!({"type": "Hostname", "address": cfg.node_name}));
    Value::Array(a)
}

fn ready_condition(since: &Value) -> Value {
    json!({
        "type": "Ready", "status": "True", "reason": "KubeletReady",
        "message": "palisade-lab-kubelet is posting ready status",
        "lastHeartbeatTime": time_now(), "lastTransitionTime": since,
    })
}

/// The status part of a report.
fn status(cfg: &Config, since: &Value) -> Value {
    let cap = capacity();
    json!({
        "addresses": addresses(cfg),
        "capacity": cap, "allocatable": cap,
        "conditions": [ready_condition(since)],
        "nodeInfo": {
            "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "",
            "osImage": "palisade lab", "containerRuntimeVersion": "palisade-lab://0",
            "kubeletVersion": concat!("palisade-lab-kubelet/", env!("CARGO_PKG_VERSION")),
            "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": std::env::consts::ARCH,
        },
    })
}

/// Registers the Node (or reports status on an existing one) and returns its uid (for
/// the Lease's owner reference) and the `Ready` transition time to keep.
pub async fn register(client: &kube::Client, cfg: &Config) -> Result<(String, Value), kube::Error> {
    let api: Api<Node> = Api::all(client.clone());
    let since = time_now();
    let cidrs: Vec<String> = cfg.pod_cidrs.iter().map(|c| c.to_string()).collect();
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": cfg.node_name, "labels": {
            "kubernetes.io/hostname": cfg.node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": arch,
        }},
        "spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs},
        "status": status(cfg, &since),
    }))
    .expect("a valid Node");
    let created = match api.create(&PostParams::default(), &node).await {
        Ok(n) => n,
        Err(kube::Error::Api(s)) if s.code == 409 => api.get(&cfg.node_name).await?,
        Err(e) => return Err(e),
    };
    // Create ignores status; it is always written through the subresource.
    report_status(client, cfg, &since).await?;
    Ok((created.metadata.uid.unwrap_or_default(), since))
}

/// Reports the node status (Ready, addresses, capacity).
pub async fn report_status(
    client: &kube::Client,
    cfg: &Config,
    since: &Value,
) -> Result<(), kube::Error> {
    let api: Api<Node> = Api::all(client.clone());
    api.patch_status(
        &cfg.node_name,
        &PatchParams::default(),
        &Patch::Strategic(json!({"status": status(cfg, since)})),
    )
    .await
    .map(|_| ())
}

/// Creates or renews the node's Lease.
pub async fn renew_lease(
    client: &kube::Client,
    cfg: &Config,
    node_uid: &str,
) -> Result<(), kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let now = Some(MicroTime(Timestamp::now()));
    match api.get_opt(&cfg.node_name).await? {
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(Default::default);
            spec.renew_time = now;
            spec.holder_identity = Some(cfg.node_name.clone());
            spec.lease_duration_seconds = Some(LEASE_DURATION_SECONDS);
            api.replace(&cfg.node_name, &PostParams::default(), &lease)
                .await
                .map(|_| ())
        }
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.node_name.clone()),
                    namespace: Some(LEASE_NAMESPACE.into()),
                    owner_references: Some(vec![OwnerReference {
                        api_version: "v1".into(),
                        kind: "Node".into(),
                        name: cfg.node_name.clone(),
                        uid: node_uid.to_owned(),
                        ..Default::default()
                    }]),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(cfg.node_name.clone()),
                    lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
                    renew_time: now,
                    ..Default::default()
                }),
            };
            api.create(&PostParams::default(), &lease).await.map(|_| ())
        }
    }
}

/// Renews the Lease every [`LEASE_RENEW`] and reports status every
/// [`STATUS_REPORT`], forever; failures are logged and retried at the next tick.
pub async fn heartbeat(client: kube::Client, cfg: Config, node_uid: String, since: Value) {
    let mut lease_tick = tokio::time::interval(LEASE_RENEW);
    let mut status_tick = tokio::time::interval(STATUS_REPORT);
    status_tick.tick().await; // registration just reported
    loop {
        tokio::select! {
            _ = lease_tick.tick() => {
                if let Err(e) = renew_lease(&client, &cfg, &node_uid).await {
                    tracing::warn!(node = %cfg.node_name, "renewing the node lease: {e}");
                }
            }
            _ = status_tick.tick() => {
                if let Err(e) = report_status(&client, &cfg, &since).await {
                    tracing::warn!(node = %cfg.node_name, "reporting node status: {e}");
                }
            }
        }
    }
}
