//! Service frontends and backends in the kernel (`bpf/lib/service.h`): the
//! encoder of [`palisade_policy::services::ServiceTable`] and its write order.
//!
//! Maps: `palisade_svc_frontends` (frontend → id, backend set, count, flags),
//! `palisade_svc_backends` ((set, index) → backend), `palisade_svc_revnat`
//! (id → frontend, for replies) and `palisade_svc_flows` (the programs' own
//! memory of which backend a flow went to; never written here).
//!
//! Atomic per frontend: a changed backend list is written under a new set id,
//! then the frontend switches to it with one write, then the old set is
//! deleted, so a packet finds the old list or the new one, never a mix. A
//! frontend keeps its id while it exists (its flows' replies need it); a new
//! frontend's reverse entry is written before the frontend, a removed one's
//! after it. Capacity is checked before the first write.

use std::collections::BTreeMap;
use std::net::IpAddr;

use aya::maps::{HashMap, MapData};
use palisade_policy::services::{Backend, ServiceFrontend, ServiceTable};

use crate::abi::{
    self, SvcAddr, SvcBackendKey, SvcFrontendKey, SvcFrontendValue, SVC_F_AFFINITY,
    SVC_F_UNTRANSLATED,
};
use crate::loader::{map_err, Error};

/// Map names (pinned under `<root>/maps/` with the others).
pub(crate) const FRONTENDS: &str = "palisade_svc_frontends";
pub(crate) const BACKENDS: &str = "palisade_svc_backends";
pub(crate) const REVNAT: &str = "palisade_svc_revnat";
pub(crate) const FLOWS: &str = "palisade_svc_flows";

/// What the kernel holds for one frontend.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    value: SvcFrontendValue,
    backends: Vec<SvcAddr>,
}

/// The Service maps and their userspace mirror.
pub(crate) struct ServiceMaps {
    frontends: HashMap<MapData, SvcFrontendKey, SvcFrontendValue>,
    backends: HashMap<MapData, SvcBackendKey, SvcAddr>,
    revnat: HashMap<MapData, u32, SvcAddr>,
    held: BTreeMap<SvcFrontendKey, Held>,
    next_id: u32,
    next_set: u32,
    cap_frontends: u32,
    cap_backends: u32,
}

