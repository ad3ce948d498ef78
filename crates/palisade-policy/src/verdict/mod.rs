//! The reference evaluator: `evaluate(cluster, flow)` answers allow or deny, with the
//! tier, policy and rule that decided, for each side of a connection.
//!
//! It is written for clarity, not speed, and independently of [`crate::compiled`]: it
//! walks the [`Cluster`] directly, so it can serve as the oracle that the compiler and
//! the datapath are tested against. Its reasons use the compiled form's vocabulary,
//! [`RuleOrigin`], so the two can be compared entry by entry.
//!
//! Every rule applied here is written down, with examples, in `docs/semantics.md`.
//!
//! ## Precedence, per side
//!
//! A side is the source pod's egress or the destination pod's ingress. For one side:
//!
//! 1. **Admin tier.** Cluster policies of tier [`Tier::Admin`] whose subject selects the
//!    pod, by priority ascending and then by name (then kind), each one's rules for the
//!    direction in order. The first rule whose peers and ports match decides: `Accept`
//!    allows and `Deny` denies, both final; `Pass` ends the Admin tier and goes to 2.
//! 2. **NetworkPolicy.** If NetworkPolicies in the pod's namespace select it for this
//!    direction, the pod is *isolated*: allowed iff some rule of some such policy
//!    matches (the origin is the first match by policy name, then rule index), else
//!    denied with [`RuleOrigin::Isolated`]. If none selects it, go to 3.
//! 3. **Baseline tier.** As 1 with tier [`Tier::Baseline`]; `Accept`/`Deny` decide.
//! 4. **Default**: allowed ([`RuleOrigin::Default`]).
//!
//! A connection is allowed iff the source's egress side and the destination's ingress
//! side both allow it. A side that is not a pod endpoint (an outside address, a node,
//! a host-network pod) is not enforced and has no [`SideDecision`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::compiled::RuleOrigin;
use crate::model::{
    Action, CalicoAction, Cluster, ClusterPolicy, ClusterPolicyKind, Direction, Pod, Tier,
};

pub mod calico;
#[cfg(test)]
mod calico_tests;
mod describe;
mod flow;
mod matching;
pub mod near_miss;
mod service;
#[cfg(test)]
mod tests;

pub use describe::describe;
pub use flow::{Flow, FlowError, IpFamily, Peer};
pub use service::{evaluate_service, BackendDecision, ServiceDecision};

use matching::{cluster_peer_matches, np_peer_matches, ports_match, subject_selects, Endpoint};

/// The verdict for one side of a connection, with the steps that led to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SideDecision {
    /// Whether this side allows the connection.
    pub allowed: bool,
    /// The rule (or absence of rules) that decided, in the compiled form's vocabulary.
    pub origin: RuleOrigin,
    /// Every tier and policy consulted, in evaluation order.
    pub consulted: Vec<Step>,
    /// For a side denied at the NetworkPolicy layer: why each rule failed and which
    /// came closest. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub near_miss: Option<near_miss::NearMiss>,
}

/// The verdict for a whole connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// `egress.allowed && ingress.allowed`, counting an absent side as allowing.
    pub allowed: bool,
    /// The source pod's egress side; `None` when the source is not a pod endpoint.
    pub egress: Option<SideDecision>,
    /// The destination pod's ingress side; `None` when the destination is not a pod
    /// endpoint.
    pub ingress: Option<SideDecision>,
}

/// What happened when one cluster policy was consulted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterOutcome {
    /// No rule of the policy matched; evaluation went on to the next policy.
    NoMatch,
    /// Rule `index` matched and its action applied.
    Matched {
        /// Index in the policy's rule list for the direction.
        index: usize,
        /// The rule's name, or `""`.
        rule_name: String,
        /// What the rule did.
        action: Action,
    },
}

