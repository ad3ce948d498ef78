//! `palisade bench kube-scaleup`: a Deployment scaled up under an egress policy in the
//! Kubernetes lab, each new replica's first packet enforced, and how long a new pod
//! takes from its creation to Ready.
//!
//! Under the background load of [`crate::bench_kube_load`], a namespace holds a
//! denied peer (`target`), an allowed one (`ok`), a control pod that sends to the
//! denied peer (so that it demonstrably receives whatever is not dropped) and an
//! egress policy that lets the Deployment's pods (`role: sender`) reach `ok` only.
//! Every replica sends to `target` every millisecond and to `ok` every 5 ms, from the
//! instant its CNI ADD returns (the lab kubelet's `lab.palisade.io/send`), as a
//! container would. Each round scales the Deployment from `from` to `to` replicas,
//! waits until the new pods are Ready and each one's datagrams reached `ok` (its sender
//! ran), and scales back down. At the end, the datagrams of the replicas that reached
//! `target` are counted: each one would be a packet sent before its pod's policy was in
//! force. The goal is 0.
//!
//! Latency per new pod: from the local time a watch of the benchmark's own received
//! the pod's first event (the ReplicaSet controller's create, as any watcher sees it;
//! `creationTimestamp` has 1 s granularity, too coarse here) to the local time it
//! received the pod with `Ready=True`. The kubelet's records split it: created → CNI
//! ADD returned (scheduling, the kubelet's watch, the pod's namespace, the CNI chain
//! with the policy in force), → Ready reported (the sender's first packet, the
//! server's start, the status write), → Ready seen by the watch.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use serde::Serialize;

use crate::arrival_tail::ArrivalTail;
use crate::bench_enforcement::Latency;
use crate::bench_kube_load::{self, Load, LoadSpec};

/// The benchmark's namespace.
const NS: &str = "scaleup";
/// The Deployment (and its pods' `app` label).
const APP: &str = "scaled";
/// The longest one scale-up or scale-down may take.
const ROUND_TIMEOUT: Duration = Duration::from_secs(180);
/// How often the benchmark looks at its watch's records while it waits.
const POLL: Duration = Duration::from_millis(20);

/// What to scale.
#[derive(Debug, Clone)]
pub struct Options {
    /// Replicas before each scale-up.
    pub from: usize,
    /// Replicas after it.
    pub to: usize,
    /// Scale-ups.
    pub rounds: usize,
}

/// The result.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Nodes.
    pub nodes: usize,
    /// The background load.
    pub load: Load,
    /// Replicas before and after each scale-up.
    pub from: usize,
    /// See `from`.
    pub to: usize,
    /// Scale-ups.
    pub rounds: usize,
    /// Pods the scale-ups created (the samples).
    pub new_pods: usize,
    /// Datagrams of the Deployment's pods that reached the denied peer (goal: 0).
    pub denied_arrivals: usize,
    /// Datagrams of the control pod at the denied peer (above 0: the peer receives).
    pub control_arrivals: usize,
    /// Datagrams of the Deployment's pods that reached the allowed peer.
    pub allowed_arrivals: usize,
    /// Pod created (watch) → Ready (watch).
    pub created_to_ready: Latency,
    /// Pod created (watch) → CNI ADD returned (kubelet record), policy in force.
    pub created_to_network: Latency,
    /// CNI ADD returned → Ready accepted by the API server (kubelet record).
    pub network_to_ready_reported: Latency,
    /// Ready accepted by the API server → Ready seen by the watch.
    pub ready_reported_to_seen: Latency,
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis()
}

/// What the watch saw of one pod.
#[derive(Debug, Clone, Default)]
struct Seen {
    name: String,
    /// Local time of its first event.
    created_ms: u128,
    /// Local time of the first event with `Ready=True`.
    ready_ms: Option<u128>,
    /// Being deleted, or gone.
    leaving: bool,
    gone: bool,
}

