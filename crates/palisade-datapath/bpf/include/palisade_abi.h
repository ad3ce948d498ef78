/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * palisade_abi.h: the ONE definition of every struct and constant shared between
 * the eBPF programs (bpf/palisade.bpf.c) and the Rust loader (src/abi.rs).
 *
 * Rules (see STYLE.md "How C and Rust share struct layouts"):
 *  - only __u8/__u16/__u32/__u64, explicit pad fields, no bitfields, no bool;
 *  - constants are enum members; index enums end with an _NR sentinel;
 *  - byte order is stated on every multi-byte field: "be" = network order,
 *    everything else is host order.
 * src/abi.rs mirrors each struct as #[repr(C)] with size/offset asserts and the
 * test `abi_layouts_match_btf` compares both against this object's BTF; it
 * mirrors each enum member as a constant and `abi_constants_match_btf` compares
 * every one with the object's value (struct palisade_abi_enums below).
 */
#ifndef PALISADE_ABI_H
#define PALISADE_ABI_H

#include <linux/types.h>
#include <linux/pkt_cls.h>

/* Sizing limits baked into the layouts below. */
enum palisade_limits {
	/* IPv4 addresses per endpoint checked by anti-spoofing (count). */
	PALISADE_MAX_IPS4 = 4,
	/* IPv6 addresses per endpoint checked by anti-spoofing (count). */
	PALISADE_MAX_IPS6 = 4,
	/* IPv6 extension headers walked before giving up (count); a packet with
	 * more is dropped with PALISADE_REASON_IPV6_EXT_LIMIT. */
	PALISADE_IPV6_MAX_EXT = 4,
	/* Fixed part of a policy_key after prefixlen, in bits: table(32) + peer(32)
	 * + proto(8) + pad(8). A key's prefixlen is this plus the port prefix (0..16). */
	PALISADE_POLICY_FIXED_BITS = 80,
	/* Port segments a policy_part holds inline (count); a partition with more
	 * segments is marked PALISADE_PART_F_OVERFLOW and answered by the LPM. */
	PALISADE_PART_INLINE = 8,
};

/* Direction, named from the pod's point of view. */
enum palisade_dir {
	/* Traffic leaving the pod: program from_pod, TC ingress on the host veth. */
	PALISADE_DIR_EGRESS = 0,
	/* Traffic towards the pod: program to_pod, TC egress on the host veth. */
	PALISADE_DIR_INGRESS = 1,
	PALISADE_DIR_NR = 2,
};

/* What a policy entry says. */
enum palisade_action {
	PALISADE_ACTION_ALLOW = 0,
	PALISADE_ACTION_DENY = 1,
	/* policy_part only: no entry covers this segment (a gap), so the lookup
	 * falls through exactly as an LPM miss would. Never in policy_value. */
	PALISADE_ACTION_NONE = 2,
};

/* policy_part.flags */
enum palisade_part_flags {
	/* Too many segments to inline: look the port up in palisade_policy. */
	PALISADE_PART_F_OVERFLOW = 1,
};

/*
 * Why a packet got its verdict. Reasons below PALISADE_REASON_FIRST_DROP pass,
 * the others drop. Counted per endpoint slot and direction (palisade_counters).
 */
