//! The compiler: a [`Cluster`] becomes the datapath-neutral [`Compiled`] form (see
//! [`crate::compiled`] for its shape and invariants).
//!
//! Stages, each in its own module:
//!
//! 1. `prefixes`: every CIDR and `except` edge of every policy, plus the default routes.
//!    An address's most specific prefix decides all its ipBlock memberships.
//! 2. `identity`: identities (equivalence classes of addresses) and matchers (every
//!    rule peer, interned, caching the identities it matches, indexed by namespace,
//!    by CIDR and for nodes so that a new identity is matched in O(relevant selectors)).
//! 3. `tables`: one rule table per distinct set of applicable policies (plus, for
//!    ingress named ports, the endpoint's named ports); per peer and protocol class
//!    the port partition with final verdicts; entries only where a peer differs from
//!    [`IDENTITY_ANY`](crate::compiled::IDENTITY_ANY).
//! 4. `state`: the bookkeeping that lets [`Compiler`] turn a change into an ordered
//!    [`Delta`] (`state::changes` has one handler per kind of object); `lookup`:
//!    reading and updating a snapshot the way the datapath does.
//!
//! Start with [`compile`] for one-shot use and [`Compiler`] for a long-running agent.

mod cluster_diff;
mod identity;
mod lookup;
mod prefixes;
mod state;
mod tables;

#[cfg(test)]
mod calico_tests;
#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod transition_tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ipnet::IpNet;

use crate::compiled::{Compiled, Delta, IdentityId, RuleId, TableId};
use crate::model::{
    CalicoPolicy, Cluster, ClusterPolicy, EndpointSlice, Namespace, NetworkPolicy, NetworkSet,
    Node, Pod, Service, ServiceAccount,
};

use identity::FxMap;
use state::{diff, IdHints, Revisions, State, Txn};

mod merge;
pub use merge::merge;

/// The ids a datapath already holds when a compiler takes over from a previous run
/// (an agent restart adopting pinned maps). A new compiler must not give any of these
/// numbers a different meaning while the kernel still uses them: see
/// [`Compiler::adopting`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InUse {
    /// Highest identity id present (address values, policy keys), 0 if none.
    pub max_identity: IdentityId,
    /// Highest table id present (policy keys, endpoint values), 0 if none.
    pub max_table: TableId,
    /// Highest rule id present (policy values), 0 if none.
    pub max_rule: RuleId,
    /// Every address entry: prefix (host prefixes included) → identity.
    pub addresses: BTreeMap<IpNet, IdentityId>,
}

/// Compiles a whole cluster. Deterministic: equal clusters give equal output.
pub fn compile(cluster: &Cluster) -> Compiled {
    State::build(cluster, &Revisions::new(), IdHints::default()).compiled
}

pub use cluster_diff::changes_between;

/// One change to the cluster, for [`Compiler::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Create or replace a pod (keyed by `namespace/name`).
    UpsertPod(Pod),
    /// Delete a pod by `namespace/name`.
    RemovePod(String),
    /// Create or replace a namespace.
    UpsertNamespace(Namespace),
    /// Delete a namespace by name (its pods stay until removed themselves).
    RemoveNamespace(String),
    /// Create or replace a node.
    UpsertNode(Node),
    /// Delete a node by name.
    RemoveNode(String),
    /// Create or replace a NetworkPolicy (keyed by `namespace/name`).
    UpsertNetworkPolicy(NetworkPolicy),
    /// Delete a NetworkPolicy by `namespace/name`.
    RemoveNetworkPolicy(String),
    /// Create or replace a cluster policy (keyed by `Kind/name`).
    UpsertClusterPolicy(ClusterPolicy),
    /// Delete a cluster policy by `Kind/name`.
    RemoveClusterPolicy(String),
    /// Create or replace a Calico policy (keyed by [`CalicoPolicy::key`]).
    UpsertCalicoPolicy(CalicoPolicy),
    /// Delete a Calico policy by its key.
    RemoveCalicoPolicy(String),
    /// Create or replace a Calico (Global)NetworkSet (keyed by [`NetworkSet::key`]).
    UpsertNetworkSet(NetworkSet),
    /// Delete a network set by its key.
    RemoveNetworkSet(String),
    /// Create or replace a Service (`namespace/name`); it matters to Calico `services`.
    UpsertService(Service),
    /// Delete a Service by `namespace/name`.
    RemoveService(String),
    /// Create or replace an EndpointSlice (`namespace/name`).
    UpsertEndpointSlice(EndpointSlice),
    /// Delete an EndpointSlice by `namespace/name`.
    RemoveEndpointSlice(String),
    /// Create or replace a ServiceAccount (`namespace/name`); its labels matter to
    /// Calico service account selectors.
    UpsertServiceAccount(ServiceAccount),
    /// Delete a ServiceAccount by `namespace/name`.
    RemoveServiceAccount(String),
}

