//! Rule programs (policies with their peers turned into matcher ids) and the port
//! partition that turns a table's rules into [`TableEntry`] runs for one peer.
//!
//! The decision for one `(peer, protocol class, port)` applies the tiers in order:
//!
//! 1. Admin cluster policies (priority, then name), rules in order, first match:
//!    `Accept` allows, `Deny` denies, `Pass` skips to step 2.
//! 2. The default tier, if a NetworkPolicy or Calico policy applies to the endpoint in
//!    this direction: rules of the policies by order (NetworkPolicies are order 1000
//!    under the name `knp.default.<name>`; see `crate::verdict::calico`), first match:
//!    `Accept` (NetworkPolicy rules, Calico `Allow`) allows, `Deny` denies, `Pass` skips
//!    to step 3 (Calico `Log` rules are not compiled); no match denies
//!    ([`RuleOrigin::Isolated`]).
//! 3. Baseline cluster policies, first match `Accept`/`Deny` (a `Pass` ends the tier).
//! 4. Allowed by default ([`RuleOrigin::Default`]).
//!
//! [`RuleOrigin::Isolated`]: crate::compiled::RuleOrigin::Isolated
//! [`RuleOrigin::Default`]: crate::compiled::RuleOrigin::Default

use crate::compiled::{IdentityId, RuleId, TableAction, TableEntry, TableVerdict, PROTO_OTHER};
use crate::model::{Action, Direction, PortMatch, Protocol, Subject, Tier};
use crate::selector::LabelSelector;

use super::identity::{resolve_named, NamedPorts};

/// Index of an interned [`super::identity::Matcher`].
pub(crate) type MatcherId = u32;

/// The protocol classes in table entry order (entries sort by protocol number).
pub(crate) const CLASS_ORDER: [u8; 4] = [PROTO_OTHER, 6, 17, 132];

/// Which peers a rule matches.
#[derive(Debug, Clone)]
pub(crate) enum Peers {
    /// Every peer (a NetworkPolicy rule without `from`/`to`).
    All,
    /// Peers matched by any of these matchers.
    Any(Vec<MatcherId>),
    /// A Calico rule's peer criteria: an identity `interest` matches takes the verdict
    /// of `truth`; every other identity (the wildcard included) takes `default`.
    Calico {
        /// [`super::identity::Matcher::CalicoInterest`].
        interest: MatcherId,
        /// [`super::identity::Matcher::CalicoTruth`].
        truth: MatcherId,
        /// [`super::identity::CalicoPeer::default`].
        default: bool,
    },
}

impl Peers {
    /// The matchers a table with this rule must follow.
    pub(crate) fn matchers(&self) -> Vec<MatcherId> {
        match self {
            Peers::All => Vec::new(),
            Peers::Any(ms) => ms.clone(),
            Peers::Calico {
                interest, truth, ..
            } => vec![*interest, *truth],
        }
    }

    /// Whether the wildcard peer (an identity no matcher of the table mentions) matches.
    fn matches_any(&self) -> bool {
        match self {
            Peers::All => true,
            Peers::Any(_) => false,
            Peers::Calico { default, .. } => *default,
        }
    }
}

/// One rule, ready to evaluate.
#[derive(Debug, Clone)]
pub(crate) struct RuleProg {
    /// Attribution.
    pub rule: RuleId,
    /// NetworkPolicy rules are [`Action::Accept`]; Calico `Allow` is `Accept`.
    pub action: Action,
    /// Peers.
    pub peers: Peers,
    /// `None`: every port and protocol class.
    pub ports: Option<Vec<PortMatch>>,
    /// Ports that do not match (Calico `notPorts`), whatever `ports` says.
    pub not_ports: Vec<PortMatch>,
    /// A protocol class that does not match (Calico `notProtocol`).
    pub not_class: Option<u8>,
}

/// Which endpoints a policy applies to.
#[derive(Debug, Clone)]
pub(crate) enum Scope {
    /// A NetworkPolicy: pods of one namespace.
    Namespace {
        /// Pod selector (the namespace is the policy's own).
        pods: LabelSelector,
        /// `namespace/name`.
        display: String,
    },
    /// A Calico policy of the default tier.
    Calico {
        /// The policy, for [`crate::verdict::calico::selects`].
        policy: Box<crate::model::CalicoPolicy>,
        /// Sort key in the default tier.
        sort: crate::verdict::calico::SortKey,
        /// How explanations name it.
        display: String,
    },
    /// A cluster policy.
    Cluster {
        /// Tier.
        tier: Tier,
        /// Priority.
        priority: i32,
        /// Name (tie breaker after priority).
        name: String,
        /// Subject.
        subject: Subject,
    },
}