enum palisade_reason {
	/* New flow allowed by a policy entry (conntrack entry created). */
	PALISADE_REASON_POLICY_ALLOW = 0,
	/* Packet of a tracked flow, in the direction that created it. */
	PALISADE_REASON_CT_ESTABLISHED = 1,
	/* Reply of a tracked flow. */
	PALISADE_REASON_CT_REPLY = 2,
	/* ICMP/ICMPv6 error whose inner header belongs to a tracked flow. */
	PALISADE_REASON_CT_RELATED = 3,
	/* Non-first IP fragment of a datagram whose first fragment passed. */
	PALISADE_REASON_FRAG_TRACKED = 4,
	/* ICMPv6 neighbour discovery (types 133..137): always passes. */
	PALISADE_REASON_NDP = 5,
	/* Not IP (ARP, LLDP...): passes, the policy model is L3/L4 only. */
	PALISADE_REASON_NON_IP = 6,
	/* First drop reason; everything from here on drops. */
	PALISADE_REASON_FIRST_DROP = 7,
	/* A policy entry (or default deny) denies the new flow. */
	PALISADE_REASON_POLICY_DENY = 7,
	/* No endpoint entry for the interface: fail closed. */
	PALISADE_REASON_NO_ENDPOINT = 8,
	/* from_pod: source address is not one of the endpoint's addresses. */
	PALISADE_REASON_SPOOF = 9,
	/* Truncated or inconsistent L2/L3/L4 headers. */
	PALISADE_REASON_MALFORMED = 10,
	/* Non-first fragment without a tracked first fragment. */
	PALISADE_REASON_FRAG_NO_STATE = 11,
	/* More than PALISADE_IPV6_MAX_EXT IPv6 extension headers. */
	PALISADE_REASON_IPV6_EXT_LIMIT = 12,
	/* Peer address matched no identity prefix (address map incomplete). */
	PALISADE_REASON_NO_IDENTITY = 13,
	/* The endpoint's table has no entry for the packet, not even IDENTITY_ANY
	 * (table missing): fail closed. */
	PALISADE_REASON_NO_TABLE = 14,
	/* VLAN-tagged frame from/to a pod: not supported, dropped so tags cannot
	 * smuggle IP past the policy. */
	PALISADE_REASON_VLAN = 15,
	/* A Service frontend with no backend (kube-proxy rejects it too). */
	PALISADE_REASON_SVC_NO_BACKEND = 16,
	/* A Service frontend that cannot be translated exactly (SCTP, or a
	 * frontend whose only backend is the client itself), judged by the
	 * fail-closed rule: some backend is denied (or more than
	 * PALISADE_SVC_MAX_CHECK backends, or a backend entry is missing). */
	PALISADE_REASON_SVC_UNTRANSLATED_DENY = 17,
	/* The reply of a translated flow whose frontend is gone: it cannot be
	 * given back the address the client sent to. */
	PALISADE_REASON_SVC_NO_REVNAT = 18,
	PALISADE_REASON_NR = 19,
};

/* Global per-CPU statistics (palisade_stats), not per endpoint. */
enum palisade_stat {
	/* Conntrack entries created. */
	PALISADE_STAT_CT_CREATED = 0,
	/* Conntrack inserts that failed (should stay 0: the map is LRU and evicts
	 * the least recently used entry instead of failing). */
	PALISADE_STAT_CT_CREATE_FAILED = 1,
	/* Conntrack entries found expired and replaced. */
	PALISADE_STAT_CT_EXPIRED = 2,
	/* Established flows re-judged because what judged them may have changed:
	 * the endpoint's table, or the policy epoch (palisade_epoch). */
	PALISADE_STAT_CT_RECHECKED = 3,
	/* Established flows cut because the re-judgement denies them. */
	PALISADE_STAT_CT_REVOKED = 4,
	/* First fragments recorded in palisade_frags. */
	PALISADE_STAT_FRAG_TRACKED = 5,
	/* Events written to the ring buffer. */
	PALISADE_STAT_EVENTS_SENT = 6,
	/* Events suppressed by a per-CPU token bucket: the node's, or an endpoint's
	 * (palisade_pod_ratelimit counts those per endpoint too). */
	PALISADE_STAT_EVENTS_RATE_LIMITED = 7,
	/* Events lost because the ring buffer was full. */
	PALISADE_STAT_EVENTS_RING_FULL = 8,
	/* New flows to a Service frontend translated to a backend. */
	PALISADE_STAT_SVC_TRANSLATED = 9,
	/* Replies of translated flows given back the frontend's address. */
	PALISADE_STAT_SVC_REVERSED = 10,
	/* New flows to a frontend judged by the fail-closed rule (not translated). */
	PALISADE_STAT_SVC_UNTRANSLATED = 11,
	PALISADE_STAT_NR = 12,
};

