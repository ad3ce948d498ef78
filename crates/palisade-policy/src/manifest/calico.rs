//! Calico `projectcalico.org/v3` (and the CRD form `crd.projectcalico.org/v1`)
//! NetworkPolicy, GlobalNetworkPolicy, NetworkSet and GlobalNetworkSet into
//! [`crate::model::CalicoPolicy`] and [`crate::model::NetworkSet`].
//!
//! Field names follow Calico's reference pages (`reference/resources/networkpolicy`,
//! `globalnetworkpolicy`, `networkset`, `globalnetworkset` on docs.tigera.io). Decoding
//! is strict, as for every other kind: an unknown field is an error naming it. Defaults,
//! from the same pages:
//!
//! 1. `selector` absent or blank: `all()`.
//! 2. `types` absent: `Ingress` if there are ingress rules or no rules at all, `Egress`
//!    if there are egress rules, both if both (the table under "Spec").
//! 3. A `services.namespace` left out in a namespaced policy is the policy's namespace.
//! 4. A `nets` entry without a prefix length is a host (`/32`, `/128`).
//! 5. `serviceAccounts: {}` (neither `names` nor `selector`) adds no criterion, and a
//!    `serviceAccountSelector` of `all()` or blank selects every account (libcalico-go's
//!    conversion produces no selector for either); `serviceAccounts` is accepted on the
//!    peer side of a rule, like every other entity criterion.
//!
//! What Palisade does not enforce is an error naming the field, and rejects that
//! policy alone (fail closed, never a silently weaker policy):
//!
//! - `tier` other than `default`; `doNotTrack`, `preDNAT`, `applyOnForward` set to
//!   true (host-endpoint features); `http` matches;
//! - `icmp`/`notICMP`, and `protocol`/`notProtocol` other than TCP, UDP, SCTP (6, 17,
//!   132): the datapath classifies every other protocol into one class and cannot
//!   tell ICMP from GRE, let alone ICMP types and codes;
//! - criteria on the selected pod's own side of a rule (`source.*` in an egress rule,
//!   `destination.*` other than ports in an ingress rule) and source ports: the
//!   datapath looks up a rule table by the *peer* and the *destination* port only;
//! - `ports`/`notPorts` without a `protocol` of TCP, UDP or SCTP (Calico's own rule).

use std::collections::BTreeSet;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use serde_json::Value;

use super::error::Problems;
use super::location::Sites;
use super::{cidr, ports, selector, strict};
use crate::calico_selector::CalicoSelector;
use crate::model::{
    CalicoAction, CalicoEntity, CalicoKind, CalicoPolicy, CalicoPort, CalicoRule, NetworkSet,
    Order, Protocol, ServiceAccountMatch, ServiceRef,
};

