//! `BPF_PROG_TEST_RUN` of the production object, maps filled through the
//! crate's own encoder: build the packet, set up the maps, check return code,
//! reason counters and events.

use std::mem::size_of;
use std::net::IpAddr;

use palisade_datapath::abi::*;
use palisade_datapath::packet::{arp_frame, Frag, Packet, L4};
use palisade_datapath::{DecisionEvent, Error, Hook, MapSizes};
use palisade_policy::compiled::{Compiled, Delta, EndpointEntry, Op, TableEntry};

use crate::common::*;

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const FIN: u8 = 0x01;
const RST: u8 = 0x04;

fn events(t: &mut TestDp) -> Vec<DecisionEvent> {
    let mut r = t.events().expect("reader");
    std::iter::from_fn(|| r.next()).collect()
}

#[test]
fn allowed_new_flow_creates_state_so_replies_pass_an_ingress_deny() {
    let c = compiled(table(deny(1), &[]), table(allow(2), &[]), &[]);
    let mut t = loaded(&c);
    assert!(t.run(
        Hook::FromPod,
        &Packet::tcp("10.0.0.1", "1.2.3.4", 40000, 80, SYN).frame()
    ));
    assert!(t.run(
        Hook::ToPod,
        &Packet::tcp("1.2.3.4", "10.0.0.1", 80, 40000, SYN | ACK).frame()
    ));
    assert!(t.run(
        Hook::FromPod,
        &Packet::tcp("10.0.0.1", "1.2.3.4", 40000, 80, ACK).frame()
    ));
    // A new connection from the peer is still judged by the ingress table.
    assert!(!t.run(
        Hook::ToPod,
        &Packet::tcp("1.2.3.4", "10.0.0.1", 80, 40001, SYN).frame()
    ));
    assert_eq!(t.count(DIR_EGRESS, REASON_POLICY_ALLOW), 1);
    assert_eq!(t.count(DIR_INGRESS, REASON_CT_REPLY), 1);
    assert_eq!(t.count(DIR_EGRESS, REASON_CT_ESTABLISHED), 1);
    assert_eq!(t.count(DIR_INGRESS, REASON_POLICY_DENY), 1);
    assert_eq!(t.counters().unwrap().stats[STAT_CT_CREATED as usize], 1);
}

#[test]
fn denied_packet_is_logged_with_the_rule_that_denied_it() {
    let extra = ports(0, 6, &[(22, 22, deny(77))], allow(2));
    let c = compiled(table(deny(1), &[]), table(allow(2), &extra), &[]);
    let mut t = loaded(&c);
    t.set_config(Config {
        log_mode: LOG_DENIES,
        ..Config::default()
    })
    .unwrap();
    assert!(!t.run(
        Hook::FromPod,
        &Packet::tcp("10.0.0.1", "1.2.3.4", 40000, 22, SYN).frame()
    ));
    assert!(t.run(
        Hook::FromPod,
        &Packet::tcp("10.0.0.1", "1.2.3.4", 40000, 23, SYN).frame()
    ));
    let ev = events(&mut t);
    assert_eq!(
        ev.len(),
        1,
        "only the deny is logged under LOG_DENIES: {ev:?}"
    );
    let e = &ev[0];
    assert_eq!(
        (e.allowed, e.reason, e.rule_id, e.direction),
        (false, "policy-deny", 77, "egress")
    );
    assert_eq!((e.dport, e.sport, e.proto, e.table), (22, 40000, 6, 2));
    assert_eq!(e.dst, Some("1.2.3.4".parse().unwrap()));
}

#[test]
fn except_hole_is_a_more_specific_address_prefix_with_its_own_entries() {
    // egress: 0.0.0.0/0 allowed, except 169.254.169.254/32 (identity 5) denied;
    // 10.0.0.0/8 (identity 6) allowed except 10.9.0.0/16 (identity 7).
    let mut e = table(allow(2), &[]).entries;
    for p in [6u8, 17, 132, 0] {
        let hi = if p == 0 { 0 } else { 65535 };
        e.push(TableEntry {
            peer: 5,
            proto: p,
            port_lo: 0,
            port_hi: hi,
            verdict: deny(50),
        });
        e.push(TableEntry {
            peer: 7,
            proto: p,
            port_lo: 0,
            port_hi: hi,
            verdict: deny(70),
        });
    }
    let eg = table(
        allow(2),
        &e.into_iter().filter(|x| x.peer != 0).collect::<Vec<_>>(),
    );
    let c = compiled(
        table(deny(1), &[]),
        eg,
        &[
            ("169.254.169.254/32", 5),
            ("10.0.0.0/8", 6),
            ("10.9.0.0/16", 7),
        ],
    );
    let mut t = loaded(&c);
    let go = |t: &mut TestDp, dst: &str| {
        t.run(
            Hook::FromPod,
            &Packet::udp("10.0.0.1", dst, 5000, 80).frame(),
        )
    };
    assert!(!go(&mut t, "169.254.169.254"));
    assert!(go(&mut t, "169.254.169.253"));
    assert!(go(&mut t, "10.8.255.255"));
    assert!(!go(&mut t, "10.9.0.1"));
    assert!(go(&mut t, "10.10.0.1"));
    assert!(go(&mut t, "8.8.8.8"));
}

#[test]
fn port_ranges_include_both_bounds_and_nothing_else() {
    let extra = [
        ports(0, 6, &[(8000, 8080, allow(3))], deny(1)),
        ports(0, 17, &[(53, 53, allow(4))], deny(1)),
    ]
    .concat();
    let c = compiled(table(deny(1), &extra), table(allow(2), &[]), &[]);
    let mut t = loaded(&c);
    for (port, ok) in [
        (7999, false),
        (8000, true),
        (8047, true),
        (8080, true),
        (8081, false),
        (0, false),
        (65535, false),
    ] {
        assert_eq!(
            t.run(
                Hook::ToPod,
                &Packet::tcp("1.2.3.4", "10.0.0.1", 1000 + port % 7, port, SYN).frame()
            ),
            ok,
            "tcp {port}"
        );
    }
    assert!(t.run(
        Hook::ToPod,
        &Packet::udp("1.2.3.4", "10.0.0.1", 999, 53).frame()
    ));
    assert!(!t.run(
        Hook::ToPod,
        &Packet::udp("1.2.3.4", "10.0.0.1", 999, 54).frame()
    ));
    // ICMP is class 0: denied by the ANY class-0 entry.
    assert!(!t.run(
        Hook::ToPod,
        &icmp("1.2.3.4", "10.0.0.1", 8, 1, vec![]).frame()
    ));
    // SCTP has its own class, here the ANY default.
    let sctp = Packet::new(
        "1.2.3.4".parse().unwrap(),
        "10.0.0.1".parse().unwrap(),
        L4::Sctp {
            sport: 1,
            dport: 8000,
        },
    );
    assert!(!t.run(Hook::ToPod, &sctp.frame()));
}

#[test]
fn each_tier_verdict_and_rule_comes_from_the_table_entry() {
    // Compiled tiers: admin deny (rule 10) for identity 3 on tcp/22, a
    // NetworkPolicy allow (rule 20) for identity 4 on tcp/80, isolation deny
    // (rule 30) for the rest, baseline-allowed udp (rule 40) for anyone.
    let extra = [
        ports(3, 6, &[(22, 22, deny(10))], deny(30)),
        ports(4, 6, &[(80, 80, allow(20))], deny(30)),
        ports(0, 17, &[], allow(40)),
    ]
    .concat();
    let c = compiled(
        table(deny(30), &extra),
        table(allow(2), &[]),
        &[("192.0.2.3/32", 3), ("192.0.2.4/32", 4)],
    );
    let mut t = loaded(&c);
    t.set_config(Config {
        log_mode: LOG_ALL,
        ..Config::default()
    })
    .unwrap();
    let cases = [
        ("192.0.2.3", 6u8, 22u16, false, 10u32),
        ("192.0.2.4", 6, 80, true, 20),
        ("192.0.2.4", 6, 81, false, 30),
        ("192.0.2.5", 6, 80, false, 30),
        ("192.0.2.3", 17, 22, true, 40),
    ];
    for (src, proto, port, ok, _) in cases {
        let l4 = if proto == 6 {
            L4::Tcp {
                sport: 3333,
                dport: port,
                flags: SYN,
            }
        } else {
            L4::Udp {
                sport: 3333,
                dport: port,
            }
        };
        let p = Packet::new(src.parse().unwrap(), "10.0.0.1".parse().unwrap(), l4);
        assert_eq!(t.run(Hook::ToPod, &p.frame()), ok, "{src} {proto}/{port}");
    }
    let ev = events(&mut t);
    let rules: Vec<u32> = ev.iter().map(|e| e.rule_id).collect();
    assert_eq!(rules, cases.iter().map(|c| c.4).collect::<Vec<_>>());
    assert_eq!(ev[0].identity, 3);
}

