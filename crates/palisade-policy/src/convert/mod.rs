//! `palisade convert`: Kubernetes NetworkPolicies into Calico `projectcalico.org/v3`
//! NetworkPolicies, and Calico policies back into NetworkPolicies, only where the result
//! gives every flow the verdict the original gives (docs/semantics.md, "Conversion").
//!
//! A conversion is decided on the model ([`Cluster`]), against the semantics the
//! evaluator implements ([`crate::verdict`]); what cannot keep its meaning is refused
//! per object with the field and the reason, and the object is left out. Every
//! converted document is loaded back through [`crate::manifest::load`] before it is
//! returned, so an output the loader would reject is a refusal too (fail closed).
//!
//! Some answers depend on the other objects of the input, as the verdicts do: a policy
//! moved to order 1000 keeps its meaning only if no Calico policy with `Deny` or `Pass`
//! rules sits between its old place in the default tier and its new one, and a Calico
//! peer selector becomes a pod selector only if no NetworkSet of the input matches it.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::calico_selector::{CalicoSelector, Expr};
use crate::manifest;
use crate::model::{
    CalicoAction, CalicoEntity, CalicoKind, CalicoPolicy, CalicoPort, CalicoRule, Cluster,
    ClusterPolicy, Direction, NamespaceMatch, NetworkPolicy, NetworkPolicyPeer, Order, PortMatch,
    Protocol, Tier, K8S_NETWORK_POLICY_ORDER, NAMESPACE_NAME_LABEL,
};
use crate::selector::{LabelSelector, Requirement};
use crate::verdict::calico::{
    in_scope_global, in_scope_namespaced, sort_key, SortKey, CALICO_NAME_LABEL,
    CALICO_ORCHESTRATOR_LABEL, NAMESPACE_LABEL_PREFIX,
};

#[cfg(test)]
mod tests;

/// What to convert into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Kubernetes NetworkPolicies into Calico NetworkPolicies (`--to calico`).
    Calico,
    /// Calico NetworkPolicies into Kubernetes NetworkPolicies (`--to networkpolicy`).
    NetworkPolicy,
    /// Calico GlobalNetworkPolicies into ClusterNetworkPolicies
    /// (`--to clusternetworkpolicy`).
    ClusterNetworkPolicy,
}

/// One converted object.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    /// The object it came from, as the loader names it (`Kind namespace/name`).
    pub from: String,
    /// The object it became, named the same way.
    pub to: String,
    /// The manifest, ready to serialize.
    pub document: Value,
}

/// One object that was not converted, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The object, as the loader names it (`Kind namespace/name`).
    pub object: String,
    /// The field path that cannot be converted (`spec.ingress[1].action`).
    pub field: String,
    /// Why its meaning would change.
    pub reason: String,
}

/// The result of [`convert`]: converted objects and refusals, each in input order
/// (the cluster's key order).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Conversion {
    /// Converted objects.
    pub converted: Vec<Converted>,
    /// Objects of the source kinds left out.
    pub refused: Vec<Refusal>,
}

impl Conversion {
    /// The converted objects as YAML documents separated by `---`.
    pub fn yaml(&self) -> String {
        let docs: Vec<String> = self.converted.iter().map(|c| yaml(&c.document)).collect();
        docs.join("---\n")
    }
}

/// One manifest as YAML.
fn yaml(doc: &Value) -> String {
    // Serializing a `Value` cannot fail: it has string keys only.
    serde_saphyr::to_string(doc).unwrap_or_default()
}

/// Why one field cannot be converted.
#[derive(Debug)]
struct Refuse {
    field: String,
    reason: String,
}

