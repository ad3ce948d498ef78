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
//! | `palisade_addr4`, `palisade_addr6` | LPM trie | prefix → identity | peers and CIDRs (with `except` holes as more specific prefixes) collapse into one identity per packet, O(prefix bits) whatever the policy count |
//! | `palisade_policy` | LPM trie | (table, peer, proto class, dport prefix) → action, rule | port ranges become ≤30 prefixes each; one trie lookup per packet (+1 for the IDENTITY_ANY fallback); tables are shared by every pod with the same policy |
//! | `palisade_conntrack` | LRU hash | (ifindex, family, proto, pod addr/port, peer addr/port) → state, times, rule | keyed from the pod's side, so a flow and its replies share one entry and one lookup; LRU so a full table evicts instead of failing |
//! | `palisade_frags` | LRU hash | (ifindex, id, proto, dir, src, dst) → ports | later fragments carry no ports: they follow their first fragment |
//! | `palisade_counters` | per-CPU array | slot × direction × reason → packets | no atomics, no map writes on the hot path; slot 0 = unknown interface |
//! | `palisade_stats` | per-CPU array | stat → count | conntrack and event health |
//! | `palisade_config`, `palisade_ratelimit` | array, per-CPU array | log mode, sampling, token bucket | runtime knobs without reloading |
//! | `palisade_events` | ring buffer | decision events | rate-limited per CPU so floods cannot starve userspace |
//!
//! Per-packet cost is therefore a fixed number of lookups (endpoint, conntrack,
//! and for new flows identity + 1-2 policy lookups), independent of the number of
//! policies, rules, peers or CIDRs; see [`bench::bench_datapath`].
//!
//! ## Consistency
//!
//! Every update is planned first on a copy of the userspace mirror of the maps;
//! an update that would overflow any map at any point is rejected before the
//! first write ([`Error::Capacity`]). Writes go new-state-first, endpoint
//! switches (one write each), removals last, so the kernel never sees an
//! endpoint pointing at a missing table. Established flows are re-checked when
//! their endpoint's table changes, so a policy change also cuts flows it denies.
//!
//! ## Restarts and upgrades
//!
//! Maps, programs and TCX links are pinned under a root (default
//! [`DEFAULT_PIN_ROOT`]). A restarted agent adopts the pinned maps with their
//! contents (nothing is flushed), reloads the programs and switches every pinned
//! link to them atomically (`BPF_LINK_UPDATE`). Pod ↔ interface bindings live in
//! the agent: it re-`attach`es its pods, then `sync`s; endpoint entries of
//! interfaces not re-bound yet keep enforcing their previous tables.
#![deny(missing_docs)]

pub mod abi;
pub mod bench;
mod loader;
pub mod maps;
pub mod packet;
pub mod reference;
mod state;

pub use bench::{bench_datapath, BenchOptions, BenchPoint, BenchReport};
pub use loader::{
    ifindex_of, object_bytes, reason_name, unpin_all_at, Counters, Datapath, DecisionEvent,
    EndpointCounters, EndpointDump, Error, EventReader, Hook, MapSizes, TableDump,
    DEFAULT_PIN_ROOT, MAP_NAMES,
};
