//! The compiler's working state: interned matchers with the identities they match,
//! identities with the tables that hold entries for them, tables with their users, and
//! the [`Compiled`] snapshot kept in step through [`Op`]s.
//!
//! Two ways change it:
//!
//! - [`State::build`] compiles a whole cluster (programs, then identities, then tables,
//!   so that a table is built once with every peer present). Given [`IdHints`] from a
//!   previous state it reuses the ids of identities, tables and rules whose keys did not
//!   change, so [`diff`] of the two snapshots is small and safe.
//! - [`State::pod_changed`] is the fast path: it touches only the pod's addresses, the
//!   identities they map to (created with the matchers relevant to the pod's namespace
//!   and prefix) and the pod's own tables. Its cost does not depend on the pod count.
//!   It and the other change handlers live in `changes`.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::compiled::{
    Compiled, Delta, EndpointEntry, IdentityId, Op, RuleId, RuleOrigin, RuleTable, TableEntry,
    TableId, IDENTITY_ANY,
};
use crate::model::{
    Action, CalicoAction, CalicoPolicy, CalicoPort, CalicoRule, Cluster, ClusterPolicy, Direction,
    NamespaceMatch, NetworkPolicy, Order, Pod, PortMatch, Subject, Tier, K8S_NETWORK_POLICY_ORDER,
};
use crate::selector::Labels;
use crate::verdict::calico as calico_sem;

use super::identity::{
    named_ports, CalicoPeer, CalicoScope, FxMap, IdentityKey, LabelIndex, Matcher, NamedPorts,
    PodClass,
};
use super::prefixes::{
    cluster_policy_prefixes, host_net, network_policy_prefixes, truncate, PrefixSet,
};
mod changes;

pub(crate) use changes::diff;

use super::tables::{
    dir_index, partition, push_entries, MatcherId, Partition, Peers, PolicyProg, RuleProg, Scope,
    Spec, TableKey,
};

/// Policy revisions by `np:namespace/name` or `cp:Kind/name`; part of table keys so that
/// a changed policy never mutates a table in use.
pub(crate) type Revisions = HashMap<String, u64>;

/// Ids of a previous state, reused by [`State::build`] for unchanged keys.
#[derive(Debug, Default)]
pub(crate) struct IdHints {
    identities: FxMap<Arc<IdentityKey>, IdentityId>,
    tables: FxMap<Arc<TableKey>, TableId>,
    rules: FxMap<RuleOrigin, RuleId>,
    endpoints: FxMap<String, EndpointEntry>,
    next_identity: IdentityId,
    next_table: TableId,
    next_rule: RuleId,
    /// Not an id: the node the state's endpoints are scoped to, handed on to the next
    /// state with the ids (see [`super::Compiler::for_node`]).
    local_node: Option<String>,
}

impl IdHints {
    /// These hints, with endpoints scoped to `node`.
    pub(crate) fn on_node(mut self, node: Option<String>) -> Self {
        self.local_node = node;
        self
    }

    /// Hints for a state taking over ids in use elsewhere (the kernel, after a restart):
    /// every fresh id is at least the given floor, and each identity key listed keeps
    /// its id.
    pub(crate) fn above(
        next_identity: IdentityId,
        next_table: TableId,
        next_rule: RuleId,
        identities: FxMap<Arc<IdentityKey>, IdentityId>,
    ) -> Self {
        IdHints {
            identities,
            next_identity,
            next_table,
            next_rule,
            ..IdHints::default()
        }
    }
}

/// Ops of one change, bucketed so that [`Txn::into_delta`] emits them in safe order.
#[derive(Debug, Default)]
pub(crate) struct Txn {
    buckets: [Vec<Op>; 12],
}

impl Txn {
    /// Records an op in its bucket.
    pub(crate) fn push(&mut self, op: Op) {
        let i = match op {
            Op::PutRule(..) => 0,
            Op::PutIdentity(..) => 1,
            Op::PutTable(..) => 2,
            Op::AddPeerEntries(..) => 3,
            Op::PutEndpoint(..) => 4,
            Op::PutAddress(..) => 5,
            Op::RemoveAddress(..) => 6,
            Op::RemoveEndpoint(..) => 7,
            Op::RemovePeerEntries(..) => 8,
            Op::RemoveTable(..) => 9,
            Op::RemoveIdentity(..) => 10,
            Op::RemoveRule(..) => 11,
        };
        self.buckets[i].push(op);
    }

    /// The ops in safe order: puts of things pointed at, then pointers, then removals.
    pub(crate) fn into_delta(self) -> Delta {
        Delta {
            ops: self.buckets.into_iter().flatten().collect(),
        }
    }
}

#[derive(Debug)]
struct MatcherState {
    matcher: Matcher,
    identities: BTreeSet<IdentityId>,
    tables: BTreeSet<TableId>,
}

#[derive(Debug)]
struct IdentityState {
    key: Arc<IdentityKey>,
    /// Addresses (or the network prefix) mapped to it.
    refs: usize,
    /// Matchers matching it, sorted.
    matched: Vec<MatcherId>,
    /// Tables holding entries for it.
    tables: BTreeSet<TableId>,
}

#[derive(Debug)]
struct TableState {
    key: Arc<TableKey>,
    /// Endpoints pointing at it.
    refs: usize,
    any: Partition,
    peers: BTreeSet<IdentityId>,
    matchers: Vec<MatcherId>,
    named: Vec<String>,
    default: RuleId,
    isolated: Option<RuleId>,
}

