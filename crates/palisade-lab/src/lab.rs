//! The lab itself: a node namespace, pods as namespaces wired by CNI, a server in
//! each pod, and state on disk so the whole survives across CLI invocations.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use palisade_policy::model::{Pod, Protocol};
use serde_json::{json, Value};

use crate::addressing::{AddressPlan, AddressingError};
use crate::cni::{Attachment, CniRunError, CniRuntime, NetworkList, DEFAULT_PLUGIN_DIR};
use crate::netns::{NetNs, NetNsError};
use crate::probe::{probe_all, Endpoint, ProbeOptions, ProbeReport};
use crate::server::{self, ServerCommand, ServerError};
use crate::state::{LabState, PodRecord, StateError, DEFAULT_STATE_ROOT};

/// The network name given to every plugin (host-local keys its store by it).
pub const NETWORK_NAME: &str = "palisade-lab";
/// The pod-side interface name.
pub const POD_IFNAME: &str = "eth0";
/// The spec version the lab speaks to plugins.
pub const LAB_CNI_VERSION: &str = "1.0.0";

/// Sysctls set in the node namespace (never in the root one), with why:
pub const NODE_SYSCTLS: &[(&str, &str)] = &[
    // Route between pods; ptp sets these too, but the lab does not rely on it.
    ("net/ipv4/ip_forward", "1"),
    ("net/ipv6/conf/all/forwarding", "1"),
    // The gateway address sits on every host veth; skip duplicate address detection
    // so it is usable at once instead of after ~1 s of "tentative".
    ("net/ipv6/conf/default/accept_dad", "0"),
    ("net/ipv6/conf/all/accept_dad", "0"),
];

/// Sysctls set in each pod namespace, with why:
pub const POD_SYSCTLS: &[(&str, &str)] = &[
    // Addresses usable immediately (no DAD wait).
    ("net/ipv6/conf/default/accept_dad", "0"),
    ("net/ipv6/conf/all/accept_dad", "0"),
    // Probes rely on ICMP errors (UDP port / SCTP protocol unreachable); the default
    // per-destination rate limit (burst 6, then 1/s) would turn answers into timeouts.
    ("net/ipv4/icmp_ratelimit", "0"),
    ("net/ipv6/icmp/ratelimit", "0"),
];

/// The chained-plugin entry for `palisade-cni`, to put in [`LabConfig::chain`]:
/// pods are registered with the agent listening on `agent_socket`, and `ADD` fails
/// (the pod is not created) unless the agent confirms within `timeout_ms`.
pub fn palisade_cni_plugin(agent_socket: &Path, timeout_ms: u64) -> Value {
    json!({
        "type": "palisade-cni",
        "agentSocket": agent_socket,
        "timeoutMs": timeout_ms,
        "failPolicy": "closed",
    })
}