type Pods = Arc<Mutex<BTreeMap<String, Seen>>>;

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Starts a watch of the Deployment's pods; returns once it has listed.
fn watch_pods(rt: &tokio::runtime::Runtime, api: Api<Pod>) -> Pods {
    let pods: Pods = Arc::default();
    let out = pods.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let cfg = watcher::Config::default().labels(&format!("app={APP}"));
    rt.spawn(async move {
        let stream = watcher(api, cfg);
        futures::pin_mut!(stream);
        let mut tx = Some(tx);
        while let Some(ev) = stream.next().await {
            let t = now_ms();
            let (p, deleted) = match ev {
                Ok(watcher::Event::InitDone) => {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                    continue;
                }
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => (p, false),
                Ok(watcher::Event::Delete(p)) => (p, true),
                Ok(watcher::Event::Init) => continue,
                Err(e) => {
                    eprintln!("bench: watching the {APP} pods: {e}");
                    continue;
                }
            };
            let Some(uid) = p.metadata.uid.clone() else {
                continue;
            };
            let mut all = out.lock().expect("not poisoned");
            let seen = all.entry(uid).or_insert_with(|| Seen {
                name: p.metadata.name.clone().unwrap_or_default(),
                created_ms: t,
                ..Default::default()
            });
            if is_ready(&p) && seen.ready_ms.is_none() {
                seen.ready_ms = Some(t);
            }
            seen.leaving |= deleted || p.metadata.deletion_timestamp.is_some();
            seen.gone |= deleted;
        }
    });
    let _ = rx.recv_timeout(Duration::from_secs(30));
    pods
}

fn base_manifest() -> String {
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: {NS}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: target, namespace: {NS}, labels: {{app: target}}}}
spec:
  containers: [{{name: c, image: lab, ports: [{{containerPort: 7000, protocol: UDP}}]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: ok, namespace: {NS}, labels: {{app: ok}}}}
spec:
  containers: [{{name: c, image: lab, ports: [{{containerPort: 7000, protocol: UDP}}]}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: senders-to-ok-only, namespace: {NS}}}
spec:
  podSelector: {{matchLabels: {{role: sender}}}}
  policyTypes: [Egress]
  egress:
  - to: [{{podSelector: {{matchLabels: {{app: ok}}}}}}]
"#
    )
}

fn senders_manifest(target: &str, ok: &str, replicas: usize) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: control
  namespace: {NS}
  labels: {{app: control}}
  annotations: {{lab.palisade.io/send: "udp://{target}:7000?every=20ms&for=3600s"}}
spec:
  containers: [{{name: c, image: lab}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {APP}, namespace: {NS}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {APP}}}}}
  template:
    metadata:
      labels: {{app: {APP}, role: sender}}
      annotations: {{lab.palisade.io/send: "udp://{target}:7000?every=1ms&for=3600s,udp://{ok}:7000?every=5ms&for=3600s"}}
    spec:
      containers: [{{name: c, image: lab}}]
"#
    )
}

/// Polls `cond` every [`POLL`] until it gives a value, or fails after [`ROUND_TIMEOUT`].
fn wait_for<T>(what: &str, mut cond: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let deadline = Instant::now() + ROUND_TIMEOUT;
    loop {
        if let Some(v) = cond() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("{what}: not after {}s", ROUND_TIMEOUT.as_secs());
        }
        std::thread::sleep(POLL);
    }
}

/// The kubelets' timelines of the pods running now, by uid.
fn timelines(
    bench: &bench_kube_load::Bench,
) -> anyhow::Result<BTreeMap<String, palisade_kubelet::records::Timeline>> {
    let mut out = BTreeMap::new();
    for node in &bench.lab.nodes {
        let Ok(state) = palisade_kubelet::records::StateDir::open(&node.dir.join("kubelet")) else {
            continue;
        };
        for rec in state.load_all()?.into_iter().flatten() {
            out.insert(rec.uid.clone(), rec.timeline.clone());
        }
    }
    Ok(out)
}