/// One step of an evaluation, for `palisade explain`. [`fmt::Display`] renders it as a
/// sentence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// No cluster policy of this tier selects the pod.
    NoClusterPolicy {
        /// The tier.
        tier: Tier,
    },
    /// A cluster policy selecting the pod was consulted.
    ClusterPolicy {
        /// Kind it was written as.
        kind: ClusterPolicyKind,
        /// Name.
        name: String,
        /// Tier.
        tier: Tier,
        /// Priority.
        priority: i32,
        /// Direction of the rules consulted.
        direction: Direction,
        /// What happened.
        outcome: ClusterOutcome,
        /// Remarks, e.g. that `domainNames` peers are resolved only by the agent.
        notes: Vec<String>,
    },
    /// The NetworkPolicy layer.
    NetworkPolicies {
        /// Direction.
        direction: Direction,
        /// `namespace/name` of every policy isolating the pod in this direction, sorted.
        isolating: Vec<String>,
        /// The first rule that allowed the connection: `(namespace/name, index)`.
        allowed_by: Option<(String, usize)>,
    },
    /// A Calico policy of the default tier was consulted.
    CalicoPolicy {
        /// `Kind namespace/name` or `Kind name`.
        policy: String,
        /// `spec.order`, if set.
        order: Option<crate::model::Order>,
        /// Direction of the rules consulted.
        direction: Direction,
        /// The rule that decided (`Allow`, `Deny` or `Pass`): `(index, action)`.
        matched: Option<(usize, CalicoAction)>,
        /// `Log` rules that matched on the way (Palisade does not log).
        logged: Vec<usize>,
    },
    /// Nothing decided; the default applied.
    Default {
        /// Direction.
        direction: Direction,
    },
}

/// Evaluates a connection: the source pod's egress and the destination pod's ingress.
///
/// Peers are resolved as described on [`Flow`]: an address that belongs to a pod (not
/// host-network) is that pod, and a pod given by name is seen at its address of the
/// flow's family. A [`Peer::Pod`] naming no known pod is treated as an outside peer
/// without an address; use [`Flow::between`] to have that reported as an error.
pub fn evaluate(cluster: &Cluster, flow: &Flow) -> Decision {
    let family = flow.family(cluster);
    let src = Endpoint::resolve(cluster, &flow.src, family);
    let dst = Endpoint::resolve(cluster, &flow.dst, family);
    let egress = src.pod.map(|pod| {
        side(
            cluster,
            pod,
            Direction::Egress,
            &dst,
            flow.protocol,
            flow.port,
        )
    });
    let ingress = dst.pod.map(|pod| {
        side(
            cluster,
            pod,
            Direction::Ingress,
            &src,
            flow.protocol,
            flow.port,
        )
    });
    Decision {
        allowed: egress.as_ref().is_none_or(|s| s.allowed)
            && ingress.as_ref().is_none_or(|s| s.allowed),
        egress,
        ingress,
    }
}

/// Evaluates one side: `pod`'s policy for traffic in direction `dir` with `peer`
/// (the destination for egress, the source for ingress). `port` is the destination
/// port, 0 for protocols without ports.
///
/// The peer is resolved in the family of the peer's address if it is one, otherwise
/// of `pod`'s first address. `pod` is evaluated as given, even if it is host-network
/// (which [`evaluate`] never does).
pub fn evaluate_side(
    cluster: &Cluster,
    pod: &Pod,
    dir: Direction,
    peer: &Peer,
    protocol: u8,
    port: u16,
) -> SideDecision {
    let family = match peer {
        Peer::Ip(ip) => Some(IpFamily::of(ip)),
        Peer::Pod(_) => pod.ips.first().map(IpFamily::of),
    };
    let peer = Endpoint::resolve(cluster, peer, family);
    side(cluster, pod, dir, &peer, protocol, port)
}

/// The traffic one side sees, with its destination (for named ports).
pub(crate) struct Traffic<'a> {
    dir: Direction,
    peer: &'a Endpoint<'a>,
    /// The destination pod: the subject for ingress, the peer (if a pod) for egress.
    dst_pod: Option<&'a Pod>,
    protocol: u8,
    port: u16,
}

