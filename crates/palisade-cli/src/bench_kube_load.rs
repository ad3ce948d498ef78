//! The lab and background load of the Kubernetes benchmarks (`bench kube-enforcement`,
//! `bench kube-scaleup`): pods and NetworkPolicies that every agent holds and compiles
//! while the benchmark measures.
//!
//! A lab pod is a real one (its own network namespace, the CNI chain with
//! `palisade-cni`, programs attached, a server process), and the lab kubelet has a
//! kubelet's `maxPods` (110) per node, so the 1,000 pods are of two kinds, and
//! every report says how many of each:
//!
//! - **real** pods: a Deployment spread evenly over the lab's nodes, at most
//!   `real_per_node` on each; each is a local endpoint of its node's agent, with the
//!   background policies compiled into its tables and written to the kernel;
//! - **API-only** pods: bound (`spec.nodeName`) to extra Nodes that the benchmark
//!   registers and keeps Ready (Lease and status, as the lab kubelet does, with the
//!   same code) but where no kubelet runs, their `status.podIP(s)` written through the
//!   status subresource. No packet reaches them; every agent holds them as remote pods
//!   (addresses, identities, peers of the policies' rules) and compiles them as it
//!   would pods of nodes it does not run on. The Nodes are cordoned, so the scheduler
//!   places nothing there.
//!
//! All load pods carry `app: load`; every background policy selects them and allows
//! ingress from them on a port of its own.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde::Serialize;

use crate::kube_lab;

/// Pods bound to each API-only Node (below the 110 a kubelet would accept).
pub const API_ONLY_PODS_PER_NODE: usize = 100;
/// The most API-only Nodes (their pod CIDRs are 10.245.J.0/24, J = 1..).
const MAX_API_ONLY_NODES: usize = 250;
/// Requests in flight while the API-only pods are created and given addresses.
const CONCURRENT_WRITES: usize = 16;
/// The longest the agents may take to hold every API-only pod.
const HOLD_TIMEOUT: Duration = Duration::from_secs(180);
/// The load's namespace.
pub const LOAD_NS: &str = "load";

/// What to load.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Background pods in all (real and API-only).
    pub pods: usize,
    /// Background NetworkPolicies selecting them.
    pub policies: usize,
    /// The most real background pods per lab node.
    pub real_per_node: usize,
}

/// The load as it was brought up.
#[derive(Debug, Clone, Serialize)]
pub struct Load {
    /// Background NetworkPolicies.
    pub policies: usize,
    /// Real background pods (netns, CNI, programs) on the lab's nodes.
    pub real_pods: usize,
    /// Background pods that exist only in the API server.
    pub api_only_pods: usize,
    /// Registered Nodes without a kubelet holding them.
    pub api_only_nodes: usize,
    /// Seconds to bring the load up (until every agent held it).
    pub secs: f64,
}

impl Load {
    /// One line for a report's heading.
    pub fn describe(&self) -> String {
        format!(
            "{} background pods ({} real, {} API-only on {} Node{} without a kubelet), {} background NetworkPolicies (load up in {:.0} s)",
            self.real_pods + self.api_only_pods,
            self.real_pods,
            self.api_only_pods,
            self.api_only_nodes,
            if self.api_only_nodes == 1 { "" } else { "s" },
            self.policies,
            self.secs
        )
    }
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

/// A lab of the benchmark's own, loaded; taken down when dropped.
pub struct Bench {
    /// The lab's name.
    pub name: String,
    /// Its record.
    pub lab: kube_lab::KubeLab,
    /// A directory for the manifests the benchmark applies.
    pub dir: PathBuf,
    /// The lab's node names.
    pub nodes: Vec<String>,
    /// The load.
    pub load: Load,
    /// Runs the API-only Nodes' heartbeats in the background, and the benchmark's
    /// requests. Declared before `_down`: its tasks stop before the lab goes.
    pub rt: tokio::runtime::Runtime,
    /// The lab user's client.
    pub client: kube::Client,
    _down: Down,
}

impl Bench {
    /// Writes `text` to `name` in the benchmark's directory.
    pub fn write(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        let p = self.dir.join(name);
        std::fs::write(&p, text).with_context(|| format!("{}", p.display()))?;
        Ok(p)
    }