fn refuse(field: impl Into<String>, reason: impl Into<String>) -> Refuse {
    Refuse {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Converts every object of the source kinds of `target` in `cluster`: NetworkPolicies
/// (and, refused, cluster policies) for [`Target::Calico`]; Calico policies for the
/// other two. Objects of other kinds are neither converted nor reported.
pub fn convert(cluster: &Cluster, target: Target) -> Conversion {
    let mut out = Conversion::default();
    let mut put = |from: String, to: String, r: Result<Value, Refuse>| match r.and_then(check) {
        Ok(document) => out.converted.push(Converted { from, to, document }),
        Err(e) => out.refused.push(Refusal {
            object: from,
            field: e.field,
            reason: e.reason,
        }),
    };
    match target {
        Target::Calico => {
            for np in cluster.network_policies.values() {
                let from = format!("NetworkPolicy {}/{}", np.namespace, np.name);
                let to = format!(
                    "{} {}/{}",
                    CalicoKind::NetworkPolicy.as_str(),
                    np.namespace,
                    np.name
                );
                put(from, to, np_to_calico(cluster, np));
            }
            for cp in cluster.cluster_policies.values() {
                let from = format!("{} {}", cp.kind.as_str(), cp.name);
                put(from, String::new(), Err(cluster_policy_to_calico(cp)));
            }
        }
        Target::NetworkPolicy | Target::ClusterNetworkPolicy => {
            for p in cluster.calico_policies.values() {
                let from = crate::verdict::calico::display_name(p);
                let r = match (target, p.kind) {
                    (Target::NetworkPolicy, CalicoKind::NetworkPolicy) => calico_to_np(cluster, p),
                    (Target::NetworkPolicy, CalicoKind::GlobalNetworkPolicy) => Err(refuse(
                        "kind",
                        "a GlobalNetworkPolicy is cluster-scoped and selects pods of many namespaces; a NetworkPolicy selects pods of its own namespace only (try --to clusternetworkpolicy)",
                    )),
                    (_, CalicoKind::NetworkPolicy) => Err(refuse(
                        "kind",
                        "a namespaced Calico NetworkPolicy becomes a Kubernetes NetworkPolicy, not a ClusterNetworkPolicy (try --to networkpolicy)",
                    )),
                    (_, CalicoKind::GlobalNetworkPolicy) => Err(gnp_to_cluster_policy(p)),
                };
                let to = match &p.namespace {
                    Some(ns) => format!("NetworkPolicy {ns}/{}", p.name),
                    None => format!("ClusterNetworkPolicy {}", p.name),
                };
                put(from, to, r);
            }
        }
    }
    out
}

/// Loads a converted document back: an output the loader rejects (or warns about) is
/// refused with the loader's words, never written.
fn check(doc: Value) -> Result<Value, Refuse> {
    let loaded = manifest::load(&[("converted".to_string(), yaml(&doc))]);
    if let Some(e) = loaded.errors.first() {
        return Err(refuse(
            "",
            format!("the converted object would not load: {e}"),
        ));
    }
    if let Some(w) = loaded.warnings.first() {
        return Err(refuse(
            w.field.clone(),
            format!("the converted object loads with a warning: {}", w.message),
        ));
    }
    Ok(doc)
}

// ---------------------------------------------------------------------------------------
// The default tier: where a policy sits, and what may sit between two places.
// ---------------------------------------------------------------------------------------

/// The sort key a Kubernetes NetworkPolicy has in Calico's default tier.
fn knp_key(namespace: &str, name: &str) -> SortKey {
    sort_key(
        Some(Order(K8S_NETWORK_POLICY_ORDER)),
        &format!("knp.default.{name}"),
        namespace,
        false,
    )
}

/// A Calico policy of `cluster` (other than `skip`) with a `Deny` or `Pass` rule in one
/// of `dirs` whose place in the default tier lies strictly between `a` and `b`: moving
/// an allow-only policy from `a` to `b` would change which of the two decides first.
/// Allow-only policies (and `Log` rules) never change a verdict by their order.
fn decisive_between<'c>(
    cluster: &'c Cluster,
    a: &SortKey,
    b: &SortKey,
    dirs: &[Direction],
    skip: Option<&str>,
) -> Option<&'c CalicoPolicy> {
    let (lo, hi) = match a.cmp(b) {
        Ordering::Greater => (b, a),
        _ => (a, b),
    };
    cluster.calico_policies.values().find(|q| {
        if skip == Some(q.key().as_str()) {
            return false;
        }
        let decisive = dirs.iter().any(|d| {
            q.rules(*d)
                .unwrap_or_default()
                .iter()
                .any(|r| matches!(r.action, CalicoAction::Deny | CalicoAction::Pass))
        });
        let k = sort_key(
            q.order,
            &q.name,
            q.namespace.as_deref().unwrap_or_default(),
            true,
        );
        decisive && lo < &k && &k < hi
    })
}

fn order_text(o: Option<Order>) -> String {
    match o {
        Some(o) => format!("order {}", o.0),
        None => "no order (last)".to_string(),
    }
}

fn directions(ingress: bool, egress: bool) -> Vec<Direction> {
    let mut d = Vec::new();
    if ingress {
        d.push(Direction::Ingress);
    }
    if egress {
        d.push(Direction::Egress);
    }
    d
}

// ---------------------------------------------------------------------------------------
// Kubernetes NetworkPolicy -> Calico NetworkPolicy.
// ---------------------------------------------------------------------------------------

