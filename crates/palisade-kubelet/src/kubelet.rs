//! The kubelet's loop: watch the pods bound to this node, make the new ones, unmake
//! the deleted ones, report status. One pod at a time, in watch order; a pod that
//! fails is retried with backoff while the others go on.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use palisade_lab::netns::NetNs;
use tokio::time::Instant;

use crate::config::Config;
use crate::node;
use crate::podspec;
use crate::records::{now_ms, PodRecord};
use crate::sandbox::{self, chain};
use crate::status;

/// First retry after a failed pod; doubled each time up to [`RETRY_MAX`].
pub const RETRY_MIN: Duration = Duration::from_millis(500);
/// Longest wait between two attempts at one pod.
pub const RETRY_MAX: Duration = Duration::from_secs(30);
/// The loop wakes at least this often (to retry status reports that failed).
const TICK: Duration = Duration::from_secs(1);

/// A client for the API server named by `kubeconfig` (the node's credentials).
pub async fn client(kubeconfig: &std::path::Path) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading the kubeconfig {}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .with_context(|| format!("using the kubeconfig {}", kubeconfig.display()))?;
    kube::Client::try_from(config).context("building the Kubernetes client")
}

#[derive(Debug)]
struct Retry {
    next: Instant,
    wait: Duration,
    /// What the kubelet reads of the pod ([`fingerprint`]) when it failed: a pod
    /// whose spec or annotations changed is tried at once. Not the resourceVersion:
    /// the kubelet's own failure report (or any status writer) changes that.
    version: u64,
}

struct Kubelet {
    client: kube::Client,
    node: Arc<sandbox::Node>,
    /// Pods bound to this node, as last seen (by uid).
    pods: BTreeMap<String, Pod>,
    /// The list being received after a watch (re)start.
    init: Option<BTreeMap<String, Pod>>,
    synced: bool,
    /// Pods this kubelet made (by uid), as recorded.
    running: BTreeMap<String, PodRecord>,
    /// Running pods whose Running/Ready status the API server has accepted.
    reported: BTreeSet<String>,
    retry: BTreeMap<String, Retry>,
    /// The node's addresses, primary family first (`hostIPs`).
    host_ips: Vec<std::net::IpAddr>,
    primary_v4: bool,
}

/// Runs the kubelet until `shutdown` completes. On shutdown, pods keep running (as
/// with kubelet); a later run adopts them.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let client = client(&cfg.kubeconfig).await?;
    let node = Arc::new(
        sandbox::Node::open(cfg.clone())
            .with_context(|| format!("opening the state directory {}", cfg.state_dir.display()))?,
    );
    let (node_uid, since) = node::register(&client, &cfg)
        .await
        .with_context(|| format!("registering Node {}", cfg.node_name))?;
    node::renew_lease(&client, &cfg, &node_uid)
        .await
        .with_context(|| format!("creating the Lease of {}", cfg.node_name))?;
    tracing::info!(node = %cfg.node_name, "registered");
    let heartbeat = tokio::spawn(node::heartbeat(
        client.clone(),
        cfg.clone(),
        node_uid,
        since,
    ));

    let primary_v4 = cfg
        .pod_cidrs
        .first()
        .is_some_and(|c| matches!(c, ipnet::IpNet::V4(_)));
    let mut k = Kubelet {
        host_ips: status::primary_first(&cfg.node_ips, primary_v4),
        primary_v4,
        client: client.clone(),
        node: node.clone(),
        pods: BTreeMap::new(),
        init: None,
        synced: false,
        running: BTreeMap::new(),
        reported: BTreeSet::new(),
        retry: BTreeMap::new(),
    };
    let (records, bad) = node.records();
    for b in bad {
        tracing::error!("{b}");
    }
    for r in records {
        tracing::info!(pod = %r.key(), uid = %r.uid, "adopting");
        k.running.insert(r.uid.clone(), r);
    }

    let api: Api<Pod> = Api::all(client);
    let wc = watcher::Config::default().fields(&format!("spec.nodeName={}", cfg.node_name));
    let stream = watcher(api, wc).default_backoff();
    futures::pin_mut!(stream);
    tokio::pin!(shutdown);
    loop {
        let wake = k.next_wake();
        tokio::select! {
            () = &mut shutdown => break,
            ev = stream.next() => match ev {
                Some(Ok(ev)) => k.apply(ev),
                Some(Err(e)) => tracing::warn!("watching pods: {e}"),
                None => break,
            },
            () = tokio::time::sleep_until(wake) => {}
        }
        if k.synced {
            k.reconcile().await;
        }
    }
    heartbeat.abort();
    tracing::info!(node = %cfg.node_name, "stopped; pods keep running");
    Ok(())
}