fn ms_between(a: u128, b: u128) -> Duration {
    Duration::from_millis(b.saturating_sub(a) as u64)
}

/// Runs the benchmark on a lab of its own (taken down at the end).
pub fn run(
    nodes: usize,
    spec: &LoadSpec,
    opts: &Options,
    cni_bin: Option<std::path::PathBuf>,
) -> anyhow::Result<Report> {
    if opts.to <= opts.from || opts.rounds == 0 {
        bail!(
            "scaling from {} to {} replicas {} times creates no pod (--to must exceed --from, --rounds at least 1)",
            opts.from,
            opts.to,
            opts.rounds
        );
    }
    let bench = bench_kube_load::start(nodes, cni_bin, spec)?;
    bench.apply("scaleup-base.yaml", &base_manifest())?;
    let keys = [format!("{NS}/target"), format!("{NS}/ok")];
    let ips = bench.pod_ips(&keys)?;
    let pods_api: Api<Pod> = Api::namespaced(bench.client.clone(), NS);
    let seen = watch_pods(&bench.rt, pods_api);
    bench.apply(
        "scaleup-senders.yaml",
        &senders_manifest(&ips[0], &ips[1], opts.from),
    )?;
    let logs = bench.pod_logs(&keys)?;
    let mut ok_tail = ArrivalTail::new(logs[1].clone());
    let mut reached_ok: BTreeSet<String> = BTreeSet::new();
    let mut allowed_arrivals = 0;
    let deployments: Api<Deployment> = Api::namespaced(bench.client.clone(), NS);
    let scale = |n: usize| -> anyhow::Result<()> {
        bench.rt.block_on(deployments.patch(
            APP,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": n}})),
        ))?;
        Ok(())
    };

    let (mut to_ready, mut to_network, mut to_reported, mut to_seen) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut new_pods = 0;
    for round in 0..opts.rounds {
        let before: BTreeSet<String> = seen.lock().expect("not poisoned").keys().cloned().collect();
        scale(opts.to)?;
        let fresh = opts.to - opts.from;
        let new: BTreeMap<String, Seen> =
            wait_for(&format!("round {round}: {fresh} new pods Ready"), || {
                let all = seen.lock().expect("not poisoned");
                let new: BTreeMap<String, Seen> = all
                    .iter()
                    .filter(|(uid, s)| !before.contains(*uid) && !s.leaving)
                    .map(|(u, s)| (u.clone(), s.clone()))
                    .collect();
                (new.len() >= fresh && new.values().all(|s| s.ready_ms.is_some())).then_some(new)
            })?;
        // The kubelet saves its record just after the API server accepted Ready.
        let lines = wait_for(
            &format!("round {round}: the kubelets' records of the new pods"),
            || {
                let lines = timelines(&bench).ok()?;
                new.keys()
                    .all(|uid| {
                        lines.get(uid).is_some_and(|t| {
                            t.network_ready_ms.is_some() && t.ready_reported_ms.is_some()
                        })
                    })
                    .then_some(lines)
            },
        )?;
        for (uid, s) in &new {
            let ready = s.ready_ms.expect("waited for");
            to_ready.push(ms_between(s.created_ms, ready));
            let t = &lines[uid];
            let (Some(net), Some(reported)) = (t.network_ready_ms, t.ready_reported_ms) else {
                unreachable!("waited for");
            };
            to_network.push(ms_between(s.created_ms, net));
            to_reported.push(ms_between(net, reported));
            to_seen.push(ms_between(reported, ready));
        }
        new_pods += new.len();
        // Every new replica's sender ran: its allowed datagrams arrived.
        wait_for(
            &format!("round {round}: datagrams of every new pod at ok"),
            || {
                for a in ok_tail.read_new() {
                    if let Some(name) = a.identity.strip_prefix(&format!("{NS}/")) {
                        if name.starts_with(&format!("{APP}-")) {
                            allowed_arrivals += 1;
                            reached_ok.insert(name.to_string());
                        }
                    }
                }
                new.values()
                    .all(|s| reached_ok.contains(&s.name))
                    .then_some(())
            },
        )?;
        scale(opts.from)?;
        wait_for(
            &format!("round {round}: back to {} pods", opts.from),
            || {
                let all = seen.lock().expect("not poisoned");
                let left = all.values().filter(|s| !s.gone).count();
                (left == opts.from).then_some(())
            },
        )?;
        eprintln!("bench: round {} of {}", round + 1, opts.rounds);
    }
    let at_target = palisade_lab::sender::arrivals(&logs[0]);
    let denied_arrivals = at_target
        .iter()
        .filter(|a| a.identity.starts_with(&format!("{NS}/{APP}-")))
        .count();
    let control_arrivals = at_target
        .iter()
        .filter(|a| a.identity == format!("{NS}/control"))
        .count();
    Ok(Report {
        nodes,
        load: bench.load.clone(),
        from: opts.from,
        to: opts.to,
        rounds: opts.rounds,
        new_pods,
        denied_arrivals,
        control_arrivals,
        allowed_arrivals,
        created_to_ready: Latency::of(to_ready),
        created_to_network: Latency::of(to_network),
        network_to_ready_reported: Latency::of(to_reported),
        ready_reported_to_seen: Latency::of(to_seen),
    })
}

