//! The normalized object model every other stage works on.
//!
//! Manifests (NetworkPolicy v1, ClusterNetworkPolicy v1alpha2, AdminNetworkPolicy and
//! BaselineAdminNetworkPolicy v1alpha1, Pods, Namespaces, Nodes, Services, EndpointSlices)
//! are parsed and validated by [`crate::manifest`] into these types. Defaulting is already
//! applied here (policyTypes, protocol TCP, ANP `Allow` → [`Action::Accept`]), so the
//! evaluator and the compiler never see API-version quirks.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::selector::{LabelSelector, Labels};

mod calico;
pub use calico::{
    service_account_selector, CalicoAction, CalicoEntity, CalicoKind, CalicoPolicy, CalicoPort,
    CalicoRule, NetworkSet, Order, ServiceAccountMatch, ServiceRef, K8S_NETWORK_POLICY_ORDER,
    SERVICE_ACCOUNT_LABEL, SERVICE_ACCOUNT_LABEL_PREFIX, SERVICE_ACCOUNT_NAME_LABEL,
};
pub mod workload;

/// Direction from the selected pod's point of view: `Ingress` is always "towards the pod".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Direction {
    /// Traffic arriving at the pod.
    Ingress,
    /// Traffic leaving the pod.
    Egress,
}

/// Transport protocols a policy port can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Protocol {
    /// IP protocol 6.
    Tcp,
    /// IP protocol 17.
    Udp,
    /// IP protocol 132.
    Sctp,
}

impl Protocol {
    /// The IANA IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// The protocol for an IANA number, if it is one a policy port can name.
    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            132 => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// The Kubernetes spelling: `TCP`, `UDP`, `SCTP`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            _ => Err(format!(
                "unsupported protocol {s:?} (expected TCP, UDP or SCTP)"
            )),
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A port or port range of one protocol, or a named container port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PortMatch {
    /// Every port of the protocol (a NetworkPolicyPort with a protocol but no port).
    AllPorts(Protocol),
    /// `port`..=`end_port` (`end_port == port` for a single port).
    Range {
        /// The protocol.
        protocol: Protocol,
        /// First port, inclusive.
        port: u16,
        /// Last port, inclusive.
        end_port: u16,
    },
    /// A named port, resolved against the *destination* pod's `containerPorts`
    /// (name and protocol must both match).
    Named {
        /// The protocol.
        protocol: Protocol,
        /// The IANA_SVC_NAME.
        name: String,
    },
}

/// Whether a namespace is named by the policy's own namespace or chosen by labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum NamespaceMatch {
    /// Only the named namespace (a NetworkPolicy peer without `namespaceSelector`).
    Named(String),
    /// Namespaces whose labels match.
    Selector(LabelSelector),
}

/// A CIDR with holes, as in `ipBlock`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IpBlock {
    /// The covering block (already truncated to its network address).
    pub cidr: IpNet,
    /// Holes; each lies inside `cidr` (checked by validation).
    pub except: Vec<IpNet>,
}

impl IpBlock {
    /// Whether `ip` is in `cidr` and in none of the holes.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.cidr.contains(ip) && !self.except.iter().any(|e| e.contains(ip))
    }
}

/// One NetworkPolicy peer. Several peers in a rule are ORed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum NetworkPolicyPeer {
    /// Pods matching `pods` in namespaces matching `namespaces` (both must hold: AND).
    Pods {
        /// Which namespaces.
        namespaces: NamespaceMatch,
        /// Which pods in them (`{}` when the manifest omitted `podSelector`).
        pods: LabelSelector,
    },
    /// Addresses in a block.
    IpBlock(IpBlock),
}

/// One ingress or egress rule of a NetworkPolicy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NetworkPolicyRule {
    /// `None`: the manifest omitted `from`/`to` or left it empty, so every peer matches.
    pub peers: Option<Vec<NetworkPolicyPeer>>,
    /// `None`: omitted or empty `ports`, so every port and protocol matches.
    pub ports: Option<Vec<PortMatch>>,
}

/// A namespaced networking.k8s.io/v1 NetworkPolicy, with `policyTypes` defaulted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NetworkPolicy {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Pods in `namespace` this policy isolates.
    pub pod_selector: LabelSelector,
    /// `Some` when `policyTypes` includes Ingress: the (possibly empty) allow-list.
    pub ingress: Option<Vec<NetworkPolicyRule>>,
    /// `Some` when `policyTypes` includes Egress.
    pub egress: Option<Vec<NetworkPolicyRule>>,
}

