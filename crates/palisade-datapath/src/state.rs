//! Userspace mirror of the kernel maps and the planner that turns a `Delta` or a
//! full `Compiled` snapshot into an ordered list of map writes.
//!
//! Planning runs on a copy of the mirror: it records the entry-count trajectory of
//! every map, so a plan that would overflow a map is rejected before the first
//! write (the old state stays in force), and the kernel sees the writes in the
//! order the plan lists them.

use std::collections::{BTreeMap, BTreeSet};

use palisade_policy::compiled::{Compiled, EndpointEntry, IdentityId, Op, TableId};

use crate::abi::{EndpointValue, PolicyKey, PolicyValue, POLICY_FIXED_BITS};
use crate::maps::{self, addr_key, AddrKey, EncodeError};

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

/// One map write, in kernel terms.
#[derive(Debug, Clone)]
pub(crate) enum Write {
    PutPolicy(PKey, PolicyValue),
    DelPolicy(PKey),
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
    pub policy: u32,
}

/// Peak entry counts along a plan.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Peaks {
    pub endpoints: usize,
    pub addr4: usize,
    pub addr6: usize,
    pub policy: usize,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct State {
    /// Exactly what palisade_policy holds.
    pub policy: BTreeMap<PKey, PolicyValue>,
    /// Exactly what palisade_addr4/6 hold.
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
}

impl<'a> Planner<'a> {
    pub fn new(s: &'a mut State, caps: Caps) -> Self {
        let mut p = Planner {
            s,
            plan: Vec::new(),
            peaks: Peaks::default(),
            caps,
        };
        p.track();
        p
    }

    fn track(&mut self) {
        let v4 = self
            .s
            .addrs
            .keys()
            .filter(|k| matches!(k, AddrKey::V4(_)))
            .count();
        self.peaks.addr4 = self.peaks.addr4.max(v4);
        self.peaks.addr6 = self.peaks.addr6.max(self.s.addrs.len() - v4);
        self.peaks.policy = self.peaks.policy.max(self.s.policy.len());
        self.peaks.endpoints = self.peaks.endpoints.max(self.s.endpoints.len());
    }

    fn put_policy(&mut self, k: PKey, v: PolicyValue) {
        if self.s.policy.get(&k) != Some(&v) {
            self.s.policy.insert(k, v);
            self.peaks.policy = self.peaks.policy.max(self.s.policy.len());
            self.plan.push(Write::PutPolicy(k, v));
        }
    }

    fn del_policy(&mut self, k: PKey) {
        if self.s.policy.remove(&k).is_some() {
            self.plan.push(Write::DelPolicy(k));
        }
    }

    fn put_addr(&mut self, k: AddrKey, id: IdentityId) {
        if self.s.addrs.get(&k) != Some(&id) {
            self.s.addrs.insert(k, id);
            self.track();
            self.plan.push(Write::PutAddr(k, id));
        }
    }

    fn del_addr(&mut self, k: AddrKey) {
        if self.s.addrs.remove(&k).is_some() {
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
        Ok(())
    }

    /// Plans a full resync to `c`:
    /// 1. policy entries of every table, then addresses (new state aside);
    /// 2. endpoint entries of bound pods (one write each switches its tables);
    /// 3. stale endpoints (bound pods no longer in `c`), stale addresses, and
    ///    stale policy keys of tables that no endpoint entry references any more
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
            .filter(|k| !want.contains_key(k) && !referenced.contains(&k.0))
            .copied()
            .collect();
        for k in stale {
            self.del_policy(k);
        }
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
            ("palisade_policy", self.peaks.policy, self.caps.policy),
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
            policy: 6,
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
            policy: 64,
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
}
