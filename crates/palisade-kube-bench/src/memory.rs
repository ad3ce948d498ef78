//! Agent memory per remote pod: the resident set of the real agent
//! (`palisade agent --source kubernetes`, the binary given) following a real
//! kube-apiserver that holds N pods bound to other nodes.
//!
//! The cluster is filled in steps (each size of [`Options::sizes`] in turn). At each
//! step a fresh agent starts for one node that has no pods of its own, lists
//! everything, and is measured once its status says the last pod write is in force
//! (the Pod watch's `resource_version_in_force` reached the marker's resourceVersion):
//! `VmRSS` and `VmHWM` from `/proc/PID/status`. A first agent measured with no pods at
//! all gives the baseline, so "per remote pod" is `(RSS(N) - RSS(0)) / N`, and the
//! step between two sizes gives the marginal cost with every fixed cost cancelled.
//!
//! The agent runs in the machine's network namespace (the API server listens on
//! loopback there): it loads and pins its programs under a bpffs directory of its own
//! and attaches nothing, as no CNI plugin registers a pod with it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::{stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, Patch, PatchParams, PostParams};
use palisade_kube_lab::ControlPlane;
use serde::Serialize;
use serde_json::json;

/// Requests in flight while filling the API server.
const CONCURRENCY: usize = 64;
/// How long one agent may take to list everything and put it in force.
const AGENT_DEADLINE: Duration = Duration::from_secs(900);
/// The node the measured agent runs for: no pod is bound to it.
const LOCAL_NODE: &str = "bench-local";
/// The pod whose label the benchmark writes last before each measurement.
const MARKER: (&str, &str) = ("ns-0", "marker");

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Pod counts to measure at, ascending (the cluster grows from one to the next).
    pub sizes: Vec<usize>,
    /// Namespaces the pods are spread over.
    pub namespaces: usize,
    /// Node objects the pods are bound to (none of them the agent's).
    pub nodes: usize,
    /// Pods per application (one label set, one NetworkPolicy per application).
    pub pods_per_app: usize,
    /// The `palisade` binary whose agent is measured.
    pub agent_exe: PathBuf,
}

/// One measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Pods in the API server (all remote to the agent).
    pub pods: usize,
    /// NetworkPolicies in the API server.
    pub policies: usize,
    /// Resident set once everything is in force, KiB.
    pub rss_kib: u64,
    /// Peak resident set until then, KiB.
    pub hwm_kib: u64,
    /// Agent start to the last write in force, seconds.
    pub in_force_secs: f64,
    /// `(rss - baseline rss) / pods`, bytes.
    pub bytes_per_pod: Option<f64>,
    /// `(rss - previous sample's rss) / (pods - previous pods)`, bytes.
    pub marginal_bytes_per_pod: Option<f64>,
}

/// The result.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The agent with no pods.
    pub baseline: Sample,
    /// One per size.
    pub samples: Vec<Sample>,
    /// Seconds spent creating the objects.
    pub fill_secs: f64,
    /// Labels each pod carries.
    pub labels_per_pod: usize,
    /// Named container ports each pod declares.
    pub ports_per_pod: usize,
}

/// Starts a control plane, grows it to each size and measures a fresh agent at each.
pub fn run(opts: &Options, progress: &(dyn Fn(&str) + Sync)) -> Result<Report> {
    if opts.sizes.windows(2).any(|w| w[0] >= w[1]) {
        bail!("--pods sizes must be ascending: {:?}", opts.sizes);
    }
    if opts.namespaces == 0 || opts.nodes == 0 || opts.pods_per_app == 0 {
        bail!("--namespaces, --nodes and --pods-per-app must be at least 1");
    }
    progress("starting etcd and kube-apiserver");
    let cp = ControlPlane::start().context("starting the control plane")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(run_on(&cp, opts, progress))
}

