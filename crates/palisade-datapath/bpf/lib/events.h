/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * events.h: counters, statistics, runtime config and the decision ring buffer.
 */
#ifndef PALISADE_EVENTS_H
#define PALISADE_EVENTS_H

/* Pending event bytes that make a submit wake the reader: 64 events. */
#define PALISADE_EVENT_WAKEUP_BYTES (64 * sizeof(struct event))

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "palisade_abi.h"
#include "parse.h"

/* Counter rows per endpoint slot: direction x reason (palisade_abi.h). */
#define COUNTERS_PER_SLOT PALISADE_COUNTERS_PER_SLOT

/*
 * Per-CPU packet counters, u64. Index = slot * COUNTERS_PER_SLOT
 * + dir * PALISADE_REASON_NR + reason. max_entries = endpoint slots *
 * COUNTERS_PER_SLOT (set by the loader from MapSizes.endpoints + 1).
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1025 * COUNTERS_PER_SLOT);
	__type(key, __u32);
	__type(value, __u64);
} palisade_counters SEC(".maps");

/* Per-CPU global statistics, u64, indexed by enum palisade_stat. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PALISADE_STAT_NR);
	__type(key, __u32);
	__type(value, __u64);
} palisade_stats SEC(".maps");

/* Runtime knobs; single entry, key 0. All zero = logging off, no limits. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} palisade_config SEC(".maps");

/* Per-CPU token bucket for events; single entry, key 0. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ratelimit_state);
} palisade_ratelimit SEC(".maps");

/*
 * Per-CPU per-endpoint token bucket for events, indexed by endpoint slot.
 * max_entries = endpoint slots (set by the loader from MapSizes.endpoints + 1).
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1025);
	__type(key, __u32);
	__type(value, struct pod_ratelimit_state);
} palisade_pod_ratelimit SEC(".maps");

/* Decision events (struct event); size in bytes, a power of two of pages. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} palisade_events SEC(".maps");

static __always_inline void stat_inc(__u32 stat)
{
	__u64 *v = bpf_map_lookup_elem(&palisade_stats, &stat);

	if (v)
		*v += 1;
}

static __always_inline void count(__u32 slot, __u32 dir, __u32 reason)
{
	__u32 idx = slot * COUNTERS_PER_SLOT + dir * PALISADE_REASON_NR + reason;
	__u64 *v = bpf_map_lookup_elem(&palisade_counters, &idx);

	if (v)
		*v += 1;
}

static __always_inline struct config *config_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&palisade_config, &zero);
}

/* One token = 1e9 units; refill elapsed_ns * events_per_sec units. */
#define TOKEN_UNIT 1000000000ULL
/* Refill at most this much elapsed time at once (ns), to bound the product. */
#define TOKEN_MAX_ELAPSED_NS 10000000000ULL

/* Takes one token from a bucket refilled at rate per second, depth burst. */
static __always_inline int bucket_take(__u64 *tokens, __u64 *last_ns, __u32 rate, __u32 burst,
				       __u64 now)
{
	__u64 elapsed, cap;

	elapsed = now - *last_ns;
	if (elapsed > TOKEN_MAX_ELAPSED_NS)
		elapsed = TOKEN_MAX_ELAPSED_NS;
	cap = (__u64)(burst ? burst : 1) * TOKEN_UNIT;
	*tokens += elapsed * rate;
	if (*tokens > cap)
		*tokens = cap;
	*last_ns = now;
	if (*tokens < TOKEN_UNIT)
		return 0;
	*tokens -= TOKEN_UNIT;
	return 1;
}

/* The node's bucket (palisade_ratelimit). */
static __always_inline int ratelimit_take(const struct config *cfg, __u64 now)
{
	__u32 zero = 0;
	struct ratelimit_state *rl;

	if (cfg->events_per_sec == 0)
		return 1;
	rl = bpf_map_lookup_elem(&palisade_ratelimit, &zero);
	if (!rl)
		return 0;
	return bucket_take(&rl->tokens, &rl->last_ns, cfg->events_per_sec, cfg->events_burst, now);
}