#[test]
fn ipv6_policy_extension_headers_and_their_bound() {
    let extra = ports(8, 6, &[(443, 443, allow(5))], deny(1));
    let c = compiled(
        table(deny(1), &extra),
        table(allow(2), &[]),
        &[("2001:db8::/64", 8)],
    );
    let mut t = loaded(&c);
    let p = |src: &str, port| Packet::tcp(src, "fd00::1", 5555, port, SYN);
    assert!(t.run(Hook::ToPod, &p("2001:db8::7", 443).frame()));
    assert!(!t.run(Hook::ToPod, &p("2001:db8::7", 444).frame()));
    assert!(!t.run(Hook::ToPod, &p("2001:db8:1::7", 443).frame()));
    let mut ext = p("2001:db8::8", 443);
    ext.v6_ext = vec![0, 60, 43];
    assert!(
        t.run(Hook::ToPod, &ext.frame()),
        "3 extension headers are walked"
    );
    ext.v6_ext = vec![0, 60, 43, 60, 60];
    assert!(!t.run(Hook::ToPod, &ext.frame()), "5 exceed the bound of 4");
    assert_eq!(t.count(DIR_INGRESS, REASON_IPV6_EXT_LIMIT), 1);
    // Reply to an allowed IPv6 egress flow.
    assert!(t.run(
        Hook::FromPod,
        &Packet::udp("fd00::1", "2001:db8:9::1", 7000, 53).frame()
    ));
    assert!(t.run(
        Hook::ToPod,
        &Packet::udp("2001:db8:9::1", "fd00::1", 53, 7000).frame()
    ));
    assert_eq!(t.count(DIR_INGRESS, REASON_CT_REPLY), 1);
}

#[test]
fn later_fragments_pass_only_behind_an_allowed_first_fragment() {
    let extra = ports(0, 17, &[(53, 53, allow(4))], deny(1));
    let c = compiled(table(deny(1), &extra), table(allow(2), &[]), &[]);
    let mut t = loaded(&c);
    let frag = |port: u16, id: u32, offset: u16, more: bool, v6: bool| {
        let (s, d) = if v6 {
            ("2001:db8::1", "fd00::1")
        } else {
            ("1.2.3.4", "10.0.0.1")
        };
        let mut p = Packet::udp(s, d, 999, port);
        p.frag = Some(Frag { id, offset, more });
        p.frame()
    };
    for v6 in [false, true] {
        assert!(
            t.run(Hook::ToPod, &frag(53, 7, 0, true, v6)),
            "first fragment, allowed port"
        );
        assert!(
            t.run(Hook::ToPod, &frag(53, 7, 185, true, v6)),
            "middle fragment"
        );
        assert!(
            t.run(Hook::ToPod, &frag(53, 7, 370, false, v6)),
            "last fragment"
        );
        assert!(
            !t.run(Hook::ToPod, &frag(54, 8, 0, true, v6)),
            "first fragment, denied port"
        );
        assert!(
            !t.run(Hook::ToPod, &frag(54, 8, 185, false, v6)),
            "its later fragment"
        );
        assert!(
            !t.run(Hook::ToPod, &frag(53, 9, 185, false, v6)),
            "later fragment without a first one"
        );
    }
    assert_eq!(t.count(DIR_INGRESS, REASON_FRAG_TRACKED), 4);
    assert_eq!(t.count(DIR_INGRESS, REASON_FRAG_NO_STATE), 4);
    assert_eq!(
        t.counters().unwrap().stats[STAT_FRAG_TRACKED as usize],
        0,
        "stat reserved"
    );
}

#[test]
fn truncated_and_malformed_headers_are_dropped_and_counted() {
    let c = compiled(table(allow(1), &[]), table(allow(2), &[]), &[]);
    let mut t = loaded(&c);
    let good = Packet::tcp("1.2.3.4", "10.0.0.1", 1, 80, SYN).frame();
    assert!(t.run(Hook::ToPod, &good));
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    cases.push(("tcp header cut", good[..14 + 20 + 10].to_vec()));
    let mut short_total = good.clone();
    short_total.truncate(good.len() - 4); // IP total length now exceeds the frame
    cases.push(("ip total length beyond frame", short_total));
    let mut ihl = good.clone();
    ihl[14] = 0x44;
    cases.push(("ihl < 5", ihl));
    let mut ver = good.clone();
    ver[14] = 0x55;
    cases.push(("ipv4 ethertype, version 5", ver));
    // (A frame cut inside the IP header itself cannot be fed in: BPF_PROG_TEST_RUN
    // rejects it with EINVAL before the program runs.)
    let v6 = Packet::udp("2001:db8::1", "fd00::1", 1, 53).frame();
    cases.push(("ipv6 udp cut", v6[..14 + 40 + 2].to_vec()));
    let n = cases.len() as u64;
    for (what, f) in cases {
        assert!(!t.run(Hook::ToPod, &f), "{what}");
    }
    assert_eq!(t.count(DIR_INGRESS, REASON_MALFORMED), n);
}

#[test]
fn spoofed_source_is_dropped_leaving_the_pod() {
    let c = compiled(table(allow(1), &[]), table(allow(2), &[]), &[]);
    let mut t = loaded(&c);
    assert!(!t.run(
        Hook::FromPod,
        &Packet::udp("10.0.0.2", "1.2.3.4", 1, 53).frame()
    ));
    assert!(!t.run(
        Hook::FromPod,
        &Packet::udp("fd00::2", "2001:db8::1", 1, 53).frame()
    ));
    assert!(t.run(
        Hook::FromPod,
        &Packet::udp("fd00::1", "2001:db8::1", 1, 53).frame()
    ));
    // Towards the pod the source is the peer's: no anti-spoofing there.
    assert!(t.run(
        Hook::ToPod,
        &Packet::udp("10.0.0.2", "10.0.0.1", 1, 53).frame()
    ));
    assert_eq!(t.count(DIR_EGRESS, REASON_SPOOF), 2);
    t.set_endpoint_flags(POD, EP_F_NO_SPOOF_CHECK).unwrap();
    assert!(t.run(
        Hook::FromPod,
        &Packet::udp("10.0.0.2", "1.2.3.4", 1, 53).frame()
    ));
}

#[test]
fn arp_passes_vlan_tags_drop_and_ndp_passes_a_deny_all() {
    let c = compiled(table(deny(1), &[]), table(deny(2), &[]), &[]);
    let mut t = loaded(&c);
    assert!(t.run(Hook::ToPod, &arp_frame()));
    assert!(t.run(Hook::FromPod, &arp_frame()));
    let mut vlan = Packet::udp("1.2.3.4", "10.0.0.1", 1, 2).frame();
    vlan[12] = 0x81;
    vlan[13] = 0x00;
    assert!(!t.run(Hook::ToPod, &vlan));
    for ty in 133..=137u8 {
        // DAD neighbour solicitation comes from :: (not the pod's address). A pod
        // is never a router: its Router Advertisement (134) or Redirect (137) drops.
        let router = ty == 134 || ty == 137;
        assert_eq!(
            t.run(
                Hook::FromPod,
                &icmp("::", "ff02::1:ff00:1", ty, 0, vec![]).frame()
            ),
            !router,
            "ndp type {ty}"
        );
        assert!(
            t.run(
                Hook::ToPod,
                &icmp("fe80::1", "fd00::1", ty, 0, vec![]).frame()
            ),
            "ndp type {ty}"
        );
    }
    assert!(
        !t.run(
            Hook::ToPod,
            &icmp("fe80::1", "fd00::1", 128, 1, vec![]).frame()
        ),
        "echo request is policy"
    );
    assert_eq!(t.count(DIR_INGRESS, REASON_NON_IP), 1);
    assert_eq!(t.count(DIR_INGRESS, REASON_VLAN), 1);
    assert_eq!(t.count(DIR_EGRESS, REASON_NDP), 3);
    assert_eq!(t.count(DIR_EGRESS, REASON_SPOOF), 2);
    assert_eq!(t.count(DIR_INGRESS, REASON_NDP), 5);
}

