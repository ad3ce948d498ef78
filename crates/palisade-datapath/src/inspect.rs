//! Inspection: counters, decision events, and what the kernel enforces decoded
//! back into policy terms (read from the maps, not from the userspace mirror).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use palisade_policy::compiled::{IdentityId, RuleTable, TableId};
use serde::Serialize;

use aya::maps::{MapData, MapError, RingBuf};
use aya::programs::tc::{SchedClassifier, TcAttachType};

use crate::abi;
use crate::loader::{ifname_of, link_pin, map_err, prog_err, Datapath, Error, Hook};
use crate::maps::{self, addr_net, AddrKey};

type Result<T, E = Error> = std::result::Result<T, E>;

/// Counters of one endpoint: `[direction][reason]`, summed over CPUs.
pub type EndpointCounters = [[u64; abi::REASON_NR]; abi::DIR_NR];

/// A snapshot of every counter.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counters {
    /// By host-side ifindex.
    pub endpoints: BTreeMap<u32, EndpointCounters>,
    /// Packets on interfaces without an endpoint entry (slot 0).
    pub no_endpoint: EndpointCounters,
    /// Global statistics, indexed by `abi::STAT_*`.
    pub stats: [u64; abi::STAT_NR],
    /// Decision events suppressed by each endpoint's own token bucket, by host-side
    /// ifindex; key 0 = interfaces without an endpoint entry (slot 0).
    pub events_suppressed: BTreeMap<u32, u64>,
}

/// The programs the kernel runs on one hook of an interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HookAttachment {
    /// Our program for the hook (`from_pod` on TC ingress, `to_pod` on TC egress).
    pub hook: &'static str,
    /// Ids of the TCX programs attached, in the order the kernel runs them.
    pub programs: Vec<u32>,
    /// The id of this datapath's program for the hook.
    pub ours: u32,
}

impl HookAttachment {
    /// Whether our program decides every packet on this hook: it runs first. A
    /// program ahead of it could pass a packet (`TCX_PASS`) before ours sees it.
    pub fn enforced(&self) -> bool {
        self.programs.first() == Some(&self.ours)
    }
}

/// What the kernel runs on one interface, read from the kernel (TCX program query and
/// the endpoint map), not from pins or the mirror: a pin can outlive its link and a
/// mirror can disagree with the map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attachment {
    /// The interface index asked about.
    pub ifindex: u32,
    /// Its name now, `None` if no interface has that index.
    pub ifname: Option<String>,
    /// Whether `palisade_endpoints` has an entry for it.
    pub endpoint_entry: bool,
    /// TC ingress (the pod's egress), then TC egress (the pod's ingress); empty
    /// when the interface is gone.
    pub hooks: Vec<HookAttachment>,
}

impl Attachment {
    /// Both hooks run our programs first and the endpoint entry exists.
    pub fn enforced(&self) -> bool {
        self.endpoint_entry && self.hooks.len() == 2 && self.hooks.iter().all(|h| h.enforced())
    }
}

/// Name of a drop/pass reason (`abi::REASON_*`).
pub fn reason_name(reason: u32) -> &'static str {
    const NAMES: [&str; abi::REASON_NR] = [
        "policy-allow",
        "ct-established",
        "ct-reply",
        "ct-related",
        "frag-tracked",
        "ndp",
        "non-ip",
        "policy-deny",
        "no-endpoint",
        "spoof",
        "malformed",
        "frag-no-state",
        "ipv6-ext-limit",
        "no-identity",
        "no-table",
        "vlan",
        "svc-no-backend",
        "svc-untranslated-deny",
        "svc-no-revnat",
    ];
    NAMES.get(reason as usize).copied().unwrap_or("unknown")
}

/// One decoded decision event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DecisionEvent {
    /// CLOCK_MONOTONIC ns.
    pub ts_ns: u64,
    /// Host-side ifindex.
    pub ifindex: u32,
    /// "egress" (from the pod) or "ingress" (to the pod).
    pub direction: &'static str,
    /// Passed or dropped.
    pub allowed: bool,
    /// Reason name (see [`reason_name`]).
    pub reason: &'static str,
    /// RuleId behind the verdict (0 if none).
    pub rule_id: u32,
    /// Peer identity (0 if not looked up).
    pub identity: u32,
    /// TableId consulted.
    pub table: u32,
    /// IP protocol number.
    pub proto: u8,
    /// Source address (None for non-IP).
    pub src: Option<IpAddr>,
    /// Destination address.
    pub dst: Option<IpAddr>,
    /// Source port (ICMP echo id), host order.
    pub sport: u16,
    /// Destination port, host order.
    pub dport: u16,
    /// TCP flags, or ICMP type.
    pub tcp_flags: u8,
}