impl NetworkPolicy {
    /// The rules for one direction, `None` if the policy does not isolate that direction.
    pub fn rules(&self, dir: Direction) -> Option<&[NetworkPolicyRule]> {
        match dir {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

/// Tier of a cluster-scoped policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Tier {
    /// Evaluated before NetworkPolicy; Accept/Deny final, Pass defers to NetworkPolicy.
    Admin,
    /// Evaluated after NetworkPolicy, only for traffic NetworkPolicy did not decide.
    Baseline,
}

/// Action of a cluster policy rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Action {
    /// Allow, final (v1alpha1 `Allow`).
    Accept,
    /// Drop, final.
    Deny,
    /// Skip the rest of the Admin tier; NetworkPolicy (then Baseline) decides.
    Pass,
}

/// Which pods a cluster policy applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Subject {
    /// Every pod in matching namespaces.
    Namespaces(LabelSelector),
    /// Matching pods in matching namespaces.
    Pods {
        /// Namespace labels.
        namespaces: LabelSelector,
        /// Pod labels.
        pods: LabelSelector,
    },
}

/// One peer of a cluster policy rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ClusterPeer {
    /// Every pod in matching namespaces.
    Namespaces(LabelSelector),
    /// Matching pods in matching namespaces.
    Pods {
        /// Namespace labels.
        namespaces: LabelSelector,
        /// Pod labels.
        pods: LabelSelector,
    },
    /// Node addresses of matching nodes (egress only).
    Nodes(LabelSelector),
    /// Any address in these blocks (egress only; pod addresses included).
    Networks(Vec<IpNet>),
    /// FQDN patterns (egress only). They resolve only in the agent, through DNS; offline
    /// evaluation treats them as matching no address and says so.
    DomainNames(Vec<String>),
}

/// One rule of a cluster policy. Rules are evaluated in order; first match wins.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClusterRule {
    /// The rule's `name`, or `""`.
    pub name: String,
    /// What a match does.
    pub action: Action,
    /// ORed peers (never empty after validation).
    pub peers: Vec<ClusterPeer>,
    /// `None`: all ports and protocols.
    pub ports: Option<Vec<PortMatch>>,
}

/// Where a cluster policy came from, to speak the user's language in explanations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ClusterPolicyKind {
    /// policy.networking.k8s.io/v1alpha2 ClusterNetworkPolicy.
    ClusterNetworkPolicy,
    /// policy.networking.k8s.io/v1alpha1 AdminNetworkPolicy (tier Admin).
    AdminNetworkPolicy,
    /// policy.networking.k8s.io/v1alpha1 BaselineAdminNetworkPolicy (tier Baseline).
    BaselineAdminNetworkPolicy,
}

impl ClusterPolicyKind {
    /// The Kubernetes kind.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterPolicyKind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
            ClusterPolicyKind::AdminNetworkPolicy => "AdminNetworkPolicy",
            ClusterPolicyKind::BaselineAdminNetworkPolicy => "BaselineAdminNetworkPolicy",
        }
    }
}

/// A cluster-scoped admin policy of either tier.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClusterPolicy {
    /// The kind it was written as.
    pub kind: ClusterPolicyKind,
    /// Name (cluster-scoped, unique per kind).
    pub name: String,
    /// Tier.
    pub tier: Tier,
    /// Lower numbers are evaluated first. Ties are broken by name (upstream leaves
    /// equal priorities undefined; see docs/semantics.md).
    pub priority: i32,
    /// The pods it applies to.
    pub subject: Subject,
    /// Ingress rules in order.
    pub ingress: Vec<ClusterRule>,
    /// Egress rules in order.
    pub egress: Vec<ClusterRule>,
}

impl ClusterPolicy {
    /// Rules for one direction.
    pub fn rules(&self, dir: Direction) -> &[ClusterRule] {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// A namespace and its labels (`kubernetes.io/metadata.name` is always set).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Namespace {
    /// Name.
    pub name: String,
    /// Labels, including the automatic `kubernetes.io/metadata.name`.
    pub labels: Labels,
}

/// A named container port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ContainerPort {
    /// `name`, if any.
    pub name: Option<String>,
    /// `containerPort`.
    pub port: u16,
    /// `protocol`, default TCP.
    pub protocol: Protocol,
}