#[test]
fn icmp_errors_about_tracked_flows_pass_as_related() {
    let c = compiled(table(deny(1), &[]), table(allow(2), &[]), &[]);
    let mut t = loaded(&c);
    let out = Packet::udp("10.0.0.1", "8.8.8.8", 40000, 53);
    assert!(t.run(Hook::FromPod, &out.frame()));
    // Port unreachable from a router, quoting the pod's datagram.
    assert!(t.run(
        Hook::ToPod,
        &icmp("192.0.2.1", "10.0.0.1", 3, 0, out.ip_bytes()).frame()
    ));
    // Quoting a datagram the pod never sent.
    let other = Packet::udp("10.0.0.1", "8.8.4.4", 40000, 53);
    assert!(!t.run(
        Hook::ToPod,
        &icmp("192.0.2.1", "10.0.0.1", 3, 0, other.ip_bytes()).frame()
    ));
    // IPv6: packet too big about a tracked TCP flow.
    let out6 = Packet::tcp("fd00::1", "2001:db8::9", 40000, 443, SYN);
    assert!(t.run(Hook::FromPod, &out6.frame()));
    assert!(t.run(
        Hook::ToPod,
        &icmp("2001:db8::fe", "fd00::1", 2, 0, out6.ip_bytes()).frame()
    ));
    // Echo: the reply matches the request's identifier.
    assert!(t.run(
        Hook::FromPod,
        &icmp("10.0.0.1", "8.8.8.8", 8, 42, vec![]).frame()
    ));
    assert!(t.run(
        Hook::ToPod,
        &icmp("8.8.8.8", "10.0.0.1", 0, 42, vec![]).frame()
    ));
    assert!(!t.run(
        Hook::ToPod,
        &icmp("8.8.8.8", "10.0.0.1", 0, 43, vec![]).frame()
    ));
    assert_eq!(t.count(DIR_INGRESS, REASON_CT_RELATED), 2);
    assert_eq!(t.count(DIR_INGRESS, REASON_CT_REPLY), 1);
}

fn ct_state(t: &mut TestDp) -> u8 {
    let entries: Vec<_> = t.conntrack().iter().filter_map(|r| r.ok()).collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    entries[0].1.state
}

#[test]
fn tcp_conntrack_moves_through_syn_established_closing_and_reopens_by_policy() {
    let c = compiled(table(deny(1), &[]), table(allow(2), &[]), &[]);
    let mut t = loaded(&c);
    let out = |f| Packet::tcp("10.0.0.1", "1.2.3.4", 40000, 80, f).frame();
    let back = |f| Packet::tcp("1.2.3.4", "10.0.0.1", 80, 40000, f).frame();
    assert!(t.run(Hook::FromPod, &out(SYN)));
    assert_eq!(ct_state(&mut t), CT_SYN_SENT);
    assert!(t.run(Hook::ToPod, &back(SYN | ACK)));
    assert_eq!(ct_state(&mut t), CT_ESTABLISHED);
    assert!(t.run(Hook::FromPod, &out(FIN | ACK)));
    assert_eq!(ct_state(&mut t), CT_ESTABLISHED, "half close");
    assert!(t.run(Hook::ToPod, &back(FIN | ACK)));
    assert_eq!(ct_state(&mut t), CT_CLOSING);
    assert!(
        t.run(Hook::FromPod, &out(ACK)),
        "last ACK within the close timeout"
    );
    // A new SYN on the closed tuple is judged by policy again: deny egress now.
    let mut c2 = c.clone();
    c2.tables.insert(2, table(deny(9), &[]));
    t.sync(&c2).unwrap();
    assert!(!t.run(Hook::FromPod, &out(SYN)));
    // RST closes a flow from either side.
    t.sync(&c).unwrap();
    t.flush_conntrack(None).unwrap();
    assert!(t.run(Hook::FromPod, &out(SYN)));
    assert!(t.run(Hook::ToPod, &back(RST)));
    assert_eq!(ct_state(&mut t), CT_CLOSING);
}

#[test]
fn expired_conntrack_entry_no_longer_admits_replies() {
    let c = compiled(table(deny(1), &[]), table(allow(2), &[]), &[]);
    let mut t = loaded(&c);
    assert!(t.run(
        Hook::FromPod,
        &Packet::udp("10.0.0.1", "1.2.3.4", 5000, 53).frame()
    ));
    let (k, mut v) = t.conntrack().iter().next().unwrap().unwrap();
    assert_eq!(v.state, CT_OPEN);
    v.last_seen_ns = v
        .last_seen_ns
        .saturating_sub((CT_OTHER_TIMEOUT_S + 1) * 1_000_000_000);
    t.conntrack().insert(k, v, 0).unwrap();
    assert!(!t.run(
        Hook::ToPod,
        &Packet::udp("1.2.3.4", "10.0.0.1", 53, 5000).frame()
    ));
    assert_eq!(t.counters().unwrap().stats[STAT_CT_EXPIRED as usize], 1);
}

#[test]
fn policy_change_cuts_established_flows_it_now_denies() {
    let c = compiled(table(deny(1), &[]), table(allow(2), &[]), &[]);
    let mut t = loaded(&c);
    let out = Packet::tcp("10.0.0.1", "1.2.3.4", 40000, 80, ACK).frame();
    let back = Packet::tcp("1.2.3.4", "10.0.0.1", 80, 40000, ACK).frame();
    assert!(t.run(Hook::FromPod, &out));
    // Table 3 still allows: the flow is re-checked once and kept.
    let mut e = c.endpoints[POD].clone();
    e.egress = 3;
    e.generation = 2;
    t.apply(&Delta {
        ops: vec![
            Op::PutTable(3, table(allow(3), &[])),
            Op::PutEndpoint(e.clone()),
            Op::RemoveTable(2),
        ],
    })
    .unwrap();
    assert!(t.run(Hook::ToPod, &back));
    assert!(t.run(Hook::FromPod, &out));
    // Table 4 denies: the next packet, even a reply, is dropped and the entry removed.
    e.egress = 4;
    e.generation = 3;
    t.apply(&Delta {
        ops: vec![
            Op::PutTable(4, table(deny(44), &[])),
            Op::PutEndpoint(e),
            Op::RemoveTable(3),
        ],
    })
    .unwrap();
    assert!(!t.run(Hook::ToPod, &back));
    let s = t.counters().unwrap().stats;
    assert_eq!(
        (s[STAT_CT_RECHECKED as usize], s[STAT_CT_REVOKED as usize]),
        (2, 1)
    );
    // TCP keeps a REVOKED entry: the pod's side of the flow drops too.
    assert_eq!(ct_state(&mut t), CT_REVOKED);
    assert!(!t.run(Hook::FromPod, &out));
}

