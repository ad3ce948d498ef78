//! Orders one update's map writes so that every packet, after any single write, gets
//! the verdict of the state before the update or of the state after it.
//!
//! A packet's verdict depends on two pointers written independently: its endpoint's
//! table (one write per endpoint) and its peer address's identity (one write per
//! address). When an update switches both (a namespace relabel moves its pods'
//! identities while a cluster policy's subjects change; several objects changed in one
//! pass; a full pass after a failed one), a packet could meet the old table with the
//! new identity, or the new table with the old one: a verdict of neither state.
//!
//! So every address whose identity changes goes through a **bridge identity**, one per
//! (old identity, new identity) pair: a fresh id whose entries equal the old identity's
//! in tables only the old state has, and the new identity's in every table the new
//! state has. The writes are then staged:
//!
//! 1. new policy entries, partitions and bridge entries (nothing points at them yet);
//! 2. each changed address → its bridge (old tables still give the old verdict);
//! 3. endpoints switch tables (the bridge gives the new tables' verdicts);
//! 4. addresses → their final identities (equal to the bridge in every new table);
//! 5. removals: stale entries, partitions, bridges.
//!
//! Bridges are only needed when some endpoint switches tables while an address that is
//! not its own changes identity; the common updates (one pod, one policy) skip them.

use std::collections::{BTreeMap, BTreeSet};

use palisade_policy::compiled::{IdentityId, TableId};

use crate::abi::EndpointValue;
use crate::maps::{addr_key, addr_net, AddrKey};
use crate::state::{State, Write};

/// First identity id used for bridges. Compiled ids grow from 1 and never reach it.
pub const BRIDGE_IDENTITY_BASE: IdentityId = 0xF000_0000;

/// First table id used for transitional copies of tables (see [`stage`]).
pub const BRIDGE_TABLE_BASE: TableId = 0xF000_0000;

/// The identity an address key resolves to in `addrs`: its own entry, or that of the
/// longest shorter prefix containing it.
fn effective(addrs: &BTreeMap<AddrKey, IdentityId>, k: &AddrKey) -> Option<IdentityId> {
    if let Some(id) = addrs.get(k) {
        return Some(*id);
    }
    let net = addr_net(k);
    (0..net.prefix_len()).rev().find_map(|len| {
        let p = ipnet::IpNet::new(net.addr(), len)
            .expect("shorter prefix")
            .trunc();
        addrs.get(&addr_key(&p)).copied()
    })
}

/// The host addresses of an endpoint value, as address keys.
fn own_addrs(v: &crate::abi::EndpointValue) -> Vec<AddrKey> {
    let mut out = Vec::new();
    for a in &v.ipv4[..usize::from(v.n_ipv4).min(v.ipv4.len())] {
        out.push(addr_key(&ipnet::IpNet::from(std::net::IpAddr::from(*a))));
    }
    for a in &v.ipv6[..usize::from(v.n_ipv6).min(v.ipv6.len())] {
        out.push(addr_key(&ipnet::IpNet::from(std::net::IpAddr::from(*a))));
    }
    out
}

/// Extra entry counts a staged plan holds at its peak, for the capacity check.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Extra {
    pub policy: usize,
    pub parts: usize,
}

