/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * policy.h: endpoint, address -> identity and rule-table maps, and the lookup
 * that turns (table, peer address, protocol, port) into a verdict.
 */
#ifndef PALISADE_POLICY_H
#define PALISADE_POLICY_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "palisade_abi.h"
#include "parse.h"

/* Key: __u32 ifindex of the host-side veth. Value: struct endpoint_value. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct endpoint_value);
} palisade_endpoints SEC(".maps");

/* Key: struct addr4_key (LPM), every IPv4 prefix SHORTER than /32.
 * Value: struct addr_value. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct addr4_key);
	__type(value, struct addr_value);
} palisade_addr4 SEC(".maps");

/* Key: struct addr6_key (LPM), every IPv6 prefix shorter than /128.
 * Value: struct addr_value. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct addr6_key);
	__type(value, struct addr_value);
} palisade_addr6 SEC(".maps");

/* Key: __u32 IPv4 address, network order: every /32 (see struct host6_key).
 * Value: struct addr_value. Not preallocated (like the tries): memory follows
 * the number of pods, not max_entries; lookups cost the same. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct addr_value);
} palisade_hosts4 SEC(".maps");

/* Key: struct host6_key: every /128. Value: struct addr_value. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct host6_key);
	__type(value, struct addr_value);
} palisade_hosts6 SEC(".maps");

/* Key: struct policy_key (LPM). Value: struct policy_value. Every table entry
 * (range -> prefix expansion); consulted only for PALISADE_PART_F_OVERFLOW
 * partitions, and the source of dumps. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
} palisade_policy SEC(".maps");

/* Key: struct policy_part_key. Value: struct policy_part. One hash lookup per
 * (table, peer, class) whatever the number of entries: the LPM's depth grows
 * with the number of tables and peers, this does not. Not preallocated: there
 * are never more partitions than palisade_policy entries, so max_entries can
 * match that map's at no memory cost. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct policy_part_key);
	__type(value, struct policy_part);
} palisade_policy_parts SEC(".maps");

/*
 * Returns 0 and sets *identity, or -1 when no prefix matches.
 *  1. host prefix (/32, /128) by exact match: the most specific possible;
 *  2. otherwise the longest shorter prefix, by LPM.
 * addr must point to the stack (it is used as a map key).
 */
static __always_inline int identity_lookup(__u8 family, const __u8 *addr, __u32 *identity)
{
	struct addr_value *v;

	if (family == 4) {
		struct addr4_key k = { .prefixlen = 32 };
		__u32 a;

		__builtin_memcpy(&a, addr, 4);
		v = bpf_map_lookup_elem(&palisade_hosts4, &a);
		if (!v) {
			__builtin_memcpy(k.addr, addr, 4);
			v = bpf_map_lookup_elem(&palisade_addr4, &k);
		}
	} else {
		struct addr6_key k = { .prefixlen = 128 };
		struct host6_key h;

		__builtin_memcpy(h.addr, addr, 16);
		v = bpf_map_lookup_elem(&palisade_hosts6, &h);
		if (!v) {
			__builtin_memcpy(k.addr, addr, 16);
			v = bpf_map_lookup_elem(&palisade_addr6, &k);
		}
	}
	if (!v)
		return -1;
	*identity = v->identity;
	return 0;
}

/* TCP, UDP, SCTP keep their number; everything else is class 0 with port 0. */
static __always_inline __u8 proto_class(__u8 proto)
{
	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP)
		return proto;
	return 0;
}

/*
 * The entry of partition (table, peer, class) covering dport (network order).
 * Returns 1 and fills *out, or 0 when the partition is missing or has no entry
 * for the port (exactly when the palisade_policy lookup would miss).
 */
static __always_inline int policy_find(__u32 table, __u32 peer, __u8 class, __u16 dport,
				       struct policy_value *out)
{
	struct policy_part_key pk = { .table = table, .peer = peer, .proto = class };
	struct policy_part *p;
	__u16 port;
	__u32 rule;
	__u8 action;

	p = bpf_map_lookup_elem(&palisade_policy_parts, &pk);
	if (!p)
		return 0;
	if (p->flags & PALISADE_PART_F_OVERFLOW) {
		struct policy_key k = {
			.prefixlen = PALISADE_POLICY_FIXED_BITS + 16,
			.table = table,
			.peer = peer,
			.proto = class,
			.dport = dport,
		};
		struct policy_value *v = bpf_map_lookup_elem(&palisade_policy, &k);

		if (!v)
			return 0;
		out->rule_id = v->rule_id;
		out->action = v->action;
		return 1;
	}
	/* Last segment starting at or below the port; constant indices only. */
	port = bpf_ntohs(dport);
	rule = p->rule_id[0];
	action = p->action[0];
#pragma unroll
	for (int i = 1; i < PALISADE_PART_INLINE; i++) {
		if (i >= p->n || p->port_lo[i] > port)
			break;
		rule = p->rule_id[i];
		action = p->action[i];
	}
	if (action == PALISADE_ACTION_NONE)
		return 0;
	out->rule_id = rule;
	out->action = action;
	return 1;
}

/*
 * Precedence, applied in this order:
 *  1. (table, peer, class, dport): the peer's own entries, if one covers dport
 *     (the compiler makes a peer's entries cover every port of the class);
 *  2. (table, IDENTITY_ANY, class, dport): every table covers it completely;
 *  3. nothing: the table is missing, return -1 (caller fails closed).
 * dport is network order; ignored (0) for class 0. Returns 0 and fills *out.
 */
static __always_inline int policy_lookup(__u32 table, __u32 peer, __u8 proto, __u16 dport,
					 struct policy_value *out)
{
	__u8 class = proto_class(proto);

	if (!class)
		dport = 0;
	if (policy_find(table, peer, class, dport, out))
		return 0;
	if (peer != 0 && policy_find(table, 0, class, dport, out))
		return 0;
	return -1;
}

/* 1 if addr is one of the endpoint's own addresses. */
static __always_inline int endpoint_owns(const struct endpoint_value *ep, const struct flow *f)
{
	if (f->family == 4) {
		__u32 a;

		__builtin_memcpy(&a, f->saddr, 4);
#pragma unroll
		for (int i = 0; i < PALISADE_MAX_IPS4; i++)
			if (i < ep->n_ipv4 && ep->ipv4[i] == a)
				return 1;
		return 0;
	}
#pragma unroll
	for (int i = 0; i < PALISADE_MAX_IPS6; i++) {
		__u64 a0, a1, b0, b1;

		if (i >= ep->n_ipv6)
			break;
		__builtin_memcpy(&a0, &f->saddr[0], 8);
		__builtin_memcpy(&a1, &f->saddr[8], 8);
		__builtin_memcpy(&b0, &ep->ipv6[i][0], 8);
		__builtin_memcpy(&b1, &ep->ipv6[i][8], 8);
		if (a0 == b0 && a1 == b1)
			return 1;
	}
	return 0;
}

#endif
