//! `palisade bench kube-enforcement`: a policy written to the API server → in force on
//! every node, measured on real packets in the Kubernetes lab.
//!
//! The lab runs the real control plane, kube-proxy, the lab kubelets and one agent per
//! node. A background load of `pods` pods and `policies` NetworkPolicies selecting
//! them is brought up first ([`crate::bench_kube_load`]: as many real pods as the lab
//! nodes hold, the rest API-only pods on registered Nodes without a kubelet, which
//! every agent holds and compiles as remote pods). Then two receivers (one per node)
//! each get datagrams every millisecond from a sender on the other node. A trial
//! creates (kube-rs, timed from the request being sent, as `kubectl apply` waits from
//! its start; the API server's acknowledgement came after the deny was in force in
//! most trials of a first run) a NetworkPolicy that
//! denies both receivers all ingress, which each receiver's node must enforce; the
//! policy is in force on a node when the last datagram from its sender arrived. The
//! trial ends when no datagram has arrived for [`QUIET`] on either receiver (a sender
//! 1 ms apart that stays silent for that long is stopped, not late). Then the policy is
//! deleted, timed the same way until the first datagram arrives again on both.
//! Latency per trial is the slower node.
//!
//! Where the time goes: a watch of the benchmark's own on the receivers' namespace
//! records when the API server's event for each create reaches a watcher (as it
//! reaches the agents), and after each trial every agent reports its last pass's
//! stages (read the source, compile, attach, write the maps).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use futures::StreamExt;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::watcher;
use serde::Serialize;

use crate::arrival_tail::ArrivalTail;
use crate::bench_enforcement::Latency;
use crate::bench_kube_load::{self, Load, LoadSpec};

/// No datagram for this long (senders send every millisecond) means the deny holds.
const QUIET: Duration = Duration::from_millis(300);
/// The longest a trial may take.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the receivers' logs are read while a trial waits.
const POLL: Duration = Duration::from_millis(5);
/// The receivers' namespace.
const NS: &str = "bench";
/// The trial policy's name.
const TRIAL_POLICY: &str = "trial-deny";

/// The result.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Nodes.
    pub nodes: usize,
    /// The background load (real and API-only pods, policies).
    pub load: Load,
    /// The benchmark's own pods (receivers and senders, all real).
    pub bench_pods: usize,
    /// Create (deny) → in force on every node.
    pub deny: Latency,
    /// Delete → allowed again on every node.
    pub allow: Latency,
    /// Create sent → its watch event at the benchmark's own watcher.
    pub watch: Latency,
    /// Create sent → acknowledged.
    pub ack: Latency,
    /// Per trial: the event at the benchmark's watcher → denied on every node (the
    /// agents' share: their own watch delivery, the pass, the kernel, the packets).
    pub watch_to_denied: Latency,
    /// Mean seconds per stage of each agent's last pass after a deny trial.
    pub agent_pass_stages: BTreeMap<String, f64>,
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis()
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

/// The receivers' logs, each with the newest arrival read so far.
struct Receivers {
    tails: Vec<ArrivalTail>,
    last: Vec<u128>,
}

impl Receivers {
    /// Reads what arrived since the last call; returns, per receiver, the earliest
    /// arrival after `t0` among the new ones.
    fn poll(&mut self, t0: u128) -> Vec<Option<u128>> {
        self.tails
            .iter_mut()
            .zip(self.last.iter_mut())
            .map(|(tail, last)| {
                let new = tail.read_new();
                *last = new.iter().map(|a| a.unix_ms).fold(*last, u128::max);
                new.iter().map(|a| a.unix_ms).filter(|&t| t > t0).min()
            })
            .collect()
    }
}

fn deny_receivers() -> anyhow::Result<NetworkPolicy> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": TRIAL_POLICY},
        "spec": {"podSelector": {"matchLabels": {"role": "receiver"}}, "policyTypes": ["Ingress"]},
    }))?)
}

/// When each Apply of the trial policy reached a watcher of the benchmark's own
/// (local milliseconds), from the time the watch has listed.
type Seen = Arc<Mutex<Vec<u128>>>;

/// Starts the benchmark's watch of the trial policy; returns once it has listed.
fn watch_trial_policy(rt: &tokio::runtime::Runtime, api: Api<NetworkPolicy>) -> Seen {
    let seen: Seen = Arc::default();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = seen.clone();
    let cfg = watcher::Config::default().fields(&format!("metadata.name={TRIAL_POLICY}"));
    rt.spawn(async move {
        let stream = watcher(api, cfg);
        futures::pin_mut!(stream);
        let mut tx = Some(tx);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::InitDone) => {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(watcher::Event::Apply(_)) => out.lock().expect("not poisoned").push(now_ms()),
                Ok(_) => {}
                Err(e) => eprintln!("bench: watching {TRIAL_POLICY}: {e}"),
            }
        }
    });
    let _ = rx.recv_timeout(Duration::from_secs(30));
    seen
}