    /// `lab apply` of `text` (returns once its pods are Ready and every agent ran a
    /// pass after it).
    pub fn apply(&self, file: &str, text: &str) -> anyhow::Result<()> {
        kube_lab::apply(&self.name, &[self.write(file, text)?])?;
        Ok(())
    }

    /// Each receiver's log file, by pod key.
    pub fn pod_logs(&self, keys: &[String]) -> anyhow::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for key in keys {
            let mut found = None;
            for node in &self.lab.nodes {
                let Ok(state) =
                    palisade_kubelet::records::StateDir::open(&node.dir.join("kubelet"))
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

    /// The first address of each pod (by key), as the API server reports it.
    pub fn pod_ips(&self, keys: &[String]) -> anyhow::Result<Vec<String>> {
        let all = kube_lab::cluster_pods(&self.lab.control_plane()?)?;
        keys.iter()
            .map(|k| {
                all.iter()
                    .find(|p| &p.key == k)
                    .and_then(|p| p.ips.first())
                    .map(|ip| ip.to_string())
                    .with_context(|| format!("{k} has no address"))
            })
            .collect()
    }
}

/// Brings up a lab of `nodes` nodes named after this process and `spec`'s load.
pub fn start(nodes: usize, cni_bin: Option<PathBuf>, spec: &LoadSpec) -> anyhow::Result<Bench> {
    let real = spec.pods.min(nodes * spec.real_per_node);
    let api_only = spec.pods - real;
    let api_nodes = api_only.div_ceil(API_ONLY_PODS_PER_NODE);
    if api_nodes > MAX_API_ONLY_NODES {
        bail!(
            "{api_only} API-only pods need {api_nodes} Nodes; at most {MAX_API_ONLY_NODES} (raise --real-pods-per-node or --nodes)"
        );
    }
    let name = format!("kb{}", std::process::id() % 100_000);
    eprintln!("bench: lab {name} up with {nodes} nodes");
    let lab = kube_lab::up(&name, nodes, cni_bin)?;
    let down = Down(name.clone());
    let dir = crate::lab::state_dir(&name).join("bench");
    std::fs::create_dir_all(&dir)?;
    let node_names: Vec<String> = lab.nodes.iter().map(|n| n.net.name.clone()).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let client = rt.block_on(client(&lab.kubeconfig_path()))?;
    let mut bench = Bench {
        name,
        lab,
        dir,
        nodes: node_names,
        load: Load {
            policies: spec.policies,
            real_pods: real,
            api_only_pods: api_only,
            api_only_nodes: api_nodes,
            secs: 0.0,
        },
        rt,
        client,
        _down: down,
    };

    eprintln!(
        "bench: background load: {real} real pods, {api_only} API-only pods on {api_nodes} Nodes, {} NetworkPolicies",
        spec.policies
    );
    let t = Instant::now();
    bench.apply(
        "load.yaml",
        &load_manifest(real, spec.policies, &bench.nodes),
    )?;
    if api_only > 0 {
        let rv = bench.rt.block_on(api_only_load(&bench.client, api_only))?;
        wait_agents_hold(&bench.lab, rv)?;
    }
    bench.load.secs = t.elapsed().as_secs_f64();
    Ok(bench)
}

/// A client for the lab user.
async fn client(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

/// The real pods (a Deployment kept on the lab's nodes, evenly: the scheduler may not
/// put more than one pod more on one node than on another) and the policies.
fn load_manifest(real: usize, policies: usize, nodes: &[String]) -> String {
    let mut s = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {LOAD_NS}}}\n");
    if real > 0 {
        s += &format!(
            "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: load, namespace: {LOAD_NS}}}\n\
             spec:\n  replicas: {real}\n  selector: {{matchLabels: {{app: load}}}}\n\
             \x20 template:\n    metadata: {{labels: {{app: load}}}}\n\
             \x20   spec:\n\
             \x20     containers: [{{name: c, image: lab}}]\n\
             \x20     affinity: {{nodeAffinity: {{requiredDuringSchedulingIgnoredDuringExecution: {{nodeSelectorTerms: [{{matchExpressions: [{{key: kubernetes.io/hostname, operator: In, values: [{}]}}]}}]}}}}}}\n\
             \x20     topologySpreadConstraints: [{{maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {{matchLabels: {{app: load}}}}}}]\n",
            nodes.join(", ")
        );
    }
    for k in 0..policies {
        s += &format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
             metadata: {{name: load-{k}, namespace: {LOAD_NS}}}\n\
             spec:\n  podSelector: {{matchLabels: {{app: load}}}}\n  policyTypes: [Ingress]\n\
             \x20 ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: load}}}}}}]\n\
             \x20   ports: [{{protocol: TCP, port: {}}}]\n",
            10_000 + k
        );
    }
    s
}