/// The incremental compiler: owns a [`Cluster`] and its [`Compiled`] form and turns each
/// change into a [`Delta`] whose ops, applied in order, keep the datapath consistent
/// after every op (see [`crate::compiled::Op`]).
///
/// Costs:
///
/// - pod changes take the fast path: the pod's addresses, the identities they map to
///   (a new identity is matched against the selectors indexed under its namespace, the
///   ipBlocks containing its prefix and the node selectors) and the pod's two tables.
///   The cost does not grow with the number of pods;
/// - namespace changes re-key the namespace's pods (O(pods in the namespace)); node
///   changes re-key the node's addresses;
/// - NetworkPolicy changes re-key the pods of the policy's namespace that the old or
///   new version selects, after matching each matcher it introduces against every
///   identity once;
/// - cluster policy changes re-key the pods the old or new subject selects (one pass
///   over the pods to find them);
/// - a policy that introduces a CIDR also re-keys the pod and node addresses under it;
/// - Calico policies, network sets, namespaces and ServiceAccounts while a Calico policy
///   exists, and the Services and EndpointSlices a Calico rule names take the slow
///   path (a ServiceAccount without a Calico policy costs nothing): a full
///   recompile that emits only the difference (as [`Compiler::resync`]).
///
/// [`Compiler::resync`] recompiles everything and emits only the difference.
#[derive(Debug)]
pub struct Compiler {
    cluster: Cluster,
    /// Kept per policy key even after deletion, so that a re-created policy never
    /// reuses the tables of its previous incarnation.
    revisions: Revisions,
    next_revision: u64,
    state: State,
}

impl Compiler {
    /// Compiles `cluster` and keeps it for incremental changes.
    pub fn new(cluster: Cluster) -> Self {
        Self::built(cluster, IdHints::default())
    }

    /// A first compile of `cluster` (no revisions yet) with `hints`.
    fn built(cluster: Cluster, hints: IdHints) -> Self {
        let state = State::build(&cluster, &Revisions::new(), hints);
        Compiler {
            cluster,
            revisions: Revisions::new(),
            next_revision: 1,
            state,
        }
    }

    /// Compiles `cluster` to replace what a previous run left in a datapath, so that
    /// switching the kernel from that state to this one never mixes two meanings of one
    /// number:
    ///
    /// - every table and rule id is fresh, above anything in use (endpoints then switch
    ///   from old tables to new ones with one write each, as for any policy change);
    /// - an identity keeps the id the kernel gives its addresses when the kernel maps
    ///   exactly the same set of addresses to that id (the common case: nothing
    ///   changed while the agent was away); otherwise it gets a fresh id, above
    ///   anything in use. So a table entry for an identity never means something else
    ///   during the switch, and an address keeps its identity unless its class really
    ///   changed.
    ///
    /// Costs two whole compiles.
    pub fn adopting(cluster: Cluster, in_use: &InUse) -> Self {
        Self::adopting_on(cluster, in_use, None)
    }

