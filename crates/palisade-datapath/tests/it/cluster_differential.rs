//! End-to-end differential test: random *clusters* (pods, namespaces, NetworkPolicies,
//! Admin and Baseline cluster policies, Calico policies and a network set) go through the real compiler into the real
//! maps; every packet's kernel verdict, and the rule the kernel names for it, must
//! equal the reference evaluator's (`palisade_policy::verdict::evaluate_side`).
//! The evaluator never sees the compiled form, so this checks compiler, encoder and
//! C program together against the semantics.

use std::net::IpAddr;

use ipnet::IpNet;
use palisade_datapath::abi::{Config, CFG_F_NO_CT_CREATE, LOG_ALL, TC_ACT_SHOT, TC_ACT_UNSPEC};
use palisade_datapath::packet::{Packet, L4};
use palisade_datapath::{Hook, MapSizes};
use palisade_policy::compile::compile;
use palisade_policy::model::*;
use palisade_policy::selector::{LabelSelector, Labels, Requirement};
use palisade_policy::verdict::{evaluate_side, Peer};

use crate::common::{Rng, TestDp};

pub(crate) const NAMESPACES: [&str; 3] = ["a", "b", "c"];
pub(crate) const APPS: [&str; 3] = ["web", "db", "dns"];
/// Outside addresses: the metadata address, a public one, one v6.
pub(crate) const OUTSIDE: [&str; 4] = [
    "169.254.169.254",
    "93.184.216.34",
    "10.9.0.1",
    "2001:db8::7",
];
/// Ports that sit on rule edges.
pub(crate) const PORTS: [u16; 8] = [53, 80, 443, 5432, 8000, 8080, 8100, 8101];

pub(crate) fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn selector(rng: &mut Rng, key: &str, values: &[&str]) -> LabelSelector {
    match rng.below(4) {
        0 => LabelSelector::everything(),
        1 => LabelSelector {
            match_labels: Labels::new(),
            match_expressions: vec![Requirement::NotIn(
                key.into(),
                vec![(*rng.pick(values)).into()],
            )],
        },
        _ => LabelSelector::from_labels([(key, *rng.pick(values))]),
    }
}

fn ports(rng: &mut Rng) -> Option<Vec<PortMatch>> {
    if rng.chance(30) {
        return None;
    }
    let mut out = Vec::new();
    for _ in 0..1 + rng.below(2) {
        let protocol = *rng.pick(&[Protocol::Tcp, Protocol::Tcp, Protocol::Udp, Protocol::Sctp]);
        out.push(match rng.below(4) {
            0 => PortMatch::Range {
                protocol,
                port: 8000,
                end_port: 8100,
            },
            1 => PortMatch::Named {
                protocol,
                name: (*rng.pick(&["http", "dns", "pg"])).into(),
            },
            2 => PortMatch::AllPorts(protocol),
            _ => {
                let p = *rng.pick(&PORTS);
                PortMatch::Range {
                    protocol,
                    port: p,
                    end_port: p,
                }
            }
        });
    }
    Some(out)
}

fn ip_block(rng: &mut Rng) -> IpBlock {
    match rng.below(3) {
        0 => IpBlock {
            cidr: "0.0.0.0/0".parse().unwrap(),
            except: vec!["169.254.169.254/32".parse().unwrap()],
        },
        1 => IpBlock {
            cidr: "10.0.0.0/8".parse().unwrap(),
            except: vec!["10.1.0.0/29".parse().unwrap()],
        },
        _ => IpBlock {
            cidr: "::/0".parse().unwrap(),
            except: vec!["fd00:1::/120".parse().unwrap()],
        },
    }
}

