//! Service translation (`bpf/lib/service.h`) under `BPF_PROG_TEST_RUN`: the
//! frontends come from `palisade_policy::services` and the verdicts are checked
//! against the reference evaluator for the backend the program chose, which
//! the test reads from the rewritten packet.

use std::net::IpAddr;

use palisade_datapath::abi::*;
use palisade_datapath::packet::{Packet, L4};
use palisade_datapath::Hook;
use palisade_policy::compile::compile;
use palisade_policy::manifest;
use palisade_policy::model::Cluster;
use palisade_policy::services::{Backend, ServiceTable};
use palisade_policy::verdict::{evaluate_service, Flow, Peer};

use crate::common::*;

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

/// Ones' complement sum of 16-bit words.
fn sum16(data: &[u8], mut acc: u32) -> u32 {
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        acc += u32::from(w);
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// Where the L4 header and its checksum are in a frame built by `Packet`.
struct Layout {
    v4: bool,
    l4: usize,
    proto: u8,
}

fn layout(frame: &[u8]) -> Layout {
    let v4 = frame[14] >> 4 == 4;
    if v4 {
        Layout {
            v4,
            l4: 14 + usize::from(frame[14] & 0xf) * 4,
            proto: frame[14 + 9],
        }
    } else {
        Layout {
            v4,
            l4: 14 + 40,
            proto: frame[14 + 6],
        }
    }
}

fn csum_off(l: &Layout) -> usize {
    l.l4 + if l.proto == 6 { 16 } else { 6 }
}

fn pseudo(frame: &[u8], l: &Layout) -> u32 {
    let len = (frame.len() - l.l4) as u32;
    if l.v4 {
        let acc = sum16(&frame[14 + 12..14 + 20], 0);
        acc + u32::from(l.proto) + len
    } else {
        let acc = sum16(&frame[14 + 8..14 + 40], 0);
        acc + u32::from(l.proto) + len
    }
}

/// Fills in correct IPv4 header and TCP/UDP checksums.
fn with_checksums(mut frame: Vec<u8>) -> Vec<u8> {
    let l = layout(&frame);
    if l.v4 {
        frame[14 + 10] = 0;
        frame[14 + 11] = 0;
        let c = fold(sum16(&frame[14..l.l4], 0));
        frame[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
    }
    let o = csum_off(&l);
    frame[o] = 0;
    frame[o + 1] = 0;
    let c = fold(sum16(&frame[l.l4..], pseudo(&frame, &l)));
    frame[o..o + 2].copy_from_slice(&c.to_be_bytes());
    frame
}

/// Whether every checksum of the frame verifies.
fn checksums_ok(frame: &[u8]) -> bool {
    let l = layout(frame);
    let ip_ok = !l.v4 || fold(sum16(&frame[14..l.l4], 0)) == 0;
    ip_ok && fold(sum16(&frame[l.l4..], pseudo(frame, &l))) == 0
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// (src, sport, dst, dport) of a frame.
fn tuple(frame: &[u8]) -> (IpAddr, u16, IpAddr, u16) {
    let l = layout(frame);
    let (s, d) = if l.v4 {
        let s: [u8; 4] = frame[26..30].try_into().unwrap();
        let d: [u8; 4] = frame[30..34].try_into().unwrap();
        (IpAddr::from(s), IpAddr::from(d))
    } else {
        let s: [u8; 16] = frame[22..38].try_into().unwrap();
        let d: [u8; 16] = frame[38..54].try_into().unwrap();
        (IpAddr::from(s), IpAddr::from(d))
    };
    let p = |o: usize| u16::from_be_bytes([frame[l.l4 + o], frame[l.l4 + o + 1]]);
    (s, p(0), d, p(2))
}

fn run(t: &mut TestDp, hook: Hook, p: &Packet) -> (bool, Vec<u8>) {
    let (rc, out) = t
        .test_run_frame(hook, &with_checksums(p.frame()))
        .expect("test run");
    (rc == TC_ACT_UNSPEC, out)
}

fn load(yaml: &str) -> Cluster {
    let l = manifest::load(&[("t.yaml".to_string(), yaml.to_string())]);
    assert!(l.errors.is_empty(), "{:?}", l.errors);
    l.cluster
}

/// The client is the test pod (10.0.0.1, fd00::1, bound to ifindex 1); its
/// egress allows pods labelled `tier: allowed` on the named port `http` only.
/// The Service `web` has one allowed and one denied backend, whose named
/// targetPort resolves to 8080 and 9090, in both families.
const WORLD: &str = "
apiVersion: v1
kind: Pod
metadata: {name: pod, namespace: test, labels: {app: client}}
spec: {containers: [{name: c, image: i}]}
status: {podIPs: [{ip: 10.0.0.1}, {ip: 'fd00::1'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: good, namespace: test, labels: {app: web, tier: allowed}}
spec: {containers: [{name: c, image: i, ports: [{name: http, containerPort: 8080}, {name: sctp, containerPort: 7000, protocol: SCTP}]}]}
status: {podIPs: [{ip: 10.1.0.5}, {ip: 'fd00:1::5'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: bad, namespace: test, labels: {app: web, tier: denied}}
spec: {containers: [{name: c, image: i, ports: [{name: http, containerPort: 9090}, {name: sctp, containerPort: 7000, protocol: SCTP}]}]}
status: {podIPs: [{ip: 10.2.0.5}, {ip: 'fd00:2::5'}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress, namespace: test}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {tier: allowed}}}]
    ports: [{port: http}, {port: sctp, protocol: SCTP}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: test}
spec:
  clusterIPs: [10.96.0.10, 'fd00:96::10']
  selector: {app: web}
  ports:
  - {name: h, port: 80, targetPort: http}
  - {name: u, port: 53, protocol: UDP, targetPort: 5353}
  - {name: s, port: 7000, protocol: SCTP, targetPort: sctp}
";

/// The datapath loaded with `cluster`'s compiled policy and Services.
fn loaded_world(cluster: &Cluster) -> (TestDp, ServiceTable) {
    let services = ServiceTable::build(cluster);
    let mut t = TestDp::new();
    t.sync(&compile(cluster)).expect("sync");
    t.bind(POD, 1).expect("bind");
    t.sync_services(&services).expect("services");
    (t, services)
}

#[test]
fn partial_allow_is_judged_by_the_backend_each_flow_is_sent_to() {
    let cluster = load(WORLD);
    let (mut t, services) = loaded_world(&cluster);
    let mut seen = std::collections::BTreeMap::new();
    for (src, dst) in [("10.0.0.1", "10.96.0.10"), ("fd00::1", "fd00:96::10")] {
        for sport in 40000..40100u16 {
            let p = Packet::tcp(src, dst, sport, 80, SYN);
            let (passed, out) = run(&mut t, Hook::FromPod, &p);
            let (s, sp, d, dp) = tuple(&out);
            assert_eq!((s, sp), (ip(src), sport), "the source is untouched");
            assert!(checksums_ok(&out), "checksums after translation");
            let backend = Backend { addr: d, port: dp };
            let flow = Flow::new(Peer::Ip(ip(src)), Peer::Ip(ip(dst)), 6, 80);
            let want = evaluate_service(&cluster, &services, &flow).unwrap();
            let decision = want
                .chosen(&backend)
                .unwrap_or_else(|| panic!("{backend} is no backend of {dst}"));
            let egress = decision.egress.as_ref().unwrap().allowed;
            assert_eq!(passed, egress, "{src}:{sport} -> {backend}");
            *seen.entry((d, dp, passed)).or_insert(0) += 1;
        }
    }
    // Both backends of both families were chosen: 4 (backend, verdict) pairs,
    // the allowed one on 8080, the denied one on 9090 (named targetPort).
    let want: Vec<(IpAddr, u16, bool)> = vec![
        (ip("10.1.0.5"), 8080, true),
        (ip("10.2.0.5"), 9090, false),
        (ip("fd00:1::5"), 8080, true),
        (ip("fd00:2::5"), 9090, false),
    ];
    let mut got: Vec<_> = seen.keys().copied().collect();
    got.sort();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(got, want_sorted, "{seen:?}");
    assert_eq!(
        t.counters().unwrap().stats[STAT_SVC_TRANSLATED as usize],
        seen.iter()
            .filter(|((_, _, ok), _)| *ok)
            .map(|(_, n)| *n as u64)
            .sum::<u64>()
    );
}

#[test]
fn replies_come_back_from_the_frontend_and_later_packets_keep_the_backend() {
    let mut cluster = load(WORLD);
    cluster.network_policies.clear();
    let (mut t, _) = loaded_world(&cluster);
    for (src, dst) in [("10.0.0.1", "10.96.0.10"), ("fd00::1", "fd00:96::10")] {
        let (passed, out) = run(
            &mut t,
            Hook::FromPod,
            &Packet::tcp(src, dst, 41000, 80, SYN),
        );
        assert!(passed);
        let (_, _, backend, bport) = tuple(&out);
        assert_ne!(backend, ip(dst), "translated");
        // The backend's reply, as it arrives at the client's interface.
        let reply = Packet::new(
            backend,
            ip(src),
            L4::Tcp {
                sport: bport,
                dport: 41000,
                flags: SYN | ACK,
            },
        );
        let (passed, out) = run(&mut t, Hook::ToPod, &reply);
        assert!(passed, "the reply of an allowed flow passes");
        assert_eq!(
            tuple(&out),
            (ip(dst), 80, ip(src), 41000),
            "the client sees the frontend"
        );
        assert!(checksums_ok(&out));
        for _ in 0..3 {
            let (passed, out) = run(
                &mut t,
                Hook::FromPod,
                &Packet::tcp(src, dst, 41000, 80, ACK),
            );
            assert!(passed);
            assert_eq!(tuple(&out).2, backend, "every packet to the same backend");
        }
        // UDP to a numeric targetPort, checksums fixed for the port too.
        let (passed, out) = run(&mut t, Hook::FromPod, &Packet::udp(src, dst, 5000, 53));
        assert!(passed);
        assert_eq!(tuple(&out).3, 5353);
        assert!(checksums_ok(&out));
    }
    assert_eq!(t.count(DIR_INGRESS, REASON_CT_REPLY), 2);
    assert_eq!(t.count(DIR_EGRESS, REASON_CT_ESTABLISHED), 6);
    assert_eq!(t.counters().unwrap().stats[STAT_SVC_REVERSED as usize], 2);
}

#[test]
fn a_flow_keeps_its_backend_when_backends_change_and_no_backend_drops() {
    let mut cluster = load(WORLD);
    cluster.network_policies.clear();
    let (mut t, mut services) = loaded_world(&cluster);
    let key = services
        .frontends
        .keys()
        .find(|f| f.addr == ip("10.96.0.10") && f.port == 80)
        .copied()
        .unwrap();
    // A flow to whichever backend; then that backend is the only one left
    // out of the new list.
    let (_, out) = run(
        &mut t,
        Hook::FromPod,
        &Packet::tcp("10.0.0.1", "10.96.0.10", 42000, 80, SYN),
    );
    let first = tuple(&out).2;
    let fe = services.frontends.get_mut(&key).unwrap();
    fe.backends.retain(|b| b.addr != first);
    let other = fe.backends[0].addr;
    t.sync_services(&services).unwrap();
    let (passed, out) = run(
        &mut t,
        Hook::FromPod,
        &Packet::tcp("10.0.0.1", "10.96.0.10", 42000, 80, ACK),
    );
    assert!(passed);
    assert_eq!(
        tuple(&out).2,
        first,
        "an established flow keeps its backend"
    );
    for sport in 42001..42020 {
        let (passed, out) = run(
            &mut t,
            Hook::FromPod,
            &Packet::tcp("10.0.0.1", "10.96.0.10", sport, 80, SYN),
        );
        assert!(passed);
        assert_eq!(tuple(&out).2, other, "new flows take the new list");
    }
    services.frontends.get_mut(&key).unwrap().backends.clear();
    t.sync_services(&services).unwrap();
    let (passed, out) = run(
        &mut t,
        Hook::FromPod,
        &Packet::tcp("10.0.0.1", "10.96.0.10", 43000, 80, SYN),
    );
    assert!(!passed, "a frontend without backends drops");
    assert_eq!(tuple(&out).2, ip("10.96.0.10"), "untouched");
    assert_eq!(t.count(DIR_EGRESS, REASON_SVC_NO_BACKEND), 1);
    // Removing the Service leaves the address an ordinary (unknown) peer.
    t.sync_services(&ServiceTable::default()).unwrap();
    assert!(t.service_entries().is_empty());
}

#[test]
fn sctp_frontends_are_not_translated_and_need_every_backend_allowed() {
    let cluster = load(WORLD);
    let (mut t, _) = loaded_world(&cluster);
    let sctp = |t: &mut TestDp, sport: u16| {
        let p = Packet::new(
            ip("10.0.0.1"),
            ip("10.96.0.10"),
            L4::Sctp { sport, dport: 7000 },
        );
        let (rc, out) = t.test_run_frame(Hook::FromPod, &p.frame()).unwrap();
        (rc == TC_ACT_UNSPEC, out)
    };
    let (passed, out) = sctp(&mut t, 6000);
    assert!(!passed, "one backend is denied: fail closed");
    assert_eq!(tuple(&out).2, ip("10.96.0.10"), "SCTP is never rewritten");
    assert_eq!(t.count(DIR_EGRESS, REASON_SVC_UNTRANSLATED_DENY), 1);
    // Only the allowed backend left: allowed, still untranslated, tracked.
    let mut only_good = cluster.clone();
    only_good.pods.remove("test/bad");
    let (mut t, _) = loaded_world(&only_good);
    let (passed, out) = sctp(&mut t, 6000);
    assert!(passed);
    assert_eq!(tuple(&out).2, ip("10.96.0.10"));
    assert!(sctp(&mut t, 6000).0);
    assert_eq!(t.count(DIR_EGRESS, REASON_CT_ESTABLISHED), 1);
    assert_eq!(t.count(DIR_EGRESS, REASON_POLICY_ALLOW), 1);
}
