//! Userspace mirror of the kernel maps and the planner that turns a `Delta` or a
//! full `Compiled` snapshot into an ordered list of map writes.
//!
//! Planning runs on a copy of the mirror: it records the entry-count trajectory of
//! every map, so a plan that would overflow a map is rejected before the first
//! write (the old state stays in force), and the kernel sees the writes in the
//! order the plan lists them.

use std::collections::{BTreeMap, BTreeSet};

use palisade_policy::compiled::{Compiled, EndpointEntry, IdentityId, Op, TableId};

use crate::abi::{
    EndpointValue, PolicyKey, PolicyPart, PolicyPartKey, PolicyValue, POLICY_FIXED_BITS,
};
use crate::maps::{self, addr_key, is_host, AddrKey, EncodeError};

/// Mirror key of a policy entry, ordered for range scans by table and peer:
/// `(table, peer, proto, first port (host order), port prefix length)`.
pub(crate) type PKey = (TableId, IdentityId, u8, u16, u8);

pub(crate) fn pkey(k: &PolicyKey) -> PKey {
    (
        k.table,
        k.peer,
        k.proto,
        u16::from_be(k.dport),
        (k.prefixlen - POLICY_FIXED_BITS) as u8,
    )
}

pub(crate) fn policy_key_of(p: &PKey) -> PolicyKey {
    maps::policy_key(p.0, p.1, p.2, p.3, p.4)
}

/// Mirror key of a port partition (`palisade_policy_parts`): `(table, peer, proto)`.
pub(crate) type PartKey = (TableId, IdentityId, u8);

pub(crate) fn part_key_of(p: &PartKey) -> PolicyPartKey {
    PolicyPartKey {
        table: p.0,
        peer: p.1,
        proto: p.2,
        pad: [0; 3],
    }
}

/// One map write, in kernel terms.
#[derive(Debug, Clone)]
pub(crate) enum Write {
    PutPolicy(PKey, PolicyValue),
    DelPolicy(PKey),
    /// Writes a partition's answer (after its policy entries, before anything uses it).
    PutPart(PartKey, PolicyPart),
    DelPart(PartKey),
    /// Host prefixes go to `palisade_hosts4/6`, the others to the LPM tries.
    PutAddr(AddrKey, IdentityId),
    DelAddr(AddrKey),
    /// Zero the counters of a freshly allocated slot, before the endpoint uses it.
    ZeroSlot(u32),
    PutEndpoint(u32, EndpointValue),
    DelEndpoint(u32),
}

/// Map capacities (max_entries) the planner checks against.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caps {
    pub endpoints: u32,
    pub addr4: u32,
    pub addr6: u32,
    pub hosts4: u32,
    pub hosts6: u32,
    pub policy: u32,
    pub policy_parts: u32,
}

/// Peak entry counts along a plan.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Peaks {
    pub endpoints: usize,
    pub addr4: usize,
    pub addr6: usize,
    pub hosts4: usize,
    pub hosts6: usize,
    pub policy: usize,
    pub policy_parts: usize,
}

/// Live entry counts of the address maps, indexed as [`addr_slot`] says.
type AddrCounts = [usize; 4];

