/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * parse.h: Ethernet / IPv4 / IPv6 (+ extension headers) / TCP / UDP / SCTP /
 * ICMP / ICMPv6 parsing into a struct flow.
 *
 * Every read goes through load_hdr() with a constant length: a direct read of
 * the linear part (skb->data .. skb->data_end, bounds-checked) when the bytes
 * are there, else bpf_skb_load_bytes, which copes with non-linear skbs (GSO,
 * headers in frags). Both give the same bytes, so the parse is the same; the
 * direct read only saves the helper call (a few ns each, 3+ per packet).
 */
#ifndef PALISADE_PARSE_H
#define PALISADE_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "palisade_abi.h"

/* Ethernet header length, bytes (pods' veths carry untagged Ethernet). */
#define ETH_HLEN_ 14
/* IPPROTO_ICMPV6 (linux/in6.h clashes with linux/in.h in BPF builds). */
#define IPPROTO_ICMPV6_ 58
/* IPv4 frag_off: "more fragments" flag, host order. */
#define IPV4_MF 0x2000
/* IPv4 frag_off: fragment offset in 8-byte units, host order. */
#define IPV4_OFFSET_MASK 0x1fff

/* Largest offset load_hdr reads directly (bytes): Ethernet + IPv6 + the walked
 * extension headers fit; beyond it (or for a non-linear skb) it calls the helper.
 * Also bounds the offset for the verifier. */
#define DIRECT_MAX_OFF 1024

/* Copies len (a constant) bytes at off into to; 0 on success. */
static __always_inline int load_hdr(struct __sk_buff *skb, __u32 off, void *to, const __u32 len)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;

	if (off <= DIRECT_MAX_OFF) {
		void *p = data + off;

		if (p + len <= end) {
			__builtin_memcpy(to, p, len);
			return 0;
		}
	}
	return bpf_skb_load_bytes(skb, off, to, len);
}

/* flow.frag */
enum frag_kind {
	FRAG_NONE = 0,
	/* Offset 0 with more fragments: carries the L4 header. */
	FRAG_FIRST = 1,
	/* Offset > 0: no L4 header. */
	FRAG_LATER = 2,
};

/* parse result */
enum parse_result {
	PARSE_OK = 0,
	PARSE_NON_IP = 1,
	PARSE_MALFORMED = 2,
	PARSE_EXT_LIMIT = 3,
	PARSE_VLAN = 4,
};

struct flow {
	__u8 family;
	/* IP protocol number of the transport header (after extension headers). */
	__u8 proto;
	/* enum frag_kind */
	__u8 frag;
	/* TCP flags byte, or ICMP type for ICMP/ICMPv6. */
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 icmp_code;
	/* 1 when the packet is an ICMP/ICMPv6 error (inner header at l4_off + 8). */
	__u8 icmp_error;
	__u8 pad;
	/* Network order; ICMP echo: identifier in both; others 0. */
	__u16 sport;
	__u16 dport;
	/* IPv4 id or IPv6 fragment id, host order. */
	__u32 frag_id;
	/* Offset of the transport header from the start of the frame. */
	__u32 l4_off;
	/* Offset just past the IP packet (its total or payload length): headers are
	 * read only inside it, never from Ethernet padding or trailing bytes after it,
	 * which the stack trims before anything else reads the packet. */
	__u32 ip_end;
	__u8 saddr[16];
	__u8 daddr[16];
};

/* TCP flag bits in byte 13 of the TCP header. */
#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

static __always_inline int is_icmp_proto(__u8 family, __u8 proto)
{
	return (family == 4 && proto == IPPROTO_ICMP) ||
	       (family == 6 && proto == IPPROTO_ICMPV6_);
}

static __always_inline int icmp_is_echo(__u8 family, __u8 type)
{
	if (family == 4)
		return type == 8 || type == 0;
	return type == 128 || type == 129;
}

static __always_inline int icmp_is_error(__u8 family, __u8 type)
{
	if (family == 4)
		return type == 3 || type == 11 || type == 12;
	return type >= 1 && type <= 4;
}

/* Transport ports (or ICMP type/code/id) at off; flow->proto and ip_end set. A
 * transport header cut by the IP length is malformed (a tiny first fragment, or a
 * header completed by padding the stack would trim). */