#[test]
fn interface_without_endpoint_entry_fails_closed() {
    let c = compiled(table(allow(1), &[]), table(allow(2), &[]), &[]);
    let mut t = TestDp::new();
    t.sync(&c).unwrap();
    assert!(
        !t.run(
            Hook::ToPod,
            &Packet::udp("1.2.3.4", "10.0.0.1", 1, 2).frame()
        ),
        "not bound yet"
    );
    assert!(!t.run(Hook::FromPod, &arp_frame()), "even ARP");
    assert_eq!(
        t.counters().unwrap().no_endpoint[DIR_INGRESS as usize][REASON_NO_ENDPOINT as usize],
        1
    );
    t.bind(POD, 1).unwrap();
    assert!(t.run(
        Hook::ToPod,
        &Packet::udp("1.2.3.4", "10.0.0.1", 1, 2).frame()
    ));
    t.apply(&Delta {
        ops: vec![Op::RemoveEndpoint(POD.into())],
    })
    .unwrap();
    assert!(!t.run(
        Hook::ToPod,
        &Packet::udp("1.2.3.4", "10.0.0.1", 1, 3).frame()
    ));
}

#[test]
fn update_that_overflows_a_map_is_rejected_and_the_old_state_stays() {
    let sizes = MapSizes {
        policy: 64,
        ..MapSizes::default()
    };
    let mut t = TestDp::with_sizes(sizes);
    let c = compiled(table(deny(1), &[]), table(allow(2), &[]), &[]);
    t.sync(&c).unwrap();
    t.bind(POD, 1).unwrap();
    // 40 identities with a 1..=65534 TCP range each: far beyond 64 prefixes.
    let mut big = c.clone();
    let extra: Vec<_> = (1..=40)
        .flat_map(|p| ports(p, 6, &[(1, 65534, allow(5))], deny(1)))
        .collect();
    big.tables.insert(1, table(deny(1), &extra));
    match t.sync(&big) {
        Err(Error::Capacity {
            map,
            needed,
            capacity,
        }) => {
            assert_eq!((map, capacity), ("palisade_policy", 64));
            assert!(needed > 64);
        }
        other => panic!("expected a capacity error, got {other:?}"),
    }
    assert_eq!(t.policy_entry_count(), 8);
    assert!(t.run(
        Hook::FromPod,
        &Packet::udp("10.0.0.1", "1.2.3.4", 1, 2).frame()
    ));
    assert_eq!(t.dump_endpoint(1).unwrap().ingress.table, c.tables[&1]);
}

#[test]
fn dump_endpoint_decodes_the_kernel_tables_back_into_policy_terms() {
    let extra = [
        ports(
            3,
            6,
            &[(22, 22, deny(10)), (8000, 9000, allow(11))],
            deny(30),
        ),
        ports(0, 17, &[(53, 53, allow(4))], deny(1)),
    ]
    .concat();
    let c = compiled(
        table(deny(1), &extra),
        table(allow(2), &[]),
        &[("192.0.2.0/24", 3)],
    );
    let t = loaded(&c);
    let d = t.dump_endpoint(1).unwrap();
    assert_eq!(d.pod.as_deref(), Some(POD));
    assert_eq!(d.ingress.table, c.tables[&1]);
    assert_eq!(d.egress.table, c.tables[&2]);
    assert_eq!(
        d.ips,
        vec![
            "10.0.0.1".parse::<IpAddr>().unwrap(),
            "fd00::1".parse().unwrap()
        ]
    );
    assert_eq!(t.dump_addresses().unwrap(), c.addresses);
}

/// After a restart: the reply of the outbound UDP flow 10.0.0.1:5000 -> 1.2.3.4:53
/// passes (its conntrack entry survived), a new inbound flow does not.
fn assert_reply_passes_and_new_inbound_drops(dp: &mut palisade_datapath::Datapath) {
    for (sport, want) in [(5000, TC_ACT_UNSPEC), (5001, TC_ACT_SHOT)] {
        let (rc, _) = dp
            .test_run(
                Hook::ToPod,
                &Packet::udp("1.2.3.4", "10.0.0.1", 53, sport).frame(),
                1,
            )
            .unwrap();
        assert_eq!(rc, want, "reply to port {sport}");
    }
}

#[test]
fn restart_adopts_pinned_maps_without_a_gap_and_resync_is_a_no_op() {
    let c = compiled(table(deny(1), &[]), table(allow(2), &[]), &[]);
    let mut t = loaded(&c);
    assert!(t.run(
        Hook::FromPod,
        &Packet::udp("10.0.0.1", "1.2.3.4", 5000, 53).frame()
    ));
    let root = t.root.0.clone();
    drop(t.dp.take()); // the agent exits; pins stay
    let mut dp = palisade_datapath::Datapath::load_or_adopt(&root, MapSizes::default()).unwrap();
    assert!(dp.adopted());
    // Enforcement and conntrack survived: the reply passes, a new inbound flow does not.
    assert_reply_passes_and_new_inbound_drops(&mut dp);
    let before = dp.policy_entry_count();
    dp.bind(POD, 1).unwrap();
    dp.sync(&c).unwrap();
    assert_eq!(dp.policy_entry_count(), before);
    t.dp = Some(dp);
}

/// 40 identities with a 1..=65534 TCP range each: about 1,200 policy prefixes.
fn many_prefixes(c: &Compiled) -> Compiled {
    let mut big = c.clone();
    let extra: Vec<_> = (1..=40)
        .flat_map(|p| ports(p, 6, &[(1, 65534, allow(5))], deny(1)))
        .collect();
    big.tables.insert(1, table(deny(1), &extra));
    big
}

fn max_entries(root: &std::path::Path, map: &str) -> u32 {
    aya::maps::MapInfo::from_pin(root.join("maps").join(map))
        .unwrap()
        .max_entries()
}