/* config.log_mode */
enum palisade_log_mode {
	PALISADE_LOG_OFF = 0,
	/* Every dropped packet. */
	PALISADE_LOG_DENIES = 1,
	/* Drops plus every new flow allowed by policy (sampled by sample_allow). */
	PALISADE_LOG_ALL = 2,
};

/* endpoint_value.flags */
enum palisade_endpoint_flags {
	/* Skip anti-spoofing (endpoint may source any address). */
	PALISADE_EP_F_NO_SPOOF_CHECK = 1,
	/* Log every decision of this endpoint whatever config.log_mode says. */
	PALISADE_EP_F_LOG_ALL = 2,
};

/* config.flags */
enum palisade_config_flags {
	/* BENCHMARK/TEST ONLY, never set by the agent: allowed new flows do not
	 * create conntrack entries, so a repeated packet takes the full policy path
	 * every time (see bench_datapath and the differential test). */
	PALISADE_CFG_F_NO_CT_CREATE = 1,
	/* Established flows are NOT re-judged when what decided them changes (the
	 * endpoint's table or the policy epoch): a flow allowed once stays allowed
	 * until it ends or expires. Clear by default (revocation on); see
	 * docs/semantics.md "Established flows". */
	PALISADE_CFG_F_NO_REVOKE = 2,
};

/* Service translation limits. */
enum palisade_svc_limits {
	/* Backends the fail-closed rule checks for an untranslated frontend
	 * (count); a frontend with more is dropped as SVC_UNTRANSLATED_DENY. */
	PALISADE_SVC_MAX_CHECK = 64,
};

/* svc_frontend_value.flags */
enum palisade_svc_flags {
	/* sessionAffinity ClientIP: the backend is a hash of the client address
	 * alone, so every flow of one client goes to one backend. */
	PALISADE_SVC_F_AFFINITY = 1,
	/* Not translated (SCTP: its CRC32c cannot be patched incrementally): the
	 * packet goes on to kube-proxy unchanged, allowed only if the egress table
	 * allows every backend. */
	PALISADE_SVC_F_UNTRANSLATED = 2,
};

/* ct_value.flags */
enum palisade_ct_flags {
	/* The flow goes to a frontend untranslated (peer_addr:peer_port is the
	 * frontend): it was judged, and is re-judged, by every backend. */
	PALISADE_CT_F_SVC_ALL = 1,
};

/* ct_value.state */
enum palisade_ct_state {
	/* TCP: SYN seen from the origin, no reply yet. Timeout CT_SYN_TIMEOUT. */
	PALISADE_CT_SYN_SENT = 1,
	/* TCP: reply seen (or picked up mid-stream). Timeout CT_TCP_TIMEOUT. */
	PALISADE_CT_ESTABLISHED = 2,
	/* TCP: RST seen or FIN seen from both sides. Timeout CT_CLOSE_TIMEOUT. */
	PALISADE_CT_CLOSING = 3,
	/* UDP, SCTP, ICMP echo and other protocols. Timeout CT_OTHER_TIMEOUT. */
	PALISADE_CT_OPEN = 4,
	/* TCP and SCTP: revoked (a re-judgement denied it). Every packet of the
	 * flow, both ways, drops, so the reply side cannot be picked up mid-stream
	 * as a new flow of the other direction; a new TCP SYN from the origin is
	 * judged as a new flow, and a later epoch that allows the flow again
	 * revives it (TCP as ESTABLISHED, SCTP as OPEN).
	 * Timeout CT_REVOKED_TIMEOUT. */
	PALISADE_CT_REVOKED = 5,
};

/* ct_value.tcp_fin bits */
enum palisade_ct_fin {
	PALISADE_CT_FIN_ORIGIN = 1,
	PALISADE_CT_FIN_REPLY = 2,
};

/* Conntrack timeouts in seconds of CLOCK_MONOTONIC (read at tick resolution
 * with bpf_ktime_get_coarse_ns, see ct_now in lib/conntrack.h). */
