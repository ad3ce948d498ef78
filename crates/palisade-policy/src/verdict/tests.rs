//! Table-driven semantics tests: cluster + flow → expected verdict and reason.
//!
//! Worlds are built from model values directly (the manifest parser is tested on its
//! own). The default world mirrors the Kubernetes e2e NetworkPolicy suite's model
//! (kubernetes/kubernetes: test/e2e/network/netpol/model.go): namespaces `x`, `y`, `z`
//! labelled `ns=<name>`, pods `a`, `b`, `c` labelled `pod=<name>`, serving ports 80 and
//! 81 over TCP, UDP and SCTP under names like `serve-80-tcp`. Cases taken from that
//! suite (test/e2e/network/netpol/network_policy.go) or from the network-policy-api
//! conformance suite (kubernetes-sigs/network-policy-api: conformance/tests) say so.

use std::net::IpAddr;

use ipnet::IpNet;

use super::*;
use crate::model::*;
use crate::selector::{LabelSelector, Labels, Requirement};

// ---------------------------------------------------------------------------------
// Builders

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn sel(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector::from_labels(pairs.iter().copied())
}

fn all() -> LabelSelector {
    LabelSelector::everything()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

#[derive(Clone)]
struct World(Cluster);

impl World {
    fn empty() -> Self {
        World(Cluster::default())
    }

    fn ns(mut self, name: &str, extra: &[(&str, &str)]) -> Self {
        let mut l = labels(extra);
        l.insert(NAMESPACE_NAME_LABEL.into(), name.into());
        self.0.namespaces.insert(
            name.into(),
            Namespace {
                name: name.into(),
                labels: l,
            },
        );
        self
    }

    fn pod_full(
        mut self,
        key: &str,
        l: &[(&str, &str)],
        ips: &[&str],
        ports: &[(&str, u16, Protocol)],
        host_network: bool,
    ) -> Self {
        let (ns, name) = key.split_once('/').unwrap();
        self.0.pods.insert(
            key.into(),
            Pod {
                namespace: ns.into(),
                name: name.into(),
                labels: labels(l),
                ports: ports
                    .iter()
                    .map(|(n, p, proto)| ContainerPort {
                        name: Some(n.to_string()),
                        port: *p,
                        protocol: *proto,
                    })
                    .collect(),
                ips: ips.iter().map(|s| ip(s)).collect(),
                host_network,
                node_name: Some("node-1".into()),
                service_account: "default".into(),
            },
        );
        self
    }

    fn pod(self, key: &str, l: &[(&str, &str)], ips: &[&str]) -> Self {
        self.pod_full(key, l, ips, &[], false)
    }

    fn node(mut self, name: &str, l: &[(&str, &str)], addrs: &[&str]) -> Self {
        self.0.nodes.insert(
            name.into(),
            Node {
                name: name.into(),
                labels: labels(l),
                addresses: addrs.iter().map(|s| ip(s)).collect(),
            },
        );
        self
    }

    fn np(mut self, np: Np) -> Self {
        let np = np.0;
        self.0
            .network_policies
            .insert(format!("{}/{}", np.namespace, np.name), np);
        self
    }

    fn cp(mut self, cp: Cp) -> Self {
        let cp = cp.0;
        self.0
            .cluster_policies
            .insert(format!("{}/{}", cp.kind.as_str(), cp.name), cp);
        self
    }

    fn without_np(mut self, key: &str) -> Self {
        assert!(self.0.network_policies.remove(key).is_some(), "{key}");
        self
    }
}

/// The e2e suite's model: x, y, z × a, b, c; plus a node and a host-network pod.
/// Pod `x/c` serves its named ports on 8080/8081, so named ports resolve differently
/// per pod.
fn e2e() -> World {
    let mut w = World::empty();
    for (n, ns) in ["x", "y", "z"].iter().enumerate() {
        w = w.ns(ns, &[("ns", ns)]);
        for (m, pod) in ["a", "b", "c"].iter().enumerate() {
            let (n, m) = (n + 1, m + 1);
            let base = if (*ns, *pod) == ("x", "c") { 8000 } else { 0 };
            let mut ports = Vec::new();
            for proto in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
                for p in [80u16, 81] {
                    let name = format!("serve-{p}-{}", proto.as_str().to_lowercase());
                    ports.push((name, base + p, proto));
                }
            }
            let ports: Vec<(&str, u16, Protocol)> = ports
                .iter()
                .map(|(n, p, pr)| (n.as_str(), *p, *pr))
                .collect();
            w = w.pod_full(
                &format!("{ns}/{pod}"),
                &[("pod", pod)],
                &[&format!("10.0.{n}.{m}"), &format!("fd00::{n}:{m}")],
                &ports,
                false,
            );
        }
    }
    w.ns("kube-system", &[])
        .node(
            "node-1",
            &[("role", "worker"), ("kubernetes.io/hostname", "node-1")],
            &["192.168.0.10"],
        )
        .pod_full(
            "kube-system/hostnet",
            &[("app", "hostnet")],
            &["192.168.0.10"],
            &[],
            true,
        )
}

/// NetworkPolicy builder.
struct Np(NetworkPolicy);

fn np(key: &str, pod_selector: LabelSelector) -> Np {
    let (ns, name) = key.split_once('/').unwrap();
    Np(NetworkPolicy {
        namespace: ns.into(),
        name: name.into(),
        pod_selector,
        ingress: None,
        egress: None,
    })
}

impl Np {
    fn ingress(mut self, rules: Vec<NetworkPolicyRule>) -> Self {
        self.0.ingress = Some(rules);
        self
    }
    fn egress(mut self, rules: Vec<NetworkPolicyRule>) -> Self {
        self.0.egress = Some(rules);
        self
    }
}

fn rule(peers: Option<Vec<NetworkPolicyPeer>>, ports: Option<Vec<PortMatch>>) -> NetworkPolicyRule {
    NetworkPolicyRule { peers, ports }
}

/// A rule with `from`/`to` and no `ports`.
fn peers(p: Vec<NetworkPolicyPeer>) -> NetworkPolicyRule {
    rule(Some(p), None)
}

/// A rule with `ports` and no `from`/`to`.
fn ports(p: Vec<PortMatch>) -> NetworkPolicyRule {
    rule(None, Some(p))
}

/// `{}`: a rule with neither, matching everything.
fn any() -> NetworkPolicyRule {
    rule(None, None)
}

/// A peer with `podSelector` only: pods of the policy's own namespace.
fn pods_here(ns: &str, l: &[(&str, &str)]) -> NetworkPolicyPeer {
    NetworkPolicyPeer::Pods {
        namespaces: NamespaceMatch::Named(ns.into()),
        pods: sel(l),
    }
}

/// A peer with `namespaceSelector` (and a `podSelector`, `{}` if omitted).
fn pods_in(ns: &[(&str, &str)], l: &[(&str, &str)]) -> NetworkPolicyPeer {
    NetworkPolicyPeer::Pods {
        namespaces: NamespaceMatch::Selector(sel(ns)),
        pods: sel(l),
    }
}

fn block(cidr: &str, except: &[&str]) -> NetworkPolicyPeer {
    NetworkPolicyPeer::IpBlock(IpBlock {
        cidr: net(cidr),
        except: except.iter().map(|s| net(s)).collect(),
    })
}

fn tcp(p: u16) -> PortMatch {
    PortMatch::Range {
        protocol: Protocol::Tcp,
        port: p,
        end_port: p,
    }
}

fn udp(p: u16) -> PortMatch {
    PortMatch::Range {
        protocol: Protocol::Udp,
        port: p,
        end_port: p,
    }
}

fn sctp(p: u16) -> PortMatch {
    PortMatch::Range {
        protocol: Protocol::Sctp,
        port: p,
        end_port: p,
    }
}

fn tcp_range(lo: u16, hi: u16) -> PortMatch {
    PortMatch::Range {
        protocol: Protocol::Tcp,
        port: lo,
        end_port: hi,
    }
}

fn named(name: &str, protocol: Protocol) -> PortMatch {
    PortMatch::Named {
        protocol,
        name: name.into(),
    }
}

/// Cluster policy builder.
struct Cp(ClusterPolicy);

fn cnp(name: &str, tier: Tier, priority: i32, subject: Subject) -> Cp {
    Cp(ClusterPolicy {
        kind: ClusterPolicyKind::ClusterNetworkPolicy,
        name: name.into(),
        tier,
        priority,
        subject,
        ingress: Vec::new(),
        egress: Vec::new(),
    })
}

impl Cp {
    fn kind(mut self, kind: ClusterPolicyKind) -> Self {
        self.0.kind = kind;
        self
    }
    fn ingress(mut self, r: ClusterRule) -> Self {
        self.0.ingress.push(r);
        self
    }
    fn egress(mut self, r: ClusterRule) -> Self {
        self.0.egress.push(r);
        self
    }
}

fn crule(name: &str, action: Action, peers: Vec<ClusterPeer>) -> ClusterRule {
    ClusterRule {
        name: name.into(),
        action,
        peers,
        ports: None,
    }
}

