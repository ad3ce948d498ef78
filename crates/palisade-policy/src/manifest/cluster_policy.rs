//! Cluster-scoped admin policies into [`crate::model::ClusterPolicy`]:
//!
//! - policy.networking.k8s.io/v1alpha2 `ClusterNetworkPolicy` (tier `Admin` or
//!   `Baseline`, actions `Accept`/`Deny`/`Pass`, ports as `protocols`);
//! - policy.networking.k8s.io/v1alpha1 `AdminNetworkPolicy` (tier Admin, actions
//!   `Allow`/`Deny`/`Pass`, ports as `ports`) and `BaselineAdminNetworkPolicy` (tier
//!   Baseline, singleton named `default`, actions `Allow`/`Deny`).
//!
//! Field names and limits follow kubernetes-sigs/network-policy-api `apis/v1alpha2`
//! and `apis/v1alpha1` (OpenAPI schema plus CEL rules), which the API server enforces
//! for these CRDs:
//!
//! 1. `priority` is required (except for BANP) and lies in `0..=1000`.
//! 2. `subject` sets exactly one of `namespaces`, `pods`.
//! 3. At most 25 rules per direction in v1alpha2, 100 in v1alpha1; rule `name` at most
//!    100 characters.
//! 4. `from`/`to` are required with 1..=25 (v1alpha2) or 1..=100 (v1alpha1) peers; each
//!    peer sets exactly one field. Ingress peers are `namespaces` or `pods` only; egress
//!    adds `nodes`, `networks` (1..=25 CIDRs) and `domainNames` (1..=25, `Accept`/`Allow`
//!    rules only).
//! 5. A port entry sets exactly one field; numbers are `1..=65535`; ranges need
//!    `start < end`; a named port cannot be used in a rule with `nodes`, `networks` or
//!    `domainNames` peers (they have no named ports).
//! 6. `Pass` is rejected in the Baseline tier: there is no later tier to pass to.
//!
//! Unknown fields are errors, as with `kubectl apply --validate=strict` (see
//! [`super::strict`]): upstream asks implementations to fail closed on a peer type they
//! do not know, and refusing the object is the loudest way. So the serde types below
//! list every field of the CRD schemas, `metadata` and `status` included.

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use serde::Deserialize;
use serde_json::Value;

use super::error::Problems;
use super::location::Sites;
use super::{cidr, ports, selector, strict};
use crate::model::{
    Action, ClusterPeer, ClusterPolicy, ClusterPolicyKind, ClusterRule, PortMatch, Protocol,
    Subject, Tier,
};
use crate::selector::LabelSelector;

/// Highest allowed priority.
const MAX_PRIORITY: i64 = 1000;
/// Longest rule name, in characters.
const MAX_RULE_NAME_LEN: usize = 100;
/// Most CIDRs in one `networks` peer and domain names in one `domainNames` peer.
const MAX_NETWORKS: usize = 25;

/// The whole object. `apiVersion` and `kind` were checked by the dispatcher.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct Object {
    api_version: Option<String>,
    kind: Option<String>,
    metadata: Option<meta::ObjectMeta>,
    spec: Option<Spec>,
    status: Option<Status>,
}

