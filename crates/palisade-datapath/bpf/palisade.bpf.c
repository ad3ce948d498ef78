/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Palisade TC programs, attached to each pod's HOST-side veth:
 *   from_pod: TC ingress of the host veth = the pod's EGRESS;
 *   to_pod:   TC egress of the host veth  = the pod's INGRESS;
 *   noop:     returns at once; the benchmark's floor.
 *
 * Per packet, in this order (numbers are the precedence):
 *  1. endpoint entry by skb->ifindex; missing -> drop NO_ENDPOINT (fail closed:
 *     programs are only attached to registered endpoints, so a missing entry
 *     means state was lost, and a hole is worse than an outage);
 *  2. parse; non-IP passes (ARP, the model is L3/L4), VLAN tags and malformed
 *     headers drop;
 *  3. ICMPv6 NDP 133..137 passes (before anti-spoofing: DAD uses ::), except
 *     a Router Advertisement or Redirect from a pod -> SPOOF;
 *  4. from_pod only: source address must be one of the endpoint's -> else SPOOF;
 *  5. later IPv4/IPv6 fragments pass iff their first fragment passed;
 *  6. ICMP errors whose inner header is a tracked flow pass as RELATED;
 *  7. from_pod, no conntrack entry under the packet's own tuple: Service
 *     translation (lib/service.h): a packet to a frontend is rewritten to one
 *     backend and goes on as a packet to it (or, untranslatable, is judged by
 *     every backend; or, without backends, drops SVC_NO_BACKEND);
 *  7b. conntrack hit -> ESTABLISHED / REPLY (to_pod gives a translated flow's
 *     reply the frontend's address back); first re-judged (ct_revalidate)
 *     if the endpoint's table or the policy epoch changed since the flow was
 *     last judged, and cut if now denied (a revoked flow keeps a REVOKED
 *     entry that drops both ways); the RELATED check of 6 does the same;
 *  8. policy: identity of the peer (dst for from_pod, src for to_pod): host
 *     map, else LPM; then (table, peer, proto class, dport) through the port
 *     partition hash (the LPM only for overflow partitions), with the
 *     IDENTITY_ANY fallback; allow creates a conntrack entry.
 * Headers are read directly from the linear packet data (helper fallback), the
 * config once per packet, the clock only where a timestamp is needed.
 * Allowed packets return TC_ACT_UNSPEC (= TCX_NEXT), so programs attached after
 * ours still run; drops return TC_ACT_SHOT.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "palisade_abi.h"
#include "lib/parse.h"
#include "lib/events.h"
#include "lib/policy.h"
#include "lib/conntrack.h"
#include "lib/service.h"

/* The kernel needs a GPL-compatible string for some helpers; the source is dual licensed. */
char LICENSE[] SEC("license") = "GPL";

/* Carries every ABI enum into BTF for the Rust side's check (palisade_abi.h);
 * a data section no loader turns into a map, never read. */
struct palisade_abi_enums palisade_abi_enums SEC(".palisade_abi") __attribute__((used));

/* Allow: TC_ACT_UNSPEC (-1) = TCX_NEXT, programs after ours still run; at the
 * end of the chain (or for a clsact filter) the packet passes. */
#define VERDICT_PASS PALISADE_TC_ACT_UNSPEC
/* Drop. */
#define VERDICT_DROP PALISADE_TC_ACT_SHOT

static __always_inline int finish(struct decision *d, const struct flow *f,
				  const struct config *cfg, __u32 reason)
{
	d->reason = reason;
	record(d, f, cfg);
	return reason >= PALISADE_REASON_FIRST_DROP ? VERDICT_DROP : VERDICT_PASS;
}

static __always_inline int is_ndp(const struct flow *f)
{
	return f->family == 6 && f->proto == IPPROTO_ICMPV6_ && f->frag == FRAG_NONE &&
	       f->icmp_type >= 133 && f->icmp_type <= 137;
}

/* Only these open a conntrack entry; other allowed packets pass statelessly. */
static __always_inline int ct_creatable(const struct flow *f)
{
	if (f->icmp_error)
		return 0;
	if (f->proto == IPPROTO_TCP)
		return !(f->tcp_flags & TCP_RST);
	if (is_icmp_proto(f->family, f->proto))
		return f->icmp_type == (f->family == 4 ? 8 : 128);
	return 1;
}

/*
 * Re-judges a tracked flow if what judged it may have changed, exactly as its
 * first packet would be judged now: in its original orientation (peer =
 * ct_key.peer_addr, the opener's destination port), under the table the
 * endpoint now points at for the flow's origin direction.
 *  1. revocation off (PALISADE_CFG_F_NO_REVOKE): never re-judged;
 *  2. same table and same epoch: nothing to do (no write);
 *  3. otherwise: identity + policy lookup. Missing identity or table: drop this
 *     packet (fail closed), keep the entry to try again. Denied: the entry
 *     becomes PALISADE_CT_REVOKED, for every protocol (both ways drop, so the
 *     other side cannot restart it as a flow of its own direction: a UDP
 *     server's reply to a datagram that arrived just before the cut would
 *     otherwise open an egress flow whose "replies" are the denied peer's
 *     datagrams, and each of them would draw another reply).
 *     Allowed: the entry takes the new table, rule, identity and epoch (one
 *     write per entry per epoch) and a REVOKED entry is revived.
 * The epoch is read BEFORE the lookups, so a batch of writes landing while
 * they run leaves an older epoch in the entry and the next packet re-judges.
 * Returns 0 if the packet may go on as tracked, else the drop reason (a
 * REVOKED entry that stays revoked answers POLICY_DENY, with its rule).
 */
static __always_inline __u32 ct_revalidate(const struct endpoint_value *ep,
					   const struct config *cfg, struct ct_key *k,
					   struct ct_value *ct, struct decision *d, __u64 now)
{
	__u32 table = ct->origin_dir == PALISADE_DIR_EGRESS ? ep->egress_table : ep->ingress_table;
	struct policy_value pv;
	__u32 epoch = 0, id = 0;
	__u16 odport;
	int off = cfg && (cfg->flags & PALISADE_CFG_F_NO_REVOKE);

	if (!off)
		epoch = epoch_get();
	if (off || (ct->table == table && ct->epoch == epoch)) {
		if (ct->state != PALISADE_CT_REVOKED)
			return 0;
		d->table = ct->table;
		d->rule_id = ct->rule_id;
		d->identity = ct->identity;
		return PALISADE_REASON_POLICY_DENY;
	}
	stat_inc(PALISADE_STAT_CT_RECHECKED);
	d->table = table;
	if (ct->origin_dir == PALISADE_DIR_EGRESS && !ct->frontend_id &&
	    svc_port_proto(k->proto)) {
		/* Untranslated Service flows are judged by every backend again; a
		 * flow that was opened to an address before it became a frontend is
		 * cut (translation starts with its next connection). */
		struct svc_frontend_value *fe =
			svc_frontend_lookup(k->family, k->peer_addr, k->peer_port, k->proto);

		if (fe || (ct->flags & PALISADE_CT_F_SVC_ALL)) {
			struct svc_all_ctx c = {
				.set = fe ? fe->set : 0,
				.table = table,
				.family = k->family,
				.proto = k->proto,
			};

			pv.action = fe && (ct->flags & PALISADE_CT_F_SVC_ALL) &&
						    svc_judge_all(&c, fe->count)
					    ? PALISADE_ACTION_ALLOW
					    : PALISADE_ACTION_DENY;
			pv.rule_id = c.rule_id;
			id = c.identity;
			d->identity = id;
			d->rule_id = pv.rule_id;
			goto judged;
		}
	}
	if (identity_lookup(k->family, k->peer_addr, &id))
		return PALISADE_REASON_NO_IDENTITY;
	d->identity = id;
	odport = ct->origin_dir == PALISADE_DIR_EGRESS ? k->peer_port : k->pod_port;
	if (policy_lookup(table, id, k->proto, odport, &pv))
		return PALISADE_REASON_NO_TABLE;
	d->rule_id = pv.rule_id;
judged:
	if (pv.action != PALISADE_ACTION_ALLOW) {
		if (ct->state != PALISADE_CT_REVOKED)
			stat_inc(PALISADE_STAT_CT_REVOKED);
		if (ct->state != PALISADE_CT_REVOKED)
			ct->last_seen_ns = now;
		ct->state = PALISADE_CT_REVOKED;
	} else if (ct->state == PALISADE_CT_REVOKED) {
		/* Allowed again: what a mid-stream packet without an entry would get. */
		ct->state = k->proto == IPPROTO_TCP ? PALISADE_CT_ESTABLISHED : PALISADE_CT_OPEN;
		ct->tcp_fin = 0;
		ct->last_seen_ns = now;
	}
	ct->table = table;
	ct->rule_id = pv.rule_id;
	ct->identity = id;
	ct->epoch = epoch;
	return ct->state == PALISADE_CT_REVOKED ? PALISADE_REASON_POLICY_DENY : 0;
}

/* A new SYN from the origin on a closed or revoked TCP tuple is a new
 * connection: judged by policy again. */
static __always_inline int ct_reopens(const struct ct_value *ct, __u32 dir, const struct flow *f)
{
	return f->proto == IPPROTO_TCP &&
	       (ct->state == PALISADE_CT_CLOSING || ct->state == PALISADE_CT_REVOKED) &&
	       ct->origin_dir == dir && (f->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN;
}

static __always_inline int handle(struct __sk_buff *skb, __u32 dir)
{
	struct decision d = { .ifindex = skb->ifindex, .dir = dir };
	struct flow f = {};
	struct endpoint_value *ep;
	struct policy_value pv;
	struct ct_value *ct;
	/* Read once per packet; NULL only if the map is broken (then: logging
	 * off, conntrack on). */
	const struct config *cfg = config_get();
	struct ct_key k, orig;
	struct svc_frontend_value fe = {};
	int svc = SVC_NONE, reopen;
	__u8 *peer;
	/* The clock (ct_now) is read only where a timestamp is needed (expiry
	 * checks, new state): a denied new flow never reads it. */
	__u64 now = 0;
	__u32 epoch = 0, why;
	int rc, create;

	ep = bpf_map_lookup_elem(&palisade_endpoints, &d.ifindex);
	if (!ep)
		return finish(&d, &f, cfg, PALISADE_REASON_NO_ENDPOINT);
	d.slot = ep->slot;
	d.ep_flags = ep->flags;
	d.table = dir == PALISADE_DIR_EGRESS ? ep->egress_table : ep->ingress_table;

	rc = parse_frame(skb, &f);
	if (rc == PARSE_NON_IP)
		return finish(&d, &f, cfg, PALISADE_REASON_NON_IP);
	if (rc == PARSE_VLAN)
		return finish(&d, &f, cfg, PALISADE_REASON_VLAN);
	if (rc == PARSE_EXT_LIMIT)
		return finish(&d, &f, cfg, PALISADE_REASON_IPV6_EXT_LIMIT);
	if (rc != PARSE_OK)
		return finish(&d, &f, cfg, PALISADE_REASON_MALFORMED);

	if (is_ndp(&f)) {
		/* A pod is never a router: a Router Advertisement (134) or Redirect
		 * (137) from it would steer its neighbours' traffic, so it drops as
		 * spoofing (unless the endpoint may source any address). */
		if (dir == PALISADE_DIR_EGRESS && !(ep->flags & PALISADE_EP_F_NO_SPOOF_CHECK) &&
		    (f.icmp_type == 134 || f.icmp_type == 137))
			return finish(&d, &f, cfg, PALISADE_REASON_SPOOF);
		return finish(&d, &f, cfg, PALISADE_REASON_NDP);
	}

	if (dir == PALISADE_DIR_EGRESS && !(ep->flags & PALISADE_EP_F_NO_SPOOF_CHECK) &&
	    !endpoint_owns(ep, &f))
		return finish(&d, &f, cfg, PALISADE_REASON_SPOOF);

	if (f.frag == FRAG_LATER) {
		now = ct_now();
		return finish(&d, &f, cfg,
			      frag_known(d.ifindex, dir, &f, now) ? PALISADE_REASON_FRAG_TRACKED
								  : PALISADE_REASON_FRAG_NO_STATE);
	}

	if (f.icmp_error) {
		struct flow in = {};

		now = ct_now();
		if (parse_icmp_inner(skb, &f, &in) == PARSE_OK) {
			/* The inner packet travelled the other way. */
			ct_key_from(&k, d.ifindex, dir ^ 1, &in);
			ct = bpf_map_lookup_elem(&palisade_conntrack, &k);
			if (ct && !ct_expired(ct, now)) {
				why = ct_revalidate(ep, cfg, &k, ct, &d, now);
				if (why)
					return finish(&d, &f, cfg, why);
				d.rule_id = ct->rule_id;
				d.identity = ct->identity;
				return finish(&d, &f, cfg, PALISADE_REASON_CT_RELATED);
			}
		}
		/* Unrelated error: judged by policy below, never creates state. */
	}

	ct_key_from(&k, d.ifindex, dir, &f);
	ct = bpf_map_lookup_elem(&palisade_conntrack, &k);
	if (ct)
		now = ct_now();
	if (ct && ct_expired(ct, now)) {
		stat_inc(PALISADE_STAT_CT_EXPIRED);
		ct = NULL;
	}
	reopen = ct && ct_reopens(ct, dir, &f);
	if (dir == PALISADE_DIR_EGRESS && (!ct || reopen)) {
		orig = k;
		svc = svc_translate(skb, &f, &k, &orig, &fe);
		if (svc == SVC_NO_BACKEND)
			return finish(&d, &f, cfg, PALISADE_REASON_SVC_NO_BACKEND);
		if (svc == SVC_ERROR)
			return finish(&d, &f, cfg, PALISADE_REASON_MALFORMED);
		if (svc == SVC_TRANSLATED) {
			if (!now)
				now = ct_now();
			ct = bpf_map_lookup_elem(&palisade_conntrack, &k);
			if (ct && ct_expired(ct, now)) {
				stat_inc(PALISADE_STAT_CT_EXPIRED);
				ct = NULL;
			}
			reopen = ct && ct_reopens(ct, dir, &f);
		}
	}
	if (ct && !reopen) {
		int forward = ct->origin_dir == dir;
		int changed = 0;

		why = ct_revalidate(ep, cfg, &k, ct, &d, now);
		if (why)
			return finish(&d, &f, cfg, why);
		if (!forward && ct->frontend_id) {
			if (svc_reverse(skb, &f, ct->frontend_id))
				return finish(&d, &f, cfg, PALISADE_REASON_SVC_NO_REVNAT);
			stat_inc(PALISADE_STAT_SVC_REVERSED);
		}
		if (f.proto == IPPROTO_TCP)
			changed |= ct_tcp_update(ct, forward, f.tcp_flags);
		if (changed || now - ct->last_seen_ns > PALISADE_CT_REFRESH_S * NS_PER_S)
			ct->last_seen_ns = now;
		if (f.frag == FRAG_FIRST)
			frag_track(d.ifindex, dir, &f, now);
		d.rule_id = ct->rule_id;
		d.identity = ct->identity;
		d.table = ct->table;
		return finish(&d, &f, cfg,
			      forward ? PALISADE_REASON_CT_ESTABLISHED : PALISADE_REASON_CT_REPLY);
	}

	create = ct_creatable(&f) && !(cfg && (cfg->flags & PALISADE_CFG_F_NO_CT_CREATE));
	/* Before the lookups, as in ct_revalidate: an entry must never claim an
	 * epoch newer than the maps it was judged by. */
	if (create)
		epoch = epoch_get();
	if (svc == SVC_ALL) {
		stat_inc(PALISADE_STAT_SVC_UNTRANSLATED);
		struct svc_all_ctx c = {
			.set = fe.set,
			.table = d.table,
			.family = f.family,
			.proto = f.proto,
		};
		int all = svc_judge_all(&c, fe.count);

		d.rule_id = c.rule_id;
		d.identity = c.identity;
		if (!all)
			return finish(&d, &f, cfg, PALISADE_REASON_SVC_UNTRANSLATED_DENY);
		pv.rule_id = d.rule_id;
	} else {
		peer = dir == PALISADE_DIR_EGRESS ? f.daddr : f.saddr;
		if (identity_lookup(f.family, peer, &d.identity))
			return finish(&d, &f, cfg, PALISADE_REASON_NO_IDENTITY);
		if (policy_lookup(d.table, d.identity, f.proto, f.dport, &pv))
			return finish(&d, &f, cfg, PALISADE_REASON_NO_TABLE);
		d.rule_id = pv.rule_id;
		if (pv.action != PALISADE_ACTION_ALLOW)
			return finish(&d, &f, cfg, PALISADE_REASON_POLICY_DENY);
	}
	if (svc == SVC_TRANSLATED) {
		stat_inc(PALISADE_STAT_SVC_TRANSLATED);
		svc_remember(&orig);
	}

	if (create || f.frag == FRAG_FIRST)
		now = ct_now();
	if (create) {
		struct ct_value v = {
			.created_ns = now,
			.last_seen_ns = now,
			.rule_id = pv.rule_id,
			.table = d.table,
			.identity = d.identity,
			.origin_dir = dir,
			.epoch = epoch,
			.flags = svc == SVC_ALL ? PALISADE_CT_F_SVC_ALL : 0,
			.frontend_id = svc == SVC_TRANSLATED ? fe.id : 0,
		};

		if (f.proto == IPPROTO_TCP)
			v.state = (f.tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN
					  ? PALISADE_CT_SYN_SENT
					  : PALISADE_CT_ESTABLISHED;
		else
			v.state = PALISADE_CT_OPEN;
		if (bpf_map_update_elem(&palisade_conntrack, &k, &v, BPF_ANY))
			stat_inc(PALISADE_STAT_CT_CREATE_FAILED);
		else
			stat_inc(PALISADE_STAT_CT_CREATED);
	}
	if (f.frag == FRAG_FIRST)
		frag_track(d.ifindex, dir, &f, now);
	return finish(&d, &f, cfg, PALISADE_REASON_POLICY_ALLOW);
}

SEC("classifier")
int from_pod(struct __sk_buff *skb)
{
	return handle(skb, PALISADE_DIR_EGRESS);
}

SEC("classifier")
int to_pod(struct __sk_buff *skb)
{
	return handle(skb, PALISADE_DIR_INGRESS);
}

SEC("classifier")
int noop(struct __sk_buff *skb)
{
	return TC_ACT_UNSPEC;
}