/// The label every Kubernetes pod has in Calico; Calico's own conversion of a
/// NetworkPolicy puts it in front of every pod selector, which keeps NetworkSets (which
/// do not carry it) out of what the selector matches.
const POD_ONLY: &str = "projectcalico.org/orchestrator == 'k8s'";

/// A Calico string literal for `v`.
fn quote(v: &str, field: &str) -> Result<String, Refuse> {
    if !v.contains('\'') {
        Ok(format!("'{v}'"))
    } else if !v.contains('"') {
        Ok(format!("\"{v}\""))
    } else {
        Err(refuse(
            field,
            format!("{v:?} holds both quote characters: Calico strings have no escapes"),
        ))
    }
}

/// A Kubernetes label selector as a Calico selector. `pod`: it selects pods (prefixed
/// by [`POD_ONLY`]); otherwise namespaces (`all()` when empty).
fn label_selector_to_calico(s: &LabelSelector, pod: bool, field: &str) -> Result<String, Refuse> {
    let mut terms = Vec::new();
    if pod {
        terms.push(POD_ONLY.to_string());
    }
    let reserved = |k: &str| -> Result<(), Refuse> {
        if k.starts_with("projectcalico.org/") || (pod && k.starts_with(NAMESPACE_LABEL_PREFIX)) {
            Err(refuse(
                field,
                format!("label key {k:?} is one Calico sets itself on endpoints and namespaces, so a Calico selector on it means something else"),
            ))
        } else {
            Ok(())
        }
    };
    let list = |vs: &[String]| -> Result<String, Refuse> {
        let q: Result<Vec<String>, Refuse> = vs.iter().map(|v| quote(v, field)).collect();
        Ok(q?.join(", "))
    };
    for (k, v) in &s.match_labels {
        reserved(k)?;
        terms.push(format!("{k} == {}", quote(v, field)?));
    }
    for r in &s.match_expressions {
        terms.push(match r {
            Requirement::In(k, vs) => {
                reserved(k)?;
                format!("{k} in {{{}}}", list(vs)?)
            }
            Requirement::NotIn(k, vs) => {
                reserved(k)?;
                format!("{k} not in {{{}}}", list(vs)?)
            }
            Requirement::Exists(k) => {
                reserved(k)?;
                format!("has({k})")
            }
            Requirement::DoesNotExist(k) => {
                reserved(k)?;
                format!("!has({k})")
            }
        });
    }
    if terms.is_empty() {
        return Ok("all()".into());
    }
    Ok(terms.join(" && "))
}

/// A port entry of a Calico rule: a number, or `"lo:hi"`, or a name.
fn calico_port(p: &PortMatch) -> Option<Value> {
    match p {
        PortMatch::AllPorts(_) => None,
        PortMatch::Range { port, end_port, .. } if port == end_port => Some(json!(port)),
        PortMatch::Range { port, end_port, .. } => Some(json!(format!("{port}:{end_port}"))),
        PortMatch::Named { name, .. } => Some(json!(name)),
    }
}

/// A NetworkPolicy rule's ports as Calico `(protocol, ports)` groups, one Calico rule
/// each: a Calico rule has one protocol, and no ports means every port of it.
fn port_groups(ports: Option<&[PortMatch]>) -> Vec<(Option<Protocol>, Vec<Value>)> {
    let Some(ports) = ports else {
        return vec![(None, Vec::new())];
    };
    let mut order: Vec<Protocol> = Vec::new();
    let mut groups: BTreeMap<Protocol, Option<Vec<Value>>> = BTreeMap::new();
    for p in ports {
        let proto = match p {
            PortMatch::AllPorts(pr) => *pr,
            PortMatch::Range { protocol, .. } | PortMatch::Named { protocol, .. } => *protocol,
        };
        if !order.contains(&proto) {
            order.push(proto);
        }
        let g = groups.entry(proto).or_insert_with(|| Some(Vec::new()));
        match (calico_port(p), g.as_mut()) {
            // Every port of the protocol: the group needs no port list.
            (None, _) => *g = None,
            (Some(v), Some(list)) if !list.contains(&v) => list.push(v),
            _ => {}
        }
    }
    order
        .into_iter()
        .map(|p| (Some(p), groups.remove(&p).flatten().unwrap_or_default()))
        .collect()
}