pub(crate) fn random_cluster(rng: &mut Rng) -> Cluster {
    let mut c = Cluster::default();
    for ns in NAMESPACES {
        let team = *rng.pick(&["x", "y"]);
        c.namespaces.insert(
            ns.into(),
            Namespace {
                name: ns.into(),
                labels: labels(&[("team", team), (NAMESPACE_NAME_LABEL, ns)]),
            },
        );
    }
    for i in 0..6u8 {
        let ns = NAMESPACES[i as usize % 3];
        let app = *rng.pick(&APPS);
        let mut ports = vec![ContainerPort {
            name: Some("dns".into()),
            port: 53,
            protocol: Protocol::Udp,
        }];
        ports.push(ContainerPort {
            name: Some("http".into()),
            port: *rng.pick(&[80u16, 8080]),
            protocol: Protocol::Tcp,
        });
        if rng.chance(50) {
            ports.push(ContainerPort {
                name: Some("pg".into()),
                port: 5432,
                protocol: Protocol::Tcp,
            });
        }
        let name = format!("p{i}");
        c.pods.insert(
            format!("{ns}/{name}"),
            Pod {
                namespace: ns.into(),
                name,
                labels: labels(&[("app", app)]),
                ports,
                ips: vec![
                    format!("10.1.0.{}", i + 2).parse().unwrap(),
                    format!("fd00:1::{}", i + 2).parse().unwrap(),
                ],
                host_network: false,
                node_name: None,
                service_account: "default".into(),
            },
        );
    }
    for i in 0..rng.below(5) {
        let ns = *rng.pick(&NAMESPACES);
        let rules = |rng: &mut Rng| -> Option<Vec<NetworkPolicyRule>> {
            if rng.chance(30) {
                return None;
            }
            Some(
                (0..rng.below(3))
                    .map(|_| NetworkPolicyRule {
                        peers: if rng.chance(20) {
                            None
                        } else {
                            Some(
                                (0..1 + rng.below(2))
                                    .map(|_| match rng.below(4) {
                                        0 => NetworkPolicyPeer::IpBlock(ip_block(rng)),
                                        1 => NetworkPolicyPeer::Pods {
                                            namespaces: NamespaceMatch::Named(ns.into()),
                                            pods: selector(rng, "app", &APPS),
                                        },
                                        _ => NetworkPolicyPeer::Pods {
                                            namespaces: NamespaceMatch::Selector(selector(
                                                rng,
                                                "team",
                                                &["x", "y"],
                                            )),
                                            pods: selector(rng, "app", &APPS),
                                        },
                                    })
                                    .collect(),
                            )
                        },
                        ports: ports(rng),
                    })
                    .collect(),
            )
        };
        let ingress = rules(rng);
        let egress = rules(rng);
        let np = NetworkPolicy {
            namespace: ns.into(),
            name: format!("np{i}"),
            pod_selector: selector(rng, "app", &APPS),
            ingress,
            egress,
        };
        c.network_policies.insert(format!("{ns}/np{i}"), np);
    }
    for i in 0..rng.below(3) {
        let tier = if rng.chance(50) {
            Tier::Admin
        } else {
            Tier::Baseline
        };
        let crules = |rng: &mut Rng, egress: bool| -> Vec<ClusterRule> {
            (0..rng.below(3))
                .map(|j| {
                    let action = match (tier, rng.below(3)) {
                        (Tier::Admin, 0) => Action::Pass,
                        (_, 1) => Action::Deny,
                        _ => Action::Accept,
                    };
                    let peer = match rng.below(if egress { 4 } else { 2 }) {
                        0 => ClusterPeer::Namespaces(selector(rng, "team", &["x", "y"])),
                        1 => ClusterPeer::Pods {
                            namespaces: selector(rng, "team", &["x", "y"]),
                            pods: selector(rng, "app", &APPS),
                        },
                        _ => ClusterPeer::Networks(vec![*rng.pick(
                            &[
                                "169.254.169.254/32",
                                "10.0.0.0/8",
                                "0.0.0.0/0",
                                "fd00:1::/64",
                            ]
                            .map(|n| n.parse::<IpNet>().unwrap()),
                        )]),
                    };
                    ClusterRule {
                        name: format!("r{j}"),
                        action,
                        peers: vec![peer],
                        ports: ports(rng),
                    }
                })
                .collect()
        };
        let ingress = crules(rng, false);
        let egress = crules(rng, true);
        let kind = ClusterPolicyKind::ClusterNetworkPolicy;
        let cp = ClusterPolicy {
            kind,
            name: format!("cp{i}"),
            tier,
            priority: rng.below(3) as i32,
            subject: Subject::Namespaces(selector(rng, "team", &["x", "y"])),
            ingress,
            egress,
        };
        c.cluster_policies
            .insert(format!("ClusterNetworkPolicy/cp{i}"), cp);
    }
    add_calico(rng, &mut c);
    c
}