    /// [`Compiler::adopting`], with endpoints scoped to `node` as in
    /// [`Compiler::for_node`].
    pub fn adopting_on(cluster: Cluster, in_use: &InUse, node: Option<String>) -> Self {
        let floor = (
            in_use.max_identity.saturating_add(1),
            in_use.max_table.saturating_add(1),
            in_use.max_rule.saturating_add(1),
        );
        let first = State::build(
            &cluster,
            &Revisions::new(),
            IdHints::above(floor.0, floor.1, floor.2, FxMap::default()).on_node(node.clone()),
        );
        let sets = |addresses: &BTreeMap<IpNet, IdentityId>| {
            let mut out: BTreeMap<IdentityId, BTreeSet<IpNet>> = BTreeMap::new();
            for (net, id) in addresses {
                out.entry(*id).or_default().insert(*net);
            }
            out
        };
        let (new_sets, kernel_sets) = (sets(&first.compiled.addresses), sets(&in_use.addresses));
        let mut keep: FxMap<Arc<_>, IdentityId> = FxMap::default();
        for (key, id) in first.identity_keys() {
            let Some(set) = new_sets.get(&id) else {
                continue;
            };
            let first_net = set.iter().next().expect("sets are never empty");
            let Some(&old) = in_use.addresses.get(first_net) else {
                continue;
            };
            if kernel_sets.get(&old) == Some(set) {
                keep.insert(key.clone(), old);
            }
        }
        Self::built(
            cluster,
            IdHints::above(floor.0, floor.1, floor.2, keep).on_node(node),
        )
    }

    /// A compiler for a node agent: only pods whose `node_name` is `node` get endpoints
    /// (tables); every other pod is kept only as a peer (its addresses, identity and
    /// named ports), which is all the node's own tables need of it. The scope holds
    /// across [`Compiler::rebuild`] and [`Compiler::resync`].
    pub fn for_node(cluster: Cluster, node: impl Into<String>) -> Self {
        Self::built(cluster, IdHints::default().on_node(Some(node.into())))
    }

    /// The current compiled form.
    pub fn compiled(&self) -> &Compiled {
        &self.state.compiled
    }