/// One frontend as the kernel encodes it.
fn encode_addr(ip: IpAddr, port: u16) -> SvcAddr {
    let mut addr = [0u8; 16];
    match ip {
        IpAddr::V4(a) => addr[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => addr.copy_from_slice(&a.octets()),
    }
    SvcAddr {
        addr,
        port: u16::from_ne_bytes(port.to_be_bytes()),
        pad: 0,
    }
}

/// The kernel key of a frontend.
pub fn frontend_key(f: &ServiceFrontend) -> SvcFrontendKey {
    let a = encode_addr(f.frontend.addr, f.frontend.port);
    SvcFrontendKey {
        addr: a.addr,
        port: a.port,
        proto: f.frontend.protocol.number(),
        family: if f.frontend.addr.is_ipv4() { 4 } else { 6 },
    }
}

/// A backend as the kernel encodes it.
pub fn backend_addr(b: &Backend) -> SvcAddr {
    encode_addr(b.addr, b.port)
}

/// Decodes a kernel address of `family` back into an address and port.
pub fn decode_addr(family: u8, a: &SvcAddr) -> (IpAddr, u16) {
    let ip = if family == 4 {
        IpAddr::from([a.addr[0], a.addr[1], a.addr[2], a.addr[3]])
    } else {
        IpAddr::from(a.addr)
    };
    (ip, u16::from_be_bytes(a.port.to_ne_bytes()))
}

fn flags_of(f: &ServiceFrontend) -> u8 {
    let mut flags = 0;
    if f.affinity_timeout.is_some() {
        flags |= SVC_F_AFFINITY;
    }
    if !f.translated() {
        flags |= SVC_F_UNTRANSLATED;
    }
    flags
}

impl ServiceMaps {
    /// Opens the maps and reads back what they hold (an adopted pin root keeps
    /// its frontends, ids and sets); backend sets no frontend points at (a write
    /// interrupted by a crash) are deleted.
    pub(crate) fn open(
        frontends: HashMap<MapData, SvcFrontendKey, SvcFrontendValue>,
        backends: HashMap<MapData, SvcBackendKey, SvcAddr>,
        revnat: HashMap<MapData, u32, SvcAddr>,
        cap_frontends: u32,
        cap_backends: u32,
    ) -> Result<Self, Error> {
        let mut m = ServiceMaps {
            frontends,
            backends,
            revnat,
            held: BTreeMap::new(),
            next_id: 1,
            next_set: 1,
            cap_frontends,
            cap_backends,
        };
        let fronts: Vec<(SvcFrontendKey, SvcFrontendValue)> =
            m.frontends.iter().filter_map(|r| r.ok()).collect();
        for (k, v) in fronts {
            let mut list = Vec::with_capacity(usize::from(v.count));
            for index in 0..u32::from(v.count) {
                if let Ok(b) = m.backends.get(&SvcBackendKey { set: v.set, index }, 0) {
                    list.push(b);
                }
            }
            m.next_id = m.next_id.max(v.id.wrapping_add(1).max(1));
            m.next_set = m.next_set.max(v.set.wrapping_add(1).max(1));
            m.held.insert(
                k,
                Held {
                    value: v,
                    backends: list,
                },
            );
        }
        let used: std::collections::BTreeSet<u32> = m.held.values().map(|h| h.value.set).collect();
        let ids: std::collections::BTreeSet<u32> = m.held.values().map(|h| h.value.id).collect();
        let stale: Vec<SvcBackendKey> = m
            .backends
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !used.contains(&k.set))
            .collect();
        for k in &stale {
            m.next_set = m.next_set.max(k.set.wrapping_add(1).max(1));
            let _ = m.backends.remove(k);
        }
        let stale_ids: Vec<u32> = m
            .revnat
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !ids.contains(k))
            .collect();
        for id in stale_ids {
            m.next_id = m.next_id.max(id.wrapping_add(1).max(1));
            let _ = m.revnat.remove(&id);
        }
        Ok(m)
    }

    /// Frontends the kernel holds: key → (value, backends).
    pub(crate) fn held(
        &self,
    ) -> impl Iterator<Item = (&SvcFrontendKey, &SvcFrontendValue, &[SvcAddr])> {
        self.held
            .iter()
            .map(|(k, h)| (k, &h.value, h.backends.as_slice()))
    }

    /// Makes the kernel hold exactly `table`'s frontends. Returns whether
    /// anything was written (the caller then publishes a new policy epoch).
    pub(crate) fn sync(&mut self, table: &ServiceTable) -> Result<bool, Error> {
        let mut want: BTreeMap<SvcFrontendKey, (u8, Vec<SvcAddr>, SvcAddr)> = BTreeMap::new();
        for f in table.frontends.values() {
            let backends: Vec<SvcAddr> = f.backends.iter().map(backend_addr).collect();
            if backends.len() > usize::from(u16::MAX) {
                return Err(Error::Capacity {
                    map: BACKENDS,
                    needed: backends.len(),
                    capacity: u32::from(u16::MAX),
                });
            }
            want.insert(
                frontend_key(f),
                (
                    flags_of(f),
                    backends,
                    encode_addr(f.frontend.addr, f.frontend.port),
                ),
            );
        }
        // Plan: the peak number of backend entries is every set held plus every
        // new set written before the old ones go.
        let held_backends: usize = self.held.values().map(|h| h.backends.len()).sum();
        let mut new_backends = 0usize;
        let mut changed = Vec::new();
        for (k, (flags, list, _)) in &want {
            match self.held.get(k) {
                Some(h) if h.value.flags == *flags && h.backends == *list => {}
                _ => {
                    new_backends += list.len();
                    changed.push(*k);
                }
            }
        }
        let peak_frontends =
            self.held.len() + want.keys().filter(|k| !self.held.contains_key(k)).count();
        if peak_frontends > self.cap_frontends as usize {
            return Err(Error::Capacity {
                map: FRONTENDS,
                needed: peak_frontends,
                capacity: self.cap_frontends,
            });
        }
        if held_backends + new_backends > self.cap_backends as usize {
            return Err(Error::Capacity {
                map: BACKENDS,
                needed: held_backends + new_backends,
                capacity: self.cap_backends,
            });
        }
        let removed: Vec<SvcFrontendKey> = self
            .held
            .keys()
            .filter(|k| !want.contains_key(k))
            .copied()
            .collect();
        for k in &changed {
            let (flags, list, front) = &want[k];
            self.write_frontend(*k, *flags, list, *front)?;
        }
        for k in &removed {
            self.remove_frontend(k)?;
        }
        Ok(!changed.is_empty() || !removed.is_empty())
    }

    fn write_frontend(
        &mut self,
        k: SvcFrontendKey,
        flags: u8,
        list: &[SvcAddr],
        front: SvcAddr,
    ) -> Result<(), Error> {
        let set = self.alloc_set();
        for (index, b) in list.iter().enumerate() {
            self.backends
                .insert(
                    SvcBackendKey {
                        set,
                        index: index as u32,
                    },
                    *b,
                    0,
                )
                .map_err(map_err(BACKENDS))?;
        }
        let old = self.held.get(&k).cloned();
        let id = match &old {
            Some(h) => h.value.id,
            None => {
                let id = self.alloc_id();
                self.revnat.insert(id, front, 0).map_err(map_err(REVNAT))?;
                id
            }
        };
        let value = SvcFrontendValue {
            id,
            set,
            count: list.len() as u16,
            flags,
            pad: 0,
        };
        self.frontends
            .insert(k, value, 0)
            .map_err(map_err(FRONTENDS))?;
        self.held.insert(
            k,
            Held {
                value,
                backends: list.to_vec(),
            },
        );
        if let Some(h) = old {
            self.remove_set(h.value.set, h.backends.len())?;
        }
        Ok(())
    }

    fn remove_frontend(&mut self, k: &SvcFrontendKey) -> Result<(), Error> {
        let Some(h) = self.held.remove(k) else {
            return Ok(());
        };
        ignore_missing(self.frontends.remove(k)).map_err(map_err(FRONTENDS))?;
        self.remove_set(h.value.set, h.backends.len())?;
        ignore_missing(self.revnat.remove(&h.value.id)).map_err(map_err(REVNAT))?;
        Ok(())
    }

    fn remove_set(&mut self, set: u32, n: usize) -> Result<(), Error> {
        for index in 0..n as u32 {
            ignore_missing(self.backends.remove(&SvcBackendKey { set, index }))
                .map_err(map_err(BACKENDS))?;
        }
        Ok(())
    }

    fn alloc_set(&mut self) -> u32 {
        let in_use: std::collections::BTreeSet<u32> =
            self.held.values().map(|h| h.value.set).collect();
        loop {
            let s = self.next_set;
            self.next_set = self.next_set.wrapping_add(1).max(1);
            if !in_use.contains(&s) {
                return s;
            }
        }
    }

    fn alloc_id(&mut self) -> u32 {
        let in_use: std::collections::BTreeSet<u32> =
            self.held.values().map(|h| h.value.id).collect();
        loop {
            let s = self.next_id;
            self.next_id = self.next_id.wrapping_add(1).max(1);
            if !in_use.contains(&s) {
                return s;
            }
        }
    }
}

/// A delete of an entry that is already gone is no error.
fn ignore_missing(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}

const _: () = assert!(abi::SVC_MAX_CHECK > 0);