/// A policy, compiled once and shared by every table that includes it.
#[derive(Debug, Clone)]
pub(crate) struct PolicyProg {
    /// Applicability.
    pub scope: Scope,
    /// Rules per direction ([`dir_index`]).
    pub rules: [Vec<RuleProg>; 2],
    /// Whether the policy takes part in a direction: a NetworkPolicy isolates it, a
    /// cluster policy has rules for it.
    pub active: [bool; 2],
    /// Whether some rule of the direction uses a named port.
    pub uses_named: [bool; 2],
    /// Bumped by the incremental compiler on each content change; part of table keys.
    pub revision: u64,
    /// Matchers referenced (for bookkeeping).
    pub matchers: Vec<MatcherId>,
}

/// Array index of a direction.
pub(crate) fn dir_index(dir: Direction) -> usize {
    match dir {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

/// What makes two endpoints' tables for one direction identical.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct TableKey {
    /// Direction.
    pub dir: Direction,
    /// Admin cluster policies in evaluation order, `(Kind/name, revision)`.
    pub admin: Vec<(String, u64)>,
    /// Isolating NetworkPolicies by `namespace/name`, with revisions.
    pub network: Vec<(String, u64)>,
    /// Calico policies applying to the endpoint in this direction, in evaluation
    /// order, by [`crate::model::CalicoPolicy::key`], with revisions. When this is not
    /// empty, the default tier is these and `network` merged by order.
    pub calico: Vec<(String, u64)>,
    /// Baseline cluster policies in evaluation order.
    pub baseline: Vec<(String, u64)>,
    /// The endpoint's named ports, when an ingress rule uses a named port.
    pub local_ports: Option<NamedPorts>,
}

/// A table's rules flattened in evaluation order.
pub(crate) struct Spec<'a> {
    /// Direction.
    pub dir: Direction,
    /// Admin rules, then default-tier rules (NetworkPolicy and Calico, in order), then
    /// Baseline rules.
    pub rules: Vec<&'a RuleProg>,
    /// End of the Admin rules in `rules`.
    pub admin_end: usize,
    /// End of the default-tier rules in `rules`.
    pub np_end: usize,
    /// The `Isolated` rule when the default tier applies (end-of-tier deny).
    pub isolated: Option<RuleId>,
    /// The `Default` rule.
    pub default: RuleId,
    /// Named ports of the endpoint (ingress destination).
    pub local_ports: &'a [(String, Protocol, u16)],
}