enum palisade_ct_timeouts {
	PALISADE_CT_SYN_TIMEOUT_S = 60,
	PALISADE_CT_TCP_TIMEOUT_S = 21600,
	PALISADE_CT_CLOSE_TIMEOUT_S = 10,
	PALISADE_CT_OTHER_TIMEOUT_S = 60,
	/* A revoked TCP entry lasts as long as the established flow it replaces
	 * could have (both stacks may retransmit or keep alive that long). */
	PALISADE_CT_REVOKED_TIMEOUT_S = 21600,
	/* last_seen_ns is rewritten at most once per this many seconds per flow,
	 * to keep map writes off the per-packet path. */
	PALISADE_CT_REFRESH_S = 1,
	/* palisade_frags entries older than this are ignored (seconds). */
	PALISADE_FRAG_TIMEOUT_S = 30,
};

/* Counter rows per endpoint slot in palisade_counters: direction x reason. */
enum palisade_counters_layout {
	PALISADE_COUNTERS_PER_SLOT = PALISADE_DIR_NR * PALISADE_REASON_NR,
};

/* What the programs return: the kernel's values (linux/pkt_cls.h), restated
 * as enum members so they reach BTF and the Rust side is checked against them. */
enum palisade_tc_verdict {
	/* Pass: -1 = TCX_NEXT, programs attached after ours still run. */
	PALISADE_TC_ACT_UNSPEC = TC_ACT_UNSPEC,
	/* Drop. */
	PALISADE_TC_ACT_SHOT = TC_ACT_SHOT,
};

/*
 * palisade_endpoints value; key: __u32 ifindex of the pod's HOST-side veth.
 * One entry per attached interface; the programs fail closed without it.
 */
struct endpoint_value {
	/* TableId (compiled.rs) for traffic towards the pod. */
	__u32 ingress_table;
	/* TableId for traffic from the pod. */
	__u32 egress_table;
	/* Row in palisade_counters, allocated by the loader; slot 0 is reserved
	 * for packets on interfaces without an endpoint entry. */
	__u32 slot;
	/* PALISADE_EP_F_* */
	__u32 flags;
	/* Used entries of ipv4 / ipv6. */
	__u8 n_ipv4;
	__u8 n_ipv6;
	__u8 pad[2];
	/* The pod's IPv4 addresses, network order. */
	__u32 ipv4[PALISADE_MAX_IPS4];
	/* The pod's IPv6 addresses, network order. */
	__u8 ipv6[PALISADE_MAX_IPS6][16];
	__u32 pad2;
	/* EndpointEntry.generation, for "in force" reporting; unused by the programs. */
	__u64 generation;
};

/*
 * palisade_addr4 key (LPM trie). prefixlen: 0..32 bits of addr; addr network order.
 * Value: struct addr_value. 0.0.0.0/0 is always present, so a lookup never misses.
 */
struct addr4_key {
	__u32 prefixlen;
	__u8 addr[4];
};

/* palisade_addr6 key (LPM trie): as addr4_key, prefixlen 0..128. */
struct addr6_key {
	__u32 prefixlen;
	__u8 addr[16];
};

/*
 * palisade_hosts4 key: __u32 address, network order (exact match).
 * palisade_hosts6 key: struct host6_key. Both hold every HOST prefix (/32,
 * /128: every pod) instead of the LPM tries, which keep the shorter prefixes.
 * A host prefix is the most specific match there is, so "hosts first, LPM on a
 * miss" gives the LPM answer over the union, in one hash lookup for pods.
 */
struct host6_key {
	/* Network order. */
	__u8 addr[16];
};

/* Value of palisade_addr4/6 and palisade_hosts4/6: the peer identity (IdentityId). */
struct addr_value {
	__u32 identity;
};

/*
 * palisade_policy key (LPM trie). Field order is the match order:
 *   table, peer, proto are always matched exactly (PALISADE_POLICY_FIXED_BITS);
 *   dport is matched on its first (prefixlen - 80) bits, so a port range is
 *   stored as the few prefixes that cover it (range -> prefix expansion).
 * Wildcarding: a peer without entries of its own falls back to peer 0
 * (IDENTITY_ANY), which every table covers for all four protocol classes; that
 * is a second lookup, not a trie wildcard.
 */