/// Most rules per direction accepted: bounds the work one object can cause (Calico
/// documents no limit; this is far above any policy seen in practice).
const MAX_RULES: usize = 1000;
/// Most CIDRs in one `nets`/`notNets` list or one network set.
const MAX_NETS: usize = 10_000;
/// Most ports in one `ports`/`notPorts` list.
const MAX_PORTS: usize = 1000;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct PolicyObject {
    api_version: Option<String>,
    kind: Option<String>,
    metadata: Option<meta::ObjectMeta>,
    spec: Option<PolicySpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PolicySpec {
    order: Option<f64>,
    tier: Option<String>,
    selector: Option<String>,
    /// GlobalNetworkPolicy only.
    namespace_selector: Option<String>,
    service_account_selector: Option<String>,
    types: Option<Vec<String>>,
    ingress: Option<Vec<Rule>>,
    egress: Option<Vec<Rule>>,
    do_not_track: Option<bool>,
    #[serde(rename = "preDNAT")]
    pre_dnat: Option<bool>,
    apply_on_forward: Option<bool>,
    performance_hints: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct Rule {
    action: Option<String>,
    protocol: Option<IntOrString>,
    not_protocol: Option<IntOrString>,
    icmp: Option<Value>,
    #[serde(rename = "notICMP")]
    not_icmp: Option<Value>,
    ip_version: Option<i64>,
    source: Option<Entity>,
    destination: Option<Entity>,
    http: Option<Value>,
    metadata: Option<RuleMetadata>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct RuleMetadata {
    annotations: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entity {
    nets: Option<Vec<String>>,
    not_nets: Option<Vec<String>>,
    selector: Option<String>,
    not_selector: Option<String>,
    namespace_selector: Option<String>,
    ports: Option<Vec<IntOrString>>,
    not_ports: Option<Vec<IntOrString>>,
    service_accounts: Option<SaMatch>,
    services: Option<Services>,
}

/// `serviceAccounts` (Calico's ServiceAccountMatch).
#[derive(Deserialize)]
struct SaMatch {
    names: Option<Vec<String>>,
    selector: Option<String>,
}

#[derive(Deserialize)]
struct Services {
    name: Option<String>,
    namespace: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct SetObject {
    api_version: Option<String>,
    kind: Option<String>,
    metadata: Option<meta::ObjectMeta>,
    spec: Option<SetSpec>,
}

#[derive(Deserialize)]
struct SetSpec {
    nets: Option<Vec<String>>,
}

/// A selector at `field`; an error names the column.
fn parse_selector(text: &str, field: &str, p: &mut Problems) -> Option<CalicoSelector> {
    match CalicoSelector::parse(text) {
        Ok(s) => Some(s),
        Err(e) => {
            p.error(field, format!("{e} in {text:?}"));
            None
        }
    }
}

/// An optional selector: absent or blank is `None`.
fn opt_selector(text: &Option<String>, field: &str, p: &mut Problems) -> Option<CalicoSelector> {
    let t = text.as_deref()?;
    if t.trim().is_empty() {
        return None;
    }
    parse_selector(t, field, p)
}

/// A CIDR or a bare address (a host) at `field`.
fn net(s: &str, field: &str, p: &mut Problems) -> Option<IpNet> {
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Some(IpNet::from(ip));
    }
    cidr::parse(s, field, p).map(|n| n.trunc())
}

fn nets(list: &Option<Vec<String>>, field: &str, p: &mut Problems) -> Vec<IpNet> {
    let list = list.as_deref().unwrap_or_default();
    if list.len() > MAX_NETS {
        p.error(field, format!("more than {MAX_NETS} entries"));
        return Vec::new();
    }
    list.iter()
        .enumerate()
        .filter_map(|(i, s)| net(s, &format!("{field}[{i}]"), p))
        .collect()
}

/// `protocol`/`notProtocol`: only what the datapath tells apart.
fn protocol(v: &Option<IntOrString>, field: &str, p: &mut Problems) -> Option<Protocol> {
    let v = v.as_ref()?;
    let parsed = match v {
        IntOrString::Int(6) => Some(Protocol::Tcp),
        IntOrString::Int(17) => Some(Protocol::Udp),
        IntOrString::Int(132) => Some(Protocol::Sctp),
        IntOrString::String(s) if s == "TCP" => Some(Protocol::Tcp),
        IntOrString::String(s) if s == "UDP" => Some(Protocol::Udp),
        IntOrString::String(s) if s == "SCTP" => Some(Protocol::Sctp),
        _ => None,
    };
    if parsed.is_none() {
        let shown = match v {
            IntOrString::Int(n) => n.to_string(),
            IntOrString::String(s) => format!("{s:?}"),
        };
        let known = matches!(v, IntOrString::Int(1..=255))
            || matches!(v, IntOrString::String(s) if ["ICMP", "ICMPv6", "UDPLite"].contains(&s.as_str()) || s.parse::<u8>().is_ok_and(|n| n > 0));
        if known {
            p.error(
                field,
                format!("protocol {shown} is not enforced: the datapath matches TCP, UDP and SCTP and puts every other protocol in one class, so a rule on it cannot be enforced exactly; the policy is rejected rather than enforced wrongly"),
            );
        } else {
            p.error(
                field,
                format!("invalid protocol {shown}: expected TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite or 1-255"),
            );
        }
    }
    parsed
}

/// `ports`/`notPorts`: numbers, `"lo:hi"` ranges and names.
fn port_list(list: &Option<Vec<IntOrString>>, field: &str, p: &mut Problems) -> Vec<CalicoPort> {
    let list = list.as_deref().unwrap_or_default();
    if list.len() > MAX_PORTS {
        p.error(field, format!("more than {MAX_PORTS} entries"));
        return Vec::new();
    }
    let mut out = Vec::new();
    for (i, v) in list.iter().enumerate() {
        let f = format!("{field}[{i}]");
        match v {
            IntOrString::Int(n) => {
                if let Some(n) = ports::number(i64::from(*n), &f, p) {
                    out.push(CalicoPort::Range(n, n));
                }
            }
            IntOrString::String(s) => {
                if let Some((lo, hi)) = s.split_once(':') {
                    let num = |t: &str, p: &mut Problems| match t.trim().parse::<i64>() {
                        Ok(n) => ports::number(n, &f, p),
                        Err(_) => {
                            p.error(
                                &f,
                                format!(
                                    "invalid port range {s:?}: expected \"start:end\" with numbers"
                                ),
                            );
                            None
                        }
                    };
                    if let (Some(lo), Some(hi)) = (num(lo, p), num(hi, p)) {
                        if lo > hi {
                            p.error(
                                &f,
                                format!("invalid port range {s:?}: start is greater than end"),
                            );
                        } else {
                            out.push(CalicoPort::Range(lo, hi));
                        }
                    }
                } else if let Ok(n) = s.parse::<i64>() {
                    if let Some(n) = ports::number(n, &f, p) {
                        out.push(CalicoPort::Range(n, n));
                    }
                } else {
                    ports::check_name(s, &f, p);
                    out.push(CalicoPort::Named(s.clone()));
                }
            }
        }
    }
    out
}

/// Most names in one `serviceAccounts.names` list.
const MAX_SA_NAMES: usize = 1000;

/// `serviceAccounts: {names, selector}` at `field`; `None` when it sets neither (Calico
/// then adds no criterion: libcalico-go `parseServiceAccounts` returns no selector).
fn sa_match(m: &SaMatch, field: &str, p: &mut Problems) -> Option<ServiceAccountMatch> {
    let names = m.names.clone().unwrap_or_default();
    if names.len() > MAX_SA_NAMES {
        p.error(
            format!("{field}.names"),
            format!("more than {MAX_SA_NAMES} entries"),
        );
        return None;
    }
    for (i, n) in names.iter().enumerate() {
        // A ServiceAccount's name is a DNS subdomain; any other name could never match,
        // so it is a mistake worth naming rather than a rule that silently matches none.
        let errs = super::names::dns1123_subdomain(n);
        if !errs.is_empty() {
            p.error(
                format!("{field}.names[{i}]"),
                format!("invalid service account name {n:?}: {}", errs.join("; ")),
            );
        }
    }
    let selector = opt_selector(&m.selector, &format!("{field}.selector"), p);
    if names.is_empty() && selector.is_none() {
        return None;
    }
    Some(ServiceAccountMatch { names, selector })
}

/// Which side of a rule is the peer: the source of ingress, the destination of egress.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Ingress,
    Egress,
}

struct RuleCtx<'a> {
    side: Side,
    /// The policy's namespace, for a namespaced policy.
    namespace: Option<&'a str>,
}

fn rule(r: &Rule, field: &str, ctx: &RuleCtx<'_>, p: &mut Problems) -> Option<CalicoRule> {
    let action = match r.action.as_deref() {
        Some("Allow") => Some(CalicoAction::Allow),
        Some("Deny") => Some(CalicoAction::Deny),
        Some("Pass") => Some(CalicoAction::Pass),
        Some("Log") => Some(CalicoAction::Log),
        Some(other) => {
            p.error(
                format!("{field}.action"),
                format!("unsupported value {other:?}: supported values: \"Allow\", \"Deny\", \"Log\", \"Pass\""),
            );
            None
        }
        None => {
            p.error(format!("{field}.action"), "is required");
            None
        }
    };
    if r.http.is_some() {
        p.error(
            format!("{field}.http"),
            "HTTP match is not supported by Palisade (it needs an application-layer proxy); the policy is rejected",
        );
    }
    for (v, name) in [(&r.icmp, "icmp"), (&r.not_icmp, "notICMP")] {
        if v.is_some() {
            p.error(
                format!("{field}.{name}"),
                "ICMP type/code match is not enforced: the datapath does not read ICMP types and codes; the policy is rejected rather than enforced wrongly",
            );
        }
    }
    let proto = protocol(&r.protocol, &format!("{field}.protocol"), p);
    let not_proto = protocol(&r.not_protocol, &format!("{field}.notProtocol"), p);
    let ipv6 = match r.ip_version {
        None => None,
        Some(4) => Some(false),
        Some(6) => Some(true),
        Some(n) => {
            p.error(
                format!("{field}.ipVersion"),
                format!("unsupported value {n}: supported values: 4, 6"),
            );
            None
        }
    };

    let (peer_name, local_name) = match ctx.side {
        Side::Ingress => ("source", "destination"),
        Side::Egress => ("destination", "source"),
    };
    let (peer_e, local_e) = match ctx.side {
        Side::Ingress => (&r.source, &r.destination),
        Side::Egress => (&r.destination, &r.source),
    };
    let dest = r.destination.as_ref();
    let rule_ports = port_list(
        &dest.and_then(|d| d.ports.clone()),
        &format!("{field}.destination.ports"),
        p,
    );
    let rule_not_ports = port_list(
        &dest.and_then(|d| d.not_ports.clone()),
        &format!("{field}.destination.notPorts"),
        p,
    );
    if (!rule_ports.is_empty() || !rule_not_ports.is_empty())
        && proto.is_none()
        && r.protocol.is_none()
    {
        p.error(
            format!("{field}.protocol"),
            "is required when destination.ports or destination.notPorts is set (TCP, UDP or SCTP)",
        );
    }
    // Source ports are never matchable: only the destination port is looked up.
    if let Some(src) = &r.source {
        for (v, name) in [(&src.ports, "ports"), (&src.not_ports, "notPorts")] {
            if v.is_some() {
                p.error(
                    format!("{field}.source.{name}"),
                    "source ports are not enforced: the datapath matches the destination port only; the policy is rejected",
                );
            }
        }
    }
    if let Some(local) = local_e {
        let set: [(&str, bool); 7] = [
            ("nets", local.nets.is_some()),
            ("notNets", local.not_nets.is_some()),
            ("selector", local.selector.is_some()),
            ("notSelector", local.not_selector.is_some()),
            ("namespaceSelector", local.namespace_selector.is_some()),
            ("serviceAccounts", local.service_accounts.is_some()),
            ("services", local.services.is_some()),
        ];
        for (name, present) in set {
            if present {
                p.error(
                    format!("{field}.{local_name}.{name}"),
                    format!("criteria on the selected pod's own side of a rule are not supported (only {peer_name}.* and destination ports are): narrow spec.selector instead; the policy is rejected"),
                );
            }
        }
    }

    let mut peer = CalicoEntity::default();
    if let Some(e) = peer_e {
        let pf = format!("{field}.{peer_name}");
        peer.nets = nets(&e.nets, &format!("{pf}.nets"), p);
        peer.not_nets = nets(&e.not_nets, &format!("{pf}.notNets"), p);
        let families: BTreeSet<bool> = peer
            .nets
            .iter()
            .chain(&peer.not_nets)
            .map(|n| matches!(n, IpNet::V6(_)))
            .collect();
        if families.len() > 1 {
            p.error(
                format!("{pf}.nets"),
                "IPv4 and IPv6 CIDRs cannot be mixed in one rule (Calico's rule); write one rule per family",
            );
        }
        if let (Some(v6), Some(fam)) = (ipv6, families.iter().next()) {
            if v6 != *fam {
                p.error(
                    format!("{field}.ipVersion"),
                    "does not match the family of the rule's nets",
                );
            }
        }
        peer.selector = opt_selector(&e.selector, &format!("{pf}.selector"), p);
        peer.not_selector = opt_selector(&e.not_selector, &format!("{pf}.notSelector"), p);
        peer.namespace_selector =
            opt_selector(&e.namespace_selector, &format!("{pf}.namespaceSelector"), p);
        if let Some(m) = &e.service_accounts {
            peer.service_accounts = sa_match(m, &format!("{pf}.serviceAccounts"), p);
        }
        if let Some(s) = &e.services {
            let sf = format!("{pf}.services");
            let name = s.name.clone().unwrap_or_default();
            if name.is_empty() {
                p.error(format!("{sf}.name"), "is required");
            }
            let namespace = match (&s.namespace, ctx.namespace) {
                (Some(ns), _) if !ns.is_empty() => ns.clone(),
                (_, Some(own)) => own.to_string(),
                (_, None) => {
                    p.error(
                        format!("{sf}.namespace"),
                        "is required in a GlobalNetworkPolicy",
                    );
                    String::new()
                }
            };
            let others = [
                ("serviceAccounts", peer.service_accounts.is_some()),
                ("nets", !peer.nets.is_empty()),
                ("notNets", !peer.not_nets.is_empty()),
                ("selector", peer.selector.is_some()),
                ("notSelector", peer.not_selector.is_some()),
                ("namespaceSelector", peer.namespace_selector.is_some()),
            ];
            for (other, set) in others {
                if set {
                    p.error(
                        format!("{pf}.{other}"),
                        "cannot be combined with services (Calico's rule: a Service match allows no other selection criteria)",
                    );
                }
            }
            peer.service = Some(ServiceRef { namespace, name });
        }
    }
    // `ipVersion` alone is "any address of the family".
    if let (Some(v6), true) = (ipv6, peer.nets.is_empty()) {
        peer.nets.push(if v6 {
            "::/0".parse().expect("valid")
        } else {
            "0.0.0.0/0".parse().expect("valid")
        });
    }
    Some(CalicoRule {
        action: action?,
        protocol: proto,
        not_protocol: not_proto,
        peer,
        ports: rule_ports,
        not_ports: rule_not_ports,
    })
}

/// A Calico NetworkPolicy (`namespace` given) or GlobalNetworkPolicy.
pub(crate) fn policy(
    v: &Value,
    sites: &Sites,
    kind: CalicoKind,
    namespace: Option<&str>,
    name: &str,
    p: &mut Problems,
) -> Option<CalicoPolicy> {
    let obj: PolicyObject = strict::decode(v, sites, p)?;
    if let Some(labels) = obj.metadata.as_ref().and_then(|m| m.labels.as_ref()) {
        selector::check_labels(labels, "metadata.labels", p);
    }
    let Some(spec) = obj.spec else {
        // An empty policy selects every endpoint for ingress and denies it (types
        // default to Ingress with no rules): refuse to guess that was meant.
        p.error("spec", "is required");
        return None;
    };
    if let Some(t) = &spec.tier {
        if t != "default" {
            p.error(
                "spec.tier",
                format!("tier {t:?} is not supported: Palisade enforces Calico's default tier only; the policy is rejected"),
            );
        }
    }
    let order = match spec.order {
        Some(o) if !o.is_finite() => {
            p.error("spec.order", "must be a finite number");
            None
        }
        Some(o) => Some(Order(if o == 0.0 { 0.0 } else { o })),
        None => None,
    };
    for (set, field) in [
        (spec.do_not_track, "spec.doNotTrack"),
        (spec.pre_dnat, "spec.preDNAT"),
        (spec.apply_on_forward, "spec.applyOnForward"),
    ] {
        if set == Some(true) {
            p.error(
                field,
                "is not supported: it applies to host endpoints, which Palisade does not enforce; the policy is rejected",
            );
        }
    }
    let service_account_selector = opt_selector(
        &spec.service_account_selector,
        "spec.serviceAccountSelector",
        p,
    )
    .filter(|s| s.expr != crate::calico_selector::Expr::All);
    for (i, h) in spec.performance_hints.iter().flatten().enumerate() {
        if h != "AssumeNeededOnEveryNode" {
            p.error(
                format!("spec.performanceHints[{i}]"),
                format!("unsupported value {h:?}: supported values: \"AssumeNeededOnEveryNode\""),
            );
        }
    }
    let selector = match spec.selector.as_deref() {
        Some(s) if !s.trim().is_empty() => parse_selector(s, "spec.selector", p),
        _ => Some(CalicoSelector::all()),
    };
    let namespace_selector = match (kind, &spec.namespace_selector) {
        (CalicoKind::NetworkPolicy, Some(_)) => {
            p.error(
                "spec.namespaceSelector",
                "unknown field; a namespaced NetworkPolicy selects pods of its own namespace (it is a GlobalNetworkPolicy field)",
            );
            None
        }
        (CalicoKind::GlobalNetworkPolicy, s) => opt_selector(s, "spec.namespaceSelector", p),
        (_, None) => None,
    };

    let ingress_rules = spec.ingress.unwrap_or_default();
    let egress_rules = spec.egress.unwrap_or_default();
    let (mut has_ingress, mut has_egress) = (false, false);
    match spec.types.as_deref() {
        None => {
            has_ingress = !ingress_rules.is_empty() || egress_rules.is_empty();
            has_egress = !egress_rules.is_empty();
        }
        Some(types) => {
            for (i, t) in types.iter().enumerate() {
                let seen = match t.as_str() {
                    "Ingress" => std::mem::replace(&mut has_ingress, true),
                    "Egress" => std::mem::replace(&mut has_egress, true),
                    other => {
                        p.error(
                            format!("spec.types[{i}]"),
                            format!("unsupported value {other:?}: supported values: \"Egress\", \"Ingress\""),
                        );
                        false
                    }
                };
                if seen {
                    p.error(format!("spec.types[{i}]"), format!("duplicate value {t:?}"));
                }
            }
            if types.is_empty() {
                p.error("spec.types", "must not be empty when set");
            }
        }
    }
    let convert = |rules: Vec<Rule>, side: Side, on: bool, dir: &str, p: &mut Problems| {
        if !on {
            if !rules.is_empty() {
                p.error(
                    format!("spec.{dir}"),
                    format!(
                        "has rules but spec.types does not include {}; they would never apply",
                        if side == Side::Ingress {
                            "Ingress"
                        } else {
                            "Egress"
                        }
                    ),
                );
            }
            return None;
        }
        if rules.len() > MAX_RULES {
            p.error(
                format!("spec.{dir}"),
                format!("more than {MAX_RULES} rules"),
            );
            return Some(Vec::new());
        }
        let ctx = RuleCtx { side, namespace };
        Some(
            rules
                .iter()
                .enumerate()
                .filter_map(|(i, r)| rule(r, &format!("spec.{dir}[{i}]"), &ctx, p))
                .collect(),
        )
    };
    let ingress = convert(ingress_rules, Side::Ingress, has_ingress, "ingress", p);
    let egress = convert(egress_rules, Side::Egress, has_egress, "egress", p);
    Some(CalicoPolicy {
        kind,
        namespace: namespace.map(str::to_string),
        name: name.to_string(),
        order,
        selector: selector?,
        service_account_selector,
        namespace_selector,
        ingress,
        egress,
    })
}

/// A NetworkSet (`namespace` given) or GlobalNetworkSet.
pub(crate) fn network_set(
    v: &Value,
    sites: &Sites,
    namespace: Option<&str>,
    name: &str,
    p: &mut Problems,
) -> Option<NetworkSet> {
    let obj: SetObject = strict::decode(v, sites, p)?;
    let labels = obj.metadata.and_then(|m| m.labels).unwrap_or_default();
    selector::check_labels(&labels, "metadata.labels", p);
    let nets = nets(&obj.spec.and_then(|s| s.nets), "spec.nets", p);
    Some(NetworkSet {
        namespace: namespace.map(str::to_string),
        name: name.to_string(),
        labels,
        nets,
    })
}