/// Stages `plan` (computed from `before` to `after`) as the module doc says. Only the
/// keys the plan touches are looked at, and each is written with its final value (or
/// removed), whatever sequence of writes the plan had for it.
pub(crate) fn stage(before: &State, after: &State, plan: Vec<Write>) -> (Vec<Write>, Extra) {
    let mut policy = BTreeSet::new();
    let mut parts = BTreeSet::new();
    let mut addr_keys = BTreeSet::new();
    let mut eps = BTreeSet::new();
    let mut zero = Vec::new();
    for w in plan {
        match w {
            Write::PutPolicy(k, _) | Write::DelPolicy(k) => {
                policy.insert(k);
            }
            Write::PutPart(k, _) | Write::DelPart(k) => {
                parts.insert(k);
            }
            Write::PutAddr(k, _) | Write::DelAddr(k) => {
                addr_keys.insert(k);
            }
            Write::PutEndpoint(i, _) | Write::DelEndpoint(i) => {
                eps.insert(i);
            }
            Write::ZeroSlot(_) => zero.push(w),
        }
    }
    let (mut puts, dels) = finals(
        &policy,
        &before.policy,
        &after.policy,
        Write::PutPolicy,
        Write::DelPolicy,
    );
    puts.extend(zero);
    let (part_puts, part_dels) = finals(
        &parts,
        &before.parts,
        &after.parts,
        Write::PutPart,
        Write::DelPart,
    );
    let (mut addrs, addr_dels) = finals(
        &addr_keys,
        &before.addrs,
        &after.addrs,
        Write::PutAddr,
        Write::DelAddr,
    );
    addrs.extend(addr_dels);
    let (mut endpoints, ep_dels) = finals(
        &eps,
        &before.endpoints,
        &after.endpoints,
        Write::PutEndpoint,
        Write::DelEndpoint,
    );
    endpoints.extend(ep_dels);
    // Identity changes, per address key: (old, new) as lookups resolve them.
    let mut moves: BTreeMap<AddrKey, (IdentityId, IdentityId)> = BTreeMap::new();
    for k in &addr_keys {
        if let (Some(o), Some(n)) = (effective(&before.addrs, k), effective(&after.addrs, k)) {
            if o != n {
                moves.insert(*k, (o, n));
            }
        }
    }
    // Endpoints switching tables, with their own addresses (their own traffic never
    // crosses their interface, so their own identity moving cannot mix with them).
    let mut switching: Vec<BTreeSet<AddrKey>> = Vec::new();
    for i in &eps {
        let Some(old) = before.endpoints.get(i) else {
            continue;
        };
        let new = after.endpoints.get(i);
        if new.is_some_and(|v| {
            v.ingress_table == old.ingress_table && v.egress_table == old.egress_table
        }) {
            continue;
        }
        let mut own: BTreeSet<AddrKey> = own_addrs(old).into_iter().collect();
        own.extend(new.map(own_addrs).into_iter().flatten());
        switching.push(own);
    }
    let needed = moves
        .keys()
        .any(|k| switching.iter().any(|own| !own.contains(k)));
    let mut extra = Extra::default();
    let mut bridge_puts = Vec::new();
    let mut bridge_parts = Vec::new();
    let mut bridge_dels = Vec::new();
    let mut to_bridge = Vec::new();
    // Endpoints joining a table whose own users also leave it go through a copy of it
    // (see below): their transitional entry, then their final one.
    let mut transitional: BTreeMap<u32, EndpointValue> = BTreeMap::new();
    if needed {
        let after_tables: BTreeSet<TableId> = after.policy.keys().map(|k| k.0).collect();
        let before_tables: BTreeSet<TableId> = before.policy.keys().map(|k| k.0).collect();
        // Per table: endpoint directions leaving it and joining it in this update.
        let mut leavers: BTreeMap<TableId, usize> = BTreeMap::new();
        let mut joiners: BTreeMap<TableId, usize> = BTreeMap::new();
        for i in &eps {
            let (b, a) = (before.endpoints.get(i), after.endpoints.get(i));
            let tables =
                |v: Option<&EndpointValue>| [v.map(|v| v.ingress_table), v.map(|v| v.egress_table)];
            for (bt, at) in tables(b).into_iter().zip(tables(a)) {
                if bt != at {
                    if let Some(t) = bt {
                        *leavers.entry(t).or_default() += 1;
                    }
                    if let Some(t) = at {
                        *joiners.entry(t).or_default() += 1;
                    }
                }
            }
        }
        // Which state a table's bridge entries come from. Every endpoint on a table of
        // the old state sees the old verdict through a bridge, every endpoint that has
        // switched sees the new one: a table both states share gives the old identity's
        // entries to those staying and leaving, the new identity's to those joining. A
        // shared table with both leavers and joiners cannot do both: its joiners go
        // through a copy of it (fresh id, the new state's entries) until the addresses
        // are final, then switch to it.
        let shared = |t: &TableId| before_tables.contains(t) && after_tables.contains(t);
        let joined = |t: &TableId| joiners.get(t).copied().unwrap_or(0) > 0;
        let left = |t: &TableId| leavers.get(t).copied().unwrap_or(0) > 0;
        let conflicts: BTreeSet<TableId> = before_tables
            .iter()
            .filter(|t| shared(t) && joined(t) && left(t))
            .copied()
            .collect();
        let used_tables: BTreeSet<TableId> = before_tables
            .iter()
            .chain(&after_tables)
            .copied()
            .filter(|t| *t >= BRIDGE_TABLE_BASE)
            .collect();
        let mut next_table = BRIDGE_TABLE_BASE;
        let mut copies: BTreeMap<TableId, TableId> = BTreeMap::new();
        for t in &conflicts {
            while used_tables.contains(&next_table) {
                next_table += 1;
            }
            copies.insert(*t, next_table);
            next_table += 1;
        }
        let mut copy = BridgeCopy {
            puts: &mut bridge_puts,
            parts: &mut bridge_parts,
            dels: &mut bridge_dels,
        };
        for (t, c) in &copies {
            copy.table(after, *t, *c);
        }
        let mut pairs: BTreeMap<(IdentityId, IdentityId), IdentityId> = BTreeMap::new();
        let used: BTreeSet<IdentityId> = before
            .policy
            .keys()
            .chain(after.policy.keys())
            .map(|k| k.1)
            .filter(|p| *p >= BRIDGE_IDENTITY_BASE)
            .collect();
        let mut next = BRIDGE_IDENTITY_BASE;
        for (k, pair) in &moves {
            let b = *pairs.entry(*pair).or_insert_with(|| {
                while used.contains(&next) {
                    next += 1;
                }
                let b = next;
                next += 1;
                let (o, n) = *pair;
                for t in before_tables.union(&after_tables) {
                    // New tables, and shared ones that endpoints only join: the new
                    // identity's entries; every other table of the old state: the old's.
                    let new_side =
                        !before_tables.contains(t) || (shared(t) && joined(t) && !left(t));
                    if new_side {
                        copy.peer(after, *t, n, *t, b);
                    } else {
                        copy.peer(before, *t, o, *t, b);
                    }
                }
                for (t, c) in &copies {
                    copy.peer(after, *t, n, *c, b);
                }
                b
            });
            to_bridge.push(Write::PutAddr(*k, b));
        }
        // An endpoint joining a copied table (a new endpoint joins both of its tables)
        // points at the copy until the addresses are final.
        for i in &eps {
            let Some(a) = after.endpoints.get(i) else {
                continue;
            };
            let b = before.endpoints.get(i);
            let mut v = *a;
            if b.map(|b| b.ingress_table) != Some(a.ingress_table) {
                v.ingress_table = copies
                    .get(&a.ingress_table)
                    .copied()
                    .unwrap_or(a.ingress_table);
            }
            if b.map(|b| b.egress_table) != Some(a.egress_table) {
                v.egress_table = copies
                    .get(&a.egress_table)
                    .copied()
                    .unwrap_or(a.egress_table);
            }
            if v != *a {
                transitional.insert(*i, v);
            }
        }
        extra.policy = bridge_puts.len();
        extra.parts = bridge_parts.len();
    }
    let mut out = puts;
    out.extend(bridge_puts);
    out.extend(part_puts);
    out.extend(bridge_parts);
    out.extend(to_bridge);
    let finals: Vec<Write> = transitional
        .keys()
        .map(|i| Write::PutEndpoint(*i, after.endpoints[i]))
        .collect();
    for w in endpoints {
        match w {
            Write::PutEndpoint(i, _) if transitional.contains_key(&i) => {
                out.push(Write::PutEndpoint(i, transitional[&i]));
            }
            w => out.push(w),
        }
    }
    out.extend(addrs);
    out.extend(finals);
    out.extend(dels);
    out.extend(bridge_dels);
    out.extend(part_dels);
    (out, extra)
}

