//! Calico `projectcalico.org/v3` policies and network sets, normalized.
//!
//! Decoding ([`crate::manifest`]) applies Calico's defaults (`types` from the rules
//! present, `selector` `all()`) and rejects what Palisade cannot enforce, so every value
//! here is one the evaluator and the compiler handle exactly. The rules that give these
//! types their meaning are in `docs/semantics.md` §9, each with its Calico source.

use std::cmp::Ordering;
use std::hash::{Hash, Hasher};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{Direction, Protocol};
use crate::calico_selector::{CalicoSelector, Expr};
use crate::selector::Labels;

/// Which Calico policy kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum CalicoKind {
    /// Namespaced `NetworkPolicy` (projectcalico.org/v3).
    NetworkPolicy,
    /// Cluster-wide `GlobalNetworkPolicy`.
    GlobalNetworkPolicy,
}

impl CalicoKind {
    /// How objects of this kind are named in messages and keys, as kubectl names the
    /// resource (the group tells it apart from networking.k8s.io's NetworkPolicy).
    pub fn as_str(self) -> &'static str {
        match self {
            CalicoKind::NetworkPolicy => "NetworkPolicy.projectcalico.org",
            CalicoKind::GlobalNetworkPolicy => "GlobalNetworkPolicy.projectcalico.org",
        }
    }
}

/// A rule's `action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum CalicoAction {
    /// Allow, final.
    Allow,
    /// Deny, final.
    Deny,
    /// Skip the rest of the tier.
    Pass,
    /// Log and continue with the next rule (Palisade logs nothing: see semantics §9).
    Log,
}

impl CalicoAction {
    /// Calico's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CalicoAction::Allow => "Allow",
            CalicoAction::Deny => "Deny",
            CalicoAction::Pass => "Pass",
            CalicoAction::Log => "Log",
        }
    }
}

/// `spec.order`: a float; lower first; unset sorts after every set value.
///
/// Wrapped so that policies can be compared and hashed: NaN and infinities are
/// rejected by decoding, and `-0.0` is stored as `0.0`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Order(pub f64);

impl PartialEq for Order {
    fn eq(&self, other: &Self) -> bool {
        self.0.total_cmp(&other.0) == Ordering::Equal
    }
}
impl Eq for Order {}
impl Hash for Order {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state);
    }
}
impl PartialOrd for Order {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Order {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// The order Calico gives Kubernetes NetworkPolicies in its default tier.
pub const K8S_NETWORK_POLICY_ORDER: f64 = 1000.0;

/// A port of a Calico rule: a number range or a named port (resolved on the
/// destination pod with the rule's protocol).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum CalicoPort {
    /// `lo..=hi` (`80` is `80..=80`, `"8080:8090"` is a range).
    Range(u16, u16),
    /// A container port name.
    Named(String),
}

/// A Service named by a rule: `services: {name, namespace}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServiceRef {
    /// Namespace (defaulted to the policy's for a namespaced policy).
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// The label Calico puts on every workload endpoint for its pod's service account
/// (Calico's `apiv3.LabelServiceAccount`). Palisade reserves it: a pod's own label of that
/// key is never seen by a Calico selector (see [`crate::verdict::calico`]).
pub const SERVICE_ACCOUNT_LABEL: &str = "projectcalico.org/serviceaccount";
/// The prefix under which an endpoint inherits its ServiceAccount's labels (Calico's
/// service account profiles, `ksa.<namespace>.<name>`); reserved like
/// [`SERVICE_ACCOUNT_LABEL`].
pub const SERVICE_ACCOUNT_LABEL_PREFIX: &str = "pcsa.";
/// The label Calico gives a ServiceAccount for its name ("Calico automatic labels").
pub const SERVICE_ACCOUNT_NAME_LABEL: &str = "projectcalico.org/name";

/// `serviceAccounts: {names, selector}` of a rule's peer: pods running under a service
/// account named in `names` (if any) whose ServiceAccount's labels match `selector` (if
/// any); both must hold. At least one is set (decoding drops an empty match, which
/// Calico ignores).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServiceAccountMatch {
    /// `names` (empty: any name).
    pub names: Vec<String>,
    /// `selector` over the ServiceAccount's labels.
    pub selector: Option<CalicoSelector>,
}

