//! Calico's default tier: Calico NetworkPolicies and GlobalNetworkPolicies, and the
//! Kubernetes NetworkPolicies Calico places in the same tier at order 1000.
//!
//! The rules, each with its source (the same list is in `docs/semantics.md` §9):
//!
//! 1. A policy *applies* to a pod for a direction when its `types` include the
//!    direction and its `selector` matches the pod (a NetworkPolicy: pods of its own
//!    namespace; a GlobalNetworkPolicy: pods in namespaces matching its
//!    `namespaceSelector`). (Calico reference, NetworkPolicy / GlobalNetworkPolicy.)
//! 2. Policies are evaluated by `order`, lowest first, a policy without `order` after
//!    every policy with one (Tier reference: "No value indicates highest order");
//!    Kubernetes NetworkPolicies have order 1000 and sort under Calico's name for them,
//!    `knp.default.<name>`; ties are broken by name, then namespace, then a
//!    NetworkPolicy before a Calico policy (Palisade's choice).
//! 3. Within a policy, rules in order: `Allow` and `Deny` are final, `Log` continues
//!    with the next rule, `Pass` skips the rest of the tier (Rule reference).
//! 4. If some policy applies and no rule decided, the traffic is denied at the end of
//!    the tier (Tier reference: "If the Tier applies to the endpoint, but takes no
//!    action on the packet the packet is dropped"). This is also what makes a
//!    Kubernetes NetworkPolicy isolate.
//! 5. `Pass` goes on to the next tier: Palisade's Baseline tier, then the default
//!    allow, standing in for Calico's Kubernetes profiles, which allow.

use std::cmp::Ordering;
use std::net::IpAddr;

use crate::calico_selector::CalicoSelector;
use crate::compiled::RuleOrigin;
use crate::model::{
    service_account_selector, CalicoAction, CalicoEntity, CalicoPolicy, CalicoPort, CalicoRule,
    Cluster, Direction, NetworkPolicy, Order, Pod, ServiceRef, K8S_NETWORK_POLICY_ORDER,
    SERVICE_ACCOUNT_LABEL, SERVICE_ACCOUNT_LABEL_PREFIX, SERVICE_ACCOUNT_NAME_LABEL,
};
use crate::selector::Labels;

use super::matching::{np_peer_matches, ports_match, Endpoint};
use super::{Step, Traffic};

/// The label Calico gives an endpoint for its namespace (Calico automatic labels).
pub const CALICO_NAMESPACE_LABEL: &str = "projectcalico.org/namespace";
/// The label Calico gives a namespace for its name (Calico automatic labels).
pub const CALICO_NAME_LABEL: &str = "projectcalico.org/name";
/// The label Calico gives every Kubernetes workload endpoint.
pub const CALICO_ORCHESTRATOR_LABEL: &str = "projectcalico.org/orchestrator";
/// Prefix under which an endpoint inherits its namespace's labels (Calico's Kubernetes
/// namespace profiles, `kns.<namespace>`).
pub const NAMESPACE_LABEL_PREFIX: &str = "pcns.";

/// The labels a Calico namespace selector sees: the namespace's own labels plus
/// `projectcalico.org/name`.
pub(crate) fn namespace_labels(ns_labels: &Labels, namespace: &str) -> Labels {
    let mut l = ns_labels.clone();
    l.insert(CALICO_NAME_LABEL.into(), namespace.into());
    l
}

/// Whether `key` is one of the reserved service account keys, which only
/// [`service_account_facts`] may set.
fn reserved_service_account_key(key: &str) -> bool {
    key == SERVICE_ACCOUNT_LABEL || key.starts_with(SERVICE_ACCOUNT_LABEL_PREFIX)
}

/// What Calico knows of a pod's service account, as the labels its endpoint carries:
/// `projectcalico.org/serviceaccount: <name>` (from the pod's spec) and, when the
/// ServiceAccount object is known, each of its labels and `projectcalico.org/name:
/// <name>` under `pcsa.` (Calico's service account profile; an unknown ServiceAccount
/// contributes no `pcsa.` label, as a missing profile contributes none).
///
/// This is the whole compilation of service accounts: the facts are folded into the
/// label set every Calico selector is matched against, under keys no pod label can take
/// ([`pod_labels`] drops a pod's own labels of those keys), and `serviceAccounts` and
/// `serviceAccountSelector` become selectors over them
/// ([`crate::model::ServiceAccountMatch::as_selector`]). So the evaluator and the
/// compiler (whose identities carry these facts, see `compile::identity::PodClass`) use
/// one matching code path, Calico's own conversion, and a pod cannot claim a service
/// account, or its labels, by labelling itself.
pub(crate) fn service_account_facts(cluster: &Cluster, namespace: &str, name: &str) -> Labels {
    let mut l = Labels::from([(SERVICE_ACCOUNT_LABEL.to_string(), name.to_string())]);
    if let Some(sa) = cluster.service_accounts.get(&format!("{namespace}/{name}")) {
        for (k, v) in &sa.labels {
            l.insert(format!("{SERVICE_ACCOUNT_LABEL_PREFIX}{k}"), v.clone());
        }
        l.insert(
            format!("{SERVICE_ACCOUNT_LABEL_PREFIX}{SERVICE_ACCOUNT_NAME_LABEL}"),
            name.to_string(),
        );
    }
    l
}

