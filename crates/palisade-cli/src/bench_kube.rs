//! `palisade bench kube-enforcement`: a policy written to the API server → in force on
//! every node, measured on real packets in the Kubernetes lab.
//!
//! The lab runs the real control plane, kube-proxy, the lab kubelets and one agent per
//! node. A background load (a Deployment of `pods` replicas and `policies`
//! NetworkPolicies selecting them) is applied first. Then two receivers (one per node)
//! each get datagrams every millisecond from a sender on the other node. A trial
//! creates (kube-rs, timed from the API server's acknowledgement) a NetworkPolicy that
//! denies both receivers all ingress, which each receiver's node must enforce; the
//! policy is in force on a node when the last datagram from its sender arrived. The
//! trial ends when no datagram has arrived for [`QUIET`] on either receiver (a sender
//! 1 ms apart that stays silent for that long is stopped, not late). Then the policy is
//! deleted, timed the same way until the first datagram arrives again on both.
//! Latency per trial is the slower node.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, PostParams};
use serde::Serialize;

use crate::bench_enforcement::Latency;
use crate::kube_lab;

/// No datagram for this long (senders send every millisecond) means the deny holds.
const QUIET: Duration = Duration::from_millis(300);
/// The longest a trial may take.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(30);
/// The receivers' namespace.
const NS: &str = "bench";

/// The result.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Nodes.
    pub nodes: usize,
    /// Background NetworkPolicies.
    pub policies: usize,
    /// Pods running (background and trial pods).
    pub pods: usize,
    /// Seconds to bring up the load.
    pub load_secs: f64,
    /// Create (deny) → in force on every node.
    pub deny: Latency,
    /// Delete → allowed again on every node.
    pub allow: Latency,
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis()
}

/// Takes the lab down however the benchmark ends.
struct Down(String);

impl Drop for Down {
    fn drop(&mut self) {
        if let Err(e) = kube_lab::down(&self.0) {
            eprintln!("bench: lab down {}: {e:#}", self.0);
        }
    }
}

fn load_manifest(pods: usize, policies: usize) -> String {
    let mut s = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: load}}\n---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: load, namespace: load}}\n\
         spec:\n  replicas: {pods}\n  selector: {{matchLabels: {{app: load}}}}\n\
         \x20 template:\n    metadata: {{labels: {{app: load}}}}\n\
         \x20   spec: {{containers: [{{name: c, image: lab}}]}}\n"
    );
    for k in 0..policies {
        s += &format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
             metadata: {{name: load-{k}, namespace: load}}\n\
             spec:\n  podSelector: {{matchLabels: {{app: load}}}}\n  policyTypes: [Ingress]\n\
             \x20 ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: load}}}}}}]\n\
             \x20   ports: [{{protocol: TCP, port: {}}}]\n",
            10_000 + k
        );
    }
    s
}

fn receivers_manifest(nodes: &[String]) -> String {
    let mut s = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n");
    for (i, n) in nodes.iter().enumerate() {
        s += &format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: rcv-{i}, namespace: {NS}, labels: {{role: receiver}}}}\n\
             spec:\n  nodeName: {n}\n  containers: [{{name: c, image: lab, ports: [{{containerPort: 7000, protocol: UDP}}]}}]\n"
        );
    }
    s
}

fn senders_manifest(nodes: &[String], targets: &[String]) -> String {
    let mut s = String::new();
    for (i, t) in targets.iter().enumerate() {
        // The sender of receiver i runs on the next node.
        let n = &nodes[(i + 1) % nodes.len()];
        s += &format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: snd-{i}\n  namespace: {NS}\n  labels: {{role: sender}}\n\
             \x20 annotations: {{lab.palisade.io/send: \"udp://{t}:7000?every=1ms&for=3600s\"}}\n\
             spec:\n  nodeName: {n}\n  containers: [{{name: c, image: lab}}]\n"
        );
    }
    s
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, text).with_context(|| format!("{}", p.display()))?;
    Ok(p)
}

/// Each receiver's log file, by pod key.
fn receiver_logs(lab: &kube_lab::KubeLab, keys: &[String]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for key in keys {
        let mut found = None;
        for node in &lab.nodes {
            let Ok(state) = palisade_kubelet::records::StateDir::open(&node.dir.join("kubelet"))
            else {
                continue;
            };
            for rec in state.load_all()?.into_iter().flatten() {
                if rec.key() == *key {
                    found = Some(state.pod_log(&rec));
                }
            }
        }
        out.push(found.with_context(|| format!("no kubelet runs {key}"))?);
    }
    Ok(out)
}

/// The newest arrival time in each log (0 if none).
fn last_arrivals(logs: &[PathBuf]) -> Vec<u128> {
    logs.iter()
        .map(|l| {
            palisade_lab::sender::arrivals(l)
                .iter()
                .map(|a| a.unix_ms)
                .max()
                .unwrap_or(0)
        })
        .collect()
}

/// First arrival after `t0` in each log, if any.
fn first_after(logs: &[PathBuf], t0: u128) -> Vec<Option<u128>> {
    logs.iter()
        .map(|l| {
            palisade_lab::sender::arrivals(l)
                .iter()
                .map(|a| a.unix_ms)
                .filter(|&t| t > t0)
                .min()
        })
        .collect()
}

async fn client(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

fn deny_receivers() -> anyhow::Result<NetworkPolicy> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": "trial-deny"},
        "spec": {"podSelector": {"matchLabels": {"role": "receiver"}}, "policyTypes": ["Ingress"]},
    }))?)
}

