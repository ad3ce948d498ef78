//! Merging the deltas of one reconcile pass into one delta, so the datapath plans and
//! writes them as one update: one capacity check for the whole pass, and one safe
//! order (new state aside, then pointers, then removals) instead of a sequence of
//! intermediate states, each of which the kernel would enforce for a moment.
//!
//! The merge keeps the net effect of the ops, which holds because the compiler never
//! reuses an id within its lifetime: an id both put and removed in the pass was
//! created and destroyed within it (nothing of it need reach the kernel), while
//! endpoints and addresses, keyed by name and prefix, keep their last op.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use crate::compiled::{Delta, IdentityId, Op, TableId};

use super::state::Txn;

/// One delta with the net effect of `deltas` applied in order, in safe order.
pub fn merge(deltas: impl IntoIterator<Item = Delta>) -> Delta {
    let ops: Vec<Op> = deltas.into_iter().flat_map(|d| d.ops).collect();
    // Ids put and removed within the pass: created and destroyed here.
    let mut put_rules = BTreeSet::new();
    let mut put_identities = BTreeSet::new();
    let mut put_tables = BTreeSet::new();
    let mut added_peers = BTreeSet::new();
    let (mut dead_rules, mut dead_identities, mut dead_tables, mut dead_peers) = (
        BTreeSet::new(),
        BTreeSet::new(),
        BTreeSet::new(),
        BTreeSet::new(),
    );
    for op in &ops {
        match op {
            Op::PutRule(id, _) => {
                put_rules.insert(*id);
            }
            Op::RemoveRule(id) if put_rules.contains(id) => {
                dead_rules.insert(*id);
            }
            Op::PutIdentity(id, _) => {
                put_identities.insert(*id);
            }
            Op::RemoveIdentity(id) if put_identities.contains(id) => {
                dead_identities.insert(*id);
            }
            Op::PutTable(id, _) => {
                put_tables.insert(*id);
            }
            Op::RemoveTable(id) if put_tables.contains(id) => {
                dead_tables.insert(*id);
            }
            Op::AddPeerEntries(t, es) => {
                if let Some(e) = es.first() {
                    added_peers.insert((*t, e.peer));
                }
            }
            Op::RemovePeerEntries(t, p) if added_peers.contains(&(*t, *p)) => {
                dead_peers.insert((*t, *p));
            }
            _ => {}
        }
    }
    let gone_peer = |t: &TableId, p: &IdentityId| {
        dead_tables.contains(t) || dead_identities.contains(p) || dead_peers.contains(&(*t, *p))
    };
    // Endpoints and addresses: the last op per key wins.
    let mut endpoints: BTreeMap<String, Op> = BTreeMap::new();
    let mut addresses: BTreeMap<IpNet, Op> = BTreeMap::new();
    let mut txn = Txn::default();
    for op in ops {
        let keep = match &op {
            Op::PutRule(id, _) | Op::RemoveRule(id) => !dead_rules.contains(id),
            Op::PutIdentity(id, _) | Op::RemoveIdentity(id) => !dead_identities.contains(id),
            Op::PutTable(id, _) | Op::RemoveTable(id) => !dead_tables.contains(id),
            Op::AddPeerEntries(t, es) => !es.first().is_some_and(|e| gone_peer(t, &e.peer)),
            Op::RemovePeerEntries(t, p) => !gone_peer(t, p),
            Op::PutEndpoint(e) => {
                endpoints.insert(e.pod.clone(), op);
                continue;
            }
            Op::RemoveEndpoint(pod) => {
                endpoints.insert(pod.clone(), op);
                continue;
            }
            Op::PutAddress(net, _) | Op::RemoveAddress(net) => {
                addresses.insert(*net, op);
                continue;
            }
        };
        if !keep {
            continue;
        }
        match op {
            // A table built while an identity of this pass was alive holds its entries;
            // that identity never reaches the kernel.
            Op::PutTable(id, mut table)
                if table
                    .entries
                    .iter()
                    .any(|e| dead_identities.contains(&e.peer)) =>
            {
                table.entries.retain(|e| !dead_identities.contains(&e.peer));
                txn.push(Op::PutTable(id, table));
            }
            op => txn.push(op),
        }
    }
    for op in endpoints.into_values().chain(addresses.into_values()) {
        txn.push(op);
    }
    txn.into_delta()
}
