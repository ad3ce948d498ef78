//! Workloads (Deployment, StatefulSet, ...) as the pods they would run, for answers
//! from a repository's manifests rather than a running cluster.
//!
//! A repository holds Deployments, not Pods, and Pods written by hand rarely carry
//! `status.podIPs`. [`simulate_pods`] turns each workload into the pods its controller
//! would create (template labels and ports, `name-0`, `name-1`, ...) and gives every
//! pod without an address one from the simulation range ([`SIMULATION_V4`],
//! [`SIMULATION_V6`]), so `ipBlock` peers still mean something. Only the offline
//! commands call it: an agent enforces the pods that exist, never imagined ones.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use super::{Cluster, ContainerPort, Pod};
use crate::selector::Labels;

/// IPv4 range simulated pod addresses come from (kubeadm's and flannel's usual pod
/// CIDR, which policies' `except` lists are written against). Addresses already used
/// by a pod, node or Service of the input are skipped.
pub const SIMULATION_V4: &str = "10.244.0.0/16";
/// IPv6 range simulated pod addresses come from (each simulated pod gets one of each
/// family, so `--family 6` answers too).
pub const SIMULATION_V6: &str = "fd00:10:244::/64";
/// Pods simulated per workload at most: the verdicts of replicas differ only through
/// their addresses, and a matrix of `replicas: 5000` would be 25 million pairs. A
/// workload with more replicas is simulated with this many, and says so.
pub const MAX_SIMULATED_REPLICAS: u32 = 16;

/// The workload kinds that create pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum WorkloadKind {
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 StatefulSet.
    StatefulSet,
    /// apps/v1 DaemonSet.
    DaemonSet,
    /// apps/v1 ReplicaSet.
    ReplicaSet,
    /// batch/v1 Job.
    Job,
    /// batch/v1 CronJob.
    CronJob,
}

impl WorkloadKind {
    /// The Kubernetes kind.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
            WorkloadKind::ReplicaSet => "ReplicaSet",
            WorkloadKind::Job => "Job",
            WorkloadKind::CronJob => "CronJob",
        }
    }

    /// The kind named `kind` at `api_version`, if it is one.
    pub fn parse(api_version: &str, kind: &str) -> Option<WorkloadKind> {
        Some(match (api_version, kind) {
            ("apps/v1", "Deployment") => WorkloadKind::Deployment,
            ("apps/v1", "StatefulSet") => WorkloadKind::StatefulSet,
            ("apps/v1", "DaemonSet") => WorkloadKind::DaemonSet,
            ("apps/v1", "ReplicaSet") => WorkloadKind::ReplicaSet,
            ("batch/v1", "Job") => WorkloadKind::Job,
            ("batch/v1", "CronJob") => WorkloadKind::CronJob,
            _ => return None,
        })
    }
}

/// The owner an object names in `metadata.ownerReferences` (`controller: true`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Owner {
    /// Its kind.
    pub kind: String,
    /// Its name (same namespace).
    pub name: String,
}

/// A workload: the pod template that matters to policy, and how many pods it runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Workload {
    /// Kind.
    pub kind: WorkloadKind,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `spec.replicas` (Deployment, StatefulSet, ReplicaSet; default 1),
    /// `spec.parallelism` (Job, CronJob's job template; default 1); `None` for a
    /// DaemonSet (one per node).
    pub replicas: Option<u32>,
    /// Template labels.
    pub labels: Labels,
    /// Template container ports.
    pub ports: Vec<ContainerPort>,
    /// Template `hostNetwork`.
    pub host_network: bool,
    /// Template service account (see [`Pod::service_account`]).
    #[serde(default = "super::default_service_account")]
    pub service_account: String,
    /// The workload that controls this one (a Deployment's ReplicaSet, a CronJob's Job).
    pub owner: Option<Owner>,
}

impl Workload {
    /// `Kind namespace/name`, as rows and notes name it.
    pub fn key(&self) -> String {
        format!("{} {}/{}", self.kind.as_str(), self.namespace, self.name)
    }
}

/// One workload's place in the answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimulatedWorkload {
    /// `Deployment`, ...
    pub kind: String,
    /// `namespace/name`.
    pub name: String,
    /// Pods it runs (DaemonSet: the number of nodes in the input, at least 1).
    pub replicas: u32,
    /// Its pods in the model (`namespace/name`): simulated ones, or the input's own pods
    /// that name it (through a ReplicaSet or Job) as their owner.
    pub pods: Vec<String>,
    /// Whether its pods were made up (false: the input held them).
    pub simulated: bool,
}

/// What [`simulate_pods`] added to the model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Simulation {
    /// Every workload that runs pods itself (one controlled by another in the input,
    /// such as a Deployment's ReplicaSet, is counted as its owner), in key order.
    pub workloads: Vec<SimulatedWorkload>,
    /// Pods given addresses from the simulation range, with them.
    pub addressed: BTreeMap<String, Vec<IpAddr>>,
}

/// Hands out unused addresses of the simulation range, in order.
struct Allocator {
    used: BTreeSet<IpAddr>,
    next: u32,
}

