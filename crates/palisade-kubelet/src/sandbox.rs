//! Making and unmaking one pod on the node: its network namespace, CNI `ADD`/`DEL`
//! through ptp (+ host-local or static IPAM) and the chained plugins, its sender and
//! its server. Blocking code (processes, `setns`); the kubelet runs it on a blocking
//! thread.
//!
//! Order of [`Node::create`], as a container runtime would: namespace, `ADD`, then at
//! once the sender (the pod's "container" starts the instant its network exists, so
//! its first packet tests whether policy was in force at `ADD`), then the server on
//! the container ports, waiting for its ready line. Any failure undoes every step
//! made so far (CNI `DEL`, namespace deleted, record removed): no half-made pod stays.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;

use ipnet::IpNet;
use palisade_lab::addressing::AddressPlan;
use palisade_lab::cni::{Attachment, CniRunError, CniRuntime, NetworkList};
use palisade_lab::lab::{LAB_CNI_VERSION, POD_IFNAME, POD_SYSCTLS};
use palisade_lab::netns::NetNs;
use palisade_lab::server::ServerCommand;
use serde_json::json;

use crate::config::Config;
use crate::podspec::PodPlan;
use crate::records::{now_ms, write_atomic, PodRecord, RecordError, StateDir};

/// The network name given to every plugin; host-local keys its store by it.
pub const NETWORK_NAME: &str = "palisade-lab-kubelet";
/// What [`AddressPlan::reserve`] writes into host-local's store for a static address.
const RESERVED_MARK: &str = "palisade-lab-reserved";

/// Making a pod failed at `step`. [`SandboxError::retryable`] says whether trying again
/// later can help (every failure is retried with backoff; this only shapes the message).
#[derive(Debug, thiserror::Error)]
#[error("pod {pod}: {step}: {message}")]
pub struct SandboxError {
    /// `namespace/name`.
    pub pod: String,
    /// What was being done.
    pub step: &'static str,
    /// The error and its causes.
    pub message: String,
    /// A CNI plugin reported "try again later" (code 11: palisade-cni when the agent
    /// is not ready).
    pub retryable: bool,
}

/// The error and its causes on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// The node side of the kubelet: configuration, state directory and address plan.
#[derive(Debug)]
pub struct Node {
    cfg: Config,
    state: StateDir,
    addressing: Mutex<AddressPlan>,
}

impl Node {
    /// Opens the state directory and the address plan (gateways remembered there;
    /// the pod CIDRs' first host addresses otherwise).
    pub fn open(cfg: Config) -> Result<Node, RecordError> {
        let state = StateDir::open(&cfg.state_dir)?;
        let file = state.addressing_file();
        let subnet_v4 = cfg
            .pod_cidrs
            .iter()
            .find_map(|c| match c {
                IpNet::V4(v4) => Some(*v4),
                IpNet::V6(_) => None,
            })
            .expect("config checks one IPv4 pod CIDR");
        let subnet_v6 = cfg.pod_cidrs.iter().find_map(|c| match c {
            IpNet::V6(v6) => Some(*v6),
            IpNet::V4(_) => None,
        });
        let mut plan = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice::<AddressPlan>(&bytes).map_err(|source| {
                RecordError::Corrupt {
                    path: file.clone(),
                    source,
                }
            })?,
            Err(_) => AddressPlan {
                subnet_v4,
                subnet_v6,
                gateways: Default::default(),
            },
        };
        // The CIDRs are the command line's; gateways chosen before stay.
        plan.subnet_v4 = subnet_v4;
        plan.subnet_v6 = subnet_v6;
        let node = Node {
            cfg,
            state,
            addressing: Mutex::new(plan),
        };
        Ok(node)
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The state directory.
    pub fn state(&self) -> &StateDir {
        &self.state
    }

    fn cni(&self) -> CniRuntime {
        CniRuntime {
            plugin_dirs: self.cfg.cni_bin_dirs.clone(),
            node_netns: self.cfg.node_netns.clone(),
        }
    }

    fn server(&self) -> ServerCommand {
        ServerCommand {
            program: self.cfg.server.clone(),
            args: self.cfg.server_args.clone(),
        }
    }

    /// The namespace name of a pod: node name and uid prefix, unique per node and pod.
    pub fn netns_name(&self, uid: &str) -> String {
        let short: String = uid.chars().filter(|c| *c != '-').take(12).collect();
        format!("{}-{short}", self.cfg.node_name)
    }