/// Runs the benchmark on a lab of its own (taken down at the end).
pub fn run(
    nodes: usize,
    pods: usize,
    policies: usize,
    trials: usize,
    cni_bin: Option<PathBuf>,
) -> anyhow::Result<Report> {
    let name = format!("kb{}", std::process::id() % 100_000);
    eprintln!("bench: lab {name} up with {nodes} nodes");
    let lab = kube_lab::up(&name, nodes, cni_bin)?;
    let _down = Down(name.clone());
    let dir = crate::lab::state_dir(&name).join("bench");
    std::fs::create_dir_all(&dir)?;
    let node_names: Vec<String> = lab.nodes.iter().map(|n| n.net.name.clone()).collect();

    eprintln!("bench: {pods} pods and {policies} NetworkPolicies of background load");
    let t = Instant::now();
    kube_lab::apply(
        &name,
        &[write(&dir, "load.yaml", &load_manifest(pods, policies))?],
    )?;
    let load_secs = t.elapsed().as_secs_f64();

    kube_lab::apply(
        &name,
        &[write(&dir, "rcv.yaml", &receivers_manifest(&node_names))?],
    )?;
    let cp = lab.control_plane()?;
    let all = kube_lab::cluster_pods(&cp)?;
    let keys: Vec<String> = (0..node_names.len())
        .map(|i| format!("{NS}/rcv-{i}"))
        .collect();
    let targets: Vec<String> = keys
        .iter()
        .map(|k| {
            all.iter()
                .find(|p| &p.key == k)
                .and_then(|p| p.ips.first())
                .map(|ip| ip.to_string())
                .with_context(|| format!("{k} has no address"))
        })
        .collect::<anyhow::Result<_>>()?;
    kube_lab::apply(
        &name,
        &[write(
            &dir,
            "snd.yaml",
            &senders_manifest(&node_names, &targets),
        )?],
    )?;
    let logs = receiver_logs(&lab, &keys)?;
    let running = kube_lab::cluster_pods(&cp)?.len();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = rt.block_on(client(&lab.kubeconfig_path()))?;
    let api: Api<NetworkPolicy> = Api::namespaced(client, NS);
    let policy = deny_receivers()?;
    let mut deny = Vec::new();
    let mut allow = Vec::new();
    for k in 0..trials {
        // Both senders reach their receivers before each trial.
        let t0 = now_ms();
        let start = Instant::now();
        while first_after(&logs, t0).iter().any(Option::is_none) {
            if start.elapsed() > TRIAL_TIMEOUT {
                bail!("trial {k}: the senders do not reach their receivers");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        rt.block_on(api.create(&PostParams::default(), &policy))?;
        let acked = now_ms();
        let start = Instant::now();
        loop {
            let last = last_arrivals(&logs);
            let quiet = last
                .iter()
                .all(|&t| now_ms().saturating_sub(t.max(acked)) >= QUIET.as_millis());
            if quiet {
                let worst = last
                    .iter()
                    .map(|&t| t.saturating_sub(acked))
                    .max()
                    .unwrap_or(0);
                deny.push(Duration::from_millis(worst as u64));
                break;
            }
            if start.elapsed() > TRIAL_TIMEOUT {
                bail!(
                    "trial {k}: datagrams still arrive {}s after the deny",
                    TRIAL_TIMEOUT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        rt.block_on(api.delete("trial-deny", &DeleteParams::default()))?;
        let acked = now_ms();
        let start = Instant::now();
        loop {
            let first = first_after(&logs, acked);
            if first.iter().all(Option::is_some) {
                let worst = first
                    .iter()
                    .flatten()
                    .map(|&t| t - acked)
                    .max()
                    .unwrap_or(0);
                allow.push(Duration::from_millis(worst as u64));
                break;
            }
            if start.elapsed() > TRIAL_TIMEOUT {
                bail!(
                    "trial {k}: no datagram arrives {}s after the delete",
                    TRIAL_TIMEOUT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if (k + 1) % 10 == 0 {
            eprintln!("bench: {} trials", k + 1);
        }
    }
    Ok(Report {
        nodes,
        policies,
        pods: running,
        load_secs,
        deny: Latency::of(deny),
        allow: Latency::of(allow),
    })
}

/// The table.
pub fn render(r: &Report) -> String {
    let row = |what: &str, l: &Latency| {
        format!(
            "{what:<40} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>6}\n",
            l.p50_ms, l.p99_ms, l.min_ms, l.max_ms, l.trials
        )
    };
    let mut s = format!(
        "Kubernetes lab: {} nodes, {} pods, {} background NetworkPolicies (load up in {:.0} s)\n\
         in force = on real packets, the slower node; from the API server's acknowledgement\n\n\
         {:<40} {:>8} {:>8} {:>8} {:>8} {:>6}\n",
        r.nodes, r.pods, r.policies, r.load_secs, "ms", "p50", "p99", "min", "max", "trials"
    );
    s += &row("policy created -> denied on every node", &r.deny);
    s += &row("policy deleted -> allowed on every node", &r.allow);
    let goal = if r.deny.p99_ms <= 100.0 {
        "met"
    } else {
        "MISSED"
    };
    s += &format!(
        "\ngoal p99 <= 100 ms for the policy path: {goal} ({:.1} ms)\n",
        r.deny.p99_ms
    );
    s
}