/// The writes that take each of `keys` from its value in `before` to its value in
/// `after`: puts (new or changed) and removals (gone), in key order.
fn finals<K: Ord + Copy, V: PartialEq + Copy>(
    keys: &BTreeSet<K>,
    before: &BTreeMap<K, V>,
    after: &BTreeMap<K, V>,
    put: impl Fn(K, V) -> Write,
    del: impl Fn(K) -> Write,
) -> (Vec<Write>, Vec<Write>) {
    let (mut puts, mut dels) = (Vec::new(), Vec::new());
    for k in keys {
        match (before.get(k), after.get(k)) {
            (b, Some(v)) if b != Some(v) => puts.push(put(*k, *v)),
            (Some(_), None) => dels.push(del(*k)),
            _ => {}
        }
    }
    (puts, dels)
}

/// Where the writes of a bridge's entries go.
struct BridgeCopy<'a> {
    puts: &'a mut Vec<Write>,
    parts: &'a mut Vec<Write>,
    dels: &'a mut Vec<Write>,
}

impl BridgeCopy<'_> {
    /// Plans the copy of `(table, from, *)` entries and partitions of `s` to
    /// `(to_table, to, *)`, and their removal (after nothing maps to `to` any more).
    fn peer(
        &mut self,
        s: &State,
        table: TableId,
        from: IdentityId,
        to_table: TableId,
        to: IdentityId,
    ) {
        let range = (table, from, 0, 0, 0)..=(table, from, u8::MAX, u16::MAX, u8::MAX);
        for (k, v) in s.policy.range(range) {
            let nk = (to_table, to, k.2, k.3, k.4);
            self.puts.push(Write::PutPolicy(nk, *v));
            self.dels.push(Write::DelPolicy(nk));
        }
        let range = (table, from, 0)..=(table, from, u8::MAX);
        for (k, v) in s.parts.range(range) {
            let nk = (to_table, to, k.2);
            self.parts.push(Write::PutPart(nk, *v));
            self.dels.push(Write::DelPart(nk));
        }
    }

    /// Plans a copy of a whole table of `s` under another id, and its removal.
    fn table(&mut self, s: &State, table: TableId, to_table: TableId) {
        let range = (table, 0, 0, 0, 0)..=(table, IdentityId::MAX, u8::MAX, u16::MAX, u8::MAX);
        for (k, v) in s.policy.range(range) {
            let nk = (to_table, k.1, k.2, k.3, k.4);
            self.puts.push(Write::PutPolicy(nk, *v));
            self.dels.push(Write::DelPolicy(nk));
        }
        let range = (table, 0, 0)..=(table, IdentityId::MAX, u8::MAX);
        for (k, v) in s.parts.range(range) {
            let nk = (to_table, k.1, k.2);
            self.parts.push(Write::PutPart(nk, *v));
            self.dels.push(Write::DelPart(nk));
        }
    }
}