    /// Makes the pod (see the module docs). `known` are the records of the node's
    /// other pods (their static addresses must not become gateways).
    pub fn create(&self, plan: &PodPlan, known: &[PodRecord]) -> Result<PodRecord, SandboxError> {
        let key = plan.key();
        let fail = |step: &'static str, e: &dyn std::error::Error| SandboxError {
            pod: key.clone(),
            step,
            message: chain(e),
            retryable: false,
        };
        let mut rec = PodRecord {
            uid: plan.uid.clone(),
            namespace: plan.namespace.clone(),
            name: plan.name.clone(),
            netns: None,
            cni: self.cni(),
            network: None,
            attachment: None,
            cni_result: None,
            ips: Vec::new(),
            reserved: Vec::new(),
            sender: None,
            server: None,
            timeline: Default::default(),
        };
        if plan.host_network {
            rec.ips = self.cfg.node_ips.clone();
            rec.timeline.network_ready_ms = Some(now_ms());
            self.state.save(&rec).map_err(|e| fail("recording", &e))?;
            let ns = NetNs::open(&self.cfg.node_netns);
            if let Err(e) = self.start_processes(plan, &mut rec, &ns, &plan.uid) {
                self.destroy(&rec);
                return Err(e);
            }
            return Ok(rec);
        }

        let ns_name = self.netns_name(&plan.uid);
        // A namespace by this name without a record is a leftover of a kubelet killed
        // between creating it and recording it: ours, by its name.
        NetNs::delete(&ns_name).map_err(|e| fail("removing a leftover namespace", &e))?;
        rec.netns = Some(ns_name.clone());
        self.state.save(&rec).map_err(|e| fail("recording", &e))?;
        match self.attach(plan, &mut rec, &ns_name, known) {
            Ok(()) => Ok(rec),
            Err(e) => {
                self.destroy(&rec);
                Err(e)
            }
        }
    }

    fn attach(
        &self,
        plan: &PodPlan,
        rec: &mut PodRecord,
        ns_name: &str,
        known: &[PodRecord],
    ) -> Result<(), SandboxError> {
        let key = plan.key();
        let fail = |step: &'static str, e: &dyn std::error::Error| SandboxError {
            pod: key.clone(),
            step,
            message: chain(e),
            retryable: false,
        };
        let ns = NetNs::create(ns_name).map_err(|e| fail("creating the namespace", &e))?;
        for (k, v) in POD_SYSCTLS {
            ns.sysctl(k, v).map_err(|e| fail("setting sysctls", &e))?;
        }
        let mut taken: BTreeSet<IpAddr> = known
            .iter()
            .filter(|r| r.netns.is_some())
            .flat_map(|r| r.ips.iter().copied())
            .collect();
        taken.extend(plan.static_ips.iter().copied());
        let ipam = {
            let mut addressing = self.addressing.lock().expect("not poisoned");
            let ipam = if plan.static_ips.is_empty() {
                addressing.host_local_ipam(&self.state.ipam_dir(), &taken)
            } else {
                addressing.static_ipam(&plan.static_ips, &taken)
            }
            .map_err(|e| fail("choosing addresses", &e))?;
            let reserve: BTreeSet<IpAddr> = plan.static_ips.iter().copied().collect();
            addressing
                .reserve(&self.state.ipam_dir(), NETWORK_NAME, &reserve)
                .map_err(|e| fail("reserving static addresses", &e))?;
            rec.reserved = plan.static_ips.clone();
            write_atomic(
                &self.state.addressing_file(),
                &serde_json::to_vec_pretty(&*addressing).expect("serializes"),
            )
            .map_err(|e| fail("recording gateways", &e))?;
            ipam
        };
        let mut plugins = vec![json!({"type": "ptp", "ipMasq": false, "ipam": ipam})];
        match &self.cfg.cni_conf_dir {
            Some(dir) => plugins.extend(
                crate::config::chain_from_conf_dir(dir)
                    .map_err(|e| fail("reading the node's CNI configuration", &e))?,
            ),
            None => plugins.extend(self.cfg.chain.iter().cloned()),
        }
        let network = NetworkList {
            cni_version: LAB_CNI_VERSION.into(),
            name: NETWORK_NAME.into(),
            plugins,
        };
        let container_id = format!("palisade-{}", plan.uid);
        let attachment = Attachment {
            container_id: container_id.clone(),
            netns: ns.path(),
            ifname: POD_IFNAME.into(),
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAMESPACE".into(), plan.namespace.clone()),
                ("K8S_POD_NAME".into(), plan.name.clone()),
                ("K8S_POD_INFRA_CONTAINER_ID".into(), container_id),
                ("K8S_POD_UID".into(), plan.uid.clone()),
            ],
        };
        rec.network = Some(network.clone());
        rec.attachment = Some(attachment.clone());
        self.state.save(rec).map_err(|e| fail("recording", &e))?;
        let outcome = self.cni().add(&network, &attachment).map_err(|e| {
            let retryable = matches!(&e, CniRunError::Plugin { error, .. } if error.code == 11);
            SandboxError {
                retryable,
                ..fail("CNI ADD", &e)
            }
        })?;
        rec.timeline.network_ready_ms = Some(now_ms());
        rec.cni_result = Some(outcome.raw);
        rec.ips = outcome
            .result
            .container_ips(POD_IFNAME)
            .map_err(|e| fail("reading the CNI result", &e))?;
        self.start_processes(plan, rec, &ns, ns_name)?;
        ns.persist();
        Ok(())
    }

    /// Sender first (not waited for), then the server (waited for), each recorded.
    fn start_processes(
        &self,
        plan: &PodPlan,
        rec: &mut PodRecord,
        ns: &NetNs,
        log_stem: &str,
    ) -> Result<(), SandboxError> {
        let key = rec.key();
        let fail = |step: &'static str, e: &dyn std::error::Error| SandboxError {
            pod: key.clone(),
            step,
            message: chain(e),
            retryable: false,
        };
        let log = self.state.log(log_stem);
        if !plan.sends.is_empty() {
            let p =
                palisade_lab::sender::spawn(&self.server(), ns, &key, &plan.sends, &rec.ips, &log)
                    .map_err(|e| fail("starting the sender", &e))?;
            rec.sender = Some(p);
            rec.timeline.sender_started_ms = Some(now_ms());
        }
        self.state.save(rec).map_err(|e| fail("recording", &e))?;
        let p = palisade_lab::server::spawn(&self.server(), ns, &key, &plan.ports, &log)
            .map_err(|e| fail("starting the server", &e))?;
        rec.server = Some(p);
        rec.timeline.servers_ready_ms = Some(now_ms());
        self.state.save(rec).map_err(|e| fail("recording", &e))?;
        Ok(())
    }

    /// Unmakes a pod (see [`destroy_record`]).
    pub fn destroy(&self, rec: &PodRecord) -> Vec<String> {
        destroy_record(&self.state, rec)
    }

    /// Every record in the state directory; corrupt ones reported, not fatal.
    pub fn records(&self) -> (Vec<PodRecord>, Vec<String>) {
        let mut good = Vec::new();
        let mut bad = Vec::new();
        match self.state.load_all() {
            Ok(all) => {
                for r in all {
                    match r {
                        Ok(r) => good.push(r),
                        Err(e) => bad.push(chain(&e)),
                    }
                }
            }
            Err(e) => bad.push(chain(&e)),
        }
        (good, bad)
    }
}