impl Spec<'_> {
    /// The port names of egress rules matching every peer. A peer pod with one of these
    /// names may need entries although no matcher of the table selects it; for rules
    /// with matchers, the matchers already make it a candidate.
    pub(crate) fn egress_named_ports(&self) -> Vec<String> {
        if self.dir != Direction::Egress {
            return Vec::new();
        }
        let mut names: Vec<String> = self
            .rules
            .iter()
            .filter(|r| r.peers.matches_any())
            .flat_map(|r| r.ports.iter().flatten().chain(&r.not_ports))
            .filter_map(|p| match p {
                PortMatch::Named { name, .. } => Some(name.clone()),
                _ => None,
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The flags of the wildcard peer: only rules matching every peer.
    pub(crate) fn any_flags(&self) -> Vec<bool> {
        self.rules.iter().map(|r| r.peers.matches_any()).collect()
    }

    /// The flags of a peer matched by the sorted matcher list `matched`.
    pub(crate) fn flags(&self, matched: &[MatcherId]) -> Vec<bool> {
        self.rules
            .iter()
            .map(|r| match &r.peers {
                Peers::All => true,
                Peers::Any(ms) => ms.iter().any(|m| matched.binary_search(m).is_ok()),
                Peers::Calico {
                    interest,
                    truth,
                    default,
                } => {
                    if matched.binary_search(interest).is_ok() {
                        matched.binary_search(truth).is_ok()
                    } else {
                        *default
                    }
                }
            })
            .collect()
    }
}

/// Verdict runs per protocol class, in [`CLASS_ORDER`].
pub(crate) type Partition = [Vec<(u16, u16, TableVerdict)>; 4];

fn protocol_of(class: u8) -> Option<Protocol> {
    Protocol::from_number(class)
}

/// The inclusive port range a port match covers for a class, given the destination's
/// named ports.
fn port_range(pm: &PortMatch, class: u8, dest: &[(String, Protocol, u16)]) -> Option<(u16, u16)> {
    let proto = protocol_of(class)?;
    match pm {
        PortMatch::AllPorts(p) if *p == proto => Some((0, u16::MAX)),
        PortMatch::Range {
            protocol,
            port,
            end_port,
        } if *protocol == proto && port <= end_port => Some((*port, *end_port)),
        PortMatch::Named { protocol, name } if *protocol == proto => {
            resolve_named(dest, name, proto).map(|p| (p, p))
        }
        _ => None,
    }
}

fn port_ok(rule: &RuleProg, class: u8, port: u16, dest: &[(String, Protocol, u16)]) -> bool {
    if rule.not_class == Some(class) {
        return false;
    }
    if rule
        .not_ports
        .iter()
        .any(|pm| port_range(pm, class, dest).is_some_and(|(lo, hi)| lo <= port && port <= hi))
    {
        return false;
    }
    match &rule.ports {
        None => true,
        Some(_) if class == PROTO_OTHER => false,
        Some(list) => list
            .iter()
            .any(|pm| port_range(pm, class, dest).is_some_and(|(lo, hi)| lo <= port && port <= hi)),
    }
}

fn verdict(action: TableAction, rule: RuleId) -> TableVerdict {
    TableVerdict { action, rule }
}

/// The decision for one port, applying the tiers (see the module doc).
fn decide(
    spec: &Spec,
    flags: &[bool],
    class: u8,
    port: u16,
    dest: &[(String, Protocol, u16)],
) -> TableVerdict {
    let hit = |i: usize| flags[i] && port_ok(spec.rules[i], class, port, dest);
    for i in 0..spec.admin_end {
        if hit(i) {
            let r = spec.rules[i];
            match r.action {
                Action::Accept => return verdict(TableAction::Allow, r.rule),
                Action::Deny => return verdict(TableAction::Deny, r.rule),
                Action::Pass => break,
            }
        }
    }
    'default_tier: {
        if let Some(iso) = spec.isolated {
            for i in spec.admin_end..spec.np_end {
                if hit(i) {
                    let r = spec.rules[i];
                    match r.action {
                        Action::Accept => return verdict(TableAction::Allow, r.rule),
                        Action::Deny => return verdict(TableAction::Deny, r.rule),
                        Action::Pass => break 'default_tier,
                    }
                }
            }
            return verdict(TableAction::Deny, iso);
        }
    }
    for i in spec.np_end..spec.rules.len() {
        if hit(i) {
            let r = spec.rules[i];
            match r.action {
                Action::Accept => return verdict(TableAction::Allow, r.rule),
                Action::Deny => return verdict(TableAction::Deny, r.rule),
                Action::Pass => break,
            }
        }
    }
    verdict(TableAction::Allow, spec.default)
}

/// The verdict runs for a peer with rule-match `flags` and (egress) named ports
/// `peer_ports`: boundaries come from every matching rule's port ranges, adjacent runs
/// with equal verdicts are merged.
pub(crate) fn partition(
    spec: &Spec,
    flags: &[bool],
    peer_ports: &[(String, Protocol, u16)],
) -> Partition {
    let dest = match spec.dir {
        Direction::Ingress => spec.local_ports,
        Direction::Egress => peer_ports,
    };
    let mut out: Partition = Default::default();
    for (ci, &class) in CLASS_ORDER.iter().enumerate() {
        if class == PROTO_OTHER {
            out[ci].push((0, 0, decide(spec, flags, class, 0, dest)));
            continue;
        }
        let mut bounds: Vec<u32> = vec![0];
        for (i, r) in spec.rules.iter().enumerate() {
            if !flags[i] {
                continue;
            }
            for pm in r.ports.iter().flatten().chain(&r.not_ports) {
                if let Some((lo, hi)) = port_range(pm, class, dest) {
                    bounds.push(u32::from(lo));
                    bounds.push(u32::from(hi) + 1);
                }
            }
        }
        bounds.sort_unstable();
        bounds.dedup();
        bounds.retain(|b| *b <= u32::from(u16::MAX));
        let runs = &mut out[ci];
        for (k, &lo) in bounds.iter().enumerate() {
            let hi = bounds.get(k + 1).map_or(u32::from(u16::MAX), |n| n - 1);
            let (lo, hi) = (lo as u16, hi as u16);
            let v = decide(spec, flags, class, lo, dest);
            match runs.last_mut() {
                Some(last) if last.2 == v => last.1 = hi,
                _ => runs.push((lo, hi, v)),
            }
        }
    }
    out
}

/// Appends the entries of a partition for `peer`, in table order, leaving out the
/// protocol classes whose runs equal `any`'s (the lookup falls back to
/// [`crate::compiled::IDENTITY_ANY`] for those). Returns whether anything was appended.
pub(crate) fn push_entries(
    peer: IdentityId,
    part: &Partition,
    any: Option<&Partition>,
    out: &mut Vec<TableEntry>,
) -> bool {
    let mut pushed = false;
    for (ci, runs) in part.iter().enumerate() {
        if any.is_some_and(|a| a[ci] == *runs) {
            continue;
        }
        pushed = true;
        for &(lo, hi, v) in runs {
            out.push(TableEntry {
                peer,
                proto: CLASS_ORDER[ci],
                port_lo: lo,
                port_hi: hi,
                verdict: v,
            });
        }
    }
    pushed
}