fn side(
    cluster: &Cluster,
    pod: &Pod,
    dir: Direction,
    peer: &Endpoint<'_>,
    protocol: u8,
    port: u16,
) -> SideDecision {
    let traffic = Traffic {
        dir,
        peer,
        dst_pod: match dir {
            Direction::Ingress => Some(pod),
            Direction::Egress => peer.pod,
        },
        protocol,
        port,
    };
    let mut consulted = Vec::new();
    let decided = |allowed, origin, consulted| SideDecision {
        allowed,
        origin,
        consulted,
        near_miss: None,
    };

    // 1. Admin tier: Accept/Deny final, Pass skips to NetworkPolicy.
    match cluster_tier(cluster, pod, Tier::Admin, &traffic, &mut consulted) {
        Some((Action::Accept, origin)) => return decided(true, origin, consulted),
        Some((Action::Deny, origin)) => return decided(false, origin, consulted),
        Some((Action::Pass, _)) | None => {}
    }

    // 2. The default tier: Calico policies and NetworkPolicies by order, first decision
    // wins, end-of-tier deny; without Calico policies, NetworkPolicy isolation and the
    // union of allow rules (the same verdict, with the established explanation).
    match calico::default_tier(cluster, pod, &traffic, &mut consulted) {
        Some(calico::TierResult::Decided(allowed, origin)) => {
            return decided(allowed, origin, consulted)
        }
        Some(calico::TierResult::Passed) => {}
        None => {
            if let Some((allowed, origin, near_miss)) =
                network_policies(cluster, pod, &traffic, &mut consulted)
            {
                return SideDecision {
                    near_miss,
                    ..decided(allowed, origin, consulted)
                };
            }
        }
    }

    // 3. Baseline tier. `Pass` is not valid in Baseline (validation rejects it); were
    // one to appear it would fall through to the default like a non-match.
    match cluster_tier(cluster, pod, Tier::Baseline, &traffic, &mut consulted) {
        Some((Action::Accept, origin)) => return decided(true, origin, consulted),
        Some((Action::Deny, origin)) => return decided(false, origin, consulted),
        Some((Action::Pass, _)) | None => {}
    }

    // 4. Default allow.
    consulted.push(Step::Default { direction: dir });
    decided(true, RuleOrigin::Default { direction: dir }, consulted)
}

/// The policies whose subject is a pod, by their keys in [`Cluster`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selecting {
    /// NetworkPolicies, by `namespace/name`.
    pub network_policies: Vec<String>,
    /// Cluster policies of every kind and tier, by `Kind/name`.
    pub cluster_policies: Vec<String>,
}

/// The policies whose subject is `pod`, with the evaluator's own rules (a NetworkPolicy
/// selects pods of its namespace by labels; a cluster policy never selects a
/// host-network pod). The controller uses this to know which policies must be in force
/// on a pod's node.
pub fn selecting(cluster: &Cluster, pod: &Pod) -> Selecting {
    Selecting {
        network_policies: cluster
            .network_policies
            .iter()
            .filter(|(_, np)| np.namespace == pod.namespace && np.pod_selector.matches(&pod.labels))
            .map(|(k, _)| k.clone())
            .collect(),
        cluster_policies: cluster
            .cluster_policies
            .iter()
            .filter(|(_, p)| subject_selects(cluster, &p.subject, pod))
            .map(|(k, _)| k.clone())
            .collect(),
    }
}

/// Cluster policies of `tier` selecting `pod`, in evaluation order: priority ascending,
/// then name, then kind (upstream leaves equal priorities undefined).
fn tier_policies<'c>(cluster: &'c Cluster, pod: &Pod, tier: Tier) -> Vec<&'c ClusterPolicy> {
    let mut policies: Vec<&ClusterPolicy> = cluster
        .cluster_policies
        .values()
        .filter(|p| p.tier == tier && subject_selects(cluster, &p.subject, pod))
        .collect();
    policies.sort_by(|a, b| (a.priority, &a.name, a.kind).cmp(&(b.priority, &b.name, b.kind)));
    policies
}

