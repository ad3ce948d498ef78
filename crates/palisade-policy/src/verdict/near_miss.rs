//! The near miss: for a side denied at the NetworkPolicy layer, why each rule of each
//! isolating policy failed, and which rule came closest to allowing the connection.
//!
//! Per rule, every peer is checked condition by condition and the *first* failing
//! condition is recorded (with how many of its conditions failed in all); the ports are
//! checked entry by entry. A rule's distance is the fewest failing conditions of any of
//! its peers (0 without peers) plus 1 if no port entry matched. The closest rule is the
//! one with the smallest distance; ties go to policy name order, then rule index (the
//! order [`super::evaluate`] already uses).
//!
//! [`describe_near_miss`] and [`describe_condition`] are the only wording of these
//! results, shared by `palisade explain`, its JSON (`summary`), the view and the agent's
//! decision log.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::model::{
    Cluster, Direction, NamespaceMatch, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyRule,
    PortMatch, Protocol,
};
use crate::selector::{LabelSelector, Labels, Requirement};

use super::matching::Endpoint;
use super::Traffic;

/// How a label selector term is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LabelOperator {
    /// A `matchLabels` pair: the key must have exactly the one value.
    #[serde(rename = "matchLabels")]
    MatchLabels,
    /// `matchExpressions` `In`.
    In,
    /// `matchExpressions` `NotIn`.
    NotIn,
    /// `matchExpressions` `Exists`.
    Exists,
    /// `matchExpressions` `DoesNotExist`.
    DoesNotExist,
}

/// Why a peer did not match the other side of the flow: its first failing condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PeerFailure {
    /// The peer selects pods but the other side is not a pod endpoint.
    NotAPod {
        /// The other side's address, if it has one.
        address: Option<IpAddr>,
    },
    /// The peer (without `namespaceSelector`) means the policy's own namespace.
    Namespace {
        /// The policy's namespace.
        wanted: String,
        /// The other pod's namespace.
        actual: String,
    },
    /// A `namespaceSelector` term fails on the other pod's namespace labels.
    NamespaceLabel {
        /// The namespace.
        namespace: String,
        /// Label key.
        key: String,
        /// How the term is written.
        operator: LabelOperator,
        /// The term's values (one for `matchLabels`, none for `Exists`).
        values: Vec<String>,
        /// The namespace's value of the key; `None` when absent.
        actual: Option<String>,
    },
    /// A `podSelector` term fails on the other pod's labels.
    PodLabel {
        /// `namespace/name` of the pod.
        pod: String,
        /// Label key.
        key: String,
        /// How the term is written.
        operator: LabelOperator,
        /// The term's values.
        values: Vec<String>,
        /// The pod's value of the key; `None` when absent.
        actual: Option<String>,
    },
    /// An `ipBlock` peer, but the other side has no address in the flow's family.
    NoAddress,
    /// The address is outside the `ipBlock` CIDR.
    OutsideBlock {
        /// `ipBlock.cidr`.
        cidr: String,
        /// The other side's address.
        address: IpAddr,
    },
    /// The address is in the CIDR but excluded by an `except` entry.
    Excepted {
        /// `ipBlock.cidr`.
        cidr: String,
        /// The `except` CIDR that excluded it.
        except: String,
        /// The other side's address.
        address: IpAddr,
    },
}

/// Why one `ports` entry did not match the flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PortFailure {
    /// The entry is for another protocol.
    Protocol {
        /// The entry's protocol.
        #[serde(with = "k8s_protocol")]
        wanted: Protocol,
        /// The flow's protocol, by name (`TCP`, `ICMP`, `protocol 47`).
        actual: String,
    },
    /// The port is outside `port`..=`end_port`.
    PortRange {
        /// The protocol.
        #[serde(with = "k8s_protocol")]
        protocol: Protocol,
        /// First port.
        port: u16,
        /// Last port (equal to `port` for a single port).
        end_port: u16,
        /// The flow's destination port.
        actual: u16,
    },
    /// The destination pod declares no container port of that name (for any protocol),
    /// or the destination is not a pod.
    NamedPortUndeclared {
        /// The port name.
        name: String,
        /// The entry's protocol.
        #[serde(with = "k8s_protocol")]
        protocol: Protocol,
        /// The destination pod, `None` when the destination is not a pod.
        pod: Option<String>,
    },
    /// The destination pod declares the name, but only for other protocols.
    NamedPortProtocol {
        /// The port name.
        name: String,
        /// The entry's protocol.
        #[serde(with = "k8s_protocol")]
        protocol: Protocol,
        /// The protocols the pod declares it for.
        #[serde(with = "k8s_protocols")]
        declared: Vec<Protocol>,
        /// The destination pod.
        pod: String,
    },
    /// The name resolves, but to another port number than the flow's.
    NamedPortNumber {
        /// The port name.
        name: String,
        /// The entry's protocol.
        #[serde(with = "k8s_protocol")]
        protocol: Protocol,
        /// What it resolves to on the destination pod.
        resolves_to: u16,
        /// The flow's destination port.
        actual: u16,
        /// The destination pod.
        pod: String,
    },
}

