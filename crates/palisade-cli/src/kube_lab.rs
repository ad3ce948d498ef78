//! `palisade lab up --kubernetes`: the lab as a multi-node cluster on one machine.
//!
//! Everything runs in network namespaces of the lab ([`Topology`]): the real control
//! plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) in
//! `<lab>-api`, and in each node namespace `<lab>-nI` the Palisade agent
//! (`--source kubernetes --node-name nI`, as a DaemonSet pod would run, with its own
//! token for the chart's ServiceAccount and RBAC), upstream kube-proxy (client
//! certificate `system:kube-proxy`) and, when built, the lab kubelet (client
//! certificate `system:node:nI`); in the first node's namespace also `palisade
//! controller`, as the chart's Deployment runs it (its own token for the
//! palisade-controller ServiceAccount, the chart's RBAC and leader-election Role), so
//! `palisade status` and the pods' condition answer. Every process is detached and recorded by PID in
//! `<state>/kube-lab.json`, so the cluster outlives `lab up` and `lab down` stops
//! exactly those processes. The root namespace only gets a loopback listener: the
//! forwarder `palisade lab kubeconfig` points at.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use palisade_kube_lab::persistent::{PersistentControlPlane, API_PORT};
use palisade_kube_lab::topology::{NodeNet, Topology};
use palisade_kube_lab::{spawn_detached, Binaries, KUBERNETES_SERVICE_IP};
use palisade_lab::netns::NetNs;
use palisade_lab::process::ProcessRecord;
use serde::{Deserialize, Serialize};

use crate::lab::{pin_root_of, state_dir};

/// The record of a Kubernetes lab, inside its state directory.
const STATE_FILE: &str = "kube-lab.json";
/// How long `lab up` waits for each agent's first pass over the cluster's objects.
const AGENT_START_TIMEOUT: Duration = Duration::from_secs(90);
/// The agent's ServiceAccount, as the chart's DaemonSet runs it.
const AGENT_SA: (&str, &str) = ("palisade-system", "palisade-agent");
/// The controller's ServiceAccount, as the chart's Deployment runs it.
const CONTROLLER_SA: (&str, &str) = ("palisade-system", "palisade-controller");
/// The controller replica's identity in its leader-election Lease.
const CONTROLLER_IDENTITY: &str = "palisade-controller-lab-0";
/// How long `palisade-cni` waits for the agent to confirm a pod's policy.
const CNI_TIMEOUT_MS: u64 = 10_000;

/// The chart rendered (`deploy/manifests/palisade.yaml`, equal to `helm template` of
/// `deploy/helm/palisade`: a palisade-deploy test checks it), so the lab's agents run
/// with exactly the identity and RBAC the chart installs.
const CHART: &str = include_str!("../../../deploy/manifests/palisade.yaml");

/// The chart's objects the lab applies: its CRDs (Palisade's, and the
/// `projectcalico.org/v3` ones of `calico.serveCRDs`), Namespace, ServiceAccounts, the
/// agent's and the controller's ClusterRoles and bindings and the controller's
/// leader-election Role. Not the DaemonSet and Deployment (the lab runs those
/// processes itself) nor the admission policy (it wants tokens bound to a pod on a
/// node, and the lab's agent tokens are not).
pub(crate) fn chart_objects() -> String {
    const SOURCES: &[&str] = &[
        "crds/",
        "templates/namespace.yaml",
        "templates/serviceaccounts.yaml",
        "templates/rbac-agent.yaml",
        "templates/rbac-controller.yaml",
        "templates/calico-crds.yaml",
    ];
    CHART
        .split("\n---\n")
        .filter(|doc| {
            SOURCES
                .iter()
                .any(|s| doc.contains(&format!("# Source: palisade/{s}")))
        })
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// One node's processes and files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRuntime {
    /// The node's network.
    pub net: NodeNet,
    /// Its directory (agent state, logs, kubeconfigs, kubelet state).
    pub dir: PathBuf,
    /// The agent's API socket.
    pub socket: PathBuf,
    /// The agent's bpffs pin root.
    pub pin_root: PathBuf,
    /// kube-proxy.
    pub kube_proxy: Option<ProcessRecord>,
    /// The Palisade agent.
    pub agent: Option<ProcessRecord>,
    /// The lab kubelet (absent when its binary is not built).
    pub kubelet: Option<ProcessRecord>,
    /// The kubelet's command line.
    pub kubelet_args: Vec<String>,
}

/// A Kubernetes lab, as recorded in `<state>/kube-lab.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KubeLab {
    /// The lab's name.
    pub name: String,
    /// The network namespaces.
    pub topology: Topology,
    /// The control plane's directory (its own record is inside).
    pub control_plane_dir: PathBuf,
    /// The root-namespace forwarder to the API server, and its port on 127.0.0.1.
    pub forwarder: Option<(ProcessRecord, u16)>,
    /// The nodes.
    pub nodes: Vec<NodeRuntime>,
    /// `palisade controller` (one replica, in the first node's namespace; absent in
    /// the record of a lab started before the lab ran one).
    #[serde(default)]
    pub controller: Option<ProcessRecord>,
}

impl KubeLab {
    fn file(name: &str) -> PathBuf {
        state_dir(name).join(STATE_FILE)
    }

    /// Loads lab `name`'s record, if it is a Kubernetes lab.
    pub fn load(name: &str) -> anyhow::Result<Option<KubeLab>> {
        let path = Self::file(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(
                serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("{}", path.display())),
        }
    }