/// See the module doc.
#[derive(Debug)]
pub(crate) struct State {
    /// The snapshot, updated by [`State::commit`].
    pub compiled: Compiled,
    /// Only pods on this node get endpoints (all pods when `None`).
    local_node: Option<String>,
    hints: IdHints,
    next_identity: IdentityId,
    next_table: TableId,
    next_rule: RuleId,
    prefixes: PrefixSet,
    rule_ids: FxMap<RuleOrigin, RuleId>,
    /// Users of each rule (policies for their rules, tables for `Default`/`Isolated`).
    rule_refs: FxMap<RuleId, (usize, RuleOrigin)>,
    matcher_ids: FxMap<Matcher, MatcherId>,
    matchers: Vec<MatcherState>,
    /// Pod matchers naming their namespace, by namespace, indexed by pod selector.
    ns_named_matchers: FxMap<String, LabelIndex<MatcherId>>,
    /// Pod matchers choosing namespaces by labels.
    ns_selector_matchers: Vec<MatcherId>,
    /// Namespace → the `ns_selector_matchers` whose namespace selector matches it,
    /// indexed by pod selector. Valid for the life of the state: namespace changes
    /// rebuild the state.
    ns_selector_cache: FxMap<String, LabelIndex<MatcherId>>,
    /// Namespace labels (shared by identity keys). Valid for the life of the state.
    ns_labels: FxMap<String, Arc<Labels>>,
    /// Service account facts by `namespace/name` (shared by identity keys), while a
    /// Calico policy exists. Valid for the life of the state: ServiceAccount changes
    /// rebuild it.
    sa_facts: FxMap<String, Arc<Labels>>,
    /// The empty facts of every pod while no Calico policy exists.
    no_sa_facts: Arc<Labels>,
    node_matchers: Vec<MatcherId>,
    block_matchers: FxMap<IpNet, Vec<MatcherId>>,
    /// Prefix lengths of `block_matchers`' CIDRs per family (`false` IPv4): matchers
    /// outlive the prefixes of deleted policies, so the prefix set's lengths are not
    /// enough to find them.
    block_lens: BTreeSet<(bool, u8)>,
    identity_ids: FxMap<Arc<IdentityKey>, IdentityId>,
    identities: FxMap<IdentityId, IdentityState>,
    named_port_identities: FxMap<String, BTreeSet<IdentityId>>,
    /// Pods by address, each list sorted (the first is the owner). A sorted `Vec`, not
    /// a `BTreeSet`: nearly every address has one pod, and a set's first node is sized
    /// for eleven (about 280 bytes per remote pod).
    addr_pods: FxMap<IpAddr, Vec<String>>,
    addr_nodes: FxMap<IpAddr, BTreeSet<String>>,
    host_ids: FxMap<IpAddr, IdentityId>,
    /// The keys of `host_ids`, ordered, to find the addresses under a new prefix.
    hosts: BTreeSet<IpAddr>,
    network_ids: FxMap<IpNet, IdentityId>,
    np_programs: FxMap<String, PolicyProg>,
    /// NetworkPolicy keys by namespace, indexed by pod selector.
    np_by_namespace: FxMap<String, LabelIndex<String>>,
    cluster_programs: FxMap<String, PolicyProg>,
    cluster_order: Vec<String>,
    /// Calico programs by [`CalicoPolicy::key`].
    calico_programs: FxMap<String, PolicyProg>,
    /// Calico matchers: checked against every new identity (no index).
    calico_matchers: Vec<MatcherId>,
    table_ids: FxMap<Arc<TableKey>, TableId>,
    tables: FxMap<TableId, TableState>,
    named_port_tables: FxMap<String, BTreeSet<TableId>>,
    endpoints: FxMap<String, EndpointEntry>,
}

/// Inserts `key` into the sorted `list` unless it is there.
fn sorted_insert(list: &mut Vec<String>, key: &str) {
    if let Err(i) = list.binary_search_by(|k| k.as_str().cmp(key)) {
        list.insert(i, key.to_string());
    }
}

/// Removes `key` from the sorted `list` if it is there.
fn sorted_remove(list: &mut Vec<String>, key: &str) {
    if let Ok(i) = list.binary_search_by(|k| k.as_str().cmp(key)) {
        list.remove(i);
    }
}

fn subject_matches(subject: &Subject, ns_labels: &Labels, pod: &Pod) -> bool {
    match subject {
        Subject::Namespaces(ns) => ns.matches(ns_labels),
        Subject::Pods { namespaces, pods } => {
            namespaces.matches(ns_labels) && pods.matches(&pod.labels)
        }
    }
}

/// Whether `pod` gets an endpoint (tables) here: it has an address of its own and, when
/// the compiler is scoped to one node, runs on it. Every other pod is only a peer (its
/// addresses still map to its identity).
fn is_endpoint(pod: &Pod, node: Option<&str>) -> bool {
    !pod.host_network
        && !pod.ips.is_empty()
        && node.is_none_or(|n| pod.node_name.as_deref() == Some(n))
}

impl State {
    fn empty(hints: IdHints) -> Self {
        State {
            local_node: hints.local_node.clone(),
            compiled: Compiled::default(),
            next_identity: hints.next_identity.max(IDENTITY_ANY + 1),
            next_table: hints.next_table,
            next_rule: hints.next_rule,
            hints,
            prefixes: PrefixSet::new(),
            rule_ids: FxMap::default(),
            rule_refs: FxMap::default(),
            matcher_ids: FxMap::default(),
            matchers: Vec::new(),
            ns_named_matchers: FxMap::default(),
            ns_selector_matchers: Vec::new(),
            ns_selector_cache: FxMap::default(),
            ns_labels: FxMap::default(),
            sa_facts: FxMap::default(),
            no_sa_facts: Arc::new(Labels::new()),
            node_matchers: Vec::new(),
            block_matchers: FxMap::default(),
            block_lens: BTreeSet::new(),
            identity_ids: FxMap::default(),
            identities: FxMap::default(),
            named_port_identities: FxMap::default(),
            addr_pods: FxMap::default(),
            addr_nodes: FxMap::default(),
            host_ids: FxMap::default(),
            hosts: BTreeSet::new(),
            network_ids: FxMap::default(),
            np_programs: FxMap::default(),
            np_by_namespace: FxMap::default(),
            cluster_programs: FxMap::default(),
            cluster_order: Vec::new(),
            calico_programs: FxMap::default(),
            calico_matchers: Vec::new(),
            table_ids: FxMap::default(),
            tables: FxMap::default(),
            named_port_tables: FxMap::default(),
            endpoints: FxMap::default(),
        }
    }