async fn admin_client(cp: &ControlPlane) -> Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(cp.admin().path())
        .context("reading the admin kubeconfig")?;
    let config = kube::config::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .context("admin kubeconfig")?;
    kube::Client::try_from(config).context("kube client")
}

/// The labels of pod `i`: what a Deployment's pod usually carries.
fn labels(opts: &Options, i: usize) -> serde_json::Value {
    let app = i / opts.pods_per_app;
    json!({
        "app": format!("app-{app}"),
        "app.kubernetes.io/name": format!("app-{app}"),
        "app.kubernetes.io/part-of": format!("team-{}", app % 50),
        "pod-template-hash": format!("{:010x}", (app as u64).wrapping_mul(0x9e37_79b9_7f4a)),
        "version": "v1",
    })
}

const LABELS_PER_POD: usize = 5;
const PORTS_PER_POD: usize = 2;

fn namespace_of(opts: &Options, i: usize) -> String {
    // Whole applications per namespace, so a policy's selector has pods to select.
    format!("ns-{}", (i / opts.pods_per_app) % opts.namespaces)
}

fn pod_ip(i: usize) -> String {
    let base: u32 = (10 << 24) | (64 << 16);
    std::net::Ipv4Addr::from(base + 10 + i as u32).to_string()
}

fn pod_manifest(opts: &Options, i: usize) -> Result<Pod> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": format!("p-{i}"),
            "namespace": namespace_of(opts, i),
            "labels": labels(opts, i),
        },
        "spec": {
            "nodeName": format!("node-{}", i % opts.nodes),
            "containers": [{
                "name": "app",
                "image": "registry.example/app:1.0",
                "ports": [
                    {"name": "http", "containerPort": 8080, "protocol": "TCP"},
                    {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
                ],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                "env": [{"name": "MODE", "value": "production"}],
            }],
        },
    }))?)
}

async fn create_pod(client: &kube::Client, opts: &Options, i: usize) -> Result<()> {
    let ns = namespace_of(opts, i);
    let name = format!("p-{i}");
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    api.create(&PostParams::default(), &pod_manifest(opts, i)?)
        .await
        .with_context(|| format!("creating pod {ns}/{name}"))?;
    let ip = pod_ip(i);
    let status = json!({"status": {
        "phase": "Running",
        "hostIP": format!("192.168.{}.{}", (i % opts.nodes) / 250, (i % opts.nodes) % 250 + 1),
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": "2026-12-01T00:00:00Z",
        "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-01T00:00:01Z"},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": "2026-12-01T00:00:01Z"},
        ],
    }});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .with_context(|| format!("status of pod {ns}/{name}"))?;
    Ok(())
}

/// Namespaces (with their `default` ServiceAccount: no controller manager runs),
/// nodes, one NetworkPolicy per application of the largest size, and the marker pod.
async fn skeleton(client: &kube::Client, opts: &Options) -> Result<usize> {
    for ns in 0..opts.namespaces {
        let name = format!("ns-{ns}");
        let api: Api<Namespace> = Api::all(client.clone());
        api.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name,
                "labels": {"team": format!("team-{}", ns % 10)}}}))?,
        )
        .await
        .with_context(|| format!("namespace {name}"))?;
        let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
        sa.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "default"}}))?,
        )
        .await?;
    }
    let nodes: Api<Node> = Api::all(client.clone());
    for n in (0..opts.nodes)
        .map(|n| format!("node-{n}"))
        .chain([LOCAL_NODE.to_string()])
    {
        nodes
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": n}}))?,
            )
            .await
            .with_context(|| format!("node {n}"))?;
    }
    let apps = opts
        .sizes
        .last()
        .copied()
        .unwrap_or(0)
        .div_ceil(opts.pods_per_app);
    stream::iter(0..apps)
        .map(|app| async move {
            let ns = namespace_of(opts, app * opts.pods_per_app);
            let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
            api.create(
                &PostParams::default(),
                &crate::app_policy(app, &[app + opts.namespaces, app + 2 * opts.namespaces])?,
            )
            .await
            .with_context(|| format!("policy {ns}/app-{app}"))?;
            anyhow::Ok(())
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    // The marker: a pod of the agent's own node, without an address (no tables are
    // built for a pod without one, and it is not a remote pod).
    let api: Api<Pod> = Api::namespaced(client.clone(), MARKER.0);
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": MARKER.1},
            "spec": {"nodeName": LOCAL_NODE,
                     "containers": [{"name": "c", "image": "registry.example/marker:1"}]},
        }))?,
    )
    .await
    .context("the marker pod")?;
    Ok(apps)
}