fn crule_ports(
    name: &str,
    action: Action,
    peers: Vec<ClusterPeer>,
    p: Vec<PortMatch>,
) -> ClusterRule {
    ClusterRule {
        ports: Some(p),
        ..crule(name, action, peers)
    }
}

fn ns_subject(l: &[(&str, &str)]) -> Subject {
    Subject::Namespaces(sel(l))
}

fn ns_peer(l: &[(&str, &str)]) -> ClusterPeer {
    ClusterPeer::Namespaces(sel(l))
}

/// A flow; each side is `ns/name` or an address.
fn flow(src: &str, dst: &str, protocol: u8, port: u16) -> Flow {
    Flow::new(src.parse().unwrap(), dst.parse().unwrap(), protocol, port)
}

fn tcp_to(src: &str, dst: &str, port: u16) -> Flow {
    flow(src, dst, 6, port)
}

const UDP: u8 = 17;
const SCTP: u8 = 132;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;
const GRE: u8 = 47;

// ---------------------------------------------------------------------------------
// The table

struct Case {
    /// The rule under test, as a sentence.
    name: &'static str,
    world: World,
    flow: Flow,
    allowed: bool,
    /// Must occur in `describe` of the egress or ingress origin.
    why: &'static str,
}

fn case(name: &'static str, world: &World, flow: Flow, allowed: bool, why: &'static str) -> Case {
    Case {
        name,
        world: world.clone(),
        flow,
        allowed,
        why,
    }
}

fn isolation_cases() -> Vec<Case> {
    let w = e2e();
    let deny_in = e2e().np(np("x/deny-ingress", all()).ingress(vec![]));
    let deny_in_a = e2e().np(np("x/deny-ingress", sel(&[("pod", "a")])).ingress(vec![]));
    let egress_only = e2e().np(np("x/deny-egress", all()).egress(vec![]));
    let deny_in_y = e2e().np(np("y/deny-ingress", all()).ingress(vec![]));
    vec![
        case("with no policies every pod reaches every pod", &w, tcp_to("x/a", "y/b", 80), true,
            "allowed: no policy isolates or decides egress"),
        case("with no policies an outside address reaches a pod", &w, tcp_to("8.8.8.8", "x/a", 80), true,
            "allowed: no policy isolates or decides ingress"),
        // e2e: "should support a 'default-deny-ingress' policy"
        case("an empty ingress list isolates every selected pod for ingress", &deny_in,
            tcp_to("y/a", "x/a", 80), false, "denied: isolated for ingress by policies x/deny-ingress"),
        case("isolation for ingress also denies pods of the same namespace", &deny_in,
            tcp_to("x/b", "x/a", 80), false, "isolated for ingress"),
        case("isolation for ingress leaves the pod's egress open", &deny_in,
            tcp_to("x/a", "y/a", 80), true, "no policy isolates or decides egress"),
        case("a pod the podSelector does not select stays default-allow", &deny_in_a,
            tcp_to("y/a", "x/b", 80), true, "no policy isolates or decides ingress"),
        case("policyTypes Egress only leaves ingress open", &egress_only,
            tcp_to("y/a", "x/a", 80), true, "no policy isolates or decides ingress"),
        case("policyTypes Egress only isolates egress", &egress_only,
            tcp_to("x/a", "y/a", 80), false, "isolated for egress by policies x/deny-egress"),
        // e2e: "should support denying of egress traffic on the client side (even if the
        // server explicitly allows this traffic)"
        case("a connection needs both the source's egress and the destination's ingress",
            &egress_only.clone().np(np("y/allow-x", all()).ingress(vec![peers(vec![pods_in(&[("ns", "x")], &[])])])),
            tcp_to("x/a", "y/b", 80), false, "isolated for egress"),
        case("egress isolation does not block traffic to an outside address's ingress (there is none)",
            &w.clone().np(np("x/allow-out", all()).egress(vec![peers(vec![block("0.0.0.0/0", &[])])])),
            tcp_to("x/a", "8.8.8.8", 443), true, "allowed by NetworkPolicy x/allow-out egress rule 0"),
        case("a policy in another namespace does not isolate the pod", &deny_in_y,
            tcp_to("y/a", "x/a", 80), true, "no policy isolates or decides ingress"),
        // e2e: "should enforce multiple ingress policies with ingress allow-all policy
        // taking precedence"
        case("policies are unioned: an allow-all policy opens a pod another policy isolates",
            &deny_in.clone().np(np("x/allow-all", all()).ingress(vec![any()])),
            tcp_to("y/a", "x/a", 80), true, "allowed by NetworkPolicy x/allow-all ingress rule 0"),
        case("the origin is the first matching rule in policy-name order, then rule order",
            &w.clone()
                .np(np("x/b-second", all()).ingress(vec![any()]))
                .np(np("x/a-first", all()).ingress(vec![peers(vec![pods_here("x", &[("pod", "nobody")])]), any()])),
            tcp_to("y/a", "x/a", 80), true, "allowed by NetworkPolicy x/a-first ingress rule 1"),
        case("the denial lists every isolating policy",
            &deny_in.clone().np(np("x/web", sel(&[("pod", "a")])).ingress(vec![ports(vec![tcp(81)])])),
            tcp_to("y/a", "x/a", 80), false, "isolated for ingress by policies x/deny-ingress, x/web"),
        // e2e: "should enforce multiple, stacked policies with overlapping podSelectors"
        case("stacked policies with overlapping podSelectors union their ports (first port)",
            &w.clone()
                .np(np("x/allow-80", all()).ingress(vec![ports(vec![tcp(80)])]))
                .np(np("x/allow-81-to-a", sel(&[("pod", "a")])).ingress(vec![ports(vec![tcp(81)])])),
            tcp_to("y/a", "x/a", 80), true, "x/allow-80 ingress rule 0"),
        case("stacked policies with overlapping podSelectors union their ports (second port)",
            &w.clone()
                .np(np("x/allow-80", all()).ingress(vec![ports(vec![tcp(80)])]))
                .np(np("x/allow-81-to-a", sel(&[("pod", "a")])).ingress(vec![ports(vec![tcp(81)])])),
            tcp_to("y/a", "x/a", 81), true, "x/allow-81-to-a ingress rule 0"),
        case("stacked policies do not open a pod only one of them selects beyond its own ports",
            &w.clone()
                .np(np("x/allow-80", all()).ingress(vec![ports(vec![tcp(80)])]))
                .np(np("x/allow-81-to-a", sel(&[("pod", "a")])).ingress(vec![ports(vec![tcp(81)])])),
            tcp_to("y/a", "x/b", 81), false, "isolated for ingress by policies x/allow-80"),
        // e2e: "should enforce policies to check ingress and egress policies can be
        // controlled independently based on PodSelector"
        case("ingress stays open while the same pod's egress is denied",
            &w.clone().np(np("x/deny-egress-a", sel(&[("pod", "a")])).egress(vec![])),
            tcp_to("y/b", "x/a", 80), true, "no policy isolates or decides ingress"),
    ]
}

