/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * conntrack.h: per-endpoint connection tracking and the fragment map.
 *
 * Table full: both maps are LRU hashes. Inserting into a full map evicts the
 * least recently used entry (kernel htab_lru), it never fails, so an idle flow
 * can lose its entry under pressure; its next packet is evaluated by policy
 * again (forward direction: allowed again if still allowed; reply direction:
 * judged by the other direction's table, so it may drop). Creations are counted
 * in PALISADE_STAT_CT_CREATED; created minus live entries = evictions + expiries.
 */
#ifndef PALISADE_CONNTRACK_H
#define PALISADE_CONNTRACK_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "palisade_abi.h"
#include "parse.h"

/* Nanoseconds per second (timeouts are in s, timestamps in ns). */
#define NS_PER_S 1000000000ULL

/*
 * The conntrack and fragment clock: CLOCK_MONOTONIC at tick resolution
 * (bpf_ktime_get_coarse_ns, kernel 5.11+, no clocksource read). Timeouts are
 * seconds and the refresh period 1 s, so a tick (<= 10 ms) of lag changes no
 * decision; the fine clock costs a clocksource read per packet.
 */
static __always_inline __u64 ct_now(void)
{
	return bpf_ktime_get_coarse_ns();
}

/* Key: struct ct_key. Value: struct ct_value. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct ct_key);
	__type(value, struct ct_value);
} palisade_conntrack SEC(".maps");

/*
 * palisade_epoch[0]: the policy epoch, a __u32 the loader increments after
 * every batch of writes to the endpoint, address or policy maps (never to 0).
 * A conntrack entry records the epoch it was judged under (ct_value.epoch); a
 * packet finding another epoch re-judges its flow (ct_revalidate in
 * palisade.bpf.c). So a peer's identity change (an address re-mapped) cuts a
 * flow exactly as a policy edit with the same effect does, for one array read
 * per tracked packet and one entry write per flow per epoch.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} palisade_epoch SEC(".maps");

/* The current policy epoch (index 0 of an array always exists; 0 is the
 * fallback only to satisfy the verifier). */
static __always_inline __u32 epoch_get(void)
{
	__u32 zero = 0;
	__u32 *e = bpf_map_lookup_elem(&palisade_epoch, &zero);

	return e ? *e : 0;
}

/* Key: struct frag_key. Value: struct frag_value. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct frag_key);
	__type(value, struct frag_value);
} palisade_frags SEC(".maps");

/* Builds the pod-oriented key for a packet seen in direction dir. */
static __always_inline void ct_key_from(struct ct_key *k, __u32 ifindex, __u32 dir,
					const struct flow *f)
{
	k->ifindex = ifindex;
	k->family = f->family;
	k->proto = f->proto;
	k->pad = 0;
	if (dir == PALISADE_DIR_EGRESS) {
		__builtin_memcpy(k->pod_addr, f->saddr, 16);
		__builtin_memcpy(k->peer_addr, f->daddr, 16);
		k->pod_port = f->sport;
		k->peer_port = f->dport;
	} else {
		__builtin_memcpy(k->pod_addr, f->daddr, 16);
		__builtin_memcpy(k->peer_addr, f->saddr, 16);
		k->pod_port = f->dport;
		k->peer_port = f->sport;
	}
}

static __always_inline __u64 ct_timeout_ns(__u8 state)
{
	switch (state) {
	case PALISADE_CT_SYN_SENT:
		return PALISADE_CT_SYN_TIMEOUT_S * NS_PER_S;
	case PALISADE_CT_ESTABLISHED:
		return PALISADE_CT_TCP_TIMEOUT_S * NS_PER_S;
	case PALISADE_CT_CLOSING:
		return PALISADE_CT_CLOSE_TIMEOUT_S * NS_PER_S;
	case PALISADE_CT_REVOKED:
		return PALISADE_CT_REVOKED_TIMEOUT_S * NS_PER_S;
	default:
		return PALISADE_CT_OTHER_TIMEOUT_S * NS_PER_S;
	}
}

static __always_inline int ct_expired(const struct ct_value *v, __u64 now)
{
	return now > v->last_seen_ns && now - v->last_seen_ns > ct_timeout_ns(v->state);
}

/*
 * TCP state transitions for a packet of a tracked flow (forward = same
 * direction as the origin). Returns 1 if the entry changed.
 *  - RST either way            -> CLOSING
 *  - FIN: mark the side; both  -> CLOSING
 *  - any reply while SYN_SENT  -> ESTABLISHED
 */
static __always_inline int ct_tcp_update(struct ct_value *v, int forward, __u8 flags)
{
	__u8 old_state = v->state, old_fin = v->tcp_fin;

	if (flags & TCP_RST) {
		v->state = PALISADE_CT_CLOSING;
	} else {
		if (flags & TCP_FIN)
			v->tcp_fin |= forward ? PALISADE_CT_FIN_ORIGIN : PALISADE_CT_FIN_REPLY;
		if (v->tcp_fin == (PALISADE_CT_FIN_ORIGIN | PALISADE_CT_FIN_REPLY))
			v->state = PALISADE_CT_CLOSING;
		else if (!forward && v->state == PALISADE_CT_SYN_SENT)
			v->state = PALISADE_CT_ESTABLISHED;
	}
	return v->state != old_state || v->tcp_fin != old_fin;
}

static __always_inline void frag_key_from(struct frag_key *k, __u32 ifindex, __u32 dir,
					  const struct flow *f)
{
	k->ifindex = ifindex;
	k->id = f->frag_id;
	k->family = f->family;
	k->proto = f->proto;
	k->dir = dir;
	k->pad = 0;
	__builtin_memcpy(k->saddr, f->saddr, 16);
	__builtin_memcpy(k->daddr, f->daddr, 16);
}

/* Called when a first fragment passes: its later fragments will pass too. */
static __always_inline void frag_track(__u32 ifindex, __u32 dir, const struct flow *f, __u64 now)
{
	struct frag_key k;
	struct frag_value v = { .sport = f->sport, .dport = f->dport, .created_ns = now };

	frag_key_from(&k, ifindex, dir, f);
	bpf_map_update_elem(&palisade_frags, &k, &v, BPF_ANY);
}

/* 1 if a later fragment belongs to a datagram whose first fragment passed. */
static __always_inline int frag_known(__u32 ifindex, __u32 dir, const struct flow *f, __u64 now)
{
	struct frag_key k;
	struct frag_value *v;

	frag_key_from(&k, ifindex, dir, f);
	v = bpf_map_lookup_elem(&palisade_frags, &k);
	return v && now - v->created_ns <= PALISADE_FRAG_TIMEOUT_S * NS_PER_S;
}

#endif