/// The first failing condition of one peer, and how many of its conditions fail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerMiss {
    /// Index in the rule's `from`/`to` list.
    pub peer: usize,
    /// The first failing condition.
    pub failure: PeerFailure,
    /// Failing conditions of this peer in all (at least 1).
    pub failing: usize,
}

/// Why one rule did not allow the flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleMiss {
    /// `NetworkPolicy`.
    pub kind: String,
    /// `namespace/name`.
    pub policy: String,
    /// Index in the policy's rule list for the direction.
    pub index: usize,
    /// One entry per peer when no peer matched; empty when a peer matched (or the rule
    /// has none).
    pub peers: Vec<PeerMiss>,
    /// One entry per `ports` entry when none matched; empty when the ports matched.
    pub ports: Vec<PortFailure>,
    /// Failing conditions: the fewest of any peer, plus 1 if the ports failed.
    pub distance: usize,
}

/// The near miss of one denied side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NearMiss {
    /// Direction.
    pub direction: Direction,
    /// The closest rule (an element of `rules`).
    pub closest: RuleMiss,
    /// [`describe_near_miss`] of this value: `closest: ... would allow if ...`.
    pub summary: String,
    /// Every rule of every isolating policy, in evaluation order.
    pub rules: Vec<RuleMiss>,
}

/// The near miss for `policies` (the isolating ones, in evaluation order), or `None`
/// when none has a rule for the direction (nothing could have allowed it).
pub(super) fn network_policies(
    cluster: &Cluster,
    policies: &[(&NetworkPolicy, &[NetworkPolicyRule])],
    t: &Traffic<'_>,
) -> Option<NearMiss> {
    let rules: Vec<RuleMiss> = policies
        .iter()
        .flat_map(|(np, rules)| {
            rules
                .iter()
                .enumerate()
                .map(move |(index, rule)| np_rule(cluster, np, index, rule, t))
        })
        .collect();
    let closest = rules.iter().min_by_key(|r| r.distance)?.clone();
    let mut miss = NearMiss {
        direction: t.dir,
        closest,
        summary: String::new(),
        rules,
    };
    miss.summary = describe_near_miss(&miss);
    Some(miss)
}

fn np_rule(
    cluster: &Cluster,
    np: &NetworkPolicy,
    index: usize,
    rule: &NetworkPolicyRule,
    t: &Traffic<'_>,
) -> RuleMiss {
    let peers: Vec<PeerMiss> = match &rule.peers {
        None => Vec::new(),
        Some(peers) => {
            let misses: Vec<Option<PeerMiss>> = peers
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    np_peer(cluster, p, t.peer).map(|(failure, failing)| PeerMiss {
                        peer: i,
                        failure,
                        failing,
                    })
                })
                .collect();
            if misses.iter().any(Option::is_none) {
                Vec::new()
            } else {
                misses.into_iter().flatten().collect()
            }
        }
    };
    let ports = port_failures(rule.ports.as_deref(), t);
    let distance =
        peers.iter().map(|p| p.failing).min().unwrap_or(0) + usize::from(!ports.is_empty());
    RuleMiss {
        kind: "NetworkPolicy".into(),
        policy: format!("{}/{}", np.namespace, np.name),
        index,
        peers,
        ports,
        distance,
    }
}

