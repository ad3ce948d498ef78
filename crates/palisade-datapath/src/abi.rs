//! Rust mirrors of `bpf/include/palisade_abi.h`, the one definition of every
//! layout shared with the eBPF programs.
//!
//! Hand-mirrored `#[repr(C)]` types (bindgen would add a libclang build step on a
//! 2-core machine shared by five engineers); every struct carries `const` size and
//! offset asserts, and the integration test `abi::abi_layouts_match_btf` compares
//! them against the BTF of the compiled object, so a drift fails the build or CI.
//! Each C `struct foo_bar` is `FooBar` here; C enum members `PALISADE_FOO` are
//! `u32`/`u8` constants `FOO`, listed in [`CONSTANTS`] and compared with the
//! object's values by `abi::abi_constants_match_btf`.

#![allow(missing_docs)] // every item mirrors a documented C declaration of the same name

use std::mem::{offset_of, size_of};

/// `enum palisade_limits`
pub const MAX_IPS4: usize = 4;
pub const MAX_IPS6: usize = 4;
pub const IPV6_MAX_EXT: usize = 4;
/// Bits of `policy_key` after `prefixlen` that are always matched (table+peer+proto+pad).
pub const POLICY_FIXED_BITS: u32 = 80;
/// Port segments a `policy_part` holds inline.
pub const PART_INLINE: usize = 8;

/// `enum palisade_dir`
pub const DIR_EGRESS: u32 = 0;
pub const DIR_INGRESS: u32 = 1;
pub const DIR_NR: usize = 2;

/// `enum palisade_action`
pub const ACTION_ALLOW: u8 = 0;
pub const ACTION_DENY: u8 = 1;
/// `policy_part` segment without an entry (falls through like an LPM miss).
pub const ACTION_NONE: u8 = 2;

/// `enum palisade_part_flags`
pub const PART_F_OVERFLOW: u8 = 1;

/// `enum palisade_reason`
pub const REASON_POLICY_ALLOW: u32 = 0;
pub const REASON_CT_ESTABLISHED: u32 = 1;
pub const REASON_CT_REPLY: u32 = 2;
pub const REASON_CT_RELATED: u32 = 3;
pub const REASON_FRAG_TRACKED: u32 = 4;
pub const REASON_NDP: u32 = 5;
pub const REASON_NON_IP: u32 = 6;
pub const REASON_FIRST_DROP: u32 = 7;
pub const REASON_POLICY_DENY: u32 = 7;
pub const REASON_NO_ENDPOINT: u32 = 8;
pub const REASON_SPOOF: u32 = 9;
pub const REASON_MALFORMED: u32 = 10;
pub const REASON_FRAG_NO_STATE: u32 = 11;
pub const REASON_IPV6_EXT_LIMIT: u32 = 12;
pub const REASON_NO_IDENTITY: u32 = 13;
pub const REASON_NO_TABLE: u32 = 14;
pub const REASON_VLAN: u32 = 15;
pub const REASON_SVC_NO_BACKEND: u32 = 16;
pub const REASON_SVC_UNTRANSLATED_DENY: u32 = 17;
pub const REASON_SVC_NO_REVNAT: u32 = 18;
pub const REASON_NR: usize = 19;

/// `enum palisade_stat`
pub const STAT_CT_CREATED: u32 = 0;
pub const STAT_CT_CREATE_FAILED: u32 = 1;
pub const STAT_CT_EXPIRED: u32 = 2;
pub const STAT_CT_RECHECKED: u32 = 3;
pub const STAT_CT_REVOKED: u32 = 4;
pub const STAT_FRAG_TRACKED: u32 = 5;
pub const STAT_EVENTS_SENT: u32 = 6;
pub const STAT_EVENTS_RATE_LIMITED: u32 = 7;
pub const STAT_EVENTS_RING_FULL: u32 = 8;
pub const STAT_SVC_TRANSLATED: u32 = 9;
pub const STAT_SVC_REVERSED: u32 = 10;
pub const STAT_SVC_UNTRANSLATED: u32 = 11;
pub const STAT_NR: usize = 12;