fn selector_cases() -> Vec<Case> {
    let w = e2e();
    let and = w.clone().np(np("x/and", sel(&[("pod", "a")]))
        .ingress(vec![peers(vec![pods_in(&[("ns", "y")], &[("pod", "b")])])]));
    let or = w
        .clone()
        .np(np("x/or", sel(&[("pod", "a")])).ingress(vec![peers(vec![
            pods_in(&[("ns", "y")], &[]),
            pods_here("x", &[("pod", "b")]),
        ])]));
    let any_ns = w.clone().np(np("x/any-ns-b", sel(&[("pod", "a")]))
        .ingress(vec![peers(vec![pods_in(&[], &[("pod", "b")])])]));
    let here = w.clone().np(np("x/here-b", sel(&[("pod", "a")]))
        .ingress(vec![peers(vec![pods_here("x", &[("pod", "b")])])]));
    let own_ns = w
        .clone()
        .np(np("x/own-ns", sel(&[("pod", "a")])).ingress(vec![peers(vec![pods_here("x", &[])])]));
    let expr = w
        .clone()
        .np(np("x/expr", sel(&[("pod", "a")])).ingress(vec![peers(vec![
            NetworkPolicyPeer::Pods {
                namespaces: NamespaceMatch::Selector(LabelSelector {
                    match_labels: Labels::new(),
                    match_expressions: vec![Requirement::In(
                        NAMESPACE_NAME_LABEL.into(),
                        vec!["y".into()],
                    )],
                }),
                pods: all(),
            },
        ])]));
    let undeclared = w
        .clone()
        .pod("w/a", &[("pod", "a")], &["10.0.9.1"])
        .np(np("x/from-w", all()).ingress(vec![peers(vec![pods_in(
            &[(NAMESPACE_NAME_LABEL, "w")],
            &[],
        )])]));
    vec![
        // e2e: "should enforce policy based on PodSelector and NamespaceSelector"
        case("namespaceSelector and podSelector in one peer are ANDed: both match", &and,
            tcp_to("y/b", "x/a", 80), true, "allowed by NetworkPolicy x/and ingress rule 0"),
        case("namespaceSelector and podSelector in one peer are ANDed: namespace only", &and,
            tcp_to("y/a", "x/a", 80), false, "isolated for ingress"),
        case("namespaceSelector and podSelector in one peer are ANDed: pod only", &and,
            tcp_to("x/b", "x/a", 80), false, "isolated for ingress"),
        // e2e: "should enforce policy based on PodSelector or NamespaceSelector"
        case("namespaceSelector and podSelector in two peers are ORed: namespace", &or,
            tcp_to("y/a", "x/a", 80), true, "x/or ingress rule 0"),
        case("namespaceSelector and podSelector in two peers are ORed: pod", &or,
            tcp_to("x/b", "x/a", 80), true, "x/or ingress rule 0"),
        case("namespaceSelector and podSelector in two peers are ORed: neither", &or,
            tcp_to("z/b", "x/a", 80), false, "isolated for ingress"),
        case("namespaceSelector {} with a podSelector matches that pod in every namespace", &any_ns,
            tcp_to("z/b", "x/a", 80), true, "x/any-ns-b ingress rule 0"),
        case("namespaceSelector {} with a podSelector excludes other pods", &any_ns,
            tcp_to("z/c", "x/a", 80), false, "isolated"),
        case("an absent namespaceSelector means the policy's own namespace", &here,
            tcp_to("y/b", "x/a", 80), false, "isolated"),
        case("an absent namespaceSelector matches the pod in the policy's namespace", &here,
            tcp_to("x/b", "x/a", 80), true, "x/here-b ingress rule 0"),
        // e2e: "should enforce policy to allow traffic from pods within server namespace
        // based on PodSelector"
        case("podSelector {} alone matches every pod of the policy's namespace", &own_ns,
            tcp_to("x/c", "x/a", 80), true, "x/own-ns ingress rule 0"),
        case("podSelector {} alone matches no pod of another namespace", &own_ns,
            tcp_to("y/c", "x/a", 80), false, "isolated"),
        case("a pod selector peer never matches an outside address", &own_ns,
            tcp_to("8.8.8.8", "x/a", 80), false, "isolated"),
        // e2e: "should enforce policy based on NamespaceSelector with MatchExpressions
        // using default ns label"
        case("namespaceSelector matchExpressions on kubernetes.io/metadata.name selects that namespace", &expr,
            tcp_to("y/c", "x/a", 80), true, "x/expr ingress rule 0"),
        case("namespaceSelector matchExpressions on kubernetes.io/metadata.name excludes others", &expr,
            tcp_to("z/c", "x/a", 80), false, "isolated"),
        case("an undeclared namespace still carries its kubernetes.io/metadata.name label", &undeclared,
            tcp_to("w/a", "x/b", 80), true, "x/from-w ingress rule 0"),
    ]
}

fn ip_block_cases() -> Vec<Case> {
    let w = e2e();
    let imds = w
        .clone()
        .np(np("x/no-imds", all()).egress(vec![peers(vec![block(
            "0.0.0.0/0",
            &["169.254.169.254/32"],
        )])]));
    let to_yb =
        w.clone().np(np("x/to-yb", sel(&[("pod", "a")]))
            .egress(vec![peers(vec![block("10.0.2.2/32", &[])])]));
    let except_yb = w.clone().np(np("x/except-yb", sel(&[("pod", "a")]))
        .egress(vec![peers(vec![block("10.0.0.0/16", &["10.0.2.2/32"])])]));
    let overlap = except_yb
        .clone()
        .np(np("x/exactly-yb", sel(&[("pod", "a")]))
            .egress(vec![peers(vec![block("10.0.2.2/32", &[])])]));
    let holes = w.clone().np(
        np("x/holes", sel(&[("pod", "a")])).egress(vec![peers(vec![block(
            "10.0.0.0/8",
            &["10.0.0.0/16", "10.0.2.0/24"],
        )])]),
    );
    let v6 =
        w.clone().np(np("x/v6", sel(&[("pod", "a")]))
            .egress(vec![peers(vec![block("::/0", &["fd00::/16"])])]));
    let hostnet_sel = w
        .clone()
        .np(np("x/pods-only", sel(&[("pod", "a")])).egress(vec![peers(vec![pods_in(&[], &[])])]));
    let hostnet_block = w.clone().np(np("x/node-net", sel(&[("pod", "a")]))
        .egress(vec![peers(vec![block("192.168.0.0/24", &[])])]));
    let to_pod_by_sel = w.clone().np(np("x/to-yb-sel", sel(&[("pod", "a")]))
        .egress(vec![peers(vec![pods_in(&[("ns", "y")], &[("pod", "b")])])]));
    vec![
        // seeds/003: the except that one release did not enforce.
        case(
            "ipBlock 0.0.0.0/0 except 169.254.169.254/32 denies the metadata address",
            &imds,
            tcp_to("x/a", "169.254.169.254", 80),
            false,
            "isolated for egress by policies x/no-imds",
        ),
        case(
            "ipBlock 0.0.0.0/0 except 169.254.169.254/32 allows the rest of the internet",
            &imds,
            tcp_to("x/a", "8.8.8.8", 443),
            true,
            "x/no-imds egress rule 0",
        ),
        case(
            "ipBlock 0.0.0.0/0 except 169.254.169.254/32 allows the address next to the hole",
            &imds,
            tcp_to("x/a", "169.254.169.253", 80),
            true,
            "x/no-imds egress rule 0",
        ),
        // e2e: "should allow egress access to server in CIDR block"
        case(
            "ipBlock matches a pod's address",
            &to_yb,
            tcp_to("x/a", "y/b", 80),
            true,
            "x/to-yb egress rule 0",
        ),
        case(
            "ipBlock of one pod's address does not match another pod",
            &to_yb,
            tcp_to("x/a", "y/c", 80),
            false,
            "isolated for egress",
        ),
        // e2e: "should enforce except clause while egress access to server in CIDR block"
        case(
            "ipBlock except excludes a pod inside the cidr",
            &except_yb,
            tcp_to("x/a", "y/b", 80),
            false,
            "isolated for egress",
        ),
        case(
            "ipBlock except leaves the rest of the cidr",
            &except_yb,
            tcp_to("x/a", "y/c", 80),
            true,
            "x/except-yb egress rule 0",
        ),
        // e2e: "should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed"
        case(
            "an address in one policy's except but another policy's cidr is allowed",
            &overlap,
            tcp_to("x/a", "y/b", 80),
            true,
            "x/exactly-yb egress rule 0",
        ),
        case(
            "overlapping excepts: an address in the inner hole is excluded",
            &holes,
            tcp_to("x/a", "10.0.2.2", 80),
            false,
            "isolated",
        ),
        case(
            "overlapping excepts: an address only in the outer hole is excluded",
            &holes,
            tcp_to("x/a", "10.0.5.5", 80),
            false,
            "isolated",
        ),
        case(
            "overlapping excepts: an address outside both holes is allowed",
            &holes,
            tcp_to("x/a", "10.1.0.1", 80),
            true,
            "x/holes egress rule 0",
        ),
        case(
            "an IPv4 ipBlock never matches an IPv6 address",
            &imds,
            tcp_to("x/a", "2001:db8::1", 443),
            false,
            "isolated for egress",
        ),
        case(
            "an IPv6 ipBlock matches an IPv6 address",
            &v6,
            tcp_to("x/a", "2001:db8::1", 443),
            true,
            "x/v6 egress rule 0",
        ),
        case(
            "an IPv6 except excludes a pod's IPv6 address",
            &v6,
            tcp_to("x/a", "fd00::2:2", 443),
            false,
            "isolated",
        ),
        case(
            "a pod named by name is seen at its address of the other side's family",
            &v6,
            tcp_to("fd00::1:1", "y/b", 443),
            false,
            "isolated",
        ),
        case(
            "two named pods are seen in the source's primary family (IPv4 here)",
            &v6,
            tcp_to("x/a", "8.8.8.8", 443),
            false,
            "isolated",
        ),
        case(
            "an address that belongs to a pod is that pod for pod selectors",
            &to_pod_by_sel,
            tcp_to("x/a", "10.0.2.2", 80),
            true,
            "x/to-yb-sel egress rule 0",
        ),
        case(
            "a pod's IPv6 address is that pod too",
            &to_pod_by_sel,
            tcp_to("fd00::1:1", "fd00::2:2", 80),
            true,
            "x/to-yb-sel egress rule 0",
        ),
        case(
            "a host-network pod's address is not matched by pod selectors",
            &hostnet_sel,
            tcp_to("x/a", "192.168.0.10", 10250),
            false,
            "isolated",
        ),
        case(
            "a host-network pod named by name is not matched by pod selectors",
            &hostnet_sel,
            tcp_to("x/a", "kube-system/hostnet", 10250),
            false,
            "isolated",
        ),
        case(
            "a host-network pod's address is matched by ipBlock",
            &hostnet_block,
            tcp_to("x/a", "kube-system/hostnet", 10250),
            true,
            "x/node-net egress rule 0",
        ),
    ]
}