/// `None` if the peer matches; else its first failure and the count of failures.
fn np_peer(
    cluster: &Cluster,
    peer: &NetworkPolicyPeer,
    other: &Endpoint<'_>,
) -> Option<(PeerFailure, usize)> {
    let mut failures = Vec::new();
    match peer {
        NetworkPolicyPeer::Pods { namespaces, pods } => {
            let Some(p) = other.pod else {
                return Some((PeerFailure::NotAPod { address: other.ip }, 1));
            };
            match namespaces {
                NamespaceMatch::Named(ns) => {
                    if &p.namespace != ns {
                        failures.push(PeerFailure::Namespace {
                            wanted: ns.clone(),
                            actual: p.namespace.clone(),
                        });
                    }
                }
                NamespaceMatch::Selector(sel) => {
                    let labels = cluster.namespace_labels(&p.namespace);
                    for (key, operator, values, actual) in label_failures(sel, &labels) {
                        failures.push(PeerFailure::NamespaceLabel {
                            namespace: p.namespace.clone(),
                            key,
                            operator,
                            values,
                            actual,
                        });
                    }
                }
            }
            for (key, operator, values, actual) in label_failures(pods, &p.labels) {
                failures.push(PeerFailure::PodLabel {
                    pod: p.key(),
                    key,
                    operator,
                    values,
                    actual,
                });
            }
        }
        NetworkPolicyPeer::IpBlock(block) => {
            let Some(ip) = other.ip else {
                return Some((PeerFailure::NoAddress, 1));
            };
            if !block.cidr.contains(&ip) {
                failures.push(PeerFailure::OutsideBlock {
                    cidr: block.cidr.to_string(),
                    address: ip,
                });
            } else if let Some(e) = block.except.iter().find(|e| e.contains(&ip)) {
                failures.push(PeerFailure::Excepted {
                    cidr: block.cidr.to_string(),
                    except: e.to_string(),
                    address: ip,
                });
            }
        }
    }
    let n = failures.len();
    failures.into_iter().next().map(|f| (f, n))
}

type LabelFailure = (String, LabelOperator, Vec<String>, Option<String>);

/// Every term of `sel` that `labels` fail, `matchLabels` first (in key order).
fn label_failures(sel: &LabelSelector, labels: &Labels) -> Vec<LabelFailure> {
    let mut out = Vec::new();
    for (k, v) in &sel.match_labels {
        if labels.get(k) != Some(v) {
            out.push((
                k.clone(),
                LabelOperator::MatchLabels,
                vec![v.clone()],
                labels.get(k).cloned(),
            ));
        }
    }
    for r in &sel.match_expressions {
        if r.matches(labels) {
            continue;
        }
        let (k, op, vs) = match r {
            Requirement::In(k, vs) => (k, LabelOperator::In, vs.clone()),
            Requirement::NotIn(k, vs) => (k, LabelOperator::NotIn, vs.clone()),
            Requirement::Exists(k) => (k, LabelOperator::Exists, Vec::new()),
            Requirement::DoesNotExist(k) => (k, LabelOperator::DoesNotExist, Vec::new()),
        };
        out.push((k.clone(), op, vs, labels.get(k).cloned()));
    }
    out
}

/// The flow's protocol by name.
pub fn protocol_name(n: u8) -> String {
    match (Protocol::from_number(n), n) {
        (Some(p), _) => p.as_str().to_string(),
        (None, 1) => "ICMP".into(),
        (None, 58) => "ICMPv6".into(),
        (None, n) => format!("protocol {n}"),
    }
}