impl Allocator {
    fn new(c: &Cluster) -> Allocator {
        let mut used: BTreeSet<IpAddr> = c.pods.values().flat_map(|p| p.ips.clone()).collect();
        used.extend(c.nodes.values().flat_map(|n| n.addresses.clone()));
        used.extend(c.services.values().flat_map(|s| s.cluster_ips.clone()));
        Allocator { used, next: 1 }
    }

    /// The next pair (IPv4, IPv6) where neither is in use.
    fn take(&mut self) -> Vec<IpAddr> {
        let v4: Ipv4Addr = "10.244.0.0".parse().expect("constant");
        let v6: Ipv6Addr = "fd00:10:244::".parse().expect("constant");
        loop {
            let n = self.next;
            self.next += 1;
            // 10.244.0.0/16 holds 65,535 hosts; past that, wrap into 10.245.x.x rather
            // than fail (a /16 of simulated pods is far past any matrix one would read).
            let a = IpAddr::V4(Ipv4Addr::from(u32::from(v4) + n));
            let b = IpAddr::V6(Ipv6Addr::from(u128::from(v6) + u128::from(n)));
            if !self.used.contains(&a) && !self.used.contains(&b) {
                return vec![a, b];
            }
        }
    }
}

/// Whether `pod` names `w` (or `w`'s own controlled workload, such as a Deployment's
/// ReplicaSet) as its owner.
fn owns(w: &Workload, pod_owner: &Owner, controlled: &[&Workload]) -> bool {
    let direct = pod_owner.kind == w.kind.as_str() && pod_owner.name == w.name;
    direct
        || controlled
            .iter()
            .any(|c| c.kind.as_str() == pod_owner.kind && c.name == pod_owner.name)
}