/// Which address map holds `k`: 0 addr4, 1 addr6, 2 hosts4, 3 hosts6.
fn addr_slot(k: &AddrKey) -> usize {
    match (k, is_host(k)) {
        (AddrKey::V4(_), false) => 0,
        (AddrKey::V6(_), false) => 1,
        (AddrKey::V4(_), true) => 2,
        (AddrKey::V6(_), true) => 3,
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct State {
    /// Exactly what palisade_policy holds.
    pub policy: BTreeMap<PKey, PolicyValue>,
    /// Exactly what palisade_policy_parts holds: derived from `policy`, one per
    /// (table, peer, proto) having entries there.
    pub parts: BTreeMap<PartKey, PolicyPart>,
    /// Exactly what palisade_addr4/6 (shorter prefixes) and palisade_hosts4/6
    /// (host prefixes) hold together.
    pub addrs: BTreeMap<AddrKey, IdentityId>,
    /// Exactly what palisade_endpoints holds, by ifindex.
    pub endpoints: BTreeMap<u32, EndpointValue>,
    /// Desired endpoint state by pod (from PutEndpoint/sync), bound or not.
    pub desired: BTreeMap<String, EndpointEntry>,
    /// pod -> ifindex of its host-side veth.
    pub bindings: BTreeMap<String, u32>,
    /// Per-pod endpoint flags (PALISADE_EP_F_*).
    pub flags: BTreeMap<String, u32>,
}

pub(crate) struct Planner<'a> {
    pub s: &'a mut State,
    pub plan: Vec<Write>,
    pub peaks: Peaks,
    pub caps: Caps,
    /// Live entries per address map (kept up to date, not recounted).
    addr_counts: AddrCounts,
    /// Partitions whose policy entries changed since the last `flush_parts`.
    dirty: BTreeSet<PartKey>,
}

impl<'a> Planner<'a> {
    pub fn new(s: &'a mut State, caps: Caps) -> Self {
        let mut addr_counts = [0; 4];
        for k in s.addrs.keys() {
            addr_counts[addr_slot(k)] += 1;
        }
        let mut p = Planner {
            s,
            plan: Vec::new(),
            peaks: Peaks::default(),
            caps,
            addr_counts,
            dirty: BTreeSet::new(),
        };
        p.track();
        p
    }

    fn track(&mut self) {
        let [a4, a6, h4, h6] = self.addr_counts;
        self.peaks.addr4 = self.peaks.addr4.max(a4);
        self.peaks.addr6 = self.peaks.addr6.max(a6);
        self.peaks.hosts4 = self.peaks.hosts4.max(h4);
        self.peaks.hosts6 = self.peaks.hosts6.max(h6);
        self.peaks.policy = self.peaks.policy.max(self.s.policy.len());
        self.peaks.policy_parts = self.peaks.policy_parts.max(self.s.parts.len());
        self.peaks.endpoints = self.peaks.endpoints.max(self.s.endpoints.len());
    }

    fn put_policy(&mut self, k: PKey, v: PolicyValue) {
        if self.s.policy.get(&k) != Some(&v) {
            self.s.policy.insert(k, v);
            self.peaks.policy = self.peaks.policy.max(self.s.policy.len());
            self.dirty.insert((k.0, k.1, k.2));
            self.plan.push(Write::PutPolicy(k, v));
        }
    }

    fn del_policy(&mut self, k: PKey) {
        if self.s.policy.remove(&k).is_some() {
            self.dirty.insert((k.0, k.1, k.2));
            self.plan.push(Write::DelPolicy(k));
        }
    }

    /// Rewrites the partition of every (table, peer, proto) whose policy
    /// entries changed: one write each, AFTER those entries (an overflow
    /// partition must find its LPM entries) and before anything that makes a
    /// table reachable. Empty partitions are deleted, so "no partition" keeps
    /// meaning "no entries" (the IDENTITY_ANY fallback).
    pub fn flush_parts(&mut self) {
        for pk in std::mem::take(&mut self.dirty) {
            let entries: Vec<maps::PartEntry> = self
                .s
                .policy
                .range((pk.0, pk.1, pk.2, 0, 0)..=(pk.0, pk.1, pk.2, u16::MAX, u8::MAX))
                .map(|(k, v)| (k.3, k.4, *v))
                .collect();
            if entries.is_empty() {
                if self.s.parts.remove(&pk).is_some() {
                    self.plan.push(Write::DelPart(pk));
                }
                continue;
            }
            let part = maps::policy_part(&entries);
            if self.s.parts.get(&pk) != Some(&part) {
                self.s.parts.insert(pk, part);
                self.track();
                self.plan.push(Write::PutPart(pk, part));
            }
        }
    }

    /// Marks every partition, present or backed by policy entries, for
    /// [`Planner::flush_parts`]: repairs the derived map after adoption.
    pub fn resync_parts(&mut self) {
        let backed = self.s.policy.keys().map(|k| (k.0, k.1, k.2));
        let present = self.s.parts.keys().copied();
        self.dirty = backed.chain(present).collect();
        self.flush_parts();
    }

    fn put_addr(&mut self, k: AddrKey, id: IdentityId) {
        if self.s.addrs.get(&k) != Some(&id) {
            if self.s.addrs.insert(k, id).is_none() {
                self.addr_counts[addr_slot(&k)] += 1;
            }
            self.track();
            self.plan.push(Write::PutAddr(k, id));
        }
    }

    fn del_addr(&mut self, k: AddrKey) {
        if self.s.addrs.remove(&k).is_some() {
            self.addr_counts[addr_slot(&k)] -= 1;
            self.plan.push(Write::DelAddr(k));
        }
    }

    fn keys_of(&self, table: TableId, peer: Option<IdentityId>) -> Vec<PKey> {
        let (lo, hi) = match peer {
            Some(p) => ((table, p, 0, 0, 0), (table, p, u8::MAX, u16::MAX, u8::MAX)),
            None => (
                (table, 0, 0, 0, 0),
                (table, u32::MAX, u8::MAX, u16::MAX, u8::MAX),
            ),
        };
        self.s.policy.range(lo..=hi).map(|(k, _)| *k).collect()
    }

    /// Puts entries; with `replace_table`, then deletes the table's other keys.
    fn put_entries(
        &mut self,
        table: TableId,
        entries: &[palisade_policy::compiled::TableEntry],
        replace_table: bool,
    ) -> Result<(), EncodeError> {
        let enc = maps::encode_entries(table, entries)?;
        let keep: BTreeSet<PKey> = enc.iter().map(|(k, _)| pkey(k)).collect();
        for (k, v) in enc {
            self.put_policy(pkey(&k), v);
        }
        if replace_table {
            for k in self.keys_of(table, None) {
                if !keep.contains(&k) {
                    self.del_policy(k);
                }
            }
        }
        Ok(())
    }

    fn free_slot(&self) -> Option<u32> {
        let used: BTreeSet<u32> = self.s.endpoints.values().map(|v| v.slot).collect();
        (1..=self.caps.endpoints).find(|s| !used.contains(s))
    }

    /// Writes the endpoint entry of a bound pod from its desired state.
    fn write_endpoint(&mut self, pod: &str) -> Result<(), EncodeError> {
        let (Some(e), Some(&ifindex)) = (self.s.desired.get(pod), self.s.bindings.get(pod)) else {
            return Ok(());
        };
        let flags = self.s.flags.get(pod).copied().unwrap_or(0);
        let slot = match self.s.endpoints.get(&ifindex) {
            Some(v) => v.slot,
            None => match self.free_slot() {
                Some(s) => {
                    self.plan.push(Write::ZeroSlot(s));
                    s
                }
                // Recorded as an overflow by the capacity check below.
                None => self.caps.endpoints + 1,
            },
        };
        let v = maps::endpoint_value(e, slot, flags)?;
        if self.s.endpoints.get(&ifindex) != Some(&v) {
            self.s.endpoints.insert(ifindex, v);
            self.track();
            self.plan.push(Write::PutEndpoint(ifindex, v));
        }
        Ok(())
    }

    /// [`Planner::write_endpoint`] for the loader.
    pub fn write_endpoint_pub(&mut self, pod: &str) -> Result<(), EncodeError> {
        self.write_endpoint(pod)
    }

    /// [`Planner::del_endpoint`] for the loader.
    pub fn del_endpoint_pub(&mut self, ifindex: u32) {
        self.del_endpoint(ifindex)
    }

    fn del_endpoint(&mut self, ifindex: u32) {
        if self.s.endpoints.remove(&ifindex).is_some() {
            self.plan.push(Write::DelEndpoint(ifindex));
        }
    }

    /// Plans one op of a Delta (see compiled::Op for the ordering contract).
    pub fn op(&mut self, op: &Op) -> Result<(), EncodeError> {
        match op {
            Op::PutRule(..) | Op::PutIdentity(..) | Op::RemoveIdentity(_) | Op::RemoveRule(_) => {}
            Op::PutTable(t, table) => self.put_entries(*t, &table.entries, true)?,
            Op::AddPeerEntries(t, entries) => self.put_entries(*t, entries, false)?,
            Op::PutEndpoint(e) => {
                self.s.desired.insert(e.pod.clone(), e.clone());
                self.write_endpoint(&e.pod)?;
            }
            Op::PutAddress(net, id) => self.put_addr(addr_key(net), *id),
            Op::RemoveAddress(net) => self.del_addr(addr_key(net)),
            Op::RemoveEndpoint(pod) => {
                self.s.desired.remove(pod);
                if let Some(&ifindex) = self.s.bindings.get(pod) {
                    self.del_endpoint(ifindex);
                }
            }
            Op::RemovePeerEntries(t, p) => {
                for k in self.keys_of(*t, Some(*p)) {
                    self.del_policy(k);
                }
            }
            Op::RemoveTable(t) => {
                for k in self.keys_of(*t, None) {
                    self.del_policy(k);
                }
            }
        }
        self.flush_parts();
        Ok(())
    }

    /// Plans a full resync to `c`:
    /// 1. policy entries of every table, then addresses (new state aside);
    /// 2. endpoint entries of bound pods (one write each switches its tables);
    /// 3. stale endpoints (bound pods no longer in `c`), stale addresses, and
    ///    stale policy keys: keys of tables in `c` that `c` no longer has, and
    ///    every key of tables outside `c` that no endpoint entry references
    ///    (endpoint entries adopted from a previous run but not bound yet keep
    ///    their tables until they are bound or removed).
    pub fn sync(&mut self, c: &Compiled) -> Result<(), EncodeError> {
        let mut want: BTreeMap<PKey, PolicyValue> = BTreeMap::new();
        for (t, table) in &c.tables {
            for (k, v) in maps::encode_table(*t, table)? {
                want.insert(pkey(&k), v);
            }
        }
        for (k, v) in &want {
            self.put_policy(*k, *v);
        }
        self.flush_parts();
        let want_addrs: BTreeMap<AddrKey, IdentityId> = c
            .addresses
            .iter()
            .map(|(n, id)| (addr_key(n), *id))
            .collect();
        for (k, id) in &want_addrs {
            self.put_addr(*k, *id);
        }
        self.s.desired = c
            .endpoints
            .values()
            .map(|e| (e.pod.clone(), e.clone()))
            .collect();
        let bound: Vec<(String, u32)> = self
            .s
            .bindings
            .iter()
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        for (pod, ifindex) in &bound {
            if self.s.desired.contains_key(pod) {
                self.write_endpoint(pod)?;
            } else {
                self.del_endpoint(*ifindex);
            }
        }
        let stale_addrs: Vec<AddrKey> = self
            .s
            .addrs
            .keys()
            .filter(|k| !want_addrs.contains_key(k))
            .copied()
            .collect();
        for k in stale_addrs {
            self.del_addr(k);
        }
        let referenced: BTreeSet<TableId> = self
            .s
            .endpoints
            .values()
            .flat_map(|v| [v.ingress_table, v.egress_table])
            .collect();
        let stale: Vec<PKey> = self
            .s
            .policy
            .keys()
            .filter(|k| {
                !want.contains_key(k) && (c.tables.contains_key(&k.0) || !referenced.contains(&k.0))
            })
            .copied()
            .collect();
        for k in stale {
            self.del_policy(k);
        }
        self.flush_parts();
        Ok(())
    }

    /// The first map the plan would overflow: `(map, peak entries, capacity)`.
    pub fn overflow(&self) -> Option<(&'static str, usize, u32)> {
        let checks = [
            (
                "palisade_endpoints",
                self.peaks.endpoints,
                self.caps.endpoints,
            ),
            ("palisade_addr4", self.peaks.addr4, self.caps.addr4),
            ("palisade_addr6", self.peaks.addr6, self.caps.addr6),
            ("palisade_hosts4", self.peaks.hosts4, self.caps.hosts4),
            ("palisade_hosts6", self.peaks.hosts6, self.caps.hosts6),
            ("palisade_policy", self.peaks.policy, self.caps.policy),
            (
                "palisade_policy_parts",
                self.peaks.policy_parts,
                self.caps.policy_parts,
            ),
        ];
        if let Some(slot) = self.s.endpoints.values().map(|v| v.slot).max() {
            if slot > self.caps.endpoints {
                return Some(("palisade_counters", slot as usize, self.caps.endpoints));
            }
        }
        checks
            .into_iter()
            .find(|(_, peak, cap)| *peak > *cap as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_policy::compiled::{RuleTable, TableAction, TableEntry, TableVerdict};

    fn table(rule: u32) -> RuleTable {
        let v = TableVerdict {
            action: TableAction::Allow,
            rule,
        };
        RuleTable {
            entries: [6u8, 17, 132, 0]
                .iter()
                .map(|&p| TableEntry {
                    peer: 0,
                    proto: p,
                    port_lo: 0,
                    port_hi: if p == 0 { 0 } else { 65535 },
                    verdict: v,
                })
                .collect(),
        }
    }

    #[test]
    fn plan_that_overflows_the_policy_map_is_rejected_with_its_peak() {
        let mut s = State::default();
        let caps = Caps {
            endpoints: 4,
            addr4: 4,
            addr6: 4,
            hosts4: 4,
            hosts6: 4,
            policy: 6,
            policy_parts: 64,
        };
        let mut p = Planner::new(&mut s, caps);
        p.op(&Op::PutTable(1, table(1))).unwrap();
        assert!(p.overflow().is_none());
        p.op(&Op::PutTable(2, table(2))).unwrap();
        p.op(&Op::RemoveTable(1)).unwrap();
        // 8 entries were live at once even though 4 remain.
        assert_eq!(p.overflow(), Some(("palisade_policy", 8, 6)));
    }

    #[test]
    fn endpoint_entry_is_written_only_once_the_pod_is_bound() {
        let mut s = State::default();
        let caps = Caps {
            endpoints: 4,
            addr4: 4,
            addr6: 4,
            hosts4: 4,
            hosts6: 4,
            policy: 64,
            policy_parts: 64,
        };
        let e = EndpointEntry {
            pod: "a/b".into(),
            ips: vec!["10.0.0.1".parse().unwrap()],
            ingress: 1,
            egress: 2,
            generation: 1,
        };
        let mut p = Planner::new(&mut s, caps);
        p.op(&Op::PutEndpoint(e)).unwrap();
        assert!(p.plan.is_empty());
        p.s.bindings.insert("a/b".into(), 7);
        p.write_endpoint("a/b").unwrap();
        assert!(matches!(
            p.plan[..],
            [Write::ZeroSlot(1), Write::PutEndpoint(7, _)]
        ));
    }

    fn caps(policy_parts: u32) -> Caps {
        Caps {
            endpoints: 4,
            addr4: 4,
            addr6: 4,
            hosts4: 4,
            hosts6: 4,
            policy: 64,
            policy_parts,
        }
    }

    #[test]
    fn partition_is_written_after_its_entries_and_before_the_endpoint_that_uses_it() {
        let mut c = Compiled::default();
        c.tables.insert(1, table(1));
        c.tables.insert(2, table(2));
        c.addresses.insert("10.1.0.0/16".parse().unwrap(), 3);
        c.addresses.insert("10.1.2.3/32".parse().unwrap(), 4);
        c.endpoints.insert(
            "a/b".into(),
            EndpointEntry {
                pod: "a/b".into(),
                ips: vec!["10.0.0.1".parse().unwrap()],
                ingress: 1,
                egress: 2,
                generation: 1,
            },
        );
        let mut s = State::default();
        s.bindings.insert("a/b".into(), 7);
        let mut p = Planner::new(&mut s, caps(64));
        p.sync(&c).unwrap();
        let pos = |f: &dyn Fn(&Write) -> bool| p.plan.iter().position(f).unwrap();
        let last_entry = p
            .plan
            .iter()
            .rposition(|w| matches!(w, Write::PutPolicy(..)))
            .unwrap();
        let first_part = pos(&|w| matches!(w, Write::PutPart(..)));
        let endpoint = pos(&|w| matches!(w, Write::PutEndpoint(..)));
        assert!(last_entry < first_part && first_part < endpoint);
        assert_eq!(p.s.parts.len(), 8, "one per (table, peer 0, class)");
        assert_eq!(p.peaks.hosts4, 1);
        assert_eq!(p.peaks.addr4, 1);
        // Removing a table removes its partitions after its entries.
        p.plan.clear();
        p.op(&Op::RemoveTable(1)).unwrap();
        assert!(matches!(p.plan.last(), Some(Write::DelPart((1, _, _)))));
        assert_eq!(p.s.parts.len(), 4);
    }

    #[test]
    fn plan_that_overflows_the_partition_map_is_rejected() {
        let mut s = State::default();
        let mut p = Planner::new(&mut s, caps(6));
        p.op(&Op::PutTable(1, table(1))).unwrap();
        assert!(p.overflow().is_none());
        p.op(&Op::PutTable(2, table(2))).unwrap();
        assert_eq!(p.overflow(), Some(("palisade_policy_parts", 8, 6)));
    }
}
