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

/* Key: struct addr4_key (LPM). Value: struct addr_value. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct addr4_key);
	__type(value, struct addr_value);
} palisade_addr4 SEC(".maps");

/* Key: struct addr6_key (LPM). Value: struct addr_value. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct addr6_key);
	__type(value, struct addr_value);
} palisade_addr6 SEC(".maps");

/* Key: struct policy_key (LPM). Value: struct policy_value. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
} palisade_policy SEC(".maps");

/* Returns 0 and sets *identity, or -1 when no prefix matches. */
static __always_inline int identity_lookup(__u8 family, const __u8 *addr, __u32 *identity)
{
	struct addr_value *v;

	if (family == 4) {
		struct addr4_key k = { .prefixlen = 32 };

		__builtin_memcpy(k.addr, addr, 4);
		v = bpf_map_lookup_elem(&palisade_addr4, &k);
	} else {
		struct addr6_key k = { .prefixlen = 128 };

		__builtin_memcpy(k.addr, addr, 16);
		v = bpf_map_lookup_elem(&palisade_addr6, &k);
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
 * Precedence, applied in this order:
 *  1. (table, peer, class, dport): the peer's own entries, if it has any for
 *     this class (they then cover every port);
 *  2. (table, IDENTITY_ANY, class, dport): every table covers it completely;
 *  3. nothing: the table is missing, return NULL (caller fails closed).
 * dport is network order; ignored (0) for class 0.
 */
static __always_inline struct policy_value *policy_lookup(__u32 table, __u32 peer, __u8 proto,
							   __u16 dport)
{
	struct policy_key k = {
		.prefixlen = PALISADE_POLICY_FIXED_BITS + 16,
		.table = table,
		.peer = peer,
		.proto = proto_class(proto),
	};
	struct policy_value *v;

	k.dport = k.proto ? dport : 0;
	v = bpf_map_lookup_elem(&palisade_policy, &k);
	if (v)
		return v;
	k.peer = 0;
	return bpf_map_lookup_elem(&palisade_policy, &k);
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