/// API-only Node `j` (1-based): its name, address and pod CIDR.
fn api_only_node(j: usize) -> (String, IpAddr, ipnet::IpNet) {
    let octet = u8::try_from(j).expect("at most MAX_API_ONLY_NODES");
    let ip = IpAddr::V4(Ipv4Addr::new(10, 241, octet, 2));
    let cidr = format!("10.245.{octet}.0/24").parse().expect("a CIDR");
    (format!("api-only-{j}"), ip, cidr)
}

/// Registers the API-only Nodes (heartbeats running on the runtime from then on),
/// cordons them, creates `count` pods bound to them and writes their addresses;
/// returns the highest resourceVersion written.
async fn api_only_load(client: &kube::Client, count: usize) -> anyhow::Result<u64> {
    let nodes_api: Api<Node> = Api::all(client.clone());
    let mut nodes = Vec::new();
    for j in 1..=count.div_ceil(API_ONLY_PODS_PER_NODE) {
        let (name, ip, cidr) = api_only_node(j);
        // The lab kubelet's own registration and heartbeat (only the name, addresses
        // and pod CIDR are read; nothing runs in the namespace or directories named).
        let cfg = palisade_kubelet::Config {
            kubeconfig: PathBuf::new(),
            node_name: name.clone(),
            node_netns: String::new(),
            node_ips: vec![ip],
            pod_cidrs: vec![cidr],
            cni_bin_dirs: Vec::new(),
            chain: Vec::new(),
            cni_conf_dir: None,
            server: PathBuf::new(),
            server_args: Vec::new(),
            state_dir: PathBuf::new(),
        };
        let (uid, since) = palisade_kubelet::node::register(client, &cfg)
            .await
            .with_context(|| format!("registering Node {name}"))?;
        palisade_kubelet::node::renew_lease(client, &cfg, &uid)
            .await
            .with_context(|| format!("the Lease of Node {name}"))?;
        nodes_api
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"unschedulable": true}})),
            )
            .await
            .with_context(|| format!("cordoning Node {name}"))?;
        tokio::spawn(palisade_kubelet::node::heartbeat(
            client.clone(),
            cfg,
            uid,
            since,
        ));
        nodes.push((name, ip, cidr));
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), LOAD_NS);
    let rvs: Vec<u64> = futures::stream::iter(0..count)
        .map(|i| {
            let pods = pods.clone();
            let (node, host_ip, cidr) = nodes[i / API_ONLY_PODS_PER_NODE].clone();
            async move {
                let name = format!("load-api-{i}");
                let ipnet::IpNet::V4(net) = cidr else {
                    unreachable!("IPv4 CIDRs")
                };
                let host = u32::try_from(i % API_ONLY_PODS_PER_NODE + 2).expect("small");
                let ip = Ipv4Addr::from(u32::from(net.network()) + host);
                let pod: Pod = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": name, "labels": {"app": "load", "lab.palisade.io/api-only": "true"}},
                    "spec": {"nodeName": node, "containers": [{"name": "c", "image": "lab"}]},
                }))?;
                pods.create(&PostParams::default(), &pod)
                    .await
                    .with_context(|| format!("creating pod {LOAD_NS}/{name}"))?;
                let now = palisade_kubelet::node::time_now();
                let status = serde_json::json!({"status": {
                    "phase": "Running",
                    "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}],
                    "hostIP": host_ip.to_string(), "hostIPs": [{"ip": host_ip.to_string()}],
                    "startTime": now,
                    "conditions": [
                        {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                        {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                        {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                        {"type": "Ready", "status": "True", "lastTransitionTime": now},
                    ],
                }});
                let p = pods
                    .patch_status(&name, &PatchParams::default(), &Patch::Strategic(status))
                    .await
                    .with_context(|| format!("writing the status of pod {LOAD_NS}/{name}"))?;
                let rv = p.metadata.resource_version.unwrap_or_default();
                rv.parse::<u64>()
                    .with_context(|| format!("pod {LOAD_NS}/{name}: resourceVersion {rv:?}"))
            }
        })
        .buffer_unordered(CONCURRENT_WRITES)
        .try_collect()
        .await?;
    Ok(rvs.into_iter().max().unwrap_or(0))
}