fn decode_event(e: &abi::Event) -> DecisionEvent {
    let addr = |a: &[u8; 16]| match e.family {
        4 => Some(IpAddr::from([a[0], a[1], a[2], a[3]])),
        6 => Some(IpAddr::from(*a)),
        _ => None,
    };
    DecisionEvent {
        ts_ns: e.ts_ns,
        ifindex: e.ifindex,
        direction: if u32::from(e.dir) == abi::DIR_EGRESS {
            "egress"
        } else {
            "ingress"
        },
        allowed: e.action == abi::ACTION_ALLOW,
        reason: reason_name(u32::from(e.reason)),
        rule_id: e.rule_id,
        identity: e.identity,
        table: e.table,
        proto: e.proto,
        src: addr(&e.saddr),
        dst: addr(&e.daddr),
        sport: u16::from_be(e.sport),
        dport: u16::from_be(e.dport),
        tcp_flags: e.tcp_flags,
    }
}

/// Reader of the decision ring buffer. Poll its fd (`as_raw_fd`) for readiness,
/// then drain with [`EventReader::next`].
pub struct EventReader {
    ring: RingBuf<MapData>,
}

impl EventReader {
    /// The next event, if one is ready.
    #[allow(clippy::should_implement_trait)] // borrowing item, like RingBuf::next
    pub fn next(&mut self) -> Option<DecisionEvent> {
        let item = self.ring.next()?;
        decode_record(&item)
    }
}

/// Decodes one ring-buffer record into an event; `None` when it is shorter than a
/// `struct event`. Any bytes of that length decode (unknown reasons are named
/// `unknown`, unknown families have no address): the ring is written by the kernel
/// program, but a reader that trusts no byte of it cannot be crashed by a newer one.
pub fn decode_record(bytes: &[u8]) -> Option<DecisionEvent> {
    if bytes.len() < std::mem::size_of::<abi::Event>() {
        return None;
    }
    // SAFETY: `bytes` holds at least size_of::<Event>() bytes (checked above), `Event`
    // is a plain `repr(C)` struct of integers and byte arrays (every bit pattern is a
    // value), and read_unaligned copes with the ring's 8-byte alignment.
    let e: abi::Event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    Some(decode_event(&e))
}

impl std::os::fd::AsRawFd for EventReader {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.ring.as_raw_fd()
    }
}

/// What the kernel holds for one table, decoded back into policy terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableDump {
    /// TableId.
    pub id: TableId,
    /// Entries, port ranges merged back.
    pub table: RuleTable,
}

/// What the kernel holds for one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointDump {
    /// Host-side ifindex.
    pub ifindex: u32,
    /// Pod bound to it in this process, if any.
    pub pod: Option<String>,
    /// Anti-spoofing addresses.
    pub ips: Vec<IpAddr>,
    /// Counter slot.
    pub slot: u32,
    /// PALISADE_EP_F_*.
    pub flags: u32,
    /// EndpointEntry.generation in force.
    pub generation: u64,
    /// Table for traffic towards the pod.
    pub ingress: TableDump,
    /// Table for traffic from the pod.
    pub egress: TableDump,
}

impl Datapath {
    /// Every counter, summed over CPUs (reads only the slots in use).
    pub fn counters(&self) -> Result<Counters> {
        let read_slot = |slot: u32| -> Result<EndpointCounters> {
            let mut c = [[0u64; abi::REASON_NR]; abi::DIR_NR];
            for (d, row) in c.iter_mut().enumerate() {
                for (r, cell) in row.iter_mut().enumerate() {
                    let idx =
                        slot * abi::COUNTERS_PER_SLOT as u32 + (d * abi::REASON_NR + r) as u32;
                    let v = self
                        .counters
                        .get(&idx, 0)
                        .map_err(map_err("palisade_counters"))?;
                    *cell = v.iter().sum();
                }
            }
            Ok(c)
        };
        let mut out = Counters {
            no_endpoint: read_slot(0)?,
            ..Counters::default()
        };
        for (ifindex, v) in &self.state.endpoints {
            out.endpoints.insert(*ifindex, read_slot(v.slot)?);
        }
        let suppressed = |slot: u32| -> Result<u64> {
            match self.pod_ratelimit.get(&slot, 0) {
                Ok(v) => Ok(v.iter().map(|s| s.suppressed).sum()),
                // Pins of an older version may have fewer slots: nothing counted there.
                Err(aya::maps::MapError::OutOfBounds { .. }) => Ok(0),
                Err(e) => Err(map_err("palisade_pod_ratelimit")(e)),
            }
        };
        out.events_suppressed.insert(0, suppressed(0)?);
        for (ifindex, v) in &self.state.endpoints {
            out.events_suppressed.insert(*ifindex, suppressed(v.slot)?);
        }
        for (i, s) in out.stats.iter_mut().enumerate() {
            *s = self
                .stats
                .get(&(i as u32), 0)
                .map_err(map_err("palisade_stats"))?
                .iter()
                .sum();
        }
        Ok(out)
    }

