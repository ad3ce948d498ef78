//! # palisade-datapath: the eBPF programs and their loader
//!
//! Two TC programs in C (`bpf/palisade.bpf.c`) run on each pod's host-side veth:
//! `from_pod` (TC ingress = the pod's egress) and `to_pod` (TC egress = the pod's
//! ingress). This crate compiles them (build.rs, clang-19), loads and pins them
//! ([`Datapath::load_or_adopt`]), attaches them ([`Datapath::attach`], TCX links
//! pinned so enforcement survives the agent), and encodes the policy core's
//! compiled form ([`palisade_policy::compiled`]) into their maps
//! ([`Datapath::apply`], [`Datapath::sync`]). It does not compile policy, watch
//! Kubernetes or decide anything: the tables it receives hold final verdicts.
//!
//! Start reading at `bpf/include/palisade_abi.h` (every shared layout, commented
//! field by field), then `bpf/palisade.bpf.c` (the per-packet precedence list),
//! then [`Datapath`].
//!
//! ## Map layout, and why
//!
//! | map (pinned under `<root>/maps/`) | type | key → value | why |
//! |---|---|---|---|
//! | `palisade_endpoints` | hash | host ifindex → tables, counter slot, flags, own IPs | one lookup gives both tables; switching a pod's policy is ONE write |
//! | `palisade_hosts4`, `palisade_hosts6` | hash | host address (/32, /128: every pod) → identity | one exact-match lookup for pod peers, whatever the number of pods; a host prefix is the most specific match, so checking it first gives the LPM's answer |
//! | `palisade_addr4`, `palisade_addr6` | LPM trie | prefix shorter than /32, /128 → identity | CIDRs (with `except` holes as more specific prefixes) collapse into one identity per packet; consulted only when the host map misses, and kept small because pods are not in it |
//! | `palisade_policy_parts` | hash | (table, peer, proto class) → up to 8 port segments inline (verdict + rule each), or "overflow" | one hash lookup plus a bounded scan per (peer or IDENTITY_ANY fallback), flat in the number of entries; derived by the loader from `palisade_policy`, written after it, one write per partition change |
//! | `palisade_policy` | LPM trie | (table, peer, proto class, dport prefix) → action, rule | every table entry (port ranges become ≤30 prefixes each): read by the program only for overflow partitions (> 8 segments), and the source of dumps and of the partitions; tables are shared by every pod with the same policy |
//! | `palisade_conntrack` | LRU hash | (ifindex, family, proto, pod addr/port, peer addr/port) → state, times, rule | keyed from the pod's side, so a flow and its replies share one entry and one lookup; LRU so a full table evicts instead of failing |
//! | `palisade_frags` | LRU hash | (ifindex, id, proto, dir, src, dst) → ports | later fragments carry no ports: they follow their first fragment |
//! | `palisade_counters` | per-CPU array | slot × direction × reason → packets | no atomics, no map writes on the hot path; slot 0 = unknown interface |
//! | `palisade_stats` | per-CPU array | stat → count | conntrack and event health |
//! | `palisade_epoch` | array (1) | 0 → policy epoch (`u32`) | bumped by the loader after every batch of writes; a conntrack entry judged under another epoch is judged again, so identity and address changes cut flows as policy edits do |
//! | `palisade_config`, `palisade_ratelimit` | array, per-CPU array | log mode, sampling, the node's event token bucket | runtime knobs without reloading |
//! | `palisade_pod_ratelimit` | per-CPU array | slot → endpoint's event token bucket, suppressed count | one flooding pod cannot use up the node's event budget |
//! | `palisade_events` | ring buffer | decision events | rate-limited per CPU so floods cannot starve userspace |
//! | `palisade_svc_frontends` | hash | (addr, port, proto, family) → id, backend set, count, flags | Service translation (`bpf/lib/service.h`): looked up only by an egress packet without a conntrack entry of its own tuple, so established non-Service flows pay nothing; one write switches a frontend to a new backend list |
//! | `palisade_svc_backends` | hash | (set, index) → backend addr, port | a backend chosen by hash mod count: one lookup whatever the number of backends; a changed list is a new set |
//! | `palisade_svc_revnat` | hash | frontend id → frontend addr, port | replies get back the address the client sent to; the conntrack entry holds the id |
//! | `palisade_svc_flows` | LRU hash | packet's own tuple → backend | a flow keeps its backend when the frontend's backends change |
//!
//! Per-packet cost is therefore a fixed number of lookups (endpoint, conntrack,
//! the epoch array for tracked packets, and for new flows (or a tracked flow's
//! first packet under a new epoch) a host-map lookup (+ an LPM lookup for
//! non-pod peers) and 1-2 partition lookups), all hash or array lookups on the
//! common path, so it stays flat
//! in the number of policies, rules, peers or CIDRs; see [`mod@bench`] for the
//! figures and the per-stage profile.
//!
//! ## Consistency
//!
//! Every update is planned first on a copy of the userspace mirror of the maps;
//! an update that would overflow any map at any point is rejected before the
//! first write ([`Error::Capacity`]). Writes go new-state-first, endpoint
//! switches (one write each), removals last, so the kernel never sees an
//! endpoint pointing at a missing table. After the last write of a batch the
//! loader publishes a new policy epoch; an established flow whose entry holds
//! another epoch (or another table) is judged again on its next packet, exactly
//! as a new flow, and cut if now denied: a policy edit, a label change and an
//! address re-mapped to another identity all cut the flows they deny
//! (configurable: [`Datapath::set_revoke_established`]; docs/semantics.md).
//!
//! ## Restarts and upgrades
//!
//! Maps, programs and TCX links are pinned under a root (default
//! [`DEFAULT_PIN_ROOT`]). A restarted agent adopts the pinned maps with their
//! contents (nothing is flushed), reloads the programs and switches every pinned
//! link to them atomically (`BPF_LINK_UPDATE`). Pod ↔ interface bindings live in
//! the agent: it re-`attach`es its pods, then `sync`s; endpoint entries of
//! interfaces not re-bound yet keep enforcing their previous tables.
//!
//! ## Known limits (documented, tested where testable)
//!
//! - `from_pod` sees a Service's virtual IP before the host's DNAT, so it
//!   translates Services itself ([`Datapath::sync_services`]); SCTP frontends
//!   are not translated but judged by every backend (docs/semantics.md §10).
//! - Later fragments arriving before their first fragment are dropped
//!   (`frag-no-state`); IPv6 walks at most 4 extension headers
//!   (`ipv6-ext-limit`); ICMPv6 errors quoting a packet with extension headers
//!   are judged by policy instead of passing as related.
//! - Non-IP frames (ARP) pass; VLAN-tagged frames drop.
//! - A (table, peer, class) partition with more than 8 port segments (e.g. 4+
//!   single ports allowed amid a deny) overflows to the policy LPM: one more
//!   lookup whose depth grows with the number of entries.
//! - Conntrack and fragment timestamps use the coarse monotonic clock (tick
//!   resolution); timeouts are whole seconds, so no decision changes.
//! - The netlink fallback (kernels without TCX) cannot pin its filter: it stays
//!   attached across restarts but [`Datapath::detach`] cannot remove it.
//! - A new ABI (changed map layout) cannot adopt old pins: the programs fail to
//!   verify against a map of another value size, so `load_or_adopt` fails;
//!   uninstall ([`Datapath::unpin_all`]) first or migrate. The one migration
//!   done: a conntrack map from before `ct_value.epoch` is copied into the new
//!   layout on load (its flows are judged again on their next packet).
#![deny(missing_docs)]

pub mod abi;
pub mod bench;
mod inspect;
mod loader;
pub mod maps;
pub mod packet;
mod resize;
mod services;
mod staging;
mod state;

pub use bench::{bench_datapath, BenchOptions, BenchPoint, BenchReport, RoundFigures};
pub use inspect::{
    decode_record, reason_name, Attachment, Counters, DecisionEvent, EndpointCounters,
    EndpointDump, EventReader, HookAttachment, TableDump,
};
pub use resize::Resize;
/// One Service frontend as the kernel holds it ([`Datapath::service_entries`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServiceEntry {
    /// Frontend address.
    pub addr: std::net::IpAddr,
    /// Frontend port.
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// Reverse-translation id.
    pub id: u32,
    /// `abi::SVC_F_*`.
    pub flags: u8,
    /// Backends in index order: address and target port.
    pub backends: Vec<(std::net::IpAddr, u16)>,
}

pub use loader::{
    ifindex_of, object_bytes, unpin_all_at, AfterWrite, Datapath, Error, Hook, MapSizes,
    DEFAULT_PIN_ROOT, MAP_NAMES,
};
