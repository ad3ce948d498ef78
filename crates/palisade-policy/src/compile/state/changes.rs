//! Change handlers of [`State`]: one per kind of cluster object, each touching only
//! what the change affects, and [`diff`] for whole-state resyncs.

use std::collections::BTreeSet;

use ipnet::IpNet;

use crate::compiled::{Compiled, Delta, IdentityId, Op, RuleTable, TableEntry};
use crate::model::{Cluster, ClusterPolicy, Direction, NetworkPolicy, Pod};
use crate::selector::Labels;

use super::super::identity::{FxMap, IdentityKey};
use super::super::prefixes::{cluster_policy_prefixes, host_net, network_policy_prefixes};
use super::super::tables::MatcherId;
use super::{is_endpoint, sorted_insert, sorted_remove, subject_matches, State, Txn};

impl State {
    /// Namespace `ns` was created, relabelled or deleted: every pod of it is re-keyed
    /// (identity keys carry namespace labels, table keys depend on them through
    /// cluster policy subjects). Cost: O(pods of the namespace).
    pub(crate) fn namespace_changed(&mut self, cluster: &Cluster, ns: &str, txn: &mut Txn) {
        self.ns_labels.remove(ns);
        self.ns_selector_cache.remove(ns);
        let prefix = format!("{ns}/");
        let pods: Vec<&Pod> = cluster
            .pods
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(_, p)| p)
            .filter(|p| p.namespace == ns)
            .collect();
        for pod in pods {
            self.pod_changed(cluster, &pod.key(), Some(pod), txn);
        }
    }

    /// Node `name` changed from `old` to `cluster.nodes[name]` (absent: removed): its
    /// addresses are re-keyed. Cost: O(addresses of the node).
    pub(crate) fn node_changed(
        &mut self,
        cluster: &Cluster,
        name: &str,
        old: Option<&crate::model::Node>,
        txn: &mut Txn,
    ) {
        let mut affected = BTreeSet::new();
        for ip in old.iter().flat_map(|n| &n.addresses) {
            if let Some(s) = self.addr_nodes.get_mut(ip) {
                s.remove(name);
                if s.is_empty() {
                    self.addr_nodes.remove(ip);
                }
            }
            affected.insert(*ip);
        }
        for ip in cluster.nodes.get(name).iter().flat_map(|n| &n.addresses) {
            self.addr_nodes
                .entry(*ip)
                .or_default()
                .insert(name.to_string());
            affected.insert(*ip);
        }
        for ip in affected {
            self.set_host(ip, cluster, txn);
        }
    }

    /// The fast path: pod `key` changed from `old` to `cluster.pods[key]` (absent: removed).
    pub(crate) fn pod_changed(
        &mut self,
        cluster: &Cluster,
        key: &str,
        old: Option<&Pod>,
        txn: &mut Txn,
    ) {
        let mut affected = BTreeSet::new();
        if let Some(o) = old.filter(|o| !o.host_network) {
            for ip in &o.ips {
                if let Some(s) = self.addr_pods.get_mut(ip) {
                    sorted_remove(s, key);
                    if s.is_empty() {
                        self.addr_pods.remove(ip);
                    }
                }
                affected.insert(*ip);
            }
        }
        let new = cluster.pods.get(key);
        if let Some(n) = new.filter(|n| !n.host_network) {
            for ip in &n.ips {
                sorted_insert(self.addr_pods.entry(*ip).or_default(), key);
                affected.insert(*ip);
            }
        }
        for ip in affected {
            self.set_host(ip, cluster, txn);
        }
        self.refresh_endpoint(cluster, key, txn);
    }

    /// Points pod `key`'s endpoint at the tables its current policies call for (or
    /// removes it if the pod is gone or no longer an endpoint).
    fn refresh_endpoint(&mut self, cluster: &Cluster, key: &str, txn: &mut Txn) {
        let node = self.local_node.clone();
        match cluster
            .pods
            .get(key)
            .filter(|n| is_endpoint(n, node.as_deref()))
        {
            Some(pod) => {
                let ns_labels = cluster.namespace_labels(&pod.namespace);
                let facts = self.endpoint_sa_facts(cluster, pod);
                let keys = [
                    self.table_key(pod, &ns_labels, &facts, Direction::Ingress),
                    self.table_key(pod, &ns_labels, &facts, Direction::Egress),
                ];
                self.put_endpoint(key, pod, keys, txn);
            }
            None => {
                if let Some(o) = self.endpoints.remove(key) {
                    txn.push(Op::RemoveEndpoint(key.to_string()));
                    self.release_table(o.ingress, txn);
                    self.release_table(o.egress, txn);
                }
            }
        }
    }

    /// NetworkPolicy `key` changed from `old` to `cluster.network_policies[key]`
    /// (absent: removed), its revision already bumped to `revision`. Cost: the pods of
    /// its namespace, plus one pass over the identities for each matcher it introduces.
    ///
    /// New prefixes are introduced (network identity, re-keyed addresses under them);
    /// prefixes only the old version mentioned are retired in the same delta.
    pub(crate) fn network_policy_changed(
        &mut self,
        cluster: &Cluster,
        key: &str,
        old: Option<&NetworkPolicy>,
        revision: u64,
        txn: &mut Txn,
    ) {
        let new = cluster.network_policies.get(key);
        let added = self.missing_prefixes(new.map(network_policy_prefixes));
        let old_prog = self.np_programs.remove(key);
        if let (Some(o), Some(prog)) = (old, &old_prog) {
            if let Some(idx) = self.np_by_namespace.get_mut(&o.namespace) {
                idx.remove(&o.pod_selector, key);
            }
            debug_assert!(prog.revision < revision);
        }
        let first_new_matcher = self.matchers.len();
        if let Some(np) = new {
            self.add_network_policy(key, np, revision, txn);
        }
        self.match_new_matchers(first_new_matcher);
        self.introduce_prefixes(cluster, added, txn);
        let namespace = new.or(old).map(|p| p.namespace.clone()).unwrap_or_default();
        let prefix = format!("{namespace}/");
        let pods: Vec<String> = cluster
            .pods
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(_, p)| {
                p.namespace == namespace
                    && (old.is_some_and(|o| o.pod_selector.matches(&p.labels))
                        || new.is_some_and(|n| n.pod_selector.matches(&p.labels)))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in pods {
            self.refresh_endpoint(cluster, &k, txn);
        }
        if let Some(prog) = old_prog {
            for rules in &prog.rules {
                for r in rules {
                    self.release_rule(r.rule, txn);
                }
            }
        }
        let gone = self.release_prefixes(old.map(network_policy_prefixes));
        self.retire_prefixes(cluster, gone, txn);
    }

    /// Cluster policy `key` changed from `old` to `cluster.cluster_policies[key]`
    /// (absent: removed), its revision already bumped. Cost: one pass over the pods to
    /// find those the old or new subject selects, plus one pass over the identities for
    /// each matcher it introduces, plus the addresses under prefixes it introduces.
    pub(crate) fn cluster_policy_changed(
        &mut self,
        cluster: &Cluster,
        key: &str,
        old: Option<&ClusterPolicy>,
        revision: u64,
        txn: &mut Txn,
    ) {
        let new = cluster.cluster_policies.get(key);
        let added = self.missing_prefixes(new.map(cluster_policy_prefixes));
        let old_prog = self.cluster_programs.remove(key);
        self.cluster_order.retain(|k| k != key);
        let first_new_matcher = self.matchers.len();
        if let Some(cp) = new {
            self.add_cluster_policy(key, cp, revision, txn);
            self.sort_cluster_order();
        }
        self.match_new_matchers(first_new_matcher);
        self.introduce_prefixes(cluster, added, txn);
        let mut ns_labels: FxMap<&str, Labels> = FxMap::default();
        let node = self.local_node.clone();
        let pods: Vec<String> = cluster
            .pods
            .iter()
            .filter(|(_, p)| is_endpoint(p, node.as_deref()))
            .filter(|(_, p)| {
                let l = ns_labels
                    .entry(p.namespace.as_str())
                    .or_insert_with(|| cluster.namespace_labels(&p.namespace));
                old.is_some_and(|o| subject_matches(&o.subject, l, p))
                    || new.is_some_and(|n| subject_matches(&n.subject, l, p))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in pods {
            self.refresh_endpoint(cluster, &k, txn);
        }
        if let Some(prog) = old_prog {
            for rules in &prog.rules {
                for r in rules {
                    self.release_rule(r.rule, txn);
                }
            }
        }
        let gone = self.release_prefixes(old.map(cluster_policy_prefixes));
        self.retire_prefixes(cluster, gone, txn);
    }

    /// Drops the mentions of an old policy version's prefixes (after the new version
    /// added its own, so shared prefixes never leave); returns those that left the set.
    fn release_prefixes(&mut self, prefixes: Option<Vec<IpNet>>) -> Vec<IpNet> {
        let mut out: Vec<IpNet> = prefixes
            .into_iter()
            .flatten()
            .filter(|p| self.prefixes.release(*p))
            .collect();
        out.sort_unstable();
        out
    }

    /// Prefixes `gone` left the set: their network identities and address entries go,
    /// and every pod or node address under one is re-keyed to its next most specific
    /// prefix. The address entries are replaced before the identities' table entries
    /// are removed (the delta's order), so no lookup ever misses.
    fn retire_prefixes(&mut self, cluster: &Cluster, gone: Vec<IpNet>, txn: &mut Txn) {
        let mut rekey = BTreeSet::new();
        for q in gone {
            let Some(id) = self.network_ids.remove(&q) else {
                continue;
            };
            let owned = q == host_net(q.addr()) && self.host_ids.contains_key(&q.addr());
            if !owned {
                txn.push(Op::RemoveAddress(q));
            }
            self.release_identity(id, txn);
            rekey.extend(self.hosts.range(q.network()..=q.broadcast()).copied());
        }
        for ip in rekey {
            self.set_host(ip, cluster, txn);
        }
    }

    /// The prefixes of `prefixes` not yet in the set, deduplicated.
    fn missing_prefixes(&self, prefixes: Option<Vec<IpNet>>) -> Vec<IpNet> {
        let mut out: Vec<IpNet> = prefixes
            .into_iter()
            .flatten()
            .filter(|p| !self.prefixes.contains(p))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Prefixes `added` just joined the set (the policy that brought them is already
    /// registered): each gets its network identity and address entry, and every pod or
    /// node address under one is re-keyed, its most specific prefix having changed.
    fn introduce_prefixes(&mut self, cluster: &Cluster, added: Vec<IpNet>, txn: &mut Txn) {
        let mut rekey = BTreeSet::new();
        for q in added {
            let id = self.acquire_identity(IdentityKey::network(q), txn);
            self.network_ids.insert(q, id);
            // A host prefix that is also a pod or node address keeps its owner's identity.
            let owned = q == host_net(q.addr()) && self.host_ids.contains_key(&q.addr());
            if !owned {
                txn.push(Op::PutAddress(q, id));
            }
            rekey.extend(self.hosts.range(q.network()..=q.broadcast()).copied());
        }
        for ip in rekey {
            self.set_host(ip, cluster, txn);
        }
    }

    /// Fills the identity sets of matchers registered since index `first` (and the
    /// identities' matched lists) with one pass over the identities.
    fn match_new_matchers(&mut self, first: usize) {
        if first == self.matchers.len() {
            return;
        }
        // Namespace-selector caches do not know the new matchers.
        self.ns_selector_cache.clear();
        for (id, ident) in self.identities.iter_mut() {
            let mut added = false;
            for m in first..self.matchers.len() {
                let ms = &mut self.matchers[m];
                if ms.matcher.matches(&ident.key) {
                    ms.identities.insert(*id);
                    ident.matched.push(m as MatcherId);
                    added = true;
                }
            }
            if added {
                ident.matched.sort_unstable();
            }
        }
    }
}

/// The ops that move the snapshot `old` to `new`, in safe order. Ids must be stable for
/// unchanged keys (see [`IdHints`]): a table present in both differs only by the entries
/// of identities present in just one of them.
pub(crate) fn diff(old: &Compiled, new: &Compiled) -> Delta {
    let mut txn = Txn::default();
    for (id, o) in &new.rules {
        if old.rules.get(id) != Some(o) {
            txn.push(Op::PutRule(*id, o.clone()));
        }
    }
    for id in old.rules.keys().filter(|id| !new.rules.contains_key(id)) {
        txn.push(Op::RemoveRule(*id));
    }
    for (id, i) in &new.identities {
        if old.identities.get(id) != Some(i) {
            txn.push(Op::PutIdentity(*id, i.clone()));
        }
    }
    for id in old
        .identities
        .keys()
        .filter(|id| !new.identities.contains_key(id))
    {
        txn.push(Op::RemoveIdentity(*id));
    }
    for (id, t) in &new.tables {
        let Some(o) = old.tables.get(id) else {
            txn.push(Op::PutTable(*id, t.clone()));
            continue;
        };
        let by_peer = |t: &RuleTable| {
            let mut m: std::collections::BTreeMap<IdentityId, Vec<TableEntry>> = Default::default();
            for e in &t.entries {
                m.entry(e.peer).or_default().push(*e);
            }
            m
        };
        let (om, nm) = (by_peer(o), by_peer(t));
        for (peer, es) in &nm {
            match om.get(peer) {
                None => txn.push(Op::AddPeerEntries(*id, es.clone())),
                Some(oes) => debug_assert_eq!(oes, es, "table {id} changed for live peer {peer}"),
            }
        }
        for peer in om.keys().filter(|p| !nm.contains_key(p)) {
            txn.push(Op::RemovePeerEntries(*id, *peer));
        }
    }
    for id in old.tables.keys().filter(|id| !new.tables.contains_key(id)) {
        txn.push(Op::RemoveTable(*id));
    }
    for (k, e) in &new.endpoints {
        if old.endpoints.get(k) != Some(e) {
            txn.push(Op::PutEndpoint(e.clone()));
        }
    }
    for k in old
        .endpoints
        .keys()
        .filter(|k| !new.endpoints.contains_key(*k))
    {
        txn.push(Op::RemoveEndpoint(k.clone()));
    }
    for (p, id) in &new.addresses {
        if old.addresses.get(p) != Some(id) {
            txn.push(Op::PutAddress(*p, *id));
        }
    }
    for p in old
        .addresses
        .keys()
        .filter(|p| !new.addresses.contains_key(p))
    {
        txn.push(Op::RemoveAddress(*p));
    }
    txn.into_delta()
}