    /// Verifier cost and size of each program: `(name, verified instructions,
    /// translated bytes, jited bytes)`, a number to compare over time.
    pub fn program_stats(&mut self) -> Result<Vec<(&'static str, u32, u32, u32)>> {
        let mut out = Vec::new();
        for hook in [Hook::FromPod, Hook::ToPod, Hook::Noop] {
            let name = hook.name();
            let info = self.classifier(hook)?.info().map_err(prog_err(name))?;
            out.push((
                name,
                info.verified_instruction_count().unwrap_or(0),
                info.size_translated().unwrap_or(0),
                info.size_jitted(),
            ));
        }
        Ok(out)
    }

    /// Hands out the ring-buffer reader (once per process).
    pub fn events(&mut self) -> Result<EventReader> {
        self.events
            .take()
            .map(|ring| EventReader { ring })
            .ok_or(Error::EventsTaken)
    }

    fn dump_table(&self, id: TableId) -> Result<TableDump> {
        let mut entries = Vec::new();
        for kv in self.policy.iter() {
            let (k, v) = kv.map_err(map_err("palisade_policy"))?;
            let k = abi::PolicyKey::from_lpm(&k);
            if k.table == id {
                entries.push((k, v));
            }
        }
        Ok(TableDump {
            id,
            table: maps::decode_entries(entries.iter().map(|(k, v)| (k, v))),
        })
    }

    /// `palisade_policy_parts` as the kernel holds it, by (table, peer, proto class).
    pub fn dump_policy_parts(
        &self,
    ) -> Result<BTreeMap<(TableId, IdentityId, u8), abi::PolicyPart>> {
        let mut out = BTreeMap::new();
        for kv in self.policy_parts.iter() {
            let (k, v) = kv.map_err(map_err("palisade_policy_parts"))?;
            out.insert((k.table, k.peer, k.proto), v);
        }
        Ok(out)
    }

    /// Checks the kernel's derived maps against their sources, reading both
    /// from the kernel: every partition in `palisade_policy_parts` equals the
    /// one computed from its `palisade_policy` entries (and exists iff it has
    /// entries), and no host prefix sits in an LPM trie. Returns one line per
    /// mismatch (empty = consistent).
    pub fn check_derived_maps(&self) -> Result<Vec<String>> {
        let mut by_part: BTreeMap<(TableId, IdentityId, u8), Vec<maps::PartEntry>> =
            BTreeMap::new();
        for kv in self.policy.iter() {
            let (k, v) = kv.map_err(map_err("palisade_policy"))?;
            let k = abi::PolicyKey::from_lpm(&k);
            by_part
                .entry((k.table, k.peer, k.proto))
                .or_default()
                .push((
                    u16::from_be(k.dport),
                    (k.prefixlen - abi::POLICY_FIXED_BITS) as u8,
                    v,
                ));
        }
        let mut kernel = BTreeMap::new();
        for kv in self.policy_parts.iter() {
            let (k, v) = kv.map_err(map_err("palisade_policy_parts"))?;
            kernel.insert((k.table, k.peer, k.proto), v);
        }
        let mut bad = Vec::new();
        for (pk, entries) in &by_part {
            let want = maps::policy_part(entries);
            match kernel.remove(pk) {
                Some(got) if got == want => {}
                got => bad.push(format!(
                    "partition {pk:?}: kernel {got:?}, entries say {want:?}"
                )),
            }
        }
        for pk in kernel.keys() {
            bad.push(format!("partition {pk:?} has no policy entries"));
        }
        for kv in self.addr4.iter() {
            let (k, _) = kv.map_err(map_err("palisade_addr4"))?;
            if k.prefix_len() == 32 {
                bad.push(format!("host {:?} in palisade_addr4", k.data()));
            }
        }
        for kv in self.addr6.iter() {
            let (k, _) = kv.map_err(map_err("palisade_addr6"))?;
            if k.prefix_len() == 128 {
                bad.push(format!("host {:?} in palisade_addr6", k.data()));
            }
        }
        Ok(bad)
    }

