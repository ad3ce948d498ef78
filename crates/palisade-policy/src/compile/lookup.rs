//! Reading and updating a [`Compiled`] snapshot the way the datapath does: address →
//! identity by longest prefix, table lookup with the [`IDENTITY_ANY`] fallback, invariant
//! checks, and applying [`Delta`]s.

use std::net::IpAddr;

use crate::compiled::{
    Compiled, Delta, IdentityId, Op, TableAction, TableEntry, TableId, TableVerdict, IDENTITY_ANY,
    PROTO_CLASSES, PROTO_OTHER, RULE_NONE,
};

use super::prefixes::{host_net, truncate};

/// The protocol class of an IP protocol number and the port the tables key it by.
fn class_and_port(proto: u8, port: u16) -> (u8, u16) {
    match proto {
        6 | 17 | 132 => (proto, port),
        _ => (PROTO_OTHER, 0),
    }
}

/// The run of `entries` (sorted) for `(peer, proto)`.
fn runs(entries: &[TableEntry], peer: IdentityId, proto: u8) -> &[TableEntry] {
    let lo = entries.partition_point(|e| (e.peer, e.proto) < (peer, proto));
    let hi = entries.partition_point(|e| (e.peer, e.proto) <= (peer, proto));
    &entries[lo..hi]
}

impl Compiled {
    /// The identity of an address: longest-prefix match over [`Compiled::addresses`]
    /// ([`IDENTITY_ANY`] only if the default routes are missing, which `check` rejects).
    pub fn lookup_identity(&self, ip: IpAddr) -> IdentityId {
        let host = host_net(ip);
        for len in (0..=host.prefix_len()).rev() {
            if let Some(id) = self.addresses.get(&truncate(host, len)) {
                return *id;
            }
        }
        IDENTITY_ANY
    }

    /// The verdict of `table` for a peer identity, IP protocol and destination port,
    /// exactly as the datapath computes it:
    ///
    /// 1. protocols other than TCP, UDP and SCTP use class [`PROTO_OTHER`] and port 0;
    /// 2. if the table has entries for `(peer, class)` the run containing the port decides;
    /// 3. otherwise the run of `(IDENTITY_ANY, class)` containing the port decides.
    ///
    /// A missing table yields deny with [`RULE_NONE`].
    pub fn lookup(&self, table: TableId, peer: IdentityId, proto: u8, port: u16) -> TableVerdict {
        let none = TableVerdict {
            action: TableAction::Deny,
            rule: RULE_NONE,
        };
        let Some(t) = self.tables.get(&table) else {
            return none;
        };
        let (class, port) = class_and_port(proto, port);
        let mut rs = runs(&t.entries, peer, class);
        if rs.is_empty() {
            rs = runs(&t.entries, IDENTITY_ANY, class);
        }
        let i = rs.partition_point(|e| e.port_lo <= port);
        match i.checked_sub(1).map(|i| &rs[i]) {
            Some(e) if port <= e.port_hi => e.verdict,
            _ => none,
        }
    }

    /// Checks the invariants documented in [`crate::compiled`]: default routes present,
    /// every reference resolves, entries sorted, runs disjoint and complete per
    /// `(peer, proto)`, wildcard coverage complete in every table.
    pub fn check(&self) -> Result<(), String> {
        for net in [super::prefixes::default_v4(), super::prefixes::default_v6()] {
            if !self.addresses.contains_key(&net) {
                return Err(format!("address map lacks {net}"));
            }
        }
        for (net, id) in &self.addresses {
            if !self.identities.contains_key(id) {
                return Err(format!("address {net} maps to unknown identity {id}"));
            }
        }
        for (name, ep) in &self.endpoints {
            for t in [ep.ingress, ep.egress] {
                if !self.tables.contains_key(&t) {
                    return Err(format!("endpoint {name} points at unknown table {t}"));
                }
            }
        }
        for (tid, t) in &self.tables {
            let es = &t.entries;
            for w in es.windows(2) {
                if (w[0].peer, w[0].proto, w[0].port_lo) >= (w[1].peer, w[1].proto, w[1].port_lo) {
                    return Err(format!("table {tid}: entries not sorted at {:?}", w[1]));
                }
            }
            for &class in &PROTO_CLASSES {
                if runs(es, IDENTITY_ANY, class).is_empty() {
                    return Err(format!(
                        "table {tid}: no wildcard entries for protocol {class}"
                    ));
                }
            }
            let mut i = 0;
            while i < es.len() {
                let (peer, proto) = (es[i].peer, es[i].proto);
                if peer != IDENTITY_ANY && !self.identities.contains_key(&peer) {
                    return Err(format!("table {tid}: entries for unknown identity {peer}"));
                }
                if !PROTO_CLASSES.contains(&proto) {
                    return Err(format!("table {tid}: unknown protocol class {proto}"));
                }
                let rs = runs(es, peer, proto);
                let end = if proto == PROTO_OTHER { 0 } else { u16::MAX };
                let mut next: u32 = 0;
                for e in rs {
                    if u32::from(e.port_lo) != next || e.port_hi < e.port_lo {
                        return Err(format!("table {tid}: gap or overlap at {e:?}"));
                    }
                    if !self.rules.contains_key(&e.verdict.rule) {
                        return Err(format!("table {tid}: unknown rule {}", e.verdict.rule));
                    }
                    next = u32::from(e.port_hi) + 1;
                }
                if next != u32::from(end) + 1 {
                    return Err(format!(
                        "table {tid}: peer {peer} proto {proto} ends at {next}"
                    ));
                }
                i += rs.len();
            }
        }
        Ok(())
    }

    /// Applies every op of a delta, in order.
    pub fn apply(&mut self, delta: &Delta) {
        for op in &delta.ops {
            self.apply_op(op);
        }
    }

    /// Applies one op, as the agent writes it to the datapath.
    pub fn apply_op(&mut self, op: &Op) {
        match op {
            Op::PutRule(id, o) => {
                self.rules.insert(*id, o.clone());
            }
            Op::PutIdentity(id, i) => {
                self.identities.insert(*id, i.clone());
            }
            Op::PutTable(id, t) => {
                self.tables.insert(*id, t.clone());
            }
            Op::AddPeerEntries(id, new) => {
                if let (Some(t), Some(first)) = (self.tables.get_mut(id), new.first()) {
                    let at = t.entries.partition_point(|e| e.peer < first.peer);
                    let end = t.entries.partition_point(|e| e.peer <= first.peer);
                    t.entries.splice(at..end, new.iter().copied());
                }
            }
            Op::PutEndpoint(e) => {
                self.endpoints.insert(e.pod.clone(), e.clone());
            }
            Op::PutAddress(net, id) => {
                self.addresses.insert(*net, *id);
            }
            Op::RemoveAddress(net) => {
                self.addresses.remove(net);
            }
            Op::RemoveEndpoint(name) => {
                self.endpoints.remove(name);
            }
            Op::RemovePeerEntries(id, peer) => {
                if let Some(t) = self.tables.get_mut(id) {
                    let at = t.entries.partition_point(|e| e.peer < *peer);
                    let end = t.entries.partition_point(|e| e.peer <= *peer);
                    t.entries.drain(at..end);
                }
            }
            Op::RemoveTable(id) => {
                self.tables.remove(id);
            }
            Op::RemoveIdentity(id) => {
                self.identities.remove(id);
            }
            Op::RemoveRule(id) => {
                self.rules.remove(id);
            }
        }
    }
}
