//! Identity keys (what makes two addresses alike) and peer matchers (the selectors and
//! blocks of every rule, interned, each caching the identities it matches).

use ipnet::IpNet;

use crate::compiled::IdentityInfo;
use crate::model::{ClusterPeer, IpBlock, NamespaceMatch, NetworkPolicyPeer, Pod, Protocol};
use crate::selector::{LabelSelector, Labels};

/// Named container ports `(name, protocol, port)`, sorted; the first declaration of a
/// `(name, protocol)` wins, as in [`Pod::resolve_named_port`].
pub(crate) type NamedPorts = Vec<(String, Protocol, u16)>;

/// The named ports of a pod in canonical form.
pub(crate) fn named_ports(pod: &Pod) -> NamedPorts {
    let mut out: NamedPorts = Vec::new();
    for p in &pod.ports {
        if let Some(name) = &p.name {
            if !out.iter().any(|(n, pr, _)| n == name && *pr == p.protocol) {
                out.push((name.clone(), p.protocol, p.port));
            }
        }
    }
    out.sort();
    out
}

/// Resolves a named port against canonical named ports.
pub(crate) fn resolve_named(
    ports: &[(String, Protocol, u16)],
    name: &str,
    proto: Protocol,
) -> Option<u16> {
    ports
        .iter()
        .find(|(n, p, _)| n == name && *p == proto)
        .map(|(_, _, port)| *port)
}

/// What every selector can see of a pod address: namespace (and its labels), pod labels
/// and named ports.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PodClass {
    /// Namespace name.
    pub namespace: String,
    /// Labels of the namespace, at the time the identity was made.
    pub ns_labels: Labels,
    /// Pod labels.
    pub labels: Labels,
    /// Named container ports.
    pub named_ports: NamedPorts,
}

/// The equivalence class of an address. Network identities have no pod and no nodes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct IdentityKey {
    /// The (non-host-network) pod owning the address, if any.
    pub pod: Option<PodClass>,
    /// Nodes owning the address, `(name, labels)`, sorted by name.
    pub nodes: Vec<(String, Labels)>,
    /// The most specific policy prefix containing the address.
    pub prefix: IpNet,
}

fn render_labels(labels: &Labels) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

impl IdentityKey {
    /// The network identity of a prefix.
    pub(crate) fn network(prefix: IpNet) -> Self {
        Self {
            pod: None,
            nodes: Vec::new(),
            prefix,
        }
    }

    /// The description published in [`crate::compiled::Compiled::identities`].
    pub(crate) fn info(&self) -> IdentityInfo {
        if let Some(pod) = &self.pod {
            IdentityInfo::Pods {
                namespace: pod.namespace.clone(),
                labels: render_labels(&pod.labels),
                prefix: self.prefix,
            }
        } else if !self.nodes.is_empty() {
            IdentityInfo::Node {
                nodes: self
                    .nodes
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                prefix: self.prefix,
            }
        } else {
            IdentityInfo::Network {
                prefix: self.prefix,
            }
        }
    }
}

/// One peer of one rule, in a form that matches identities.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Matcher {
    /// Pods (not host-network) in matching namespaces with matching labels.
    Pods {
        /// Which namespaces.
        namespaces: NamespaceMatch,
        /// Which pods.
        pods: LabelSelector,
    },
    /// Addresses of matching nodes.
    Nodes(LabelSelector),
    /// Addresses in a block, holes excepted (pod and node addresses included).
    Block(IpBlock),
    /// Matches no address (domain names, unresolved offline).
    Nothing,
}

impl Matcher {
    /// The matchers of a NetworkPolicy peer.
    pub(crate) fn of_network_peer(peer: &NetworkPolicyPeer) -> Vec<Matcher> {
        match peer {
            NetworkPolicyPeer::Pods { namespaces, pods } => vec![Matcher::Pods {
                namespaces: namespaces.clone(),
                pods: pods.clone(),
            }],
            NetworkPolicyPeer::IpBlock(b) => vec![Matcher::Block(IpBlock {
                cidr: b.cidr.trunc(),
                except: b.except.iter().map(IpNet::trunc).collect(),
            })],
        }
    }

    /// The matchers of a cluster policy peer.
    pub(crate) fn of_cluster_peer(peer: &ClusterPeer) -> Vec<Matcher> {
        match peer {
            ClusterPeer::Namespaces(ns) => vec![Matcher::Pods {
                namespaces: NamespaceMatch::Selector(ns.clone()),
                pods: LabelSelector::everything(),
            }],
            ClusterPeer::Pods { namespaces, pods } => vec![Matcher::Pods {
                namespaces: NamespaceMatch::Selector(namespaces.clone()),
                pods: pods.clone(),
            }],
            ClusterPeer::Nodes(sel) => vec![Matcher::Nodes(sel.clone())],
            ClusterPeer::Networks(nets) => nets
                .iter()
                .map(|n| {
                    Matcher::Block(IpBlock {
                        cidr: n.trunc(),
                        except: Vec::new(),
                    })
                })
                .collect(),
            ClusterPeer::DomainNames(_) => vec![Matcher::Nothing],
        }
    }

    /// Whether the namespace part matches (only meaningful for [`Matcher::Pods`]).
    pub(crate) fn matches_namespace(ns: &NamespaceMatch, name: &str, labels: &Labels) -> bool {
        match ns {
            NamespaceMatch::Named(n) => n == name,
            NamespaceMatch::Selector(sel) => sel.matches(labels),
        }
    }

    /// Whether every address of the identity `key` is matched.
    pub(crate) fn matches(&self, key: &IdentityKey) -> bool {
        match self {
            Matcher::Pods { namespaces, pods } => key.pod.as_ref().is_some_and(|p| {
                Self::matches_namespace(namespaces, &p.namespace, &p.ns_labels)
                    && pods.matches(&p.labels)
            }),
            Matcher::Nodes(sel) => key.nodes.iter().any(|(_, l)| sel.matches(l)),
            Matcher::Block(b) => {
                b.cidr.contains(&key.prefix) && !b.except.iter().any(|e| e.contains(&key.prefix))
            }
            Matcher::Nothing => false,
        }
    }
}