    /// Every live identity key with its id.
    pub(crate) fn identity_keys(&self) -> impl Iterator<Item = (&Arc<IdentityKey>, IdentityId)> {
        self.identity_ids.iter().map(|(k, id)| (k, *id))
    }

    /// The next fresh ids (identity, table, rule).
    pub(crate) fn next_ids(&self) -> (IdentityId, TableId, RuleId) {
        (self.next_identity, self.next_table, self.next_rule)
    }

    /// Moves this state's ids out as hints for the next [`State::build`]. The state must
    /// not be changed afterwards (only its snapshot read).
    pub(crate) fn take_hints(&mut self) -> IdHints {
        IdHints {
            local_node: self.local_node.clone(),
            identities: std::mem::take(&mut self.identity_ids),
            tables: std::mem::take(&mut self.table_ids),
            rules: std::mem::take(&mut self.rule_ids),
            endpoints: std::mem::take(&mut self.endpoints),
            next_identity: self.next_identity,
            next_table: self.next_table,
            next_rule: self.next_rule,
        }
    }

    /// Compiles a whole cluster. See the module doc.
    pub(crate) fn build(cluster: &Cluster, revisions: &Revisions, hints: IdHints) -> State {
        let mut st = State::empty(hints);
        let mut txn = Txn::default();
        for (key, np) in &cluster.network_policies {
            let rev = revisions.get(&format!("np:{key}")).copied().unwrap_or(0);
            st.add_network_policy(key, np, rev, &mut txn);
        }
        for (key, cp) in &cluster.cluster_policies {
            let rev = revisions.get(&format!("cp:{key}")).copied().unwrap_or(0);
            st.add_cluster_policy(key, cp, rev, &mut txn);
        }
        st.sort_cluster_order();
        for (key, cp) in &cluster.calico_policies {
            let rev = revisions
                .get(&format!("calico:{key}"))
                .copied()
                .unwrap_or(0);
            st.add_calico_policy(key, cp, cluster, rev, &mut txn);
        }
        // Every network set net is a prefix, so that an identity's prefix decides its
        // membership (see `identity::CalicoScope`).
        if !cluster.calico_policies.is_empty() {
            for set in cluster.network_sets.values() {
                for n in &set.nets {
                    st.prefixes.insert(n.trunc());
                }
            }
        }
        let prefixes: Vec<IpNet> = st.prefixes.iter().copied().collect();
        for p in prefixes {
            let id = st.acquire_identity(IdentityKey::network(p), &mut txn);
            st.network_ids.insert(p, id);
            txn.push(Op::PutAddress(p, id));
        }
        let mut addrs = BTreeSet::new();
        for (key, pod) in &cluster.pods {
            if !pod.host_network {
                for ip in &pod.ips {
                    sorted_insert(st.addr_pods.entry(*ip).or_default(), key);
                    addrs.insert(*ip);
                }
            }
        }
        for (name, node) in &cluster.nodes {
            for ip in &node.addresses {
                st.addr_nodes.entry(*ip).or_default().insert(name.clone());
                addrs.insert(*ip);
            }
        }
        for ip in addrs {
            st.set_host(ip, cluster, &mut txn);
        }
        // Pods of one Deployment share their table keys: compute them once.
        let mut memo: FxMap<(&str, &Labels, NamedPorts, &str), [TableKey; 2]> = FxMap::default();
        for (key, pod) in &cluster.pods {
            if !is_endpoint(pod, st.local_node.as_deref()) {
                continue;
            }
            let ports = named_ports(pod);
            let keys = memo
                .entry((
                    pod.namespace.as_str(),
                    &pod.labels,
                    ports,
                    pod.service_account.as_str(),
                ))
                .or_insert_with(|| {
                    let ns_labels = cluster.namespace_labels(&pod.namespace);
                    let facts = st.endpoint_sa_facts(cluster, pod);
                    [
                        st.table_key(pod, &ns_labels, &facts, Direction::Ingress),
                        st.table_key(pod, &ns_labels, &facts, Direction::Egress),
                    ]
                })
                .clone();
            st.put_endpoint(key, pod, keys, &mut txn);
        }
        // Nothing to send anywhere: move the ops into the snapshot (tables uncopied).
        for op in txn.into_delta().ops {
            match op {
                Op::PutTable(id, t) => {
                    st.compiled.tables.insert(id, t);
                }
                other => st.compiled.apply_op(&other),
            }
        }
        st.hints = IdHints::default();
        st
    }

    /// Applies a transaction to the snapshot and returns it as a delta.
    pub(crate) fn commit(&mut self, txn: Txn) -> Delta {
        let delta = txn.into_delta();
        self.compiled.apply(&delta);
        delta
    }

    // ---- rules ----

    fn intern_rule(&mut self, origin: RuleOrigin, txn: &mut Txn) -> RuleId {
        if let Some(&id) = self.rule_ids.get(&origin) {
            self.rule_refs.get_mut(&id).expect("live rule").0 += 1;
            return id;
        }
        let id = match self.hints.rules.get(&origin) {
            Some(&id) => id,
            None => {
                let id = self.next_rule;
                self.next_rule += 1;
                id
            }
        };
        self.rule_ids.insert(origin.clone(), id);
        self.rule_refs.insert(id, (1, origin.clone()));
        txn.push(Op::PutRule(id, origin));
        id
    }

    fn release_rule(&mut self, id: RuleId, txn: &mut Txn) {
        let refs = self.rule_refs.get_mut(&id).expect("live rule");
        refs.0 -= 1;
        if refs.0 == 0 {
            let (_, origin) = self.rule_refs.remove(&id).expect("live rule");
            self.rule_ids.remove(&origin);
            txn.push(Op::RemoveRule(id));
        }
    }

