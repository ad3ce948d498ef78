//! `palisade bench enforcement`: how long until a change is in force, on the real lab.
//!
//! Two latencies, each over many trials with a large policy set loaded:
//!
//! - **policy change → in force**: one NetworkPolicy's manifest is rewritten, then the
//!   agent's `sync` answers once the kernel holds the new state (what `lab apply` waits
//!   for): source re-read, compile, datapath update;
//! - **CNI ADD → in force**: the real `palisade-cni` binary is executed as a runtime
//!   would, after `ptp` created the pod's interface; it returns once the agent has
//!   attached the programs and programmed the pod's tables.
//!
//! The figures include process start-up of `palisade-cni` (a runtime pays it too).
//! In the CNI trials the Pod object is made known to the agent before its sandbox is
//! created, as the Kubernetes API server does long before kubelet creates a sandbox;
//! the CNI latency is then attach + endpoint write + the round trip.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command as Proc, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::lab;

/// Percentiles of one latency, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Trials measured.
    pub trials: usize,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile (nearest rank).
    pub p99_ms: f64,
    /// Fastest.
    pub min_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

impl Latency {
    pub(crate) fn of(mut v: Vec<Duration>) -> Latency {
        v.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Latency {
            trials: v.len(),
            p50_ms: ms(rank(0.5)),
            p99_ms: ms(rank(0.99)),
            min_ms: ms(v[0]),
            max_ms: ms(v[v.len() - 1]),
        }
    }
}

/// The benchmark's result.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// NetworkPolicies loaded.
    pub policies: usize,
    /// Pods in the lab at the start.
    pub pods: usize,
    /// Policy change → in force.
    pub policy_change: Latency,
    /// CNI ADD → in force.
    pub cni_add: Latency,
    /// Mean seconds per reconcile stage in the policy-change trials.
    pub policy_change_stages: BTreeMap<String, f64>,
    /// Mean seconds per reconcile stage of the pass that served each CNI ADD.
    pub cni_add_stages: BTreeMap<String, f64>,
}

fn add_stages(sum: &mut BTreeMap<String, f64>, s: &palisade_agent::api::Stages, n: usize) {
    for (k, x) in [
        ("load", s.load),
        ("compile", s.compile),
        ("attach", s.attach),
        ("sync", s.sync),
    ] {
        *sum.entry(k.to_string()).or_default() += x / n as f64;
    }
}

const NAMESPACES: usize = 10;

fn cluster_yaml(policies: usize) -> String {
    let mut docs = Vec::new();
    for n in 0..NAMESPACES {
        docs.push(format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ns{n}\n  labels:\n    team: t{}\n",
            n % 3
        ));
        docs.push(format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: base\n  namespace: ns{n}\n  labels:\n    app: app{n}\nspec:\n  containers:\n  - name: c\n    image: x\n    ports:\n    - containerPort: 80\nstatus:\n  podIP: 10.250.0.{}\n",
            n + 10
        ));
    }
    for i in 0..policies {
        docs.push(policy_yaml(i, 1000 + (i % 5000) as u16));
    }
    // New pods in the CNI trials are selected by this one (isolated egress).
    docs.push("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: fresh-egress\n  namespace: ns0\nspec:\n  podSelector:\n    matchLabels:\n      app: fresh\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - podSelector:\n        matchLabels:\n          app: app0\n".into());
    docs.join("---\n")
}

fn policy_yaml(i: usize, port: u16) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: p{i}\n  namespace: ns{}\nspec:\n  podSelector:\n    matchLabels:\n      app: app{}\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchLabels:\n          team: t{}\n      podSelector:\n        matchLabels:\n          app: app{}\n    ports:\n    - port: {port}\n",
        i % NAMESPACES,
        i % NAMESPACES,
        i % 3,
        (i + 1) % NAMESPACES
    )
}

fn pod_yaml(t: usize) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: fresh-{t}\n  namespace: ns0\n  labels:\n    app: fresh\nspec:\n  containers:\n  - name: c\n    image: x\nstatus:\n  podIP: 10.250.{}.{}\n",
        1 + t / 200,
        10 + t % 200
    )
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, text)?;
    Ok(p)
}