/// A NetworkPolicy peer as a Calico entity (the rule's `source` for ingress,
/// `destination` for egress).
fn np_peer_to_entity(
    peer: &NetworkPolicyPeer,
    own_namespace: &str,
    field: &str,
) -> Result<Map<String, Value>, Refuse> {
    let mut e = Map::new();
    match peer {
        NetworkPolicyPeer::Pods { namespaces, pods } => {
            let sel = label_selector_to_calico(pods, true, &format!("{field}.podSelector"))?;
            match namespaces {
                NamespaceMatch::Named(ns) if ns == own_namespace => {}
                NamespaceMatch::Named(ns) => {
                    e.insert(
                        "namespaceSelector".into(),
                        json!(format!(
                            "{CALICO_NAME_LABEL} == {}",
                            quote(ns, &format!("{field}.namespace"))?
                        )),
                    );
                }
                NamespaceMatch::Selector(s) => {
                    let ns =
                        label_selector_to_calico(s, false, &format!("{field}.namespaceSelector"))?;
                    e.insert("namespaceSelector".into(), json!(ns));
                }
            }
            e.insert("selector".into(), json!(sel));
        }
        NetworkPolicyPeer::IpBlock(b) => {
            e.insert("nets".into(), json!([b.cidr.to_string()]));
            if !b.except.is_empty() {
                let ex: Vec<String> = b.except.iter().map(|n| n.to_string()).collect();
                e.insert("notNets".into(), json!(ex));
            }
        }
    }
    Ok(e)
}

/// One Kubernetes NetworkPolicy as a Calico NetworkPolicy of order 1000, the order
/// Calico gives it in the default tier.
fn np_to_calico(cluster: &Cluster, np: &NetworkPolicy) -> Result<Value, Refuse> {
    if np.ingress.is_none() && np.egress.is_none() {
        return Err(refuse(
            "spec.policyTypes",
            "the policy isolates no direction; a Calico policy must have types",
        ));
    }
    let calico_key = format!(
        "{}/{}/{}",
        CalicoKind::NetworkPolicy.as_str(),
        np.namespace,
        np.name
    );
    if cluster.calico_policies.contains_key(&calico_key) {
        return Err(refuse(
            "metadata.name",
            format!(
                "the input already has a Calico NetworkPolicy {}/{}; the converted one would replace it",
                np.namespace, np.name
            ),
        ));
    }
    // Pod selectors become `projectcalico.org/orchestrator == 'k8s' && ...`, which only
    // pods match, unless a NetworkSet carries that label too.
    if let Some(set) = cluster
        .network_sets
        .values()
        .find(|s| s.labels.get(CALICO_ORCHESTRATOR_LABEL).map(String::as_str) == Some("k8s"))
    {
        return Err(refuse(
            "spec",
            format!(
                "{} is labelled {CALICO_ORCHESTRATOR_LABEL}: k8s, so a Calico pod selector would match its addresses too",
                set.key()
            ),
        ));
    }
    let dirs = directions(np.ingress.is_some(), np.egress.is_some());
    let old = knp_key(&np.namespace, &np.name);
    let new = sort_key(
        Some(Order(K8S_NETWORK_POLICY_ORDER)),
        &np.name,
        &np.namespace,
        true,
    );
    if let Some(q) = decisive_between(cluster, &old, &new, &dirs, None) {
        return Err(refuse(
            "metadata.name",
            format!(
                "Calico sorts this NetworkPolicy as knp.default.{} at order 1000; as a Calico policy named {} it would sort on the other side of {} ({}), whose Deny or Pass rules would then decide first or second",
                np.name,
                np.name,
                crate::verdict::calico::display_name(q),
                order_text(q.order)
            ),
        ));
    }
    let mut spec = Map::new();
    // Written as the integer Calico shows (`order: 1000`).
    spec.insert("order".into(), json!(K8S_NETWORK_POLICY_ORDER as u32));
    spec.insert(
        "selector".into(),
        json!(label_selector_to_calico(
            &np.pod_selector,
            true,
            "spec.podSelector"
        )?),
    );
    let types: Vec<&str> = dirs
        .iter()
        .map(|d| match d {
            Direction::Ingress => "Ingress",
            Direction::Egress => "Egress",
        })
        .collect();
    spec.insert("types".into(), json!(types));
    for dir in &dirs {
        let (key, peer_side) = match dir {
            Direction::Ingress => ("ingress", "source"),
            Direction::Egress => ("egress", "destination"),
        };
        let peers_key = match dir {
            Direction::Ingress => "from",
            Direction::Egress => "to",
        };
        let mut rules = Vec::new();
        for (i, rule) in np.rules(*dir).unwrap_or_default().iter().enumerate() {
            let entities: Vec<Map<String, Value>> = match &rule.peers {
                None => vec![Map::new()],
                Some(peers) => peers
                    .iter()
                    .enumerate()
                    .map(|(j, p)| {
                        np_peer_to_entity(
                            p,
                            &np.namespace,
                            &format!("spec.{key}[{i}].{peers_key}[{j}]"),
                        )
                    })
                    .collect::<Result<_, _>>()?,
            };
            for entity in &entities {
                for (proto, ports) in port_groups(rule.ports.as_deref()) {
                    let mut r = Map::new();
                    r.insert("action".into(), json!("Allow"));
                    if let Some(p) = proto {
                        r.insert("protocol".into(), json!(p.as_str()));
                    }
                    let mut dest = Map::new();
                    if *dir == Direction::Egress {
                        dest.extend(entity.clone());
                    } else if !entity.is_empty() {
                        r.insert(peer_side.into(), Value::Object(entity.clone()));
                    }
                    if !ports.is_empty() {
                        dest.insert("ports".into(), json!(ports));
                    }
                    if !dest.is_empty() {
                        r.insert("destination".into(), Value::Object(dest));
                    }
                    rules.push(Value::Object(r));
                }
            }
        }
        spec.insert(key.into(), json!(rules));
    }
    Ok(json!({
        "apiVersion": "projectcalico.org/v3",
        "kind": "NetworkPolicy",
        "metadata": {"name": np.name, "namespace": np.namespace},
        "spec": spec,
    }))
}