/// Waits until every agent's pass in force started after its Pod watch had delivered
/// resourceVersion `rv`: it holds every API-only pod with its address.
fn wait_agents_hold(lab: &kube_lab::KubeLab, rv: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + HOLD_TIMEOUT;
    for node in &lab.nodes {
        loop {
            let held = crate::inspect::call(&node.socket, &palisade_agent::api::Status)
                .ok()
                .and_then(|s| {
                    s.data
                        .watches
                        .iter()
                        .find(|w| w.kind == "Pod")
                        .and_then(|w| w.resource_version_in_force)
                });
            if held.is_some_and(|h| h >= rv) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent of node {} holds pods up to resourceVersion {held:?}, not {rv}, after {}s",
                    node.net.name,
                    HOLD_TIMEOUT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_only_nodes_have_distinct_addresses_and_cidrs_outside_the_lab_nodes() {
        let lab_pods: ipnet::IpNet = palisade_kube_lab::topology::CLUSTER_CIDR_V4
            .parse()
            .unwrap();
        let (n1, ip1, c1) = api_only_node(1);
        let (n2, ip2, c2) = api_only_node(MAX_API_ONLY_NODES);
        assert_ne!(n1, n2);
        assert_ne!(ip1, ip2);
        assert_ne!(c1, c2);
        for c in [c1, c2] {
            assert!(!lab_pods.contains(&c.network()), "{c} inside {lab_pods}");
            // A node's pods are .2 to .101 of its /24.
            assert!(
                c.prefix_len() <= 24,
                "{c} holds {API_ONLY_PODS_PER_NODE} pods"
            );
        }
    }

    #[test]
    fn the_load_manifest_keeps_real_pods_on_the_lab_nodes_and_names_every_policy() {
        let m = load_manifest(180, 3, &["n1".into(), "n2".into()]);
        // `lab apply` reads it as strictly as the agents do.
        let loaded = palisade_policy::manifest::load(&[("load.yaml".into(), m.clone())]);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        assert!(m.contains("replicas: 180"));
        assert!(m.contains("values: [n1, n2]"));
        assert!(m.contains("maxSkew: 1"));
        for k in 0..3 {
            assert!(m.contains(&format!("name: load-{k},")), "{m}");
        }
        let none = load_manifest(0, 1, &["n1".into()]);
        assert!(
            !none.contains("Deployment"),
            "no Deployment without real pods"
        );
    }
}