fn port_cases() -> Vec<Case> {
    let w = e2e();
    let only_udp = w
        .clone()
        .np(np("x/udp-80", all()).ingress(vec![ports(vec![udp(80)])]));
    let only_sctp = w
        .clone()
        .np(np("x/sctp-80", all()).ingress(vec![ports(vec![sctp(80)])]));
    let range = w
        .clone()
        .np(np("x/range", all()).ingress(vec![ports(vec![tcp_range(80, 82)])]));
    let full_range = w
        .clone()
        .np(np("x/full", all()).ingress(vec![ports(vec![tcp_range(1, 65535)])]));
    let any_tcp = w
        .clone()
        .np(np("x/any-tcp", all()).ingress(vec![ports(vec![PortMatch::AllPorts(Protocol::Tcp)])]));
    let named_in =
        w.clone().np(np("x/named-81", all())
            .ingress(vec![ports(vec![named("serve-81-tcp", Protocol::Tcp)])]));
    let named_out = w.clone().np(np("x/named-out", sel(&[("pod", "a")]))
        .egress(vec![ports(vec![named("serve-80-tcp", Protocol::Tcp)])]));
    let named_udp =
        w.clone().np(np("x/named-udp", all())
            .ingress(vec![ports(vec![named("serve-80-tcp", Protocol::Udp)])]));
    let peer_and_port = w.clone().np(np("x/y-on-80", all()).ingress(vec![rule(
        Some(vec![pods_in(&[("ns", "y")], &[])]),
        Some(vec![tcp(80)]),
    )]));
    let portless = w
        .clone()
        .np(np("x/from-y", all()).ingress(vec![peers(vec![pods_in(&[("ns", "y")], &[])])]));
    let v6_portless = w
        .clone()
        .np(np("x/from-v6", all()).ingress(vec![peers(vec![block("fd00::/16", &[])])]));
    vec![
        // e2e: "should not allow access by TCP when a policy specifies only UDP"
        case(
            "a UDP port does not allow TCP on the same number",
            &only_udp,
            tcp_to("y/a", "x/a", 80),
            false,
            "isolated",
        ),
        case(
            "a UDP port allows UDP",
            &only_udp,
            flow("y/a", "x/a", UDP, 80),
            true,
            "x/udp-80 ingress rule 0",
        ),
        // e2e: "should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if
        // the plugin doesn't support SCTP"
        case(
            "an SCTP port does not allow TCP",
            &only_sctp,
            tcp_to("y/a", "x/a", 80),
            false,
            "isolated",
        ),
        case(
            "an SCTP port allows SCTP",
            &only_sctp,
            flow("y/a", "x/a", SCTP, 80),
            true,
            "x/sctp-80 ingress rule 0",
        ),
        case(
            "endPort: the port below the range is denied",
            &range,
            tcp_to("y/a", "x/a", 79),
            false,
            "isolated",
        ),
        case(
            "endPort: the first port of the range is allowed",
            &range,
            tcp_to("y/a", "x/a", 80),
            true,
            "x/range ingress rule 0",
        ),
        case(
            "endPort: the last port of the range is allowed",
            &range,
            tcp_to("y/a", "x/a", 82),
            true,
            "x/range ingress rule 0",
        ),
        case(
            "endPort: the port above the range is denied",
            &range,
            tcp_to("y/a", "x/a", 83),
            false,
            "isolated",
        ),
        case(
            "endPort: a range ending at 65535 includes 65535",
            &full_range,
            tcp_to("y/a", "x/a", 65535),
            true,
            "x/full ingress rule 0",
        ),
        // e2e: "should enforce ingress policy allowing any port traffic to a server on a
        // specific protocol"
        case(
            "a protocol without a port allows every port of that protocol",
            &any_tcp,
            tcp_to("y/a", "x/a", 31337),
            true,
            "x/any-tcp ingress rule 0",
        ),
        case(
            "a protocol without a port does not allow other protocols",
            &any_tcp,
            flow("y/a", "x/a", UDP, 53),
            false,
            "isolated",
        ),
        // e2e: "should allow ingress access on one named port"
        case(
            "an ingress named port resolves on the selected pod",
            &named_in,
            tcp_to("y/a", "x/a", 81),
            true,
            "x/named-81 ingress rule 0",
        ),
        case(
            "an ingress named port does not allow another port",
            &named_in,
            tcp_to("y/a", "x/a", 80),
            false,
            "isolated",
        ),
        case(
            "an ingress named port resolves per pod: x/c serves serve-81-tcp on 8081",
            &named_in,
            tcp_to("y/a", "x/c", 8081),
            true,
            "x/named-81 ingress rule 0",
        ),
        case(
            "an ingress named port resolves per pod: x/c does not serve it on 81",
            &named_in,
            tcp_to("y/a", "x/c", 81),
            false,
            "isolated",
        ),
        // e2e: "should allow egress access on one named port"
        case(
            "an egress named port resolves on the destination pod",
            &named_out,
            tcp_to("x/a", "y/b", 80),
            true,
            "x/named-out egress rule 0",
        ),
        case(
            "an egress named port does not allow another port",
            &named_out,
            tcp_to("x/a", "y/b", 81),
            false,
            "isolated for egress",
        ),
        case(
            "an egress named port resolves per destination: x/c serves serve-80-tcp on 8080",
            &named_out,
            tcp_to("x/a", "x/c", 8080),
            true,
            "x/named-out egress rule 0",
        ),
        case(
            "an egress named port resolves per destination: not on 80 at x/c",
            &named_out,
            tcp_to("x/a", "x/c", 80),
            false,
            "isolated for egress",
        ),
        case(
            "an egress named port matches nothing towards a non-pod address",
            &named_out,
            tcp_to("x/a", "8.8.8.8", 80),
            false,
            "isolated for egress",
        ),
        case(
            "a named port must match the container port's protocol too",
            &named_udp,
            flow("y/a", "x/a", UDP, 80),
            false,
            "isolated",
        ),
        case(
            "a rule's peers and ports must both match: right peer, wrong port",
            &peer_and_port,
            tcp_to("y/a", "x/a", 81),
            false,
            "isolated",
        ),
        case(
            "a rule's peers and ports must both match: wrong peer, right port",
            &peer_and_port,
            tcp_to("z/a", "x/a", 80),
            false,
            "isolated",
        ),
        case(
            "a rule without ports allows ICMP",
            &portless,
            flow("y/a", "x/a", ICMP, 0),
            true,
            "x/from-y ingress rule 0",
        ),
        case(
            "a rule with ports never allows ICMP",
            &peer_and_port,
            flow("y/a", "x/a", ICMP, 0),
            false,
            "isolated",
        ),
        case(
            "a rule without ports allows ICMPv6",
            &v6_portless,
            flow("fd00::2:1", "x/a", ICMPV6, 0),
            true,
            "x/from-v6 ingress rule 0",
        ),
        case(
            "a rule with ports never allows ICMPv6",
            &peer_and_port,
            flow("fd00::2:1", "x/a", ICMPV6, 0),
            false,
            "isolated",
        ),
        case(
            "a rule without ports allows any other protocol such as GRE",
            &portless,
            flow("y/a", "x/a", GRE, 0),
            true,
            "x/from-y ingress rule 0",
        ),
        case(
            "a rule with ports never allows other protocols such as GRE",
            &any_tcp,
            flow("y/a", "x/a", GRE, 0),
            false,
            "isolated",
        ),
    ]
}

/// The network-policy-api conformance integration scenario (kubernetes-sigs/
/// network-policy-api: conformance/tests/admin-network-policy-core-integration.go with
/// conformance/base/api_integration/core-anp-np-banp.yaml), with the ANP's rule actions
/// as parameters.
fn hogwarts(ingress: Action, egress: Action) -> World {
    let house = "conformance-house";
    World::empty()
        .ns("gryffindor", &[(house, "gryffindor")])
        .ns("slytherin", &[(house, "slytherin")])
        .pod(
            "gryffindor/harry-potter-0",
            &[(house, "gryffindor")],
            &["10.1.1.1"],
        )
        .pod(
            "slytherin/draco-malfoy-0",
            &[(house, "slytherin")],
            &["10.1.2.1"],
        )
        .cp(cnp(
            "pass-example",
            Tier::Admin,
            10,
            ns_subject(&[(house, "gryffindor")]),
        )
        .kind(ClusterPolicyKind::AdminNetworkPolicy)
        .ingress(crule(
            "pass-all-ingress-from-slytherin",
            ingress,
            vec![ns_peer(&[(house, "slytherin")])],
        ))
        .egress(crule(
            "pass-all-egress-to-slytherin",
            egress,
            vec![ns_peer(&[(house, "slytherin")])],
        )))
        .np(np(
            "gryffindor/allow-gress-from-to-slytherin-to-gryffindor",
            all(),
        )
        .ingress(vec![peers(vec![pods_in(&[(house, "slytherin")], &[])])])
        .egress(vec![peers(vec![pods_in(&[(house, "slytherin")], &[])])]))
        .cp(cnp(
            "default",
            Tier::Baseline,
            0,
            ns_subject(&[(house, "gryffindor")]),
        )
        .kind(ClusterPolicyKind::BaselineAdminNetworkPolicy)
        .ingress(crule(
            "deny-all-ingress-from-slytherin",
            Action::Deny,
            vec![ns_peer(&[(house, "slytherin")])],
        ))
        .egress(crule(
            "deny-all-egress-to-slytherin",
            Action::Deny,
            vec![ns_peer(&[(house, "slytherin")])],
        )))
}