struct policy_key {
	/* 80..96 */
	__u32 prefixlen;
	/* TableId, host order (matched exactly, so byte order is irrelevant). */
	__u32 table;
	/* IdentityId of the peer, or 0 = IDENTITY_ANY. Host order. */
	__u32 peer;
	/* Protocol class: 6, 17, 132, or 0 for every other protocol (ICMP too). */
	__u8 proto;
	/* Always 0. */
	__u8 pad;
	/* Destination port of the new connection, network order; 0 for class 0. */
	__u16 dport;
};

/* palisade_policy value: the final verdict and the rule behind it. */
struct policy_value {
	/* RuleId (compiled.rs), for attribution in events and dumps. */
	__u32 rule_id;
	/* enum palisade_action */
	__u8 action;
	__u8 pad[3];
};

/*
 * palisade_policy_parts key (hash): one PORT PARTITION, i.e. every
 * palisade_policy entry of (table, peer, proto class). All three fields are
 * matched exactly; there is no wildcarding in this map: the IDENTITY_ANY
 * fallback is a second lookup with peer 0, as for the LPM. A partition exists
 * iff palisade_policy holds at least one entry with these three fields.
 */
struct policy_part_key {
	/* TableId, host order. */
	__u32 table;
	/* IdentityId of the peer, or 0 = IDENTITY_ANY. Host order. */
	__u32 peer;
	/* Protocol class: 6, 17, 132, or 0. */
	__u8 proto;
	__u8 pad[3];
};

/*
 * palisade_policy_parts value: the partition's answer for every port, derived
 * by the loader from the partition's palisade_policy entries (longest prefix
 * per port), so both maps give the same verdict. Segment i covers ports
 * port_lo[i] ..= port_lo[i + 1] - 1 (the last one up to 65535).
 */
struct policy_part {
	/* Segments used, 1..PALISADE_PART_INLINE; 0 with PALISADE_PART_F_OVERFLOW. */
	__u8 n;
	/* PALISADE_PART_F_* */
	__u8 flags;
	__u16 pad;
	/* First port of each segment, HOST order, strictly increasing, [0] = 0. */
	__u16 port_lo[PALISADE_PART_INLINE];
	/* RuleId of each segment. */
	__u32 rule_id[PALISADE_PART_INLINE];
	/* enum palisade_action of each segment; PALISADE_ACTION_NONE = no entry. */
	__u8 action[PALISADE_PART_INLINE];
};

/*
 * palisade_conntrack key (LRU hash). Oriented by the POD, not by the packet: the
 * pod-side address/port come first whatever the direction, so a flow and its
 * replies share one entry and one lookup; ct_value.origin_dir says which side
 * opened it. Scoped by ifindex: two local pods talking get one entry each.
 * IPv4 addresses use the first 4 bytes of the 16, the rest are 0.
 */
struct ct_key {
	/* Host-side veth ifindex. */
	__u32 ifindex;
	/* 4 or 6. */
	__u8 family;
	/* IP protocol number (not the class): 6, 17, 132, 1, 58, ... */
	__u8 proto;
	__u16 pad;
	/* Network order. */
	__u8 pod_addr[16];
	/* Network order. */
	__u8 peer_addr[16];
	/* Network order; ICMP echo: the identifier on both sides; other: 0. */
	__u16 pod_port;
	__u16 peer_port;
};