    /// The current cluster.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Applies one change.
    pub fn apply(&mut self, change: Change) -> Delta {
        match change {
            Change::UpsertPod(p) => self.upsert_pod(p),
            Change::RemovePod(k) => self.remove_pod(&k),
            Change::UpsertNamespace(n) => self.upsert_namespace(n),
            Change::RemoveNamespace(n) => self.remove_namespace(&n),
            Change::UpsertNode(n) => self.upsert_node(n),
            Change::RemoveNode(n) => self.remove_node(&n),
            Change::UpsertNetworkPolicy(p) => self.upsert_network_policy(p),
            Change::RemoveNetworkPolicy(k) => self.remove_network_policy(&k),
            Change::UpsertClusterPolicy(p) => self.upsert_cluster_policy(p),
            Change::RemoveClusterPolicy(k) => self.remove_cluster_policy(&k),
            Change::UpsertCalicoPolicy(p) => {
                let key = p.key();
                if self.cluster.calico_policies.get(&key) == Some(&p) {
                    return Delta::default();
                }
                self.cluster.calico_policies.insert(key.clone(), p);
                self.bump(format!("calico:{key}"));
                self.resync()
            }
            Change::RemoveCalicoPolicy(k) => {
                if self.cluster.calico_policies.remove(&k).is_none() {
                    return Delta::default();
                }
                self.bump(format!("calico:{k}"));
                self.resync()
            }
            Change::UpsertNetworkSet(n) => {
                let key = n.key();
                if self.cluster.network_sets.get(&key) == Some(&n) {
                    return Delta::default();
                }
                self.cluster.network_sets.insert(key, n);
                self.calico_inputs_changed()
            }
            Change::RemoveNetworkSet(k) => match self.cluster.network_sets.remove(&k) {
                Some(_) => self.calico_inputs_changed(),
                None => Delta::default(),
            },
            Change::UpsertService(svc) => {
                let key = format!("{}/{}", svc.namespace, svc.name);
                if self.cluster.services.get(&key) == Some(&svc) {
                    return Delta::default();
                }
                self.cluster.services.insert(key.clone(), svc);
                self.service_changed(&key)
            }
            Change::RemoveService(k) => match self.cluster.services.remove(&k) {
                Some(_) => self.service_changed(&k),
                None => Delta::default(),
            },
            Change::UpsertEndpointSlice(es) => {
                let key = format!("{}/{}", es.namespace, es.name);
                if self.cluster.endpoint_slices.get(&key) == Some(&es) {
                    return Delta::default();
                }
                let svc = |e: &EndpointSlice| {
                    e.service_name
                        .as_ref()
                        .map(|n| format!("{}/{n}", e.namespace))
                };
                let new_svc = svc(&es);
                let old = self.cluster.endpoint_slices.insert(key, es);
                let old_svc = old.as_ref().and_then(svc);
                let hit = [old_svc, new_svc]
                    .into_iter()
                    .flatten()
                    .any(|s| self.references_service(&s));
                if hit {
                    self.calico_inputs_changed()
                } else {
                    Delta::default()
                }
            }
            Change::UpsertServiceAccount(sa) => {
                let key = sa.key();
                if self.cluster.service_accounts.get(&key) == Some(&sa) {
                    return Delta::default();
                }
                self.cluster.service_accounts.insert(key, sa);
                self.calico_inputs_changed()
            }
            Change::RemoveServiceAccount(k) => match self.cluster.service_accounts.remove(&k) {
                Some(_) => self.calico_inputs_changed(),
                None => Delta::default(),
            },
            Change::RemoveEndpointSlice(k) => match self.cluster.endpoint_slices.remove(&k) {
                Some(old) => {
                    let hit = old.service_name.as_ref().is_some_and(|n| {
                        self.references_service(&format!("{}/{n}", old.namespace))
                    });
                    if hit {
                        self.calico_inputs_changed()
                    } else {
                        Delta::default()
                    }
                }
                None => Delta::default(),
            },
        }
    }

    /// The slow path for everything Calico programs resolve at build time (network
    /// sets, Service addresses, namespace labels scoping rule selectors, ServiceAccount
    /// labels in identities): every Calico
    /// policy gets a new revision (so no table in use is rewritten) and the cluster is
    /// recompiled, emitting only the difference. Costs as much as [`compile`]; nothing
    /// happens when there is no Calico policy.
    fn calico_inputs_changed(&mut self) -> Delta {
        if self.cluster.calico_policies.is_empty() {
            return Delta::default();
        }
        let keys: Vec<String> = self.cluster.calico_policies.keys().cloned().collect();
        for k in keys {
            self.bump(format!("calico:{k}"));
        }
        self.resync()
    }

    /// Whether a Calico rule names the Service `namespace/name`.
    fn references_service(&self, key: &str) -> bool {
        self.cluster.calico_policies.values().any(|p| {
            p.ingress
                .iter()
                .chain(&p.egress)
                .flatten()
                .filter_map(|r| r.peer.service.as_ref())
                .any(|s| format!("{}/{}", s.namespace, s.name) == key)
        })
    }

    fn service_changed(&mut self, key: &str) -> Delta {
        if self.references_service(key) {
            self.calico_inputs_changed()
        } else {
            Delta::default()
        }
    }

    /// Creates or replaces a pod (fast path).
    pub fn upsert_pod(&mut self, pod: Pod) -> Delta {
        let key = pod.key();
        let old = self.cluster.pods.insert(key.clone(), pod);
        if old.as_ref() == self.cluster.pods.get(&key) {
            return Delta::default();
        }
        self.pod_changed(&key, old)
    }