fn tier_cases() -> Vec<Case> {
    let w = e2e();
    let np_allow_y = w
        .clone()
        .np(np("x/allow-y", all()).ingress(vec![peers(vec![pods_in(&[("ns", "y")], &[])])]));
    let np_deny = w.clone().np(np("x/deny-all", all()).ingress(vec![]));
    let admin = |name: &str, prio, action| {
        cnp(name, Tier::Admin, prio, ns_subject(&[("ns", "x")])).ingress(crule(
            "from-y",
            action,
            vec![ns_peer(&[("ns", "y")])],
        ))
    };
    let baseline = |name: &str, action| {
        cnp(name, Tier::Baseline, 0, ns_subject(&[("ns", "x")])).ingress(crule(
            "from-y",
            action,
            vec![ns_peer(&[("ns", "y")])],
        ))
    };
    let g = "gryffindor/harry-potter-0";
    let s = "slytherin/draco-malfoy-0";
    let np_key = "gryffindor/allow-gress-from-to-slytherin-to-gryffindor";
    let metadata = w.clone().cp(
        cnp("deny-metadata", Tier::Admin, 10, ns_subject(&[])).egress(crule(
            "deny-imds",
            Action::Deny,
            vec![ClusterPeer::Networks(vec![net("169.254.169.254/32")])],
        )),
    );
    let rule_order = w
        .clone()
        .cp(cnp("ordered", Tier::Admin, 10, ns_subject(&[("ns", "x")]))
            .ingress(crule(
                "deny-yb",
                Action::Deny,
                vec![ClusterPeer::Pods {
                    namespaces: sel(&[("ns", "y")]),
                    pods: sel(&[("pod", "b")]),
                }],
            ))
            .ingress(crule(
                "accept-y",
                Action::Accept,
                vec![ns_peer(&[("ns", "y")])],
            )));
    let nodes = w.clone().cp(
        cnp("no-nodes", Tier::Admin, 10, ns_subject(&[("ns", "x")])).egress(crule(
            "deny-workers",
            Action::Deny,
            vec![ClusterPeer::Nodes(sel(&[("role", "worker")]))],
        )),
    );
    let networks =
        w.clone().cp(
            cnp("no-y-net", Tier::Admin, 10, ns_subject(&[("ns", "x")])).egress(crule(
                "deny-y-net",
                Action::Deny,
                vec![ClusterPeer::Networks(vec![net("10.0.2.0/24")])],
            )),
        );
    let domains = w
        .clone()
        .cp(cnp("fqdn", Tier::Admin, 10, ns_subject(&[("ns", "x")]))
            .egress(crule(
                "allow-example",
                Action::Accept,
                vec![ClusterPeer::DomainNames(vec!["example.com".into()])],
            ))
            .egress(crule(
                "deny-rest",
                Action::Deny,
                vec![ClusterPeer::Networks(vec![net("0.0.0.0/0")])],
            )));
    let ported = w.clone().cp(
        cnp("deny-db", Tier::Admin, 10, ns_subject(&[("ns", "x")])).ingress(crule_ports(
            "deny-5432",
            Action::Deny,
            vec![ns_peer(&[])],
            vec![tcp(5432)],
        )),
    );
    vec![
        case("conformance: Admin Deny beats a NetworkPolicy allow on ingress", &hogwarts(Action::Deny, Action::Deny),
            tcp_to(s, g, 80), false,
            "denied by AdminNetworkPolicy pass-example (Admin tier) ingress rule 0 \"pass-all-ingress-from-slytherin\""),
        case("conformance: Admin Deny beats a NetworkPolicy allow on egress", &hogwarts(Action::Deny, Action::Deny),
            tcp_to(g, s, 8080), false,
            "denied by AdminNetworkPolicy pass-example (Admin tier) egress rule 0"),
        case("conformance: Admin Pass on ingress lets the NetworkPolicy allow decide", &hogwarts(Action::Pass, Action::Deny),
            tcp_to(s, g, 80), true,
            "allowed by NetworkPolicy gryffindor/allow-gress-from-to-slytherin-to-gryffindor ingress rule 0"),
        case("conformance: Admin Pass on egress lets the NetworkPolicy allow decide", &hogwarts(Action::Deny, Action::Pass),
            tcp_to(g, s, 80), true,
            "allowed by NetworkPolicy gryffindor/allow-gress-from-to-slytherin-to-gryffindor egress rule 0"),
        case("conformance: Admin Pass with no NetworkPolicy falls to the Baseline Deny (ingress)",
            &hogwarts(Action::Pass, Action::Pass).without_np(np_key), tcp_to(s, g, 80), false,
            "denied by BaselineAdminNetworkPolicy default (Baseline tier) ingress rule 0"),
        case("conformance: Admin Pass with no NetworkPolicy falls to the Baseline Deny (egress)",
            &hogwarts(Action::Pass, Action::Pass).without_np(np_key), tcp_to(g, s, 80), false,
            "denied by BaselineAdminNetworkPolicy default (Baseline tier) egress rule 0"),
        case("Baseline is not consulted while a NetworkPolicy isolates the pod",
            &hogwarts(Action::Pass, Action::Pass), tcp_to(s, g, 80), true,
            "allowed by NetworkPolicy"),
        case("Admin Accept beats a NetworkPolicy deny-all", &np_deny.clone().cp(admin("accept-y", 10, Action::Accept)),
            tcp_to("y/a", "x/a", 80), true, "allowed by ClusterNetworkPolicy accept-y (Admin tier) ingress rule 0 \"from-y\""),
        case("Admin Accept does not open peers its rule does not match", &np_deny.clone().cp(admin("accept-y", 10, Action::Accept)),
            tcp_to("z/a", "x/a", 80), false, "isolated for ingress by policies x/deny-all"),
        case("Admin Deny beats a NetworkPolicy allow", &np_allow_y.clone().cp(admin("deny-y", 10, Action::Deny)),
            tcp_to("y/a", "x/a", 80), false, "denied by ClusterNetworkPolicy deny-y (Admin tier) ingress rule 0"),
        // network-policy-api conformance: admin-network-policy-core-priority.go
        case("the lower priority number is evaluated first (Accept at 5 beats Deny at 10)",
            &w.clone().cp(admin("deny-y", 10, Action::Deny)).cp(admin("accept-y", 5, Action::Accept)),
            tcp_to("y/a", "x/a", 80), true, "allowed by ClusterNetworkPolicy accept-y"),
        case("the lower priority number is evaluated first (Deny at 5 beats Accept at 10)",
            &w.clone().cp(admin("deny-y", 5, Action::Deny)).cp(admin("accept-y", 10, Action::Accept)),
            tcp_to("y/a", "x/a", 80), false, "denied by ClusterNetworkPolicy deny-y"),
        case("equal priorities are ordered by name",
            &w.clone().cp(admin("b-deny", 10, Action::Deny)).cp(admin("a-accept", 10, Action::Accept)),
            tcp_to("y/a", "x/a", 80), true, "allowed by ClusterNetworkPolicy a-accept"),
        case("Pass skips later Admin policies, even a Deny",
            &w.clone().cp(admin("pass-y", 5, Action::Pass)).cp(admin("deny-y", 10, Action::Deny)),
            tcp_to("y/a", "x/a", 80), true, "allowed: no policy isolates or decides ingress"),
        case("Pass followed by a NetworkPolicy deny-all denies",
            &np_deny.clone().cp(admin("pass-y", 5, Action::Pass)),
            tcp_to("y/a", "x/a", 80), false, "isolated for ingress by policies x/deny-all"),
        case("Baseline Deny applies when no NetworkPolicy isolates the pod", &w.clone().cp(baseline("banp", Action::Deny)),
            tcp_to("y/a", "x/a", 80), false, "denied by ClusterNetworkPolicy banp (Baseline tier) ingress rule 0"),
        case("Baseline Deny does not override a NetworkPolicy allow", &np_allow_y.clone().cp(baseline("banp", Action::Deny)),
            tcp_to("y/a", "x/a", 80), true, "allowed by NetworkPolicy x/allow-y"),
        case("Baseline Accept does not override NetworkPolicy isolation", &np_deny.clone().cp(baseline("banp", Action::Accept)),
            tcp_to("y/a", "x/a", 80), false, "isolated for ingress"),
        case("Baseline Accept is final when nothing else decides", &w.clone().cp(baseline("banp", Action::Accept)),
            tcp_to("y/a", "x/a", 80), true, "allowed by ClusterNetworkPolicy banp (Baseline tier)"),
        case("rules of one cluster policy are evaluated in order: the earlier Deny wins", &rule_order,
            tcp_to("y/b", "x/a", 80), false, "denied by ClusterNetworkPolicy ordered (Admin tier) ingress rule 0 \"deny-yb\""),
        case("rules of one cluster policy are evaluated in order: a later Accept still applies", &rule_order,
            tcp_to("y/a", "x/a", 80), true, "allowed by ClusterNetworkPolicy ordered (Admin tier) ingress rule 1 \"accept-y\""),
        case("a cluster policy whose subject does not select the pod is not consulted", &rule_order,
            tcp_to("x/a", "y/b", 80), true, "allowed: no policy isolates or decides ingress"),
        case("cluster ingress rules apply only when the subject is the destination", &rule_order,
            tcp_to("x/b", "y/b", 80), true, "allowed: no policy isolates or decides egress"),
        case("seeds/002: a cluster policy denies the metadata service to every pod", &metadata,
            tcp_to("z/c", "169.254.169.254", 80), false,
            "denied by ClusterNetworkPolicy deny-metadata (Admin tier) egress rule 0 \"deny-imds\""),
        case("seeds/002: everything else stays allowed", &metadata,
            tcp_to("z/c", "8.8.8.8", 443), true, "allowed: no policy isolates or decides egress"),
        case("a nodes peer matches a node's address", &nodes,
            tcp_to("x/a", "192.168.0.10", 10250), false, "denied by ClusterNetworkPolicy no-nodes"),
        case("a nodes peer does not match other addresses", &nodes,
            tcp_to("x/a", "192.168.0.11", 10250), true, "allowed: no policy"),
        case("a networks peer matches pod addresses", &networks,
            tcp_to("x/a", "y/b", 80), false, "denied by ClusterNetworkPolicy no-y-net (Admin tier) egress rule 0"),
        case("a networks peer matches outside addresses", &networks,
            tcp_to("x/a", "10.0.2.200", 80), false, "denied by ClusterNetworkPolicy no-y-net"),
        case("domainNames never match offline, so the next rule decides", &domains,
            tcp_to("x/a", "93.184.216.34", 443), false, "denied by ClusterNetworkPolicy fqdn (Admin tier) egress rule 1 \"deny-rest\""),
        case("a cluster rule with ports matches only those ports", &ported,
            tcp_to("z/a", "x/a", 5432), false, "denied by ClusterNetworkPolicy deny-db"),
        case("a cluster rule with ports lets other ports through", &ported,
            tcp_to("z/a", "x/a", 5433), true, "allowed: no policy"),
        case("a cluster rule with ports never matches ICMP", &ported,
            flow("z/a", "x/a", ICMP, 0), true, "allowed: no policy"),
    ]
}

