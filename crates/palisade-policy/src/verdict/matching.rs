//! Whether one selector, peer or port list matches one side of a flow.

use std::net::IpAddr;

use crate::model::{
    Cluster, ClusterPeer, NamespaceMatch, NetworkPolicyPeer, Pod, PortMatch, Subject,
};

use super::flow::{IpFamily, Peer};

/// A resolved side of a flow.
#[derive(Debug, Clone, Copy)]
pub(super) struct Endpoint<'a> {
    /// The pod endpoint, if the side is one (never a host-network pod).
    pub pod: Option<&'a Pod>,
    /// The address the side is seen at, if it has one in the flow's family.
    pub ip: Option<IpAddr>,
}

impl<'a> Endpoint<'a> {
    /// Resolves a peer; see `flow.rs` for the rules.
    pub fn resolve(cluster: &'a Cluster, peer: &Peer, family: Option<IpFamily>) -> Self {
        match peer {
            Peer::Ip(ip) => Endpoint {
                pod: cluster.pod_by_ip(ip),
                ip: Some(*ip),
            },
            Peer::Pod(key) => match cluster.pods.get(key) {
                None => Endpoint {
                    pod: None,
                    ip: None,
                },
                Some(pod) => Endpoint {
                    pod: (!pod.host_network).then_some(pod),
                    ip: pod
                        .ips
                        .iter()
                        .copied()
                        .find(|ip| Some(IpFamily::of(ip)) == family),
                },
            },
        }
    }
}

/// Whether a cluster policy's subject selects `pod`. Host-network pods are never
/// subjects.
pub(super) fn subject_selects(cluster: &Cluster, subject: &Subject, pod: &Pod) -> bool {
    if pod.host_network {
        return false;
    }
    let ns_labels = cluster.namespace_labels(&pod.namespace);
    match subject {
        Subject::Namespaces(ns) => ns.matches(&ns_labels),
        Subject::Pods { namespaces, pods } => {
            namespaces.matches(&ns_labels) && pods.matches(&pod.labels)
        }
    }
}

/// Whether a NetworkPolicy peer matches the other side.
pub(super) fn np_peer_matches(
    cluster: &Cluster,
    peer: &NetworkPolicyPeer,
    other: &Endpoint<'_>,
) -> bool {
    match peer {
        NetworkPolicyPeer::Pods { namespaces, pods } => other.pod.is_some_and(|p| {
            let ns_ok = match namespaces {
                NamespaceMatch::Named(ns) => &p.namespace == ns,
                NamespaceMatch::Selector(sel) => {
                    sel.matches(&cluster.namespace_labels(&p.namespace))
                }
            };
            ns_ok && pods.matches(&p.labels)
        }),
        // ipBlock matches any address, pod addresses included.
        NetworkPolicyPeer::IpBlock(block) => other.ip.is_some_and(|ip| block.contains(&ip)),
    }
}

/// Whether a cluster policy peer matches the other side. A `domainNames` peer never
/// matches offline; that is recorded in `notes` for rule `index`.
pub(super) fn cluster_peer_matches(
    cluster: &Cluster,
    peer: &ClusterPeer,
    other: &Endpoint<'_>,
    notes: &mut Vec<String>,
    index: usize,
    rule_name: &str,
) -> bool {
    match peer {
        ClusterPeer::Namespaces(ns) => other
            .pod
            .is_some_and(|p| ns.matches(&cluster.namespace_labels(&p.namespace))),
        ClusterPeer::Pods { namespaces, pods } => other.pod.is_some_and(|p| {
            namespaces.matches(&cluster.namespace_labels(&p.namespace)) && pods.matches(&p.labels)
        }),
        ClusterPeer::Nodes(sel) => other.ip.is_some_and(|ip| {
            cluster
                .nodes
                .values()
                .any(|n| sel.matches(&n.labels) && n.addresses.contains(&ip))
        }),
        ClusterPeer::Networks(nets) => other
            .ip
            .is_some_and(|ip| nets.iter().any(|n| n.contains(&ip))),
        ClusterPeer::DomainNames(names) => {
            let rule = if rule_name.is_empty() {
                format!("rule {index}")
            } else {
                format!("rule {index} {rule_name:?}")
            };
            notes.push(format!(
                "{rule} names domains {}; they are resolved only by the agent, so offline evaluation matches no address",
                names.join(", ")
            ));
            false
        }
    }
}

/// Whether a rule's ports match. `None` matches every protocol, ICMP included; a list
/// matches only TCP, UDP and SCTP. A named port resolves against `dst_pod`'s container
/// ports (name and protocol) and matches nothing when the destination is not a pod.
pub(super) fn ports_match(
    ports: Option<&[PortMatch]>,
    dst_pod: Option<&Pod>,
    protocol: u8,
    port: u16,
) -> bool {
    let Some(ports) = ports else {
        return true;
    };
    ports.iter().any(|m| match m {
        PortMatch::AllPorts(p) => p.number() == protocol,
        PortMatch::Range {
            protocol: p,
            port: lo,
            end_port: hi,
        } => p.number() == protocol && (*lo..=*hi).contains(&port),
        PortMatch::Named { protocol: p, name } => {
            p.number() == protocol
                && dst_pod.and_then(|d| d.resolve_named_port(name, *p)) == Some(port)
        }
    })
}