#[test]
fn a_restart_with_larger_capacities_grows_the_pinned_maps_keeping_state_and_connections() {
    let small = MapSizes {
        policy: 64,
        policy_parts: 64,
        hosts4: 16,
        addr4: 16,
        conntrack: 128,
        ..MapSizes::default()
    };
    let c = compiled(
        table(deny(1), &[]),
        table(allow(2), &[]),
        &[("192.0.2.0/24", 3), ("10.1.0.5/32", 3)],
    );
    let mut t = TestDp::with_sizes(small);
    t.sync(&c).unwrap();
    t.bind(POD, 1).unwrap();
    assert!(t.run(
        Hook::FromPod,
        &Packet::udp("10.0.0.1", "1.2.3.4", 5000, 53).frame()
    ));
    assert!(matches!(
        t.sync(&many_prefixes(&c)),
        Err(Error::Capacity {
            map: "palisade_policy",
            ..
        })
    ));
    let root = t.root.0.clone();
    drop(t.dp.take()); // the agent exits; pins and attached programs stay

    let large = MapSizes {
        policy: 65536,
        policy_parts: 65536,
        hosts4: 64,
        addr4: 64,
        conntrack: 512,
        ..MapSizes::default()
    };
    let mut dp = palisade_datapath::Datapath::load_or_adopt(&root, large).unwrap();
    assert!(dp.adopted());
    let grown: Vec<_> = dp
        .resizes()
        .iter()
        .map(|r| (r.map, r.pinned, r.configured, r.grown))
        .collect();
    for want in [
        ("palisade_addr4", 16, 64, true),
        ("palisade_hosts4", 16, 64, true),
        ("palisade_policy", 64, 65536, true),
        ("palisade_policy_parts", 64, 65536, true),
        ("palisade_conntrack", 128, 512, true),
    ] {
        assert!(grown.contains(&want), "{want:?} not in {grown:?}");
    }
    for (map, size) in [
        ("palisade_hosts4", 64),
        ("palisade_addr4", 64),
        ("palisade_policy", 65536),
        ("palisade_conntrack", 512),
    ] {
        assert_eq!(max_entries(&root, map), size, "{map}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(root.join("maps"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with("-grow"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Every entry came across: addresses, tables, and the connection's state
    // (its reply passes; a new inbound flow does not).
    assert_eq!(dp.dump_addresses().unwrap(), c.addresses);
    assert_eq!(dp.dump_endpoint(1).unwrap().ingress.table, c.tables[&1]);
    assert_reply_passes_and_new_inbound_drops(&mut dp);
    let before = dp.policy_entry_count();
    dp.bind(POD, 1).unwrap();
    dp.sync(&c).unwrap();
    assert_eq!(
        dp.policy_entry_count(),
        before,
        "the resync after growing wrote nothing new"
    );
    // What did not fit before fits now.
    dp.sync(&many_prefixes(&c)).unwrap();
    dp.sync(&c).unwrap();
    drop(dp);

    // A smaller configuration never shrinks a map (entries could be lost).
    let dp = palisade_datapath::Datapath::load_or_adopt(&root, small).unwrap();
    assert!(dp
        .resizes()
        .iter()
        .any(|r| r.map == "palisade_hosts4" && r.pinned == 64 && r.configured == 16 && !r.grown));
    assert_eq!(max_entries(&root, "palisade_hosts4"), 64);
    assert_eq!(dp.dump_addresses().unwrap(), c.addresses);
    t.dp = Some(dp);
}

#[test]
fn a_start_that_died_while_growing_a_map_is_recovered_from_its_grow_pin() {
    let c = compiled(
        table(deny(1), &[]),
        table(allow(2), &[]),
        &[("10.1.0.5/32", 3)],
    );
    let mut t = loaded(&c);
    let root = t.root.0.clone();
    drop(t.dp.take());
    // What set_aside_smaller leaves if the process dies before the loader ran:
    // the old map pinned only as `-grow`.
    let maps = root.join("maps");
    let old = aya::maps::MapData::from_pin(maps.join("palisade_hosts4")).unwrap();
    old.pin(maps.join("palisade_hosts4-grow")).unwrap();
    std::fs::remove_file(maps.join("palisade_hosts4")).unwrap();
    drop(old);
    let dp = palisade_datapath::Datapath::load_or_adopt(
        &root,
        MapSizes {
            conntrack: 65536,
            policy: 65536,
            ..MapSizes::default()
        },
    )
    .unwrap();
    assert_eq!(
        dp.dump_addresses().unwrap(),
        c.addresses,
        "the host entries were recovered"
    );
    assert!(!maps.join("palisade_hosts4-grow").exists());
    t.dp = Some(dp);
}

#[test]
fn events_are_rate_limited_per_cpu() {
    let c = compiled(table(deny(1), &[]), table(allow(2), &[]), &[]);
    let mut t = loaded(&c);
    t.set_config(Config {
        log_mode: LOG_DENIES,
        events_per_sec: 1,
        events_burst: 3,
        ..Config::default()
    })
    .unwrap();
    for i in 0..20 {
        assert!(!t.run(
            Hook::ToPod,
            &Packet::udp("1.2.3.4", "10.0.0.1", 1, 100 + i).frame()
        ));
    }
    let n = events(&mut t).len() as u64;
    let s = t.counters().unwrap().stats;
    assert!((1..=4).contains(&n), "{n} events");
    assert_eq!(s[STAT_EVENTS_SENT as usize], n);
    assert_eq!(s[STAT_EVENTS_RATE_LIMITED as usize], 20 - n);
}

/// Issue 8: decision events are bounded per endpoint too, and one endpoint's flood
/// leaves the other endpoints' budget untouched.
#[test]
fn events_are_rate_limited_per_endpoint_and_counted_per_endpoint() {
    let c = compiled(table(deny(1), &[]), table(allow(2), &[]), &[]);
    let mut t = loaded(&c);
    t.set_config(Config {
        log_mode: LOG_DENIES,
        pod_events_per_sec: 3,
        ..Config::default()
    })
    .unwrap();
    let mut reader = t.events().expect("reader");
    let mut drain = || std::iter::from_fn(|| reader.next()).collect::<Vec<_>>();
    let flood = |t: &mut TestDp| {
        for i in 0..20 {
            assert!(!t.run(
                Hook::ToPod,
                &Packet::udp("1.2.3.4", "10.0.0.1", 1, 100 + i).frame()
            ));
        }
    };
    flood(&mut t);
    let n = drain().len() as u64;
    let c1 = t.counters().unwrap();
    assert!((3..=4).contains(&n), "{n} events with a budget of 3");
    assert_eq!(c1.events_suppressed[&1], 20 - n, "suppressed on the pod");
    assert_eq!(c1.events_suppressed[&0], 0, "nothing suppressed elsewhere");
    assert_eq!(c1.stats[STAT_EVENTS_RATE_LIMITED as usize], 20 - n);
    // The interface loses its endpoint entry: its packets now fall in slot 0, whose
    // bucket the flood above did not touch.
    t.sync(&Compiled::default()).unwrap();
    flood(&mut t);
    let m = drain();
    assert!(
        (3..=4).contains(&m.len()),
        "{} events from the other slot",
        m.len()
    );
    assert!(m.iter().all(|e| e.reason == "no-endpoint"), "{m:?}");
    let c2 = t.counters().unwrap();
    assert_eq!(c2.events_suppressed[&0], 20 - m.len() as u64);
}

#[test]
fn delta_ops_apply_in_order_peer_entries_and_addresses_included() {
    let c = compiled(table(deny(1), &[]), table(allow(2), &[]), &[]);
    let mut t = loaded(&c);
    let mut sport = 0u16;
    let mut from = |t: &mut TestDp, src: &str| {
        // A fresh source port each time: an allowed SYN leaves conntrack state behind.
        sport += 1;
        t.run(
            Hook::ToPod,
            &Packet::tcp(src, "10.0.0.1", sport, 80, SYN).frame(),
        )
    };
    assert!(!from(&mut t, "192.0.2.9"));
    t.apply(&Delta {
        ops: vec![
            Op::AddPeerEntries(1, ports(9, 6, &[(80, 80, allow(90))], deny(1))),
            Op::PutAddress("192.0.2.9/32".parse().unwrap(), 9),
        ],
    })
    .unwrap();
    assert!(from(&mut t, "192.0.2.9"));
    t.apply(&Delta {
        ops: vec![
            Op::RemoveAddress("192.0.2.9/32".parse().unwrap()),
            Op::RemovePeerEntries(1, 9),
        ],
    })
    .unwrap();
    assert!(!from(&mut t, "192.0.2.9"));
    assert_eq!(t.policy_entry_count(), 8);
    // A new endpoint entry with a fresh table.
    let e = EndpointEntry {
        ingress: 5,
        ..c.endpoints[POD].clone()
    };
    t.apply(&Delta {
        ops: vec![
            Op::PutTable(5, table(allow(55), &[])),
            Op::PutEndpoint(e),
            Op::RemoveTable(1),
        ],
    })
    .unwrap();
    assert!(from(&mut t, "192.0.2.9"));
    assert_eq!(t.dump_endpoint(1).unwrap().ingress.id, 5);
}

/// Verdict of a new TCP flow from `src` to the pod's port, without leaving state.
fn tcp_in(t: &mut TestDp, src: &str, dport: u16) -> bool {
    t.run(
        Hook::ToPod,
        &Packet::tcp(src, "10.0.0.1", 40000, dport, SYN).frame(),
    )
}

#[test]
fn inline_and_overflowing_port_partitions_give_the_lpm_verdict_on_every_edge() {
    // Peer 7: two ports, 5 segments, inline. Peer 8: five ports, 11 segments,
    // more than PART_INLINE: answered by the LPM.
    let p7 = ports(7, 6, &[(22, 22, allow(71)), (80, 80, allow(72))], deny(73));
    let five: Vec<(u16, u16, _)> = [22, 80, 443, 8080, 9000]
        .iter()
        .map(|&p| (p, p, allow(80 + u32::from(p % 7))))
        .collect();
    let p8 = ports(8, 6, &five, deny(83));
    let extra: Vec<TableEntry> = p7.iter().chain(&p8).copied().collect();
    let mut c = compiled(
        table(deny(1), &extra),
        table(allow(2), &[]),
        &[("192.0.2.7/32", 7), ("192.0.2.8/32", 8)],
    );
    let mut t = loaded(&c);
    t.set_config(Config {
        flags: CFG_F_NO_CT_CREATE,
        ..Config::default()
    })
    .unwrap();
    let parts = t.dump_policy_parts().unwrap();
    assert_eq!(parts[&(1, 7, 6)].flags, 0, "peer 7 inline");
    assert_eq!(parts[&(1, 7, 6)].n, 5);
    assert_eq!(parts[&(1, 8, 6)].flags, PART_F_OVERFLOW, "peer 8 overflows");
    assert!(t.check_derived_maps().unwrap().is_empty());
    let check = |t: &mut TestDp, c: &palisade_policy::compiled::Compiled| {
        for (src, peer) in [("192.0.2.7", 7u32), ("192.0.2.8", 8), ("192.0.2.9", 0)] {
            for base in [0u16, 22, 80, 443, 8080, 9000, 65535] {
                for port in [base.saturating_sub(1), base, base.saturating_add(1)] {
                    let want = c.lookup(1, peer, 6, port);
                    assert_ne!(want.rule, palisade_policy::compiled::RULE_NONE, "covered");
                    assert_eq!(
                        tcp_in(t, src, port),
                        want.action == palisade_policy::compiled::TableAction::Allow,
                        "{src} port {port}"
                    );
                }
            }
        }
    };
    check(&mut t, &c);
    // Peer 8 loses its entries: its partition goes, it falls back to IDENTITY_ANY.
    t.apply(&Delta {
        ops: vec![Op::RemovePeerEntries(1, 8)],
    })
    .unwrap();
    assert!(!t.dump_policy_parts().unwrap().contains_key(&(1, 8, 6)));
    assert!(t.check_derived_maps().unwrap().is_empty());
    c.tables
        .get_mut(&1)
        .unwrap()
        .entries
        .retain(|e| e.peer != 8);
    check(&mut t, &c);
    assert!(!tcp_in(&mut t, "192.0.2.8", 80));
}

#[test]
fn adoption_repairs_partitions_and_moves_host_prefixes_out_of_the_lpm() {
    use aya::maps::lpm_trie::{Key, LpmTrie};
    use aya::maps::{HashMap, Map, MapData};

    let extra = ports(7, 6, &[(80, 80, allow(71))], deny(73));
    let c = compiled(
        table(deny(1), &extra),
        table(allow(2), &[]),
        &[("192.0.2.7/32", 7)],
    );
    let mut t = loaded(&c);
    assert!(tcp_in(&mut t, "192.0.2.7", 80));
    let root = t.root.0.clone();
    drop(t.dp.take());
    // Pins as an older version (or a crash between writes) could leave them:
    // the peer's partition missing, its /32 in the LPM trie, not the host map.
    let open = |name: &str| {
        Map::from_map_data(MapData::from_pin(root.join("maps").join(name)).unwrap()).unwrap()
    };
    let mut parts: HashMap<_, PolicyPartKey, PolicyPart> =
        HashMap::try_from(open("palisade_policy_parts")).unwrap();
    parts
        .remove(&PolicyPartKey {
            table: 1,
            peer: 7,
            proto: 6,
            pad: [0; 3],
        })
        .unwrap();
    let mut hosts: HashMap<_, [u8; 4], AddrValue> =
        HashMap::try_from(open("palisade_hosts4")).unwrap();
    hosts.remove(&[192, 0, 2, 7]).unwrap();
    let mut lpm: LpmTrie<_, [u8; 4], AddrValue> =
        LpmTrie::try_from(open("palisade_addr4")).unwrap();
    lpm.insert(&Key::new(32, [192, 0, 2, 7]), AddrValue { identity: 7 }, 0)
        .unwrap();
    drop((parts, hosts, lpm));

    let dp = palisade_datapath::Datapath::load_or_adopt(&root, MapSizes::default()).unwrap();
    t.dp = Some(dp);
    assert_eq!(t.check_derived_maps().unwrap(), Vec::<String>::new());
    assert_eq!(t.dump_addresses().unwrap(), c.addresses);
    assert!(tcp_in(&mut t, "192.0.2.7", 80));
    assert!(!tcp_in(&mut t, "192.0.2.7", 81));
}

// Issue 8, "Established flows are re-judged whenever what decided them changes":
// a conntrack entry records the policy epoch it was judged under; the loader
// publishes a new epoch after every batch of writes, so a peer's identity
// change cuts a flow exactly as a policy edit with the same effect does.

fn stat(t: &TestDp, s: u32) -> u64 {
    t.counters().unwrap().stats[s as usize]
}

/// Peer 192.0.2.10 is identity 5, which the ingress table allows (UDP rule 50,
/// TCP rule 51, SCTP rule 52); identity 6 has no entries, so IDENTITY_ANY denies it (rule 1).
/// Egress allows everything (rule 2).
fn peer_allowed_by_identity() -> palisade_policy::compiled::Compiled {
    let extra = [
        ports(5, 17, &[], allow(50)),
        ports(5, 6, &[], allow(51)),
        ports(5, 132, &[], allow(52)),
    ]
    .concat();
    compiled(
        table(deny(1), &extra),
        table(allow(2), &[]),
        &[("192.0.2.10/32", 5)],
    )
}

/// The UDP flow every revocation test uses: from a FIXED source port, so it
/// keeps its 5-tuple (and its conntrack entry) for as long as it runs.
fn udp_in() -> Vec<u8> {
    Packet::udp("192.0.2.10", "10.0.0.1", 5353, 53).frame()
}

fn udp_back() -> Vec<u8> {
    Packet::udp("10.0.0.1", "192.0.2.10", 53, 5353).frame()
}

fn remap_peer(id: u32) -> Delta {
    Delta {
        ops: vec![Op::PutAddress("192.0.2.10/32".parse().unwrap(), id)],
    }
}

#[test]
fn issue_8_identity_change_cuts_an_established_udp_flow_like_a_policy_edit() {
    // The two ways of denying the same flow: (a) the peer's address now maps
    // to an identity the table denies (a label change), (b) the table itself
    // is edited to deny the peer (a policy edit). Both must cut it.
    let c = peer_allowed_by_identity();
    let mut edited = c.clone();
    edited.tables.insert(1, table(deny(1), &[]));
    let mut relabelled = c.clone();
    relabelled
        .addresses
        .insert("192.0.2.10/32".parse().unwrap(), 6);
    for (what, next) in [("identity change", relabelled), ("policy edit", edited)] {
        let mut t = loaded(&c);
        t.set_config(Config {
            log_mode: LOG_DENIES,
            ..Config::default()
        })
        .unwrap();
        assert!(t.run(Hook::ToPod, &udp_in()), "{what}: first datagram");
        assert!(t.run(Hook::FromPod, &udp_back()), "{what}: reply");
        assert!(t.run(Hook::ToPod, &udp_in()), "{what}: established");
        let epoch = t.policy_epoch().unwrap();
        t.sync(&next).unwrap();
        assert!(t.policy_epoch().unwrap() > epoch, "{what}: epoch bumped");
        assert!(!t.run(Hook::ToPod, &udp_in()), "{what}: cut");
        assert_eq!(ct_state(&mut t), CT_REVOKED, "{what}: entry kept, revoked");
        assert!(!t.run(Hook::ToPod, &udp_in()), "{what}: stays cut");
        assert_eq!(stat(&t, STAT_CT_REVOKED), 1, "{what}");
        let ev = events(&mut t);
        assert_eq!(
            (ev[0].reason, ev[0].rule_id, ev[0].direction),
            ("policy-deny", 1, "ingress"),
            "{what}: the cut names the rule that denies it: {ev:?}"
        );
        assert!(
            !t.run(Hook::FromPod, &udp_back()),
            "{what}: no reply reopens it"
        );
        assert!(!t.run(Hook::ToPod, &udp_in()), "{what}: still cut");
    }
}

#[test]
fn issue_8_incremental_address_remap_cuts_the_flow_on_either_direction() {
    // Applied as a Delta (the agent's incremental path), and the first packet
    // after the change is the POD's reply: it is judged in the flow's original
    // orientation (ingress table, peer identity), not as an egress packet.
    let c = peer_allowed_by_identity();
    let mut t = loaded(&c);
    assert!(t.run(Hook::ToPod, &udp_in()));
    t.apply(&remap_peer(6)).unwrap();
    assert!(!t.run(Hook::FromPod, &udp_back()), "reply after the remap");
    assert_eq!(stat(&t, STAT_CT_REVOKED), 1);
    assert_eq!(t.count(DIR_EGRESS, REASON_POLICY_DENY), 1);
    // The pod keeps answering (a UDP server replies to what arrived before the
    // cut): its packets must not open an egress flow of their own whose "replies"
    // would be the denied peer's datagrams. Found in the Kubernetes lab: a
    // receiver kept getting a denied sender's datagrams for as long as it replied.
    for _ in 0..3 {
        assert!(!t.run(Hook::FromPod, &udp_back()), "the pod's next reply");
        assert!(!t.run(Hook::ToPod, &udp_in()), "the peer's next datagram");
    }
    assert_eq!(ct_state(&mut t), CT_REVOKED);
    assert_eq!(stat(&t, STAT_CT_CREATED), 1, "nothing re-created the flow");
    // Re-mapped back: the flow is judged as new again and allowed.
    t.apply(&remap_peer(5)).unwrap();
    assert!(t.run(Hook::ToPod, &udp_in()));
    assert!(t.run(Hook::FromPod, &udp_back()));
}

#[test]
fn issue_8_revocation_off_keeps_established_flows_and_on_catches_up() {
    let c = peer_allowed_by_identity();
    let mut t = loaded(&c);
    assert!(t.revoke_established().unwrap(), "on by default");
    t.set_revoke_established(false).unwrap();
    assert_eq!(t.config().unwrap().flags & CFG_F_NO_REVOKE, CFG_F_NO_REVOKE);
    assert!(t.run(Hook::ToPod, &udp_in()));
    // Identity change, then a table switch: the flow stays, both ways.
    t.apply(&remap_peer(6)).unwrap();
    assert!(
        t.run(Hook::ToPod, &udp_in()),
        "identity change, revocation off"
    );
    assert!(t.run(Hook::FromPod, &udp_back()));
    let mut e = c.endpoints[POD].clone();
    e.ingress = 3;
    t.apply(&Delta {
        ops: vec![Op::PutTable(3, table(deny(33), &[])), Op::PutEndpoint(e)],
    })
    .unwrap();
    assert!(
        t.run(Hook::ToPod, &udp_in()),
        "table change, revocation off"
    );
    assert_eq!(stat(&t, STAT_CT_RECHECKED), 0, "never re-judged while off");
    // New flows are still judged by policy.
    assert!(!t.run(
        Hook::ToPod,
        &Packet::udp("192.0.2.10", "10.0.0.1", 5354, 53).frame()
    ));
    // Switched back on: the epochs it missed make the next packet re-judge.
    t.set_revoke_established(true).unwrap();
    assert!(!t.run(Hook::ToPod, &udp_in()), "cut once revocation is on");
    assert_eq!(stat(&t, STAT_CT_REVOKED), 1);
}

#[test]
fn issue_8_identity_change_cuts_a_long_lived_tcp_connection_both_ways() {
    let c = peer_allowed_by_identity();
    let mut t = loaded(&c);
    let peer = |f| Packet::tcp("192.0.2.10", "10.0.0.1", 40000, 80, f);
    let pod = |f| Packet::tcp("10.0.0.1", "192.0.2.10", 80, 40000, f);
    assert!(t.run(Hook::ToPod, &peer(SYN).frame()));
    assert!(t.run(Hook::FromPod, &pod(SYN | ACK).frame()));
    for _ in 0..3 {
        assert!(t.run(Hook::ToPod, &peer(ACK).frame()));
        assert!(t.run(Hook::FromPod, &pod(ACK).frame()));
    }
    t.apply(&remap_peer(6)).unwrap();
    assert!(
        !t.run(Hook::ToPod, &peer(ACK).frame()),
        "peer's next segment"
    );
    assert_eq!(ct_state(&mut t), CT_REVOKED);
    // Egress allows everything, yet the pod's side of the cut connection must
    // not restart it as a mid-stream egress flow: the REVOKED entry drops it.
    assert!(!t.run(Hook::FromPod, &pod(ACK).frame()), "pod's reply");
    assert!(!t.run(Hook::FromPod, &pod(FIN | ACK).frame()));
    // An ICMP error from the pod about the peer's segment is not related
    // traffic any more (egress would allow it as an unrelated error).
    let quoted = peer(ACK).ip_bytes();
    assert!(!t.run(
        Hook::FromPod,
        &icmp("10.0.0.1", "192.0.2.10", 3, 0, quoted).frame()
    ));
    // A new SYN on the tuple is a new connection, judged (and denied) as one.
    assert!(!t.run(Hook::ToPod, &peer(SYN).frame()));
    assert_eq!(stat(&t, STAT_CT_REVOKED), 1, "revoked once, not per packet");
    assert_eq!(stat(&t, STAT_CT_CREATED), 1, "nothing re-created the flow");
    // Allowed again (the label comes back): the connection may resume, as a
    // segment picked up mid-stream would.
    t.apply(&remap_peer(5)).unwrap();
    assert!(t.run(Hook::FromPod, &pod(ACK).frame()));
    assert_eq!(ct_state(&mut t), CT_ESTABLISHED);
    assert!(t.run(Hook::ToPod, &peer(ACK).frame()));
}

#[test]
fn issue_8_allowed_flows_keep_replies_and_related_icmp_across_an_unrelated_epoch() {
    let c = peer_allowed_by_identity();
    let mut t = loaded(&c);
    let out = Packet::tcp("10.0.0.1", "198.51.100.7", 41000, 443, SYN);
    let back = |f| Packet::tcp("198.51.100.7", "10.0.0.1", 443, 41000, f).frame();
    assert!(t.run(Hook::FromPod, &out.frame()));
    assert!(t.run(Hook::ToPod, &back(SYN | ACK)));
    assert!(t.run(Hook::ToPod, &udp_in()));
    let before = t.policy_epoch().unwrap();
    // Unrelated: another address gets an identity.
    t.apply(&Delta {
        ops: vec![Op::PutAddress("203.0.113.0/24".parse().unwrap(), 9)],
    })
    .unwrap();
    let now = t.policy_epoch().unwrap();
    assert_eq!(now, before + 1, "one epoch per applied batch");
    // The pod's own connection: reply, then a related ICMP error, then more.
    assert!(t.run(Hook::ToPod, &back(ACK)), "reply across the epoch");
    assert!(t.run(
        Hook::ToPod,
        &icmp("192.0.2.254", "10.0.0.1", 3, 4, out.ip_bytes()).frame()
    ));
    assert!(t.run(Hook::FromPod, &udp_back()), "ingress flow's reply");
    assert!(t.run(Hook::ToPod, &udp_in()));
    for _ in 0..5 {
        assert!(t.run(Hook::ToPod, &back(ACK)));
    }
    // Each flow re-judged once for the new epoch, not per packet.
    assert_eq!(stat(&t, STAT_CT_RECHECKED), 2);
    assert_eq!(stat(&t, STAT_CT_REVOKED), 0);
    let epochs: Vec<u32> = t
        .conntrack()
        .iter()
        .filter_map(|r| r.ok())
        .map(|(_, v)| v.epoch)
        .collect();
    assert_eq!(epochs, vec![now, now], "entries refreshed to the new epoch");
    assert_eq!(t.count(DIR_INGRESS, REASON_CT_RELATED), 1);
}

#[test]
fn issue_8_epoch_moves_once_per_write_batch_and_not_for_no_op_passes() {
    let c = peer_allowed_by_identity();
    let mut t = loaded(&c);
    let e0 = t.policy_epoch().unwrap();
    assert_ne!(e0, 0, "0 is never published");
    t.sync(&c).unwrap();
    t.apply(&Delta::default()).unwrap();
    assert_eq!(
        t.policy_epoch().unwrap(),
        e0,
        "nothing written, nothing re-judged"
    );
    t.apply(&Delta {
        ops: vec![
            Op::PutAddress("203.0.113.0/24".parse().unwrap(), 9),
            Op::PutAddress("203.0.114.0/24".parse().unwrap(), 9),
            Op::RemoveAddress("203.0.113.0/24".parse().unwrap()),
        ],
    })
    .unwrap();
    assert_eq!(t.policy_epoch().unwrap(), e0 + 1);
    // A restart (adoption) judges every flow again under the new programs.
    let root = t.root.0.clone();
    drop(t.dp.take());
    t.dp = Some(palisade_datapath::Datapath::load_or_adopt(&root, MapSizes::default()).unwrap());
    assert!(t.policy_epoch().unwrap() > e0 + 1);
}

/// `bpf(2)` with a zeroed 128-byte attribute whose leading words are `words`.
fn bpf_sys(cmd: i64, words: &[u64]) -> i64 {
    let mut attr = [0u64; 16];
    attr[..words.len()].copy_from_slice(words);
    // SAFETY: attr is a live, zero-padded buffer of the size passed.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), 128usize) }
}

#[test]
fn adoption_migrates_a_conntrack_map_of_the_layout_before_the_epoch() {
    let c = compiled(table(deny(1), &[]), table(allow(2), &[]), &[]);
    let mut t = loaded(&c);
    let out = Packet::udp("10.0.0.1", "1.2.3.4", 5000, 53).frame();
    let back = Packet::udp("1.2.3.4", "10.0.0.1", 53, 5000).frame();
    assert!(t.run(Hook::FromPod, &out));
    let (k, v) = t.conntrack().iter().next().unwrap().unwrap();
    let root = t.root.0.clone();
    drop(t.dp.take());
    // The pins an agent of the previous version leaves: ct_value without its
    // last 8 bytes (epoch, pad2), holding the same flow.
    let pin = root.join("maps").join("palisade_conntrack");
    std::fs::remove_file(&pin).unwrap();
    const LRU_HASH: u64 = 9;
    let (ks, vs) = (size_of::<CtKey>() as u64, 32u64);
    let fd = bpf_sys(0, &[LRU_HASH | ks << 32, vs | 1024 << 32]);
    assert!(fd >= 0, "map create: {}", std::io::Error::last_os_error());
    let old_value = &bytes_of(&v)[..32];
    let key = bytes_of(&k);
    let rc = bpf_sys(
        2,
        &[fd as u64, key.as_ptr() as u64, old_value.as_ptr() as u64, 0],
    );
    assert_eq!(rc, 0, "update: {}", std::io::Error::last_os_error());
    let path = std::ffi::CString::new(pin.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(bpf_sys(6, &[path.as_ptr() as u64, fd as u64]), 0, "pin");
    // SAFETY: fd is the map descriptor created above, closed once.
    unsafe { libc::close(fd as i32) };

    let dp = palisade_datapath::Datapath::load_or_adopt(&root, MapSizes::default())
        .expect("an older conntrack layout is migrated, not refused");
    t.dp = Some(dp);
    let entries: Vec<_> = t.conntrack().iter().filter_map(|r| r.ok()).collect();
    assert_eq!(entries.len(), 1, "the tracked flow survived: {entries:?}");
    let (k2, v2) = entries[0];
    assert_eq!(k2, k);
    assert_eq!(
        (
            v2.created_ns,
            v2.rule_id,
            v2.table,
            v2.state,
            v2.origin_dir,
            v2.epoch
        ),
        (v.created_ns, v.rule_id, v.table, v.state, v.origin_dir, 0),
        "fields kept, epoch 0: judged again on its next packet"
    );
    // Its reply still passes an ingress deny-all, after one re-judgement.
    assert!(t.run(Hook::ToPod, &back));
    assert_eq!(stat(&t, STAT_CT_RECHECKED), 1);
}

fn bytes_of<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: the ABI types are repr(C) integers with explicit padding (abi.rs).
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
}

#[test]
fn issue_8_identity_change_cuts_a_flow_the_pod_opened() {
    // Egress allows peer identity 5 (rule 60) and denies the rest (rule 3);
    // ingress denies everything: only conntrack lets the replies in.
    let c = compiled(
        table(deny(1), &[]),
        table(deny(3), &ports(5, 17, &[], allow(60))),
        &[("192.0.2.10/32", 5)],
    );
    let mut t = loaded(&c);
    assert!(t.run(Hook::FromPod, &udp_back()), "pod -> peer:5353");
    assert!(t.run(Hook::ToPod, &udp_in()), "reply");
    // An unrelated identity change elsewhere: re-judged, kept.
    t.apply(&Delta {
        ops: vec![Op::PutAddress("192.0.2.11/32".parse().unwrap(), 6)],
    })
    .unwrap();
    assert!(
        t.run(Hook::ToPod, &udp_in()),
        "reply after an unrelated change"
    );
    // The peer itself changes identity: the reply is the first packet to see it.
    t.apply(&remap_peer(6)).unwrap();
    assert!(
        !t.run(Hook::ToPod, &udp_in()),
        "reply after the peer's change"
    );
    assert!(
        !t.run(Hook::FromPod, &udp_back()),
        "the pod's next datagram"
    );
    assert_eq!(stat(&t, STAT_CT_REVOKED), 1);
    assert_eq!(t.count(DIR_INGRESS, REASON_POLICY_DENY), 1);
    assert_eq!(t.count(DIR_EGRESS, REASON_POLICY_DENY), 1);
}

#[test]
fn issue_8_identity_change_cuts_an_ipv6_flow_and_keeps_an_unaffected_one() {
    let mut c = peer_allowed_by_identity();
    c.addresses.insert("2001:db8::10/128".parse().unwrap(), 5);
    c.addresses.insert("2001:db8::11/128".parse().unwrap(), 5);
    let mut t = loaded(&c);
    let into = |src: &str| Packet::udp(src, "fd00::1", 5353, 53).frame();
    let back = |dst: &str| Packet::udp("fd00::1", dst, 53, 5353).frame();
    for peer in ["2001:db8::10", "2001:db8::11"] {
        assert!(t.run(Hook::ToPod, &into(peer)), "{peer}");
        assert!(t.run(Hook::FromPod, &back(peer)), "{peer}");
    }
    t.apply(&Delta {
        ops: vec![Op::PutAddress("2001:db8::10/128".parse().unwrap(), 6)],
    })
    .unwrap();
    assert!(
        !t.run(Hook::FromPod, &back("2001:db8::10")),
        "re-mapped peer"
    );
    assert!(
        t.run(Hook::FromPod, &back("2001:db8::11")),
        "same identity as before"
    );
    assert!(t.run(Hook::ToPod, &into("2001:db8::11")));
    assert_eq!(stat(&t, STAT_CT_REVOKED), 1);
}

#[test]
fn issue_8_identity_change_cuts_an_sctp_association_from_a_fixed_port() {
    let c = peer_allowed_by_identity();
    let mut t = loaded(&c);
    let sctp = |src: &str, dst: &str, sport, dport| {
        Packet::new(
            src.parse().unwrap(),
            dst.parse().unwrap(),
            L4::Sctp { sport, dport },
        )
        .frame()
    };
    let into = sctp("192.0.2.10", "10.0.0.1", 5000, 3868);
    let back = sctp("10.0.0.1", "192.0.2.10", 3868, 5000);
    assert!(t.run(Hook::ToPod, &into));
    assert!(t.run(Hook::FromPod, &back));
    assert!(t.run(Hook::ToPod, &into));
    t.apply(&remap_peer(6)).unwrap();
    assert!(!t.run(Hook::ToPod, &into), "association cut");
    assert!(!t.run(Hook::ToPod, &into), "and stays cut");
    assert_eq!(ct_state(&mut t), CT_REVOKED);
    // Egress allows everything, yet the pod's side of the association cannot
    // restart it as an egress flow of its own.
    assert!(
        !t.run(Hook::FromPod, &back),
        "pod's side of the cut association"
    );
    assert_eq!(stat(&t, STAT_CT_REVOKED), 1);
    assert_eq!(stat(&t, STAT_CT_CREATED), 1);
    // Allowed again: the association resumes.
    t.apply(&remap_peer(5)).unwrap();
    assert!(t.run(Hook::FromPod, &back));
    assert_eq!(ct_state(&mut t), CT_OPEN);
    assert!(t.run(Hook::ToPod, &into));
}