    // ---- policies ----

    fn register_matcher(&mut self, m: Matcher) -> MatcherId {
        if let Some(&id) = self.matcher_ids.get(&m) {
            return id;
        }
        let id = self.matchers.len() as MatcherId;
        match &m {
            Matcher::Pods {
                namespaces: NamespaceMatch::Named(ns),
                pods,
            } => self
                .ns_named_matchers
                .entry(ns.clone())
                .or_default()
                .insert(pods, id),
            Matcher::Pods { .. } => self.ns_selector_matchers.push(id),
            Matcher::Nodes(_) => self.node_matchers.push(id),
            Matcher::Block(b) => {
                self.block_lens
                    .insert((b.cidr.addr().is_ipv6(), b.cidr.prefix_len()));
                self.block_matchers.entry(b.cidr).or_default().push(id)
            }
            Matcher::Nothing => {}
            Matcher::CalicoInterest(_) | Matcher::CalicoTruth(_) => self.calico_matchers.push(id),
        }
        self.matcher_ids.insert(m.clone(), id);
        self.matchers.push(MatcherState {
            matcher: m,
            identities: BTreeSet::new(),
            tables: BTreeSet::new(),
        });
        id
    }

    fn peers_of(&mut self, matchers: Vec<Matcher>) -> Vec<MatcherId> {
        let mut ids: Vec<MatcherId> = matchers
            .into_iter()
            .map(|m| self.register_matcher(m))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    fn add_network_policy(&mut self, key: &str, np: &NetworkPolicy, revision: u64, txn: &mut Txn) {
        let mut prog = PolicyProg {
            scope: Scope::Namespace {
                pods: np.pod_selector.clone(),
                display: format!("{}/{}", np.namespace, np.name),
            },
            rules: [Vec::new(), Vec::new()],
            active: [false; 2],
            uses_named: [false; 2],
            revision,
            matchers: Vec::new(),
        };
        for dir in [Direction::Ingress, Direction::Egress] {
            let d = dir_index(dir);
            let Some(rules) = np.rules(dir) else { continue };
            prog.active[d] = true;
            for (index, r) in rules.iter().enumerate() {
                let rule = self.intern_rule(
                    RuleOrigin::NetworkPolicy {
                        namespace: np.namespace.clone(),
                        name: np.name.clone(),
                        direction: dir,
                        index,
                    },
                    txn,
                );
                let peers = match &r.peers {
                    None => Peers::All,
                    Some(ps) => {
                        let ms = ps.iter().flat_map(Matcher::of_network_peer).collect();
                        Peers::Any(self.peers_of(ms))
                    }
                };
                if let Peers::Any(ms) = &peers {
                    prog.matchers.extend(ms);
                }
                prog.uses_named[d] |= uses_named(&r.ports);
                prog.rules[d].push(RuleProg {
                    rule,
                    action: Action::Accept,
                    peers,
                    ports: r.ports.clone(),
                    not_ports: Vec::new(),
                    not_class: None,
                });
            }
        }
        for p in network_policy_prefixes(np) {
            self.prefixes.insert(p);
        }
        self.np_by_namespace
            .entry(np.namespace.clone())
            .or_default()
            .insert(&np.pod_selector, key.to_string());
        self.np_programs.insert(key.to_string(), prog);
    }

    fn add_cluster_policy(&mut self, key: &str, cp: &ClusterPolicy, revision: u64, txn: &mut Txn) {
        let mut prog = PolicyProg {
            scope: Scope::Cluster {
                tier: cp.tier,
                priority: cp.priority,
                name: cp.name.clone(),
                subject: cp.subject.clone(),
            },
            rules: [Vec::new(), Vec::new()],
            active: [false; 2],
            uses_named: [false; 2],
            revision,
            matchers: Vec::new(),
        };
        for dir in [Direction::Ingress, Direction::Egress] {
            let d = dir_index(dir);
            prog.active[d] = !cp.rules(dir).is_empty();
            for (index, r) in cp.rules(dir).iter().enumerate() {
                let rule = self.intern_rule(
                    RuleOrigin::Cluster {
                        kind: cp.kind,
                        name: cp.name.clone(),
                        tier: cp.tier,
                        direction: dir,
                        index,
                        rule_name: r.name.clone(),
                        action: r.action,
                    },
                    txn,
                );
                let ms = r.peers.iter().flat_map(Matcher::of_cluster_peer).collect();
                let ms = self.peers_of(ms);
                prog.matchers.extend(&ms);
                prog.uses_named[d] |= uses_named(&r.ports);
                prog.rules[d].push(RuleProg {
                    rule,
                    action: r.action,
                    peers: Peers::Any(ms),
                    ports: r.ports.clone(),
                    not_ports: Vec::new(),
                    not_class: None,
                });
            }
        }
        for p in cluster_policy_prefixes(cp) {
            self.prefixes.insert(p);
        }
        self.cluster_programs.insert(key.to_string(), prog);
        self.cluster_order.push(key.to_string());
    }

    /// A Calico policy's program: `Log` rules are left out (Palisade does not log),
    /// every other rule keeps its index for attribution.
    fn add_calico_policy(
        &mut self,
        key: &str,
        cp: &CalicoPolicy,
        cluster: &Cluster,
        revision: u64,
        txn: &mut Txn,
    ) {
        let ns = cp.namespace.clone().unwrap_or_default();
        let mut prog = PolicyProg {
            scope: Scope::Calico {
                policy: Box::new(cp.clone()),
                sort: calico_sem::sort_key(cp.order, &cp.name, &ns, true),
                display: calico_sem::display_name(cp),
            },
            rules: [Vec::new(), Vec::new()],
            active: [false; 2],
            uses_named: [false; 2],
            revision,
            matchers: Vec::new(),
        };
        for dir in [Direction::Ingress, Direction::Egress] {
            let d = dir_index(dir);
            let Some(rules) = cp.rules(dir) else { continue };
            prog.active[d] = true;
            for (index, r) in rules.iter().enumerate() {
                let action = match r.action {
                    CalicoAction::Log => continue,
                    CalicoAction::Allow => Action::Accept,
                    CalicoAction::Deny => Action::Deny,
                    CalicoAction::Pass => Action::Pass,
                };
                let rule = self.intern_rule(
                    RuleOrigin::Calico {
                        kind: cp.kind,
                        namespace: cp.namespace.clone(),
                        name: cp.name.clone(),
                        direction: dir,
                        index,
                        action: r.action,
                    },
                    txn,
                );
                let peers = if r.peer.is_empty() {
                    Peers::All
                } else {
                    let peer = Arc::new(self.calico_peer(cp, r, dir, cluster));
                    let default = peer.default();
                    let interest = self.register_matcher(Matcher::CalicoInterest(peer.clone()));
                    let truth = self.register_matcher(Matcher::CalicoTruth(peer));
                    prog.matchers.extend([interest, truth]);
                    Peers::Calico {
                        interest,
                        truth,
                        default,
                    }
                };
                let (ports, not_ports) = calico_ports(r);
                prog.uses_named[d] |= uses_named(&ports) || uses_named(&Some(not_ports.clone()));
                prog.rules[d].push(RuleProg {
                    rule,
                    action,
                    peers,
                    ports,
                    not_ports,
                    not_class: r.not_protocol.map(|p| p.number()),
                });
            }
        }
        self.calico_programs.insert(key.to_string(), prog);
    }

    /// A rule's peer criteria resolved against `cluster`, with every net they use
    /// added to the prefix set.
    fn calico_peer(
        &mut self,
        cp: &CalicoPolicy,
        r: &CalicoRule,
        dir: Direction,
        cluster: &Cluster,
    ) -> CalicoPeer {
        let e = &r.peer;
        let own = cp.namespace.as_deref();
        let scope = |sel: &crate::calico_selector::CalicoSelector| {
            let ns_sel = e.namespace_selector.as_ref();
            let mut set_nets: Vec<IpNet> = cluster
                .network_sets
                .values()
                .filter(|set| {
                    let in_scope = match &set.namespace {
                        Some(ns) => calico_sem::in_scope_namespaced(
                            own,
                            ns_sel,
                            &cluster.namespace_labels(ns),
                            ns,
                        ),
                        None => calico_sem::in_scope_global(own, ns_sel),
                    };
                    in_scope && sel.matches(&set.labels, set.namespace.is_none())
                })
                .flat_map(|set| set.nets.iter().map(IpNet::trunc))
                .collect();
            set_nets.sort();
            set_nets.dedup();
            CalicoScope {
                sel: sel.clone(),
                ns_sel: ns_sel.cloned(),
                policy_ns: cp.namespace.clone(),
                set_nets,
            }
        };
        let positive = calico_sem::positive_selector(e).as_ref().map(scope);
        let negative = e.not_selector.as_ref().map(scope);
        let service = e.service.as_ref().map(|s| {
            calico_sem::service_addresses(cluster, s, dir)
                .into_iter()
                .map(host_net)
                .collect::<Vec<_>>()
        });
        let peer = CalicoPeer {
            nets: e.nets.iter().map(IpNet::trunc).collect(),
            not_nets: e.not_nets.iter().map(IpNet::trunc).collect(),
            positive,
            negative,
            service,
        };
        let mut mentioned: Vec<IpNet> = peer.nets.iter().chain(&peer.not_nets).copied().collect();
        mentioned.extend(peer.service.iter().flatten());
        for n in mentioned {
            self.prefixes.insert(n);
        }
        peer
    }

    fn sort_cluster_order(&mut self) {
        let progs = &self.cluster_programs;
        self.cluster_order
            .sort_by_cached_key(|k| match &progs[k].scope {
                Scope::Cluster {
                    tier,
                    priority,
                    name,
                    ..
                } => (*tier, *priority, name.clone(), k.clone()),
                Scope::Namespace { .. } | Scope::Calico { .. } => {
                    unreachable!("cluster programs are cluster-scoped")
                }
            });
    }

    // ---- identities ----

    fn matching_matchers(&mut self, key: &IdentityKey) -> Vec<MatcherId> {
        let mut out = Vec::new();
        if let Some(pod) = &key.pod {
            if !self.ns_selector_cache.contains_key(&pod.namespace) {
                let mut hits = LabelIndex::default();
                for &m in &self.ns_selector_matchers {
                    if let Matcher::Pods { namespaces, pods } = &self.matchers[m as usize].matcher {
                        if Matcher::matches_namespace(namespaces, &pod.namespace, &pod.ns_labels) {
                            hits.insert(pods, m);
                        }
                    }
                }
                self.ns_selector_cache.insert(pod.namespace.clone(), hits);
            }
            let named = self.ns_named_matchers.get(&pod.namespace);
            let selected = &self.ns_selector_cache[&pod.namespace];
            let candidates = named
                .into_iter()
                .flat_map(|i| i.candidates(&pod.labels))
                .chain(selected.candidates(&pod.labels));
            for &m in candidates {
                if self.matchers[m as usize].matcher.matches(key) {
                    out.push(m);
                }
            }
        }
        for &m in &self.calico_matchers {
            if self.matchers[m as usize].matcher.matches(key) {
                out.push(m);
            }
        }
        if !key.nodes.is_empty() {
            for &m in &self.node_matchers {
                if self.matchers[m as usize].matcher.matches(key) {
                    out.push(m);
                }
            }
        }
        let v6 = key.prefix.addr().is_ipv6();
        let lens = self
            .block_lens
            .range((v6, 0)..=(v6, key.prefix.prefix_len()))
            .map(|(_, l)| *l);
        for len in lens {
            if let Some(ms) = self.block_matchers.get(&truncate(key.prefix, len)) {
                for &m in ms {
                    if self.matchers[m as usize].matcher.matches(key) {
                        out.push(m);
                    }
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    fn acquire_identity(&mut self, key: IdentityKey, txn: &mut Txn) -> IdentityId {
        if let Some(&id) = self.identity_ids.get(&key) {
            self.identities.get_mut(&id).expect("live identity").refs += 1;
            return id;
        }
        let id = match self.hints.identities.get(&key) {
            Some(&id) => id,
            None => {
                let id = self.next_identity;
                self.next_identity += 1;
                id
            }
        };
        let matched = self.matching_matchers(&key);
        let mut tables = BTreeSet::new();
        for &m in &matched {
            let ms = &mut self.matchers[m as usize];
            ms.identities.insert(id);
            tables.extend(ms.tables.iter().copied());
        }
        if let Some(pod) = &key.pod {
            for (name, _, _) in &pod.named_ports {
                self.named_port_identities
                    .entry(name.clone())
                    .or_default()
                    .insert(id);
                tables.extend(self.named_port_tables.get(name).into_iter().flatten());
            }
        }
        txn.push(Op::PutIdentity(id, key.info()));
        let key = Arc::new(key);
        self.identity_ids.insert(key.clone(), id);
        self.identities.insert(
            id,
            IdentityState {
                key,
                refs: 1,
                matched,
                tables: BTreeSet::new(),
            },
        );
        for t in tables {
            let mut entries = Vec::new();
            if self.peer_entries(t, id, &mut entries) {
                self.tables
                    .get_mut(&t)
                    .expect("live table")
                    .peers
                    .insert(id);
                self.identities
                    .get_mut(&id)
                    .expect("just made")
                    .tables
                    .insert(t);
                txn.push(Op::AddPeerEntries(t, entries));
            }
        }
        id
    }

    fn release_identity(&mut self, id: IdentityId, txn: &mut Txn) {
        let st = self.identities.get_mut(&id).expect("live identity");
        st.refs -= 1;
        if st.refs > 0 {
            return;
        }
        let st = self.identities.remove(&id).expect("live identity");
        for t in &st.tables {
            self.tables
                .get_mut(t)
                .expect("live table")
                .peers
                .remove(&id);
            txn.push(Op::RemovePeerEntries(*t, id));
        }
        for m in &st.matched {
            self.matchers[*m as usize].identities.remove(&id);
        }
        if let Some(pod) = &st.key.pod {
            for (name, _, _) in &pod.named_ports {
                if let Some(s) = self.named_port_identities.get_mut(name) {
                    s.remove(&id);
                }
            }
        }
        self.identity_ids.remove(&st.key);
        txn.push(Op::RemoveIdentity(id));
    }

    fn host_key(&mut self, ip: IpAddr, cluster: &Cluster) -> Option<IdentityKey> {
        let owner = self
            .addr_pods
            .get(&ip)
            .and_then(|s| s.iter().next())
            .and_then(|k| cluster.pods.get(k));
        let pod = owner.map(|p| {
            let ns_labels = self
                .ns_labels
                .entry(p.namespace.clone())
                .or_insert_with(|| Arc::new(cluster.namespace_labels(&p.namespace)))
                .clone();
            let sa_facts = if self.calico_programs.is_empty() {
                self.no_sa_facts.clone()
            } else {
                self.sa_facts
                    .entry(format!("{}/{}", p.namespace, p.service_account))
                    .or_insert_with(|| {
                        Arc::new(calico_sem::service_account_facts(
                            cluster,
                            &p.namespace,
                            &p.service_account,
                        ))
                    })
                    .clone()
            };
            PodClass {
                namespace: p.namespace.clone(),
                ns_labels,
                labels: p.labels.clone(),
                named_ports: named_ports(p),
                sa_facts,
            }
        });
        let nodes: Vec<(String, Labels)> = self
            .addr_nodes
            .get(&ip)
            .into_iter()
            .flatten()
            .filter_map(|n| {
                cluster
                    .nodes
                    .get(n)
                    .map(|node| (n.clone(), node.labels.clone()))
            })
            .collect();
        if pod.is_none() && nodes.is_empty() {
            return None;
        }
        Some(IdentityKey {
            pod,
            nodes,
            prefix: self.prefixes.most_specific(ip),
        })
    }

    /// Recomputes the identity of one pod or node address and maps it.
    fn set_host(&mut self, ip: IpAddr, cluster: &Cluster, txn: &mut Txn) {
        let desired = self.host_key(ip, cluster);
        let current = self.host_ids.get(&ip).copied();
        let net = host_net(ip);
        match desired {
            Some(key) => {
                let id = self.acquire_identity(key, txn);
                if current != Some(id) {
                    txn.push(Op::PutAddress(net, id));
                }
                self.host_ids.insert(ip, id);
                self.hosts.insert(ip);
            }
            None => {
                if current.is_some() {
                    match self.network_ids.get(&net) {
                        Some(&id) => txn.push(Op::PutAddress(net, id)),
                        None => txn.push(Op::RemoveAddress(net)),
                    }
                    self.host_ids.remove(&ip);
                    self.hosts.remove(&ip);
                }
            }
        }
        if let Some(cur) = current {
            self.release_identity(cur, txn);
        }
    }

    // ---- tables ----

    /// An endpoint's service account facts for [`State::table_key`]: empty while no
    /// Calico policy exists (nothing reads them).
    pub(crate) fn endpoint_sa_facts(&self, cluster: &Cluster, pod: &Pod) -> Labels {
        if self.calico_programs.is_empty() {
            Labels::new()
        } else {
            calico_sem::service_account_facts(cluster, &pod.namespace, &pod.service_account)
        }
    }

    /// The tables' key of endpoint `pod`; `sa_facts` are its service account facts
    /// ([`calico_sem::service_account_facts`], read only by Calico policies).
    fn table_key(
        &self,
        pod: &Pod,
        ns_labels: &Labels,
        sa_facts: &Labels,
        dir: Direction,
    ) -> TableKey {
        let d = dir_index(dir);
        let mut key = TableKey {
            dir,
            admin: Vec::new(),
            network: Vec::new(),
            calico: Vec::new(),
            baseline: Vec::new(),
            local_ports: None,
        };
        let mut named = false;
        for k in &self.cluster_order {
            let prog = &self.cluster_programs[k];
            let Scope::Cluster { tier, subject, .. } = &prog.scope else {
                continue;
            };
            if prog.active[d] && subject_matches(subject, ns_labels, pod) {
                named |= prog.uses_named[d];
                let list = match tier {
                    Tier::Admin => &mut key.admin,
                    Tier::Baseline => &mut key.baseline,
                };
                list.push((k.clone(), prog.revision));
            }
        }
        let mut nps: Vec<&String> = self
            .np_by_namespace
            .get(&pod.namespace)
            .into_iter()
            .flat_map(|i| i.candidates(&pod.labels))
            .collect();
        nps.sort_unstable();
        for k in nps {
            let prog = &self.np_programs[k];
            let Scope::Namespace { pods, .. } = &prog.scope else {
                continue;
            };
            if prog.active[d] && pods.matches(&pod.labels) {
                named |= prog.uses_named[d];
                key.network.push((k.clone(), prog.revision));
            }
        }
        let mut calico: Vec<(&calico_sem::SortKey, &String, u64)> = Vec::new();
        for (k, prog) in &self.calico_programs {
            let Scope::Calico { policy, sort, .. } = &prog.scope else {
                continue;
            };
            if prog.active[d]
                && calico_sem::selects(policy, &pod.labels, ns_labels, &pod.namespace, sa_facts)
            {
                named |= prog.uses_named[d];
                calico.push((sort, k, prog.revision));
            }
        }
        calico.sort();
        key.calico = calico
            .into_iter()
            .map(|(_, k, rev)| (k.clone(), rev))
            .collect();
        if dir == Direction::Ingress && named {
            let ports = named_ports(pod);
            if !ports.is_empty() {
                key.local_ports = Some(ports);
            }
        }
        key
    }

    fn spec<'a>(
        &'a self,
        key: &'a TableKey,
        isolated: Option<RuleId>,
        default: RuleId,
    ) -> Spec<'a> {
        let d = dir_index(key.dir);
        let mut rules: Vec<&RuleProg> = Vec::new();
        for (k, _) in &key.admin {
            rules.extend(&self.cluster_programs[k].rules[d]);
        }
        let admin_end = rules.len();
        for prog in self.default_tier(key) {
            rules.extend(&prog.rules[d]);
        }
        let np_end = rules.len();
        for (k, _) in &key.baseline {
            rules.extend(&self.cluster_programs[k].rules[d]);
        }
        Spec {
            dir: key.dir,
            rules,
            admin_end,
            np_end,
            isolated,
            default,
            local_ports: key.local_ports.as_deref().unwrap_or(&[]),
        }
    }

    /// The default tier's programs in evaluation order: the NetworkPolicies alone when
    /// no Calico policy applies, else both merged by `(order, name, namespace)`.
    fn default_tier<'a>(&'a self, key: &'a TableKey) -> Vec<&'a PolicyProg> {
        let nps = key.network.iter().map(|(k, _)| &self.np_programs[k]);
        if key.calico.is_empty() {
            return nps.collect();
        }
        let mut members: Vec<(calico_sem::SortKey, &PolicyProg)> = key
            .network
            .iter()
            .map(|(k, _)| {
                let (ns, name) = k.split_once('/').unwrap_or(("", k));
                let sort = calico_sem::sort_key(
                    Some(Order(K8S_NETWORK_POLICY_ORDER)),
                    &format!("knp.default.{name}"),
                    ns,
                    false,
                );
                (sort, &self.np_programs[k])
            })
            .collect();
        for (k, _) in &key.calico {
            let prog = &self.calico_programs[k];
            if let Scope::Calico { sort, .. } = &prog.scope {
                members.push((sort.clone(), prog));
            }
        }
        members.sort_by(|a, b| a.0.cmp(&b.0));
        members.into_iter().map(|(_, p)| p).collect()
    }

    /// How the end-of-tier deny names the policies that applied, as the evaluator does.
    fn applied_names(&self, key: &TableKey) -> Vec<String> {
        if key.calico.is_empty() {
            return key.network.iter().map(|(k, _)| k.clone()).collect();
        }
        self.default_tier(key)
            .into_iter()
            .map(|prog| match &prog.scope {
                Scope::Calico { display, .. } => display.clone(),
                Scope::Namespace { display, .. } => format!("NetworkPolicy {display}"),
                Scope::Cluster { name, .. } => name.clone(),
            })
            .collect()
    }

    /// Entries of identity `id` in table `t`, if its partition differs from the wildcard's.
    fn peer_entries(&self, t: TableId, id: IdentityId, out: &mut Vec<TableEntry>) -> bool {
        let ts = &self.tables[&t];
        let spec = self.spec(&ts.key, ts.isolated, ts.default);
        let ident = &self.identities[&id];
        let flags = spec.flags(&ident.matched);
        let ports = match &ident.key.pod {
            Some(p) if ts.key.dir == Direction::Egress => p.named_ports.as_slice(),
            _ => &[],
        };
        let part = partition(&spec, &flags, ports);
        part != ts.any && push_entries(id, &part, Some(&ts.any), out)
    }

    fn acquire_table(&mut self, key: TableKey, txn: &mut Txn) -> TableId {
        if let Some(&id) = self.table_ids.get(&key) {
            self.tables.get_mut(&id).expect("live table").refs += 1;
            return id;
        }
        let dir = key.dir;
        let default = self.intern_rule(RuleOrigin::Default { direction: dir }, txn);
        let isolated = if key.network.is_empty() && key.calico.is_empty() {
            None
        } else {
            let policies = self.applied_names(&key);
            Some(self.intern_rule(
                RuleOrigin::Isolated {
                    direction: dir,
                    policies,
                },
                txn,
            ))
        };
        let id = match self.hints.tables.get(&key) {
            Some(&id) => id,
            None => {
                let id = self.next_table;
                self.next_table += 1;
                id
            }
        };
        let (entries, any, peers, matchers, named) = {
            let spec = self.spec(&key, isolated, default);
            self.build_entries(&spec)
        };
        for &m in &matchers {
            self.matchers[m as usize].tables.insert(id);
        }
        for n in &named {
            self.named_port_tables
                .entry(n.clone())
                .or_default()
                .insert(id);
        }
        for p in &peers {
            self.identities
                .get_mut(p)
                .expect("live identity")
                .tables
                .insert(id);
        }
        let key = Arc::new(key);
        self.table_ids.insert(key.clone(), id);
        self.tables.insert(
            id,
            TableState {
                key,
                refs: 1,
                any,
                peers,
                matchers,
                named,
                default,
                isolated,
            },
        );
        txn.push(Op::PutTable(id, RuleTable { entries }));
        id
    }

    #[allow(clippy::type_complexity)]
    fn build_entries(
        &self,
        spec: &Spec,
    ) -> (
        Vec<TableEntry>,
        Partition,
        BTreeSet<IdentityId>,
        Vec<MatcherId>,
        Vec<String>,
    ) {
        let any = partition(spec, &spec.any_flags(), &[]);
        let mut entries = Vec::new();
        push_entries(IDENTITY_ANY, &any, None, &mut entries);
        let mut matchers: Vec<MatcherId> =
            spec.rules.iter().flat_map(|r| r.peers.matchers()).collect();
        matchers.sort_unstable();
        matchers.dedup();
        let named = spec.egress_named_ports();
        let mut candidates: BTreeSet<IdentityId> = BTreeSet::new();
        for &m in &matchers {
            candidates.extend(&self.matchers[m as usize].identities);
        }
        for n in &named {
            candidates.extend(self.named_port_identities.get(n).into_iter().flatten());
        }
        let mut cache: FxMap<(Vec<bool>, &[(String, crate::model::Protocol, u16)]), Partition> =
            FxMap::default();
        let mut peers = BTreeSet::new();
        for c in candidates {
            let ident = &self.identities[&c];
            let flags = spec.flags(&ident.matched);
            let ports = match &ident.key.pod {
                Some(p) if spec.dir == Direction::Egress => p.named_ports.as_slice(),
                _ => &[],
            };
            let part = cache
                .entry((flags, ports))
                .or_insert_with_key(|(f, p)| partition(spec, f, p));
            if *part != any && push_entries(c, part, Some(&any), &mut entries) {
                peers.insert(c);
            }
        }
        (entries, any, peers, matchers, named)
    }

    fn release_table(&mut self, id: TableId, txn: &mut Txn) {
        let ts = self.tables.get_mut(&id).expect("live table");
        ts.refs -= 1;
        if ts.refs > 0 {
            return;
        }
        let ts = self.tables.remove(&id).expect("live table");
        for m in &ts.matchers {
            self.matchers[*m as usize].tables.remove(&id);
        }
        for n in &ts.named {
            if let Some(s) = self.named_port_tables.get_mut(n) {
                s.remove(&id);
            }
        }
        for p in &ts.peers {
            if let Some(i) = self.identities.get_mut(p) {
                i.tables.remove(&id);
            }
        }
        self.table_ids.remove(&ts.key);
        txn.push(Op::RemoveTable(id));
        self.release_rule(ts.default, txn);
        if let Some(iso) = ts.isolated {
            self.release_rule(iso, txn);
        }
    }

    // ---- endpoints ----

    fn put_endpoint(&mut self, key: &str, pod: &Pod, keys: [TableKey; 2], txn: &mut Txn) {
        let [kin, keg] = keys;
        let ingress = self.acquire_table(kin, txn);
        let egress = self.acquire_table(keg, txn);
        let prior = self
            .endpoints
            .get(key)
            .or_else(|| self.hints.endpoints.get(key));
        let generation = match prior {
            Some(p) if p.ingress == ingress && p.egress == egress => p.generation,
            Some(p) => p.generation + 1,
            None => 1,
        };
        let entry = EndpointEntry {
            pod: key.to_string(),
            ips: pod.ips.clone(),
            ingress,
            egress,
            generation,
        };
        let old = self.endpoints.insert(key.to_string(), entry.clone());
        if old.as_ref() != Some(&entry) {
            txn.push(Op::PutEndpoint(entry));
        }
        if let Some(o) = old {
            self.release_table(o.ingress, txn);
            self.release_table(o.egress, txn);
        }
    }
}

fn uses_named(ports: &Option<Vec<crate::model::PortMatch>>) -> bool {
    ports
        .iter()
        .flatten()
        .any(|p| matches!(p, crate::model::PortMatch::Named { .. }))
}

/// A Calico rule's ports in the compiler's form: `(ports, notPorts)`, each with the
/// rule's protocol. No protocol and no ports: every protocol class; a protocol without
/// ports: every port of it.
fn calico_ports(r: &CalicoRule) -> (Option<Vec<PortMatch>>, Vec<PortMatch>) {
    let conv = |list: &[CalicoPort], protocol| -> Vec<PortMatch> {
        list.iter()
            .map(|p| match p {
                CalicoPort::Range(lo, hi) => PortMatch::Range {
                    protocol,
                    port: *lo,
                    end_port: *hi,
                },
                CalicoPort::Named(name) => PortMatch::Named {
                    protocol,
                    name: name.clone(),
                },
            })
            .collect()
    };
    match r.protocol {
        None => (None, Vec::new()),
        Some(p) if r.ports.is_empty() => {
            (Some(vec![PortMatch::AllPorts(p)]), conv(&r.not_ports, p))
        }
        Some(p) => (Some(conv(&r.ports, p)), conv(&r.not_ports, p)),
    }
}