fn all_cases() -> Vec<Case> {
    let mut v = isolation_cases();
    v.extend(selector_cases());
    v.extend(ip_block_cases());
    v.extend(port_cases());
    v.extend(tier_cases());
    v
}

fn reasons(d: &Decision) -> String {
    [&d.egress, &d.ingress]
        .iter()
        .filter_map(|s| s.as_ref().map(|s| describe(&s.origin)))
        .collect::<Vec<_>>()
        .join(" | ")
}

#[test]
fn semantics_table() {
    let cases = all_cases();
    let mut failures = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for c in &cases {
        assert!(names.insert(c.name), "duplicate case name: {}", c.name);
        let d = evaluate(&c.world.0, &c.flow);
        let why = reasons(&d);
        if d.allowed != c.allowed || !why.contains(c.why) {
            failures.push(format!(
                "{}\n    flow {}: got allowed={} ({why})\n    want allowed={} ({})",
                c.name, c.flow, d.allowed, c.allowed, c.why
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------
// Focused tests

#[test]
fn an_outside_source_has_no_egress_side() {
    let d = evaluate(&e2e().0, &tcp_to("8.8.8.8", "x/a", 80));
    assert!(d.egress.is_none());
    assert!(d.ingress.is_some());
}

#[test]
fn an_outside_destination_has_no_ingress_side() {
    let d = evaluate(&e2e().0, &tcp_to("x/a", "8.8.8.8", 80));
    assert!(d.egress.is_some());
    assert!(d.ingress.is_none());
}

#[test]
fn a_host_network_pod_is_never_a_policy_subject() {
    let w = e2e().np(np("kube-system/deny-all", all())
        .ingress(vec![])
        .egress(vec![]));
    let d = evaluate(&w.0, &tcp_to("kube-system/hostnet", "x/a", 80));
    assert!(d.egress.is_none(), "host-network source is not enforced");
    assert!(d.allowed);
    let d = evaluate(&w.0, &tcp_to("x/a", "192.168.0.10", 10250));
    assert!(
        d.ingress.is_none(),
        "host-network destination is not enforced"
    );
}

#[test]
fn an_address_of_a_pod_and_the_pod_by_name_get_the_same_decision() {
    let w = e2e().np(np("y/from-x-a", sel(&[("pod", "b")])).ingress(vec![rule(
        Some(vec![pods_in(&[("ns", "x")], &[("pod", "a")])]),
        Some(vec![tcp(80)]),
    )]));
    for port in [80, 81] {
        let by_name = evaluate(&w.0, &tcp_to("x/a", "y/b", port));
        let by_ip = evaluate(&w.0, &tcp_to("10.0.1.1", "10.0.2.2", port));
        assert_eq!(by_name, by_ip, "port {port}");
    }
}

#[test]
fn flow_between_resolves_both_pods_in_the_requested_family() {
    let c = e2e().0;
    let f = Flow::between(&c, "x/a", "y/b", IpFamily::V6, 6, 80).unwrap();
    assert_eq!(f, tcp_to("fd00::1:1", "fd00::2:2", 80));
    let f = Flow::between(&c, "x/a", "y/b", IpFamily::V4, 6, 80).unwrap();
    assert_eq!(f, tcp_to("10.0.1.1", "10.0.2.2", 80));
}

#[test]
fn flow_between_reports_unknown_pods_and_missing_families() {
    let c = e2e().pod("x/v4only", &[], &["10.0.1.9"]).0;
    assert_eq!(
        Flow::between(&c, "x/a", "x/nope", IpFamily::V4, 6, 80),
        Err(FlowError::UnknownPod("x/nope".into()))
    );
    let err = Flow::between(&c, "x/v4only", "x/a", IpFamily::V6, 6, 80).unwrap_err();
    assert_eq!(err.to_string(), "pod x/v4only has no V6 address");
}

#[test]
fn an_ipv6_only_policy_matches_a_named_pod_when_the_flow_is_built_for_ipv6() {
    let w = e2e().np(np("x/to-yb-v6", sel(&[("pod", "a")]))
        .egress(vec![peers(vec![block("fd00::2:2/128", &[])])]));
    // Named pods on both sides: the source's primary family (IPv4) is used.
    assert!(!evaluate(&w.0, &tcp_to("x/a", "y/b", 80)).allowed);
    let f = Flow::between(&w.0, "x/a", "y/b", IpFamily::V6, 6, 80).unwrap();
    assert!(evaluate(&w.0, &f).allowed);
}

#[test]
fn evaluate_side_answers_for_one_pod_and_direction() {
    let w = e2e().np(np("x/deny-egress", all()).egress(vec![ports(vec![udp(53)])]));
    let pod = &w.0.pods["x/a"];
    let dns = evaluate_side(
        &w.0,
        pod,
        Direction::Egress,
        &"10.96.0.10".parse().unwrap(),
        UDP,
        53,
    );
    assert!(dns.allowed);
    assert_eq!(
        dns.origin,
        RuleOrigin::NetworkPolicy {
            namespace: "x".into(),
            name: "deny-egress".into(),
            direction: Direction::Egress,
            index: 0
        }
    );
    let web = evaluate_side(
        &w.0,
        pod,
        Direction::Egress,
        &Peer::Pod("y/b".into()),
        6,
        80,
    );
    assert!(!web.allowed);
    let ingress = evaluate_side(
        &w.0,
        pod,
        Direction::Ingress,
        &Peer::Pod("y/b".into()),
        6,
        80,
    );
    assert_eq!(
        ingress.origin,
        RuleOrigin::Default {
            direction: Direction::Ingress
        }
    );
}

#[test]
fn peer_parses_addresses_and_pod_keys() {
    assert_eq!(
        "10.0.0.1".parse::<Peer>().unwrap(),
        Peer::Ip(ip("10.0.0.1"))
    );
    assert_eq!("fd00::1".parse::<Peer>().unwrap(), Peer::Ip(ip("fd00::1")));
    assert_eq!(
        "default/web".parse::<Peer>().unwrap(),
        Peer::Pod("default/web".into())
    );
}

#[test]
fn describe_renders_each_origin_in_plain_words() {
    let cases = [
        (
            RuleOrigin::NetworkPolicy {
                namespace: "default".into(),
                name: "allow-client".into(),
                direction: Direction::Ingress,
                index: 0,
            },
            "allowed by NetworkPolicy default/allow-client ingress rule 0",
        ),
        (
            RuleOrigin::Isolated {
                direction: Direction::Ingress,
                policies: vec!["default/deny-all".into()],
            },
            "denied: isolated for ingress by policies default/deny-all; no rule allowed it",
        ),
        (
            RuleOrigin::Default {
                direction: Direction::Egress,
            },
            "allowed: no policy isolates or decides egress for the pod",
        ),
        (
            RuleOrigin::Cluster {
                kind: ClusterPolicyKind::ClusterNetworkPolicy,
                name: "deny-metadata".into(),
                tier: Tier::Admin,
                direction: Direction::Egress,
                index: 0,
                rule_name: "deny-imds".into(),
                action: Action::Deny,
            },
            "denied by ClusterNetworkPolicy deny-metadata (Admin tier) egress rule 0 \"deny-imds\"",
        ),
        (
            RuleOrigin::Cluster {
                kind: ClusterPolicyKind::BaselineAdminNetworkPolicy,
                name: "default".into(),
                tier: Tier::Baseline,
                direction: Direction::Ingress,
                index: 2,
                rule_name: String::new(),
                action: Action::Accept,
            },
            "allowed by BaselineAdminNetworkPolicy default (Baseline tier) ingress rule 2",
        ),
    ];
    for (origin, want) in cases {
        assert_eq!(describe(&origin), want);
    }
}

#[test]
fn steps_record_every_tier_consulted_in_order() {
    let w = e2e()
        .cp(
            cnp("pass-y", Tier::Admin, 5, ns_subject(&[("ns", "x")])).ingress(crule(
                "pass",
                Action::Pass,
                vec![ns_peer(&[("ns", "y")])],
            )),
        )
        .cp(
            cnp("deny-metadata", Tier::Admin, 10, ns_subject(&[])).ingress(crule(
                "unrelated",
                Action::Deny,
                vec![ns_peer(&[("ns", "z")])],
            )),
        )
        .np(np("x/a", all()).ingress(vec![ports(vec![tcp(81)])]))
        .np(np("x/b", all()).ingress(vec![ports(vec![tcp(82)]), ports(vec![tcp(80)])]));
    let d = evaluate(&w.0, &tcp_to("y/a", "x/a", 80));
    let steps: Vec<String> = d
        .ingress
        .unwrap()
        .consulted
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        steps,
        [
            "Admin tier: ClusterNetworkPolicy pass-y (priority 5) rule 0 \"pass\" Pass matched: skipping the rest of the Admin tier",
            "NetworkPolicy: pod isolated for ingress by x/a, x/b; rule x/b ingress[1] allowed",
        ]
    );
    let d = evaluate(&w.0, &tcp_to("x/a", "z/a", 80));
    let steps: Vec<String> = d
        .egress
        .unwrap()
        .consulted
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        steps,
        [
            "Admin tier: ClusterNetworkPolicy pass-y (priority 5) no egress rule matched",
            "Admin tier: ClusterNetworkPolicy deny-metadata (priority 10) no egress rule matched",
            "NetworkPolicy: no policy selects the pod for egress",
            "Baseline tier: no cluster policy selects the pod",
            "Default: allowed (no tier decided egress)",
        ]
    );
}

#[test]
fn domain_names_are_noted_as_resolved_only_by_the_agent() {
    let w = e2e().cp(cnp("fqdn", Tier::Admin, 10, ns_subject(&[])).egress(crule(
        "allow-example",
        Action::Accept,
        vec![ClusterPeer::DomainNames(vec!["example.com".into()])],
    )));
    let d = evaluate(&w.0, &tcp_to("x/a", "93.184.216.34", 443));
    assert!(d.allowed);
    let step = d.egress.unwrap().consulted[0].to_string();
    assert!(step.contains("no egress rule matched"), "{step}");
    assert!(step.contains("resolved only by the agent"), "{step}");
    assert!(step.contains("example.com"), "{step}");
}

#[test]
fn an_unknown_pod_is_an_outside_peer_without_an_address() {
    let w = e2e().np(np("x/to-any", all()).egress(vec![peers(vec![block("0.0.0.0/0", &[])])]));
    let d = evaluate(&w.0, &tcp_to("x/a", "x/ghost", 80));
    assert!(d.ingress.is_none());
    assert!(!d.allowed, "no address: the ipBlock cannot match");
}

/// Every world of the table, every ordered pod pair, a few ports of each protocol: the
/// decision for pods by name equals the decision for their IPv4 addresses (the source's
/// primary family), because an address of a pod is that pod.
#[test]
fn every_table_world_decides_pods_by_name_and_by_address_alike() {
    let probes = [(6, 80), (6, 81), (6, 8080), (17, 80), (132, 80), (1, 0)];
    let mut checked = 0;
    for c in all_cases() {
        let cluster = &c.world.0;
        let pods: Vec<&str> = cluster
            .pods
            .iter()
            .filter(|(_, p)| !p.host_network && !p.ips.is_empty())
            .map(|(k, _)| k.as_str())
            .collect();
        for src in &pods {
            for dst in &pods {
                for (proto, port) in probes {
                    let by_name = evaluate(cluster, &flow(src, dst, proto, port));
                    let Ok(f) = Flow::between(cluster, src, dst, IpFamily::V4, proto, port) else {
                        continue;
                    };
                    assert_eq!(by_name, evaluate(cluster, &f), "{}: {f}", c.name);
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 10_000, "only {checked} flows checked");
}

/// `selecting` names a NetworkPolicy only for pods of its namespace that its selector
/// matches, and a cluster policy for pods its subject matches, never a host-network pod.
#[test]
fn selecting_names_the_policies_whose_subject_is_the_pod() {
    let text = r#"
apiVersion: v1
kind: Namespace
metadata: {name: a, labels: {team: x}}
---
apiVersion: v1
kind: Namespace
metadata: {name: b}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: a, labels: {app: web}}
spec: {containers: [{name: c, image: i}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: a, labels: {app: db}}
spec: {containers: [{name: c, image: i}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: b, labels: {app: web}}
spec: {containers: [{name: c, image: i}]}
---
apiVersion: v1
kind: Pod
metadata: {name: host, namespace: a, labels: {app: web}}
spec: {hostNetwork: true, containers: [{name: c, image: i}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: a}
spec: {podSelector: {matchLabels: {app: web}}, policyTypes: [Ingress]}
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: team-x}
spec:
  priority: 10
  subject: {namespaces: {matchLabels: {team: x}}}
  ingress: [{action: Deny, from: [{namespaces: {}}]}]
"#;
    let loaded = crate::manifest::load(&[("t.yaml".to_string(), text.to_string())]);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let c = &loaded.cluster;
    let of = |key: &str| selecting(c, &c.pods[key]);
    let anp = "AdminNetworkPolicy/team-x".to_string();
    assert_eq!(of("a/web").network_policies, vec!["a/web".to_string()]);
    assert_eq!(of("a/web").cluster_policies, vec![anp.clone()]);
    assert_eq!(of("a/db").network_policies, Vec::<String>::new());
    assert_eq!(of("a/db").cluster_policies, vec![anp]);
    assert_eq!(
        of("b/web"),
        Selecting::default(),
        "other namespace, unlabelled"
    );
    assert!(
        of("a/host").cluster_policies.is_empty(),
        "host-network pods are no subject"
    );
}

// ---------------------------------------------------------------------------------
// Near miss: why each rule of the isolating policies failed, and the closest one.

mod near_miss_cases {
    use super::super::near_miss::*;
    use super::*;

    /// The ingress near miss of `f` in `w`, which must be denied by isolation.
    fn ingress_miss(w: &World, f: Flow) -> NearMiss {
        let d = evaluate(&w.0, &f);
        let side = d.ingress.expect("ingress side");
        assert!(!side.allowed, "expected a denial: {:?}", side.origin);
        side.near_miss.expect("a near miss")
    }

    /// The first failure of the only peer of the closest rule.
    fn peer_failure(m: &NearMiss) -> &PeerFailure {
        &m.closest.peers[0].failure
    }

    #[test]
    fn pod_label_absent_names_key_wanted_value_and_absence() {
        let w = e2e().np(np("x/a", sel(&[("pod", "a")]))
            .ingress(vec![peers(vec![pods_here("x", &[("role", "client")])])]));
        let m = ingress_miss(&w, tcp_to("x/b", "x/a", 80));
        assert_eq!(
            peer_failure(&m),
            &PeerFailure::PodLabel {
                pod: "x/b".into(),
                key: "role".into(),
                operator: LabelOperator::MatchLabels,
                values: vec!["client".into()],
                actual: None,
            }
        );
        assert_eq!(
            m.summary,
            "closest: NetworkPolicy x/a ingress rule 0: would allow if pod x/b had label role=client (it has no label role)"
        );
    }

    #[test]
    fn pod_label_value_differs_names_the_actual_value() {
        let w = e2e().np(np("x/a", sel(&[("pod", "a")]))
            .ingress(vec![peers(vec![pods_here("x", &[("pod", "c")])])]));
        let m = ingress_miss(&w, tcp_to("x/b", "x/a", 80));
        assert!(
            matches!(peer_failure(&m), PeerFailure::PodLabel { key, actual: Some(v), .. } if key == "pod" && v == "b"),
            "{m:?}"
        );
        assert!(
            m.summary
                .ends_with("pod x/b had label pod=c (it has pod=b)"),
            "{}",
            m.summary
        );
    }

    #[test]
    fn namespace_label_failure_names_the_namespace() {
        let w = e2e().np(np("x/a", sel(&[("pod", "a")]))
            .ingress(vec![peers(vec![pods_in(&[("ns", "z")], &[])])]));
        let m = ingress_miss(&w, tcp_to("y/b", "x/a", 80));
        assert_eq!(
            peer_failure(&m),
            &PeerFailure::NamespaceLabel {
                namespace: "y".into(),
                key: "ns".into(),
                operator: LabelOperator::MatchLabels,
                values: vec!["z".into()],
                actual: Some("y".into()),
            }
        );
        assert!(
            m.summary
                .contains("namespace y had label ns=z (it has ns=y)"),
            "{}",
            m.summary
        );
    }

    #[test]
    fn match_expression_failure_names_the_operator() {
        let peer = NetworkPolicyPeer::Pods {
            namespaces: NamespaceMatch::Named("x".into()),
            pods: LabelSelector {
                match_labels: Labels::new(),
                match_expressions: vec![Requirement::NotIn("pod".into(), vec!["b".into()])],
            },
        };
        let w = e2e().np(np("x/a", sel(&[("pod", "a")])).ingress(vec![peers(vec![peer])]));
        let m = ingress_miss(&w, tcp_to("x/b", "x/a", 80));
        assert!(
            matches!(
                peer_failure(&m),
                PeerFailure::PodLabel {
                    operator: LabelOperator::NotIn,
                    ..
                }
            ),
            "{m:?}"
        );
        assert!(
            m.summary
                .ends_with("pod x/b satisfied pod NotIn (b) (it has pod=b)"),
            "{}",
            m.summary
        );
    }

    #[test]
    fn except_names_the_excluding_cidr() {
        let w = e2e().np(np("x/a", sel(&[("pod", "a")]))
            .ingress(vec![peers(vec![block("10.0.0.0/16", &["10.0.2.0/24"])])]));
        let m = ingress_miss(&w, tcp_to("y/b", "x/a", 80));
        assert_eq!(
            peer_failure(&m),
            &PeerFailure::Excepted {
                cidr: "10.0.0.0/16".into(),
                except: "10.0.2.0/24".into(),
                address: ip("10.0.2.2"),
            }
        );
        let outside = e2e()
            .np(np("x/a", sel(&[("pod", "a")]))
                .ingress(vec![peers(vec![block("172.16.0.0/12", &[])])]));
        let m = ingress_miss(&outside, tcp_to("y/b", "x/a", 80));
        assert!(
            m.summary
                .ends_with("address 10.0.2.2 were inside ipBlock 172.16.0.0/12"),
            "{}",
            m.summary
        );
    }

    #[test]
    fn named_port_not_declared_or_declared_for_another_protocol() {
        let w = e2e().np(np("x/a", sel(&[("pod", "a")]))
            .ingress(vec![ports(vec![named("metrics", Protocol::Tcp)])]));
        let m = ingress_miss(&w, tcp_to("x/b", "x/a", 80));
        assert_eq!(
            m.closest.ports,
            vec![PortFailure::NamedPortUndeclared {
                name: "metrics".into(),
                protocol: Protocol::Tcp,
                pod: Some("x/a".into()),
            }]
        );
        // serve-80-udp is declared, but for UDP only.
        let w = e2e().np(np("x/a", sel(&[("pod", "a")]))
            .ingress(vec![ports(vec![named("serve-80-udp", Protocol::Tcp)])]));
        let m = ingress_miss(&w, tcp_to("x/b", "x/a", 80));
        assert_eq!(
            m.closest.ports,
            vec![PortFailure::NamedPortProtocol {
                name: "serve-80-udp".into(),
                protocol: Protocol::Tcp,
                declared: vec![Protocol::Udp],
                pod: "x/a".into(),
            }]
        );
        assert!(
            m.summary.contains("(it declares it for UDP)"),
            "{}",
            m.summary
        );
    }

    #[test]
    fn protocol_mismatch_names_both_protocols() {
        let w = e2e().np(np("x/a", sel(&[("pod", "a")])).ingress(vec![ports(vec![tcp(80)])]));
        let m = ingress_miss(&w, flow("x/b", "x/a", UDP, 80));
        assert_eq!(
            m.closest.ports,
            vec![PortFailure::Protocol {
                wanted: Protocol::Tcp,
                actual: "UDP".into(),
            }]
        );
        let m = ingress_miss(&w, flow("x/b", "x/a", ICMP, 0));
        assert!(
            m.summary.ends_with("the protocol were TCP (it is ICMP)"),
            "{}",
            m.summary
        );
    }

    #[test]
    fn port_range_mismatch_names_the_range_and_port() {
        let w = e2e()
            .np(np("x/a", sel(&[("pod", "a")])).ingress(vec![ports(vec![tcp_range(8000, 8080)])]));
        let m = ingress_miss(&w, tcp_to("x/b", "x/a", 9090));
        assert_eq!(
            m.closest.ports,
            vec![PortFailure::PortRange {
                protocol: Protocol::Tcp,
                port: 8000,
                end_port: 8080,
                actual: 9090,
            }]
        );
        assert!(
            m.summary
                .ends_with("the port were TCP 8000-8080 (it is 9090)"),
            "{}",
            m.summary
        );
    }

    #[test]
    fn closest_rule_has_fewest_failures_and_ties_go_to_policy_then_rule_order() {
        // b-policy rule 0 fails peer and port (2); rule 1 fails the port only (1).
        // a-policy rule 0 fails a namespace and a pod label of one peer (2).
        let w = e2e()
            .np(np("x/b-policy", sel(&[("pod", "a")])).ingress(vec![
                rule(
                    Some(vec![pods_here("x", &[("pod", "c")])]),
                    Some(vec![tcp(81)]),
                ),
                rule(
                    Some(vec![pods_here("x", &[("pod", "b")])]),
                    Some(vec![tcp(81)]),
                ),
            ]))
            .np(np("x/a-policy", sel(&[("pod", "a")]))
                .ingress(vec![peers(vec![pods_in(&[("ns", "z")], &[("pod", "c")])])]));
        let m = ingress_miss(&w, tcp_to("x/b", "x/a", 80));
        let order: Vec<(String, usize, usize)> = m
            .rules
            .iter()
            .map(|r| (r.policy.clone(), r.index, r.distance))
            .collect();
        assert_eq!(
            order,
            vec![
                ("x/a-policy".into(), 0, 2),
                ("x/b-policy".into(), 0, 2),
                ("x/b-policy".into(), 1, 1),
            ]
        );
        assert_eq!(
            (m.closest.policy.as_str(), m.closest.index),
            ("x/b-policy", 1)
        );
        assert!(m.closest.peers.is_empty(), "the peer matched");
        assert_eq!(
            m.summary,
            "closest: NetworkPolicy x/b-policy ingress rule 1: would allow if the port were TCP 81 (it is 80)"
        );

        // A tie goes to the first policy by name.
        let tie = e2e()
            .np(np("x/b-policy", sel(&[("pod", "a")])).ingress(vec![ports(vec![tcp(81)])]))
            .np(np("x/a-policy", sel(&[("pod", "a")])).ingress(vec![ports(vec![tcp(82)])]));
        let m = ingress_miss(&tie, tcp_to("x/b", "x/a", 80));
        assert_eq!(m.closest.policy, "x/a-policy");
    }

    #[test]
    fn no_near_miss_when_allowed_or_no_rule_exists() {
        let w = e2e().np(np("x/a", sel(&[("pod", "a")])).ingress(vec![ports(vec![tcp(80)])]));
        let d = evaluate(&w.0, &tcp_to("x/b", "x/a", 80));
        assert!(d.allowed && d.ingress.unwrap().near_miss.is_none());
        let deny_all = e2e().np(np("x/a", sel(&[("pod", "a")])).ingress(vec![]));
        let d = evaluate(&deny_all.0, &tcp_to("x/b", "x/a", 80));
        let side = d.ingress.unwrap();
        assert!(!side.allowed && side.near_miss.is_none());
    }

    #[test]
    fn near_miss_json_has_stable_names_and_protocol_names() {
        let w = e2e().np(np("x/a", sel(&[("pod", "a")])).ingress(vec![ports(vec![tcp(81)])]));
        let m = ingress_miss(&w, tcp_to("x/b", "x/a", 80));
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["closest"]["policy"], "x/a");
        assert_eq!(v["closest"]["ports"][0]["kind"], "port_range");
        assert_eq!(v["closest"]["ports"][0]["protocol"], "TCP");
        let back: NearMiss = serde_json::from_value(v).unwrap();
        assert_eq!(back, m);
    }
}