struct ct_value {
	/* ct_now() (coarse CLOCK_MONOTONIC) at creation, ns. */
	__u64 created_ns;
	/* ct_now() of the last packet, ns, refreshed at most every
	 * PALISADE_CT_REFRESH_S. */
	__u64 last_seen_ns;
	/* Rule that allowed the flow. */
	__u32 rule_id;
	/* Table of origin_dir that judged the flow; if the endpoint now points at
	 * another table the flow is re-judged (and cut if denied). */
	__u32 table;
	/* Peer identity when the flow was allowed. */
	__u32 identity;
	/* enum palisade_ct_state */
	__u8 state;
	/* enum palisade_dir of the packet that created the entry. */
	__u8 origin_dir;
	/* PALISADE_CT_FIN_* bits. */
	__u8 tcp_fin;
	/* PALISADE_CT_F_* */
	__u8 flags;
	/* palisade_epoch[0] read BEFORE the lookups that last judged the flow; a
	 * different current epoch means identities, addresses or tables were
	 * rewritten since, so the flow is re-judged. 0 = never judged under a
	 * published epoch (the loader never publishes 0). */
	__u32 epoch;
	/* Translated flows (the key holds the backend): svc_frontend_value.id of
	 * the frontend the client addressed, whose address replies are given
	 * back (palisade_svc_revnat); 0 = not translated. */
	__u32 frontend_id;
};

/*
 * palisade_svc_frontends key (hash): a Service address, port and protocol as
 * the client addresses it (ClusterIP, external or load-balancer IP, node
 * address at a nodePort).
 */
struct svc_frontend_key {
	/* Network order; IPv4 in the first 4 bytes, the rest 0. */
	__u8 addr[16];
	/* Network order. */
	__u16 port;
	/* 6, 17 or 132. */
	__u8 proto;
	/* 4 or 6. */
	__u8 family;
};

/*
 * palisade_svc_frontends value. The backends are entries (set, 0..count-1)
 * of palisade_svc_backends. The loader writes a changed backend list under a
 * NEW set, then switches the frontend to it with this one write, then
 * deletes the old set: a packet sees the old list or the new one, whole.
 */
struct svc_frontend_value {
	/* Reverse-translation id (palisade_svc_revnat), never 0, kept for as long
	 * as the frontend exists. */
	__u32 id;
	/* Backend set in palisade_svc_backends. */
	__u32 set;
	/* Backends in the set; 0: drop (PALISADE_REASON_SVC_NO_BACKEND). */
	__u16 count;
	/* PALISADE_SVC_F_* */
	__u8 flags;
	__u8 pad;
};

/* palisade_svc_backends key (hash): backend `index` of backend set `set`. */
struct svc_backend_key {
	__u32 set;
	__u32 index;
};

/* A translated address: palisade_svc_backends value (a backend) and
 * palisade_svc_revnat value (a frontend, key: __u32 svc_frontend_value.id). */
struct svc_addr {
	/* Network order; IPv4 in the first 4 bytes. */
	__u8 addr[16];
	/* Network order. */
	__u16 port;
	__u16 pad;
};

/*
 * palisade_svc_flows (LRU hash), key: struct ct_key of the packet AS SENT
 * (peer = the frontend). The backend a flow was translated to, so every later
 * packet of the flow goes to the same backend even after the frontend's
 * backends change (a TCP SYN without ACK picks again: a new connection).
 */
struct svc_flow_value {
	/* The backend chosen. */
	struct svc_addr backend;
	/* svc_frontend_value.id at the choice; another id (the frontend was
	 * removed and added again) picks again. */
	__u32 frontend_id;
	/* ct_now() of the last packet, refreshed at most every
	 * PALISADE_CT_REFRESH_S; idle past the conntrack timeout: picks again. */
	__u64 last_seen_ns;
};

/*
 * palisade_frags key (LRU hash): a fragmented datagram whose first fragment
 * passed, so its later fragments (which carry no ports) pass too.
 */
struct frag_key {
	__u32 ifindex;
	/* IPv4 identification (16 bits, zero-extended) or IPv6 fragment id, host order. */
	__u32 id;
	__u8 family;
	/* IP protocol number. */
	__u8 proto;
	/* enum palisade_dir */
	__u8 dir;
	__u8 pad;
	/* Network order, as in ct_key. */
	__u8 saddr[16];
	__u8 daddr[16];
};