/// A pod: the unit policies select and the endpoint the datapath enforces on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Pod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: Labels,
    /// Every declared container port.
    pub ports: Vec<ContainerPort>,
    /// `status.podIPs` (or `status.podIP`), at most one per family. Empty until scheduled.
    pub ips: Vec<IpAddr>,
    /// `spec.hostNetwork`: the pod shares its node's addresses and is not an endpoint.
    pub host_network: bool,
    /// `spec.nodeName`, if scheduled.
    pub node_name: Option<String>,
    /// The pod's service account: `spec.serviceAccountName`, else the deprecated
    /// `spec.serviceAccount`, else `default` (what the API server's ServiceAccount
    /// admission gives a pod that names none). Calico `serviceAccounts` rules match it.
    #[serde(default = "default_service_account")]
    pub service_account: String,
}

/// The service account of a pod that names none.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

pub(crate) fn default_service_account() -> String {
    DEFAULT_SERVICE_ACCOUNT.to_string()
}

/// A pod's service account from its spec fields: `serviceAccountName`, else the
/// deprecated `serviceAccount`, else [`DEFAULT_SERVICE_ACCOUNT`] (blank counts as unset).
pub fn service_account_name(name: Option<&str>, deprecated: Option<&str>) -> String {
    name.filter(|s| !s.is_empty())
        .or(deprecated.filter(|s| !s.is_empty()))
        .unwrap_or(DEFAULT_SERVICE_ACCOUNT)
        .to_string()
}

/// A ServiceAccount: only its labels matter (Calico `serviceAccounts.selector` and
/// `serviceAccountSelector` select service accounts by them). Nothing else of the object,
/// and no token or secret, is read.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServiceAccount {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `metadata.labels`.
    pub labels: Labels,
}

impl ServiceAccount {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl Pod {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The container port a named port resolves to on this pod, if any.
    pub fn resolve_named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.protocol == protocol && p.name.as_deref() == Some(name))
            .map(|p| p.port)
    }
}

/// A node: its labels (for cluster policy `nodes` peers) and addresses.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Node {
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: Labels,
    /// `status.addresses` of type InternalIP/ExternalIP that parse as IPs.
    pub addresses: Vec<IpAddr>,
}

/// A Service's `targetPort`: the port on each backend, by number or by the name of a
/// container port (resolved per endpoint, so two backends may use different numbers).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TargetPort {
    /// A port number.
    Number(u16),
    /// An IANA_SVC_NAME naming a container port of the backend pod.
    Name(String),
}

/// A Service port, or an EndpointSlice port (which has no `targetPort` or `nodePort`:
/// the slice's `port` already is the backends' resolved target port).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServicePort {
    /// `name`.
    pub name: Option<String>,
    /// `port`.
    pub port: u16,
    /// `protocol`.
    pub protocol: Protocol,
    /// `targetPort` of a Service port (`None`: the same as `port`, as the API defaults).
    #[serde(default)]
    pub target_port: Option<TargetPort>,
    /// `nodePort` of a NodePort or LoadBalancer Service port.
    #[serde(default)]
    pub node_port: Option<u16>,
}

/// `spec.type` of a Service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ServiceType {
    /// `ClusterIP` (the default).
    #[default]
    ClusterIp,
    /// `NodePort`: also reachable at every node address on each port's `nodePort`.
    NodePort,
    /// `LoadBalancer`: NodePort plus the load balancer's ingress addresses.
    LoadBalancer,
    /// `ExternalName`: a DNS alias, no frontend address and no backends.
    ExternalName,
}