/// `enum palisade_log_mode`
pub const LOG_OFF: u32 = 0;
pub const LOG_DENIES: u32 = 1;
pub const LOG_ALL: u32 = 2;

/// `enum palisade_endpoint_flags`
pub const EP_F_NO_SPOOF_CHECK: u32 = 1;
pub const EP_F_LOG_ALL: u32 = 2;

/// `enum palisade_config_flags`
pub const CFG_F_NO_CT_CREATE: u32 = 1;
/// Established flows are not re-judged when their table or the policy epoch changes.
pub const CFG_F_NO_REVOKE: u32 = 2;

/// `enum palisade_svc_limits`: backends the fail-closed rule checks.
pub const SVC_MAX_CHECK: usize = 64;

/// `enum palisade_svc_flags`
pub const SVC_F_AFFINITY: u8 = 1;
pub const SVC_F_UNTRANSLATED: u8 = 2;

/// `enum palisade_ct_flags`
pub const CT_F_SVC_ALL: u8 = 1;

/// `enum palisade_ct_state`
pub const CT_SYN_SENT: u8 = 1;
pub const CT_ESTABLISHED: u8 = 2;
pub const CT_CLOSING: u8 = 3;
pub const CT_OPEN: u8 = 4;
/// TCP or SCTP flow cut by a re-judgement: drops both ways until a new SYN or a later epoch allows it.
pub const CT_REVOKED: u8 = 5;

/// `enum palisade_ct_timeouts`, seconds.
pub const CT_SYN_TIMEOUT_S: u64 = 60;
pub const CT_TCP_TIMEOUT_S: u64 = 21600;
pub const CT_CLOSE_TIMEOUT_S: u64 = 10;
pub const CT_OTHER_TIMEOUT_S: u64 = 60;
pub const CT_REVOKED_TIMEOUT_S: u64 = 21600;

/// `enum palisade_counters_layout`: counter rows per endpoint slot in
/// `palisade_counters` (direction x reason).
pub const COUNTERS_PER_SLOT: usize = DIR_NR * REASON_NR;

/// `enum palisade_tc_verdict`: pod-direction programs' verdicts as returned by
/// the kernel (`TC_ACT_UNSPEC`, i.e. TCX_NEXT; -1 as the kernel's `int`).
pub const TC_ACT_UNSPEC: u32 = u32::MAX;
/// Drop (`TC_ACT_SHOT`).
pub const TC_ACT_SHOT: u32 = 2;

