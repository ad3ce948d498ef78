/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * service.h: Service translation at the pod's interface, before policy
 * (docs/semantics.md §10), so a packet to a Service frontend is judged by the
 * backend it is really sent to.
 *
 *  from_pod, a packet with no conntrack entry under its own tuple:
 *   1. frontend lookup (dst addr, dport, proto); none: not Service traffic;
 *   2. no backend: drop SVC_NO_BACKEND;
 *   3. SCTP (PALISADE_SVC_F_UNTRANSLATED), or the only backend is the client
 *      itself (a hairpin kube-proxy must masquerade): not translated, judged
 *      by the fail-closed rule (svc_judge_all): allowed only if the egress
 *      table allows every backend;
 *   4. otherwise the backend: the one palisade_svc_flows remembers for this
 *      tuple (not for a TCP SYN without ACK: a new connection), else
 *      hash(tuple) mod count (sessionAffinity ClientIP: hash(client address)),
 *      stepping over the client's own address; the destination address and
 *      port are rewritten (IPv4 header checksum, TCP/UDP pseudo-header and
 *      port checksum fixes) and the packet goes on as one to the backend:
 *      conntrack, policy and revocation all see the backend's tuple, whose
 *      conntrack entry records the frontend's id for the replies.
 *  to_pod, a reply of a flow whose entry has frontend_id: its source address
 *  and port are rewritten back to the frontend's (palisade_svc_revnat).
 */
#ifndef PALISADE_SERVICE_H
#define PALISADE_SERVICE_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "palisade_abi.h"
#include "parse.h"
#include "policy.h"
#include "conntrack.h"

/* Key: struct svc_frontend_key. Value: struct svc_frontend_value. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct svc_frontend_key);
	__type(value, struct svc_frontend_value);
} palisade_svc_frontends SEC(".maps");

/* Key: struct svc_backend_key. Value: struct svc_addr (a backend). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct svc_backend_key);
	__type(value, struct svc_addr);
} palisade_svc_backends SEC(".maps");

/* Key: __u32 svc_frontend_value.id. Value: struct svc_addr (the frontend). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct svc_addr);
} palisade_svc_revnat SEC(".maps");

/* Key: struct ct_key of the packet as sent. Value: struct svc_flow_value. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct ct_key);
	__type(value, struct svc_flow_value);
} palisade_svc_flows SEC(".maps");

/* Per-CPU scratch (index 0): the backend a new flow was just given, kept off
 * the stack (from_pod's frame is near the 512-byte limit) until policy allows
 * the flow and svc_remember stores it. Not pinned: it holds nothing between
 * packets. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct svc_flow_value);
} palisade_svc_scratch SEC(".maps");

static __always_inline struct svc_flow_value *svc_pick_slot(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&palisade_svc_scratch, &zero);
}

/* Offsets in the frame (Ethernet, no VLAN: tagged frames drop earlier). */
#define IP4_CSUM_OFF (ETH_HLEN_ + 10)
#define IP4_SADDR_OFF (ETH_HLEN_ + 12)
#define IP4_DADDR_OFF (ETH_HLEN_ + 16)
#define IP6_SADDR_OFF (ETH_HLEN_ + 8)
#define IP6_DADDR_OFF (ETH_HLEN_ + 24)

/* svc_translate results */
enum svc_result {
	/* Not a frontend: judged as addressed. */
	SVC_NONE = 0,
	/* Rewritten to a backend: f and the key describe the backend's tuple. */
	SVC_TRANSLATED = 1,
	/* Not translated: judged by every backend (svc_judge_all). */
	SVC_ALL = 2,
	/* A frontend without backends. */
	SVC_NO_BACKEND = 3,
	/* The packet could not be rewritten. */
	SVC_ERROR = 4,
};

static __always_inline int svc_port_proto(__u8 proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP;
}

static __always_inline struct svc_frontend_value *
svc_frontend_lookup(__u8 family, const __u8 *addr, __u16 port, __u8 proto)
{
	struct svc_frontend_key k = { .port = port, .proto = proto, .family = family };

	__builtin_memcpy(k.addr, addr, 16);
	return bpf_map_lookup_elem(&palisade_svc_frontends, &k);
}

/* A 32-bit mix (murmur3's finalizer) of a running hash and one word. */
static __always_inline __u32 svc_mix(__u32 h, __u32 w)
{
	w *= 0xcc9e2d51;
	w = (w << 15) | (w >> 17);
	w *= 0x1b873593;
	h ^= w;
	h = (h << 13) | (h >> 19);
	return h * 5 + 0xe6546b64;
}