/// A Service: kept for Service-named peers and for Service translation (see
/// docs/semantics.md §10).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Service {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `spec.selector`, `None` for selector-less Services (endpoints managed by hand).
    pub selector: Option<Labels>,
    /// `spec.clusterIPs`.
    pub cluster_ips: Vec<IpAddr>,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// `spec.type`.
    #[serde(default)]
    pub service_type: ServiceType,
    /// `spec.externalIPs`.
    #[serde(default)]
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip` (hostname-only ingresses have no address).
    #[serde(default)]
    pub load_balancer_ips: Vec<IpAddr>,
    /// `sessionAffinity: ClientIP`: its timeout in seconds (`None`: no affinity).
    #[serde(default)]
    pub affinity_timeout: Option<u32>,
}

impl Service {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The ready addresses of one EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EndpointSlice {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The `kubernetes.io/service-name` label.
    pub service_name: Option<String>,
    /// Addresses of endpoints not marked `ready: false`.
    pub addresses: Vec<IpAddr>,
    /// Addresses of endpoints marked `ready: false` but `serving: true` while
    /// `terminating: true`: kube-proxy sends to them only when a Service has no ready
    /// endpoint left (graceful termination).
    #[serde(default)]
    pub terminating: Vec<IpAddr>,
    /// Ports (`port`, `protocol`, `name`).
    pub ports: Vec<ServicePort>,
}

/// Everything the core knows about a cluster: the input of evaluation and compilation.
///
/// Maps are keyed by name (`namespace/name` for namespaced objects) so iteration order,
/// and therefore every output, is deterministic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    /// By name.
    pub namespaces: BTreeMap<String, Namespace>,
    /// By `namespace/name`.
    pub pods: BTreeMap<String, Pod>,
    /// By name.
    pub nodes: BTreeMap<String, Node>,
    /// By `namespace/name`.
    pub services: BTreeMap<String, Service>,
    /// By `namespace/name`.
    pub endpoint_slices: BTreeMap<String, EndpointSlice>,
    /// By `namespace/name`.
    pub network_policies: BTreeMap<String, NetworkPolicy>,
    /// By `Kind/name` (kinds are distinct API objects and may share names).
    pub cluster_policies: BTreeMap<String, ClusterPolicy>,
    /// Calico policies by [`CalicoPolicy::key`].
    #[serde(default)]
    pub calico_policies: BTreeMap<String, CalicoPolicy>,
    /// Calico network sets by [`NetworkSet::key`].
    #[serde(default)]
    pub network_sets: BTreeMap<String, NetworkSet>,
    /// ServiceAccounts by `namespace/name` (their labels, for Calico selectors).
    #[serde(default)]
    pub service_accounts: BTreeMap<String, ServiceAccount>,
}

impl Cluster {
    /// Labels of a namespace. A namespace referenced by a pod but never declared gets the
    /// automatic `kubernetes.io/metadata.name` label only, like a freshly created one.
    pub fn namespace_labels(&self, name: &str) -> Labels {
        match self.namespaces.get(name) {
            Some(ns) => ns.labels.clone(),
            None => Labels::from([(NAMESPACE_NAME_LABEL.to_string(), name.to_string())]),
        }
    }

    /// Gives every host-network pod that has no address its node's: the first address
    /// of each family in the `status.addresses` of the Node named by its
    /// `spec.nodeName` (a manifest of a real cluster already says so in
    /// `status.podIPs`; hand-written ones often do not). Pods whose node is unknown keep
    /// no address. See docs/semantics.md, "Host-network pods".
    pub fn resolve_host_network_addresses(&mut self) {
        for pod in self.pods.values_mut() {
            if !pod.host_network || !pod.ips.is_empty() {
                continue;
            }
            let Some(node) = pod.node_name.as_ref().and_then(|n| self.nodes.get(n)) else {
                continue;
            };
            for ip in &node.addresses {
                if !pod.ips.iter().any(|p| p.is_ipv4() == ip.is_ipv4()) {
                    pod.ips.push(*ip);
                }
            }
        }
    }

    /// Adds every object of `other`, replacing objects with the same key (the later
    /// source wins, as with duplicates inside one manifest set).
    pub fn extend(&mut self, other: Cluster) {
        self.namespaces.extend(other.namespaces);
        self.pods.extend(other.pods);
        self.nodes.extend(other.nodes);
        self.services.extend(other.services);
        self.endpoint_slices.extend(other.endpoint_slices);
        self.network_policies.extend(other.network_policies);
        self.cluster_policies.extend(other.cluster_policies);
        self.calico_policies.extend(other.calico_policies);
        self.network_sets.extend(other.network_sets);
        self.service_accounts.extend(other.service_accounts);
    }

    /// The pod (not host-network) owning `ip`, if any.
    pub fn pod_by_ip(&self, ip: &IpAddr) -> Option<&Pod> {
        self.pods
            .values()
            .find(|p| !p.host_network && p.ips.contains(ip))
    }
}

/// The label the API server puts on every namespace (Kubernetes ≥ 1.21).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