/// Why no cluster policy converts to Calico.
fn cluster_policy_to_calico(cp: &ClusterPolicy) -> Refuse {
    match cp.tier {
        Tier::Admin => refuse(
            "spec.tier",
            "an Admin-tier policy is evaluated before Calico's default tier and falls through to it when no rule matches; a Calico policy of the default tier that selects a pod denies at the end of the tier what no rule matched, and Palisade reads Calico's default tier only (Calico itself enforces ClusterNetworkPolicy in its own kube-admin tier)",
        ),
        Tier::Baseline => refuse(
            "spec.tier",
            "a Baseline-tier policy decides only what Calico's default tier (NetworkPolicies included) left undecided; a Calico policy of the default tier would decide before the end-of-tier deny, so its Allow rules would open what an isolating NetworkPolicy denies",
        ),
    }
}

// ---------------------------------------------------------------------------------------
// Calico NetworkPolicy -> Kubernetes NetworkPolicy.
// ---------------------------------------------------------------------------------------

/// Which object a Calico selector selects, for the label keys Calico adds itself.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Selects {
    /// Pods (endpoints): `projectcalico.org/orchestrator == 'k8s'` always holds.
    Pods,
    /// Namespaces: `projectcalico.org/name` is the namespace's name, which Kubernetes
    /// keeps in `kubernetes.io/metadata.name`.
    Namespaces,
}

/// The conjuncts of an `&&` chain.
fn conjuncts<'e>(e: &'e Expr, out: &mut Vec<&'e Expr>) {
    match e {
        Expr::And(a, b) => {
            conjuncts(a, out);
            conjuncts(b, out);
        }
        other => out.push(other),
    }
}