/// The CRDs' status: conditions only.
#[derive(Deserialize)]
#[allow(dead_code)]
struct Status {
    conditions: Option<Vec<meta::Condition>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    tier: Option<String>,
    priority: Option<i64>,
    subject: Option<SubjectSpec>,
    ingress: Option<Vec<Rule>>,
    egress: Option<Vec<Rule>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SubjectSpec {
    namespaces: Option<meta::LabelSelector>,
    pods: Option<NamespacedPod>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NamespacedPod {
    namespace_selector: Option<meta::LabelSelector>,
    pod_selector: Option<meta::LabelSelector>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    name: Option<String>,
    action: Option<String>,
    from: Option<Vec<Peer>>,
    to: Option<Vec<Peer>>,
    /// v1alpha2 spelling.
    protocols: Option<Vec<ProtocolSpec>>,
    /// v1alpha1 spelling.
    ports: Option<Vec<AnpPort>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Peer {
    namespaces: Option<PeerNamespaces>,
    pods: Option<PeerPods>,
    nodes: Option<meta::LabelSelector>,
    networks: Option<Vec<String>>,
    domain_names: Option<Vec<String>>,
}

/// A rule peer's `namespaces`, in either of the two shapes upstream has used for
/// v1alpha1 (told apart by their keys, see [`peer_namespaces`]):
///
/// - release v0.1.1 (the CRD palisade-kube-lab installs): `NamespacedPeer`, exactly one
///   of `namespaceSelector`, `sameLabels`, `notSameLabels`;
/// - later releases and v1alpha2: a plain `LabelSelector` (`matchLabels`,
///   `matchExpressions`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PeerNamespaces {
    namespace_selector: Option<meta::LabelSelector>,
    same_labels: Option<Vec<String>>,
    not_same_labels: Option<Vec<String>>,
    match_labels: Option<std::collections::BTreeMap<String, String>>,
    match_expressions: Option<Vec<meta::LabelSelectorRequirement>>,
}

/// v0.1.1 `NamespacedPeer`: exactly one field.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NamespacedPeer {
    namespace_selector: Option<meta::LabelSelector>,
    same_labels: Option<Vec<String>>,
    not_same_labels: Option<Vec<String>>,
}

/// A rule peer's `pods`: v0.1.1 `{namespaces: NamespacedPeer, podSelector}` or later
/// `{namespaceSelector, podSelector}`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PeerPods {
    namespaces: Option<NamespacedPeer>,
    namespace_selector: Option<meta::LabelSelector>,
    pod_selector: Option<meta::LabelSelector>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProtocolSpec {
    tcp: Option<ProtocolPort>,
    udp: Option<ProtocolPort>,
    sctp: Option<ProtocolPort>,
    destination_named_port: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProtocolPort {
    destination_port: Option<CnpPort>,
}

#[derive(Deserialize)]
struct CnpPort {
    number: Option<i64>,
    range: Option<CnpRange>,
}

#[derive(Deserialize)]
struct CnpRange {
    start: Option<i64>,
    end: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnpPort {
    port_number: Option<AnpPortNumber>,
    named_port: Option<String>,
    port_range: Option<AnpRange>,
}

#[derive(Deserialize)]
struct AnpPortNumber {
    protocol: Option<String>,
    port: Option<i64>,
}

#[derive(Deserialize)]
struct AnpRange {
    protocol: Option<String>,
    start: Option<i64>,
    end: Option<i64>,
}

/// What differs between the three kinds.
struct Flavor {
    kind: ClusterPolicyKind,
    /// Rules per direction, and peers per rule.
    max_items: usize,
    /// Whether this is the v1alpha2 API (`protocols`, `Accept`) rather than v1alpha1
    /// (`ports`, `Allow`).
    v1alpha2: bool,
}

impl Flavor {
    fn of(kind: ClusterPolicyKind) -> Self {
        match kind {
            ClusterPolicyKind::ClusterNetworkPolicy => Flavor {
                kind,
                max_items: 25,
                v1alpha2: true,
            },
            _ => Flavor {
                kind,
                max_items: 100,
                v1alpha2: false,
            },
        }
    }
}

/// Decodes and validates one cluster policy of `kind`. `None` is a decode failure;
/// every problem goes to `p`.
pub(crate) fn cluster_policy(
    v: &Value,
    sites: &Sites,
    kind: ClusterPolicyKind,
    name: &str,
    p: &mut Problems,
) -> Option<ClusterPolicy> {
    let obj: Object = strict::decode(v, sites, p)?;
    if let Some(l) = obj.metadata.as_ref().and_then(|m| m.labels.as_ref()) {
        selector::check_labels(l, "metadata.labels", p);
    }
    let flavor = Flavor::of(kind);
    let Some(spec) = obj.spec else {
        p.error("spec", "Required value");
        return Some(placeholder(kind, name));
    };

    if kind == ClusterPolicyKind::BaselineAdminNetworkPolicy && name != "default" {
        p.error(
            "metadata.name",
            "only one BaselineAdminNetworkPolicy is allowed, and it must be named \"default\"",
        );
    }

    let tier = match kind {
        ClusterPolicyKind::AdminNetworkPolicy => Tier::Admin,
        ClusterPolicyKind::BaselineAdminNetworkPolicy => Tier::Baseline,
        ClusterPolicyKind::ClusterNetworkPolicy => {
            match spec.tier.as_deref() {
                Some("Admin") => Tier::Admin,
                Some("Baseline") => Tier::Baseline,
                Some(other) => {
                    p.error(
                    "spec.tier",
                    format!("unsupported value {other:?}: supported values: \"Admin\", \"Baseline\""),
                );
                    Tier::Admin
                }
                None => {
                    p.error("spec.tier", "Required value");
                    Tier::Admin
                }
            }
        }
    };
    if kind != ClusterPolicyKind::ClusterNetworkPolicy && spec.tier.is_some() {
        p.warn(
            "spec.tier",
            format!("unknown field in {}; ignored", kind.as_str()),
        );
    }

    let priority = match (kind, spec.priority) {
        (ClusterPolicyKind::BaselineAdminNetworkPolicy, Some(_)) => {
            p.warn(
                "spec.priority",
                "unknown field in BaselineAdminNetworkPolicy (a singleton); ignored",
            );
            0
        }
        (ClusterPolicyKind::BaselineAdminNetworkPolicy, None) => 0,
        (_, None) => {
            p.error("spec.priority", "Required value");
            0
        }
        (_, Some(n)) => {
            if !(0..=MAX_PRIORITY).contains(&n) {
                p.error(
                    "spec.priority",
                    format!("must be between 0 and {MAX_PRIORITY}, inclusive (got {n})"),
                );
            }
            n.clamp(0, MAX_PRIORITY) as i32
        }
    };

    let subject = match &spec.subject {
        None => {
            p.error("spec.subject", "Required value");
            None
        }
        Some(s) => subject(s, &flavor, p),
    };

    let ingress = rules(spec.ingress.as_deref(), "spec.ingress", &flavor, tier, p);
    let egress = rules(spec.egress.as_deref(), "spec.egress", &flavor, tier, p);

    Some(ClusterPolicy {
        kind,
        name: name.into(),
        tier,
        priority,
        subject: subject.unwrap_or(Subject::Namespaces(LabelSelector::everything())),
        ingress,
        egress,
    })
}

/// Stands in for a policy whose errors are already recorded; never loaded.
fn placeholder(kind: ClusterPolicyKind, name: &str) -> ClusterPolicy {
    ClusterPolicy {
        kind,
        name: name.into(),
        tier: Tier::Admin,
        priority: 0,
        subject: Subject::Namespaces(LabelSelector::everything()),
        ingress: Vec::new(),
        egress: Vec::new(),
    }
}

fn subject(s: &SubjectSpec, flavor: &Flavor, p: &mut Problems) -> Option<Subject> {
    match (&s.namespaces, &s.pods) {
        (Some(ns), None) => Some(Subject::Namespaces(selector::selector(
            ns,
            "spec.subject.namespaces",
            p,
        ))),
        (None, Some(pods)) => {
            let (namespaces, pods) = namespaced_pod(pods, "spec.subject.pods", flavor, p);
            Some(Subject::Pods { namespaces, pods })
        }
        (None, None) => {
            p.error(
                "spec.subject",
                "must specify exactly one of namespaces, pods",
            );
            None
        }
        (Some(_), Some(_)) => {
            p.error(
                "spec.subject",
                "must specify exactly one of namespaces, pods (both are set)",
            );
            None
        }
    }
}

fn namespaced_pod(
    np: &NamespacedPod,
    field: &str,
    flavor: &Flavor,
    p: &mut Problems,
) -> (LabelSelector, LabelSelector) {
    let namespaces = match &np.namespace_selector {
        Some(s) => selector::selector(s, &format!("{field}.namespaceSelector"), p),
        // Optional in v1alpha2 (empty selects all namespaces), required in v1alpha1.
        None if flavor.v1alpha2 => LabelSelector::everything(),
        None => {
            p.error(format!("{field}.namespaceSelector"), "Required value");
            LabelSelector::everything()
        }
    };
    let pods = match &np.pod_selector {
        Some(s) => selector::selector(s, &format!("{field}.podSelector"), p),
        None => {
            p.error(format!("{field}.podSelector"), "Required value");
            LabelSelector::everything()
        }
    };
    (namespaces, pods)
}

fn rules(
    raw: Option<&[Rule]>,
    field: &str,
    flavor: &Flavor,
    tier: Tier,
    p: &mut Problems,
) -> Vec<ClusterRule> {
    let raw = raw.unwrap_or_default();
    if raw.len() > flavor.max_items {
        p.error(
            field,
            format!(
                "must have at most {} items (has {})",
                flavor.max_items,
                raw.len()
            ),
        );
    }
    let egress = field.ends_with("egress");
    raw.iter()
        .enumerate()
        .filter_map(|(i, r)| rule(r, &format!("{field}[{i}]"), egress, flavor, tier, p))
        .collect()
}

fn rule(
    r: &Rule,
    field: &str,
    egress: bool,
    flavor: &Flavor,
    tier: Tier,
    p: &mut Problems,
) -> Option<ClusterRule> {
    let name = r.name.clone().unwrap_or_default();
    if name.chars().count() > MAX_RULE_NAME_LEN {
        p.error(
            format!("{field}.name"),
            format!("may not be more than {MAX_RULE_NAME_LEN} characters"),
        );
    }
    let action = action(
        r.action.as_deref(),
        &format!("{field}.action"),
        flavor,
        tier,
        p,
    );

    let (peers_name, wrong_name) = if egress {
        ("to", "from")
    } else {
        ("from", "to")
    };
    let (raw_peers, wrong) = if egress {
        (&r.to, &r.from)
    } else {
        (&r.from, &r.to)
    };
    if wrong.is_some() {
        p.error(
            format!("{field}.{wrong_name}"),
            format!("{wrong_name} is not a field of this rule; use {peers_name}"),
        );
    }
    let pf = format!("{field}.{peers_name}");
    let mut peers = Vec::new();
    match raw_peers.as_deref() {
        None | Some([]) => p.error(
            &pf,
            "must have at least 1 item: a rule with no peers matches nothing",
        ),
        Some(list) => {
            if list.len() > flavor.max_items {
                p.error(
                    &pf,
                    format!(
                        "must have at most {} items (has {})",
                        flavor.max_items,
                        list.len()
                    ),
                );
            }
            for (j, peer) in list.iter().enumerate() {
                if let Some(cp) = self::peer(peer, &format!("{pf}[{j}]"), egress, flavor, action, p)
                {
                    peers.push(cp);
                }
            }
        }
    }

    let ports = if flavor.v1alpha2 {
        if r.ports.is_some() {
            p.error(
                format!("{field}.ports"),
                "unknown field in v1alpha2 (v1alpha1 spelling); use protocols",
            );
        }
        r.protocols
            .as_deref()
            .map(|l| protocols(l, &format!("{field}.protocols"), p))
    } else {
        if r.protocols.is_some() {
            p.error(
                format!("{field}.protocols"),
                "unknown field in v1alpha1 (v1alpha2 spelling); use ports",
            );
        }
        r.ports
            .as_deref()
            .map(|l| anp_ports(l, &format!("{field}.ports"), flavor, p))
    };
    let named = ports
        .as_ref()
        .is_some_and(|l| l.iter().any(|m| matches!(m, PortMatch::Named { .. })));
    if named
        && peers.iter().any(|c| {
            matches!(
                c,
                ClusterPeer::Nodes(_) | ClusterPeer::Networks(_) | ClusterPeer::DomainNames(_)
            )
        })
    {
        p.error(
            field,
            "networks/nodes/domainNames peer cannot be set with named ports since there are no named ports for networks/nodes/domainNames",
        );
    }
    Some(ClusterRule {
        name,
        action: action?,
        peers,
        ports,
    })
}

fn action(
    a: Option<&str>,
    field: &str,
    flavor: &Flavor,
    tier: Tier,
    p: &mut Problems,
) -> Option<Action> {
    let (accept, allowed): (&str, &[&str]) = match flavor.kind {
        ClusterPolicyKind::ClusterNetworkPolicy => ("Accept", &["Accept", "Deny", "Pass"]),
        ClusterPolicyKind::AdminNetworkPolicy => ("Allow", &["Allow", "Deny", "Pass"]),
        ClusterPolicyKind::BaselineAdminNetworkPolicy => ("Allow", &["Allow", "Deny"]),
    };
    let Some(a) = a else {
        p.error(field, "Required value");
        return None;
    };
    if !allowed.contains(&a) {
        let list: Vec<String> = allowed.iter().map(|s| format!("{s:?}")).collect();
        p.error(
            field,
            format!(
                "unsupported value {a:?}: supported values: {}",
                list.join(", ")
            ),
        );
        return None;
    }
    if a == "Pass" && tier == Tier::Baseline {
        p.error(
            field,
            "Pass is not allowed in the Baseline tier: there is no later tier to pass to",
        );
        return None;
    }
    Some(match a {
        "Deny" => Action::Deny,
        "Pass" => Action::Pass,
        x => {
            debug_assert_eq!(x, accept);
            Action::Accept
        }
    })
}

fn peer(
    peer: &Peer,
    field: &str,
    egress: bool,
    flavor: &Flavor,
    action: Option<Action>,
    p: &mut Problems,
) -> Option<ClusterPeer> {
    let set: Vec<&str> = [
        ("namespaces", peer.namespaces.is_some()),
        ("pods", peer.pods.is_some()),
        ("nodes", peer.nodes.is_some()),
        ("networks", peer.networks.is_some()),
        ("domainNames", peer.domain_names.is_some()),
    ]
    .iter()
    .filter(|(_, s)| *s)
    .map(|(n, _)| *n)
    .collect();
    let allowed = if egress {
        "namespaces, pods, nodes, networks, domainNames"
    } else {
        "namespaces, pods"
    };
    match set.as_slice() {
        [] => {
            p.error(field, format!("must specify exactly one of {allowed}"));
            return None;
        }
        [_] => {}
        many => {
            p.error(
                field,
                format!(
                    "must specify exactly one of {allowed} (found {})",
                    many.join(", ")
                ),
            );
            return None;
        }
    }
    if !egress && (peer.nodes.is_some() || peer.networks.is_some() || peer.domain_names.is_some()) {
        p.error(
            format!("{field}.{}", set[0]),
            format!("{} peers are only allowed in egress rules", set[0]),
        );
        return None;
    }
    if let Some(ns) = &peer.namespaces {
        let ns = peer_namespaces(ns, &format!("{field}.namespaces"), flavor, p)?;
        return Some(ClusterPeer::Namespaces(ns));
    }
    if let Some(pods) = &peer.pods {
        return peer_pods(pods, &format!("{field}.pods"), flavor, p);
    }
    if let Some(nodes) = &peer.nodes {
        return Some(ClusterPeer::Nodes(selector::selector(
            nodes,
            &format!("{field}.nodes"),
            p,
        )));
    }
    if let Some(nets) = &peer.networks {
        let f = format!("{field}.networks");
        check_count(nets.len(), &f, p);
        let parsed = nets
            .iter()
            .enumerate()
            .filter_map(|(i, s)| cidr::parse(s, &format!("{f}[{i}]"), p))
            .collect();
        return Some(ClusterPeer::Networks(parsed));
    }
    if let Some(names) = &peer.domain_names {
        let f = format!("{field}.domainNames");
        if flavor.kind == ClusterPolicyKind::BaselineAdminNetworkPolicy {
            p.error(
                &f,
                "domainNames peers are not supported in BaselineAdminNetworkPolicy",
            );
        }
        check_count(names.len(), &f, p);
        if action.is_some_and(|a| a != Action::Accept) {
            p.error(
                &f,
                "domainNames peers are only supported in rules whose action accepts traffic",
            );
        }
        for (i, n) in names.iter().enumerate() {
            if !is_domain_name(n) {
                p.error(
                    format!("{f}[{i}]"),
                    format!("invalid domain name {n:?}: must be a DNS name, optionally starting with \"*.\""),
                );
            }
        }
        return Some(ClusterPeer::DomainNames(names.clone()));
    }
    None
}

/// A rule peer's `namespaces` (`field`) in either shape. Keys decide the shape:
/// `namespaceSelector`/`sameLabels`/`notSameLabels` are v0.1.1 (v1alpha1 only),
/// `matchLabels`/`matchExpressions` a label selector; mixing the two is an error.
/// An empty object is the empty label selector, all namespaces: the v0.1.1 schema
/// refuses it (`minProperties: 1`), so only the later shape can produce it.
fn peer_namespaces(
    ns: &PeerNamespaces,
    field: &str,
    flavor: &Flavor,
    p: &mut Problems,
) -> Option<LabelSelector> {
    let v011 =
        ns.namespace_selector.is_some() || ns.same_labels.is_some() || ns.not_same_labels.is_some();
    let plain = ns.match_labels.is_some() || ns.match_expressions.is_some();
    if v011 && plain {
        p.error(
            field,
            "mixes the v1alpha1 v0.1.1 fields (namespaceSelector, sameLabels, notSameLabels) with label selector fields (matchLabels, matchExpressions): use one shape",
        );
        return None;
    }
    if v011 {
        let peer = NamespacedPeer {
            namespace_selector: ns.namespace_selector.clone(),
            same_labels: ns.same_labels.clone(),
            not_same_labels: ns.not_same_labels.clone(),
        };
        return namespaced_peer(&peer, field, flavor, p);
    }
    let ls = meta::LabelSelector {
        match_labels: ns.match_labels.clone(),
        match_expressions: ns.match_expressions.clone(),
    };
    Some(selector::selector(&ls, field, p))
}

/// v0.1.1 `NamespacedPeer` at `field`. `sameLabels`/`notSameLabels` select namespaces
/// relative to each subject pod's namespace; Palisade does not evaluate that, so the
/// policy is refused rather than the peer dropped or widened.
fn namespaced_peer(
    np: &NamespacedPeer,
    field: &str,
    flavor: &Flavor,
    p: &mut Problems,
) -> Option<LabelSelector> {
    let set: Vec<&str> = [
        ("namespaceSelector", np.namespace_selector.is_some()),
        ("sameLabels", np.same_labels.is_some()),
        ("notSameLabels", np.not_same_labels.is_some()),
    ]
    .iter()
    .filter(|(_, s)| *s)
    .map(|(n, _)| *n)
    .collect();
    if flavor.v1alpha2 {
        p.error(
            format!("{field}.{}", set.first().copied().unwrap_or("namespaceSelector")),
            "unknown field in v1alpha2 (v1alpha1 v0.1.1 spelling); use a label selector (matchLabels, matchExpressions)",
        );
        return None;
    }
    match set.as_slice() {
        [] => {
            p.error(
                field,
                "must specify exactly one of namespaceSelector, sameLabels, notSameLabels",
            );
            None
        }
        ["namespaceSelector"] => np
            .namespace_selector
            .as_ref()
            .map(|s| selector::selector(s, &format!("{field}.namespaceSelector"), p)),
        [one] => {
            p.error(
                format!("{field}.{one}"),
                format!("{one} is not supported by Palisade (namespaces relative to the subject's namespace); the policy is not loaded"),
            );
            None
        }
        many => {
            p.error(
                field,
                format!(
                    "must specify exactly one of namespaceSelector, sameLabels, notSameLabels (found {})",
                    many.join(", ")
                ),
            );
            None
        }
    }
}

/// A rule peer's `pods` (`field`) in either shape: v0.1.1 `namespaces` or later
/// `namespaceSelector`, with the required `podSelector`.
fn peer_pods(pp: &PeerPods, field: &str, flavor: &Flavor, p: &mut Problems) -> Option<ClusterPeer> {
    match (&pp.namespaces, &pp.namespace_selector) {
        (Some(_), Some(_)) => {
            p.error(
                field,
                "sets both namespaces (v1alpha1 v0.1.1) and namespaceSelector: use one",
            );
            None
        }
        (Some(ns), None) => {
            let namespaces = namespaced_peer(ns, &format!("{field}.namespaces"), flavor, p);
            let pods = match &pp.pod_selector {
                Some(s) => selector::selector(s, &format!("{field}.podSelector"), p),
                None => {
                    p.error(format!("{field}.podSelector"), "Required value");
                    return None;
                }
            };
            Some(ClusterPeer::Pods {
                namespaces: namespaces?,
                pods,
            })
        }
        (None, _) => {
            let np = NamespacedPod {
                namespace_selector: pp.namespace_selector.clone(),
                pod_selector: pp.pod_selector.clone(),
            };
            let (namespaces, pods) = namespaced_pod(&np, field, flavor, p);
            Some(ClusterPeer::Pods { namespaces, pods })
        }
    }
}

fn check_count(n: usize, field: &str, p: &mut Problems) {
    if n == 0 {
        p.error(field, "must have at least 1 item");
    } else if n > MAX_NETWORKS {
        p.error(
            field,
            format!("must have at most {MAX_NETWORKS} items (has {n})"),
        );
    }
}

/// `^(\*\.)?([a-zA-Z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.)+[a-zA-Z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.?$`
fn is_domain_name(s: &str) -> bool {
    let s = s.strip_prefix("*.").unwrap_or(s);
    let s = s.strip_suffix('.').unwrap_or(s);
    let labels: Vec<&str> = s.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
        })
}

/// v1alpha2 `protocols`.
fn protocols(list: &[ProtocolSpec], field: &str, p: &mut Problems) -> Vec<PortMatch> {
    if list.is_empty() {
        p.error(field, "must have at least 1 item when present");
    } else if list.len() > MAX_NETWORKS {
        p.error(
            field,
            format!(
                "must have at most {MAX_NETWORKS} items (has {})",
                list.len()
            ),
        );
    }
    let mut out = Vec::new();
    for (i, ps) in list.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let set: Vec<(&str, Option<Protocol>, Option<&ProtocolPort>)> = [
            ("tcp", Protocol::Tcp, ps.tcp.as_ref()),
            ("udp", Protocol::Udp, ps.udp.as_ref()),
            ("sctp", Protocol::Sctp, ps.sctp.as_ref()),
        ]
        .into_iter()
        .filter_map(|(n, proto, pp)| pp.map(|pp| (n, Some(proto), Some(pp))))
        .chain(
            ps.destination_named_port
                .as_ref()
                .map(|_| ("destinationNamedPort", None, None)),
        )
        .collect();
        match set.as_slice() {
            [] => {
                p.error(
                    &f,
                    "must specify exactly one of tcp, udp, sctp, destinationNamedPort",
                );
                continue;
            }
            [_] => {}
            many => {
                let names: Vec<&str> = many.iter().map(|(n, ..)| *n).collect();
                p.error(
                    &f,
                    format!(
                        "must specify exactly one of tcp, udp, sctp, destinationNamedPort (found {})",
                        names.join(", ")
                    ),
                );
                continue;
            }
        }
        let (n, proto, pp) = set[0];
        let f = format!("{f}.{n}");
        match (proto, pp) {
            (Some(protocol), Some(pp)) => {
                let Some(dp) = &pp.destination_port else {
                    p.error(format!("{f}.destinationPort"), "Required value");
                    continue;
                };
                let f = format!("{f}.destinationPort");
                match (dp.number, &dp.range) {
                    (Some(num), None) => {
                        if let Some(port) = ports::number(num, &format!("{f}.number"), p) {
                            out.push(PortMatch::Range {
                                protocol,
                                port,
                                end_port: port,
                            });
                        }
                    }
                    (None, Some(r)) => {
                        out.extend(range(protocol, r.start, r.end, &format!("{f}.range"), p));
                    }
                    _ => p.error(&f, "must specify exactly one of number, range"),
                }
            }
            _ => {
                let name = ps.destination_named_port.as_deref().unwrap_or_default();
                ports::check_name(name, &f, p);
                out.extend(ports::named_any_protocol(name));
            }
        }
    }
    out
}