impl ServiceAccountMatch {
    /// The match as a selector over an endpoint's Calico labels, as Calico converts it
    /// (libcalico-go `parseServiceAccounts`): `selector` with its keys under `pcsa.`,
    /// AND `projectcalico.org/serviceaccount in {names}`.
    pub fn as_selector(&self) -> CalicoSelector {
        let names = (!self.names.is_empty()).then(|| CalicoSelector {
            text: format!(
                "{SERVICE_ACCOUNT_LABEL} in {{{}}}",
                self.names
                    .iter()
                    .map(|n| format!("'{n}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            expr: Expr::In(SERVICE_ACCOUNT_LABEL.to_string(), self.names.clone()),
        });
        let sel = self.selector.as_ref().map(service_account_selector);
        match (sel, names) {
            (Some(s), Some(n)) => s.and(&n),
            (Some(s), None) => s,
            (None, Some(n)) => n,
            (None, None) => CalicoSelector::all(),
        }
    }
}

/// A selector over ServiceAccount labels as one over endpoint labels (keys under
/// `pcsa.`), as Calico converts `serviceAccounts.selector` and `serviceAccountSelector`.
pub fn service_account_selector(sel: &CalicoSelector) -> CalicoSelector {
    CalicoSelector {
        text: format!("serviceaccount({})", sel.text),
        expr: sel.expr.prefixed(SERVICE_ACCOUNT_LABEL_PREFIX),
    }
}

/// What a rule requires of the *other* side of the traffic (the source of ingress,
/// the destination of egress). Every set field must hold (AND); empty fields hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CalicoEntity {
    /// The address is in one of these (`ipVersion` without `nets` becomes
    /// `0.0.0.0/0` or `::/0` here).
    pub nets: Vec<IpNet>,
    /// The address is in none of these.
    pub not_nets: Vec<IpNet>,
    /// The peer is a pod or network set in scope matching this.
    pub selector: Option<CalicoSelector>,
    /// The peer is *not* a pod or network set in scope matching this.
    pub not_selector: Option<CalicoSelector>,
    /// The scope of `selector`/`notSelector` (see [`CalicoPolicy::namespace`]). Alone,
    /// it means `selector: all()` in the selected namespaces.
    pub namespace_selector: Option<CalicoSelector>,
    /// The address belongs to this Service (its endpoints, and for egress its
    /// cluster IPs).
    pub service: Option<ServiceRef>,
    /// `serviceAccounts`: ANDed with `selector` and scoped like it (the policy's
    /// namespace, or `namespaceSelector`).
    #[serde(default)]
    pub service_accounts: Option<ServiceAccountMatch>,
}

impl CalicoEntity {
    /// Whether the entity constrains the peer at all.
    pub fn is_empty(&self) -> bool {
        *self == CalicoEntity::default()
    }
}

/// One rule, with its peer-side and port criteria. Local-side criteria (other than
/// destination ports) are rejected by decoding; see semantics §9.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CalicoRule {
    /// What a match does.
    pub action: CalicoAction,
    /// `protocol` (only TCP, UDP, SCTP are enforceable; others are rejected).
    pub protocol: Option<Protocol>,
    /// `notProtocol`.
    pub not_protocol: Option<Protocol>,
    /// The other side.
    pub peer: CalicoEntity,
    /// `destination.ports` (non-empty only with `protocol`).
    pub ports: Vec<CalicoPort>,
    /// `destination.notPorts` (non-empty only with `protocol`).
    pub not_ports: Vec<CalicoPort>,
}

/// A Calico NetworkPolicy or GlobalNetworkPolicy of the default tier.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CalicoPolicy {
    /// Kind.
    pub kind: CalicoKind,
    /// `Some` for a NetworkPolicy: it selects pods of this namespace only, and its
    /// rules' selectors default to this namespace.
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// `spec.order`; `None` sorts last.
    pub order: Option<Order>,
    /// `spec.selector` (default `all()`).
    pub selector: CalicoSelector,
    /// `spec.serviceAccountSelector`: ANDed with `selector`, over the labels of the
    /// pod's ServiceAccount (`None`: absent, blank or `all()`).
    #[serde(default)]
    pub service_account_selector: Option<CalicoSelector>,
    /// GlobalNetworkPolicy `spec.namespaceSelector` (default `all()`).
    pub namespace_selector: Option<CalicoSelector>,
    /// `Some` when `types` includes Ingress.
    pub ingress: Option<Vec<CalicoRule>>,
    /// `Some` when `types` includes Egress.
    pub egress: Option<Vec<CalicoRule>>,
}

impl CalicoPolicy {
    /// `Kind name` or `Kind namespace/name`: the key in [`super::Cluster::calico_policies`].
    pub fn key(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{}/{ns}/{}", self.kind.as_str(), self.name),
            None => format!("{}/{}", self.kind.as_str(), self.name),
        }
    }

    /// Rules for one direction, `None` when `types` leaves the direction out.
    pub fn rules(&self, dir: Direction) -> Option<&[CalicoRule]> {
        match dir {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

/// A NetworkSet (namespaced) or GlobalNetworkSet: labelled CIDRs that rule selectors
/// match like endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NetworkSet {
    /// `None` for a GlobalNetworkSet.
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// `metadata.labels`.
    pub labels: Labels,
    /// `spec.nets` (truncated to their networks).
    pub nets: Vec<IpNet>,
}

impl NetworkSet {
    /// The key in [`super::Cluster::network_sets`].
    pub fn key(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("NetworkSet/{ns}/{}", self.name),
            None => format!("GlobalNetworkSet/{}", self.name),
        }
    }
}