/// Lab errors. A `Cni` error with code 11 (agent not ready) is retryable; the others
/// describe a conflict or a broken machine.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A lab by that name already has state.
    #[error("lab {name} already exists (state in {dir})")]
    Exists {
        /// The lab.
        name: String,
        /// Its state directory.
        dir: PathBuf,
    },
    /// A pod with that key is already in the lab.
    #[error("pod {0} is already in the lab")]
    DuplicatePod(String),
    /// No pod with that key.
    #[error("pod {0} is not in the lab")]
    NoSuchPod(String),
    /// Attaching a pod failed.
    #[error("attaching pod {pod}")]
    Cni {
        /// The pod.
        pod: String,
        /// The cause.
        #[source]
        source: Box<CniRunError>,
    },
    /// Starting a pod's server failed.
    #[error("serving pod {pod}")]
    Server {
        /// The pod.
        pod: String,
        /// The cause.
        #[source]
        source: ServerError,
    },
    /// Namespaces.
    #[error(transparent)]
    NetNs(#[from] NetNsError),
    /// Addresses.
    #[error(transparent)]
    Addressing(#[from] AddressingError),
    /// State file.
    #[error(transparent)]
    State(#[from] StateError),
}

/// How to build a lab.
#[derive(Debug, Clone, PartialEq)]
pub struct LabConfig {
    /// Lab name: namespaces are `<name>-node` and `<name>-p<N>`. Keep it short and
    /// unique (tests use a prefix plus their PID).
    pub name: String,
    /// Where state lives; default `/run/palisade-lab/<name>`.
    pub state_dir: PathBuf,
    /// Where CNI plugins are looked up, in order (`palisade-cni` may live elsewhere).
    pub plugin_dirs: Vec<PathBuf>,
    /// Plugin configurations chained after ptp (e.g. `{"type":"palisade-cni", ...}`).
    pub chain: Vec<Value>,
    /// How to start pod servers; `None` starts none.
    pub server: Option<ServerCommand>,
    /// Subnets for dynamic addresses.
    pub addressing: AddressPlan,
}

impl LabConfig {
    /// Defaults for a lab called `name`: state under `/run/palisade-lab`, plugins from
    /// `/usr/lib/cni`, no chained plugin, servers from `palisade-lab-serve` next to
    /// the running binary if there is one.
    pub fn new(name: &str) -> LabConfig {
        LabConfig {
            name: name.to_owned(),
            state_dir: Path::new(DEFAULT_STATE_ROOT).join(name),
            plugin_dirs: vec![PathBuf::from(DEFAULT_PLUGIN_DIR)],
            chain: Vec::new(),
            server: ServerCommand::sibling(),
            addressing: AddressPlan::default(),
        }
    }
}

/// A running lab. Dropping an *armed* lab (one made by [`Lab::create`] or
/// [`Lab::up`] and not [`Lab::persist`]ed) tears it down, even during a panic; a lab
/// from [`Lab::load`] is not armed. [`Lab::down`] tears down explicitly.
#[derive(Debug)]
pub struct Lab {
    state: LabState,
    server: Option<ServerCommand>,
    chain: Vec<Value>,
    next_pod: usize,
    armed: bool,
}

impl Lab {
    /// Creates the node namespace and an empty lab.
    pub fn create(config: LabConfig) -> Result<Lab, LabError> {
        if LabState::file(&config.state_dir).exists() {
            return Err(LabError::Exists {
                name: config.name,
                dir: config.state_dir,
            });
        }
        let node_name = format!("{}-node", config.name);
        let node = NetNs::create(&node_name)?;
        for (k, v) in NODE_SYSCTLS {
            node.sysctl(k, v)?;
        }
        let state = LabState {
            name: config.name.clone(),
            state_dir: config.state_dir.clone(),
            node_netns: node.persist(),
            cni: CniRuntime {
                plugin_dirs: config.plugin_dirs.clone(),
                node_netns: node_name,
            },
            addressing: config.addressing.clone(),
            pods: Vec::new(),
            agent: None,
            processes: Vec::new(),
            pin_paths: Vec::new(),
        };
        // From here on, dropping `lab` removes the node namespace again.
        let lab = Lab {
            state,
            server: config.server,
            chain: config.chain,
            next_pod: 0,
            armed: true,
        };
        lab.state.save()?;
        Ok(lab)
    }

    /// Creates a lab and adds `pods` (host-network pods in the node namespace, see
    /// [`Lab::add_pod`]).
    pub fn up(config: LabConfig, pods: &[Pod]) -> Result<Lab, LabError> {
        let mut lab = Lab::create(config)?;
        // Reserve every static address up front so gateways avoid all of them.
        let all: BTreeSet<IpAddr> = pods
            .iter()
            .filter(|p| !p.host_network)
            .flat_map(|p| p.ips.iter().copied())
            .collect();
        for pod in pods {
            lab.add_pod_avoiding(pod, &all)?;
        }
        Ok(lab)
    }

    /// Reopens a lab from its state directory (not armed: dropping it changes nothing).
    /// Pods added later get no server unless [`Lab::set_server`] is called.
    pub fn load(state_dir: &Path) -> Result<Lab, LabError> {
        let state = LabState::load(state_dir)?;
        let next_pod = state.pods.len();
        Ok(Lab {
            state,
            server: None,
            chain: Vec::new(),
            next_pod,
            armed: false,
        })
    }

    /// Sets how servers are started for pods added from now on.
    pub fn set_server(&mut self, server: Option<ServerCommand>) {
        self.server = server;
    }

    /// Sets the plugins chained after ptp for pods added from now on.
    pub fn set_chain(&mut self, chain: Vec<Value>) {
        self.chain = chain;
    }

    /// The recorded state.
    pub fn state(&self) -> &LabState {
        &self.state
    }

    /// Mutable state, for recording the agent, pins or other processes; call
    /// [`Lab::save`] after.
    pub fn state_mut(&mut self) -> &mut LabState {
        &mut self.state
    }

    /// Writes the state file.
    pub fn save(&self) -> Result<(), LabError> {
        Ok(self.state.save()?)
    }

    /// The node namespace.
    pub fn node(&self) -> NetNs {
        NetNs::open(&self.state.node_netns)
    }

    /// Adds one pod: namespace, CNI `ADD` through the chain, server. A host-network
    /// pod gets no namespace and no CNI: its server runs in the node namespace, at
    /// its addresses (its node's, see [`palisade_policy::model::Cluster`]'s loader),
    /// which are put on the node namespace's loopback so they are local there.
    pub fn add_pod(&mut self, pod: &Pod) -> Result<&PodRecord, LabError> {
        self.add_pod_avoiding(pod, &BTreeSet::new())
    }

    fn add_pod_avoiding(
        &mut self,
        pod: &Pod,
        also_taken: &BTreeSet<IpAddr>,
    ) -> Result<&PodRecord, LabError> {
        let key = pod.key();
        if self.state.pod(&key).is_some() {
            return Err(LabError::DuplicatePod(key));
        }
        if pod.host_network {
            return self.add_host_network_pod(pod);
        }
        // Skip indices whose namespace exists (another pod removed, or leftovers).
        let (ns_name, index) = loop {
            let i = self.next_pod;
            self.next_pod += 1;
            let n = format!("{}-p{i}", self.state.name);
            if !NetNs::open(&n).exists() {
                break (n, i);
            }
        };
        let ns = NetNs::create(&ns_name)?;
        for (k, v) in POD_SYSCTLS {
            ns.sysctl(k, v)?;
        }
        let mut taken: BTreeSet<IpAddr> = self
            .state
            .pods
            .iter()
            .flat_map(|p| p.ips.iter().copied())
            .collect();
        taken.extend(also_taken);
        taken.extend(pod.ips.iter().copied());
        let ipam_dir = self.state.state_dir.join("ipam");
        let ipam = if pod.ips.is_empty() {
            self.state.addressing.host_local_ipam(&ipam_dir, &taken)?
        } else {
            self.state.addressing.static_ipam(&pod.ips, &taken)?
        };
        self.state
            .addressing
            .reserve(&ipam_dir, NETWORK_NAME, &taken)?;
        let mut plugins = vec![json!({"type": "ptp", "ipMasq": false, "ipam": ipam})];
        plugins.extend(self.chain.iter().cloned());
        let network = NetworkList {
            cni_version: LAB_CNI_VERSION.into(),
            name: NETWORK_NAME.into(),
            plugins,
        };
        let attachment = Attachment {
            container_id: format!("{}-{index}", self.state.name),
            netns: ns.path(),
            ifname: POD_IFNAME.into(),
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAMESPACE".into(), pod.namespace.clone()),
                ("K8S_POD_NAME".into(), pod.name.clone()),
                (
                    "K8S_POD_INFRA_CONTAINER_ID".into(),
                    format!("{}-{index}", self.state.name),
                ),
            ],
        };
        let outcome = self
            .state
            .cni
            .add(&network, &attachment)
            .map_err(|source| LabError::Cni {
                pod: key.clone(),
                source: Box::new(source),
            })?;
        let host_ifname = outcome
            .result
            .host_interface(POD_IFNAME)
            .map(|i| i.name.clone())
            .unwrap_or_default();
        // The chain's result names the pod's addresses; one that does not parse is an
        // error of the last plugin, never skipped.
        let ips = outcome
            .result
            .container_ips(POD_IFNAME)
            .map_err(|error| LabError::Cni {
                pod: key.clone(),
                source: Box::new(CniRunError::Plugin {
                    plugin: "chain result".into(),
                    command: "ADD",
                    error,
                }),
            })?;
        let record = PodRecord {
            key: key.clone(),
            netns: ns.persist(),
            ifname: POD_IFNAME.into(),
            host_ifname,
            ips,
            ports: pod.ports.clone(),
            attachment,
            network,
            cni_result: outcome.raw,
            server: None,
        };
        self.state.pods.push(record);
        self.state.save()?;
        if let Some(cmd) = &self.server {
            let rec = self.state.pods.last().expect("just pushed");
            let log = self.state.state_dir.join(format!("{}.log", rec.netns));
            let proc = server::spawn(cmd, &NetNs::open(&rec.netns), &key, &rec.ports, &log)
                .map_err(|source| LabError::Server {
                    pod: key.clone(),
                    source,
                })?;
            self.state.pods.last_mut().expect("just pushed").server = Some(proc);
            self.state.save()?;
        }
        Ok(self.state.pods.last().expect("just pushed"))
    }

    fn add_host_network_pod(&mut self, pod: &Pod) -> Result<&PodRecord, LabError> {
        let key = pod.key();
        let node = self.node();
        for ip in &pod.ips {
            add_local_address(&node, *ip)?;
        }
        let record = PodRecord {
            key: key.clone(),
            netns: self.state.node_netns.clone(),
            ifname: String::new(),
            host_ifname: String::new(),
            ips: pod.ips.clone(),
            ports: pod.ports.clone(),
            attachment: Attachment {
                container_id: String::new(),
                netns: node.path(),
                ifname: String::new(),
                args: Vec::new(),
            },
            // No plugin ran, so `DEL` (in teardown too) runs none.
            network: NetworkList {
                cni_version: LAB_CNI_VERSION.into(),
                name: NETWORK_NAME.into(),
                plugins: Vec::new(),
            },
            cni_result: Value::Null,
            server: None,
        };
        self.state.pods.push(record);
        self.state.save()?;
        if let Some(cmd) = &self.server {
            let log = self
                .state
                .state_dir
                .join(format!("host-{}.log", key.replace('/', "-")));
            // Bound to its own addresses: host-network pods of other nodes share this
            // namespace and may declare the same ports.
            let proc = server::spawn_on(cmd, &node, &key, &pod.ports, &pod.ips, &log).map_err(
                |source| LabError::Server {
                    pod: key.clone(),
                    source,
                },
            )?;
            self.state.pods.last_mut().expect("just pushed").server = Some(proc);
            self.state.save()?;
        }
        Ok(self.state.pods.last().expect("just pushed"))
    }

    /// Removes one pod: CNI `DEL`, stops its server, deletes its namespace.
    pub fn remove_pod(&mut self, key: &str) -> Result<(), LabError> {
        let idx = self
            .state
            .pods
            .iter()
            .position(|p| p.key == key)
            .ok_or_else(|| LabError::NoSuchPod(key.into()))?;
        let pod = self.state.pods.remove(idx);
        let del = self
            .state
            .cni
            .del(&pod.network, &pod.attachment, Some(&pod.cni_result));
        if let Some(s) = &pod.server {
            s.stop();
        }
        // A host-network pod lives in the node namespace, which stays.
        if pod.netns != self.state.node_netns {
            NetNs::delete(&pod.netns)?;
        }
        self.state.save()?;
        del.map_err(|source| LabError::Cni {
            pod: key.into(),
            source: Box::new(source),
        })
    }

    /// CNI `CHECK` of one pod through the whole chain with its cached result: ptp
    /// verifies interfaces, addresses and routes; palisade-cni asks the agent whether
    /// the pod's policy is in force.
    pub fn check_pod(&self, key: &str) -> Result<(), LabError> {
        let pod = self
            .state
            .pod(key)
            .ok_or_else(|| LabError::NoSuchPod(key.into()))?;
        self.state
            .cni
            .check(&pod.network, &pod.attachment, &pod.cni_result)
            .map_err(|source| LabError::Cni {
                pod: key.into(),
                source: Box::new(source),
            })
    }

    /// The pods as probe endpoints.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.state
            .pods
            .iter()
            .map(|p| Endpoint {
                key: p.key.clone(),
                netns: p.netns.clone(),
                ips: p.ips.clone(),
            })
            .collect()
    }

    /// Probes every pair of pods on `port`/`protocol`.
    pub fn probe(&self, port: u16, protocol: Protocol, opts: ProbeOptions) -> ProbeReport {
        probe_all(&self.endpoints(), port, protocol, opts)
    }

    /// Keeps everything running after this value is dropped; returns the state (also
    /// on disk) for a later [`Lab::load`].
    pub fn persist(mut self) -> LabState {
        self.armed = false;
        self.state.clone()
    }

    /// Tears the lab down now (see [`LabState::teardown`]); returns problems met.
    pub fn down(mut self) -> Vec<String> {
        self.armed = false;
        self.state.teardown()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.armed {
            for p in self.state.teardown() {
                eprintln!("palisade-lab: teardown: {p}");
            }
        }
    }
}

/// Puts `ip` (as a /32 or /128) on the loopback of `ns` unless it is there already,
/// so servers bound to the wildcard answer at it and probes can use it as source.
fn add_local_address(ns: &NetNs, ip: IpAddr) -> Result<(), LabError> {
    let prefix = if ip.is_ipv4() { 32 } else { 128 };
    let out = std::process::Command::new("ip")
        .args(["-n", ns.name(), "addr", "replace"])
        .arg(format!("{ip}/{prefix}"))
        .args(["dev", "lo"])
        .output()
        .map_err(|source| NetNsError::Io {
            name: ns.name().to_owned(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LabError::NetNs(NetNsError::Ip {
            op: "addr replace",
            name: ns.name().to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        }))
    }
}