/// Adds the pods of every workload to `cluster` (unless the input already holds them:
/// `pod_owners` gives each input pod's controller), then gives every pod without an
/// address (host-network pods aside) one of each family from the simulation range.
pub fn simulate_pods(
    cluster: &mut Cluster,
    workloads: &BTreeMap<String, Workload>,
    pod_owners: &BTreeMap<String, Owner>,
) -> Simulation {
    let mut out = Simulation::default();
    let nodes = cluster.nodes.len().max(1) as u32;
    let mut alloc = Allocator::new(cluster);
    for w in workloads.values() {
        // Counted as its owner when the owner is in the input.
        if let Some(o) = &w.owner {
            let owner_present = workloads.values().any(|x| {
                x.namespace == w.namespace && x.kind.as_str() == o.kind && x.name == o.name
            });
            if owner_present {
                continue;
            }
        }
        let controlled: Vec<&Workload> = workloads
            .values()
            .filter(|x| {
                x.namespace == w.namespace
                    && x.owner
                        .as_ref()
                        .is_some_and(|o| o.kind == w.kind.as_str() && o.name == w.name)
            })
            .collect();
        let replicas = w.replicas.unwrap_or(nodes);
        let existing: Vec<String> = pod_owners
            .iter()
            .filter(|(key, o)| {
                key.split_once('/').is_some_and(|(ns, _)| ns == w.namespace)
                    && owns(w, o, &controlled)
            })
            .map(|(k, _)| k.clone())
            .collect();
        let simulated = existing.is_empty();
        let pods = if simulated {
            let mut pods = Vec::new();
            for i in 0..replicas.min(MAX_SIMULATED_REPLICAS) {
                let name = format!("{}-{i}", w.name);
                let key = format!("{}/{name}", w.namespace);
                if cluster.pods.contains_key(&key) {
                    continue;
                }
                cluster.pods.insert(
                    key.clone(),
                    Pod {
                        namespace: w.namespace.clone(),
                        name,
                        labels: w.labels.clone(),
                        ports: w.ports.clone(),
                        ips: Vec::new(),
                        host_network: w.host_network,
                        node_name: None,
                        service_account: w.service_account.clone(),
                    },
                );
                pods.push(key);
            }
            pods
        } else {
            existing
        };
        out.workloads.push(SimulatedWorkload {
            kind: w.kind.as_str().to_string(),
            name: format!("{}/{}", w.namespace, w.name),
            replicas,
            pods,
            simulated,
        });
    }
    for (key, pod) in cluster.pods.iter_mut() {
        if pod.ips.is_empty() && !pod.host_network {
            pod.ips = alloc.take();
            out.addressed.insert(key.clone(), pod.ips.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(kind: WorkloadKind, name: &str, replicas: Option<u32>) -> Workload {
        Workload {
            kind,
            namespace: "shop".into(),
            name: name.into(),
            replicas,
            labels: Labels::from([("app".to_string(), name.to_string())]),
            ports: Vec::new(),
            host_network: false,
            service_account: "default".into(),
            owner: None,
        }
    }

    fn by_key(ws: Vec<Workload>) -> BTreeMap<String, Workload> {
        ws.into_iter().map(|w| (w.key(), w)).collect()
    }

    #[test]
    fn a_deployment_runs_its_replicas_with_the_template_labels_and_simulated_addresses() {
        let mut c = Cluster::default();
        let s = simulate_pods(
            &mut c,
            &by_key(vec![workload(WorkloadKind::Deployment, "web", Some(3))]),
            &BTreeMap::new(),
        );
        assert_eq!(s.workloads.len(), 1);
        assert_eq!(s.workloads[0].replicas, 3);
        assert_eq!(
            s.workloads[0].pods,
            ["shop/web-0", "shop/web-1", "shop/web-2"]
        );
        let p = &c.pods["shop/web-1"];
        assert_eq!(p.labels["app"], "web");
        let v4: ipnet::IpNet = SIMULATION_V4.parse().unwrap();
        let v6: ipnet::IpNet = SIMULATION_V6.parse().unwrap();
        assert!(
            v4.contains(&p.ips[0]) && v6.contains(&p.ips[1]),
            "{:?}",
            p.ips
        );
        assert_eq!(s.addressed.len(), 3);
        let distinct: BTreeSet<_> = c.pods.values().map(|p| p.ips[0]).collect();
        assert_eq!(distinct.len(), 3, "every pod its own address");
    }

    #[test]
    fn addresses_the_input_uses_are_never_handed_out() {
        let mut c = Cluster::default();
        c.pods.insert(
            "shop/fixed".into(),
            Pod {
                namespace: "shop".into(),
                name: "fixed".into(),
                labels: Labels::new(),
                ports: Vec::new(),
                ips: vec!["10.244.0.1".parse().unwrap()],
                host_network: false,
                node_name: None,
                service_account: "default".into(),
            },
        );
        simulate_pods(
            &mut c,
            &by_key(vec![workload(WorkloadKind::StatefulSet, "db", Some(1))]),
            &BTreeMap::new(),
        );
        assert_eq!(c.pods["shop/db-0"].ips[0].to_string(), "10.244.0.2");
        assert_eq!(
            c.pods["shop/fixed"].ips.len(),
            1,
            "an input address is kept"
        );
    }

    #[test]
    fn a_replicaset_owned_by_a_deployment_in_the_input_counts_as_the_deployment() {
        let mut rs = workload(WorkloadKind::ReplicaSet, "web-5d8f", Some(2));
        rs.owner = Some(Owner {
            kind: "Deployment".into(),
            name: "web".into(),
        });
        let mut c = Cluster::default();
        let s = simulate_pods(
            &mut c,
            &by_key(vec![workload(WorkloadKind::Deployment, "web", Some(2)), rs]),
            &BTreeMap::new(),
        );
        assert_eq!(s.workloads.len(), 1, "{:?}", s.workloads);
        assert_eq!(s.workloads[0].kind, "Deployment");
        assert_eq!(c.pods.len(), 2, "not four");
    }

    #[test]
    fn pods_of_the_input_that_a_workload_owns_are_its_pods_and_none_is_invented() {
        let mut rs = workload(WorkloadKind::ReplicaSet, "web-5d8f", Some(2));
        rs.owner = Some(Owner {
            kind: "Deployment".into(),
            name: "web".into(),
        });
        let mut c = Cluster::default();
        let owners = BTreeMap::from([(
            "shop/web-5d8f-abcde".to_string(),
            Owner {
                kind: "ReplicaSet".into(),
                name: "web-5d8f".into(),
            },
        )]);
        let s = simulate_pods(
            &mut c,
            &by_key(vec![workload(WorkloadKind::Deployment, "web", Some(2)), rs]),
            &owners,
        );
        assert_eq!(s.workloads[0].pods, ["shop/web-5d8f-abcde"]);
        assert!(!s.workloads[0].simulated);
        assert!(c.pods.is_empty(), "nothing invented");
    }

    #[test]
    fn replicas_past_the_bound_are_counted_but_not_all_simulated() {
        let mut c = Cluster::default();
        let s = simulate_pods(
            &mut c,
            &by_key(vec![workload(WorkloadKind::Deployment, "big", Some(5000))]),
            &BTreeMap::new(),
        );
        assert_eq!(s.workloads[0].replicas, 5000);
        assert_eq!(c.pods.len(), MAX_SIMULATED_REPLICAS as usize);
    }

    #[test]
    fn a_daemonset_runs_one_pod_per_node_and_zero_replicas_run_none() {
        let mut c = Cluster::default();
        for n in ["n1", "n2"] {
            c.nodes.insert(
                n.into(),
                super::super::Node {
                    name: n.into(),
                    labels: Labels::new(),
                    addresses: Vec::new(),
                },
            );
        }
        let s = simulate_pods(
            &mut c,
            &by_key(vec![
                workload(WorkloadKind::DaemonSet, "agent", None),
                workload(WorkloadKind::Deployment, "off", Some(0)),
            ]),
            &BTreeMap::new(),
        );
        let ds = s.workloads.iter().find(|w| w.kind == "DaemonSet").unwrap();
        assert_eq!((ds.replicas, ds.pods.len()), (2, 2));
        let off = s.workloads.iter().find(|w| w.name == "shop/off").unwrap();
        assert_eq!((off.replicas, off.pods.len()), (0, 0));
    }
}
