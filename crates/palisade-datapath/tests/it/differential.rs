//! Differential test: random compiled tables and random packets; the program's
//! verdict and rule must equal the compiled form's own lookup, `Compiled::lookup`
//! (whose agreement with `palisade_policy::verdict` the core's property tests show;
//! `cluster_differential` compares the kernel with the evaluator directly).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use palisade_datapath::abi::{
    Config, CFG_F_NO_CT_CREATE, LOG_ALL, PART_F_OVERFLOW, TC_ACT_SHOT, TC_ACT_UNSPEC,
};
use palisade_datapath::packet::{Packet, L4};
use palisade_datapath::{Hook, MapSizes};
use palisade_policy::compiled::{
    Compiled, RuleTable, TableAction, TableEntry, TableVerdict, PROTO_CLASSES, RULE_NONE,
};

use crate::common::*;

const IDENTITIES: u32 = 12;

fn random_partition(
    rng: &mut Rng,
    peer: u32,
    proto: u8,
    rule_base: u32,
) -> (Vec<TableEntry>, Vec<u16>) {
    let verdict = |rng: &mut Rng| TableVerdict {
        action: if rng.chance(50) {
            TableAction::Allow
        } else {
            TableAction::Deny
        },
        rule: rule_base + rng.below(50) as u32,
    };
    if proto == 0 {
        return (
            vec![TableEntry {
                peer,
                proto,
                port_lo: 0,
                port_hi: 0,
                verdict: verdict(rng),
            }],
            vec![0],
        );
    }
    let mut cuts: Vec<u16> = (0..rng.below(6))
        .map(|_| 1 + rng.below(65535) as u16)
        .collect();
    // Popular ports make good edges.
    for p in [53u16, 80, 443, 8080] {
        if rng.chance(20) {
            cuts.push(p);
            cuts.push(p + 1);
        }
    }
    cuts.sort();
    cuts.dedup();
    let mut out = Vec::new();
    let mut lo: u32 = 0;
    for c in cuts.iter().map(|&c| u32::from(c)).chain([65536]) {
        if c > lo {
            out.push(TableEntry {
                peer,
                proto,
                port_lo: lo as u16,
                port_hi: (c - 1) as u16,
                verdict: verdict(rng),
            });
        }
        lo = c;
    }
    let mut edges: Vec<u16> = out.iter().flat_map(|e| [e.port_lo, e.port_hi]).collect();
    edges.extend([0, 65535]);
    (out, edges)
}

fn random_table(rng: &mut Rng, rule_base: u32, edges: &mut Vec<u16>) -> RuleTable {
    let mut t = RuleTable::default();
    for peer in 0..=IDENTITIES {
        for &proto in &PROTO_CLASSES {
            // IDENTITY_ANY always covers everything; other peers sometimes.
            if peer == 0 || rng.chance(30) {
                let (e, ed) = random_partition(rng, peer, proto, rule_base);
                t.entries.extend(e);
                edges.extend(ed);
            }
        }
    }
    t.entries.sort_by_key(|e| (e.peer, e.proto, e.port_lo));
    t
}

fn random_prefix(rng: &mut Rng, v6: bool) -> IpNet {
    if v6 {
        let mut o = [0u8; 16];
        o[0] = 0x20;
        o[1] = 0x01;
        o[2] = 0x0d;
        o[3] = 0xb8;
        for b in o.iter_mut().skip(4) {
            *b = rng.below(4) as u8; // small alphabet: prefixes nest often
        }
        IpNet::new(IpAddr::V6(Ipv6Addr::from(o)), 32 + rng.below(97) as u8)
            .unwrap()
            .trunc()
    } else {
        let a = Ipv4Addr::new(
            10 + rng.below(2) as u8,
            rng.below(4) as u8,
            rng.below(4) as u8,
            rng.below(8) as u8,
        );
        IpNet::new(IpAddr::V4(a), 8 + rng.below(25) as u8)
            .unwrap()
            .trunc()
    }
}

fn random_compiled(rng: &mut Rng, edges: &mut Vec<u16>) -> Compiled {
    let ingress = random_table(rng, 1000, edges);
    let egress = random_table(rng, 2000, edges);
    let mut c = compiled(ingress, egress, &[]);
    for _ in 0..40 {
        let v6 = rng.chance(40);
        let net = random_prefix(rng, v6);
        c.addresses
            .insert(net, rng.below(u64::from(IDENTITIES) + 1) as u32);
    }
    // Host addresses (/32, /128: the exact-match host maps) inside the random
    // prefixes, so "host map first, LPM on a miss" is compared too.
    for _ in 0..8 {
        let v6 = rng.chance(40);
        let host = random_addr_in(rng, &c, v6);
        c.addresses.insert(
            IpNet::from(host),
            rng.below(u64::from(IDENTITIES) + 1) as u32,
        );
    }
    c
}