/// Unmakes a pod: stops its processes (by PID and start time), CNI `DEL` with the
/// cached result, deletes its namespace, releases static reservations, removes
/// the record. Every step runs even if an earlier one fails; returns the problems.
pub fn destroy_record(state: &StateDir, rec: &PodRecord) -> Vec<String> {
    let mut problems = Vec::new();
    for p in rec.sender.iter().chain(rec.server.iter()) {
        p.stop();
    }
    if let (Some(network), Some(att)) = (&rec.network, &rec.attachment) {
        if let Err(e) = rec.cni.del(network, att, rec.cni_result.as_ref()) {
            problems.push(format!("pod {}: CNI DEL: {}", rec.key(), chain(&e)));
        }
    }
    if let Some(ns) = &rec.netns {
        if let Err(e) = NetNs::delete(ns) {
            problems.push(format!(
                "pod {}: deleting namespace: {}",
                rec.key(),
                chain(&e)
            ));
        }
    }
    for ip in &rec.reserved {
        let f: PathBuf = state.ipam_dir().join(NETWORK_NAME).join(ip.to_string());
        if std::fs::read_to_string(&f).is_ok_and(|t| t.starts_with(RESERVED_MARK)) {
            let _ = std::fs::remove_file(&f);
        }
    }
    if let Err(e) = state.remove(&rec.uid) {
        problems.push(chain(&e));
    }
    problems
}
