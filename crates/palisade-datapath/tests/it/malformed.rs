//! Malformed packets through the production program (issue 14): a generated corpus
//! from a fixed seed (truncation at every byte, bad IHL and options, bad lengths, tiny
//! and overlapping fragments, IPv6 extension-header chains at and past the limit, bad
//! checksums, VLAN tags, the largest frames a test run takes, ICMP errors quoting
//! forged inner headers), each run once through `BPF_PROG_TEST_RUN` and judged against
//! a reference parser written from the RFCs (below, not the program's code):
//!
//! - a packet the reference reads as a flow gets the compiled lookup's verdict, or is
//!   dropped with a counted fail-closed reason, never a policy verdict the lookup does
//!   not give;
//! - a packet the reference cannot read (truncated, inconsistent lengths, a transport
//!   header cut by the IP length, a VLAN tag, too many extension headers) is dropped;
//! - every packet moves exactly one reason counter, and a pass is one of the reasons
//!   that may pass: nothing is allowed by accident.
//!
//! `PALISADE_MALFORMED_SEED` replays another seed; `PALISADE_MALFORMED_ROUNDS` runs
//! more random mutations (`palisade soak`-style long run; CI runs the default).

use std::net::IpAddr;

use palisade_datapath::abi::*;
use palisade_datapath::packet::{Frag, Packet, L4};
use palisade_datapath::Hook;
use palisade_policy::compiled::{Compiled, TableAction};

use crate::common::*;

const SYN: u8 = 0x02;
const POD4: &str = "10.0.0.1";
const POD6: &str = "fd00::1";

