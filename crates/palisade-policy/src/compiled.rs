//! The compiled form: what the datapath loads, in plain Rust types (no BPF here; the
//! datapath crate encodes these into its own map layouts, as Cilium's `mapstate.go`
//! keeps its own copy of the map key).
//!
//! ## Shape
//!
//! Per packet the datapath does a constant number of lookups, whatever the number of
//! policies, rules, peers or CIDRs:
//!
//! 1. **endpoint** (by interface): which [`RuleTable`] enforces this pod's ingress and
//!    egress, and the pod's own addresses (anti-spoofing).
//! 2. **address → identity** ([`Compiled::addresses`], longest-prefix match): the peer's
//!    [`IdentityId`]. Every pod address is a host prefix (/32, /128); every CIDR edge any
//!    policy mentions is a prefix too; `0.0.0.0/0` and `::/0` are always present, so the
//!    lookup never misses. An identity is an equivalence class of addresses that every
//!    selector and every ipBlock of the cluster treats alike (same namespace, namespace
//!    labels, pod labels and named ports, and the same most-specific policy prefix), so
//!    pods of one Deployment share one identity.
//! 3. **table lookup** `(table, peer identity, protocol, port)` → [`TableVerdict`]. If the
//!    table has no entry for `(peer, protocol)` the lookup is repeated with
//!    [`IDENTITY_ANY`], which every table covers completely. Ports are ranges; the
//!    datapath splits them into prefixes for an LPM map.
//!
//! Tiers (Admin → NetworkPolicy → Baseline → allow), `Pass`, isolation and named ports
//! are all resolved at compile time: a table entry holds the *final* verdict for its
//! side of the connection, and the id of the rule that decided it.
//!
//! ## Invariants (checked by `Compiled::check` in tests)
//!
//! - For each `(peer, proto)` present in a table, its entries' port ranges are disjoint
//!   and cover `0..=65535` (proto [`PROTO_OTHER`] uses exactly `0..=0`).
//! - Every table has complete [`IDENTITY_ANY`] coverage for all four protocol classes.
//! - Tables are immutable once referenced, except that entries of a peer identity may be
//!   added before any address maps to it and removed after none does (see [`Op`]).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::model::{Action, CalicoAction, CalicoKind, ClusterPolicyKind, Direction, Tier};

/// A peer identity: an equivalence class of addresses.
pub type IdentityId = u32;
/// A rule table id.
pub type TableId = u32;
/// A rule id, for attribution; see [`RuleOrigin`].
pub type RuleId = u32;

/// Rule id of the verdict [`Compiled::lookup`] returns for a table that does not exist
/// (or lacks wildcard coverage, which [`Compiled::check`] rejects): deny, attributed to
/// nothing. Never present in [`Compiled::rules`].
pub const RULE_NONE: RuleId = u32::MAX;

/// Wildcard peer in table entries: "any identity without entries of its own".
pub const IDENTITY_ANY: IdentityId = 0;

/// The protocol class used for every IP protocol other than TCP, UDP and SCTP (ICMP
/// included): only rules without `ports` match it, always with port 0.
pub const PROTO_OTHER: u8 = 0;

/// The protocol classes a table covers.
pub const PROTO_CLASSES: [u8; 4] = [6, 17, 132, PROTO_OTHER];

/// Allow or drop, as stored in a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TableAction {
    /// Pass the packet and track the connection.
    Allow,
    /// Drop the packet.
    Deny,
}

/// The final verdict for one side of a connection and the rule that decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TableVerdict {
    /// Allow or deny.
    pub action: TableAction,
    /// Key into [`Compiled::rules`].
    pub rule: RuleId,
}

/// A run of ports with one verdict, for one peer identity and protocol class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TableEntry {
    /// Peer identity, or [`IDENTITY_ANY`].
    pub peer: IdentityId,
    /// 6, 17, 132 or [`PROTO_OTHER`].
    pub proto: u8,
    /// First port, inclusive (destination port for both directions' new connections).
    pub port_lo: u16,
    /// Last port, inclusive.
    pub port_hi: u16,
    /// The verdict.
    pub verdict: TableVerdict,
}

/// The compiled policy of one endpoint in one direction; shared by every endpoint whose
/// selected policies (and, for ingress named ports, container ports) are the same.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleTable {
    /// Entries, sorted by `(peer, proto, port_lo)`.
    pub entries: Vec<TableEntry>,
}

/// What the datapath needs about one pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointEntry {
    /// `namespace/name`.
    pub pod: String,
    /// The pod's addresses (source addresses it may use).
    pub ips: Vec<IpAddr>,
    /// Table for traffic towards the pod.
    pub ingress: TableId,
    /// Table for traffic from the pod.
    pub egress: TableId,
    /// Bumped whenever either table id changes; the agent reports it as "in force".
    pub generation: u64,
}