static __always_inline int parse_l4(struct __sk_buff *skb, struct flow *f, __u32 off)
{
	f->l4_off = off;
	if (f->proto == IPPROTO_TCP) {
		__u8 tcp[14];

		if ((__u64)off + sizeof(tcp) > f->ip_end || load_hdr(skb, off, tcp, sizeof(tcp)))
			return PARSE_MALFORMED;
		__builtin_memcpy(&f->sport, &tcp[0], 2);
		__builtin_memcpy(&f->dport, &tcp[2], 2);
		f->tcp_flags = tcp[13];
		return PARSE_OK;
	}
	if (f->proto == IPPROTO_UDP || f->proto == IPPROTO_SCTP) {
		__u16 ports[2];

		if ((__u64)off + sizeof(ports) > f->ip_end ||
		    load_hdr(skb, off, ports, sizeof(ports)))
			return PARSE_MALFORMED;
		f->sport = ports[0];
		f->dport = ports[1];
		return PARSE_OK;
	}
	if (is_icmp_proto(f->family, f->proto)) {
		__u8 icmp[8];

		if ((__u64)off + sizeof(icmp) > f->ip_end || load_hdr(skb, off, icmp, sizeof(icmp)))
			return PARSE_MALFORMED;
		f->icmp_type = icmp[0];
		f->icmp_code = icmp[1];
		f->tcp_flags = icmp[0];
		if (icmp_is_echo(f->family, icmp[0])) {
			__builtin_memcpy(&f->sport, &icmp[4], 2);
			f->dport = f->sport;
		} else if (icmp_is_error(f->family, icmp[0])) {
			f->icmp_error = 1;
		}
		return PARSE_OK;
	}
	return PARSE_OK;
}

static __always_inline int parse_ipv4(struct __sk_buff *skb, struct flow *f, __u32 off)
{
	__u8 ip[20];
	__u16 tot_len, frag_off;
	__u32 ihl;

	if (load_hdr(skb, off, ip, sizeof(ip)))
		return PARSE_MALFORMED;
	if ((ip[0] >> 4) != 4)
		return PARSE_MALFORMED;
	ihl = (ip[0] & 0x0f) * 4;
	if (ihl < 20)
		return PARSE_MALFORMED;
	tot_len = ((__u16)ip[2] << 8) | ip[3];
	if (tot_len < ihl || (__u64)off + tot_len > skb->len)
		return PARSE_MALFORMED;
	f->family = 4;
	f->ip_end = off + tot_len;
	f->proto = ip[9];
	__builtin_memcpy(f->saddr, &ip[12], 4);
	__builtin_memcpy(f->daddr, &ip[16], 4);
	frag_off = ((__u16)ip[6] << 8) | ip[7];
	f->frag_id = ((__u32)ip[4] << 8) | ip[5];
	if (frag_off & IPV4_OFFSET_MASK) {
		f->frag = FRAG_LATER;
		f->l4_off = off + ihl;
		return PARSE_OK;
	}
	if (frag_off & IPV4_MF)
		f->frag = FRAG_FIRST;
	return parse_l4(skb, f, off + ihl);
}

static __always_inline int parse_ipv6(struct __sk_buff *skb, struct flow *f, __u32 off)
{
	__u8 ip[40];
	__u16 payload_len;
	__u8 nh;

	if (load_hdr(skb, off, ip, sizeof(ip)))
		return PARSE_MALFORMED;
	if ((ip[0] >> 4) != 6)
		return PARSE_MALFORMED;
	payload_len = ((__u16)ip[4] << 8) | ip[5];
	if ((__u64)off + 40 + payload_len > skb->len)
		return PARSE_MALFORMED;
	f->family = 6;
	f->ip_end = off + 40 + payload_len;
	nh = ip[6];
	__builtin_memcpy(f->saddr, &ip[8], 16);
	__builtin_memcpy(f->daddr, &ip[24], 16);
	off += 40;

	/* Walk at most PALISADE_IPV6_MAX_EXT extension headers (RFC 8200 4.1). */
#pragma unroll
	for (int i = 0; i < PALISADE_IPV6_MAX_EXT; i++) {
		__u8 ext[8];

		if (nh != 0 && nh != 43 && nh != 60 && nh != 44 && nh != 51)
			break;
		/* The helper, not load_hdr: extension headers are rare, and a
		 * direct-read branch per walked header multiplies the states the
		 * verifier explores. */
		if ((__u64)off + sizeof(ext) > f->ip_end ||
		    bpf_skb_load_bytes(skb, off, ext, sizeof(ext)))
			return PARSE_MALFORMED;
		if (nh == 44) {
			/* Fragment header: offset in 8-octet units << 3, M flag bit 0. */
			__u16 fo = ((__u16)ext[2] << 8) | ext[3];

			f->frag_id = ((__u32)ext[4] << 24) | ((__u32)ext[5] << 16) |
				     ((__u32)ext[6] << 8) | ext[7];
			nh = ext[0];
			off += 8;
			if (fo & 0xfff8) {
				f->proto = nh;
				f->frag = FRAG_LATER;
				f->l4_off = off;
				return PARSE_OK;
			}
			if (fo & 1)
				f->frag = FRAG_FIRST;
		} else if (nh == 51) {
			/* AH: length in 4-octet units minus 2. */
			nh = ext[0];
			off += ((__u32)ext[1] + 2) * 4;
		} else {
			/* Hop-by-hop, routing, destination options: 8-octet units minus 1. */
			nh = ext[0];
			off += ((__u32)ext[1] + 1) * 8;
		}
	}
	if (nh == 0 || nh == 43 || nh == 60 || nh == 44 || nh == 51)
		return PARSE_EXT_LIMIT;
	f->proto = nh;
	return parse_l4(skb, f, off);
}