/// What the reference reads in a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ref {
    /// Not IP (ARP...): passes as non-ip by design.
    NonIp,
    /// 802.1Q / 802.1ad tag: dropped.
    Vlan,
    /// Cannot be read: dropped.
    Malformed(&'static str),
    /// More IPv6 extension headers than the datapath walks: dropped.
    ExtLimit,
    /// A transport flow.
    Flow(Flow),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Flow {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    dport: u16,
    /// A fragment after the first (no transport header): its id.
    later_fragment: Option<u32>,
    /// The first fragment of a datagram (offset 0, more fragments): its id.
    first_fragment: Option<u32>,
    /// ICMP/ICMPv6 type, when ICMP.
    icmp_type: Option<u8>,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// The transport bytes a flow needs (what the datapath reads: TCP through its flags
/// byte, UDP/SCTP ports, the 8-byte ICMP header), all inside the IP packet.
fn transport(ip: &[u8], l4: usize, end: usize, family: u8, proto: u8) -> Result<u16, &'static str> {
    let need = match proto {
        6 => 14,
        17 | 132 => 4,
        1 if family == 4 => 8,
        58 if family == 6 => 8,
        _ => 0,
    };
    if l4 + need > end {
        return Err("transport header cut by the IP length");
    }
    Ok(match proto {
        6 | 17 | 132 => be16(ip, l4 + 2),
        _ => 0,
    })
}

fn reference(frame: &[u8]) -> Ref {
    if frame.len() < 14 {
        return Ref::Malformed("no ethernet header");
    }
    let ip = &frame[14..];
    match be16(frame, 12) {
        0x0800 => {
            if ip.len() < 20 || ip[0] >> 4 != 4 {
                return Ref::Malformed("ipv4 header");
            }
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let tot = usize::from(be16(ip, 2));
            if ihl < 20 {
                return Ref::Malformed("ihl < 5");
            }
            if tot < ihl || tot > ip.len() {
                return Ref::Malformed("ipv4 total length");
            }
            let src = IpAddr::from([ip[12], ip[13], ip[14], ip[15]]);
            let dst = IpAddr::from([ip[16], ip[17], ip[18], ip[19]]);
            let proto = ip[9];
            let fo = be16(ip, 6);
            let id = u32::from(be16(ip, 4));
            if fo & 0x1fff != 0 {
                return Ref::Flow(Flow {
                    src,
                    dst,
                    proto,
                    dport: 0,
                    later_fragment: Some(id),
                    first_fragment: None,
                    icmp_type: None,
                });
            }
            match transport(ip, ihl, tot, 4, proto) {
                Err(why) => Ref::Malformed(why),
                Ok(dport) => Ref::Flow(Flow {
                    src,
                    dst,
                    proto,
                    dport,
                    later_fragment: None,
                    first_fragment: (fo & 0x2000 != 0).then_some(id),
                    icmp_type: (proto == 1).then(|| ip[ihl]),
                }),
            }
        }
        0x86dd => {
            if ip.len() < 40 || ip[0] >> 4 != 6 {
                return Ref::Malformed("ipv6 header");
            }
            let end = 40 + usize::from(be16(ip, 4));
            if end > ip.len() {
                return Ref::Malformed("ipv6 payload length");
            }
            let src = IpAddr::from(<[u8; 16]>::try_from(&ip[8..24]).unwrap());
            let dst = IpAddr::from(<[u8; 16]>::try_from(&ip[24..40]).unwrap());
            let (mut nh, mut off) = (ip[6], 40usize);
            let mut first_fragment = None;
            let ext = |nh: u8| matches!(nh, 0 | 43 | 60 | 44 | 51);
            for _ in 0..IPV6_MAX_EXT {
                if !ext(nh) {
                    break;
                }
                if off + 8 > end {
                    return Ref::Malformed("extension header cut");
                }
                let h = &ip[off..off + 8];
                match nh {
                    44 => {
                        let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                        nh = h[0];
                        off += 8;
                        if be16(h, 2) & 0xfff8 != 0 {
                            return Ref::Flow(Flow {
                                src,
                                dst,
                                proto: nh,
                                dport: 0,
                                later_fragment: Some(id),
                                first_fragment: None,
                                icmp_type: None,
                            });
                        }
                        if be16(h, 2) & 1 != 0 {
                            first_fragment = Some(id);
                        }
                    }
                    51 => {
                        nh = h[0];
                        off += (usize::from(h[1]) + 2) * 4;
                    }
                    _ => {
                        nh = h[0];
                        off += (usize::from(h[1]) + 1) * 8;
                    }
                }
            }
            if ext(nh) {
                return Ref::ExtLimit;
            }
            match transport(ip, off, end, 6, nh) {
                Err(why) => Ref::Malformed(why),
                Ok(dport) => Ref::Flow(Flow {
                    src,
                    dst,
                    proto: nh,
                    dport,
                    later_fragment: None,
                    first_fragment,
                    icmp_type: (nh == 58).then(|| ip[off]),
                }),
            }
        }
        0x8100 | 0x88a8 => Ref::Vlan,
        _ => Ref::NonIp,
    }
}

/// Ingress: TCP 80 and UDP 53 from identity 8 (192.0.2.0/24, 2001:db8::/64), the
/// rest denied; egress: TCP 443 and UDP 53 to anyone, the rest denied. ICMP is
/// denied both ways, so an ICMP error passes only as related to tracked state.
fn policy() -> Compiled {
    let mut ingress = ports(8, 6, &[(80, 80, allow(10))], deny(11));
    ingress.extend(ports(8, 17, &[(53, 53, allow(12))], deny(13)));
    let mut egress = ports(0, 6, &[(443, 443, allow(20))], deny(21));
    egress.extend(ports(0, 17, &[(53, 53, allow(22))], deny(23)));
    compiled(
        table(deny(1), &ingress),
        table(deny(2), &egress),
        &[("192.0.2.0/24", 8), ("2001:db8::/64", 8)],
    )
}

/// Well-formed packets each mutation starts from: (hook, packet).
fn bases() -> Vec<(Hook, Packet)> {
    let i = Hook::ToPod;
    let e = Hook::FromPod;
    let mut v6ext = Packet::tcp("2001:db8::7", POD6, 5000, 80, SYN);
    v6ext.v6_ext = vec![0, 60];
    let mut first = Packet::udp("192.0.2.7", POD4, 999, 53);
    first.frag = Some(Frag {
        id: 7,
        offset: 0,
        more: true,
    });
    let mut first6 = Packet::udp("2001:db8::7", POD6, 999, 53);
    first6.frag = Some(Frag {
        id: 9,
        offset: 0,
        more: true,
    });
    let mut opts = Packet::tcp("192.0.2.9", POD4, 4000, 80, SYN);
    opts.v4_option_words = 3;
    let echo = |src: &str, dst: &str| {
        Packet::new(
            src.parse().unwrap(),
            dst.parse().unwrap(),
            L4::Icmp {
                ty: 8,
                code: 0,
                id: 77,
                inner: vec![],
            },
        )
    };
    let unreachable = Packet::new(
        "198.51.100.1".parse().unwrap(),
        POD4.parse().unwrap(),
        L4::Icmp {
            ty: 3,
            code: 3,
            id: 0,
            inner: Packet::udp(POD4, "198.51.100.9", 40000, 53).ip_bytes(),
        },
    );
    vec![
        (i, Packet::tcp("192.0.2.7", POD4, 5000, 80, SYN)),
        (i, Packet::tcp("192.0.2.7", POD4, 5000, 81, SYN)),
        (i, Packet::tcp("198.51.100.1", POD4, 5000, 80, SYN)),
        (i, Packet::udp("192.0.2.7", POD4, 5000, 53)),
        (i, Packet::udp("2001:db8::7", POD6, 5000, 53)),
        (i, Packet::tcp("2001:db8:1::7", POD6, 5000, 80, SYN)),
        (i, v6ext),
        (i, first),
        (i, first6),
        (i, opts),
        (i, echo("192.0.2.7", POD4)),
        (i, unreachable),
        (
            i,
            Packet::new(
                "192.0.2.7".parse().unwrap(),
                POD4.parse().unwrap(),
                L4::Sctp {
                    sport: 1,
                    dport: 80,
                },
            ),
        ),
        (e, Packet::tcp(POD4, "198.51.100.1", 4000, 443, SYN)),
        (e, Packet::udp(POD6, "2001:db8:5::1", 4000, 53)),
        (e, Packet::udp(POD4, "198.51.100.1", 4000, 54)),
        (e, echo(POD6, "2001:db8::1")),
        (
            e,
            Packet::new(
                POD4.parse().unwrap(),
                "198.51.100.1".parse().unwrap(),
                L4::Other(47),
            ),
        ),
    ]
}

/// The mutations of one base frame: (what, frame).
fn mutations(rng: &mut Rng, base: &Packet, rounds: usize) -> Vec<(String, Vec<u8>)> {
    let good = base.frame();
    let v4 = base.src.is_ipv4();
    let mut out = vec![("as built".to_string(), good.clone())];
    // Truncated at every byte (the kernel refuses frames shorter than Ethernet).
    for n in 14..good.len() {
        out.push((format!("cut to {n} bytes"), good[..n].to_vec()));
    }
    // The IP length says less than the frame holds (Ethernet padding follows): the
    // transport header must be read inside the IP packet, not from the padding.
    for short in 0..good.len().saturating_sub(14) {
        let mut f = good.clone();
        f.extend_from_slice(&[0x5a; 32]);
        if v4 {
            f[16..18].copy_from_slice(&(short as u16).to_be_bytes());
        } else if short >= 40 {
            f[18..20].copy_from_slice(&((short - 40) as u16).to_be_bytes());
        } else {
            continue;
        }
        out.push((format!("ip length {short} of a longer frame"), f));
    }
    if v4 {
        for ihl in 0..16u8 {
            let mut f = good.clone();
            f[14] = 0x40 | ihl;
            out.push((format!("ihl {ihl}"), f));
        }
        for ver in [0u8, 5, 6, 15] {
            let mut f = good.clone();
            f[14] = ver << 4 | (f[14] & 0x0f);
            out.push((format!("version {ver} in an ipv4 frame"), f));
        }
        for words in 1..=10u8 {
            let mut p = base.clone();
            p.v4_option_words = words;
            out.push((format!("{words} option words"), p.frame()));
        }
    } else {
        for chain in [
            vec![0u8, 60, 43],
            vec![0, 60, 43, 60],
            vec![0, 60, 43, 60, 60],
            vec![60; 8],
        ] {
            let mut p = base.clone();
            p.v6_ext = chain.clone();
            out.push((format!("extension chain {chain:?}"), p.frame()));
        }
        // A hop-by-hop header whose length runs past the packet.
        let mut p = base.clone();
        p.v6_ext = vec![0];
        let mut f = p.frame();
        f[14 + 40 + 1] = 200;
        out.push(("extension length past the end".into(), f));
        // AH (next header 51) and a fragment header in the chain.
        let mut f = p.frame();
        f[14 + 6] = 51;
        f[14 + 40 + 1] = 0; // AH of (0 + 2) * 4 = 8 bytes
        out.push(("ah header".into(), f));
        let mut f = good.clone();
        f[14] = 0x40 | (f[14] & 0x0f);
        out.push(("version 4 in an ipv6 frame".into(), f));
    }
    // Tiny and overlapping fragments.
    for (offset, more) in [
        (0u16, true),
        (1, true),
        (1, false),
        (2, false),
        (8191, false),
    ] {
        let mut p = base.clone();
        p.frag = Some(Frag {
            id: 7,
            offset,
            more,
        });
        out.push((
            format!("fragment id 7 offset {offset} more {more}"),
            p.frame(),
        ));
    }
    // Bad checksums: the program does not verify them, nor should the verdict change.
    let mut f = good.clone();
    let at = if v4 { 14 + 10 } else { 14 + 40 + 2 };
    f[at] ^= 0xff;
    f[at + 1] ^= 0x5a;
    out.push(("bad checksum".into(), f));
    // VLAN tags (802.1Q, 802.1ad).
    for tpid in [0x8100u16, 0x88a8] {
        let mut f = good[..12].to_vec();
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&[0, 5]);
        f.extend_from_slice(&good[12..]);
        out.push((format!("vlan tag {tpid:#x}"), f));
    }
    // The largest frames: a test run takes about a page, so GSO sizes are claimed by
    // the IP length (too long for the frame: malformed) rather than carried.
    for len in [1514usize, 3000] {
        let mut f = good.clone();
        f.resize(len, 0);
        let ip_len = (len - 14) as u16;
        if v4 {
            f[16..18].copy_from_slice(&ip_len.to_be_bytes());
        } else {
            f[18..20].copy_from_slice(&(ip_len - 40).to_be_bytes());
        }
        out.push((format!("{len}-byte frame"), f));
        let mut f = good.clone();
        f.resize(len, 0);
        if v4 {
            f[16..18].copy_from_slice(&[0xff, 0xff]);
        } else {
            f[18..20].copy_from_slice(&[0xff, 0xff]);
        }
        out.push((format!("{len}-byte frame claiming 65535"), f));
        let mut f = good.clone();
        f.resize(len, 0);
        let z = if v4 { 16 } else { 18 };
        f[z..z + 2].copy_from_slice(&[0, 0]);
        out.push((format!("{len}-byte frame with length 0 (BIG TCP style)"), f));
    }
    // Random byte flips anywhere past the Ethernet addresses.
    for r in 0..rounds {
        let mut f = good.clone();
        for _ in 0..1 + rng.below(3) {
            let at = 12 + rng.below((f.len() - 12) as u64) as usize;
            f[at] = rng.next() as u8;
        }
        out.push((format!("random flip {r}"), f));
    }
    out
}

