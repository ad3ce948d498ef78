//! Identity keys (what makes two addresses alike) and peer matchers (the selectors and
//! blocks of every rule, interned, each caching the identities it matches).

use ipnet::IpNet;

use crate::calico_selector::CalicoSelector;
use crate::compiled::IdentityInfo;
use crate::model::{ClusterPeer, IpBlock, NamespaceMatch, NetworkPolicyPeer, Pod, Protocol};
use crate::selector::{LabelSelector, Labels};
use crate::verdict::calico::{in_scope_namespaced, pod_labels};

/// A fast, non-cryptographic hasher (the rustc "Fx" hash) for the compiler's many
/// small string- and id-keyed maps. Its inputs are cluster objects admitted by the API
/// server; hash flooding would need an attacker who can already create policies.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FxHasher {
    hash: u64,
}

/// The Fx multiplier (from Firefox's hash, as in rustc).
const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(b));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    /// Finishes with the splitmix64 mixer: the Fx step leaves the low bits (which
    /// pick the bucket) depending only on the low bits of the input, and addresses
    /// such as `10.x.y.z` share their low byte; unmixed, they all collide.
    fn finish(&self) -> u64 {
        let mut z = self.hash;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// A `HashMap` with [`FxHasher`].
pub(crate) type FxMap<K, V> =
    std::collections::HashMap<K, V, std::hash::BuildHasherDefault<FxHasher>>;

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
    /// Labels of the namespace, at the time the identity was made (shared).
    pub ns_labels: std::sync::Arc<Labels>,
    /// Pod labels.
    pub labels: Labels,
    /// Named container ports.
    pub named_ports: NamedPorts,
    /// The pod's service account facts as Calico labels
    /// ([`crate::verdict::calico::service_account_facts`]), shared per service account.
    /// Empty while no Calico policy exists: only Calico selectors read them, and leaving
    /// them out keeps the identities of clusters without Calico policies as they were
    /// (pods differing only in service account share one). Every change to the set of
    /// Calico policies, and every ServiceAccount change while one exists, recompiles the
    /// whole state, so keys never mix the two forms.
    pub sa_facts: std::sync::Arc<Labels>,
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
    /// The identities a Calico rule's peer criteria *mention*: where its verdict may
    /// differ from [`CalicoPeer::default`]. Every other identity takes the default.
    CalicoInterest(std::sync::Arc<CalicoPeer>),
    /// The mentioned identities the criteria actually match.
    CalicoTruth(std::sync::Arc<CalicoPeer>),
}

/// A Calico rule selector with its scope resolved: pods in scope are matched on their
/// Calico labels, network sets in scope whose labels match are resolved to their nets
/// (which are policy prefixes, so containment of an identity's prefix decides).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct CalicoScope {
    /// The selector.
    pub sel: CalicoSelector,
    /// The rule's namespace selector.
    pub ns_sel: Option<CalicoSelector>,
    /// The policy's namespace (a namespaced policy).
    pub policy_ns: Option<String>,
    /// Nets of the matching network sets in scope.
    pub set_nets: Vec<IpNet>,
}

impl CalicoScope {
    fn selects(&self, key: &IdentityKey) -> bool {
        if let Some(p) = &key.pod {
            if in_scope_namespaced(
                self.policy_ns.as_deref(),
                self.ns_sel.as_ref(),
                &p.ns_labels,
                &p.namespace,
            ) && self.sel.matches(
                &pod_labels(&p.labels, &p.ns_labels, &p.namespace, &p.sa_facts),
                false,
            ) {
                return true;
            }
        }
        self.set_nets.iter().any(|n| n.contains(&key.prefix))
    }
}

/// A Calico rule's peer criteria, resolved against the cluster (network sets, Service
/// addresses); every net here is a policy prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct CalicoPeer {
    /// `nets`.
    pub nets: Vec<IpNet>,
    /// `notNets`.
    pub not_nets: Vec<IpNet>,
    /// `selector` (or `all()` with only a `namespaceSelector`).
    pub positive: Option<CalicoScope>,
    /// `notSelector`.
    pub negative: Option<CalicoScope>,
    /// `services`: the Service's addresses as host prefixes.
    pub service: Option<Vec<IpNet>>,
}

impl CalicoPeer {
    /// The verdict for an identity no criterion mentions: true iff there is no
    /// positive criterion (only negations, which all hold).
    pub(crate) fn default(&self) -> bool {
        self.nets.is_empty() && self.positive.is_none() && self.service.is_none()
    }

    fn interest(&self, key: &IdentityKey) -> bool {
        let p = &key.prefix;
        self.nets.iter().any(|n| n.contains(p))
            || self.not_nets.iter().any(|n| n.contains(p))
            || self.positive.as_ref().is_some_and(|s| s.selects(key))
            || self.negative.as_ref().is_some_and(|s| s.selects(key))
            || self
                .service
                .as_ref()
                .is_some_and(|hs| hs.iter().any(|h| h.contains(p)))
    }

    fn truth(&self, key: &IdentityKey) -> bool {
        let p = &key.prefix;
        (self.nets.is_empty() || self.nets.iter().any(|n| n.contains(p)))
            && !self.not_nets.iter().any(|n| n.contains(p))
            && self.positive.as_ref().is_none_or(|s| s.selects(key))
            && !self.negative.as_ref().is_some_and(|s| s.selects(key))
            && self
                .service
                .as_ref()
                .is_none_or(|hs| hs.iter().any(|h| h.contains(p)))
    }
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
            Matcher::CalicoInterest(c) => c.interest(key),
            Matcher::CalicoTruth(c) => c.interest(key) && c.truth(key),
        }
    }
}

/// Items keyed by a label selector, found by the labels they might match: each item is
/// filed under its selector's first `matchLabels` pair (a pod has one value per key, so
/// only that slot can hold it), or with the rest when the selector has none. Candidates
/// still need the full selector check.
#[derive(Debug, Clone)]
pub(crate) struct LabelIndex<T> {
    by_label: FxMap<String, FxMap<String, Vec<T>>>,
    rest: Vec<T>,
}

impl<T> Default for LabelIndex<T> {
    fn default() -> Self {
        Self {
            by_label: Default::default(),
            rest: Vec::new(),
        }
    }
}

impl<T> LabelIndex<T> {
    /// Files `item` under `sel`.
    pub(crate) fn insert(&mut self, sel: &LabelSelector, item: T) {
        match sel.match_labels.iter().next() {
            Some((k, v)) => self
                .by_label
                .entry(k.clone())
                .or_default()
                .entry(v.clone())
                .or_default()
                .push(item),
            None => self.rest.push(item),
        }
    }

    /// Unfiles `item` from under `sel`.
    pub(crate) fn remove<Q>(&mut self, sel: &LabelSelector, item: &Q)
    where
        T: PartialEq<Q>,
        Q: ?Sized,
    {
        let list = match sel.match_labels.iter().next() {
            Some((k, v)) => match self.by_label.get_mut(k).and_then(|m| m.get_mut(v)) {
                Some(l) => l,
                None => return,
            },
            None => &mut self.rest,
        };
        if let Some(i) = list.iter().position(|x| x == item) {
            list.remove(i);
        }
    }

    /// Every item whose selector might match `labels` (each at most once).
    pub(crate) fn candidates<'a>(&'a self, labels: &'a Labels) -> impl Iterator<Item = &'a T> {
        self.rest.iter().chain(
            labels
                .iter()
                .filter_map(|(k, v)| self.by_label.get(k)?.get(v))
                .flatten(),
        )
    }
}