/* Parses the frame; on PARSE_OK f describes the flow. */
static __always_inline int parse_frame(struct __sk_buff *skb, struct flow *f)
{
	__u16 proto;

	if (load_hdr(skb, 12, &proto, sizeof(proto)))
		return PARSE_MALFORMED;
	if (proto == bpf_htons(ETH_P_IP))
		return parse_ipv4(skb, f, ETH_HLEN_);
	if (proto == bpf_htons(ETH_P_IPV6))
		return parse_ipv6(skb, f, ETH_HLEN_);
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD))
		return PARSE_VLAN;
	return PARSE_NON_IP;
}

/*
 * Inner header of an ICMP/ICMPv6 error (the packet the error is about), starting
 * at f->l4_off + 8. Read with the helper (rare path, fewer verifier states). IPv6 inner extension headers are not walked (documented
 * limit): such errors are evaluated by policy instead of passing as related.
 */
static __always_inline int parse_icmp_inner(struct __sk_buff *skb, const struct flow *f,
					    struct flow *in)
{
	__u32 off = f->l4_off + 8;

	in->family = f->family;
	if (f->family == 4) {
		__u8 ip[20];
		__u32 ihl;

		if ((__u64)off + sizeof(ip) > f->ip_end ||
		    bpf_skb_load_bytes(skb, off, ip, sizeof(ip)))
			return PARSE_MALFORMED;
		ihl = (ip[0] & 0x0f) * 4;
		if ((ip[0] >> 4) != 4 || ihl < 20)
			return PARSE_MALFORMED;
		in->proto = ip[9];
		__builtin_memcpy(in->saddr, &ip[12], 4);
		__builtin_memcpy(in->daddr, &ip[16], 4);
		off += ihl;
	} else {
		__u8 ip[40];

		if ((__u64)off + sizeof(ip) > f->ip_end ||
		    bpf_skb_load_bytes(skb, off, ip, sizeof(ip)) || (ip[0] >> 4) != 6)
			return PARSE_MALFORMED;
		in->proto = ip[6];
		__builtin_memcpy(in->saddr, &ip[8], 16);
		__builtin_memcpy(in->daddr, &ip[24], 16);
		off += 40;
	}
	if (in->proto == IPPROTO_TCP || in->proto == IPPROTO_UDP || in->proto == IPPROTO_SCTP) {
		__u16 ports[2];

		/* RFC 792 / 4443 guarantee at least 8 bytes of the inner transport. */
		if ((__u64)off + sizeof(ports) > f->ip_end ||
		    bpf_skb_load_bytes(skb, off, ports, sizeof(ports)))
			return PARSE_MALFORMED;
		in->sport = ports[0];
		in->dport = ports[1];
	} else if (is_icmp_proto(in->family, in->proto)) {
		__u8 icmp[8];

		if ((__u64)off + sizeof(icmp) > f->ip_end ||
		    bpf_skb_load_bytes(skb, off, icmp, sizeof(icmp)))
			return PARSE_MALFORMED;
		if (!icmp_is_echo(in->family, icmp[0]))
			return PARSE_MALFORMED;
		__builtin_memcpy(&in->sport, &icmp[4], 2);
		in->dport = in->sport;
	}
	return PARSE_OK;
}

#endif