fn random_addr_in(rng: &mut Rng, c: &Compiled, v6: bool) -> IpAddr {
    let nets: Vec<&IpNet> = c
        .addresses
        .keys()
        .filter(|n| n.addr().is_ipv6() == v6)
        .collect();
    let net = nets[rng.below(nets.len() as u64) as usize];
    match net {
        IpNet::V4(n) => {
            let host = (rng.next() as u32) & !u32::from(n.netmask());
            let base = u32::from(n.network());
            // Edges of the prefix are interesting too.
            let a = match rng.below(4) {
                0 => base,
                1 => base | !u32::from(n.netmask()),
                _ => base | host,
            };
            IpAddr::V4(Ipv4Addr::from(a))
        }
        IpNet::V6(n) => {
            let host =
                (u128::from(rng.next()) << 64 | u128::from(rng.next())) & !u128::from(n.netmask());
            IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) | host))
        }
    }
}

#[test]
fn program_verdicts_equal_the_compiled_lookup_on_random_tables_and_packets() {
    let seed = Rng::seed();
    let rounds: usize = std::env::var("PALISADE_DIFF_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let per_round = 10_000;
    println!("differential seed {seed} (set PALISADE_DIFF_SEED to replay)");
    let mut rng = Rng(seed);
    let mut t = TestDp::with_sizes(MapSizes {
        policy: 65536,
        ..MapSizes::default()
    });
    let mut reader = t.events().unwrap();
    // Each packet is judged by policy alone (no conntrack state carried over)
    // and logged, so the event gives us the rule id.
    t.set_config(Config {
        log_mode: LOG_ALL,
        flags: CFG_F_NO_CT_CREATE,
        ..Config::default()
    })
    .unwrap();
    t.bind(POD, 1).unwrap();
    let (mut compared, mut allowed) = (0usize, 0usize);
    let (mut inline, mut overflow) = (0usize, 0usize);
    for round in 0..rounds {
        let mut edges = Vec::new();
        let c = random_compiled(&mut rng, &mut edges);
        t.sync(&c).expect("sync");
        let bad = t.check_derived_maps().unwrap();
        assert!(bad.is_empty(), "seed {seed} round {round}: {bad:#?}");
        for part in t.dump_policy_parts().unwrap().values() {
            if part.flags & PART_F_OVERFLOW != 0 {
                overflow += 1;
            } else {
                inline += 1;
            }
        }
        for _ in 0..per_round {
            let v6 = rng.chance(40);
            let egress = rng.chance(50);
            let peer = random_addr_in(&mut rng, &c, v6);
            let pod: IpAddr = if v6 {
                "fd00::1".parse().unwrap()
            } else {
                "10.0.0.1".parse().unwrap()
            };
            let dport = if rng.chance(60) {
                edges[rng.below(edges.len() as u64) as usize]
            } else {
                rng.next() as u16
            };
            let sport = rng.next() as u16;
            let (l4, proto) = match rng.below(5) {
                0 => (
                    L4::Tcp {
                        sport,
                        dport,
                        flags: 0x02,
                    },
                    6u8,
                ),
                1 => (L4::Udp { sport, dport }, 17),
                2 => (L4::Sctp { sport, dport }, 132),
                3 => (
                    L4::Icmp {
                        ty: if v6 { 128 } else { 8 },
                        code: 0,
                        id: sport,
                        inner: vec![],
                    },
                    if v6 { 58 } else { 1 },
                ),
                _ => (L4::Other(47), 47),
            };
            let (src, dst) = if egress { (pod, peer) } else { (peer, pod) };
            let p = Packet::new(src, dst, l4);
            let table = if egress { 2 } else { 1 };
            let want = c.lookup(table, c.lookup_identity(peer), proto, dport);
            assert_ne!(want.rule, RULE_NONE, "random tables cover every flow");
            let hook = if egress { Hook::FromPod } else { Hook::ToPod };
            let (rc, _) = t.test_run(hook, &p.frame(), 1).unwrap();
            let ev = reader.next().expect("one event per policy decision");
            let got_allow = match rc {
                TC_ACT_UNSPEC => true,
                TC_ACT_SHOT => false,
                x => panic!("rc {x}"),
            };
            assert_eq!(
                (got_allow, ev.rule_id),
                (want.action == TableAction::Allow, want.rule),
                "seed {seed} round {round}: {p:?} egress={egress} event={ev:?}"
            );
            allowed += usize::from(got_allow);
            compared += 1;
        }
    }
    assert!(reader.next().is_none());
    assert!(
        inline > 0 && overflow > 0,
        "both partition kinds exercised: {inline} inline, {overflow} overflow"
    );
    println!("differential: compared {compared} packets ({allowed} allowed) over {rounds} random policies ({inline} inline, {overflow} overflow partitions), all equal");
}