static __always_inline __u32 svc_hash(const struct flow *f, __u32 id, int affinity)
{
	__u32 h = id, w;

#pragma unroll
	for (int i = 0; i < 4; i++) {
		__builtin_memcpy(&w, &f->saddr[i * 4], 4);
		h = svc_mix(h, w);
	}
	if (!affinity)
		h = svc_mix(h, ((__u32)f->sport << 16) | f->proto);
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	return h;
}

static __always_inline int svc_same_addr(const __u8 *a, const __u8 *b)
{
	__u64 x[2], y[2];

	__builtin_memcpy(x, a, 16);
	__builtin_memcpy(y, b, 16);
	return x[0] == y[0] && x[1] == y[1];
}

/*
 * Rewrites the destination (src = 0) or the source (src = 1) address and port
 * of the packet to a, fixing the checksums. f->l4_off locates TCP/UDP.
 */
static __always_inline int svc_rewrite(struct __sk_buff *skb, const struct flow *f,
				       const struct svc_addr *a, int src)
{
	__u32 l4_csum = f->l4_off + (f->proto == IPPROTO_TCP ? 16 : 6);
	__u32 port_off = f->l4_off + (src ? 0 : 2);
	__u64 mangled = f->proto == IPPROTO_UDP && f->family == 4 ? BPF_F_MARK_MANGLED_0 : 0;
	__u16 old_port = src ? f->sport : f->dport;

	if (f->family == 4) {
		__u32 old_a, new_a;

		__builtin_memcpy(&old_a, src ? f->saddr : f->daddr, 4);
		__builtin_memcpy(&new_a, a->addr, 4);
		if (bpf_l3_csum_replace(skb, IP4_CSUM_OFF, old_a, new_a, 4))
			return -1;
		if (bpf_l4_csum_replace(skb, l4_csum, old_a, new_a,
					BPF_F_PSEUDO_HDR | mangled | 4))
			return -1;
		if (bpf_skb_store_bytes(skb, src ? IP4_SADDR_OFF : IP4_DADDR_OFF, &new_a, 4, 0))
			return -1;
	} else {
		__u32 old_a[4], new_a[4];
		__s64 diff;

		__builtin_memcpy(old_a, src ? f->saddr : f->daddr, 16);
		__builtin_memcpy(new_a, a->addr, 16);
		diff = bpf_csum_diff(old_a, 16, new_a, 16, 0);
		if (diff < 0)
			return -1;
		if (bpf_l4_csum_replace(skb, l4_csum, 0, diff, BPF_F_PSEUDO_HDR))
			return -1;
		if (bpf_skb_store_bytes(skb, src ? IP6_SADDR_OFF : IP6_DADDR_OFF, new_a, 16, 0))
			return -1;
	}
	if (old_port != a->port) {
		if (bpf_l4_csum_replace(skb, l4_csum, old_port, a->port, mangled | 2))
			return -1;
		if (bpf_skb_store_bytes(skb, port_off, &a->port, 2, 0))
			return -1;
	}
	return 0;
}

/* State of the bounded walk over a frontend's backends (svc_judge_all). */
struct svc_all_ctx {
	__u32 set;
	__u32 table;
	__u32 rule_id;
	__u32 identity;
	__u8 family;
	__u8 proto;
	/* 1 while every backend checked so far is allowed. */
	__u8 allowed;
	__u8 pad;
};

static long svc_all_step(__u32 i, void *data)
{
	struct svc_all_ctx *c = data;
	struct svc_backend_key k = { .set = c->set, .index = i };
	struct policy_value pv = {};
	struct svc_addr *b;
	__u32 id = 0;

	b = bpf_map_lookup_elem(&palisade_svc_backends, &k);
	if (!b) {
		c->allowed = 0;
		return 1;
	}
	/* identity_lookup copies the address into its own keys. */
	if (identity_lookup(c->family, b->addr, &id) ||
	    policy_lookup(c->table, id, c->proto, b->port, &pv) ||
	    pv.action != PALISADE_ACTION_ALLOW) {
		c->allowed = 0;
		c->identity = id;
		c->rule_id = pv.rule_id;
		return 1;
	}
	c->identity = id;
	c->rule_id = pv.rule_id;
	return 0;
}

/*
 * The fail-closed rule for a frontend that is not translated: 1 if c->table
 * allows every backend of set c->set (count of them, at most
 * PALISADE_SVC_MAX_CHECK), else 0 with c->rule_id and c->identity of the first
 * backend denied. A global function (verified once, not at every call site)
 * to keep the programs' verification cost down; so are svc_translate and
 * svc_reverse.
 */
__attribute__((noinline)) int svc_judge_all(struct svc_all_ctx *c, __u32 count)
{
	struct svc_all_ctx l;

	if (!c)
		return 0;
	c->rule_id = 0;
	c->identity = 0;
	if (count == 0 || count > PALISADE_SVC_MAX_CHECK)
		return 0;
	/* bpf_loop's context must be on this frame's stack. */
	l = *c;
	l.allowed = 1;
	bpf_loop(count, svc_all_step, &l, 0);
	*c = l;
	return l.allowed;
}