    pub(crate) fn save(&self) -> anyhow::Result<()> {
        let path = Self::file(&self.name);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// The control plane.
    pub fn control_plane(&self) -> anyhow::Result<PersistentControlPlane> {
        PersistentControlPlane::load(&self.control_plane_dir)
            .with_context(|| format!("the control plane of lab {}", self.name))
    }

    /// The kubeconfig for the lab's user (admin), through the loopback forwarder.
    pub fn kubeconfig_path(&self) -> PathBuf {
        state_dir(&self.name).join("kubeconfig")
    }
}

/// `lab up --kubernetes --nodes N`.
pub fn up(name: &str, nodes: usize, cni_bin: Option<PathBuf>) -> anyhow::Result<KubeLab> {
    let dir = state_dir(name);
    if dir.join("state.json").exists() || KubeLab::file(name).exists() {
        bail!("lab {name} is already up\n\nhint: palisade lab down --name {name}");
    }
    let binaries = Binaries::locate()?;
    let cni = crate::lab::cni_dir(cni_bin)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
    let topology = Topology::create(name, nodes)?;
    let mut lab = KubeLab {
        name: name.to_string(),
        control_plane_dir: dir.join("control-plane"),
        nodes: topology
            .nodes
            .iter()
            .map(|n| NodeRuntime {
                dir: dir.join("nodes").join(&n.name),
                socket: dir.join("nodes").join(&n.name).join("agent.sock"),
                pin_root: pin_root_of(&format!("{name}-{}", n.name)),
                net: n.clone(),
                kube_proxy: None,
                agent: None,
                kubelet: None,
                kubelet_args: Vec::new(),
            })
            .collect(),
        topology,
        forwarder: None,
        controller: None,
    };
    lab.save()?;
    // From here on a failure takes down whatever was recorded.
    match start(&mut lab, &binaries, &cni) {
        Ok(()) => Ok(lab),
        Err(e) => {
            for l in down(name)? {
                eprintln!("warning: {l}");
            }
            Err(e)
        }
    }
}

fn start(lab: &mut KubeLab, binaries: &Binaries, cni: &Path) -> anyhow::Result<()> {
    let api_v4 = lab.topology.api_ips[0];
    let cp = PersistentControlPlane::start(
        &lab.control_plane_dir,
        &lab.topology.api_netns_path(),
        api_v4,
        binaries,
    )?;
    start_forwarder(lab, SocketAddr::new(api_v4, API_PORT))?;
    let port = lab.forwarder.as_ref().map(|f| f.1).expect("just started");
    let user = cp.client_cert_kubeconfig(
        "lab-user",
        "palisade-lab-admin",
        Some("system:masters"),
        &format!("https://127.0.0.1:{port}"),
    )?;
    std::fs::copy(&user, lab.kubeconfig_path())?;
    cp.kubectl(&["apply", "-f", "-"], Some(&chart_objects()))
        .context("the chart's CRDs, ServiceAccounts and RBAC")?;
    // The network-policy-api CRDs, as users install them (from the Go module cache).
    palisade_kube_lab::crds::install_with(|args| cp.kubectl(args, None).map(drop))
        .context("installing the network-policy-api CRDs")?;
    // A DaemonSet pod reaches the API server at the `kubernetes` Service, through
    // kube-proxy's rules in its node's namespace.
    let in_cluster = format!("https://{KUBERNETES_SERVICE_IP}:443");
    let kubelet = kubelet_program();
    for i in 0..lab.nodes.len() {
        let node = lab.nodes[i].clone();
        std::fs::create_dir_all(&node.dir)?;
        chain_cni(&node, cni)?;
        let proxy = cp.start_kube_proxy(&node.net, &node.dir.join("kube-proxy.log"))?;
        lab.nodes[i].kube_proxy = Some(proxy);
        lab.save()?;
        let token = cp.service_account_kubeconfig(
            &format!("agent-{}", node.net.name),
            AGENT_SA.0,
            AGENT_SA.1,
            &in_cluster,
        )?;
        let agent = start_agent(&node, &token, &std::env::current_exe()?)?;
        lab.nodes[i].agent = Some(agent);
        lab.save()?;
        if let Some(program) = &kubelet {
            let kubeconfig = cp.client_cert_kubeconfig(
                &format!("kubelet-{}", node.net.name),
                &format!("system:node:{}", node.net.name),
                Some("system:nodes"),
                &format!("https://127.0.0.1:{port}"),
            )?;
            let args = kubelet_args(&node, &kubeconfig)?;
            let mut cmd = Command::new(program);
            cmd.args(&args);
            let rec = spawn_detached(
                &format!("kubelet {}", node.net.name),
                cmd,
                &node.dir.join("kubelet.log"),
                None,
            )?;
            lab.nodes[i].kubelet = Some(rec);
            lab.nodes[i].kubelet_args = args;
            lab.save()?;
        }
    }
    let token =
        cp.service_account_kubeconfig("controller", CONTROLLER_SA.0, CONTROLLER_SA.1, &in_cluster)?;
    lab.controller = Some(start_controller(lab, &token)?);
    lab.save()?;
    for node in &lab.nodes {
        wait_for_agent(node)?;
    }
    wait_for_leader(lab, &cp)?;
    if kubelet.is_some() {
        wait_nodes_ready(lab)?;
    }
    Ok(())
}

/// The node's CNI configuration directory (the host's `/etc/cni/net.d`), its CNI
/// binary directory (`/opt/cni/bin`), and the file the lab wrote there before
/// Palisade was chained into it (kept aside for comparison).
pub(crate) fn cni_paths(node: &NodeRuntime) -> (PathBuf, PathBuf, PathBuf) {
    (
        node.dir.join("net.d"),
        node.dir.join("cni-bin"),
        node.dir.join(format!("{NODE_CONFLIST}.before-palisade")),
    )
}

/// The node's own network configuration, as it would be on a node before Palisade.
pub(crate) const NODE_CONFLIST: &str = "10-lab-pods.conflist";

/// What the chart's init container does on a node: the node has its own CNI
/// configuration list (the lab's pod network: ptp with host-local on the node's pod
/// CIDRs), and `palisade-cni install` copies the plugin into the node's CNI binary
/// directory and chains itself at the end of that list. The lab kubelet reads this
/// list at every ADD (it runs ptp itself, with the addresses it chose, then the rest
/// of the list), as a container runtime does.
fn chain_cni(node: &NodeRuntime, cni: &Path) -> anyhow::Result<()> {
    let (conf_dir, bin_dir, before) = cni_paths(node);
    std::fs::create_dir_all(&conf_dir)?;
    std::fs::create_dir_all(&bin_dir)?;
    let ranges: Vec<String> = node
        .net
        .pod_cidrs
        .iter()
        .map(|c| format!("[{{\"subnet\": \"{c}\"}}]"))
        .collect();
    let list = format!(
        r#"{{
  "cniVersion": "1.0.0",
  "name": "lab-pods",
  "plugins": [
    {{
      "type": "ptp",
      "mtu": 1500,
      "ipam": {{"type": "host-local", "ranges": [{}]}}
    }}
  ]
}}
"#,
        ranges.join(", ")
    );
    std::fs::write(conf_dir.join(NODE_CONFLIST), &list)?;
    std::fs::write(&before, &list)?;
    install_cni(node, cni)
}