/// Writes the marker; returns its resourceVersion (every earlier pod write is below).
async fn mark(client: &kube::Client, round: usize) -> Result<u64> {
    let api: Api<Pod> = Api::namespaced(client.clone(), MARKER.0);
    let p = api
        .patch(
            MARKER.1,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"bench-round": round.to_string()}}})),
        )
        .await
        .context("writing the marker")?;
    p.metadata
        .resource_version
        .and_then(|r| r.parse().ok())
        .context("the marker's resourceVersion")
}

/// A running agent, stopped (by PID) and cleaned up when dropped.
struct Agent {
    child: Child,
    dir: tempfile::TempDir,
    pin_root: PathBuf,
}

impl Agent {
    fn start(exe: &Path, kubeconfig: &Path, n: usize) -> Result<Agent> {
        let dir = tempfile::Builder::new()
            .prefix("palisade-kube-memory-")
            .tempdir()
            .context("agent directory")?;
        let pin_root = PathBuf::from(format!(
            "/sys/fs/bpf/palisade-kube-memory-{}-{n}",
            std::process::id()
        ));
        let log = std::fs::File::create(dir.path().join("agent.log")).context("agent log")?;
        let child = Command::new(exe)
            .args(["agent", "--source", "kubernetes", "--kubeconfig"])
            .arg(kubeconfig)
            .args(["--node-name", LOCAL_NODE, "--publish-status", "false"])
            .arg("--socket")
            .arg(dir.path().join("agent.sock"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--pin-root")
            .arg(&pin_root)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("agent log")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        Ok(Agent {
            child,
            dir,
            pin_root,
        })
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Waits until the Pod watch's writes up to `rv` are in force.
    async fn wait_in_force(&mut self, rv: u64) -> Result<()> {
        let deadline = Instant::now() + AGENT_DEADLINE;
        loop {
            let socket = self.socket();
            let status = tokio::task::spawn_blocking(move || {
                palisade_api::client::call(
                    &socket,
                    &palisade_api::wire::Status,
                    Duration::from_secs(10),
                )
            })
            .await?;
            if let Ok(s) = status {
                let pods = s.data.watches.iter().find(|w| w.kind == "Pod");
                if pods.and_then(|w| w.resource_version_in_force) >= Some(rv) {
                    return Ok(());
                }
            }
            if let Some(exit) = self.child.try_wait()? {
                bail!("the agent exited ({exit}); its log:\n{}", self.log_tail());
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent did not put resourceVersion {rv} in force within {} s; its log:\n{}",
                    AGENT_DEADLINE.as_secs(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// (VmRSS, VmHWM) in KiB.
    fn memory(&self) -> Result<(u64, u64)> {
        let path = format!("/proc/{}/status", self.child.id());
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .with_context(|| format!("{name} in {path}"))
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.pin_root);
    }
}

async fn measure(
    cp: &ControlPlane,
    opts: &Options,
    admin: &kube::Client,
    pods: usize,
    policies: usize,
    round: usize,
) -> Result<Sample> {
    let rv = mark(admin, round).await?;
    let mut agent = Agent::start(&opts.agent_exe, cp.admin().path(), round)?;
    let t = Instant::now();
    agent.wait_in_force(rv).await?;
    let in_force_secs = t.elapsed().as_secs_f64();
    let (rss_kib, hwm_kib) = agent.memory()?;
    Ok(Sample {
        pods,
        policies,
        rss_kib,
        hwm_kib,
        in_force_secs,
        bytes_per_pod: None,
        marginal_bytes_per_pod: None,
    })
}

async fn run_on(
    cp: &ControlPlane,
    opts: &Options,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Report> {
    let admin = admin_client(cp).await?;
    let t = Instant::now();
    let policies = skeleton(&admin, opts).await?;
    let mut fill_secs = t.elapsed().as_secs_f64();
    progress(&format!(
        "{} namespaces, {} nodes, {policies} NetworkPolicies; measuring the agent with no pods",
        opts.namespaces, opts.nodes
    ));
    let baseline = measure(cp, opts, &admin, 0, policies, 0).await?;
    progress(&format!(
        "baseline: VmRSS {} KiB, VmHWM {} KiB",
        baseline.rss_kib, baseline.hwm_kib
    ));
    let mut samples: Vec<Sample> = Vec::new();
    let mut created = 0;
    for (k, &size) in opts.sizes.iter().enumerate() {
        progress(&format!("creating pods {created}..{size} (with status)"));
        let t = Instant::now();
        stream::iter(created..size)
            .map(|i| {
                let admin = admin.clone();
                async move { create_pod(&admin, opts, i).await }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        let secs = t.elapsed().as_secs_f64();
        fill_secs += secs;
        progress(&format!(
            "{} pods created in {secs:.0} s; measuring a fresh agent",
            size - created
        ));
        created = size;
        let mut s = measure(cp, opts, &admin, size, policies, k + 1).await?;
        let per = |rss: u64, base: u64, n: usize| (rss as f64 - base as f64) * 1024.0 / n as f64;
        if size > 0 {
            s.bytes_per_pod = Some(per(s.rss_kib, baseline.rss_kib, size));
        }
        if let Some(prev) = samples.last() {
            s.marginal_bytes_per_pod = Some(per(s.rss_kib, prev.rss_kib, size - prev.pods));
        }
        progress(&format!(
            "{size} pods: VmRSS {} KiB, VmHWM {} KiB, in force after {:.1} s",
            s.rss_kib, s.hwm_kib, s.in_force_secs
        ));
        samples.push(s);
    }
    Ok(Report {
        baseline,
        samples,
        fill_secs,
        labels_per_pod: LABELS_PER_POD,
        ports_per_pod: PORTS_PER_POD,
    })
}

impl Report {
    /// The table `palisade bench kube-memory` prints.
    pub fn table(&self) -> String {
        let mut out = format!(
            "agent memory per remote pod (real kube-apiserver, real agent; pods with {} labels and {} named ports, none on the agent's node; filled in {:.0} s)\n\n",
            self.labels_per_pod, self.ports_per_pod, self.fill_secs
        );
        out.push_str(
            "     pods  policies   VmRSS KiB   VmHWM KiB  in force s   B/pod (vs 0)   B/pod (step)\n",
        );
        for s in std::iter::once(&self.baseline).chain(&self.samples) {
            let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
            out.push_str(&format!(
                "{:>9} {:>9} {:>11} {:>11} {:>11.1} {:>14} {:>14}\n",
                s.pods,
                s.policies,
                s.rss_kib,
                s.hwm_kib,
                s.in_force_secs,
                f(s.bytes_per_pod),
                f(s.marginal_bytes_per_pod),
            ));
        }
        let worst = self
            .samples
            .iter()
            .filter_map(|s| s.bytes_per_pod)
            .fold(0.0f64, f64::max);
        out.push_str(&format!(
            "\ngoal <= 5 KiB (5120 B) per remote pod, resident: {} ({worst:.0} B at worst)\n",
            if worst <= 5120.0 { "met" } else { "MISSED" }
        ));
        out
    }
}