/// One conjunct of a selector as a requirement, `Ok(None)` when it always holds.
fn requirement(e: &Expr, what: Selects, field: &str) -> Result<Option<Requirement>, Refuse> {
    let key = |k: &str| -> Result<String, Refuse> {
        if what == Selects::Namespaces && k == CALICO_NAME_LABEL {
            return Ok(NAMESPACE_NAME_LABEL.to_string());
        }
        if k.starts_with("projectcalico.org/")
            || (what == Selects::Pods && k.starts_with(NAMESPACE_LABEL_PREFIX))
        {
            return Err(refuse(
                field,
                format!("label key {k:?} is one Calico adds itself; a Kubernetes label selector does not see it"),
            ));
        }
        Ok(k.to_string())
    };
    let one = |v: &str| vec![v.to_string()];
    Ok(Some(match e {
        Expr::All => return Ok(None),
        Expr::Eq(k, v) if what == Selects::Pods && k == CALICO_ORCHESTRATOR_LABEL && v == "k8s" => {
            return Ok(None)
        }
        Expr::Eq(k, v) => Requirement::In(key(k)?, one(v)),
        Expr::Ne(k, v) => Requirement::NotIn(key(k)?, one(v)),
        Expr::In(k, vs) if vs.is_empty() => {
            return Err(refuse(
                field,
                format!("`{k} in {{}}` matches nothing; a Kubernetes `In` needs values"),
            ))
        }
        Expr::In(k, vs) => Requirement::In(key(k)?, vs.clone()),
        Expr::NotIn(_, vs) if vs.is_empty() => return Ok(None),
        Expr::NotIn(k, vs) => Requirement::NotIn(key(k)?, vs.clone()),
        Expr::Has(k) => Requirement::Exists(key(k)?),
        Expr::Not(inner) => match inner.as_ref() {
            Expr::Has(k) => Requirement::DoesNotExist(key(k)?),
            Expr::Eq(k, v) => Requirement::NotIn(key(k)?, one(v)),
            Expr::Ne(k, v) => Requirement::In(key(k)?, one(v)),
            Expr::In(_, vs) if vs.is_empty() => return Ok(None),
            Expr::In(k, vs) => Requirement::NotIn(key(k)?, vs.clone()),
            Expr::NotIn(k, vs) if !vs.is_empty() => Requirement::In(key(k)?, vs.clone()),
            Expr::Not(e) if !matches!(e.as_ref(), Expr::And(..)) => {
                return requirement(e, what, field)
            }
            _ => {
                return Err(refuse(
                    field,
                    "`!` of this expression has no Kubernetes label selector form (a label selector is a list of requirements that must all hold)",
                ))
            }
        },
        Expr::Or(..) => {
            return Err(refuse(
                field,
                "`||` has no Kubernetes label selector form: every requirement of a label selector must hold (write one policy or peer per alternative)",
            ))
        }
        Expr::Contains(..) | Expr::StartsWith(..) | Expr::EndsWith(..) => {
            return Err(refuse(
                field,
                "`contains`, `starts with` and `ends with` have no Kubernetes label selector form (it compares whole values)",
            ))
        }
        Expr::Global => {
            return Err(refuse(
                field,
                "`global()` selects GlobalNetworkSets, which Kubernetes NetworkPolicy has no peer for",
            ))
        }
        Expr::And(..) => unreachable!("conjuncts are flattened"),
    }))
}

/// A Calico selector as a Kubernetes label selector, or why it has none.
fn calico_to_label_selector(
    s: &CalicoSelector,
    what: Selects,
    field: &str,
) -> Result<LabelSelector, Refuse> {
    let mut terms = Vec::new();
    conjuncts(&s.expr, &mut terms);
    let mut out = LabelSelector::everything();
    for t in terms {
        match requirement(t, what, field)? {
            None => {}
            Some(Requirement::In(k, vs)) if vs.len() == 1 && !out.match_labels.contains_key(&k) => {
                out.match_labels.insert(k, vs[0].clone());
            }
            Some(r) => out.match_expressions.push(r),
        }
    }
    Ok(out)
}

/// A label selector as its Kubernetes manifest form.
fn label_selector_json(s: &LabelSelector) -> Value {
    let mut m = Map::new();
    if !s.match_labels.is_empty() {
        m.insert("matchLabels".into(), json!(s.match_labels));
    }
    if !s.match_expressions.is_empty() {
        let ex: Vec<Value> = s
            .match_expressions
            .iter()
            .map(|r| match r {
                Requirement::In(k, vs) => json!({"key": k, "operator": "In", "values": vs}),
                Requirement::NotIn(k, vs) => json!({"key": k, "operator": "NotIn", "values": vs}),
                Requirement::Exists(k) => json!({"key": k, "operator": "Exists"}),
                Requirement::DoesNotExist(k) => json!({"key": k, "operator": "DoesNotExist"}),
            })
            .collect();
        m.insert("matchExpressions".into(), json!(ex));
    }
    Value::Object(m)
}

/// A NetworkSet of the input that a rule's selector would match in the policy's scope:
/// a Kubernetes pod selector never matches its addresses.
fn matching_network_set<'c>(
    cluster: &'c Cluster,
    policy: &CalicoPolicy,
    sel: &CalicoSelector,
    ns_sel: Option<&CalicoSelector>,
) -> Option<&'c crate::model::NetworkSet> {
    let own = policy.namespace.as_deref();
    cluster.network_sets.values().find(|set| {
        let scope = match &set.namespace {
            Some(ns) => in_scope_namespaced(own, ns_sel, &cluster.namespace_labels(ns), ns),
            None => in_scope_global(own, ns_sel),
        };
        scope && sel.matches(&set.labels, set.namespace.is_none())
    })
}