/// Random Calico policies of the default tier (ordered around the NetworkPolicies'
/// 1000, every action, nets, selectors, notSelector, ports and notPorts) and a network
/// set holding the metadata address.
fn add_calico(rng: &mut Rng, c: &mut Cluster) {
    use palisade_policy::calico_selector::CalicoSelector;
    let sel = |rng: &mut Rng| {
        let text = *rng.pick(&[
            "all()",
            "app == 'web'",
            "app != 'db'",
            "app in {'web', 'dns'}",
            "pcns.team == 'x'",
            "kind == 'imds'",
        ]);
        CalicoSelector::parse(text).expect("valid")
    };
    c.network_sets.insert(
        "GlobalNetworkSet/imds".into(),
        NetworkSet {
            namespace: None,
            name: "imds".into(),
            labels: labels(&[("kind", "imds")]),
            nets: vec!["169.254.169.254/32".parse().unwrap()],
        },
    );
    for i in 0..rng.below(3) {
        let namespace = rng.chance(50).then(|| rng.pick(&NAMESPACES).to_string());
        let rules = |rng: &mut Rng| -> Option<Vec<CalicoRule>> {
            if rng.chance(30) {
                return None;
            }
            Some(
                (0..rng.below(3))
                    .map(|_| {
                        let action = *rng.pick(&[
                            CalicoAction::Allow,
                            CalicoAction::Deny,
                            CalicoAction::Pass,
                            CalicoAction::Log,
                        ]);
                        let mut peer = CalicoEntity::default();
                        match rng.below(4) {
                            0 => peer.nets = vec!["10.1.0.0/29".parse().unwrap()],
                            1 => peer.selector = Some(sel(rng)),
                            2 => peer.not_selector = Some(sel(rng)),
                            _ => {}
                        }
                        let protocol = rng.chance(50).then_some(Protocol::Tcp);
                        let (ports, not_ports) = match (protocol, rng.below(3)) {
                            (Some(_), 0) => (vec![CalicoPort::Range(8000, 8100)], Vec::new()),
                            (Some(_), 1) => (Vec::new(), vec![CalicoPort::Named("http".into())]),
                            _ => (Vec::new(), Vec::new()),
                        };
                        CalicoRule {
                            action,
                            protocol,
                            not_protocol: None,
                            peer,
                            ports,
                            not_ports,
                        }
                    })
                    .collect(),
            )
        };
        let ingress = rules(rng);
        let egress = rules(rng);
        let p = CalicoPolicy {
            kind: if namespace.is_some() {
                CalicoKind::NetworkPolicy
            } else {
                CalicoKind::GlobalNetworkPolicy
            },
            namespace,
            name: format!("calico{i}"),
            order: *rng.pick(&[
                None,
                Some(Order(10.0)),
                Some(Order(1000.0)),
                Some(Order(2000.0)),
            ]),
            selector: sel(rng),
            service_account_selector: None,
            namespace_selector: None,
            ingress: if ingress.is_none() && egress.is_none() {
                Some(Vec::new())
            } else {
                ingress
            },
            egress,
        };
        c.calico_policies.insert(p.key(), p);
    }
}

