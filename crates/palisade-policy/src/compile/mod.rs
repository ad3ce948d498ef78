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
mod tests;

use crate::compiled::{Compiled, Delta};
use crate::model::{Cluster, ClusterPolicy, Namespace, NetworkPolicy, Node, Pod};

use state::{diff, IdHints, Revisions, State, Txn};

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
/// - a policy that introduces a CIDR also re-keys the pod and node addresses under it.
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
        let state = State::build(&cluster, &Revisions::new(), IdHints::default());
        Compiler {
            cluster,
            revisions: Revisions::new(),
            next_revision: 1,
            state,
        }
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
        self.namespace_changed(&name)
    }

    /// Deletes a namespace.
    pub fn remove_namespace(&mut self, name: &str) -> Delta {
        if self.cluster.namespaces.remove(name).is_none() {
            return Delta::default();
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