struct frag_value {
	/* Ports of the first fragment, network order. */
	__u16 sport;
	__u16 dport;
	__u32 pad;
	/* ct_now() of the first fragment, ns. */
	__u64 created_ns;
};

/* palisade_config[0]: runtime knobs written by the loader. */
struct config {
	/* enum palisade_log_mode */
	__u32 log_mode;
	/* PALISADE_CFG_F_* */
	__u32 flags;
	/* Log 1 in sample_allow allowed new flows under PALISADE_LOG_ALL (0 and 1 = all). */
	__u32 sample_allow;
	/* Token bucket refill, events per second per CPU (0 = unlimited). */
	__u32 events_per_sec;
	/* Token bucket depth, events. */
	__u32 events_burst;
	/* Per-endpoint token bucket (palisade_pod_ratelimit), events per second per
	 * CPU and also its depth; taken before the node's bucket, so one flooding
	 * pod cannot use up the node's budget (0 = no per-endpoint limit). */
	__u32 pod_events_per_sec;
};

/* palisade_ratelimit[0] (per-CPU): the event token bucket state. */
struct ratelimit_state {
	/* Tokens, in units of 1e-9 event (so refill needs no division). */
	__u64 tokens;
	/* bpf_ktime_get_ns() of the last refill, ns. */
	__u64 last_ns;
};

/*
 * palisade_pod_ratelimit[slot] (per-CPU): one endpoint's event token bucket,
 * indexed by endpoint_value.slot (slot 0: interfaces without an entry).
 */
struct pod_ratelimit_state {
	/* Tokens, in units of 1e-9 event, as in ratelimit_state. */
	__u64 tokens;
	/* bpf_ktime_get_ns() of the last refill, ns. */
	__u64 last_ns;
	/* Events of this endpoint suppressed by its bucket. */
	__u64 suppressed;
};

/* Ring buffer record (palisade_events): one policy decision. */
struct event {
	/* bpf_ktime_get_ns(), ns. */
	__u64 ts_ns;
	__u32 ifindex;
	/* RuleId, 0 when no rule applies (e.g. spoof, malformed). */
	__u32 rule_id;
	/* Peer IdentityId, 0 when not looked up. */
	__u32 identity;
	/* TableId consulted, 0 when none. */
	__u32 table;
	/* enum palisade_dir */
	__u8 dir;
	/* enum palisade_action */
	__u8 action;
	/* enum palisade_reason */
	__u8 reason;
	/* 4, 6, or 0 for non-IP */
	__u8 family;
	/* IP protocol number */
	__u8 proto;
	/* TCP flags byte (FIN=1 SYN=2 RST=4 PSH=8 ACK=16), ICMP type otherwise. */
	__u8 tcp_flags;
	__u16 pad;
	/* Network order. */
	__u16 sport;
	__u16 dport;
	/* Network order; IPv4 in the first 4 bytes. */
	__u8 saddr[16];
	__u8 daddr[16];
	__u32 pad2;
};

/*
 * Never read. Names every enum of this header so that it reaches the object's
 * BTF (an enum used only in expressions does not), where the test
 * abi::abi_constants_match_btf compares each member with src/abi.rs. The
 * object holds one instance, in section .palisade_abi, which loaders ignore.
 * When you add an enum above, add it here (the test fails until you do).
 */
struct palisade_abi_enums {
	enum palisade_limits limits;
	enum palisade_dir dir;
	enum palisade_action action;
	enum palisade_part_flags part_flags;
	enum palisade_reason reason;
	enum palisade_stat stat;
	enum palisade_log_mode log_mode;
	enum palisade_endpoint_flags endpoint_flags;
	enum palisade_config_flags config_flags;
	enum palisade_svc_limits svc_limits;
	enum palisade_svc_flags svc_flags;
	enum palisade_ct_flags ct_flags;
	enum palisade_ct_state ct_state;
	enum palisade_ct_fin ct_fin;
	enum palisade_ct_timeouts ct_timeouts;
	enum palisade_counters_layout counters_layout;
	enum palisade_tc_verdict tc_verdict;
};

#endif /* PALISADE_ABI_H */