/// A first packet of a random protocol to a port on a rule edge (ICMP echo for the rest):
/// the header, the protocol number and the destination port the evaluator sees.
pub(crate) fn random_l4(rng: &mut Rng, v6: bool) -> (L4, u8, u16) {
    let port = *rng.pick(&PORTS);
    let sport = 30000 + rng.below(30000) as u16;
    match rng.below(4) {
        0 => (
            L4::Tcp {
                sport,
                dport: port,
                flags: 0x02,
            },
            6u8,
            port,
        ),
        1 => (L4::Udp { sport, dport: port }, 17, port),
        2 => (L4::Sctp { sport, dport: port }, 132, port),
        _ => (
            L4::Icmp {
                ty: if v6 { 128 } else { 8 },
                code: 0,
                id: sport,
                inner: vec![],
            },
            if v6 { 58 } else { 1 },
            0,
        ),
    }
}

#[test]
fn kernel_verdicts_on_compiled_random_clusters_equal_the_reference_evaluator() {
    let seed = Rng::seed();
    let rounds: usize = std::env::var("PALISADE_CLUSTER_DIFF_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    println!("cluster differential seed {seed} (set PALISADE_DIFF_SEED to replay)");
    let mut rng = Rng(seed);
    let mut t = TestDp::with_sizes(MapSizes {
        policy: 65536,
        ..MapSizes::default()
    });
    let mut reader = t.events().unwrap();
    t.set_config(Config {
        log_mode: LOG_ALL,
        flags: CFG_F_NO_CT_CREATE,
        ..Config::default()
    })
    .unwrap();
    let (mut compared, mut allowed) = (0usize, 0usize);
    for round in 0..rounds {
        let cluster = random_cluster(&mut rng);
        let compiled = compile(&cluster);
        t.sync(&compiled).expect("sync");
        let pods: Vec<&Pod> = cluster.pods.values().collect();
        let mut peers: Vec<IpAddr> = pods.iter().flat_map(|p| p.ips.iter().copied()).collect();
        peers.extend(OUTSIDE.iter().map(|a| a.parse::<IpAddr>().unwrap()));
        for pod in &pods {
            // Each pod in turn is "the pod behind ifindex 1".
            t.bind(&pod.key(), 1).expect("bind");
            for _ in 0..100 {
                let egress = rng.chance(50);
                let peer = *rng.pick(&peers);
                let own = *pod
                    .ips
                    .iter()
                    .find(|ip| ip.is_ipv4() == peer.is_ipv4())
                    .unwrap();
                if peer == own {
                    continue;
                }
                let (l4, proto, dport) = random_l4(&mut rng, peer.is_ipv6());
                let (dir, hook, src, dst) = if egress {
                    (Direction::Egress, Hook::FromPod, own, peer)
                } else {
                    (Direction::Ingress, Hook::ToPod, peer, own)
                };
                let want = evaluate_side(&cluster, pod, dir, &Peer::Ip(peer), proto, dport);
                let p = Packet::new(src, dst, l4);
                let (rc, _) = t.test_run(hook, &p.frame(), 1).unwrap();
                let got = match rc {
                    TC_ACT_UNSPEC => true,
                    TC_ACT_SHOT => false,
                    x => panic!("rc {x}"),
                };
                let ev = reader.next().expect("one event per policy decision");
                let origin = compiled.rules.get(&ev.rule_id);
                assert_eq!(
                    (got, origin),
                    (want.allowed, Some(&want.origin)),
                    "seed {seed} round {round}: pod {} {dir:?} peer {peer} proto {proto} port {dport}\ncluster: {}",
                    pod.key(),
                    serde_json::to_string(&cluster).unwrap()
                );
                allowed += usize::from(got);
                compared += 1;
            }
        }
    }
    println!("cluster differential: compared {compared} packets ({allowed} allowed) over {rounds} random clusters, all equal to the reference evaluator");
    assert!(compared > 10_000, "too few packets compared: {compared}");
}