/*
 * Step 1-4 of the header comment for an egress packet without a conntrack
 * entry under its own tuple (k; orig: a copy the caller keeps). On SVC_TRANSLATED the packet, f and k
 * describe the backend's tuple, and a new choice waits in the scratch slot
 * (frontend_id 0: nothing new) for svc_remember once policy allows the flow. On SVC_ALL and
 * SVC_NO_BACKEND *fe_out is the frontend.
 */
__attribute__((noinline)) int svc_translate(struct __sk_buff *skb, struct flow *f, struct ct_key *k,
					    const struct ct_key *orig,
					    struct svc_frontend_value *fe_out)
{
	__u64 now;
	struct svc_flow_value *pick;
	struct svc_frontend_value *fe;
	struct svc_flow_value *sf;
	struct svc_backend_key bk;
	struct svc_addr *b, chosen;
	int new_conn;
	__u32 idx;

	if (!skb || !f || !k || !orig || !fe_out)
		return SVC_ERROR;
	if (!svc_port_proto(f->proto) || f->frag == FRAG_LATER || f->icmp_error)
		return SVC_NONE;
	fe = svc_frontend_lookup(f->family, f->daddr, f->dport, f->proto);
	if (!fe)
		return SVC_NONE;
	*fe_out = *fe;
	if (fe->count == 0)
		return SVC_NO_BACKEND;
	if (fe->flags & PALISADE_SVC_F_UNTRANSLATED)
		return SVC_ALL;

	pick = svc_pick_slot();
	if (!pick)
		return SVC_ERROR;
	now = ct_now();
	new_conn = f->proto == IPPROTO_TCP && (f->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN;
	sf = bpf_map_lookup_elem(&palisade_svc_flows, orig);
	if (sf && !new_conn && sf->frontend_id == fe->id &&
	    !(now > sf->last_seen_ns &&
	      now - sf->last_seen_ns > (f->proto == IPPROTO_TCP ? PALISADE_CT_TCP_TIMEOUT_S
								: PALISADE_CT_OTHER_TIMEOUT_S) *
					       NS_PER_S)) {
		chosen = sf->backend;
		if (now - sf->last_seen_ns > PALISADE_CT_REFRESH_S * NS_PER_S)
			sf->last_seen_ns = now;
		/* Already remembered. */
		pick->frontend_id = 0;
	} else {
		idx = svc_hash(f, fe->id, fe->flags & PALISADE_SVC_F_AFFINITY) % fe->count;
		bk.set = fe->set;
		bk.index = idx;
		b = bpf_map_lookup_elem(&palisade_svc_backends, &bk);
		if (b && svc_same_addr(b->addr, f->saddr)) {
			/* Hairpin: the client is a backend; take the next one. */
			bk.index = idx + 1 < fe->count ? idx + 1 : 0;
			b = bk.index == idx ? NULL : bpf_map_lookup_elem(&palisade_svc_backends, &bk);
			if (!b || svc_same_addr(b->addr, f->saddr))
				return SVC_ALL;
		}
		if (!b)
			return SVC_ALL;
		chosen = *b;
		pick->backend = chosen;
		pick->frontend_id = fe->id;
		pick->last_seen_ns = now;
	}
	if (svc_rewrite(skb, f, &chosen, 0))
		return SVC_ERROR;
	__builtin_memcpy(f->daddr, chosen.addr, 16);
	f->dport = chosen.port;
	__builtin_memcpy(k->peer_addr, chosen.addr, 16);
	k->peer_port = chosen.port;
	return SVC_TRANSLATED;
}

/* Remembers a new pick (svc_translate) under the packet's original key. */
static __always_inline void svc_remember(const struct ct_key *orig)
{
	struct svc_flow_value *pick = svc_pick_slot();

	if (pick && pick->frontend_id)
		bpf_map_update_elem(&palisade_svc_flows, orig, pick, BPF_ANY);
}

/* to_pod: gives a reply of a translated flow the frontend's address back.
 * 0 on success; -1 if the frontend is gone or the rewrite failed. */
__attribute__((noinline)) int svc_reverse(struct __sk_buff *skb, struct flow *f, __u32 frontend_id)
{
	struct svc_addr *fe;
	struct svc_addr a;

	if (!skb || !f)
		return -1;
	fe = bpf_map_lookup_elem(&palisade_svc_revnat, &frontend_id);
	if (!fe)
		return -1;
	a = *fe;
	if (svc_rewrite(skb, f, &a, 1))
		return -1;
	__builtin_memcpy(f->saddr, a.addr, 16);
	f->sport = a.port;
	return 0;
}

#endif