fn uid_of(p: &Pod) -> Option<String> {
    p.metadata.uid.clone()
}

impl Kubelet {
    fn next_wake(&self) -> Instant {
        let tick = Instant::now() + TICK;
        self.retry
            .values()
            .map(|r| r.next)
            .min()
            .map_or(tick, |n| n.min(tick))
    }

    fn apply(&mut self, ev: watcher::Event<Pod>) {
        match ev {
            watcher::Event::Init => self.init = Some(BTreeMap::new()),
            watcher::Event::InitApply(p) => {
                if let (Some(init), Some(uid)) = (self.init.as_mut(), uid_of(&p)) {
                    init.insert(uid, p);
                }
            }
            watcher::Event::InitDone => {
                self.pods = self.init.take().unwrap_or_default();
                self.synced = true;
            }
            watcher::Event::Apply(p) => {
                if let Some(uid) = uid_of(&p) {
                    self.pods.insert(uid, p);
                }
            }
            watcher::Event::Delete(p) => {
                if let Some(uid) = uid_of(&p) {
                    self.pods.remove(&uid);
                }
            }
        }
    }

    async fn reconcile(&mut self) {
        // Unmake: pods gone from the API (or no longer bound here), and pods being
        // deleted. Adopted pods whose namespace or server vanished are unmade too and
        // made afresh below.
        let doomed: Vec<String> = self
            .running
            .iter()
            .filter(|(uid, rec)| match self.pods.get(*uid) {
                None => true,
                Some(p) => p.metadata.deletion_timestamp.is_some() || !intact(rec),
            })
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in doomed {
            let rec = self.running.remove(&uid).expect("listed");
            self.reported.remove(&uid);
            let node = self.node.clone();
            let key = rec.key();
            tracing::info!(pod = %key, %uid, "tearing down");
            let problems = tokio::task::spawn_blocking(move || node.destroy(&rec))
                .await
                .unwrap_or_else(|e| vec![format!("teardown panicked: {e}")]);
            for p in problems {
                tracing::warn!("{p}");
            }
        }
        // Pods being deleted that run nothing here (gone above, or never made): the
        // kubelet's last word is deleting the object, with its uid as precondition.
        let deleting: Vec<Pod> = self
            .pods
            .values()
            .filter(|p| p.metadata.deletion_timestamp.is_some())
            .filter(|p| uid_of(p).is_some_and(|u| !self.running.contains_key(&u)))
            .cloned()
            .collect();
        for p in deleting {
            self.delete_object(&p).await;
        }

        let now = Instant::now();
        let todo: Vec<Pod> = self
            .pods
            .values()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
            })
            .filter(|p| {
                let Some(uid) = uid_of(p) else { return false };
                if self.running.contains_key(&uid) {
                    return false;
                }
                match self.retry.get(&uid) {
                    None => true,
                    Some(r) => r.next <= now || r.version != fingerprint(p),
                }
            })
            .cloned()
            .collect();
        for p in todo {
            self.make(&p).await;
        }

        let unreported: Vec<String> = self
            .running
            .keys()
            .filter(|u| !self.reported.contains(*u))
            .cloned()
            .collect();
        for uid in unreported {
            if let Some(p) = self.pods.get(&uid).cloned() {
                self.report_running(&p, &uid).await;
            }
        }
        self.retry.retain(|uid, _| self.pods.contains_key(uid));
    }

    async fn make(&mut self, p: &Pod) {
        let uid = uid_of(p).expect("filtered");
        let plan = match podspec::plan(p) {
            Ok(plan) => plan,
            Err(e) => {
                tracing::error!("{e}");
                let containers = containers_of(p);
                self.report_failure(p, &containers, "InvalidPodSpec", &e.to_string())
                    .await;
                self.schedule_retry(p, &uid);
                return;
            }
        };
        let node = self.node.clone();
        let known: Vec<PodRecord> = self.running.values().cloned().collect();
        let plan2 = plan.clone();
        tracing::info!(pod = %plan.key(), %uid, "making");
        let made = tokio::task::spawn_blocking(move || node.create(&plan2, &known))
            .await
            .unwrap_or_else(|e| {
                Err(sandbox::SandboxError {
                    pod: plan.key(),
                    step: "making",
                    message: format!("panicked: {e}"),
                    retryable: false,
                })
            });
        match made {
            Ok(rec) => {
                self.retry.remove(&uid);
                self.running.insert(uid.clone(), rec);
                self.report_running(p, &uid).await;
            }
            Err(e) => {
                tracing::warn!("{e}{}", if e.retryable { " (retryable)" } else { "" });
                let reason = if e.step == "CNI ADD" {
                    "NetworkSetupFailed"
                } else {
                    "SandboxCreationFailed"
                };
                self.report_failure(p, &plan.containers, reason, &e.to_string())
                    .await;
                self.schedule_retry(p, &uid);
            }
        }
    }

    fn schedule_retry(&mut self, p: &Pod, uid: &str) {
        let wait = self
            .retry
            .get(uid)
            .map_or(RETRY_MIN, |r| (r.wait * 2).min(RETRY_MAX));
        self.retry.insert(
            uid.to_owned(),
            Retry {
                next: Instant::now() + wait,
                wait,
                version: fingerprint(p),
            },
        );
    }

    fn api(&self, p: &Pod) -> Api<Pod> {
        Api::namespaced(
            self.client.clone(),
            p.metadata.namespace.as_deref().unwrap_or_default(),
        )
    }

    async fn report_running(&mut self, p: &Pod, uid: &str) {
        let Some(rec) = self.running.get_mut(uid) else {
            return;
        };
        let Ok(plan) = podspec::plan(p) else { return };
        let started = p
            .status
            .as_ref()
            .and_then(|s| s.start_time.clone())
            .map(|t| serde_json::to_value(t).expect("serializes"))
            .unwrap_or_else(node::time_now);
        let pod_ips = status::primary_first(&rec.ips, self.primary_v4);
        let body = status::running(&plan, &pod_ips, &self.host_ips, &started);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &plan.namespace);
        match api
            .patch_status(&plan.name, &PatchParams::default(), &Patch::Strategic(body))
            .await
        {
            Ok(_) => {
                self.reported.insert(uid.to_owned());
                if rec.timeline.ready_reported_ms.is_none() {
                    rec.timeline.ready_reported_ms = Some(now_ms());
                    if let Err(e) = self.node.state().save(rec) {
                        tracing::warn!("{}", chain(&e));
                    }
                }
                tracing::info!(pod = %plan.key(), ips = ?pod_ips, "running");
            }
            Err(e) => tracing::warn!(pod = %plan.key(), "reporting status: {e}"),
        }
    }

    async fn report_failure(
        &self,
        p: &Pod,
        containers: &[(String, String)],
        reason: &str,
        msg: &str,
    ) {
        let body = status::failed(containers, &self.host_ips, reason, msg);
        let name = p.metadata.name.as_deref().unwrap_or_default();
        if let Err(e) = self
            .api(p)
            .patch_status(name, &PatchParams::default(), &Patch::Strategic(body))
            .await
        {
            tracing::warn!(pod = %name, "reporting failure status: {e}");
        }
    }

    async fn delete_object(&self, p: &Pod) {
        let name = p.metadata.name.as_deref().unwrap_or_default();
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: uid_of(p),
                resource_version: None,
            }),
            ..Default::default()
        };
        match self.api(p).delete(name, &dp).await {
            Ok(_) => tracing::info!(pod = %name, "deleted"),
            // Gone already, or a new pod by that name (the uid precondition failed).
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => tracing::warn!(pod = %name, "deleting: {e}"),
        }
    }
}

