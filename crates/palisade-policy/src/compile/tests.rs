//! Compiler tests: one unit test per construct, then property tests comparing compiled
//! lookups with the reference evaluator (`verdict::evaluate`), and incremental deltas
//! with a full compile.

use std::net::IpAddr;

use ipnet::IpNet;
use proptest::prelude::*;

use super::{changes_between, compile, Change, Compiler};
use crate::compiled::{Compiled, Op, RuleOrigin, TableAction};
use crate::model::{
    Action, Cluster, ClusterPeer, ClusterPolicy, ClusterPolicyKind, ClusterRule, ContainerPort,
    Direction, IpBlock, Namespace, NamespaceMatch, NetworkPolicy, NetworkPolicyPeer,
    NetworkPolicyRule, Node, Pod, PortMatch, Protocol, Subject, Tier, NAMESPACE_NAME_LABEL,
};
use crate::selector::{LabelSelector, Labels, Requirement};
use crate::verdict::{evaluate, Flow, Peer};

// ---------------------------------------------------------------------------------------
// The oracle.
// ---------------------------------------------------------------------------------------

/// The oracle: the reference evaluator itself, [`evaluate`], on the flow the datapath
/// sees for one side of endpoint `ep`: `ep` by name and the peer by address (so the
/// flow's family is the peer's), in direction `dir`. The property tests compare every
/// compiled lookup with this; there is no second evaluator to keep in step.
fn oracle(
    cluster: &Cluster,
    ep: &Pod,
    dir: Direction,
    peer: IpAddr,
    proto: u8,
    port: u16,
) -> (bool, RuleOrigin) {
    let (me, them) = (Peer::Pod(ep.key()), Peer::Ip(peer));
    let flow = match dir {
        Direction::Egress => Flow::new(me, them, proto, port),
        Direction::Ingress => Flow::new(them, me, proto, port),
    };
    let d = evaluate(cluster, &flow);
    let side = match dir {
        Direction::Egress => d.egress,
        Direction::Ingress => d.ingress,
    };
    let side = side.unwrap_or_else(|| panic!("{} is an endpoint: {dir:?} is evaluated", ep.key()));
    (side.allowed, side.origin)
}

/// The compiled verdict for the same side.
fn compiled_side(
    c: &Compiled,
    ep: &str,
    dir: Direction,
    peer: IpAddr,
    proto: u8,
    port: u16,
) -> (bool, RuleOrigin) {
    let e = &c.endpoints[ep];
    let table = match dir {
        Direction::Ingress => e.ingress,
        Direction::Egress => e.egress,
    };
    let v = c.lookup(table, c.lookup_identity(peer), proto, port);
    let origin = c
        .rules
        .get(&v.rule)
        .unwrap_or_else(|| panic!("rule {} missing", v.rule))
        .clone();
    (v.action == TableAction::Allow, origin)
}

/// Every interesting address of a cluster: pod and node addresses, ipBlock edges and a
/// few outsiders.
pub(super) fn probe_addresses(c: &Cluster) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = [
        "10.0.0.200",
        "10.0.0.2",
        "10.0.0.1",
        "10.0.0.3",
        "10.0.1.7",
        "10.9.9.9",
        "192.168.1.1",
        "169.254.169.254",
        "fd00::99",
        "fd00::1",
        "fd00::2",
        "2001:db8::1",
    ]
    .iter()
    .map(|a| a.parse().unwrap())
    .collect();
    for p in c.pods.values() {
        out.extend(&p.ips);
    }
    for n in c.nodes.values() {
        out.extend(&n.addresses);
    }
    out.extend(super::calico_tests::probe_addresses());
    out.sort();
    out.dedup();
    out
}

const PROBE_PROTOS: [u8; 4] = [6, 17, 132, 1];

pub(super) fn probe_ports(c: &Cluster) -> Vec<u16> {
    let mut out = vec![0, 1, 52, 53, 54, 79, 80, 81, 443, 8080, 9090, 65535];
    let mut add_range = |lo: u16, hi: u16| {
        out.extend([lo, hi, lo.saturating_sub(1), hi.saturating_add(1)]);
    };
    let mut visit = |ports: &Option<Vec<PortMatch>>| {
        for pm in ports.iter().flatten() {
            if let PortMatch::Range { port, end_port, .. } = pm {
                add_range(*port, *end_port);
            }
        }
    };
    for np in c.network_policies.values() {
        for r in np.ingress.iter().chain(&np.egress).flatten() {
            visit(&r.ports);
        }
    }
    for cp in c.cluster_policies.values() {
        for r in cp.ingress.iter().chain(&cp.egress) {
            visit(&r.ports);
        }
    }
    out.extend(super::calico_tests::probe_ports(c));
    out.sort();
    out.dedup();
    out
}

