//! Control-plane fan-out: the bytes the API server sends each node's agent per pod
//! event, with thousands of pods and tens of agents, against the real kube-apiserver.
//!
//! Each "agent" is the agent's own Kubernetes source (`palisade_agent::kube_source`,
//! the same watchers, decoding and store) without a datapath: the count-only mode the
//! issue asks for. Each connects through its own [`CountingProxy`], so the figure is
//! what one node would receive on the wire. Events are counted by a separate watcher,
//! and a marker write (the last of a phase, seen by every agent) ends each phase:
//! the API server delivers a kind's events in resourceVersion order, so an agent that
//! has the marker has received everything written before it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::{stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use palisade_agent::kube_source::KubeSource;
use palisade_agent::source::Source;
use palisade_kube_lab::ControlPlane;
use serde::Serialize;
use serde_json::json;

use crate::aws_model::{self, Shape};
use crate::proxy::CountingProxy;

/// Requests in flight while filling the API server.
const CONCURRENCY: usize = 48;
/// How long a phase may take before the benchmark gives up.
const PHASE_DEADLINE: Duration = Duration::from_secs(600);

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The cluster.
    pub shape: Shape,
    /// Count-only agents.
    pub agents: usize,
    /// Label updates of existing pods.
    pub updates: usize,
    /// Pods created, given an address and deleted.
    pub lifecycles: usize,
    /// The AWS model's `endpointChunkSize`.
    pub chunk: usize,
}

/// Per-phase figures.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// Pod watch events the API server emitted in the phase (counted by a watcher).
    pub events: u64,
    /// Mean bytes one agent received per event.
    pub bytes_per_agent_per_event: f64,
    /// Lowest and highest per-agent total over the phase.
    pub min_agent_bytes: u64,
    /// See `min_agent_bytes`.
    pub max_agent_bytes: u64,
}

/// The result.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Pods in the API server.
    pub pods: usize,
    /// Nodes (Node objects).
    pub nodes: usize,
    /// Count-only agents.
    pub agents: usize,
    /// NetworkPolicies.
    pub policies: usize,
    /// Seconds to create every object.
    pub fill_secs: f64,
    /// Bytes per agent for the initial list of every kind, per pod.
    pub initial_bytes_per_pod: f64,
    /// Label updates of existing pods (one event each).
    pub update: Phase,
    /// Pods created, given an address, deleted.
    pub lifecycle: Phase,
    /// Events per pod lifecycle.
    pub events_per_lifecycle: f64,
    /// One pod as the API server serves it (JSON, with managedFields).
    pub pod_json_bytes: usize,
    /// The same without managedFields.
    pub pod_json_bytes_without_managed_fields: usize,
    /// Only what a peer needs (namespace, name, labels, addresses, named ports, node),
    /// what a fan-out cache projecting pods would send.
    pub pod_projection_bytes: usize,
    /// AWS model: bytes to every node when one pod gets or loses its address.
    pub aws_bytes_per_address_change: usize,
    /// AWS model chunk size.
    pub aws_chunk: usize,
}

/// Starts a control plane, fills it, runs the agents and measures.
pub fn run(opts: &Options, progress: &(dyn Fn(&str) + Sync)) -> Result<Report> {
    progress("starting etcd and kube-apiserver");
    let cp = ControlPlane::start().context("starting the control plane")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(run_on(&cp, opts, progress))
}

async fn client(cp: &ControlPlane, via: Option<SocketAddr>) -> Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(cp.admin().path())
        .context("reading the admin kubeconfig")?;
    let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .context("admin kubeconfig")?;
    if let Some(addr) = via {
        config.cluster_url = format!("https://{addr}").parse().context("proxy url")?;
    }
    kube::Client::try_from(config).context("kube client")
}

fn upstream(cp: &ControlPlane) -> Result<SocketAddr> {
    let s = cp.server();
    s.strip_prefix("https://")
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("API server address {s}"))
}

fn pod_manifest(shape: &Shape, i: usize, name: &str) -> Result<Pod> {
    let (ns, app, _) = shape.locate(i);
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": format!("ns-{ns}"),
            "labels": {"app": format!("app-{app}"), "pod-template-hash": "5d8f7c9b4"},
        },
        "spec": {
            "nodeName": format!("node-{}", shape.node_of(i)),
            "containers": [{
                "name": "app",
                "image": "registry.example/app:1.0",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
            }],
        },
    }))?)
}

fn pod_status(shape: &Shape, i: usize, ip: &str) -> serde_json::Value {
    json!({"status": {
        "phase": "Running",
        "hostIP": shape.node_ip(shape.node_of(i)),
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": "2026-12-01T00:00:00Z",
        "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-01T00:00:01Z"},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": "2026-12-01T00:00:01Z"},
        ],
    }})
}