/* The endpoint's bucket (palisade_pod_ratelimit[slot]); counts what it suppresses. */
static __always_inline int pod_ratelimit_take(const struct config *cfg, __u32 slot, __u64 now)
{
	struct pod_ratelimit_state *rl;

	if (cfg->pod_events_per_sec == 0)
		return 1;
	rl = bpf_map_lookup_elem(&palisade_pod_ratelimit, &slot);
	/* A slot beyond the map (pins of an older size): the node's bucket still
	 * bounds it; do not silence the pod. */
	if (!rl)
		return 1;
	if (bucket_take(&rl->tokens, &rl->last_ns, cfg->pod_events_per_sec,
			cfg->pod_events_per_sec, now))
		return 1;
	rl->suppressed += 1;
	return 0;
}

struct decision {
	__u32 ifindex;
	__u32 dir;
	__u32 slot;
	__u32 ep_flags;
	__u32 reason;
	__u32 rule_id;
	__u32 identity;
	__u32 table;
};

/*
 * Not inlined on purpose: it runs only when an event is logged, and as a
 * subprogram its prototype puts struct event into the object's BTF, where the
 * ABI test (abi_layouts_match_btf) checks it against the Rust mirror.
 */
static __noinline void event_fill(struct event *e, const struct decision *d, const struct flow *f,
				  __u64 now, int drop)
{
	e->ts_ns = now;
	e->ifindex = d->ifindex;
	e->rule_id = d->rule_id;
	e->identity = d->identity;
	e->table = d->table;
	e->dir = d->dir;
	e->action = drop ? PALISADE_ACTION_DENY : PALISADE_ACTION_ALLOW;
	e->reason = d->reason;
	e->family = f->family;
	e->proto = f->proto;
	e->tcp_flags = f->tcp_flags;
	e->pad = 0;
	e->sport = f->sport;
	e->dport = f->dport;
	__builtin_memcpy(e->saddr, f->saddr, 16);
	__builtin_memcpy(e->daddr, f->daddr, 16);
	e->pad2 = 0;
}

/*
 * Counts the decision and, if the log mode asks for it, emits an event.
 * Logged: drops under DENIES/ALL; new flows allowed by policy under ALL
 * (sampled). Established/reply/related packets are not decisions and are only
 * counted.
 */
static __always_inline void record(const struct decision *d, const struct flow *f,
				   const struct config *cfg)
{
	struct event *e;
	__u32 mode;
	__u64 now;
	int drop = d->reason >= PALISADE_REASON_FIRST_DROP;

	count(d->slot, d->dir, d->reason);
	if (!cfg)
		return;
	mode = cfg->log_mode;
	if (d->ep_flags & PALISADE_EP_F_LOG_ALL)
		mode = PALISADE_LOG_ALL;
	if (mode == PALISADE_LOG_OFF)
		return;
	if (!drop) {
		if (mode != PALISADE_LOG_ALL || d->reason != PALISADE_REASON_POLICY_ALLOW)
			return;
		if (cfg->sample_allow > 1 && bpf_get_prandom_u32() % cfg->sample_allow)
			return;
	}
	now = bpf_ktime_get_ns();
	/* The endpoint's own budget first: a flooding pod is cut at its budget and
	 * leaves the node's budget to the others. */
	if (!pod_ratelimit_take(cfg, d->slot, now)) {
		stat_inc(PALISADE_STAT_EVENTS_RATE_LIMITED);
		return;
	}
	if (!ratelimit_take(cfg, now)) {
		stat_inc(PALISADE_STAT_EVENTS_RATE_LIMITED);
		return;
	}
	e = bpf_ringbuf_reserve(&palisade_events, sizeof(*e), 0);
	if (!e) {
		stat_inc(PALISADE_STAT_EVENTS_RING_FULL);
		return;
	}
	event_fill(e, d, f, now, drop);
	/* Waking the reader costs microseconds per event on a VM (measured: from_pod went
	 * from 0.86 to 4.6 us per run with every decision logged). Wake it only once a
	 * batch is pending; the agent also drains the ring on a short timer
	 * (palisade_agent::enforcer::EVENT_POLL), so a lone event waits at most that long. */
	bpf_ringbuf_submit(e, bpf_ringbuf_query(&palisade_events, BPF_RB_AVAIL_DATA) >=
				       PALISADE_EVENT_WAKEUP_BYTES
			       ? BPF_RB_FORCE_WAKEUP
			       : BPF_RB_NO_WAKEUP);
	stat_inc(PALISADE_STAT_EVENTS_SENT);
}

#endif