/// Compares the compiled form with the oracle on every probe flow; returns the first
/// mismatch.
pub(super) fn compare_with_oracle(c: &Cluster, compiled: &Compiled) -> Result<(), String> {
    compiled.check()?;
    let addrs = probe_addresses(c);
    let ports = probe_ports(c);
    for ep in c.pods.values() {
        let key = ep.key();
        let is_ep = !ep.host_network && !ep.ips.is_empty();
        if is_ep != compiled.endpoints.contains_key(&key) {
            return Err(format!("endpoint presence of {key} differs"));
        }
        if !is_ep {
            continue;
        }
        for dir in [Direction::Ingress, Direction::Egress] {
            for &a in &addrs {
                for &proto in &PROBE_PROTOS {
                    for &port in &ports {
                        let want = oracle(c, ep, dir, a, proto, port);
                        let got = compiled_side(compiled, &key, dir, a, proto, port);
                        if want != got {
                            return Err(format!(
                                "{key} {dir:?} peer {a} proto {proto} port {port}: \
                                 compiled {got:?}, oracle {want:?}"
                            ));
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Builders for unit tests.
// ---------------------------------------------------------------------------------------

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn ns(name: &str, extra: &[(&str, &str)]) -> Namespace {
    let mut l = labels(extra);
    l.insert(NAMESPACE_NAME_LABEL.into(), name.into());
    Namespace {
        name: name.into(),
        labels: l,
    }
}

fn pod(ns: &str, name: &str, l: &[(&str, &str)], ips: &[&str]) -> Pod {
    Pod {
        namespace: ns.into(),
        name: name.into(),
        labels: labels(l),
        ports: Vec::new(),
        ips: ips.iter().map(|a| a.parse().unwrap()).collect(),
        host_network: false,
        node_name: None,
        service_account: "default".into(),
    }
}

fn sel(l: &[(&str, &str)]) -> LabelSelector {
    LabelSelector::from_labels(l.iter().map(|(k, v)| (k.to_string(), v.to_string())))
}

fn tcp(p: u16) -> PortMatch {
    PortMatch::Range {
        protocol: Protocol::Tcp,
        port: p,
        end_port: p,
    }
}

fn np(ns: &str, name: &str, s: LabelSelector) -> NetworkPolicy {
    NetworkPolicy {
        namespace: ns.into(),
        name: name.into(),
        pod_selector: s,
        ingress: None,
        egress: None,
    }
}

fn rule(peers: Option<Vec<NetworkPolicyPeer>>, ports: Option<Vec<PortMatch>>) -> NetworkPolicyRule {
    NetworkPolicyRule { peers, ports }
}

fn pods_peer(ns: Option<&str>, s: LabelSelector) -> NetworkPolicyPeer {
    NetworkPolicyPeer::Pods {
        namespaces: match ns {
            Some(n) => NamespaceMatch::Named(n.into()),
            None => NamespaceMatch::Selector(LabelSelector::everything()),
        },
        pods: s,
    }
}

fn block(cidr: &str, except: &[&str]) -> NetworkPolicyPeer {
    NetworkPolicyPeer::IpBlock(IpBlock {
        cidr: cidr.parse().unwrap(),
        except: except.iter().map(|e| e.parse().unwrap()).collect(),
    })
}

fn cluster_of(
    nss: Vec<Namespace>,
    pods: Vec<Pod>,
    nps: Vec<NetworkPolicy>,
    cps: Vec<ClusterPolicy>,
) -> Cluster {
    let mut c = Cluster::default();
    for n in nss {
        c.namespaces.insert(n.name.clone(), n);
    }
    for p in pods {
        c.pods.insert(p.key(), p);
    }
    for p in nps {
        c.network_policies
            .insert(format!("{}/{}", p.namespace, p.name), p);
    }
    for p in cps {
        c.cluster_policies
            .insert(format!("{}/{}", p.kind.as_str(), p.name), p);
    }
    c
}

fn side(
    c: &Cluster,
    ep: &str,
    dir: Direction,
    peer: &str,
    proto: u8,
    port: u16,
) -> (bool, RuleOrigin) {
    let compiled = compile(c);
    compiled.check().unwrap();
    let got = compiled_side(&compiled, ep, dir, peer.parse().unwrap(), proto, port);
    let want = oracle(c, &c.pods[ep], dir, peer.parse().unwrap(), proto, port);
    assert_eq!(got, want, "compiled and oracle disagree");
    got
}

fn demo() -> Cluster {
    let mut web = np("demo", "web", sel(&[("app", "web")]));
    web.ingress = Some(vec![
        rule(
            Some(vec![pods_peer(Some("demo"), sel(&[("app", "client")]))]),
            Some(vec![tcp(80)]),
        ),
        rule(Some(vec![block("10.1.0.0/16", &["10.1.2.0/24"])]), None),
    ]);
    cluster_of(
        vec![ns("demo", &[]), ns("other", &[("team", "x")])],
        vec![
            pod("demo", "web", &[("app", "web")], &["10.0.0.1", "fd00::1"]),
            pod("demo", "client", &[("app", "client")], &["10.0.0.2"]),
            pod("demo", "client2", &[("app", "client")], &["10.0.0.3"]),
            pod("other", "client", &[("app", "client")], &["10.0.0.4"]),
        ],
        vec![web],
        vec![],
    )
}

// ---------------------------------------------------------------------------------------
// Unit tests, one per construct.
// ---------------------------------------------------------------------------------------

#[test]
fn unselected_pod_is_allowed_by_default() {
    let c = demo();
    let (ok, o) = side(&c, "demo/client", Direction::Ingress, "10.9.9.9", 6, 22);
    assert!(ok);
    assert_eq!(
        o,
        RuleOrigin::Default {
            direction: Direction::Ingress
        }
    );
}

#[test]
fn selected_pod_allows_only_listed_peer_and_port() {
    let c = demo();
    assert!(side(&c, "demo/web", Direction::Ingress, "10.0.0.2", 6, 80).0);
    let (ok, o) = side(&c, "demo/web", Direction::Ingress, "10.0.0.2", 6, 81);
    assert!(!ok);
    assert_eq!(
        o,
        RuleOrigin::Isolated {
            direction: Direction::Ingress,
            policies: vec!["demo/web".into()]
        }
    );
    // Same labels in another namespace: a peer without namespaceSelector is same-namespace.
    assert!(!side(&c, "demo/web", Direction::Ingress, "10.0.0.4", 6, 80).0);
    // Egress is not isolated by an ingress-only policy.
    assert!(side(&c, "demo/web", Direction::Egress, "10.0.0.4", 6, 80).0);
}

#[test]
fn pods_of_one_deployment_share_identity_and_tables() {
    let compiled = compile(&demo());
    let a = compiled.lookup_identity("10.0.0.2".parse().unwrap());
    let b = compiled.lookup_identity("10.0.0.3".parse().unwrap());
    assert_eq!(a, b);
    let e1 = &compiled.endpoints["demo/client"];
    let e2 = &compiled.endpoints["demo/client2"];
    assert_eq!((e1.ingress, e1.egress), (e2.ingress, e2.egress));
}

#[test]
fn ip_block_except_is_a_hole() {
    let c = demo();
    assert!(side(&c, "demo/web", Direction::Ingress, "10.1.3.4", 17, 53).0);
    assert!(!side(&c, "demo/web", Direction::Ingress, "10.1.2.4", 17, 53).0);
    assert!(!side(&c, "demo/web", Direction::Ingress, "10.2.0.1", 17, 53).0);
}

#[test]
fn ip_block_matches_pod_addresses_too() {
    let mut c = demo();
    let mut p = np("demo", "egress", sel(&[("app", "client")]));
    p.egress = Some(vec![rule(
        Some(vec![block("10.0.0.0/30", &["10.0.0.2/32"])]),
        None,
    )]);
    c.network_policies.insert("demo/egress".into(), p);
    assert!(side(&c, "demo/client", Direction::Egress, "10.0.0.1", 6, 80).0);
    assert!(!side(&c, "demo/client", Direction::Egress, "10.0.0.2", 6, 80).0);
    assert!(!side(&c, "demo/client", Direction::Egress, "10.0.0.4", 6, 80).0);
}

#[test]
fn rules_without_ports_match_icmp_and_rules_with_ports_do_not() {
    let c = demo();
    // ipBlock rule without ports: ICMP from 10.1.3.4 allowed.
    assert!(side(&c, "demo/web", Direction::Ingress, "10.1.3.4", 1, 0).0);
    // Port rule: ICMP from the client denied.
    assert!(!side(&c, "demo/web", Direction::Ingress, "10.0.0.2", 1, 0).0);
}

#[test]
fn named_ports_resolve_against_the_destination_pod() {
    let mut c = demo();
    let named = PortMatch::Named {
        protocol: Protocol::Tcp,
        name: "http".into(),
    };
    let web = c.pods.get_mut("demo/web").unwrap();
    web.ports.push(ContainerPort {
        name: Some("http".into()),
        port: 8080,
        protocol: Protocol::Tcp,
    });
    let mut ing = np("demo", "named-in", sel(&[("app", "web")]));
    ing.ingress = Some(vec![rule(None, Some(vec![named.clone()]))]);
    let mut eg = np("demo", "named-out", sel(&[("app", "client")]));
    eg.egress = Some(vec![rule(None, Some(vec![named]))]);
    c.network_policies.insert("demo/named-in".into(), ing);
    c.network_policies.insert("demo/named-out".into(), eg);
    // Ingress: against the endpoint's own ports.
    assert!(side(&c, "demo/web", Direction::Ingress, "10.9.9.9", 6, 8080).0);
    assert!(!side(&c, "demo/web", Direction::Ingress, "10.9.9.9", 6, 80).0);
    // Egress: against the peer pod's ports; nothing for non-pod peers.
    assert!(side(&c, "demo/client", Direction::Egress, "10.0.0.1", 6, 8080).0);
    assert!(!side(&c, "demo/client", Direction::Egress, "10.0.0.3", 6, 8080).0);
    assert!(!side(&c, "demo/client", Direction::Egress, "10.9.9.9", 6, 8080).0);
}

fn cp(name: &str, tier: Tier, priority: i32, subject: Subject) -> ClusterPolicy {
    ClusterPolicy {
        kind: ClusterPolicyKind::ClusterNetworkPolicy,
        name: name.into(),
        tier,
        priority,
        subject,
        ingress: Vec::new(),
        egress: Vec::new(),
    }
}

fn crule(action: Action, peers: Vec<ClusterPeer>, ports: Option<Vec<PortMatch>>) -> ClusterRule {
    ClusterRule {
        name: format!("{action:?}"),
        action,
        peers,
        ports,
    }
}

#[test]
fn admin_deny_beats_network_policy_and_pass_defers_to_it() {
    let mut c = demo();
    let mut admin = cp(
        "guard",
        Tier::Admin,
        1,
        Subject::Namespaces(LabelSelector::everything()),
    );
    admin.ingress = vec![
        crule(
            Action::Pass,
            vec![ClusterPeer::Networks(vec!["10.1.0.0/16".parse().unwrap()])],
            None,
        ),
        crule(
            Action::Deny,
            vec![ClusterPeer::Pods {
                namespaces: LabelSelector::everything(),
                pods: sel(&[("app", "client")]),
            }],
            Some(vec![tcp(80)]),
        ),
    ];
    c.cluster_policies
        .insert("ClusterNetworkPolicy/guard".into(), admin);
    let (ok, o) = side(&c, "demo/web", Direction::Ingress, "10.0.0.2", 6, 80);
    assert!(!ok);
    assert!(matches!(
        o,
        RuleOrigin::Cluster {
            action: Action::Deny,
            ..
        }
    ));
    // Pass: the NetworkPolicy ipBlock rule decides.
    assert!(side(&c, "demo/web", Direction::Ingress, "10.1.3.3", 6, 80).0);
    assert!(!side(&c, "demo/web", Direction::Ingress, "10.1.2.3", 6, 80).0);
}

#[test]
fn baseline_applies_only_where_no_network_policy_isolates() {
    let mut c = demo();
    let mut base = cp(
        "base",
        Tier::Baseline,
        1,
        Subject::Namespaces(LabelSelector::everything()),
    );
    base.ingress = vec![crule(
        Action::Deny,
        vec![ClusterPeer::Networks(vec!["0.0.0.0/0".parse().unwrap()])],
        None,
    )];
    c.cluster_policies
        .insert("ClusterNetworkPolicy/base".into(), base);
    // demo/client is not selected by any NP: baseline denies.
    assert!(!side(&c, "demo/client", Direction::Ingress, "10.9.9.9", 6, 80).0);
    // demo/web is isolated: NP decides, baseline never reached.
    assert!(side(&c, "demo/web", Direction::Ingress, "10.0.0.2", 6, 80).0);
    // IPv6 is not in 0.0.0.0/0: default allow.
    assert!(side(&c, "demo/client", Direction::Ingress, "fd00::9", 6, 80).0);
}

#[test]
fn nodes_peer_matches_node_addresses_and_host_network_pods_by_address() {
    let mut c = demo();
    c.nodes.insert(
        "n1".into(),
        Node {
            name: "n1".into(),
            labels: labels(&[("role", "worker")]),
            addresses: vec!["10.0.1.1".parse().unwrap()],
        },
    );
    let mut hp = pod("kube-system", "agent", &[("app", "client")], &["10.0.1.1"]);
    hp.host_network = true;
    c.pods.insert(hp.key(), hp);
    let mut admin = cp(
        "nodes",
        Tier::Admin,
        1,
        Subject::Namespaces(LabelSelector::everything()),
    );
    admin.egress = vec![crule(
        Action::Deny,
        vec![ClusterPeer::Nodes(sel(&[("role", "worker")]))],
        None,
    )];
    c.cluster_policies
        .insert("ClusterNetworkPolicy/nodes".into(), admin);
    assert!(!side(&c, "demo/client", Direction::Egress, "10.0.1.1", 6, 10250).0);
    assert!(side(&c, "demo/client", Direction::Egress, "10.0.1.2", 6, 10250).0);
    assert!(!compile(&c).endpoints.contains_key("kube-system/agent"));
}

#[test]
fn domain_names_match_nothing_offline() {
    let mut c = demo();
    let mut admin = cp(
        "dns",
        Tier::Admin,
        1,
        Subject::Namespaces(LabelSelector::everything()),
    );
    admin.egress = vec![crule(
        Action::Deny,
        vec![ClusterPeer::DomainNames(vec!["*.example.com".into()])],
        None,
    )];
    c.cluster_policies
        .insert("ClusterNetworkPolicy/dns".into(), admin);
    assert!(side(&c, "demo/client", Direction::Egress, "10.9.9.9", 6, 443).0);
}

#[test]
fn lookup_falls_back_to_identity_any_and_check_holds() {
    let compiled = compile(&demo());
    compiled.check().unwrap();
    let web = &compiled.endpoints["demo/web"];
    let t = &compiled.tables[&web.ingress];
    // Unrelated peers have no entries of their own.
    let other = compiled.lookup_identity("10.0.0.4".parse().unwrap());
    assert!(t.entries.iter().all(|e| e.peer != other));
    assert_eq!(
        compiled.lookup(web.ingress, other, 6, 80).action,
        TableAction::Deny
    );
}

#[test]
fn pod_label_change_moves_the_address_and_the_tables() {
    let mut comp = Compiler::new(demo());
    let mut p = comp.cluster().pods["demo/client2"].clone();
    p.labels = labels(&[("app", "web")]);
    let d = comp.upsert_pod(p);
    assert!(d.ops.iter().any(|o| matches!(o, Op::PutAddress(..))));
    assert!(d.ops.iter().any(|o| matches!(o, Op::PutEndpoint(..))));
    compare_with_oracle(comp.cluster(), comp.compiled()).unwrap();
    assert_eq!(comp.compiled().endpoints["demo/client2"].generation, 2);
}

#[test]
fn ipv6_ip_blocks_and_pods_are_compiled_like_ipv4() {
    let mut c = demo();
    let mut p = np("demo", "v6", sel(&[("app", "client")]));
    p.egress = Some(vec![rule(
        Some(vec![block("fd00::/64", &["fd00::1/128"])]),
        Some(vec![tcp(443)]),
    )]);
    c.network_policies.insert("demo/v6".into(), p);
    assert!(side(&c, "demo/client", Direction::Egress, "fd00::5", 6, 443).0);
    // fd00::1 is demo/web's address and an except hole.
    assert!(!side(&c, "demo/client", Direction::Egress, "fd00::1", 6, 443).0);
    assert!(!side(&c, "demo/client", Direction::Egress, "2001:db8::1", 6, 443).0);
    // 10.0.0.1 is the same pod's IPv4 address: not in the IPv6 block.
    assert!(!side(&c, "demo/client", Direction::Egress, "10.0.0.1", 6, 443).0);
}

#[test]
fn adjacent_port_ranges_with_equal_verdicts_are_merged() {
    let mut c = demo();
    let mut p = np("demo", "ranges", sel(&[("app", "client")]));
    let range = |port, end_port| PortMatch::Range {
        protocol: Protocol::Tcp,
        port,
        end_port,
    };
    p.ingress = Some(vec![rule(None, Some(vec![range(80, 90), range(91, 100)]))]);
    c.network_policies.insert("demo/ranges".into(), p);
    let compiled = compile(&c);
    let t = &compiled.tables[&compiled.endpoints["demo/client"].ingress];
    let tcp_runs: Vec<(u16, u16)> = t
        .entries
        .iter()
        .filter(|e| e.peer == crate::compiled::IDENTITY_ANY && e.proto == 6)
        .map(|e| (e.port_lo, e.port_hi))
        .collect();
    assert_eq!(tcp_runs, vec![(0, 79), (80, 100), (101, 65535)]);
    assert!(side(&c, "demo/client", Direction::Ingress, "10.9.9.9", 6, 95).0);
}

#[test]
fn icmp_is_looked_up_with_port_zero_whatever_the_port() {
    let compiled = compile(&demo());
    let web = &compiled.endpoints["demo/web"];
    let peer = compiled.lookup_identity("10.1.3.4".parse().unwrap());
    let a = compiled.lookup(web.ingress, peer, 1, 0);
    let b = compiled.lookup(web.ingress, peer, 1, 8);
    assert_eq!(a, b);
    assert_eq!(a.action, TableAction::Allow);
}

#[test]
fn check_rejects_a_table_with_a_gap() {
    let mut compiled = compile(&demo());
    let t = compiled.tables.values_mut().next().unwrap();
    let e = t.entries.iter_mut().find(|e| e.proto == 6).unwrap();
    e.port_hi = e.port_hi.saturating_sub(1).max(e.port_lo);
    if e.port_lo == e.port_hi {
        e.port_lo = 1;
    }
    assert!(compiled.check().is_err());
}

#[test]
fn namespace_relabel_moves_cluster_policy_subjects_and_peers() {
    let mut c = demo();
    let mut admin = cp(
        "team-x",
        Tier::Admin,
        1,
        Subject::Namespaces(sel(&[("team", "x")])),
    );
    admin.ingress = vec![crule(
        Action::Deny,
        vec![ClusterPeer::Namespaces(sel(&[("team", "x")]))],
        None,
    )];
    c.cluster_policies
        .insert("ClusterNetworkPolicy/team-x".into(), admin);
    let mut comp = Compiler::new(c);
    compare_with_oracle(comp.cluster(), comp.compiled()).unwrap();
    comp.upsert_namespace(ns("demo", &[("team", "x")]));
    compare_with_oracle(comp.cluster(), comp.compiled()).unwrap();
    let (ok, _) = compiled_side(
        comp.compiled(),
        "demo/client",
        Direction::Ingress,
        "10.0.0.4".parse().unwrap(),
        6,
        80,
    );
    assert!(
        !ok,
        "other/client (team x) is now denied towards demo (team x)"
    );
}

// ---------------------------------------------------------------------------------------
// Property tests.
// ---------------------------------------------------------------------------------------

const KEYS: [&str; 2] = ["app", "tier"];
const VALUES: [&str; 2] = ["a", "b"];
const NAMESPACES: [&str; 3] = ["ns0", "ns1", "ns2"];

fn arb_labels_n(n: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Labels> {
    proptest::collection::btree_map(
        prop::sample::select(&KEYS[..]).prop_map(String::from),
        prop::sample::select(&VALUES[..]).prop_map(String::from),
        n,
    )
}

fn arb_labels() -> impl Strategy<Value = Labels> {
    arb_labels_n(0..=2)
}

fn arb_selector() -> impl Strategy<Value = LabelSelector> {
    let req = prop_oneof![
        (
            prop::sample::select(&KEYS[..]),
            prop::sample::subsequence(&VALUES[..], 1..=2)
        )
            .prop_map(|(k, v)| Requirement::In(
                k.into(),
                v.iter().map(|s| s.to_string()).collect()
            )),
        (
            prop::sample::select(&KEYS[..]),
            prop::sample::subsequence(&VALUES[..], 1..=2)
        )
            .prop_map(|(k, v)| Requirement::NotIn(
                k.into(),
                v.iter().map(|s| s.to_string()).collect()
            )),
        prop::sample::select(&KEYS[..]).prop_map(|k| Requirement::Exists(k.into())),
        prop::sample::select(&KEYS[..]).prop_map(|k| Requirement::DoesNotExist(k.into())),
    ];
    prop_oneof![
        3 => Just(LabelSelector::everything()),
        3 => arb_labels_n(1..=1).prop_map(|l| LabelSelector { match_labels: l, match_expressions: vec![] }),
        2 => proptest::collection::vec(req, 1..=1)
            .prop_map(|e| LabelSelector { match_labels: Labels::new(), match_expressions: e }),
    ]
}

const CIDRS: [&str; 8] = [
    "10.0.0.0/8",
    "10.0.0.0/24",
    "10.0.0.0/30",
    "0.0.0.0/0",
    "10.0.1.0/24",
    "fd00::/64",
    "fd00::/126",
    "::/0",
];
const EXCEPTS: [&str; 6] = [
    "10.0.0.2/32",
    "10.0.0.0/31",
    "10.0.0.128/25",
    "fd00::1/128",
    "fd00::/127",
    "169.254.169.254/32",
];

fn arb_ip_block() -> impl Strategy<Value = IpBlock> {
    (
        prop::sample::select(&CIDRS[..]),
        prop::sample::subsequence(&EXCEPTS[..], 0..=2),
    )
        .prop_map(|(c, ex)| {
            let cidr: IpNet = c.parse().unwrap();
            let except = ex
                .iter()
                .map(|e| e.parse::<IpNet>().unwrap())
                .filter(|e| cidr.contains(e) && *e != cidr)
                .collect();
            IpBlock { cidr, except }
        })
}

fn arb_protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![
        Just(Protocol::Tcp),
        Just(Protocol::Udp),
        Just(Protocol::Sctp)
    ]
}

fn arb_port_match() -> impl Strategy<Value = PortMatch> {
    prop_oneof![
        arb_protocol().prop_map(PortMatch::AllPorts),
        (
            prop_oneof![3 => Just(Protocol::Tcp), 1 => arb_protocol()],
            prop::sample::select(&[53u16, 80, 443, 8080][..]),
            0u16..3
        )
            .prop_map(|(protocol, port, w)| PortMatch::Range {
                protocol,
                port,
                end_port: port + w * 10
            }),
        (
            arb_protocol(),
            prop::sample::select(&["http", "dns", "metrics"][..])
        )
            .prop_map(|(protocol, n)| PortMatch::Named {
                protocol,
                name: n.into()
            }),
    ]
}

fn arb_ports() -> impl Strategy<Value = Option<Vec<PortMatch>>> {
    prop_oneof![
        1 => Just(None),
        1 => proptest::collection::vec(arb_port_match(), 1..=2).prop_map(Some),
    ]
}

fn arb_np_peer(ns: String) -> impl Strategy<Value = NetworkPolicyPeer> {
    prop_oneof![
        (arb_selector(), any::<bool>(), arb_selector()).prop_map(move |(nsel, named, pods)| {
            NetworkPolicyPeer::Pods {
                namespaces: if named {
                    NamespaceMatch::Named(ns.clone())
                } else {
                    NamespaceMatch::Selector(nsel)
                },
                pods,
            }
        }),
        arb_ip_block().prop_map(NetworkPolicyPeer::IpBlock),
    ]
}

fn arb_np_rules(ns: String) -> impl Strategy<Value = Option<Vec<NetworkPolicyRule>>> {
    let rule = (
        prop_oneof![
            1 => Just(None),
            3 => proptest::collection::vec(arb_np_peer(ns), 1..=2).prop_map(Some),
        ],
        arb_ports(),
    )
        .prop_map(|(peers, ports)| NetworkPolicyRule { peers, ports });
    prop_oneof![
        1 => Just(None),
        3 => proptest::collection::vec(rule, 0..=2).prop_map(Some),
    ]
}

fn arb_network_policy() -> impl Strategy<Value = NetworkPolicy> {
    (
        prop::sample::select(&NAMESPACES[..]),
        0..3usize,
        arb_selector(),
    )
        .prop_flat_map(|(ns, i, pod_selector)| {
            (arb_np_rules(ns.into()), arb_np_rules(ns.into())).prop_map(move |(ingress, egress)| {
                NetworkPolicy {
                    namespace: ns.into(),
                    name: format!("np{i}"),
                    pod_selector: pod_selector.clone(),
                    ingress,
                    egress,
                }
            })
        })
}

fn arb_cluster_peer() -> impl Strategy<Value = ClusterPeer> {
    prop_oneof![
        arb_selector().prop_map(ClusterPeer::Namespaces),
        (arb_selector(), arb_selector())
            .prop_map(|(namespaces, pods)| ClusterPeer::Pods { namespaces, pods }),
        arb_selector().prop_map(ClusterPeer::Nodes),
        prop::sample::subsequence(&CIDRS[..], 1..=2)
            .prop_map(|v| ClusterPeer::Networks(v.iter().map(|c| c.parse().unwrap()).collect())),
        Just(ClusterPeer::DomainNames(vec!["example.com".into()])),
    ]
}

fn arb_cluster_rules(tier: Tier) -> impl Strategy<Value = Vec<ClusterRule>> {
    let action = match tier {
        Tier::Admin => {
            prop_oneof![Just(Action::Accept), Just(Action::Deny), Just(Action::Pass)].boxed()
        }
        Tier::Baseline => prop_oneof![Just(Action::Accept), Just(Action::Deny)].boxed(),
    };
    let rule = (
        action,
        proptest::collection::vec(arb_cluster_peer(), 1..=2),
        arb_ports(),
    )
        .prop_map(|(action, peers, ports)| ClusterRule {
            name: format!("{action:?}"),
            action,
            peers,
            ports,
        });
    proptest::collection::vec(rule, 0..=3)
}

fn arb_cluster_policy() -> impl Strategy<Value = ClusterPolicy> {
    (
        prop_oneof![Just(Tier::Admin), Just(Tier::Baseline)],
        0..3usize,
        0..2i32,
        prop_oneof![
            2 => Just(Subject::Namespaces(LabelSelector::everything())),
            1 => arb_selector().prop_map(Subject::Namespaces),
            2 => (arb_selector(), arb_selector())
                .prop_map(|(namespaces, pods)| Subject::Pods { namespaces, pods }),
        ],
    )
        .prop_flat_map(|(tier, i, priority, subject)| {
            (arb_cluster_rules(tier), arb_cluster_rules(tier)).prop_map(move |(ingress, egress)| {
                ClusterPolicy {
                    kind: ClusterPolicyKind::ClusterNetworkPolicy,
                    name: format!("cp{i}"),
                    tier,
                    priority,
                    subject: subject.clone(),
                    ingress,
                    egress,
                }
            })
        })
}

fn arb_container_ports() -> impl Strategy<Value = Vec<ContainerPort>> {
    let all = vec![
        ContainerPort {
            name: Some("http".into()),
            port: 80,
            protocol: Protocol::Tcp,
        },
        ContainerPort {
            name: Some("http".into()),
            port: 8080,
            protocol: Protocol::Tcp,
        },
        ContainerPort {
            name: Some("dns".into()),
            port: 53,
            protocol: Protocol::Udp,
        },
        ContainerPort {
            name: Some("metrics".into()),
            port: 9090,
            protocol: Protocol::Tcp,
        },
        ContainerPort {
            name: None,
            port: 443,
            protocol: Protocol::Tcp,
        },
    ];
    prop::sample::subsequence(all, 0..=2)
}

/// Pod `i`: a fixed address pair so that pods of two random clusters can share them.
fn arb_pod(i: usize) -> impl Strategy<Value = Pod> {
    (
        prop::sample::select(&NAMESPACES[..]),
        arb_labels(),
        arb_container_ports(),
        prop_oneof![1 => Just(0u8), 2 => Just(1u8), 1 => Just(2u8), 3 => Just(3u8)],
        prop::bool::weighted(0.1),
        prop::sample::select(&super::calico_tests::SERVICE_ACCOUNTS[..]),
    )
        .prop_map(move |(ns, labels, ports, fam, host, sa)| {
            let v4: IpAddr = format!("10.0.0.{}", i + 1).parse().unwrap();
            let v6: IpAddr = format!("fd00::{}", i + 1).parse().unwrap();
            let ips = match fam {
                0 => vec![],
                1 => vec![v4],
                2 => vec![v6],
                _ => vec![v4, v6],
            };
            Pod {
                namespace: ns.into(),
                name: format!("p{i}"),
                labels,
                ports,
                ips,
                host_network: host,
                node_name: None,
                service_account: sa.into(),
            }
        })
}

pub(crate) fn arb_cluster() -> impl Strategy<Value = Cluster> {
    let nss = proptest::collection::vec((any::<bool>(), arb_labels()), 3);
    let pods = (0..6usize).map(arb_pod).collect::<Vec<_>>();
    let nodes = proptest::collection::vec((any::<bool>(), prop::sample::select(&VALUES[..])), 2);
    (
        nss,
        pods,
        prop::sample::subsequence((0..6usize).collect::<Vec<_>>(), 2..=6),
        nodes,
        proptest::collection::vec(arb_network_policy(), 0..=4),
        proptest::collection::vec(arb_cluster_policy(), 0..=4),
        (
            proptest::collection::vec(super::calico_tests::arb_calico_policy(), 0..=3),
            super::calico_tests::arb_network_sets(),
            prop::option::weighted(
                0.5,
                super::calico_tests::arb_service(
                    ["10.0.0.1", "10.0.0.4", "fd00::2", "192.168.1.1"]
                        .iter()
                        .map(|a| a.parse().unwrap())
                        .collect(),
                ),
            ),
            super::calico_tests::arb_service_accounts(),
        ),
    )
        .prop_map(
            |(nss, pods, keep, nodes, nps, cps, (calico, sets, svc, sas))| {
                let mut c = Cluster::default();
                for (i, (declared, mut l)) in nss.into_iter().enumerate() {
                    if declared {
                        let name = NAMESPACES[i].to_string();
                        l.insert(NAMESPACE_NAME_LABEL.into(), name.clone());
                        c.namespaces
                            .insert(name.clone(), Namespace { name, labels: l });
                    }
                }
                for (i, p) in pods.into_iter().enumerate() {
                    if keep.contains(&i) {
                        c.pods.insert(p.key(), p);
                    }
                }
                for (i, (present, v)) in nodes.into_iter().enumerate() {
                    if present {
                        let name = format!("node{i}");
                        // node0 shares its address with pod 1's slot (a host-network pod or,
                        // when pod 1 is a normal pod, an overlap).
                        let addr = if i == 0 { "10.0.0.2" } else { "10.0.1.7" };
                        c.nodes.insert(
                            name.clone(),
                            Node {
                                name,
                                labels: labels(&[("app", v)]),
                                addresses: vec![addr.parse().unwrap()],
                            },
                        );
                    }
                }
                for p in nps {
                    c.network_policies
                        .insert(format!("{}/{}", p.namespace, p.name), p);
                }
                for p in cps {
                    c.cluster_policies
                        .insert(format!("{}/{}", p.kind.as_str(), p.name), p);
                }
                super::calico_tests::add_to(&mut c, calico, sets, svc, sas);
                c
            },
        )
}

/// Applies one op to `state`, checking that it is safe: nothing is pointed at before it
/// exists, tables in use change only for peers no address maps to, and the snapshot
/// satisfies its invariants afterwards.
pub(super) fn apply_checked(state: &mut Compiled, op: &Op) -> Result<(), String> {
    let mapped = |s: &Compiled, id| s.addresses.values().any(|v| *v == id);
    match op {
        Op::PutTable(id, _) if state.tables.contains_key(id) => {
            return Err(format!("table {id} overwritten"));
        }
        Op::AddPeerEntries(t, es) => {
            let peer = es.first().map(|e| e.peer).unwrap_or_default();
            if mapped(state, peer) {
                return Err(format!(
                    "entries added to table {t} for mapped identity {peer}"
                ));
            }
            if state.tables[t].entries.iter().any(|e| e.peer == peer) {
                return Err(format!("entries of {peer} in table {t} replaced"));
            }
        }
        Op::RemovePeerEntries(t, peer) if mapped(state, *peer) => {
            return Err(format!(
                "entries removed from table {t} for mapped identity {peer}"
            ));
        }
        Op::RemoveTable(t)
            if state
                .endpoints
                .values()
                .any(|e| e.ingress == *t || e.egress == *t) =>
        {
            return Err(format!("table {t} removed while in use"));
        }
        Op::RemoveIdentity(id) if mapped(state, *id) => {
            return Err(format!("identity {id} removed while mapped"));
        }
        _ => {}
    }
    state.apply_op(op);
    state.check().map_err(|e| format!("after {op:?}: {e}"))
}

proptest! {
    // 128 cases by default; `PROPTEST_CASES=N` for a longer soak.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(128),
        ..ProptestConfig::default()
    })]

    #[test]
    fn compiled_lookups_equal_the_oracle(c in arb_cluster()) {
        let compiled = compile(&c);
        prop_assert_eq!(compare_with_oracle(&c, &compiled), Ok(()));
    }

    #[test]
    fn deltas_of_random_changes_reproduce_a_full_compile(
        from in arb_cluster(),
        to in arb_cluster(),
        order in proptest::collection::vec(any::<u32>(), 64),
    ) {
        let mut comp = Compiler::new(from.clone());
        let mut replay = compile(&from);
        let mut changes: Vec<(u32, Change)> = changes_between(&from, &to)
            .into_iter()
            .enumerate()
            .map(|(i, ch)| (order[i % order.len()].wrapping_add(i as u32), ch))
            .collect();
        changes.sort_by_key(|(k, _)| *k);
        for (_, ch) in changes {
            let delta = comp.apply(ch.clone());
            for op in &delta.ops {
                if let Err(e) = apply_checked(&mut replay, op) {
                    return Err(TestCaseError::fail(format!("{ch:?}: {e}")));
                }
            }
            prop_assert_eq!(&replay, comp.compiled());
        }
        prop_assert_eq!(comp.cluster(), &to);
        prop_assert_eq!(compare_with_oracle(&to, comp.compiled()), Ok(()));
        prop_assert_eq!(compare_with_oracle(&to, &compile(&to)), Ok(()));
        // A resync drops leftovers (stale prefixes, unused matchers) safely.
        for op in &comp.resync().ops {
            if let Err(e) = apply_checked(&mut replay, op) {
                return Err(TestCaseError::fail(format!("resync: {e}")));
            }
        }
        prop_assert_eq!(&replay, comp.compiled());
        prop_assert_eq!(compare_with_oracle(&to, comp.compiled()), Ok(()));
    }
}