/// Empty when the ports match; else one failure per entry.
fn port_failures(ports: Option<&[PortMatch]>, t: &Traffic<'_>) -> Vec<PortFailure> {
    let Some(ports) = ports else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for m in ports {
        let wanted = match m {
            PortMatch::AllPorts(p)
            | PortMatch::Range { protocol: p, .. }
            | PortMatch::Named { protocol: p, .. } => *p,
        };
        if wanted.number() != t.protocol {
            out.push(PortFailure::Protocol {
                wanted,
                actual: protocol_name(t.protocol),
            });
            continue;
        }
        match m {
            PortMatch::AllPorts(_) => return Vec::new(),
            PortMatch::Range {
                protocol,
                port,
                end_port,
            } => {
                if (*port..=*end_port).contains(&t.port) {
                    return Vec::new();
                }
                out.push(PortFailure::PortRange {
                    protocol: *protocol,
                    port: *port,
                    end_port: *end_port,
                    actual: t.port,
                });
            }
            PortMatch::Named { protocol, name } => {
                let Some(pod) = t.dst_pod else {
                    out.push(PortFailure::NamedPortUndeclared {
                        name: name.clone(),
                        protocol: *protocol,
                        pod: None,
                    });
                    continue;
                };
                match pod.resolve_named_port(name, *protocol) {
                    Some(p) if p == t.port => return Vec::new(),
                    Some(p) => out.push(PortFailure::NamedPortNumber {
                        name: name.clone(),
                        protocol: *protocol,
                        resolves_to: p,
                        actual: t.port,
                        pod: pod.key(),
                    }),
                    None => {
                        let declared: Vec<Protocol> = pod
                            .ports
                            .iter()
                            .filter(|c| c.name.as_deref() == Some(name.as_str()))
                            .map(|c| c.protocol)
                            .collect();
                        out.push(if declared.is_empty() {
                            PortFailure::NamedPortUndeclared {
                                name: name.clone(),
                                protocol: *protocol,
                                pod: Some(pod.key()),
                            }
                        } else {
                            PortFailure::NamedPortProtocol {
                                name: name.clone(),
                                protocol: *protocol,
                                declared,
                                pod: pod.key(),
                            }
                        });
                    }
                }
            }
        }
    }
    out
}

fn dir_word(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

fn term(key: &str, op: LabelOperator, values: &[String]) -> String {
    match op {
        LabelOperator::MatchLabels => format!("{key}={}", values.join(",")),
        LabelOperator::In => format!("{key} In ({})", values.join(",")),
        LabelOperator::NotIn => format!("{key} NotIn ({})", values.join(",")),
        LabelOperator::Exists => format!("{key} Exists"),
        LabelOperator::DoesNotExist => format!("{key} DoesNotExist"),
    }
}

fn has(key: &str, actual: &Option<String>) -> String {
    match actual {
        Some(v) => format!("it has {key}={v}"),
        None => format!("it has no label {key}"),
    }
}

/// "SUBJECT had label k=v (it has ...)" for `matchLabels`, "SUBJECT satisfied k In (...)"
/// for an expression: the same clause for a pod and for its namespace.
fn label_clause(
    subject: &str,
    key: &str,
    op: LabelOperator,
    values: &[String],
    actual: &Option<String>,
) -> String {
    let verb = match op {
        LabelOperator::MatchLabels => "had label",
        _ => "satisfied",
    };
    format!(
        "{subject} {verb} {} ({})",
        term(key, op, values),
        has(key, actual)
    )
}

fn ports_word(protocol: Protocol, port: u16, end_port: u16) -> String {
    if port == end_port {
        format!("{protocol} {port}")
    } else {
        format!("{protocol} {port}-{end_port}")
    }
}

/// One condition, worded as what would have to be true, e.g. `pod shop/web had label
/// app=api (it has app=web)`.
pub fn describe_peer_failure(f: &PeerFailure) -> String {
    match f {
        PeerFailure::NotAPod { address } => match address {
            Some(a) => format!("the peer were a pod (it is address {a}, not a pod endpoint)"),
            None => "the peer were a pod (it is not a pod endpoint)".into(),
        },
        PeerFailure::Namespace { wanted, actual } => {
            format!("the peer pod were in namespace {wanted} (it is in {actual})")
        }
        PeerFailure::NamespaceLabel {
            namespace,
            key,
            operator,
            values,
            actual,
        } => label_clause(
            &format!("namespace {namespace}"),
            key,
            *operator,
            values,
            actual,
        ),
        PeerFailure::PodLabel {
            pod,
            key,
            operator,
            values,
            actual,
        } => label_clause(&format!("pod {pod}"), key, *operator, values, actual),
        PeerFailure::NoAddress => {
            "the peer had an address of the flow's family (it has none)".into()
        }
        PeerFailure::OutsideBlock { cidr, address } => {
            format!("address {address} were inside ipBlock {cidr}")
        }
        PeerFailure::Excepted {
            cidr,
            except,
            address,
        } => format!("address {address} were not excluded from ipBlock {cidr} by except {except}"),
    }
}

/// One `ports` entry's failure, worded as what would have to be true.
pub fn describe_port_failure(f: &PortFailure) -> String {
    match f {
        PortFailure::Protocol { wanted, actual } => {
            format!("the protocol were {wanted} (it is {actual})")
        }
        PortFailure::PortRange {
            protocol,
            port,
            end_port,
            actual,
        } => format!(
            "the port were {} (it is {actual})",
            ports_word(*protocol, *port, *end_port)
        ),
        PortFailure::NamedPortUndeclared {
            name,
            protocol,
            pod,
        } => match pod {
            Some(pod) => format!(
                "destination pod {pod} declared a container port named {name:?} for {protocol} (it declares none by that name)"
            ),
            None => format!(
                "the destination were a pod declaring a container port named {name:?} for {protocol} (it is not a pod)"
            ),
        },
        PortFailure::NamedPortProtocol {
            name,
            protocol,
            declared,
            pod,
        } => {
            let d: Vec<&str> = declared.iter().map(|p| p.as_str()).collect();
            format!(
                "destination pod {pod} declared port {name:?} for {protocol} (it declares it for {})",
                d.join(", ")
            )
        }
        PortFailure::NamedPortNumber {
            name,
            protocol,
            resolves_to,
            actual,
            pod,
        } => format!(
            "the port were {protocol} {resolves_to}, port {name:?} of destination pod {pod} (it is {actual})"
        ),
    }
}

/// What would make `rule` allow the flow: the first failure of its nearest peer, and
/// the first port failure, joined by `and`; `None` if nothing failed.
pub fn describe_condition(rule: &RuleMiss) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(p) = rule.peers.iter().min_by_key(|p| p.failing) {
        let mut s = describe_peer_failure(&p.failure);
        if p.failing > 1 {
            s.push_str(&format!(
                " (and {} more condition(s) of that peer)",
                p.failing - 1
            ));
        }
        parts.push(s);
    }
    if let Some(f) = rule.ports.first() {
        parts.push(describe_port_failure(f));
    }
    (!parts.is_empty()).then(|| parts.join(" and "))
}