/// The init container's step: `palisade-cni install` from `release` (the directory
/// holding the release's `palisade-cni`) into the node's CNI directories.
fn install_cni(node: &NodeRuntime, release: &Path) -> anyhow::Result<()> {
    let (conf_dir, bin_dir, _) = cni_paths(node);
    let plugin = release.join("palisade-cni");
    let out = Command::new(&plugin)
        .arg("install")
        .arg("--conf-dir")
        .arg(&conf_dir)
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--agent-socket")
        .arg(&node.socket)
        .args(["--timeout-ms", &CNI_TIMEOUT_MS.to_string()])
        .output()
        .with_context(|| format!("running {} install", plugin.display()))?;
    if !out.status.success() {
        bail!(
            "palisade-cni install on node {}: {}",
            node.net.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The lab kubelet: `$PALISADE_LAB_KUBELET`, else `palisade-lab-kubelet` beside this
/// binary (or one directory up, as cargo lays out test binaries).
fn kubelet_program() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PALISADE_LAB_KUBELET").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [
        dir.join("palisade-lab-kubelet"),
        dir.parent()?.join("palisade-lab-kubelet"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

/// The kubelet's command line (the contract in its crate's documentation).
/// The chain is the node's CNI configuration (`cni_paths`), read at every ADD, and
/// the plugins are looked up in the standard plugins' directory and the node's CNI
/// binary directory, where `palisade-cni install` put `palisade-cni`.
fn kubelet_args(node: &NodeRuntime, kubeconfig: &Path) -> anyhow::Result<Vec<String>> {
    let (conf_dir, bin_dir, _) = cni_paths(node);
    let mut args = vec![
        "--kubeconfig".to_string(),
        kubeconfig.display().to_string(),
        "--node-name".to_string(),
        node.net.name.clone(),
        "--netns".to_string(),
        node.net.netns.clone(),
    ];
    // The IPv4 address only: the kubelet's status patch of a dual-stack Node fails
    // (two InternalIP entries under the strategic-merge key `type`).
    for ip in node.net.ips.iter().filter(|ip| ip.is_ipv4()) {
        args.extend(["--node-ip".to_string(), ip.to_string()]);
    }
    for cidr in &node.net.pod_cidrs {
        args.extend(["--pod-cidr".to_string(), cidr.clone()]);
    }
    for dir in [Path::new("/usr/lib/cni"), &bin_dir] {
        args.extend(["--cni-bin-dir".to_string(), dir.display().to_string()]);
    }
    args.extend([
        "--cni-conf-dir".to_string(),
        conf_dir.display().to_string(),
        // Pod servers are this binary's `lab serve`, as in the file-based lab.
        "--server".to_string(),
        std::env::current_exe()?.display().to_string(),
        "--server-arg".to_string(),
        "lab".to_string(),
        "--server-arg".to_string(),
        "serve".to_string(),
        "--state-dir".to_string(),
        node.dir.join("kubelet").display().to_string(),
    ]);
    Ok(args)
}

/// The agent of `node` (the `palisade` binary `program`), inside its namespace,
/// following the API server as its ServiceAccount (`kubeconfig`).
fn start_agent(
    node: &NodeRuntime,
    kubeconfig: &Path,
    program: &Path,
) -> anyhow::Result<ProcessRecord> {
    let mut cmd = Command::new(program);
    cmd.args(["agent", "--source", "kubernetes", "--kubeconfig"])
        .arg(kubeconfig)
        .args(["--node-name", &node.net.name, "--socket"])
        .arg(&node.socket)
        .arg("--state-dir")
        .arg(node.dir.join("agent"))
        .arg("--pin-root")
        .arg(&node.pin_root)
        .arg("--decision-log")
        .arg(node.dir.join("decisions.jsonl"))
        .args(["--log-mode", "all"])
        .args(
            std::env::var("PALISADE_LAB_AGENT_ARGS")
                .unwrap_or_default()
                .split_whitespace(),
        );
    let netns = NetNs::open(&node.net.netns).path();
    Ok(spawn_detached(
        &format!("agent {}", node.net.name),
        cmd,
        &node.dir.join("agent.log"),
        Some(&netns),
    )?)
}

/// `palisade controller` as the chart's Deployment runs it (`controller`, with the
/// Deployment's namespace and pod name as the Lease namespace and identity), as its
/// ServiceAccount (`kubeconfig`), in the first node's namespace: it reaches the API
/// server at the `kubernetes` Service through that node's kube-proxy, as a pod does.
fn start_controller(lab: &KubeLab, kubeconfig: &Path) -> anyhow::Result<ProcessRecord> {
    let node = lab.nodes.first().context("a lab without nodes")?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["controller", "--kubeconfig"])
        .arg(kubeconfig)
        .args(["--namespace", CONTROLLER_SA.0])
        .args(["--identity", CONTROLLER_IDENTITY])
        .env_remove("POD_NAMESPACE")
        .env_remove("POD_NAME");
    let netns = NetNs::open(&node.net.netns).path();
    Ok(spawn_detached(
        "controller",
        cmd,
        &state_dir(&lab.name).join("controller.log"),
        Some(&netns),
    )?)
}

/// Waits until the controller holds its Lease (it writes status only while leading).
fn wait_for_leader(lab: &KubeLab, cp: &PersistentControlPlane) -> anyhow::Result<()> {
    let deadline = Instant::now() + AGENT_START_TIMEOUT;
    loop {
        let holder = cp
            .kubectl(
                &[
                    "get",
                    "lease",
                    "-n",
                    CONTROLLER_SA.0,
                    palisade_controller::lease::LEASE_NAME,
                    "-o",
                    "jsonpath={.spec.holderIdentity}",
                ],
                None,
            )
            .unwrap_or_default();
        if holder.trim() == CONTROLLER_IDENTITY {
            return Ok(());
        }
        let alive = lab.controller.as_ref().is_some_and(ProcessRecord::is_alive);
        if !alive || Instant::now() > deadline {
            let log = std::fs::read_to_string(state_dir(&lab.name).join("controller.log"))
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "the controller did not {} its Lease; its log:\n{}",
                if alive {
                    "take"
                } else {
                    "survive until it took"
                },
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Replaces node `i`'s agent as a DaemonSet rollout replaces its pod: SIGTERM to the
/// running agent (SIGKILL after the grace period), the new pod's init container
/// (`palisade-cni install` from beside `program`, re-chaining with the same options),
/// then the agent `program` (default: this binary) with a fresh token of the chart's
/// ServiceAccount, on the same state directory, socket and pin root; returns once the
/// new agent has run its first pass. What it adopts and replaces is the agent's own
/// start-up (`docs/install.md`, Upgrade).
pub(crate) fn restart_agent(
    lab: &mut KubeLab,
    i: usize,
    program: Option<&Path>,
) -> anyhow::Result<()> {
    let cp = lab.control_plane()?;
    let node = lab.nodes.get(i).context("no such node")?.clone();
    if let Some(old) = &node.agent {
        old.stop();
    }
    let in_cluster = format!("https://{KUBERNETES_SERVICE_IP}:443");
    // A new pod, a new token (and a file of its own).
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let token = cp.service_account_kubeconfig(
        &format!("agent-{}-{started}", node.net.name),
        AGENT_SA.0,
        AGENT_SA.1,
        &in_cluster,
    )?;
    let program = match program {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()?,
    };
    let release = program.parent().context("the agent program's directory")?;
    install_cni(&node, release)?;
    lab.nodes[i].agent = Some(start_agent(&node, &token, &program)?);
    lab.save()?;
    wait_for_agent(&lab.nodes[i])
}

/// Waits until `node`'s agent answers and has run a pass, i.e. its Kubernetes
/// source has listed every kind (it gives no answer before).
fn wait_for_agent(node: &NodeRuntime) -> anyhow::Result<()> {
    let deadline = Instant::now() + AGENT_START_TIMEOUT;
    loop {
        if let Ok(s) = crate::inspect::call(&node.socket, &palisade_agent::api::Status) {
            if s.data.generation > 0 {
                return Ok(());
            }
        }
        let alive = node.agent.as_ref().is_some_and(ProcessRecord::is_alive);
        if !alive || Instant::now() > deadline {
            let log = std::fs::read_to_string(node.dir.join("agent.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "the agent of node {} did not {} its first pass; its log:\n{}",
                node.net.name,
                if alive { "finish" } else { "survive until" },
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until every node is registered and Ready.
fn wait_nodes_ready(lab: &KubeLab) -> anyhow::Result<()> {
    let cp = lab.control_plane()?;
    let deadline = Instant::now() + AGENT_START_TIMEOUT;
    loop {
        let out = cp.kubectl(&["get", "nodes", "-o", "json"], None)?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        let ready = v["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter(|n| {
                        n["status"]["conditions"].as_array().is_some_and(|c| {
                            c.iter()
                                .any(|c| c["type"] == "Ready" && c["status"] == "True")
                        })
                    })
                    .count()
            })
            .unwrap_or(0);
        for node in &lab.nodes {
            if !node.kubelet.as_ref().is_some_and(ProcessRecord::is_alive) {
                let log = std::fs::read_to_string(node.dir.join("kubelet.log")).unwrap_or_default();
                bail!(
                    "the kubelet of node {} exited; its log:\n{log}",
                    node.net.name
                );
            }
        }
        if ready >= lab.nodes.len() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{ready} of {} nodes Ready after {}s (kubelet logs in {})",
                lab.nodes.len(),
                AGENT_START_TIMEOUT.as_secs(),
                state_dir(&lab.name).join("nodes").display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Starts `palisade lab forward` in the root namespace on a listener bound here
/// (127.0.0.1, a free port: bound before the child starts, so no race for it).
fn start_forwarder(lab: &mut KubeLab, upstream: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
    let port = listener.local_addr()?.port();
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args([
        "lab",
        "--name",
        &lab.name,
        "forward",
        "--fd",
        &fd.to_string(),
        "--netns",
    ])
    .arg(lab.topology.api_netns_path())
    .args(["--to", &upstream.to_string()]);
    // SAFETY: fcntl(2) is async-signal-safe; it clears close-on-exec on the
    // listener's fd in the child only, so the forwarder inherits the socket.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let log = state_dir(&lab.name).join("forwarder.log");
    let rec = spawn_detached("forwarder", cmd, &log, None)?;
    drop(listener);
    lab.forwarder = Some((rec, port));
    lab.save()
}

/// `palisade lab forward` (internal): serves the inherited listener `fd`.
pub fn forward(fd: i32, netns: &Path, to: SocketAddr) -> anyhow::Result<()> {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` is the listening socket `lab up` passed to this process, owned by
    // nothing else here.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    palisade_kube_lab::forward::serve(listener, netns, to)?;
    Ok(())
}

/// `lab down` of a Kubernetes lab: kubelets (and their pods), agents, kube-proxies,
/// the control plane, the forwarder, by PID; then the namespaces and pins. Returns
/// what could not be removed.
pub fn down(name: &str) -> anyhow::Result<Vec<String>> {
    let Some(lab) = KubeLab::load(name)? else {
        return Ok(Vec::new());
    };
    let mut left = Vec::new();
    let kubelet = kubelet_program();
    for node in &lab.nodes {
        if let Some(k) = &node.kubelet {
            k.stop();
            if let Some(program) = &kubelet {
                let out = Command::new(program)
                    .arg("--teardown")
                    .arg("--state-dir")
                    .arg(node.dir.join("kubelet"))
                    .output();
                match out {
                    Ok(o) if o.status.success() => {}
                    Ok(o) => left.push(format!(
                        "kubelet {} --teardown: {}",
                        node.net.name,
                        String::from_utf8_lossy(&o.stderr).trim()
                    )),
                    Err(e) => left.push(format!("kubelet {} --teardown: {e}", node.net.name)),
                }
            }
        }
    }
    if let Some(c) = &lab.controller {
        c.stop();
    }
    for node in &lab.nodes {
        for p in [&node.agent, &node.kube_proxy].into_iter().flatten() {
            p.stop();
        }
    }
    if let Ok(cp) = PersistentControlPlane::load(&lab.control_plane_dir) {
        cp.stop();
    }
    if let Some((f, _)) = &lab.forwarder {
        f.stop();
    }
    left.extend(lab.topology.delete());
    for node in &lab.nodes {
        if node.pin_root.exists() {
            if let Err(e) = palisade_datapath::unpin_all_at(&node.pin_root) {
                left.push(format!("pins at {}: {e}", node.pin_root.display()));
            }
        }
    }
    let dir = state_dir(name);
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        left.push(format!("{}: {e}", dir.display()));
    }
    Ok(left)
}

/// `lab kubeconfig`: the lab user's kubeconfig, through the loopback forwarder.
pub fn kubeconfig(name: &str) -> anyhow::Result<String> {
    let lab = KubeLab::load(name)?.with_context(|| {
        format!("lab {name} is not a Kubernetes lab (palisade lab up --kubernetes)")
    })?;
    Ok(std::fs::read_to_string(lab.kubeconfig_path())?)
}

/// The addresses a node advertises, for messages.
pub fn describe(lab: &KubeLab) -> String {
    let api: Vec<String> = lab.topology.api_ips.iter().map(IpAddr::to_string).collect();
    format!(
        "{} nodes ({}); API server at {} in netns {}; metadata service stand-in {} in netns {}; kubeconfig: palisade lab kubeconfig --name {}",
        lab.nodes.len(),
        lab.nodes
            .iter()
            .map(|n| n.net.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        api.join(", "),
        lab.topology.api_netns,
        palisade_kube_lab::topology::IMDS_V4,
        lab.topology.imds_netns,
        lab.name
    )
}

/// Whether lab `name` is a Kubernetes lab.
pub fn is_kube(name: &str) -> bool {
    KubeLab::file(name).exists()
}

pub(crate) fn open(name: &str) -> anyhow::Result<KubeLab> {
    KubeLab::load(name)?.with_context(|| {
        format!("lab {name} is not up\n\nhint: palisade lab up --kubernetes --name {name}")
    })
}

/// The annotation the lab kubelet reads static pod addresses from (the API server
/// drops `status` on create, so a manifest's `status.podIPs` travel in it).
pub const IPS_ANNOTATION: &str = "lab.palisade.io/ips";

/// Kinds without a namespace, among those the lab applies.
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "Node",
    "ClusterNetworkPolicy",
    "AdminNetworkPolicy",
    "BaselineAdminNetworkPolicy",
];

/// A manifest object as the API server should get it: `status` removed, and a
/// Pod's `status.podIPs`/`status.podIP` moved into [`IPS_ANNOTATION`]. `None` for a
/// Node: the cluster's nodes are the lab's own (registered by its kubelets); a
/// manifest's Node would be a node no kubelet runs.
fn for_api(mut obj: serde_json::Value, nodes: &[String]) -> Option<serde_json::Value> {
    let kind = obj["kind"].as_str().unwrap_or_default().to_string();
    if kind == "Node" {
        eprintln!(
            "note: Node {} is not applied: the lab's nodes are its kubelets' ({})",
            obj["metadata"]["name"].as_str().unwrap_or_default(),
            nodes.join(", ")
        );
        return None;
    }
    let status = obj.as_object_mut().and_then(|o| o.remove("status"));
    if kind == "Pod" {
        let mut ips: Vec<String> = status
            .as_ref()
            .and_then(|s| s["podIPs"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|i| i["ip"].as_str().map(str::to_string))
            .collect();
        if ips.is_empty() {
            ips.extend(
                status
                    .as_ref()
                    .and_then(|s| s["podIP"].as_str())
                    .map(str::to_string),
            );
        }
        if !ips.is_empty() {
            obj["metadata"]["annotations"][IPS_ANNOTATION] = ips.join(",").into();
        }
        // A manifest written for another cluster names nodes this one lacks; the
        // scheduler places such a pod instead (said, not silent).
        if let Some(n) = obj["spec"]["nodeName"].as_str() {
            if !nodes.iter().any(|m| m == n) {
                eprintln!(
                    "note: pod {}/{}: node {n} is not in the lab; the scheduler places it",
                    obj["metadata"]["namespace"].as_str().unwrap_or("default"),
                    obj["metadata"]["name"].as_str().unwrap_or_default()
                );
                obj["spec"].as_object_mut().map(|s| s.remove("nodeName"));
            }
        }
    }
    Some(obj)
}

/// The namespaces `objs` live in, and the Namespace objects among them.
fn namespaces_of(objs: &[serde_json::Value]) -> std::collections::BTreeSet<String> {
    objs.iter()
        .filter(|o| !CLUSTER_SCOPED.contains(&o["kind"].as_str().unwrap_or_default()))
        .map(|o| {
            o["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string()
        })
        .collect()
}

/// `lab apply` against the cluster: the objects through the API server (server-side
/// apply as the lab user), Namespaces created as needed; returns once every pod is
/// Ready and every node's agent has the applied objects (and the pods of applied
/// workloads) in force at the resourceVersions the API server holds
/// ([`crate::kube_converge`]). Returns the highest generation in force.
pub fn apply(name: &str, files: &[PathBuf]) -> anyhow::Result<u64> {
    let lab = open(name)?;
    let cp = lab.control_plane()?;
    let (objs, _) = crate::lab::objects(files)?;
    let nodes: Vec<String> = lab.nodes.iter().map(|n| n.net.name.clone()).collect();
    let objs: Vec<serde_json::Value> = objs
        .into_iter()
        .filter_map(|o| for_api(o, &nodes))
        .collect();
    // Namespaces first (declared ones with their labels, then any other needed),
    // so the namespaced objects of the same apply find theirs.
    let mut items: Vec<serde_json::Value> = objs
        .iter()
        .filter(|o| o["kind"] == "Namespace")
        .cloned()
        .collect();
    for ns in namespaces_of(&objs) {
        if !items.iter().any(|o| o["metadata"]["name"] == ns.as_str()) {
            items.push(serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
                                          "metadata": {"name": ns}}));
        }
    }
    items.extend(objs.iter().filter(|o| o["kind"] != "Namespace").cloned());
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    kubectl_user(
        &lab,
        &cp,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=palisade-lab",
            "-f",
            "-",
        ],
        Some(&list.to_string()),
    )?;
    wait_pods_ready(&lab, &cp, &objs)?;
    let targets = crate::kube_converge::targets(&cp, &items)?;
    let g = crate::kube_converge::wait(&lab, &targets, IN_FORCE_TIMEOUT)?;
    wait_policies_reported(&lab, &cp, &objs, false)?;
    Ok(g)
}

/// `lab delete` against the cluster: deletes the named objects (pods included, which
/// their kubelet tears down) and returns once every node's agent has run a pass after
/// the deletion ([`wait_in_force`]) and no node's `NodePolicyStatus` still lists a
/// deleted policy (a deleted object has no resourceVersion left to compare).
pub fn delete(name: &str, files: &[PathBuf]) -> anyhow::Result<u64> {
    let lab = open(name)?;
    let cp = lab.control_plane()?;
    let (objs, _) = crate::lab::objects(files)?;
    let nodes: Vec<String> = lab.nodes.iter().map(|n| n.net.name.clone()).collect();
    let items: Vec<serde_json::Value> = objs
        .into_iter()
        .filter_map(|o| for_api(o, &nodes))
        .collect();
    let before = generations(&lab);
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    kubectl_user(
        &lab,
        &cp,
        &[
            "delete",
            "--ignore-not-found",
            "--wait=true",
            "--timeout=120s",
            "-f",
            "-",
        ],
        Some(&list.to_string()),
    )?;
    let g = wait_in_force(&lab, &before)?;
    wait_policies_reported(&lab, &cp, &items, true)?;
    Ok(g)
}

/// kubectl as the lab user, through the forwarder (what `lab kubeconfig` gives).
fn kubectl_user(
    lab: &KubeLab,
    cp: &PersistentControlPlane,
    args: &[&str],
    stdin: Option<&str>,
) -> anyhow::Result<String> {
    let out = crate::kube_lab::run_kubectl(&cp.binaries, &lab.kubeconfig_path(), args, stdin)?;
    Ok(out)
}

/// Runs `kubectl --kubeconfig KUBECONFIG ARGS` in this (the root) namespace.
fn run_kubectl(
    bin_dir: &Path,
    kubeconfig: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> anyhow::Result<String> {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(bin_dir.join("kubectl"))
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg("--request-timeout=30s")
        .args(args)
        .env_remove("KUBECONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting kubectl")?;
    let input = stdin.unwrap_or_default().to_string();
    let mut pipe = child.stdin.take().expect("piped");
    let writer = std::thread::spawn(move || pipe.write_all(input.as_bytes()));
    let out = child.wait_with_output()?;
    let _ = writer.join();
    if !out.status.success() {
        bail!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Each node's agent generation now (0 if it does not answer).
fn generations(lab: &KubeLab) -> Vec<u64> {
    lab.nodes
        .iter()
        .map(|n| {
            crate::inspect::call(&n.socket, &palisade_agent::api::Status)
                .map(|s| s.data.generation)
                .unwrap_or(0)
        })
        .collect()
}

/// How long `lab apply`/`lab delete` wait for pods and agents.
const IN_FORCE_TIMEOUT: Duration = Duration::from_secs(120);

/// Waits until every node's agent has run a pass, asked for after the API server
/// acknowledged the write, from a source whose every watch is healthy (the pass's
/// warnings name no failing watch: after an outage a watch catches up on what it
/// missed before it counts as healthy again). Used after a deletion, which leaves no
/// resourceVersion to compare with the agents' (an apply waits for those:
/// [`crate::kube_converge`]); it is weaker: a deletion event still in flight
/// (milliseconds on this machine) when the pass reads the source is not in it, which
/// is why `lab delete` also waits for deleted policies to leave the nodes' reports.
fn wait_in_force(lab: &KubeLab, before: &[u64]) -> anyhow::Result<u64> {
    let deadline = Instant::now() + IN_FORCE_TIMEOUT;
    let mut highest = 0;
    for (node, &gen0) in lab.nodes.iter().zip(before) {
        loop {
            let s = crate::inspect::call(&node.socket, &palisade_agent::api::Sync { full: false })?;
            let failing: Vec<&String> = s
                .data
                .warnings
                .iter()
                .filter(|w| w.starts_with("watch of "))
                .collect();
            if s.generation > gen0 && failing.is_empty() {
                for e in &s.data.errors {
                    eprintln!(
                        "warning: node {}: rejected by the agent: {e}",
                        node.net.name
                    );
                }
                highest = highest.max(s.generation);
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent of node {} is not in force after {}s (generation {} from {gen0}; {failing:?})",
                    node.net.name,
                    IN_FORCE_TIMEOUT.as_secs(),
                    s.generation
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(highest)
}

/// Waits until the pods this apply names, and the replicas of the workloads it
/// names (`kubectl rollout status`), are Ready (there is nothing to wait for without
/// kubelets). Pods with static addresses outside their node's pod CIDR get a host
/// route on the router, as a secondary address on a VPC.
fn wait_pods_ready(
    lab: &KubeLab,
    cp: &PersistentControlPlane,
    applied: &[serde_json::Value],
) -> anyhow::Result<()> {
    if lab.nodes.iter().all(|n| n.kubelet.is_none()) {
        eprintln!(
            "warning: no lab kubelet runs in lab {}: pods stay Pending",
            lab.name
        );
        return Ok(());
    }
    let key = |o: &serde_json::Value| {
        format!(
            "{}/{}",
            o["metadata"]["namespace"].as_str().unwrap_or("default"),
            o["metadata"]["name"].as_str().unwrap_or_default()
        )
    };
    let named: std::collections::BTreeSet<String> = applied
        .iter()
        .filter(|o| o["kind"] == "Pod")
        .map(key)
        .collect();
    let timeout = format!("--timeout={}s", IN_FORCE_TIMEOUT.as_secs());
    for o in applied {
        let kind = o["kind"].as_str().unwrap_or_default();
        if matches!(
            kind,
            "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet"
        ) {
            let ns = o["metadata"]["namespace"].as_str().unwrap_or("default");
            let what = format!(
                "{}/{}",
                kind.to_lowercase(),
                o["metadata"]["name"].as_str().unwrap_or_default()
            );
            cp.kubectl(&["rollout", "status", "-n", ns, &what, &timeout], None)
                .with_context(|| format!("waiting for {what} in {ns}"))?;
        }
    }
    let deadline = Instant::now() + IN_FORCE_TIMEOUT;
    loop {
        let pods = cluster_pods(cp)?;
        let waiting: Vec<&str> = named
            .iter()
            .filter(|k| !pods.iter().any(|p| &p.key == *k && p.ready))
            .map(String::as_str)
            .collect();
        if waiting.is_empty() {
            route_static_ips(lab, &pods)?;
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "pods not Ready after {}s: {}",
                IN_FORCE_TIMEOUT.as_secs(),
                waiting.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A pod as the API server reports it.
#[derive(Debug, Clone)]
pub struct ClusterPod {
    /// `namespace/name`.
    pub key: String,
    /// Its node.
    pub node: Option<String>,
    /// `status.podIPs`.
    pub ips: Vec<IpAddr>,
    /// Whether its Ready condition is True.
    pub ready: bool,
    /// `spec.hostNetwork`.
    pub host_network: bool,
}

/// Every pod outside kube-system.
pub fn cluster_pods(cp: &PersistentControlPlane) -> anyhow::Result<Vec<ClusterPod>> {
    let out = cp.kubectl(&["get", "pods", "-A", "-o", "json"], None)?;
    let v: serde_json::Value = serde_json::from_str(&out).context("kubectl get pods")?;
    let mut pods = Vec::new();
    for p in v["items"].as_array().into_iter().flatten() {
        let ns = p["metadata"]["namespace"].as_str().unwrap_or_default();
        if ns == "kube-system" && p["metadata"]["annotations"][IPS_ANNOTATION].is_null() {
            continue;
        }
        let ips = p["status"]["podIPs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["ip"].as_str()?.parse().ok())
            .collect();
        let ready = p["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        });
        pods.push(ClusterPod {
            key: format!(
                "{ns}/{}",
                p["metadata"]["name"].as_str().unwrap_or_default()
            ),
            node: p["spec"]["nodeName"].as_str().map(str::to_string),
            ips,
            ready,
            host_network: p["spec"]["hostNetwork"].as_bool().unwrap_or(false),
        });
    }
    Ok(pods)
}

/// Host routes on the router for pod addresses outside their node's pod CIDRs.
fn route_static_ips(lab: &KubeLab, pods: &[ClusterPod]) -> anyhow::Result<()> {
    for p in pods.iter().filter(|p| !p.host_network) {
        let Some(node) = lab
            .nodes
            .iter()
            .find(|n| Some(&n.net.name) == p.node.as_ref())
        else {
            continue;
        };
        for ip in &p.ips {
            let inside = node
                .net
                .pod_cidrs
                .iter()
                .any(|c| c.parse::<ipnet::IpNet>().is_ok_and(|net| net.contains(ip)));
            if inside {
                continue;
            }
            let via = node
                .net
                .ips
                .iter()
                .find(|a| a.is_ipv4() == ip.is_ipv4())
                .context("node address of the pod's family")?;
            let prefix = if ip.is_ipv4() { 32 } else { 128 };
            let out = Command::new("ip")
                .args(["-n", &lab.topology.router, "route", "replace"])
                .arg(format!("{ip}/{prefix}"))
                .args(["via", &via.to_string()])
                .output()?;
            if !out.status.success() {
                bail!(
                    "routing {ip} of pod {} to node {}: {}",
                    p.key,
                    node.net.name,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
    }
    Ok(())
}

/// Every pod the lab's kubelets run, as probe endpoints: its namespace (the node's
/// for a host-network pod) and addresses, from the kubelet's records.
pub(crate) fn endpoints(lab: &KubeLab) -> anyhow::Result<Vec<palisade_lab::probe::Endpoint>> {
    let mut out = Vec::new();
    for node in &lab.nodes {
        let dir = node.dir.join("kubelet");
        if !dir.join("pods").exists() {
            continue;
        }
        let state = palisade_kubelet::records::StateDir::open(&dir)?;
        for rec in state.load_all()? {
            let rec = rec?;
            if rec.ips.is_empty() {
                continue;
            }
            out.push(palisade_lab::probe::Endpoint {
                key: rec.key(),
                netns: rec.netns.clone().unwrap_or_else(|| node.net.netns.clone()),
                ips: rec.ips.clone(),
            });
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// `lab probe` against the cluster: every ordered pair of the pods the kubelets run
/// (across nodes too), probed for real from the source pod's namespace.
pub fn probe(
    name: &str,
    protocol: palisade_policy::model::Protocol,
    port: u16,
    opts: palisade_lab::probe::ProbeOptions,
) -> anyhow::Result<crate::simulate::Matrix> {
    let lab = open(name)?;
    let report = palisade_lab::probe::probe_all(&endpoints(&lab)?, port, protocol, opts);
    serde_json::from_value(serde_json::to_value(&report)?).context("decoding the probe report")
}

/// The kinds the simulator is fed from the API server (the agent's watched kinds;
/// the network-policy-api and Calico ones only when their CRDs are served; the lab
/// serves Calico's projectcalico.org/v3 as the chart does, never its storage group).
const SIMULATED_KINDS: &str = "namespaces,nodes,pods,services,endpointslices.discovery.k8s.io,networkpolicies.networking.k8s.io";
const CRD_KINDS: &[&str] = &[
    "clusternetworkpolicies.policy.networking.k8s.io",
    "adminnetworkpolicies.policy.networking.k8s.io",
    "baselineadminnetworkpolicies.policy.networking.k8s.io",
    "networkpolicies.projectcalico.org",
    "globalnetworkpolicies.projectcalico.org",
    "networksets.projectcalico.org",
    "globalnetworksets.projectcalico.org",
];

/// What the decoder needs of an object read back from the API server, as the
/// agent's Kubernetes source trims it: no managed fields, and of the status only the
/// addresses (a Pod's podIPs/hostIPs, a Node's addresses).
fn trimmed(mut v: serde_json::Value) -> serde_json::Value {
    let keep: &[&str] = match v["kind"].as_str() {
        Some("Pod") => &["podIP", "podIPs", "hostIP", "hostIPs"],
        Some("Node") => &["addresses"],
        _ => &[],
    };
    if let Some(meta) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        meta.remove("managedFields");
    }
    if let Some(obj) = v.as_object_mut() {
        match obj.get_mut("status").and_then(|s| s.as_object_mut()) {
            Some(status) if !keep.is_empty() => status.retain(|k, _| keep.contains(&k.as_str())),
            _ => {
                obj.remove("status");
            }
        }
    }
    v
}

/// The cluster as the API server holds it, decoded as the agents decode it; only
/// the pods the kubelets run (those the probe sees).
pub fn cluster_from_api(name: &str) -> anyhow::Result<palisade_policy::model::Cluster> {
    let lab = open(name)?;
    let cp = lab.control_plane()?;
    let mut kinds = vec![SIMULATED_KINDS.to_string()];
    let served = cp.kubectl(&["api-resources", "-o", "name"], None)?;
    kinds.extend(
        CRD_KINDS
            .iter()
            .filter(|k| served.lines().any(|l| l.trim() == **k))
            .map(|k| k.to_string()),
    );
    let out = cp.kubectl(&["get", &kinds.join(","), "-A", "-o", "json"], None)?;
    let list: serde_json::Value = serde_json::from_str(&out).context("kubectl get")?;
    let items: Vec<serde_json::Value> = list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(trimmed)
        .collect();
    let text = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string();
    let loaded = palisade_policy::manifest::load(&[("api-server".to_string(), text)]);
    for e in &loaded.errors {
        eprintln!("warning: the API server holds an object the agents reject: {e}");
    }
    let mut cluster = loaded.cluster;
    let running: std::collections::BTreeSet<String> =
        endpoints(&lab)?.into_iter().map(|e| e.key).collect();
    cluster.pods.retain(|k, _| running.contains(k));
    Ok(cluster)
}

/// The policy kinds whose version each agent reports in its NodePolicyStatus.
const POLICY_KINDS: &[&str] = &[
    "NetworkPolicy",
    "ClusterNetworkPolicy",
    "AdminNetworkPolicy",
    "BaselineAdminNetworkPolicy",
];

/// How the agents report a policy object of `o`'s kind and how kubectl names its
/// resource: `(reported kind, kubectl resource, namespaced)`. Calico's policies are
/// reported as `NetworkPolicy.projectcalico.org` (their kind alone would be taken for
/// networking.k8s.io's).
fn reported_policy(o: &serde_json::Value) -> Option<(String, String, bool)> {
    let kind = o["kind"].as_str().unwrap_or_default();
    let group = o["apiVersion"]
        .as_str()
        .unwrap_or_default()
        .rsplit_once('/')
        .map_or("", |(g, _)| g);
    if matches!(group, "projectcalico.org" | "crd.projectcalico.org") {
        let namespaced = match kind {
            "NetworkPolicy" => true,
            "GlobalNetworkPolicy" => false,
            _ => return None,
        };
        return Some((
            format!("{kind}.projectcalico.org"),
            format!("{}ies.{group}", kind.to_lowercase().trim_end_matches('y')),
            namespaced,
        ));
    }
    POLICY_KINDS.contains(&kind).then(|| {
        (
            kind.to_string(),
            kind.to_lowercase(),
            kind == "NetworkPolicy",
        )
    })
}

/// Waits until every node's NodePolicyStatus (written by its agent after a pass,
/// `palisade_crds`) reports each policy of `objs` in force at the uid and generation
/// the API server now holds, or rejected at that version (said as a warning), or,
/// with `deleted`, no longer reports it: the policies' own versions, observed.
fn wait_policies_reported(
    lab: &KubeLab,
    cp: &PersistentControlPlane,
    objs: &[serde_json::Value],
    deleted: bool,
) -> anyhow::Result<()> {
    let mut wanted = Vec::new();
    for (o, (kind, resource, namespaced)) in
        objs.iter().filter_map(|o| Some((o, reported_policy(o)?)))
    {
        let name = o["metadata"]["name"].as_str().unwrap_or_default();
        let ns = namespaced.then(|| {
            o["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string()
        });
        let key = match &ns {
            Some(ns) => format!("{kind}/{ns}/{name}"),
            None => format!("{kind}/{name}"),
        };
        let version = if deleted {
            None
        } else {
            let mut args = vec![
                "get".to_string(),
                format!("{resource}/{name}"),
                "-o".into(),
                "json".into(),
            ];
            if let Some(ns) = &ns {
                args.extend(["-n".to_string(), ns.clone()]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let v: serde_json::Value = serde_json::from_str(&cp.kubectl(&args, None)?)?;
            Some((
                v["metadata"]["uid"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                v["metadata"]["generation"].as_i64().unwrap_or(0),
            ))
        };
        wanted.push((key, version));
    }
    if wanted.is_empty() {
        return Ok(());
    }
    let deadline = Instant::now() + IN_FORCE_TIMEOUT;
    loop {
        let v: serde_json::Value = serde_json::from_str(&cp.kubectl(
            &["get", "nodepolicystatuses.palisade.io", "-o", "json"],
            None,
        )?)?;
        let reports: std::collections::BTreeMap<String, &serde_json::Value> = v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| Some((i["metadata"]["name"].as_str()?.to_string(), &i["spec"])))
            .collect();
        let mut pending = Vec::new();
        for node in &lab.nodes {
            let Some(spec) = reports.get(&node.net.name) else {
                pending.push(format!("{}: no NodePolicyStatus yet", node.net.name));
                continue;
            };
            for (key, version) in &wanted {
                let held = &spec["policies"][key];
                let ok = match version {
                    None => held.is_null(),
                    Some((uid, generation)) => {
                        let in_force = held["uid"] == uid.as_str()
                            && held["generation"].as_i64().unwrap_or(0) >= *generation;
                        let rejected =
                            spec["errors"].as_array().into_iter().flatten().any(|e| {
                                format!(
                                    "{}/{}",
                                    e["object"]["kind"].as_str().unwrap_or_default(),
                                    match e["object"]["namespace"].as_str() {
                                        Some(ns) => format!(
                                            "{ns}/{}",
                                            e["object"]["name"].as_str().unwrap_or_default()
                                        ),
                                        None => e["object"]["name"]
                                            .as_str()
                                            .unwrap_or_default()
                                            .to_string(),
                                    }
                                ) == *key
                            });
                        in_force || rejected
                    }
                };
                if !ok {
                    pending.push(format!("{}: {key}", node.net.name));
                }
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "not reported in force after {}s: {}",
                IN_FORCE_TIMEOUT.as_secs(),
                pending.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