/// The table.
pub fn render(r: &Report) -> String {
    let row = |what: &str, l: &Latency| {
        format!(
            "{what:<48} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>6}\n",
            l.p50_ms, l.p99_ms, l.min_ms, l.max_ms, l.trials
        )
    };
    let mut s = format!(
        "Kubernetes lab: {} nodes; {}\n\
         Deployment scaled {} -> {} replicas {} times under an egress policy: {} new pods (real)\n\
         times are local receive times of a watch's events and the kubelets' records\n\n\
         {:<48} {:>8} {:>8} {:>8} {:>8} {:>6}\n",
        r.nodes,
        r.load.describe(),
        r.from,
        r.to,
        r.rounds,
        r.new_pods,
        "ms",
        "p50",
        "p99",
        "min",
        "max",
        "pods"
    );
    s += &row("pod created -> Ready", &r.created_to_ready);
    s += &row(
        "  created -> CNI ADD returned (policy in force)",
        &r.created_to_network,
    );
    s += &row(
        "  CNI ADD returned -> Ready accepted",
        &r.network_to_ready_reported,
    );
    s += &row("  Ready accepted -> Ready seen", &r.ready_reported_to_seen);
    s += &format!(
        "\ndatagrams of the new pods at the denied peer: {} ({})\n\
         datagrams of the new pods at the allowed peer: {}; of the control pod at the denied peer: {}\n",
        r.denied_arrivals,
        if r.denied_arrivals == 0 {
            "goal 0: met"
        } else {
            "goal 0: MISSED"
        },
        r.allowed_arrivals,
        r.control_arrivals
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifests_decode_strictly_and_the_senders_aim_at_both_peers() {
        let senders = senders_manifest("10.244.1.5", "10.244.2.6", 1);
        for (file, text) in [
            ("base.yaml", base_manifest()),
            ("senders.yaml", senders.clone()),
        ] {
            let loaded = palisade_policy::manifest::load(&[(file.into(), text)]);
            assert!(loaded.errors.is_empty(), "{file}: {:?}", loaded.errors);
        }
        let spec = senders
            .lines()
            .find(|l| l.contains("every=1ms"))
            .and_then(|l| l.split('"').nth(1))
            .unwrap();
        let targets = palisade_lab::sender::parse_targets(spec).unwrap();
        let to: Vec<String> = targets.iter().map(|t| t.addr.to_string()).collect();
        assert_eq!(to, vec!["10.244.1.5:7000", "10.244.2.6:7000"]);
        assert_eq!(targets[0].every, Duration::from_millis(1));
    }
}