/// `NetworkPolicy shop/api-ingress ingress rule 0`.
pub fn rule_name(rule: &RuleMiss, direction: Direction) -> String {
    format!(
        "{} {} {} rule {}",
        rule.kind,
        rule.policy,
        dir_word(direction),
        rule.index
    )
}

/// `closest: NetworkPolicy shop/api ingress rule 0: would allow if ...`.
pub fn describe_near_miss(m: &NearMiss) -> String {
    let cond = describe_condition(&m.closest).unwrap_or_else(|| "nothing failed".into());
    format!(
        "closest: {}: would allow if {cond}",
        rule_name(&m.closest, m.direction)
    )
}

/// One line per rule, for `-o wide`: `NetworkPolicy ns/name ingress rule 0 (2 failing):
/// peer 0: ...; peer 1: ...; ports: ...`.
pub fn describe_rule(rule: &RuleMiss, direction: Direction) -> String {
    let parts: Vec<String> = rule
        .peers
        .iter()
        .map(|p| format!("peer {}: {}", p.peer, describe_peer_failure(&p.failure)))
        .collect();
    let mut text = parts.join(", or ");
    if !rule.ports.is_empty() {
        let ports: Vec<String> = rule.ports.iter().map(describe_port_failure).collect();
        if !text.is_empty() {
            text.push_str("; and ");
        }
        text.push_str(&format!("ports: {}", ports.join(", or ")));
    }
    format!(
        "{} ({} failing): would allow if {text}",
        rule_name(rule, direction),
        rule.distance,
    )
}

/// Protocols in the near miss JSON by their Kubernetes names (`TCP`), as manifests write them.
mod k8s_protocol {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::model::Protocol;

    pub fn serialize<S: Serializer>(p: &Protocol, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(p.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Protocol, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// As [`k8s_protocol`], for a list.
mod k8s_protocols {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::model::Protocol;

    pub fn serialize<S: Serializer>(ps: &[Protocol], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(ps.iter().map(|p| p.as_str()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Protocol>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| s.parse().map_err(serde::de::Error::custom))
            .collect()
    }
}