    /// Deletes a pod (fast path).
    pub fn remove_pod(&mut self, key: &str) -> Delta {
        match self.cluster.pods.remove(key) {
            Some(old) => self.pod_changed(key, Some(old)),
            None => Delta::default(),
        }
    }

    fn pod_changed(&mut self, key: &str, old: Option<Pod>) -> Delta {
        let mut txn = Txn::default();
        self.state
            .pod_changed(&self.cluster, key, old.as_ref(), &mut txn);
        self.state.commit(txn)
    }

    /// Creates or replaces a namespace.
    pub fn upsert_namespace(&mut self, ns: Namespace) -> Delta {
        if self.cluster.namespaces.get(&ns.name) == Some(&ns) {
            return Delta::default();
        }
        let name = ns.name.clone();
        self.cluster.namespaces.insert(name.clone(), ns);
        if !self.cluster.calico_policies.is_empty() {
            return self.calico_inputs_changed();
        }
        self.namespace_changed(&name)
    }

    /// Deletes a namespace.
    pub fn remove_namespace(&mut self, name: &str) -> Delta {
        if self.cluster.namespaces.remove(name).is_none() {
            return Delta::default();
        }
        if !self.cluster.calico_policies.is_empty() {
            return self.calico_inputs_changed();
        }
        self.namespace_changed(name)
    }

    fn namespace_changed(&mut self, name: &str) -> Delta {
        let mut txn = Txn::default();
        self.state.namespace_changed(&self.cluster, name, &mut txn);
        self.state.commit(txn)
    }

    /// Creates or replaces a node.
    pub fn upsert_node(&mut self, node: Node) -> Delta {
        if self.cluster.nodes.get(&node.name) == Some(&node) {
            return Delta::default();
        }
        let name = node.name.clone();
        let old = self.cluster.nodes.insert(name.clone(), node);
        self.node_changed(&name, old)
    }

    /// Deletes a node.
    pub fn remove_node(&mut self, name: &str) -> Delta {
        match self.cluster.nodes.remove(name) {
            Some(old) => self.node_changed(name, Some(old)),
            None => Delta::default(),
        }
    }

    fn node_changed(&mut self, name: &str, old: Option<Node>) -> Delta {
        let mut txn = Txn::default();
        self.state
            .node_changed(&self.cluster, name, old.as_ref(), &mut txn);
        self.state.commit(txn)
    }

    /// Creates or replaces a NetworkPolicy.
    pub fn upsert_network_policy(&mut self, np: NetworkPolicy) -> Delta {
        let key = format!("{}/{}", np.namespace, np.name);
        if self.cluster.network_policies.get(&key) == Some(&np) {
            return Delta::default();
        }
        self.bump(format!("np:{key}"));
        let old = self.cluster.network_policies.insert(key.clone(), np);
        self.network_policy_changed(&key, old)
    }

    /// Deletes a NetworkPolicy by `namespace/name`.
    pub fn remove_network_policy(&mut self, key: &str) -> Delta {
        let Some(old) = self.cluster.network_policies.remove(key) else {
            return Delta::default();
        };
        self.bump(format!("np:{key}"));
        self.network_policy_changed(key, Some(old))
    }

    /// The NetworkPolicy path.
    fn network_policy_changed(&mut self, key: &str, old: Option<NetworkPolicy>) -> Delta {
        let revision = self.revisions[&format!("np:{key}")];
        let mut txn = Txn::default();
        self.state
            .network_policy_changed(&self.cluster, key, old.as_ref(), revision, &mut txn);
        self.state.commit(txn)
    }

    /// Creates or replaces a cluster policy.
    pub fn upsert_cluster_policy(&mut self, cp: ClusterPolicy) -> Delta {
        let key = format!("{}/{}", cp.kind.as_str(), cp.name);
        if self.cluster.cluster_policies.get(&key) == Some(&cp) {
            return Delta::default();
        }
        self.bump(format!("cp:{key}"));
        let old = self.cluster.cluster_policies.insert(key.clone(), cp);
        self.cluster_policy_changed(&key, old)
    }