/// Where a rule id points: the explanation behind a verdict.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RuleOrigin {
    /// A NetworkPolicy rule allowed it.
    NetworkPolicy {
        /// Policy namespace.
        namespace: String,
        /// Policy name.
        name: String,
        /// Direction of the rule list.
        direction: Direction,
        /// Index in `spec.ingress` / `spec.egress`.
        index: usize,
    },
    /// A cluster policy rule decided it.
    Cluster {
        /// Kind written.
        kind: ClusterPolicyKind,
        /// Policy name.
        name: String,
        /// Tier.
        tier: Tier,
        /// Direction.
        direction: Direction,
        /// Index in the rule list.
        index: usize,
        /// The rule's name.
        rule_name: String,
        /// Its action.
        action: Action,
    },
    /// A Calico policy rule of the default tier decided it (`Allow` or `Deny`; a
    /// `Pass` hands over to the next tier, which then decides).
    Calico {
        /// NetworkPolicy or GlobalNetworkPolicy.
        kind: CalicoKind,
        /// Namespace of a NetworkPolicy.
        namespace: Option<String>,
        /// Policy name.
        name: String,
        /// Direction.
        direction: Direction,
        /// Index in `spec.ingress` / `spec.egress`.
        index: usize,
        /// Its action.
        action: CalicoAction,
    },
    /// Policies of the default tier (NetworkPolicies, and Calico policies when one
    /// applies) select the pod in this direction and none of their rules decided:
    /// Kubernetes isolation, Calico's end-of-tier deny.
    Isolated {
        /// Direction.
        direction: Direction,
        /// `namespace/name` of every isolating policy.
        policies: Vec<String>,
    },
    /// No policy of any tier decided: allowed by default.
    Default {
        /// Direction.
        direction: Direction,
    },
}

/// What an identity stands for, for inspection.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IdentityInfo {
    /// Pods sharing namespace, labels and named ports, in one policy-prefix class.
    Pods {
        /// Namespace.
        namespace: String,
        /// Pod labels, rendered `k=v,...`.
        labels: String,
        /// The most specific policy prefix containing these pods' addresses.
        prefix: IpNet,
    },
    /// Node addresses of one node label set.
    Node {
        /// Node name(s), rendered.
        nodes: String,
        /// The most specific policy prefix.
        prefix: IpNet,
    },
    /// Addresses outside the cluster whose most specific policy prefix is `prefix`.
    Network {
        /// The prefix.
        prefix: IpNet,
    },
}

/// The whole compiled state of a cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compiled {
    /// Longest-prefix map of addresses to identities.
    pub addresses: BTreeMap<IpNet, IdentityId>,
    /// What each identity stands for.
    pub identities: BTreeMap<IdentityId, IdentityInfo>,
    /// Endpoints by `namespace/name` (pods with an address, not host-network).
    pub endpoints: BTreeMap<String, EndpointEntry>,
    /// Rule tables.
    pub tables: BTreeMap<TableId, RuleTable>,
    /// Attribution.
    pub rules: BTreeMap<RuleId, RuleOrigin>,
}

/// One step of an incremental update. Applying a [`Delta`]'s ops in order keeps the
/// datapath consistent after *every* op: new tables and peer entries are written before
/// anything points at them, endpoints switch tables with one write, and state is removed
/// only after nothing points at it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Rule-id attribution for what follows (userspace only).
    PutRule(RuleId, RuleOrigin),
    /// Identity description (userspace only).
    PutIdentity(IdentityId, IdentityInfo),
    /// A whole new table under a fresh id.
    PutTable(TableId, RuleTable),
    /// Entries for a peer identity that no address maps to yet.
    AddPeerEntries(TableId, Vec<TableEntry>),
    /// Point an endpoint at its tables (one write in the datapath).
    PutEndpoint(EndpointEntry),
    /// Map a prefix to an identity.
    PutAddress(IpNet, IdentityId),
    /// Unmap a prefix.
    RemoveAddress(IpNet),
    /// Forget an endpoint.
    RemoveEndpoint(String),
    /// Drop a peer's entries from a table (no address maps to the peer any more).
    RemovePeerEntries(TableId, IdentityId),
    /// Drop a table nothing points at.
    RemoveTable(TableId),
    /// Forget an identity.
    RemoveIdentity(IdentityId),
    /// Forget a rule id.
    RemoveRule(RuleId),
}

/// An ordered list of [`Op`]s that moves the compiled state from one snapshot to the next.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// Ops in safe order.
    pub ops: Vec<Op>,
}