/// Runs the benchmark on a lab of its own (taken down at the end).
pub fn run(
    nodes: usize,
    spec: &LoadSpec,
    trials: usize,
    cni_bin: Option<std::path::PathBuf>,
) -> anyhow::Result<Report> {
    if trials == 0 {
        bail!("--trials must be at least 1");
    }
    let bench = bench_kube_load::start(nodes, cni_bin, spec)?;
    bench.apply("rcv.yaml", &receivers_manifest(&bench.nodes))?;
    let keys: Vec<String> = (0..bench.nodes.len())
        .map(|i| format!("{NS}/rcv-{i}"))
        .collect();
    let targets = bench.pod_ips(&keys)?;
    bench.apply("snd.yaml", &senders_manifest(&bench.nodes, &targets))?;
    let mut rx = Receivers {
        tails: bench
            .pod_logs(&keys)?
            .into_iter()
            .map(ArrivalTail::new)
            .collect(),
        last: vec![0; keys.len()],
    };

    let api: Api<NetworkPolicy> = Api::namespaced(bench.client.clone(), NS);
    let seen = watch_trial_policy(&bench.rt, api.clone());
    let policy = deny_receivers()?;
    let (mut deny, mut allow, mut watch, mut acks, mut after_watch) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut stages: BTreeMap<String, f64> = BTreeMap::new();
    let mut passes = 0usize;
    for k in 0..trials {
        // Both senders reach their receivers before each trial.
        let t0 = now_ms();
        let start = Instant::now();
        let mut reached = vec![false; keys.len()];
        while reached.iter().any(|r| !r) {
            for (r, first) in reached.iter_mut().zip(rx.poll(t0)) {
                *r |= first.is_some();
            }
            if start.elapsed() > TRIAL_TIMEOUT {
                bail!("trial {k}: the senders do not reach their receivers");
            }
            std::thread::sleep(POLL);
        }
        let sent = now_ms();
        bench
            .rt
            .block_on(api.create(&PostParams::default(), &policy))?;
        acks.push(Duration::from_millis((now_ms() - sent) as u64));
        let start = Instant::now();
        loop {
            rx.poll(sent);
            let quiet = rx
                .last
                .iter()
                .all(|&t| now_ms().saturating_sub(t.max(sent)) >= QUIET.as_millis());
            if quiet {
                let worst = rx
                    .last
                    .iter()
                    .map(|&t| t.saturating_sub(sent))
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
            std::thread::sleep(POLL);
        }
        if let Some(&t) = seen
            .lock()
            .expect("not poisoned")
            .iter()
            .find(|&&t| t >= sent)
        {
            let seen_after = Duration::from_millis((t - sent) as u64);
            watch.push(seen_after);
            let denied = *deny.last().expect("pushed above");
            after_watch.push(denied.saturating_sub(seen_after));
        }
        for node in &bench.lab.nodes {
            if let Ok(s) = crate::inspect::call(&node.socket, &palisade_agent::api::Status) {
                let st = &s.data.last_pass_stages;
                for (name, v) in [
                    ("load", st.load),
                    ("compile", st.compile),
                    ("attach", st.attach),
                    ("sync", st.sync),
                ] {
                    *stages.entry(name.to_string()).or_default() += v;
                }
                passes += 1;
            }
        }
        let sent = now_ms();
        bench
            .rt
            .block_on(api.delete(TRIAL_POLICY, &DeleteParams::default()))?;
        let start = Instant::now();
        let mut first: Vec<Option<u128>> = vec![None; keys.len()];
        loop {
            for (f, new) in first.iter_mut().zip(rx.poll(sent)) {
                *f = f.or(new);
            }
            if first.iter().all(Option::is_some) {
                let worst = first.iter().flatten().map(|&t| t - sent).max().unwrap_or(0);
                allow.push(Duration::from_millis(worst as u64));
                break;
            }
            if start.elapsed() > TRIAL_TIMEOUT {
                bail!(
                    "trial {k}: no datagram arrives {}s after the delete",
                    TRIAL_TIMEOUT.as_secs()
                );
            }
            std::thread::sleep(POLL);
        }
        if (k + 1) % 10 == 0 {
            eprintln!("bench: {} trials", k + 1);
        }
    }
    for v in stages.values_mut() {
        *v /= passes.max(1) as f64;
    }
    if watch.is_empty() {
        bail!("the benchmark's watch saw none of the trial policy's creations");
    }
    Ok(Report {
        nodes,
        load: bench.load.clone(),
        bench_pods: 2 * keys.len(),
        deny: Latency::of(deny),
        allow: Latency::of(allow),
        watch: Latency::of(watch),
        ack: Latency::of(acks),
        watch_to_denied: Latency::of(after_watch),
        agent_pass_stages: stages,
    })
}

/// The table.
pub fn render(r: &Report) -> String {
    let row = |what: &str, l: &Latency| {
        format!(
            "{what:<44} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>6}\n",
            l.p50_ms, l.p99_ms, l.min_ms, l.max_ms, l.trials
        )
    };
    let mut s = format!(
        "Kubernetes lab: {} nodes; {}; {} benchmark pods (real)\n\
         in force = on real packets, the slower node; from the request (create, delete) being sent\n\n\
         {:<44} {:>8} {:>8} {:>8} {:>8} {:>6}\n",
        r.nodes,
        r.load.describe(),
        r.bench_pods,
        "ms",
        "p50",
        "p99",
        "min",
        "max",
        "trials"
    );
    s += &row("policy created -> denied on every node", &r.deny);
    s += &row("policy deleted -> allowed on every node", &r.allow);
    s += &row("  create sent -> acknowledged", &r.ack);
    s += &row("  create sent -> event at a watcher", &r.watch);
    s += &row(
        "  event at a watcher -> denied (per trial)",
        &r.watch_to_denied,
    );
    s += "\nagents' last pass after a deny trial, mean ms per stage:";
    for (k, v) in &r.agent_pass_stages {
        s += &format!(" {k} {:.2}", v * 1000.0);
    }
    let goal = if r.deny.p99_ms <= 100.0 {
        "met"
    } else {
        "MISSED"
    };
    s += &format!(
        "\n\ngoal p99 <= 100 ms for the policy path: {goal} ({:.1} ms)\n",
        r.deny.p99_ms
    );
    s
}