/// The labels a Calico selector sees on a pod: its own (less the reserved service
/// account keys), `projectcalico.org/namespace`, `projectcalico.org/orchestrator: k8s`,
/// each namespace label under `pcns.`, and its service account facts (`sa_facts`, from
/// [`service_account_facts`]).
pub(crate) fn pod_labels(
    pod_labels: &Labels,
    ns_labels: &Labels,
    namespace: &str,
    sa_facts: &Labels,
) -> Labels {
    let mut l = pod_labels.clone();
    l.retain(|k, _| !reserved_service_account_key(k));
    for (k, v) in namespace_labels(ns_labels, namespace) {
        l.insert(format!("{NAMESPACE_LABEL_PREFIX}{k}"), v);
    }
    l.insert(CALICO_NAMESPACE_LABEL.into(), namespace.into());
    l.insert(CALICO_ORCHESTRATOR_LABEL.into(), "k8s".into());
    l.extend(sa_facts.iter().map(|(k, v)| (k.clone(), v.clone())));
    l
}

/// Whether `policy` selects `pod` (rule 1, without the direction): its namespace
/// scope, then `selector && serviceAccountSelector` (the latter over `pcsa.` labels).
pub(crate) fn selects(
    policy: &CalicoPolicy,
    pod_l: &Labels,
    ns_l: &Labels,
    namespace: &str,
    sa_facts: &Labels,
) -> bool {
    let ns_ok = match &policy.namespace {
        Some(own) => own == namespace,
        None => policy
            .namespace_selector
            .as_ref()
            .is_none_or(|s| s.matches(&namespace_labels(ns_l, namespace), false)),
    };
    if !ns_ok {
        return false;
    }
    let labels = pod_labels(pod_l, ns_l, namespace, sa_facts);
    policy.selector.matches(&labels, false)
        && policy
            .service_account_selector
            .as_ref()
            .is_none_or(|s| service_account_selector(s).matches(&labels, false))
}

/// The positive selector of a rule's peer, as Calico forms it (libcalico-go
/// `getEndpointSelector`): `serviceAccounts` AND `selector`; `all()` when only a
/// `namespaceSelector` is set; scoped by the caller.
pub(crate) fn positive_selector(ent: &CalicoEntity) -> Option<CalicoSelector> {
    let sa = ent.service_accounts.as_ref().map(|m| m.as_selector());
    match (sa, &ent.selector) {
        (Some(sa), Some(sel)) => Some(sa.and(sel)),
        (Some(sa), None) => Some(sa),
        (None, Some(sel)) => Some(sel.clone()),
        (None, None) => ent
            .namespace_selector
            .as_ref()
            .map(|_| CalicoSelector::all()),
    }
}

/// Whether a namespaced resource in `namespace` is in the scope of a rule selector of
/// `policy` with namespace selector `ns_sel`.
pub(crate) fn in_scope_namespaced(
    policy_ns: Option<&str>,
    ns_sel: Option<&CalicoSelector>,
    ns_labels: &Labels,
    namespace: &str,
) -> bool {
    match ns_sel {
        Some(s) => s.matches(&namespace_labels(ns_labels, namespace), false),
        None => policy_ns.is_none_or(|own| own == namespace),
    }
}

/// Whether a non-namespaced resource (a GlobalNetworkSet) is in scope: only through a
/// namespace selector using `global()`, or from a GlobalNetworkPolicy without one.
pub(crate) fn in_scope_global(policy_ns: Option<&str>, ns_sel: Option<&CalicoSelector>) -> bool {
    match ns_sel {
        Some(s) => s.expr.mentions_global() && s.matches(&Labels::new(), true),
        None => policy_ns.is_none(),
    }
}

/// A policy's place in the default tier: `(order or +inf, name, namespace, 0 for a
/// Kubernetes NetworkPolicy / 1 for a Calico policy)`, a total order (a Calico policy
/// may be named like a NetworkPolicy's `knp.default.<name>`).
pub(crate) type SortKey = (Order, String, String, u8);

/// A policy's sort key (rule 2).
pub(crate) fn sort_key(order: Option<Order>, name: &str, namespace: &str, calico: bool) -> SortKey {
    (
        order.unwrap_or(Order(f64::INFINITY)),
        name.to_string(),
        namespace.to_string(),
        u8::from(calico),
    )
}