    /// Deletes a cluster policy by `Kind/name`.
    pub fn remove_cluster_policy(&mut self, key: &str) -> Delta {
        let Some(old) = self.cluster.cluster_policies.remove(key) else {
            return Delta::default();
        };
        self.bump(format!("cp:{key}"));
        self.cluster_policy_changed(key, Some(old))
    }

    /// The cluster policy path.
    fn cluster_policy_changed(&mut self, key: &str, old: Option<ClusterPolicy>) -> Delta {
        let revision = self.revisions[&format!("cp:{key}")];
        let mut txn = Txn::default();
        self.state
            .cluster_policy_changed(&self.cluster, key, old.as_ref(), revision, &mut txn);
        self.state.commit(txn)
    }

    /// A policy's content changed: its tables must get fresh ids.
    fn bump(&mut self, key: String) {
        self.revisions.insert(key, self.next_revision);
        self.next_revision += 1;
    }

    /// Replaces the whole cluster and recompiles it (a full pass), keeping the ids of
    /// every identity, table and rule whose key is unchanged and allocating fresh ones
    /// above every id this compiler ever gave out. Policies whose content changed get a
    /// new revision first, so a table of a changed policy is never rewritten in place
    /// under an id the kernel still uses. The caller then syncs the datapath to
    /// [`Compiler::compiled`] (a sync plans against the kernel's own state, so this is
    /// also the way back after a failed pass).
    pub fn rebuild(&mut self, cluster: Cluster) {
        let changed_np: Vec<String> =
            keys_changed(&self.cluster.network_policies, &cluster.network_policies);
        let changed_cp: Vec<String> =
            keys_changed(&self.cluster.cluster_policies, &cluster.cluster_policies);
        for k in changed_np {
            self.bump(format!("np:{k}"));
        }
        for k in changed_cp {
            self.bump(format!("cp:{k}"));
        }
        let inputs_changed = self.cluster.network_sets != cluster.network_sets
            || self.cluster.services != cluster.services
            || self.cluster.endpoint_slices != cluster.endpoint_slices
            || self.cluster.namespaces != cluster.namespaces
            || self.cluster.service_accounts != cluster.service_accounts;
        let changed_calico: Vec<String> = if inputs_changed {
            cluster.calico_policies.keys().cloned().collect()
        } else {
            keys_changed(&self.cluster.calico_policies, &cluster.calico_policies)
        };
        for k in changed_calico {
            self.bump(format!("calico:{k}"));
        }
        self.cluster = cluster;
        let hints = self.state.take_hints();
        self.state = State::build(&self.cluster, &self.revisions, hints);
    }

    /// The next fresh ids this compiler would give out: `(identity, table, rule)`.
    pub fn next_ids(&self) -> (IdentityId, TableId, RuleId) {
        self.state.next_ids()
    }

    /// Recompiles the whole cluster and returns the difference from the current state,
    /// reusing the ids of every identity, table and rule whose key is unchanged. Every
    /// change method already keeps the state exact; this drops what they leave behind
    /// (prefixes no policy mentions any more, matchers no policy uses), e.g. during a
    /// quiet period. Costs as much as [`compile`].
    pub fn resync(&mut self) -> Delta {
        let hints = self.state.take_hints();
        let next = State::build(&self.cluster, &self.revisions, hints);
        let delta = diff(&self.state.compiled, &next.compiled);
        self.state = next;
        delta
    }
}

/// Keys present in either map whose value differs (added, removed or changed).
fn keys_changed<V: PartialEq>(old: &BTreeMap<String, V>, new: &BTreeMap<String, V>) -> Vec<String> {
    let mut out: Vec<String> = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    out.extend(old.keys().filter(|k| !new.contains_key(*k)).cloned());
    out
}