async fn create_pod(
    client: &kube::Client,
    shape: &Shape,
    i: usize,
    name: &str,
    ip: &str,
) -> Result<()> {
    let (ns, _, _) = shape.locate(i);
    let api: Api<Pod> = Api::namespaced(client.clone(), &format!("ns-{ns}"));
    api.create(&PostParams::default(), &pod_manifest(shape, i, name)?)
        .await
        .with_context(|| format!("creating pod {name}"))?;
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(pod_status(shape, i, ip)),
    )
    .await
    .with_context(|| format!("status of pod {name}"))?;
    Ok(())
}

async fn fill(client: &kube::Client, shape: &Shape) -> Result<usize> {
    for ns in 0..shape.namespaces {
        let api: Api<Namespace> = Api::all(client.clone());
        api.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": format!("ns-{ns}")}}))?,
        )
        .await?;
        // No controller manager runs (its node lifecycle controller would mark these
        // kubelet-less nodes' pods NotReady mid-measurement), so the ServiceAccount
        // admission needs the `default` ServiceAccount written here.
        let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), &format!("ns-{ns}"));
        sa.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "default"}}))?,
        )
        .await?;
    }
    for n in 0..shape.nodes {
        let api: Api<Node> = Api::all(client.clone());
        api.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": format!("node-{n}")}}))?,
        )
        .await?;
    }
    let mut policies = 0;
    for ns in 0..shape.namespaces {
        let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), &format!("ns-{ns}"));
        for app in 0..shape.apps_per_namespace {
            api.create(
                &PostParams::default(),
                &crate::app_policy(app, &shape.peers_of(app))?,
            )
            .await?;
            policies += 1;
        }
    }
    stream::iter(0..shape.pods())
        .map(|i| async move {
            let name = aws_model::pod_name(shape, i);
            let (ns, _, _) = shape.locate(i);
            let name = format!("{name}-n{ns}");
            create_pod(client, shape, i, &name, &shape.pod_ip(i)).await
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(policies)
}

/// Counts pod watch events after the initial list, and notes the count at which each
/// marker token arrived, so a phase's events are exactly those between two markers.
#[derive(Default)]
struct EventCounter {
    events: u64,
    markers: Vec<(String, u64)>,
}

fn count_events(client: kube::Client) -> (Arc<Mutex<EventCounter>>, tokio::task::JoinHandle<()>) {
    let counter = Arc::new(Mutex::new(EventCounter::default()));
    let c = counter.clone();
    let task = tokio::spawn(async move {
        let api: Api<Pod> = Api::all(client);
        let mut s = std::pin::pin!(watcher(api, watcher::Config::default()));
        let mut live = false;
        let mut last_marker: Option<String> = None;
        while let Some(ev) = s.next().await {
            match ev {
                Ok(watcher::Event::InitDone) => live = true,
                // A marker written while this watcher was still listing arrives in
                // its list: it marks the count so far (zero).
                Ok(
                    watcher::Event::Apply(p)
                    | watcher::Event::Delete(p)
                    | watcher::Event::InitApply(p),
                ) => {
                    let mut c = c.lock().expect("counter");
                    if live {
                        c.events += 1;
                    }
                    let marker = p
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("bench-marker"))
                        .cloned();
                    if marker.is_some() && marker != last_marker {
                        let n = c.events;
                        c.markers.push((marker.clone().unwrap_or_default(), n));
                        last_marker = marker;
                    }
                }
                _ => {}
            }
        }
    });
    (counter, task)
}