/// Compares two sort keys; an unset order (stored as +inf) sorts after every set one,
/// including a set order of +inf, which decoding rejects anyway.
fn cmp_keys(a: &SortKey, b: &SortKey) -> Ordering {
    a.cmp(b)
}

/// One policy of the default tier.
enum Member<'c> {
    Calico(&'c CalicoPolicy),
    Kubernetes(&'c NetworkPolicy),
}

/// Whether `e` (the other side) is matched by `sel` in the scope of `policy` with
/// namespace selector `ns_sel`: a pod in scope whose Calico labels match, or an address
/// in a network set in scope whose labels match.
fn selected(
    cluster: &Cluster,
    policy: &CalicoPolicy,
    sel: &CalicoSelector,
    ns_sel: Option<&CalicoSelector>,
    e: &Endpoint<'_>,
) -> bool {
    let own = policy.namespace.as_deref();
    if let Some(p) = e.pod {
        let ns_l = cluster.namespace_labels(&p.namespace);
        let facts = service_account_facts(cluster, &p.namespace, &p.service_account);
        if in_scope_namespaced(own, ns_sel, &ns_l, &p.namespace)
            && sel.matches(&pod_labels(&p.labels, &ns_l, &p.namespace, &facts), false)
        {
            return true;
        }
    }
    let Some(ip) = e.ip else { return false };
    cluster.network_sets.values().any(|set| {
        let scope = match &set.namespace {
            Some(ns) => in_scope_namespaced(own, ns_sel, &cluster.namespace_labels(ns), ns),
            None => in_scope_global(own, ns_sel),
        };
        scope
            && sel.matches(&set.labels, set.namespace.is_none())
            && set.nets.iter().any(|n| n.contains(&ip))
    })
}

/// The addresses a `services` match stands for: the Service's EndpointSlice
/// addresses (every family), and for egress its cluster IPs.
pub(crate) fn service_addresses(cluster: &Cluster, s: &ServiceRef, dir: Direction) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = cluster
        .endpoint_slices
        .values()
        .filter(|es| es.namespace == s.namespace && es.service_name.as_deref() == Some(&s.name))
        .flat_map(|es| es.addresses.iter().copied())
        .collect();
    if dir == Direction::Egress {
        if let Some(svc) = cluster.services.get(&format!("{}/{}", s.namespace, s.name)) {
            out.extend(svc.cluster_ips.iter().copied());
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Whether the other side matches a rule's entity.
fn entity_matches(
    cluster: &Cluster,
    policy: &CalicoPolicy,
    ent: &CalicoEntity,
    dir: Direction,
    e: &Endpoint<'_>,
) -> bool {
    if !ent.nets.is_empty()
        && !e
            .ip
            .is_some_and(|ip| ent.nets.iter().any(|n| n.contains(&ip)))
    {
        return false;
    }
    if e.ip
        .is_some_and(|ip| ent.not_nets.iter().any(|n| n.contains(&ip)))
    {
        return false;
    }
    let ns_sel = ent.namespace_selector.as_ref();
    if let Some(sel) = positive_selector(ent) {
        if !selected(cluster, policy, &sel, ns_sel, e) {
            return false;
        }
    }
    if let Some(sel) = &ent.not_selector {
        if selected(cluster, policy, sel, ns_sel, e) {
            return false;
        }
    }
    if let Some(s) = &ent.service {
        if !e
            .ip
            .is_some_and(|ip| service_addresses(cluster, s, dir).contains(&ip))
        {
            return false;
        }
    }
    true
}

/// Whether `port` is in a Calico port list, named ports resolved on `dst_pod`.
fn port_in(list: &[CalicoPort], rule: &CalicoRule, dst_pod: Option<&Pod>, port: u16) -> bool {
    list.iter().any(|p| match p {
        CalicoPort::Range(lo, hi) => (*lo..=*hi).contains(&port),
        CalicoPort::Named(name) => {
            rule.protocol
                .and_then(|proto| dst_pod.and_then(|d| d.resolve_named_port(name, proto)))
                == Some(port)
        }
    })
}

/// Whether a rule matches the traffic.
fn rule_matches(
    cluster: &Cluster,
    policy: &CalicoPolicy,
    rule: &CalicoRule,
    t: &Traffic<'_>,
) -> bool {
    if rule.protocol.is_some_and(|p| p.number() != t.protocol)
        || rule.not_protocol.is_some_and(|p| p.number() == t.protocol)
    {
        return false;
    }
    if !rule.ports.is_empty() && !port_in(&rule.ports, rule, t.dst_pod, t.port) {
        return false;
    }
    if port_in(&rule.not_ports, rule, t.dst_pod, t.port) {
        return false;
    }
    entity_matches(cluster, policy, &rule.peer, t.dir, t.peer)
}

/// The name a policy is known by in explanations: `Kind namespace/name`.
pub(crate) fn display_name(policy: &CalicoPolicy) -> String {
    match &policy.namespace {
        Some(ns) => format!("{} {ns}/{}", policy.kind.as_str(), policy.name),
        None => format!("{} {}", policy.kind.as_str(), policy.name),
    }
}

/// What the default tier did.
pub(super) enum TierResult {
    /// Allowed or denied, final.
    Decided(bool, RuleOrigin),
    /// A `Pass` rule matched: go on to the Baseline tier.
    Passed,
}

/// The default tier when at least one Calico policy applies to the pod for this
/// direction; `None` when none does (the caller then evaluates NetworkPolicies alone,
/// which gives the same verdict as this function would).
pub(super) fn default_tier(
    cluster: &Cluster,
    pod: &Pod,
    t: &Traffic<'_>,
    consulted: &mut Vec<Step>,
) -> Option<TierResult> {
    let ns_l = cluster.namespace_labels(&pod.namespace);
    let facts = service_account_facts(cluster, &pod.namespace, &pod.service_account);
    let mut members: Vec<(SortKey, Member<'_>)> = cluster
        .calico_policies
        .values()
        .filter(|p| {
            p.rules(t.dir).is_some() && selects(p, &pod.labels, &ns_l, &pod.namespace, &facts)
        })
        .map(|p| {
            let ns = p.namespace.clone().unwrap_or_default();
            (sort_key(p.order, &p.name, &ns, true), Member::Calico(p))
        })
        .collect();
    if members.is_empty() {
        return None;
    }
    members.extend(
        cluster
            .network_policies
            .values()
            .filter(|np| np.namespace == pod.namespace && np.pod_selector.matches(&pod.labels))
            .filter(|np| np.rules(t.dir).is_some())
            .map(|np| {
                (
                    sort_key(
                        Some(Order(K8S_NETWORK_POLICY_ORDER)),
                        &format!("knp.default.{}", np.name),
                        &np.namespace,
                        false,
                    ),
                    Member::Kubernetes(np),
                )
            }),
    );
    members.sort_by(|a, b| cmp_keys(&a.0, &b.0));
    let applied: Vec<String> = members
        .iter()
        .map(|(_, m)| match m {
            Member::Calico(p) => display_name(p),
            Member::Kubernetes(np) => format!("NetworkPolicy {}/{}", np.namespace, np.name),
        })
        .collect();
    for (_, m) in &members {
        match m {
            Member::Calico(p) => {
                let rules = p.rules(t.dir).unwrap_or_default();
                let mut logged = Vec::new();
                let mut outcome = None;
                for (index, r) in rules.iter().enumerate() {
                    if !rule_matches(cluster, p, r, t) {
                        continue;
                    }
                    match r.action {
                        CalicoAction::Log => logged.push(index),
                        action => {
                            outcome = Some((index, action));
                            break;
                        }
                    }
                }
                consulted.push(Step::CalicoPolicy {
                    policy: display_name(p),
                    order: p.order,
                    direction: t.dir,
                    matched: outcome,
                    logged,
                });
                let Some((index, action)) = outcome else {
                    continue;
                };
                let origin = RuleOrigin::Calico {
                    kind: p.kind,
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    direction: t.dir,
                    index,
                    action,
                };
                return Some(match action {
                    CalicoAction::Allow => TierResult::Decided(true, origin),
                    CalicoAction::Deny => TierResult::Decided(false, origin),
                    _ => TierResult::Passed,
                });
            }
            Member::Kubernetes(np) => {
                let rules = np.rules(t.dir).unwrap_or_default();
                let index = rules.iter().position(|rule| {
                    let peer_ok = match &rule.peers {
                        None => true,
                        Some(peers) => peers.iter().any(|p| np_peer_matches(cluster, p, t.peer)),
                    };
                    peer_ok && ports_match(rule.ports.as_deref(), t.dst_pod, t.protocol, t.port)
                });
                let key = format!("{}/{}", np.namespace, np.name);
                consulted.push(Step::NetworkPolicies {
                    direction: t.dir,
                    isolating: vec![key.clone()],
                    allowed_by: index.map(|i| (key.clone(), i)),
                });
                if let Some(index) = index {
                    return Some(TierResult::Decided(
                        true,
                        RuleOrigin::NetworkPolicy {
                            namespace: np.namespace.clone(),
                            name: np.name.clone(),
                            direction: t.dir,
                            index,
                        },
                    ));
                }
            }
        }
    }
    Some(TierResult::Decided(
        false,
        RuleOrigin::Isolated {
            direction: t.dir,
            policies: applied,
        },
    ))
}