/// A Calico rule's peer as NetworkPolicy peers: `Ok(None)` when it matches no peer at
/// all (every net is excluded by `notNets`), `Ok(Some(None))` for every peer.
#[allow(clippy::type_complexity)]
fn entity_to_peers(
    cluster: &Cluster,
    policy: &CalicoPolicy,
    e: &CalicoEntity,
    field: &str,
) -> Result<Option<Option<Vec<Value>>>, Refuse> {
    if e.service.is_some() {
        return Err(refuse(
            format!("{field}.services"),
            "a NetworkPolicy has no peer naming a Service (its endpoints and cluster IPs follow the Service as it changes)",
        ));
    }
    if e.not_selector.is_some() {
        return Err(refuse(
            format!("{field}.notSelector"),
            "a NetworkPolicy peer cannot exclude pods, and notSelector also matches every address that is not a selected pod",
        ));
    }
    let labels = e.selector.is_some() || e.namespace_selector.is_some();
    if labels && (!e.nets.is_empty() || !e.not_nets.is_empty()) {
        return Err(refuse(
            format!("{field}.nets"),
            "labels and addresses in one peer must both hold; a NetworkPolicy peer is either pods or an ipBlock",
        ));
    }
    if e.nets.is_empty() && !e.not_nets.is_empty() {
        return Err(refuse(
            format!("{field}.notNets"),
            "notNets without nets also matches a peer with no address in the flow's family, which no ipBlock (cidr with except) matches",
        ));
    }
    if !e.nets.is_empty() {
        let mut blocks = Vec::new();
        for n in &e.nets {
            // A hole covering the whole net leaves nothing of it.
            if e.not_nets.iter().any(|x| x.contains(n)) {
                continue;
            }
            let except: Vec<String> = e
                .not_nets
                .iter()
                .filter(|x| n.contains(*x))
                .map(|x| x.to_string())
                .collect();
            let mut b = Map::new();
            b.insert("cidr".into(), json!(n.to_string()));
            if !except.is_empty() {
                b.insert("except".into(), json!(except));
            }
            blocks.push(json!({ "ipBlock": b }));
        }
        if blocks.is_empty() {
            return Ok(None);
        }
        return Ok(Some(Some(blocks)));
    }
    if !labels {
        return Ok(Some(None));
    }
    let all = CalicoSelector::all();
    let sel = e.selector.as_ref().unwrap_or(&all);
    let sel_field = format!("{field}.selector");
    if let Some(set) = matching_network_set(cluster, policy, sel, e.namespace_selector.as_ref()) {
        return Err(refuse(
            sel_field,
            format!(
                "it also matches {} ({}), whose addresses a pod selector would not match (add `{POD_ONLY} &&` to select pods only)",
                set.key(),
                set.nets.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    let pods = calico_to_label_selector(sel, Selects::Pods, &sel_field)?;
    let mut peer = Map::new();
    if let Some(ns) = &e.namespace_selector {
        let nsel = calico_to_label_selector(
            ns,
            Selects::Namespaces,
            &format!("{field}.namespaceSelector"),
        )?;
        peer.insert("namespaceSelector".into(), label_selector_json(&nsel));
    }
    peer.insert("podSelector".into(), label_selector_json(&pods));
    Ok(Some(Some(vec![Value::Object(peer)])))
}

/// One Calico rule as a NetworkPolicy rule; `Ok(None)` when it matches nothing.
fn calico_rule_to_np(
    cluster: &Cluster,
    policy: &CalicoPolicy,
    r: &CalicoRule,
    dir: Direction,
    field: &str,
) -> Result<Option<Value>, Refuse> {
    match r.action {
        CalicoAction::Allow => {}
        CalicoAction::Deny => {
            return Err(refuse(
                format!("{field}.action"),
                "Deny: a NetworkPolicy only allows (and cannot deny what another policy allows)",
            ))
        }
        CalicoAction::Pass => {
            return Err(refuse(
                format!("{field}.action"),
                "Pass skips the rest of Calico's default tier, NetworkPolicies included, to the Baseline tier; a NetworkPolicy cannot",
            ))
        }
        CalicoAction::Log => {
            return Err(refuse(
                format!("{field}.action"),
                "Log has no NetworkPolicy equivalent: the traffic would no longer be logged",
            ))
        }
    }
    if r.not_protocol.is_some() {
        return Err(refuse(
            format!("{field}.notProtocol"),
            "a NetworkPolicy port names a protocol; it cannot match every protocol but one (ICMP and other protocols included)",
        ));
    }
    if !r.not_ports.is_empty() {
        return Err(refuse(
            format!("{field}.destination.notPorts"),
            "a NetworkPolicy lists the ports it allows; it cannot exclude ports (named ones resolve per pod)",
        ));
    }
    let mut ports = Vec::new();
    if let Some(proto) = r.protocol {
        if r.ports.is_empty() {
            ports.push(json!({"protocol": proto.as_str()}));
        }
        for (i, p) in r.ports.iter().enumerate() {
            ports.push(match p {
                CalicoPort::Range(0, _) => {
                    return Err(refuse(
                        format!("{field}.destination.ports[{i}]"),
                        "port 0 cannot be written in a NetworkPolicy (ports are 1-65535)",
                    ))
                }
                CalicoPort::Range(lo, hi) if lo == hi => {
                    json!({"protocol": proto.as_str(), "port": lo})
                }
                CalicoPort::Range(lo, hi) => {
                    json!({"protocol": proto.as_str(), "port": lo, "endPort": hi})
                }
                CalicoPort::Named(n) => json!({"protocol": proto.as_str(), "port": n}),
            });
        }
    }
    let side = match dir {
        Direction::Ingress => "source",
        Direction::Egress => "destination",
    };
    let Some(peers) = entity_to_peers(cluster, policy, &r.peer, &format!("{field}.{side}"))? else {
        return Ok(None);
    };
    let mut rule = Map::new();
    if let Some(peers) = peers {
        let key = match dir {
            Direction::Ingress => "from",
            Direction::Egress => "to",
        };
        rule.insert(key.into(), json!(peers));
    }
    if !ports.is_empty() {
        rule.insert("ports".into(), json!(ports));
    }
    Ok(Some(Value::Object(rule)))
}

/// One Calico NetworkPolicy as a Kubernetes NetworkPolicy.
fn calico_to_np(cluster: &Cluster, p: &CalicoPolicy) -> Result<Value, Refuse> {
    let ns = p.namespace.clone().unwrap_or_default();
    if cluster
        .network_policies
        .contains_key(&format!("{ns}/{}", p.name))
    {
        return Err(refuse(
            "metadata.name",
            format!(
                "the input already has a NetworkPolicy {ns}/{}; the converted one would replace it",
                p.name
            ),
        ));
    }
    let dirs = directions(p.ingress.is_some(), p.egress.is_some());
    let old = sort_key(p.order, &p.name, &ns, true);
    let new = knp_key(&ns, &p.name);
    if let Some(q) = decisive_between(cluster, &old, &new, &dirs, Some(&p.key())) {
        return Err(refuse(
            "spec.order",
            format!(
                "{}: a NetworkPolicy is at order 1000 (as knp.default.{}), on the other side of {} ({}), whose Deny or Pass rules would then decide before or after this policy's Allow rules instead",
                order_text(p.order),
                p.name,
                crate::verdict::calico::display_name(q),
                order_text(q.order)
            ),
        ));
    }
    let pods = calico_to_label_selector(&p.selector, Selects::Pods, "spec.selector")?;
    let mut spec = Map::new();
    spec.insert("podSelector".into(), label_selector_json(&pods));
    let mut types = Vec::new();
    for dir in &dirs {
        let key = match dir {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        };
        let mut rules = Vec::new();
        for (i, r) in p.rules(*dir).unwrap_or_default().iter().enumerate() {
            if let Some(rule) = calico_rule_to_np(cluster, p, r, *dir, &format!("spec.{key}[{i}]"))?
            {
                rules.push(rule);
            }
        }
        types.push(match dir {
            Direction::Ingress => "Ingress",
            Direction::Egress => "Egress",
        });
        spec.insert(key.into(), json!(rules));
    }
    spec.insert("policyTypes".into(), json!(types));
    Ok(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": p.name, "namespace": ns},
        "spec": spec,
    }))
}

/// Why a GlobalNetworkPolicy does not become a ClusterNetworkPolicy.
fn gnp_to_cluster_policy(p: &CalicoPolicy) -> Refuse {
    let pass = [Direction::Ingress, Direction::Egress]
        .iter()
        .find_map(|d| {
            p.rules(*d)?
                .iter()
                .position(|r| r.action == CalicoAction::Pass)
                .map(|i| (*d, i))
        });
    if let Some((d, i)) = pass {
        let key = match d {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        };
        return refuse(
            format!("spec.{key}[{i}].action"),
            "Pass in Calico's default tier skips the NetworkPolicies to the Baseline tier; an Admin-tier Pass hands over to the NetworkPolicies",
        );
    }
    refuse(
        "spec.selector",
        "a GlobalNetworkPolicy that selects a pod denies at the end of Calico's default tier what no rule matched; a ClusterNetworkPolicy falls through instead (Admin: to the NetworkPolicies, Baseline: to the default allow), and it moves out of the default tier, before (Admin) or after (Baseline) every NetworkPolicy and Calico policy",
    )
}