/// First matching rule of the tier, if any, recording each policy consulted.
fn cluster_tier(
    cluster: &Cluster,
    pod: &Pod,
    tier: Tier,
    t: &Traffic<'_>,
    consulted: &mut Vec<Step>,
) -> Option<(Action, RuleOrigin)> {
    let policies = tier_policies(cluster, pod, tier);
    if policies.is_empty() {
        consulted.push(Step::NoClusterPolicy { tier });
        return None;
    }
    for policy in policies {
        let mut notes = Vec::new();
        let mut outcome = ClusterOutcome::NoMatch;
        for (index, rule) in policy.rules(t.dir).iter().enumerate() {
            let peer_matches = rule
                .peers
                .iter()
                .any(|p| cluster_peer_matches(cluster, p, t.peer, &mut notes, index, &rule.name));
            if peer_matches && ports_match(rule.ports.as_deref(), t.dst_pod, t.protocol, t.port) {
                outcome = ClusterOutcome::Matched {
                    index,
                    rule_name: rule.name.clone(),
                    action: rule.action,
                };
                break;
            }
        }
        let decided = match &outcome {
            ClusterOutcome::NoMatch => None,
            ClusterOutcome::Matched {
                index,
                rule_name,
                action,
            } => Some((
                *action,
                RuleOrigin::Cluster {
                    kind: policy.kind,
                    name: policy.name.clone(),
                    tier,
                    direction: t.dir,
                    index: *index,
                    rule_name: rule_name.clone(),
                    action: *action,
                },
            )),
        };
        consulted.push(Step::ClusterPolicy {
            kind: policy.kind,
            name: policy.name.clone(),
            tier,
            priority: policy.priority,
            direction: t.dir,
            outcome,
            notes,
        });
        if decided.is_some() {
            return decided;
        }
    }
    None
}

/// The NetworkPolicy layer: `None` if no policy isolates the pod in this direction;
/// a denial comes with its near miss.
fn network_policies(
    cluster: &Cluster,
    pod: &Pod,
    t: &Traffic<'_>,
    consulted: &mut Vec<Step>,
) -> Option<(bool, RuleOrigin, Option<near_miss::NearMiss>)> {
    let mut isolating: Vec<_> = cluster
        .network_policies
        .values()
        .filter(|np| np.namespace == pod.namespace && np.pod_selector.matches(&pod.labels))
        .filter_map(|np| np.rules(t.dir).map(|rules| (np, rules)))
        .collect();
    if isolating.is_empty() {
        consulted.push(Step::NetworkPolicies {
            direction: t.dir,
            isolating: Vec::new(),
            allowed_by: None,
        });
        return None;
    }
    // Same namespace throughout, so this is name order.
    isolating.sort_by(|(a, _), (b, _)| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let names: Vec<String> = isolating
        .iter()
        .map(|(np, _)| format!("{}/{}", np.namespace, np.name))
        .collect();

    let allowed_by = isolating.iter().find_map(|(np, rules)| {
        rules
            .iter()
            .position(|rule| {
                let peer_matches = match &rule.peers {
                    None => true,
                    Some(peers) => peers.iter().any(|p| np_peer_matches(cluster, p, t.peer)),
                };
                peer_matches && ports_match(rule.ports.as_deref(), t.dst_pod, t.protocol, t.port)
            })
            .map(|index| (*np, index))
    });

    consulted.push(Step::NetworkPolicies {
        direction: t.dir,
        isolating: names.clone(),
        allowed_by: allowed_by.map(|(np, i)| (format!("{}/{}", np.namespace, np.name), i)),
    });
    Some(match allowed_by {
        Some((np, index)) => (
            true,
            RuleOrigin::NetworkPolicy {
                namespace: np.namespace.clone(),
                name: np.name.clone(),
                direction: t.dir,
                index,
            },
            None,
        ),
        None => (
            false,
            RuleOrigin::Isolated {
                direction: t.dir,
                policies: names,
            },
            near_miss::network_policies(cluster, &isolating, t),
        ),
    })
}

impl fmt::Display for Step {
    /// One sentence per step, e.g. `Admin tier: ClusterNetworkPolicy deny-metadata
    /// (priority 10) rule 0 "deny-imds" Deny matched`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        describe::step(self, f)
    }
}