/// `(Rust name, value)` of an ABI constant. The C enum member is `PALISADE_<name>`.
pub type Constant = (&'static str, u64);

macro_rules! constants {
    ($($c:ident),* $(,)?) => {
        &[$((stringify!($c), $c as u64)),*]
    };
}

/// Every constant above, for the BTF test `abi::abi_constants_match_btf`: it
/// compares each value with the object's enum member `PALISADE_<name>`, and
/// fails if a `pub const` of this file is missing here. A new constant is one
/// more name in this list.
pub const CONSTANTS: &[Constant] = constants![
    MAX_IPS4,
    MAX_IPS6,
    IPV6_MAX_EXT,
    POLICY_FIXED_BITS,
    PART_INLINE,
    DIR_EGRESS,
    DIR_INGRESS,
    DIR_NR,
    ACTION_ALLOW,
    ACTION_DENY,
    ACTION_NONE,
    PART_F_OVERFLOW,
    REASON_POLICY_ALLOW,
    REASON_CT_ESTABLISHED,
    REASON_CT_REPLY,
    REASON_CT_RELATED,
    REASON_FRAG_TRACKED,
    REASON_NDP,
    REASON_NON_IP,
    REASON_FIRST_DROP,
    REASON_POLICY_DENY,
    REASON_NO_ENDPOINT,
    REASON_SPOOF,
    REASON_MALFORMED,
    REASON_FRAG_NO_STATE,
    REASON_IPV6_EXT_LIMIT,
    REASON_NO_IDENTITY,
    REASON_NO_TABLE,
    REASON_VLAN,
    REASON_SVC_NO_BACKEND,
    REASON_SVC_UNTRANSLATED_DENY,
    REASON_SVC_NO_REVNAT,
    REASON_NR,
    STAT_CT_CREATED,
    STAT_CT_CREATE_FAILED,
    STAT_CT_EXPIRED,
    STAT_CT_RECHECKED,
    STAT_CT_REVOKED,
    STAT_FRAG_TRACKED,
    STAT_EVENTS_SENT,
    STAT_EVENTS_RATE_LIMITED,
    STAT_EVENTS_RING_FULL,
    STAT_SVC_TRANSLATED,
    STAT_SVC_REVERSED,
    STAT_SVC_UNTRANSLATED,
    STAT_NR,
    LOG_OFF,
    LOG_DENIES,
    LOG_ALL,
    EP_F_NO_SPOOF_CHECK,
    EP_F_LOG_ALL,
    CFG_F_NO_CT_CREATE,
    CFG_F_NO_REVOKE,
    SVC_MAX_CHECK,
    SVC_F_AFFINITY,
    SVC_F_UNTRANSLATED,
    CT_F_SVC_ALL,
    CT_SYN_SENT,
    CT_ESTABLISHED,
    CT_CLOSING,
    CT_OPEN,
    CT_REVOKED,
    CT_SYN_TIMEOUT_S,
    CT_TCP_TIMEOUT_S,
    CT_CLOSE_TIMEOUT_S,
    CT_OTHER_TIMEOUT_S,
    CT_REVOKED_TIMEOUT_S,
    COUNTERS_PER_SLOT,
    TC_ACT_UNSPEC,
    TC_ACT_SHOT,
];

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct EndpointValue {
    pub ingress_table: u32,
    pub egress_table: u32,
    pub slot: u32,
    pub flags: u32,
    pub n_ipv4: u8,
    pub n_ipv6: u8,
    pub pad: [u8; 2],
    /// Network order (the in-memory bytes are the address octets).
    pub ipv4: [[u8; 4]; MAX_IPS4],
    pub ipv6: [[u8; 16]; MAX_IPS6],
    pub pad2: u32,
    pub generation: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Addr4Key {
    pub prefixlen: u32,
    pub addr: [u8; 4],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Addr6Key {
    pub prefixlen: u32,
    pub addr: [u8; 16],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct AddrValue {
    pub identity: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    pub prefixlen: u32,
    pub table: u32,
    pub peer: u32,
    pub proto: u8,
    pub pad: u8,
    /// Network order.
    pub dport: u16,
}

/// `policy_key` without `prefixlen`: the `data` of aya's `lpm_trie::Key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyMatch {
    pub table: u32,
    pub peer: u32,
    pub proto: u8,
    pub pad: u8,
    /// Network order.
    pub dport: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct PolicyValue {
    pub rule_id: u32,
    pub action: u8,
    pub pad: [u8; 3],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Host6Key {
    /// Network order.
    pub addr: [u8; 16],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyPartKey {
    pub table: u32,
    pub peer: u32,
    pub proto: u8,
    pub pad: [u8; 3],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct PolicyPart {
    pub n: u8,
    pub flags: u8,
    pub pad: u16,
    /// Host order.
    pub port_lo: [u16; PART_INLINE],
    pub rule_id: [u32; PART_INLINE],
    pub action: [u8; PART_INLINE],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub ifindex: u32,
    pub family: u8,
    pub proto: u8,
    pub pad: u16,
    pub pod_addr: [u8; 16],
    pub peer_addr: [u8; 16],
    /// Network order.
    pub pod_port: u16,
    /// Network order.
    pub peer_port: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CtValue {
    pub created_ns: u64,
    pub last_seen_ns: u64,
    pub rule_id: u32,
    pub table: u32,
    pub identity: u32,
    pub state: u8,
    pub origin_dir: u8,
    pub tcp_fin: u8,
    /// `CT_F_*`
    pub flags: u8,
    /// `palisade_epoch[0]` the flow was last judged under; 0 = never.
    pub epoch: u32,
    /// Translated flows: the frontend's reverse-translation id; 0 = none.
    pub frontend_id: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SvcFrontendKey {
    /// Network order; IPv4 in the first 4 bytes.
    pub addr: [u8; 16],
    /// Network order.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SvcFrontendValue {
    pub id: u32,
    pub set: u32,
    pub count: u16,
    pub flags: u8,
    pub pad: u8,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SvcBackendKey {
    pub set: u32,
    pub index: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SvcAddr {
    /// Network order; IPv4 in the first 4 bytes.
    pub addr: [u8; 16],
    /// Network order.
    pub port: u16,
    pub pad: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SvcFlowValue {
    pub backend: SvcAddr,
    pub frontend_id: u32,
    pub last_seen_ns: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub ifindex: u32,
    pub id: u32,
    pub family: u8,
    pub proto: u8,
    pub dir: u8,
    pub pad: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct FragValue {
    pub sport: u16,
    pub dport: u16,
    pub pad: u32,
    pub created_ns: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Config {
    pub log_mode: u32,
    pub flags: u32,
    pub sample_allow: u32,
    pub events_per_sec: u32,
    pub events_burst: u32,
    pub pod_events_per_sec: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RatelimitState {
    pub tokens: u64,
    pub last_ns: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct PodRatelimitState {
    pub tokens: u64,
    pub last_ns: u64,
    pub suppressed: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Event {
    pub ts_ns: u64,
    pub ifindex: u32,
    pub rule_id: u32,
    pub identity: u32,
    pub table: u32,
    pub dir: u8,
    pub action: u8,
    pub reason: u8,
    pub family: u8,
    pub proto: u8,
    pub tcp_flags: u8,
    pub pad: u16,
    pub sport: u16,
    pub dport: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub pad2: u32,
}

// SAFETY: all of these are #[repr(C)], made only of integers and arrays of
// integers, with explicit padding (checked by the asserts below): every bit
// pattern is valid and there are no uninitialised bytes.
unsafe impl aya::Pod for EndpointValue {}
unsafe impl aya::Pod for Addr4Key {}
unsafe impl aya::Pod for Addr6Key {}
unsafe impl aya::Pod for AddrValue {}
unsafe impl aya::Pod for PolicyKey {}
unsafe impl aya::Pod for PolicyMatch {}
unsafe impl aya::Pod for PolicyValue {}
unsafe impl aya::Pod for Host6Key {}
unsafe impl aya::Pod for PolicyPartKey {}
unsafe impl aya::Pod for PolicyPart {}
unsafe impl aya::Pod for CtKey {}
unsafe impl aya::Pod for CtValue {}
unsafe impl aya::Pod for SvcFrontendKey {}
unsafe impl aya::Pod for SvcFrontendValue {}
unsafe impl aya::Pod for SvcBackendKey {}
unsafe impl aya::Pod for SvcAddr {}
unsafe impl aya::Pod for SvcFlowValue {}
unsafe impl aya::Pod for FragKey {}
unsafe impl aya::Pod for FragValue {}
unsafe impl aya::Pod for Config {}
unsafe impl aya::Pod for RatelimitState {}
unsafe impl aya::Pod for PodRatelimitState {}
unsafe impl aya::Pod for Event {}

/// `(C struct name, Rust size, [(field, Rust offset)])` for every ABI struct; the
/// BTF test walks this table (cilium's alignchecker does the same).
pub type Layout = (&'static str, usize, &'static [(&'static str, usize)]);

macro_rules! layout {
    ($c:literal, $t:ty, [$($f:ident),* $(,)?]) => {
        ($c, size_of::<$t>(), &[$((stringify!($f), offset_of!($t, $f))),*])
    };
}

/// Every shared struct's layout, as the Rust side sees it.
pub const LAYOUTS: &[Layout] = &[
    layout!(
        "endpoint_value",
        EndpointValue,
        [
            ingress_table,
            egress_table,
            slot,
            flags,
            n_ipv4,
            n_ipv6,
            pad,
            ipv4,
            ipv6,
            pad2,
            generation
        ]
    ),
    layout!("addr4_key", Addr4Key, [prefixlen, addr]),
    layout!("addr6_key", Addr6Key, [prefixlen, addr]),
    layout!("addr_value", AddrValue, [identity]),
    layout!(
        "policy_key",
        PolicyKey,
        [prefixlen, table, peer, proto, pad, dport]
    ),
    layout!("policy_value", PolicyValue, [rule_id, action, pad]),
    layout!("host6_key", Host6Key, [addr]),
    layout!("policy_part_key", PolicyPartKey, [table, peer, proto, pad]),
    layout!(
        "policy_part",
        PolicyPart,
        [n, flags, pad, port_lo, rule_id, action]
    ),
    layout!(
        "ct_key",
        CtKey,
        [ifindex, family, proto, pad, pod_addr, peer_addr, pod_port, peer_port]
    ),
    layout!(
        "ct_value",
        CtValue,
        [
            created_ns,
            last_seen_ns,
            rule_id,
            table,
            identity,
            state,
            origin_dir,
            tcp_fin,
            flags,
            epoch,
            frontend_id
        ]
    ),
    layout!(
        "svc_frontend_key",
        SvcFrontendKey,
        [addr, port, proto, family]
    ),
    layout!(
        "svc_frontend_value",
        SvcFrontendValue,
        [id, set, count, flags, pad]
    ),
    layout!("svc_backend_key", SvcBackendKey, [set, index]),
    layout!("svc_addr", SvcAddr, [addr, port, pad]),
    layout!(
        "svc_flow_value",
        SvcFlowValue,
        [backend, frontend_id, last_seen_ns]
    ),
    layout!(
        "frag_key",
        FragKey,
        [ifindex, id, family, proto, dir, pad, saddr, daddr]
    ),
    layout!("frag_value", FragValue, [sport, dport, pad, created_ns]),
    layout!(
        "config",
        Config,
        [
            log_mode,
            flags,
            sample_allow,
            events_per_sec,
            events_burst,
            pod_events_per_sec
        ]
    ),
    layout!("ratelimit_state", RatelimitState, [tokens, last_ns]),
    layout!(
        "pod_ratelimit_state",
        PodRatelimitState,
        [tokens, last_ns, suppressed]
    ),
    layout!(
        "event",
        Event,
        [
            ts_ns, ifindex, rule_id, identity, table, dir, action, reason, family, proto,
            tcp_flags, pad, sport, dport, saddr, daddr, pad2
        ]
    ),
];

// Compile-time guards: no implicit padding anywhere (sizes equal the sum of fields).
const _: () = {
    assert!(size_of::<EndpointValue>() == 112);
    assert!(offset_of!(EndpointValue, ipv4) == 20);
    assert!(offset_of!(EndpointValue, ipv6) == 36);
    assert!(offset_of!(EndpointValue, generation) == 104);
    assert!(size_of::<Addr4Key>() == 8);
    assert!(size_of::<Addr6Key>() == 20);
    assert!(size_of::<PolicyKey>() == 16);
    assert!(size_of::<PolicyMatch>() == 12);
    assert!(offset_of!(PolicyKey, dport) == 14);
    assert!(size_of::<PolicyValue>() == 8);
    assert!(size_of::<Host6Key>() == 16);
    assert!(size_of::<PolicyPartKey>() == 12);
    assert!(size_of::<PolicyPart>() == 60);
    assert!(offset_of!(PolicyPart, rule_id) == 20);
    assert!(offset_of!(PolicyPart, action) == 52);
    assert!(size_of::<CtKey>() == 44);
    assert!(offset_of!(CtKey, pod_port) == 40);
    assert!(size_of::<CtValue>() == 40);
    assert!(offset_of!(CtValue, epoch) == 32);
    assert!(size_of::<SvcFrontendKey>() == 20);
    assert!(size_of::<SvcFrontendValue>() == 12);
    assert!(size_of::<SvcBackendKey>() == 8);
    assert!(size_of::<SvcAddr>() == 20);
    assert!(size_of::<SvcFlowValue>() == 32);
    assert!(offset_of!(SvcFlowValue, last_seen_ns) == 24);
    assert!(size_of::<FragKey>() == 44);
    assert!(size_of::<FragValue>() == 16);
    assert!(size_of::<Config>() == 24);
    assert!(size_of::<RatelimitState>() == 16);
    assert!(size_of::<PodRatelimitState>() == 24);
    assert!(size_of::<Event>() == 72);
    assert!(offset_of!(Event, saddr) == 36);
};