/// The event count at which `token` arrived, once it has.
async fn events_at(counter: &Mutex<EventCounter>, token: &str) -> Result<u64> {
    let deadline = Instant::now() + PHASE_DEADLINE;
    loop {
        if let Some((_, n)) = counter
            .lock()
            .expect("counter")
            .markers
            .iter()
            .find(|(t, _)| t == token)
        {
            return Ok(*n);
        }
        if Instant::now() > deadline {
            bail!("the event counter never saw the marker {token}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Marks the end of a phase on `marker` (namespace, name) and waits until every agent
/// has it.
async fn mark_and_wait(
    client: &kube::Client,
    marker: (&str, &str),
    token: &str,
    agents: &mut [KubeSource],
) -> Result<()> {
    let api: Api<Pod> = Api::namespaced(client.clone(), marker.0);
    api.patch(
        marker.1,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"bench-marker": token}}})),
    )
    .await?;
    let key = format!("{}/{}", marker.0, marker.1);
    let deadline = Instant::now() + PHASE_DEADLINE;
    let mut waiting: Vec<usize> = (0..agents.len()).collect();
    while !waiting.is_empty() {
        if Instant::now() > deadline {
            bail!("{} agents never saw the marker {token}", waiting.len());
        }
        waiting.retain(|&a| {
            let seen = tokio::task::block_in_place(|| agents[a].load())
                .ok()
                .and_then(|s| {
                    s.cluster
                        .pods
                        .get(&key)
                        .map(|p| p.labels.get("bench-marker").map(String::as_str) == Some(token))
                })
                .unwrap_or(false);
            !seen
        });
        if !waiting.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

fn phase(before: &[u64], after: &[u64], events: u64) -> Phase {
    let deltas: Vec<u64> = before.iter().zip(after).map(|(b, a)| a - b).collect();
    let mean = deltas.iter().sum::<u64>() as f64 / deltas.len().max(1) as f64;
    Phase {
        events,
        bytes_per_agent_per_event: mean / events.max(1) as f64,
        min_agent_bytes: deltas.iter().copied().min().unwrap_or(0),
        max_agent_bytes: deltas.iter().copied().max().unwrap_or(0),
    }
}

async fn run_on(
    cp: &ControlPlane,
    opts: &Options,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Report> {
    let shape = &opts.shape;
    let admin = client(cp, None).await?;
    progress(&format!(
        "creating {} namespaces, {} nodes, {} policies, {} pods (with status)",
        shape.namespaces,
        shape.nodes,
        shape.namespaces * shape.apps_per_namespace,
        shape.pods()
    ));
    let t = Instant::now();
    let policies = fill(&admin, shape).await?;
    let fill_secs = t.elapsed().as_secs_f64();

    progress(&format!("starting {} count-only agents", opts.agents));
    let up = upstream(cp)?;
    let mut proxies = Vec::new();
    let mut agents = Vec::new();
    // One after another, so each list is one agent's on a machine that is otherwise
    // idle (the sources list by streaming lists from the watch cache, which no
    // longer fail when many run at once). The figures below are per event after the
    // lists, which this does not change.
    for k in 0..opts.agents {
        let p = CountingProxy::start(up).await?;
        let agent = KubeSource::start(client(cp, Some(p.addr())).await?);
        let deadline = Instant::now() + PHASE_DEADLINE;
        while !agent.synced() {
            if Instant::now() > deadline {
                bail!("agent {k} did not list every kind in time");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        agents.push(agent);
        proxies.push(p);
    }
    let (events, counter) = count_events(admin.clone());
    let marker_ns = "ns-0".to_string();
    let marker_name = format!("{}-n0", aws_model::pod_name(shape, 0));
    let marker = (marker_ns.as_str(), marker_name.as_str());
    // The initial list ends when everyone has the first marker.
    mark_and_wait(&admin, marker, "listed", &mut agents).await?;
    let bytes = |ps: &[CountingProxy]| ps.iter().map(CountingProxy::bytes_down).collect::<Vec<_>>();
    let listed = bytes(&proxies);
    let initial_bytes_per_pod =
        listed.iter().sum::<u64>() as f64 / listed.len().max(1) as f64 / shape.pods() as f64;

    progress(&format!("{} label updates", opts.updates));
    let e0 = events_at(&events, "listed").await?;
    let step = (shape.pods() / opts.updates.max(1)).max(1);
    stream::iter((0..opts.updates).map(|k| (k * step + 1) % shape.pods()))
        .map(|i| {
            let admin = admin.clone();
            async move {
                let (ns, _, _) = shape.locate(i);
                let api: Api<Pod> = Api::namespaced(admin, &format!("ns-{ns}"));
                let name = format!("{}-n{ns}", aws_model::pod_name(shape, i));
                api.patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": {"bench-round": "1"}}})),
                )
                .await
                .map(|_| ())
            }
        })
        .buffer_unordered(8)
        .try_collect::<Vec<()>>()
        .await?;
    mark_and_wait(&admin, marker, "updated", &mut agents).await?;
    let updated = bytes(&proxies);
    let e1 = events_at(&events, "updated").await?;
    let update = phase(&listed, &updated, e1 - e0);

    progress(&format!(
        "{} pod lifecycles (create, address, delete)",
        opts.lifecycles
    ));
    stream::iter(0..opts.lifecycles)
        .map(|k| {
            let admin = admin.clone();
            async move {
                let i = (k * shape.pods_per_app) % shape.pods();
                let (ns, _, _) = shape.locate(i);
                let name = format!("churn-{k}");
                let ip = shape.pod_ip(shape.pods() + 10 + k);
                create_pod(&admin, shape, i, &name, &ip).await?;
                let api: Api<Pod> = Api::namespaced(admin, &format!("ns-{ns}"));
                api.delete(&name, &DeleteParams::default().grace_period(0))
                    .await
                    .with_context(|| format!("deleting {name}"))?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(8)
        .try_collect::<Vec<()>>()
        .await?;
    mark_and_wait(&admin, marker, "churned", &mut agents).await?;
    let churned = bytes(&proxies);
    let lifecycle_events = events_at(&events, "churned").await? - e1;
    let lifecycle = phase(&updated, &churned, lifecycle_events);
    counter.abort();

    let api: Api<Pod> = Api::namespaced(admin.clone(), marker.0);
    let mut pod = api.get(marker.1).await?;
    let pod_json_bytes = serde_json::to_vec(&pod)?.len();
    pod.metadata.managed_fields = None;
    let pod_json_bytes_without_managed_fields = serde_json::to_vec(&pod)?.len();
    let projection = json!({
        "namespace": pod.metadata.namespace,
        "name": pod.metadata.name,
        "labels": pod.metadata.labels,
        "ips": pod.status.as_ref().and_then(|s| s.pod_ips.as_ref()).map(|v| v.iter().map(|i| i.ip.clone()).collect::<Vec<_>>()),
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "node": pod.spec.as_ref().and_then(|s| s.node_name.clone()),
    });
    let pod_projection_bytes =
        serde_json::to_vec(&json!({"type": "MODIFIED", "object": projection}))?.len();
    Ok(Report {
        pods: shape.pods(),
        nodes: shape.nodes,
        agents: opts.agents,
        policies,
        fill_secs,
        initial_bytes_per_pod,
        update,
        events_per_lifecycle: lifecycle_events as f64 / opts.lifecycles.max(1) as f64,
        lifecycle,
        pod_json_bytes,
        pod_json_bytes_without_managed_fields,
        pod_projection_bytes,
        aws_bytes_per_address_change: aws_model::bytes_per_address_change(shape, 1, opts.chunk),
        aws_chunk: opts.chunk,
    })
}

impl Report {
    /// The table `palisade bench fanout` prints.
    pub fn table(&self) -> String {
        let per_life = self.lifecycle.bytes_per_agent_per_event * self.events_per_lifecycle;
        let aws_life = 2 * self.aws_bytes_per_address_change;
        let goal = if self.lifecycle.bytes_per_agent_per_event <= 1024.0 {
            "met"
        } else {
            "MISSED"
        };
        format!(
            "control-plane fan-out (real kube-apiserver; {pods} pods on {nodes} nodes, {pol} NetworkPolicies, {agents} count-only agents; filled in {fill:.0} s)\n\
             \n\
             initial list, per agent:              {init:>10.0} B per pod\n\
             pod label update ({ue} events):        {ub:>10.0} B per agent per event (agents {umin}..{umax} B in all)\n\
             pod lifecycle ({le} events, {epl:.1}/pod):  {lb:>10.0} B per agent per event, {pl:.0} B per pod\n\
             \n\
             one pod as served:                    {pj:>10} B JSON ({pjm} B without managedFields)\n\
             what peers need (a projection):       {pp:>10} B per event\n\
             \n\
             AWS PolicyEndpoints (chunk {chunk}, modelled, no managedFields):\n\
             per pod address change, per node:     {aws:>10} B\n\
             per pod lifecycle, per node:          {awsl:>10} B   ({ratio:.1}x Palisade's {pl:.0} B)\n\
             per label update nobody selects on:   {zero:>10} B   (Palisade: {ub:.0} B)\n\
             \n\
             goal <= 1 KB per node per pod event:  {goal} ({lb:.0} B)\n",
            pods = self.pods,
            nodes = self.nodes,
            pol = self.policies,
            agents = self.agents,
            fill = self.fill_secs,
            init = self.initial_bytes_per_pod,
            ue = self.update.events,
            ub = self.update.bytes_per_agent_per_event,
            umin = self.update.min_agent_bytes,
            umax = self.update.max_agent_bytes,
            le = self.lifecycle.events,
            epl = self.events_per_lifecycle,
            lb = self.lifecycle.bytes_per_agent_per_event,
            pl = per_life,
            pj = self.pod_json_bytes,
            pjm = self.pod_json_bytes_without_managed_fields,
            pp = self.pod_projection_bytes,
            chunk = self.aws_chunk,
            aws = self.aws_bytes_per_address_change,
            awsl = aws_life,
            ratio = aws_life as f64 / per_life.max(1.0),
            zero = 0,
        )
    }
}