/// Runs the benchmark on a temporary lab, always removed at the end.
pub fn run(policies: usize, trials: usize, cni_bin: Option<PathBuf>) -> anyhow::Result<Report> {
    if trials == 0 {
        bail!("--trials must be at least 1");
    }
    let name = format!("be{}", std::process::id() % 100_000);
    let tmp =
        std::env::temp_dir().join(format!("palisade-bench-enforcement-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let result = measure(&name, &tmp, policies, trials, cni_bin);
    let left = lab::down(&name);
    let _ = std::fs::remove_dir_all(&tmp);
    for l in left.unwrap_or_default() {
        eprintln!("warning: {l}");
    }
    result
}

fn measure(
    name: &str,
    tmp: &Path,
    policies: usize,
    trials: usize,
    cni_bin: Option<PathBuf>,
) -> anyhow::Result<Report> {
    let cluster = write(tmp, "cluster.yaml", &cluster_yaml(policies))?;
    let cni_dir = lab::cni_dir(cni_bin)?;
    eprintln!(
        "bench: creating a lab with {NAMESPACES} pods and {} policies",
        policies + 1
    );
    lab::up(name, &[cluster], Some(cni_dir.clone()))?;

    eprintln!("bench: {trials} policy changes");
    let mut changes = Vec::with_capacity(trials);
    let mut change_stages = BTreeMap::new();
    let mut add_stages_sum = BTreeMap::new();
    for t in 0..trials {
        let f = write(tmp, "change.yaml", &policy_yaml(0, 20_000 + t as u16))?;
        let objs = lab::objects(&[f])?.0;
        // From the moment the desired state changes to the moment it is in force.
        let start = Instant::now();
        lab::write_objects(name, &objs)?;
        let (_, stages) = lab::sync(name)?;
        changes.push(start.elapsed());
        add_stages(&mut change_stages, &stages, trials);
    }

    eprintln!("bench: {trials} CNI ADDs");
    let mut adds = Vec::with_capacity(trials);
    for t in 0..trials {
        let f = write(tmp, "pod.yaml", &pod_yaml(t))?;
        // The Pod object exists before its sandbox, as in Kubernetes.
        let (objs, applied) = lab::objects(&[f])?;
        // The Pod object reaches the agent before its sandbox is created, as in
        // Kubernetes (scheduling and image pulls come between); that propagation is a
        // desired-state change, measured by the first latency.
        lab::write_objects(name, &objs)?;
        lab::sync(name)?;
        let mut l = lab::open(name)?;
        l.set_chain(Vec::new());
        l.set_server(None);
        let pod = applied
            .pods
            .get(&format!("ns0/fresh-{t}"))
            .cloned()
            .context("bench pod")?;
        let rec = l.add_pod(&pod)?.clone();
        l.save()?;
        let start = Instant::now();
        cni_add(name, &cni_dir, &rec, &l.state().node_netns)?;
        adds.push(start.elapsed());
        let status = crate::inspect::call(
            &lab::state_dir(name).join("agent.sock"),
            &palisade_agent::api::Status,
        )?;
        add_stages(&mut add_stages_sum, &status.data.last_pass_stages, trials);
    }
    Ok(Report {
        policies: policies + 1,
        pods: NAMESPACES,
        policy_change: Latency::of(changes),
        cni_add: Latency::of(adds),
        policy_change_stages: change_stages,
        cni_add_stages: add_stages_sum,
    })
}

/// Executes `palisade-cni ADD` exactly as a container runtime chains it after ptp.
fn cni_add(
    name: &str,
    cni_dir: &Path,
    rec: &palisade_lab::state::PodRecord,
    node: &str,
) -> anyhow::Result<()> {
    let (ns, pod) = rec.key.split_once('/').context("pod key")?;
    let conf = serde_json::json!({
        "cniVersion": rec.network.cni_version,
        "name": rec.network.name,
        "type": "palisade-cni",
        "agentSocket": lab::state_dir(name).join("agent.sock"),
        "timeoutMs": 10000,
        "failPolicy": "closed",
        "prevResult": rec.cni_result,
    });
    let mut cmd = Proc::new(cni_dir.join("palisade-cni"));
    cmd.env_clear()
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", &rec.attachment.container_id)
        .env("CNI_NETNS", &rec.attachment.netns)
        .env("CNI_IFNAME", &rec.ifname)
        .env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={pod}"),
        )
        .env("CNI_PATH", cni_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    palisade_lab::netns::NetNs::open(node).enter_on_exec(&mut cmd)?;
    let mut child = cmd.spawn().context("running palisade-cni")?;
    std::io::Write::write_all(
        &mut child.stdin.take().context("stdin")?,
        conf.to_string().as_bytes(),
    )?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "palisade-cni ADD failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(())
}

/// A table for people.
pub fn render(r: &Report) -> String {
    let row = |name: &str, l: &Latency| {
        format!(
            "{name:<28} {:>7} {:>9.2} {:>9.2} {:>9.2} {:>9.2}\n",
            l.trials, l.p50_ms, l.p99_ms, l.min_ms, l.max_ms
        )
    };
    let mut out = format!("{} policies, {} pods loaded\n", r.policies, r.pods);
    out.push_str(&format!(
        "{:<28} {:>7} {:>9} {:>9} {:>9} {:>9}\n",
        "LATENCY", "TRIALS", "P50 ms", "P99 ms", "MIN ms", "MAX ms"
    ));
    out.push_str(&row("policy change -> in force", &r.policy_change));
    out.push_str(&row("CNI ADD -> in force", &r.cni_add));
    out.push_str("goal: p99 <= 50 ms for both\n");
    let stages = |m: &BTreeMap<String, f64>| {
        m.iter()
            .map(|(k, v)| format!("{k} {:.2} ms", v * 1000.0))
            .collect::<Vec<_>>()
            .join(", ")
    };
    out.push_str(&format!(
        "agent pass, mean per policy change: {}\n",
        stages(&r.policy_change_stages)
    ));
    out.push_str(&format!(
        "agent pass, mean per CNI ADD:       {}\n",
        stages(&r.cni_add_stages)
    ));
    out
}