fn range(
    protocol: Protocol,
    start: Option<i64>,
    end: Option<i64>,
    field: &str,
    p: &mut Problems,
) -> Option<PortMatch> {
    let (Some(start), Some(end)) = (start, end) else {
        if start.is_none() {
            p.error(format!("{field}.start"), "Required value");
        }
        if end.is_none() {
            p.error(format!("{field}.end"), "Required value");
        }
        return None;
    };
    let s = ports::number(start, &format!("{field}.start"), p);
    let e = ports::number(end, &format!("{field}.end"), p);
    if start >= end {
        p.error(
            field,
            format!("start port must be less than end port (start {start}, end {end})"),
        );
        return None;
    }
    Some(PortMatch::Range {
        protocol,
        port: s?,
        end_port: e?,
    })
}

/// v1alpha1 `ports`.
fn anp_ports(list: &[AnpPort], field: &str, flavor: &Flavor, p: &mut Problems) -> Vec<PortMatch> {
    if list.is_empty() {
        p.error(field, "must have at least 1 item when present");
    } else if list.len() > flavor.max_items {
        p.error(
            field,
            format!(
                "must have at most {} items (has {})",
                flavor.max_items,
                list.len()
            ),
        );
    }
    let mut out = Vec::new();
    for (i, ap) in list.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let count = [
            ap.port_number.is_some(),
            ap.named_port.is_some(),
            ap.port_range.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if count != 1 {
            p.error(
                &f,
                "must specify exactly one of portNumber, namedPort, portRange",
            );
            continue;
        }
        if let Some(pn) = &ap.port_number {
            let f = format!("{f}.portNumber");
            let protocol = ports::protocol(pn.protocol.as_deref(), &format!("{f}.protocol"), p);
            match pn.port {
                None => p.error(format!("{f}.port"), "Required value"),
                Some(n) => {
                    if let Some(port) = ports::number(n, &format!("{f}.port"), p) {
                        out.push(PortMatch::Range {
                            protocol,
                            port,
                            end_port: port,
                        });
                    }
                }
            }
        } else if let Some(name) = &ap.named_port {
            ports::check_name(name, &format!("{f}.namedPort"), p);
            out.extend(ports::named_any_protocol(name));
        } else if let Some(r) = &ap.port_range {
            let f = format!("{f}.portRange");
            let protocol = ports::protocol(r.protocol.as_deref(), &format!("{f}.protocol"), p);
            out.extend(range(protocol, r.start, r.end, &f, p));
        }
    }
    out
}