    /// What the kernel enforces on one interface, decoded into policy terms
    /// (read from the maps, not from the mirror).
    pub fn dump_endpoint(&self, ifindex: u32) -> Result<EndpointDump> {
        let v = self
            .endpoints
            .get(&ifindex, 0)
            .map_err(map_err("palisade_endpoints"))?;
        Ok(EndpointDump {
            ifindex,
            pod: self
                .state
                .bindings
                .iter()
                .find(|(_, i)| **i == ifindex)
                .map(|(p, _)| p.clone()),
            ips: maps::endpoint_ips(&v),
            slot: v.slot,
            flags: v.flags,
            generation: v.generation,
            ingress: self.dump_table(v.ingress_table)?,
            egress: self.dump_table(v.egress_table)?,
        })
    }

    /// Whether both links of interface `ifindex` are pinned: a cheap check (two
    /// stats) that an attach done earlier was not undone since (an unpinned TCX link
    /// is detached). [`Datapath::attachment`] asks the kernel itself.
    pub fn links_pinned(&self, ifindex: u32) -> bool {
        [Hook::FromPod, Hook::ToPod]
            .into_iter()
            .all(|h| link_pin(&self.root, ifindex, h).exists())
    }

    /// Which programs the kernel runs on interface `ifindex`, and whether it has an
    /// endpoint entry. Needs TCX (kernel 6.6+): on older kernels, where the programs
    /// are clsact filters, the query fails with an error rather than guessing.
    pub fn attachment(&mut self, ifindex: u32) -> Result<Attachment> {
        let endpoint_entry = match self.endpoints.get(&ifindex, 0) {
            Ok(_) => true,
            Err(MapError::KeyNotFound) => false,
            Err(e) => return Err(map_err("palisade_endpoints")(e)),
        };
        let Ok(ifname) = ifname_of(ifindex) else {
            return Ok(Attachment {
                ifindex,
                ifname: None,
                endpoint_entry,
                hooks: Vec::new(),
            });
        };
        let mut hooks = Vec::new();
        for (hook, at) in [
            (Hook::FromPod, TcAttachType::Ingress),
            (Hook::ToPod, TcAttachType::Egress),
        ] {
            let name = hook.name();
            let ours = self.classifier(hook)?.info().map_err(prog_err(name))?.id();
            let (_, programs) = SchedClassifier::query_tcx(&ifname, at).map_err(prog_err(name))?;
            hooks.push(HookAttachment {
                hook: name,
                programs: programs.iter().map(|p| p.id()).collect(),
                ours,
            });
        }
        Ok(Attachment {
            ifindex,
            ifname: Some(ifname),
            endpoint_entry,
            hooks,
        })
    }

    /// The address maps as the kernel holds them: the LPM tries' prefixes and
    /// the host maps' /32 and /128 together.
    pub fn dump_addresses(&self) -> Result<BTreeMap<IpNet, IdentityId>> {
        let mut out = BTreeMap::new();
        for kv in self.hosts4.iter() {
            let (k, v) = kv.map_err(map_err("palisade_hosts4"))?;
            out.insert(IpNet::from(IpAddr::from(k)), v.identity);
        }
        for kv in self.hosts6.iter() {
            let (k, v) = kv.map_err(map_err("palisade_hosts6"))?;
            out.insert(IpNet::from(IpAddr::from(k.addr)), v.identity);
        }
        for kv in self.addr4.iter() {
            let (k, v) = kv.map_err(map_err("palisade_addr4"))?;
            out.insert(
                addr_net(&AddrKey::V4(abi::Addr4Key {
                    prefixlen: k.prefix_len(),
                    addr: k.data(),
                })),
                v.identity,
            );
        }
        for kv in self.addr6.iter() {
            let (k, v) = kv.map_err(map_err("palisade_addr6"))?;
            out.insert(
                addr_net(&AddrKey::V6(abi::Addr6Key {
                    prefixlen: k.prefix_len(),
                    addr: k.data(),
                })),
                v.identity,
            );
        }
        Ok(out)
    }
}