/// A hash of what [`podspec::plan`] reads: annotations and spec.
fn fingerprint(p: &Pod) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(&(&p.metadata.annotations, &p.spec))
        .unwrap_or_default()
        .hash(&mut h);
    h.finish()
}

/// Whether an adopted pod still has its namespace and server.
fn intact(rec: &PodRecord) -> bool {
    rec.netns.as_ref().is_none_or(|n| NetNs::open(n).exists())
        && rec.server.as_ref().is_some_and(|s| s.is_alive())
}

fn containers_of(p: &Pod) -> Vec<(String, String)> {
    p.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
        .collect()
}

/// Removes everything recorded in `state_dir` (processes, CNI attachments,
/// namespaces), then the directory itself; returns the problems met. For `lab down`
/// and `--teardown`; touches no API object.
pub fn teardown(state_dir: &std::path::Path) -> Vec<String> {
    let state = match crate::records::StateDir::open(state_dir) {
        Ok(s) => s,
        Err(e) => return vec![chain(&e)],
    };
    let mut problems = Vec::new();
    match state.load_all() {
        Ok(all) => {
            for r in all {
                match r {
                    Ok(rec) => problems.extend(sandbox::destroy_record(&state, &rec)),
                    Err(e) => problems.push(chain(&e)),
                }
            }
        }
        Err(e) => problems.push(chain(&e)),
    }
    if problems.is_empty() {
        if let Err(e) = std::fs::remove_dir_all(state_dir) {
            problems.push(format!("removing {}: {e}", state_dir.display()));
        }
    }
    problems
}