/// The reason counter one run moved (exactly one must move).
fn moved(
    before: &palisade_datapath::EndpointCounters,
    after: &palisade_datapath::EndpointCounters,
) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for dir in 0..DIR_NR {
        for r in 0..REASON_NR {
            let n = after[dir][r] - before[dir][r];
            for _ in 0..n {
                out.push((dir as u32, r as u32));
            }
        }
    }
    out
}

fn endpoint_counters(t: &TestDp) -> palisade_datapath::EndpointCounters {
    t.counters()
        .expect("counters")
        .endpoints
        .get(&1)
        .copied()
        .unwrap_or_default()
}

#[test]
fn malformed_packets_follow_the_reference_or_drop_with_a_counted_reason() {
    let seed: u64 = std::env::var("PALISADE_MALFORMED_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6_221_076);
    let rounds: usize = std::env::var("PALISADE_MALFORMED_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let mut rng = Rng(seed);
    let c = policy();
    let mut t = loaded(&c);
    // Each packet judged on its own: no conntrack state carried from one to the next
    // (fragment state of allowed first fragments is still kept).
    t.set_config(Config {
        flags: CFG_F_NO_CT_CREATE,
        ..Config::default()
    })
    .unwrap();
    let pod4: IpAddr = POD4.parse().unwrap();
    let pod6: IpAddr = POD6.parse().unwrap();
    let (mut run, mut refused, mut allowed, mut fail_closed) = (0usize, 0usize, 0usize, 0usize);
    let mut first_fragments_allowed: Vec<(IpAddr, IpAddr, u32)> = Vec::new();
    let mut failures = Vec::new();
    for (hook, base) in bases() {
        let egress = hook == Hook::FromPod;
        let dir = if egress { DIR_EGRESS } else { DIR_INGRESS };
        for (what, frame) in mutations(&mut rng, &base, rounds) {
            let before = endpoint_counters(&t);
            let rc = match t.test_run(hook, &frame, 1) {
                Ok((rc, _)) => rc,
                // The kernel refuses some frames before the program runs (shorter
                // than an Ethernet header plus what it pulls): nothing to judge.
                Err(_) => {
                    refused += 1;
                    continue;
                }
            };
            run += 1;
            let passed = match rc {
                TC_ACT_UNSPEC => true,
                TC_ACT_SHOT => false,
                other => panic!("{what}: return code {other}"),
            };
            let m = moved(&before, &endpoint_counters(&t));
            let case = format!("{base:?} {what} ({} bytes)", frame.len());
            let [(d, reason)] = m[..] else {
                failures.push(format!("{case}: counters moved {m:?}, not exactly one"));
                continue;
            };
            assert_eq!(d, dir, "{case}");
            if passed != (reason < REASON_FIRST_DROP) {
                failures.push(format!("{case}: passed={passed} with reason {reason}"));
                continue;
            }
            allowed += usize::from(passed);
            let r = reference(&frame);
            let ok = match &r {
                Ref::NonIp => reason == REASON_NON_IP,
                Ref::Vlan => reason == REASON_VLAN,
                Ref::ExtLimit => reason == REASON_IPV6_EXT_LIMIT,
                Ref::Malformed(_) => !passed,
                Ref::Flow(f) => {
                    let own = if f.src.is_ipv4() { pod4 } else { pod6 };
                    let ndp = f.proto == 58
                        && f.first_fragment.is_none()
                        && matches!(f.icmp_type, Some(133..=137));
                    // A pod's own Router Advertisement or Redirect is spoofing.
                    let router = egress && matches!(f.icmp_type, Some(134 | 137));
                    if ndp && router {
                        reason == REASON_SPOOF
                    } else if ndp {
                        reason == REASON_NDP
                    } else if egress && f.src != own {
                        reason == REASON_SPOOF
                    } else if let Some(id) = f.later_fragment {
                        let seen = first_fragments_allowed.contains(&(f.src, f.dst, id));
                        match reason {
                            REASON_FRAG_TRACKED => seen,
                            REASON_FRAG_NO_STATE => true,
                            _ => false,
                        }
                    } else {
                        let peer = if egress { f.dst } else { f.src };
                        let table = if egress { 2 } else { 1 };
                        let want = c.lookup(table, c.lookup_identity(peer), f.proto, f.dport);
                        let allow = want.action == TableAction::Allow;
                        match reason {
                            REASON_POLICY_ALLOW => allow,
                            REASON_POLICY_DENY => !allow,
                            // Dropped for a reason that is not a verdict: fail closed.
                            _ if !passed => {
                                fail_closed += 1;
                                true
                            }
                            _ => false,
                        }
                    }
                }
            };
            if !ok {
                failures.push(format!(
                    "{case}: passed={passed} reason {reason}, reference {r:?}"
                ));
            }
            if let (true, Ref::Flow(f)) = (passed, &r) {
                if let Some(id) = f.first_fragment {
                    first_fragments_allowed.push((f.src, f.dst, id));
                }
            }
        }
    }
    println!(
        "malformed: seed {seed}: {run} packets run ({refused} refused by the kernel), {allowed} passed, {fail_closed} dropped fail-closed where the reference gives a verdict, {} wrong",
        failures.len()
    );
    assert!(run > 1000, "the corpus ran: {run}");
    assert!(
        failures.is_empty(),
        "{} packets off the reference:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// An ICMP error from anywhere to the pod, quoting `inner` (the packet it is about).
fn icmp_error(v4: bool, inner: Vec<u8>) -> Packet {
    let (src, dst, ty) = if v4 {
        ("203.0.113.1", POD4, 3)
    } else {
        ("2001:db8:ff::1", POD6, 1)
    };
    Packet::new(
        src.parse().unwrap(),
        dst.parse().unwrap(),
        L4::Icmp {
            ty,
            code: 3,
            id: 0,
            inner,
        },
    )
}

#[test]
fn icmp_errors_quoting_forged_inner_headers_match_no_state_and_open_none() {
    let c = policy();
    let mut t = loaded(&c);
    let mut genuine = 0;
    for v4 in [true, false] {
        let (pod, peer, other_peer, other_pod) = if v4 {
            (POD4, "198.51.100.9", "198.51.100.8", "10.0.0.2")
        } else {
            (POD6, "2001:db8:5::9", "2001:db8:5::8", "fd00::2")
        };
        // A real flow: the pod's DNS query (egress UDP 53 is allowed).
        let out = Packet::udp(pod, peer, 40000, 53);
        assert!(t.run(Hook::FromPod, &out.frame()));
        let q = out.ip_bytes();
        assert!(
            t.run(Hook::ToPod, &icmp_error(v4, q.clone()).frame()),
            "the genuine error about the flow passes as related"
        );
        genuine += 1;
        let entries = |t: &mut TestDp| t.conntrack().iter().filter_map(|r| r.ok()).count();
        let before = entries(&mut t);
        let hl = if v4 { 20 } else { 40 };
        let mut bad_version = q.clone();
        bad_version[0] = (bad_version[0] & 0x0f) | if v4 { 0x60 } else { 0x40 };
        let mut forged: Vec<(&str, Vec<u8>)> = vec![
            (
                "another pod's flow",
                Packet::udp(other_pod, peer, 40000, 53).ip_bytes(),
            ),
            (
                "another source port",
                Packet::udp(pod, peer, 40001, 53).ip_bytes(),
            ),
            (
                "another peer",
                Packet::udp(pod, other_peer, 40000, 53).ip_bytes(),
            ),
            (
                "the reply direction",
                Packet::udp(peer, pod, 53, 40000).ip_bytes(),
            ),
            (
                "tcp instead of udp",
                Packet::tcp(pod, peer, 40000, 53, SYN).ip_bytes(),
            ),
            ("cut before the ports", q[..hl + 2].to_vec()),
            ("only the ip header", q[..hl].to_vec()),
            ("empty", vec![]),
        ];
        if v4 {
            let mut ihl = q.clone();
            ihl[0] = 0x43;
            forged.push(("inner ihl 3", ihl));
            let mut ihl = q.clone();
            ihl[0] = 0x4f;
            forged.push(("inner ihl 15", ihl));
        }
        forged.push(("same flow, bad version", bad_version));
        for (what, inner) in forged {
            let p = icmp_error(v4, inner);
            assert!(
                !t.run(Hook::ToPod, &p.frame()),
                "v4={v4}: an error quoting {what} is dropped"
            );
        }
        // The quoted ports exist only in bytes after the IP packet (Ethernet padding):
        // the stack trims them, so they must not match the flow.
        let mut f = icmp_error(v4, q[..hl].to_vec()).frame();
        f.extend_from_slice(&q[hl..hl + 8]);
        assert!(
            !t.run(Hook::ToPod, &f),
            "v4={v4}: quoted ports in the padding do not match the flow"
        );
        assert_eq!(
            entries(&mut t),
            before,
            "v4={v4}: no forged error opened state"
        );
    }
    assert_eq!(t.count(DIR_INGRESS, REASON_CT_RELATED), genuine);
}
